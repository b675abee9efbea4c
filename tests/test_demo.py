"""``slimnfu demo`` refuses bad options before any long step, runs the scenario its options
name, and reports (the whole flow runs in tests/test_flows.py)."""

from argparse import Namespace

import pytest

from slimnfu.demo import run_demo


def _args(**kw):
    base = dict(config="tiny", images=20, icarus_images=2, budget=1.0, no_synth=True,
                pnr_timeout=1800, out="build/demo_test_never_written")
    return Namespace(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"config": "huge"}, "--config must be one of tiny, small, diannao, not 'huge'"),
    ({"images": 0}, r"--images must be in \[1, 1000\], not 0"),
    ({"icarus_images": 30}, r"--icarus-images must be in \[0, --images\], not 30"),
    ({"budget": -1.0}, r"--budget must be in \[0, 100\] points, not -1.0"),
])
def test_bad_option(kw, message):
    with pytest.raises(ValueError, match=message):
        run_demo(_args(**kw))


def test_options_become_the_scenario(monkeypatch):
    from slimnfu import demo
    from slimnfu.config import Scenario

    calls = []
    monkeypatch.setattr(demo, "demo", lambda *a, **kw: calls.append((a, kw)) or 0)
    assert demo.run_demo(_args(config="small", budget=0.5, images=7, icarus_images=3)) == 0
    assert calls == [((Scenario(config="small", budget=0.5), 7, 3),
                      {"synth": False, "pnr_timeout_s": 1800,
                       "out": "build/demo_test_never_written"})]


def _report(synth, board=None):
    row = {"method": "compressed", "acc_float": 99.1, "acc_int": 99.1, "acc_rtl": 95.0,
           "images_rtl": 20, "bit_exact": True, "macs_dense": 100, "macs": 25,
           "conv_macs_dense": 80, "conv_macs": 10, "bits_dense": 10, "bits": 5}
    return {"rows": [row], "acc_float_base": 99.3, "synth": synth, "board": board,
            "wall_s": 1.0}


def test_report_names_the_engine_and_the_board(monkeypatch):
    from slimnfu import demo
    from slimnfu.bench import network

    monkeypatch.setattr(network, "markdown", lambda rows: "TABLE")
    synth = {"config": "tiny", "scope": "engine", "weights": "none",
             "weights_why": "engine only: too big", "luts": 7267, "ffs": 3417, "dsps": 20,
             "brams": 46, "fmax_mhz": 24.4, "part": "LFE5U-25F", "fits": "fits"}
    board = {"board": "ulx3s-85f", "fc": "affine", "acc_int_test": 97.5,
             "pnr": {"fmax_mhz": 31.46, "target_mhz": 25.0, "utilization": {
                 "TRELLIS_COMB": {"used": 9000, "available": 83640},
                 "DCCA": {"used": 1, "available": 56}}}}
    text = demo._markdown(_report(synth, board))
    assert "Synthesis of the 'tiny' engine (engine only: too big): 7,267 LUT4" in text
    assert "fmax 24.4 MHz on LFE5U-25F" in text
    assert ("Board build (`slimnfu board`, ulx3s-85f, fc1 affine, integer test accuracy "
            "97.50%): bitstream placed and routed at 31.5 MHz against the board's 25 MHz "
            "clock; 9,000/83,640 TRELLIS_COMB.") in text
    assert "Board build" not in demo._markdown(_report(synth))


def test_board_report_matches_the_checkpoint(tmp_path):
    import json
    import time

    import torch

    from slimnfu.compress.pipeline import hash_state
    from slimnfu.demo import _board_report

    model = torch.nn.Linear(2, 2)
    key = hash_state(model)[:12]
    assert _board_report(model, tmp_path) is None
    for name, r in [("a", {"model_key": "other", "bitstream": "x", "pnr": {}}),
                    ("b", {"model_key": key, "bitstream": None, "pnr": None}),
                    ("c", {"model_key": key, "bitstream": "c.bit", "pnr": {"fmax_mhz": 1}})]:
        (tmp_path / "board" / name).mkdir(parents=True)
        (tmp_path / "board" / name / "report.json").write_text(json.dumps(r))
        time.sleep(0.01)
    assert _board_report(model, tmp_path)["bitstream"] == "c.bit"
