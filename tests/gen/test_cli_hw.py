"""nextpnr's options on the command line: ``slimnfu synth`` and ``bench hw --sweep`` share
them."""

import pytest

from slimnfu.cli import build_parser
from slimnfu.gen.cli_hw import pnr_arguments
from slimnfu.gen.synth import PNR_DEFAULTS


def test_defaults_and_each_flag():
    args = build_parser().parse_args(["synth"])
    assert pnr_arguments(args) == PNR_DEFAULTS
    args = build_parser().parse_args(["synth", "--placer", "sa", "--router", "router2",
                                      "--freq", "80", "--pnr-seed", "7", "--no-tmdriv"])
    assert pnr_arguments(args) == {"placer": "sa", "router": "router2", "freq_mhz": 80.0,
                                   "seed": 7, "tmdriv": False}
    args = build_parser().parse_args(["bench", "hw", "--sweep", "--placer", "sa"])
    assert pnr_arguments(args)["placer"] == "sa"


def test_out_of_range_values_are_refused_naming_the_option():
    args = build_parser().parse_args(["synth", "--freq", "0"])
    with pytest.raises(ValueError, match="nextpnr freq_mhz must be a number in 1..500, not 0.0"):
        pnr_arguments(args)
    args = build_parser().parse_args(["synth", "--pnr-seed", "-1"])
    with pytest.raises(ValueError, match="nextpnr seed must be an integer >= 0, not -1"):
        pnr_arguments(args)
