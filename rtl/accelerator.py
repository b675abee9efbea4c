"""The whole-network accelerator: a compiled program baked in around one layer engine."""

from amaranth.hdl import Array, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import (COUNTER_BITS, LoadSel, Program, bits_for, descriptor_layout,
                              load_sel_width)
from slimnfu.rtl._params import check_config
from slimnfu.rtl.engine import LayerEngine

__all__ = ["Accelerator", "ACCEL_COUNTERS"]

#: The accelerator's counter ports (widths in :data:`slimnfu.contract.COUNTER_BITS`), in the
#: order testbenches and the fast runner list them; ``gated`` follows with ``cfg.kgate``.
ACCEL_COUNTERS = ("cycles", "engine_cycles", "load_cycles", "move_cycles", "mults",
                  "sat_events")


class Accelerator(wiring.Component):
    """Run every layer of a :class:`slimnfu.contract.Program` on one :class:`LayerEngine`.

    The program's weight ROM is a memory with its words as init (the ROM build). Activations
    are not moved: each layer reads the engine's neuron buffer ``in_buf`` and writes buffer
    ``out_buf`` (the program's ping-pong assignment, :mod:`slimnfu.gen.compiler`), so a layer
    reads the previous layer's output where it was written. For each layer, in order, the
    controller:

    1. only for a ``flatten`` move (an FC layer whose format cannot take the conv output in
       the buffer's order): re-orders the conv output from buffer ``1 - in_buf`` into
       ``in_buf`` in PyTorch's flatten order, one value per cycle;
    2. copies the layer's words from the ROM into the engine's memories (one word per cycle,
       plus one cycle per layer);
    3. starts the engine with the layer's descriptor and waits for ``done`` (the layer's
       ``dense_cycles`` or ``ikr_cycles`` plus ``LayerEngine.LATENCY``), then spends one
       cycle (``PAUSE``) going on to the next layer.

    Handshake: write the image into neuron buffer 0 through ``img_*`` while idle (words of
    :func:`slimnfu.formats.layout.pack_input`), pulse ``start``; ``done`` pulses when the last
    layer has finished and its output (the logits) is readable through ``rd_addr`` ->
    ``rd_data`` (one cycle later; while idle they read the last layer's ``out_buf``). With
    ``step`` high the controller pauses after every layer with ``paused`` high and ``layer``
    naming it, so a testbench can read that layer's output (its ``out_buf``), and goes on when
    ``resume`` is pulsed.

    Counters (reset by ``start``, final in the ``done`` cycle; paused cycles are not counted):
    ``cycles`` from ``start`` to ``done``, ``engine_cycles`` (layers running), ``load_cycles``
    (ROM to engine), ``move_cycles`` (``flatten`` moves; 0 for a program without), and the engine's ``mults`` and
    ``sat_events`` summed over the layers (plus ``gated`` with ``cfg.kgate``).

    Parameters
    ----------
    program : Program
        From :func:`slimnfu.gen.compiler.compile_model`; its ``cfg`` is the engine's config.
    weights : str
        ``"rom"`` (the ROM build: the program's words are the init of an on-chip memory) or
        ``"port"`` (the words stay outside, as in DianNao's DRAM: the controller drives
        ``wt_addr`` and takes ``wt_data`` one cycle later, like a synchronous memory). The
        port build is the one to synthesise when the ROM does not fit the FPGA's block RAM.
    """

    def __init__(self, program, weights="rom"):
        if not isinstance(program, Program):
            self._MustUse__silence = True
            raise TypeError(f"program must be a slimnfu.contract.Program, not "
                            f"{type(program).__name__}")
        if weights not in ("rom", "port"):
            self._MustUse__silence = True
            raise ValueError(f"weights must be 'rom' or 'port', not {weights!r}")
        self.program, self.weights = program, weights
        self.cfg = cfg = check_config(self, program.cfg)
        if not program.layers:
            raise ValueError("program has no layers")
        ports = {
            "start": In(1), "busy": Out(1), "done": Out(1),
            "img_en": In(1), "img_addr": In(bits_for(cfg.nbin_depth - 1)),
            "img_data": In(cfg.ti * cfg.dw),
            "rd_addr": In(bits_for(cfg.nbout_depth - 1)), "rd_data": Out(cfg.tn * cfg.dw),
            "step": In(1), "resume": In(1), "paused": Out(1),
            "layer": Out(bits_for(len(program.layers) - 1)),
            **{name: Out(COUNTER_BITS[name]) for name in ACCEL_COUNTERS},
        }
        if cfg.kgate:
            ports["gated"] = Out(COUNTER_BITS["gated"])
        if weights == "port":
            ports["wt_addr"] = Out(bits_for(max(1, len(program.rom)) - 1))
            ports["wt_data"] = In(program.rom_width)
        super().__init__(ports)

    def _tables(self):
        """Per-layer and per-load constant tables, flattened for Array lookups."""
        prog = self.program
        loads, first_load = [], []
        for layer in prog.layers:
            first_load.append(len(loads))
            loads.extend(layer.loads)
        loads.append((0, 0, 0))
        first_load.append(len(loads) - 1)
        moves = []
        for layer in prog.layers:
            if layer.move[0] == "flatten":
                _, c, h, w = layer.move
                moves.append((c * h * w, h * w))
            else:
                moves.append((0, 0))
        return loads, first_load, moves

    def elaborate(self, platform):
        m = Module()
        cfg, prog = self.cfg, self.program
        tn, ti, dw = cfg.tn, cfg.ti, cfg.dw
        m.submodules.engine = eng = LayerEngine(cfg)
        if self.weights == "rom":
            m.submodules.rom = rom = Memory(shape=unsigned(prog.rom_width),
                                            depth=max(1, len(prog.rom)), init=prog.rom)
            rom_rd = rom.read_port()
            rom_addr, rom_data = rom_rd.addr, rom_rd.data
        else:
            rom_addr, rom_data = self.wt_addr, self.wt_data

        loads, first_load, moves = self._tables()
        n_layers = len(prog.layers)
        big = max([len(prog.rom)] + [n for _, _, n in loads] + [c for c, _ in moves] +
                  [cfg.nbin_depth, cfg.nbout_depth, cfg.sb_depth])
        cw = bits_for(big)
        load_sel = Array(Const(s, load_sel_width(cfg)) for s, _, _ in loads)
        load_base = Array(Const(b, cw) for _, b, _ in loads)
        load_len = Array(Const(n, cw) for _, _, n in loads)
        layer_first = Array(Const(f, cw) for f in first_load)
        move_len = Array(Const(c, cw) for c, _ in moves)
        move_hw = Array(Const(hw, cw) for _, hw in moves)
        in_buf = Array(Const(l.in_buf, 1) for l in prog.layers)
        out_buf = Array(Const(l.out_buf, 1) for l in prog.layers)
        dl = descriptor_layout(cfg)
        descs = Array(Const(l.desc_value, dl.size) for l in prog.layers)

        layer = Signal(range(n_layers))
        load = Signal(range(len(loads)))
        k = Signal(cw)
        busy, paused = Signal(), Signal()
        m.d.comb += [self.busy.eq(busy), self.paused.eq(paused), self.layer.eq(layer)]
        # The neuron buffers: while idle the host writes buffer 0 and reads the last layer's
        # output; a flatten move (state MOVE) reads the other buffer than the one it fills.
        src_buf = Signal()
        m.d.comb += [eng.in_buf.eq(Mux(busy, in_buf[layer], 0)),
                     src_buf.eq(Mux(busy, out_buf[layer], prog.layers[-1].out_buf)),
                     eng.out_buf.eq(src_buf)]

        # The write stage, shared by loads and moves: the ROM or neuron-buffer read issued in
        # cycle t is written into the engine in cycle t+1.
        wr_en, wr_addr = Signal(), Signal(eng.load_addr.shape())
        wr_sel = Signal(load_sel_width(cfg))
        wr_from_rom, flat_mode, wr_lane = Signal(), Signal(), Signal(range(tn))
        m.d.sync += wr_en.eq(0)
        # Flatten assembly: the NBin word being filled, its address and next lane.
        asm, fill, out_idx = Signal(ti * dw), Signal(range(ti)), Signal(cw)
        lanes = Array(eng.rd_data.word_select(j, dw) for j in range(tn))
        flat_word = Signal(ti * dw)
        m.d.comb += flat_word.eq(asm)
        with m.Switch(fill):
            for j in range(ti):
                with m.Case(j):
                    m.d.comb += flat_word.word_select(j, dw).eq(lanes[wr_lane])
        with m.If(wr_en & flat_mode):
            with m.If(fill == ti - 1):
                m.d.sync += [fill.eq(0), out_idx.eq(out_idx + 1), asm.eq(0)]
            with m.Else():
                m.d.sync += [fill.eq(fill + 1), asm.eq(flat_word)]
        m.d.comb += [eng.load_en.eq(Mux(busy, wr_en, self.img_en)),
                     eng.load_sel.eq(Mux(busy, wr_sel, LoadSel.NBIN)),
                     eng.load_addr.eq(Mux(~busy, self.img_addr, Mux(flat_mode, out_idx,
                                                                   wr_addr)))]
        with m.If(~busy):
            m.d.comb += eng.load_data.eq(self.img_data)
        with m.Elif(wr_from_rom):
            m.d.comb += eng.load_data.eq(rom_data)
        with m.Else():
            m.d.comb += eng.load_data.eq(flat_word)

        # Read stage of a flatten: pixel ``pos`` of channel ``tile*tn + lane``.
        pos, lane, tile_base = Signal(cw), Signal(range(tn)), Signal(cw)
        ctrl_rd_addr = Signal.like(self.rd_addr)
        m.d.comb += [eng.rd_addr.eq(Mux(busy & ~paused, ctrl_rd_addr, self.rd_addr)),
                     self.rd_data.eq(eng.rd_data),
                     rom_addr.eq(load_base[load] + k)]

        cnt = {name: getattr(self, name) for name in ACCEL_COUNTERS}
        if cfg.kgate:
            cnt["gated"] = self.gated
        # The cycle that resumes a pause stands for the PAUSE cycle of a free run, so
        # ``step`` does not change the count.
        with m.If(busy & (~paused | self.resume)):
            m.d.sync += cnt["cycles"].eq(cnt["cycles"] + 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [busy.eq(1), layer.eq(0), load.eq(layer_first[0]), k.eq(0)]
                    m.d.sync += [c.eq(0) for c in cnt.values()]
                    m.next = "LOAD"
            with m.State("MOVE"):
                m.d.sync += [cnt["move_cycles"].eq(cnt["move_cycles"] + 1), wr_en.eq(1),
                             wr_sel.eq(LoadSel.NBIN), wr_from_rom.eq(0), k.eq(k + 1)]
                m.d.comb += [ctrl_rd_addr.eq(tile_base + pos), src_buf.eq(~in_buf[layer])]
                m.d.sync += [flat_mode.eq(1), wr_lane.eq(lane), pos.eq(pos + 1)]
                with m.If(pos == move_hw[layer] - 1):
                    m.d.sync += [pos.eq(0), lane.eq(lane + 1)]
                    with m.If(lane == tn - 1):
                        m.d.sync += [lane.eq(0), tile_base.eq(tile_base + move_hw[layer])]
                with m.If(k == move_len[layer] - 1):
                    m.d.sync += k.eq(0)
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += cnt["load_cycles"].eq(cnt["load_cycles"] + 1)
                with m.If(load == layer_first[layer + 1]):
                    m.next = "RUN"
                with m.Elif(load_len[load] == 0):
                    m.d.sync += load.eq(load + 1)
                with m.Else():
                    m.d.sync += [wr_en.eq(1), wr_sel.eq(load_sel[load]), wr_from_rom.eq(1),
                                 flat_mode.eq(0), wr_addr.eq(k), k.eq(k + 1)]
                    with m.If(k == load_len[load] - 1):
                        m.d.sync += [k.eq(0), load.eq(load + 1)]
            with m.State("RUN"):
                m.d.comb += [eng.start.eq(1), eng.desc.as_value().eq(descs[layer])]
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.sync += cnt["engine_cycles"].eq(cnt["engine_cycles"] + 1)
                with m.If(eng.done):
                    m.d.sync += [cnt[n].eq(cnt[n] + getattr(eng, n))
                                 for n in ("mults", "sat_events", "gated") if n in cnt]
                    m.d.sync += paused.eq(self.step)
                    m.next = "PAUSE"
            with m.State("PAUSE"):
                with m.If(~paused | self.resume):
                    m.d.sync += [paused.eq(0), layer.eq(layer + 1), k.eq(0), pos.eq(0),
                                 lane.eq(0), tile_base.eq(0), out_idx.eq(0), fill.eq(0),
                                 asm.eq(0), load.eq(layer_first[layer + 1])]
                    with m.If(layer == n_layers - 1):
                        m.d.sync += [busy.eq(0), self.done.eq(1)]
                        m.next = "IDLE"
                    with m.Elif(move_len[layer + 1] != 0):
                        m.next = "MOVE"
                    with m.Else():
                        m.next = "LOAD"
        with m.If(self.done):
            m.d.sync += self.done.eq(0)
        return m
