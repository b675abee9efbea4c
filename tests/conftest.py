"""Shared fixtures: a small quantised network that exercises every kind of layer move."""

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def small_qmodel():
    """conv -> relu -> maxpool -> conv(pad) -> avgpool -> flatten -> fc -> sigmoid -> fc, on
    10x10 images, quantised on random calibration images."""
    from slimnfu.compress.quant import quantize_model

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(5 * 2 * 2, 7), nn.Sigmoid(), nn.Linear(7, 3))
    return quantize_model(model, torch.rand(16, 1, 10, 10))


@pytest.fixture(scope="session")
def small_program(small_qmodel):
    """``small_qmodel`` compiled for a ``tiny`` engine with small buffers."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(small_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    return compile_model(small_qmodel, cfg)
