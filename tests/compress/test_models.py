"""Tests of slimnfu.compress.models: the reference networks and the supported-layer check."""

import pytest
import torch
from torch import nn

from slimnfu.compress import models


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, params", [
    ("lenet300", 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
    ("lenet5", 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10),
    ("vgg_fmnist", 32 * 9 + 32 + 32 * 32 * 9 + 32 + 64 * 32 * 9 + 64 + 64 * 64 * 9 + 64
     + 3136 * 256 + 256 + 256 * 10 + 10),
])
def test_networks_build_and_run(name, params):
    model = models.build(name)
    assert isinstance(model, nn.Sequential)
    assert models.check_supported(model) is model
    assert _params(model) == params
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    spec = models.NETWORKS[name]
    assert spec["dataset"] in ("mnist", "fashion-mnist")
    assert spec["epochs"] >= 1 and spec["lr"] > 0 and spec["batch_size"] >= 1


def test_lenet5_is_caffe_lenet():
    kinds = [type(m).__name__ for m in models.build("lenet5")]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU",
                     "Linear"]


def test_vgg_has_only_3x3_convs_and_no_norm_or_dropout():
    model = models.build("vgg_fmnist")
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert convs and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert all(type(m) in models.SUPPORTED for m in model)


def test_unknown_network():
    with pytest.raises(ValueError, match="unknown network 'resnet'; known networks: lenet300, "
                                         "lenet5, vgg_fmnist"):
        models.build("resnet")


@pytest.mark.parametrize("layer, words", [
    (nn.BatchNorm2d(4), ["layer 1 (BatchNorm2d) is not supported"]),
    (nn.Dropout(0.5), ["layer 1 (Dropout) is not supported"]),
    (nn.Conv2d(4, 4, 3, groups=2), ["layer 1 (Conv2d)", "groups=2", "groups=1"]),
    (nn.Conv2d(4, 4, 3, dilation=2), ["layer 1 (Conv2d)", "dilation=(2, 2)"]),
    (nn.Conv2d(4, 4, (3, 5)), ["layer 1 (Conv2d)", "kernel_size=(3, 5)", "square kernel"]),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), ["padding_mode='reflect'"]),
    (nn.Conv2d(4, 4, 3, padding=(1, 0)), ["padding=(1, 0)"]),
    (nn.Conv2d(4, 4, 3, stride=(1, 2)), ["stride=(1, 2)"]),
    (nn.AvgPool2d(3), ["layer 1 (AvgPool2d)", "kernel_size=3", "power-of-two window"]),
    (nn.AvgPool2d(2, divisor_override=3), ["divisor_override=3"]),
    (nn.MaxPool2d(2, padding=1), ["layer 1 (MaxPool2d)", "padding=1", "no padding"]),
    (nn.MaxPool2d(2, ceil_mode=True), ["ceil_mode=True"]),
    (nn.Flatten(0), ["layer 1 (Flatten)", "start_dim=1, end_dim=-1"]),
    (nn.LeakyReLU(0.1), ["layer 1 (LeakyReLU)", "negative_slope=0.1",
                         "not a multiple of 2**-14"]),
    (nn.Hardtanh(-1.0, 10.0), ["layer 1 (Hardtanh)", "min_val, max_val=(-1.0, 10.0)",
                               "segment boundaries"]),
])
def test_check_supported_names_the_offender(layer, words):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.ReLU())
    with pytest.raises(ValueError) as info:
        models.check_supported(model)
    message = str(info.value)
    for word in words:
        assert word in message
    assert "supported layers: Conv2d" in message and "Tanh" in message


def test_check_supported_accepts_user_networks():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Conv2d(8, 8, 3, stride=2), nn.Sigmoid(), nn.MaxPool2d(3, 1),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10, bias=False))
    assert models.check_supported(model) is model


def test_check_supported_accepts_exact_piecewise_linear_activations():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.LeakyReLU(0.125), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3), nn.ReLU6(), nn.Flatten(), nn.Linear(8, 4),
                          nn.Hardtanh(-2.0, 2.0))
    assert models.check_supported(model) is model
    # a slope of 2**-7 is exact at 16 bits, not at 8 (6 fractional bits)
    slope = nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(2 ** -7))
    assert models.check_supported(slope) is slope
    with pytest.raises(ValueError, match="not a multiple of 2\\*\\*-6"):
        models.check_supported(slope, dw=8)
    assert models.activation_of(nn.ReLU6()) == ("pwl", "hardtanh(0.0,6.0)")
    assert models.activation_of(nn.Linear(2, 2)) is None


def test_check_supported_needs_a_sequential():
    with pytest.raises(TypeError, match="must be a torch.nn.Sequential .* not Linear"):
        models.check_supported(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="empty"):
        models.check_supported(nn.Sequential())
