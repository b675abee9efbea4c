"""The one place that counts MACs, parameters and storage bits. Every report uses it.

Counts per layer
----------------
``macs_dense``
    Multiply-accumulates of the dense layer: ``H_out*W_out*N_out*N_in*K*K`` (conv),
    ``N_out*N_in`` (fc), ``N_out`` being every output channel of the model layer (a slim
    layer's approximated features included: :meth:`WeightFormat.out_channels`). Pooling does
    no MACs; its compared or summed inputs are counted separately as ``pool_ops``.
``macs``
    MACs of the layer in its weight format (:meth:`WeightFormat.macs`).
``params_dense``, ``params``
    Weights plus biases, dense and in the layer's format (PWL tables are not parameters).
``items``
    Everything the layer stores, as :class:`~slimnfu.formats.base.StoredItem`
    ``(name, count, bits_each)`` (:meth:`WeightFormat.items`): dense weights at ``dw`` bits,
    biases at ``acc`` bits (the width the bias memory stores), the PWL table (16 entries of
    ``3*dw`` bits: a ``dw``-bit slope and a ``2*dw``-bit intercept), and a compressed
    format's own items (indices, pattern tables, permutation parameters, ...).
``bits``
    ``sum(count * bits_each)`` over the items: the logical storage, independent of any
    accelerator config. ``bits_dense`` is the same for the dense format.
``image_bits``
    With a config: ``sum(words * width)`` of the memories the weight image stores for the
    layer (:meth:`WeightFormat.memories`), lane padding to ``tn``/``ti`` included: the bits
    actually written. Items that are one memory each also get their ``words`` and ``width``.
"""

from dataclasses import replace

from slimnfu.formats.base import get_format
from slimnfu.formats.dense import DenseFormat

__all__ = ["layer_stats", "model_stats"]

_DENSE = DenseFormat()


def _as_dense(qlayer, fmt):
    """The dense layer ``qlayer`` stands for: its descriptor with every output channel the
    format gives (a slim layer stores fewer filters than it outputs)."""
    n_out = fmt.out_channels(qlayer)
    if n_out == qlayer.desc.n_out:
        return qlayer
    return replace(qlayer, desc=replace(qlayer.desc, n_out=n_out))


def layer_stats(qlayer, dw, acc, cfg=None):
    """Counts of one :class:`slimnfu.formats.QLayer` (see the module docstring).

    Returns
    -------
    dict
        name, kind, format, macs_dense, macs, pool_ops, params_dense, params, bits_dense,
        bits, items (list of dicts), and with ``cfg`` image_bits.
    """
    fmt = get_format(qlayer.format, f"layer {qlayer.name}")
    d, dense = qlayer.desc, _as_dense(qlayer, fmt)
    items = fmt.items(qlayer, dw, acc)
    memories = fmt.memories(qlayer, cfg) if cfg is not None else {}
    rows = []
    for i in items:
        mem = memories.get(i.name)
        rows.append({"name": i.name, "count": i.count, "bits_each": i.bits_each, "bits": i.bits,
                     "words": None if mem is None else len(mem.words),
                     "width": None if mem is None else mem.width,
                     "image_bits": None if mem is None else mem.bits})
    out = {
        "name": qlayer.name, "kind": d.kind, "format": qlayer.format,
        "macs_dense": _DENSE.macs(dense), "macs": int(fmt.macs(qlayer)),
        "pool_ops": d.macs() if d.is_pool else 0,
        "params_dense": _DENSE.params(dense), "params": int(fmt.params(qlayer)),
        "bits_dense": sum(i.bits for i in _DENSE.items(dense, dw, acc)),
        "bits": sum(i.bits for i in items),
        "items": rows,
    }
    if cfg is not None:
        out["image_bits"] = sum(m.bits for m in memories.values())
    return out


_TOTALS = ("macs_dense", "macs", "pool_ops", "params_dense", "params", "bits_dense", "bits")


def model_stats(qmodel, cfg=None):
    """Per-layer and total counts of a :class:`slimnfu.formats.QuantModel`.

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
