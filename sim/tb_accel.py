"""The cocotb test module of whole-network inference on the accelerator (``slimnfu_accel``).

It reads the jobs (one image each) from the JSON file named by ``SLIMNFU_COSIM_JOBS``, written
by :func:`slimnfu.sim.network.image_job`, and writes the raw results to ``SLIMNFU_COSIM_OUT``:
per image the NBout words of every layer (read while the accelerator pauses after each layer,
when the job asks for ``step``), the ``cycles`` and ``engine_cycles`` counters at each pause
(``marks``), the logits' words, the final counters, the wall times, and the simulation times
(ns) at which ``start`` and each ``resume`` were driven (to place a cycle in a waveform). The
comparison with the integer reference, layer by layer, happens in :mod:`slimnfu.sim.network`,
which has torch; this module checks each image's logits against the words its job expects,
so a difference also fails the test and its results file.

Inputs change on the falling clock edge, as in :mod:`slimnfu.sim.driver`.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, RisingEdge, SimTimeoutError, with_timeout

from slimnfu.rtl.accelerator import ACCEL_COUNTERS
from slimnfu.sim.driver import CLOCK_NS, EngineTB, JobLog, differing_words


async def _rise(signal, cycles, what):
    """Wait for ``signal`` to rise within ``cycles`` clock cycles, else raise ``what``."""
    try:
        await with_timeout(RisingEdge(signal), cycles * CLOCK_NS, "ns")
    except SimTimeoutError:
        raise SimTimeoutError(f"{what} within {cycles} cycles") from None


def _verdict(job, entry):
    """``None`` when the logits are the ones ``job["expect"]`` gives (or it gives none)."""
    if entry["error"]:
        return entry["error"]
    expect = job.get("expect")
    if expect is None:
        return None
    bad = differing_words(entry["logits"], expect)
    return f"{bad} logit words differ" if bad else None


async def _infer(dut, job):
    """Load one image, run the program and collect the outputs; return the result dict."""
    dut.img_en.value = 1
    for addr, word in enumerate(job["image"]):
        dut.img_addr.value = addr
        dut.img_data.value = int(word)
        await FallingEdge(dut.clk)
    dut.img_en.value = 0
    dut.step.value = int(job["step"])
    dut.start.value = 1
    start_ns, resume_ns = get_sim_time("ns"), []
    await FallingEdge(dut.clk)
    dut.start.value = 0
    t_run, read_s = time.perf_counter(), 0.0
    timeout = job["timeout_cycles"]
    tb = EngineTB(dut)
    layers, marks = [], []
    if job["step"]:
        for count in job["layer_words"]:
            if dut.paused.value != 1:
                await _rise(dut.paused, timeout, f"no pause after layer {len(layers)}")
                await FallingEdge(dut.clk)
            marks.append([dut.cycles.value.to_unsigned(), dut.engine_cycles.value.to_unsigned()])
            t0 = time.perf_counter()
            layers.append(await tb.read_nbout(count))
            read_s += time.perf_counter() - t0
            dut.resume.value = 1
            resume_ns.append(get_sim_time("ns"))
            await FallingEdge(dut.clk)
            dut.resume.value = 0
        if dut.done.value != 1:
            raise SimTimeoutError("done did not pulse after the last layer's pause")
    else:
        await _rise(dut.done, timeout, "done did not pulse")
        await FallingEdge(dut.clk)
    names = ACCEL_COUNTERS + (("gated",) if hasattr(dut, "gated") else ())
    counters = {name: getattr(dut, name).value.to_unsigned() for name in names}
    run_s = time.perf_counter() - t_run
    logits = await tb.read_nbout(job["logit_words"])
    return {"layers": layers if job["step"] else None, "marks": marks, "logits": logits,
            "counters": counters, "run_s": run_s, "read_s": read_s, "start_ns": start_ns,
            "resume_ns": resume_ns}


@cocotb.test()
async def network_inference(dut):
    """Run every image; a failure is recorded and the accelerator is reset for the next one."""
    with open(os.environ["SLIMNFU_COSIM_JOBS"]) as f:
        jobs = json.load(f)
    log = JobLog(dut, "images")
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    for job in jobs:
        t0 = time.perf_counter()
        for name in ("start", "img_en", "img_addr", "img_data", "rd_addr", "step", "resume"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        for _ in range(2):
            await FallingEdge(dut.clk)
        dut.rst.value = 0
        await FallingEdge(dut.clk)
        entry = {"name": job["name"], "error": None}
        try:
            entry.update(await _infer(dut, job))
        except (SimTimeoutError, ValueError) as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["wall_s"] = time.perf_counter() - t0
        log.record(entry, _verdict(job, entry))
    log.assert_all_passed()
