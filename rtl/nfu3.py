"""NFU-3: requantisation, activation (none / ReLU / 16-segment PWL) and saturation counting."""

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import PWL_SEGMENTS, Act, bits_for
from slimnfu.rtl._params import check_config, delay
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

    * requantisation: ``y = sat_dw((acc + 2**(sh-1)) >> sh)`` (no rounding term when
      ``sh == 0``), computed as ``((acc >> (sh-1)) + 1) >> 1`` so only one barrel shifter is
      needed;
    * activation: ``none``: ``y``; ``relu``: ``max(0, y)``; ``pwl``:
      ``seg = clamp((y >> seg_shift) + 8, 0, 15)``,
      ``out = sat_dw((slope[seg]*y + icpt[seg] + 2**(p-1)) >> p)``, ``p = dw - 2``.

    Pipeline, one register stage each (:attr:`REQUANT_STAGES` + :attr:`ACT_STAGES`): the
    barrel shift in two (by the multiple of 8, then the rest); the rounding add; the clamp to
    ``dw`` bits; the PWL segment (its clamp, like the others, tests bits instead of
    comparing); the slope lookup; the multiply (a register-multiplier-register path, beside
    which the intercept is looked up); the intercept and rounding add; the clamp and the
    choice of activation. ``out`` and ``out_valid`` appear :meth:`latency` cycles after
    ``in_valid``; a group may enter in every cycle.
    ``sat_events`` counts the saturations of both clamps on the lanes set in ``lane_mask``
    (the real output channels; the padded lanes of the last tile do not count), as
    :class:`slimnfu.fixed.SatCount` does, and includes a group's events from the cycle after
    its ``out_valid``; ``clear`` zeroes it.

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
        The layer's requantisation shift, activation and PWL segment width (constant while
        a layer runs).
    pwl : In(LoadSignature(addr_width=4, data_width=3*dw))
        A PWL table write: segment ``addr`` takes ``data`` at the clock edge.
    clear : In(1)
        Zero ``sat_events`` (a new layer).
    out : Out(ArrayLayout(signed(dw), tn)); out_valid : Out(1)
        The activated outputs, ``latency(cfg)`` cycles after ``in_valid``.
    sat_events : Out(32)
        Saturations so far.
    """

    #: Requantisation stages: shift (two), round, clamp.
    REQUANT_STAGES = 4
    #: Activation stages: segment, lookup, multiply, add, clamp.
    ACT_STAGES = 5

    @classmethod
    def latency(cls, cfg):
        """Cycles from ``in_valid`` to ``out_valid``: ``REQUANT_STAGES + ACT_STAGES``."""
        return cls.REQUANT_STAGES + cls.ACT_STAGES

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

        pwl = self.pwl
        if cfg.pwl_lutram:
            # a 16-word LUT RAM per lane and field: every copy takes every write, and each
            # lane reads its own asynchronously, so no table bit fans out to all the lanes
            ports = {}
            for field, shape, bits in (("slopes", signed(dw), pwl.data[:dw]),
                                       ("icpts", signed(2 * dw), pwl.data[dw:])):
                for j in range(tn):
                    m.submodules[f"{field}{j}"] = table = Memory(
                        shape=shape, depth=PWL_SEGMENTS, init=[])
                    wr = table.write_port()
                    m.d.comb += [wr.addr.eq(pwl.addr), wr.data.eq(bits), wr.en.eq(pwl.en)]
                    ports[field, j] = table.read_port(domain="comb")

            def lookup(field, j, seg):
                m.d.comb += ports[field, j].addr.eq(seg)
                return ports[field, j].data
        else:
            tables = {"slopes": Array(Signal(signed(dw), name=f"slope{s}")
                                      for s in range(PWL_SEGMENTS)),
                      "icpts": Array(Signal(signed(2 * dw), name=f"icpt{s}")
                                     for s in range(PWL_SEGMENTS))}
            with m.If(pwl.en):
                m.d.sync += [tables["slopes"][pwl.addr].eq(pwl.data[:dw]),
                             tables["icpts"][pwl.addr].eq(pwl.data[dw:])]

            def lookup(field, j, seg):
                return tables[field][seg]

        def reg(value, name):
            # data beside the valid flags: no reset (the multiplier's registers can be the
            # MULT18X18D's own)
            r = Signal.like(value, name=name, reset_less=True)
            m.d.sync += r.eq(value)
            return r

        def delayed(value, stages, name):
            return delay(m, value, stages, f"{name}_")

        total = self.latency(cfg)
        valid = delayed(self.in_valid, total, "valid")
        # the lane mask two stages before ``out``: the saturations are flagged there
        mask = delayed(self.lane_mask, total - 2, "mask")
        m.d.comb += self.out_valid.eq(valid)
        # The descriptor fields are constant while a layer runs: one register each, off the
        # critical paths.
        shift_zero = reg(self.shift == 0, "shift_zero")
        shift_less_one = Signal.like(self.shift, name="shift_less_one")
        m.d.sync += shift_less_one.eq(self.shift - 1)
        seg_shift, act = reg(self.seg_shift, "seg_shift_r"), reg(self.act, "act_r")
        seg_hi = reg((C((1 << dw) - 1, dw) << (self.seg_shift + 3))[:dw], "seg_hi")

        def segment_parts(value):
            """``(low, in_range)`` of ``clamp((value >> seg_shift) + 8, 0, 15)`` for a
            ``dw``-bit ``value``, without an adder or a shifted compare: ``q = value >>
            seg_shift`` is in ``[-8, 7]`` exactly when ``value``'s bits from ``seg_shift + 3``
            up (``seg_hi``) all equal its sign, and then ``q + 8`` is ``q``'s low 4 bits with
            bit 3 flipped."""
            value = value.as_signed()
            low = (value >> seg_shift)[:4]
            in_range = ~((value ^ Mux(value[-1], (1 << dw) - 1, 0)) & seg_hi).any()
            return low, in_range

        def segment_of(low, in_range, negative):
            return Mux(in_range, Cat(low[:3], ~low[3]), Mux(negative, 0, PWL_SEGMENTS - 1))

        # the segments of the saturated values: constant while a layer runs
        seg_qmax, seg_qmin = (reg(segment_of(*segment_parts(C(q, signed(dw))), q < 0), name)
                              for q, name in ((qmax, "seg_qmax"), (qmin, "seg_qmin")))

        def saturate(value):
            """``(sat_dw(value), saturated)`` without a compare: a signed value fits ``dw``
            bits exactly when its bits from bit ``dw-1`` up are all equal."""
            top = value[dw - 1:]
            fits = top.all() | ~top.any()
            return Mux(fits, value[:dw], Mux(value[-1], qmin, qmax))[:dw].as_signed(), ~fits

        sat1_all, sat2_all = [], []
        for j in range(tn):
            acc = self.acc[j]
            # Requantisation: shift, round, clamp.
            # the barrel shift in two stages: by the multiple of 8, then by the rest
            coarse = reg(Mux(shift_zero, acc, acc >> Cat(C(0, 3), shift_less_one[3:])),
                         f"coarse{j}")
            half = reg(Mux(shift_zero, coarse, coarse >> shift_less_one[:3]), f"half{j}")
            rounded = reg(Mux(shift_zero, half, (half + 1) >> 1), f"rounded{j}")
            y_value, sat1_value = saturate(rounded)
            y, sat1 = reg(y_value, f"y{j}"), reg(sat1_value, f"sat1_{j}")
            # Activation: segment, lookup, multiply, add, clamp. The segment's shift and
            # range test start from the rounded value beside the clamp to dw bits (equal to
            # y unless it saturates, and then y's segment is the layer's constant).
            low, in_range = [reg(v, f"{name}{j}") for v, name in
                             zip(segment_parts(rounded[:dw]), ("seg_low", "seg_in"))]
            seg = reg(Mux(sat1, Mux(y[-1], seg_qmin, seg_qmax),
                          segment_of(low, in_range, y[-1])), f"seg{j}")
            y2 = reg(y, f"y{j}_2")
            # the intercept is added a stage after the slope multiplies: it is looked up a
            # stage later, from its own copy of seg (half the fan-out of each)
            slope, seg3 = reg(lookup("slopes", j, seg), f"slope_r{j}"), reg(seg, f"seg{j}_3")
            y3 = reg(y2, f"y{j}_3")
            product = reg(slope * y3, f"pwl_product{j}")
            icpt4, y4 = reg(lookup("icpts", j, seg3), f"icpt_r{j}_4"), reg(y3, f"y{j}_4")
            line_value = (product + icpt4 + (1 << (p - 1))) >> p
            line = reg(line_value, f"line{j}")
            y5 = reg(y4, f"y{j}_5")
            pwl_out = saturate(line)[0]
            with m.Switch(act):
                with m.Case(Act.RELU):
                    m.d.sync += self.out[j].eq(Mux(y5 < 0, 0, y5))
                with m.Case(Act.PWL):
                    m.d.sync += self.out[j].eq(pwl_out)
                with m.Default():
                    m.d.sync += self.out[j].eq(y5)
            # a lane's saturations are flagged beside ``line``, the PWL clamp's from the sum
            # that ``line`` registers
            sat1_all.append(reg(delayed(sat1, self.ACT_STAGES - 2, f"sat1_{j}") & mask[j],
                                f"sat1_{j}_flag"))
            sat2_all.append(reg((act == Act.PWL) & saturate(line_value)[1] & mask[j],
                                f"sat2_{j}_flag"))

        # A group's saturations are counted in the cycle its outputs are on ``out`` (the
        # popcount of the registered flags) and added a cycle later, so that the popcount and
        # the counter's add have a cycle each.
        events = reg(_popcount(sat1_all) + _popcount(sat2_all), "sat_step")
        with m.If(self.clear):
            m.d.sync += self.sat_events.eq(0)
        with m.Elif(valid):
            m.d.sync += self.sat_events.eq(self.sat_events + events)
        return m
