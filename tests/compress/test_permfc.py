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
    cfg = CONFIGS["tiny"].with_(perm={"depth": 16})   # 4-bit a and b
    words = layout.pack_perm_params([1, 3, 5, 7, 9], [2, 4, 6, 8, 10], cfg)
    assert len(words) == 2
    assert words[0] & 0xff == 1 | (2 << 4) and (words[0] >> 8) & 0xff == 3 | (4 << 4)
    assert words[1] == 9 | (10 << 4)
    with pytest.raises(ValueError, match=r"perm\.depth=16"):
        layout.pack_perm_s(torch.zeros(17, dtype=torch.int64), cfg)


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
    with pytest.raises(image.ImageError, match="fc1.s.hex: words: the common sequence has 11 "
                                               "values but the layer has n_in=12"):
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
