"""What every weight format answers, and the records they share.

A weight format (:class:`WeightFormat`) is how one quantised layer's weights are stored and run.
Each format is one class in one module of this package; everything else (the compiler, the
weight-image writer and loader, accounting, the co-simulation cases) asks the format and never
branches on its name. See ``docs/adding-a-method.md``.
"""

import dataclasses
from dataclasses import dataclass

import torch

from slimnfu import fixed
from slimnfu.config import LayerDesc, PassDesc
from slimnfu.contract import PWL_SEGMENTS, LoadSel
from slimnfu.formats import layout

__all__ = ["Words", "EnginePass", "StoredItem", "ImageError", "WeightFormat", "record_to_state",
           "record_from_state", "crop_padding", "unpack_weights", "unpack_bias", "unpack_pwl",
           "bias_words", "pwl_words", "pwl_shape", "common_memories", "check_items", "max_abs",
           "pwl_items", "FORMATS", "register", "get_format", "check_tensor", "im2col_desc"]


@dataclass(frozen=True)
class Words:
    """The words one engine memory receives for one engine pass.

    Parameters
    ----------
    sel : LoadSel
        The memory (the value on ``load_sel``).
    words : list of int
        Unsigned words, ``width`` bits each, loaded at addresses ``0 ..``.
    width : int
    lanes : int
        Lanes of the memory word each word is written into (1: the word is the memory's;
        ``tn*ti``: a value of ``s`` into every SB bank). The image stores each word once.
    """

    sel: LoadSel
    words: list
    width: int
    lanes: int = 1

    @property
    def bits(self):
        """Bits the words hold (each once, however many lanes it is written into)."""
        return len(self.words) * self.width

    @property
    def loaded(self):
        """The words on ``load_data``: each in its ``lanes`` lanes of ``width`` bits."""
        if self.lanes == 1:
            return list(self.words)
        spread = sum(1 << (k * self.width) for k in range(self.lanes))
        return [int(w) * spread for w in self.words]


@dataclass(frozen=True)
class EnginePass:
    """One run of the layer engine that a model layer needs.

    Parameters
    ----------
    name : str
        Program layer name (the model layer's name for a one-pass layer).
    desc : PassDesc
        The engine pass: the layer it computes, its weight format's fields and its
        placement.
    memories : dict of str to Words
        The words to load before the pass, in load order.
    reads : str
        Where the pass's input comes from: ``"layer"`` (the model layer's input, moved into
        NBin), ``"same"`` (the input the previous pass read, already in NBin) or ``"kept"``
        (the outputs the earlier passes of this layer wrote, copied from NBout).
    max_abs_bias : int or None
        The largest bias magnitude of the pass, for the accumulator-width check (None: the
        worst case of :meth:`slimnfu.config.LayerDesc.max_acc_bits`).
    """

    name: str
    desc: object
    memories: dict
    reads: str = "layer"
    max_abs_bias: int = None


@dataclass(frozen=True)
class StoredItem:
    """One thing a layer stores: ``count`` values of ``bits_each`` bits.

    Parameters
    ----------
    name : str
        ``"weights"``, ``"bias"``, ``"pwl"``, or a compressed format's item.
    count : int
        Values stored.
    bits_each : int
        Bits per value.
    """

    name: str
    count: int
    bits_each: int

    @property
    def bits(self):
        return self.count * self.bits_each


class ImageError(ValueError):
    """A weight image is corrupt, truncated, of another version or inconsistent."""

    def __init__(self, file, field, problem):
        self.file, self.field = file, field
        super().__init__(f"{file}: {field}: {problem}")


def _state_key(f):
    return f.metadata.get("state_key", f.name)


def record_to_state(record):
    """A format record (a dataclass) as the JSON dict of a network cache: int64 tensors as
    ``{"tensor": {"shape", "values"}}``, every other field as it is."""
    out = {}
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if v is None and f.metadata.get("omit_none"):
            continue    # a field only the compiler sets (e.g. a re-laid column order)
        if isinstance(v, torch.Tensor):
            v = {"tensor": {"shape": list(v.shape), "values": v.reshape(-1).tolist()}}
        out[_state_key(f)] = v
    return out


def record_from_state(cls, state):
    """The inverse of :func:`record_to_state` for record class ``cls``."""
    kw = {}
    for f in dataclasses.fields(cls):
        key = _state_key(f)
        if key not in state:
            continue
        v = state[key]
        if isinstance(v, dict) and set(v) == {"tensor"}:
            t = v["tensor"]
            v = torch.tensor(t["values"], dtype=torch.int64).reshape(t["shape"])
        kw[f.name] = v
    return cls(**kw)


def check_tensor(name, t, shape, bits):
    """``ValueError`` unless ``t`` is an int64 tensor of ``shape`` inside ``bits`` signed bits."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64:
        raise ValueError(f"{name}: must be an int64 tensor, not {type(t).__name__}"
                         + (f" of {t.dtype}" if isinstance(t, torch.Tensor) else ""))
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: has shape {tuple(t.shape)}, the descriptor needs "
                         f"{tuple(shape)}")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        bad = int(t.max()) if int(t.max()) > hi else int(t.min())
        raise ValueError(f"{name}: holds {bad}, outside {bits} signed bits [{lo}, {hi}]")



def crop_padding(t, desc, fname):
    """``t[:n_out, :n_in]`` of a tensor unpacked from Tn x Ti tiles; :class:`ImageError` naming
    ``fname`` when a padding lane past ``n_out`` / ``n_in`` is not zero."""
    core = t[:desc.n_out, :desc.n_in]
    if int(t.abs().sum()) != int(core.abs().sum()):
        raise ImageError(fname, "padding", f"lanes past n_out={desc.n_out} / n_in={desc.n_in} "
                                           f"must be zero")
    return core.clone()


def unpack_weights(words, desc, cfg, fname):
    """Dense SB words back to ``(O, C, K, K)`` (conv) or ``(O, C)`` (fc) weights."""
    ci, co = desc.tiles(cfg)
    k = desc.k
    lanes = layout.unpack_words(words, cfg.tn * cfg.ti, cfg.dw)
    w = (lanes.view(co, ci, k, k, cfg.tn, cfg.ti).permute(0, 4, 1, 5, 2, 3)
         .reshape(co * cfg.tn, ci * cfg.ti, k, k))
    core = crop_padding(w, desc, fname)
    return core if desc.kind == "conv" else core.reshape(desc.n_out, desc.n_in)


def unpack_bias(words, desc, cfg, fname):
    """Bias words back to ``(n_out,)`` biases; the padding lanes must be zero."""
    b = layout.unpack_words(words, cfg.tn, cfg.acc).reshape(-1)
    if int(b[desc.n_out:].abs().sum()):
        raise ImageError(fname, "padding", f"lanes past n_out={desc.n_out} must be zero")
    return b[:desc.n_out].clone()


def unpack_pwl(words, desc, cfg, fname):
    """PWL words back to a :class:`slimnfu.fixed.PwlTable`."""
    lanes = layout.unpack_words(words, 1, cfg.dw)  # slope in the low dw bits
    icpt = layout.unpack_words([w >> cfg.dw for w in words], 1, 2 * cfg.dw)
    try:
        return fixed.PwlTable(lanes.reshape(-1).tolist(), icpt.reshape(-1).tolist(),
                              desc.seg_shift, cfg.dw)
    except ValueError as exc:
        raise ImageError(fname, "table", str(exc)) from None


def bias_words(b, cfg):
    """The bias memory's words: ``tn`` biases of ``acc`` bits per output tile."""
    return Words(LoadSel.BIAS, layout.pack_bias(b, cfg), cfg.tn * cfg.acc)


def pwl_words(pwl, cfg):
    """The PWL table's ``PWL_SEGMENTS`` words of ``3*dw`` bits."""
    return Words(LoadSel.PWL, layout.pack_pwl(pwl, cfg), 3 * cfg.dw)


def pwl_shape(cfg):
    """``(words, width)`` of a stored PWL table: ``PWL_SEGMENTS`` words of ``3*dw`` bits."""
    return PWL_SEGMENTS, 3 * cfg.dw


def common_memories(desc, b, pwl, cfg):
    """The bias words (not for pooling) and the PWL words (``act="pwl"``) of one pass."""
    mem = {}
    if not desc.is_pool:
        mem["bias"] = bias_words(b, cfg)
    if desc.act == "pwl":
        mem["pwl"] = pwl_words(pwl, cfg)
    return mem


def max_abs(t):
    """The largest magnitude in tensor ``t`` (None for no tensor or an empty one)."""
    return None if t is None or not t.numel() else int(t.abs().max())


def check_items(entry, files, contents, shapes, fmt, desc, where, manifest, explain=None):
    """The stored words of a manifest entry, each checked against its expected shape.

    ``shapes`` maps every item the layer must list to ``(words, width)``; ``explain`` maps an
    item to a function ``(words_got, width_got) -> str or None`` that says more than "shape
    does not match" when it can. Returns ``{item: words}``; raises :class:`ImageError` naming
    the file or field.
    """
    if set(entry["files"]) != set(shapes):
        raise ImageError(manifest, f"{where}.files",
                         f"lists {sorted(entry['files'])}, a {fmt} {desc.kind} layer with "
                         f"act={desc.act} needs {sorted(shapes)}")
    data = {}
    for item, fname in entry["files"].items():
        if fname not in contents:
            raise ImageError(manifest, f"{where}.files.{item}", f"{fname!r} is not listed in "
                                                                f"files")
        words, width = shapes[item]
        got = (files[fname]["words"], files[fname]["width"])
        if got != (words, width):
            what = (explain or {}).get(item, lambda *_: None)(*got)
            raise ImageError(fname, "words", what or f"shape does not match {where}.desc "
                                                     f"({words} words of {width} bits)")
        data[item] = contents[fname]
    return data


class WeightFormat:
    """One way of storing a quantised layer's weights: the base every format derives from.

    A subclass sets :attr:`name`, :attr:`feature` and :attr:`record` and implements the
    methods that raise :class:`NotImplementedError`. The defaults serve a layer that runs as one
    engine pass over its whole input.

    Attributes
    ----------
    name : str
        The value of ``QLayer.format``.
    title : str or None
        How messages name the format (default: ``name``).
    feature : str or None
        The :class:`slimnfu.config.AccelConfig` flag whose hardware the format needs.
    record : type or None
        The dataclass ``QLayer.compressed`` holds for this format (None: no record).
    image_keys : frozenset of str
        Manifest fields a layer of this format has besides the common ones.
    """

    name = None
    title = None
    feature = None
    record = None
    image_keys = frozenset()

    # The model side.

    def check_layer(self, ql):
        """Raise ``TypeError`` unless ``ql.compressed`` is this format's record."""
        if self.record is None:
            if ql.compressed is not None:
                raise TypeError(f"layer {ql.name}: format {self.name!r} keeps no record, but "
                                f"compressed is {type(ql.compressed).__name__}")
        elif not isinstance(ql.compressed, self.record):
            raise TypeError(f"layer {ql.name}: format {self.name!r} needs compressed to be a "
                            f"{self.record.__name__}, not {type(ql.compressed).__name__}")

    def out_channels(self, ql):
        """Output channels of the model layer (what the next layer reads)."""
        return ql.desc.n_out

    def channel_order(self, ql):
        """The original channel of each output channel of the model layer, in the order the
        layer writes them (``None``: the float layer's own order). A format that reorders its
        outputs says so here; the next layer takes them in that order."""
        return None

    def validate(self, ql, dw, acc):
        """Raise ``ValueError("field: problem")`` unless the layer is one this format can
        hold at ``dw``/``acc``: the record's type, tensor shapes against the descriptor,
        every value inside its width, ``shift = f_x + f_w - f_y``, the PWL table. Formats add
        their record's own checks."""
        self.check_layer(ql)
        d = ql.desc
        if d.is_pool:
            if ql.w is not None or ql.b is not None:
                raise ValueError("w: a pooling layer has no weights or biases")
            if ql.f_y != ql.f_x:
                raise ValueError(f"f_y: is {ql.f_y}, a pooling layer keeps f_x={ql.f_x}")
        else:
            shape = (d.n_out, d.n_in) + ((d.k, d.k) if d.kind == "conv" else ())
            check_tensor("w", ql.w, shape, dw)
            check_tensor("b", ql.b, (d.n_out,), acc)
            if d.shift != ql.f_x + ql.f_w - ql.f_y:
                raise ValueError(f"desc.shift: is {d.shift}, f_x + f_w - f_y = "
                                 f"{ql.f_x + ql.f_w - ql.f_y}")
        if (d.act == "pwl") != (ql.pwl is not None):
            raise ValueError(f"pwl: act={d.act!r} {'needs' if d.act == 'pwl' else 'takes no'} "
                             f"PWL table")
        if ql.pwl is not None and (ql.pwl.dw != dw or ql.pwl.seg_shift != d.seg_shift):
            raise ValueError(f"pwl: the table is for dw={ql.pwl.dw}, seg_shift="
                             f"{ql.pwl.seg_shift}; the layer has dw={dw}, seg_shift="
                             f"{d.seg_shift}")

    def run(self, ql, x, dw, count=None, tn=None):
        """The integer reference of the layer on int64 inputs (the golden model).

        With ``tn``, a format that runs as several engine passes computes them pass by pass
        as a ``tn``-lane engine does (the same numbers; a check of the passes)."""
        if ql.desc.kind == "fc" and x.dim() != 2:
            x = x.reshape(x.shape[0], -1)
        return fixed.run_layer(ql.desc, x, ql.w, ql.b, dw, ql.pwl, count)

    # Accounting (see slimnfu.formats.accounting).

    def items(self, ql, dw, acc):
        """The :class:`StoredItem` list of what the layer stores, at logical widths."""
        raise NotImplementedError

    def macs(self, ql):
        """Multiply-accumulates the layer performs in this format."""
        raise NotImplementedError

    def params(self, ql):
        """Learned values the layer keeps (weights and biases)."""
        raise NotImplementedError

    # The hardware side.

    def configure(self, cfg, layers):
        """``cfg`` with what ``layers`` (this format's layers of one model) need switched on."""
        if self.feature is None or self.feature in cfg.features:
            return cfg
        return cfg.with_(**{self.feature: True})

    def accept(self, ql, cfg):
        """``ValueError`` naming the layer when ``cfg`` lacks the format's feature or the
        layer is not valid at ``cfg``'s widths (:meth:`validate`)."""
        if self.feature and self.feature not in cfg.features:
            raise ValueError(f"layer {ql.name} is {self.title or self.name}, but config "
                             f"{cfg.name!r} has {self.feature}=False")
        try:
            self.validate(ql, cfg.dw, cfg.acc)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"layer {ql.name}: {exc}") from None

    def check(self, ql, cfg, stream=False):
        """The layer's engine passes on ``cfg``, each checked: ``ValueError`` naming the layer
        when :meth:`accept` refuses it or ``cfg`` cannot run a pass (``stream``: in a program
        for the whole accelerator, :meth:`slimnfu.config.PassDesc.check`)."""
        self.accept(ql, cfg)
        passes = self.passes(ql, cfg)
        for p in passes:
            try:
                p.desc.check(cfg, p.max_abs_bias, stream)
            except ValueError as exc:
                raise ValueError(f"layer {ql.name}: {exc}") from None
        return passes

    def memories(self, ql, cfg):
        """``{item: Words}``: what the weight image stores for the layer, in load order."""
        raise NotImplementedError

    def relayout_input(self, ql, src):
        """The FC layer ``ql`` with its input columns in another order, or None when the
        format cannot store it so (the default; a format may raise ``ValueError`` saying why
        instead). The compiler refuses a layer it cannot re-lay.

        The compiler uses it to run an FC layer straight on a conv output where the engine
        wrote it (:mod:`slimnfu.gen.compiler`): input ``j`` of the returned layer is input
        ``src[j]`` of ``ql``, or a padding input (``src[j] < 0``) whose weights must be 0. The
        returned layer computes the same outputs; it is for the engine only (the golden model
        keeps ``ql``).

        Parameters
        ----------
        ql : QLayer
            An FC layer of this format.
        src : torch.Tensor
            int64 ``(n,)``, ``n >= ql.desc.n_in``: each value of ``0..n_in-1`` once, the rest
            ``-1``.
        """
        return None

    def im2col(self, ql):
        """The conv layer ``ql`` as a 1x1 conv over its input's patches, or None when the
        format cannot run it so (the default).

        The compiler may run the first layer of a network so (:mod:`slimnfu.gen.compiler`):
        input channel ``j`` of the returned layer is patch channel ``j`` of
        :func:`slimnfu.formats.layout.patch_order` (centre taps first), on the ``h_out x
        w_out`` output grid (:func:`im2col_desc`); its ``desc.n_in`` is the number of patch
        channels it reads (``n_in*k*k``, or fewer when every filter uses only centre taps).
        Run on :func:`slimnfu.formats.layout.patch_input`, it gives the same outputs as
        ``ql`` on the image: the same products, summed exactly. It is for the engine only
        (the golden model keeps ``ql``).
        """
        return None

    def pass_desc(self, ql):
        """The :class:`~slimnfu.config.PassDesc` of the layer run as one engine pass over its
        whole input (what a weight image's ``program.hex`` lists for it)."""
        return PassDesc(ql.desc)

    def passes(self, ql, cfg):
        """The :class:`EnginePass` list that runs the layer on ``cfg``."""
        return [EnginePass(ql.name, self.pass_desc(ql), self.memories(ql, cfg),
                           max_abs_bias=max_abs(ql.b))]

    def pass_weights(self, ql, cfg):
        """Per engine pass of :meth:`passes`, the operands it applies as a layer of its own:
        ``(EnginePass, w, b, format, record)``, where ``format`` (a format's name) and
        ``record`` say how the pass stores ``w``. A one-pass format gives the layer's own;
        a co-simulation case of one pass (:func:`slimnfu.sim.cases.pass_cases`) is built
        from them."""
        (p,) = self.passes(ql, cfg)
        return [(p, ql.w, ql.b, self.name, ql.compressed)]

    # The weight image (see slimnfu.gen.image).

    def image_entry(self, ql):
        """Manifest fields of the layer besides the common ones (:attr:`image_keys`)."""
        return {}

    def restore(self, entry, files, contents, desc, cfg, where):
        """Rebuild the layer's :class:`QLayer` from a weight image, checking everything;
        raise :class:`ImageError` naming the file or field."""
        raise NotImplementedError


def im2col_desc(desc, channels):
    """The 1x1 conv on ``desc``'s output grid over ``channels`` patch channels that an im2col
    layer runs (:meth:`WeightFormat.im2col`)."""
    return LayerDesc("conv", channels, desc.n_out, desc.h_out, desc.w_out, k=1,
                     shift=desc.shift, act=desc.act, seg_shift=desc.seg_shift)


def pwl_items(ql, dw):
    """The PWL table's stored item (``act="pwl"`` only)."""
    return [StoredItem("pwl", PWL_SEGMENTS, 3 * dw)] if ql.desc.act == "pwl" else []


#: Every weight format by name; :mod:`slimnfu.formats` fills it.
FORMATS = {}


def register(fmt):
    """Add a :class:`WeightFormat` instance to :data:`FORMATS`; returns it."""
    if not isinstance(fmt, WeightFormat) or not isinstance(fmt.name, str) or not fmt.name:
        raise TypeError(f"a format must be a WeightFormat with a name, not {fmt!r}")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name, where="layer"):
    """The registered format ``name``; ``ValueError`` naming ``where`` and the known ones."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: unknown weight format {name!r}; known formats: "
                         f"{', '.join(FORMATS)}") from None
