"""Numerical attribution (slimnfu.compress.attribution): per-layer SQNR and saturation events
of the integer reference against the float network, and the float network stored as JSON."""

import json

import pytest
import torch
from torch import nn

from slimnfu.compress import attribution, ikr, permfc, slim
from slimnfu.compress.attribution import attribute, float_from_state, float_state
from slimnfu.compress.quant import group_layers, int_forward, quantize_model


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(5 * 2 * 2, 8), nn.LeakyReLU(0.25), nn.Linear(8, 3)).eval()


def _images(n=64, seed=1):
    return torch.rand(n, 1, 10, 10, generator=torch.Generator().manual_seed(seed))


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def test_a_calibrated_network_has_high_sqnr_and_no_saturation():
    model, x = _net(), _images()
    q = quantize_model(model, x)
    a = attribute(model, q, x, _labels(model, x))
    assert [r["layer"] for r in a["layers"]] == [ql.name for ql in q.layers]
    assert a["float"] == "measured" and a["images"] == 64
    assert a["sat_events"] == 0 and a["input_sat_events"] == 0
    for r in a["layers"]:
        assert r["sqnr_db"] > 40, r
        assert r["max_abs_float"] <= r["full_scale"]
    assert a["acc_float"] == 100.0
    assert abs(a["acc_int"] - a["acc_float"]) <= 100 / 64
    # the saturation count is the integer reference's own
    assert int_forward(q, x)[1].events == a["sat_events"]


def test_a_wrong_scale_shows_low_sqnr_and_saturations_in_its_layer():
    """A layer quantised to a range 8x too small on purpose: its SQNR collapses and it (not the
    layer before it) counts the saturation events."""
    model, x = _net(), _images()
    groups = group_layers(model, (1, 10, 10))
    good = attribute(model, quantize_model(model, x), x)
    conv2 = next(g for g in groups if g["name"] == "conv2")
    true_range = max(r["max_abs_float"] for r in good["layers"] if r["layer"] == "conv2")
    q = quantize_model(model, x, ranges={conv2["index"]: true_range / 8})
    bad = attribute(model, q, x)
    rows = {r["layer"]: r for r in bad["layers"]}
    gr = {r["layer"]: r for r in good["layers"]}
    assert rows["conv1"]["sat_events"] == 0 and rows["conv1"]["sqnr_db"] == gr["conv1"]["sqnr_db"]
    assert rows["conv2"]["sat_events"] > 100
    assert rows["conv2"]["sqnr_db"] < 20 < gr["conv2"]["sqnr_db"]
    assert bad["sat_events"] == sum(r["sat_events"] for r in bad["layers"])


def test_reordered_slim_channels_are_compared_in_their_order():
    """Method A writes its channels in export order; attribution follows
    ``channel_order`` (a mismatch would show as an SQNR near 0 dB)."""
    model, x = _net(), _images()
    sm = slim.slim_model(model)
    sm[0].ksize[:] = torch.tensor([1, 3, 1, 3, 3, 3])
    sm[0].approx[2] = True
    slim.refit_linear(sm[0], x)
    q = slim.quantize_slim(sm, x)
    assert q.layers[0].weight_format.channel_order(q.layers[0]) != list(range(6))
    a = attribute(sm, q, x)
    assert all(r["sqnr_db"] > 40 for r in a["layers"]), a["layers"]
    assert a["sat_events"] == 0


def test_without_a_float_network_only_the_integer_side():
    model, x = _net(), _images()
    q = quantize_model(model, x)
    a = attribute(None, q, x, _labels(model, x))
    assert a["float"] == attribution.NOT_CACHED == "float not cached; run with --recompress"
    assert a["acc_float"] is None and a["acc_int"] is not None
    assert all(r["sqnr_db"] is None and r["max_abs_float"] is None for r in a["layers"])
    assert "float not cached; run with --recompress" in attribution.markdown(a)


def test_a_float_network_that_is_not_the_quantised_one_is_refused():
    model, x = _net(), _images()
    q = quantize_model(model, x)
    with pytest.raises(ValueError, match=r"the float network's engine layers \['conv1', "
                                         r"'pool1', 'conv2', 'pool2', 'fc1'\] are not the "
                                         r"quantised network's"):
        attribute(model[:-1], q, x)


def test_float_state_round_trip_of_a_compressed_network():
    """SlimConv, an IKR-pruned conv inside one, and a PermLinear (stored as the Linear it
    computes) read back as the same function, through JSON."""
    model, x = _net(), _images()
    sm = slim.slim_model(model)
    sm[0].ksize[:] = torch.tensor([3, 1, 3, 3, 1, 3])
    sm[0].approx[[1, 4]] = True
    slim.refit_linear(sm[0], x)
    ikr.apply_ikr(sm[3].conv, 4, patterns=4)
    net = permfc.compress_model(sm, "affine", keep_classifier=True)
    assert any(isinstance(m, permfc.PermLinear) for m in net)
    back = float_from_state(json.loads(json.dumps(float_state(net))))
    assert isinstance(back[0], slim.SlimConv) and isinstance(back[7], nn.Linear)
    assert torch.equal(back[0].ksize, sm[0].ksize) and torch.equal(back[0].approx, sm[0].approx)
    assert isinstance(back[8], nn.LeakyReLU) and back[8].negative_slope == 0.25
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_float_state_refusals():
    with pytest.raises(ValueError, match=r"module 1: a BatchNorm2d cannot be stored"):
        float_state(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    s = float_state(_net())
    s["modules"][0]["state"]["weight"]["shape"] = [6, 1, 3, 4]
    with pytest.raises(ValueError, match=r"float.modules\[0\].state.weight: holds 54 values, "
                                         r"its shape \[6, 1, 3, 4\] needs 72"):
        float_from_state(s)
    s = float_state(_net())
    s["modules"][3]["type"] = "Conv3d"
    with pytest.raises(ValueError, match=r"float.modules\[3\].type: must be one of SlimConv, "
                                         r"Conv2d, .* not 'Conv3d'"):
        float_from_state(s)
    s = float_state(_net())
    del s["modules"][0]["state"]["bias"]
    with pytest.raises(ValueError, match=r"float.modules\[0\]: .*Missing key\(s\) in state_dict: "
                                         r"\"bias\""):
        float_from_state(s)
