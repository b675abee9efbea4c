"""Permuted-feature FC compression: permutations, fitting, quantisation, accounting, messages."""

import pytest
import torch
from torch import nn

from slimnfu.compress import permfc
from slimnfu.formats import accounting, layout, perm
from slimnfu.compress.quant import int_forward


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))


def test_affine_is_permutation_and_bad_gcd_message():
    idx = perm.affine_perms([3, 1], [5, 0], 10)
    assert idx[0].tolist() == [(3 * i + 5) % 10 for i in range(10)]
    perm.check_index_rom(idx, 2, 10)
    with pytest.raises(ValueError, match=r"row 1 affine multiplier a=4 is not a permutation "
                                         r"of n=10: gcd\(a, n\) = 2 != 1"):
        perm.affine_perms([3, 4], [0, 0], 10)
    with pytest.raises(ValueError, match=r"row 0 affine parameters a=10, b=0 must be in"):
        perm.check_affine([10], [0], 10)
    a, b = permfc.random_affine_params(50, 12, seed=3)
    assert all(torch.gcd(a, torch.tensor(12)) == 1) and int(b.max()) < 12


def test_index_rom_and_sequence_messages():
    with pytest.raises(ValueError, match=r"fc1: index ROM row 1 is not a permutation of 0..3 "
                                         r"\(missing e.g. \[3\]\)"):
        perm.check_index_rom(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 2]]), 2, 4, "fc1")
    with pytest.raises(ValueError, match=r"index ROM has shape \(2, 4\), the layer needs"):
        perm.check_index_rom(torch.zeros(2, 4, dtype=torch.int64), 3, 4)
    with pytest.raises(ValueError, match="common sequence has length 5, but the layer has "
                                         "n_in=4"):
        perm.check_sequence(torch.zeros(5), 4)


def test_rank_perms_exact_when_rows_are_permutations():
    s = torch.tensor([-2.0, -0.5, 0.1, 0.7, 3.0])
    idx = torch.stack([torch.randperm(5, generator=torch.Generator().manual_seed(j))
                       for j in range(4)])
    got_s, got_idx = permfc.rank_perms(s[idx])
    assert torch.allclose(got_s, s) and torch.equal(got_idx, idx)
    assert torch.allclose(permfc.fit_sequence(s[idx], idx), s)


@pytest.mark.parametrize("variant", permfc.VARIANTS)
def test_quantised_perm_model_matches_gather_and_counts_bits(variant):
    model = permfc.compress_model(_model(), variant, seed=1)
    assert isinstance(model[1], permfc.PermLinear) and isinstance(model[3], permfc.PermLinear)
    x = torch.rand(40, 12)
    y = torch.randint(3, (40,))
    permfc.finetune(model, x, y, epochs=2, batch_size=8)
    for mod in (model[1], model[3]):
        assert all(sorted(row.tolist()) == sorted(mod.weight[0].tolist())
                   for row in mod.weight.detach())
    q = permfc.quantize_perm_model(model, x, dw=16)
    fc1 = q.layers[0]
    assert fc1.format == permfc.FORMATS[variant]
    assert fc1.weight_format.pass_desc(fc1).perm == variant
    assert torch.equal(fc1.w, fc1.compressed.s[model[1].idx])
    logits, _ = int_forward(q, x)
    dense_q = permfc.to_dense(model)
    assert torch.allclose(dense_q(x), model(x))
    st = accounting.layer_stats(fc1, 16, 48)
    per_row = 2 * 4 if variant == "affine" else 12 * 4   # ceil(log2 12) = 4 bits per index
    assert st["bits"] == 12 * 16 + 7 * 48 + 7 * per_row
    assert st["params"] == 12 + 7 and st["params_dense"] == 12 * 7 + 7
    assert logits.shape == (40, 3)


def test_keep_classifier_and_bad_layer():
    model = permfc.compress_model(_model(), "affine", keep_classifier=True)
    assert isinstance(model[1], permfc.PermLinear) and isinstance(model[3], nn.Linear)
    with pytest.raises(ValueError, match=r"module 2 is not a Linear \(Linear modules: \[1, 3\]\)"):
        permfc.compress_model(_model(), "affine", layers=[2])


def test_pack_perm_params_layout():
    from slimnfu.config import CONFIGS
    # 4-bit fields (a, e, start, last)
    cfg = CONFIGS["tiny"].with_(perm={"depth": 16, "quadratic": True})
    with pytest.raises(ValueError, match=r"row 1 is quadratic \(e=2\), but config 'tiny' has "
                                         r"perm\.quadratic=False"):
        layout.pack_perm_params([1, 3], [2, 4], cfg.with_(perm={"depth": 16}), 8, e=[0, 2])
    words = layout.pack_perm_params([1, 3, 5, 7, 1], [2, 4, 6, 0, 1], cfg, 8,
                                    e=[0, 2, 0, 0, 4], group=[0, 1, 0, 1, 1])
    assert len(words) == 2
    assert words[0] & 0xffff == 1 | (0 << 4) | (2 << 8) | (7 << 12)
    assert (words[0] >> 16) & 0xffff == 3 | (2 << 4) | (12 << 8) | (15 << 12)
    assert words[1] == 1 | (4 << 4) | (9 << 8) | (15 << 12)
    a, b, e, g = layout.unpack_perm_params(words, 5, 8, 2, cfg)
    assert a.tolist() == [1, 3, 5, 7, 1] and b.tolist() == [2, 4, 6, 0, 1]
    assert e.tolist() == [0, 2, 0, 0, 4] and g.tolist() == [0, 1, 0, 1, 1]
    with pytest.raises(ValueError, match=r"row 1: start=12, last=15 are not inside one of the 1 "
                                         r"common sequences of n=8"):
        layout.unpack_perm_params(words, 5, 8, 1, cfg)
    with pytest.raises(ValueError, match=r"common sequences of 3 x 8 values exceed config "
                                         r"'tiny' perm\.depth=16"):
        layout.pack_perm_params([1], [0], cfg, 8, group=[2])
    with pytest.raises(ValueError, match=r"perm\.depth=16"):
        layout.pack_perm_s(torch.zeros(17, dtype=torch.int64), cfg)
    # an index ROM entry is a dw-bit lane of the image's words
    dw8 = CONFIGS["tiny"].with_(dw=8, acc=30)
    assert len(layout.pack_perm_index(torch.tensor([[255, 0]]), dw8)) == 1
    with pytest.raises(ValueError, match=r"^config 'tiny': index 256 does not fit dw=8 bits$"):
        layout.pack_perm_index(torch.tensor([[256, 0]]), dw8)


def test_baselines_fit_their_budget():
    from slimnfu.compress import permfc_baselines as bl

    lin = nn.Linear(20, 6)
    budget = 20 * 16 + 2 * 6 * perm.index_bits(20)
    k = bl.budget_hashed(budget, 16)
    assert bl.hashed_bits(k, 16) <= budget < bl.hashed_bits(k + 1, 16)
    hashed = bl.hashed_from_linear(lin, k, seed=1)
    assert int(hashed.bucket.max()) < k and set(hashed.sign.unique().tolist()) <= {-1.0, 1.0}
    kept = bl.budget_pruned(budget, 6, 20, 16)
    assert bl.pruned_bits(kept, 6, 20, 16) <= budget < bl.pruned_bits(kept + 1, 6, 20, 16)
    pruned = bl.prune_linear(lin, kept)
    assert int(pruned.mask.sum()) == kept
    dense = bl.to_dense_any(nn.Sequential(pruned, hashed.__class__(6, 3, 4)))
    assert int((dense[0].weight != 0).sum()) <= kept
    x = torch.rand(5, 20)
    assert torch.allclose(dense[0](x), pruned(x))


def _perm_image(tmp_path, variant):
    import hashlib
    import json

    from slimnfu.config import CONFIGS
    from slimnfu.gen import image

    model = permfc.compress_model(_model(), variant, seed=2)
    x = torch.rand(20, 12)
    q = permfc.quantize_perm_model(model, x, dw=16)
    cfg = CONFIGS["tiny"].with_(perm={"depth": 16})
    out = tmp_path / f"img_{variant}"
    image.export(q, cfg, out)

    def tamper(item, edit):
        manifest = json.loads((out / "manifest.json").read_text())
        fname = manifest["layers"][0]["files"][item]
        lines = edit((out / fname).read_text().splitlines())
        text = "\n".join(lines) + "\n"
        (out / fname).write_text(text)
        manifest["files"][fname].update(sha256=hashlib.sha256(text.encode()).hexdigest(),
                                        words=len(lines))
        (out / "manifest.json").write_text(json.dumps(manifest))

    return q, out, tamper


@pytest.mark.parametrize("variant", permfc.VARIANTS)
def test_image_round_trip(tmp_path, variant):
    from slimnfu.gen import image

    q, out, _ = _perm_image(tmp_path, variant)
    q2, _, manifest = image.load(out)
    assert q2.layers[0].format == permfc.FORMATS[variant]
    assert torch.equal(q2.layers[0].w, q.layers[0].w)
    item = "perm_ab" if variant == "affine" else "perm_index"
    assert manifest["layers"][0]["files"].keys() == {"s", "bias", item}


def test_index_layer_image_and_program_on_a_build_without_perm(tmp_path):
    """An index layer needs no method hardware: config_for leaves perm off, the image still
    stores s and the index ROM and reads back, and the program loads the gathered weights."""
    from slimnfu.config import CONFIGS
    from slimnfu.contract import LoadSel
    from slimnfu.gen import image
    from slimnfu.gen.compiler import compile_model, config_for

    model = permfc.compress_model(_model(), "index", seed=2)
    q = permfc.quantize_perm_model(model, torch.rand(20, 12), dw=16)
    cfg = config_for(q, CONFIGS["tiny"])
    assert cfg.perm is None
    image.export(q, cfg, tmp_path / "img")
    q2, _, manifest = image.load(tmp_path / "img")
    assert manifest["layers"][0]["files"].keys() == {"s", "bias", "perm_index"}
    assert torch.equal(q2.layers[0].w, q.layers[0].w)
    program = compile_model(q2, cfg)
    fc = program.layers[0]
    (_, base, words), = [ld for ld in fc.loads if ld[0] == LoadSel.SB]
    assert program.rom[base:base + words] == layout.pack_weights(q.layers[0].w, cfg)


def test_image_refuses_bad_affine_and_short_sequence(tmp_path):
    from slimnfu.gen import image

    _, out, tamper = _perm_image(tmp_path, "affine")
    # a = 4 with n = 12: gcd 4, not a permutation (4-bit a at the low bits of lane 0)
    tamper("perm_ab", lambda lines: [f"{(int(lines[0], 16) & ~0xf) | 4:0{len(lines[0])}x}"]
           + lines[1:])
    with pytest.raises(image.ImageError, match=r"fc1.perm_ab.hex: values: .*row 0 affine "
                                               r"multiplier a=4 is not a permutation"):
        image.load(out)
    _, out, tamper = _perm_image(tmp_path / "b", "affine")
    tamper("s", lambda lines: lines[:-1])
    with pytest.raises(image.ImageError, match="fc1.s.hex: words: the common sequences have 11 "
                                               "values, not a positive multiple of the "
                                               "layer's n_in=12"):
        image.load(out)


def test_image_refuses_index_rom_that_is_not_a_permutation(tmp_path):
    from slimnfu.gen import image

    _, out, tamper = _perm_image(tmp_path, "index")
    # lane 0 of the first SB word is index [0, 0]; copy lane 1 onto it (a repeated index)
    def dup(lines):
        word = int(lines[0], 16)
        lane1 = (word >> 16) & 0xffff
        return [f"{(word & ~0xffff) | lane1:0{len(lines[0])}x}"] + lines[1:]
    tamper("perm_index", dup)
    with pytest.raises(image.ImageError, match=r"fc1.perm_index.hex: values: .*index ROM row 0 "
                                               r"is not a permutation"):
        image.load(out)


def test_quadratic_family_is_permutation_and_generator_message():
    for n in (24, 18, 784, 300, 800):
        a, b, e = permfc.random_generated_params(20, n, "quadratic", seed=n)
        assert bool(e.any())
        perm.check_index_rom(perm.generated_perms(a, b, e, n), 20, n)
    a, b, e = permfc.random_generated_params(5, 13, "quadratic")   # 13 prime: affine only
    assert not bool(e.any())
    with pytest.raises(ValueError, match=r"row 0 is not a permutation of 0..5"):
        perm.generated_perms([1], [0], [1], 6)   # i*(i+1)/2 mod 6 repeats
    with pytest.raises(ValueError, match=r"row 0 parameter e=9 must be in \[0, 7\]"):
        perm.generated_perms([1], [0], [9], 8)
    with pytest.raises(ValueError, match=r"family must be one of \('affine', 'quadratic'\)"):
        permfc.random_generated_params(2, 8, "feistel")


def test_group_rows_uses_every_group_and_separates_scales():
    gen = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(6, 30, generator=gen) * 0.01,
                   torch.randn(6, 30, generator=gen)])
    group = permfc.group_rows(w, 2)
    assert set(group.tolist()) == {0, 1}
    assert len(set(group[:6].tolist())) == 1 and group[0] != group[6]
    with pytest.raises(ValueError, match=r"groups must be in \[1, 12\]"):
        permfc.group_rows(w, 13)


@pytest.mark.parametrize("family", perm.FAMILIES)
def test_grouped_layer_quantises_counts_and_round_trips(tmp_path, family):
    from slimnfu.config import CONFIGS
    from slimnfu.gen import image

    torch.manual_seed(1)
    base = nn.Sequential(nn.Flatten(), nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 3))
    model = permfc.compress_model(base, "affine", groups={1: 3, 3: 1},
                                  family=family, candidates=4, seed=5)
    fc1 = model[1]
    assert fc1.groups == 3 and model[3].groups == 1 and fc1.family == family
    # each row is a permutation of its own group's sequence
    for j in range(10):
        g = int(fc1.group[j])
        assert sorted(fc1.weight[j].tolist()) == sorted(fc1.s[g * 24:(g + 1) * 24].tolist())
    x = torch.rand(30, 24)
    q = permfc.quantize_perm_model(model, x, dw=16)
    ql = q.layers[0]
    assert ql.format == "perm_affine" and ql.compressed.groups(24) == 3
    assert ql.compressed.family() == family
    st = accounting.layer_stats(ql, 16, 48)
    fields = 3 if family == "quadratic" else 2
    assert st["bits"] == 3 * 24 * 16 + 10 * 48 + 10 * fields * 5 + 10 * 2   # 5-bit a, b(, e)
    assert st["params"] == 3 * 24 + 10
    cfg = CONFIGS["tiny"].with_(perm={"depth": 128, "quadratic": True})
    image.export(q, cfg, tmp_path / "img")
    q2, _, _ = image.load(tmp_path / "img")
    assert torch.equal(q2.layers[0].w, ql.w)
    assert torch.equal(q2.layers[0].compressed.row_groups(), ql.compressed.row_groups())
    assert torch.equal(int_forward(q2, x)[0], int_forward(q, x)[0])


def test_grouped_record_messages():
    rec = perm.PermAffineWeights(torch.zeros(20, dtype=torch.int64), torch.tensor([1, 3]),
                                 torch.tensor([0, 0]), None, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"fc1: row 1 is in group 2, but there are 2 common "
                                         r"sequences \(groups 0..1\)"):
        rec.indices(10, "fc1")
    with pytest.raises(ValueError, match=r"common sequences have 15 values, not a positive "
                                         r"multiple of the layer's n_in=10"):
        perm.check_groups(torch.zeros(15), None, 10, 4)
    with pytest.raises(ValueError, match=r"3 common sequences for 2 rows"):
        perm.check_groups(torch.zeros(30), None, 10, 2)


def test_train_early_stopping_keeps_best_epoch_and_stops():
    torch.manual_seed(0)
    x = torch.randn(64, 12)
    y = (x[:, 0] > 0).long()
    model = permfc.compress_model(_model(), "affine", groups={1: 2, 3: 1})
    hist = permfc.train_early_stopping(model, (x, y), (x[:32], y[:32]), max_epochs=6,
                                       patience=2, lr=1e-2, batch_size=16)
    assert 1 <= hist["epochs"] <= 6 and hist["best_epoch"] <= hist["epochs"]
    assert hist["epochs"] == 6 or hist["epochs"] - hist["best_epoch"] == 2
    from slimnfu.compress.train import evaluate
    assert evaluate(model, x[:32], y[:32]) == pytest.approx(max(hist["val_acc"]))
    with pytest.raises(ValueError, match="patience must be an integer >= 1, not 0"):
        permfc.train_early_stopping(model, (x, y), (x, y), patience=0)


def test_onecycle_keeps_one_optimiser_over_the_run(monkeypatch):
    """``schedule="onecycle"``: every epoch steps the same Adam and one-cycle scheduler, which
    ends at its last step (the default ``"epoch"`` builds a new optimiser per epoch)."""
    from slimnfu.compress import train as train_mod

    seen = []
    real_fit = train_mod.fit

    def spy(*args, **kw):
        seen.append((kw.get("optimizer"), kw.get("scheduler")))
        return real_fit(*args, **kw)

    monkeypatch.setattr(permfc, "fit", spy)
    torch.manual_seed(0)
    x = torch.randn(64, 12)
    y = (x[:, 0] > 0).long()
    model = permfc.compress_model(_model(), "affine", groups=1)
    hist = permfc.train_early_stopping(model, (x, y), (x, y), max_epochs=3, patience=3,
                                       lr=1e-2, batch_size=16, schedule="onecycle")
    assert hist["epochs"] == 3 and hist["schedule"] == "onecycle"
    opts = {id(o) for o, _ in seen}
    assert len(seen) == 3 and len(opts) == 1 and seen[0][0] is not None
    sched = seen[0][1]
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR)
    assert sched.last_epoch == 3 * 4   # 64 images / 16 per batch, 3 epochs
    seen.clear()
    permfc.train_early_stopping(model, (x, y), (x, y), max_epochs=2, patience=2)
    assert seen == [(None, None), (None, None)]


def test_distillation_follows_the_teacher_not_the_labels():
    """With ``distill=1`` the student learns the teacher's function even though the labels
    are noise; without it, it cannot."""
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    teacher = nn.Sequential(nn.Linear(12, 3))
    with torch.no_grad():
        teacher[0].weight.mul_(4)
    noise = torch.randint(3, (256,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        truth = teacher(x).argmax(1)
    agree = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(2)
        student = nn.Sequential(nn.Linear(12, 3))
        permfc.train_early_stopping(student, (x, noise), (x, truth), max_epochs=8,
                                    patience=8, lr=5e-2, batch_size=32, schedule="onecycle",
                                    teacher=teacher, distill=weight, temperature=2.0)
        with torch.no_grad():
            agree[weight] = (student(x).argmax(1) == truth).float().mean()
    assert agree[1.0] > 0.9 and agree[0.0] < 0.7


def test_train_early_stopping_refuses_bad_schedule_and_distill():
    x, y = torch.randn(8, 12), torch.zeros(8, dtype=torch.long)
    model = _model()
    with pytest.raises(ValueError, match=r"schedule must be one of \('epoch', 'onecycle'\), "
                                         r"not 'cosine'"):
        permfc.train_early_stopping(model, (x, y), (x, y), schedule="cosine")
    with pytest.raises(ValueError, match=r"distill must be in \[0, 1\], not 1.5"):
        permfc.train_early_stopping(model, (x, y), (x, y), teacher=model, distill=1.5)
    with pytest.raises(ValueError, match="distill > 0 needs a teacher model"):
        permfc.train_early_stopping(model, (x, y), (x, y), distill=0.5)
    with pytest.raises(ValueError, match="temperature must be > 0, not 0"):
        permfc.train_early_stopping(model, (x, y), (x, y), temperature=0)
