"""The network compiler: a quantised model becomes a layer program and one weight ROM.

:func:`compile_model` turns a :class:`slimnfu.formats.QuantModel` (layers of any weight format,
mixed freely) into a :class:`slimnfu.contract.Program` for one :class:`AccelConfig`. The
program is what :class:`slimnfu.rtl.accelerator.Accelerator` bakes in:

- ``rom``: every memory word of every engine pass, as each layer's weight format lays them
  out (:meth:`slimnfu.formats.base.WeightFormat.passes`; zero-extended to ``load_data``);
- per engine pass, the descriptor value, the loads that copy its words from the ROM into the
  engine's memories, and how its input gets into NBin: the host writes the image for the first
  layer; later layers take the previous layer's NBout, word for word (``copy``), or
  re-ordered into PyTorch's flatten order when an FC layer follows a conv or pool layer
  (``flatten``); a later pass of the same layer reads the same input (``none``) or the
  outputs its earlier passes wrote (``copy``).

The chain relies on ``tn == ti`` (which every :class:`AccelConfig` has): an NBout word is an
NBin word. Anything the engine cannot run is refused with a :class:`ValueError` naming the
layer, before any Verilog is emitted.
"""

import hashlib
import json

from slimnfu.atomic import write_folder
from slimnfu.config import AccelConfig
from slimnfu.contract import Program, ProgramLayer, descriptor_value, load_data_width

__all__ = ["compile_model", "config_for", "out_shape", "write_rom_image"]


def config_for(qmodel, base):
    """``base`` with the method features ``qmodel``'s formats need switched on and buffers that
    hold every engine pass."""
    by_format = {}
    for ql in qmodel.layers:
        by_format.setdefault(ql.weight_format, []).append(ql)
    cfg = base
    for fmt, layers in by_format.items():
        cfg = fmt.configure(cfg, layers)
    return cfg.fit_buffers([p.desc for ql in qmodel.layers
                            for p in ql.weight_format.passes(ql, cfg)])


def out_shape(ql):
    """``(channels, h, w)`` of a model layer's output (a slim layer's approximated features
    included)."""
    d = ql.desc
    return (ql.weight_format.out_channels(ql), d.h_out, d.w_out)


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
        Naming the layer: a layer its weight format cannot hold (a value outside its width, a
        shape that is not the descriptor's: :meth:`QuantModel.check`), a method feature
        ``cfg`` lacks, a layer that does not fit the buffers, or a shape that does not chain;
        or a config with other number widths than the model's.
    """
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
        passes = ql.weight_format.check(ql, cfg)
        move = ("image",) if i == 0 else _move(qmodel.layers[i - 1], ql, cfg)
        for n, p in enumerate(passes):
            loads = []
            for words in p.memories.values():
                loads.append((int(words.sel), len(rom), len(words.words)))
                rom.extend(int(w) for w in words.words)
                stored += words.bits
            if p.reads == "layer":
                pmove = move
            elif p.reads == "kept":
                pmove = ("copy", -(-ql.desc.n_out // cfg.tn) * ql.desc.h_out * ql.desc.w_out)
            else:
                pmove = ("none",)
            last = n == len(passes) - 1
            layers.append(ProgramLayer(p.name, p.desc, descriptor_value(p.desc, cfg), loads,
                                       pmove, ql.format, i if last else None, out_shape(ql)))
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
    digits = -(-program.rom_width // 4)
    text = "".join(f"{w:0{digits}x}\n" for w in program.rom)
    manifest = {"schema": "slimnfu-rom", "version": 1, "config": program.cfg.to_dict(),
                "rom": {"file": "rom.hex", "words": len(program.rom),
                        "width": program.rom_width,
                        "sha256": hashlib.sha256(text.encode()).hexdigest()},
                "stats": program.stats,
                "layers": [{"name": l.name, "format": l.format, "desc": l.desc.to_dict(),
                            "desc_value": hex(l.desc_value),
                            "loads": [[int(v) for v in x] for x in l.loads],
                            "move": list(l.move), "ref": l.ref,
                            "out_shape": list(l.out_shape)} for l in program.layers]}
    write_folder(out_dir, {"rom.hex": text,
                           "program.json": json.dumps(manifest, indent=1) + "\n"},
                 "ROM image", legacy=("program.json", "slimnfu-rom"))
    return manifest
