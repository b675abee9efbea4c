"""The lane-addressed IKR unit: a kernel group in ``n`` cycles, one tap per input lane a cycle."""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for, ikr_coord_bits, ikr_lane_table_width, ikr_tap_bits
from slimnfu.rtl._params import check_config, delay
from slimnfu.rtl.loop_nest import LoopNest, tile_counter
from slimnfu.rtl.signatures import LoadSignature, RunSignature, StepSignature

__all__ = ["IkrLaneUnit"]


class IkrLaneUnit(wiring.Component):
    """Walk an IKR conv layer (``desc.ikr_n = n > 0``) in ``n`` steps per kernel group, each
    input lane at its own tap.

    The groups (one output pixel of one output tile for one input tile: the windows of
    :class:`slimnfu.rtl.loop_nest.LoopNest`) come in DianNao's order ``o, oy, ox, t``. Group
    ``(o, t)``'s step ``c`` (``0 <= c < n``) is SB word ``(o*ci_tiles + t)*n + c``, as in the
    window decoder, and word ``c`` of the same address in the **tap memory** (``taps``:
    ``ti`` taps ``ky*k + kx`` of ``ikr_tap_bits`` each, lane ``i`` in bits ``i*b ..``): the
    tap of input lane ``i``, which is the tap of all ``tn`` kernels of the output tile that
    read that lane's channel (their patterns are shared). Input lane ``i`` reads its neuron
    from NBin word ``lane_addr[i] = base + offset``, where ``base = tbase + row + ix`` is the
    window's first word (``(t*h_in + iy0)*w_in + ix0``, modulo the address width: it may lie
    before the tile when the window starts in the padding) and ``offset = ky*w_in + kx``
    comes from the **tap table** (``table``: word ``tap`` holds ``offset``, then ``ky`` and
    ``kx``, :func:`slimnfu.contract.ikr_lane_table_width`; written for each layer, one copy
    per lane in distributed RAM); ``lane_pad[i]`` marks a tap in the padding (its neuron
    reads as zero), from the window's row and column flags ``0 <= iy0 + r < h_in``,
    ``0 <= ix0 + r < w_in``. The neuron buffers give each lane its own read address
    (:class:`slimnfu.rtl.engine.LayerEngine` with ``ikr.lanes``), so there is no window to fill
    and the pass takes ``groups * n`` NFU cycles (:meth:`slimnfu.config.PassDesc.ikr_cycles`).

    Timing: the loop nest's position in cycle ``X`` is step ``c`` of its group; the tap
    memory is read at that step's SB address in ``X + 1`` (a register first), its word
    registered in ``X + 3`` (the block RAM's output register), each lane's table word in
    ``X + 4`` and the lane addresses and padding flags in ``X + 5``: the steps come
    :attr:`OUTPUT_STAGES` cycles after ``X``, with ``lane_addr`` and ``lane_pad`` beside them
    (:meth:`slimnfu.rtl.engine.LayerEngine.ikr_stages`).

    Parameters
    ----------
    cfg : AccelConfig
        Needs ``cfg.ikr`` with ``lanes``; ``ikr.kmax`` bounds the kernel, ``ikr.index_depth``
        is the tap memory's depth.

    Members
    -------
    run : In(RunSignature)
    step : Out(StepSignature)
        No ``nbin_addr`` or ``pad``: the lanes' own are ``lane_addr`` and ``lane_pad``.
    lane_addr : Out(ArrayLayout(unsigned(nbin address bits), ti))
    lane_pad : Out(ti)
    taps, table : In(LoadSignature)
    """

    #: Register stages from the loop nest's position to the steps: the tap memory's address
    #: register, the block RAM read and its output register, the lanes' table reads, the
    #: lanes' addresses.
    OUTPUT_STAGES = 5

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg, needs="ikr")
        if not cfg.ikr.lanes:
            self._MustUse__silence = True
            raise ValueError(f"IkrLaneUnit needs a config with ikr.lanes; {cfg.name!r} has "
                             f"the window decoder")
        nbin_bits = bits_for(cfg.nbin_depth - 1)
        super().__init__({
            "run": In(RunSignature.for_config(cfg)),
            "step": Out(StepSignature.for_config(cfg)),
            "lane_addr": Out(data.ArrayLayout(unsigned(nbin_bits), cfg.ti)),
            "lane_pad": Out(cfg.ti),
            **{name: In(sig) for name, sig in self.load_signatures(cfg).items()},
        })

    @staticmethod
    def load_signatures(cfg):
        """The write ports of the tap memory and the tap table, ``{"taps": ..., "table":
        ...}``."""
        kmax = cfg.ikr.kmax
        return {
            "taps": LoadSignature(addr_width=bits_for(cfg.ikr.index_depth - 1),
                                  data_width=cfg.ti * ikr_tap_bits(cfg)),
            "table": LoadSignature(addr_width=bits_for(kmax * kmax - 1),
                                   data_width=ikr_lane_table_width(cfg)),
        }

    def elaborate(self, platform):
        m = Module()
        cfg, step = self.cfg, self.step
        kmax, ti = cfg.ikr.kmax, cfg.ti
        tb, cb = ikr_tap_bits(cfg), ikr_coord_bits(cfg)
        nbin_bits = len(self.lane_addr[0])
        m.submodules.nest = nest = LoopNest(cfg, taps=False, pooling=False)
        wiring.connect(m, wiring.flipped(self.run), nest.run)
        d, n = nest.layer, nest.layer.ikr_n
        starting = self.run.start & ~self.run.busy
        running = nest.running

        # The step within the group: ``c`` up from 0, ``rem`` down to the group's last step
        # (the loop nest moves on then).
        c = Signal(range(kmax * kmax))
        rem = Signal.like(c)
        at_last = rem == 0
        m.d.comb += [nest.advance.eq(at_last), nest.stop.eq(nest.end & at_last)]
        with m.If(~running | at_last):
            m.d.sync += [c.eq(0), rem.eq(d.ikr_n - 1)]
        with m.Else():
            m.d.sync += [c.eq(c + 1), rem.eq(rem - 1)]
        sb_base = tile_counter(m, nest, starting, running & at_last, n,
                               unsigned(bits_for(cfg.sb_depth - 1) + 1), "sb_base")

        # The step of this cycle, issued OUTPUT_STAGES later.
        issued = step.signature.create(path=("issued",))
        sb_addr = Signal.like(sb_base, name="sb_addr")
        m.d.comb += [
            sb_addr.eq(sb_base + c),
            issued.valid.eq(running),
            issued.sb_addr.eq(sb_addr),
            issued.bias_addr.eq(nest.o),
            issued.nbout_addr.eq(nest.nbout),
            issued.first.eq(nest.first & (c == 0)),
            issued.last.eq(nest.last & at_last),
            issued.end.eq(nest.end & at_last),
            issued.lane_mask.eq(nest.lane_mask),
        ]
        for name in issued.signature.members:
            m.d.comb += getattr(step, name).eq(
                delay(m, getattr(issued, name), self.OUTPUT_STAGES, f"{name}_d"))

        # X + 1: the tap memory's address; X + 2: its read; X + 3: its output register.
        taps = Memory(shape=unsigned(ti * tb), depth=cfg.ikr.index_depth, init=[])
        m.submodules.taps = taps
        wp = taps.write_port()
        m.d.comb += [wp.en.eq(self.taps.en), wp.addr.eq(self.taps.addr),
                     wp.data.eq(self.taps.data)]
        rd = taps.read_port()
        m.d.comb += rd.addr.eq(delay(m, sb_addr, 1, "tap_addr"))
        tap_word = delay(m, rd.data, 1, "tap_word", reset_less=True)

        # The window's first NBin word and its row and column flags, registered in X + 1
        # (the per-layer ``h_in - r``, ``w_in - r`` settle in the setup), then delayed to
        # the lanes' address stage.
        h_less = [Signal(signed(len(d.h_in) + 1), name=f"h_in_less{r}") for r in range(kmax)]
        w_less = [Signal(signed(len(d.w_in) + 1), name=f"w_in_less{r}") for r in range(kmax)]
        m.d.sync += [h_less[r].eq(d.h_in - r) for r in range(kmax)]
        m.d.sync += [w_less[r].eq(d.w_in - r) for r in range(kmax)]
        base = Signal(nbin_bits, name="base")
        row_ok, col_ok = Signal(kmax), Signal(kmax)
        m.d.sync += [
            base.eq(nest.tbase[:nbin_bits] + nest.row[:nbin_bits] + nest.ix[:nbin_bits]),
            *(row_ok[r].eq((nest.iy >= -r) & (nest.iy < h_less[r])) for r in range(kmax)),
            *(col_ok[r].eq((nest.ix >= -r) & (nest.ix < w_less[r])) for r in range(kmax)),
        ]
        base = delay(m, base, 3, "base_d")
        row_ok = delay(m, row_ok, 3, "row_ok_d")
        col_ok = delay(m, col_ok, 3, "col_ok_d")

        # X + 4: each lane's tap-table word (a copy of the table per lane, read
        # asynchronously: distributed RAM); X + 5: its address and padding flag.
        table_width = ikr_lane_table_width(cfg)
        for i in range(ti):
            table = Memory(shape=unsigned(table_width), depth=kmax * kmax, init=[])
            m.submodules[f"table{i}"] = table
            wp = table.write_port()
            m.d.comb += [wp.en.eq(self.table.en), wp.addr.eq(self.table.addr),
                         wp.data.eq(self.table.data)]
            rd = table.read_port(domain="comb")
            m.d.comb += rd.addr.eq(tap_word[i * tb:(i + 1) * tb])
            entry = Signal(table_width, name=f"entry{i}")
            m.d.sync += entry.eq(rd.data)
            offset = entry[:nbin_bits]
            ky, kx = entry[nbin_bits:nbin_bits + cb], entry[nbin_bits + cb:]
            m.d.sync += [
                self.lane_addr[i].eq(base + offset),
                self.lane_pad[i].eq(~(row_ok.bit_select(ky, 1) & col_ok.bit_select(kx, 1))),
            ]
        return m
