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

import torch

from slimnfu.config import AccelConfig, LayerDesc

__all__ = ["LOAD_SEL", "Program", "ProgramLayer", "compile_model", "config_for"]

#: The engine memory each stored item is loaded into (:class:`slimnfu.rtl.engine.LoadSel`).
LOAD_SEL = {"weights": 1, "bias": 2, "pwl": 3, "s": 4, "perm_ab": 5, "perm_index": 1,
            "ikr_values": 1, "ikr_index": 6, "ikr_table": 7}

#: Weight formats the accelerator runs.
FORMATS = ("dense", "ikr", "perm_affine", "perm_index", "slim")


@dataclass
class ProgramLayer:
    """One layer of a :class:`Program`.

    ``loads`` are ``(sel, rom_base, words)``: copy ``words`` ROM words from ``rom_base`` to
    engine memory ``sel`` at addresses ``0 ..``. ``move`` is ``("image",)`` for the first
    layer, ``("copy", words)``, ``("flatten", channels, h, w)`` or ``("none",)`` (a later
    pass of the same model layer reads the same input).

    A model layer may take several program layers (a ``slim`` layer: one pass per run of
    equal-kernel tiles, then the 1x1 approximation pass). ``ref`` is the index of the model
    layer whose output is complete in NBout after this program layer (None after a pass that
    leaves it unfinished), and ``out_shape`` that output's ``(channels, h, w)``.
    """

    name: str
    desc: object
    desc_value: int
    loads: list
    move: tuple
    format: str
    ref: int = None
    out_shape: tuple = None

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

    def pack_image(self, x):
        """NBin words of one integer input sample (flattened when the first layer is FC)."""
        from slimnfu.gen import layout

        if self.layers[0].desc.kind == "fc":
            x = x.reshape(-1)
        return layout.pack_input(x, self.cfg)

    def unpack_layer(self, i, words):
        """A layer's NBout words as the integer reference's output of one sample."""
        from slimnfu.gen import layout

        layer = self.layers[i]
        n, h, w = layer.out_shape
        y = layout.unpack_output(words, n, h, w, self.cfg)
        return y.reshape(-1) if layer.desc.kind == "fc" else y

    def out_words(self, i):
        """NBout words holding the output of program layer ``i`` (0 after an unfinished
        pass): what a testbench reads to check it."""
        layer = self.layers[i]
        if layer.ref is None:
            return 0
        n, h, w = layer.out_shape
        return -(-n // self.cfg.tn) * h * w


def config_for(qmodel, base):
    """``base`` with the method flags ``qmodel`` needs switched on and buffers that hold it."""
    formats = {ql.format for ql in qmodel.layers}
    cfg = base.with_(ikr=base.ikr or "ikr" in formats,
                     perm=base.perm or bool(formats & {"perm_affine", "perm_index"}),
                     kgate=base.kgate or "slim" in formats)
    if cfg.perm:
        need = max([ql.desc.n_in for ql in qmodel.layers if ql.format.startswith("perm")],
                   default=0)
        cfg = cfg.with_(perm_depth=max(cfg.perm_depth, 1 << max(0, need - 1).bit_length()))
    descs = []
    for ql in qmodel.layers:
        descs += [p[0] for p in _passes(ql, cfg)] if ql.format == "slim" else [ql.desc]
    return cfg.fit_buffers(descs)


def out_shape(ql):
    """``(channels, h, w)`` of a model layer's output (a slim layer's approximated features
    included)."""
    d = ql.desc
    extra = ql.extra.get("n_approx", 0) if ql.format == "slim" else 0
    return (d.n_out + extra, d.h_out, d.w_out)


def _passes(ql, cfg):
    """``[(desc, w, b, is_approx)]``: the engine passes of a slim conv layer.

    One pass per run of equal-kernel tiles (:func:`slimnfu.compress.slim.passes`), its
    ``k_t x k_t`` weights centred in the layer's kernel (``koff``) and its outputs placed at
    their tile (``nbout_base``); then, with approximated features, a 1x1 pass over the kept
    features that fills the tiles after them (``lane_skip`` keeps the kept lanes of a shared
    tile).
    """
    from slimnfu.compress import slim

    d, e = ql.desc, ql.extra
    hw = d.h_out * d.w_out
    out = []
    for p in slim.passes(ql, cfg.tn):
        lo, hi = p["filters"]
        kt, off = p["k"], p["off"]
        desc = LayerDesc("conv", d.n_in, hi - lo, d.h_in, d.w_in, k=kt, stride=d.stride,
                         pad=d.pad, koff=off, shift=d.shift, act=d.act, seg_shift=d.seg_shift,
                         lane_k=tuple(p["lane_k"] or ()), nbout_base=lo // cfg.tn * hw)
        out.append((desc, ql.w[lo:hi, :, off:off + kt, off:off + kt], ql.b[lo:hi], False))
    if e["n_approx"]:
        kept, skip = d.n_out, d.n_out % cfg.tn
        desc = LayerDesc("conv", kept, skip + e["n_approx"], d.h_out, d.w_out, k=1,
                         shift=e["approx_f"], act=d.act, seg_shift=d.seg_shift,
                         nbout_base=kept // cfg.tn * hw, lane_skip=skip)
        w = torch.cat([torch.zeros(skip, kept, dtype=torch.int64), e["approx_w"]])
        b = torch.cat([torch.zeros(skip, dtype=torch.int64), e["approx_b"]])
        out.append((desc, w.view(*w.shape, 1, 1), b, True))
    return out


def _check_layer(ql, cfg):
    if ql.format not in FORMATS:
        raise ValueError(f"layer {ql.name}: format {ql.format!r} does not run on the "
                         f"accelerator (it runs {', '.join(FORMATS)})")
    if ql.format == "ikr" and not cfg.ikr:
        raise ValueError(f"layer {ql.name} is IKR, but config {cfg.name!r} has ikr=False")
    if ql.format.startswith("perm") and not cfg.perm:
        raise ValueError(f"layer {ql.name} is {ql.format}, but config {cfg.name!r} has "
                         f"perm=False")
    if ql.format == "slim" and not cfg.kgate:
        raise ValueError(f"layer {ql.name} is slim (method A), but config {cfg.name!r} has "
                         f"kgate=False")
    descs = ([(p[0], p[2]) for p in _passes(ql, cfg)] if ql.format == "slim"
             else [(ql.desc, ql.b)])
    for desc, b in descs:
        try:
            desc.check(cfg, None if b is None or not b.numel() else int(b.abs().max()))
        except ValueError as exc:
            raise ValueError(f"layer {ql.name}: {exc}") from None


def _move(prev, ql, cfg):
    """How layer ``ql`` gets its input from ``prev``'s NBout."""
    d = ql.desc
    n, h, w = out_shape(prev)
    if d.kind == "fc" and not prev.desc.kind == "fc":
        if d.n_in != n * h * w:
            raise ValueError(f"layer {ql.name}: n_in={d.n_in}, but {prev.name} gives "
                             f"{n}x{h}x{w} values")
        return ("flatten", n, h, w)
    if (d.n_in, d.h_in, d.w_in) != (n, h, w):
        raise ValueError(f"layer {ql.name} takes {d.n_in}x{d.h_in}x{d.w_in}, but {prev.name} "
                         f"gives {n}x{h}x{w}")
    return ("copy", -(-n // cfg.tn) * h * w)


def compile_model(qmodel, cfg):
    """Compile ``qmodel`` for ``cfg``; see the module docstring.

    Raises
    ------
    ValueError
        Naming the layer: a format the accelerator does not run, a method flag ``cfg`` lacks, a
        layer that does not fit the buffers, or a shape that does not chain; or a config with
        other number widths than the model's.
    """
    from slimnfu.gen.image import _layer_memories, dense_memories
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
        if ql.format == "slim":
            parts = [(f"{ql.name}.approx" if apx else f"{ql.name}.k{d.k}", d,
                      dense_memories(d, w, b, ql.pwl, cfg), apx)
                     for d, w, b, apx in _passes(ql, cfg)]
        else:
            parts = [(ql.name, ql.desc, _layer_memories(ql, cfg), False)]
        for n, (name, desc, memories, apx) in enumerate(parts):
            loads = []
            for item, (words, item_width) in memories.items():
                loads.append((LOAD_SEL[item], len(rom), len(words)))
                rom.extend(int(w) for w in words)
                stored += len(words) * item_width
            if n == 0:
                pmove = move
            elif apx:
                kept = ql.desc.n_out
                pmove = ("copy", -(-kept // cfg.tn) * ql.desc.h_out * ql.desc.w_out)
            else:
                pmove = ("none",)
            last = n == len(parts) - 1
            layers.append(ProgramLayer(name, desc, descriptor_value(desc, cfg), loads, pmove,
                                       ql.format, i if last else None, out_shape(ql)))
    first = qmodel.layers[0].desc
    if first.nbin_words(cfg) > cfg.nbin_depth:
        raise ValueError(f"layer {qmodel.layers[0].name}: the input needs "
                         f"{first.nbin_words(cfg)} NBin words, config {cfg.name!r} has "
                         f"{cfg.nbin_depth}")
    stats = {"rom_words": len(rom), "rom_width": width, "stored_bits": stored,
             "layers": len(layers)}
    return Program(cfg, layers, rom, width, tuple(qmodel.input_shape), stats)


def write_rom_image(program, out_dir):
    """Write a compiled program as files, atomically: ``rom.hex`` (the weight ROM, one word per
    line, ``$readmemh`` style: the words the ROM build's memory holds) and ``program.json``
    (the config, each layer's name, format, descriptor, descriptor value, loads and move,
    and the sha256 of ``rom.hex``). Returns the manifest dict.
    """
    import hashlib
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from slimnfu.gen.image import _move_into_place

    out = Path(out_dir)
    if out.exists() and not (out / "program.json").is_file():
        raise ValueError(f"{out} exists and is not a ROM image; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        digits = -(-program.rom_width // 4)
        text = "".join(f"{w:0{digits}x}\n" for w in program.rom)
        (tmp / "rom.hex").write_text(text)
        manifest = {"schema": "slimnfu-rom", "version": 1, "config": program.cfg.to_dict(),
                    "rom": {"file": "rom.hex", "words": len(program.rom),
                            "width": program.rom_width,
                            "sha256": hashlib.sha256(text.encode()).hexdigest()},
                    "stats": program.stats,
                    "layers": [{"name": l.name, "format": l.format, "desc": l.desc.to_dict(),
                                "desc_value": hex(l.desc_value), "loads": [list(x) for x in
                                                                          l.loads],
                                "move": list(l.move), "ref": l.ref,
                                "out_shape": list(l.out_shape)} for l in program.layers]}
        (tmp / "program.json").write_text(json.dumps(manifest, indent=1) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
