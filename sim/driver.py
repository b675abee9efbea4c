"""cocotb coroutines that drive the layer engine through its ports.

Inputs change on the falling clock edge and are sampled by the engine on the rising edge, so
the driver is race-free on both Icarus and Verilator. The engine's port contract (see
:class:`slimnfu.rtl.engine.LayerEngine`): ``load_en/load_sel/load_addr/load_data`` write one
word per cycle while idle; ``start`` latches ``desc``; ``done`` pulses at the end, when the
counters hold their final values; ``rd_addr`` -> ``rd_data`` one cycle later.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, with_timeout

__all__ = ["EngineTB", "COUNTERS", "CLOCK_NS"]

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
                     "desc"):
            getattr(dut, name).value = 0
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

    async def read_nbout(self, count):
        """Read NBout words ``0 .. count-1``; raise ``ValueError`` on X/Z bits."""
        dut = self.dut
        words = []
        for addr in range(count):
            dut.rd_addr.value = addr
            await FallingEdge(dut.clk)
            try:
                words.append(dut.rd_data.value.to_unsigned())
            except ValueError:
                raise ValueError(f"rd_data has X/Z bits at NBout address {addr}: "
                                 f"{dut.rd_data.value}") from None
        return words
