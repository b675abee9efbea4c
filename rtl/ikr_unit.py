"""The IKR unit: the IKR sequencer and the pattern decoder, as one block for the engine."""

from amaranth.hdl import Module, Mux, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for
from slimnfu.rtl._params import check_config
from slimnfu.rtl.ikr_sequencer import IkrSequencer
from slimnfu.rtl.pattern_decoder import PatternDecoder
from slimnfu.rtl.signatures import RunSignature, StepSignature

__all__ = ["IkrUnit", "select_steps"]


def select_steps(m, use_ikr, dense, ikr):
    """The steps of ``ikr`` (an :class:`IkrUnit`'s) while ``use_ikr``, else of ``dense``.

    Returns a new interface of ``dense``'s :class:`StepSignature`. ``use_ikr`` comes from the
    latched descriptor, so it is constant while a layer runs. A member the IKR steps lack
    takes its ``init`` (:class:`StepSignature`): the IKR unit never pads (padding is resolved
    in its window fill), does not read NBin through the dense port and writes every lane.
    """
    out = dense.signature.create(path=("step",))
    for name, member in dense.signature.members.items():
        if name in ikr.signature.members:
            other = getattr(ikr, name)
        else:
            other = 0 if member.init is None else member.init
        m.d.comb += getattr(out, name).eq(Mux(use_ikr, other, getattr(dense, name)))
    return out


class IkrUnit(wiring.Component):
    """IKR conv layers on the layer engine: :class:`IkrSequencer` + :class:`PatternDecoder`.

    The engine starts this unit (``run``) instead of the dense sequencer when
    ``desc.ikr_n != 0`` and takes its ``step`` while such a layer runs, gives it ``ikr_kmax``
    NBin reads (``nbin_addr[r]`` -> ``nbin_data[r]`` :attr:`READ_STAGES` cycles later, after
    the block RAMs' output registers; always enabled: the decoder takes a read only with
    ``fill_valid`` and zeroes padding; row 0 on the pipeline's port, the others on the
    neuron buffers' copies, :meth:`slimnfu.rtl.engine.LayerEngine.buffer_copies`) and feeds
    NFU-1 with ``lane_neurons`` (one operand per multiplier) instead of the shared ``ti``
    neurons. ``table`` and ``index``
    write the pattern table and the index memory (layouts in :class:`PatternDecoder`).

    Parameters
    ----------
    cfg : AccelConfig
        Needs ``cfg.ikr``; the unit has ``cfg.ikr.kmax`` NBin read ports.

    Members
    -------
    run : In(RunSignature)
    step : Out(StepSignature)
        The IKR sequencer's steps: no ``nbin_addr`` or ``pad``, the operands come through
        ``lane_neurons``. They come :attr:`OUTPUT_STAGES` cycles after the slot cycle they
        belong to (:class:`IkrSequencer`).
    nbin_addr, nbin_data
        The window fill's read ports, on both neuron buffers (``nbin_data[b][r]``: buffer
        ``b``, row ``r``).
    nbin_buf : In(1)
        The buffer the layer reads; selects after the block RAMs' data is registered.
    table, index : In(LoadSignature)
    lane_neurons : Out(ArrayLayout(unsigned(dw), tn*ti))
    """

    #: The sequencer's register stages in front of the steps.
    OUTPUT_STAGES = IkrSequencer.OUTPUT_STAGES
    #: ``lane_neurons`` come this many cycles after the step's tap register (the decoder's
    #: split window select): ``lane_neurons`` for a step issued in cycle ``S`` (``step``) is
    #: valid in ``S + 1 + WINDOW_STAGES``.
    WINDOW_STAGES = PatternDecoder.WINDOW_STAGES
    #: ``nbin_data`` arrives this many cycles after ``nbin_addr``: the block RAM read and its
    #: output register, which the engine provides.
    READ_STAGES = PatternDecoder.READ_STAGES

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg, needs="ikr")
        kmax, nbin_bits = cfg.ikr.kmax, bits_for(cfg.nbin_depth - 1)
        super().__init__({
            "run": In(RunSignature.for_config(cfg)),
            "step": Out(StepSignature.for_config(cfg)),
            "nbin_addr": Out(data.ArrayLayout(unsigned(nbin_bits), kmax)),
            "nbin_data": In(data.ArrayLayout(data.ArrayLayout(unsigned(cfg.ti * cfg.dw), kmax),
                                             2)),
            "nbin_buf": In(1),
            **{name: In(sig) for name, sig in PatternDecoder.load_signatures(cfg).items()},
            "lane_neurons": Out(data.ArrayLayout(unsigned(cfg.dw), cfg.tn * cfg.ti)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.seq = seq = IkrSequencer(self.cfg)
        m.submodules.decoder = dec = PatternDecoder(self.cfg)
        wiring.connect(m, wiring.flipped(self.run), seq.run)
        wiring.connect(m, wiring.flipped(self.step), seq.step)
        wiring.connect(m, seq.window, dec.window)
        wiring.connect(m, wiring.flipped(self.table), dec.table)
        wiring.connect(m, wiring.flipped(self.index), dec.index)
        m.d.comb += [
            self.nbin_addr.eq(seq.fill_addr),
            dec.nbin_data.eq(self.nbin_data), dec.nbin_buf.eq(self.nbin_buf),
            self.lane_neurons.eq(dec.lane_neurons),
        ]
        return m
