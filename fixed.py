"""The fixed-point contract (docs/design.md section 2) as the integer reference, in PyTorch int64.

This module is the single source of truth for every number the accelerator produces. The
RTL, amaranth.sim, Icarus and Verilator must equal it bit for bit.

Contract
--------
* Activations and weights are signed two's complement of ``dw`` bits; ``real = int / 2**f``.
* Products are exact and are summed exactly in an ``acc``-bit accumulator that starts at the
  bias (an integer at scale ``f_x + f_w``).
* Requantisation: ``y = sat_dw((acc + 2**(sh-1)) >> sh)`` with a flooring shift, so ties round
  half up; with ``sh == 0`` there is no rounding term.
* ReLU is ``max(0, y)``.
* The piecewise-linear activation (sigmoid, tanh, leaky ReLU, hardtanh, or any table) has
  ``PWL_SEGMENTS`` = 16 segments. For input ``y`` (after requantisation),
  ``seg = clamp((y >> seg_shift) + 8, 0, 15)`` and::

      out = sat_dw((slope[seg] * y + icpt[seg] + 2**(p-1)) >> p),   p = dw - 2

  ``slope`` is a ``dw``-bit signed value with ``p`` fractional bits and ``icpt`` a
  ``2*dw``-bit signed value at the input scale times ``2**p``. Input and output share the
  scale ``f_y``.
* Max pooling compares ``dw`` values. Average pooling sums a power-of-two window of ``m``
  values and shifts by ``log2(m)`` with round half up.
* Every saturation event is counted.
"""

import math
import re
from fractions import Fraction

import torch
import torch.nn.functional as F

from slimnfu.config import as_pass
from slimnfu.contract import PWL_SEGMENTS

__all__ = [
    "SatCount", "sat", "requant", "relu", "quantize", "frac_bits_for", "conv2d_acc",
    "linear_acc", "maxpool", "avgpool", "PwlTable", "pwl_table", "pwl_apply", "run_layer",
    "check_operands", "pwl_name", "parse_pwl_name", "pwl_function", "pwl_exact_problem",
    "gated_weights", "accumulate",
]


class SatCount:
    """A running count of saturation events, shared by a whole inference."""

    def __init__(self):
        self.events = 0

    def add(self, n):
        self.events += int(n)
        return self

    def __repr__(self):
        return f"SatCount({self.events})"


def _as_int64(x):
    x = torch.as_tensor(x)
    if x.dtype != torch.int64:
        if x.is_floating_point() and not torch.equal(x, torch.round(x)):
            raise ValueError("integer reference given non-integer values")
        x = x.to(torch.int64)
    return x


def sat(x, dw, count=None):
    """Clamp ``x`` to ``[-2**(dw-1), 2**(dw-1)-1]``, adding the clamped elements to ``count``."""
    x = _as_int64(x)
    lo, hi = -(1 << (dw - 1)), (1 << (dw - 1)) - 1
    if count is not None:
        count.add(((x < lo) | (x > hi)).sum())
    return x.clamp(lo, hi)


def requant(acc, sh, dw, count=None):
    """``sat_dw((acc + 2**(sh-1)) >> sh)``; ``>>`` floors, so ties round half up."""
    acc = _as_int64(acc)
    if sh < 0:
        raise ValueError(f"requantisation shift must be >= 0, not {sh}")
    if sh > 0:
        acc = (acc + (1 << (sh - 1))) >> sh
    return sat(acc, dw, count)


def relu(y):
    return torch.clamp(_as_int64(y), min=0)


def frac_bits_for(max_abs, dw, max_frac=None):
    """Largest fractional-bit count ``f`` with ``max_abs * 2**f`` inside ``dw`` signed bits.

    ``max_frac`` caps the result (default ``2*dw``). A zero ``max_abs`` gets the cap.
    """
    cap = 2 * dw if max_frac is None else max_frac
    if max_abs <= 0:
        return cap
    f = dw - 1 - math.ceil(math.log2(max_abs * (1 + 1e-12)))
    while f > -dw and round(max_abs * 2.0 ** f) > (1 << (dw - 1)) - 1:
        f -= 1
    return min(f, cap)


def quantize(t, f, dw, count=None):
    """Float tensor to ``dw``-bit integers at ``f`` fractional bits (round half to even,
    saturate)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return sat(torch.round(t * (2.0 ** f)), dw, count)


def conv2d_acc(x, w, b=None, stride=1, pad=0):
    """Exact conv accumulator values in int64.

    Parameters
    ----------
    x : (N, C, H, W) integer tensor
    w : (O, C, K, K) integer tensor
    b : (O,) integer tensor at scale ``f_x + f_w``, or None
    """
    x, w = _as_int64(x), _as_int64(w)
    n, c, h, wd = x.shape
    o, c2, k, k2 = w.shape
    if c2 != c or k != k2:
        raise ValueError(f"weight shape {tuple(w.shape)} does not match input channels {c}")
    xp = F.pad(x, (pad, pad, pad, pad))
    cols = xp.unfold(2, k, stride).unfold(3, k, stride)
    ho, wo = cols.shape[2], cols.shape[3]
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n, ho * wo, c * k * k)
    acc = cols @ w.reshape(o, c * k * k).t()
    acc = acc.permute(0, 2, 1).reshape(n, o, ho, wo)
    if b is not None:
        acc = acc + _as_int64(b).view(1, o, 1, 1)
    return acc


def linear_acc(x, w, b=None):
    """Exact FC accumulator values in int64: ``x @ w.T + b``."""
    acc = _as_int64(x) @ _as_int64(w).t()
    if b is not None:
        acc = acc + _as_int64(b)
    return acc


def maxpool(x, k, stride):
    x = _as_int64(x)
    return x.unfold(2, k, stride).unfold(3, k, stride).amax(dim=(-1, -2))


def avgpool(x, k, stride, dw, count=None):
    """Average over a power-of-two window: sum, then shift by ``log2(k*k)`` rounding half up."""
    m = k * k
    if m & (m - 1):
        raise ValueError(f"avgpool needs a power-of-two window k*k, not k={k}")
    s = _as_int64(x).unfold(2, k, stride).unfold(3, k, stride).sum(dim=(-1, -2))
    return requant(s, m.bit_length() - 1, dw, count)


class PwlTable:
    """A 16-segment piecewise-linear activation table (see the module docstring).

    Parameters
    ----------
    slope : sequence of 16 ints, ``dw``-bit signed, ``dw - 2`` fractional bits
    icpt : sequence of 16 ints, ``2*dw``-bit signed
    seg_shift : int
    dw : int
    """

    def __init__(self, slope, icpt, seg_shift, dw):
        self.slope = [int(v) for v in slope]
        self.icpt = [int(v) for v in icpt]
        self.seg_shift, self.dw = int(seg_shift), int(dw)
        if len(self.slope) != PWL_SEGMENTS or len(self.icpt) != PWL_SEGMENTS:
            raise ValueError(f"a PWL table has {PWL_SEGMENTS} slopes and intercepts")
        for name, vals, bits in (("slope", self.slope, dw), ("icpt", self.icpt, 2 * dw)):
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            bad = [v for v in vals if not lo <= v <= hi]
            if bad:
                raise ValueError(f"PWL {name} {bad[0]} is outside [{lo}, {hi}] ({bits} bits)")

    @property
    def frac(self):
        return self.dw - 2

    def to_dict(self):
        return {"slope": self.slope, "icpt": self.icpt, "seg_shift": self.seg_shift,
                "dw": self.dw}


_PWL_CALL = re.compile(r"(leaky_relu|hardtanh)\(([^()]*)\)")


def pwl_name(kind, *params):
    """The name of a PWL activation, as :class:`~slimnfu.formats.QLayer` ``act_func`` and the
    weight image store it: ``"sigmoid"``, ``"tanh"``, ``"leaky_relu(A)"`` (slope ``A`` below
    zero) or ``"hardtanh(LO,HI)"`` (``clamp(y, LO, HI)``; ReLU6 is ``hardtanh(0.0,6.0)``)."""
    name = kind if not params else f"{kind}({','.join(repr(float(v)) for v in params)})"
    parse_pwl_name(name)
    return name


def parse_pwl_name(name):
    """``(kind, params)`` of a PWL activation name (see :func:`pwl_name`); ``ValueError``
    otherwise."""
    if name in ("sigmoid", "tanh"):
        return name, ()
    match = _PWL_CALL.fullmatch(name) if isinstance(name, str) else None
    try:
        params = tuple(float(v) for v in match.group(2).split(",")) if match else None
    except ValueError:
        params = None
    if params is None or len(params) != {"leaky_relu": 1, "hardtanh": 2}[match.group(1)] or \
            not all(math.isfinite(v) for v in params) or \
            (match.group(1) == "hardtanh" and not params[0] < params[1]):
        raise ValueError(f"unknown PWL activation {name!r}; known: 'sigmoid', 'tanh', "
                         f"'leaky_relu(A)', 'hardtanh(LO,HI)' with LO < HI")
    return match.group(1), params


def pwl_function(name):
    """The float function a PWL activation name stands for (a callable on tensors)."""
    kind, params = parse_pwl_name(name)
    if kind == "leaky_relu":
        return lambda t: F.leaky_relu(t, params[0])
    if kind == "hardtanh":
        return lambda t: t.clamp(params[0], params[1])
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[kind]


def _two_adic(v):
    """The exponent of 2 in the rational ``v`` (``None`` for 0)."""
    if v == 0:
        return None
    r = Fraction(v)
    n, d = abs(r.numerator), r.denominator
    return ((n & -n).bit_length() - 1) - ((d & -d).bit_length() - 1)


def _hardtanh_corners(lo, hi):
    """``(e, j_lo, j_hi)``: the largest ``e`` with ``lo = j_lo * 2**e`` and ``hi = j_hi * 2**e``
    for integers ``j``."""
    e = min(x for x in (_two_adic(lo), _two_adic(hi)) if x is not None)
    return e, int(Fraction(lo) / Fraction(2) ** e), int(Fraction(hi) / Fraction(2) ** e)


def pwl_exact_problem(name, dw):
    """Why the PWL table of the piecewise-linear activation ``name`` cannot equal it exactly at
    ``dw`` bits, or ``None`` when it can.

    Exact means: on every ``dw``-bit input ``y``, the table's output is the function's value
    rounded half up to the output's scale, the rounding every layer has. ``leaky_relu(A)`` is
    exact when its slope is a ``dw``-bit table slope: ``A * 2**(dw-2)`` an integer in
    ``[-2**(dw-1), 2**(dw-1))``. ``hardtanh(LO,HI)`` is exact when both corners lie on segment
    boundaries: ``LO`` and ``HI`` integer multiples ``j * 2**e`` of one power of two with
    ``|j| <= 7`` (the table has boundaries at ``-7..7`` segment widths); its segment width is
    then ``2**e`` and :func:`pwl_table` picks it. Sigmoid and tanh are chord approximations by
    design; they return ``None``.
    """
    kind, params = parse_pwl_name(name)
    p = dw - 2
    if kind == "leaky_relu":
        slope = Fraction(params[0]) * 2 ** p
        if slope.denominator != 1 or not -(1 << (dw - 1)) <= slope < 1 << (dw - 1):
            return (f"negative_slope={params[0]!r} is not a multiple of 2**-{p} in [-2, 2): the "
                    f"{dw}-bit PWL table holds slopes with {p} fractional bits")
        return None
    if kind == "hardtanh":
        e, j_lo, j_hi = _hardtanh_corners(*params)
        if max(abs(j_lo), abs(j_hi)) > PWL_SEGMENTS // 2 - 1:
            return (f"corners {params[0]!r} and {params[1]!r} are not both on the PWL table's "
                    f"segment boundaries: they must be j * 2**e for one power of two 2**e and "
                    f"integers |j| <= {PWL_SEGMENTS // 2 - 1}")
    return None


def pwl_table(func, f, dw, seg_shift=None):
    """Fit a PWL activation (a name, see :func:`pwl_name`, or a callable) at scale ``f`` with
    16 chords.

    Each segment spans ``2**seg_shift`` integer steps. By default: one real unit (``f``) for
    sigmoid, which then covers [-8, 8); half a unit (``f - 1``) for tanh, covering [-4, 4); one
    integer step (0) for ``leaky_relu``, whose only corner is 0; and for ``hardtanh`` the power
    of two its corners are multiples of (:func:`pwl_exact_problem`), so that both lie on
    segment boundaries. Segment ``s`` covers inputs ``[(s-8) << seg_shift, (s-7) << seg_shift)``;
    its line is the chord of the function between those end points, so the table is continuous
    inside the covered range, and equals a piecewise-linear function whose corners lie on
    boundaries and whose slopes are table slopes.
    """
    if callable(func):
        fn, kind, params = func, None, ()
    else:
        fn = pwl_function(func)
        kind, params = parse_pwl_name(func)
    if seg_shift is None:
        seg_shift = {"tanh": max(0, f - 1), "leaky_relu": 0}.get(kind, f)
        if kind == "hardtanh":
            seg_shift = f + _hardtanh_corners(*params)[0]
    if seg_shift < 0:
        raise ValueError(f"PWL {func}: a segment of 2**{seg_shift} steps is not a whole number "
                         f"of steps at output scale f={f}")
    p = dw - 2
    slope, icpt = [], []
    lo_s, hi_s = -(1 << (dw - 1)), (1 << (dw - 1)) - 1
    lo_i, hi_i = -(1 << (2 * dw - 1)), (1 << (2 * dw - 1)) - 1
    for s in range(PWL_SEGMENTS):
        a = ((s - 8) << seg_shift) / 2.0 ** f
        b = ((s - 7) << seg_shift) / 2.0 ** f
        fa = float(fn(torch.tensor(a, dtype=torch.float64)))
        fb = float(fn(torch.tensor(b, dtype=torch.float64)))
        m = (fb - fa) / (b - a)
        sl = max(lo_s, min(hi_s, round(m * 2.0 ** p)))
        # intercept at scale f + p so that slope*y + icpt is at scale f + p
        ic = round((fa - sl / 2.0 ** p * a) * 2.0 ** (f + p))
        slope.append(sl)
        icpt.append(max(lo_i, min(hi_i, ic)))
    return PwlTable(slope, icpt, seg_shift, dw)


def pwl_apply(y, table, count=None):
    """Apply a :class:`PwlTable` to requantised values ``y``."""
    y = _as_int64(y)
    seg = ((y >> table.seg_shift) + PWL_SEGMENTS // 2).clamp(0, PWL_SEGMENTS - 1)
    slope = torch.tensor(table.slope, dtype=torch.int64)[seg]
    icpt = torch.tensor(table.icpt, dtype=torch.int64)[seg]
    p = table.frac
    return sat((slope * y + icpt + (1 << (p - 1))) >> p, table.dw, count)


def _check_range(name, t, lo, hi, what):
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"run_layer: {name} holds a value that is not finite")
    if t.numel() and (float(t.min()) < lo or float(t.max()) > hi):
        bad = float(t.max()) if float(t.max()) > hi else float(t.min())
        raise ValueError(f"run_layer: {name} holds {bad:.0f}, outside {what} [{lo}, {hi}]")


def check_operands(desc, x, w=None, b=None, dw=16, acc=None):
    """Raise ``ValueError`` naming the operand unless ``x``, ``w`` and ``b`` have the shapes
    ``desc`` (a :class:`~slimnfu.config.LayerDesc`) gives and values inside ``dw`` bits (``b``
    inside ``acc`` bits, when given), and the largest possible sum fits the int64 reference (and
    ``acc``)."""
    spatial = desc.kind != "fc"
    want = ("N", desc.n_in, desc.h_in, desc.w_in) if spatial else ("N", desc.n_in)
    if x.dim() != len(want) or tuple(x.shape[1:]) != want[1:]:
        raise ValueError(f"run_layer: x has shape {tuple(x.shape)}, the descriptor needs "
                         f"{want}")
    lo, hi = -(1 << (dw - 1)), (1 << (dw - 1)) - 1
    _check_range("x", x, lo, hi, f"dw={dw} bits")
    if desc.is_pool:
        return
    kk = (desc.k, desc.k) if spatial else ()
    for name, t, shape in (("w", w, (desc.n_out, desc.n_in) + kk), ("b", b, (desc.n_out,))):
        if t is None or tuple(t.shape) != shape:
            got = None if t is None else tuple(t.shape)
            raise ValueError(f"run_layer: {name} has shape {got}, the descriptor needs {shape}")
    _check_range("w", w, lo, hi, f"dw={dw} bits")
    top = 1 << ((acc or 64) - 1)
    _check_range("b", b, -top, top - 1, f"acc={acc} bits" if acc else "int64")
    terms = desc.n_in * desc.k * desc.k
    max_b = int(b.abs().max()) if b.numel() else 0
    need = (terms * (1 << (2 * dw - 2)) + max_b).bit_length() + 1
    limit = min(acc or 64, 64)
    if need > limit:
        raise ValueError(f"run_layer: a {desc.kind} {desc.n_in}->{desc.n_out} k={desc.k} layer "
                         f"can sum to {need} bits, more than the {limit}-bit accumulator")


def accumulate(desc, x, w, b=None):
    """The exact accumulators of a conv or fc layer or pass ``desc`` (before requantisation):
    ``(N, O, H_out, W_out)`` (``(N, O)`` for fc). A centre-tap pass (``koff``) is a conv with
    padding ``pad - koff``; a negative padding crops the input."""
    run = as_pass(desc)
    d = run.layer
    if d.kind == "fc":
        return linear_acc(x, w, b)
    pad, crop = max(0, d.pad - run.koff), max(0, run.koff - d.pad)
    if crop:
        x = x[:, :, crop:x.shape[2] - crop, crop:x.shape[3] - crop]
    return conv2d_acc(x, w, b, d.stride, pad)


def run_layer(desc, x, w=None, b=None, dw=16, pwl=None, count=None, acc=None):
    """Run one layer or engine pass on integer tensors, as the engine does.

    Parameters
    ----------
    desc : LayerDesc or PassDesc
        A :class:`~slimnfu.config.PassDesc` runs as the engine runs it: a centre-tap pass
        (``koff``) reads the input ``koff`` taps further in. Its weight format (``ikr_n``,
        ``perm``) and gating (``lane_k``) do not change the numbers.
    x : (N, C, H, W) integer tensor (``(N, C)`` for fc)
    w, b : weights ``(O, C, K, K)`` (``(O, C)`` for fc) and biases ``(O,)``; unused for pooling
    dw : int
    pwl : PwlTable, needed when ``desc.act == "pwl"``
    count : SatCount, optional
    acc : int, optional
        The accumulator width: biases and the largest possible sum must fit it.

    Returns
    -------
    torch.Tensor
        int64 outputs, ``(N, O, H_out, W_out)`` (``(N, O)`` for fc).

    Raises
    ------
    ValueError
        Naming the operand, when a shape differs from the descriptor's or a value lies outside
        its width (:func:`check_operands`).
    """
    x = torch.as_tensor(x)
    w = None if w is None else torch.as_tensor(w)
    b = None if b is None else torch.as_tensor(b)
    run = as_pass(desc)
    desc = run.layer
    check_operands(desc, x, w, b, dw, acc)
    if desc.kind == "maxpool":
        y = maxpool(x, desc.k, desc.stride)
    elif desc.kind == "avgpool":
        y = avgpool(x, desc.k, desc.stride, dw, count)
    else:
        y = requant(accumulate(run, x, w, b), desc.shift, dw, count)
    if desc.act == "relu":
        y = relu(y)
    elif desc.act == "pwl":
        if pwl is None:
            raise ValueError("act='pwl' needs a PwlTable")
        y = pwl_apply(y, pwl, count)
    return y


def gated_weights(desc, w, tn):
    """Conv weights ``(O, C, K, K)`` as the kernel gate lets them through a ``tn``-lane engine
    running pass ``desc``: output channel ``o`` keeps only the centred ``lane_k[o % tn]`` square
    of its kernel (a lane past ``lane_k`` or at 0 keeps all of it). ``w`` itself when the pass
    has no ``lane_k``.

    The engine zeroes a gated lane's weights before they reach its multipliers, so the
    reference of a gated pass is :func:`run_layer` on these weights, whatever the outer taps
    hold.
    """
    run = as_pass(desc)
    if not run.lane_k or w is None:
        return w
    k = run.layer.k
    w = torch.as_tensor(w, dtype=torch.int64).clone()
    for o in range(w.shape[0]):
        j = o % tn
        lk = run.lane_k[j] if j < len(run.lane_k) else 0
        if lk and lk < k:
            off = (k - lk) // 2
            keep = torch.zeros(k, k, dtype=torch.bool)
            keep[off:off + lk, off:off + lk] = True
            w[o][:, ~keep] = 0
    return w
