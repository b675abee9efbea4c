"""The scenario's flow (slimnfu.flows): cache names, checks, and the whole demo on a small
stand-in for LeNet-5, from training to the RTL on both simulators, into the session's build
and cache roots."""

import importlib.util
import json
import os
import pathlib
import re
import sys

import pytest
import torch
from torch import nn

from slimnfu import flows, paths
from slimnfu.compress import data
from slimnfu.config import Scenario

#: A few hundred training images and small splits; a 100-point budget accepts every step.
QUICK = Scenario(subset=512, budget=100.0, val=200, calib=100, ikr_finetune=2, patterns=4)


def test_cache_names_say_the_rule_and_the_splits():
    """The check split and its back-off (K1) name the file, so a network selected and judged
    on the session-13 layout (``..._A3-B2-C3_b1.0_v3000_c2000.json``) is never reused."""
    model = nn.Linear(2, 2)
    key = flows.hash_state(model)[:12]
    assert flows.network_file(Scenario(), model) == \
        f"lenet5_{key}_A3-B2-C3-K2_b1.0_v3000_k2000_c2000.json"
    assert flows.network_file(Scenario(fc_variant="affine", budget=2), model) == \
        f"lenet5_{key}_A3-B2-C3-K2_fcaffine_b2.0_v3000_k2000_c2000.json"
    assert flows.network_file(QUICK, model).endswith("_b100.0_v200_k2000_c100_s512_p4_ft2.json")
    assert flows.network_file(Scenario(check=1000), model).endswith("_v3000_k1000_c2000.json")
    # method C's training names the file when it is not the default's
    assert flows.network_file(Scenario(fc_epochs=1), model).endswith("_c2000_fe1.json")
    assert flows.network_file(Scenario(fc_patience=3), model).endswith("_c2000_fp3.json")
    # so does IKR pruning for the lane unit (patterns shared by 4 output channels)
    assert flows.network_file(Scenario(ikr_share=4), model).endswith("_c2000_sh4.json")
    with pytest.raises(ValueError, match=r"^ikr_share must be >= 1, not 0$"):
        Scenario(ikr_share=0)


def test_holdout_parts_the_calib_split():
    """Selection, then the check split at the tail; calibration at the head, never in the
    check split; a user's small split shrinks, the scenario's is refused."""
    x = torch.arange(5000)
    held = flows.holdout(Scenario(), x, x + 1)
    assert held["selection"][0].tolist() == list(range(3000))
    assert held["check"][0].tolist() == list(range(3000, 5000))
    assert held["check"][1].tolist() == list(range(3001, 5001))
    assert held["calibration"].tolist() == list(range(2000))
    held = flows.holdout(Scenario(val=1000, check=500, calib=4500), x, x)
    assert held["selection"][0].tolist() == list(range(3500, 4500))
    assert held["check"][0].tolist() == list(range(4500, 5000))
    assert held["calibration"].tolist() == list(range(4500))
    small = flows.holdout(Scenario(), x[:30], x[:30], shrink=True)
    assert small["check"][0].tolist() == list(range(20, 30))
    assert small["selection"][0].tolist() == list(range(20))
    assert small["calibration"].tolist() == list(range(20))


@pytest.mark.parametrize("scenario, n, shrink, message", [
    (Scenario(val=4000), 5000, False, r"^val 4000 and check 2000 must fit side by side in the "
                                      r"5000 images of the calib split$"),
    (Scenario(calib=3001), 5000, False, r"^calib 3001 and check 2000 must fit"),
    (Scenario(), 2, True, r"^the calib split has 2 images; a selection and a check split "
                          r"need at least 3$")])
def test_holdout_refuses_splits_that_do_not_fit(scenario, n, shrink, message):
    with pytest.raises(ValueError, match=message):
        flows.holdout(scenario, torch.zeros(n), torch.zeros(n), shrink=shrink)
    with pytest.raises(ValueError, match=r"^the calib split has 4 images and 3 labels$"):
        flows.holdout(Scenario(), torch.zeros(4), torch.zeros(3), shrink=True)


def test_scenario_checks():
    with pytest.raises(ValueError, match="fc_variant must be one of auto, affine, index"):
        Scenario(fc_variant="lfsr")
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        Scenario(config="huge")
    with pytest.raises(ValueError, match=r"budget must be in \[0, 100\] points, not -1"):
        Scenario(budget=-1)
    with pytest.raises(ValueError, match="network 'lenet5' is trained on 'mnist', not "
                                         "'fashion-mnist'"):
        flows.check(Scenario(dataset="fashion-mnist"))
    with pytest.raises(ValueError, match="val 4000 and check 2000 must fit side by side in "
                                         "the 5000 images"):
        flows.check(Scenario(val=4000))
    with pytest.raises(ValueError, match="check must be >= 1, not 0"):
        Scenario(check=0)


@pytest.fixture(scope="module")
def stand_in():
    """A small two-conv network on MNIST, trained for a moment, in place of trained LeNet-5
    (whose full training and RTL builds take minutes)."""
    from slimnfu.compress.train import fit

    root = pathlib.Path(os.environ.get(data.ENV_VAR) or "/nonexistent")
    if not (root / "mnist").is_dir():
        pytest.skip(f"no datasets: {data.ENV_VAR} does not name a folder with mnist/")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.MaxPool2d(2), nn.Conv2d(4, 6, 5),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(96, 16), nn.ReLU(),
                          nn.Linear(16, 10))
    x, y = data.load("mnist", "train")
    fit(model, x[:2000], y[:2000], 3e-3, batch_size=64)
    return model


@pytest.fixture
def trained(stand_in, monkeypatch):
    calls = []

    def train(name, **kw):
        calls.append((name, kw))
        return stand_in, {"acc_test": 50.0}

    monkeypatch.setattr(flows, "train", train)
    return calls


@pytest.mark.slow
def test_demo_end_to_end(trained, build_root, capsys):
    from slimnfu.demo import demo

    out = build_root / "demo_flow"
    assert demo(QUICK, images=2, icarus_images=1, dense_images=1, synth=False, out=out) == 0
    assert trained[0] == ("lenet5", {"epochs": None, "seed": 0, "subset": 512,
                                     "cache_dir": paths.models_dir(), "progress": True})
    report = json.loads((out / "report.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["dense"]["bit_exact"] and rows["compressed"]["bit_exact"]
    assert rows["compressed"]["icarus_bit_exact"] and rows["compressed"]["icarus_images"] == 1
    assert rows["compressed"]["config"] == "tiny_lenet5_compressed"
    assert rows["compressed"]["rtl_cycles"] < rows["dense"]["rtl_cycles"]
    assert set(report["compression"]["formats"].values()) >= {"slim", "ikr", "perm_affine"}
    for name in ("report.md", "accuracy_vs_macs.png", "cycles_per_layer.png", "rom/rom.hex"):
        assert (out / name).is_file(), name
    cached = list(paths.networks_dir().glob("lenet5_*_s512_p4_ft2.json"))
    assert len(cached) == 1
    assert (build_root / "verilog" / "tiny_lenet5_compressed" / "slimnfu_accel.v").is_file()
    text = capsys.readouterr().out
    assert "[6/6] running 2 test images through the RTL" in text
    assert "IKR unit: the window decoder (the IKR layers' patterns are not shared per output " \
           "tile of tn=4; --ikr-share 4 prunes for the lane unit)" in text
    # compressed once: the RTL step takes the network the demo compressed, not the cache's
    assert "reusing" not in text
    # numerical attribution: every layer, float -> integer -> RTL side by side, and the
    # calibration set's saturation events per layer (none: the scales come from it)
    for label, row in rows.items():
        a = row["attribution"]
        assert a["float"] == "measured" and a["images"] == QUICK.calib
        assert [r["layer"] for r in a["layers"]] == list(row["formats"])
        assert a["sat_events"] == 0 and all(r["sqnr_db"] > 30 for r in a["layers"]), a
        assert row["acc_float_same_images"] is not None and row["acc_rtl"] == \
            row["acc_int_same_images"]
    md = (out / "report.md").read_text()
    assert "Numerical attribution of compressed, on 100 calibration images" in md
    assert "| conv1 | slim |" in md


@pytest.mark.slow
def test_board_files_from_the_cached_network(trained, stand_in, build_root):
    report = flows.board_build(QUICK, "ulx3s-85f", image=3, do_build=False, log=lambda m: None)
    out = build_root / "board" / "ulx3s-85f"
    assert json.loads((out / "report.json").read_text()) == report
    assert report["bitstream"] is None and report["fc"] == "auto"
    assert report["fits"] is True and report["part"] == "LFE5U-85F"
    assert report["block_ram"]["brams"] <= 208 and report["acc_float_test_dense"] == 50.0
    assert report["config"]["name"] == "tiny_lenet5_compressed"
    assert report["model_key"] == flows.hash_state(stand_in)[:12]
    assert (out / "slimnfu_board.ys").is_file()
    with pytest.raises(ValueError, match="--image must be a test image index in 0..9999"):
        flows.board_build(QUICK, "ulx3s-85f", image=10000, do_build=False)


def test_cached_networks_are_checked(small_qmodel, tmp_path):
    """A tampered compressed-network cache is refused naming the file (issue 14, case 4: a
    changed weight, a weight of 1e6, a wrong n_out and a truncated file all used to compile or
    fail with a bare JSONDecodeError/KeyError)."""
    from slimnfu.atomic import write_hashed

    path = tmp_path / "net.json"
    state = {"qmodel": small_qmodel.to_state(), "history": {"val_acc": 1.0}}
    write_hashed(path, json.dumps(state).encode())
    q, history = flows.load_network(path)
    assert q.to_state() == small_qmodel.to_state() and history == {"val_acc": 1.0}

    text = path.read_text()
    path.write_text(text.replace('"values": [', '"values": [1, ', 1)[:len(text)])
    with pytest.raises(ValueError, match=f"{path}: its content does not match its sha256"):
        flows.load_network(path)

    def rehashed(edit):
        s = json.loads(json.dumps(state))
        edit(s)
        write_hashed(path, json.dumps(s).encode())

    rehashed(lambda s: s["qmodel"]["layers"][0]["w"]["values"].__setitem__(0, 10 ** 6))
    with pytest.raises(ValueError, match=rf"{path}: not a valid compressed network \(layers"
                                         rf"\[0\] \(conv1\)\.w: holds 1000000, outside 16 signed "
                                         rf"bits"):
        flows.load_network(path)
    rehashed(lambda s: s["qmodel"]["layers"][-1]["desc"].__setitem__("n_out", 2))
    with pytest.raises(ValueError, match=r"fc2\)\.w: has shape \(3, 7\), the descriptor needs "
                                         r"\(2, 7\)"):
        flows.load_network(path)
    rehashed(lambda s: s.pop("history"))
    with pytest.raises(ValueError, match=r"not a valid compressed network \(missing field "
                                         r"'history'\); delete it, or run again with "
                                         r"--recompress"):
        flows.load_network(path)
    write_hashed(path, text[:100].encode())
    with pytest.raises(ValueError, match=f"{path}: not a valid compressed network"):
        flows.load_network(path)


def test_the_float_network_of_a_cache_file(small_qmodel, tmp_path):
    """A cache file from before the float network was stored still loads: its attribution
    says so instead of failing; one with a float network gives it back, and a broken one is
    refused naming the file."""
    from slimnfu.atomic import write_hashed
    from slimnfu.compress.attribution import attribute, float_state

    path = tmp_path / "net.json"
    state = {"qmodel": small_qmodel.to_state(), "history": {}}
    write_hashed(path, json.dumps(state).encode())
    assert flows.load_network(path)[0].to_state() == small_qmodel.to_state()
    assert flows.load_float(path) is None
    x = torch.rand(4, *small_qmodel.input_shape)
    a = attribute(flows.load_float(path), small_qmodel, x)
    assert a["float"] == "float not cached; run with --recompress"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    write_hashed(path, json.dumps({**state, "float": float_state(net)}).encode())
    with torch.no_grad():
        assert torch.equal(flows.load_float(path)(x[:, :1]), net(x[:, :1]))
    write_hashed(path, json.dumps({**state, "float": {"modules": [{"type": "Conv3d"}]}})
                 .encode())
    with pytest.raises(ValueError, match=rf"{path}: its float network does not read back "
                                         rf"\(float.modules\[0\].type: must be one of"):
        flows.load_float(path)


def test_a_board_build_drops_im2col_to_fit(small_qmodel, monkeypatch):
    """When the first layer's patches make the ROM build miss the part and the program
    without them fits, the program is compiled without im2col; otherwise it keeps it."""
    def fit(program, weights, part):
        fits = program.im2col is None
        return {"fits": fits, "summary": f"{'fits' if fits else 'over'} {part}"}

    monkeypatch.setattr(flows, "block_ram_fit", fit)
    scenario = Scenario(network="small", config="tiny")
    assert flows.compile_for(small_qmodel, scenario).im2col is not None
    program, got = flows.fitting_program(small_qmodel, scenario, "LFE5U-25F", log=lambda m: 0)
    assert program.im2col is None and got["fits"]
    assert program.stats["im2col"]["why"] == "switched off to fit LFE5U-25F: over LFE5U-25F"
    assert program.cfg.nbin_depth < flows.compile_for(small_qmodel, scenario).cfg.nbin_depth
    monkeypatch.setattr(flows, "block_ram_fit", lambda p, w, part: {"fits": False,
                                                                    "summary": "over"})
    program, got = flows.fitting_program(small_qmodel, scenario, "LFE5U-25F", log=print)
    assert program.im2col is not None and not got["fits"]


def test_compress_reads_its_cache_file_once(small_qmodel, tmp_path, monkeypatch):
    """``compress(..., with_float=True)`` gives the quantised and the float network from one
    read of the (megabytes of) cache file."""
    from slimnfu.atomic import write_hashed
    from slimnfu.compress.attribution import float_state

    torch.manual_seed(0)
    model, net = nn.Linear(2, 2), nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    path = tmp_path / "network" / flows.network_file(Scenario(), model)
    path.parent.mkdir()
    state = {"qmodel": small_qmodel.to_state(), "history": {"h": 1}, "float": float_state(net)}
    write_hashed(path, json.dumps(state).encode())
    reads = []
    real = flows.read_hashed
    monkeypatch.setattr(flows, "read_hashed", lambda *a: reads.append(a) or real(*a))
    q, hist, fm = flows.compress(Scenario(), model, tmp_path, log=lambda m: None,
                                 with_float=True)
    assert len(reads) == 1 and hist == {"h": 1}
    assert q.to_state() == small_qmodel.to_state()
    x = torch.rand(2, 1, 5, 5)
    with torch.no_grad():
        assert torch.equal(fm(x), net(x))
    assert len(flows.compress(Scenario(), model, tmp_path, log=lambda m: None)) == 2


@pytest.fixture
def no_long_steps(monkeypatch):
    """Fail any test that reaches training: verify's checks come first."""
    def train(*args, **kw):
        raise AssertionError("verify trained before checking its options")

    monkeypatch.setattr(flows, "train", train)


@pytest.mark.parametrize("argv, message", [
    (["lenet6"], "unknown network 'lenet6': give one of lenet300, lenet5, vgg_fmnist, or a "
                 "compressed network file"),
    (["missing.json"], "missing.json: no such compressed network file"),
    (["--images", "10001"], r"--images must select images in 0..9999 \(a count in 1..10000, or "
                            r"A:B with 0 <= A < B <= 10000\), not '10001'"),
    (["--images", "0"], "--images must select images in 0..9999"),
    (["--images", "9999:10001"], "--images must select images in 0..9999"),
    (["--images", "some"], "--images must be 'all', a count N or a range A:B, not 'some'"),
    (["--workers", "0"], "--workers must be an integer >= 1, not 0"),
    (["--config", "huge"], "unknown config 'huge'"),
])
def test_verify_refuses_bad_input_first(argv, message, no_long_steps, capsys):
    from slimnfu import cli

    assert cli.main(["verify", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimnfu verify: error: ")
    assert re.search(message, err), err


def test_verify_refuses_bad_files_and_folders(small_qmodel, no_long_steps, tmp_path, capsys):
    from slimnfu import cli
    from slimnfu.atomic import write_hashed

    net = tmp_path / "lenet5_net.json"
    write_hashed(net, json.dumps({"qmodel": small_qmodel.to_state(), "history": {}}).encode())
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for argv, message in (
            ([str(net), "--dense"], f"--dense needs a network name (its float network is "
                                    f"quantised dense), not the compressed network file {net}"),
            ([str(bad)], f"{bad}: no content hash beside it"),
            (["--out", str(tmp_path)], f"--out {tmp_path} is a folder")):
        assert cli.main(["verify", *argv]) == 2
        assert message in capsys.readouterr().err


def test_verify_without_ray_names_the_package(monkeypatch, no_long_steps, capsys):
    from slimnfu import cli

    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main(["verify", "--ray", "local"]) == 2
    assert "--ray needs the Python package 'ray' (pip install ray==2.60.0)" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_verify_on_the_fast_runner(trained, build_root, monkeypatch, capsys):
    """``slimnfu verify`` of the stand-in (compressed by test_demo_end_to_end, or now): a few
    test images on a local Ray instance when ray is installed, else on local workers. On
    ``small`` (8x8) the NBin and NBout words are 128 bits wide, wider than the ports the
    harness sees on ``tiny``."""
    from slimnfu import cli

    address = ["--ray", "local"] if importlib.util.find_spec("ray") else []
    monkeypatch.setattr(cli, "DEFAULT", QUICK)
    out = build_root / "verify_flow.json"
    assert cli.main(["verify", "--images", "10:16", "--config", "small", "--workers", "2",
                     "--no-progress", "--out", str(out), *address]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 6 and report["first_image"] == 10
    assert report["bit_exact"] and report["acc_equal"]
    assert report["ray"] == (address[1] if address else None)
    c = report["builds"]["compressed"]
    assert c["config"] == "small_lenet5_compressed" and c["mismatches"] == 0
    assert c["acc_rtl"] == c["acc_int"] and c["cycles_as_expected"]
    assert c["cycles_per_image"]["min"] == c["cycles_per_image"]["max"] == \
        c["expected_cycles"]["cycles"]
    assert c["acc_float"] is not None and c["attribution"]["float"] == "measured"
    assert c["attribution"]["sat_events"] == 0
    text = capsys.readouterr().out
    assert "6 images, bit-exact True" in text
    assert re.search(r"compressed: accuracy on the 6 images float [\d.]+% -> integer "
                     r"[\d.]+% -> RTL [\d.]+%; 0 saturation events on 100 calibration "
                     r"images", text), text
