"""The IKR sequencer: a kernel group per slot of ``max(n, cols)`` cycles, window fill overlapped."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for
from slimnfu.rtl._params import check_config, delay
from slimnfu.rtl.loop_nest import LoopNest, tile_counter
from slimnfu.rtl.pattern_decoder import PatternDecoder
from slimnfu.rtl.signatures import RunSignature, StepSignature, WindowSignature

__all__ = ["IkrSequencer"]


class IkrSequencer(wiring.Component):
    """Walk an IKR conv layer (``desc.ikr_n = n > 0``) in slots of ``G = max(n, cols)`` cycles.

    The groups (one output pixel of one output tile for one input tile: the windows of
    :class:`slimnfu.rtl.loop_nest.LoopNest`) come in DianNao's order ``o, oy, ox, t``, as in
    :class:`slimnfu.rtl.sequencer.Sequencer`, except in a layer of at most ``cfg.ikr.tiles``
    input tiles (*banked*: the decoder's bank ``t`` holds input tile ``t``'s window), walked
    ``oy, ox, o, t`` (the loop nest's ``o_inner``) so that the pixel's windows serve every
    output tile before they slide. Slot ``q`` does two things at once:

    * **fill** ``cols`` columns of group ``q``'s KxK input window in the last ``cols`` cycles
      of the slot, left to right: slot cycle ``c >= G - cols`` reads window column
      ``k - G + c``, the ``k`` pixels ``(t, iy0 + r, ix0 + k - G + c)`` for ``r < k``,
      through ``k`` NBin read ports (``fill_addr[r]``; ``window.fill_pad[r]`` marks a
      padding position, read as zero: the ports need no read enable), into the decoder's
      window bank ``window.fill_bank``. ``cols = k``, except in a banked layer: for output
      tile 0 at every output pixel but the first of its row the window slides from the
      same tile's window of the previous pixel, and only its last ``cols = min(stride, k)``
      columns are new; for the other output tiles the bank already holds the window
      (``cols = 0``, ``G = n``). A layer with more input tiles fills bank 0 with all ``k``
      columns of every window. The data arrive :attr:`PatternDecoder.READ_STAGES` cycles
      later, at :class:`slimnfu.rtl.pattern_decoder.PatternDecoder`, whose bank shifts one
      column left per arrival; column ``k - 1``, read in the slot's last cycle, lands in the
      bank the cycle before the next slot's ``swap``;
    * **compute** group ``q - 1``: in slot cycle ``c < n`` it issues step ``c``
      (``step.valid``): SB word ``(o*ci_tiles + t)*n + c``, pattern-table word
      ``window.step = c`` and IKR index word ``window.idx_addr = o*ci_tiles + t``.
      ``window.swap`` (slot cycle 0) copies the group's bank (``window.swap_bank``: ``t``
      when banked, else 0) into the compute window.

    Slot 0 only fills; the layer ends after the ``n`` steps of the last group, so the NFU
    cycle count is the sum of the slots plus ``n`` (:meth:`slimnfu.config.PassDesc.ikr_cycles`:
    ``groups * max(n, k) + n`` when not banked), against ``groups * k * k`` dense. The steps
    (a :class:`StepSignature` without features: padding is resolved in the window fill) mean
    what the dense sequencer's do, so the engine's NFU-1/2/3
    pipeline is shared. The setup is the loop nest's, :attr:`SETUP_CYCLES` as in the dense
    sequencer. The descriptor's ``koff``, ``nbout_base`` and ``lane_skip`` (``cfg.kgate``) do
    not apply to IKR layers.

    Timing: every output comes from a register. The fill (``fill_addr``, ``window.fill_*``)
    comes :attr:`FILL_STAGES` cycles after the slot cycle it belongs to, the steps and
    ``window.swap`` :attr:`OUTPUT_STAGES` cycles after it (two more than the fill's: the
    fill read's words reach the decoder two cycles after the read, block RAM and output
    register, and the swap copies the bank after the last of them has landed),
    ``window.step`` and ``window.idx_addr`` :attr:`PatternDecoder.LOOKAHEAD` cycles before
    the steps; so the pass's steps reach the engine :attr:`OUTPUT_STAGES` cycles later than
    the dense sequencer's (:meth:`slimnfu.rtl.engine.LayerEngine.ikr_stages`). The slot's
    counters are registers (``slot`` up, ``rem`` down to the slot's last cycle, the fill
    column ``col``), the next slot's kind (whole window, slide or none) is known from a
    count of the row's output pixels and an "output tile 0" flag when the loop nest moves
    on, and the fill address takes two stages: the window rows' first words
    (``tbase + row + w_in*r``), the column's input x and the row padding, then their sum and
    the column padding.

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
    """

    SETUP_CYCLES = LoopNest.SETUP_CYCLES
    #: Register stages between the loop nest's position and the fill outputs (``fill_addr``,
    #: ``window.fill_*``): the window origin and column, then their sum and the padding
    #: compares, so that nothing but a register drives the block RAMs' address pins.
    FILL_STAGES = 2
    #: Register stages between the loop nest's position and the steps and ``window.swap``:
    #: the fill's, and the read's words land in the decoder's bank
    #: :attr:`PatternDecoder.READ_STAGES` cycles after their address; the swap copies the
    #: bank the cycle after, as it stands, whether or not the slot fills.
    OUTPUT_STAGES = FILL_STAGES + PatternDecoder.READ_STAGES

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg, needs="ikr")
        nbin_addr = unsigned(bits_for(cfg.nbin_depth - 1))
        super().__init__({
            "run": In(RunSignature.for_config(cfg)),
            "step": Out(StepSignature.for_config(cfg)),
            "window": Out(WindowSignature.for_config(cfg)),
            "fill_addr": Out(data.ArrayLayout(nbin_addr, cfg.ikr.kmax)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, step, win = self.cfg, self.step, self.window
        kmax = cfg.ikr.kmax
        m.submodules.nest = nest = LoopNest(cfg, taps=False, pooling=False,
                                            o_inner_tiles=cfg.ikr.tiles)
        wiring.connect(m, wiring.flipped(self.run), nest.run)
        d, n = nest.layer, nest.layer.ikr_n
        starting = self.run.start & ~self.run.busy
        running = nest.running

        # Stage 0: the slot's counters, all registers. ``slot`` counts up from 0, ``rem``
        # down to 0 (the slot's last cycle: the loop nest moves on), ``col`` is the window
        # column read in this cycle (``k - 1 - rem``; negative before the fill).
        slot = Signal(range(kmax * kmax + 1))
        rem = Signal.like(slot)
        col = Signal(range(-kmax * kmax, kmax))
        # A slot fills ``cols`` window columns and lasts ``max(n, cols)`` cycles: ``k``
        # columns, or in a banked layer (at most ``tiles`` input tiles, walked with the output
        # tile inside the pixel: ``nest.o_inner``) the ``min(stride, k)`` the window slides by
        # from the same input tile's window of the previous output pixel of the row (the
        # others are already in the decoder's bank) for output tile 0, and none for the
        # pixel's other output tiles (the bank still holds the window).
        # The slot's last cycle (``g_*``) and first column (``c0_*``) of each kind, per layer.
        g_full, g_slide, g_none = Signal.like(slot), Signal.like(slot), Signal.like(slot)
        c0_full, c0_slide = Signal.like(col), Signal.like(col)
        new_cols, cols = Signal(range(kmax + 1)), Signal(range(kmax + 1))
        banked = nest.o_inner
        # Whether the group being filled is its row's first output pixel (no slide), from
        # a count of the row's pixels beside the loop nest's, and whether it is of output
        # tile 0 (``o0``), so that the next slot's kind is known in the cycle the nest moves
        # on.
        row_first, ox_last, ox_single, o0 = Signal(), Signal(), Signal(), Signal()
        ox_left, w_last = Signal.like(d.w_out), Signal.like(d.w_out)
        # the input tile of the group being filled: its bank when banked, else bank 0
        bank = Signal(range(cfg.ikr.tiles))

        at_boundary, step_end = rem == 0, Signal()
        # The fill walker (the loop nest) moves on at each slot boundary; the layer ends
        # after the last group's compute steps.
        m.d.comb += [nest.advance.eq(at_boundary), nest.stop.eq(step_end)]
        advance = running & at_boundary
        idx_f = tile_counter(m, nest, starting, advance, 1,
                             unsigned(bits_for(cfg.ikr.index_depth - 1) + 1), "idx_f")
        sb_f = tile_counter(m, nest, starting, advance, n,
                            unsigned(bits_for(cfg.sb_depth - 1) + 1), "sb_f")
        fill_active = Signal()

        # Compute side: the group filled in the previous slot.
        cv = Signal()
        c_sb, c_idx = Signal.like(sb_f), Signal.like(idx_f)
        c_o, c_nbout, c_mask = Signal.like(nest.o), Signal.like(nest.nbout), Signal(cfg.tn)
        c_bank = Signal.like(bank)
        c_first, c_last, c_end = Signal(), Signal(), Signal()

        # The steps and the window controls of this cycle, issued OUTPUT_STAGES later.
        computing = running & cv & (slot < n)
        issued = step.signature.create(path=("issued",))
        controls = win.signature.create(path=("controls",))
        m.d.comb += [
            issued.valid.eq(computing),
            issued.sb_addr.eq(c_sb + slot),
            issued.bias_addr.eq(c_o),
            issued.nbout_addr.eq(c_nbout),
            issued.first.eq(c_first & (slot == 0)),
            issued.last.eq(c_last & (slot == n - 1)),
            issued.end.eq(step_end),
            issued.lane_mask.eq(c_mask),
            step_end.eq(computing & c_end & (slot == n - 1)),
            controls.step.eq(slot),
            controls.idx_addr.eq(c_idx),
            controls.swap.eq(running & (slot == 0)),
            controls.swap_bank.eq(c_bank),
            controls.tap_offset.eq(kmax - d.k),
        ]
        # The decoder reads its memories (step, idx_addr) LOOKAHEAD cycles before the step.
        later = {"step": self.OUTPUT_STAGES - PatternDecoder.LOOKAHEAD,
                 "idx_addr": self.OUTPUT_STAGES - PatternDecoder.LOOKAHEAD,
                 "swap": self.OUTPUT_STAGES, "swap_bank": self.OUTPUT_STAGES,
                 "tap_offset": self.OUTPUT_STAGES}
        for name in issued.signature.members:
            m.d.comb += getattr(step, name).eq(
                delay(m, getattr(issued, name), self.OUTPUT_STAGES, f"{name}_d"))
        for name, stages in later.items():
            m.d.comb += getattr(win, name).eq(
                delay(m, getattr(controls, name), stages, f"win_{name}_d"))

        # The fill, in FILL_STAGES = 2 register stages from the loop nest's position.
        # Stage 1: the column's input x, the window rows' first words and row padding.
        # Stage 2: the NBin words and the column padding. The per-layer terms ``w_in*r`` and
        # ``h_in - r`` are registers, settled in the setup.
        nbin_bits = len(self.fill_addr[0])
        rw = [Signal(nbin_bits, name=f"w_in_x{r}") for r in range(kmax)]
        h_less = [Signal(signed(len(d.h_in) + 1), name=f"h_in_less{r}") for r in range(kmax)]
        for r in range(1, kmax):
            m.d.sync += rw[r].eq(rw[r - 1] + d.w_in)
        m.d.sync += [h_less[r].eq(d.h_in - r) for r in range(kmax)]
        fv1, bank1 = Signal(), Signal.like(bank)
        ix1 = Signal.like(nest.ix, name="ix1")
        base1 = [Signal(nbin_bits, name=f"base1_{r}") for r in range(kmax)]
        rowpad1 = Signal(kmax)
        origin = (nest.tbase[:nbin_bits] + nest.row[:nbin_bits])[:nbin_bits]
        m.d.sync += [
            fv1.eq(running & fill_active & (rem < cols)), bank1.eq(bank),
            ix1.eq(nest.ix + col),
            *(base1[r].eq(origin + rw[r]) for r in range(kmax)),
            *(rowpad1[r].eq((nest.iy < -r) | (nest.iy >= h_less[r])) for r in range(kmax)),
        ]
        colpad = (ix1 < 0) | (ix1 >= d.w_in)
        m.d.sync += [
            win.fill_valid.eq(fv1), win.fill_bank.eq(bank1),
            *(self.fill_addr[r].eq(base1[r] + ix1[:nbin_bits]) for r in range(kmax)),
            *(win.fill_pad[r].eq(rowpad1[r] | colpad) for r in range(kmax)),
        ]

        # The next slot's kind, known as the nest moves on: the next group is its row's
        # first when this one ends the last pixel of a row (``pixel_end`` and ``ox_last``),
        # of output tile 0 after the pixel's last group (banked) or when this one is of tile 0.
        pixel_end = nest.last & (nest.o_last | ~banked)
        next_first = Mux(pixel_end, ox_last, row_first)
        next_o0 = Mux(nest.last, nest.o_last, o0)
        next_none = banked & ~next_o0
        next_slide = banked & next_o0 & ~next_first
        with m.If(starting):
            desc = self.run.desc
            slide_cols = Mux(desc.stride < desc.k, desc.stride, desc.k)
            m.d.sync += [fill_active.eq(1), cv.eq(0), new_cols.eq(slide_cols), bank.eq(0),
                         g_full.eq(Mux(desc.ikr_n > desc.k, desc.ikr_n, desc.k) - 1),
                         g_slide.eq(Mux(desc.ikr_n > slide_cols, desc.ikr_n, slide_cols) - 1),
                         g_none.eq(desc.ikr_n - 1)]
        with m.Elif(~running):
            # the setup (and idle): the first slot fills a whole window
            m.d.sync += [slot.eq(0), rem.eq(g_full), col.eq(c0_full), cols.eq(d.k),
                         c0_full.eq(d.k - 1 - g_full), c0_slide.eq(d.k - 1 - g_slide),
                         row_first.eq(1), o0.eq(1), w_last.eq(d.w_out - 1), ox_left.eq(w_last),
                         ox_single.eq(d.w_out == 1), ox_last.eq(ox_single)]
        with m.Else():
            with m.If(~at_boundary):
                m.d.sync += [slot.eq(slot + 1), rem.eq(rem - 1), col.eq(col + 1)]
            with m.Else():
                m.d.sync += [
                    slot.eq(0), rem.eq(Mux(next_none, g_none, Mux(next_slide, g_slide, g_full))),
                    col.eq(Mux(next_slide, c0_slide, c0_full)),
                    cols.eq(Mux(next_none, 0, Mux(next_slide, new_cols, d.k))),
                    o0.eq(next_o0), c_bank.eq(bank),
                    cv.eq(fill_active), c_sb.eq(sb_f), c_idx.eq(idx_f),
                    c_o.eq(nest.o), c_first.eq(nest.first), c_last.eq(nest.last),
                    c_end.eq(nest.end), c_nbout.eq(nest.nbout), c_mask.eq(nest.lane_mask),
                ]
                with m.If(pixel_end):
                    m.d.sync += row_first.eq(ox_last)
                    with m.If(ox_last):
                        m.d.sync += [ox_left.eq(w_last), ox_last.eq(ox_single)]
                    with m.Else():
                        m.d.sync += [ox_left.eq(ox_left - 1), ox_last.eq(ox_left == 1)]
                if cfg.ikr.tiles > 1:
                    # the next group's input tile: the next t, or 0 after the group's last
                    m.d.sync += bank.eq(Mux(banked & ~nest.last, bank + 1, 0))
                with m.If(nest.end):
                    m.d.sync += fill_active.eq(0)
        return m
