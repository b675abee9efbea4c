"""The one place that counts MACs, parameters and storage bits. Every report uses it.

Counts per layer
----------------
``macs_dense``
    Multiply-accumulates of the dense layer: ``H_out*W_out*N_out*N_in*K*K`` (conv),
    ``N_out*N_in`` (fc). Pooling does no MACs; its compared or summed inputs are counted
    separately as ``pool_ops``.
``macs``
    MACs of the layer in its storage format (the format's ``macs`` hook; dense: ``macs_dense``).
``params_dense``, ``params``
    Weights plus biases, dense and in the layer's format (PWL tables are not parameters).
``items``
    Everything the weight image stores for the layer, as :class:`StoredItem`
    ``(name, count, bits_each)``: dense weights at ``dw`` bits, biases at ``acc`` bits (the
    width the bias memory stores), the PWL table (16 entries of ``3*dw`` bits: a ``dw``-bit
    slope and a ``2*dw``-bit intercept). Compressed formats add their own items (indices,
    pattern tables, seeds, ...) through :func:`register_format`.
``bits``
    ``sum(count * bits_each)`` over the items: the logical storage, independent of any
    accelerator config. ``bits_dense`` is the same for the dense format.
``image_bits``
    With a config: ``sum(words * width)`` of the hex files the image writer produces, lane
    padding to ``tn``/``ti`` included. The writer checks that it equals what it wrote.
"""

from dataclasses import dataclass

__all__ = ["StoredItem", "Format", "FORMATS", "register_format", "dense_items", "layer_stats",
           "model_stats"]

PWL_ENTRIES = 16


@dataclass(frozen=True)
class StoredItem:
    """One thing stored in the image for a layer.

    Parameters
    ----------
    name : str
        ``"weights"``, ``"bias"``, ``"pwl"``, or a compressed format's item.
    count : int
        Values stored.
    bits_each : int
        Bits per value.
    words, width : int or None
        Words and word width in the image for a given config (None without a config).
    """

    name: str
    count: int
    bits_each: int
    words: int = None
    width: int = None

    @property
    def bits(self):
        return self.count * self.bits_each

    @property
    def image_bits(self):
        return None if self.words is None else self.words * self.width


@dataclass(frozen=True)
class Format:
    """Accounting hooks of one storage format.

    ``items(qlayer, dw, acc, cfg)`` returns the list of :class:`StoredItem` (with ``words`` and
    ``width`` when ``cfg`` is given); ``macs(qlayer)`` the MACs the format performs;
    ``params(qlayer)`` its weights plus biases.
    """

    items: object
    macs: object
    params: object


def _dense_weight_count(desc):
    return desc.n_out * desc.n_in * (desc.k * desc.k if desc.kind == "conv" else 1)


def dense_items(qlayer, dw, acc, cfg=None):
    """Stored items of a dense layer (also the ``bits_dense`` of any format)."""
    d = qlayer.desc
    if d.is_pool:
        items = []
    else:
        ci, co = d.tiles(cfg) if cfg is not None else (None, None)
        items = [
            StoredItem("weights", _dense_weight_count(d), dw,
                       None if cfg is None else d.sb_words(cfg),
                       None if cfg is None else cfg.tn * cfg.ti * dw),
            StoredItem("bias", d.n_out, acc, co, None if cfg is None else cfg.tn * acc),
        ]
    if d.act == "pwl":
        items.append(StoredItem("pwl", PWL_ENTRIES, 3 * dw,
                                None if cfg is None else PWL_ENTRIES,
                                None if cfg is None else 3 * dw))
    return items


def _dense_macs(qlayer):
    return 0 if qlayer.desc.is_pool else qlayer.desc.macs()


def _dense_params(qlayer):
    d = qlayer.desc
    return 0 if d.is_pool else _dense_weight_count(d) + d.n_out


#: Registered storage formats; compressed methods add theirs with :func:`register_format`.
FORMATS = {"dense": Format(dense_items, _dense_macs, _dense_params)}


def register_format(name, items, macs, params):
    """Register the accounting hooks of a storage format (see :class:`Format`)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"format name must be a non-empty string, not {name!r}")
    for hook_name, hook in (("items", items), ("macs", macs), ("params", params)):
        if not callable(hook):
            raise TypeError(f"format {name!r}: {hook_name} must be callable, not {hook!r}")
    FORMATS[name] = Format(items, macs, params)
    return FORMATS[name]


#: The module that registers each compressed format when imported (a model loaded from a file
#: may name a format whose module nothing has imported yet).
FORMAT_MODULES = {"ikr": "slimnfu.compress.ikr", "perm_affine": "slimnfu.compress.permfc",
                  "perm_index": "slimnfu.compress.permfc", "slim": "slimnfu.compress.slim"}


def _format(qlayer):
    if qlayer.format not in FORMATS and qlayer.format in FORMAT_MODULES:
        import importlib
        importlib.import_module(FORMAT_MODULES[qlayer.format])
    try:
        return FORMATS[qlayer.format]
    except KeyError:
        raise ValueError(f"layer {qlayer.name}: unknown storage format {qlayer.format!r}; "
                         f"registered: {', '.join(FORMATS)}") from None


def layer_stats(qlayer, dw, acc, cfg=None):
    """Counts of one :class:`slimnfu.compress.quant.QLayer` (see the module docstring).

    Returns
    -------
    dict
        name, kind, format, macs_dense, macs, pool_ops, params_dense, params, bits_dense,
        bits, items (list of dicts), and with ``cfg`` image_bits and fits/fits_error.
    """
    fmt = _format(qlayer)
    d = qlayer.desc
    items = fmt.items(qlayer, dw, acc, cfg)
    out = {
        "name": qlayer.name, "kind": d.kind, "format": qlayer.format,
        "macs_dense": _dense_macs(qlayer), "macs": int(fmt.macs(qlayer)),
        "pool_ops": d.macs() if d.is_pool else 0,
        "params_dense": _dense_params(qlayer), "params": int(fmt.params(qlayer)),
        "bits_dense": sum(i.bits for i in dense_items(qlayer, dw, acc)),
        "bits": sum(i.bits for i in items),
        "items": [{"name": i.name, "count": i.count, "bits_each": i.bits_each, "bits": i.bits,
                   "words": i.words, "width": i.width, "image_bits": i.image_bits}
                  for i in items],
    }
    if cfg is not None:
        out["image_bits"] = sum(i.image_bits for i in items)
    return out


_TOTALS = ("macs_dense", "macs", "pool_ops", "params_dense", "params", "bits_dense", "bits")


def model_stats(qmodel, cfg=None):
    """Per-layer and total counts of a :class:`slimnfu.compress.quant.QuantModel`.

    Returns
    -------
    dict
        The totals of :data:`_TOTALS`, ``conv_macs_dense``, ``conv_macs``, ``fc_macs_dense``,
        ``fc_macs``, ``image_bits`` (with ``cfg``), and ``layers``: the :func:`layer_stats`
        of every layer.
    """
    if cfg is not None and (cfg.dw, cfg.acc) != (qmodel.dw, qmodel.acc):
        raise ValueError(f"config {cfg.name!r} has dw={cfg.dw}, acc={cfg.acc}, but the model "
                         f"is quantised for dw={qmodel.dw}, acc={qmodel.acc}")
    layers = [layer_stats(l, qmodel.dw, qmodel.acc, cfg) for l in qmodel.layers]
    out = {key: sum(l[key] for l in layers) for key in _TOTALS}
    for kind in ("conv", "fc"):
        for key in ("macs_dense", "macs"):
            out[f"{kind}_{key}"] = sum(l[key] for l in layers if l["kind"] == kind)
    if cfg is not None:
        out["image_bits"] = sum(l["image_bits"] for l in layers)
    out["layers"] = layers
    return out
