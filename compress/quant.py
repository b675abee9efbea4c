"""Whole-network quantisation to the fixed-point contract, and integer inference.

:func:`quantize_model` turns a float ``nn.Sequential`` into a
:class:`slimnfu.formats.QuantModel`: a list of engine layers (:class:`slimnfu.formats.QLayer`),
each with a :class:`slimnfu.config.LayerDesc`, int64 weights and biases and its fractional-bit
counts. :func:`int_forward` runs it with
:func:`slimnfu.fixed.run_layer`, the function the RTL is checked against.

Grouping into engine layers
---------------------------
* ``Conv2d`` / ``Linear`` followed by an optional activation is one layer: ``ReLU`` gives
  ``act="relu"``; ``Sigmoid``, ``Tanh``, ``LeakyReLU``, ``Hardtanh`` and ``ReLU6`` give
  ``act="pwl"`` with :func:`slimnfu.fixed.pwl_table` (its default segment width; the last three
  only where the table is exact, :func:`slimnfu.fixed.pwl_exact_problem`).
* ``MaxPool2d`` / ``AvgPool2d`` (optionally followed by an activation) is one layer.
* ``Flatten`` is a no-op in the integer model. Its order is PyTorch's channel-major
  ``(c, y, x)``, so an FC layer fed by a conv or pool output is ``kind="fc"`` with
  ``n_in = C*H*W`` and the PyTorch weight matrix unchanged.

Choosing the fractional bits (calibration)
------------------------------------------
* ``f_in``: the input scale, from the largest ``|x|`` of the calibration images (pixels / 255
  in ``[0, 1]`` give ``f_in = dw - 2``).
* ``f_w``: :func:`~slimnfu.fixed.frac_bits_for` of the largest ``|w|`` of the layer.
* ``f_y``: from the float model's pre-activation outputs on the calibration images. The range
  is ``max |y|`` (``range_method="max"``, the default: no saturation on the calibration set),
  or a percentile of ``|y|`` (``range_method=99.99`` etc.; computed per batch of calibration
  images, then the maximum over batches). For sigmoid and tanh the range is clamped to
  ``[1, 8]``: the output (``|.| <= 1``) shares the scale, and they are flat past 8. For
  ``hardtanh(LO,HI)`` (and ReLU6) the range is ``max(1, |LO|, |HI|)``: every output fits, and no
  input saturation changes an output. ``leaky_relu`` keeps the calibrated range, at least 1.
* bias: an integer at ``f_x + f_w`` (rounded half to even).
* ``shift = f_x + f_w - f_y``. If this would be negative (tiny weights and inputs), ``f_y`` is
  lowered to ``f_x + f_w`` so that ``shift = 0``.
* Pooling keeps its input scale (``f_y = f_x``).

Every conv / FC layer is proved statically not to overflow the accumulator:
``LayerDesc.max_acc_bits(cfg, max_abs_bias) <= acc`` (worst-case ``dw``-bit inputs and
weights), and refused with a message naming the layer otherwise.
"""

import torch
from torch import nn

from slimnfu import fixed
from slimnfu.compress.models import activation_of, check_supported
from slimnfu.config import AccelConfig, LayerDesc
from slimnfu.formats import QLayer, QuantModel

__all__ = ["quantize_model", "quantize_input", "int_forward", "int_forward_layers",
           "calib_ranges", "group_layers"]


def _pair0(v):
    return v[0] if isinstance(v, (tuple, list)) else v


def group_layers(model, input_shape):
    """Split ``model`` (an ``nn.Sequential`` of supported layers) into engine layers.

    Returns
    -------
    list of dict
        One per engine layer: ``name`` (``conv1``, ``pool2``, ``fc1``, ...), ``index`` and
        ``last`` (its first and last module in ``model``), ``desc`` (a
        :class:`~slimnfu.config.LayerDesc` without scales), ``act``, ``func`` and ``module``.

    Raises
    ------
    ValueError
        An activation that does not follow a conv, FC or pooling layer, or an input shape that
        does not chain (naming the module).
    """
    groups, shape = [], tuple(input_shape)
    counts = {"conv": 0, "fc": 0, "pool": 0}
    for index, mod in enumerate(model):
        if isinstance(mod, nn.Flatten):
            n = 1
            for s in shape:
                n *= s
            shape = (n,)
            continue
        if activation_of(mod) is not None:
            act, func = activation_of(mod)
            if not groups or groups[-1]["act"] != "none" or groups[-1]["last"] != index - 1:
                raise ValueError(f"layer {index} ({type(mod).__name__}) does not directly follow "
                                 f"a Conv2d, Linear or pooling layer; slimnfu fuses activations "
                                 f"into the layer before them")
            groups[-1].update(act=act, func=func, last=index)
            continue
        if isinstance(mod, nn.Conv2d):
            if len(shape) != 3:
                raise ValueError(f"layer {index} (Conv2d) gets a {len(shape)}-D input {shape}; "
                                 f"it needs (C, H, W)")
            kind = "conv"
            desc = dict(kind="conv", n_in=mod.in_channels, n_out=mod.out_channels,
                        h_in=shape[1], w_in=shape[2], k=_pair0(mod.kernel_size),
                        stride=_pair0(mod.stride), pad=_pair0(mod.padding))
        elif isinstance(mod, nn.Linear):
            if len(shape) != 1:
                raise ValueError(f"layer {index} (Linear) gets a {len(shape)}-D input {shape}; "
                                 f"add nn.Flatten() before it")
            kind = "fc"
            desc = dict(kind="fc", n_in=mod.in_features, n_out=mod.out_features)
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            if len(shape) != 3:
                raise ValueError(f"layer {index} ({type(mod).__name__}) gets a {len(shape)}-D "
                                 f"input {shape}; it needs (C, H, W)")
            kind = "pool"
            k = _pair0(mod.kernel_size)
            stride = _pair0(mod.stride) if mod.stride is not None else k
            desc = dict(kind="maxpool" if isinstance(mod, nn.MaxPool2d) else "avgpool",
                        n_in=shape[0], n_out=shape[0], h_in=shape[1], w_in=shape[2], k=k,
                        stride=stride)
        else:
            raise ValueError(f"layer {index} ({type(mod).__name__}) is not supported")
        if desc["n_in"] != shape[0]:
            raise ValueError(f"layer {index} ({type(mod).__name__}) expects {desc['n_in']} "
                             f"inputs, but gets shape {shape}")
        counts[kind] += 1
        d = LayerDesc(**desc)
        shape = (d.n_out,) if kind == "fc" else (d.n_out, d.h_out, d.w_out)
        groups.append(dict(name=f"{kind}{counts[kind]}", index=index, last=index, desc=d,
                           act="none", func=None, module=mod))
    if not groups:
        raise ValueError("model has no Conv2d, Linear or pooling layer")
    return groups


def _pwl_range(func, rng):
    """The range a PWL layer's output scale is fitted to (see the module docstring)."""
    kind, params = fixed.parse_pwl_name(func)
    if kind == "hardtanh":
        return max(1.0, abs(params[0]), abs(params[1]))
    if kind == "leaky_relu":
        return max(rng, 1.0)
    return min(max(rng, 1.0), 8.0)


def _abs_range(y, method):
    y = y.detach().abs().reshape(-1).double()
    if method == "max":
        return float(y.max()) if y.numel() else 0.0
    k = max(1, min(y.numel(), int(round(float(method) / 100.0 * y.numel()))))
    return float(y.kthvalue(k).values)


def calib_ranges(model, groups, calib_images, range_method="max", batch=500):
    """Per group, the calibrated range of the float pre-activation output (see module doc)."""
    ranges = [0.0] * len(groups)
    by_index = {g["index"]: i for i, g in enumerate(groups)}
    model = model.eval()
    with torch.no_grad():
        for start in range(0, calib_images.shape[0], batch):
            h = calib_images[start:start + batch].float()
            for index, mod in enumerate(model):
                h = mod(h)
                if index in by_index:
                    i = by_index[index]
                    ranges[i] = max(ranges[i], _abs_range(h, range_method))
    return ranges


def _check_range_method(range_method):
    if range_method == "max":
        return
    if isinstance(range_method, bool) or not isinstance(range_method, (int, float)) or \
            not 50.0 <= float(range_method) <= 100.0:
        raise ValueError(f"range_method must be 'max' or a percentile in [50, 100], "
                         f"not {range_method!r}")


def quantize_model(model, calib_images, dw=16, acc=48, range_method="max", ranges=None):
    """Quantise a float ``nn.Sequential`` to the fixed-point contract.

    Parameters
    ----------
    model : torch.nn.Sequential
        Built from the layers :func:`slimnfu.compress.models.check_supported` accepts.
    calib_images : torch.Tensor
        Float calibration inputs ``(N, C, H, W)`` (or ``(N, n)`` for an FC-only model).
    dw, acc : int
        Data and accumulator widths.
    range_method : "max" or float
        How ``f_y`` is calibrated: the largest ``|y|`` or a percentile of ``|y|``.
    ranges : dict of int to float, optional
        Calibrated ranges that replace :func:`calib_ranges`' for some engine layers, keyed by
        the layer's first module index (``group_layers``' ``index``): a compression method
        whose layer computes something other than ``model``'s module there (method A's
        approximated features) measures its own.

    Returns
    -------
    QuantModel

    Raises
    ------
    ValueError
        Unsupported structure, no calibration images, or a layer that could overflow ``acc``
        (the message names the layer).
    """
    check_supported(model, dw)
    cfg = AccelConfig("quant", tn=1, ti=1, dw=dw, acc=acc)
    _check_range_method(range_method)
    calib_images = torch.as_tensor(calib_images)
    if calib_images.dim() < 2 or calib_images.shape[0] == 0:
        raise ValueError(f"calib_images must be a non-empty batch (N, ...), "
                         f"not shape {tuple(calib_images.shape)}")
    groups = group_layers(model, tuple(calib_images.shape[1:]))
    measured = calib_ranges(model, groups, calib_images, range_method)
    ranges = [(ranges or {}).get(g["index"], r) for g, r in zip(groups, measured)]
    f_in = fixed.frac_bits_for(float(calib_images.abs().max()), dw)
    layers, f_x = [], f_in
    for g, rng in zip(groups, ranges):
        desc, mod, name = g["desc"], g["module"], g["name"]
        w = b = None
        f_w = 0
        if desc.is_pool:
            f_y = f_x
        else:
            wf = mod.weight.detach().double()
            f_w = fixed.frac_bits_for(float(wf.abs().max()), dw)
            if g["act"] == "pwl":
                rng = _pwl_range(g["func"], rng)
            f_y = min(fixed.frac_bits_for(rng, dw), f_x + f_w)
            w = fixed.quantize(wf, f_w, dw)
            bf = mod.bias.detach().double() if mod.bias is not None else \
                torch.zeros(desc.n_out, dtype=torch.float64)
            b = torch.round(bf * 2.0 ** (f_x + f_w)).to(torch.int64)
            max_b = int(b.abs().max()) if b.numel() else 0
            if max_b >= 1 << (acc - 1):
                raise ValueError(f"layer {name} (module {g['index']}): bias {max_b} at scale "
                                 f"2**{f_x + f_w} does not fit acc={acc} bits")
            need = desc.max_acc_bits(cfg, max_b)
            if need > acc:
                raise ValueError(f"layer {name} (module {g['index']}, {desc.kind} "
                                 f"{desc.n_in}->{desc.n_out} k={desc.k}) can sum to {need} bits "
                                 f"with dw={dw}, which overflows acc={acc}")
        pwl = None
        updates = dict(act=g["act"])
        if g["act"] == "pwl":
            if f_y < 0 or f_y > dw - 2:
                raise ValueError(f"layer {name} (module {g['index']}): {g['func']} needs an "
                                 f"output scale 0 <= f_y <= dw-2={dw - 2}, not {f_y}")
            try:
                pwl = fixed.pwl_table(g["func"], f_y, dw)
            except ValueError as exc:
                raise ValueError(f"layer {name} (module {g['index']}): {exc}") from None
            if not pwl.seg_shift < dw:
                raise ValueError(f"layer {name} (module {g['index']}): {g['func']} needs "
                                 f"segments of 2**{pwl.seg_shift} steps at f_y={f_y}, more "
                                 f"than the descriptor holds (seg_shift < dw={dw})")
            updates["seg_shift"] = pwl.seg_shift
        if not desc.is_pool:
            updates["shift"] = f_x + f_w - f_y
        desc = LayerDesc(**{**desc.to_dict(), **updates})
        layers.append(QLayer(name, desc, w, b, f_x, f_w, f_y, pwl, g["func"]))
        f_x = f_y
    calib = {"range_method": range_method, "images": int(calib_images.shape[0])}
    return QuantModel(layers, dw, acc, f_in, tuple(calib_images.shape[1:]), calib)


def quantize_input(qmodel, images, count=None):
    """Float inputs to ``dw``-bit integers at ``f_in`` (saturations added to ``count``)."""
    images = torch.as_tensor(images)
    if tuple(images.shape[1:]) != tuple(qmodel.input_shape):
        raise ValueError(f"images have sample shape {tuple(images.shape[1:])}, the model "
                         f"expects {tuple(qmodel.input_shape)}")
    return fixed.quantize(images, qmodel.f_in, qmodel.dw, count)


def int_forward_layers(qmodel, x_int, count=None):
    """Run integer inputs through every layer; returns the list of per-layer int64 outputs."""
    outs, x = [], fixed._as_int64(x_int)
    for layer in qmodel.layers:
        x = layer.run(x, qmodel.dw, count)
        outs.append(x)
    return outs


def int_forward(qmodel, images, batch=100, layers=False):
    """Integer inference on float images.

    Parameters
    ----------
    qmodel : QuantModel
    images : torch.Tensor
        Float inputs ``(N, ...)``, quantised at ``qmodel.f_in``.
    batch : int
        Images per batch (bounds the memory of the int64 unfold).
    layers : bool
        Also return every layer's int64 outputs (concatenated over batches).

    Returns
    -------
    logits : torch.Tensor
        int64 ``(N, n_out)`` (scale ``2**-f_y`` of the last layer).
    count : SatCount
        Saturation events, input quantisation included.
    outs : list of torch.Tensor
        Only when ``layers=True``.
    """
    count = fixed.SatCount()
    images = torch.as_tensor(images)
    per_layer = [[] for _ in qmodel.layers]
    for start in range(0, images.shape[0], batch):
        x = quantize_input(qmodel, images[start:start + batch], count)
        outs = int_forward_layers(qmodel, x, count)
        for i, o in enumerate(outs):
            if layers or i == len(outs) - 1:
                per_layer[i].append(o)
    cat = [torch.cat(p) if p else None for p in per_layer]
    logits = cat[-1].reshape(images.shape[0], -1)
    return (logits, count, cat) if layers else (logits, count)
