"""The fast runner (slimnfu.sim.fastsim) against the cocotb path, on the session's small
network: the same images give the same words (logits, counters, every layer's output)."""

import numpy as np
import pytest
import torch

from slimnfu.compress.quant import quantize_input
from slimnfu.gen.verilog import emit_accelerator
from slimnfu.sim import fastsim
from slimnfu.sim.network import expected_cycles, fast_spec, image_job, run_network_fast
from slimnfu.sim.runner import build_sim, run_jobs

#: The folder test_network_cosim builds the same program's cocotb model in (reused).
NAME = "test_net"


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(3)
    return torch.rand(3, 1, 10, 10, generator=gen), torch.tensor([0, 1, 2])


@pytest.fixture(scope="module")
def built(small_program, build_root):
    emitted = emit_accelerator(small_program, NAME, build_root / "verilog")
    spec = fast_spec(small_program, emitted, NAME)
    fastsim.ensure_built(spec, emitted["path"], log=lambda m: None)
    return emitted, spec


def test_fast_runner_gives_the_cocotb_words(small_qmodel, small_program, images, built,
                                            build_root):
    program, (emitted, spec) = small_program, built
    x = quantize_input(small_qmodel, images[0])
    jobs = [image_job(program, x[i], f"image{i}") for i in range(x.shape[0])]
    runner, dirs = build_sim("verilator", program.cfg, build_root=build_root, emitted=emitted,
                             name=NAME)
    slow = {r["name"]: r for r in run_jobs(runner, dirs, jobs,
                                           test_module="slimnfu.sim.tb_accel")}
    words = [job["image"] for job in jobs]
    fast = fastsim.run_images(spec, emitted["path"], words, layers=True, workers=2, chunk=2)
    free = fastsim.run_images(spec, emitted["path"], words, layers=False)
    assert not fast["status"].any() and not free["status"].any()
    for i, job in enumerate(jobs):
        s = slow[job["name"]]
        assert s["error"] is None, s["error"]
        counters = dict(zip(spec.counters, fast["counters"][i].tolist()))
        assert counters == s["counters"]
        assert counters["cycles"] == expected_cycles(program)["cycles"]
        assert fast["marks"][i].tolist() == s["marks"]
        assert fastsim.words_of(fast["logits"][i]) == s["logits"]
        assert [fastsim.words_of(layer[i]) for layer in fast["layers"]] == s["layers"]
        # a free run (no pauses) ends with the same counters and logits
        assert free["counters"][i].tolist() == fast["counters"][i].tolist()
        assert np.array_equal(free["logits"][i], fast["logits"][i])


def test_run_network_fast_checks_every_layer(small_qmodel, small_program, images, built):
    r = run_network_fast(small_program, small_qmodel, *images, name=NAME, layers=True,
                         workers=2, log=lambda m: None)
    assert r["bit_exact"] and r["mismatches"] == 0, r["failures"]
    assert r["rtl_correct"] == r["int_correct"] and None not in r["predictions"]
    assert r["cycles_as_expected"]
    assert sum(l["cycles"] for l in r["per_layer"]) == r["counters"]["cycles"] - 1


def test_the_input_file_is_checked(built, tmp_path):
    _, spec = built
    with pytest.raises(ValueError, match=f"image 0 has 1 NBin words, not {spec.image_words}"):
        fastsim.write_input(tmp_path / "in.bin", spec, [[0]])
    (tmp_path / "out.bin").write_bytes(b"SNFUIN01" + bytes(40))
    with pytest.raises(ValueError, match="not a fast-runner output file"):
        fastsim.read_output(tmp_path / "out.bin", spec)
