"""The IKR unit: the IKR sequencer and the pattern decoder, as one block for the engine."""

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for, descriptor_layout, ikr_load_width
from slimnfu.rtl._params import check_config
from slimnfu.rtl.ikr_sequencer import IkrSequencer
from slimnfu.rtl.pattern_decoder import PatternDecoder

__all__ = ["IkrUnit", "STEP_SIGNALS", "select_steps"]

#: The step outputs the engine's pipeline takes from a sequencer.
STEP_SIGNALS = ("valid", "pad", "nbin_addr", "sb_addr", "bias_addr", "first", "last", "end",
                "nbout_addr", "lane_mask")


def select_steps(m, use_ikr, dense, ikr):
    """Step signals from ``ikr`` (an :class:`IkrUnit`) when ``use_ikr``, else from ``dense``.

    ``use_ikr`` comes from the latched descriptor, so it is constant while a layer runs. The
    IKR unit never asserts ``pad`` (padding is resolved in its window fill) and does not read
    NBin through the dense port.
    """
    out = {}
    for name in STEP_SIGNALS:
        sig = getattr(dense, name)
        sel = Signal.like(sig, name=f"step_{name}")
        other = getattr(ikr, name, None)
        m.d.comb += sel.eq(Mux(use_ikr, 0 if other is None else other, sig))
        out[name] = sel
    return SimpleNamespace(**out)


class IkrUnit(wiring.Component):
    """IKR conv layers on the layer engine: :class:`IkrSequencer` + :class:`PatternDecoder`.

    The engine starts this unit instead of the dense sequencer when ``desc.ikr_n != 0``,
    takes its step outputs (see :func:`select_steps`), gives it ``ikr_kmax`` extra NBin read
    ports (``nbin_addr[r]``, ``nbin_en[r]`` -> ``nbin_data[r]`` one cycle later) and feeds
    NFU-1 with ``lane_neurons`` (one operand per multiplier) instead of the shared ``ti``
    neurons. Loads: ``table_we``/``index_we`` with ``load_addr``/``load_data`` write the
    pattern table and the index memory (layouts in :class:`PatternDecoder`).

    Parameters
    ----------
    cfg : AccelConfig
        Needs ``cfg.ikr``.
    """

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        if not cfg.ikr:
            self._MustUse__silence = True
            raise ValueError(f"IkrUnit needs a config with ikr=True; {cfg.name!r} has ikr=False")
        kmax = cfg.ikr_kmax
        self.load_width = ikr_load_width(cfg)
        nbin_bits = bits_for(cfg.nbin_depth - 1)
        super().__init__({
            "start": In(1),
            "desc": In(descriptor_layout(cfg)),
            "busy": Out(1),
            "valid": Out(1),
            "sb_addr": Out(bits_for(cfg.sb_depth - 1)),
            "bias_addr": Out(bits_for(cfg.bias_depth - 1)),
            "first": Out(1),
            "last": Out(1),
            "end": Out(1),
            "nbout_addr": Out(bits_for(cfg.nbout_depth - 1)),
            "lane_mask": Out(cfg.tn),
            "nbin_addr": Out(data.ArrayLayout(unsigned(nbin_bits), kmax)),
            "nbin_en": Out(kmax),
            "nbin_data": In(data.ArrayLayout(unsigned(cfg.ti * cfg.dw), kmax)),
            "table_we": In(1),
            "index_we": In(1),
            "load_addr": In(bits_for(max(cfg.ikr_index_depth, kmax * kmax) - 1)),
            "load_data": In(self.load_width),
            "lane_neurons": Out(data.ArrayLayout(unsigned(cfg.dw), cfg.tn * cfg.ti)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.seq = seq = IkrSequencer(self.cfg)
        m.submodules.decoder = dec = PatternDecoder(self.cfg)
        m.d.comb += [seq.start.eq(self.start), seq.desc.eq(self.desc), self.busy.eq(seq.busy)]
        for name in ("valid", "sb_addr", "bias_addr", "first", "last", "end", "nbout_addr",
                     "lane_mask"):
            m.d.comb += getattr(self, name).eq(getattr(seq, name))
        m.d.comb += [
            self.nbin_addr.eq(seq.fill_addr), self.nbin_en.eq(seq.fill_en),
            dec.nbin_data.eq(self.nbin_data),
            dec.swap.eq(seq.swap), dec.fill_valid.eq(seq.fill_valid),
            dec.fill_col.eq(seq.fill_col), dec.fill_pad.eq(seq.fill_pad),
            dec.step.eq(seq.step), dec.idx_addr.eq(seq.idx_addr),
            dec.table_we.eq(self.table_we), dec.index_we.eq(self.index_we),
            dec.load_addr.eq(self.load_addr), dec.load_data.eq(self.load_data),
            self.lane_neurons.eq(dec.lane_neurons),
        ]
        return m
