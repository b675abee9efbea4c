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

    The sharing knob: ``groups=G`` common sequences instead of one (rows grouped by their
    sorted values, :func:`group_rows`; each group's sequence starts at its mean sorted row),
    and ``family="quadratic"`` for quadratic permutation polynomials (the same generator,
    one more parameter per row); ``candidates=K`` keeps, per row, the best-fitting of ``K``
    drawn permutations. Stored: ``G*N`` values and ``ceil(log2 G)`` more bits per row.

Both variants then fine-tune ``s`` and the biases with the permutations fixed
(:func:`finetune` for a fixed number of epochs, :func:`train_early_stopping` until the
validation accuracy stops improving, optionally with one Adam over a one-cycle schedule and
distillation from the dense network). Any ``Linear`` can be compressed (``layers=``); the
classifier is included unless ``keep_classifier=True``.

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
from slimnfu.formats.perm import (FAMILIES, PermAffineFormat, PermAffineWeights,
                                  PermIndexFormat, PermIndexWeights, check_groups,
                                  check_index_rom, check_sequence, gather_weights,
                                  generated_perms)

__all__ = ["VARIANTS", "FAMILIES", "FORMATS", "PermLinear", "random_affine_params",
           "random_generated_params", "group_rows", "rank_perms", "fit_sequence",
           "compress_linear", "compress_model", "finetune", "SCHEDULES", "distill_loss",
           "train_early_stopping", "to_dense",
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


def _radical(n):
    """The product of the distinct primes of ``n``."""
    out, p, k = 1, 2, n
    while p * p <= k:
        if k % p == 0:
            out *= p
            while k % p == 0:
                k //= p
        p += 1
    return out * (k if k > 1 else 1)


def random_generated_params(m, n, family="affine", seed=0):
    """Per-row ``(a, b, e)`` of a generated family (:data:`FAMILIES`), drawn from a seed.

    ``"affine"``: :func:`random_affine_params` and ``e = 0``. ``"quadratic"``: the
    permutation polynomial ``pi(i) = (b + f1*i + f2*i^2) mod n`` with ``f1`` a unit and ``f2``
    a multiple of every prime of ``n`` (the Sun-Takeshita condition) with ``2*f2 != 0 mod n``,
    written as the
    generator runs it: ``a = (f1 + f2) mod n`` and ``e = 2*f2 mod n``. A draw that is not a
    permutation (possible only when ``2`` divides ``n`` exactly once) is drawn again; when
    ``n`` has no such ``f2`` (e.g. ``n`` square-free or ``n = 12``) the row is affine.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    a, b = random_affine_params(m, n, seed)
    e = torch.zeros(m, dtype=torch.int64)
    if family == "affine" or n < 2:
        return a, b, e
    gen = torch.Generator().manual_seed(seed + 7919)
    rad = _radical(n)
    f2s = torch.arange(rad, n, rad, dtype=torch.int64)
    f2s = f2s[(2 * f2s) % n != 0]   # f2 = n/2 is affine: f2*i^2 = f2*i (mod n)
    if not f2s.numel():
        return a, b, e
    units = torch.tensor([u for u in range(n) if math.gcd(u, n) == 1])
    i = torch.arange(n, dtype=torch.int64)
    for j in range(m):
        for _ in range(64):
            f1 = int(units[torch.randint(len(units), (1,), generator=gen)])
            f2 = int(f2s[torch.randint(len(f2s), (1,), generator=gen)])
            if torch.unique((f1 * i + f2 * i * i) % n).numel() == n:
                a[j], e[j] = (f1 + f2) % n, (2 * f2) % n
                break
    return a, b, e


def group_rows(w, groups, iters=20, seed=0):
    """Assign the rows of ``w`` to ``groups`` groups whose rows have similar sorted values.

    k-means on the sorted rows (the value distribution a common sequence must match),
    started from the rows ordered by norm; an emptied group takes the row farthest from its
    centre. Returns int64 ``(M,)`` group numbers, every group used.
    """
    m = w.shape[0]
    if not 1 <= groups <= m:
        raise ValueError(f"groups must be in [1, {m}] (the layer's rows), not {groups}")
    prof = torch.sort(w.detach(), dim=1).values
    order = torch.argsort(prof.norm(dim=1), stable=True)
    group = torch.empty(m, dtype=torch.int64)
    group[order] = torch.arange(m) * groups // m
    for _ in range(iters):
        centres = torch.stack([prof[group == g].mean(0) for g in range(groups)])
        dist = torch.cdist(prof, centres)
        new = dist.argmin(1)
        for g in range(groups):
            if not (new == g).any():
                far = int(dist[torch.arange(m), new].argmax())
                new[far] = g
        if torch.equal(new, group):
            break
        group = new
    return group


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
    """A Linear whose rows are permutations of trainable common sequences ``s``.

    Parameters
    ----------
    s : torch.Tensor
        The common sequences one after the other (``G*in_features`` values; ``G = 1`` for the
        index variant).
    bias : torch.Tensor
        ``(out_features,)``.
    idx : torch.Tensor
        int64 ``(out_features, in_features)``: ``weight = s[idx]``, absolute indices (row ``j``
        of group ``g_j`` reads ``g_j*in_features + pi_j``); every ``pi_j`` is checked to be a
        permutation.
    variant : str
        ``"affine"`` (generated permutations, either family) or ``"index"``.
    a, b, e, group : torch.Tensor, optional
        The generated permutations' per-row parameters and groups (``variant="affine"``;
        ``e`` and ``group`` default to zeros).
    """

    def __init__(self, s, bias, idx, variant, a=None, b=None, e=None, group=None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        m, n = idx.shape
        if variant == "affine":
            if a is None or b is None:
                raise ValueError("PermLinear: variant 'affine' needs a and b")
            e = torch.zeros(m, dtype=torch.int64) if e is None else torch.as_tensor(e)
            group = torch.zeros(m, dtype=torch.int64) if group is None else \
                torch.as_tensor(group)
            check_groups(s, group, n, m, "PermLinear")
            want = group.to(torch.int64).reshape(-1, 1) * n + generated_perms(a, b, e, n,
                                                                              "PermLinear")
            if not torch.equal(want, idx):
                raise ValueError("PermLinear: idx is not group*n + the generated permutations")
        else:
            check_sequence(s, n, "PermLinear")
            check_index_rom(idx, m, n, "PermLinear")
        self.variant = variant
        self.in_features, self.out_features = n, m
        self.s = nn.Parameter(torch.as_tensor(s, dtype=torch.float32).reshape(-1).clone())
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone())
        self.register_buffer("idx", idx.to(torch.int64).clone())
        for name, v in (("a", a), ("b", b), ("e", e), ("group", group)):
            self.register_buffer(name, None if v is None else torch.as_tensor(v).to(torch.int64))

    @property
    def groups(self):
        return self.s.numel() // self.in_features

    @property
    def family(self):
        return "quadratic" if self.e is not None and bool(self.e.any()) else "affine"

    @property
    def weight(self):
        return self.s[self.idx]

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self):
        more = f", groups={self.groups}, family={self.family}" if self.variant == "affine" else ""
        return f"{self.in_features} -> {self.out_features}, variant={self.variant}{more}"


def compress_linear(linear, variant, seed=0, init="sorted", groups=1, family="affine",
                    candidates=1):
    """Turn a trained ``nn.Linear`` into a :class:`PermLinear` (``s`` initialised, not tuned).

    ``init`` (affine variant): ``"sorted"`` starts each group's sequence at the mean sorted
    row of its rows (keeps the spread of the trained weights); ``"lsq"`` at the least-squares
    fit under the random permutations, which averages unrelated weights and collapses ``s``
    toward its mean (on LeNet-300-100 it fine-tuned to 11.7% in one epoch where ``"sorted"``
    reached 82.3%).

    ``groups`` (affine variant, ``1 .. out_features``): the rows are grouped by
    :func:`group_rows`; ``family`` (:data:`FAMILIES`) draws the permutations
    (:func:`random_generated_params`); with ``candidates > 1`` every row takes, of that many
    draws, the permutation under which its group's sorted sequence is nearest to the row
    (least squares), the best-fitting generated permutation. ``groups=1, candidates=1`` is the
    one-sequence ``perm_affine`` of before.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"compress_linear needs an nn.Linear, not {type(linear).__name__}")
    w = linear.weight.detach()
    m, n = w.shape
    bias = linear.bias.detach() if linear.bias is not None else torch.zeros(m)
    if variant == "index":
        s, idx = rank_perms(w)
        return PermLinear(s, bias, idx, "index")
    if variant != "affine":
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if init not in ("sorted", "lsq"):
        raise ValueError(f"init must be 'sorted' or 'lsq', not {init!r}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an integer >= 1, not {candidates!r}")
    group = group_rows(w, groups, seed=seed) if groups != 1 else torch.zeros(m, dtype=torch.int64)
    seqs = torch.stack([rank_perms(w[group == g])[0] for g in range(groups)])
    a, b, e = random_generated_params(m, n, family, seed)
    best = ((w - seqs[group].gather(1, generated_perms(a, b, e, n))) ** 2).sum(1)
    for k in range(1, candidates):
        ak, bk, ek = random_generated_params(m, n, family, seed + 104729 * k)
        err = ((w - seqs[group].gather(1, generated_perms(ak, bk, ek, n))) ** 2).sum(1)
        take = err < best
        a, b, e, best = (torch.where(take, new, old) for new, old in
                         ((ak, a), (bk, b), (ek, e), (err, best)))
    idx = group.reshape(-1, 1) * n + generated_perms(a, b, e, n)
    s = seqs.reshape(-1) if init == "sorted" else fit_sequence_groups(w, idx, groups * n)
    return PermLinear(s, bias, idx, "affine", a, b, e, group)


def fit_sequence_groups(w, idx, length):
    """Least-squares ``s`` (``length`` values) for fixed absolute indices ``idx``."""
    w = w.detach()
    total = torch.zeros(length, dtype=w.dtype).scatter_add_(0, idx.reshape(-1), w.reshape(-1))
    count = torch.zeros(length, dtype=w.dtype).scatter_add_(0, idx.reshape(-1),
                                                           torch.ones_like(w).reshape(-1))
    return total / count.clamp(min=1)


def compress_model(model, variant, layers=None, keep_classifier=False, seed=0, groups=1,
                   family="affine", candidates=1):
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
        Seeds the permutations (layer ``k`` uses ``seed + k``).
    groups, family : int / str, or dict of module index to int / str
        The sharing knob per layer (:func:`compress_linear`; affine variant): the number of
        common sequences and the generated family. A dict names the value of each module; a
        single value applies to every compressed layer.
    candidates : int
        Generated permutations tried per row (:func:`compress_linear`).
    """
    linear_idx = [i for i, mod in enumerate(model) if isinstance(mod, nn.Linear)]
    if not linear_idx:
        raise ValueError("model has no Linear layer to compress")
    if layers is None:
        layers = linear_idx[:-1] if keep_classifier else linear_idx
    for i in layers:
        if i not in linear_idx:
            raise ValueError(f"module {i} is not a Linear (Linear modules: {linear_idx})")

    def per_layer(value, i, what):
        if isinstance(value, dict):
            if i not in value:
                raise ValueError(f"{what} names modules {sorted(value)}, not module {i}")
            return value[i]
        return value

    out = copy.deepcopy(model)
    for k, i in enumerate(layers):
        kw = {}
        if variant == "affine":
            kw = {"groups": per_layer(groups, i, "groups"),
                  "family": per_layer(family, i, "family"), "candidates": candidates}
        out[i] = compress_linear(model[i], variant, seed + k, **kw)
    return out


def finetune(model, images, labels, epochs=1, lr=1e-3, batch_size=128, seed=0):
    """Train every parameter of ``model`` (``s`` and biases of the perm layers included):
    :func:`slimnfu.compress.train.fit` with a per-step cosine decay of the learning rate."""
    return fit(model, images, labels, lr, batch_size, seed, epochs, cosine=True)


#: Learning-rate schedules of :func:`train_early_stopping`.
SCHEDULES = ("epoch", "onecycle")


def distill_loss(logits, labels, teacher_logits, weight, temperature=4.0):
    """Knowledge distillation: ``(1 - weight) * CE(logits, labels) + weight * T^2 *
    KL(softmax(teacher/T) || softmax(logits/T))`` (Hinton et al. 2015), ``T = temperature``."""
    ce = nn.functional.cross_entropy(logits, labels)
    if weight == 0:
        return ce
    kl = nn.functional.kl_div(nn.functional.log_softmax(logits / temperature, 1),
                              nn.functional.softmax(teacher_logits / temperature, 1),
                              reduction="batchmean")
    return (1 - weight) * ce + weight * temperature ** 2 * kl


def train_early_stopping(model, train, val, max_epochs=30, patience=3, lr=1e-3,
                         batch_size=128, seed=0, progress=False, desc="train", after_step=None,
                         schedule="epoch", teacher=None, distill=0.0, temperature=4.0):
    """Train ``model`` in place until the validation accuracy stops improving.

    ``schedule="epoch"`` (the default): epoch ``e`` (from 0) is one pass of
    :func:`slimnfu.compress.train.fit` with a new Adam at the learning rate
    ``lr * (1 + cos(pi*e/max_epochs)) / 2`` (a cosine over the epoch budget).
    ``schedule="onecycle"``: one Adam for the whole run, its rate stepped per batch along
    ``torch.optim.lr_scheduler.OneCycleLR`` over ``max_epochs`` (torch's defaults: from
    ``lr / 25`` up to ``lr`` over the first 30% of the steps, then a cosine down to
    ``lr / 2.5e5``); the optimiser's moments carry over from epoch to epoch. After each
    epoch the model is evaluated on ``val``. Training stops after
    ``patience`` epochs without a better validation accuracy, or after ``max_epochs``; the
    model keeps the weights of its best epoch. Any model trains this way (the permuted layers
    and the baselines alike).

    With a ``teacher`` (e.g. the dense network the model was compressed from) and
    ``distill > 0`` the loss is :func:`distill_loss`: the student also matches the teacher's
    softened outputs on the training images (computed once, before training).

    Parameters
    ----------
    model : nn.Module
    train, val : tuple of tensors
        ``(images, labels)``.
    max_epochs, patience : int
        The epoch budget and the early-stopping patience (both >= 1).
    after_step : callable, optional
        :func:`slimnfu.compress.train.fit`'s hook (e.g. keeps IKR masks).
    schedule : str
        One of :data:`SCHEDULES`.
    teacher : nn.Module, optional
        Maps the same inputs as ``model`` to logits; needed when ``distill > 0``.
    distill : float
        Weight of the distillation term, in ``[0, 1]``.
    temperature : float
        Softening temperature ``T`` (> 0).

    Returns
    -------
    dict
        ``epochs`` (run), ``best_epoch`` (1-based), ``val_acc`` (per epoch), ``lr``,
        ``max_epochs``, ``patience``, ``schedule``, ``distill``.
    """
    from slimnfu.compress.train import evaluate

    for name, v in (("max_epochs", max_epochs), ("patience", patience)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, not {v!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    if not 0 <= distill <= 1:
        raise ValueError(f"distill must be in [0, 1], not {distill!r}")
    if distill and teacher is None:
        raise ValueError("distill > 0 needs a teacher model")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature!r}")
    (xs, ys), (xv, yv) = train, val
    loss = None
    if distill:
        teacher.eval()
        with torch.no_grad():
            soft = torch.cat([teacher(xs[i:i + 1000].float()) for i in range(0, len(xs), 1000)])
        loss = lambda logits, idx: distill_loss(logits, ys[idx], soft[idx], distill,  # noqa: E731
                                                temperature)
    optimizer = scheduler = None
    if schedule == "onecycle":
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        steps = -(-xs.shape[0] // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                        total_steps=max_epochs * steps)
    best, best_state, history = -1.0, None, []
    for epoch in range(max_epochs):
        rate = lr * (1 + math.cos(math.pi * epoch / max_epochs)) / 2
        fit(model, xs, ys, rate, batch_size, seed + epoch, 1, after_step=after_step,
            progress=progress, desc=f"{desc} epoch {epoch + 1}", optimizer=optimizer,
            scheduler=scheduler, loss=loss)
        acc = evaluate(model, xv, yv)
        history.append(round(acc, 4))
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
        elif len(history) - 1 - history.index(max(history)) >= patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return {"epochs": len(history), "best_epoch": history.index(max(history)) + 1,
            "val_acc": history, "lr": lr, "max_epochs": max_epochs, "patience": patience,
            "schedule": schedule, "distill": distill}


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
        if mod.variant == "affine":
            rec = PermAffineWeights(s_int, mod.a.clone(), mod.b.clone(),
                                    mod.e.clone() if mod.family == "quadratic" else None,
                                    mod.group.clone() if mod.groups > 1 else None)
            rec.indices(ql.desc.n_in, ql.name)
            ql.compressed = rec
        else:
            check_sequence(s_int, ql.desc.n_in, ql.name)
            check_index_rom(mod.idx, ql.desc.n_out, ql.desc.n_in, ql.name)
            ql.compressed = PermIndexWeights(s_int, mod.idx.clone())
        ql.format = FORMATS[mod.variant]
        if not torch.equal(gather_weights(ql), ql.w):
            raise AssertionError(f"{ql.name}: gathered s differs from the quantised weights")
    return q
