"""The network compiler: a quantised model becomes a layer program and one weight ROM.

:func:`compile_model` turns a :class:`slimnfu.formats.QuantModel` (layers of any weight format,
mixed freely) into a :class:`slimnfu.contract.Program` for one :class:`AccelConfig`. The
program is what :class:`slimnfu.rtl.accelerator.Accelerator` bakes in:

- ``rom``: every memory word of every engine pass, as each layer's weight format lays them
  out (:meth:`slimnfu.formats.base.WeightFormat.passes`; zero-extended to ``load_data``);
- per engine pass, the descriptor value, the loads that copy its words from the ROM into the
  engine's memories, and the neuron buffers it reads and writes (``in_buf``, ``out_buf``).

No activation moves between layers: the engine's neuron buffers are a ping-pong pair, and each
model layer reads the buffer the previous one wrote (the host writes the image into buffer 0)
and writes the other. A later pass of a slim layer reads the layer's input (``reads ==
"same"``) or, for the approximation pass, the kept features its earlier passes wrote, in the
buffer it also writes (``in_buf == out_buf``: it reads only words it does not write).

The conv-to-FC flatten is done here, on the weights: the conv output lies in the buffer as
channel tiles (word ``t*h*w + p`` holds channels ``t*tn ..`` at pixel ``p``), so the FC layer
gets its columns permuted into that order (:func:`buffer_order`; the channels of a last,
partial tile are padding columns with zero weights), through its format's
:meth:`~slimnfu.formats.base.WeightFormat.relayout_input`: ``dense`` and ``perm_index``
permute their columns, ``perm_affine`` records the order and its address generators walk
PyTorch's flatten order over the buffer's (``PassDesc.flatten``). No value is moved
(``move_cycles`` is 0); a layer whose format cannot take the order (``perm_affine`` with
quadratic rows) is refused, naming it. With ``h*w == 1`` the two orders are the same and
nothing changes.

**im2col.** A first layer that is a conv with fewer input channels than the engine has input
lanes (``n_in < ti``) and ``k > 1`` leaves most of NFU-1 idle: ``ceil(n_in/ti) = 1`` input tile
for ``k*k`` steps per output group. Such a layer may run as a 1x1 conv over the image's
patches (:meth:`~slimnfu.formats.base.WeightFormat.im2col`): the host writes, per output
position, the window's values as channels (:func:`slimnfu.formats.layout.patch_input`,
:class:`slimnfu.contract.Im2col`), ``ceil(channels/ti)`` steps a group instead of ``k*k``, at
the price of a larger input to write. ``compile_model(..., im2col=)`` takes ``"auto"`` (the
default: compile both ways and keep im2col when the schedule model,
:func:`slimnfu.gen.schedule.inference_cycles`, says the inference takes fewer cycles counted
from the first input word, and when the patches fit the neuron buffer), ``"on"`` (im2col or a
``ValueError`` saying why not) or ``"off"``; ``Program.stats["im2col"]`` records the choice
and both counts, ``Program.im2col`` the input layout, and each pass ``ProgramLayer.im2col``.

The chain relies on ``tn == ti`` (which every :class:`AccelConfig` has): an NBout word is an
NBin word, and either buffer holds a layer's input or output, so both must hold the largest
(:func:`config_for` gives them the same depth, what the program needs, the first layer's
patches included when it can run as im2col). Anything the engine cannot run is refused with
a :class:`ValueError` naming the layer, before any Verilog is emitted.
"""

import hashlib
import json

from slimnfu.atomic import write_folder
from slimnfu.config import IM2COL_MODES, AccelConfig
from slimnfu.contract import Im2col, Program, ProgramLayer, descriptor_value, load_data_width
from slimnfu.formats.layout import buffer_order
from slimnfu.gen.schedule import inference_cycles

__all__ = ["compile_model", "config_for", "buffer_words", "buffer_depth", "out_shape",
           "write_rom_image", "buffer_order", "engine_layers", "im2col_layer"]


def config_for(qmodel, base, im2col="auto"):
    """``base`` with the method features ``qmodel``'s formats need switched on, SB and bias
    that hold every engine pass (depths kept or raised to powers of two; an FC pass's SB words
    stream through SB, :meth:`slimnfu.config.PassDesc.sb_ring`, so SB is as deep as the
    conv passes need, at least ``base.sb_depth``), and neuron buffers
    as deep as the program needs them (:func:`buffer_words`, rounded up by
    :func:`buffer_depth`), whatever the named config says: every read port of a buffer is a
    copy of it in block RAM, so depth the program does not use costs blocks many times over.
    Both buffers get the same depth: the engine addresses either with the same address
    widths (its input address is ``nbin_depth`` wide, its output address ``nbout_depth``).
    Unless ``im2col`` is ``"off"``, they also hold the first layer's patches when it can run
    as im2col (:func:`compile_model` then chooses by cycles)."""
    layers = [ql for ql, _ in engine_layers(qmodel, base)]
    by_format = {}
    for ql in layers:
        by_format.setdefault(ql.weight_format, []).append(ql)
    cfg = base
    for fmt, group in by_format.items():
        cfg = fmt.configure(cfg, group)
    cfg = cfg.fit_buffers([p.desc for ql in layers for p in ql.weight_format.passes(ql, cfg)],
                          stream=True)
    words = max(buffer_words(qmodel, cfg))
    first, patches = (None, None) if im2col == "off" else im2col_layer(qmodel, cfg)
    if first is not None:
        # room for the image's patches too, so that compile_model can choose im2col by cycles
        # (the 1x1 layer's output and every later pass are the plain program's)
        words = max(words, patches.words(cfg))
    depth = buffer_depth(words)
    return cfg.with_(nbin_depth=depth, nbout_depth=depth)


def buffer_depth(words):
    """A neuron buffer's depth for ``words``: the next power of two up to 512 words, above
    that the next multiple of 512 (a DP16KD's depth in its 512 x 36 mode)."""
    if words <= 512:
        return max(2, 1 << max(0, words - 1).bit_length())
    return -(-words // 512) * 512


def _passes_with_buffers(qmodel, cfg, first=None):
    """Per engine pass of ``qmodel`` on ``cfg``: ``(ql, pass, move, (in_buf, out_buf), last,
    model layer index)``, the ping-pong of the module docstring; ``first`` replaces the first
    layer (its im2col layer)."""
    data = 0  # the buffer holding the previous layer's output (the image: buffer 0)
    for i, (ql, move) in enumerate(engine_layers(qmodel, cfg)):
        if i == 0 and first is not None:
            ql = first
        passes = ql.weight_format.check(ql, cfg, stream=True)
        for n, p in enumerate(passes):
            bufs = (1 - data, 1 - data) if p.reads == "kept" else (data, 1 - data)
            yield ql, p, move, bufs, n == len(passes) - 1, i
        data = 1 - data


def buffer_words(qmodel, cfg):
    """``(words of buffer 0, words of buffer 1)`` the program of ``qmodel`` on ``cfg`` uses:
    the image, and every pass's input and output in the buffer the ping-pong gives it."""
    need = [qmodel.layers[0].desc.nbin_words(cfg), 0]
    for _, p, _, bufs, _, _ in _passes_with_buffers(qmodel, cfg):
        need[bufs[0]] = max(need[bufs[0]], p.desc.nbin_words(cfg))
        need[bufs[1]] = max(need[bufs[1]], p.desc.nbout_base + p.desc.nbout_words(cfg))
    return tuple(need)


def engine_layers(qmodel, cfg):
    """Per model layer, the layer the engine runs and how its input arrives: ``(ql, move)``.

    ``move`` is ``("image",)`` for the first layer, else ``("none",)`` (see the module
    docstring); an FC layer after a conv output of more than one pixel is the re-laid layer of
    :func:`buffer_order`. Raises ``ValueError`` naming the layer when shapes do not chain or
    when its format cannot take its inputs in the buffer's order."""
    out = []
    for i, ql in enumerate(qmodel.layers):
        if i == 0:
            out.append((ql, ("image",)))
            continue
        prev, d = qmodel.layers[i - 1], ql.desc
        n, h, w = out_shape(prev)
        if d.kind == "fc" and not prev.desc.kind == "fc":
            if d.n_in != n * h * w:
                raise ValueError(f"layer {ql.name}: n_in={d.n_in}, but {prev.name} gives "
                                 f"{n}x{h}x{w} values")
            if h * w > 1:
                try:
                    relaid = ql.weight_format.relayout_input(ql, buffer_order(n, h, w, cfg.tn))
                except ValueError as exc:
                    raise ValueError(f"layer {ql.name}: {exc}") from None
                if relaid is None:
                    raise ValueError(f"layer {ql.name}: format {ql.format!r} cannot take its "
                                     f"inputs in the neuron buffer's order, and {prev.name} "
                                     f"gives {n}x{h}x{w} values (an FC layer after a conv "
                                     f"output of more than one pixel)")
                out.append((relaid, ("none",)))
                continue
        elif (d.n_in, d.h_in, d.w_in) != (n, h, w):
            raise ValueError(f"layer {ql.name} takes {d.n_in}x{d.h_in}x{d.w_in}, but "
                             f"{prev.name} gives {n}x{h}x{w}")
        out.append((ql, ("none",)))
    return out


def out_shape(ql):
    """``(channels, h, w)`` of a model layer's output (a slim layer's approximated features
    included)."""
    d = ql.desc
    return (ql.weight_format.out_channels(ql), d.h_out, d.w_out)


def im2col_layer(qmodel, cfg):
    """The first layer of ``qmodel`` as an im2col layer for ``cfg``: ``(layer, Im2col)``, or
    ``(None, why)`` when it is not a conv with ``n_in < ti`` and ``k > 1`` or its format
    cannot run so (:meth:`~slimnfu.formats.base.WeightFormat.im2col`)."""
    ql = qmodel.layers[0]
    d = ql.desc
    if d.kind != "conv" or d.k == 1 or d.n_in >= cfg.ti:
        what = (f"a {d.kind} layer" if d.kind != "conv" else
                f"a conv with k={d.k}, n_in={d.n_in} and ti={cfg.ti}")
        return None, (f"layer {ql.name} is {what}; im2col takes a first conv with k > 1 "
                      f"and n_in < ti")
    new = ql.weight_format.im2col(ql)
    if new is None:
        return None, (f"layer {ql.name}: format {ql.format!r} cannot run as a 1x1 conv over "
                      f"patches")
    return new, Im2col(ql.name, d.n_in, d.h_in, d.w_in, d.k, d.stride, d.pad, new.desc.n_in)


def compile_model(qmodel, cfg, im2col="auto"):
    """Compile ``qmodel`` for ``cfg``; see the module docstring.

    Parameters
    ----------
    qmodel : QuantModel
    cfg : AccelConfig
    im2col : str
        One of :data:`slimnfu.config.IM2COL_MODES`: ``"auto"`` (run the first layer as
        im2col when it fits and the schedule model says the inference is faster), ``"on"``
        or ``"off"``.

    Raises
    ------
    ValueError
        Naming the layer: a layer its weight format cannot hold (a value outside its width, a
        shape that is not the descriptor's: :meth:`QuantModel.check`), a method feature
        ``cfg`` lacks, a layer that does not fit the buffers (its input or output in the
        neuron buffer the ping-pong gives it), or a shape that does not chain; or a config
        with other number widths than the model's; or ``im2col="on"`` for a network whose
        first layer cannot run so (saying why).
    """
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {type(cfg).__name__}")
    if im2col not in IM2COL_MODES:
        raise ValueError(f"im2col must be one of {', '.join(IM2COL_MODES)}, not {im2col!r}")
    if (cfg.dw, cfg.acc) != (qmodel.dw, qmodel.acc):
        raise ValueError(f"config {cfg.name!r} has dw={cfg.dw}, acc={cfg.acc}, but the model is "
                         f"quantised for dw={qmodel.dw}, acc={qmodel.acc}")
    if not qmodel.layers:
        raise ValueError("the model has no layers")
    plain = None if im2col == "on" else _compile(qmodel, cfg)
    choice = {"mode": im2col, "layer": qmodel.layers[0].name, "chosen": False, "why": None}
    if im2col == "off":
        choice["why"] = "switched off"
        plain.stats["im2col"] = choice
        return plain
    new, im = im2col_layer(qmodel, cfg)
    patched = None
    if new is None:
        choice["why"] = im
    else:
        try:
            patched = _compile(qmodel, cfg, (new, im))
        except ValueError as exc:
            if im2col == "on":
                raise
            choice["why"] = f"does not fit: {exc}"
    if im2col == "on":
        if patched is None:
            raise ValueError(f"im2col='on': {choice['why']}")
        choice.update(chosen=True, why="switched on")
        patched.stats["im2col"] = choice
        return patched
    if patched is not None:
        cycles = {"off": inference_cycles(plain), "on": inference_cycles(patched)}
        choice.update(chosen=cycles["on"] < cycles["off"], cycles=cycles,
                      input_words={"off": plain.input_words(), "on": patched.input_words()})
        choice["why"] = (f"{cycles['on']} cycles against {cycles['off']} from the first input "
                         f"word (schedule model)")
    out = patched if choice["chosen"] else plain
    out.stats["im2col"] = choice
    return out


def _compile(qmodel, cfg, im2col=None):
    """The program of ``qmodel`` for ``cfg``; ``im2col`` is ``(layer, Im2col)`` of
    :func:`im2col_layer` to run the first layer so, or None."""
    width = load_data_width(cfg)
    rom, layers, stored = [], [], 0
    depths = (cfg.nbin_depth, cfg.nbout_depth)
    for ql, p, move, bufs, last, i in _passes_with_buffers(qmodel, cfg,
                                                          im2col[0] if im2col else None):
        loads = []
        for words in p.memories.values():
            loads.append((int(words.sel), len(rom), len(words.words)))
            rom.extend(words.loaded)
            stored += words.bits
        pmove = move if p.reads == "layer" else ("none",)
        for buf, words, what in ((bufs[0], p.desc.nbin_words(cfg), "input"),
                                 (bufs[1], p.desc.nbout_base + p.desc.nbout_words(cfg),
                                  "output")):
            if words > depths[buf]:
                raise ValueError(f"layer {p.name}: its {what} needs {words} words of neuron "
                                 f"buffer {buf}, config {cfg.name!r} has {depths[buf]} "
                                 f"({('nbin_depth', 'nbout_depth')[buf]})")
        # _passes_with_buffers has checked the pass (WeightFormat.check, stream=True)
        layers.append(ProgramLayer(p.name, p.desc, descriptor_value(p.desc, cfg, check=False),
                                   loads, pmove, ql.format, i if last else None,
                                   out_shape(qmodel.layers[i]), *bufs,
                                   im2col=i == 0 and im2col is not None))
    program = Program(cfg, layers, rom, width, tuple(qmodel.input_shape), {},
                      im2col[1] if im2col else None)
    words = program.input_words()
    if words > cfg.nbin_depth:
        raise ValueError(f"layer {qmodel.layers[0].name}: the input needs {words} NBin words, "
                         f"config {cfg.name!r} has {cfg.nbin_depth}")
    program.stats = {"rom_words": len(rom), "rom_width": width, "stored_bits": stored,
                     "layers": len(layers), "input_words": words}
    return program


def write_rom_image(program, out_dir):
    """Write a compiled program as files, atomically: ``rom.hex`` (the weight ROM, one word per
    line, ``$readmemh`` style: the words the ROM build's memory holds) and ``program.json``
    (the config, each layer's name, format, descriptor, descriptor value, loads, move and
    neuron buffers,
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
                            "move": list(l.move), "in_buf": l.in_buf, "out_buf": l.out_buf,
                            "ref": l.ref, "im2col": l.im2col,
                            "out_shape": list(l.out_shape)} for l in program.layers],
                "im2col": None if program.im2col is None else program.im2col.to_dict()}
    write_folder(out_dir, {"rom.hex": text,
                           "program.json": json.dumps(manifest, indent=1) + "\n"},
                 "ROM image", legacy=("program.json", "slimnfu-rom"))
    return manifest
