"""The IKR sequencer: one kernel group per slot of ``max(n, k)`` cycles, window fill overlapped."""

from amaranth.hdl import Mux, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import DESC_FIELD_BITS, bits_for, descriptor_layout
from slimnfu.rtl._params import check_config

__all__ = ["IkrSequencer"]


class IkrSequencer(wiring.Component):
    """Walk an IKR conv layer (``desc.ikr_n = n > 0``) in slots of ``G = max(n, k)`` cycles.

    The groups (one output pixel of one output tile for one input tile) come in DianNao's
    order ``o, oy, ox, t``, as in :class:`slimnfu.rtl.sequencer.Sequencer`. Slot ``q`` does
    two things at once:

    * **fill** group ``q``'s KxK input window: in slot cycle ``c < k`` it reads column ``c``
      of the window, the ``k`` pixels ``(t, iy0 + r, ix0 + c)`` for ``r < k``, through
      ``k`` NBin read ports (``fill_addr[r]``, ``fill_en[r]``; ``fill_pad[r]`` marks a
      padding position, read as zero). The data arrive one cycle later, at
      :class:`slimnfu.rtl.pattern_decoder.PatternDecoder`, which holds two window registers;
    * **compute** group ``q - 1``: in slot cycle ``c < n`` it issues step ``c`` (``valid``):
      SB word ``(o*ci_tiles + t)*n + c``, pattern-table word ``step = c`` and IKR index word
      ``idx_addr = o*ci_tiles + t``. ``swap`` (slot cycle 0) moves the filled window into the
      compute window.

    Slot 0 only fills; the layer ends after the ``n`` steps of the last group, so the NFU
    cycle count is ``groups * G + n`` (:meth:`slimnfu.config.LayerDesc.ikr_cycles`), against
    ``groups * k * k`` dense. The step outputs (``valid``, ``sb_addr``, ``bias_addr``,
    ``first``, ``last``, ``end``, ``nbout_addr``, ``lane_mask``) mean what the dense
    sequencer's do, so the engine's NFU-1/2/3 pipeline is shared. The setup (per-layer
    products ``h_in*w_in``, ``stride*w_in``, ``pad*w_in`` by shift-and-add) takes the same
    :attr:`SETUP_CYCLES`, so the engine's ``LATENCY`` holds for both.

    Parameters
    ----------
    cfg : AccelConfig
        Needs ``cfg.ikr``; the window holds ``cfg.ikr_kmax`` rows.
    """

    SETUP_CYCLES = DESC_FIELD_BITS["h_in"]

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        if not cfg.ikr:
            self._MustUse__silence = True
            raise ValueError(f"IkrSequencer needs a config with ikr=True; {cfg.name!r} has "
                             f"ikr=False")
        kmax = cfg.ikr_kmax
        self.nbin_bits = bits_for(cfg.nbin_depth - 1)
        self.sb_bits = bits_for(cfg.sb_depth - 1)
        self.idx_bits = bits_for(cfg.ikr_index_depth - 1)
        super().__init__({
            "start": In(1),
            "desc": In(descriptor_layout(cfg)),
            "busy": Out(1),
            "valid": Out(1),
            "sb_addr": Out(self.sb_bits),
            "bias_addr": Out(bits_for(cfg.bias_depth - 1)),
            "first": Out(1),
            "last": Out(1),
            "end": Out(1),
            "nbout_addr": Out(bits_for(cfg.nbout_depth - 1)),
            "lane_mask": Out(cfg.tn),
            "step": Out(bits_for(kmax * kmax - 1)),
            "idx_addr": Out(self.idx_bits),
            "swap": Out(1),
            "fill_valid": Out(1),
            "fill_col": Out(bits_for(kmax - 1)),
            "fill_addr": Out(data.ArrayLayout(unsigned(self.nbin_bits), kmax)),
            "fill_en": Out(kmax),
            "fill_pad": Out(kmax),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        kmax = cfg.ikr_kmax
        d = Signal(descriptor_layout(cfg))
        geo = DESC_FIELD_BITS["h_in"]
        pos = signed(geo + 3)
        row_shape = signed(max(self.nbin_bits, 2 * geo) + 2)
        product = unsigned(2 * geo)

        setup_left = Signal(range(self.SETUP_CYCLES + 1))
        running = Signal()
        m.d.comb += self.busy.eq(running | (setup_left != 0))

        hw, sw, pw = Signal(product), Signal(product), Signal(product)
        mul_h, mul_s, mul_p = Signal(geo), Signal(geo), Signal(geo)

        # Fill walker: the group whose window is read in this slot.
        t, o = Signal.like(d.ci_tiles), Signal.like(d.co_tiles)
        ox, oy = Signal.like(d.w_out), Signal.like(d.h_out)
        ix0, iy0 = Signal(pos), Signal(pos)
        row0 = Signal(row_shape)
        tbase = Signal(self.nbin_bits + 1)
        idx_f, idx_o = Signal(self.idx_bits + 1), Signal(self.idx_bits + 1)
        sb_f, sb_o = Signal(self.sb_bits + 1), Signal(self.sb_bits + 1)
        nbout_f = Signal.like(self.nbout_addr)
        n_left_f = Signal(signed(len(d.n_out) + 1))
        fill_active = Signal()

        # Compute side: the group filled in the previous slot.
        cv = Signal()
        c_sb, c_idx = Signal.like(sb_f), Signal.like(idx_f)
        c_o = Signal.like(o)
        c_tfirst, c_tlast, c_end = Signal(), Signal(), Signal()
        c_nbout = Signal.like(nbout_f)
        c_nleft = Signal.like(n_left_f)

        slot = Signal(range(kmax * kmax + 1))
        g_last = Signal(range(kmax * kmax + 1))
        n = d.ikr_n

        t_last = t == d.ci_tiles - 1
        ox_last, oy_last, o_last = ox == d.w_out - 1, oy == d.h_out - 1, o == d.co_tiles - 1
        at_boundary = slot == g_last
        computing = running & cv & (slot < n)
        m.d.comb += [
            self.valid.eq(computing),
            self.sb_addr.eq(c_sb + slot),
            self.step.eq(slot),
            self.idx_addr.eq(c_idx),
            self.bias_addr.eq(c_o),
            self.nbout_addr.eq(c_nbout),
            self.first.eq(c_tfirst & (slot == 0)),
            self.last.eq(c_tlast & (slot == n - 1)),
            self.end.eq(computing & c_tlast & c_end & (slot == n - 1)),
            self.swap.eq(running & (slot == 0)),
            self.fill_valid.eq(running & fill_active & (slot < d.k)),
            self.fill_col.eq(slot),
        ]
        for j in range(cfg.tn):
            m.d.comb += self.lane_mask[j].eq(c_nleft > j)
        ix = Signal(pos)
        m.d.comb += ix.eq(ix0 + slot)
        for r in range(kmax):
            iy = Signal(pos, name=f"iy{r}")
            m.d.comb += [
                iy.eq(iy0 + r),
                self.fill_addr[r].eq(tbase + row0 + d.w_in * r + ix),
                self.fill_pad[r].eq((iy < 0) | (iy >= d.h_in) | (ix < 0) | (ix >= d.w_in)),
                self.fill_en[r].eq(self.fill_valid & (r < d.k) & ~self.fill_pad[r]),
            ]

        neg_pad = -d.pad
        with m.If(self.start & ~self.busy):
            desc = self.desc
            m.d.sync += [
                d.eq(desc), setup_left.eq(self.SETUP_CYCLES),
                hw.eq(0), sw.eq(0), pw.eq(0),
                mul_h.eq(desc.h_in), mul_s.eq(desc.stride), mul_p.eq(desc.pad),
                t.eq(0), o.eq(0), ox.eq(0), oy.eq(0),
                ix0.eq(-desc.pad), iy0.eq(-desc.pad), tbase.eq(0),
                idx_f.eq(0), idx_o.eq(0), sb_f.eq(0), sb_o.eq(0), nbout_f.eq(0),
                n_left_f.eq(desc.n_out), fill_active.eq(1), cv.eq(0), slot.eq(0),
                g_last.eq(Mux(desc.ikr_n > desc.k, desc.ikr_n, desc.k) - 1),
            ]
        with m.Elif(setup_left != 0):
            hw_next = (hw << 1) + Mux(mul_h[-1], d.w_in, 0)
            sw_next = (sw << 1) + Mux(mul_s[-1], d.w_in, 0)
            pw_next = (pw << 1) + Mux(mul_p[-1], d.w_in, 0)
            m.d.sync += [
                setup_left.eq(setup_left - 1),
                hw.eq(hw_next), sw.eq(sw_next), pw.eq(pw_next),
                mul_h.eq(mul_h << 1), mul_s.eq(mul_s << 1), mul_p.eq(mul_p << 1),
            ]
            with m.If(setup_left == 1):
                m.d.sync += [row0.eq(-pw_next), running.eq(1)]
        with m.Elif(running):
            with m.If(self.end):
                m.d.sync += running.eq(0)
            with m.If(~at_boundary):
                m.d.sync += slot.eq(slot + 1)
            with m.Else():
                m.d.sync += [
                    slot.eq(0), cv.eq(fill_active), c_sb.eq(sb_f), c_idx.eq(idx_f),
                    c_o.eq(o), c_tfirst.eq(t == 0), c_tlast.eq(t_last), c_nbout.eq(nbout_f),
                    c_nleft.eq(n_left_f), c_end.eq(ox_last & oy_last & o_last),
                ]
                # Advance the fill walker to the next group.
                with m.If(~t_last):
                    m.d.sync += [t.eq(t + 1), tbase.eq(tbase + hw), idx_f.eq(idx_f + 1),
                                 sb_f.eq(sb_f + n)]
                with m.Else():
                    m.d.sync += [t.eq(0), tbase.eq(0), nbout_f.eq(nbout_f + 1),
                                 idx_f.eq(idx_o), sb_f.eq(sb_o)]
                    with m.If(~ox_last):
                        m.d.sync += [ox.eq(ox + 1), ix0.eq(ix0 + d.stride)]
                    with m.Elif(~oy_last):
                        m.d.sync += [ox.eq(0), ix0.eq(neg_pad), oy.eq(oy + 1),
                                     iy0.eq(iy0 + d.stride), row0.eq(row0 + sw)]
                    with m.Elif(~o_last):
                        m.d.sync += [ox.eq(0), ix0.eq(neg_pad), oy.eq(0), iy0.eq(neg_pad),
                                     row0.eq(-pw), o.eq(o + 1), n_left_f.eq(n_left_f - cfg.tn),
                                     idx_f.eq(idx_f + 1), idx_o.eq(idx_f + 1),
                                     sb_f.eq(sb_f + n), sb_o.eq(sb_f + n)]
                    with m.Else():
                        m.d.sync += fill_active.eq(0)
        return m
