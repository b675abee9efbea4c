"""The whole-network accelerator: a compiled program baked in around one layer engine."""

from amaranth.hdl import Array, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import (COUNTER_BITS, Program, bits_for, descriptor_layout,
                              load_sel_width)
from slimnfu.rtl._params import check_config
from slimnfu.rtl.engine import LayerEngine

__all__ = ["Accelerator", "ACCEL_COUNTERS"]

#: The accelerator's counter ports (widths in :data:`slimnfu.contract.COUNTER_BITS`), in the
#: order testbenches and the fast runner list them; ``gated`` follows with ``cfg.kgate``.
ACCEL_COUNTERS = ("cycles", "engine_cycles", "load_cycles", "move_cycles",
                  "overlap_load_cycles", "mults", "sat_events")


class Accelerator(wiring.Component):
    """Run every layer of a :class:`slimnfu.contract.Program` on one :class:`LayerEngine`.

    The program's weight ROM is a memory with its words as init (the ROM build). Activations
    are not moved: each layer reads the engine's neuron buffer ``in_buf`` and writes buffer
    ``out_buf`` (the program's ping-pong assignment, :mod:`slimnfu.gen.compiler`), so a layer
    reads the previous layer's output where it was written (an FC layer after a conv output
    too: the compiler lays its weights over the buffer's order). For each layer, in order,
    the controller:

    1. waits (``READY``, at least one cycle) until the weight stream has delivered what the
       layer needs before it starts;
    2. starts the engine with the layer's descriptor (``RUN``, one cycle) and waits for
       ``done`` (``WAIT``: the layer's ``dense_cycles`` or ``ikr_cycles`` plus
       ``LayerEngine.latency(cfg, desc)``, which only a permuted pass makes longer), then
       spends one cycle (``PAUSE``) going on to the next layer.

    Beside the layers, the weight stream copies the program's words from the ROM into the
    engine's memories, one word per cycle, in the order and under the rules of
    :meth:`slimnfu.contract.Program.load_plan`: a load begins as soon as no layer still to
    finish reads its memory, so the next layers' words arrive while a layer computes, and a
    layer's SB words stream on while it runs.

    Handshake: write the image into neuron buffer 0 through ``img_*`` while idle (words of
    :func:`slimnfu.formats.layout.pack_input`), pulse ``start``; ``done`` pulses when the last
    layer has finished and its output (the logits) is readable through ``rd_addr`` ->
    ``rd_data`` (:data:`slimnfu.contract.RD_LATENCY` cycles later; while idle they read the last
    layer's ``out_buf``). With
    ``step`` high the controller pauses after every layer with ``paused`` high and ``layer``
    naming it, so a testbench can read that layer's output (its ``out_buf``), and goes on when
    ``resume`` is pulsed.

    Counters (reset by ``start``, final in the ``done`` cycle; paused cycles are not counted):
    ``cycles`` from ``start`` to ``done``, which is ``engine_cycles`` (``WAIT``) +
    ``load_cycles`` (``READY``: waiting for weights, one cycle a layer at least) + two cycles
    a layer (``RUN``, ``PAUSE``); ``move_cycles`` is kept for the reports and stays 0 (no
    activation moves); ``overlap_load_cycles`` counts the words the stream writes
    outside ``READY``, hidden behind the other states; and the engine's ``mults`` and
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
        """Constant tables for Array lookups: the load stream and what each layer waits for."""
        entries, need = self.program.load_plan()
        return entries + [(0, 0, 0, 0, 0)], need

    def elaborate(self, platform):
        m = Module()
        cfg, prog = self.cfg, self.program
        m.submodules.engine = eng = LayerEngine(cfg)
        if self.weights == "rom":
            m.submodules.rom = rom = Memory(shape=unsigned(prog.rom_width),
                                            depth=max(1, len(prog.rom)), init=prog.rom)
            rom_rd = rom.read_port()
            rom_addr, rom_data = rom_rd.addr, rom_rd.data
        else:
            rom_addr, rom_data = self.wt_addr, self.wt_data

        entries, need = self._tables()
        n_layers, n_entries = len(prog.layers), len(entries) - 1
        sels, bases, lens, gates, afters = zip(*entries)
        cw = bits_for(max([len(prog.rom), *lens, cfg.nbin_depth, cfg.nbout_depth,
                           cfg.sb_depth]))
        ent_sel = Array(Const(s, load_sel_width(cfg)) for s in sels)
        ent_base = Array(Const(b, cw) for b in bases)
        ent_len = Array(Const(n, cw) for n in lens)
        ent_gate = Array(Const(g, bits_for(n_layers)) for g in gates)
        ent_after = Array(Const(a, bits_for(n_layers)) for a in afters)
        layer_need = Array(Const(e, bits_for(n_entries)) for e in need)
        in_buf = Array(Const(l.in_buf, 1) for l in prog.layers)
        out_buf = Array(Const(l.out_buf, 1) for l in prog.layers)
        dl = descriptor_layout(cfg)
        descs = Array(Const(l.desc_value, dl.size) for l in prog.layers)

        layer = Signal(range(n_layers))
        busy, paused = Signal(), Signal()
        m.d.comb += [self.busy.eq(busy), self.paused.eq(paused), self.layer.eq(layer)]
        # A cycle that counts: busy and not held by a pause (the cycle that resumes a pause
        # stands for the PAUSE cycle of a free run, so ``step`` changes no count or timing).
        live = Signal()
        m.d.comb += live.eq(busy & (~paused | self.resume))
        # The neuron buffers: while idle the host writes buffer 0 and reads the last layer's
        # output.
        m.d.comb += [eng.in_buf.eq(Mux(busy, in_buf[layer], 0)),
                     eng.out_buf.eq(Mux(busy, out_buf[layer], prog.layers[-1].out_buf))]

        # The weight stream: entry ``ld``, word ``wk``, while at least ``gate`` layers have
        # finished and layer ``after`` has begun. The ROM read issued in cycle t is written
        # into the engine in cycle t+1, word ``wk`` of an SB ring into slot ``wk mod sb_depth``
        # (the engine's load address is as wide as its deepest memory, SB's port drops the
        # high bits).
        ld, wk = Signal(range(n_entries + 1)), Signal(cw)
        finished = Signal(range(n_layers + 1))
        issue = Signal()
        m.d.comb += [issue.eq(live & (ld != n_entries) & (finished >= ent_gate[ld]) &
                              (layer >= ent_after[ld])),
                     rom_addr.eq(ent_base[ld] + wk)]
        wr_en, wr_addr = Signal(), Signal(eng.load_addr.shape())
        wr_sel = Signal(load_sel_width(cfg))
        m.d.sync += [wr_en.eq(issue), wr_sel.eq(ent_sel[ld]), wr_addr.eq(wk)]
        with m.If(issue):
            m.d.sync += wk.eq(wk + 1)
            with m.If(wk == ent_len[ld] - 1):
                m.d.sync += [wk.eq(0), ld.eq(ld + 1)]
        m.d.comb += [eng.load_en.eq(wr_en), eng.load_sel.eq(wr_sel), eng.load_addr.eq(wr_addr),
                     eng.load_data.eq(rom_data)]

        # The neuron-buffer port: the host's image, while idle.
        m.d.comb += [eng.nb_en.eq(self.img_en & ~busy), eng.nb_addr.eq(self.img_addr),
                     eng.nb_data.eq(self.img_data), eng.rd_addr.eq(self.rd_addr),
                     self.rd_data.eq(eng.rd_data)]

        cnt = {name: getattr(self, name) for name in ACCEL_COUNTERS}
        if cfg.kgate:
            cnt["gated"] = self.gated
        with m.If(live):
            m.d.sync += cnt["cycles"].eq(cnt["cycles"] + 1)

        ready = Signal()
        with m.If(issue & ~ready):
            m.d.sync += cnt["overlap_load_cycles"].eq(cnt["overlap_load_cycles"] + 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [busy.eq(1), layer.eq(0), ld.eq(0), wk.eq(0), finished.eq(0)]
                    m.d.sync += [c.eq(0) for c in cnt.values()]
                    m.next = "READY"
            with m.State("READY"):
                m.d.comb += ready.eq(1)
                m.d.sync += cnt["load_cycles"].eq(cnt["load_cycles"] + 1)
                with m.If(ld >= layer_need[layer]):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [eng.start.eq(1), eng.desc.as_value().eq(descs[layer])]
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.sync += cnt["engine_cycles"].eq(cnt["engine_cycles"] + 1)
                with m.If(eng.done):
                    m.d.sync += [cnt[n].eq(cnt[n] + getattr(eng, n))
                                 for n in ("mults", "sat_events", "gated") if n in cnt]
                    m.d.sync += [paused.eq(self.step), finished.eq(finished + 1)]
                    m.next = "PAUSE"
            with m.State("PAUSE"):
                with m.If(~paused | self.resume):
                    m.d.sync += [paused.eq(0), layer.eq(layer + 1)]
                    with m.If(layer == n_layers - 1):
                        m.d.sync += [busy.eq(0), self.done.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "READY"
        with m.If(self.done):
            m.d.sync += self.done.eq(0)
        return m
