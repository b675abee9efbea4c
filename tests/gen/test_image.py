"""Weight images: round trips, atomic writes, and one test per rejection."""

import hashlib
import json
import shutil

import pytest
import torch
from torch import nn

from slimnfu import atomic
from slimnfu.config import get_config
from slimnfu.formats.accounting import model_stats
from slimnfu.compress.quant import int_forward, quantize_model
from slimnfu.gen.image import ImageError, export, load
from slimnfu.formats.layout import pack_weights

CFG = get_config("tiny")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(5 * 36, 300), nn.Sigmoid(), nn.Linear(300, 10))


@pytest.fixture(scope="module")
def qmodel():
    return quantize_model(_model(), torch.rand(16, 1, 28, 28))


@pytest.fixture
def img(qmodel, tmp_path):
    export(qmodel, CFG, tmp_path / "img")
    return tmp_path / "img"


def _edit_manifest(img, fn):
    path = img / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def _rewrite(img, fname, text):
    """Replace a hex file and fix its checksum, so deeper checks are reached."""
    (img / fname).write_text(text)
    _edit_manifest(img, lambda m: m["files"][fname].update(
        sha256=hashlib.sha256(text.encode()).hexdigest()))


def test_round_trip(qmodel, img):
    q2, cfg, manifest = load(img)
    assert cfg == CFG and manifest["version"] == 2
    for a, b in zip(qmodel.layers, q2.layers):
        assert a.desc == b.desc and (a.f_x, a.f_w, a.f_y) == (b.f_x, b.f_w, b.f_y)
        assert (a.w is None and b.w is None) or (torch.equal(a.w, b.w) and
                                                 torch.equal(a.b, b.b))
        assert (a.pwl is None and b.pwl is None) or a.pwl.to_dict() == b.pwl.to_dict()
    x = torch.rand(20, 1, 28, 28)
    assert torch.equal(int_forward(qmodel, x)[0], int_forward(q2, x)[0])


def test_manifest_contents(qmodel, img):
    m = json.loads((img / "manifest.json").read_text())
    stats = model_stats(qmodel, CFG)
    written = 0
    for layer in m["layers"]:
        for item, fname in layer["files"].items():
            info = m["files"][fname]
            lines = (img / fname).read_text().splitlines()
            assert len(lines) == info["words"] == layer["words"][item]
            assert all(len(l) == -(-info["width"] // 4) for l in lines)
            assert layer["bits"][item] == info["words"] * info["width"]
            written += layer["bits"][item]
    assert written == stats["image_bits"] == m["stats"]["image_bits"]
    conv1 = m["layers"][0]
    words = [int(l, 16) for l in (img / conv1["files"]["weights"]).read_text().split()]
    assert words == pack_weights(qmodel.layers[0].w, CFG)
    # fc1 (180 -> 300) needs 45*75 = 3375 SB words: exported, marked as not fitting tiny
    fc1 = m["layers"][4]
    assert fc1["fits"] is False and "sb_depth=1024" in fc1["fits_error"]
    assert fc1["words"]["weights"] == 3375
    assert len((img / "program.hex").read_text().split()) == 6


def test_interrupted_export_leaves_nothing(qmodel, tmp_path, monkeypatch):
    calls = []
    real = atomic._write_file

    def failing(path, text):
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        real(path, text)

    monkeypatch.setattr(atomic, "_write_file", failing)
    with pytest.raises(OSError, match="simulated"):
        export(qmodel, CFG, tmp_path / "img")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(atomic, "_write_file", real)
    export(qmodel, CFG, tmp_path / "img")
    before = (tmp_path / "img" / "manifest.json").read_text()
    calls.clear()
    monkeypatch.setattr(atomic, "_write_file", failing)
    with pytest.raises(OSError):
        export(qmodel, CFG, tmp_path / "img")
    assert [p.name for p in tmp_path.iterdir()] == ["img"]
    assert (tmp_path / "img" / "manifest.json").read_text() == before
    load(tmp_path / "img")


def test_export_refusals(qmodel, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="other exists and is not a weight image that slimnfu "
                                         "wrote .*refusing to replace it"):
        export(qmodel, CFG, tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file/sub: .*file is a file, not a folder"):
        export(qmodel, CFG, tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="dw=8.*quantised for dw=16"):
        export(qmodel, CFG.with_(dw=8), tmp_path / "x")


def test_reject_missing_manifest(tmp_path):
    with pytest.raises(ImageError, match=r"manifest.json: file: missing"):
        load(tmp_path)


def test_reject_bad_json(img):
    (img / "manifest.json").write_text("{")
    with pytest.raises(ImageError, match=r"^manifest.json: json: not valid JSON"):
        load(img)


def test_reject_wrong_version(img):
    _edit_manifest(img, lambda m: m.update(version=3))
    with pytest.raises(ImageError, match=r"^manifest.json: version: is 3; this slimnfu reads "
                                         r"versions 1, 2"):
        load(img)


def test_reject_wrong_schema(img):
    _edit_manifest(img, lambda m: m.update(schema="other"))
    with pytest.raises(ImageError, match=r"^manifest.json: schema:"):
        load(img)


def test_reject_unknown_field(img):
    _edit_manifest(img, lambda m: m["layers"][1].update(colour="red"))
    with pytest.raises(ImageError, match=r"^manifest.json: layers\[1\].colour: unknown field"):
        load(img)


def test_reject_bad_config(img):
    _edit_manifest(img, lambda m: m["config"].update(tn=3))
    with pytest.raises(ImageError, match=r"^manifest.json: config: tn must equal ti"):
        load(img)


def test_reject_missing_file(img):
    (img / "conv2.pwl.hex").unlink()
    with pytest.raises(ImageError, match=r"^conv2.pwl.hex: file: missing"):
        load(img)


def test_reject_corrupted_file(img):
    text = (img / "fc2.bias.hex").read_text()
    (img / "fc2.bias.hex").write_text(("1" if text[0] != "1" else "2") + text[1:])
    with pytest.raises(ImageError, match=r"^fc2.bias.hex: sha256: does not match"):
        load(img)


def test_reject_truncated_file(img):
    lines = (img / "conv1.weights.hex").read_text().splitlines(keepends=True)
    _rewrite(img, "conv1.weights.hex", "".join(lines[:-1]))
    with pytest.raises(ImageError, match=r"^conv1.weights.hex: words: has 49 words, the "
                                         r"manifest says 50"):
        load(img)


def test_reject_bad_hex_word(img):
    lines = (img / "fc2.bias.hex").read_text().splitlines(keepends=True)
    lines[1] = "zz" + lines[1][2:]
    _rewrite(img, "fc2.bias.hex", "".join(lines))
    with pytest.raises(ImageError, match=r"^fc2.bias.hex: line 2: .* is not a 192-bit word"):
        load(img)


def test_reject_shape_mismatch(img):
    def grow(m):
        m["layers"][0]["desc"]["n_out"] = 9
    _edit_manifest(img, grow)
    with pytest.raises(ImageError, match=r"^conv1.weights.hex: words: shape does not match "
                                         r"layers\[0\].desc"):
        load(img)


def test_reject_broken_chain(img):
    _edit_manifest(img, lambda m: m["layers"][2].update(f_x=3))
    with pytest.raises(ImageError, match=r"^manifest.json: layers\[2\].f_x: is 3"):
        load(img)


def test_reject_nonzero_padding(img):
    # conv2 has 5 outputs: lane 1 of the second output tile (channel 5) is padding
    lines = (img / "conv2.bias.hex").read_text().splitlines()
    digits = len(lines[1])
    lines[1] = format(int(lines[1], 16) | (1 << 48), f"0{digits}x")
    _rewrite(img, "conv2.bias.hex", "\n".join(lines) + "\n")
    with pytest.raises(ImageError, match=r"^conv2.bias.hex: padding: lanes past n_out=5"):
        load(img)


def test_reject_program_mismatch(img):
    lines = (img / "program.hex").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    _rewrite(img, "program.hex", "\n".join(lines) + "\n")
    with pytest.raises(ImageError, match=r"^program.hex: line 1: descriptor does not match"):
        load(img)


def test_reject_stats_mismatch(img):
    _edit_manifest(img, lambda m: m["stats"].update(bits=1))
    with pytest.raises(ImageError, match=r"^manifest.json: stats.bits: does not match"):
        load(img)


def test_copy_of_image_loads(img, tmp_path):
    shutil.copytree(img, tmp_path / "copy")
    load(tmp_path / "copy")


def test_cli_inspect(img, tmp_path, capsys):
    from slimnfu.cli import main

    assert main(["inspect", str(img)]) == 0
    out = capsys.readouterr().out
    assert "config tiny" in out and "fc1" in out and "no: layer fc 180->300" in out
    assert main(["inspect", str(tmp_path / "none")]) == 2
    assert "manifest.json: file: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--dw" in capsys.readouterr().out


def test_reject_wrong_types(img):
    _edit_manifest(img, lambda m: m.update(f_in="14"))
    with pytest.raises(ImageError, match=r"^manifest.json: f_in: must be an integer, not"):
        load(img)
    _edit_manifest(img, lambda m: m.update(f_in=14) or
                   m["files"]["program.hex"].update(width=0))
    with pytest.raises(ImageError, match=r"^manifest.json: files.program.hex.width: must be "
                                         r"an integer >= 1, not 0"):
        load(img)


def test_export_never_deletes_what_it_did_not_write(qmodel, tmp_path):
    """A folder with a file named manifest.json and other files of the user's is refused and
    left as it was (issue 14, case 2); --force replaces it; a folder slimnfu wrote is replaced,
    and gets ordinary permissions."""
    import os
    import stat

    user = tmp_path / "user"
    user.mkdir()
    (user / "manifest.json").write_text('{"mine": true}')
    (user / "results.csv").write_text("a,b\n")
    mode = stat.S_IMODE(user.stat().st_mode)
    with pytest.raises(ValueError, match="refusing to replace it"):
        export(qmodel, CFG, user)
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json", "results.csv"]
    assert stat.S_IMODE(user.stat().st_mode) == mode
    export(qmodel, CFG, user, force=True)
    load(user)
    img = tmp_path / "img"
    export(qmodel, CFG, img)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(img.stat().st_mode) == 0o777 & ~umask
    export(qmodel, CFG, img)          # its own image: replaced
    (img / "extra.txt").write_text("added by the user")
    with pytest.raises(ValueError, match="refusing to replace it"):
        export(qmodel, CFG, img)
    assert (img / "extra.txt").is_file()


def test_replacement_keeps_the_old_image_until_the_new_one_is_complete(qmodel, tmp_path,
                                                                       monkeypatch):
    """Without an atomic exchange, a failing second rename puts the old image back; stale
    temporaries of a killed export are removed by the next one (issue 14, case 7)."""
    import os

    img = tmp_path / "img"
    export(qmodel, CFG, img)
    before = (img / "manifest.json").read_text()
    stale = tmp_path / ".img.tmp-999999999-abc"
    stale.mkdir()
    real_replace = os.replace
    calls = []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError("power cut (simulated)")
        real_replace(a, b)

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    monkeypatch.setattr(atomic.os, "replace", second_fails)
    with pytest.raises(OSError, match="simulated"):
        export(qmodel, CFG, img)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert (img / "manifest.json").read_text() == before
    load(img)
    assert not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["img"]


def _hex_line_as(img, fname, edit):
    lines = (img / fname).read_text().splitlines(keepends=True)
    lines[1] = edit(lines[1].rstrip("\n")) + "\n"
    _rewrite(img, fname, "".join(lines))


@pytest.mark.parametrize("edit", [
    lambda w: "+" + w[1:], lambda w: "0x" + w[2:], lambda w: w[:3] + "_" + w[4:],
    lambda w: " " + w[1:], lambda w: w[:-1] + "A",
])
def test_reject_hex_lines_the_writer_does_not_write(img, edit):
    """Exactly ceil(width/4) lowercase hex digits: int(..., 16) accepts all of these."""
    _hex_line_as(img, "fc2.bias.hex", edit)
    with pytest.raises(ImageError, match=r"^fc2.bias.hex: line 2: .* is not a 192-bit word"):
        load(img)


def test_reject_non_ascii_hex_file(img):
    path = img / "fc2.bias.hex"
    data = path.read_bytes()
    path.write_bytes(data[:5] + b"\xff" + data[6:])
    _edit_manifest(img, lambda m: m["files"]["fc2.bias.hex"].update(
        sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    with pytest.raises(ImageError, match=r"^fc2.bias.hex: byte 5: is not ASCII"):
        load(img)


def test_reject_deeply_nested_manifest(img):
    (img / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ImageError, match=r"^manifest.json: json: nested too deeply"):
        load(img)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(version=True), r"^manifest.json: version: is True; this slimnfu reads"),
    (lambda m: m.update(version=1.0), r"^manifest.json: version: is 1.0; this slimnfu reads"),
    (lambda m: m["layers"][0].update(format=["dense"]),
     r"^manifest.json: layers\[0\].format: \['dense'\] is not a weight format"),
    (lambda m: m["layers"][0].update(name=["conv1"]), r"^manifest.json: layers\[0\]: name "
                                                      r"must be a string"),
    (lambda m: m["layers"][0]["words"].update(weights=-50),
     r"^manifest.json: layers\[0\].words.weights: is -50, conv1.weights.hex has 50"),
    (lambda m: m["layers"][0]["bits"].update(weights="12800"),
     r"^manifest.json: layers\[0\].bits.weights: is '12800'"),
    (lambda m: m["layers"][1].update(act_func="gelu"),
     r"^manifest.json: layers\[1\].act_func: is 'gelu'; act='none' takes one of \[None\]"),
    (lambda m: m["layers"][2].update(act_func="gelu"),
     r"^manifest.json: layers\[2\].act_func: is 'gelu': unknown PWL activation 'gelu'"),
    (lambda m: m["calib"].update(range_method="median"),
     r"^manifest.json: calib.range_method: must be 'max' or a percentile"),
    (lambda m: m["calib"].update(images=[16]),
     r"^manifest.json: calib.images: must be an integer >= 1"),
])
def test_reject_fields_of_the_wrong_type_or_value(img, edit, message):
    _edit_manifest(img, edit)
    with pytest.raises(ImageError, match=message):
        load(img)


def test_piecewise_linear_activations_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.LeakyReLU(0.125), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 11 * 11, 10),
                          nn.Hardtanh())
    q = quantize_model(model, torch.rand(8, 1, 28, 28))
    export(q, CFG, tmp_path / "img")
    loaded, _, _ = load(tmp_path / "img")
    assert [l.act_func for l in loaded.layers] == [
        "leaky_relu(0.125)", None, "hardtanh(0.0,6.0)", "hardtanh(-1.0,1.0)"]
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(int_forward(loaded, x)[0], int_forward(q, x)[0])


def test_reject_files_the_manifest_does_not_list(img):
    (img / "notes.hex").write_text("00\n")
    with pytest.raises(ImageError, match=r"^notes.hex: file: is not listed in the manifest"):
        load(img)


def test_export_refuses_values_outside_their_width(qmodel, tmp_path):
    """40000 does not fit dw=16: it used to be written masked, as -25536 (issue 14, case 4)."""
    import dataclasses

    layers = list(qmodel.layers)
    w = layers[0].w.clone()
    w.view(-1)[0] = 40000
    layers[0] = dataclasses.replace(layers[0], w=w)
    with pytest.raises(ValueError, match=r"layers\[0\] \(conv1\)\.w: holds 40000, outside 16 "
                                         r"signed bits"):
        export(dataclasses.replace(qmodel, layers=layers), CFG, tmp_path / "img")
    assert not (tmp_path / "img").exists()


def test_cli_export_refuses_a_user_folder_before_training(tmp_path, capsys, monkeypatch):
    """The destination is checked before the network is trained or loaded (issue 14, case 2)."""
    from slimnfu.cli import main
    from slimnfu.compress import train as train_mod

    def no_training(*args, **kwargs):
        raise AssertionError("export trained before checking --out")

    monkeypatch.setattr(train_mod, "train", no_training)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "manifest.json").write_text("{}")
    (user / "notes.txt").write_text("keep me")
    assert main(["export", "lenet5", "--out", str(user)]) == 2
    err = capsys.readouterr().err
    assert "is not a weight image that slimnfu wrote" in err and "--force" in err
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json", "notes.txt"]
