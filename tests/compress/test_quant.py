"""Tests of whole-network quantisation and integer inference (hand-checked where possible)."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from slimnfu.compress.quant import int_forward, quantize_input, quantize_model
from slimnfu.formats import QuantModel


def _linear(weights, bias):
    lin = nn.Linear(len(weights), 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([weights]))
        lin.bias.copy_(torch.tensor([bias]))
    return nn.Sequential(lin)


def test_hand_computed_linear():
    # y = 0.5*1.0 - 0.25*0.5 + 0.125 = 0.5
    model = _linear([0.5, -0.25], 0.125)
    x = torch.tensor([[1.0, 0.5]])
    q = quantize_model(model, x, dw=16)
    layer = q.layers[0]
    assert q.f_in == 14                     # 1.0 * 2**15 does not fit 16 bits
    assert layer.f_w == 15                  # 0.5 * 2**16 does not fit either
    assert layer.f_y == 15                  # |y| = 0.5
    assert layer.w.tolist() == [[16384, -8192]]
    assert layer.b.tolist() == [1 << 26]    # 0.125 at scale 2**(14+15)
    assert layer.desc.shift == 14 and layer.desc.kind == "fc"
    logits, count = int_forward(q, x)
    # acc = 16384*16384 - 8192*8192 + 2**26 = 2**28; (2**28 + 2**13) >> 14 = 2**14
    assert logits.tolist() == [[16384]] and count.events == 0


def test_hand_computed_conv_relu_pool_dw8():
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.25)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    x = torch.tensor([[[[0.0, 0.5, 1.0],
                        [0.25, 0.75, 0.5],
                        [1.0, 1.0, 0.0]]]])
    q = quantize_model(model, x, dw=8)
    conv_l, pool_l = q.layers
    assert (q.f_in, conv_l.f_w) == (6, 8)          # 1.0 -> 64; 0.25 * 2**9 = 128 does not fit
    assert conv_l.w.flatten().tolist() == [64, 64, 64, 64]
    # window sums 1.5, 2.75, 3.0, 2.25 times 0.25: max 0.75 -> f_y = 7 (0.75 * 2**8 overflows)
    assert conv_l.f_y == 7 and pool_l.f_y == 7 and pool_l.desc.kind == "maxpool"
    assert conv_l.desc.shift == 6 + 8 - 7
    logits, _ = int_forward(q, x)
    # acc = (16 + 48 + 64 + 64) * 64 = 12288; (12288 + 64) >> 7 = 96 = 0.75 * 2**7
    assert logits.tolist() == [[96]]


def _random_model():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 20), nn.Sigmoid(), nn.Linear(20, 10))


@pytest.mark.parametrize("dw,tol", [(16, 0.02), (8, 0.08)])
def test_float_int_agreement(dw, tol):
    model = _random_model()
    torch.manual_seed(2)
    x = torch.rand(120, 1, 28, 28)
    q = quantize_model(model, x[:60], dw=dw)
    assert [l.name for l in q.layers] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"]
    assert q.layers[4].desc.n_in == 288 and q.layers[4].desc.act == "pwl"
    logits, count, outs = int_forward(q, x[60:], batch=25, layers=True)
    with torch.no_grad():
        ref = model(x[60:]).double()
    real = logits.double() / 2 ** q.layers[-1].f_y
    assert (real - ref).abs().max() < tol * ref.abs().max()
    assert len(outs) == 6 and outs[0].shape == (60, 6, 24, 24) and torch.equal(outs[-1], logits)
    assert all(o.dtype == torch.int64 for o in outs)
    assert -(1 << (dw - 1)) <= int(logits.min()) and int(logits.max()) < 1 << (dw - 1)


def test_state_round_trip_is_json():
    q = quantize_model(_random_model(), torch.rand(20, 1, 28, 28))
    state = json.loads(json.dumps(q.to_state()))
    q2 = QuantModel.from_state(state)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(int_forward(q, x)[0], int_forward(q2, x)[0])
    assert q2.layers[2].pwl.to_dict() == q.layers[2].pwl.to_dict()


def test_acc_overflow_refused():
    model = nn.Sequential(nn.Linear(1024, 4))
    with pytest.raises(ValueError, match=r"layer fc1 .*42 bits.*overflows acc=40"):
        quantize_model(model, torch.rand(4, 1024), dw=16, acc=40)


def test_structure_errors():
    with pytest.raises(ValueError, match=r"layer 0 \(ReLU\) does not directly follow"):
        quantize_model(nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\) gets a 3-D input.*Flatten"):
        quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2)),
                       torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="range_method"):
        quantize_model(nn.Sequential(nn.Linear(4, 2)), torch.rand(2, 4), range_method=10)
    with pytest.raises(ValueError, match="calib_images"):
        quantize_model(nn.Sequential(nn.Linear(4, 2)), torch.rand(0, 4))


def test_percentile_range_gives_finer_scale():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 8))
    x = torch.rand(400, 16)
    x[0] *= 50
    q_max = quantize_model(model, x, range_method="max")
    q_pct = quantize_model(model, x, range_method=99.0)
    assert q_pct.layers[0].f_y > q_max.layers[0].f_y


@pytest.mark.parametrize("act, func, seg_shift", [
    (nn.LeakyReLU(0.25), "leaky_relu(0.25)", 0), (nn.ReLU6(), "hardtanh(0.0,6.0)", 13),
    (nn.Hardtanh(), "hardtanh(-1.0,1.0)", 14)])
def test_piecewise_linear_activations_quantise_exactly(act, func, seg_shift):
    """The PWL layer equals the activation on the integer pre-activation, rounded half up."""
    from slimnfu import fixed

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 40), act, nn.Linear(40, 3))
    x = torch.randn(50, 6) * 3
    q = quantize_model(model, x)
    layer = q.layers[0]
    assert (layer.desc.act, layer.act_func, layer.desc.seg_shift) == ("pwl", func, seg_shift)
    if func.startswith("hardtanh"):
        lo, hi = fixed.parse_pwl_name(func)[1]
        assert layer.f_y == fixed.frac_bits_for(max(1.0, abs(lo), abs(hi)), 16)
    plain = dataclasses.replace(layer, desc=dataclasses.replace(layer.desc, act="none"),
                                pwl=None, act_func=None)
    xq = quantize_input(q, x)
    y = plain.run(xq, 16)
    ref = fixed.sat(torch.floor(fixed.pwl_function(func)(y.double() / 2.0 ** layer.f_y)
                                * 2.0 ** layer.f_y + 0.5), 16)
    assert torch.equal(layer.run(xq, 16), ref)


def test_inexact_leaky_relu_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU())
    with pytest.raises(ValueError, match=r"layer 1 \(LeakyReLU\) has negative_slope=0.01, but "
                                         r"slimnfu needs an exact PWL table"):
        quantize_model(model, torch.rand(4, 4))
