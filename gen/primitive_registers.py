"""Fabric registers moved into the ECP5 primitives' own registers, in the netlist nextpnr places.

Yosys maps a block RAM read (``DP16KD``) and a multiply (``MULT18X18D``) without the
primitives' optional registers, so the engine's register after a block RAM and its registers
around each multiplier stay in the fabric, and the routing to and from the primitive is in
the path: a DP16KD's clock-to-out (about 6 ns) plus the route to a fabric flip-flop, or a
fabric flip-flop through the route and the combinational multiplier to another. Both
primitives have registers inside (the DP16KD's output register, ``REGMODE_x = "OUTREG"``; the
MULT18X18D's input and output registers, ``REG_INPUTx_CLK``/``REG_OUTPUT_CLK``), and
nextpnr-ecp5 times them as registers.

:func:`absorb_registers` rewrites Yosys's ECP5 JSON netlist (``synth_ecp5 -json``) before
nextpnr reads it:

- a DP16KD read port (``DATA_WIDTH`` up to 18) whose every used data output drives exactly
  one ``TRELLIS_FF`` and nothing else, all on the port's clock with no set/reset and one
  common clock enable, gets ``REGMODE = "OUTREG"`` with that enable on ``OCE``; its outputs
  drive the flip-flops' nets and the flip-flops are removed. A 36-bit DP16KD (Yosys's map of
  a pseudo-dual-port PDPW16KD: port A writes, port B reads, the word on ``DOA`` and ``DOB``,
  all in ``CLKB``'s domain, as nextpnr times it) is one read port: both halves get
  ``OUTREG`` and the enable on both ``OCE`` pins, so that each half's output register is on
  whichever of the two settings the silicon reads for it;
- a MULT18X18D whose ``A`` and ``B`` inputs all come from such flip-flops (or are constant
  0), each fed straight from a register (a flip-flop, block RAM or multiplier output: logic
  in front would land in the route to the multiplier), gets its input registers, fed from
  the flip-flops' inputs (a flip-flop with other loads stays); both operands or neither,
  since nextpnr times a multiplier with one registered input as if it had none; one whose
  used ``P`` outputs each drive exactly one such flip-flop gets its output register and the
  flip-flops go.

Every clock enable keeps its net (the primitives have ``CE``/``OCE`` pins), so the
cycle-by-cycle behaviour is the flip-flops'; the registers start at 0 as the flip-flops do
(``REGSET = "RESET"`` only; a flip-flop with a set/reset net is left in the fabric, which
is why the engine's data pipeline registers are reset-less). The rewrite is checked by
simulating a netlist before and after it with Icarus Verilog on Yosys's ECP5 cell models
(``tests/gen/test_primitive_registers.py``).
"""

import json
from collections import defaultdict
from pathlib import Path

from slimnfu.atomic import atomic_write

__all__ = ["absorb_registers", "absorb_netlist"]

_DP_WIDTHS = (1, 2, 4, 9, 18)


def _param_int(value):
    """A Yosys JSON parameter (a binary string, or an int) as an int."""
    if isinstance(value, int):
        return value
    return int(value, 2) if set(value) <= {"0", "1"} else int(value)


class _Netlist:
    """One module of a Yosys JSON netlist, with its bits' drivers and loads."""

    def __init__(self, module):
        self.module, self.cells = module, module["cells"]
        self.loads, self.driver = defaultdict(list), {}
        for name, cell in self.cells.items():
            dirs = cell.get("port_directions", {})
            for port, bits in cell["connections"].items():
                for bit in bits:
                    if not isinstance(bit, int):
                        continue
                    if dirs.get(port) == "output":
                        self.driver[bit] = (name, port)
                    else:
                        self.loads[bit].append((name, port))
        for pname, port in module.get("ports", {}).items():
            if port.get("direction") != "input":
                for bit in port["bits"]:
                    if isinstance(bit, int):
                        self.loads[bit].append((None, pname))

    def pin(self, cell, port):
        return self.cells[cell]["connections"].get(port, ["x"])[0]

    def plain_ff(self, name):
        """``(clk, ce)`` of a ``TRELLIS_FF`` that a primitive register can stand for: clocked
        on the rising edge, no set/reset net, resetting to 0 (``ce`` is ``"1"`` when it has no
        clock enable); None for any other cell."""
        cell = self.cells.get(name)
        if cell is None or cell["type"] != "TRELLIS_FF":
            return None
        params, conn = cell["parameters"], cell["connections"]
        if (params.get("CLKMUX", "CLK") != "CLK" or params.get("GSR", "DISABLED") != "DISABLED"
                or params.get("REGSET", "RESET") != "RESET"
                or conn.get("LSR", ["0"])[0] not in ("0", 0)):
            return None
        cemux = params.get("CEMUX", "1").strip()
        if params.get("LSRMUX", "LSR") not in ("LSR", "0") or cemux not in ("1", "CE"):
            return None
        return conn["CLK"][0], conn.get("CE", ["1"])[0] if cemux == "CE" else "1"

    def registered(self, bit):
        """Whether ``bit`` is a constant or a register's output (a flip-flop, a block RAM, a
        multiplier): a multiplier input register fed by logic would put that logic and the
        route to the multiplier in one path, so only these are moved."""
        if not isinstance(bit, int):
            return True
        driver = self.driver.get(bit)
        return driver is not None and self.cells[driver[0]]["type"] in (
            "TRELLIS_FF", "DP16KD", "MULT18X18D")

    def only_ff_load(self, bit):
        """The one plain flip-flop whose ``DI`` is ``bit``'s only load, or None."""
        loads = self.loads.get(bit, []) if isinstance(bit, int) else []
        if len(loads) != 1 or loads[0][1] != "DI" or self.plain_ff(loads[0][0]) is None:
            return None
        return loads[0][0]

    def sole_ff_loads(self, bits):
        """``(ffs, clk, ce)`` when each of the output ``bits`` is the only load of its own
        plain flip-flop (:meth:`only_ff_load`), all on one clock and enable; else None."""
        ffs = [self.only_ff_load(bit) for bit in bits]
        if not ffs or None in ffs or len(set(ffs)) != len(ffs):
            return None
        kinds = {self.plain_ff(ff) for ff in ffs}
        return (ffs, *kinds.pop()) if len(kinds) == 1 else None

    def replace_ff(self, ff, cell, port, bit):
        """Output ``port`` of ``cell`` (now registered inside), which drove bit ``bit`` into
        flip-flop ``ff`` alone, drives the flip-flop's output net instead; ``ff`` goes."""
        q = self.cells[ff]["connections"]["Q"][0]
        self.remove(ff)
        self.loads.pop(bit, None)
        self.cells[cell]["connections"][port] = [q]
        self.driver[q] = (cell, port)

    def remove(self, name):
        cell = self.cells.pop(name)
        for port, bits in cell["connections"].items():
            for bit in bits:
                if isinstance(bit, int):
                    self.loads[bit] = [x for x in self.loads[bit] if x[0] != name]


def _absorb_dp16kd(net, name, counts):
    cell = net.cells[name]
    params, conn = cell["parameters"], cell["connections"]
    widths = {side: _param_int(params.get(f"DATA_WIDTH_{side}", "0")) for side in "AB"}
    if widths["A"] == widths["B"] == 36:
        # pseudo dual port (Yosys's PDPW16KD map): port B reads, its 36 bits on DOA and DOB
        reads = [("AB", "B")]
    else:
        reads = [(side, side) for side in "AB" if widths[side] in _DP_WIDTHS]
    for sides, clock in reads:
        if any(params.get(f"REGMODE_{side}", "NOREG") != "NOREG" for side in sides):
            continue
        outs = [(p, conn[p][0]) for side in sides for p in conn if p.startswith(f"DO{side}")]
        used = [(p, bit) for p, bit in outs if isinstance(bit, int) and net.loads.get(bit)]
        found = net.sole_ff_loads([bit for _, bit in used])
        if found is None or found[1] != conn.get(f"CLK{clock}", ["x"])[0]:
            continue
        ffs, _, ce = found
        for side in sides:
            params[f"REGMODE_{side}"] = "OUTREG"
            conn[f"OCE{side}"] = [ce]
        for (port, bit), ff in zip(used, ffs):
            net.replace_ff(ff, name, port, bit)
        counts["dp16kd_outreg"] += 1
        counts["ffs"] += len(ffs)


def _absorb_mult(net, name, counts):
    cell = net.cells[name]
    params, conn, dirs = cell["parameters"], cell["connections"], cell["port_directions"]
    if any(params.get(p, "NONE") != "NONE" for p in
           ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_PIPELINE_CLK", "REG_OUTPUT_CLK")):
        return
    plan = []
    for operand in "AB":
        pins = [f"{operand}{i}" for i in range(18)]
        srcs = [conn.get(p, ["0"])[0] for p in pins]
        ffs = [net.driver.get(b, (None, None))[0] if isinstance(b, int) else None
               for b in srcs]
        if not all(ff is not None and net.driver[b][1] == "Q" and net.plain_ff(ff)
                   or b in ("0", 0) for ff, b in zip(ffs, srcs)):
            continue
        kinds = {net.plain_ff(ff) for ff in ffs if ff is not None}
        if len(kinds) != 1 or not all(net.registered(net.pin(ff, "DI")) for ff in ffs
                                      if ff is not None):
            continue
        clk, ce = next(iter(kinds))
        plan.append(("input", operand, pins, ffs, clk, ce))
    if len(plan) == 1:
        # nextpnr-ecp5 times a multiplier with one registered input as if neither were
        # ("unsupported mixed input register modes"): both inputs or none
        plan = []
    used = [(f"P{i}", conn[f"P{i}"][0]) for i in range(36)
            if isinstance(conn.get(f"P{i}", ["x"])[0], int) and net.loads.get(conn[f"P{i}"][0])]
    found = net.sole_ff_loads([bit for _, bit in used])
    if found is not None:
        plan.append(("output", "P", used, *found))
    clocks = {step[4] for step in plan}
    if not plan or len(clocks) != 1:
        return
    clk = clocks.pop()
    # one clock-enable pin per distinct enable net: at most three (A, B, P) of the four
    ces = {}
    for kind, operand, pins, ffs, _, ce in plan:
        pin = ces.setdefault(ce, f"CE{len(ces)}")
        reg = f"REG_INPUT{operand}" if kind == "input" else "REG_OUTPUT"
        params.update({f"{reg}_CLK": "CLK0", f"{reg}_CE": pin, f"{reg}_RST": "RST0"})
        if kind == "input":
            for port, ff in zip(pins, ffs):
                if ff is None:
                    continue
                q, d = net.cells[ff]["connections"]["Q"][0], net.cells[ff]["connections"]["DI"][0]
                conn[port] = [d]
                net.loads[q] = [x for x in net.loads[q] if x != (name, port)]
                net.loads[d].append((name, port))
            for ff in set(f for f in ffs if f is not None):
                if not net.loads.get(net.cells[ff]["connections"]["Q"][0]):
                    net.remove(ff)
                    counts["ffs"] += 1
            counts[f"mult_input_{operand.lower()}"] += 1
        else:
            for (port, bit), ff in zip(pins, ffs):
                net.replace_ff(ff, name, port, bit)
            counts["ffs"] += len(ffs)
            counts["mult_output"] += 1
    conn["CLK0"] = [clk]
    for ce, pin in ces.items():
        conn[pin] = [ce]
    conn["RST0"] = ["0"]
    for pin in ["CLK0", "RST0", *ces.values()]:
        dirs[pin] = "input"
    params.setdefault("RESETMODE", "SYNC")
    params.setdefault("GSR", "DISABLED")


def absorb_netlist(netlist):
    """Rewrite the Yosys JSON netlist ``netlist`` (a dict) in place; returns the counts:
    ``dp16kd_outreg`` (read ports given their output register), ``mult_input_a``,
    ``mult_input_b``, ``mult_output`` (multipliers given that register) and ``ffs`` (fabric
    flip-flops removed)."""
    counts = dict.fromkeys(("dp16kd_outreg", "mult_input_a", "mult_input_b", "mult_output",
                            "ffs"), 0)
    for module in netlist.get("modules", {}).values():
        cells = module.get("cells", {})
        if not any(c["type"] in ("DP16KD", "MULT18X18D") for c in cells.values()):
            continue
        net = _Netlist(module)
        for name in sorted(n for n, c in cells.items() if c["type"] == "DP16KD"):
            _absorb_dp16kd(net, name, counts)
        for name in sorted(n for n, c in cells.items() if c["type"] == "MULT18X18D"):
            _absorb_mult(net, name, counts)
    return counts


def absorb_registers(path):
    """:func:`absorb_netlist` on the JSON netlist file ``path``, rewritten atomically;
    returns the counts."""
    path = Path(path)
    netlist = json.loads(path.read_text())
    counts = absorb_netlist(netlist)
    atomic_write(path, json.dumps(netlist) + "\n")
    return counts
