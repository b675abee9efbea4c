"""Accounting checked against hand-counted LeNet-5 numbers."""

import pytest
import torch
from torch import nn

from slimnfu.compress.quant import quantize_model
from slimnfu.config import get_config
from slimnfu.formats import FORMATS
from slimnfu.formats.accounting import layer_stats, model_stats
from slimnfu.formats.base import StoredItem, register
from slimnfu.formats.dense import DenseFormat


def _lenet5():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))


@pytest.fixture(scope="module")
def lenet5_q():
    return quantize_model(_lenet5(), torch.rand(8, 1, 28, 28), dw=16)


def test_lenet5_hand_counts(lenet5_q):
    s = model_stats(lenet5_q)
    per = {l["name"]: l for l in s["layers"]}
    assert per["conv1"]["macs"] == 20 * 24 * 24 * 25 == 288000
    assert per["conv2"]["macs"] == 50 * 8 * 8 * 500 == 1600000
    assert per["fc1"]["macs"] == 400000 and per["fc2"]["macs"] == 5000
    assert per["pool1"]["macs"] == 0 and per["pool1"]["pool_ops"] == 20 * 12 * 12 * 4
    assert per["pool2"]["pool_ops"] == 50 * 4 * 4 * 4
    assert per["conv1"]["params"] == 20 * 25 + 20 and per["conv2"]["params"] == 50 * 500 + 50
    assert per["fc1"]["params"] == 800 * 500 + 500 and per["fc2"]["params"] == 5010
    assert s["params"] == s["params_dense"] == 431080
    assert s["macs"] == s["macs_dense"] == 2293000
    assert s["conv_macs"] == 1888000 and s["fc_macs"] == 405000
    weights, biases = 431080 - 580, 580
    assert s["bits"] == s["bits_dense"] == weights * 16 + biases * 48


def test_image_bits_pad_to_lanes(lenet5_q):
    cfg = get_config("tiny")                           # tn = ti = 4
    st = layer_stats(lenet5_q.layers[0], 16, 48, cfg)  # conv1: 1 -> 20, 5x5
    w, b = st["items"]
    assert (w["words"], w["width"]) == (1 * 5 * 25, 4 * 4 * 16)
    assert (b["words"], b["width"]) == (5, 4 * 48)
    assert st["image_bits"] == 125 * 256 + 5 * 192
    with pytest.raises(ValueError, match="dw=8"):
        model_stats(lenet5_q, cfg.with_(dw=8))


def test_pwl_items_and_registered_format(lenet5_q):
    q = quantize_model(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), torch.rand(5, 4), dw=8)
    st = model_stats(q)
    assert [i["name"] for i in st["layers"][0]["items"]] == ["weights", "bias", "pwl"]
    assert st["bits"] == 12 * 8 + 3 * 48 + 16 * 24

    class HalfDemo(DenseFormat):
        """A made-up format: 6 values with 2-bit indices, half the MACs."""

        name = "halfdemo"

        def items(self, ql, dw, acc):
            return [StoredItem("values", 6, dw), StoredItem("indices", 6, 2),
                    StoredItem("bias", ql.desc.n_out, acc)]

        def macs(self, ql):
            return ql.desc.macs() // 2

        def params(self, ql):
            return 6 + ql.desc.n_out

    register(HalfDemo())
    try:
        q.layers[0].format = "halfdemo"
        st = model_stats(q)
        assert st["bits"] == 6 * 8 + 6 * 2 + 3 * 48 and st["bits_dense"] == 12 * 8 + 3 * 48 + 384
        assert (st["macs"], st["macs_dense"], st["params"], st["params_dense"]) == (6, 12, 9, 15)
    finally:
        del FORMATS["halfdemo"]
    with pytest.raises(ValueError, match=r"layer fc1: unknown weight format 'halfdemo'; known "
                                         r"formats: dense, ikr"):
        model_stats(q)
    with pytest.raises(TypeError, match="a format must be a WeightFormat with a name"):
        register(object())
