"""The network compiler: a quantised model becomes a layer program and one weight ROM.

:func:`compile_model` turns a :class:`slimnfu.compress.quant.QuantModel` (dense, IKR and
permuted-FC layers, mixed freely) into a :class:`Program` for one :class:`AccelConfig`. The
program is what :class:`slimnfu.rtl.accelerator.Accelerator` bakes in:

- ``rom``: every memory word of every layer, in the layouts of :mod:`slimnfu.gen.layout` (the
  same words as the layer's weight-image files, zero-extended to the engine's ``load_data``);
- per layer, the descriptor value, the loads that copy its words from the ROM into the
  engine's memories, and how its input gets into NBin: the host writes the image for the first
  layer; later layers take the previous layer's NBout, word for word (``copy``), or
  re-ordered into PyTorch's flatten order when an FC layer follows a conv or pool layer
  (``flatten``).

The chain relies on ``tn == ti`` (which every :class:`AccelConfig` has): an NBout word is an
NBin word. Anything the engine cannot
run is refused with a :class:`ValueError` naming the layer, before any Verilog is emitted.
"""

from dataclasses import dataclass, field

from slimnfu.config import AccelConfig

__all__ = ["LOAD_SEL", "Program", "ProgramLayer", "compile_model", "config_for"]

#: The engine memory each stored item is loaded into (:class:`slimnfu.rtl.engine.LoadSel`).
LOAD_SEL = {"weights": 1, "bias": 2, "pwl": 3, "s": 4, "perm_ab": 5, "perm_index": 1,
            "ikr_values": 1, "ikr_index": 6, "ikr_table": 7}

#: Weight formats the accelerator runs.
FORMATS = ("dense", "ikr", "perm_affine", "perm_index")


@dataclass
class ProgramLayer:
    """One layer of a :class:`Program`.

    ``loads`` are ``(sel, rom_base, words)``: copy ``words`` ROM words from ``rom_base`` to
    engine memory ``sel`` at addresses ``0 ..``. ``move`` is ``("image",)`` for the first
    layer, ``("copy", words)`` or ``("flatten", channels, h, w)``.
    """

    name: str
    desc: object
    desc_value: int
    loads: list
    move: tuple
    format: str

    @property
    def move_cycles(self):
        """Cycles the move into NBin takes: one per word copied or value flattened."""
        if self.move[0] == "copy":
            return self.move[1]
        if self.move[0] == "flatten":
            return self.move[1] * self.move[2] * self.move[3]
        return 0


@dataclass
class Program:
    """A compiled network: layers, the weight ROM and the config it was compiled for."""

    cfg: AccelConfig
    layers: list
    rom: list
    rom_width: int
    input_shape: tuple
    stats: dict = field(default_factory=dict)

    @property
    def rom_bits(self):
        """Bits the items occupy (their own widths, not the ROM's padded width)."""
        return self.stats["stored_bits"]

    def pack_image(self, x):
        """NBin words of one integer input sample (flattened when the first layer is FC)."""
        from slimnfu.gen import layout

        if self.layers[0].desc.kind == "fc":
            x = x.reshape(-1)
        return layout.pack_input(x, self.cfg)

    def unpack_layer(self, i, words):
        """A layer's NBout words as the integer reference's output of one sample."""
        from slimnfu.gen import layout

        d = self.layers[i].desc
        y = layout.unpack_output(words, d.n_out, d.h_out, d.w_out, self.cfg)
        return y.reshape(-1) if d.kind == "fc" else y


def config_for(qmodel, base):
    """``base`` with the method flags ``qmodel`` needs switched on and buffers that hold it."""
    formats = {ql.format for ql in qmodel.layers}
    cfg = base.with_(ikr=base.ikr or "ikr" in formats,
                     perm=base.perm or bool(formats & {"perm_affine", "perm_index"}))
    if cfg.perm:
        need = max([ql.desc.n_in for ql in qmodel.layers if ql.format.startswith("perm")],
                   default=0)
        cfg = cfg.with_(perm_depth=max(cfg.perm_depth, 1 << max(0, need - 1).bit_length()))
    return cfg.fit_buffers([ql.desc for ql in qmodel.layers])


def _check_layer(ql, cfg):
    if ql.format not in FORMATS:
        raise ValueError(f"layer {ql.name}: format {ql.format!r} does not run on the "
                         f"accelerator (it runs {', '.join(FORMATS)})")
    if ql.format == "ikr" and not cfg.ikr:
        raise ValueError(f"layer {ql.name} is IKR, but config {cfg.name!r} has ikr=False")
    if ql.format.startswith("perm") and not cfg.perm:
        raise ValueError(f"layer {ql.name} is {ql.format}, but config {cfg.name!r} has "
                         f"perm=False")
    try:
        ql.desc.check(cfg, None if ql.b is None else int(ql.b.abs().max()))
    except ValueError as exc:
        raise ValueError(f"layer {ql.name}: {exc}") from None


def _move(prev, ql, cfg):
    """How layer ``ql`` gets its input from ``prev``'s NBout."""
    p, d = prev.desc, ql.desc
    if d.kind == "fc" and not p.kind == "fc":
        if d.n_in != p.n_out * p.h_out * p.w_out:
            raise ValueError(f"layer {ql.name}: n_in={d.n_in}, but {prev.name} gives "
                             f"{p.n_out}x{p.h_out}x{p.w_out} values")
        return ("flatten", p.n_out, p.h_out, p.w_out)
    if (d.n_in, d.h_in, d.w_in) != (p.n_out, p.h_out, p.w_out):
        raise ValueError(f"layer {ql.name} takes {d.n_in}x{d.h_in}x{d.w_in}, but {prev.name} "
                         f"gives {p.n_out}x{p.h_out}x{p.w_out}")
    return ("copy", p.nbout_words(cfg))


def compile_model(qmodel, cfg):
    """Compile ``qmodel`` for ``cfg``; see the module docstring.

    Raises
    ------
    ValueError
        Naming the layer: a format the accelerator does not run, a method flag ``cfg`` lacks, a
        layer that does not fit the buffers, or a shape that does not chain; or a config with
        other number widths than the model's.
    """
    from slimnfu.gen.image import _layer_memories
    from slimnfu.rtl.descriptor import descriptor_value
    from slimnfu.rtl.engine import load_data_width

    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {type(cfg).__name__}")
    if (cfg.dw, cfg.acc) != (qmodel.dw, qmodel.acc):
        raise ValueError(f"config {cfg.name!r} has dw={cfg.dw}, acc={cfg.acc}, but the model is "
                         f"quantised for dw={qmodel.dw}, acc={qmodel.acc}")
    if not qmodel.layers:
        raise ValueError("the model has no layers")
    width = load_data_width(cfg)
    rom, layers, stored = [], [], 0
    for i, ql in enumerate(qmodel.layers):
        _check_layer(ql, cfg)
        move = ("image",) if i == 0 else _move(qmodel.layers[i - 1], ql, cfg)
        loads = []
        for item, (words, item_width) in _layer_memories(ql, cfg).items():
            loads.append((LOAD_SEL[item], len(rom), len(words)))
            rom.extend(int(w) for w in words)
            stored += len(words) * item_width
        layers.append(ProgramLayer(ql.name, ql.desc, descriptor_value(ql.desc, cfg), loads,
                                   move, ql.format))
    first = qmodel.layers[0].desc
    if first.nbin_words(cfg) > cfg.nbin_depth:
        raise ValueError(f"layer {qmodel.layers[0].name}: the input needs "
                         f"{first.nbin_words(cfg)} NBin words, config {cfg.name!r} has "
                         f"{cfg.nbin_depth}")
    stats = {"rom_words": len(rom), "rom_width": width, "stored_bits": stored,
             "layers": len(layers)}
    return Program(cfg, layers, rom, width, tuple(qmodel.input_shape), stats)
