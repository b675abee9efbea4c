"""The gateware's interfaces: starting a layer, the steps a sequencer issues, a memory's write
port and the IKR window control.

Each is a :class:`amaranth.lib.wiring.Signature` built from keyword-only parameters (read-only
properties of the same names, compared by ``==``) and seen from the side that drives it (the
controller, the sequencer, the loader); a component that receives one declares it ``In(...)``.
Parents join them with :func:`amaranth.lib.wiring.connect` (and
:func:`amaranth.lib.wiring.flipped` to pass their own port down to a child). ``create()`` gives
the matching :class:`amaranth.lib.wiring.PureInterface`.
"""

import enum

from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.config import AccelConfig
from slimnfu.contract import bits_for, descriptor_layout

__all__ = ["RunSignature", "StepFeature", "StepSignature", "LoadSignature", "WindowSignature"]


def _check_width(name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def _check_config(cfg):
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {type(cfg).__name__}")


class _ParamSignature(wiring.Signature):
    """A signature made from the keyword parameters ``PARAMS``.

    Each parameter becomes a read-only property; two signatures are equal when they are of the
    same class with equal parameters.
    """

    PARAMS = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.PARAMS:
            setattr(cls, name, property(lambda self, name=name: self._params[name]))

    def __init__(self, members, **params):
        assert tuple(params) == self.PARAMS
        self._params = params
        super().__init__(members)

    def __eq__(self, other):
        return type(other) is type(self) and other._params == self._params

    def __repr__(self):
        params = ", ".join(f"{name}={value!r}" for name, value in self._params.items())
        return f"{type(self).__name__}({params})"


class RunSignature(_ParamSignature):
    """Start one layer and watch it run, as the controller (the engine) drives it.

    ``start`` in a cycle where ``busy`` is low latches ``desc`` at the clock edge; ``busy`` is
    high from the next cycle until the layer's work is done. ``start`` while ``busy`` is
    ignored.

    Parameters
    ----------
    desc_layout : amaranth.lib.data.StructLayout
        The descriptor (:func:`slimnfu.contract.descriptor_layout`).

    Members
    -------
    start : Out(1)
    desc : Out(desc_layout)
    busy : In(1)
    """

    PARAMS = ("desc_layout",)

    def __init__(self, *, desc_layout):
        if not isinstance(desc_layout, data.StructLayout):
            raise TypeError(f"desc_layout must be a StructLayout, not {desc_layout!r}")
        super().__init__({"start": Out(1), "desc": Out(desc_layout), "busy": In(1)},
                         desc_layout=desc_layout)

    @classmethod
    def for_config(cls, cfg):
        """The run signature of ``cfg``'s descriptor."""
        _check_config(cfg)
        return cls(desc_layout=descriptor_layout(cfg))


class StepFeature(enum.Enum):
    """Optional members of a :class:`StepSignature`."""

    #: ``nbin_addr`` and ``pad``: the step reads one NBin word (the dense sequencer).
    NBIN = "nbin"
    #: ``write_mask``: the step's output group writes only some lanes (``cfg.kgate``).
    WRITE_MASK = "write_mask"


def _step_features(features):
    if isinstance(features, (str, StepFeature)) or not hasattr(features, "__iter__"):
        raise TypeError(f"features must be an iterable of StepFeature, not {features!r}")
    out = set()
    for feature in features:
        try:
            out.add(StepFeature(feature))
        except ValueError:
            raise ValueError(f"features must hold StepFeature members, not "
                             f"{feature!r}") from None
    return frozenset(out)


class StepSignature(_ParamSignature):
    """One NFU step, as a sequencer issues it to the engine's pipeline.

    All members are combinational outputs of the sequencer for the step of the current cycle;
    they mean something only while ``valid`` is high. Steps come back to back, and the engine
    reads its buffers for a step in the cycle the step is issued (see
    :class:`slimnfu.rtl.engine.LayerEngine` for the stages that follow).

    Parameters
    ----------
    lanes : int
        Output lanes (``cfg.tn``): the width of ``lane_mask`` and ``write_mask``.
    sb_addr_width, bias_addr_width, nbout_addr_width : int
        Address widths of SB, the bias memory and NBout.
    nbin_addr_width : int or None
        Address width of NBin; given exactly when ``features`` has :attr:`StepFeature.NBIN`.
    features : iterable of StepFeature (or their values)
        The optional members.

    Members
    -------
    valid : Out(1)
        A step is issued in this cycle.
    sb_addr : Out(sb_addr_width)
        The SB word of the step's synapses.
    bias_addr : Out(bias_addr_width)
        The bias word (the output tile), read on ``first``.
    first, last : Out(1)
        The step is the first / last of its output group (one output pixel of one output
        tile): NFU-2 starts from the bias on ``first`` and hands the sum on after ``last``.
    end : Out(1)
        The layer's last step.
    nbout_addr : Out(nbout_addr_width)
        Where the output group's result goes.
    lane_mask : Out(lanes)
        Lanes that are real output channels (saturation counts only these).
    nbin_addr, pad : Out(nbin_addr_width), Out(1); only with :attr:`StepFeature.NBIN`
        The NBin word of the step's input neurons, or ``pad`` (read as zero) when the
        position lies in the padding.
    write_mask : Out(lanes, init=all ones); only with :attr:`StepFeature.WRITE_MASK`
        Lanes of the output group to write into NBout.

    A member's ``init`` is what a step means when its source lacks that member: no padding,
    NBin word 0, every lane written.
    """

    PARAMS = ("lanes", "sb_addr_width", "bias_addr_width", "nbout_addr_width",
              "nbin_addr_width", "features")

    def __init__(self, *, lanes, sb_addr_width, bias_addr_width, nbout_addr_width,
                 nbin_addr_width=None, features=frozenset()):
        for name, value in (("lanes", lanes), ("sb_addr_width", sb_addr_width),
                            ("bias_addr_width", bias_addr_width),
                            ("nbout_addr_width", nbout_addr_width)):
            _check_width(name, value)
        features = _step_features(features)
        if StepFeature.NBIN in features:
            _check_width("nbin_addr_width", nbin_addr_width)
        elif nbin_addr_width is not None:
            raise ValueError(f"nbin_addr_width goes with the NBIN feature only, not "
                             f"{nbin_addr_width!r} without it")
        members = {
            "valid": Out(1),
            "sb_addr": Out(sb_addr_width),
            "bias_addr": Out(bias_addr_width),
            "first": Out(1),
            "last": Out(1),
            "end": Out(1),
            "nbout_addr": Out(nbout_addr_width),
            "lane_mask": Out(lanes),
        }
        if StepFeature.NBIN in features:
            members.update(nbin_addr=Out(nbin_addr_width), pad=Out(1))
        if StepFeature.WRITE_MASK in features:
            members["write_mask"] = Out(lanes, init=(1 << lanes) - 1)
        super().__init__(members, lanes=lanes, sb_addr_width=sb_addr_width,
                         bias_addr_width=bias_addr_width, nbout_addr_width=nbout_addr_width,
                         nbin_addr_width=nbin_addr_width, features=features)

    @classmethod
    def for_config(cls, cfg, *, features=frozenset()):
        """The step signature of ``cfg``'s buffers, with ``features``."""
        _check_config(cfg)
        features = _step_features(features)
        nbin = bits_for(cfg.nbin_depth - 1) if StepFeature.NBIN in features else None
        return cls(lanes=cfg.tn, sb_addr_width=bits_for(cfg.sb_depth - 1),
                   bias_addr_width=bits_for(cfg.bias_depth - 1),
                   nbout_addr_width=bits_for(cfg.nbout_depth - 1), nbin_addr_width=nbin,
                   features=features)


class LoadSignature(_ParamSignature):
    """The write port of one memory, as its loader drives it.

    In a cycle with ``en`` high, word ``addr`` of the memory takes ``data`` at the clock edge.
    The engine decodes its own ``load_en``/``load_sel``/``load_addr``/``load_data`` port into
    one of these per memory; a block that owns a memory takes it as ``In(LoadSignature(...))``.
    Its members are those of an :class:`amaranth.lib.memory.WritePort`, so a port of matching
    widths connects straight to one.

    Parameters
    ----------
    addr_width, data_width : int

    Members
    -------
    en : Out(1)
    addr : Out(addr_width)
    data : Out(data_width)
    """

    PARAMS = ("addr_width", "data_width")

    def __init__(self, *, addr_width, data_width):
        _check_width("addr_width", addr_width)
        _check_width("data_width", data_width)
        super().__init__({"en": Out(1), "addr": Out(addr_width), "data": Out(data_width)},
                         addr_width=addr_width, data_width=data_width)


class WindowSignature(_ParamSignature):
    """The IKR sequencer's control of the pattern decoder, cycle by cycle.

    In a slot of ``G = max(n, cols)`` cycles (:class:`slimnfu.rtl.ikr_sequencer.IkrSequencer`),
    slot cycle ``c``:

    * ``fill_valid`` (the slot's last ``cols`` cycles, ``cols = k``, or the columns the window
      slides by): column ``k - G + c`` of the next group's window is read from NBin in this
      cycle (left to right), row ``r`` as padding when ``fill_pad[r]``; the decoder shifts the
      data into its window bank ``fill_bank`` (constant over a slot) one cycle later;
      ``cols = 0`` in a slot that fills no window (an output tile ``o > 0`` in a banked layer);
    * ``swap`` (``c == 0``): window bank ``swap_bank`` (the bank holding the window of the
      group computed in this slot, complete since the previous clock edge) becomes the compute
      window at the clock edge;
    * ``tap_offset`` (constant while a layer runs): ``kmax - k``, the register column of the
      window's column 0;
    * ``step`` and ``idx_addr``: the pattern-table word (the step ``c`` of the group being
      computed) and the IKR index word (its ``(o, t)`` tile pair), sent
      :attr:`slimnfu.rtl.pattern_decoder.PatternDecoder.LOOKAHEAD` cycles before the step
      they serve reaches the engine (the decoder reads its memories that far ahead).

    The cycles above are the slot's; the sequencer sends every member a fixed number of
    register stages later (:attr:`IkrSequencer.FILL_STAGES` for the fill,
    :attr:`IkrSequencer.OUTPUT_STAGES` for ``swap`` and the steps).

    Parameters
    ----------
    kmax : int
        The window's side (``cfg.ikr.kmax``).
    index_addr_width : int
        Address width of the IKR index memory.
    tiles : int
        The decoder's window banks (``cfg.ikr.tiles``).

    Members
    -------
    swap, fill_valid : Out(1)
    fill_bank, swap_bank : Out(bits_for(tiles - 1))
    fill_pad : Out(kmax)
    tap_offset : Out(bits_for(kmax - 1))
    step : Out(bits_for(kmax**2 - 1))
    idx_addr : Out(index_addr_width)
    """

    PARAMS = ("kmax", "index_addr_width", "tiles")

    def __init__(self, *, kmax, index_addr_width, tiles=1):
        _check_width("kmax", kmax)
        _check_width("index_addr_width", index_addr_width)
        _check_width("tiles", tiles)
        super().__init__({
            "swap": Out(1),
            "swap_bank": Out(bits_for(tiles - 1)),
            "fill_valid": Out(1),
            "fill_bank": Out(bits_for(tiles - 1)),
            "fill_pad": Out(kmax),
            "tap_offset": Out(bits_for(kmax - 1)),
            "step": Out(bits_for(kmax * kmax - 1)),
            "idx_addr": Out(index_addr_width),
        }, kmax=kmax, index_addr_width=index_addr_width, tiles=tiles)

    @classmethod
    def for_config(cls, cfg):
        """The window signature of ``cfg`` (``ikr.kmax``, ``ikr.index_depth``, ``ikr.tiles``)."""
        _check_config(cfg)
        return cls(kmax=cfg.ikr.kmax, index_addr_width=bits_for(cfg.ikr.index_depth - 1),
                   tiles=cfg.ikr.tiles)
