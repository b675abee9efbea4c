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

Counting (registered with :mod:`slimnfu.compress.accounting`): ``params`` = ``N + M`` (``s``
and biases: the learned values); ``bits`` = ``s`` at ``dw`` bits + biases at ``acc`` bits +
the permutation data (``2*M*ceil(log2 N)`` affine, ``M*N*ceil(log2 N)`` index). Permutation
data are not parameters, but every bit of them is counted.
"""

import copy
import math

import torch
from torch import nn

from slimnfu.compress import accounting, fixed
from slimnfu.compress.train import fit

__all__ = ["VARIANTS", "FORMATS", "PermLinear", "index_bits", "affine_perms", "check_affine",
           "check_index_rom", "check_sequence", "random_affine_params", "rank_perms",
           "fit_sequence", "compress_linear", "compress_model", "finetune", "to_dense",
           "quantize_perm_model", "pack_perm_s", "pack_perm_params", "pack_perm_index",
           "gather_weights", "image_memories", "image_restore"]

VARIANTS = ("affine", "index")
#: QLayer storage format of each variant.
FORMATS = {"affine": "perm_affine", "index": "perm_index"}


def index_bits(n):
    """Bits of one index into a sequence of length ``n`` (at least 1)."""
    return max(1, (n - 1).bit_length())


def check_affine(a, b, n, where="layer"):
    """Raise ``ValueError`` unless every ``(a_j*i + b_j) mod n`` is a permutation of ``0..n-1``.

    ``a`` and ``b`` are integer sequences (one entry per row); ``0 <= a_j, b_j < n`` and
    ``gcd(a_j, n) == 1`` are required. The message names the first bad row.
    """
    a = [int(v) for v in torch.as_tensor(a).reshape(-1).tolist()]
    b = [int(v) for v in torch.as_tensor(b).reshape(-1).tolist()]
    if len(a) != len(b):
        raise ValueError(f"{where}: {len(a)} affine multipliers a but {len(b)} offsets b")
    for j, (aj, bj) in enumerate(zip(a, b)):
        if not (0 <= aj < n and 0 <= bj < n):
            raise ValueError(f"{where}: row {j} affine parameters a={aj}, b={bj} must be in "
                             f"[0, {n - 1}] (n={n})")
        g = math.gcd(aj, n)
        if g != 1:
            raise ValueError(f"{where}: row {j} affine multiplier a={aj} is not a permutation "
                             f"of n={n}: gcd(a, n) = {g} != 1")
    return a, b


def affine_perms(a, b, n, where="layer"):
    """The index matrix ``idx[j, i] = (a_j*i + b_j) mod n`` (int64 ``(M, n)``), checked."""
    check_affine(a, b, n, where)
    a = torch.as_tensor(a, dtype=torch.int64).reshape(-1, 1)
    b = torch.as_tensor(b, dtype=torch.int64).reshape(-1, 1)
    return (a * torch.arange(n, dtype=torch.int64) + b) % n


def check_index_rom(idx, m, n, where="layer"):
    """Raise ``ValueError`` unless ``idx`` is ``(m, n)`` and each row a permutation of
    ``0..n-1``."""
    idx = torch.as_tensor(idx)
    if tuple(idx.shape) != (m, n):
        raise ValueError(f"{where}: index ROM has shape {tuple(idx.shape)}, the layer needs "
                         f"({m}, {n})")
    want = torch.arange(n, dtype=torch.int64)
    rows = torch.sort(idx.to(torch.int64), dim=1).values
    bad = (rows != want).any(dim=1).nonzero()
    if bad.numel():
        j = int(bad[0])
        missing = sorted(set(range(n)) - set(idx[j].tolist()))[:3]
        raise ValueError(f"{where}: index ROM row {j} is not a permutation of 0..{n - 1} "
                         f"(missing e.g. {missing})")
    return idx


def check_sequence(s, n, where="layer"):
    """Raise ``ValueError`` unless the common sequence has the layer's length ``n``."""
    length = torch.as_tensor(s).numel()
    if length != n:
        raise ValueError(f"{where}: common sequence has length {length}, but the layer has "
                         f"n_in={n} inputs")
    return s


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


def gather_weights(qlayer):
    """The integer ``W`` of a perm-format layer: ``s[idx]`` (int64 ``(M, N)``)."""
    return qlayer.extra["s"][_layer_idx(qlayer)]


def _layer_idx(qlayer):
    d = qlayer.desc
    if qlayer.format == "perm_affine":
        return affine_perms(qlayer.extra["a"], qlayer.extra["b"], d.n_in, qlayer.name)
    return qlayer.extra["idx"]


def quantize_perm_model(model, calib_images, dw=16, acc=48, range_method="max"):
    """Quantise a model with :class:`PermLinear` layers; the perm layers keep their format.

    Returns a :class:`slimnfu.compress.quant.QuantModel` whose perm layers have
    ``format`` ``perm_affine`` / ``perm_index``, ``desc.perm`` set, ``extra["s"]`` (int64),
    and ``extra["a"], extra["b"]`` or ``extra["idx"]``; ``w`` is the gathered integer matrix.
    """
    from slimnfu.compress.quant import quantize_model

    q = quantize_model(to_dense(model), calib_images, dw=dw, acc=acc, range_method=range_method)
    return mark_perm(q, model, dw)


def mark_perm(q, model, dw=16):
    """Turn the fc layers of ``q`` that are :class:`PermLinear` in ``model`` into the perm
    formats (``q`` was quantised from ``to_dense(model)``, or a model with the same fc
    layers). Returns ``q``."""
    from slimnfu.config import LayerDesc

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
            ql.extra = {"s": s_int, "a": mod.a.clone(), "b": mod.b.clone()}
        else:
            check_index_rom(mod.idx, ql.desc.n_out, ql.desc.n_in, ql.name)
            ql.extra = {"s": s_int, "idx": mod.idx.clone()}
        ql.format = FORMATS[mod.variant]
        ql.desc = LayerDesc(**{**ql.desc.to_dict(), "perm": mod.variant})
        if not torch.equal(gather_weights(ql), ql.w):
            raise AssertionError(f"{ql.name}: gathered s differs from the quantised weights")
    return q


# --- packing for the engine (see slimnfu.rtl.perm_sb / perm_addr) ---------------------------

def pack_perm_s(s, cfg):
    """Words of the ``PERM_S`` load: ``s[k]`` at address ``k``, ``dw`` bits."""
    from slimnfu.gen.layout import pack_words

    s = torch.as_tensor(s, dtype=torch.int64).reshape(-1, 1)
    if s.shape[0] > cfg.perm_depth:
        raise ValueError(f"common sequence of length {s.shape[0]} exceeds config "
                         f"{cfg.name!r} perm_depth={cfg.perm_depth}")
    return pack_words(s, cfg.dw)


def pack_perm_params(a, b, cfg):
    """Words of the ``PERM_PARAM`` load: output tile ``o``, lane ``j`` holds ``(a, b)`` of row
    ``o*tn + j`` at bits ``[2*ab*j, 2*ab*j + ab)`` and ``[2*ab*j + ab, 2*ab*(j+1))``."""
    from slimnfu.gen.layout import pack_words

    ab = index_bits(cfg.perm_depth)
    a = torch.as_tensor(a, dtype=torch.int64)
    b = torch.as_tensor(b, dtype=torch.int64)
    m = a.numel()
    tiles = -(-m // cfg.tn)
    pairs = torch.zeros(tiles * cfg.tn, 2, dtype=torch.int64)
    pairs[:m, 0], pairs[:m, 1] = a, b
    return pack_words(pairs.reshape(tiles, 2 * cfg.tn), ab)


def pack_perm_index(idx, cfg):
    """SB words of the index ROM: laid out as dense FC weights, one index per ``dw`` lane."""
    from slimnfu.gen.layout import pack_weights

    if index_bits(cfg.perm_depth) > cfg.dw:
        raise ValueError(f"config {cfg.name!r}: perm_depth={cfg.perm_depth} indices do not fit "
                         f"dw={cfg.dw} bits")
    return pack_weights(idx, cfg)


# --- weight images (see slimnfu.gen.image.FORMAT_MODULES) ----------------------------------

def image_memories(qlayer, cfg):
    """``{item: (words, width)}`` of a perm layer: ``s``, bias, ``perm_ab``/``perm_index``, pwl."""
    from slimnfu.gen import layout

    d, ab = qlayer.desc, index_bits(cfg.perm_depth)
    mem = {"s": (pack_perm_s(qlayer.extra["s"], cfg), cfg.dw),
           "bias": (layout.pack_bias(qlayer.b, cfg), cfg.tn * cfg.acc)}
    if qlayer.format == "perm_affine":
        mem["perm_ab"] = (pack_perm_params(qlayer.extra["a"], qlayer.extra["b"], cfg),
                          2 * cfg.tn * ab)
    else:
        mem["perm_index"] = (pack_perm_index(qlayer.extra["idx"], cfg),
                             cfg.tn * cfg.ti * cfg.dw)
    if d.act == "pwl":
        mem["pwl"] = (layout.pack_pwl(qlayer.pwl, cfg), 3 * cfg.dw)
    return mem


def image_restore(entry, files, contents, desc, cfg, where):
    """Rebuild a perm :class:`QLayer` from a weight image; :class:`ImageError` on any problem.

    Checks the listed items, every file's shape, the common sequence's length against
    ``n_in``, and that the affine parameters / index ROM are permutations.
    """
    from slimnfu.compress.quant import QLayer
    from slimnfu.gen import image
    from slimnfu.gen.layout import unpack_words

    fmt = entry["format"]
    perm_item = "perm_ab" if fmt == "perm_affine" else "perm_index"
    want = {"s", "bias", perm_item} | ({"pwl"} if desc.act == "pwl" else set())
    if set(entry["files"]) != want:
        raise image.ImageError(image.MANIFEST, f"{where}.files",
                               f"lists {sorted(entry['files'])}, a {fmt} layer with "
                               f"act={desc.act} needs {sorted(want)}")
    if desc.kind != "fc" or desc.perm != fmt[5:]:
        raise image.ImageError(image.MANIFEST, f"{where}.desc",
                               f"format {fmt!r} needs an fc layer with perm={fmt[5:]!r}")
    ab = index_bits(cfg.perm_depth)
    co = desc.tiles(cfg)[1]
    shapes = {"s": (desc.n_in, cfg.dw), "bias": (co, cfg.tn * cfg.acc),
              "perm_ab": (co, 2 * cfg.tn * ab),
              "perm_index": (desc.sb_words(cfg), cfg.tn * cfg.ti * cfg.dw),
              "pwl": (16, 3 * cfg.dw)}
    data = {}
    for item, fname in entry["files"].items():
        if fname not in contents:
            raise image.ImageError(image.MANIFEST, f"{where}.files.{item}",
                                   f"{fname!r} is not listed in files")
        words, width = shapes[item]
        got = (files[fname]["words"], files[fname]["width"])
        if got != (words, width):
            what = (f"the common sequence has {got[0]} values but the layer has "
                    f"n_in={desc.n_in}" if item == "s" and got[1] == width else
                    f"shape does not match {where}.desc ({words} words of {width} bits)")
            raise image.ImageError(fname, "words", what)
        data[item] = contents[fname]
    s = unpack_words(data["s"], 1, cfg.dw).reshape(-1)
    fn = entry["files"][perm_item]
    try:
        if fmt == "perm_affine":
            pairs = unpack_words(data["perm_ab"], 2 * cfg.tn, ab).reshape(-1, 2)
            pairs = pairs & ((1 << ab) - 1)
            a, b = pairs[:desc.n_out, 0].clone(), pairs[:desc.n_out, 1].clone()
            extra = {"s": s, "a": a, "b": b}
            idx = affine_perms(a, b, desc.n_in, fn)
        else:
            idx = image._unpack_weights(data["perm_index"], desc, cfg, fn)
            check_index_rom(idx, desc.n_out, desc.n_in, fn)
            extra = {"s": s, "idx": idx}
    except ValueError as exc:
        raise image.ImageError(fn, "values", str(exc)) from None
    bias = image._unpack_bias(data["bias"], desc, cfg, entry["files"]["bias"])
    pwl = image._unpack_pwl(data["pwl"], desc, cfg) if "pwl" in data else None
    return QLayer(entry["name"], desc, s[idx], bias, entry["f_x"], entry["f_w"], entry["f_y"],
                  pwl, entry["act_func"], fmt, extra)


# --- accounting ------------------------------------------------------------------------------

def _perm_items(qlayer, dw, acc, cfg=None):
    d = qlayer.desc
    n, m = d.n_in, d.n_out
    co = None if cfg is None else d.tiles(cfg)[1]
    items = [accounting.StoredItem("s", n, dw, None if cfg is None else n,
                                   None if cfg is None else dw),
             accounting.StoredItem("bias", m, acc, co, None if cfg is None else cfg.tn * acc)]
    if qlayer.format == "perm_affine":
        items.append(accounting.StoredItem(
            "perm_ab", 2 * m, index_bits(n), co,
            None if cfg is None else 2 * cfg.tn * index_bits(cfg.perm_depth)))
    else:
        items.append(accounting.StoredItem(
            "perm_index", m * n, index_bits(n), None if cfg is None else d.sb_words(cfg),
            None if cfg is None else cfg.tn * cfg.ti * dw))
    if d.act == "pwl":
        items.append(accounting.StoredItem("pwl", accounting.PWL_ENTRIES, 3 * dw,
                                           None if cfg is None else accounting.PWL_ENTRIES,
                                           None if cfg is None else 3 * dw))
    return items


def _perm_params(qlayer):
    return qlayer.desc.n_in + qlayer.desc.n_out


for _fmt in FORMATS.values():
    accounting.register_format(_fmt, _perm_items, lambda ql: ql.desc.macs(), _perm_params)
