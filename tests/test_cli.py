"""The command line: bad options of ``slimnfu synth`` stop before any synthesis."""

import re

import pytest

from slimnfu.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--set", "ikr.kmax=9"], r"ikr\.kmax must be in \[1, 7\], not 9"),
    (["--set", "ikr_kmax=3"], "--set needs KEY=VALUE with KEY one of"),
    (["--set", "perm=maybe"], "--set perm must be an integer, not 'maybe'"),
    (["--rom", "--set", "ikr=1"], "--set applies to the bare engine"),
    (["--part", "LFE5U-12F"], "LFE5U-12F"),
])
def test_synth_refuses_bad_options_before_any_work(argv, message, capsys, tmp_path,
                                                     monkeypatch):
    from slimnfu.gen import synth

    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesis started")

    monkeypatch.setattr(synth, "synth_config", no_synthesis)
    assert main(["synth", "--out", str(tmp_path / "r.json"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimnfu synth: error: ")
    assert re.search(message, err), err


def test_synth_names_the_config_after_its_changes(monkeypatch, capsys, tmp_path):
    from slimnfu.gen import synth

    seen = {}

    def fake(cfg, **kwargs):
        seen["cfg"] = cfg
        return {"config": cfg.name, "cells": 1, "luts": 1, "ffs": 1, "dsps": 0, "brams": 0,
                "memory_bits": 0, "fmax_mhz": 99.0, "fits": "LFE5U-25F",
                "worst_path": "worst path 10.1 ns: nfu3.y -> sat_events through nfu3"}

    monkeypatch.setattr(synth, "synth_config", fake)
    assert main(["synth", "--set", "ikr=1", "--set", "ikr.kmax=3"]) == 0
    assert seen["cfg"].name == "tiny+ikr=1+ikr.kmax=3" and seen["cfg"].ikr.kmax == 3
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny+ikr=1+ikr.kmax=3: 1 cells") and "fmax 99.0 MHz" in out[0]
    assert out[1] == "worst path 10.1 ns: nfu3.y -> sat_events through nfu3"
