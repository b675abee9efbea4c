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
