"""Whole-network inference on the accelerator's Verilog, on Icarus and Verilator."""

import pytest
import torch

from slimnfu.sim.network import expected_cycles, run_network


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_images_bit_exact_every_layer(small_qmodel, small_program, sim):
    q, program = small_qmodel, small_program
    gen = torch.Generator().manual_seed(3)
    images, labels = torch.rand(3, 1, 10, 10, generator=gen), torch.tensor([0, 1, 2])
    r = run_network(program, q, images, labels, sim=sim, name="test_net", log=lambda s: None)
    assert r["bit_exact"], r["failures"]
    assert r["rtl_correct"] == r["int_correct"]
    assert r["counters"]["cycles"] == expected_cycles(program)["cycles"]
    assert None not in r["predictions"]
    layers = r["per_layer"]
    assert sum(l["engine_cycles"] for l in layers) == r["counters"]["engine_cycles"]
    assert sum(l["cycles"] for l in layers) == r["counters"]["cycles"] - 1


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_slim_network_on_the_verilog(slim_qmodel, sim):
    """Method A's passes (centre taps, gated lanes, approximation) in the ROM build."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(slim_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                         nbout_depth=256, bias_depth=8))
    program = compile_model(slim_qmodel, cfg.with_(name="tiny_test_slim"))
    images = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(4))
    r = run_network(program, slim_qmodel, images, torch.tensor([0, 1]), sim=sim,
                    name="test_slim_net", log=lambda s: None)
    assert r["bit_exact"], r["failures"]
    assert r["counters"]["cycles"] == expected_cycles(program)["cycles"]
    assert r["counters"]["gated"] > 0


@pytest.mark.parametrize("lanes", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["window_decoder", "lane_unit"])
def test_every_format_in_one_network_on_verilator(mixed_qmodel, mixed_lanes_qmodel, lanes):
    """Every format in one network; its IKR conv on the window decoder (a pattern per kernel)
    or, its patterns shared per output tile, on the lane unit: the compiler picks the unit.
    The window decoder's is slow (``make test-slow``), where the demo flow runs it too."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    q = mixed_lanes_qmodel if lanes else mixed_qmodel
    cfg = config_for(q, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64, nbout_depth=256,
                                              bias_depth=8))
    assert cfg.ikr.lanes == lanes
    name = "tiny_test_mixed" + ("_lanes" if lanes else "")
    program = compile_model(q, cfg.with_(name=name))
    images = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(6))
    r = run_network(program, q, images, torch.tensor([0, 1]), sim="verilator",
                    name=name.replace("tiny_test", "test") + "_net", log=lambda s: None)
    assert r["bit_exact"], r["failures"]
    assert r["counters"]["cycles"] == expected_cycles(program)["cycles"]


def test_im2col_network_on_verilator():
    """A first conv over 3 channels with stride 2 and padding, run as im2col (forced on: its
    patches are 27 channels), then max pooling and an FC layer: bit-exact on every layer, the
    cycles the schedule model predicts."""
    from torch import nn

    from slimnfu.compress.quant import quantize_model
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for
    from slimnfu.gen.schedule import inference_cycles

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(5 * 2 * 2, 4))
    q = quantize_model(model, torch.rand(16, 3, 9, 9))
    cfg = config_for(q, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64, nbout_depth=256,
                                              bias_depth=8))
    program = compile_model(q, cfg.with_(name="tiny_test_im2col"), im2col="on")
    assert program.layers[0].im2col and program.layers[0].desc.layer.n_in == 27
    images = torch.rand(3, 3, 9, 9, generator=torch.Generator().manual_seed(8))
    r = run_network(program, q, images, torch.tensor([0, 1, 2]), sim="verilator",
                    name="test_im2col_net", log=lambda s: None)
    assert r["bit_exact"], r["failures"]
    assert r["counters"]["cycles"] == expected_cycles(program)["cycles"]
    assert inference_cycles(program) == r["counters"]["cycles"] + 7 * 5 * 5
    assert [l["im2col"] for l in r["per_layer"]] == [True, False, False]
