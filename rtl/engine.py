"""The dense layer engine: buffers, load interface, sequencer, NFU-1/2/3 and counters."""

from amaranth.hdl import Cat, MemoryData, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.config import as_pass
from slimnfu.contract import (COUNTER_BITS, RD_LATENCY, LoadSel, Mode, Perm, bits_for,
                              descriptor_layout, load_addr_width, load_data_width,
                              load_sel_width, perm_addr_bits, perm_param_width)
from slimnfu.rtl._params import check_config, delay
from slimnfu.rtl.nfu1 import NFU1
from slimnfu.rtl.nfu2 import NFU2
from slimnfu.rtl.nfu3 import NFU3
from slimnfu.rtl.sequencer import Sequencer
from slimnfu.rtl.ikr_lane_unit import IkrLaneUnit
from slimnfu.rtl.ikr_unit import IkrUnit, select_steps
from slimnfu.rtl.perm_addr import PermAddrGen
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
    ``in_buf = 0, out_buf = 1`` (the ports' defaults) is the classic NBin/NBout engine. With
    ``ikr.lanes`` each buffer is ``ti`` lane memories with a read address each
    (:meth:`lane_buffers`), and IKR conv layers run on
    :class:`slimnfu.rtl.ikr_lane_unit.IkrLaneUnit`.

    Pipeline, for a step issued by the sequencer in cycle ``S``: the step register ``S+1``
    (``T``; :attr:`STEP_STAGES`); NBin/SB read ``R = T + perm_stages(cfg, desc)`` (0 but for
    a ``perm_affine`` pass on a config whose permutation address generator has more stages
    than :attr:`PERM_AHEAD`; such a pass reads each SB bank at its lane's registered address
    into ``s``, which every bank holds), their
    block RAM output register
    ``R+2``
    (:attr:`READ_STAGES`); the NFU-1 operands (padding, IKR taps, kernel gating,
    permuted synapses) enter NFU-1's operand registers in ``R+2`` and the products appear
    :meth:`NFU1.latency` cycles later; NFU-2's adder tree and accumulator take
    :meth:`NFU2.latency` cycles (the tree's stages follow ``ti``), NFU-3's requantisation and
    activation :meth:`NFU3.latency`; NBout is written in ``S + write_delay(cfg)``. The bias
    is read so that its registered word meets the step at NFU-2. Steps are issued back to
    back, so a pass of ``N`` steps takes ``N + latency(cfg, desc)`` cycles. The stage counts,
    and so :meth:`latency`, are derived from the components' own, never typed in.

    A ``perm_affine`` pass's steps enter the generator ahead of the sequencer's: the engine
    walks them itself (:meth:`_affine_steps`, an FC pass's ``ci_tiles`` steps per output tile
    from the descriptor), up to :attr:`PERM_AHEAD` cycles ahead, so the pass waits only for
    the generator's stages beyond that (:meth:`affine_wait`; none on ``tiny``). Where it waits,
    the step register feeds a delay line of that many stages, and a pass picks its output
    (affine) or the
    step register itself (any other pass) as its step at ``R``, with a select registered from
    the latched descriptor; every later stage counts from ``R``. Only an affine pass's steps
    enter that line valid, so no other pass sees a step of the pass before it in the line;
    and passes never overlap (``done`` follows the last step's NBout write, so every step of
    a pass has left the pipeline before the next ``start``), so an affine pass never sees one
    either. With ``cfg.perm`` SB is a bank per multiplier (``tn*ti`` memories of ``dw`` bits,
    the block RAMs SB takes anyway), so that an affine pass reads each at an address of its
    own; every other pass, a ``perm_index`` pass too (the compiler loads its gathered
    weights, :meth:`slimnfu.formats.perm.PermIndexFormat.passes`), reads them all at the
    sequencer's. The kernel gate and the IKR unit's operands (conv passes, never permuted)
    count from ``R``. An IKR pass's steps come
    from the IKR unit's registers, :meth:`ikr_stages` cycles after the slot cycle its
    sequencer counts them from, so only an IKR pass pays those.

    Handshake: ``start`` (while idle) latches ``desc``; ``busy`` is high from the next cycle
    and falls in the cycle ``done`` pulses, one cycle after the last NBout write. In that cycle
    the counters hold their final values: ``cycles`` is the number of clock edges from the
    ``start`` cycle to the ``done`` cycle (``done_cycle - start_cycle``). All counters are reset
    by ``start``. NBout reads (``rd_addr`` -> ``rd_data`` :data:`slimnfu.contract.RD_LATENCY`
    cycles later) are taken while
    idle only: they share each neuron buffer's one read port with the pipeline (a second read
    port would double the buffer's block RAMs). With ``cfg.ikr`` each buffer is
    :meth:`buffer_copies` copies, all written alike, so that an IKR layer's window rows have
    read ports of their own: row ``r`` on copy ``r // 2``, an odd row on the copy's write
    port (its address is the row's while the buffer is the running IKR layer's input, which
    is never written then), so every block RAM port is used. Loads (``load_en``) into the
    weight memories are taken at any time, so a controller can stream the next layer's words
    while a layer runs; it must not write a memory the running layer reads before the layer
    has read it (:meth:`slimnfu.contract.Program.load_plan` says how the accelerator keeps to
    that).
    Neuron-buffer writes, an ``NBIN`` load or the ``nb_*`` port (``nb_en``, ``nb_addr``,
    ``nb_data``: the same write beside the load port, so a controller can fill the buffer
    while it streams weights), are taken while idle only and write buffer ``in_buf``;
    ``rd_addr`` reads buffer ``out_buf`` (the port values, not the latched ones; ``rd_data``
    follows the ``out_buf`` of the cycle of its ``rd_addr``). The load port is decoded into
    one :class:`slimnfu.rtl.signatures.LoadSignature` write port per memory (``load_sel``
    picks it); the pipeline takes the sequencer's :class:`slimnfu.rtl.signatures.StepSignature`.

    Parameters
    ----------
    cfg : AccelConfig
    """

    #: The cycle after the ``start`` cycle (0) in which the first step is issued: the
    #: sequencer's setup (``Sequencer.SETUP_CYCLES`` = 12) and one.
    FIRST_STEP = Sequencer.SETUP_CYCLES + 1
    #: The step register between the sequencer and the buffers' read addresses.
    STEP_STAGES = 1
    #: The block RAM read and its output register, before the NFU-1 operands.
    READ_STAGES = 2
    #: Cycles by which a ``perm_affine`` pass's steps can enter the permutation address
    #: generator ahead of their ``T``: the engine walks them itself from the ``start`` cycle
    #: (from ``desc``; a register, then the output tile's parameters' block RAM read and its
    #: register), so the first is on the generator's inputs in cycle 3, its ``T`` being
    #: ``FIRST_STEP + STEP_STAGES``.
    PERM_AHEAD = FIRST_STEP + STEP_STAGES - 3

    @classmethod
    def buffer_copies(cls, cfg):
        """Block RAM copies of each neuron buffer, all written alike: 1, or with ``cfg.ikr``
        ``ceil(cfg.ikr.kmax / 2)``, a copy for every two IKR window rows (its two ports)."""
        return -(-cfg.ikr.kmax // 2) if cfg.ikr and not cfg.ikr.lanes else 1

    @classmethod
    def lane_buffers(cls, cfg):
        """Whether each neuron buffer is ``ti`` lane memories of ``dw`` bits with a read
        address each (``ikr.lanes``: the lane IKR unit's lanes read their own taps; the same
        block RAMs as one memory of ``ti*dw`` bits)."""
        return bool(cfg.ikr and cfg.ikr.lanes)

    @classmethod
    def perm_stages(cls, cfg, desc):
        """For a ``perm_affine`` pass ``desc`` (:class:`PassDesc` or :class:`LayerDesc`;
        ``desc.perm == "affine"``, which needs ``cfg.perm``), the cycles its steps wait for
        the permutation address generator: its pipeline (:meth:`PermAddrGen.latency`) less
        the :attr:`PERM_AHEAD` cycles by which the engine feeds it the pass's steps ahead of
        the sequencer (0 on ``tiny``, whose generator takes 9 stages); NBin and SB are read
        that many cycles after ``T``, beside the ``s`` banks it addresses. Else 0 (a
        ``perm_index`` pass's addresses come from index words read ahead of its steps)."""
        return cls.affine_wait(cfg) if cfg.perm and as_pass(desc).perm == "affine" else 0

    @classmethod
    def affine_wait(cls, cfg):
        """:meth:`perm_stages` of a ``perm_affine`` pass on ``cfg`` (which has ``perm``)."""
        return max(0, PermAddrGen.latency(cfg, cls.PERM_AHEAD) - cls.PERM_AHEAD)

    @classmethod
    def ikr_stages(cls, cfg, desc):
        """For an IKR pass ``desc`` (``desc.ikr_n > 0``, which needs ``cfg.ikr``), the IKR
        sequencer's output registers (:attr:`IkrUnit.OUTPUT_STAGES`): its steps reach the
        step register that many cycles after their slot cycle; else 0."""
        if not (cfg.ikr and as_pass(desc).ikr_n):
            return 0
        return IkrLaneUnit.OUTPUT_STAGES if cfg.ikr.lanes else IkrUnit.OUTPUT_STAGES

    @classmethod
    def operand_stage(cls, cfg, desc):
        """Cycles from ``T`` to the NFU-1 operand registers in pass ``desc``:
        :meth:`perm_stages` and the block RAM read stages."""
        return cls.perm_stages(cfg, desc) + cls.READ_STAGES

    @classmethod
    def write_delay(cls, cfg, desc):
        """A step of pass ``desc`` issued in cycle ``S`` writes NBout in cycle
        ``S + write_delay(cfg, desc)``."""
        return (cls.ikr_stages(cfg, desc) + cls.STEP_STAGES + cls.operand_stage(cfg, desc)
                + NFU1.latency(cfg) + NFU2.latency(cfg) + NFU3.latency(cfg))

    @classmethod
    def latency(cls, cfg, desc):
        """``cycles == desc.nfu_cycles(cfg) + latency(cfg, desc)`` for pass ``desc`` of ``cfg``.

        ``done`` pulses one cycle after the last step's NBout write:
        ``FIRST_STEP + write_delay(cfg, desc)``. Only a ``perm_affine`` pass pays
        :meth:`perm_stages`, only an IKR pass :meth:`ikr_stages`.
        """
        return cls.FIRST_STEP + cls.write_delay(cfg, desc)

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        self.addr_bits = load_addr_width(cfg)
        # The neuron buffers' storage (NBin, NBout), per block RAM copy (buffer_copies): a
        # simulation reads them with ctx.get while the layer runs, when rd_addr cannot (its
        # port is the pipeline's). The copies are written alike, so copy 0 (buffers) holds it.
        # With lane_buffers, buffer_data[b] is buffer b's ti lane memories instead (lane i:
        # bits i*dw ..) and buffers is None.
        if self.lane_buffers(cfg):
            self.buffer_data = tuple(
                tuple(MemoryData(shape=unsigned(cfg.dw), depth=depth, init=[])
                      for _ in range(cfg.ti))
                for depth in (cfg.nbin_depth, cfg.nbout_depth))
            self.buffers = None
        else:
            self.buffer_data = tuple(
                tuple(MemoryData(shape=unsigned(width), depth=depth, init=[])
                      for _ in range(self.buffer_copies(cfg)))
                for width, depth in ((cfg.ti * cfg.dw, cfg.nbin_depth),
                                     (cfg.tn * cfg.dw, cfg.nbout_depth)))
            self.buffers = tuple(copies[0] for copies in self.buffer_data)
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
        lanes = self.lane_buffers(cfg)

        def neuron_buffer(b, name):
            # one memory, or with lane buffers the ti lane memories
            if not lanes:
                m.submodules[name] = mem = Memory(data=self.buffers[b])
                return mem
            mems = [Memory(data=lane) for lane in self.buffer_data[b]]
            for i, mem in enumerate(mems):
                m.submodules[f"{name}_lane{i}"] = mem
            return mems

        nbin = neuron_buffer(0, "nbin")
        # SB is banked per output lane (tn banks of ti*dw bits at the same address): one
        # 4096-bit memory (diannao) is beyond what amaranth.sim can compile. With cfg.perm,
        # per multiplier (tn*ti banks of dw bits, the same block RAMs): a perm_affine pass
        # reads each at an address of its own, every bank holding the common sequence s.
        sb_banks = []
        bank_width = dw if cfg.perm else ti * dw
        for j in range(tn * ti if cfg.perm else tn):
            bank = Memory(shape=unsigned(bank_width), depth=cfg.sb_depth, init=[])
            m.submodules[f"sb{j}"] = bank
            sb_banks.append(bank)
        m.submodules.bias = bias = Memory(shape=unsigned(tn * cfg.acc), depth=cfg.bias_depth,
                                          init=[])
        nbout = neuron_buffer(1, "nbout")
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
        loads += [(LoadSel.SB, bank.write_port(), j * bank_width)
                  for j, bank in enumerate(sb_banks)]
        loads.append((LoadSel.PWL, nfu3.pwl, 0))
        # One read port per neuron buffer, shared by the pipeline (while busy; an IKR layer's
        # window row 0) and rd_addr (while idle): each further read port would be another
        # copy of the buffer's block RAMs. With lane buffers, one per lane memory (the lane
        # IKR unit gives each its own address).
        nb_rds = [[lane.read_port() for lane in buf] if lanes else buf.read_port()
                  for buf in bufs]
        step = seq.step
        if lanes:
            step, lane_read = self._ikr_lanes_path(m, cur, seq, starting, loads)
            nb_copies = None
        elif cfg.ikr:
            step, lane_neurons, ikr_read, nb_copies = self._ikr_path(
                m, cur, seq, starting, busy, bufs, cur_in, nfu1, loads)
        else:
            nb_copies = [[(buf, None)] for buf in bufs]

        def delayed(value, stages, name, reset_less=False):
            return delay(m, value, stages, f"{name}_d", reset_less)

        # Stage offsets from R, the cycle the step reads NBin and SB: T, or for a perm_affine
        # pass T + affine_wait(cfg) (the s banks are addressed then).
        operands = self.READ_STAGES
        nfu2_in = operands + NFU1.latency(cfg)
        nfu3_in = nfu2_in + NFU2.latency(cfg)
        write = nfu3_in + NFU3.latency(cfg)

        # Stage S -> T: the step register.
        st = step.signature.create(path=("step_r",))
        for name in step.signature.members:
            m.d.sync += getattr(st, name).eq(getattr(step, name))

        # Stage T -> R: an affine pass's steps wait for what the generator's lead does not
        # hide (perm_stages; none on tiny); any other pass's take the step register itself.
        # Only an affine pass's steps enter the line valid, and the selects (registered from
        # the latched descriptor) are steady long before a pass's first step (FIRST_STEP),
        # so neither path carries another pass's steps.
        rt = st
        if cfg.perm:
            affine_on = Signal()
            m.d.sync += affine_on.eq(cur.perm == Perm.AFFINE)
            wait = self.affine_wait(cfg)
            if wait:
                rt = step.signature.create(path=("step_at_read",))
                for name in step.signature.members:
                    value = getattr(st, name)
                    if name == "valid":
                        value = value & affine_on
                    late = delayed(value, wait, f"{name}_perm")
                    m.d.comb += getattr(rt, name).eq(Mux(affine_on, late, getattr(st, name)))

        # Stage R: the step addresses NBin and SB; the bias word is read so that its output
        # register meets the step at NFU-2.
        is_mac = cur.mode == Mode.MAC
        bias_rd = bias.read_port()
        bias_read = nfu2_in - 2
        assert bias_read >= 0
        nb_addr_busy, nb_en_busy = rt.nbin_addr, rt.valid & ~rt.pad
        if lanes:
            # an IKR layer's lanes read every cycle at their own taps (padding: zeroed below)
            ikr_mode, lane_addr, lane_pad = lane_read
            for ports in nb_rds:
                for i, port in enumerate(ports):
                    addr = Mux(ikr_mode, lane_addr[i], nb_addr_busy)
                    m.d.comb += [port.addr.eq(Mux(busy, addr, self.rd_addr)),
                                 port.en.eq(~busy | ikr_mode | nb_en_busy)]
        elif cfg.ikr:
            # an IKR layer's window row 0 reads every cycle (the unit's ports need no enable)
            ikr_mode, ikr_addr, ikr_unit = ikr_read
            nb_addr_busy = Mux(ikr_mode, ikr_addr, nb_addr_busy)
            nb_en_busy = ikr_mode | nb_en_busy
        if not lanes:
            for port in nb_rds:
                m.d.comb += [port.addr.eq(Mux(busy, nb_addr_busy, self.rd_addr)),
                             port.en.eq(~busy | nb_en_busy)]
        m.d.comb += [
            bias_rd.addr.eq(delayed(rt.bias_addr, bias_read, "bias_addr")),
            bias_rd.en.eq(delayed(rt.valid & is_mac & rt.first, bias_read, "bias_en")),
        ]
        synapses = []
        sb_en = rt.valid & is_mac
        sb_addrs = [rt.sb_addr] * len(sb_banks)
        if cfg.perm:
            lane_addr, keep = self._perm_path(m, cur, starting, rt, loads)
            ab = perm_addr_bits(cfg)
            # a perm_affine pass reads each bank at its lane's address into s
            sb_addrs = [Mux(affine_on, lane_addr[l * ab:(l + 1) * ab], rt.sb_addr)
                        for l in range(tn * ti)]
        for bank, addr in zip(sb_banks, sb_addrs):
            port = bank.read_port()
            m.d.comb += [port.addr.eq(addr), port.en.eq(sb_en)]
            synapses.append(port.data)
        # the block RAM output register (the read and it: READ_STAGES)
        synapse_word = delayed(Cat(*synapses), self.READ_STAGES - 1, "sb_data", reset_less=True)

        # Load interface: one word per cycle into the memory load_sel names (NBin: while idle).
        idle_load = self.load_en & ~busy
        for sel, port, lsb in loads:
            m.d.comb += [port.en.eq(self.load_en & (self.load_sel == sel)),
                         port.addr.eq(self.load_addr), port.data.eq(self.load_data[lsb:])]

        # Stage R+1 -> R+2 (R: the read): the block RAM output registers, one
        # per buffer; cur_in (constant while the layer runs) selects after them, so no logic
        # sits behind the block RAMs.
        nbin_words = [delayed(Cat(*(p.data for p in port)) if lanes else port.data,
                              self.READ_STAGES - 1, f"nb{b}_data", reset_less=True)
                      for b, port in enumerate(nb_rds)]
        nbin_word = Mux(cur_in, nbin_words[1], nbin_words[0])
        if cfg.ikr and not lanes:
            m.d.comb += [ikr_unit.nbin_data[b][0].eq(word) for b, word in enumerate(nbin_words)]
        if cfg.kgate:
            synapse_word = self._kgate_path(m, cur, rt, synapse_word, starting, is_mac,
                                            operands)

        # Stage R+2 (R + operands): the NFU-1 operands (padding positions read as zero).
        pad, valid = delayed(rt.pad, operands, "pad"), delayed(rt.valid, operands, "valid")
        neurons = Signal(ti * dw)
        if cfg.perm:
            # the padding lanes of a re-laid perm_affine pass's last channel tile read zero
            keep = delayed(keep, operands, "perm_keep")
            nbin_word = Cat(*(Mux(keep[i], nbin_word[i * dw:(i + 1) * dw], 0)
                              for i in range(ti)))
        if lanes:
            # each lane's own padding flag in an IKR layer (the dense steps' pad is low then)
            lane_pad = delayed(Mux(ikr_mode, lane_pad, 0), operands, "lane_pad")
            nbin_word = Cat(*(Mux(lane_pad[i], 0, nbin_word[i * dw:(i + 1) * dw])
                              for i in range(ti)))
        m.d.comb += neurons.eq(Mux(pad, 0, nbin_word))
        m.d.comb += [nfu1.neurons.eq(neurons), nfu1.synapses.eq(synapse_word),
                     nfu1.en.eq(valid & is_mac)]
        if cfg.ikr and not lanes:
            # one cycle after the step (T), IkrUnit.WINDOW_STAGES registers of it in the unit:
            # an IKR pass is a conv pass, never permuted, so its R is T
            m.d.comb += nfu1.lane_neurons.eq(
                delayed(lane_neurons, self.STEP_STAGES + operands - 1 - IkrUnit.WINDOW_STAGES,
                        "lane_neurons"))

        # NFU-2 accumulates.
        m.d.comb += [
            nfu2.mode.eq(cur.mode),
            nfu2.valid.eq(delayed(rt.valid, nfu2_in, "valid")),
            nfu2.first.eq(delayed(rt.first, nfu2_in, "first")),
            nfu2.last.eq(delayed(rt.last, nfu2_in, "last")),
            nfu2.products.eq(nfu1.products),
            nfu2.neurons.eq(delayed(neurons, nfu2_in - operands, "neurons")),
            nfu2.bias.eq(delayed(bias_rd.data, 1, "bias", reset_less=True)),
        ]

        # NFU-3 requantises and activates.
        m.d.comb += [
            nfu3.acc.eq(nfu2.acc), nfu3.in_valid.eq(nfu2.out_valid),
            nfu3.lane_mask.eq(delayed(rt.lane_mask, nfu3_in, "lane_mask")),
            nfu3.shift.eq(cur.shift), nfu3.act.eq(cur.act), nfu3.seg_shift.eq(cur.seg_shift),
            nfu3.clear.eq(starting),
        ]

        # NBout write; done one cycle after the layer's last write.
        # One write port per neuron buffer: the pipeline's writes into buffer cur_out while
        # busy, NBin loads into buffer in_buf while idle.
        write_end = nfu3.out_valid & delayed(rt.end, write, "end")
        out_addr = delayed(rt.nbout_addr, write, "nbout_addr")
        nbin_load = (idle_load & (self.load_sel == LoadSel.NBIN)) | (self.nb_en & ~busy)
        nb_addr = Mux(self.nb_en, self.nb_addr, self.load_addr)
        nb_data = Mux(self.nb_en, self.nb_data, self.load_data[:ti * dw])
        if cfg.kgate:
            # centre-tap passes may fill part of a tile: one write enable per lane
            mask = delayed(rt.write_mask, write, "write_mask")
            out_en, all_lanes = Mux(nfu3.out_valid, mask, 0), (1 << tn) - 1
        else:
            out_en, all_lanes = nfu3.out_valid, 1
        # With cfg.ikr each buffer is several copies (_ikr_path), all written alike, and a
        # copy whose write port also reads an IKR window row takes that row's address while
        # the buffer is the running IKR layer's input.
        kw = {"granularity": dw} if cfg.kgate else {}
        if lanes:
            for b, buf in enumerate(bufs):
                en = Mux(busy, Mux(cur_out == b, out_en, 0),
                         Mux(nbin_load & (self.in_buf == b), all_lanes, 0))
                wdata = Mux(busy, nfu3.out, nb_data)
                for i, lane in enumerate(buf):
                    port = lane.write_port()
                    m.d.comb += [port.en.eq(en[i] if cfg.kgate else en),
                                 port.addr.eq(Mux(busy, out_addr, nb_addr)),
                                 port.data.eq(wdata[i * dw:(i + 1) * dw])]
        else:
            self._buffer_writes(m, bufs, nb_copies, kw, busy, cur_out, out_en, all_lanes,
                                nbin_load, out_addr, nb_addr, nb_data, nfu3)
        m.d.sync += self.done.eq(write_end)
        with m.If(write_end):
            m.d.sync += busy.eq(0)

        # rd_data: each buffer's word after its output register (RD_LATENCY cycles), so
        # nothing but that register loads the block RAM's outputs
        rd_sel = delay(m, self.out_buf, RD_LATENCY, "rd_sel")
        m.d.comb += self.rd_data.eq(Mux(rd_sel, nbin_words[1], nbin_words[0]))

        # Counters, reset by start.
        with m.If(starting):
            m.d.sync += [self.cycles.eq(1), self.steps.eq(0), self.mults.eq(0)]
        with m.Elif(busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        # a step is counted a cycle after it is issued (the last long before ``done``), so
        # that the counters' adds start from registers
        counted, counted_mac = Signal(), Signal()
        m.d.sync += [counted.eq(st.valid), counted_mac.eq(st.valid & is_mac)]
        with m.If(counted):
            m.d.sync += self.steps.eq(self.steps + 1)
        with m.If(counted_mac):
            m.d.sync += self.mults.eq(self.mults + tn * ti)
        m.d.comb += self.sat_events.eq(nfu3.sat_events)
        return m

    def _buffer_writes(self, m, bufs, nb_copies, kw, busy, cur_out, out_en, all_lanes,
                       nbin_load, out_addr, nb_addr, nb_data, nfu3):
        """The neuron buffers' write ports (one memory of ``ti*dw`` bits each, and its
        copies with ``cfg.ikr``): the pipeline's writes into buffer ``cur_out`` while busy,
        loads into ``in_buf`` while idle."""
        nbin, nbout = bufs
        nbin_wr, nbout_wr = nbin.write_port(**kw), nbout.write_port(**kw)
        for b, first in enumerate((nbin_wr, nbout_wr)):
            copies = [(first, nb_copies[b][0][1])]
            copies += [(buf.write_port(**kw), shared) for buf, shared in nb_copies[b][1:]]
            for port, shared in copies:
                addr = Mux(busy, out_addr, nb_addr)
                if shared is not None:
                    reading, row_addr, read_port = shared
                    addr = Mux(reading, row_addr, addr)
                    # the read takes the write port's own address signal: Yosys then puts
                    # both on one port of the copy's block RAMs
                    read_port.addr = port.addr
                m.d.comb += [
                    port.en.eq(Mux(busy, Mux(cur_out == b, out_en, 0),
                                   Mux(nbin_load & (self.in_buf == b), all_lanes, 0))),
                    port.addr.eq(addr),
                    port.data.eq(Mux(busy, nfu3.out, nb_data)),
                ]

    def _kgate_path(self, m, cur, step, sb_word, starting, is_mac, stage):
        """Method A: zero the synapses of lanes whose kernel misses the tap; count them.

        ``sb_word`` is the SB word of ``step`` (at ``R``) in ``R + stage``.
        """
        cfg = self.cfg
        m.submodules.kgate = gate = KernelGate(cfg)
        m.d.comb += [gate.valid.eq(step.valid), gate.first.eq(step.first), gate.k.eq(cur.k),
                     gate.lane_k.eq(cur.lane_k)]
        # The lane enables follow the step to the SB word's stage (the gate's own register
        # is the first of them; stage >= KernelGate.LATENCY).
        lane_en = delay(m, gate.lane_en, stage - KernelGate.LATENCY, "lane_en_d")
        width = cfg.ti * cfg.dw
        gated_word = Cat(*(Mux(lane_en[j], sb_word[j * width:(j + 1) * width], 0)
                           for j in range(cfg.tn)))
        # Counted KernelGate.LATENCY + 2 cycles after the step (no lane is off for no step),
        # long before ``done``: the lane compares, the count and the counter's add each take
        # a cycle of their own.
        off = delay(m, gate.lane_off, 1, "lane_off_d")
        gated = delay(m, sum(off[j] for j in range(cfg.tn)), 1, "gated_lanes")
        with m.If(starting):
            m.d.sync += self.gated.eq(0)
        with m.Elif(is_mac):
            m.d.sync += self.gated.eq(self.gated + gated * cfg.ti)
        return gated_word

    def _perm_path(self, m, cur, starting, read_step, loads):
        """Method C: a ``perm_affine`` pass's SB addresses. Returns the generator's lane
        addresses into ``s`` (``tn*ti`` of :func:`~slimnfu.contract.perm_addr_bits` bits,
        registered, for the step at ``R``: the pass reads each SB bank at its lane's address,
        every bank holding ``s``) and the step's input lanes to keep (``ti`` bits; a re-laid
        pass, ``desc.perm_hw > 1``, drops the lanes ``>= perm_lanes`` of the steps from NBin
        word ``perm_tail`` on: the padding channels of the conv output's last tile).
        ``read_step`` is the step in ``R``; an affine pass's steps enter the generator ahead
        of the sequencer's (:meth:`_affine_steps`).

        Adds the write port of the per-row parameters to ``loads``.
        """
        cfg = self.cfg
        m.submodules.perm_gen = gen = PermAddrGen(cfg, self.PERM_AHEAD)
        params = Memory(shape=unsigned(perm_param_width(cfg)), depth=cfg.bias_depth, init=[])
        m.submodules.perm_params = params
        loads.append((LoadSel.PERM_PARAM, params.write_port(), 0))
        # The output tile's parameters are read with its step (block RAM), then registered,
        # so they meet the step on the generator's inputs with a register in front.
        ahead_valid, ahead_first, ahead_tile = self._affine_steps(m, cur, starting)
        params_rd = params.read_port()
        params_q = Signal.like(params_rd.data, name="perm_params_q")
        gen_first = delay(m, ahead_first, 2, "perm_gen_first")
        gen_step = delay(m, ahead_valid, 2, "perm_gen_step")
        m.d.sync += params_q.eq(params_rd.data)
        m.d.comb += [
            params_rd.addr.eq(ahead_tile), params_rd.en.eq(ahead_valid),
            gen.affine.eq(cur.perm == Perm.AFFINE), gen.n.eq(cur.n_in), gen.hw.eq(cur.perm_hw),
            gen.params.eq(params_q), gen.first.eq(gen_first), gen.step.eq(gen_step),
        ]
        keep = Signal(cfg.ti)
        tail = read_step.nbin_addr >= cur.perm_tail
        m.d.comb += keep.eq(Cat(*(~tail | (i < cur.perm_lanes) for i in range(cfg.ti))))
        return gen.addr, keep

    def _affine_steps(self, m, cur, starting):
        """A ``perm_affine`` pass's steps, walked ahead of the sequencer for the address
        generator: an FC pass issues ``ci_tiles`` steps per output tile, ``co_tiles`` tiles,
        one a cycle from ``FIRST_STEP`` on, so the walk needs no more than the descriptor's
        tile counts. Step ``k`` is here (``valid``, ``first``: the first of its output tile,
        ``tile``: the output tile, for the parameters' read) in cycle ``T_k + affine_wait -
        latency - 1`` (``T_k``: its cycle in the step register), so that, a register later
        on the generator's inputs, its addresses are in the generator's register in its
        ``R``. Every value is a register: the ends of the loops are flags registered a step
        ahead."""
        cfg = self.cfg
        # step 0 is loaded in cycle ``lag`` (from ``desc`` itself in the start cycle, after
        # that from the latched descriptor): its R (T + affine_wait, T = PERM_AHEAD + 3) less
        # the generator's stages and the three registers in front of them (the walk's, the
        # parameters' block RAM read and its register)
        lag = self.PERM_AHEAD + self.affine_wait(cfg) - PermAddrGen.latency(cfg, self.PERM_AHEAD)
        assert lag >= 0
        go = delay(m, starting, lag, "affine_go_d")
        desc = self.desc if lag == 0 else cur
        valid, first = Signal(name="affine_valid"), Signal(name="affine_first")
        t, tile = Signal.like(cur.ci_tiles, name="affine_t"), Signal.like(cur.co_tiles,
                                                                         name="affine_tile")
        t_last, tile_last = Signal(name="affine_t_last"), Signal(name="affine_tile_last")
        with m.If(go & (desc.perm == Perm.AFFINE)):
            m.d.sync += [valid.eq(1), first.eq(1), t.eq(0), tile.eq(0),
                         t_last.eq(desc.ci_tiles == 1), tile_last.eq(desc.co_tiles == 1)]
        with m.Elif(valid):
            with m.If(t_last):
                m.d.sync += [t.eq(0), first.eq(1), tile.eq(tile + 1),
                             t_last.eq(cur.ci_tiles == 1), tile_last.eq(tile + 2 == cur.co_tiles)]
                with m.If(tile_last):
                    m.d.sync += valid.eq(0)
            with m.Else():
                m.d.sync += [t.eq(t + 1), first.eq(0), t_last.eq(t + 2 == cur.ci_tiles)]
        return valid, first, tile

    def _ikr_lanes_path(self, m, cur, seq, starting, loads):
        """Method B with ``ikr.lanes``: IKR conv layers (``desc.ikr_n != 0``) run on
        :class:`IkrLaneUnit`.

        Returns the steps the pipeline takes from then on (the unit's while an IKR layer
        runs, the dense sequencer's otherwise: :func:`select_steps`) and ``(ikr_mode,
        lane_addr, lane_pad)``: whether an IKR layer runs, and each input lane's NBin word and
        padding flag, registered beside the step register (at ``T``, which is ``R`` in a conv
        pass). Adds the write ports of the tap memory and the tap table to ``loads``.
        """
        m.submodules.ikr = ikr = IkrLaneUnit(self.cfg)
        is_ikr = self.desc.ikr_n != 0
        # The dense sequencer must stay idle during an IKR layer (this overrides its start).
        m.d.comb += [seq.run.start.eq(starting & ~is_ikr),
                     ikr.run.start.eq(starting & is_ikr), ikr.run.desc.eq(self.desc)]
        loads += [(LoadSel.IKR_INDEX, ikr.taps, 0), (LoadSel.IKR_TABLE, ikr.table, 0)]
        # registered from the latched descriptor (steady long before the first step)
        ikr_mode = Signal()
        m.d.sync += ikr_mode.eq(cur.ikr_n != 0)
        bits = len(ikr.lane_addr[0])
        flat = delay(m, ikr.lane_addr.as_value(), self.STEP_STAGES, "lane_addr")
        lane_addr = [flat[i * bits:(i + 1) * bits] for i in range(self.cfg.ti)]
        lane_pad = delay(m, ikr.lane_pad, self.STEP_STAGES, "lane_pad_t")
        return select_steps(m, ikr_mode, seq.step, ikr.step), (ikr_mode, lane_addr, lane_pad)

    def _ikr_path(self, m, cur, seq, starting, busy, bufs, cur_in, nfu1, loads):
        """Method B: IKR conv layers (``desc.ikr_n != 0``) run on :class:`IkrUnit`.

        Returns the steps the pipeline takes from then on (the IKR unit's while an IKR layer
        runs, the dense sequencer's (``seq``) otherwise: :func:`select_steps`), the IKR
        unit's per-multiplier operands, one cycle after their step, ``(ikr_mode, address,
        unit)`` of window row 0, which reads through the pipeline's ports ``nb_rds`` (an IKR
        layer does not use them; the caller gives the unit their registered words), and the
        neuron buffers' copies: per buffer, ``(memory, shared)`` for each copy, copy 0 being
        ``bufs[b]``. Adds the write ports of the pattern table and the index memory to
        ``loads``.

        Window row ``r`` reads copy ``r // 2`` of both neuron buffers (:meth:`buffer_copies`
        copies, :attr:`buffer_data`): an even row (from 2) on a read port of its own, an odd
        row on the copy's write port (``shared``: ``(reading, address, read port)``, the
        caller makes the write port's address ``address`` while ``reading``, and the read
        port's address that same signal). Every read is always enabled (the unit takes a
        read only when it is valid and zeroes padding) and has a reset-less register after
        it; ``cur_in`` picks, after the unit's registers.
        """
        cfg = self.cfg
        m.submodules.ikr = ikr = IkrUnit(cfg)
        is_ikr = self.desc.ikr_n != 0
        # The dense sequencer must stay idle during an IKR layer (this overrides its start).
        m.d.comb += [seq.run.start.eq(starting & ~is_ikr),
                     ikr.run.start.eq(starting & is_ikr), ikr.run.desc.eq(self.desc)]
        loads += [(LoadSel.IKR_INDEX, ikr.index, 0), (LoadSel.IKR_TABLE, ikr.table, 0)]
        # The unit takes every row's words after a reset-less register (the block RAMs'
        # output registers, gen.primitive_registers); row 0's is the pipeline's own.
        assert IkrUnit.READ_STAGES == self.READ_STAGES
        copies = []
        for b, buf in enumerate(bufs):
            mems = [buf]
            for c, init in enumerate(self.buffer_data[b][1:], 1):
                mems.append(Memory(data=init))
                m.submodules[f"{('nbin', 'nbout')[b]}_copy{c}"] = mems[-1]
            # Buffer b is the running IKR layer's input: latched with desc, and only while
            # busy (idle loads into b keep their address). Invariant: a buffer is not written
            # while it is the running layer's input (the layer writes cur_out only, loads
            # wait for idle, and ProgramLayer refuses in_buf == out_buf for an IKR pass), so
            # an odd row may take the write port's address then.
            ikr_in = Signal(name=f"ikr_in_nb{b}")
            with m.If(starting):
                m.d.sync += ikr_in.eq(is_ikr & (self.in_buf == b))
            reading = busy & ikr_in
            shared = [None] * len(mems)
            for r in range(1, cfg.ikr.kmax):
                port = mems[r // 2].read_port()
                if r % 2:
                    shared[r // 2] = (reading, ikr.nbin_addr[r], port)
                else:
                    m.d.comb += port.addr.eq(ikr.nbin_addr[r])
                m.d.comb += ikr.nbin_data[b][r].eq(delay(m, port.data, self.READ_STAGES - 1,
                                                         f"ikr_nb{b}_{r}_data", True))
            copies.append(list(zip(mems, shared)))
        m.d.comb += ikr.nbin_buf.eq(cur_in)
        # registered from the latched descriptor (steady long before the first step,
        # FIRST_STEP): a register, not a compare, drives the row-0 read address selects
        ikr_mode = Signal()
        m.d.sync += ikr_mode.eq(cur.ikr_n != 0)
        m.d.comb += nfu1.lane_sel.eq(ikr_mode)
        return (select_steps(m, ikr_mode, seq.step, ikr.step), ikr.lane_neurons,
                (ikr_mode, ikr.nbin_addr[0], ikr), copies)
