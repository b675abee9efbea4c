"""The hardware contract: every number, layout and record the gateware and the host share.

Nothing here is logic. It is the one home of what both sides of the accelerator must agree
on, so that :mod:`slimnfu.rtl` (the gateware), :mod:`slimnfu.compress` (the integer
reference), :mod:`slimnfu.formats` (the memory words) and :mod:`slimnfu.gen` (the compiler)
import it and never each other's internals:

- the PWL table size (:data:`PWL_SEGMENTS`);
- the layer descriptor: its field widths (:data:`DESC_FIELD_BITS`), its enums
  (:class:`Mode`, :class:`Act`, :class:`Perm`), its layout for a config
  (:func:`descriptor_layout`) and the value that runs a :class:`~slimnfu.config.PassDesc`
  (:func:`descriptor_value`);
- the load interface: which memory ``load_sel`` names (:class:`LoadSel`), the widths of
  ``load_sel`` and ``load_data``, and the widths of the method memories' entries (IKR
  pattern indices and taps, permutation addresses and parameters);
- the counter widths of the engine and the accelerator (:data:`COUNTER_BITS`);
- the compiled program the accelerator bakes in (:class:`Program`, :class:`ProgramLayer`) and
  how its input is laid out when its first layer runs as im2col (:class:`Im2col`).

See ``docs/design.md`` for what each means cycle by cycle.
"""

import enum as py_enum
from dataclasses import dataclass, field

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

from slimnfu.config import AccelConfig, as_pass, out_size

__all__ = ["PWL_SEGMENTS", "DESC_FIELD_BITS", "COUNTER_BITS", "Mode", "Act", "Perm", "LoadSel",
           "bits_for", "descriptor_layout", "descriptor_value", "load_sel_width",
           "load_addr_width", "load_data_width", "ikr_tap_bits", "ikr_index_bits",
           "ikr_coord_bits", "ikr_lane_table_width",
           "ikr_load_width", "perm_addr_bits", "perm_param_width", "PERM_FIELDS", "perm_fields",
           "Program", "ProgramLayer", "Im2col"]

#: Segments of the piecewise-linear activation table (NFU-3), and so words of a PWL load.
PWL_SEGMENTS = 16

#: Clock edges from ``rd_addr`` to its word on ``rd_data`` (engine and accelerator): the
#: neuron buffer's block RAM read and its output register, which on ECP5 is the DP16KD's own
#: (:mod:`slimnfu.gen.primitive_registers`).
RD_LATENCY = 2

#: Width of the descriptor's geometry fields; :meth:`LayerDesc.check` refuses values that do
#: not fit.
DESC_FIELD_BITS = {"h_in": 12, "w_in": 12, "h_out": 12, "w_out": 12, "k": 4, "stride": 4,
                   "pad": 4}

#: Widths of the counters the engine (``cycles``, ``steps`` .. ``gated``) and the accelerator
#: (all but ``steps``) report. ``gated`` exists with ``cfg.kgate`` only.
COUNTER_BITS = {"cycles": 32, "engine_cycles": 32, "load_cycles": 32, "move_cycles": 32,
                "overlap_load_cycles": 32, "steps": 32, "mults": 48, "sat_events": 32,
                "gated": 48}


def bits_for(max_value):
    """Bits of an unsigned value that holds ``0 .. max_value`` (at least 1)."""
    return max(1, int(max_value).bit_length())


class Mode(enum.Enum, shape=2):
    MAC = 0      #: conv and fc: NFU-1 multiplies, NFU-2 sums
    MAXPOOL = 1  #: NFU-1 bypassed, NFU-2 keeps the maximum
    AVGPOOL = 2  #: NFU-1 bypassed, NFU-2 sums, NFU-3 shifts


class Perm(enum.Enum, shape=2):
    NONE = 0    #: dense FC weights from SB
    #: s (in every SB bank) gathered at generated addresses (affine or quadratic, one of G
    #: sequences), per-row parameters from the perm memory
    AFFINE = 1
    INDEX = 2   #: an index ROM over s (the engine is loaded with the gathered weights: dense)


class Act(enum.Enum, shape=2):
    NONE = 0
    RELU = 1
    PWL = 2


class LoadSel(py_enum.IntEnum):
    """The engine memory a load word goes to (the value on ``load_sel``)."""

    NBIN = 0
    SB = 1
    BIAS = 2
    PWL = 3
    #: With ``cfg.perm``: the per-row generated-permutation parameters (one output tile per
    #: word, :func:`perm_param_width` bits). (4 was the common sequence's own memory; ``s``
    #: now goes into SB, a value into every bank: :attr:`slimnfu.formats.base.Words.lanes`.)
    PERM_PARAM = 5
    #: With ``cfg.ikr``: the IKR index memory and pattern table.
    IKR_INDEX = 6
    IKR_TABLE = 7


def load_sel_width(cfg):
    """Width of ``load_sel``: 3 bits when a method memory (``perm``, ``ikr``) exists, else 2."""
    return 3 if cfg.perm or cfg.ikr else 2


def ikr_tap_bits(cfg):
    """Bits of one IKR pattern-table entry: a tap ``ky*ikr_kmax + kx`` of the window."""
    return bits_for(cfg.ikr.kmax ** 2 - 1)


def ikr_index_bits(cfg):
    """Bits of one per-kernel IKR pattern index (``ceil(log2(ikr_patterns))``, at least 1)."""
    return bits_for(cfg.ikr.patterns - 1)


def ikr_coord_bits(cfg):
    """Bits of a tap's row or column ``ky``, ``kx`` (``0 .. ikr.kmax-1``)."""
    return bits_for(cfg.ikr.kmax - 1)


def ikr_lane_table_width(cfg):
    """Bits of one word of the lane IKR unit's tap table (``ikr.lanes``): the tap's NBin word
    offset ``ky*w_in + kx`` from its window's first word, then ``ky`` and ``kx``."""
    return bits_for(cfg.nbin_depth - 1) + 2 * ikr_coord_bits(cfg)


def ikr_load_width(cfg):
    """Widest IKR load word: a pattern-table word or an index word (with ``ikr.lanes``, a
    tap-table word or a tap word: ``ti`` taps)."""
    if cfg.ikr.lanes:
        return max(ikr_lane_table_width(cfg), cfg.ti * ikr_tap_bits(cfg))
    return max(cfg.ikr.patterns * ikr_tap_bits(cfg), cfg.tn * cfg.ti * ikr_index_bits(cfg))


def perm_addr_bits(cfg):
    """Bits of one address into the common sequence ``s`` (``0 .. perm_depth-1``)."""
    return bits_for(cfg.perm.depth - 1)


#: Fields of one row in a ``PERM_PARAM`` word, lowest first, ``perm_addr_bits`` each
#: (:func:`slimnfu.formats.layout.pack_perm_params`, :class:`slimnfu.rtl.perm_addr.PermAddrGen`).
#: For a pass over a conv output in the buffer's order (``PassDesc.flatten``, affine rows
#: only) ``a`` holds the lane stride ``a*hw mod n`` and ``e`` the step ``a`` within a channel
#: tile.
PERM_FIELDS = ("a", "e", "start", "last")


def perm_param_width(cfg):
    """Width of one perm-memory word: ``tn`` lanes of four ``perm_addr_bits`` fields
    (:data:`PERM_FIELDS`: ``a``, ``e``, ``start``, ``last``)."""
    return cfg.tn * 4 * perm_addr_bits(cfg)


def load_data_width(cfg):
    """Width of ``load_data``: the widest word any memory takes.

    ``tn*ti*dw`` (an SB word) for every named config; a bias word (``tn*acc``) or a PWL word
    (``3*dw``) can be wider when ``ti`` is small (e.g. 2x2 configs).
    """
    width = max(cfg.tn * cfg.ti * cfg.dw, cfg.tn * cfg.acc, 3 * cfg.dw)
    if cfg.ikr:
        width = max(width, ikr_load_width(cfg))
    return max(width, perm_param_width(cfg)) if cfg.perm else width


def load_addr_width(cfg):
    """Width of ``load_addr``: an address into the deepest memory the load port writes.

    The neuron buffers, SB and the bias memory, and the method memories: ``s`` (``perm.depth``
    entries, deeper than every buffer on ``diannao``), the IKR index memory and pattern table.
    """
    depths = [cfg.nbin_depth, cfg.sb_depth, cfg.nbout_depth, cfg.bias_depth]
    if cfg.perm:
        depths.append(cfg.perm.depth)
    if cfg.ikr:
        depths += [cfg.ikr.index_depth, cfg.ikr.kmax ** 2 if cfg.ikr.lanes else cfg.ikr.patterns]
    return bits_for(max(depths) - 1)


def descriptor_layout(cfg):
    """The :class:`amaranth.lib.data.StructLayout` of the ``desc`` port for ``cfg``."""
    tiles = max(cfg.nbin_depth, cfg.nbout_depth, cfg.sb_depth)
    fields = {
        "mode": Mode,
        "act": Act,
        "ci_tiles": unsigned(bits_for(tiles)),
        "co_tiles": unsigned(bits_for(tiles)),
    }
    for name, bits in DESC_FIELD_BITS.items():
        fields[name] = unsigned(bits)
    fields["shift"] = unsigned(bits_for(cfg.acc - 1))
    fields["seg_shift"] = unsigned(bits_for(cfg.dw - 1))
    # Output channels: NFU-3 counts saturation only on lanes below n_out (added last, so the
    # fields above keep their bit positions).
    fields["n_out"] = unsigned(bits_for(tiles * cfg.tn))
    if cfg.ikr:
        # Taps kept per kernel of an IKR conv layer; 0 runs the layer dense.
        fields["ikr_n"] = unsigned(bits_for(cfg.ikr.kmax ** 2))
    if cfg.perm:
        # Permuted-feature FC (method C): the weight format and the sequence length N.
        fields["perm"] = Perm
        fields["n_in"] = unsigned(bits_for(cfg.perm.depth))
    if cfg.kgate:
        # Kernel-size-aware gating (method A): each lane's centred kernel; 0 is the full k.
        fields["lane_k"] = data.ArrayLayout(unsigned(DESC_FIELD_BITS["k"]), cfg.tn)
        # Centre-tap passes: the tap offset, where the pass's outputs go in NBout, and the
        # lanes of its first output tile that another pass owns.
        fields["koff"] = unsigned(DESC_FIELD_BITS["k"])
        fields["nbout_base"] = unsigned(bits_for(cfg.nbout_depth - 1))
        fields["lane_skip"] = unsigned(bits_for(cfg.tn - 1))
    if cfg.perm:
        # A perm_affine FC pass over a conv output in the buffer's order (PassDesc.flatten):
        # the pixels of a channel tile (1: plain), the first NBin word of the last channel
        # tile and the real lanes of that tile (ti: no padding).
        fields["perm_hw"] = unsigned(bits_for(cfg.nbin_depth))
        fields["perm_tail"] = unsigned(bits_for(cfg.nbin_depth - 1))
        fields["perm_lanes"] = unsigned(bits_for(cfg.ti))
    return data.StructLayout(fields)


def perm_fields(desc, cfg):
    """The descriptor's ``perm_hw``, ``perm_tail`` and ``perm_lanes`` for pass ``desc``
    (:func:`descriptor_layout`): with ``desc.flatten = (c, hw)``, ``hw``, the first NBin word
    ``(ceil(c/ti) - 1)*hw`` of the last channel tile and its real lanes ``c - (ceil(c/ti) -
    1)*ti``; otherwise ``1, 0, ti`` (no padding lanes)."""
    if not desc.flatten:
        return {"perm_hw": 1, "perm_tail": 0, "perm_lanes": cfg.ti}
    c, hw = desc.flatten
    last = -(-c // cfg.ti) - 1
    return {"perm_hw": hw, "perm_tail": last * hw, "perm_lanes": c - last * cfg.ti}


def descriptor_value(desc, cfg, check=True):
    """The integer for the ``desc`` port that runs ``desc`` on ``cfg``: a
    :class:`~slimnfu.config.PassDesc`, or a :class:`~slimnfu.config.LayerDesc` run as one dense
    pass.

    ``check=False`` skips :meth:`PassDesc.check` (buffer depths): for weight images that list
    layers too large for ``cfg``, and for the compiler, which has checked every pass already
    (as part of a program, :meth:`PassDesc.check` ``stream=True``); every field must still fit
    its width.
    """
    desc = as_pass(desc)
    if check:
        desc.check(cfg)
    d = desc.layer
    mode = {"conv": Mode.MAC, "fc": Mode.MAC, "maxpool": Mode.MAXPOOL,
            "avgpool": Mode.AVGPOOL}[d.kind]
    act = {"none": Act.NONE, "relu": Act.RELU, "pwl": Act.PWL}[d.act]
    ci, co = desc.tiles(cfg)
    fields = dict(mode=mode, act=act, ci_tiles=ci, co_tiles=co, h_in=d.h_in,
                  w_in=d.w_in, h_out=desc.h_out, w_out=desc.w_out, k=d.k,
                  stride=d.stride, pad=d.pad, shift=d.effective_shift,
                  seg_shift=d.seg_shift, n_out=d.n_out)
    if cfg.ikr:
        fields["ikr_n"] = desc.ikr_n
    elif desc.ikr_n:
        raise ValueError(f"layer has ikr_n={desc.ikr_n}, but config {cfg.name!r} has ikr=False")
    if cfg.perm:
        fields["perm"] = {"none": Perm.NONE, "affine": Perm.AFFINE,
                          "index": Perm.INDEX}[desc.perm]
        # the generator's sequence length: an index pass runs its gathered weights
        fields["n_in"] = desc.perm_n if desc.perm == "affine" else 0
        fields.update(perm_fields(desc, cfg))
    elif desc.perm == "affine":
        raise ValueError(f"layer has perm={desc.perm!r}, but config {cfg.name!r} has perm=False")
    if cfg.kgate:
        fields["lane_k"] = list(desc.lane_k) + [0] * (cfg.tn - len(desc.lane_k))
        fields.update(koff=desc.koff, nbout_base=desc.nbout_base, lane_skip=desc.lane_skip)
    elif desc.lane_k or desc.koff or desc.nbout_base or desc.lane_skip:
        raise ValueError(f"layer has lane_k={list(desc.lane_k)}, koff={desc.koff}, nbout_base="
                         f"{desc.nbout_base}, lane_skip={desc.lane_skip}, but config "
                         f"{cfg.name!r} has kgate=False")
    layout = descriptor_layout(cfg)
    for name, value in fields.items():
        if isinstance(value, int) and value >= 1 << layout[name].shape.width:
            raise ValueError(f"descriptor field {name}={value} does not fit its "
                             f"{layout[name].shape.width} bits for config {cfg.name!r}")
    return layout.const(fields).as_value().value


@dataclass
class ProgramLayer:
    """One engine run of a :class:`Program`.

    ``loads`` are ``(sel, rom_base, words)``: copy ``words`` ROM words from ``rom_base`` to
    engine memory ``sel`` (a :class:`LoadSel`) at addresses ``0 ..``. The layer reads its
    input from neuron buffer ``in_buf`` and writes its output into buffer ``out_buf`` (the
    engine's ping-pong pair, :class:`slimnfu.rtl.engine.LayerEngine`). ``move`` is
    ``("image",)`` for the first layer (the host writes buffer 0), ``("none",)`` when the
    input is already in ``in_buf`` where the layer reads it (the previous layer's output, an
    FC layer's conv output in the buffer's order included, see
    :meth:`slimnfu.formats.base.WeightFormat.relayout_input`; or for a later pass of a model
    layer its input or its earlier passes' outputs). No activation is moved.

    A model layer may take several program layers (a ``slim`` layer: one pass per run of
    equal-kernel tiles, then the 1x1 approximation pass). ``ref`` is the index of the model
    layer whose output is complete in NBout after this program layer (None after a pass that
    leaves it unfinished), and ``out_shape`` that output's ``(channels, h, w)``. ``im2col``
    marks a pass of the first model layer run as a 1x1 conv over the image's patches
    (:class:`Im2col`).

    An IKR pass (``desc.ikr_n > 0``) must read and write different buffers: the engine reads
    its window rows on the input buffer's write ports too (:meth:`LayerEngine.buffer_copies
    <slimnfu.rtl.engine.LayerEngine.buffer_copies>`), which holds only while that buffer is
    not written; ``in_buf == out_buf`` is refused with a ``ValueError``.
    """

    name: str
    desc: object
    desc_value: int
    loads: list
    move: tuple
    format: str
    ref: int = None
    out_shape: tuple = None
    in_buf: int = 0
    out_buf: int = 1
    im2col: bool = False

    def __post_init__(self):
        if as_pass(self.desc).ikr_n and self.in_buf == self.out_buf:
            raise ValueError(f"layer {self.name}: an IKR pass cannot write the neuron buffer "
                             f"it reads (in_buf = out_buf = {self.in_buf}): the engine reads "
                             f"its window rows on that buffer's write ports")

    @property
    def move_cycles(self):
        """Cycles spent moving the layer's input: 0, no activation is moved (the accelerator's
        ``move_cycles`` counter stays for the reports)."""
        return 0


@dataclass(frozen=True)
class Im2col:
    """The input of a program whose first layer runs as im2col: a ``k x k`` conv over
    ``n_in`` channels of an ``h_in x w_in`` image (``stride``, zero padding ``pad``) becomes a
    1x1 conv on the ``h_out x w_out`` output grid, whose input channel ``j`` at output
    position ``(y, x)`` is one value of that position's window:
    :func:`slimnfu.formats.layout.patch_order` gives each channel's ``(c, ky, kx)``, centre
    taps first, and ``channels`` of them are packed (a prefix: a layer whose filters use only
    centre taps reads fewer). The host writes these patches into neuron buffer 0 instead of
    the image (:func:`slimnfu.formats.layout.pack_program_input`).
    """

    layer: str
    n_in: int
    h_in: int
    w_in: int
    k: int
    stride: int
    pad: int
    channels: int

    @property
    def h_out(self):
        return out_size(self.h_in, self.k, self.stride, self.pad)

    @property
    def w_out(self):
        return out_size(self.w_in, self.k, self.stride, self.pad)

    def words(self, cfg):
        """NBin words of the packed patches: ``ceil(channels/ti) * h_out * w_out``."""
        return -(-self.channels // cfg.ti) * self.h_out * self.w_out

    def to_dict(self):
        return {"layer": self.layer, "n_in": self.n_in, "h_in": self.h_in, "w_in": self.w_in,
                "k": self.k, "stride": self.stride, "pad": self.pad, "channels": self.channels}


@dataclass
class Program:
    """A compiled network: what :class:`slimnfu.rtl.accelerator.Accelerator` bakes in.

    Parameters
    ----------
    cfg : AccelConfig
        The config it was compiled for (the engine's config).
    layers : list of ProgramLayer
    rom : list of int
        The weight ROM, ``rom_width`` bits a word.
    rom_width : int
    input_shape : tuple of int
        One input sample's shape.
    stats : dict
        ``rom_words``, ``rom_width``, ``stored_bits``, ``layers``, ``input_words``, and
        ``im2col``: the compiler's choice for the first layer
        (:func:`slimnfu.gen.compiler.compile_model`).
    im2col : Im2col or None
        How the input is packed when the first layer runs as im2col; None: the image as it
        is.
    """

    cfg: AccelConfig
    layers: list
    rom: list
    rom_width: int
    input_shape: tuple
    stats: dict = field(default_factory=dict)
    im2col: Im2col = None

    def input_words(self):
        """NBin words the host writes before ``start`` (one a cycle): the image's, or with
        :attr:`im2col` its patches'."""
        if self.im2col is not None:
            return self.im2col.words(self.cfg)
        return self.layers[0].desc.nbin_words(self.cfg)

    def load_plan(self):
        """The weight-load stream of one inference: ``(entries, need)``.

        ``entries`` lists every non-empty load of every layer as ``(sel, rom_base, words,
        gate, after)``, layer by layer, each layer's ``SB`` load last. The controller streams
        them in this order, one word per cycle, beside the layers: entry ``e`` may begin once
        ``gate`` program layers have finished (``gate`` is one more than the last earlier
        layer that loads the same memory, 0 if none), so a memory is never written while a
        layer that reads it runs, and once program layer ``after`` has begun (its first
        ``READY`` cycle; 0 but for a ring, below). ``need[i]`` is the entry layer ``i`` waits
        for: every entry before it must be complete before the layer starts. It is the
        layer's ``SB`` load when it has one and reads SB in address order (all but a
        ``perm_affine`` layer, whose ``s`` in SB is read anywhere from its first step, so is
        loaded before it starts), which streams on while the layer runs: the
        engine reads an SB address for the first time no earlier than two cycles before step
        number ``address`` is issued (the sequencers read it at that step), and the first step
        comes
        :attr:`slimnfu.rtl.engine.LayerEngine.FIRST_STEP` cycles after the start, so each word
        is written before its first read.

        A layer whose SB words do not fit SB (:meth:`slimnfu.config.PassDesc.sb_ring`: an FC
        pass, which reads word ``a`` once, at step ``a``) has ``after`` = its own index on its
        SB entry: the entry then begins in the layer's last ``READY`` cycle, word ``a`` is
        written one cycle before the engine starts plus ``a``, into slot ``a mod sb_depth``,
        and so overwrites word ``a - sb_depth`` well after the engine has read it (at step
        ``a - sb_depth``; ``sb_depth >= SB_RING_MIN_DEPTH``).
        """
        entries, need, last = [], [], {}
        for i, layer in enumerate(self.layers):
            mine = [(int(s), b, n) for s, b, n in layer.loads if n]
            mine = ([x for x in mine if x[0] != LoadSel.SB] +
                    [x for x in mine if x[0] == LoadSel.SB])
            ring = as_pass(layer.desc).sb_ring(self.cfg)
            entries += [(s, b, n, last.get(s, -1) + 1, i if ring and s == LoadSel.SB else 0)
                        for s, b, n in mine]
            in_order = as_pass(layer.desc).perm != "affine"     # its SB words, from step 0
            need.append(len(entries) - 1 if mine and mine[-1][0] == LoadSel.SB and in_order
                        else len(entries))
            last.update((s, i) for s, _, _ in mine)
        return entries, need

    def out_words(self, i):
        """NBout words holding the output of program layer ``i`` (0 after an unfinished
        pass): what a testbench reads to check it."""
        layer = self.layers[i]
        if layer.ref is None:
            return 0
        n, h, w = layer.out_shape
        return -(-n // self.cfg.tn) * h * w
