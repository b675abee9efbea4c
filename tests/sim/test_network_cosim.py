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


def test_every_format_in_one_network_on_verilator(mixed_qmodel):
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(mixed_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    program = compile_model(mixed_qmodel, cfg.with_(name="tiny_test_mixed"))
    images = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(6))
    r = run_network(program, mixed_qmodel, images, torch.tensor([0, 1]), sim="verilator",
                    name="test_mixed_net", log=lambda s: None)
    assert r["bit_exact"], r["failures"]
    assert r["counters"]["cycles"] == expected_cycles(program)["cycles"]
