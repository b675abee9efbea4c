"""Weight images: a quantised model as a folder of ``$readmemh`` files plus a manifest.

Folder contents
---------------
``manifest.json``
    ``{"schema": "slimnfu-image", "version": 2, "config", "dw", "acc", "f_in", "input_shape",
    "calib", "layers": [...], "files": {name: {"sha256", "words", "width"}}, "program",
    "stats"}``. ``config`` is :meth:`AccelConfig.to_dict`. Each layer holds ``name``, ``desc``
    (:meth:`LayerDesc.to_dict`: geometry and numerics), ``format``, ``f_x``, ``f_w``, ``f_y``,
    ``act_func``, ``files``, ``words`` and ``bits`` per stored item, and ``fits`` /
    ``fits_error``: whether the config's buffers can run the layer as its format's one pass
    (:meth:`PassDesc.check`; an image is not tied to one run, so large layers are still
    exported). ``stats`` is :func:`slimnfu.formats.accounting.model_stats` with the config.
    Version 1 (before the pass record) kept ``ikr_n`` and ``perm`` in ``desc`` and the
    features flat in ``config``; :func:`load` still reads it.
``<layer>.<item>.hex``
    One file per memory the layer's weight format stores
    (:meth:`slimnfu.formats.base.WeightFormat.memories`: ``weights``, ``bias`` and ``pwl`` for
    a dense layer; a compressed format's own items, e.g. ``ikr_index``), one word per line,
    lowercase hex zero-padded to the word width, in the layouts of
    :mod:`slimnfu.formats.layout`. A format's extra manifest fields (``image_keys``) sit in its
    layer entries.
``program.hex``
    The descriptor of each layer run as its format's one pass
    (:meth:`WeightFormat.pass_desc`, :func:`slimnfu.contract.descriptor_value`), one per line.

:func:`export` builds the folder in a hidden temporary sibling and renames it into place, so a
folder is either complete or absent. :func:`load` checks the whole folder before returning and
raises :class:`ImageError` naming the file and the field of the first problem.
"""

import hashlib
import json
import re
from pathlib import Path

from slimnfu import fixed
from slimnfu.atomic import OWNER_MARK, check_folder_target, write_folder
from slimnfu.config import AccelConfig, LayerDesc
from slimnfu.contract import descriptor_layout, descriptor_value
from slimnfu.formats import FORMATS, QuantModel
from slimnfu.formats.accounting import model_stats
from slimnfu.formats.base import ImageError

__all__ = ["SCHEMA", "VERSION", "ImageError", "export", "check_export_target", "load",
           "read_hex"]

SCHEMA, VERSION = "slimnfu-image", 2
#: Versions :func:`load` reads (1: pass fields in ``desc``, flat feature flags in ``config``).
READS = (1, 2)
MANIFEST = "manifest.json"
_TOP_KEYS = {"schema", "version", "config", "dw", "acc", "f_in", "input_shape", "calib",
             "layers", "files", "program", "stats"}
_LAYER_KEYS = {"name", "desc", "format", "f_x", "f_w", "f_y", "act_func", "files", "words",
               "bits", "fits", "fits_error"}
_FILE_KEYS = {"sha256", "words", "width"}
_CALIB_KEYS = {"range_method", "images"}
_HEX_WORD = re.compile(r"[0-9a-f]+")


def _act_func_problem(act, func):
    """Why ``func`` cannot be the ``act_func`` of a layer with activation ``act``, or None: a
    PWL layer names its function (:func:`slimnfu.fixed.parse_pwl_name`), any other none."""
    if act != "pwl":
        return None if func is None else f"is {func!r}; act={act!r} takes one of [None]"
    try:
        fixed.parse_pwl_name(func)
    except ValueError as exc:
        return f"is {func!r}: {exc}"
    return None


def _hex_text(words, width):
    digits = -(-width // 4)
    return "".join(f"{w:0{digits}x}\n" for w in words)


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _fits(qlayer, cfg):
    try:
        qlayer.weight_format.pass_desc(qlayer).check(
            cfg, None if qlayer.b is None else int(qlayer.b.abs().max()))
        return True, None
    except ValueError as exc:
        return False, str(exc)


def check_export_target(out_dir, force=False):
    """Raise ``ValueError`` naming the path unless ``out_dir`` may receive a weight image
    (:func:`slimnfu.atomic.check_folder_target`); commands call it before any long step."""
    return check_folder_target(out_dir, "weight image", force, (MANIFEST, SCHEMA))


def export(qmodel, cfg, out_dir, force=False):
    """Write ``qmodel`` as a weight image for ``cfg`` into ``out_dir``, atomically.

    Every layer is stored by its weight format (:meth:`WeightFormat.memories`), after
    :meth:`QuantModel.check` (no value is written that its width cannot hold). An existing
    image slimnfu wrote at ``out_dir`` is replaced; any other non-empty folder is refused
    (``force`` replaces it), before anything is computed (:func:`slimnfu.atomic.
    check_folder_target`).

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
    out = check_export_target(out_dir, force)
    qmodel.check()
    stats = model_stats(qmodel, cfg)
    program = [descriptor_value(ql.weight_format.pass_desc(ql), cfg, check=False)
               for ql in qmodel.layers]
    texts, files, layers = {}, {}, []

    def put(fname, words, width):
        texts[fname] = _hex_text(words, width)
        files[fname] = {"sha256": _sha256(texts[fname].encode()), "words": len(words),
                        "width": width}

    for ql in qmodel.layers:
        fmt = ql.weight_format
        entry = {"name": ql.name, "desc": ql.desc.to_dict(), "format": ql.format,
                 "f_x": ql.f_x, "f_w": ql.f_w, "f_y": ql.f_y, "act_func": ql.act_func,
                 "files": {}, "words": {}, "bits": {}, **fmt.image_entry(ql)}
        entry["fits"], entry["fits_error"] = _fits(ql, cfg)
        for item, words in fmt.memories(ql, cfg).items():
            fname = f"{ql.name}.{item}.hex"
            put(fname, words.words, words.width)
            entry["files"][item] = fname
            entry["words"][item] = len(words.words)
            entry["bits"][item] = words.bits
        layers.append(entry)
    put("program.hex", program, descriptor_layout(cfg).size)
    manifest = {"schema": SCHEMA, "version": VERSION, "config": cfg.to_dict(),
                "dw": qmodel.dw, "acc": qmodel.acc, "f_in": qmodel.f_in,
                "input_shape": list(qmodel.input_shape), "calib": dict(qmodel.calib),
                "layers": layers, "files": files, "program": "program.hex", "stats": stats}
    texts[MANIFEST] = json.dumps(manifest, indent=1) + "\n"
    write_folder(out, texts, "weight image", force, (MANIFEST, SCHEMA))
    return manifest


def read_hex(path, words, width, name=None, data=None):
    """Read a ``$readmemh`` file of exactly ``words`` words of ``width`` bits, each exactly as
    :func:`export` writes it: ``ceil(width/4)`` lowercase hex digits and a newline."""
    name = name or Path(path).name
    digits = -(-width // 4)
    data = Path(path).read_bytes() if data is None else data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ImageError(name, f"byte {exc.start}", "is not ASCII (a hex file holds only hex "
                                                    "digits and newlines)") from None
    lines = text.split("\n")
    if lines[-1] != "":
        raise ImageError(name, f"line {len(lines)}", "the last line does not end with a "
                                                     "newline")
    lines.pop()
    if len(lines) != words:
        raise ImageError(name, "words", f"has {len(lines)} words, the manifest says {words}")
    out = []
    for n, line in enumerate(lines, 1):
        value = int(line, 16) if _HEX_WORD.fullmatch(line) and len(line) == digits else -1
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


def _check_calib(calib):
    _require_keys(calib, _CALIB_KEYS, MANIFEST, "calib")
    method = calib["range_method"]
    if method != "max" and (isinstance(method, bool) or not isinstance(method, (int, float))
                            or not 50 <= method <= 100):
        raise ImageError(MANIFEST, "calib.range_method", f"must be 'max' or a percentile in "
                                                         f"[50, 100], not {method!r}")
    _require_int(calib["images"], MANIFEST, "calib.images", low=1)


def _check_sizes(entry, files, where):
    """A layer's ``words`` and ``bits`` are those of the files it lists."""
    for key in ("words", "bits"):
        if not isinstance(entry[key], dict) or set(entry[key]) != set(entry["files"]):
            raise ImageError(MANIFEST, f"{where}.{key}", "must give a number for each listed "
                                                         "item")
    for item, fname in entry["files"].items():
        info = files.get(fname)
        if info is None:
            raise ImageError(MANIFEST, f"{where}.files.{item}", f"{fname!r} is not listed in "
                                                                f"files")
        if entry["words"][item] != info["words"] or type(entry["words"][item]) is not int:
            raise ImageError(MANIFEST, f"{where}.words.{item}", f"is {entry['words'][item]!r}, "
                                                                f"{fname} has {info['words']}")
        want = info["words"] * info["width"]
        if entry["bits"][item] != want or type(entry["bits"][item]) is not int:
            raise ImageError(MANIFEST, f"{where}.bits.{item}", f"is {entry['bits'][item]!r}, "
                                                               f"{fname} holds {want}")


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
        problem = _act_func_problem(d.act, ql.act_func)
        if problem:
            raise ImageError(MANIFEST, f"{where}.act_func", problem)
        n_out = ql.weight_format.out_channels(ql)
        shape = (n_out,) if d.kind == "fc" else (n_out, d.h_out, d.w_out)
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
    except RecursionError:
        raise ImageError(MANIFEST, "json", "nested too deeply to be a manifest") from None
    if not isinstance(m, dict):
        raise ImageError(MANIFEST, "json", "must be an object")
    if m.get("schema") != SCHEMA:
        raise ImageError(MANIFEST, "schema", f"is {m.get('schema')!r}, expected {SCHEMA!r}")
    if type(m.get("version")) is not int or m["version"] not in READS:
        raise ImageError(MANIFEST, "version", f"is {m.get('version')!r}; this slimnfu reads "
                                              f"versions {', '.join(map(str, READS))}")
    _require_keys(m, _TOP_KEYS, MANIFEST, "")
    for key, low in (("dw", 1), ("acc", 1), ("f_in", None)):
        _require_int(m[key], MANIFEST, key, low)
    if not isinstance(m["input_shape"], list) or not m["input_shape"]:
        raise ImageError(MANIFEST, "input_shape", "must be a non-empty list of integers")
    for n in m["input_shape"]:
        _require_int(n, MANIFEST, "input_shape", low=1)
    _check_calib(m["calib"])
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
        if not isinstance(info["sha256"], str):
            raise ImageError(MANIFEST, f"files.{fname}.sha256", "must be a string")
        path = folder / fname
        if Path(fname).name != fname or fname.startswith(".") or not path.is_file():
            raise ImageError(fname, "file", "missing")
        data = path.read_bytes()
        if _sha256(data) != info["sha256"]:
            raise ImageError(fname, "sha256", "does not match the manifest (file changed or "
                                              "corrupted)")
        contents[fname] = read_hex(path, info["words"], info["width"], data=data)
    unlisted = sorted(p.name for p in folder.iterdir()
                      if p.name not in m["files"] and p.name not in (MANIFEST, OWNER_MARK))
    if unlisted:
        raise ImageError(unlisted[0], "file", "is not listed in the manifest's files")
    if not isinstance(m["layers"], list) or not m["layers"]:
        raise ImageError(MANIFEST, "layers", "must be a non-empty list")
    layers = []
    for i, e in enumerate(m["layers"]):
        where = f"layers[{i}]"
        if m["version"] == 1 and isinstance(e, dict) and isinstance(e.get("desc"), dict) and \
                e["desc"].get("ikr_n"):
            e.setdefault("ikr_n", e["desc"]["ikr_n"])
        name = e.get("format") if isinstance(e, dict) else None
        fmt = FORMATS.get(name) if isinstance(name, str) else None
        _require_keys(e, _LAYER_KEYS | (fmt.image_keys if fmt else set()), MANIFEST, where)
        if fmt is None:
            raise ImageError(MANIFEST, f"{where}.format", f"{name!r} is not a weight format "
                                                          f"(formats: {', '.join(FORMATS)})")
        for key in ("f_x", "f_w", "f_y"):
            _require_int(e[key], MANIFEST, f"{where}.{key}", low=None)
        if not isinstance(e["name"], str) or not isinstance(e["files"], dict) or \
                not all(isinstance(f, str) for f in e["files"].values()):
            raise ImageError(MANIFEST, where, "name must be a string and files an object of "
                                              "file names")
        try:
            desc = LayerDesc.from_dict(e["desc"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise ImageError(MANIFEST, f"{where}.desc", str(exc)) from None
        problem = _act_func_problem(desc.act, e["act_func"])
        if problem:
            raise ImageError(MANIFEST, f"{where}.act_func", problem)
        layers.append(fmt.restore(e, m["files"], contents, desc, cfg, where))
        _check_sizes(e, m["files"], where)
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
        if word != descriptor_value(ql.weight_format.pass_desc(ql), cfg, check=False):
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
        fits = _fits(ql, cfg)
        # version 1 worded some limits differently (ikr_kmax, not ikr.kmax)
        if (e["fits"], e["fits_error"]) != fits and (m["version"] > 1 or e["fits"] != fits[0]):
            raise ImageError(MANIFEST, f"layers[{i}].fits", "does not match PassDesc.check")
    return qmodel, cfg, m
