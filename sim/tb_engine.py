"""The cocotb test module of the layer-engine regression.

It reads the jobs from the JSON file named by ``SLIMNFU_COSIM_JOBS`` (written by
:mod:`slimnfu.sim.runner`), runs them one after another in one simulation, and writes the raw
results (NBout words, counters, wall time, error, and the NBout words outside the pass that
changed: a job's ``untouched`` words are read before and after the run) to
``SLIMNFU_COSIM_OUT``. The runner, which has torch, compares them with the golden model and
reports where they differ; this module needs only cocotb, and checks each job against the
words and counters the job expects, so a difference also fails the test and its results file.
"""

import json
import os
import time

import cocotb
from cocotb.triggers import SimTimeoutError

from slimnfu.sim.driver import EngineTB, JobLog, differing_words


def verdict(job, entry):
    """``None`` when ``entry`` (a raw result) is what ``job["expect"]`` says, else why not."""
    if entry["error"]:
        return entry["error"]
    expect = job["expect"]
    bad = differing_words(entry["words"], expect)
    problems = [f"{bad} NBout words differ"] if bad else []
    if entry.get("clobbered"):
        problems.append(f"{len(entry['clobbered'])} NBout words outside the pass changed")
    problems += [f"{name} {entry['counters'].get(name)} != {want}"
                 for name, want in expect["counters"].items()
                 if entry["counters"].get(name) != want]
    return "; ".join(problems) or None



@cocotb.test()
async def engine_regression(dut):
    """Run every job; a job's failure is recorded and the engine is reset for the next one."""
    with open(os.environ["SLIMNFU_COSIM_JOBS"]) as f:
        jobs = json.load(f)
    log = JobLog(dut, "jobs")
    tb = EngineTB(dut)
    for job in jobs:
        t0 = time.perf_counter()
        entry = {"name": job["name"], "words": None, "counters": None, "error": None}
        await tb.reset()
        try:
            for sel, words in job["loads"]:
                await tb.load(sel, words)
            spans = job.get("untouched", [])
            before = await tb.read_bits(spans)
            t_run = time.perf_counter()
            entry["counters"] = await tb.run(job["desc_value"], job["timeout_cycles"])
            entry["run_s"] = time.perf_counter() - t_run
            entry["words"] = await tb.read_nbout(job["nbout_words"], job.get("nbout_base", 0))
            after = await tb.read_bits(spans)
            entry["clobbered"] = [a for (a, _), b0, b1 in zip(spans, before, after) if b0 != b1]
        except SimTimeoutError:
            entry["error"] = f"done did not pulse within {job['timeout_cycles']} cycles"
        except ValueError as exc:
            entry["error"] = str(exc)
        entry["wall_s"] = time.perf_counter() - t0
        log.record(entry, verdict(job, entry))
    log.assert_all_passed()
