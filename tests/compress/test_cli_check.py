"""``slimnfu check``: the table, the JSON and the exit status."""

import json
import textwrap

import pytest

from slimnfu.cli import main

GOOD = textwrap.dedent('''
    from torch import nn


    def make_model():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding="same", bias=False), nn.BatchNorm2d(4),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2), nn.Flatten(),
                             nn.Linear(4 * 14 * 14, 10))
''')

RESIDUAL = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x) + x)


    def make_model():
        return Block()
''')


@pytest.fixture
def models(tmp_path):
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "residual.py").write_text(RESIDUAL)
    return tmp_path


def test_supported_model_prints_the_table_and_exits_0(models, capsys):
    assert main(["check", f"{models / 'good.py'}:make_model"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"model {models / 'good.py'}:make_model, input 1x28x28, dw 16"
    assert lines[2].split() == ["#", "node", "operation", "input", "output", "mapping", "layer",
                                "note"]
    assert lines[3].split()[:6] == ["0", "0", "Conv2d(1,", "4,", "k=3,", "p='same',"]
    assert "padding='same' -> 1; zero bias; BN folded" in lines[3]
    assert lines[4].split() == ["1", "1", "BatchNorm2d(4)", "4x28x28", "4x28x28", "folded",
                                "conv1", "into", "0"]
    assert "5 kept (3 engine layers), 1 folded, 1 dropped, 0 unsupported" in out
    assert lines[-1] == "supported: yes"


def test_unsupported_model_exits_1_naming_the_node(models, capsys):
    assert main(["check", f"{models / 'residual.py'}:make_model"]) == 1
    out = capsys.readouterr().out
    assert "unsupported: add (operator.add)\n  why: residual add: node 'add' adds the outputs " \
           "of 'conv' and 'input'\n  fix: slimnfu runs a straight chain" in out
    assert out.splitlines()[-1] == "supported: no"


def test_json(models, capsys):
    assert main(["check", f"{models / 'good.py'}:make_model", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["supported"] is True and report["input_shape"] == [1, 28, 28]
    assert report["engine_layers"] == ["conv1", "pool1", "fc1"]
    assert report["rows"][1] == {
        "index": 1, "node": "1", "op": "BatchNorm2d(4)", "mapping": "folded",
        "in_shape": [4, 28, 28], "out_shape": [4, 28, 28], "layer": "conv1", "note": "into 0",
        "reason": "", "fix": ""}


def test_json_of_a_shape_that_does_not_chain(models, capsys):
    assert main(["check", f"{models / 'good.py'}:make_model", "--input-shape", "1,16,16",
                 "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["supported"] is False and report["input_shape"] == [1, 16, 16]
    assert [r["mapping"] for r in report["rows"]] == ["kept", "folded", "kept", "kept",
                                                      "dropped", "kept", "unsupported"]
    assert report["rows"][-1]["reason"] == ("Linear has in_features=784 but gets 256 (values, "
                                            "input shape (256,))")


@pytest.mark.parametrize("argv, message", [
    (["missing.py:make_model"], "slimnfu check: error: missing.py: no such file"),
    (["good.py:make_model", "--input-shape", "28,28"], "input shape must be C,H,W"),
    (["good.py:make_model", "--dw", "2"], "--dw must be between 4 and 32, not 2"),
])
def test_errors_exit_2(models, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(models)
    assert main(["check", *argv]) == 2
    assert message in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "--help"])
    assert info.value.code == 0
    assert "Exit status: 0 when every layer is supported" in capsys.readouterr().out
