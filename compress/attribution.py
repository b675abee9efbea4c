"""Numerical attribution: where a quantised network loses accuracy, layer by layer.

:func:`attribute` runs the same images through a float network and through the integer
reference of its quantised network (each layer's :meth:`~slimnfu.formats.QLayer.run`, the
function the RTL is checked against) and reports, per engine layer:

* ``sqnr_db``: the signal-to-quantisation-noise ratio of the layer's integer output against the
  float network's output of the same layer, ``10 log10(sum f**2 / sum (f - q 2**-f_y)**2)``
  over every element of every image. Both networks start from the float images, so the noise
  is what every quantisation up to and including this layer added (a low figure that the
  layers before it do not have names the layer that loses precision). ``None`` when the
  outputs are equal (no noise) or the signal is zero.
* ``sat_events``: the saturation events the integer reference counts in the layer (its
  requantisations, the approximation pass of a slim layer included); the input quantisation's
  are ``input_sat_events``. A calibrated network has none on its calibration images.
* ``max_abs_float`` against ``full_scale``, the largest magnitude the layer's ``f_y`` holds.

and, with labels, the float and integer accuracy on those images (the RTL's is measured by the
callers on the images they simulate, beside these).

A layer whose format reorders its output channels (method A's export order) says so through
:meth:`~slimnfu.formats.base.WeightFormat.channel_order`; the float outputs are compared in
that order.

The compressed float network is stored beside its quantised network in the cache
(:func:`float_state`, :func:`float_from_state`): a JSON-serialisable description of its modules
with their tensors, read back without unpickling code.
"""

import base64
import math

import numpy as np
import torch
from torch import nn

from slimnfu import fixed
from slimnfu.compress.permfc import to_dense
from slimnfu.compress.quant import group_layers, quantize_input
from slimnfu.compress.slim import SlimConv

__all__ = ["attribute", "float_state", "float_from_state", "markdown", "NOT_CACHED"]

#: What a report says instead of the float figures when the cache holds no float network.
NOT_CACHED = "float not cached; run with --recompress"


# ------------------------------------------------------------------ the float network, stored

def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


#: ``type name: (class, constructor arguments of a module)``: what :func:`float_state` stores.
_MODULES = {
    "Conv2d": (nn.Conv2d, lambda m: dict(
        in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_pair(m.kernel_size),
        stride=_pair(m.stride), padding=_pair(m.padding), bias=m.bias is not None)),
    "Linear": (nn.Linear, lambda m: dict(in_features=m.in_features, out_features=m.out_features,
                                         bias=m.bias is not None)),
    "MaxPool2d": (nn.MaxPool2d, lambda m: dict(kernel_size=_pair(m.kernel_size),
                                               stride=_pair(m.stride))),
    "AvgPool2d": (nn.AvgPool2d, lambda m: dict(kernel_size=_pair(m.kernel_size),
                                               stride=_pair(m.stride))),
    "Flatten": (nn.Flatten, lambda m: dict(start_dim=m.start_dim, end_dim=m.end_dim)),
    "ReLU": (nn.ReLU, lambda m: {}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "ReLU6": (nn.ReLU6, lambda m: {}),
    "LeakyReLU": (nn.LeakyReLU, lambda m: dict(negative_slope=m.negative_slope)),
    "Hardtanh": (nn.Hardtanh, lambda m: dict(min_val=m.min_val, max_val=m.max_val)),
}

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64",
           torch.bool: "bool"}


def _tensor_to_state(t):
    t = t.detach().cpu().contiguous()
    if t.dtype not in _DTYPES:
        raise ValueError(f"a float network's tensor of dtype {t.dtype} cannot be stored")
    data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
    return {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
            "b64": base64.b64encode(data).decode("ascii")}


def _tensor_from_state(s, where):
    if s.get("dtype") not in _DTYPES.values():
        raise ValueError(f"{where}.dtype: must be one of {sorted(_DTYPES.values())}, not "
                         f"{s.get('dtype')!r}")
    dtype = np.dtype(s["dtype"]).newbyteorder("<") if s["dtype"] != "bool" else np.bool_
    a = np.frombuffer(base64.b64decode(s["b64"], validate=True), dtype=dtype)
    n = math.prod(s["shape"])
    if a.size != n:
        raise ValueError(f"{where}: holds {a.size} values, its shape {s['shape']} needs {n}")
    return torch.from_numpy(a.astype(a.dtype.newbyteorder("="))).reshape(s["shape"]).clone()


def _module_spec(m, where):
    name = type(m).__name__
    if name not in _MODULES or type(m) is not _MODULES[name][0]:
        raise ValueError(f"{where}: a {name} cannot be stored as part of a float network")
    return {"type": name, "args": _MODULES[name][1](m)}


def _is_ikr_buffer(key):
    # IKR's pattern buffers name the pruning, not the function: the weights are zero off it
    return key.rsplit(".", 1)[-1].startswith("ikr_")


def float_state(model):
    """A JSON-serialisable description of a compressed float network (an ``nn.Sequential`` of
    the supported modules, :class:`~slimnfu.compress.slim.SlimConv` and
    :class:`~slimnfu.compress.permfc.PermLinear`, stored as the ``nn.Linear`` it computes),
    with every parameter and buffer; :func:`float_from_state` reads it back.

    Raises
    ------
    ValueError
        A module it cannot store, naming its index.
    """
    out = []
    for i, m in enumerate(to_dense(model)):
        where = f"module {i}"
        if isinstance(m, SlimConv):
            spec = {"type": "SlimConv", "args": {
                "conv": _module_spec(m.conv, f"{where}.conv"),
                "act": None if m.act is None else _module_spec(m.act, f"{where}.act")}}
        else:
            spec = _module_spec(m, where)
        spec["state"] = {k: _tensor_to_state(v) for k, v in m.state_dict().items()
                         if not _is_ikr_buffer(k)}
        out.append(spec)
    return {"modules": out}


def _build(spec, where):
    name = spec.get("type")
    if name not in _MODULES:
        raise ValueError(f"{where}.type: must be one of SlimConv, {', '.join(_MODULES)}, not "
                         f"{name!r}")
    return _MODULES[name][0](**{k: _tuple(v) for k, v in spec["args"].items()})


def float_from_state(state):
    """The float network :func:`float_state` described (in eval mode).

    Raises
    ------
    ValueError
        A field that is missing or does not fit, naming ``modules[i]`` and the field.
    """
    mods = []
    for i, spec in enumerate(state["modules"]):
        where = f"float.modules[{i}]"
        try:
            if spec.get("type") == "SlimConv":
                args = spec["args"]
                act = None if args["act"] is None else _build(args["act"], f"{where}.act")
                m = SlimConv(_build(args["conv"], f"{where}.conv"), act)
            else:
                m = _build(spec, where)
            m.load_state_dict({k: _tensor_from_state(v, f"{where}.state.{k}")
                               for k, v in spec["state"].items()})
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ValueError(f"{where}: {' '.join(str(exc).split())[:300]}") from None
        mods.append(m)
    return nn.Sequential(*mods).eval()


# ------------------------------------------------------------------------------- attribution

def _plain(model):
    """``model`` with every SlimConv as its conv (for the grouping into engine layers)."""
    return nn.Sequential(*[m.conv if isinstance(m, SlimConv) else m for m in model])


def attribute(float_model, qmodel, images, labels=None, batch=250, why_no_float=NOT_CACHED):
    """Per engine layer of ``qmodel``: SQNR against ``float_model``, saturation events and
    ranges on ``images`` (see the module docstring).

    Parameters
    ----------
    float_model : torch.nn.Sequential or None
        The float network ``qmodel`` was quantised from (with SlimConv and PermLinear layers
        for a compressed one). None: only the integer side is measured, and ``float`` says
        ``why_no_float``.
    qmodel : QuantModel
    images : torch.Tensor
        Float images ``(N, ...)``, e.g. the calibration images.
    labels : torch.Tensor, optional
        Their labels: ``acc_float`` and ``acc_int`` are measured too.
    batch : int
        Images per batch.

    Returns
    -------
    dict
        ``images``, ``float`` (``"measured"`` or ``why_no_float``), ``input_sat_events``,
        ``sat_events`` (all layers), ``acc_float``, ``acc_int`` (None without labels or float)
        and ``layers``: per engine layer ``layer``, ``format``, ``f_y``, ``sqnr_db``,
        ``sat_events``, ``max_abs_float`` and ``full_scale``.

    Raises
    ------
    ValueError
        ``float_model``'s engine layers are not ``qmodel``'s (naming both lists), or the
        images do not fit ``qmodel``.
    """
    images = torch.as_tensor(images)
    layers = qmodel.layers
    groups = None
    if float_model is not None:
        float_model = to_dense(float_model).eval()
        groups = group_layers(_plain(float_model), tuple(qmodel.input_shape))
        if [g["name"] for g in groups] != [ql.name for ql in layers]:
            raise ValueError(f"the float network's engine layers {[g['name'] for g in groups]} "
                             f"are not the quantised network's {[ql.name for ql in layers]}")
    in_count, counts = fixed.SatCount(), [fixed.SatCount() for _ in layers]
    signal, noise = [0.0] * len(layers), [0.0] * len(layers)
    peak = [0.0] * len(layers)
    correct_f = correct_i = 0
    with torch.no_grad():
        for s in range(0, images.shape[0], batch):
            xb = images[s:s + batch]
            x = quantize_input(qmodel, xb, in_count)
            outs = []
            for ql, c in zip(layers, counts):
                x = ql.run(x, qmodel.dw, c)
                outs.append(x)
            if labels is not None:
                correct_i += int((x.reshape(x.shape[0], -1).argmax(1)
                                  == labels[s:s + batch]).sum())
            if groups is None:
                continue
            floats, h, want = {}, xb.float(), {g["last"]: i for i, g in enumerate(groups)}
            for index, mod in enumerate(float_model):
                h = mod(h)
                if index in want:
                    floats[want[index]] = h
            if labels is not None:
                correct_f += int((h.reshape(h.shape[0], -1).argmax(1)
                                  == labels[s:s + batch]).sum())
            order = None
            for i, ql in enumerate(layers):
                if not ql.desc.is_pool:
                    order = ql.weight_format.channel_order(ql)
                f = floats[i].double()
                if order is not None:
                    f = f[:, order]
                q = outs[i].reshape(f.shape).double() * 2.0 ** -ql.f_y
                signal[i] += float((f * f).sum())
                noise[i] += float(((f - q) ** 2).sum())
                peak[i] = max(peak[i], float(f.abs().max()))
    n = images.shape[0]
    rows = []
    for i, ql in enumerate(layers):
        sqnr = None
        if groups is not None and noise[i] > 0 and signal[i] > 0:
            sqnr = round(10.0 * math.log10(signal[i] / noise[i]), 2)
        rows.append({"layer": ql.name, "format": ql.format, "f_y": ql.f_y, "sqnr_db": sqnr,
                     "sat_events": counts[i].events,
                     "max_abs_float": round(peak[i], 6) if groups is not None else None,
                     "full_scale": ((1 << (qmodel.dw - 1)) - 1) * 2.0 ** -ql.f_y})
    measured = groups is not None
    return {"images": n, "float": "measured" if measured else why_no_float,
            "input_sat_events": in_count.events,
            "sat_events": in_count.events + sum(c.events for c in counts),
            "acc_float": round(100.0 * correct_f / n, 2) if labels is not None and measured
            else None,
            "acc_int": round(100.0 * correct_i / n, 2) if labels is not None else None,
            "layers": rows}


def markdown(attr, title="per layer"):
    """An attribution (:func:`attribute`) as a Markdown table, with a line before it."""
    acc = ""
    if attr.get("acc_int") is not None:
        acc = (f": float {attr['acc_float'] if attr['acc_float'] is not None else '-'}% -> "
               f"integer {attr['acc_int']}%")
    lines = [f"Numerical attribution {title}, on {attr['images']} calibration images{acc}; "
             f"{attr['sat_events']} saturation events ({attr['input_sat_events']} at the "
             f"input)" + ("" if attr["float"] == "measured" else f"; {attr['float']}") + ".",
             "", "| layer | format | f_y | max abs float | full scale | SQNR dB | saturations |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in attr["layers"]:
        peak = "-" if r["max_abs_float"] is None else f"{r['max_abs_float']:.3g}"
        sqnr = "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['layer']} | {r['format']} | {r['f_y']} | {peak} | "
                     f"{r['full_scale']:.3g} | {sqnr} | {r['sat_events']:,} |")
    return "\n".join(lines)
