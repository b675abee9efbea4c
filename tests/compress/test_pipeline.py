"""The pipeline checks its model first: one clear error before any long step, and a model with
BatchNorm, Dropout and bias-free layers runs through to the end."""

import functools
import time

import pytest
import torch
from torch import nn

from slimnfu.compress import ikr, train
from slimnfu.compress.intake import IntakeError
from slimnfu.compress.pipeline import compress_network


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 10, 10, generator=g), torch.randint(0, 4, (n,), generator=g)


def _user_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding="same", bias=False), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(),
        nn.Linear(16, 4)).eval()


def test_unsupported_model_is_refused_before_any_step(monkeypatch):
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 4), nn.Softmax(1))
    data = _data(8, 0)
    with pytest.raises(IntakeError, match=r"^the model is not supported: node '5' "
                                          r"\(Softmax\(dim=1\)\): Softmax is not a layer "
                                          r"slimnfu runs; fix: remove it"):
        compress_network(model, data, data, data[0])


def test_one_conv_is_refused_before_any_step(monkeypatch):
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    data = _data(8, 0)
    with pytest.raises(ValueError, match="the network needs two conv layers"):
        compress_network(model, data, data, data[0])


def test_batchnorm_dropout_and_bias_free_layers_run_to_the_end(monkeypatch):
    # one fine-tuning step where the pipeline would take hundreds: the point is the model's path
    monkeypatch.setattr(ikr, "IkrOptions", functools.partial(ikr.IkrOptions, final_batches=1))
    xs, ys = _data(128, 1)
    xv, yv = _data(32, 2)
    model = _user_model()
    t0 = time.monotonic()
    fm, q, hist = compress_network(model, (xs, ys), (xv, yv), xv[:16], budget_pct=100.0,
                                   patterns=4, ikr_finetune=1, fc_variant="affine",
                                   log=lambda message: None)
    assert [l.name for l in q.layers] == ["conv1", "pool1", "conv2", "fc1", "fc2"]
    assert [l.format for l in q.layers] == ["slim", "dense", "ikr", "perm_affine", "dense"]
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.Dropout)) for m in fm)
    assert time.monotonic() - t0 < 60
