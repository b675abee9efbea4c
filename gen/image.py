"""Weight images: a quantised model as a folder of ``$readmemh`` files plus a manifest.

Folder contents
---------------
``manifest.json``
    ``{"schema": "slimnfu-image", "version": 1, "config", "dw", "acc", "f_in", "input_shape",
    "calib", "layers": [...], "files": {name: {"sha256", "words", "width"}}, "program",
    "stats"}``. Each layer holds ``name``, ``desc`` (:meth:`LayerDesc.to_dict`), ``format``,
    ``f_x``, ``f_w``, ``f_y``, ``act_func``, ``files``, ``words`` and ``bits`` per stored item,
    and ``fits`` / ``fits_error``: whether the config's buffers can run the layer
    (:meth:`LayerDesc.check`; an image is not tied to one run, so large layers are still
    exported). ``stats`` is :func:`slimnfu.compress.accounting.model_stats` with the config.
``<layer>.weights.hex``, ``<layer>.bias.hex``, ``<layer>.pwl.hex``
    One word per line, lowercase hex zero-padded to the word width, in the layouts of
    :mod:`slimnfu.gen.layout` (SB words, bias words, PWL words).
``program.hex``
    The layer descriptors (:func:`slimnfu.rtl.descriptor.descriptor_value`), one per line.

:func:`export` builds the folder in a hidden temporary sibling and renames it into place, so a
folder is either complete or absent. :func:`load` checks the whole folder before returning and
raises :class:`ImageError` naming the file and the field of the first problem.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from slimnfu.config import AccelConfig, LayerDesc
from slimnfu.compress import fixed
from slimnfu.compress.accounting import model_stats
from slimnfu.compress.quant import QLayer, QuantModel
from slimnfu.gen import layout
from slimnfu.rtl.descriptor import descriptor_value

__all__ = ["SCHEMA", "VERSION", "ImageError", "export", "load", "read_hex"]

SCHEMA, VERSION = "slimnfu-image", 1
MANIFEST = "manifest.json"
_TOP_KEYS = {"schema", "version", "config", "dw", "acc", "f_in", "input_shape", "calib",
             "layers", "files", "program", "stats"}
_LAYER_KEYS = {"name", "desc", "format", "f_x", "f_w", "f_y", "act_func", "files", "words",
               "bits", "fits", "fits_error"}
_FILE_KEYS = {"sha256", "words", "width"}

#: Compressed storage formats an image can hold, and the module that writes and reads them:
#: ``image_memories(qlayer, cfg) -> {item: (words, width)}`` and
#: ``image_restore(entry, files, contents, desc, cfg, where) -> QLayer`` (raises ImageError);
#: optionally ``IMAGE_LAYER_KEYS`` and ``image_entry(qlayer) -> dict``, extra manifest fields.
FORMAT_MODULES = {"ikr": "slimnfu.compress.ikr",
                  "perm_affine": "slimnfu.compress.permfc",
                  "perm_index": "slimnfu.compress.permfc"}


def _format_module(name):
    import importlib
    return importlib.import_module(FORMAT_MODULES[name])


class ImageError(ValueError):
    """A weight image is corrupt, truncated, of another version or inconsistent."""

    def __init__(self, file, field, problem):
        self.file, self.field = file, field
        super().__init__(f"{file}: {field}: {problem}")


def _hex_text(words, width):
    digits = -(-width // 4)
    return "".join(f"{w:0{digits}x}\n" for w in words)


def _write_file(folder, name, text):
    with open(folder / name, "w") as f:
        f.write(text)


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _layer_memories(qlayer, cfg):
    """``{item: (words, width)}`` of one layer, from the layout functions."""
    if qlayer.format in FORMAT_MODULES:
        return _format_module(qlayer.format).image_memories(qlayer, cfg)
    return dense_memories(qlayer.desc, qlayer.w, qlayer.b, qlayer.pwl, cfg)


def dense_memories(desc, w, b, pwl, cfg):
    """``{item: (words, width)}`` of a dense layer (or one engine pass): weights and bias
    (not for pooling) and the PWL table (``act="pwl"``)."""
    mem = {}
    if not desc.is_pool:
        mem["weights"] = (layout.pack_weights(w, cfg), cfg.tn * cfg.ti * cfg.dw)
        mem["bias"] = (layout.pack_bias(b, cfg), cfg.tn * cfg.acc)
    if desc.act == "pwl":
        mem["pwl"] = (layout.pack_pwl(pwl, cfg), 3 * cfg.dw)
    return mem


def _fits(qlayer, cfg):
    try:
        qlayer.desc.check(cfg, None if qlayer.b is None else int(qlayer.b.abs().max()))
        return True, None
    except ValueError as exc:
        return False, str(exc)


def export(qmodel, cfg, out_dir):
    """Write ``qmodel`` as a weight image for ``cfg`` into ``out_dir``, atomically.

    An existing image at ``out_dir`` is replaced; any other existing path is refused.

    Returns
    -------
    dict
        The manifest written.
    """
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {type(cfg).__name__}")
    if (cfg.dw, cfg.acc) != (qmodel.dw, qmodel.acc):
        raise ValueError(f"config {cfg.name!r} has dw={cfg.dw}, acc={cfg.acc}, but the model is "
                         f"quantised for dw={qmodel.dw}, acc={qmodel.acc}")
    out = Path(out_dir)
    if out.exists() and not (out / MANIFEST).is_file():
        raise ValueError(f"{out} exists and is not a weight image; refusing to replace it")
    for ql in qmodel.layers:
        if ql.format != "dense" and ql.format not in FORMAT_MODULES:
            raise ValueError(f"layer {ql.name}: format {ql.format!r} cannot be exported yet "
                             f"(only 'dense')")
    stats = model_stats(qmodel, cfg)
    program = [descriptor_value(ql.desc, cfg, check=False) for ql in qmodel.layers]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files, layers = {}, []
        for ql, st in zip(qmodel.layers, stats["layers"]):
            entry = {"name": ql.name, "desc": ql.desc.to_dict(), "format": ql.format,
                     "f_x": ql.f_x, "f_w": ql.f_w, "f_y": ql.f_y, "act_func": ql.act_func,
                     "files": {}, "words": {}, "bits": {}}
            entry["fits"], entry["fits_error"] = _fits(ql, cfg)
            if ql.format in FORMAT_MODULES:
                entry.update(getattr(_format_module(ql.format), "image_entry",
                                     lambda _: {})(ql))
            accounted = {i["name"]: i for i in st["items"]}
            for item, (words, width) in _layer_memories(ql, cfg).items():
                fname = f"{ql.name}.{item}.hex"
                text = _hex_text(words, width)
                _write_file(tmp, fname, text)
                if accounted[item]["image_bits"] != len(words) * width:
                    raise AssertionError(f"accounting says {accounted[item]['image_bits']} bits "
                                         f"for {fname}, the writer wrote {len(words) * width}")
                files[fname] = {"sha256": _sha256(text.encode()), "words": len(words),
                                "width": width}
                entry["files"][item] = fname
                entry["words"][item] = len(words)
                entry["bits"][item] = len(words) * width
            layers.append(entry)
        width = _program_width(cfg)
        text = _hex_text(program, width)
        _write_file(tmp, "program.hex", text)
        files["program.hex"] = {"sha256": _sha256(text.encode()), "words": len(program),
                                "width": width}
        manifest = {"schema": SCHEMA, "version": VERSION, "config": cfg.to_dict(),
                    "dw": qmodel.dw, "acc": qmodel.acc, "f_in": qmodel.f_in,
                    "input_shape": list(qmodel.input_shape), "calib": dict(qmodel.calib),
                    "layers": layers, "files": files, "program": "program.hex", "stats": stats}
        _write_file(tmp, MANIFEST, json.dumps(manifest, indent=1) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _program_width(cfg):
    from slimnfu.rtl.descriptor import descriptor_layout
    return descriptor_layout(cfg).size


def _move_into_place(tmp, out):
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "image")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "image", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def read_hex(path, words, width, name=None):
    """Read a ``$readmemh`` file of exactly ``words`` words of ``width`` bits."""
    name = name or Path(path).name
    digits = -(-width // 4)
    lines = Path(path).read_text().splitlines()
    if len(lines) != words:
        raise ImageError(name, "words", f"has {len(lines)} words, the manifest says {words}")
    out = []
    for n, line in enumerate(lines, 1):
        try:
            value = int(line, 16) if len(line) == digits else -1
        except ValueError:
            value = -1
        if not 0 <= value < 1 << width:
            raise ImageError(name, f"line {n}", f"{line!r} is not a {width}-bit word of "
                                                f"{digits} hex digits")
        out.append(value)
    return out


def _require_keys(d, keys, file, where):
    if not isinstance(d, dict):
        raise ImageError(file, where, f"must be an object, not {type(d).__name__}")
    unknown = sorted(set(d) - keys)
    if unknown:
        raise ImageError(file, f"{where}.{unknown[0]}" if where else unknown[0],
                         "unknown field")
    missing = sorted(keys - set(d))
    if missing:
        raise ImageError(file, f"{where}.{missing[0]}" if where else missing[0],
                         "missing field")


def _require_int(value, file, field, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or \
            (low is not None and value < low):
        limit = "an integer" if low is None else f"an integer >= {low}"
        raise ImageError(file, field, f"must be {limit}, not {value!r}")


def crop_padding(t, desc, fname):
    """``t[:n_out, :n_in]`` of a tensor unpacked from Tn x Ti tiles; :class:`ImageError` naming
    ``fname`` when a padding lane past ``n_out`` / ``n_in`` is not zero."""
    core = t[:desc.n_out, :desc.n_in]
    if int(t.abs().sum()) != int(core.abs().sum()):
        raise ImageError(fname, "padding", f"lanes past n_out={desc.n_out} / n_in={desc.n_in} "
                                           f"must be zero")
    return core.clone()


def _unpack_weights(words, desc, cfg, fname):
    ci, co = desc.tiles(cfg)
    k = desc.k
    lanes = layout.unpack_words(words, cfg.tn * cfg.ti, cfg.dw)
    w = (lanes.view(co, ci, k, k, cfg.tn, cfg.ti).permute(0, 4, 1, 5, 2, 3)
         .reshape(co * cfg.tn, ci * cfg.ti, k, k))
    core = crop_padding(w, desc, fname)
    return core if desc.kind == "conv" else core.reshape(desc.n_out, desc.n_in)


def _unpack_bias(words, desc, cfg, fname):
    b = layout.unpack_words(words, cfg.tn, cfg.acc).reshape(-1)
    if int(b[desc.n_out:].abs().sum()):
        raise ImageError(fname, "padding", f"lanes past n_out={desc.n_out} must be zero")
    return b[:desc.n_out].clone()


def _unpack_pwl(words, desc, cfg):
    lanes = layout.unpack_words(words, 1, cfg.dw)  # slope in the low dw bits
    icpt = layout.unpack_words([w >> cfg.dw for w in words], 1, 2 * cfg.dw)
    return fixed.PwlTable(lanes.reshape(-1).tolist(), icpt.reshape(-1).tolist(),
                          desc.seg_shift, cfg.dw)


def _check_chain(layers, m):
    shape, f = tuple(m["input_shape"]), m["f_in"]
    for i, (ql, entry) in enumerate(zip(layers, m["layers"])):
        d, where = ql.desc, f"layers[{i}]"
        if ql.f_x != f:
            raise ImageError(MANIFEST, f"{where}.f_x", f"is {ql.f_x}, the input scale is {f}")
        if d.kind == "fc":
            n = 1
            for s in shape:
                n *= s
            if d.n_in != n:
                raise ImageError(MANIFEST, f"{where}.desc.n_in", f"is {d.n_in}, the previous "
                                                                 f"output has {n} values")
        elif (d.n_in, d.h_in, d.w_in) != shape:
            raise ImageError(MANIFEST, f"{where}.desc", f"input {(d.n_in, d.h_in, d.w_in)} "
                                                        f"does not match the previous output "
                                                        f"{shape}")
        want = 0 if d.is_pool else ql.f_x + ql.f_w - ql.f_y
        if (d.shift if not d.is_pool else ql.f_y - ql.f_x) != want:
            raise ImageError(MANIFEST, f"{where}.desc.shift", "does not equal f_x + f_w - f_y")
        if d.act == "pwl" and ql.act_func not in ("sigmoid", "tanh"):
            raise ImageError(MANIFEST, f"{where}.act_func", f"{ql.act_func!r} is not sigmoid "
                                                            f"or tanh")
        shape = (d.n_out,) if d.kind == "fc" else (d.n_out, d.h_out, d.w_out)
        f = ql.f_y


def load(image_dir):
    """Check a whole weight image and return ``(qmodel, cfg, manifest)``.

    Raises
    ------
    ImageError
        Naming the file and the field of the first problem found.
    """
    folder = Path(image_dir)
    if not (folder / MANIFEST).is_file():
        raise ImageError(str(folder / MANIFEST), "file", "missing (not a weight image)")
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImageError(MANIFEST, "json", f"not valid JSON ({exc})") from None
    if not isinstance(m, dict):
        raise ImageError(MANIFEST, "json", "must be an object")
    if m.get("schema") != SCHEMA:
        raise ImageError(MANIFEST, "schema", f"is {m.get('schema')!r}, expected {SCHEMA!r}")
    if m.get("version") != VERSION:
        raise ImageError(MANIFEST, "version", f"is {m.get('version')!r}; this slimnfu reads "
                                              f"version {VERSION}")
    _require_keys(m, _TOP_KEYS, MANIFEST, "")
    for key, low in (("dw", 1), ("acc", 1), ("f_in", None)):
        _require_int(m[key], MANIFEST, key, low)
    if not isinstance(m["input_shape"], list) or not m["input_shape"]:
        raise ImageError(MANIFEST, "input_shape", "must be a non-empty list of integers")
    for n in m["input_shape"]:
        _require_int(n, MANIFEST, "input_shape", low=1)
    if not isinstance(m["calib"], dict):
        raise ImageError(MANIFEST, "calib", "must be an object")
    try:
        cfg = AccelConfig.from_dict(m["config"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise ImageError(MANIFEST, "config", str(exc)) from None
    if (m["dw"], m["acc"]) != (cfg.dw, cfg.acc):
        raise ImageError(MANIFEST, "dw", f"dw={m['dw']}, acc={m['acc']} differ from the "
                                         f"config's dw={cfg.dw}, acc={cfg.acc}")
    contents = {}
    if not isinstance(m["files"], dict):
        raise ImageError(MANIFEST, "files", "must be an object")
    for fname, info in m["files"].items():
        _require_keys(info, _FILE_KEYS, MANIFEST, f"files.{fname}")
        _require_int(info["words"], MANIFEST, f"files.{fname}.words")
        _require_int(info["width"], MANIFEST, f"files.{fname}.width", low=1)
        path = folder / fname
        if Path(fname).name != fname or not path.is_file():
            raise ImageError(fname, "file", "missing")
        data = path.read_bytes()
        if _sha256(data) != info["sha256"]:
            raise ImageError(fname, "sha256", "does not match the manifest (file changed or "
                                              "corrupted)")
        contents[fname] = read_hex(path, info["words"], info["width"])
    if not isinstance(m["layers"], list) or not m["layers"]:
        raise ImageError(MANIFEST, "layers", "must be a non-empty list")
    layers = []
    for i, e in enumerate(m["layers"]):
        where = f"layers[{i}]"
        fmt = e.get("format") if isinstance(e, dict) else None
        extra_keys = getattr(_format_module(fmt), "IMAGE_LAYER_KEYS", set()) \
            if isinstance(fmt, str) and fmt in FORMAT_MODULES else set()
        _require_keys(e, _LAYER_KEYS | extra_keys, MANIFEST, where)
        for key in ("f_x", "f_w", "f_y"):
            _require_int(e[key], MANIFEST, f"{where}.{key}", low=None)
        if not isinstance(e["name"], str) or not isinstance(e["files"], dict):
            raise ImageError(MANIFEST, where, "name must be a string and files an object")
        try:
            desc = LayerDesc.from_dict(e["desc"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise ImageError(MANIFEST, f"{where}.desc", str(exc)) from None
        if e["format"] in FORMAT_MODULES:
            layers.append(_format_module(e["format"]).image_restore(e, m["files"], contents,
                                                                    desc, cfg, where))
            continue
        if e["format"] != "dense":
            raise ImageError(MANIFEST, f"{where}.format", f"{e['format']!r} is not supported "
                                                          f"(only 'dense')")
        want = {"weights", "bias"} if not desc.is_pool else set()
        if desc.act == "pwl":
            want.add("pwl")
        if set(e["files"]) != want:
            raise ImageError(MANIFEST, f"{where}.files", f"lists {sorted(e['files'])}, a "
                                                         f"{desc.kind} layer with act={desc.act}"
                                                         f" needs {sorted(want)}")
        for item, fname in e["files"].items():
            if fname not in contents:
                raise ImageError(MANIFEST, f"{where}.files.{item}", f"{fname!r} is not listed "
                                                                    f"in files")
        w = b = pwl = None
        if "weights" in want:
            fn = e["files"]["weights"]
            if m["files"][fn]["words"] != desc.sb_words(cfg) or \
                    m["files"][fn]["width"] != cfg.tn * cfg.ti * cfg.dw:
                raise ImageError(fn, "words", f"shape does not match {where}.desc "
                                              f"({desc.sb_words(cfg)} words of "
                                              f"{cfg.tn * cfg.ti * cfg.dw} bits)")
            w = _unpack_weights(contents[fn], desc, cfg, fn)
            fn = e["files"]["bias"]
            if m["files"][fn]["words"] != desc.tiles(cfg)[1] or \
                    m["files"][fn]["width"] != cfg.tn * cfg.acc:
                raise ImageError(fn, "words", f"shape does not match {where}.desc "
                                              f"({desc.tiles(cfg)[1]} words of "
                                              f"{cfg.tn * cfg.acc} bits)")
            b = _unpack_bias(contents[fn], desc, cfg, fn)
        if "pwl" in want:
            fn = e["files"]["pwl"]
            if (m["files"][fn]["words"], m["files"][fn]["width"]) != (16, 3 * cfg.dw):
                raise ImageError(fn, "words", f"a PWL table is 16 words of {3 * cfg.dw} bits")
            try:
                pwl = _unpack_pwl(contents[fn], desc, cfg)
            except ValueError as exc:
                raise ImageError(fn, "table", str(exc)) from None
        layers.append(QLayer(e["name"], desc, w, b, e["f_x"], e["f_w"], e["f_y"], pwl,
                             e["act_func"], e["format"]))
    qmodel = QuantModel(layers, m["dw"], m["acc"], m["f_in"], tuple(m["input_shape"]),
                        dict(m["calib"]))
    _check_chain(layers, m)
    prog = m["program"]
    if prog not in contents:
        raise ImageError(MANIFEST, "program", f"{prog!r} is not listed in files")
    if len(contents[prog]) != len(layers):
        raise ImageError(prog, "words", f"has {len(contents[prog])} descriptors for "
                                        f"{len(layers)} layers")
    for i, (ql, word) in enumerate(zip(layers, contents[prog])):
        if word != descriptor_value(ql.desc, cfg, check=False):
            raise ImageError(prog, f"line {i + 1}", f"descriptor does not match layers[{i}] "
                                                    f"({ql.name})")
    stats = json.loads(json.dumps(model_stats(qmodel, cfg)))
    if not isinstance(m["stats"], dict):
        raise ImageError(MANIFEST, "stats", "must be an object")
    for key, value in stats.items():
        if m["stats"].get(key) != value:
            raise ImageError(MANIFEST, f"stats.{key}", "does not match the accounting of the "
                                                       "stored layers")
    for i, (ql, e) in enumerate(zip(layers, m["layers"])):
        if (e["fits"], e["fits_error"]) != _fits(ql, cfg):
            raise ImageError(MANIFEST, f"layers[{i}].fits", "does not match LayerDesc.check")
    return qmodel, cfg, m
