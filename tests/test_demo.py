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


def test_budget_check_says_plainly_when_the_test_set_is_over(monkeypatch):
    from slimnfu import demo
    from slimnfu.bench import network

    monkeypatch.setattr(network, "markdown", lambda rows: "TABLE")
    row = {"method": "compressed", "acc_float": 97.9, "acc_int": 97.69}
    hist = {"budget_pct": 1.0, "val_acc_base": 99.2,
            "final": {"val_acc": 98.23, "val_acc_int": 98.2, "within_budget": True,
                      "within_budget_int": True}}
    b = demo.budget_check(99.3, [row], hist)
    assert (b["loss_test_int_pts"], b["within_budget_test"], b["within_budget_val"]) == \
        (1.61, False, True)
    assert b["verdict"] == ("OVER the 1-point budget on the test set: integer 97.69% against "
                            "the dense 99.30% (1.61 points lost) although the validation "
                            "split was within it")
    b = demo.budget_check(99.3, [{**row, "acc_int": 98.9}], hist)
    assert b["within_budget_test"] and b["verdict"].startswith("within the 1-point budget")
    text = demo._markdown({**_report(None), "budget_check": demo.budget_check(99.3, [row], hist),
                           "compression": {"fc_tries": [
                               {"variant": "affine", "groups": 4, "val_acc": 98.2, "epochs": 6,
                                "best_epoch": 4, "wall_s": 300.0, "accepted": True}]}})
    assert "Budget: OVER the 1-point budget on the test set" in text
    assert "perm_affine G=4: val 98.20% after 6 epochs (best 4, 300 s), accepted" in text
    # the pipeline's verdict on the check split (images no decision saw) is reported beside
    hist["final"].update({"check_images": 2000, "check_acc_base": 99.1, "check_acc": 98.3,
                          "check_acc_int": 98.25, "within_budget_check": True,
                          "shipped": "A, B, C perm_affine G=4"})
    b = demo.budget_check(99.3, [row], hist)
    assert b["verdict"].endswith("(1.61 points lost) although the check split was within it")
    assert (b["within_budget_check"], b["shipped"]) == (True, "A, B, C perm_affine G=4")
    text = demo._markdown({**_report(None), "budget_check": b})
    assert ("; check split (2,000 images no decision saw) 98.30% float, 98.25% integer against "
            "99.10%, shipped: A, B, C perm_affine G=4.") in text


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


def _run_args(**kw):
    base = dict(model="net.py:make_model", data="d.npz", weights=None, train_epochs=None,
                budget=1.0, methods="auto", patterns=16, ikr_finetune=150, ikr_share=1,
                config="tiny",
                images=20, icarus_images=1,
                dense_images=1, synth=False, pnr_timeout=1800, out=None)
    return Namespace(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"methods": "slim,lfsr"}, "--methods must be 'auto' or a comma-separated list"),
    ({"dense_images": -1}, r"--dense-images must be in \[0, 1000\], not -1"),
    ({"train_epochs": -2}, r"--train-epochs must be in \[0, 1000\], not -2"),
    ({"patterns": 17}, r"--patterns must be in \[1, 16\], not 17"),
    ({"ikr_finetune": -1}, r"--ikr-finetune must be in \[0, 100000\], not -1"),
    ({"ikr_share": 0}, r"--ikr-share must be in \[1, 1024\], not 0"),
    ({"images": 0}, r"--images must be in \[1, 1000\], not 0"),
    ({"model": "lenet5", "data": "fashion-mnist"},
     "a reference network runs on its own data set with its own training: lenet5 --data mnist"),
    ({"model": "lenet5", "data": "mnist", "methods": "slim"},
     "the reference flow is lenet5 with all three methods"),
    ({"model": "vgg_fmnist", "data": "fashion-mnist"},
     "the reference flow is lenet5 with all three methods and the default --patterns, "
     "--ikr-finetune and --ikr-share; for vgg_fmnist"),
    ({"model": "lenet5", "data": "mnist", "patterns": 4}, "the reference flow is lenet5"),
    ({"model": "lenet5", "data": "mnist", "ikr_share": 4}, "the reference flow is lenet5"),
])
def test_run_refuses_bad_options(kw, message, monkeypatch):
    from slimnfu import demo

    monkeypatch.setattr(demo, "run_model", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(ValueError, match=message):
        demo.run_command(_run_args(**kw))


def test_run_of_lenet5_on_mnist_is_the_demo(monkeypatch):
    from slimnfu import demo
    from slimnfu.config import Scenario

    calls = []
    monkeypatch.setattr(demo, "demo", lambda *a, **kw: calls.append((a, kw)) or 0)
    assert demo.run_command(_run_args(model="lenet5", data="mnist", synth=True, images=5,
                                      dense_images=0, methods="slim,ikr,perm")) == 0
    assert calls == [((Scenario(), 5, 1, 0), {"synth": True, "pnr_timeout_s": 1800,
                                              "out": None})]


def _factory(tmp_path, body):
    path = tmp_path / "net.py"
    path.write_text("from torch import nn\n\n\ndef make_model():\n"
                    f"    return nn.Sequential({body})\n")
    return f"{path}:make_model"


def _npz(tmp_path, n=140, classes=4):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8),
             y=np.arange(n) % classes)
    return str(tmp_path / "d.npz")


@pytest.mark.parametrize("body, message", [
    ("nn.Flatten(), nn.Linear(64, 4), nn.Softmax(1)",
     r"is not supported: node '2' \(Softmax\(dim=1\)\): Softmax is not a layer"),
    ("nn.Flatten(), nn.Linear(64, 3)",
     r"net.py:make_model: the model gives 3 outputs, but the data .*d.npz has labels 0..3; its "
     r"last layer must be a Linear with at least 4 outputs"),
    ("nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 4)",
     r"Conv2d has in_channels=3 but gets 1 \(channels, input shape \(1, 8, 8\)\)"),
])
def test_run_refuses_a_model_before_any_training(tmp_path, body, message, monkeypatch):
    from slimnfu import flows
    from slimnfu.demo import run_model

    monkeypatch.setattr(flows, "fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=message):
        run_model(_factory(tmp_path, body), _npz(tmp_path), out=tmp_path / "out")


def test_run_refuses_bad_data_before_loading_the_model(tmp_path, monkeypatch):
    from slimnfu import flows
    from slimnfu.demo import run_model

    monkeypatch.setattr(flows, "fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(FileNotFoundError, match="--data .*none.npz: no such file or folder"):
        run_model("does/not/matter.py:make_model", tmp_path / "none.npz", out=tmp_path / "o")


def test_report_has_the_layer_table(monkeypatch):
    from slimnfu import demo
    from slimnfu.bench import network

    monkeypatch.setattr(network, "markdown", lambda rows: "TABLE")
    report = _report(None)
    report["rows"][0]["sat_events"] = 0
    report.update(title="slimnfu run: net.py on d.npz", test_set="60 test images of d.npz",
                  wall_name="Run", compression={"plan": [
                      {"module": 0, "method": "ikr", "final": "dense", "why": None},
                      {"module": 3, "method": "dense", "final": "dense",
                       "why": "the classifier"}]},
                  layers=[{"layer": "conv1", "format": "dense", "macs_dense": 1000,
                           "macs": 1000, "bits_dense": 160, "bits": 160, "cycles": 1234}])
    text = demo._markdown(report)
    assert text.startswith("# slimnfu run: net.py on d.npz\n\nAccuracy on the 60 test images")
    assert "| conv1 | dense | 1,000 | 1,000 | 160 | 160 | 1,234 |" in text
    assert ("Method plan: module 0: ikr -> dense; module 3: dense -> dense (the classifier)."
            in text)
    assert "Saturation events on the RTL (first image, every layer): 0." in text
    assert text.endswith("Run wall time 1.0 s.")


def test_run_command_line_names_the_bad_data(tmp_path, capsys):
    from slimnfu.cli import main

    assert main(["run", "net.py:make_model", "--data", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimnfu run: error: --data ") and "none.npz: no such file" in err
