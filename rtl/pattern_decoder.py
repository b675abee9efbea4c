"""The IKR pattern decoder: window registers, pattern table and per-kernel indices."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for, ikr_index_bits, ikr_tap_bits
from slimnfu.rtl._params import check_config, delay
from slimnfu.rtl.signatures import LoadSignature, WindowSignature

__all__ = ["PatternDecoder"]


def _mux_tree(sel, items):
    """``items[sel]`` as a binary tree of 2:1 multiplexers on the bits of ``sel``, low bit
    first (``sel`` past the end: an item of the last pairs)."""
    level = list(items)
    for bit in range(len(sel)):
        if len(level) == 1:
            break
        level = [Mux(sel[bit], level[q + 1], level[q]) if q + 1 < len(level) else level[q]
                 for q in range(0, len(level), 2)]
    return level[0]


class PatternDecoder(wiring.Component):
    """Give each of the ``tn*ti`` multipliers its own input tap from a KxK window register.

    Storage:

    * the **window**: ``cfg.ikr.tiles`` *filled-window* banks ``next[b]`` and the compute
      window ``cur``, each ``ikr_kmax**2`` registers of ``ti*dw`` bits (one pixel, ``ti``
      input channels, per tap). A ``next`` bank is a shift register of columns: each column
      :class:`slimnfu.rtl.ikr_sequencer.IkrSequencer` reads from NBin (``window.fill_*``,
      with the read data ``nbin_data`` :attr:`READ_STAGES` cycles later) enters bank
      ``window.fill_bank`` (registered with the read) at register column ``kmax - 1`` and
      moves that bank's other columns one column left. The sequencer reads window columns
      left to right and ends with column ``k - 1`` at least :attr:`READ_STAGES` ``+ 1``
      cycles before the ``window.swap`` that uses the window, so window column ``c`` sits
      in register column ``c + window.tap_offset`` (``kmax - k``); when the window slides by
      ``s`` columns (a layer of at most ``tiles`` input tiles, bank ``t`` for input tile
      ``t``), only the ``s`` new columns are read, and the window serves every output tile
      of the pixel before it slides. On ``window.swap`` bank ``window.swap_bank`` is copied
      to ``cur`` as it stands (an arrival into a bank at the same edge is not seen): with one
      bank the swap is wiring and the registers' clock enables, with several a
      ``tiles``-input multiplexer per ``cur`` register;
    * the **pattern table** (``ikr_kmax**2`` words, one per step ``s``; word ``s`` holds entry
      ``s`` of all P patterns, :func:`slimnfu.contract.ikr_tap_bits` each, pattern ``p`` at
      bit ``p*ikr_tap_bits``);
    * the **index memory** (``ikr_index_depth`` words, one per ``(o, t)`` tile pair; lane
      ``j*ti + i`` holds the :func:`slimnfu.contract.ikr_index_bits`-bit pattern index of kernel
      ``(o*tn + j, t*ti + i)``).

    For a step issued in cycle ``S`` (``window.step``, ``window.idx_addr`` given
    :attr:`LOOKAHEAD` cycles ahead, in ``S - 3``) both memories are read in ``S - 3``, their
    words are registered in ``S - 2`` (the block RAMs' output registers) and again in
    ``S - 1`` in the fabric (the index word as read, the table word as its ``P`` entries plus
    ``window.tap_offset``, which is constant while a layer runs), each multiplier's tap
    ``table[step][idx[j, i]] + tap_offset`` is selected from those and registered in ``S``,
    and lane ``j*ti + i`` gets ``lane_neurons = cur[tap][i]`` (``cur`` as it is in ``S+1``)
    in ``S + 1 + WINDOW_STAGES``: in ``S+1`` the low :meth:`window_select_bits` of the tap
    select one register of each group of ``2**low`` and are registered with the high bits,
    which select among those in ``S+2`` (combinational). A write on ``table`` or ``index``
    lands at the clock edge.

    Parameters
    ----------
    cfg : AccelConfig
        Needs ``cfg.ikr``; the window is ``cfg.ikr.kmax`` taps square, with ``cfg.ikr.tiles``
        filled-window banks.

    Members
    -------
    window : In(WindowSignature)
    nbin_data : In(ArrayLayout(ArrayLayout(unsigned(ti*dw), ikr_kmax), 2))
        The words of the column read :attr:`READ_STAGES` cycles ago, one per window row, from
        each neuron buffer (``nbin_data[b][r]``: buffer ``b``, row ``r``), from the block
        RAMs' output registers.
    nbin_buf : In(1)
        The buffer the layer reads (constant while it runs). The words of both buffers enter
        the window registers as they arrive; ``nbin_buf`` (and padding) select after them.
    table, index : In(LoadSignature); see :meth:`load_signatures`
    lane_neurons : Out(ArrayLayout(unsigned(dw), tn*ti))
    """

    #: A fill read's words arrive this many cycles after its address: the block RAM read
    #: and its output register (the engine's ``LayerEngine.READ_STAGES``).
    READ_STAGES = 2
    #: ``window.step`` and ``window.idx_addr`` come this many cycles before their step: the
    #: memory read and its output register, the fabric copies of the words (the table's
    #: entries with ``tap_offset`` added), then the tap register.
    LOOKAHEAD = 3

    #: ``lane_neurons`` come this many cycles after the tap register's: the window select
    #: is split at a register (:meth:`window_select_bits`).
    WINDOW_STAGES = 1

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg, needs="ikr")
        lanes = cfg.tn * cfg.ti
        super().__init__({
            "window": In(WindowSignature.for_config(cfg)),
            "nbin_data": In(data.ArrayLayout(
                data.ArrayLayout(unsigned(cfg.ti * cfg.dw), cfg.ikr.kmax), 2)),
            "nbin_buf": In(1),
            **{name: In(sig) for name, sig in self.load_signatures(cfg).items()},
            "lane_neurons": Out(data.ArrayLayout(unsigned(cfg.dw), lanes)),
        })

    @staticmethod
    def load_signatures(cfg):
        """The write ports of the two memories, ``{"table": ..., "index": ...}``."""
        kmax, lanes = cfg.ikr.kmax, cfg.tn * cfg.ti
        return {
            "table": LoadSignature(addr_width=bits_for(kmax * kmax - 1),
                                   data_width=cfg.ikr.patterns * ikr_tap_bits(cfg)),
            "index": LoadSignature(addr_width=bits_for(cfg.ikr.index_depth - 1),
                                   data_width=lanes * ikr_index_bits(cfg)),
        }

    @staticmethod
    def window_select_bits(cfg):
        """The tap bits of the window select's first stage: the low half, rounded up (3 of 5
        on a 5x5 window: 8-input selects, then one of 4)."""
        return (ikr_tap_bits(cfg) + 1) // 2

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        kmax, tn, ti, dw = cfg.ikr.kmax, cfg.tn, cfg.ti, cfg.dw
        tb, ib = ikr_tap_bits(cfg), ikr_index_bits(cfg)
        win = self.window
        m.submodules.table = table = Memory(shape=unsigned(len(self.table.data)),
                                            depth=kmax * kmax, init=[])
        m.submodules.index = index = Memory(shape=unsigned(len(self.index.data)),
                                            depth=cfg.ikr.index_depth, init=[])
        for mem, load in ((table, self.table), (index, self.index)):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(load.addr), wp.data.eq(load.data), wp.en.eq(load.en)]
        table_rd, index_rd = table.read_port(), index.read_port()
        m.d.comb += [table_rd.addr.eq(win.step), index_rd.addr.eq(win.idx_addr)]

        # Arrival of the column read READ_STAGES cycles ago: it shifts into column kmax - 1
        # of bank ``arr_bank``; on ``swap`` ``cur`` takes bank ``swap_bank`` as it is (a bank
        # may take an arrival at the same edge: ``cur`` gets the window before it). Column
        # kmax - 1 of every bank holds the words of both buffers as read and the row's padding
        # flag; its value (the selected word, or zero) is formed after those registers.
        banks = cfg.ikr.tiles
        arr_valid = delay(m, win.fill_valid, self.READ_STAGES, "arr_valid")
        arr_pad = delay(m, win.fill_pad, self.READ_STAGES, "arr_pad")
        arr_bank = delay(m, win.fill_bank, self.READ_STAGES, "arr_bank")
        cur = [Signal(ti * dw, name=f"cur{p}") for p in range(kmax * kmax)]
        nxt = [[Signal(ti * dw, name=f"next{b}_{p}" if banks > 1 else f"next{p}")
                for p in range(kmax * kmax)] for b in range(banks)]
        shift = [Signal(name=f"shift{b}") for b in range(banks)]
        m.d.comb += [shift[b].eq(arr_valid & (arr_bank == b)) for b in range(banks)]
        loads = [(f"next{b}" if banks > 1 else "next", shift[b], nxt[b]) for b in range(banks)]
        for bank, load, value in loads:
            for r in range(kmax):
                words = [Signal(ti * dw, name=f"{bank}_b{b}_{r}") for b in range(2)]
                pad = Signal(name=f"{bank}_pad{r}")
                with m.If(load):
                    m.d.sync += [pad.eq(arr_pad[r])]
                    m.d.sync += [w.eq(self.nbin_data[b][r]) for b, w in enumerate(words)]
                m.d.comb += value[r * kmax + kmax - 1].eq(
                    Mux(pad, 0, Mux(self.nbin_buf, words[1], words[0])))
        for p in range(kmax * kmax):
            if p % kmax != kmax - 1:
                for b in range(banks):
                    with m.If(shift[b]):
                        m.d.sync += nxt[b][p].eq(nxt[b][p + 1])
            with m.If(win.swap):
                m.d.sync += cur[p].eq(_mux_tree(win.swap_bank, [nxt[b][p] for b in range(banks)]))

        # The table holds taps ky*kmax + kx; the window's column 0 is register column
        # tap_offset (kx + tap_offset < kmax: the add never carries into ky). Both selects
        # are trees of 2:1 multiplexers: on ECP5 LUT4s this decoder alone takes 6,123 LUT4
        # against 6,887 with Array indexing (Yosys synth_ecp5, tiny). The memories' words
        # are registered (reset-less, so they can be the block RAMs' output registers), then
        # registered again in the fabric (the table's entries with tap_offset added, P adds
        # rather than one per lane): the block RAMs sit in their columns, and their words
        # went from there to all tn*ti tap selects in one cycle. The tap select thus starts
        # from fabric registers, and so does the window select (LOOKAHEAD).
        table_q = delay(m, table_rd.data, 1, "table_q", reset_less=True)
        index_q = delay(m, index_rd.data, 1, "index_q", reset_less=True)
        index_l = delay(m, index_q, 1, "index_l", reset_less=True)
        entries = [Signal(tb, name=f"entry{q}", reset_less=True)
                   for q in range(cfg.ikr.patterns)]
        m.d.sync += [e.eq(table_q[q * tb:(q + 1) * tb] + win.tap_offset)
                     for q, e in enumerate(entries)]
        # The window select in two stages (WINDOW_STAGES): the low tap bits pick one
        # register of each group of 2**low, the high bits (registered beside them) one of
        # those groups.
        low = self.window_select_bits(cfg)
        groups = -(-kmax * kmax // (1 << low))
        for i in range(ti):
            window = [cur[p][i * dw:(i + 1) * dw] for p in range(kmax * kmax)]
            for j in range(tn):
                lane = j * ti + i
                tap = Signal(tb, name=f"tap{lane}")
                m.d.sync += tap.eq(_mux_tree(index_l[lane * ib:(lane + 1) * ib], entries))
                parts = [Signal(dw, name=f"part{lane}_{g}", reset_less=True)
                         for g in range(groups)]
                m.d.sync += [part.eq(_mux_tree(tap[:low], window[g << low:(g + 1) << low]))
                             for g, part in enumerate(parts)]
                high = Signal(tb - low, name=f"tap{lane}_high", reset_less=True)
                m.d.sync += high.eq(tap[low:])
                m.d.comb += self.lane_neurons[lane].eq(_mux_tree(high, parts))
        return m
