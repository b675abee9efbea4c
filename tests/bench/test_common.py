"""What the benchmarks share: accuracy, the common options and the report."""

import argparse
import json

import pytest
import torch

from slimnfu.bench import common


def test_accuracy_rounds_to_the_asked_digits():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([1, 1, 1])
    assert common.accuracy(logits, labels) == 66.6667
    assert common.accuracy(logits, labels, 2) == 66.67


def test_options_and_report(tmp_path, capsys, build_root):
    parser = argparse.ArgumentParser()
    common.add_out(parser, "x")
    common.add_threads(parser)
    args = parser.parse_args([])
    assert args.out is None and args.threads == 2
    assert common.default_out("x") == str(build_root / "bench" / "x.json")
    threads = torch.get_num_threads()
    try:
        common.start(args)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="--threads must be an integer >= 1, not 0"):
        common.start(parser.parse_args(["--threads", "0"]))
    assert common.host(2)["threads"] == 2 and "threads" not in common.host()
    common.write_report(tmp_path / "r.json", {"rows": []}, "TABLE")
    assert json.loads((tmp_path / "r.json").read_text()) == {"rows": []}
    assert capsys.readouterr().out == f"TABLE\nwrote {tmp_path / 'r.json'}\n"
