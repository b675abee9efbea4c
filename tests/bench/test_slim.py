"""``slimnfu bench slim`` refuses bad options before any training."""

import re

import pytest

from slimnfu.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--calib", "0"], r"--calib must be in \[1, 5000\] \(the calib split's size\), not 0"),
    (["--calib", "6000"], r"--calib must be in \[1, 5000\]"),
    (["--finetune", "-1"], r"--finetune must be in \[0, 55000\]"),
    (["--budgets", "0.5", "101"], r"--budgets must be in \[0, 100\] points, not 101.0"),
])
def test_bad_option(argv, message, capsys, tmp_path):
    out = tmp_path / "slim.json"
    assert main(["bench", "slim", "--out", str(out), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()
