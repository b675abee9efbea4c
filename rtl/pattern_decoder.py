"""The IKR pattern decoder: window registers, pattern table and per-kernel indices."""

from amaranth.hdl import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for, ikr_index_bits, ikr_tap_bits
from slimnfu.rtl._params import check_config

__all__ = ["PatternDecoder"]


class PatternDecoder(wiring.Component):
    """Give each of the ``tn*ti`` multipliers its own input tap from a KxK window register.

    Storage:

    * the **window**, two banks of ``ikr_kmax**2`` registers of ``ti*dw`` bits (one pixel,
      ``ti`` input channels, per tap). ``next`` is filled one column per cycle from the NBin
      fill ports (``fill_*`` from :class:`slimnfu.rtl.ikr_sequencer.IkrSequencer`, with the
      read data ``nbin_data`` one cycle later); on ``swap`` it moves to ``cur``, the column
      arriving in that cycle included, so a group's fill may end in the cycle its compute
      slot starts;
    * the **pattern table** (``ikr_kmax**2`` words, one per step ``s``; word ``s`` holds entry
      ``s`` of all P patterns, :func:`slimnfu.contract.ikr_tap_bits` each, pattern ``p`` at
      bit ``p*ikr_tap_bits``);
    * the **index memory** (``ikr_index_depth`` words, one per ``(o, t)`` tile pair; lane
      ``j*ti + i`` holds the :func:`slimnfu.contract.ikr_index_bits`-bit pattern index of kernel
      ``(o*tn + j, t*ti + i)``).

    For a step issued in cycle ``S`` (``step``, ``idx_addr``) both memories are read in
    ``S``; in ``S+1`` lane ``j*ti + i`` gets ``lane_neurons = cur[table[step][idx[j, i]]][i]``
    (combinational), in step with the SB word that NFU-1 multiplies it by.

    Parameters
    ----------
    cfg : AccelConfig
        Needs ``cfg.ikr``.
    """

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        if not cfg.ikr:
            self._MustUse__silence = True
            raise ValueError(f"PatternDecoder needs a config with ikr=True; {cfg.name!r} has "
                             f"ikr=False")
        kmax, tn, ti, dw = cfg.ikr_kmax, cfg.tn, cfg.ti, cfg.dw
        self.table_width = cfg.ikr_patterns * ikr_tap_bits(cfg)
        self.index_width = tn * ti * ikr_index_bits(cfg)
        self.load_width = max(self.table_width, self.index_width)
        super().__init__({
            "swap": In(1),
            "fill_valid": In(1),
            "fill_col": In(bits_for(kmax - 1)),
            "fill_pad": In(kmax),
            "nbin_data": In(data.ArrayLayout(unsigned(ti * dw), kmax)),
            "step": In(bits_for(kmax * kmax - 1)),
            "idx_addr": In(bits_for(cfg.ikr_index_depth - 1)),
            "table_we": In(1),
            "index_we": In(1),
            "load_addr": In(bits_for(max(cfg.ikr_index_depth, kmax * kmax) - 1)),
            "load_data": In(self.load_width),
            "lane_neurons": Out(data.ArrayLayout(unsigned(dw), tn * ti)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        kmax, tn, ti, dw = cfg.ikr_kmax, cfg.tn, cfg.ti, cfg.dw
        tb, ib = ikr_tap_bits(cfg), ikr_index_bits(cfg)
        m.submodules.table = table = Memory(shape=unsigned(self.table_width),
                                            depth=kmax * kmax, init=[])
        m.submodules.index = index = Memory(shape=unsigned(self.index_width),
                                            depth=cfg.ikr_index_depth, init=[])
        for mem, we in ((table, self.table_we), (index, self.index_we)):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(self.load_addr), wp.data.eq(self.load_data), wp.en.eq(we)]
        table_rd, index_rd = table.read_port(), index.read_port()
        m.d.comb += [table_rd.addr.eq(self.step), index_rd.addr.eq(self.idx_addr)]

        # Arrival of the column read in the previous cycle.
        arr_valid, arr_col = Signal(), Signal.like(self.fill_col)
        arr_pad = Signal.like(self.fill_pad)
        m.d.sync += [arr_valid.eq(self.fill_valid), arr_col.eq(self.fill_col),
                     arr_pad.eq(self.fill_pad)]
        cur = [Signal(ti * dw, name=f"cur{p}") for p in range(kmax * kmax)]
        nxt = [Signal(ti * dw, name=f"next{p}") for p in range(kmax * kmax)]
        for p in range(kmax * kmax):
            r, c = divmod(p, kmax)
            arriving = Mux(arr_pad[r], 0, self.nbin_data[r])
            hit = arr_valid & (arr_col == c)
            with m.If(self.swap):
                m.d.sync += cur[p].eq(Mux(hit, arriving, nxt[p]))
            with m.Elif(hit):
                m.d.sync += nxt[p].eq(arriving)

        entries = Array(table_rd.data[q * tb:(q + 1) * tb] for q in range(cfg.ikr_patterns))
        for i in range(ti):
            window = Array(cur[p][i * dw:(i + 1) * dw] for p in range(kmax * kmax))
            for j in range(tn):
                lane = j * ti + i
                tap = Signal(tb, name=f"tap{lane}")
                m.d.comb += [
                    tap.eq(entries[index_rd.data[lane * ib:(lane + 1) * ib]]),
                    self.lane_neurons[lane].eq(window[tap]),
                ]
        return m
