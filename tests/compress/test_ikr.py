"""IKR pruning: library, assignment, masks, bad input, save/load, accounting."""

import dataclasses
import io

import pytest
import torch
from torch import nn

from slimnfu.compress import ikr
from slimnfu.config import LayerDesc, PassDesc
from slimnfu.formats import QLayer
from slimnfu.formats.accounting import layer_stats
from slimnfu.formats.ikr import IkrWeights, check_ikr, ikr_values


def test_library_and_assignment_by_hand():
    w = torch.zeros(3, 1, 3, 3)
    w[0, 0, 0, 0], w[0, 0, 1, 1] = 5, 4      # taps {0, 4}
    w[1, 0, 0, 0], w[1, 0, 1, 1] = -3, 2     # taps {0, 4}
    w[2, 0, 2, 2], w[2, 0, 0, 1] = 7, 1      # taps {1, 8}
    lib = ikr.learn_library(w, 2, patterns=1)
    assert lib.tolist() == [[0, 4]]
    lib = ikr.learn_library(w, 2, patterns=16)
    assert lib.tolist() == [[0, 4], [1, 8]]
    assert ikr.assign_patterns(w, lib).view(-1).tolist() == [0, 0, 1]
    mask = ikr.pattern_mask(lib, ikr.assign_patterns(w, lib), 3)
    assert mask.sum().item() == 6 and mask[2, 0, 2, 2] == 1


def test_shared_patterns_by_hand():
    """With ``share=2`` output channels 0-1 and 2 (a partial run) each take one pattern per
    input channel, chosen on the run's summed squares; ``share=1`` is the per-kernel choice."""
    w = torch.zeros(3, 1, 3, 3)
    w[0, 0, 0, 0], w[0, 0, 1, 1] = 5, 1      # alone: taps {0, 4}
    w[1, 0, 2, 2], w[1, 0, 1, 1] = 2, 4      # alone: taps {4, 8}; with channel 0: {0, 4}
    w[2, 0, 2, 2], w[2, 0, 0, 1] = 7, 1      # taps {1, 8}
    assert ikr.learn_library(w, 2).tolist() == [[0, 4], [4, 8], [1, 8]]
    lib = ikr.learn_library(w, 2, share=2)
    assert lib.tolist() == [[0, 4], [1, 8]]
    index = ikr.assign_patterns(w, lib, share=2)
    assert index.view(-1).tolist() == [0, 0, 1]
    assert ikr.shares_patterns(index, 2) and not ikr.shares_patterns(index, 3)
    assert ikr.assign_patterns(w, lib).view(-1).tolist() == [0, 0, 1]
    assert not ikr.shares_patterns(torch.tensor([[0], [1], [1]]), 2)
    assert torch.equal(ikr.shared_weight(w, 1), w ** 2)
    assert torch.equal(ikr.shared_weight(w, 2)[1], w[2] ** 2)


@pytest.mark.parametrize("share", [0, -1, 1.5, True])
def test_options_refuse_a_bad_share(share):
    with pytest.raises(ValueError, match=f"IkrOptions.share must be an integer >= 1, not "
                                         f"{share!r}"):
        ikr.IkrOptions(share=share)


def test_prune_with_share_gives_each_run_one_pattern():
    """``ikr_prune`` with ``share=2``: every IKR conv has one pattern per input channel and
    pair of output channels (the last one a partial run), the fine-tuned weights stay on it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Conv2d(5, 3, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 2 * 2, 3))
    x, y = torch.randn(48, 2, 6, 6), torch.randint(3, (48,))
    opts = ikr.IkrOptions(patterns=4, finetune_batches=2, final_batches=2, share=2,
                          n_steps={3: (9, 4, 2)})
    pruned, hist = ikr.ikr_prune(model, x, y, x, y, 100.0, opts)
    assert hist["share"] == 2 and hist["n"] == {"0": 2, "2": 2}
    for _, conv in ikr.ikr_layers(pruned):
        assert ikr.shares_patterns(conv.ikr_index, 2)
        mask = ikr.pattern_mask(conv.ikr_patterns, conv.ikr_index, 3)
        assert (conv.weight[mask == 0] == 0).all()


@pytest.mark.parametrize("k,n,lib,index,msg", [
    (3, 10, [[0]], [[0]], "n=10 must be in \\[1, K\\*K=9\\]"),
    (3, 2, [[0, 1], [2]], [[0]], "pattern 1 has 1 distinct taps, but n=2"),
    (3, 2, [[0, 1], [2, 2]], [[0]], "pattern 1 has 1 distinct taps"),
    (3, 2, [[0, 1]], [[1]], "pattern index 1 is outside the table of 1 patterns"),
    (3, 2, [[0, 9]], [[0]], "pattern 0 has a tap outside \\[0, 9\\)"),
])
def test_bad_input_names_layer_and_field(k, n, lib, index, msg):
    lib = torch.tensor(lib) if len({len(r) for r in lib}) == 1 else lib
    with pytest.raises(ValueError, match="layer conv7: " + msg):
        check_ikr("conv7", k, n, lib, index)


def test_pass_desc_refuses_n_above_kk():
    with pytest.raises(ValueError, match="ikr_n=10 > k\\*k=9"):
        PassDesc(LayerDesc("conv", 2, 2, 5, 5, 3), ikr_n=10)


def test_apply_save_load_and_finetune_keep_patterns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    ikr.apply_ikr(model[0], 3, patterns=4, name="conv1")
    w = model[0].weight.reshape(4, 2, 9)
    assert ((w != 0).sum(-1) <= 3).all()
    assert model[0].ikr_patterns.shape == (model[0].ikr_patterns.shape[0], 3)
    x, y = torch.randn(64, 2, 6, 6), torch.randint(3, (64,))
    ikr.finetune(model, x, y, batches=5, batch_size=16)
    mask = ikr.pattern_mask(model[0].ikr_patterns, model[0].ikr_index, 3)
    assert (model[0].weight[mask == 0] == 0).all()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    ikr.load_ikr_state(fresh, torch.load(buf))
    assert torch.equal(fresh[0].ikr_index, model[0].ikr_index)
    assert torch.equal(fresh(x), model(x))


def test_accounting_counts_values_index_and_table():
    desc = LayerDesc("conv", 3, 5, 8, 8, 3)
    lib = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [1, 3, 5, 7]])
    idx = torch.randint(3, (5, 3))
    w = torch.zeros(5, 3, 9, dtype=torch.int64)
    w.scatter_(2, lib[idx], 7)
    q = QLayer("conv1", desc, w.view(5, 3, 3, 3), torch.zeros(5, dtype=torch.int64),
               format="ikr", compressed=IkrWeights(lib, idx))
    s = layer_stats(q, 16, 48)
    # values 15*4*16, index 15*2 bits (P=3), table 3*4*4 bits (K*K=9 taps), bias 5*48
    assert s["bits"] == 15 * 4 * 16 + 15 * 2 + 12 * 4 + 5 * 48
    assert s["macs"] == 6 * 6 * 5 * 3 * 4 and s["macs_dense"] == 6 * 6 * 5 * 3 * 9
    assert s["params"] == 15 * 4 + 5
    assert ikr_values(q).unique().tolist() == [7]


def _ikr_image(tmp_path, n=4, p=3, lanes=False):
    """Export a small IKR network (5x5 and 3x3 convs) and return a tamper helper; for the
    window decoder, or with ``lanes`` for the lane IKR unit (patterns shared per output tile
    of ``tiny``'s 4 lanes)."""
    import hashlib
    import json

    from slimnfu.compress.quant import quantize_model
    from slimnfu.config import CONFIGS
    from slimnfu.gen import image

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 5, 5), nn.ReLU(), nn.Conv2d(5, 6, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    share = CONFIGS["tiny"].tn if lanes else 1
    ikr.apply_ikr(model[0], n + 3, patterns=p, name="conv1", share=share)
    ikr.apply_ikr(model[2], n, patterns=p, name="conv2", share=share)
    q = ikr.mark_quantised(quantize_model(model, torch.rand(16, 2, 10, 10)), model)
    cfg = CONFIGS["tiny"].with_(ikr={"lanes": lanes})
    out = tmp_path / "img"
    image.export(q, cfg, out)

    def tamper(layer, item, edit, manifest_edit=None):
        manifest = json.loads((out / "manifest.json").read_text())
        fname = manifest["layers"][layer]["files"][item]
        lines = edit((out / fname).read_text().splitlines())
        text = "\n".join(lines) + "\n"
        (out / fname).write_text(text)
        manifest["files"][fname].update(sha256=hashlib.sha256(text.encode()).hexdigest(),
                                        words=len(lines))
        if manifest_edit:
            manifest_edit(manifest)
        (out / "manifest.json").write_text(json.dumps(manifest))

    return q, out, tamper


def test_image_round_trip(tmp_path):
    from slimnfu.compress.quant import int_forward
    from slimnfu.gen import image

    q, out, _ = _ikr_image(tmp_path)
    q2, _, manifest = image.load(out)
    assert [l.format for l in q2.layers] == ["ikr", "ikr", "dense"]
    for a, b in zip(q.layers, q2.layers):
        assert torch.equal(a.w, b.w) and torch.equal(a.b, b.b)
        if a.format == "ikr":
            assert torch.equal(a.compressed.patterns, b.compressed.patterns)
            assert torch.equal(a.compressed.index, b.compressed.index)
    x = torch.rand(4, 2, 10, 10)
    assert torch.equal(int_forward(q, x)[0], int_forward(q2, x)[0])
    entry = manifest["layers"][0]
    assert entry["ikr_patterns"] == q.layers[0].compressed.patterns.shape[0]
    assert set(entry["files"]) == {"ikr_values", "ikr_index", "ikr_table", "bias"}
    assert manifest["stats"]["bits"] < manifest["stats"]["bits_dense"]


def test_lane_image_round_trip(tmp_path):
    """An image for the lane IKR unit holds tap words, not indices and a pattern table: it is
    read back to the same weights, and a table of the patterns the tiles use (in its own
    order) whose words are the ones written."""
    from slimnfu.compress.quant import int_forward
    from slimnfu.gen import image

    q, out, _ = _ikr_image(tmp_path, lanes=True)
    q2, cfg, manifest = image.load(out)
    assert cfg.ikr.lanes
    assert set(manifest["layers"][0]["files"]) == {"ikr_values", "ikr_taps", "ikr_table", "bias"}
    for a, b in zip(q.layers, q2.layers):
        assert torch.equal(a.w, b.w) and torch.equal(a.b, b.b)
        if a.format == "ikr":
            lib_a, lib_b = a.compressed.patterns, b.compressed.patterns
            assert torch.equal(lib_a[a.compressed.index], lib_b[b.compressed.index])
            assert a.weight_format.memories(a, cfg) == b.weight_format.memories(b, cfg)
    x = torch.rand(4, 2, 10, 10)
    assert torch.equal(int_forward(q, x)[0], int_forward(q2, x)[0])


def _tap_edit(word, lane, bits, value):
    """Hex ``word`` with tap lane ``lane`` (``bits`` wide) set to ``value``."""
    w = int(word, 16)
    w = (w & ~(((1 << bits) - 1) << (lane * bits))) | (value << (lane * bits))
    return f"{w:0{len(word)}x}"


def test_lane_image_refusals(tmp_path):
    """Tap words that are not a shared-pattern layer's, and a tap table that is not the
    layer's, are refused naming the file."""
    from slimnfu.contract import ikr_tap_bits
    from slimnfu.gen import image

    def check(name, edit, match, item="ikr_taps", layer=0, **kw):
        _, out, tamper = _ikr_image(tmp_path / name, lanes=True, **kw)
        tamper(layer, item, edit)
        with pytest.raises(image.ImageError, match=match):
            image.load(out)

    bits = ikr_tap_bits(image.load(_ikr_image(tmp_path / "cfg", lanes=True)[1])[1])
    # conv1 is 5x5 (taps 0..24) on 2 input channels of tiny's 4 lanes
    check("outside", lambda ls: [_tap_edit(ls[0], 0, bits, 25)] + ls[1:],
          r"conv1.ikr_taps.hex: values: a tap lies outside the 5x5 kernel")
    check("padding", lambda ls: [_tap_edit(ls[0], 2, bits, 3)] + ls[1:],
          r"conv1.ikr_taps.hex: padding: lanes past n_in=2 must be zero")
    # conv2 (3x3, n = 4): its words 0..3 are output tile 0's taps for input channels 0..3;
    # a repeated tap, and a fourth pattern where the manifest says 3
    mask = (1 << bits) - 1
    check("repeat", lambda ls: [ls[0], _tap_edit(ls[1], 0, bits, int(ls[0], 16) & mask)] + ls[2:],
          r"conv2.ikr_taps.hex: values: layer conv2: pattern \d+ has 3 distinct taps, but n=4",
          layer=1)
    check("many", lambda ls: [_tap_edit(w, i, bits, s) for w, i, s in
                              zip(ls[:4], [0] * 4, [8, 7, 6, 5])] + ls[4:],
          r"conv2.ikr_taps.hex: values: holds \d+ distinct patterns, but the manifest's "
          r"ikr_patterns is 1", layer=1, p=1)
    check("table", lambda ls: ls[:1] + [_tap_edit(ls[1], 0, 1, 0)] + ls[2:],
          r"conv1.ikr_table.hex: values: must be the tap offsets of a 5x5 kernel over input "
          r"rows of 10 words", item="ikr_table")


def test_lane_unit_needs_shared_patterns():
    """``unshared_pattern`` names the first output tile and input channel whose kernels
    differ; compiling such a layer for the lane unit says so, and ``configure`` gives a
    program of them the window decoder."""
    from slimnfu.compress.quant import quantize_model
    from slimnfu.config import CONFIGS
    from slimnfu.formats.ikr import IkrFormat, unshared_pattern

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    ikr.apply_ikr(conv, 3, patterns=4, share=4)
    index = conv.ikr_index.clone()
    assert unshared_pattern(index, 4) is None and ikr.shares_patterns(index, 4)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 2))
    ql = ikr.mark_quantised(quantize_model(model, torch.rand(8, 4, 6, 6)), model).layers[0]
    tiny = CONFIGS["tiny"]
    assert tiny.with_(ikr=True).ikr.lanes
    assert IkrFormat().configure(tiny.with_(ikr=True), [ql]).ikr.lanes
    assert not IkrFormat().configure(tiny.with_(ikr={"lanes": False}), [ql]).ikr.lanes
    index[5, 3] = (index[4, 3] + 1) % conv.ikr_patterns.shape[0]
    assert unshared_pattern(index, 4) == (1, 3) and not ikr.shares_patterns(index, 4)
    bad = dataclasses.replace(ql, compressed=IkrWeights(ql.compressed.patterns, index))
    got = IkrFormat().configure(tiny.with_(ikr=True), [bad])
    assert not got.ikr.lanes and got.ikr.kmax == 3
    with pytest.raises(ValueError, match=r"layer conv1: output channels 4\.\.5 \(output tile 1\) "
                                         r"have different IKR patterns for input channel 3: "
                                         r"the lane IKR unit \(ikr.lanes\) needs one per input "
                                         r"channel and output tile of tn=4 channels \(prune "
                                         r"with IkrOptions.share=4, slimnfu run --ikr-share 4\)"
                                         r", or the window decoder \(--set ikr.lanes=0\)"):
        IkrFormat().memories(bad, tiny.with_(ikr=True))


def _set_lane0(line, bits, value):
    word = (int(line, 16) & ~((1 << bits) - 1)) | value
    return f"{word:0{len(line)}x}"


def test_image_refuses_index_outside_table(tmp_path):
    from slimnfu.gen import image
    from slimnfu.contract import ikr_index_bits

    q, out, tamper = _ikr_image(tmp_path, p=3)
    p = q.layers[0].compressed.patterns.shape[0]
    bits = ikr_index_bits(image.load(out)[1])
    tamper(0, "ikr_index", lambda ls: [_set_lane0(ls[0], bits, p)] + ls[1:])
    with pytest.raises(image.ImageError, match=rf"ikr_index.hex: values: layer .*pattern index "
                                               rf"{p} is outside the table of {p} patterns"):
        image.load(out)


def test_image_refuses_pattern_with_repeated_tap(tmp_path):
    from slimnfu.gen import image
    from slimnfu.contract import ikr_tap_bits

    q, out, tamper = _ikr_image(tmp_path)
    cfg = image.load(out)[1]
    lib = q.layers[0].compressed.patterns
    k, kmax = q.layers[0].desc.k, cfg.ikr.kmax
    tap = int(lib[0, 0])
    phys = (tap // k) * kmax + tap % k
    # word 1 entry 0 = pattern 0's second tap: make it equal to its first
    tamper(0, "ikr_table",
           lambda ls: ls[:1] + [_set_lane0(ls[1], ikr_tap_bits(cfg), phys)] + ls[2:])
    with pytest.raises(image.ImageError, match=r"ikr_table.hex: values: layer .*pattern 0 has "
                                               r"\d+ distinct taps, but n=7"):
        image.load(out)


def test_image_refuses_tables_that_disagree_with_manifest(tmp_path):
    from slimnfu.gen import image

    _, out, tamper = _ikr_image(tmp_path)
    # one tap row fewer than the layer's n
    tamper(0, "ikr_table", lambda ls: ls[:-1])
    with pytest.raises(image.ImageError, match=r"ikr_table.hex: words: holds 6 taps per "
                                               r"pattern, but layers\[0\].ikr_n is 7"):
        image.load(out)
    _, out, tamper = _ikr_image(tmp_path / "b")

    def fewer_patterns(m):
        m["layers"][0]["ikr_patterns"] = 1
    tamper(0, "ikr_table", lambda ls: ls, fewer_patterns)
    with pytest.raises(image.ImageError, match=r"ikr_table.hex: table: entries past the "
                                               r"manifest's ikr_patterns=1 must be zero"):
        image.load(out)


def test_image_refuses_n_above_kk(tmp_path):
    from slimnfu.gen import image

    _, out, tamper = _ikr_image(tmp_path)

    def big_n(m):
        m["layers"][1]["ikr_n"] = 10
    tamper(1, "ikr_table", lambda ls: ls, big_n)
    with pytest.raises(image.ImageError, match=r"manifest.json: layers\[1\].ikr_n: must be an "
                                               r"integer in \[1, k\*k=9\], not 10"):
        image.load(out)


def test_image_refuses_non_zero_padding_lanes(tmp_path):
    from slimnfu.gen import image

    _, out, tamper = _ikr_image(tmp_path)
    # conv1 has n_in=2 on Ti=4 lanes: lane 2 of index word 0 (4-bit entries) is padding
    tamper(0, "ikr_index", lambda ls: [f"{int(ls[0], 16) | 1 << 8:0{len(ls[0])}x}"] + ls[1:])
    with pytest.raises(image.ImageError, match=r"conv1.ikr_index.hex: padding: lanes past "
                                               r"n_out=5 / n_in=2 must be zero"):
        image.load(out)


def _as_version_1(m):
    """What slimnfu wrote before the pass record: the pass fields in each layer's ``desc``,
    ``ikr_n`` nowhere else, and the features as flat flags and parameters in ``config``."""
    m["version"] = 1
    c = m["config"]
    for feature, params in (("ikr", ("kmax", "patterns", "index_depth")), ("perm", ("depth",))):
        rec = c[feature]
        c[feature] = rec is not None
        for p in params:
            c[f"{feature}_{p}"] = (rec or {}).get(p, {"kmax": 5, "patterns": 16,
                                                      "index_depth": 512, "depth": 1024}[p])
    c["kgate"] = c["kgate"] is not None
    for e in m["layers"]:
        variant = {"perm_affine": "affine", "perm_index": "index"}.get(e["format"], "none")
        e["desc"].update(ikr_n=e.pop("ikr_n", 0), perm=variant, lane_k=[], koff=0,
                         nbout_base=0, lane_skip=0)


def test_image_of_version_1_still_loads(tmp_path):
    import json

    from slimnfu.gen import image

    q, out, _ = _ikr_image(tmp_path)
    new, cfg, _ = image.load(out)
    m = json.loads((out / "manifest.json").read_text())
    _as_version_1(m)
    (out / "manifest.json").write_text(json.dumps(m))
    old, old_cfg, m = image.load(out)
    assert m["version"] == 1 and old_cfg == cfg and "ikr" in cfg.features
    for a, b in zip(new.layers, old.layers):
        assert (a.desc, a.format) == (b.desc, b.format) and torch.equal(a.w, b.w)
        assert a.weight_format.pass_desc(a) == b.weight_format.pass_desc(b)
    assert [b.weight_format.pass_desc(b).ikr_n for b in old.layers] == [7, 4, 0]
