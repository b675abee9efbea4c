"""The layer sequencer: DianNao's loop nest, one NFU step per cycle, no bubbles."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import DESC_FIELD_BITS, Mode, bits_for, descriptor_layout
from slimnfu.rtl._params import check_config

__all__ = ["Sequencer"]


class Sequencer(wiring.Component):
    """Walk one layer's loop nest and issue one NFU step per cycle.

    The loop order is DianNao's::

        for o in co_tiles: for oy in h_out: for ox in w_out:
            for t in ci_tiles: for ky in k: for kx in k:  step

    with ``t = o`` (and ``ci_tiles = 1``) in the pooling modes. With ``cfg.kgate`` the
    descriptor's ``koff`` moves the window (``iy = oy*stride + ky + koff - pad``), NBout
    addresses start at ``nbout_base``, and ``write_mask`` clears the lanes below ``lane_skip`` in
    the first output tile. Each step gives the NBin word
    ``(t*h_in + iy)*w_in + ix`` at ``iy = oy*stride + ky - pad``, ``ix = ox*stride + kx - pad``
    (or ``pad`` high when that lies outside the input: the operand is zero), the SB word
    ``((o*ci_tiles + t)*k + ky)*k + kx``, the bias word ``o``, ``first``/``last`` of the output
    group (one output pixel of one output tile), the NBout word ``(o*h_out + oy)*w_out + ox``,
    the real-channel mask ``lane_mask[j] = o*tn + j < n_out`` and ``end`` on the layer's last
    step. Steps are issued back to back, across output groups too.

    All addresses come from incremental counters. The three per-layer products they need
    (``h_in*w_in``, ``stride*w_in`` and ``pad*w_in``) are computed after ``start`` by a
    shift-and-add over :attr:`SETUP_CYCLES` cycles, so address generation has no multiplier.
    The first step is issued ``SETUP_CYCLES + 1`` cycles after the ``start`` pulse.

    Parameters
    ----------
    cfg : AccelConfig
    """

    #: Cycles of the shift-and-add setup (one per bit of ``h_in``).
    SETUP_CYCLES = DESC_FIELD_BITS["h_in"]

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        self.nbin_bits = bits_for(cfg.nbin_depth - 1)
        self.sb_bits = bits_for(cfg.sb_depth - 1)
        self.bias_bits = bits_for(cfg.bias_depth - 1)
        self.nbout_bits = bits_for(cfg.nbout_depth - 1)
        super().__init__({
            "start": In(1),
            "desc": In(descriptor_layout(cfg)),
            "busy": Out(1),
            "valid": Out(1),
            "nbin_addr": Out(self.nbin_bits),
            "pad": Out(1),
            "sb_addr": Out(self.sb_bits),
            "bias_addr": Out(self.bias_bits),
            "first": Out(1),
            "last": Out(1),
            "end": Out(1),
            "nbout_addr": Out(self.nbout_bits),
            "lane_mask": Out(cfg.tn),
            # Centre-tap passes (``cfg.kgate``): lanes of the step's output tile to write.
            **({"write_mask": Out(cfg.tn)} if cfg.kgate else {}),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        layout = descriptor_layout(cfg)
        d = Signal(layout)
        geo = DESC_FIELD_BITS["h_in"]
        # |coordinate| <= h_in + pad; |row offset| <= (h_in + pad) * w_in.
        pos = signed(geo + 3)
        row_shape = signed(max(self.nbin_bits, 2 * geo) + 2)
        product = unsigned(2 * geo)

        setup_left = Signal(range(self.SETUP_CYCLES + 1))
        running = Signal()
        m.d.comb += [self.busy.eq(running | (setup_left != 0)), self.valid.eq(running)]

        # Per-layer products by shift-and-add, most significant multiplier bit first.
        hw, sw, pw = Signal(product), Signal(product), Signal(product)
        mul_h, mul_s, mul_p = Signal(geo), Signal(geo), Signal(geo)
        hw_next = Signal(product)
        sw_next = Signal(product)
        pw_next = Signal(product)
        m.d.comb += [
            hw_next.eq((hw << 1) + Mux(mul_h[-1], d.w_in, 0)),
            sw_next.eq((sw << 1) + Mux(mul_s[-1], d.w_in, 0)),
            pw_next.eq((pw << 1) + Mux(mul_p[-1], d.w_in, 0)),
        ]
        # koff * w_in, the centre-tap offset's row part (kgate only).
        if cfg.kgate:
            kw, kw_next, mul_k = Signal(product), Signal(product), Signal(geo)
            m.d.comb += kw_next.eq((kw << 1) + Mux(mul_k[-1], d.w_in, 0))
            row_start, row_start_next = kw - pw, kw_next - pw_next
        else:
            row_start, row_start_next = -pw, -pw_next

        kx, ky = Signal.like(d.k), Signal.like(d.k)
        t, o = Signal.like(d.ci_tiles), Signal.like(d.co_tiles)
        ox, oy = Signal.like(d.w_out), Signal.like(d.h_out)
        ix0, iy0, ix, iy = (Signal(pos, name=n) for n in ("ix0", "iy0", "ix", "iy"))
        row0, row = Signal(row_shape), Signal(row_shape)
        tbase, obase = Signal(self.nbin_bits + 1), Signal(self.nbin_bits + 1)
        sb_addr, sb_base = Signal(self.sb_bits + 1), Signal(self.sb_bits + 1)
        nbout_addr = Signal(self.nbout_bits)
        n_left = Signal(signed(len(d.n_out) + 1))
        pool = d.mode != Mode.MAC

        m.d.comb += [
            self.nbin_addr.eq(tbase + row + ix),
            self.pad.eq((iy < 0) | (iy >= d.h_in) | (ix < 0) | (ix >= d.w_in)),
            self.sb_addr.eq(sb_addr),
            self.bias_addr.eq(o),
            self.nbout_addr.eq(nbout_addr),
            self.first.eq((t == 0) & (ky == 0) & (kx == 0)),
        ]
        for j in range(cfg.tn):
            m.d.comb += self.lane_mask[j].eq(n_left > j)

        kx_last, ky_last = kx == d.k - 1, ky == d.k - 1
        t_last = t == d.ci_tiles - 1
        ox_last, oy_last, o_last = ox == d.w_out - 1, oy == d.h_out - 1, o == d.co_tiles - 1
        group_last = kx_last & ky_last & t_last
        m.d.comb += [
            self.last.eq(group_last),
            self.end.eq(group_last & ox_last & oy_last & o_last),
        ]
        if cfg.kgate:
            neg_pad = d.koff - d.pad
            first0 = self.desc.koff - self.desc.pad
            nbout0 = self.desc.nbout_base
            for j in range(cfg.tn):
                m.d.comb += self.write_mask[j].eq((o != 0) | (d.lane_skip <= j))
        else:
            neg_pad, first0, nbout0 = -d.pad, -self.desc.pad, 0

        with m.If(self.start & ~self.busy):
            m.d.sync += [
                d.eq(self.desc),
                setup_left.eq(self.SETUP_CYCLES),
                hw.eq(0), sw.eq(0), pw.eq(0),
                mul_h.eq(self.desc.h_in), mul_s.eq(self.desc.stride), mul_p.eq(self.desc.pad),
                kx.eq(0), ky.eq(0), t.eq(0), o.eq(0), ox.eq(0), oy.eq(0),
                ix0.eq(first0), iy0.eq(first0), ix.eq(first0), iy.eq(first0),
                tbase.eq(0), obase.eq(0), sb_addr.eq(0), sb_base.eq(0), nbout_addr.eq(nbout0),
                n_left.eq(self.desc.n_out),
            ]
            if cfg.kgate:
                m.d.sync += [kw.eq(0), mul_k.eq(self.desc.koff)]
        with m.Elif(setup_left != 0):
            m.d.sync += [
                setup_left.eq(setup_left - 1),
                hw.eq(hw_next), sw.eq(sw_next), pw.eq(pw_next),
                mul_h.eq(mul_h << 1), mul_s.eq(mul_s << 1), mul_p.eq(mul_p << 1),
            ]
            if cfg.kgate:
                m.d.sync += [kw.eq(kw_next), mul_k.eq(mul_k << 1)]
            with m.If(setup_left == 1):
                m.d.sync += [row0.eq(row_start_next), row.eq(row_start_next), running.eq(1)]
        with m.Elif(running):
            m.d.sync += sb_addr.eq(sb_addr + 1)
            with m.If(~kx_last):
                m.d.sync += [kx.eq(kx + 1), ix.eq(ix + 1)]
            with m.Else():
                m.d.sync += kx.eq(0)
                with m.If(~ky_last):
                    m.d.sync += [ky.eq(ky + 1), iy.eq(iy + 1), row.eq(row + d.w_in), ix.eq(ix0)]
                with m.Else():
                    m.d.sync += ky.eq(0)
                    with m.If(~t_last):
                        m.d.sync += [t.eq(t + 1), tbase.eq(tbase + hw),
                                     iy.eq(iy0), row.eq(row0), ix.eq(ix0)]
                    with m.Else():
                        m.d.sync += [t.eq(0), nbout_addr.eq(nbout_addr + 1)]
                        # The output group is finished: next pixel, row or output tile.
                        with m.If(~ox_last):
                            m.d.sync += [ox.eq(ox + 1), ix0.eq(ix0 + d.stride),
                                         ix.eq(ix0 + d.stride), iy.eq(iy0), row.eq(row0),
                                         tbase.eq(obase), sb_addr.eq(sb_base)]
                        with m.Elif(~oy_last):
                            m.d.sync += [ox.eq(0), ix0.eq(neg_pad), ix.eq(neg_pad),
                                         oy.eq(oy + 1), iy0.eq(iy0 + d.stride),
                                         iy.eq(iy0 + d.stride), row0.eq(row0 + sw),
                                         row.eq(row0 + sw), tbase.eq(obase), sb_addr.eq(sb_base)]
                        with m.Elif(~o_last):
                            next_obase = Mux(pool, obase + hw, 0)
                            m.d.sync += [ox.eq(0), ix0.eq(neg_pad), ix.eq(neg_pad),
                                         oy.eq(0), iy0.eq(neg_pad), iy.eq(neg_pad),
                                         row0.eq(row_start), row.eq(row_start),
                                         o.eq(o + 1), n_left.eq(n_left - cfg.tn),
                                         sb_base.eq(sb_addr + 1), obase.eq(next_obase),
                                         tbase.eq(next_obase)]
                        with m.Else():
                            m.d.sync += running.eq(0)
        return m
