"""NFU-3: requantisation, activation (none / ReLU / 16-segment PWL) and saturation counting."""

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import PWL_SEGMENTS, Act, bits_for
from slimnfu.rtl._params import check_config
from slimnfu.rtl.signatures import LoadSignature

__all__ = ["NFU3"]


def _popcount(bits):
    total = 0
    for bit in bits:
        total = total + bit
    return total


class NFU3(wiring.Component):
    """Requantise ``tn`` accumulators to ``dw`` bits and apply the activation.

    Exactly :func:`slimnfu.fixed.requant`, ``relu`` and ``pwl_apply``:

    * stage 1: ``y = sat_dw((acc + 2**(sh-1)) >> sh)`` (no rounding term when ``sh == 0``),
      computed as ``((acc >> (sh-1)) + 1) >> 1`` so only one barrel shifter is needed;
    * stage 2: ``none``: ``y``; ``relu``: ``max(0, y)``; ``pwl``:
      ``seg = clamp((y >> seg_shift) + 8, 0, 15)``,
      ``out = sat_dw((slope[seg]*y + icpt[seg] + 2**(p-1)) >> p)``, ``p = dw - 2``.

    ``out`` and ``out_valid`` appear :attr:`LATENCY` cycles after ``in_valid``.
    ``sat_events`` counts the saturations of both stages on the lanes set in ``lane_mask``
    (the real output channels; the padded lanes of the last tile do not count), as
    :class:`slimnfu.fixed.SatCount` does; ``clear`` zeroes it.

    The PWL table is ``PWL_SEGMENTS`` registers written through ``pwl`` (word layout of
    :func:`slimnfu.formats.layout.pack_pwl`: slope in bits ``[0, dw)``, intercept in
    ``[dw, 3*dw)``).

    Parameters
    ----------
    cfg : AccelConfig

    Members
    -------
    acc : In(ArrayLayout(signed(acc), tn)); in_valid : In(1); lane_mask : In(tn)
        A finished output group from NFU-2, in the cycle ``in_valid`` is high.
    shift, act, seg_shift : In
        The layer's requantisation shift, activation and PWL segment width.
    pwl : In(LoadSignature(addr_width=4, data_width=3*dw))
        A PWL table write: segment ``addr`` takes ``data`` at the clock edge.
    clear : In(1)
        Zero ``sat_events`` (a new layer).
    out : Out(ArrayLayout(signed(dw), tn)); out_valid : Out(1)
        The activated outputs, ``LATENCY`` cycles after ``in_valid``.
    sat_events : Out(32)
        Saturations so far.
    """

    LATENCY = 2

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        super().__init__({
            "acc": In(data.ArrayLayout(signed(cfg.acc), cfg.tn)),
            "in_valid": In(1),
            "lane_mask": In(cfg.tn),
            "shift": In(bits_for(cfg.acc - 1)),
            "act": In(Act),
            "seg_shift": In(bits_for(cfg.dw - 1)),
            "pwl": In(LoadSignature(addr_width=bits_for(PWL_SEGMENTS - 1), data_width=3 * cfg.dw)),
            "clear": In(1),
            "out": Out(data.ArrayLayout(signed(cfg.dw), cfg.tn)),
            "out_valid": Out(1),
            "sat_events": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        dw, tn, p = cfg.dw, cfg.tn, cfg.pwl_frac
        qmin, qmax = cfg.qmin, cfg.qmax

        slopes = Array(Signal(signed(dw), name=f"slope{s}") for s in range(PWL_SEGMENTS))
        icpts = Array(Signal(signed(2 * dw), name=f"icpt{s}") for s in range(PWL_SEGMENTS))
        pwl = self.pwl
        with m.If(pwl.en):
            m.d.sync += [slopes[pwl.addr].eq(pwl.data[:dw]), icpts[pwl.addr].eq(pwl.data[dw:])]

        # Stage 1: requantisation.
        y = Signal(data.ArrayLayout(signed(dw), tn))
        sat1 = Signal(tn)
        mask1 = Signal(tn)
        valid1 = Signal()
        m.d.sync += [valid1.eq(self.in_valid), mask1.eq(self.lane_mask)]
        shift_less_one = Signal.like(self.shift)
        m.d.comb += shift_less_one.eq(self.shift - 1)
        for j in range(tn):
            acc = self.acc[j]
            half = Signal(signed(cfg.acc + 1), name=f"half{j}")
            rounded = Signal(signed(cfg.acc + 1), name=f"rounded{j}")
            m.d.comb += half.eq(acc >> shift_less_one)
            m.d.comb += rounded.eq(Mux(self.shift == 0, acc, (half + 1) >> 1))
            over, under = rounded > qmax, rounded < qmin
            m.d.sync += [
                y[j].eq(Mux(over, qmax, Mux(under, qmin, rounded))),
                sat1[j].eq(over | under),
            ]

        # Stage 2: activation.
        sat2 = Signal(tn)
        is_pwl = self.act == Act.PWL
        m.d.sync += self.out_valid.eq(valid1)
        for j in range(tn):
            yj = y[j]
            seg_raw = Signal(signed(dw + 1), name=f"seg_raw{j}")
            seg = Signal(unsigned(4), name=f"seg{j}")
            m.d.comb += seg_raw.eq((yj >> self.seg_shift) + PWL_SEGMENTS // 2)
            m.d.comb += seg.eq(Mux(seg_raw < 0, 0,
                                   Mux(seg_raw > PWL_SEGMENTS - 1, PWL_SEGMENTS - 1, seg_raw)))
            line = Signal(signed(2 * dw + 2), name=f"line{j}")
            m.d.comb += line.eq((slopes[seg] * yj + icpts[seg] + (1 << (p - 1))) >> p)
            over, under = line > qmax, line < qmin
            pwl_out = Mux(over, qmax, Mux(under, qmin, line))
            with m.Switch(self.act):
                with m.Case(Act.RELU):
                    m.d.sync += self.out[j].eq(Mux(yj < 0, 0, yj))
                with m.Case(Act.PWL):
                    m.d.sync += self.out[j].eq(pwl_out)
                with m.Default():
                    m.d.sync += self.out[j].eq(yj)
            m.d.comb += sat2[j].eq(is_pwl & (over | under))

        events = _popcount((sat1 & mask1)[j] for j in range(tn)) + \
            _popcount((sat2 & mask1)[j] for j in range(tn))
        with m.If(self.clear):
            m.d.sync += self.sat_events.eq(0)
        with m.Elif(valid1):
            m.d.sync += self.sat_events.eq(self.sat_events + events)
        return m
