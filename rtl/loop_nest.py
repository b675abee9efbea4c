"""The loop nest both sequencers walk: the per-layer setup and DianNao's window order (or the
IKR sequencer's output-tile-inner order)."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import DESC_FIELD_BITS, Mode, bits_for, descriptor_layout
from slimnfu.rtl._params import check_config
from slimnfu.rtl.signatures import RunSignature

__all__ = ["LoopNest", "tile_counter"]


class LoopNest(wiring.Component):
    """Latch a layer, compute its per-layer products and walk its windows in DianNao's order::

        for o in co_tiles: for oy in h_out: for ox in w_out: for t in ci_tiles:
            window (o, oy, ox, t)           # with taps: for ky in k: for kx in k: step

    with ``t = o`` (and ``ci_tiles = 1``) in the pooling modes. With ``o_inner_tiles``, a layer
    of at most that many input tiles (``ci_tiles``, from the descriptor) is walked with the
    output tile inside the output pixel instead (``o_inner``)::

        for oy in h_out: for ox in w_out: for o in co_tiles: for t in ci_tiles:
            window (o, oy, ox, t)

    so that the IKR sequencer's window banks (one per input tile) serve every output tile
    before the windows slide. A window is the ``k x k`` patch
    of input tile ``t`` whose top left is ``(iy0, ix0) = (oy*stride - pad, ox*stride - pad)``
    (``koff - pad`` instead of ``-pad`` with ``offsets``); one output group (one output pixel
    of one output tile) is the windows ``t = 0 .. ci_tiles-1`` of one ``(o, oy, ox)``.

    Outputs for the current position (the window, or with ``taps`` the step at tap
    ``(ky, kx)`` of it), all from registers or combinational on registers:

    * ``ix``, ``iy``: the input column and row (``ix0 + kx``, ``iy0 + ky``), signed, and
      ``row = iy * w_in``; ``tbase = tile * h_in * w_in``, the first NBin word of the input
      tile (``t``, or ``o`` when pooling), so the NBin word is ``tbase + row + ix``;
    * ``o``; ``nbout = (o*h_out + oy)*w_out + ox`` (``+ nbout_base`` with ``offsets``);
      ``lane_mask[j] = o*tn + j < n_out``;
    * ``first``: ``t == 0`` (and ``ky == kx == 0``), the group's first window or step;
      ``last``: ``t == ci_tiles - 1`` (and ``ky == kx == k-1``), its last; ``tile_end``:
      ``last`` of the output tile's last group; ``end``: ``tile_end`` of the last output tile,
      the layer's last window or step; ``o_last``: ``o == co_tiles - 1`` (with ``last``, in
      the ``o_inner`` order, the pixel's last window); ``o_inner``: the layer is walked in
      the ``o_inner`` order (constant while it runs).

    The end-of-loop tests (``kx == k-1``, ..., ``o == co_tiles-1``) are flags registered
    with their counters, so no compare lies between a counter and the next position.

    The products the address counters need (``h_in*w_in``, ``stride*w_in``, ``pad*w_in``,
    ``koff*w_in`` with ``offsets`` and ``h_out*w_out`` with ``o_inner_tiles``, the step of
    ``nbout`` from one output tile to the next in the ``o_inner`` order) are computed by
    shift-and-add, so there is no multiplier.

    Timing: ``run.start`` in cycle 0 (while not ``run.busy``) latches ``run.desc`` into
    ``layer`` and resets the walk; cycles ``1 .. SETUP_CYCLES`` are the setup; ``running``
    is high from cycle ``SETUP_CYCLES + 1`` on, at the first window (or step). In a running
    cycle, ``advance`` moves to the next window (or step) at the clock edge and ``stop`` ends
    the walk (``running`` and ``run.busy`` fall). ``run.busy`` is high during the setup and
    while ``running``.

    Parameters
    ----------
    cfg : AccelConfig
    taps : bool
        Walk the ``k x k`` taps of each window, one per ``advance`` (the dense sequencer);
        otherwise ``advance`` moves a whole window (the IKR sequencer).
    offsets : bool
        Apply the descriptor's ``koff`` and ``nbout_base`` (centre-tap passes); needs
        ``cfg.kgate``.
    pooling : bool
        Walk the pooling modes (input tile ``o``); without it every layer is taken for a MAC
        layer (the IKR sequencer runs conv layers only).
    o_inner_tiles : int or None
        Walk a layer of at most this many input tiles in the ``o_inner`` order (the IKR
        sequencer: ``cfg.ikr.tiles``, its window banks); None: DianNao's order always. Needs
        ``pooling=False``.

    Members
    -------
    run : In(RunSignature)
    advance, stop : In(1)
    layer : Out(descriptor layout)
        The latched descriptor.
    running : Out(1)
    ix, iy, row, tbase, o, nbout, lane_mask, first, last, tile_end, end, o_last : Out
        The position, as above.
    o_inner : Out(1)
    """

    #: Cycles of the shift-and-add setup (one per bit of ``h_in``).
    SETUP_CYCLES = DESC_FIELD_BITS["h_in"]

    def __init__(self, cfg, *, taps, offsets=False, pooling=True, o_inner_tiles=None):
        self.cfg = check_config(self, cfg)
        for name, value in (("taps", taps), ("offsets", offsets), ("pooling", pooling)):
            if not isinstance(value, bool):
                self._MustUse__silence = True
                raise TypeError(f"LoopNest: {name} must be a bool, not {value!r}")
        if o_inner_tiles is not None:
            if (not isinstance(o_inner_tiles, int) or isinstance(o_inner_tiles, bool)
                    or o_inner_tiles < 1):
                self._MustUse__silence = True
                raise ValueError(f"LoopNest: o_inner_tiles must be a positive int or None, "
                                 f"not {o_inner_tiles!r}")
            if pooling:
                self._MustUse__silence = True
                raise ValueError("LoopNest: o_inner_tiles needs pooling=False")
        if offsets:
            check_config(self, cfg, needs="kgate")
        self.taps, self.offsets, self.pooling = taps, offsets, pooling
        self.o_inner_tiles = o_inner_tiles
        geo = DESC_FIELD_BITS["h_in"]
        layout = descriptor_layout(cfg)
        nbin_bits = bits_for(cfg.nbin_depth - 1)
        # |coordinate| <= h_in + pad; |row offset| <= (h_in + pad) * w_in.
        super().__init__({
            "run": In(RunSignature(desc_layout=layout)),
            "advance": In(1),
            "stop": In(1),
            "layer": Out(layout),
            "running": Out(1),
            "ix": Out(signed(geo + 3)),
            "iy": Out(signed(geo + 3)),
            "row": Out(signed(max(nbin_bits, 2 * geo) + 2)),
            "tbase": Out(nbin_bits + 1),
            "o": Out(layout["co_tiles"].shape),
            "nbout": Out(bits_for(cfg.nbout_depth - 1)),
            "lane_mask": Out(cfg.tn),
            "first": Out(1),
            "last": Out(1),
            "tile_end": Out(1),
            "end": Out(1),
            "o_last": Out(1),
            "o_inner": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, taps = self.cfg, self.taps
        run, d, running = self.run, self.layer, self.running
        geo = DESC_FIELD_BITS["h_in"]
        product = unsigned(2 * geo)

        setup_left = Signal(range(self.SETUP_CYCLES + 1))
        m.d.comb += run.busy.eq(running | (setup_left != 0))

        # Per-layer products by shift-and-add, most significant multiplier bit first.
        inner = self.o_inner_tiles is not None
        factors = (["h_in", "stride", "pad"] + (["koff"] if self.offsets else [])
                   + (["h_out"] if inner else []))
        acc = {f: Signal(product, name=f"{f}_w") for f in factors}
        mul = {f: Signal(geo, name=f"mul_{f}") for f in factors}
        nxt = {f: Signal(product, name=f"{f}_w_next") for f in factors}
        for f in factors:
            width = d.w_out if f == "h_out" else d.w_in
            m.d.comb += nxt[f].eq((acc[f] << 1) + Mux(mul[f][-1], width, 0))
        hw, sw = acc["h_in"], acc["stride"]
        if self.offsets:
            row_start, row_start_next = acc["koff"] - acc["pad"], nxt["koff"] - nxt["pad"]
            neg_pad, first0 = d.koff - d.pad, run.desc.koff - run.desc.pad
            nbout0 = run.desc.nbout_base
        else:
            row_start, row_start_next = -acc["pad"], -nxt["pad"]
            neg_pad, first0, nbout0 = -d.pad, -run.desc.pad, 0

        t, o = Signal.like(d.ci_tiles), self.o
        ox, oy = Signal.like(d.w_out), Signal.like(d.h_out)
        ix0, iy0 = Signal.like(self.ix, name="ix0"), Signal.like(self.iy, name="iy0")
        row0 = Signal.like(self.row, name="row0")
        tbase, nbout = self.tbase, self.nbout
        # The first word of the output tile's input tile: o's when pooling, else tile 0.
        obase = Signal.like(self.tbase) if self.pooling else 0
        n_left = Signal(signed(len(d.n_out) + 1))
        for j in range(cfg.tn):
            m.d.comb += self.lane_mask[j].eq(n_left > j)

        # The end-of-loop compares are registers: each counter's ``last`` flag is set with
        # the counter, from the limit less two (stepping up) or "the limit is one" (going
        # back to 0), both latched at ``run.start``.
        counters = {"t": (t, "ci_tiles"), "ox": (ox, "w_out"), "oy": (oy, "h_out"),
                    "o": (o, "co_tiles")}
        if taps:
            kx, ky = Signal.like(d.k), Signal.like(d.k)
            ix, iy = Signal.like(self.ix), Signal.like(self.iy)
            row = Signal.like(self.row)
            counters.update(kx=(kx, "k"), ky=(ky, "k"))
        flag, near, single = {}, {}, {}
        for name, (_, field) in counters.items():
            width = len(getattr(d, field))
            flag[name] = Signal(name=f"{name}_last")
            near[name] = Signal(width, name=f"{name}_near")
            single[name] = Signal(name=f"{name}_single")

        def step_up(name):
            x = counters[name][0]
            return [x.eq(x + 1), flag[name].eq(x == near[name])]

        def to_zero(name):
            return [counters[name][0].eq(0), flag[name].eq(single[name])]

        t_last, ox_last, oy_last, o_last = flag["t"], flag["ox"], flag["oy"], flag["o"]
        if taps:
            kx_last, ky_last = flag["kx"], flag["ky"]
            first = (t == 0) & (ky == 0) & (kx == 0)
            last = kx_last & ky_last & t_last
        else:
            ix, iy, row = ix0, iy0, row0
            first, last = t == 0, t_last
        o_inner = self.o_inner
        m.d.comb += [
            self.ix.eq(ix), self.iy.eq(iy), self.row.eq(row),
            self.first.eq(first), self.last.eq(last),
            self.tile_end.eq(last & ox_last & oy_last),
            self.end.eq(self.tile_end & o_last), self.o_last.eq(o_last),
        ]

        def restart(ix_v, iy_v, row_v):
            # with taps, the walk over the window's taps starts over at its origin
            if taps:
                m.d.sync += [ix.eq(ix_v), iy.eq(iy_v), row.eq(row_v)]

        # o_inner: the pixel's nbout word in output tile 0, and the step between output tiles
        pixel = Signal.like(nbout)
        out_hw = acc["h_out"] if inner else 0

        def next_window():
            with m.If(~t_last):
                m.d.sync += [*step_up("t"), tbase.eq(tbase + hw)]
                restart(ix0, iy0, row0)
            with m.Elif(o_inner & ~o_last):
                # o_inner: the pixel's next output tile
                m.d.sync += [*to_zero("t"), *step_up("o"), n_left.eq(n_left - cfg.tn),
                             nbout.eq(nbout + out_hw), tbase.eq(0)]
                restart(ix0, iy0, row0)
            with m.Else():
                m.d.sync += to_zero("t")
                with m.If(o_inner):
                    # o_inner: the pixel is finished, its next starts with output tile 0
                    m.d.sync += [*to_zero("o"), n_left.eq(d.n_out), pixel.eq(pixel + 1),
                                 nbout.eq(pixel + 1)]
                with m.Else():
                    m.d.sync += nbout.eq(nbout + 1)
                # The output group is finished: next pixel, row or output tile.
                with m.If(~ox_last):
                    m.d.sync += [*step_up("ox"), ix0.eq(ix0 + d.stride), tbase.eq(obase)]
                    restart(ix0 + d.stride, iy0, row0)
                with m.Elif(~oy_last):
                    m.d.sync += [*to_zero("ox"), ix0.eq(neg_pad), *step_up("oy"),
                                 iy0.eq(iy0 + d.stride), row0.eq(row0 + sw), tbase.eq(obase)]
                    restart(neg_pad, iy0 + d.stride, row0 + sw)
                with m.Elif(~o_last):
                    next_obase = Mux(d.mode != Mode.MAC, obase + hw, 0) if self.pooling else 0
                    m.d.sync += [*to_zero("ox"), ix0.eq(neg_pad), *to_zero("oy"),
                                 iy0.eq(neg_pad), row0.eq(row_start), *step_up("o"),
                                 n_left.eq(n_left - cfg.tn), tbase.eq(next_obase)]
                    if self.pooling:
                        m.d.sync += obase.eq(next_obase)
                    restart(neg_pad, neg_pad, row_start)

        with m.If(run.start & ~run.busy):
            m.d.sync += [
                d.eq(run.desc),
                setup_left.eq(self.SETUP_CYCLES),
                *(acc[f].eq(0) for f in factors),
                *(mul[f].eq(run.desc[f]) for f in factors),
                ix0.eq(first0), iy0.eq(first0),
                tbase.eq(0), nbout.eq(nbout0), n_left.eq(run.desc.n_out),
                pixel.eq(nbout0),
                o_inner.eq(run.desc.ci_tiles <= self.o_inner_tiles if inner else 0),
            ]
            if self.pooling:
                m.d.sync += obase.eq(0)
            for name, (x, field) in counters.items():
                limit = getattr(run.desc, field)
                m.d.sync += [x.eq(0), flag[name].eq(limit == 1), near[name].eq(limit - 2),
                             single[name].eq(limit == 1)]
            if taps:
                m.d.sync += [ix.eq(first0), iy.eq(first0)]
        with m.Elif(setup_left != 0):
            m.d.sync += [
                setup_left.eq(setup_left - 1),
                *(acc[f].eq(nxt[f]) for f in factors),
                *(mul[f].eq(mul[f] << 1) for f in factors),
            ]
            with m.If(setup_left == 1):
                m.d.sync += [row0.eq(row_start_next), running.eq(1)]
                if taps:
                    m.d.sync += row.eq(row_start_next)
        with m.Elif(running):
            with m.If(self.stop):
                m.d.sync += running.eq(0)
            with m.If(self.advance):
                if not taps:
                    next_window()
                else:
                    with m.If(~kx_last):
                        m.d.sync += [*step_up("kx"), ix.eq(ix + 1)]
                    with m.Else():
                        m.d.sync += to_zero("kx")
                        with m.If(~ky_last):
                            m.d.sync += [*step_up("ky"), iy.eq(iy + 1), row.eq(row + d.w_in),
                                         ix.eq(ix0)]
                        with m.Else():
                            m.d.sync += to_zero("ky")
                            next_window()
        return m


def tile_counter(m, nest, starting, advance, stride, shape, name):
    """An address over the tile pairs ``(o, t)`` of ``nest``'s walk; returns its register.

    It is 0 after ``starting``, and at each ``advance`` (a running cycle in which ``nest``
    moves on) it steps by ``stride``, except at the end of an output group that is not its
    output tile's last (``nest.last & ~nest.tile_end``): there it goes back to where the output
    tile began, for the tile's next pixel. In the ``o_inner`` order (``nest.o_inner``) it
    walks all tile pairs of a pixel and goes back to 0 after the pixel's last window
    (``nest.last & nest.o_last``). The dense SB address (stride 1 per step) and the IKR SB and
    index addresses (``ikr_n`` and 1 per window) are such counters.
    """
    count = Signal(shape, name=name)
    base = Signal(shape, name=f"{name}_base")
    rewind = Mux(nest.o_inner, nest.o_last, ~nest.tile_end)
    with m.If(starting):
        m.d.sync += [count.eq(0), base.eq(0)]
    with m.Elif(advance):
        with m.If(nest.last & rewind):
            m.d.sync += count.eq(base)
        with m.Else():
            m.d.sync += count.eq(count + stride)
        with m.If(nest.tile_end & ~nest.o_inner):
            m.d.sync += base.eq(count + stride)
    return count
