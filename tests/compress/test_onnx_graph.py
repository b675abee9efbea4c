"""ONNX graphs as torch.fx graphs of torch modules: each op slimnfu runs becomes its module with
its settings, and every other op a ForeignOp that keeps its name."""

import warnings

import pytest
import torch
from torch import nn

from slimnfu.compress.intake import normalise
from slimnfu.compress.onnx_graph import ForeignOp, load_onnx

pytest.importorskip("onnx")


def _export(model, path, *shapes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), tuple(torch.rand(1, *s) for s in shapes), str(path),
                          dynamo=False)
    return load_onnx(path)


def test_every_op_becomes_its_module(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.LeakyReLU(0.125), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(3, 1), nn.Flatten(),
        nn.Linear(6, 8), nn.Hardtanh(-2.0, 2.0), nn.Dropout(), nn.Linear(8, 5), nn.Sigmoid())
    gm = _export(model, tmp_path / "m.onnx", (1, 14, 14))
    kinds = [type(m).__name__ for _, m in gm.named_children()]
    assert kinds == ["Conv2d", "LeakyReLU", "AvgPool2d", "Conv2d", "ReLU6", "MaxPool2d",
                     "Flatten", "Linear", "Hardtanh", "Linear", "Sigmoid"]
    convs = [m for m in gm.children() if isinstance(m, nn.Conv2d)]
    assert (convs[0].stride, convs[1].padding) == ((2, 2), (1, 1))
    x = torch.rand(3, 1, 14, 14)
    with torch.no_grad():
        assert (gm(x) - model(x)).abs().max() < 1e-6
    seq, report = normalise(gm, (1, 14, 14))
    assert report.ok and len(seq) == 11
    assert gm.meta["input_shape"] == (1, 14, 14)


def test_foreign_ops_keep_their_names(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Softmax(1))
    gm = _export(model, tmp_path / "m.onnx", (1, 4, 4))
    (foreign,) = [m for m in gm.children() if isinstance(m, ForeignOp)]
    assert (foreign.op_type, foreign.node_name) == ("Softmax", "/2/Softmax")
    _, report = normalise(gm, (1, 4, 4))
    (row,) = report.unsupported
    assert (row.node, row.op) == ("/2/Softmax", "ONNX Softmax")
    assert row.reason == "the ONNX op Softmax has no slimnfu equivalent"
    assert row.fix.startswith("remove it: the engine returns the logits")


def test_batchnorm_that_stays_is_checked(tmp_path):
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.BatchNorm1d(4))
    gm = _export(model, tmp_path / "m.onnx", (6,))
    assert any(isinstance(m, nn.BatchNorm1d) for m in gm.children())
    (row,) = normalise(gm, (6,))[1].unsupported
    assert row.reason.startswith("BatchNorm1d follows ReLU(), not a conv or linear layer")


def test_two_inputs_are_refused(tmp_path):
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    with pytest.raises(ValueError, match=r"the ONNX graph has 2 inputs \(.*\); slimnfu takes "
                                         r"a model with one input"):
        _export(Two(), tmp_path / "m.onnx", (3,), (3,))
