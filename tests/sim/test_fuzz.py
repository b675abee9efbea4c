"""The fuzzer: its draws, its shrinking on an injected bug (no simulator), its command line, and
a small fixed-seed sample on both simulators."""

import collections
import json

import pytest
import torch

from slimnfu import fixed
from slimnfu.cli import main
from slimnfu.config import get_config
from slimnfu.formats import layout
from slimnfu.sim import fuzz
from slimnfu.sim.cases import case_job, expected_counters, read_case, reference
from slimnfu.sim.runner import compare
from slimnfu.sim.tb_engine import verdict

CFG = get_config("tiny").changed(tn=3, ti=3, ikr=1, perm=1, kgate=1, **{"perm.depth": 64})


def test_draws_cover_every_variant_activation_and_target():
    drawn = fuzz.draw_cases(CFG, 400, seed=5)
    specs = [s for s, _ in drawn]
    assert len(specs) >= 390
    assert {s.variant for s in specs} == set(fuzz.VARIANTS)
    assert {s.act for s in specs} == set(fuzz.ACTIVATIONS)
    assert {t[0] for s in specs for t in s.targets} == set(fuzz.TARGETS)
    slim = [s for s in specs if s.variant == "slim_pass"]
    assert any(s.lane_k for s in slim) and any(s.koff for s in slim)
    assert any(s.nbout_base for s in slim) and any(s.lane_skip for s in slim)
    cases = [c for _, c in drawn]
    assert any(c.desc.layer.n_in % CFG.ti and c.desc.layer.n_out % CFG.tn for c in cases)
    assert any(c.expected_sat for c in cases) and any(c.desc.layer.shift == 0 for c in cases
                                                      if not c.desc.layer.is_pool)
    x = torch.cat([c.x.flatten() for c in cases])
    assert (x == CFG.qmin).any() and (x == CFG.qmax).any()
    # every case fits its config and the step budget
    assert max(c.desc.steps(CFG) for c in cases) <= fuzz.MAX_STEPS


def test_targets_hit_exact_ties_and_rails():
    """A target sets an output's accumulator exactly: a negative tie rounds up, the edges of
    the rails saturate or not by one step."""
    spec = fuzz.FuzzSpec("fc", 3, 6, shift_delta=2, seed=4,
                         targets=(("tie_neg", 0, 7), ("hi_edge", 1, 0), ("hi_over", 2, 0),
                                  ("lo_edge", 3, 0), ("lo_under", 4, 0), ("tie_zero", 5, 0)))
    case = fuzz.build_case(spec, CFG, "t")
    acc = fixed.accumulate(case.desc, case.x.unsqueeze(0), case.w, case.b)[0]
    sh = case.desc.layer.shift
    assert sh > 0 and (acc[0] % (1 << sh)) == 1 << (sh - 1) and acc[0] < 0
    assert case.expected[1] == case.expected[2] == CFG.qmax
    assert case.expected[3] == case.expected[4] == CFG.qmin
    assert case.expected[5] == 0
    one = fixed.SatCount()
    fixed.requant(acc[1:5], sh, CFG.dw, one)
    assert one.events == 2


def test_configs_are_drawn_within_the_brief():
    cfgs = fuzz.draw_configs(30, seed=2)
    assert len({c.name for c in cfgs}) == 30
    assert all(c.tn == c.ti and 1 <= c.tn <= 16 for c in cfgs)
    assert {c.dw for c in cfgs} == {8, 16}
    assert all(c.acc >= c.min_acc for c in cfgs)
    for feature in ("ikr", "perm", "kgate"):
        assert any(feature in c.features for c in cfgs)
        assert any(feature not in c.features for c in cfgs)
    assert {c.ikr.tiles for c in cfgs if c.ikr} >= {1, 2}
    assert {c.ikr.lanes for c in cfgs if c.ikr} == {False, True}
    again = fuzz.draw_configs(30, seed=2)
    assert [c.name for c in again] == [c.name for c in cfgs]


def _stand_in(true_requant, monkeypatch):
    """A simulator stand-in that computes what the contract says (with the real requant),
    returning what the testbench would: words, counters and its verdict."""
    runs = []

    def run_batch(cfg, cases, sim):
        runs.append(len(cases))
        entries = []
        for case in cases:
            with monkeypatch.context() as m:
                m.setattr(fixed, "requant", true_requant)
                y, sat = reference(case.desc, case.x, case.w, case.b, case.pwl, cfg)
            d = case.desc
            counters = {**expected_counters(case, cfg), "sat_events": sat}
            raw = {"name": case.name, "error": None, "counters": counters,
                   "words": layout.pack_output(y.reshape(d.layer.n_out, d.h_out, d.w_out),
                                               cfg), "clobbered": []}
            raw["tb_verdict"] = verdict(case_job(case, cfg), raw)
            entries.append(compare(case, raw, cfg, sim))
        return entries

    return run_batch, runs


def test_shrinks_an_injected_bug_to_a_small_replayable_case(monkeypatch, tmp_path):
    """The golden model is broken on purpose: an exact negative tie rounds down. The fuzzer
    finds it, hypothesis shrinks it to a one-output layer with few non-zero values, and the
    case file replays to the same failure."""
    true_requant = fixed.requant

    def broken_requant(acc, sh, dw, count=None):
        acc = torch.as_tensor(acc, dtype=torch.int64)
        if sh:
            tie = ((acc & ((1 << sh) - 1)) == 1 << (sh - 1)) & (acc < 0)
            acc = acc - tie.to(torch.int64)
        return true_requant(acc, sh, dw, count)

    monkeypatch.setattr(fixed, "requant", broken_requant)
    run_batch, runs = _stand_in(true_requant, monkeypatch)
    summary = fuzz.run_fuzz(120, seed=7, sims=("verilator",), per_config=60, batch=60,
                            max_tn=4, build_root=tmp_path, log=lambda *_: None,
                            run_batch=run_batch)
    assert summary["failed"] > 0
    # the bug shows as wrong outputs, or only as a wrong saturation count (a tie one step
    # from a rail); each kind is shrunk on its own
    assert {f["kind"] for f in summary["failures"]} <= {"outputs", "sat_events"}
    shrunk = [f for f in summary["failures"] if "shrunk" in f and f["kind"] == "outputs"]
    assert shrunk
    spec, original = shrunk[0]["shrunk_spec"], shrunk[0]["spec"]
    assert len(spec["targets"]) <= 1
    assert spec["n_in"] * spec["h_in"] * spec["w_in"] <= \
        original["n_in"] * original["h_in"] * original["w_in"]
    cfg, case = read_case(shrunk[0]["shrunk"])
    # one or two outputs, a few inputs, a few non-zero operands (the drawn case had dozens)
    assert case.expected.numel() <= 2 and case.x.numel() <= 32
    nonzero = sum(int((t != 0).sum()) for t in (case.x, case.w, case.b) if t is not None)
    assert 1 <= nonzero <= 4
    # the file replays: the same operands, the same (broken) expectation, the same failure
    entry, = run_batch(cfg, [case], "verilator")
    assert not entry["passed"] and fuzz.failure_kind(entry) == "outputs"
    note = json.loads(open(shrunk[0]["shrunk"]).read())["note"]
    assert note["shrunk_from"] == shrunk[0]["case"] and note["kind"] == "outputs"
    assert sum(runs) < 2000
    written = json.loads((tmp_path / "fuzz" / "summary.json").read_text())
    assert written["failed"] == summary["failed"]


def test_a_correct_golden_model_passes_the_stand_in(monkeypatch, tmp_path):
    run_batch, _ = _stand_in(fixed.requant, monkeypatch)
    summary = fuzz.run_fuzz(80, seed=3, sims=("icarus",), per_config=40, max_tn=5,
                            build_root=tmp_path, log=lambda *_: None, run_batch=run_batch)
    assert summary["failed"] == 0 and summary["per_sim"]["icarus"]["cases"] == 80
    assert sum(summary["coverage"].values()) == 80


def test_time_budget_stops_new_batches(monkeypatch, tmp_path):
    run_batch, runs = _stand_in(fixed.requant, monkeypatch)
    summary = fuzz.run_fuzz(40, seed=3, sims=("icarus",), per_config=20, batch=10,
                            time_budget=1e-9, build_root=tmp_path, log=lambda *_: None,
                            run_batch=run_batch)
    assert summary["budget_hit"] and summary["per_sim"]["icarus"]["cases"] == 0 and not runs


@pytest.mark.parametrize("argv, message", [
    (["--cases", "0"], "--cases must be an integer >= 1, not '0'"),
    (["--cases", "many"], "--cases must be an integer >= 1, not 'many'"),
    (["--seed", "-1"], "--seed must be an integer in 0 .. 4294967295, not '-1'"),
    (["--seed", "x1"], "--seed must be an integer in 0 .. 4294967295"),
    (["--sim", "icarus,modelsim"], "--sim must be a comma-separated list of icarus, "
                                   "verilator, not 'modelsim'"),
    (["--time-budget", "0"], "--time-budget must be a number of seconds > 0, not '0'"),
    (["--max-tn", "17"], "--max-tn must be an integer in 1 .. 16, not '17'"),
    (["--per-config", "0"], "--per-config must be an integer >= 1"),
])
def test_bad_arguments_stop_before_anything_runs(argv, message, capsys, tmp_path,
                                                 monkeypatch):
    monkeypatch.setenv("SLIMNFU_BUILD", str(tmp_path))
    assert main(["fuzz", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (tmp_path / "fuzz").exists()


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["fuzz", "--help"])
    out = capsys.readouterr().out
    for option in ("--cases", "--seed", "--sim", "--time-budget", "--waves", "--per-config"):
        assert option in out


def test_fixed_seed_sample_on_both_simulators(capsys, tmp_path, monkeypatch):
    """What ``make test`` fuzzes: 48 cases on one small config with every method feature, on
    Icarus and Verilator, all bit-exact; then a placed slim pass replayed from its case file."""
    monkeypatch.setenv("SLIMNFU_BUILD", str(tmp_path))
    assert main(["fuzz", "--cases", "48", "--seed", "22", "--sim", "icarus,verilator",
                 "--max-tn", "3", "--per-config", "48", "--keep-builds"]) == 0, \
        capsys.readouterr().err
    summary = json.loads((tmp_path / "fuzz" / "summary.json").read_text())
    assert summary["per_sim"]["icarus"]["cases"] == summary["per_sim"]["verilator"]["cases"] \
        == 48
    variants = collections.Counter(k.split("/")[0] for k in summary["coverage"])
    assert set(variants) == set(fuzz.VARIANTS)
    cfg, = fuzz.draw_configs(1, 22, 3)
    assert cfg.name == summary["configs"][0]["name"] and len(cfg.features) == 3
    placed = [c for s, c in fuzz.draw_cases(cfg, 48, 22 * 1000, "s22c0_")
              if s.variant == "slim_pass" and s.nbout_base and s.lane_skip and s.lane_k]
    from slimnfu.sim.cases import write_case

    path = write_case(tmp_path / "one.json", placed[0], cfg)
    out = tmp_path / "results.json"
    assert main(["cosim", "--sim", "icarus", "--layer", f"@{path}", "--out", str(out)]) == 0
    entry, = json.loads(out.read_text())
    assert entry["passed"] and entry["name"] == placed[0].name and entry["config"] == cfg.name
