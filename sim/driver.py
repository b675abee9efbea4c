"""cocotb coroutines that drive the layer engine through its ports.

Inputs change on the falling clock edge and are sampled by the engine on the rising edge, so
the driver is race-free on both Icarus and Verilator. The engine's port contract (see
:class:`slimnfu.rtl.engine.LayerEngine`): ``load_en/load_sel/load_addr/load_data`` write one
word per cycle while idle; ``start`` latches ``desc``; ``done`` pulses at the end, when the
counters hold their final values; ``rd_addr`` -> ``rd_data`` ``RD_LATENCY`` cycles later.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, with_timeout

from slimnfu.contract import RD_LATENCY

__all__ = ["EngineTB", "COUNTERS", "CLOCK_NS", "differing_words", "JobLog"]

COUNTERS = ("cycles", "steps", "mults", "sat_events")
CLOCK_NS = 10


class EngineTB:
    """Testbench handle for one ``slimnfu_engine`` DUT.

    Parameters
    ----------
    dut : cocotb handle of the engine's top level
    """

    def __init__(self, dut):
        self.dut = dut
        self.clock_started = False

    async def reset(self, cycles=2):
        """Start the clock (once), idle every input and hold ``rst`` for ``cycles`` cycles."""
        dut = self.dut
        if not self.clock_started:
            cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
            self.clock_started = True
        for name in ("start", "load_en", "load_sel", "load_addr", "load_data", "rd_addr",
                     "desc", "in_buf", "nb_en", "nb_addr", "nb_data"):
            getattr(dut, name).value = 0
        dut.out_buf.value = 1     # the classic NBin -> NBout engine (the port's init)
        dut.rst.value = 1
        for _ in range(cycles):
            await FallingEdge(dut.clk)
        dut.rst.value = 0
        await FallingEdge(dut.clk)

    async def load(self, sel, words, base=0):
        """Write ``words`` to memory ``sel`` (0 NBin, 1 SB, 2 bias, 3 PWL), one per cycle."""
        dut = self.dut
        dut.load_sel.value = sel
        dut.load_en.value = 1
        for addr, word in enumerate(words, base):
            dut.load_addr.value = addr
            dut.load_data.value = int(word)
            await FallingEdge(dut.clk)
        dut.load_en.value = 0

    async def run(self, desc_value, timeout_cycles):
        """Pulse ``start`` with ``desc_value`` and wait for ``done``; return the counters.

        Raises ``cocotb.triggers.SimTimeoutError`` when ``done`` does not come within
        ``timeout_cycles`` clock cycles.
        """
        dut = self.dut
        dut.desc.value = int(desc_value)
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        await with_timeout(RisingEdge(dut.done), timeout_cycles * CLOCK_NS, "ns")
        await ReadOnly()
        names = COUNTERS + (("gated",) if hasattr(dut, "gated") else ())
        counters = {name: getattr(dut, name).value.to_unsigned() for name in names}
        await FallingEdge(dut.clk)
        return counters

    async def read_nbout(self, count, base=0):
        """Read NBout words ``base .. base+count-1``; raise ``ValueError`` on X/Z bits."""
        dut = self.dut
        words = []
        for addr in range(base, base + count):
            dut.rd_addr.value = addr
            await ClockCycles(dut.clk, RD_LATENCY, FallingEdge)
            try:
                words.append(dut.rd_data.value.to_unsigned())
            except ValueError:
                raise ValueError(f"rd_data has X/Z bits at NBout address {addr}: "
                                 f"{dut.rd_data.value}") from None
        return words


    async def read_bits(self, spans):
        """The low ``bits`` of each NBout word ``[address, bits]`` of ``spans``, as the
        simulator shows them (a string of 0/1/X/Z, most significant first; X/Z allowed)."""
        dut = self.dut
        out = []
        for addr, bits in spans:
            dut.rd_addr.value = addr
            await ClockCycles(dut.clk, RD_LATENCY, FallingEdge)
            out.append(str(dut.rd_data.value)[-bits:])
        return out


def differing_words(got, expect):
    """How many of the words ``got`` differ from ``expect["words"]`` on the lanes
    ``expect["lane_masks"]`` marks real (one mask per ``expect["words_per_tile"]`` words)."""
    per_tile, masks = expect["words_per_tile"], expect["lane_masks"]
    return sum(1 for i, (g, w) in enumerate(zip(got, expect["words"]))
               if (g ^ w) & masks[i // per_tile])


class JobLog:
    """The results of a test module's jobs: each recorded with its verdict, the file named by
    ``SLIMNFU_COSIM_OUT`` rewritten atomically after each, and a final assertion so that any
    job that failed fails the cocotb test (and its results file)."""

    def __init__(self, dut, what):
        self.dut, self.what = dut, what
        self.path = os.environ["SLIMNFU_COSIM_OUT"]
        self.results = []

    def record(self, entry, verdict):
        entry["tb_verdict"] = verdict
        self.results.append(entry)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f)
        os.replace(tmp, self.path)
        self.dut._log.info("%s: %s", entry["name"], verdict or "as expected")

    def assert_all_passed(self):
        failed = [f"{r['name']}: {r['tb_verdict']}" for r in self.results if r["tb_verdict"]]
        assert not failed, (f"{len(failed)} of {len(self.results)} {self.what} failed: "
                            + "; ".join(failed))
