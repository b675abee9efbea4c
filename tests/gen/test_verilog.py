"""Verilog emission: reproducible, atomic, every block, clear errors."""

import pytest

from slimnfu.config import get_config
from slimnfu.gen import verilog


def test_engine_emission_is_reproducible(tmp_path):
    cfg = get_config("tiny")
    first = verilog.emit_engine(cfg, tmp_path)
    assert first["path"] == tmp_path / "tiny" / "slimnfu_engine.v"
    assert first["changed"]
    text = first["path"].read_text()
    assert "module slimnfu_engine(" in text
    for port in ("start", "desc", "done", "load_data", "rd_addr", "rd_data", "cycles",
                 "steps", "mults", "sat_events"):
        assert f" {port}" in text, port
    second = verilog.emit_engine(cfg, tmp_path)
    assert second["sha256"] == first["sha256"] and not second["changed"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_single_blocks_emit(tmp_path):
    cfg = get_config("tiny")
    for block in ("nfu1", "nfu2", "nfu3"):
        info = verilog.emit_block(block, cfg, tmp_path)
        assert f"module slimnfu_{block}(" in info["path"].read_text()


def test_unknown_block_is_named():
    with pytest.raises(ValueError, match="unknown block 'nfu9'; known blocks: engine"):
        verilog.emit_block("nfu9", get_config("tiny"))


def test_cfg_must_be_a_config():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig, not str"):
        verilog.emit_engine("tiny")


def test_atomic_write_replaces(tmp_path):
    path = verilog.atomic_write(tmp_path / "a" / "f.txt", "one")
    verilog.atomic_write(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["f.txt"]
