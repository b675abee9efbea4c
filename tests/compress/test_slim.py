import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimnfu.compress import slim
from slimnfu.formats import slim as slim_format
from slimnfu.formats.accounting import model_stats


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 7, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 2 * 2, 5)).eval()


def _images(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 14, 14, generator=g)


def _treated(seed=0):
    sm = slim.slim_model(_net(seed))
    a, b = sm[0], sm[3]
    a.ksize[:] = torch.tensor([5, 3, 1, 5, 3, 5])
    b.ksize[:] = torch.tensor([3, 1, 3, 1, 1, 3, 3])
    a.approx[4] = True
    b.approx[[0, 5]] = True
    x = _images()
    slim.refit_linear(a, x)
    slim.refit_linear(b, sm[:3](x))
    return sm


def test_lower_kernel_is_the_centred_part():
    sm = slim.slim_model(_net())
    m = sm[0]
    m.ksize[2] = 3
    m.ksize[5] = 1
    x = _images(4)
    w = m.conv.weight.detach().clone()
    y = m(x)
    w3 = w[2:3, :, 1:4, 1:4]
    want = F.relu(F.conv2d(x, w3, m.conv.bias[2:3]))[:, :, 1:-1, 1:-1]
    assert torch.allclose(y[:, 2:3], want, atol=1e-6)
    want1 = F.relu(F.conv2d(x, w[5:6, :, 2:3, 2:3], m.conv.bias[5:6]))[:, :, 2:-2, 2:-2]
    assert torch.allclose(y[:, 5:6], want1, atol=1e-6)


def test_linear_fit_recovers_an_exact_combination():
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight[3] = 2 * conv.weight[0] - conv.weight[1]
        conv.bias[3] = 2 * conv.bias[0] - conv.bias[1] + 0.5
    m = slim.SlimConv(conv, None)  # no activation: post == pre
    x = torch.randn(8, 2, 9, 9)
    ref = m(x)
    m.approx[3] = True
    slim.refit_linear(m, x)
    assert torch.allclose(m.coef[3, :3], torch.tensor([2.0, -1.0, 0.0]), atol=1e-4)
    assert abs(float(m.coef_bias[3].detach()) - 0.5) < 1e-4
    assert torch.allclose(m(x), ref, atol=1e-4)


def test_reordered_export_computes_the_same_function():
    sm = _treated()
    x = _images()
    q_plain = slim.quantize_slim(sm, x, identity_order=True)
    q_sorted = slim.quantize_slim(sm, x)
    conv1 = q_sorted.layers[0]
    assert conv1.compressed.ksize.tolist() == [5, 5, 5, 3, 1]  # kept, largest kernel first
    assert conv1.compressed.order[-1] == 4                      # the approximated one last
    y1, _ = slim.slim_int_forward(q_plain, x)
    y2, _ = slim.slim_int_forward(q_sorted, x)
    assert torch.equal(y1, y2)
    # and the integer network follows the float one
    ref = sm(x)
    assert (y2.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_bias_free_convs_export():
    """A conv with bias=False quantises with a zero bias (it crashed the export once)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 7, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 2 * 2, 5, bias=False)).eval()
    sm = slim.slim_model(model)
    sm[0].ksize[:] = torch.tensor([5, 3, 1, 5, 3, 5])
    sm[0].approx[4] = True
    x = _images()
    slim.refit_linear(sm[0], x)
    q = slim.quantize_slim(sm, x)
    assert all(int(l.b.abs().sum()) == 0 for l in q.layers if l.b is not None)
    y, _ = slim.slim_int_forward(q, x)
    assert (y.argmax(1) == sm(x).argmax(1)).float().mean() >= 0.9


def test_engine_passes_equal_the_layer():
    sm = _treated()
    x = _images()
    q = slim.quantize_slim(sm, x)
    for tn in (2, 4):
        a, _ = slim.slim_int_forward(q, x)
        b, _ = slim.slim_int_forward(q, x, by_passes=tn)
        assert torch.equal(a, b)
    ps = slim_format.passes(q.layers[0], 2)  # ksize [5, 5, 5, 3, 1]: tiles (5,5) (5,3) (1)
    assert [(p["k"], p["filters"], p["crop"], p["desc"].pad, p["lane_k"]) for p in ps] == \
        [(5, (0, 2), 0, 0, None), (5, (2, 4), 0, 0, [5, 3]), (1, (4, 5), 2, 0, None)]
    ps = slim_format.passes(q.layers[2], 2)  # conv2 K=3 pad 1: k=1 passes need no crop, pad 0
    assert all(p["crop"] == 0 and p["desc"].pad == (1 if p["k"] == 3 else 0) for p in ps)


def test_accounting_counts_kept_taps_and_coefficients():
    sm = _treated()
    x = _images()
    q = slim.quantize_slim(sm, x)
    dense, macs, _ = slim.conv_macs(sm, (1, 14, 14))
    stats = model_stats(q)
    assert stats["conv_macs"] == macs < dense
    # the dense counts of a slim layer cover its approximated features too
    assert stats["conv_macs_dense"] == dense == 6 * 25 * 10 * 10 + 7 * 6 * 9 * 5 * 5
    conv1 = stats["layers"][0]
    assert conv1["params_dense"] == 6 * 25 + 6
    assert conv1["bits_dense"] == 6 * 25 * 16 + 6 * 48
    conv2 = stats["layers"][2]
    names = [i["name"] for i in conv2["items"]]
    assert names == ["weights", "bias", "kernel_sizes", "approx_coef", "approx_bias"]
    assert conv2["items"][0]["count"] == 6 * (9 * 2 + 1 * 3)


def test_greedy_respects_the_budget():
    sm = slim.slim_model(_net())
    x = _images(60)
    y = sm(x).argmax(1)  # labels the model gets right: base accuracy 100 %
    ranking = slim.importance(sm, x, y, method="l1")
    out = slim.greedy(sm, x, y, 100.0, "lower", ranking=ranking)
    assert all(int(k) == 1 for k in sm[0].ksize) and len(out["log"]) == 13
    sm = slim.slim_model(_net())
    out = slim.greedy(sm, x, y, 0.0, "linear", ranking=ranking)
    assert out["acc_calib_base"] - out["acc_calib"] <= 0.0
    report = slim.slim_report(sm, (1, 14, 14))
    assert [r["features"] for r in report] == [6, 7]


def _kept(sm):
    return [int((~sm[i].approx).sum()) for i in slim.conv_layers(sm)]


def test_lanes_approximate_down_to_whole_tiles_when_the_budget_allows():
    sm = slim.slim_model(_net())
    x = _images(60)
    y = sm(x).argmax(1)
    ranking = slim.importance(sm, x, y, method="l1")
    sm[0].approx[[0, 2, 4]] = True  # 3 of 6 kept: 1 lane of a 2-lane tile idle
    sm[3].approx[[1]] = True        # 6 of 7 kept: whole tiles already
    for i in (0, 3):
        slim.refit_linear(sm[i], slim._input_of(sm, i, x))
    out = slim.fill_lanes(sm, x, y, 0.0, 2, ranking, x)
    least = [j for _, i, j in ranking if i == 0 and j in (1, 3, 5)][0]
    assert out == [{"module": 0, "tile": "kept", "filled": "approximated", "features": [least]}]
    assert _kept(sm) == [2, 6]
    assert bool(sm[0].approx[least]) and int(sm[0].approx.sum()) == 4
    assert all(slim.coef_fits(sm[i], 16) for i in (0, 3))


def test_lanes_compute_approximated_features_exactly_when_it_does_not(monkeypatch):
    sm = slim.slim_model(_net())
    x = _images(60)
    y = sm(x).argmax(1)
    ranking = slim.importance(sm, x, y, method="l1")
    sm[3].approx[[0, 1, 2, 3]] = True  # 3 of 7 kept: 1 lane of a 2-lane tile idle
    slim.refit_linear(sm[3], slim._input_of(sm, 3, x))
    # accuracy that grows with the kept features: approximating one more falls under the
    # floor, computing one more exactly does not
    monkeypatch.setattr(slim, "_accuracy_loss",
                        lambda *a, **k: (10.0 * int((~sm[3].approx).sum()), 0.0))
    out = slim.fill_lanes(sm, x, y, 30.0, 2, ranking, x)
    most = [j for _, i, j in reversed(ranking) if i == 3 and j <= 3][0]
    assert out == [{"module": 3, "tile": "kept", "filled": "restored", "features": [most]}]
    assert not bool(sm[3].approx[most]) and int(sm[3].approx.sum()) == 3
    assert float(sm[3].coef.detach()[most].abs().sum()) == 0.0
    # a floor nothing reaches: the layer is left as it was
    sm[3].approx[most] = True
    slim.refit_linear(sm[3], slim._input_of(sm, 3, x))
    before = [t.detach().clone() for t in (sm[3].approx, sm[3].coef, sm[3].coef_bias)]
    out = slim.fill_lanes(sm, x, y, 100.0, 2, ranking, x)
    assert out == [{"module": 3, "tile": "kept", "filled": None, "features": []}]
    assert all(torch.equal(t, u) for t, u in zip(before, (sm[3].approx, sm[3].coef.detach(),
                                                          sm[3].coef_bias.detach())))


def _tiles(sm, lanes):
    """Per conv layer, the kernel sizes of each tile of kept features in export order."""
    return [[t["lanes"] for t in slim_format.tile_map(
        sorted((int(k) for k, a in zip(sm[i].ksize, sm[i].approx) if not a), reverse=True),
        lanes)] for i in slim.conv_layers(sm)]


def test_lanes_make_kernel_size_boundaries_whole_tiles(monkeypatch):
    sm = slim.slim_model(_net())
    x = _images(60)
    y = sm(x).argmax(1)
    ranking = slim.importance(sm, x, y, method="l1")
    order = [j for _, i, j in ranking if i == 0]
    sm[0].ksize[order[:3]] = 3  # sizes 5 5 5 | 3 3 3 on 2 lanes: tile [5, 3] mixes
    assert _tiles(sm, 2)[0] == [[5, 5], [5, 3], [3, 3]]
    out = slim.fill_lanes(sm, x, y, 0.0, 2, ranking, x)
    # the budget allows lowering: the least important 5 becomes a 3
    assert out == [{"module": 0, "tile": "5/3", "filled": "lowered", "features": [order[3]]}]
    assert _tiles(sm, 2)[0] == [[5, 5], [3, 3], [3, 3]]
    # accuracy that falls with every lowered tap: lowering fails, raising is taken
    sm = slim.slim_model(_net())
    sm[0].ksize[order[:3]] = 3
    monkeypatch.setattr(slim, "_accuracy_loss", lambda *a, **k: (float(sm[0].ksize.sum()), 0.0))
    out = slim.fill_lanes(sm, x, y, 24.0, 2, ranking, x)
    assert out == [{"module": 0, "tile": "5/3", "filled": "raised", "features": [order[2]]}]
    assert _tiles(sm, 2)[0] == [[5, 5], [5, 5], [3, 3]]
    assert slim.fill_lanes(sm, x, y, 24.0, 2, ranking, x) == []
    # the least important 5 must stay: the next one is lowered instead
    sm = slim.slim_model(_net())
    sm[0].ksize[order[:3]] = 3
    monkeypatch.setattr(slim, "_accuracy_loss",
                        lambda *a, **k: (float(sm[0].ksize[order[3]]), 0.0))
    out = slim.fill_lanes(sm, x, y, 5.0, 2, ranking, x)
    assert out == [{"module": 0, "tile": "5/3", "filled": "lowered", "features": [order[4]]}]


def test_lanes_retry_a_mixed_tile_after_another_layer_gives_accuracy_back(monkeypatch):
    sm = slim.slim_model(_net())
    x = _images(60)
    y = sm(x).argmax(1)
    ranking = slim.importance(sm, x, y, method="l1")
    order = [[j for _, i, j in ranking if i == layer] for layer in (0, 3)]
    sm[0].ksize[order[0][:3]] = 3  # sizes 5 5 5 | 3 3 3 on 2 lanes: tile [5, 3] mixes
    sm[3].ksize[order[1][:4]] = 1  # sizes 3 3 3 | 1 1 1 1: tile [3, 1] mixes
    first = sm[0].ksize.clone()
    # accuracy from the second layer's taps, 2 lost for any change to the first layer: the
    # first layer's tile passes only after the second layer's raise gave 2 back
    monkeypatch.setattr(slim, "_accuracy_loss", lambda *a, **k: (
        float(sm[3].ksize.sum()) - 2 * float(not torch.equal(sm[0].ksize, first)), 0.0))
    out = slim.fill_lanes(sm, x, y, 13.0, 2, ranking, x)
    assert out == [
        {"module": 0, "tile": "5/3", "filled": "lowered", "features": [order[0][3]]},
        {"module": 3, "tile": "3/1", "filled": "raised", "features": [order[1][3]]}]
    assert _tiles(sm, 2) == [[[5, 5], [3, 3], [3, 3]], [[3, 3], [3, 3], [1, 1], [1]]]
    # one round only when the first fills nothing
    calls = []
    monkeypatch.setattr(slim, "_fill_round", lambda *a: calls.append(a) or [])
    assert slim.fill_lanes(sm, x, y, 13.0, 2, ranking, x) == [] and len(calls) == 1


def test_greedy_with_lanes_leaves_whole_tiles():
    sm = slim.slim_model(_net())
    x = _images(60)
    y = sm(x).argmax(1)
    ranking = slim.importance(sm, x, y, method="l1")
    out = slim.greedy(sm, x, y, 100.0, "linear", ranking=ranking, lanes=4)
    assert all(k % 4 == 0 for k in _kept(sm)), _kept(sm)
    sm = slim.slim_model(_net())
    slim.greedy(sm, x, y, 100.0, "both", ranking=ranking, lanes=2)
    assert all(len(set(t)) == 1 for layer in _tiles(sm, 2) for t in layer[:-1]), _tiles(sm, 2)
    assert {e["filled"] for e in out["lanes"]} <= {"approximated", "restored"}
    with pytest.raises(ValueError, match=r"lanes must be an int >= 1 \(the engine's tn; 1: "
                                         r"off\), not 0"):
        slim.greedy(sm, x, y, 1.0, "linear", ranking=ranking, lanes=0)


def test_greedy_refuses_coefficients_no_word_holds(monkeypatch):
    sm = slim.slim_model(_net())
    x = _images(60)
    y = sm(x).argmax(1)
    ranking = slim.importance(sm, x, y, method="l1")
    real = slim.refit_linear

    def blown_up(m, feats_in):
        real(m, feats_in)
        with torch.no_grad():
            m.coef[m.approx] = 1e6

    monkeypatch.setattr(slim, "refit_linear", blown_up)
    out = slim.greedy(sm, x, y, 100.0, "linear", ranking=ranking)
    assert out["log"] == []
    assert not any(bool(sm[i].approx.any()) for i in slim.conv_layers(sm))
    monkeypatch.setattr(slim, "refit_linear", real)
    out = slim.greedy(sm, x, y, 100.0, "linear", ranking=ranking)
    assert out["log"] and all(slim.coef_fits(sm[i], 16) for i in slim.conv_layers(sm))


def test_bad_kernel_sizes_and_coefficients():
    with pytest.raises(ValueError, match="conv2: kernel size 7 of filter 1 is larger than the "
                                         "layer's K=5"):
        slim_format.check_kernel_sizes([5, 7], 5, "conv2")
    with pytest.raises(ValueError, match="kernel size 2 of filter 0 is even"):
        slim_format.check_kernel_sizes([2], 5, "conv1")
    assert slim_format.tile_map([5, 5, 3, 1, 1], 4) == [{"lanes": [5, 5, 3, 1], "k": 5},
                                                        {"lanes": [1], "k": 1}]
    with pytest.raises(ValueError, match="treatment must be one of"):
        slim.greedy(slim.slim_model(_net()), _images(2), torch.zeros(2, dtype=torch.long), 1.0,
                    "prune")


def test_weight_image_round_trip_and_refusals(tmp_path, capsys):
    """A slim network goes through the one weight-image format like every other."""
    import hashlib
    import json

    from slimnfu.compress.quant import int_forward
    from slimnfu.config import AccelConfig
    from slimnfu.gen import image

    q = slim.quantize_slim(_treated(), _images())
    cfg = AccelConfig("t2", tn=2, ti=2, kgate=True)
    out = tmp_path / "img"
    m = image.export(q, cfg, out)
    q2, _, _ = image.load(out)
    assert m["layers"][0]["ksize"] == [5, 5, 5, 3, 1]
    assert sorted(m["layers"][0]["files"]) == ["approx.bias", "approx.weights", "pass0.bias",
                                               "pass0.weights", "pass1.bias", "pass1.weights",
                                               "pass2.bias", "pass2.weights"]
    assert [a.to_state() for a in q.layers] == [b.to_state() for b in q2.layers]
    x = _images(8)
    assert torch.equal(int_forward(q, x)[0], int_forward(q2, x)[0])
    from slimnfu.cli import main
    assert main(["inspect", str(out)]) == 0
    assert re.search(r"^conv1 +conv +slim +1 +5 ", capsys.readouterr().out, re.M)

    def edit(fn):
        d = json.loads((out / "manifest.json").read_text())
        fn(d)
        (out / "manifest.json").write_text(json.dumps(d))

    edit(lambda d: d["layers"][0]["ksize"].__setitem__(0, 7))
    with pytest.raises(image.ImageError, match=r"manifest.json: layers\[0\].ksize: layer conv1: "
                                               r"kernel size 7 of filter 0 is larger than the "
                                               r"layer's K=5"):
        image.load(out)
    edit(lambda d: d["layers"][0]["ksize"].__setitem__(0, 5))
    edit(lambda d: d["layers"][0]["kept_pos"].append(d["layers"][0]["approx_pos"][0]))
    with pytest.raises(image.ImageError, match=r"layers\[0\].kept_pos: kept_pos and approx_pos "
                                               r"must split the 6 output positions"):
        image.load(out)
    edit(lambda d: d["layers"][0]["kept_pos"].pop())
    # pass 1 runs filters 2 and 3 (kernel sizes 5 and 3) at k=5: a weight on filter 3's outer
    # ring (word 0 = tap (0, 0) of tile pair (0, 0), lane 1*ti + 0) is refused
    wf = out / "conv1.pass1.weights.hex"
    lines = wf.read_text().splitlines()
    lines[0] = f"{int(lines[0], 16) | 1 << 32:0{len(lines[0])}x}"
    wf.write_text("\n".join(lines) + "\n")
    edit(lambda d: d["files"]["conv1.pass1.weights.hex"].__setitem__(
        "sha256", hashlib.sha256(wf.read_bytes()).hexdigest()))
    with pytest.raises(image.ImageError, match=r"conv1.pass1.weights.hex: values: filter 3 has "
                                               r"weights outside its 3x3 kernel"):
        image.load(out)


def _seven_by_seven(n=500):
    """A 7x7-conv1 network whose approximated feature 3 is 3 a0 + 2.5 a1: five times the range
    of its own original (tiny) filter, which the classifier reads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 7), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3)).eval()
    sm = slim.slim_model(model)
    m = sm[0]
    with torch.no_grad():
        m.conv.weight[3] *= 0.05
        m.approx[3] = True
        m.coef[3, 0], m.coef[3, 1] = 3.0, 2.5
        sm[3].weight[:, 75:] *= 4
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = sm(x).argmax(1)
    return sm, x, labels


def test_approximated_features_set_the_output_scale():
    """Issue 18: the output scale of a slim layer comes from what it computes, its linear
    approximation included, not from the approximated features' original filters (which
    saturated the approximation pass, and lost accuracy float to integer at DW 16)."""
    from slimnfu.compress.attribution import attribute

    sm, x, labels = _seven_by_seven()
    with torch.no_grad():
        _, _, lin = sm[0].pre_activations(x)
        original = sm[0].conv(x)[:, 3]
        fc_out = sm[:4](x)
    assert float(lin.abs().max()) > 3 * float(original.abs().max())
    rng = slim.slim_ranges(sm, x)
    assert sorted(rng) == [0, 1, 3]
    assert rng[0] == pytest.approx(float(lin.abs().max()), rel=1e-6)
    assert rng[3] == pytest.approx(float(fc_out.abs().max()), rel=1e-6)
    q = slim.quantize_slim(sm, x, dw=16)
    for ql, r in zip((q.layers[0], q.layers[2]), (rng[0], rng[3])):
        assert ((1 << 15) - 1) * 2.0 ** -ql.f_y >= r
    a = attribute(sm, q, x, labels)
    assert a["sat_events"] == 0 and min(r["sqnr_db"] for r in a["layers"]) > 60
    assert a["acc_float"] == 100.0 and a["acc_float"] - a["acc_int"] <= 0.1
