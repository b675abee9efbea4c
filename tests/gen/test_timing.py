"""nextpnr's critical paths named by Amaranth component and signal.

``data/nextpnr_report_mac.json`` is the report of ``nextpnr-ecp5 --25k --package CABGA381
--out-of-context --detailed-timing-report --freq 50`` on this design (Yosys ``synth_ecp5``,
Amaranth 0.5, ``emit_src=False``)::

    class Mac(wiring.Component):
        a: In(signed(12)); b: In(signed(12)); acc: Out(signed(28))
        def elaborate(self, platform):
            m = Module()
            ra = Signal(signed(12))
            rb = Signal(signed(12))
            m.d.sync += [ra.eq(self.a), rb.eq(self.b), self.acc.eq(self.acc + ra * rb)]
            return m

    class Top(wiring.Component):
        a: In(signed(12)); b: In(signed(12)); total: Out(signed(30))
        def elaborate(self, platform):
            m = Module()
            m.submodules.mac = mac = Mac()
            m.d.comb += [mac.a.eq(self.a), mac.b.eq(self.b)]
            m.d.sync += self.total.eq(self.total + mac.acc)
            return m
"""

import json
from pathlib import Path

import pytest

from slimnfu.gen import synth
from slimnfu.gen.timing import amaranth_name, one_line, summarise_path, timing_summary

REPORT = Path(__file__).parent / "data" / "nextpnr_report_mac.json"


@pytest.mark.parametrize("cell, want", [
    ("nfu3.out_TRELLIS_FF_Q_20", ("nfu3", "out")),
    ("nfu3.$69_MULT18X18D_P9", ("nfu3", "$69")),
    ("seq.nest.ix_TRELLIS_FF_Q_3_DI_LUT4_Z", ("seq.nest", "ix")),
    ("y_TRELLIS_FF_Q_3_DI_CCU2C_S0$CCU2_COMB0", ("", "y")),
    ("nbin.mem_DP16KD_DOB3", ("nbin", "mem")),
    ("\\engine.sat_events[31]", ("engine", "sat_events")),
])
def test_cell_names_map_to_component_and_signal(cell, want):
    assert amaranth_name(cell) == want


def test_the_critical_path_starts_and_ends_at_named_registers():
    report = json.loads(REPORT.read_text())
    (path,) = [summarise_path(p) for p in report["critical_paths"]]
    assert (path["start"]["component"], path["start"]["signal"]) == ("mac", "ra")
    assert path["start"]["port"] == "Q" and path["end"]["signal"] == "acc"
    assert path["multipliers"] == 1 and path["carry_cells"] > 0 and path["block_rams"] == 0
    assert path["delay_ns"] == pytest.approx(path["logic_ns"] + path["routing_ns"], abs=1e-3)
    # the report's own fmax is the inverse of the critical path
    assert 1000 / path["delay_ns"] == pytest.approx(report["fmax"]["clk"]["achieved"], rel=0.02)
    assert path["components"][0] == "mac"
    line = one_line(path)
    assert line.startswith(f"worst path {path['delay_ns']:.1f} ns: mac.ra -> acc through mac")
    assert "1 DSP" in line and "ns routing" in line


def test_worst_endpoints_are_one_row_a_signal_latest_first():
    summary = timing_summary(json.loads(REPORT.read_text()))
    rows = summary["worst_endpoints"]
    assert [r["signal"] for r in rows[:2]] == ["acc", "total"]
    assert rows[0]["bits"] == 28 and rows[1]["bits"] == 30
    assert rows[0]["arrival_ns"] == pytest.approx(summary["critical_paths"][0]["delay_ns"],
                                                  abs=0.01)


def test_place_route_reads_the_timing_of_its_report(monkeypatch, tmp_path):
    """The report of a place and route run carries the one-line worst path and the summary."""
    def fake_run(cmd, cwd, log, timeout=None):
        assert "--detailed-timing-report" in cmd
        (Path(cwd) / "pnr_report.json").write_text(REPORT.read_text())
        return 1.0

    monkeypatch.setattr(synth, "_run", fake_run)
    got = synth.place_route(tmp_path, "LFE5U-25F")
    assert got["worst_path"].startswith("worst path ") and "mac.ra -> acc" in got["worst_path"]
    assert got["timing"]["critical_paths"][0]["start"]["signal"] == "ra"
    assert got["fmax_mhz"] > 100


def test_a_report_without_paths_has_no_worst_path(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"fmax": {}, "utilization": {}}))
    got = synth.read_pnr_report(tmp_path / "r.json")
    assert got["worst_path"] is None and got["timing"]["critical_paths"] == []
