"""The IKR sequencer: a kernel group per slot of ``max(n, cols)`` cycles, window fill overlapped."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for
from slimnfu.rtl._params import check_config
from slimnfu.rtl.loop_nest import LoopNest, tile_counter
from slimnfu.rtl.signatures import RunSignature, StepSignature, WindowSignature

__all__ = ["IkrSequencer"]


class IkrSequencer(wiring.Component):
    """Walk an IKR conv layer (``desc.ikr_n = n > 0``) in slots of ``G = max(n, cols)`` cycles.

    The groups (one output pixel of one output tile for one input tile: the windows of
    :class:`slimnfu.rtl.loop_nest.LoopNest`) come in DianNao's order ``o, oy, ox, t``, as in
    :class:`slimnfu.rtl.sequencer.Sequencer`. Slot ``q`` does two things at once:

    * **fill** ``cols`` columns of group ``q``'s KxK input window in the last ``cols`` cycles
      of the slot, left to right: slot cycle ``c >= G - cols`` reads window column
      ``k - G + c``, the ``k`` pixels ``(t, iy0 + r, ix0 + k - G + c)`` for ``r < k``,
      through ``k`` NBin read ports (``fill_addr[r]``, ``fill_en[r]``;
      ``window.fill_pad[r]`` marks a padding position, read as zero), into the decoder's
      window bank ``window.fill_bank``. ``cols = k``, except in a layer of at most
      ``cfg.ikr.tiles`` input tiles (*banked*: bank ``t`` holds input tile ``t``'s window) for
      every output pixel but the first of its row: the window then slides from the same
      tile's window of the previous pixel, and only its last ``cols = min(stride, k)``
      columns are new. A layer with more input tiles fills bank 0 with all ``k`` columns of
      every window. The data arrive one cycle later, at
      :class:`slimnfu.rtl.pattern_decoder.PatternDecoder`, whose bank shifts one column left
      per arrival; column ``k - 1``, read in the slot's last cycle, arrives with the next
      slot's ``swap``;
    * **compute** group ``q - 1``: in slot cycle ``c < n`` it issues step ``c``
      (``step.valid``): SB word ``(o*ci_tiles + t)*n + c``, pattern-table word
      ``window.step = c`` and IKR index word ``window.idx_addr = o*ci_tiles + t``.
      ``window.swap`` (slot cycle 0) moves the filled window into the compute window.

    Slot 0 only fills; the layer ends after the ``n`` steps of the last group, so the NFU
    cycle count is the sum of the slots plus ``n`` (:meth:`slimnfu.config.PassDesc.ikr_cycles`:
    ``groups * max(n, k) + n`` when not banked), against ``groups * k * k`` dense. The steps
    (a :class:`StepSignature` without features: padding is resolved in the window fill) mean
    what the dense sequencer's do, so the engine's NFU-1/2/3
    pipeline is shared. The setup is the loop nest's, :attr:`SETUP_CYCLES` as in the dense
    sequencer, so the engine's ``latency(cfg)`` holds for both. The descriptor's ``koff``,
    ``nbout_base`` and ``lane_skip`` (``cfg.kgate``) do not apply to IKR layers.

    Parameters
    ----------
    cfg : AccelConfig
        Needs ``cfg.ikr``; the window holds ``cfg.ikr.kmax`` rows, the decoder
        ``cfg.ikr.tiles`` window banks.

    Members
    -------
    run : In(RunSignature)
    step : Out(StepSignature)
    window : Out(WindowSignature)
    fill_addr : Out(ArrayLayout(unsigned(nbin address bits), ikr_kmax))
    fill_en : Out(ikr_kmax)
    """

    SETUP_CYCLES = LoopNest.SETUP_CYCLES

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg, needs="ikr")
        nbin_addr = unsigned(bits_for(cfg.nbin_depth - 1))
        super().__init__({
            "run": In(RunSignature.for_config(cfg)),
            "step": Out(StepSignature.for_config(cfg)),
            "window": Out(WindowSignature.for_config(cfg)),
            "fill_addr": Out(data.ArrayLayout(nbin_addr, cfg.ikr.kmax)),
            "fill_en": Out(cfg.ikr.kmax),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, step, win = self.cfg, self.step, self.window
        kmax = cfg.ikr.kmax
        m.submodules.nest = nest = LoopNest(cfg, taps=False, pooling=False)
        wiring.connect(m, wiring.flipped(self.run), nest.run)
        d, n = nest.layer, nest.layer.ikr_n
        starting = self.run.start & ~self.run.busy

        slot = Signal(range(kmax * kmax + 1))
        # A slot fills ``cols`` window columns and lasts ``max(n, cols)`` cycles: ``k``
        # columns, or in a banked layer (at most ``tiles`` input tiles) the
        # ``min(stride, k)`` the window slides by from the same input tile's window of the
        # previous output pixel of the row (the others are already in the decoder's bank).
        g_full, g_slide = Signal.like(slot), Signal.like(slot)
        new_cols = Signal(range(kmax + 1))
        slide, banked = Signal(), Signal()
        # the input tile of the group being filled: its bank when banked, else bank 0
        bank = Signal(range(cfg.ikr.tiles))
        g_last, cols = Signal.like(slot), Signal.like(new_cols)
        m.d.comb += [
            slide.eq(banked & (nest.ix != -d.pad)),
            g_last.eq(Mux(slide, g_slide, g_full)),
            cols.eq(Mux(slide, new_cols, d.k)),
        ]
        at_boundary = slot == g_last
        # The fill walker (the loop nest) moves on at each slot boundary; the layer ends
        # after the last group's compute steps.
        m.d.comb += [nest.advance.eq(at_boundary), nest.stop.eq(step.end)]
        advance = nest.running & at_boundary
        idx_f = tile_counter(m, nest, starting, advance, 1,
                             unsigned(bits_for(cfg.ikr.index_depth - 1) + 1), "idx_f")
        sb_f = tile_counter(m, nest, starting, advance, n,
                            unsigned(bits_for(cfg.sb_depth - 1) + 1), "sb_f")
        fill_active = Signal()

        # Compute side: the group filled in the previous slot.
        cv = Signal()
        c_sb, c_idx = Signal.like(sb_f), Signal.like(idx_f)
        c_o, c_nbout, c_mask = Signal.like(nest.o), Signal.like(nest.nbout), Signal(cfg.tn)
        c_first, c_last, c_end = Signal(), Signal(), Signal()

        # The fill takes the slot's last ``cols`` cycles, left to right: the window column
        # read in this cycle is ``k - 1 - rem``, column ``k - 1`` in the slot's last cycle.
        rem, col = Signal.like(slot), Signal.like(slot)
        m.d.comb += [rem.eq(g_last - slot), col.eq(d.k - 1 - rem)]

        computing = nest.running & cv & (slot < n)
        m.d.comb += [
            step.valid.eq(computing),
            step.sb_addr.eq(c_sb + slot),
            step.bias_addr.eq(c_o),
            step.nbout_addr.eq(c_nbout),
            step.first.eq(c_first & (slot == 0)),
            step.last.eq(c_last & (slot == n - 1)),
            step.end.eq(computing & c_end & (slot == n - 1)),
            step.lane_mask.eq(c_mask),
            win.step.eq(slot),
            win.idx_addr.eq(c_idx),
            win.swap.eq(nest.running & (slot == 0)),
            win.fill_valid.eq(nest.running & fill_active & (rem < cols)),
            win.fill_bank.eq(bank),
            win.tap_offset.eq(kmax - d.k),
        ]
        ix = Signal.like(nest.ix)
        m.d.comb += ix.eq(nest.ix + col)
        for r in range(kmax):
            iy = Signal.like(nest.iy, name=f"iy{r}")
            m.d.comb += [
                iy.eq(nest.iy + r),
                self.fill_addr[r].eq(nest.tbase + nest.row + d.w_in * r + ix),
                win.fill_pad[r].eq((iy < 0) | (iy >= d.h_in) | (ix < 0) | (ix >= d.w_in)),
                self.fill_en[r].eq(win.fill_valid & (r < d.k) & ~win.fill_pad[r]),
            ]

        with m.If(starting):
            desc = self.run.desc
            slide_cols = Mux(desc.stride < desc.k, desc.stride, desc.k)
            m.d.sync += [fill_active.eq(1), cv.eq(0), slot.eq(0), new_cols.eq(slide_cols),
                         banked.eq(desc.ci_tiles <= cfg.ikr.tiles), bank.eq(0),
                         g_full.eq(Mux(desc.ikr_n > desc.k, desc.ikr_n, desc.k) - 1),
                         g_slide.eq(Mux(desc.ikr_n > slide_cols, desc.ikr_n, slide_cols) - 1)]
        with m.Elif(nest.running):
            with m.If(~at_boundary):
                m.d.sync += slot.eq(slot + 1)
            with m.Else():
                m.d.sync += [
                    slot.eq(0), cv.eq(fill_active), c_sb.eq(sb_f), c_idx.eq(idx_f),
                    c_o.eq(nest.o), c_first.eq(nest.first), c_last.eq(nest.last),
                    c_end.eq(nest.end), c_nbout.eq(nest.nbout), c_mask.eq(nest.lane_mask),
                ]
                if cfg.ikr.tiles > 1:
                    # the next group's input tile: the next t, or 0 after the group's last
                    m.d.sync += bank.eq(Mux(banked & ~nest.last, bank + 1, 0))
                with m.If(nest.end):
                    m.d.sync += fill_active.eq(0)
        return m
