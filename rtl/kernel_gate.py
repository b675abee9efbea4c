"""KernelGate: per-lane multiplier gating for tiles whose filters have different kernel sizes."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import DESC_FIELD_BITS
from slimnfu.rtl._params import check_config

__all__ = ["KernelGate"]


class KernelGate(wiring.Component):
    """Enable the output lanes whose kernel covers the current tap of a ``k x k`` walk.

    A pass walks the ``k x k`` taps of its widest lane (the sequencer's ``ky``/``kx`` loops,
    ``t`` outside them). Lane ``j`` has a centred kernel of ``lane_k[j]`` (odd, ``<= k``); it
    covers tap ``(ky, kx)`` when ``|ky - c| <= h_j`` and ``|kx - c| <= h_j`` with
    ``c = (k-1)/2`` and ``h_j = (lane_k[j]-1)/2``. ``lane_k[j] == 0`` means "the full ``k``"
    (never gated), so an all-zero ``lane_k`` is the dense engine.

    The component follows the walk itself: a step with ``first`` is tap ``(0, 0)``, every
    other valid step is the tap after the previous one (``kx`` fastest, wrapping after
    ``(k-1, k-1)``). ``lane_en`` and ``lane_off`` of the step on the inputs in cycle ``S``
    appear in ``S + LATENCY``: the tap's distances from the centre are registered, the lane
    compares follow them. The gated lanes are counted by the engine, from ``lane_off`` one
    register later, so no compare and no adder share a cycle.

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    valid, first : In(1)
        The sequencer's step strobe and first step of an output group.
    k : In(unsigned(4))
        The pass kernel (descriptor ``k``).
    lane_k : In(ArrayLayout(unsigned(4), tn))
        Each lane's kernel size (0: the full ``k``).
    lane_en : Out(tn)
        Lanes whose multipliers work for the step of ``LATENCY`` cycles before.
    lane_off : Out(tn)
        Lanes gated for that step (none when its ``valid`` was low).
    """

    #: Cycles from a step on the inputs to its ``lane_en`` and ``lane_off``.
    LATENCY = 1

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        kbits = DESC_FIELD_BITS["k"]
        super().__init__({
            "valid": In(1),
            "first": In(1),
            "k": In(unsigned(kbits)),
            "lane_k": In(data.ArrayLayout(unsigned(kbits), cfg.tn)),
            "lane_en": Out(cfg.tn),
            "lane_off": Out(cfg.tn),
        })

    def elaborate(self, platform):
        m = Module()
        tn = self.cfg.tn
        kbits = DESC_FIELD_BITS["k"]
        ky_next, kx_next = Signal(kbits), Signal(kbits)
        ky, kx = Signal(kbits), Signal(kbits)
        m.d.comb += [ky.eq(Mux(self.first, 0, ky_next)), kx.eq(Mux(self.first, 0, kx_next))]
        with m.If(self.valid):
            with m.If(kx != self.k - 1):
                m.d.sync += [kx_next.eq(kx + 1), ky_next.eq(ky)]
            with m.Elif(ky != self.k - 1):
                m.d.sync += [kx_next.eq(0), ky_next.eq(ky + 1)]
            with m.Else():
                m.d.sync += [kx_next.eq(0), ky_next.eq(0)]

        # Twice the distance from the centre, so even and odd k need no halving.
        dy, dx = Signal(signed(kbits + 2)), Signal(signed(kbits + 2))
        m.d.comb += [dy.eq(2 * ky - (self.k - 1)), dx.eq(2 * kx - (self.k - 1))]
        # The stage register: the distances and the step's valid.
        ady, adx = Signal(kbits + 1), Signal(kbits + 1)
        valid = Signal()
        m.d.sync += [ady.eq(Mux(dy < 0, -dy, dy)), adx.eq(Mux(dx < 0, -dx, dx)),
                     valid.eq(self.valid)]
        for j in range(tn):
            lk = self.lane_k[j]
            cover = (lk == 0) | ((ady < lk) & (adx < lk))
            m.d.comb += [self.lane_en[j].eq(cover), self.lane_off[j].eq(valid & ~cover)]
        return m
