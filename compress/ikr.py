"""Intra-Kernel Regular (IKR) pattern pruning (docs/design.md section 3; Yang et al., ISMVL 2018).

Every KxK kernel of an IKR conv layer keeps exactly ``n`` weights, at the taps of one of the
layer's ``P <= 16`` patterns. Storage is ``n`` values plus one ``ceil(log2 P)``-bit index per
kernel, plus the pattern table (``P*n`` taps of ``ceil(log2(K*K))`` bits); no per-weight
positions. The engine (:mod:`slimnfu.rtl.ikr_unit`) runs a kernel group in ``max(n, K)``
cycles instead of ``K*K`` (``max(n, stride)`` while its window slides along a row and ``n``
for the pixel's other output tiles, with a window bank per input tile;
:meth:`slimnfu.config.PassDesc.ikr_cycles`).

The paper's full text is not available; these are our choices, each an option of
:class:`IkrOptions`:

* **library** (``"frequent"``): for a layer and an ``n``, take each kernel's top-``n`` taps by
  ``|w|``; the library is the ``P`` most frequent such tap sets (ties by first appearance).
  Fewer distinct sets than ``P`` gives a smaller library.
* **assignment**: each kernel takes the library pattern that keeps the most of its L2 norm
  (sum of ``w**2`` on the pattern's taps; ties to the lower index).
* **sharing** (``share``): with ``share > 1`` the kernels of each run of ``share`` consecutive
  output channels (an accelerator's ``tn`` output lanes, aligned to multiples of ``share``)
  take one pattern per input channel, chosen as above on the run's squared weights summed;
  the library is learnt from those runs. The engine can then fetch one tap per input lane
  for all its output lanes; the pruning keeps less of each kernel.
* **schedule** (``n_steps``): candidate ``n`` per kernel size, tightened one step at a time,
  layer by layer (first conv first), in rounds until no layer can be tightened. Each try
  prunes, fine-tunes ``finetune_batches`` Adam steps (masked weights stay zero) and is kept
  if the validation accuracy (images held out from training, never the test set) is within
  ``budget_pct`` percent points of the float baseline's validation accuracy, else
  the layer is rolled back and frozen at its last accepted ``n``.

A pruned model stays a plain ``nn.Sequential``: its weights are zero off-pattern, and each IKR
conv carries persistent buffers ``ikr_patterns`` (P, n) and ``ikr_index`` (O, C), so
``state_dict`` saving and :func:`load_ikr_state` restore everything.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from slimnfu.compress.train import fit
from slimnfu.formats.ikr import IkrFormat, IkrWeights, check_ikr, unshared_pattern

__all__ = ["IkrOptions", "shared_weight", "topn_sets", "learn_library", "assign_patterns",
           "shares_patterns", "pattern_mask", "mask_hook", "check_ikr", "apply_ikr",
           "ikr_layers", "load_ikr_state", "finetune", "ikr_prune", "mark_quantised",
           "DEFAULT_STEPS"]

#: Candidate kept-tap counts per kernel size (the tightening schedule).
DEFAULT_STEPS = {3: (9, 6, 5, 4, 3, 2, 1), 5: (25, 16, 12, 9, 7, 6, 5, 4, 3, 2, 1),
                 1: (1,), 7: (49, 32, 24, 16, 12, 9, 7, 5, 4, 3, 2, 1)}


@dataclass
class IkrOptions:
    """Options of :func:`ikr_prune` (see the module docstring for what each one decides).

    Parameters
    ----------
    patterns : int
        Library size P per layer, 1..16.
    library : str
        ``"frequent"`` (the only method implemented).
    n_steps : dict
        Kernel size -> descending candidate ``n`` values.
    finetune_batches, batch_size, lr : int, int, float
        Fine-tuning after each try (Adam).
    final_batches : int
        Extra fine-tuning of the accepted model at the end.
    seed : int
    layers : tuple of str or None
        Names (``named_modules``) of the convs to prune; None: every ``nn.Conv2d``.
    share : int
        Output channels per shared pattern, >= 1 (1: a pattern per kernel; the module
        docstring's **sharing**).
    """

    patterns: int = 16
    library: str = "frequent"
    n_steps: dict = field(default_factory=lambda: dict(DEFAULT_STEPS))
    finetune_batches: int = 150
    batch_size: int = 128
    lr: float = 5e-4
    final_batches: int = 300
    seed: int = 0
    layers: tuple = None
    share: int = 1

    def __post_init__(self):
        if isinstance(self.patterns, bool) or not isinstance(self.patterns, int) \
                or not 1 <= self.patterns <= 16:
            raise ValueError(f"IkrOptions.patterns must be an integer in [1, 16], not "
                             f"{self.patterns!r}")
        if self.library != "frequent":
            raise ValueError(f"IkrOptions.library must be 'frequent', not {self.library!r}")
        if isinstance(self.share, bool) or not isinstance(self.share, int) or self.share < 1:
            raise ValueError(f"IkrOptions.share must be an integer >= 1, not {self.share!r}")


def shared_weight(w, share=1):
    """Squared weights ``w (O, C, K, K)`` summed over each run of ``share`` output channels:
    ``(ceil(O/share), C, K, K)``, what the runs' one pattern per input channel is chosen on
    (``share=1``: ``w**2``)."""
    sq = w.detach() ** 2
    o = sq.shape[0]
    runs = -(-o // share)
    pad = runs * share - o
    if pad:
        sq = torch.cat([sq, sq.new_zeros(pad, *sq.shape[1:])])
    return sq.reshape(runs, share, *sq.shape[1:]).sum(1)


def topn_sets(w, n):
    """Each kernel's top-``n`` taps by magnitude: ``(O*C, n)`` sorted tap numbers ``ky*K+kx``."""
    flat = w.detach().reshape(-1, w.shape[-1] * w.shape[-2]).abs()
    return flat.topk(n, dim=1, sorted=False).indices.sort(dim=1).values


def learn_library(w, n, patterns=16, share=1):
    """The ``patterns`` most frequent top-``n`` tap sets of conv weights ``w (O, C, K, K)``
    (of each run of ``share`` output channels' summed squares, :func:`shared_weight`)."""
    sets = topn_sets(shared_weight(w, share) if share > 1 else w, n)
    uniq, inverse, counts = torch.unique(sets, dim=0, return_inverse=True, return_counts=True)
    first = torch.full((uniq.shape[0],), sets.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(sets.shape[0]), reduce="amin")
    order = sorted(range(uniq.shape[0]), key=lambda u: (-int(counts[u]), int(first[u])))
    return uniq[order[:patterns]].clone()


def assign_patterns(w, library, share=1):
    """Index ``(O, C)`` of the pattern keeping the most of each kernel's L2 norm (of each run of
    ``share`` output channels' summed L2 norms, one index for the run)."""
    sq = shared_weight(w, share)
    sq = sq.reshape(sq.shape[0], sq.shape[1], -1)
    kept = sq[:, :, library].sum(-1)          # (runs, C, P)
    return kept.argmax(-1).repeat_interleave(share, dim=0)[:w.shape[0]]


def shares_patterns(index, share):
    """Whether every run of ``share`` output channels of ``index (O, C)`` has one pattern per
    input channel (:func:`slimnfu.formats.ikr.unshared_pattern` names the first that does not)."""
    return unshared_pattern(index, share) is None


def pattern_mask(library, index, k):
    """0/1 float mask ``(O, C, k, k)`` of the assigned patterns."""
    o, c = index.shape
    mask = torch.zeros(o, c, k * k)
    mask.scatter_(2, library[index], 1.0)
    return mask.view(o, c, k, k)


def _set_buffer(module, name, value):
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module.register_buffer(name, value)


def apply_ikr(conv, n, patterns=16, name="conv", share=1):
    """Prune ``conv`` (an ``nn.Conv2d``) in place to ``n`` taps per kernel, one pattern per
    input channel and run of ``share`` output channels; return the mask."""
    k = conv.kernel_size[0]
    if conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError(f"layer {name}: IKR needs a square kernel, not {conv.kernel_size}")
    w = conv.weight.data
    library = learn_library(w, n, patterns, share)
    index = assign_patterns(w, library, share)
    check_ikr(name, k, n, library, index, patterns)
    mask = pattern_mask(library, index, k)
    conv.weight.data.mul_(mask)
    _set_buffer(conv, "ikr_patterns", library)
    _set_buffer(conv, "ikr_index", index)
    return mask


def ikr_layers(model):
    """``[(name, conv)]`` of the IKR convs of ``model`` (those with ``ikr_patterns``)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and "ikr_patterns" in m._buffers]


def masks_of(model):
    return {name: pattern_mask(conv.ikr_patterns, conv.ikr_index, conv.kernel_size[0])
            for name, conv in ikr_layers(model)}


def load_ikr_state(model, state):
    """Load a pruned ``state_dict`` into a fresh model of the same network (buffers created)."""
    for name, module in model.named_modules():
        for buf in ("ikr_patterns", "ikr_index"):
            key = f"{name}.{buf}" if name else buf
            if key in state:
                _set_buffer(module, buf, state[key].clone())
    model.load_state_dict(state)
    return model


def finetune(model, images, labels, batches, batch_size=128, lr=5e-4, seed=0):
    """Adam fine-tuning for ``batches`` random batches (:func:`slimnfu.compress.train.fit`);
    IKR weights stay zero off their patterns (the masks are applied after every step)."""
    if batches <= 0:
        return model
    return fit(model, images, labels, lr, batch_size, seed, batches=batches,
               after_step=mask_hook(model))


def mask_hook(model):
    """The ``after_step`` hook of :func:`slimnfu.compress.train.fit` that keeps the IKR convs
    of ``model`` (or of a copy with the same module names) zero off their patterns."""
    masks = masks_of(model)

    def keep_patterns(trained):
        with torch.no_grad():
            for n, conv in ikr_layers(trained):
                conv.weight.mul_(masks[n])

    return keep_patterns


def _convs(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def ikr_prune(model, train_images, train_labels, val_images, val_labels, budget_pct,
              options=None, log=None):
    """Iterative IKR pruning of every conv layer under an accuracy budget.

    Returns ``(model, history)``: the pruned model (a copy; ``model`` is unchanged) and a dict
    with ``n`` and ``P`` per conv, ``share``, the validation accuracies and one entry per try.
    """
    import copy

    from slimnfu.compress.train import evaluate

    opts = options or IkrOptions()
    if not isinstance(budget_pct, (int, float)) or budget_pct < 0:
        raise ValueError(f"budget_pct must be a number >= 0, not {budget_pct!r}")
    base = evaluate(model, val_images, val_labels)
    current = copy.deepcopy(model)
    convs = _convs(current)
    if opts.layers is not None:
        names = [n for n, _ in convs]
        unknown = [n for n in opts.layers if n not in names]
        if unknown:
            raise ValueError(f"IkrOptions.layers: {unknown[0]!r} is not a conv of the model "
                             f"(its convs: {', '.join(names)})")
        convs = [(n, c) for n, c in convs if n in opts.layers]
    steps = {}
    for name, conv in convs:
        k = conv.kernel_size[0]
        if k not in opts.n_steps:
            raise ValueError(f"layer {name}: no n schedule for kernel size {k} "
                             f"(IkrOptions.n_steps has {sorted(opts.n_steps)})")
        steps[name] = list(opts.n_steps[k])
    pos = {name: 0 for name, _ in convs}
    frozen = set()
    tries = []
    seed = opts.seed
    while len(frozen) < len(convs):
        for name, _ in convs:
            if name in frozen:
                continue
            if pos[name] + 1 >= len(steps[name]):
                frozen.add(name)
                continue
            n = steps[name][pos[name] + 1]
            trial = copy.deepcopy(current)
            conv = dict(_convs(trial))[name]
            apply_ikr(conv, n, opts.patterns, name, opts.share)
            seed += 1
            finetune(trial, train_images, train_labels, opts.finetune_batches,
                     opts.batch_size, opts.lr, seed)
            acc = evaluate(trial, val_images, val_labels)
            ok = base - acc <= budget_pct
            tries.append({"layer": name, "n": n, "val_acc": acc, "accepted": ok})
            if log:
                log(f"  {name} n={n}: val {acc:.2f}% (base {base:.2f}%) "
                    f"{'accepted' if ok else 'rejected'}")
            if ok:
                current, pos[name] = trial, pos[name] + 1
            else:
                frozen.add(name)
    # Layers never tightened still become IKR layers at n = K*K (the identity pattern).
    for name, conv in _convs(current):
        if "ikr_patterns" not in conv._buffers and name in steps:
            apply_ikr(conv, steps[name][0], opts.patterns, name, opts.share)
    finetune(current, train_images, train_labels, opts.final_batches, opts.batch_size,
             opts.lr / 2, seed + 1)
    history = {"val_acc_base": base, "val_acc": evaluate(current, val_images, val_labels),
               "n": {name: int(conv.ikr_patterns.shape[1]) for name, conv in ikr_layers(current)},
               "P": {name: int(conv.ikr_patterns.shape[0]) for name, conv in ikr_layers(current)},
               "share": opts.share, "tries": tries}
    return current, history


# Quantised side: QLayer format "ikr" (slimnfu.formats.ikr).

def mark_quantised(qmodel, model):
    """Turn the quantised conv layers of IKR convs into format ``"ikr"`` (its engine pass has
    ``ikr_n = n``).

    The quantised weights must be zero off-pattern (they are: quantising keeps zeros), which
    is checked, naming the layer.
    """
    pruned = [conv for _, conv in _convs(model)]
    qconvs = [q for q in qmodel.layers if q.desc.kind == "conv"]
    if len(pruned) != len(qconvs):
        raise ValueError(f"model has {len(pruned)} convs, quantised model {len(qconvs)}")
    for conv, q in zip(pruned, qconvs):
        if "ikr_patterns" not in conv._buffers:
            continue
        lib, idx = conv.ikr_patterns.clone(), conv.ikr_index.clone()
        k, n = q.desc.k, lib.shape[1]
        check_ikr(q.name, k, n, lib, idx)
        mask = pattern_mask(lib, idx, k).to(torch.bool)
        if bool((q.w[~mask] != 0).any()):
            raise ValueError(f"layer {q.name}: weights are non-zero off their IKR pattern")
        q.format = IkrFormat.name
        q.compressed = IkrWeights(lib, idx)
    return qmodel
