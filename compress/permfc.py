"""Permuted-feature FC compression (method C): every row of W is a permutation of one sequence.

An FC weight ``W`` (``M x N``) is replaced by one common sequence ``s`` (length ``N``) and one
permutation per row: ``W[j, i] = s[pi_j(i)]``. Two variants, side by side:

``"index"`` (data-driven)
    ``s`` is the mean of the sorted rows and ``pi_j`` is row ``j``'s rank order
    (``pi_j(i)`` = rank of ``W[j, i]`` in its row), stored as an index ROM of ``M*N`` entries
    of ``ceil(log2 N)`` bits.
``"affine"`` (generated)
    ``pi_j(i) = (a_j*i + b_j) mod N`` with ``gcd(a_j, N) = 1`` (so it is a permutation),
    ``a_j, b_j < N`` drawn at random from a seed and then fixed; ``s`` starts at the mean
    sorted row (``init="sorted"``; the least-squares fit under the permutations,
    ``init="lsq"``, collapses toward the mean and trains far worse). Stored:
    ``2*ceil(log2 N)`` bits per row. The engine's address generators expand them on the fly
    (:mod:`slimnfu.rtl.perm_addr`).

Both variants then fine-tune ``s`` and the biases with the permutations fixed
(:func:`finetune`). Any ``Linear`` can be compressed (``layers=``); the classifier is
included unless ``keep_classifier=True``.

Integer model: the layer stays an engine ``fc`` layer. Quantisation is per tensor and
elementwise, so ``quantize(s)[pi] == quantize(s[pi])``: :func:`quantize_perm_model` quantises
the expanded network with :func:`slimnfu.compress.quant.quantize_model`, then stores the integer
``s`` and the permutation in the layer (format ``perm_affine`` / ``perm_index``) and checks that
gathering gives back the integer weights exactly. The golden model is
``fixed.linear_acc`` on the gathered ``W``.

Counting (:class:`slimnfu.formats.perm.PermAffineFormat` and ``PermIndexFormat``):
``params`` = ``N + M`` (``s`` and biases: the learned values); ``bits`` = ``s`` at ``dw``
bits + biases at ``acc`` bits + the permutation data (``2*M*ceil(log2 N)`` affine,
``M*N*ceil(log2 N)`` index). Permutation data are not parameters, but every bit of them is
counted.
"""

import copy
import math

import torch
from torch import nn

from slimnfu import fixed
from slimnfu.compress.quant import quantize_model
from slimnfu.compress.train import fit
from slimnfu.formats.perm import (PermAffineFormat, PermAffineWeights, PermIndexFormat,
                                  PermIndexWeights, affine_perms, check_affine, check_index_rom,
                                  check_sequence, gather_weights)

__all__ = ["VARIANTS", "FORMATS", "PermLinear", "random_affine_params", "rank_perms",
           "fit_sequence", "compress_linear", "compress_model", "finetune", "to_dense",
           "quantize_perm_model", "mark_perm"]

VARIANTS = ("affine", "index")
#: QLayer storage format of each variant.
FORMATS = {"affine": PermAffineFormat.name, "index": PermIndexFormat.name}


def random_affine_params(m, n, seed=0):
    """Per-row ``(a, b)``: ``a`` uniform over the units mod ``n``, ``b`` uniform in ``[0, n)``."""
    gen = torch.Generator().manual_seed(seed)
    units = torch.tensor([u for u in range(n) if math.gcd(u, n) == 1] or [0])
    a = units[torch.randint(len(units), (m,), generator=gen)]
    b = torch.randint(n, (m,), generator=gen)
    return a, b


def rank_perms(w):
    """Data-driven variant: ``(s, idx)`` with ``s`` the mean sorted row, ``idx`` the rank order."""
    w = w.detach()
    order = torch.argsort(w, dim=1, stable=True)
    idx = torch.argsort(order, dim=1, stable=True)
    s = torch.sort(w, dim=1).values.mean(dim=0)
    return s, idx


def fit_sequence(w, idx):
    """Least-squares ``s`` for fixed ``idx``: ``s[k]`` = mean of the ``w[j, i]`` with index k."""
    w = w.detach()
    n = w.shape[1]
    total = torch.zeros(n, dtype=w.dtype).scatter_add_(0, idx.reshape(-1), w.reshape(-1))
    count = torch.zeros(n, dtype=w.dtype).scatter_add_(0, idx.reshape(-1),
                                                      torch.ones_like(w).reshape(-1))
    return total / count.clamp(min=1)


class PermLinear(nn.Module):
    """A Linear whose rows are permutations of one trainable sequence ``s``.

    Parameters
    ----------
    s : torch.Tensor
        The common sequence (length ``in_features``).
    bias : torch.Tensor
        ``(out_features,)``.
    idx : torch.Tensor
        int64 ``(out_features, in_features)``: ``weight = s[idx]``; every row is checked to be
        a permutation.
    variant : str
        ``"affine"`` or ``"index"``.
    a, b : torch.Tensor, optional
        The affine parameters (``variant="affine"``).
    """

    def __init__(self, s, bias, idx, variant, a=None, b=None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        m, n = idx.shape
        check_sequence(s, n, "PermLinear")
        check_index_rom(idx, m, n, "PermLinear")
        if variant == "affine":
            if a is None or b is None:
                raise ValueError("PermLinear: variant 'affine' needs a and b")
            if not torch.equal(affine_perms(a, b, n, "PermLinear"), idx):
                raise ValueError("PermLinear: idx is not (a*i + b) mod n")
        self.variant = variant
        self.in_features, self.out_features = n, m
        self.s = nn.Parameter(torch.as_tensor(s, dtype=torch.float32).clone())
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone())
        self.register_buffer("idx", idx.to(torch.int64).clone())
        self.register_buffer("a", None if a is None else torch.as_tensor(a).to(torch.int64))
        self.register_buffer("b", None if b is None else torch.as_tensor(b).to(torch.int64))

    @property
    def weight(self):
        return self.s[self.idx]

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features} -> {self.out_features}, variant={self.variant}"


def compress_linear(linear, variant, seed=0, init="sorted"):
    """Turn a trained ``nn.Linear`` into a :class:`PermLinear` (``s`` initialised, not tuned).

    ``init`` (affine variant): ``"sorted"`` starts ``s`` at the mean sorted row (keeps the
    spread of the trained weights); ``"lsq"`` at the least-squares fit under the random
    permutations, which averages unrelated weights and collapses ``s`` toward its mean (on
    LeNet-300-100 it fine-tuned to 11.7% in one epoch where ``"sorted"`` reached 82.3%).
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"compress_linear needs an nn.Linear, not {type(linear).__name__}")
    w = linear.weight.detach()
    m, n = w.shape
    bias = linear.bias.detach() if linear.bias is not None else torch.zeros(m)
    if variant == "index":
        s, idx = rank_perms(w)
        return PermLinear(s, bias, idx, "index")
    if variant == "affine":
        a, b = random_affine_params(m, n, seed)
        idx = affine_perms(a, b, n)
        if init not in ("sorted", "lsq"):
            raise ValueError(f"init must be 'sorted' or 'lsq', not {init!r}")
        s = rank_perms(w)[0] if init == "sorted" else fit_sequence(w, idx)
        return PermLinear(s, bias, idx, "affine", a, b)
    raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")


def compress_model(model, variant, layers=None, keep_classifier=False, seed=0):
    """Copy ``model`` with its ``Linear`` modules replaced by :class:`PermLinear`.

    Parameters
    ----------
    model : nn.Sequential
    variant : "affine" or "index"
    layers : list of int, optional
        Module indices to compress (default: every Linear).
    keep_classifier : bool
        Leave the last Linear dense.
    seed : int
        Seeds the affine parameters (layer ``k`` uses ``seed + k``).
    """
    linear_idx = [i for i, mod in enumerate(model) if isinstance(mod, nn.Linear)]
    if not linear_idx:
        raise ValueError("model has no Linear layer to compress")
    if layers is None:
        layers = linear_idx[:-1] if keep_classifier else linear_idx
    for i in layers:
        if i not in linear_idx:
            raise ValueError(f"module {i} is not a Linear (Linear modules: {linear_idx})")
    out = copy.deepcopy(model)
    for k, i in enumerate(layers):
        out[i] = compress_linear(model[i], variant, seed + k)
    return out


def finetune(model, images, labels, epochs=1, lr=1e-3, batch_size=128, seed=0):
    """Train every parameter of ``model`` (``s`` and biases of the perm layers included):
    :func:`slimnfu.compress.train.fit` with a per-step cosine decay of the learning rate."""
    return fit(model, images, labels, lr, batch_size, seed, epochs, cosine=True)


def to_dense(model):
    """Copy with every :class:`PermLinear` expanded into an ``nn.Linear`` (same function)."""
    out = copy.deepcopy(model)
    for i, mod in enumerate(out):
        if isinstance(mod, PermLinear):
            lin = nn.Linear(mod.in_features, mod.out_features)
            with torch.no_grad():
                lin.weight.copy_(mod.weight)
                lin.bias.copy_(mod.bias)
            out[i] = lin
    return out


def quantize_perm_model(model, calib_images, dw=16, acc=48, range_method="max"):
    """Quantise a model with :class:`PermLinear` layers; the perm layers keep their format.

    Returns a :class:`slimnfu.compress.quant.QuantModel` whose perm layers have
    ``format`` ``perm_affine`` / ``perm_index`` and ``compressed`` a
    :class:`~slimnfu.formats.perm.PermAffineWeights` / ``PermIndexWeights`` (int64 ``s``, and
    ``a``, ``b`` or ``idx``); ``w`` is the gathered integer matrix.
    """
    q = quantize_model(to_dense(model), calib_images, dw=dw, acc=acc, range_method=range_method)
    return mark_perm(q, model, dw)


def mark_perm(q, model, dw=16):
    """Turn the fc layers of ``q`` that are :class:`PermLinear` in ``model`` into the perm
    formats (``q`` was quantised from ``to_dense(model)``, or a model with the same fc
    layers). Returns ``q``."""
    fc_layers = [l for l in q.layers if l.desc.kind == "fc"]
    linears = [mod for mod in model if isinstance(mod, (nn.Linear, PermLinear))]
    if len(fc_layers) != len(linears):
        raise ValueError(f"{len(linears)} Linear modules but {len(fc_layers)} fc layers")
    for ql, mod in zip(fc_layers, linears):
        if not isinstance(mod, PermLinear):
            continue
        s_int = fixed.quantize(mod.s.detach().double(), ql.f_w, dw)
        check_sequence(s_int, ql.desc.n_in, ql.name)
        if mod.variant == "affine":
            check_affine(mod.a, mod.b, ql.desc.n_in, ql.name)
            ql.compressed = PermAffineWeights(s_int, mod.a.clone(), mod.b.clone())
        else:
            check_index_rom(mod.idx, ql.desc.n_out, ql.desc.n_in, ql.name)
            ql.compressed = PermIndexWeights(s_int, mod.idx.clone())
        ql.format = FORMATS[mod.variant]
        if not torch.equal(gather_weights(ql), ql.w):
            raise AssertionError(f"{ql.name}: gathered s differs from the quantised weights")
    return q
