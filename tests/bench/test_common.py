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


def test_hw_area_table_has_a_row_per_component_and_a_column_per_tiny_build():
    from slimnfu.bench.hw import _block_markdown

    def report(blocks):
        return {"generic": {"blocks": blocks}}

    lines = _block_markdown({
        "tiny": report({"": {"luts": 10, "ffs": 2, "memory_bits": 64},
                        "nfu1": {"luts": 100, "ffs": 5, "memory_bits": 0}}),
        "tiny+ikr=1": report({"": {"luts": 12, "ffs": 2, "memory_bits": 64},
                              "nfu1": {"luts": 100, "ffs": 5, "memory_bits": 0},
                              "ikr.decoder": {"luts": 80, "ffs": 9, "memory_bits": 32}}),
        "small": report({"": {"luts": 1, "ffs": 1, "memory_bits": 1}}),
        "diannao": None})
    assert "| component | `tiny` | `tiny+ikr=1` |" in lines
    assert "| (top) | 10 / 2 / 64 | 12 / 2 / 64 |" in lines
    assert "| ikr.decoder | - | 80 / 9 / 32 |" in lines
    assert lines[-1] == "| total LUTs | 110 | 192 |"
    assert _block_markdown({"tiny": None}) == []
