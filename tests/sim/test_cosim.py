"""The cocotb regression: a short run on both simulators, the comparison, and bad inputs."""

import json
from pathlib import Path

import pytest
import torch

from slimnfu.cli import main
from slimnfu.config import LayerDesc, get_config
from slimnfu.rtl.engine import LayerEngine
from slimnfu.sim.cases import case_job, make_case
from slimnfu.sim.regression import regression_cases
from slimnfu.sim.runner import compare


def test_short_regression_on_icarus_and_verilator(tmp_path, capsys):
    out = tmp_path / "results.json"
    status = main(["cosim", "--sim", "icarus", "verilator", "--config", "tiny", "--quick",
                   "--out", str(out)])
    entries = json.loads(out.read_text())
    assert status == 0, capsys.readouterr().err
    assert {e["sim"] for e in entries} == {"icarus", "verilator"}
    assert len(entries) == 12
    for e in entries:
        assert e["passed"] and e["mismatches"] == 0
        assert e["cycles"] == e["expected_cycles"]
        assert {"name", "sim", "config", "passed", "cycles", "expected_cycles",
                "wall_s"} <= set(e)
    assert "12/12 passed" in capsys.readouterr().out


def test_compare_catches_a_wrong_bit_and_a_wrong_cycle_count():
    from slimnfu.formats import layout

    cfg = get_config("tiny")
    case = make_case("t", LayerDesc("conv", 3, 5, 4, 4, 3, pad=1), cfg, seed=3)
    y = case.expected.clone()
    words = layout.pack_input(y, cfg)
    steps = case.desc.dense_cycles(cfg)
    good = {"words": words, "counters": {"cycles": steps + LayerEngine.latency(cfg, case.desc),
                                         "steps": steps,
                                         "mults": steps * cfg.tn * cfg.ti,
                                         "sat_events": case.expected_sat}}
    assert compare(case, good, cfg, "icarus")["passed"]
    words_bad = list(words)
    words_bad[5] ^= 1 << 17
    entry = compare(case, {**good, "words": words_bad}, cfg, "icarus")
    assert not entry["passed"] and entry["mismatches"] == 1 and "channel" in entry["error"]
    entry = compare(case, {**good, "counters": {**good["counters"], "cycles": 1}}, cfg,
                    "icarus")
    assert not entry["passed"] and "cycles 1 != expected" in entry["error"]
    entry = compare(case, {**good, "counters": {**good["counters"], "mults": 0}}, cfg,
                    "icarus")
    assert not entry["passed"] and "mults 0 != expected" in entry["error"]


def test_testbench_fails_its_results_file_when_outputs_differ(tmp_path):
    """A case whose reference is off by one: the comparison names the element, and the cocotb
    test's own verdict fails results.xml (so a CI reading only that file sees it)."""
    from cocotb_tools.check_results import get_results

    from slimnfu.sim.runner import run_regression

    cfg = get_config("tiny").with_(name="tiny_tb_verdict")
    case = make_case("off_by_one", LayerDesc("conv", 3, 5, 4, 4, 3, pad=1), cfg, seed=3)
    case.expected = case.expected.clone()
    case.expected[4, 3, 2] += 1
    good = make_case("good", LayerDesc("fc", 6, 3), cfg, seed=4)
    entries = run_regression(cfg, [good, case], sims=("verilator",), log=lambda *_: None,
                             build_root=tmp_path)
    assert [e["passed"] for e in entries] == [True, False]
    assert "1 outputs differ; first at channel 4, y 3, x 2" in entries[1]["error"]
    assert "disagrees" not in entries[1]["error"]
    run_dir = Path(entries[1]["run_dir"])
    assert run_dir.parent == tmp_path / "cosim" / "verilator" / cfg.name / "runs"
    assert get_results(run_dir / "results.xml") == (1, 1)
    raw = json.loads((run_dir / "out.json").read_text())
    assert raw[0]["tb_verdict"] is None and "1 NBout words differ" in raw[1]["tb_verdict"]


def test_cases_cover_the_brief():
    cfg = get_config("tiny")
    cases = regression_cases(cfg, seed=2)
    kinds = {(d.kind, d.k, d.stride, d.pad > 0) for d in (c.desc.layer for c in cases)}
    for k in (1, 3, 5):
        for s in (1, 2):
            for p in (False, True):
                assert ("conv", k, s, p) in kinds
    assert {c.desc.layer.kind for c in cases} == {"conv", "fc", "maxpool", "avgpool"}
    assert {c.desc.layer.act for c in cases} == {"none", "relu", "pwl"}
    assert any(c.desc.layer.n_in % cfg.ti and c.desc.layer.n_out % cfg.tn for c in cases)
    rails = torch.cat([c.x.flatten() for c in cases])
    assert (rails == cfg.qmin).any() and (rails == cfg.qmax).any()


@pytest.mark.parametrize("argv, message", [
    (["--set", "tn=0"], "tn must be in [1, 64], not 0"),
    (["--set", "acc=20"], "acc must be >= 35 for dw=16"),
    (["--set", "depth=3"], "--set needs KEY=VALUE with KEY one of"),
    (["--layer", '{"kind": "conv", "n_in": 64, "n_out": 64, "h_in": 28, "w_in": 28, "k": 3}'],
     "needs 12544 input words (ceil(n_in/ti)*h_in*w_in), but config 'tiny' has "
     "nbin_depth=2048"),
    (["--layer", '{"kind": "conv", "n_in": 1, "n_out": 1, "h_in": 17, "w_in": 1, '
                 '"stride": 16}'], "stride must be < 16 (descriptor field width), not 16"),
    (["--set", "acc=35", "--layer", '{"kind": "conv", "n_in": 9, "n_out": 4, "h_in": 5, '
                                    '"w_in": 5, "k": 3}'],
     "can sum to 38 bits, but config 'tiny+acc=35' has acc=35"),
    (["--sim", "modelsim"], "--sim must be among icarus, verilator, not 'modelsim'"),
    (["--layer", "[" * 100000 + "]" * 100000], "--layer 0: nested too deeply to be a layer"),
    (["--layer", '{"kind": ["conv"], "n_in": 1, "n_out": 1}'], "layer kind must be one of"),
    (["--seed", str(10 ** 23)], "seed must be an integer in [0, 2**40)"),
    (["--config", "huge"], "unknown config 'huge'"),
])
def test_bad_input_stops_before_simulation(argv, message, capsys, tmp_path):
    out = tmp_path / "results.json"
    assert main(["cosim", "--quick", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not out.exists()


def test_out_that_cannot_be_written_stops_before_simulation(capsys, tmp_path):
    assert main(["cosim", "--quick", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["cosim", "--quick", "--out", str(tmp_path / "f" / "r.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_case_files_round_trip_every_variant(tmp_path):
    """A case file holds the pass, the config as changes from a named one, and the operands;
    reading it gives the same case and the same golden output."""
    from slimnfu.formats.base import record_to_state
    from slimnfu.sim import fuzz
    from slimnfu.sim.cases import read_case, write_case

    cfg = get_config("tiny").changed(tn=3, ti=3, ikr=1, perm=1, kgate=1, dw=8, acc=30,
                                     **{"perm.depth": 64})
    drawn = fuzz.draw_cases(cfg, 200, seed=1)
    seen = set()
    for spec, case in drawn:
        if spec.variant in seen:
            continue
        seen.add(spec.variant)
        path = write_case(tmp_path / f"{spec.variant}.json", case, cfg, {"why": "test"})
        cfg2, back = read_case(path)
        assert cfg2.changes_from(cfg) == {} and cfg2.name.startswith("tiny+")
        assert back.desc == case.desc and back.format == case.format
        for key in ("x", "w", "b", "expected"):
            a, b = getattr(case, key), getattr(back, key)
            assert (a is None and b is None) or torch.equal(a, b), key
        assert back.expected_sat == case.expected_sat
        if case.compressed is not None:
            assert json.dumps(record_to_state(back.compressed)) == \
                json.dumps(record_to_state(case.compressed))
        assert json.loads(path.read_text())["note"] == {"why": "test"}
    assert seen == set(fuzz.VARIANTS)


def test_layer_files_are_checked_before_simulation(tmp_path, capsys):
    from slimnfu.sim.cases import write_case

    cfg = get_config("tiny")
    good = write_case(tmp_path / "good.json", make_case("t", LayerDesc("fc", 5, 3), cfg, 1),
                      cfg)
    d = json.loads(good.read_text())
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "other.json").write_text('{"schema": "slimnfu-image"}')
    (tmp_path / "shape.json").write_text(json.dumps({**d, "x": {"shape": [4],
                                                                "values": [1, 2, 3, 4]}}))
    (tmp_path / "cfg.json").write_text(json.dumps({**d, "config": {"base": "tiny",
                                                                   "set": {"tn": 0}}}))
    out = tmp_path / "r.json"
    for argv, message in [
        (["--layer", f"@{tmp_path / 'missing.json'}"],
         f"--layer @{tmp_path / 'missing.json'}: cannot be read (No such file or directory)"),
        (["--layer", "@"], "--layer @FILE needs a file name after @"),
        (["--layer", f"@{tmp_path / 'bad.json'}"], "bad.json: not valid JSON"),
        (["--layer", f"@{tmp_path / 'other.json'}"], "other.json: not a case file"),
        (["--layer", f"@{tmp_path / 'shape.json'}"], "shape.json: operands:"),
        (["--layer", f"@{tmp_path / 'cfg.json'}"], "cfg.json: config: tn must be in"),
        (["--layer", f"@{good}", "--config", "small"], "give no --config, --set"),
        (["--layer", f"@{good}", "--quick"], "give no --config, --set"),
        (["--layer", f"@{good}", "--layer", '{"kind": "fc", "n_in": 2, "n_out": 2}'],
         "give no --config, --set"),
    ]:
        assert main(["cosim", "--out", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, (argv, err)
        assert not out.exists()


def test_untouched_words_and_the_placement_check():
    """A placed pass (nbout_base, lane_skip) is read where it writes; the words around it and
    the lanes it skips must keep their bits, and compare names the words that changed."""
    from slimnfu.config import PassDesc
    from slimnfu.formats import layout
    from slimnfu.sim.cases import untouched_words

    cfg = get_config("tiny").with_(kgate=True)
    desc = PassDesc(LayerDesc("conv", 3, 6, 2, 2, 1), nbout_base=5, lane_skip=1)
    spans = untouched_words(desc, cfg)
    full = cfg.tn * cfg.dw
    assert spans[:4] == [[1, full], [2, full], [3, full], [4, full]]
    assert spans[4:8] == [[13, full], [14, full], [15, full], [16, full]]
    assert spans[8:] == [[a, cfg.dw] for a in range(5, 9)]
    case = make_case("placed", desc, cfg, seed=2)
    latency = LayerEngine.latency(cfg, case.desc)
    job = case_job(case, cfg)
    assert job["nbout_base"] == 5 and job["untouched"] == spans
    assert job["expect"]["lane_masks"][0] == ((1 << full) - 1) ^ ((1 << cfg.dw) - 1)
    y = case.expected.clone()
    y[0] += 7  # the skipped lane holds what another pass wrote: not compared
    counters = {"cycles": case.desc.dense_cycles(cfg) + latency,
                "steps": case.desc.dense_cycles(cfg),
                "mults": case.desc.dense_cycles(cfg) * 16, "sat_events": case.expected_sat,
                "gated": 0}
    raw = {"words": layout.pack_output(y, cfg), "counters": counters, "clobbered": []}
    assert compare(case, raw, cfg, "icarus")["passed"]
    entry = compare(case, {**raw, "clobbered": [3], "tb_verdict": "1 NBout words outside "
                           "the pass changed"}, cfg, "icarus")
    assert not entry["passed"] and "outside the pass changed: [3]" in entry["error"]


def test_waves_on_icarus(tmp_path):
    """A traced Icarus build (Verilog-2005, so not cocotb's SystemVerilog dump module) writes
    an FST waveform into the run's own folder."""
    from slimnfu.sim.runner import run_regression, wave_file

    cfg = get_config("tiny")
    entry, = run_regression(cfg, [make_case("w", LayerDesc("fc", 5, 3), cfg, 1)],
                            sims=("icarus",), waves=True, log=lambda *_: None,
                            build_root=tmp_path)
    assert entry["passed"]
    wave = wave_file({"run": entry["run_dir"]})
    assert wave.name == "slimnfu_engine.fst" and wave.stat().st_size > 0
