"""The dense layer engine: buffers, load interface, sequencer, NFU-1/2/3 and counters."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import (COUNTER_BITS, LoadSel, Mode, Perm, bits_for, descriptor_layout,
                              load_data_width, load_sel_width, perm_param_width)
from slimnfu.rtl._params import check_config
from slimnfu.rtl.nfu1 import NFU1
from slimnfu.rtl.nfu2 import NFU2
from slimnfu.rtl.nfu3 import NFU3
from slimnfu.rtl.sequencer import Sequencer
from slimnfu.rtl.ikr_unit import IkrUnit, select_steps
from slimnfu.rtl.perm_addr import PermAddrGen
from slimnfu.rtl.perm_sb import PermSB
from slimnfu.rtl.kernel_gate import KernelGate

__all__ = ["LayerEngine"]


class LayerEngine(wiring.Component):
    """Run one dense layer (conv, fc, maxpool, avgpool) from the buffers.

    Buffers: bias is one memory; SB is ``tn`` banks (one per output lane, ``ti*dw`` bits, same
    address), loaded together from one ``load_data`` word. The neuron buffers are a ping-pong
    pair, buffer 0 (``nbin``, ``cfg.nbin_depth`` words) and buffer 1 (``nbout``,
    ``cfg.nbout_depth`` words), both ``tn*dw == ti*dw`` bits wide: a layer reads its input from
    buffer ``in_buf`` and writes its output into buffer ``out_buf`` (latched by ``start``;
    ``in_buf == out_buf`` is allowed when the pass reads words it does not write, e.g. the
    slim approximation pass), so the next layer can read the output where it was written.
    ``in_buf = 0, out_buf = 1`` (the ports' defaults) is the classic NBin/NBout engine.

    Pipeline, for a step issued by the sequencer in cycle ``S``: NBin/SB/bias read ``S``,
    NFU-1 multiply ``S+1``, NFU-2 accumulate ``S+2``, NFU-3 requantise ``S+3`` and activate
    ``S+4``, NBout write ``S+5``. Steps are issued back to back, so a layer of ``N`` steps
    takes ``N + LATENCY`` cycles.

    Handshake: ``start`` (while idle) latches ``desc``; ``busy`` is high from the next cycle
    and falls in the cycle ``done`` pulses, one cycle after the last NBout write. In that cycle
    the counters hold their final values: ``cycles`` is the number of clock edges from the
    ``start`` cycle to the ``done`` cycle (``done_cycle - start_cycle``). All counters are reset
    by ``start``. NBout reads (``rd_addr`` -> ``rd_data`` one cycle later) are meant for idle
    time. Loads (``load_en``) into the weight memories are taken at any time, so a controller
    can stream the next layer's words while a layer runs; it must not write a memory the
    running layer reads before the layer has read it (:meth:`slimnfu.contract.Program.load_plan`
    says how the accelerator keeps to that). Neuron-buffer writes, an ``NBIN`` load or the
    ``nb_*`` port (``nb_en``, ``nb_addr``, ``nb_data``: the same write beside the load port, so
    a controller can fill the buffer while it streams weights), are taken while idle only and
    write buffer ``in_buf``; ``rd_addr`` reads buffer ``out_buf`` (the port values, not the
    latched ones; ``rd_data`` follows the ``out_buf`` of the cycle of its ``rd_addr``). The load port is decoded into
    one :class:`slimnfu.rtl.signatures.LoadSignature` write port per memory (``load_sel``
    picks it); the pipeline takes the sequencer's :class:`slimnfu.rtl.signatures.StepSignature`.

    Parameters
    ----------
    cfg : AccelConfig
    """

    #: The cycle after the ``start`` cycle (0) in which the first step is issued: the
    #: sequencer's setup (``Sequencer.SETUP_CYCLES`` = 12) and one.
    FIRST_STEP = Sequencer.SETUP_CYCLES + 1
    #: A step issued in cycle ``S`` writes NBout in cycle ``S + WRITE_DELAY``.
    WRITE_DELAY = 5
    #: ``cycles == desc.dense_cycles(cfg) + LATENCY`` for every layer: ``done`` pulses one
    #: cycle after the last step's NBout write.
    LATENCY = FIRST_STEP + WRITE_DELAY

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        self.addr_bits = bits_for(max(cfg.nbin_depth, cfg.sb_depth, cfg.nbout_depth,
                                      cfg.bias_depth) - 1)
        super().__init__({
            "start": In(1),
            "desc": In(descriptor_layout(cfg)),
            "busy": Out(1),
            "done": Out(1),
            "load_en": In(1),
            "load_sel": In(load_sel_width(cfg)),
            "load_addr": In(self.addr_bits),
            "load_data": In(load_data_width(cfg)),
            "rd_addr": In(bits_for(cfg.nbout_depth - 1)),
            "rd_data": Out(cfg.tn * cfg.dw),
            "in_buf": In(1),
            "out_buf": In(1, init=1),
            "nb_en": In(1),
            "nb_addr": In(bits_for(max(cfg.nbin_depth, cfg.nbout_depth) - 1)),
            "nb_data": In(cfg.ti * cfg.dw),
            **{name: Out(COUNTER_BITS[name]) for name in ("cycles", "steps", "mults",
                                                          "sat_events")},
            # Method A: multiplies switched off by the kernel gate (``cfg.kgate`` only).
            **({"gated": Out(COUNTER_BITS["gated"])} if cfg.kgate else {}),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        tn, ti, dw = cfg.tn, cfg.ti, cfg.dw
        m.submodules.nbin = nbin = Memory(shape=unsigned(ti * dw), depth=cfg.nbin_depth, init=[])
        # SB is banked per output lane (tn banks of ti*dw bits at the same address): one
        # 4096-bit memory (diannao) is beyond what amaranth.sim can compile.
        sb_banks = []
        for j in range(tn):
            bank = Memory(shape=unsigned(ti * dw), depth=cfg.sb_depth, init=[])
            m.submodules[f"sb{j}"] = bank
            sb_banks.append(bank)
        m.submodules.bias = bias = Memory(shape=unsigned(tn * cfg.acc), depth=cfg.bias_depth,
                                          init=[])
        m.submodules.nbout = nbout = Memory(shape=unsigned(tn * dw), depth=cfg.nbout_depth,
                                            init=[])
        bufs = (nbin, nbout)
        m.submodules.seq = seq = Sequencer(cfg)
        m.submodules.nfu1 = nfu1 = NFU1(cfg)
        m.submodules.nfu2 = nfu2 = NFU2(cfg)
        m.submodules.nfu3 = nfu3 = NFU3(cfg)

        cur = Signal(descriptor_layout(cfg))
        busy = Signal()
        # The neuron buffers the running layer reads and writes (0: nbin, 1: nbout).
        cur_in, cur_out = Signal(), Signal(init=1)
        starting = self.start & ~busy
        with m.If(starting):
            m.d.sync += [cur.eq(self.desc), busy.eq(1), cur_in.eq(self.in_buf),
                         cur_out.eq(self.out_buf)]
        m.d.comb += [self.busy.eq(busy), seq.run.start.eq(starting), seq.run.desc.eq(self.desc)]
        # The memories' write ports: (load_sel value, port, lowest load_data bit).
        # (NBin loads share the neuron buffers' write ports with the pipeline: see below.)
        loads = [(LoadSel.BIAS, bias.write_port(), 0)]
        loads += [(LoadSel.SB, bank.write_port(), j * ti * dw) for j, bank in enumerate(sb_banks)]
        loads.append((LoadSel.PWL, nfu3.pwl, 0))
        step = seq.step
        if cfg.ikr:
            step = self._ikr_path(m, cur, seq, starting, bufs, cur_in, nfu1, loads)

        # Stage S: the sequencer's step addresses the buffers.
        is_mac = cur.mode == Mode.MAC
        bias_rd = bias.read_port()
        m.d.comb += [bias_rd.addr.eq(step.bias_addr),
                     bias_rd.en.eq(step.valid & is_mac & step.first)]
        nbin_rds = [buf.read_port() for buf in bufs]
        for port in nbin_rds:
            m.d.comb += [port.addr.eq(step.nbin_addr), port.en.eq(step.valid & ~step.pad)]
        # cur_in holds still while the layer runs, so it selects the data of any step.
        nbin_data = Mux(cur_in, nbin_rds[1].data, nbin_rds[0].data)
        synapses = []
        sb_addr, sb_en = step.sb_addr, step.valid & is_mac
        if cfg.perm:
            # The index-ROM word of step S is read in S-1 (FC SB addresses count up by one
            # per step from 0), so the s banks are addressed in S like the dense SB.
            index_mode = cur.perm == Perm.INDEX
            sb_addr = Mux(index_mode, step.sb_addr + step.valid, step.sb_addr)
            sb_en = Mux(index_mode, busy, sb_en)
        for bank in sb_banks:
            port = bank.read_port()
            m.d.comb += [port.addr.eq(sb_addr), port.en.eq(sb_en)]
            synapses.append(port.data)
        synapse_word = Cat(*synapses)
        if cfg.perm:
            synapse_word = self._perm_path(m, cur, step, synapse_word, loads)

        # Load interface: one word per cycle into the memory load_sel names (NBin: while idle).
        idle_load = self.load_en & ~busy
        for sel, port, lsb in loads:
            m.d.comb += [port.en.eq(self.load_en & (self.load_sel == sel)),
                         port.addr.eq(self.load_addr), port.data.eq(self.load_data[lsb:])]

        def delayed(value, stages, name):
            for n in range(stages):
                reg = Signal.like(value, name=f"{name}_d{n + 1}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        if cfg.kgate:
            synapse_word = self._kgate_path(m, cur, step, synapse_word, starting, is_mac)

        # Stage S+1: NFU-1 multiplies (padding positions read as zero).
        pad1, valid1 = delayed(step.pad, 1, "pad"), delayed(step.valid, 1, "valid")
        neurons = Signal(ti * dw)
        m.d.comb += neurons.eq(Mux(pad1, 0, nbin_data))
        m.d.comb += [nfu1.neurons.eq(neurons), nfu1.synapses.eq(synapse_word),
                     nfu1.en.eq(valid1 & is_mac)]

        # Stage S+2: NFU-2 accumulates.
        m.d.comb += [
            nfu2.mode.eq(cur.mode),
            nfu2.valid.eq(delayed(step.valid, 2, "valid")),
            nfu2.first.eq(delayed(step.first, 2, "first")),
            nfu2.last.eq(delayed(step.last, 2, "last")),
            nfu2.products.eq(nfu1.products),
            nfu2.neurons.eq(delayed(neurons, 1, "neurons")),
            nfu2.bias.eq(delayed(bias_rd.data, 1, "bias")),
        ]

        # Stage S+3, S+4: NFU-3 requantises and activates.
        m.d.comb += [
            nfu3.acc.eq(nfu2.acc), nfu3.in_valid.eq(nfu2.out_valid),
            nfu3.lane_mask.eq(delayed(step.lane_mask, 3, "lane_mask")),
            nfu3.shift.eq(cur.shift), nfu3.act.eq(cur.act), nfu3.seg_shift.eq(cur.seg_shift),
            nfu3.clear.eq(starting),
        ]

        # Stage S+5: NBout write; done one cycle after the layer's last write.
        # One write port per neuron buffer: the pipeline's writes into buffer cur_out while
        # busy, NBin loads into buffer in_buf while idle.
        write_end = nfu3.out_valid & delayed(step.end, self.WRITE_DELAY, "end")
        out_addr = delayed(step.nbout_addr, self.WRITE_DELAY, "nbout_addr")
        nbin_load = (idle_load & (self.load_sel == LoadSel.NBIN)) | (self.nb_en & ~busy)
        nb_addr = Mux(self.nb_en, self.nb_addr, self.load_addr)
        nb_data = Mux(self.nb_en, self.nb_data, self.load_data[:ti * dw])
        if cfg.kgate:
            # centre-tap passes may fill part of a tile: one write enable per lane
            mask = delayed(step.write_mask, self.WRITE_DELAY, "write_mask")
            out_en, all_lanes = Mux(nfu3.out_valid, mask, 0), (1 << tn) - 1
        else:
            out_en, all_lanes = nfu3.out_valid, 1
        kw = {"granularity": dw} if cfg.kgate else {}
        nbin_wr, nbout_wr = nbin.write_port(**kw), nbout.write_port(**kw)
        for b, port in enumerate((nbin_wr, nbout_wr)):
            m.d.comb += [
                port.en.eq(Mux(busy, Mux(cur_out == b, out_en, 0),
                               Mux(nbin_load & (self.in_buf == b), all_lanes, 0))),
                port.addr.eq(Mux(busy, out_addr, nb_addr)),
                port.data.eq(Mux(busy, nfu3.out, nb_data)),
            ]
        m.d.sync += self.done.eq(write_end)
        with m.If(write_end):
            m.d.sync += busy.eq(0)

        rd_ports = [buf.read_port() for buf in bufs]
        rd_sel = Signal()
        m.d.sync += rd_sel.eq(self.out_buf)
        m.d.comb += [p.addr.eq(self.rd_addr) for p in rd_ports]
        m.d.comb += self.rd_data.eq(Mux(rd_sel, rd_ports[1].data, rd_ports[0].data))

        # Counters, reset by start.
        with m.If(starting):
            m.d.sync += [self.cycles.eq(1), self.steps.eq(0), self.mults.eq(0)]
        with m.Elif(busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(step.valid):
            m.d.sync += self.steps.eq(self.steps + 1)
            with m.If(is_mac):
                m.d.sync += self.mults.eq(self.mults + tn * ti)
        m.d.comb += self.sat_events.eq(nfu3.sat_events)
        return m

    def _kgate_path(self, m, cur, step, sb_word, starting, is_mac):
        """Method A: zero the synapses of lanes whose kernel misses the tap; count them."""
        cfg = self.cfg
        m.submodules.kgate = gate = KernelGate(cfg)
        m.d.comb += [gate.valid.eq(step.valid), gate.first.eq(step.first), gate.k.eq(cur.k),
                     gate.lane_k.eq(cur.lane_k)]
        # The SB word of step S reaches NFU-1 in S+1, so the lane enables follow one cycle later.
        lane_en = Signal(cfg.tn)
        m.d.sync += lane_en.eq(gate.lane_en)
        width = cfg.ti * cfg.dw
        gated_word = Cat(*(Mux(lane_en[j], sb_word[j * width:(j + 1) * width], 0)
                           for j in range(cfg.tn)))
        with m.If(starting):
            m.d.sync += self.gated.eq(0)
        with m.Elif(step.valid & is_mac):
            m.d.sync += self.gated.eq(self.gated + gate.gated * cfg.ti)
        return gated_word

    def _perm_path(self, m, cur, step, sb_word, loads):
        """Method C: gather the step's synapses from ``s``; return the NFU-1 synapse word.

        Adds the write ports of ``s`` and of the per-row parameters to ``loads``.
        """
        cfg = self.cfg
        m.submodules.perm_gen = gen = PermAddrGen(cfg)
        m.submodules.perm_sb = psb = PermSB(cfg)
        params = Memory(shape=unsigned(perm_param_width(cfg)), depth=cfg.bias_depth, init=[])
        m.submodules.perm_params = params
        loads += [(LoadSel.PERM_PARAM, params.write_port(), 0), (LoadSel.PERM_S, psb.write, 0)]
        # Asynchronous read: the (a, b) of output tile o are needed in the step's own cycle.
        params_rd = params.read_port(domain="comb")
        m.d.comb += [
            params_rd.addr.eq(step.bias_addr),
            gen.mode.eq(cur.perm), gen.n.eq(cur.n_in), gen.params.eq(params_rd.data),
            gen.indices.eq(sb_word), gen.first.eq(step.first), gen.step.eq(step.valid),
            psb.addr.eq(gen.addr), psb.en.eq(step.valid & (cur.perm != Perm.NONE)),
        ]
        perm_on = Signal()
        m.d.sync += perm_on.eq(cur.perm != Perm.NONE)
        return Mux(perm_on, psb.data, sb_word)

    def _ikr_path(self, m, cur, seq, starting, bufs, cur_in, nfu1, loads):
        """Method B: IKR conv layers (``desc.ikr_n != 0``) run on :class:`IkrUnit`.

        Returns the steps the pipeline takes from then on: the IKR unit's while an IKR layer
        runs, the dense sequencer's (``seq``) otherwise (:func:`select_steps`). Adds the
        write ports of the pattern table and the index memory to ``loads``. Each of the
        unit's row reads has a port on both neuron buffers (``bufs``); ``cur_in`` picks.
        """
        cfg = self.cfg
        m.submodules.ikr = ikr = IkrUnit(cfg)
        is_ikr = self.desc.ikr_n != 0
        # The dense sequencer must stay idle during an IKR layer (this overrides its start).
        m.d.comb += [seq.run.start.eq(starting & ~is_ikr),
                     ikr.run.start.eq(starting & is_ikr), ikr.run.desc.eq(self.desc)]
        loads += [(LoadSel.IKR_INDEX, ikr.index, 0), (LoadSel.IKR_TABLE, ikr.table, 0)]
        for r in range(cfg.ikr.kmax):
            ports = [buf.read_port() for buf in bufs]
            for port in ports:
                m.d.comb += [port.addr.eq(ikr.nbin_addr[r]), port.en.eq(ikr.nbin_en[r])]
            m.d.comb += ikr.nbin_data[r].eq(Mux(cur_in, ports[1].data, ports[0].data))
        ikr_mode = cur.ikr_n != 0
        m.d.comb += [nfu1.lane_neurons.eq(ikr.lane_neurons), nfu1.lane_sel.eq(ikr_mode)]
        return select_steps(m, ikr_mode, seq.step, ikr.step)
