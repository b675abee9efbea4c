"""Intra-Kernel Regular (IKR) pattern pruning (DESIGN.md section 1B; Yang et al., ISMVL 2018).

Every KxK kernel of an IKR conv layer keeps exactly ``n`` weights, at the taps of one of the
layer's ``P <= 16`` patterns. Storage is ``n`` values plus one ``ceil(log2 P)``-bit index per
kernel, plus the pattern table (``P*n`` taps of ``ceil(log2(K*K))`` bits); no per-weight
positions. The engine (:mod:`slimnfu.rtl.ikr_unit`) runs a kernel group in ``max(n, K)``
cycles instead of ``K*K``.

The paper's full text is not available; these are our choices, each an option of
:class:`IkrOptions`:

* **library** (``"frequent"``): for a layer and an ``n``, take each kernel's top-``n`` taps by
  ``|w|``; the library is the ``P`` most frequent such tap sets (ties by first appearance).
  Fewer distinct sets than ``P`` gives a smaller library.
* **assignment**: each kernel takes the library pattern that keeps the most of its L2 norm
  (sum of ``w**2`` on the pattern's taps; ties to the lower index).
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

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from slimnfu.compress.train import fit

__all__ = ["IkrOptions", "topn_sets", "learn_library", "assign_patterns", "pattern_mask",
           "check_ikr", "apply_ikr", "ikr_layers", "load_ikr_state", "finetune", "ikr_prune",
           "mark_quantised", "ikr_values", "DEFAULT_STEPS"]

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

    def __post_init__(self):
        if isinstance(self.patterns, bool) or not isinstance(self.patterns, int) \
                or not 1 <= self.patterns <= 16:
            raise ValueError(f"IkrOptions.patterns must be an integer in [1, 16], not "
                             f"{self.patterns!r}")
        if self.library != "frequent":
            raise ValueError(f"IkrOptions.library must be 'frequent', not {self.library!r}")


def topn_sets(w, n):
    """Each kernel's top-``n`` taps by magnitude: ``(O*C, n)`` sorted tap numbers ``ky*K+kx``."""
    flat = w.detach().reshape(-1, w.shape[-1] * w.shape[-2]).abs()
    return flat.topk(n, dim=1, sorted=False).indices.sort(dim=1).values


def learn_library(w, n, patterns=16):
    """The ``patterns`` most frequent top-``n`` tap sets of conv weights ``w (O, C, K, K)``."""
    sets = topn_sets(w, n)
    uniq, inverse, counts = torch.unique(sets, dim=0, return_inverse=True, return_counts=True)
    first = torch.full((uniq.shape[0],), sets.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(sets.shape[0]), reduce="amin")
    order = sorted(range(uniq.shape[0]), key=lambda u: (-int(counts[u]), int(first[u])))
    return uniq[order[:patterns]].clone()


def assign_patterns(w, library):
    """Index ``(O, C)`` of the pattern keeping the most of each kernel's L2 norm."""
    sq = w.detach().reshape(w.shape[0], w.shape[1], -1) ** 2
    kept = sq[:, :, library].sum(-1)          # (O, C, P)
    return kept.argmax(-1)


def pattern_mask(library, index, k):
    """0/1 float mask ``(O, C, k, k)`` of the assigned patterns."""
    o, c = index.shape
    mask = torch.zeros(o, c, k * k)
    mask.scatter_(2, library[index], 1.0)
    return mask.view(o, c, k, k)


def check_ikr(name, k, n, library, index, patterns_max=16):
    """Raise ``ValueError`` naming layer ``name`` and the field when the IKR data are invalid.

    Checks: ``1 <= n <= k*k``; the table has at most ``patterns_max`` patterns, each with
    exactly ``n`` distinct taps in ``[0, k*k)``; every index lies in the table.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= k * k:
        raise ValueError(f"layer {name}: n={n!r} must be in [1, K*K={k * k}]")
    rows = library.tolist() if isinstance(library, torch.Tensor) else [list(r) for r in library]
    if not 1 <= len(rows) <= patterns_max:
        raise ValueError(f"layer {name}: the pattern table must have 1 <= P <= {patterns_max} "
                         f"patterns, not {len(rows)}")
    for p, row in enumerate(rows):
        if len(row) != n or len(set(row)) != n:
            raise ValueError(f"layer {name}: pattern {p} has {len(set(row))} distinct taps, "
                             f"but n={n}")
        if min(row) < 0 or max(row) >= k * k:
            raise ValueError(f"layer {name}: pattern {p} has a tap outside [0, {k * k})")
    index = torch.as_tensor(index)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(rows)):
        bad = int(index.max()) if int(index.max()) >= len(rows) else int(index.min())
        raise ValueError(f"layer {name}: pattern index {bad} is outside the table of "
                         f"{len(rows)} patterns")


def _set_buffer(module, name, value):
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module.register_buffer(name, value)


def apply_ikr(conv, n, patterns=16, name="conv"):
    """Prune ``conv`` (an ``nn.Conv2d``) in place to ``n`` taps per kernel; return the mask."""
    k = conv.kernel_size[0]
    if conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError(f"layer {name}: IKR needs a square kernel, not {conv.kernel_size}")
    w = conv.weight.data
    library = learn_library(w, n, patterns)
    index = assign_patterns(w, library)
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
    masks = masks_of(model)
    convs = dict(ikr_layers(model))

    def keep_patterns(_):
        with torch.no_grad():
            for n, conv in convs.items():
                conv.weight.mul_(masks[n])

    return fit(model, images, labels, lr, batch_size, seed, batches=batches,
               after_step=keep_patterns)


def _convs(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def ikr_prune(model, train_images, train_labels, val_images, val_labels, budget_pct,
              options=None, log=None):
    """Iterative IKR pruning of every conv layer under an accuracy budget.

    Returns ``(model, history)``: the pruned model (a copy; ``model`` is unchanged) and a dict
    with ``n`` per conv, the validation accuracies and one entry per try.
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
            apply_ikr(conv, n, opts.patterns, name)
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
            apply_ikr(conv, steps[name][0], opts.patterns, name)
    finetune(current, train_images, train_labels, opts.final_batches, opts.batch_size,
             opts.lr / 2, seed + 1)
    history = {"val_acc_base": base, "val_acc": evaluate(current, val_images, val_labels),
               "n": {name: int(conv.ikr_patterns.shape[1]) for name, conv in ikr_layers(current)},
               "P": {name: int(conv.ikr_patterns.shape[0]) for name, conv in ikr_layers(current)},
               "tries": tries}
    return current, history


# Quantised side: QLayer format "ikr" and its accounting.

def ikr_values(qlayer):
    """Kept integer weights ``(O, C, n)`` of an IKR :class:`QLayer`, in pattern tap order."""
    lib, idx = qlayer.extra["ikr_patterns"], qlayer.extra["ikr_index"]
    o, c = idx.shape
    return qlayer.w.reshape(o, c, -1).gather(2, lib[idx])


def mark_quantised(qmodel, model):
    """Turn the quantised conv layers of IKR convs into format ``"ikr"`` (``desc.ikr_n = n``).

    The quantised weights must be zero off-pattern (they are: quantising keeps zeros), which
    is checked, naming the layer.
    """
    from slimnfu.config import LayerDesc

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
        q.desc = LayerDesc(**{**q.desc.to_dict(), "ikr_n": int(n)})
        q.format = "ikr"
        q.extra = {**q.extra, "ikr_patterns": lib, "ikr_index": idx}
    return qmodel


def _ikr_items(qlayer, dw, acc, cfg=None):
    from slimnfu.compress.accounting import StoredItem, dense_items

    d = qlayer.desc
    lib = qlayer.extra["ikr_patterns"]
    p, n = lib.shape
    kernels = d.n_out * d.n_in
    index_bits = max(1, math.ceil(math.log2(p)))
    tap_bits = max(1, math.ceil(math.log2(d.k * d.k)))
    rest = [i for i in dense_items(qlayer, dw, acc, cfg) if i.name != "weights"]
    ci, co = d.tiles(cfg) if cfg is not None else (None, None)
    items = [
        StoredItem("ikr_values", kernels * n, dw, None if cfg is None else ci * co * n,
                   None if cfg is None else cfg.tn * cfg.ti * dw),
        StoredItem("ikr_index", kernels, index_bits, None if cfg is None else ci * co,
                   None if cfg is None else cfg.tn * cfg.ti * max(1, (cfg.ikr_patterns - 1)
                                                                  .bit_length())),
        StoredItem("ikr_table", p * n, tap_bits, None if cfg is None else n,
                   None if cfg is None else cfg.ikr_patterns * max(1, (cfg.ikr_kmax ** 2 - 1)
                                                                   .bit_length())),
    ]
    return items + rest


def _ikr_macs(qlayer):
    d = qlayer.desc
    return d.h_out * d.w_out * d.n_out * d.n_in * d.ikr_n


def _ikr_params(qlayer):
    d = qlayer.desc
    return d.n_out * d.n_in * d.ikr_n + d.n_out


# Weight images (see slimnfu.gen.image.FORMAT_MODULES).

#: Layer fields an ``"ikr"`` manifest entry holds besides the common ones.
IMAGE_LAYER_KEYS = {"ikr_patterns"}


def image_entry(qlayer):
    """Extra manifest fields of an IKR layer: the library size ``P``."""
    return {"ikr_patterns": int(qlayer.extra["ikr_patterns"].shape[0])}


def image_memories(qlayer, cfg):
    """``{item: (words, width)}`` of an IKR layer: values, index, table, bias, pwl."""
    from slimnfu.gen import layout
    from slimnfu.rtl.pattern_decoder import index_bits, tap_bits

    lib, idx = qlayer.extra["ikr_patterns"], qlayer.extra["ikr_index"]
    if lib.shape[0] > cfg.ikr_patterns or qlayer.desc.k > cfg.ikr_kmax:
        raise ValueError(f"layer {qlayer.name}: P={lib.shape[0]} patterns of a "
                         f"{qlayer.desc.k}x{qlayer.desc.k} kernel do not fit config "
                         f"{cfg.name!r} (ikr_patterns={cfg.ikr_patterns}, "
                         f"ikr_kmax={cfg.ikr_kmax})")
    mem = {"ikr_values": (layout.pack_ikr_weights(ikr_values(qlayer), cfg),
                          cfg.tn * cfg.ti * cfg.dw),
           "ikr_index": (layout.pack_ikr_index(idx, cfg), cfg.tn * cfg.ti * index_bits(cfg)),
           "ikr_table": (layout.pack_ikr_table(lib, qlayer.desc.k, cfg),
                         cfg.ikr_patterns * tap_bits(cfg)),
           "bias": (layout.pack_bias(qlayer.b, cfg), cfg.tn * cfg.acc)}
    if qlayer.desc.act == "pwl":
        mem["pwl"] = (layout.pack_pwl(qlayer.pwl, cfg), 3 * cfg.dw)
    return mem


def _unpack_table(words, p, k, cfg, fname):
    """Pattern table words -> ``(P, n)`` taps ``ky*k + kx``; entries past ``P`` must be 0."""
    from slimnfu.gen.image import ImageError
    from slimnfu.gen.layout import unpack_words
    from slimnfu.rtl.pattern_decoder import tap_bits

    bits = tap_bits(cfg)
    phys = unpack_words(words, cfg.ikr_patterns, bits) & ((1 << bits) - 1)   # (n, slots)
    if int(phys[:, p:].abs().sum()):
        raise ImageError(fname, "table", f"entries past the manifest's ikr_patterns={p} must "
                                         f"be zero")
    ky, kx = phys[:, :p] // cfg.ikr_kmax, phys[:, :p] % cfg.ikr_kmax
    if bool((ky >= k).any() or (kx >= k).any()):
        raise ImageError(fname, "table", f"a tap lies outside the {k}x{k} kernel")
    return (ky * k + kx).t().contiguous()


def image_restore(entry, files, contents, desc, cfg, where):
    """Rebuild an IKR :class:`QLayer` from a weight image; :class:`ImageError` on any problem.

    Checks the listed items and every file's shape against ``desc`` (``n`` taps per pattern)
    and the manifest's ``ikr_patterns``, then :func:`check_ikr` (distinct taps, indices
    inside the table), naming the file.
    """
    from slimnfu.compress.quant import QLayer
    from slimnfu.gen import image
    from slimnfu.gen.layout import unpack_words
    from slimnfu.rtl.pattern_decoder import index_bits, tap_bits

    want = {"ikr_values", "ikr_index", "ikr_table", "bias"} | \
        ({"pwl"} if desc.act == "pwl" else set())
    if set(entry["files"]) != want:
        raise image.ImageError(image.MANIFEST, f"{where}.files",
                               f"lists {sorted(entry['files'])}, an ikr layer with "
                               f"act={desc.act} needs {sorted(want)}")
    if desc.kind != "conv" or not desc.ikr_n:
        raise image.ImageError(image.MANIFEST, f"{where}.desc",
                               "format 'ikr' needs a conv layer with ikr_n >= 1")
    p = entry["ikr_patterns"]
    if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= cfg.ikr_patterns:
        raise image.ImageError(image.MANIFEST, f"{where}.ikr_patterns",
                               f"must be an integer in [1, {cfg.ikr_patterns}], not {p!r}")
    ci, co = desc.tiles(cfg)
    n = desc.ikr_n
    shapes = {"ikr_values": (ci * co * n, cfg.tn * cfg.ti * cfg.dw),
              "ikr_index": (ci * co, cfg.tn * cfg.ti * index_bits(cfg)),
              "ikr_table": (n, cfg.ikr_patterns * tap_bits(cfg)),
              "bias": (co, cfg.tn * cfg.acc), "pwl": (16, 3 * cfg.dw)}
    data = {}
    for item, fname in entry["files"].items():
        if fname not in contents:
            raise image.ImageError(image.MANIFEST, f"{where}.files.{item}",
                                   f"{fname!r} is not listed in files")
        got = (files[fname]["words"], files[fname]["width"])
        if got != shapes[item]:
            what = (f"holds {got[0]} taps per pattern, but {where}.desc has ikr_n={n}"
                    if item == "ikr_table" and got[1] == shapes[item][1] else
                    f"shape does not match {where}.desc ({shapes[item][0]} words of "
                    f"{shapes[item][1]} bits)")
            raise image.ImageError(fname, "words", what)
        data[item] = contents[fname]
    fn_table, fn_index = entry["files"]["ikr_table"], entry["files"]["ikr_index"]
    lib = _unpack_table(data["ikr_table"], p, desc.k, cfg, fn_table)
    ib = index_bits(cfg)
    lanes = unpack_words(data["ikr_index"], cfg.tn * cfg.ti, ib) & ((1 << ib) - 1)
    idx = image.crop_padding(lanes.view(co, ci, cfg.tn, cfg.ti).permute(0, 2, 1, 3)
                             .reshape(co * cfg.tn, ci * cfg.ti), desc, fn_index)
    try:
        check_ikr(entry["name"], desc.k, n, lib, idx, cfg.ikr_patterns)
    except ValueError as exc:
        bad_index = "pattern index" in str(exc)
        raise image.ImageError(fn_index if bad_index else fn_table, "values",
                               str(exc)) from None
    lanes = unpack_words(data["ikr_values"], cfg.tn * cfg.ti, cfg.dw)
    v = image.crop_padding(lanes.view(co, ci, n, cfg.tn, cfg.ti).permute(0, 3, 1, 4, 2)
                           .reshape(co * cfg.tn, ci * cfg.ti, n), desc,
                           entry["files"]["ikr_values"])
    w = torch.zeros(desc.n_out, desc.n_in, desc.k * desc.k, dtype=torch.int64)
    w.scatter_(2, lib[idx], v)
    bias = image._unpack_bias(data["bias"], desc, cfg, entry["files"]["bias"])
    pwl = image._unpack_pwl(data["pwl"], desc, cfg) if "pwl" in data else None
    return QLayer(entry["name"], desc, w.view(desc.n_out, desc.n_in, desc.k, desc.k), bias,
                  entry["f_x"], entry["f_w"], entry["f_y"], pwl, entry["act_func"], "ikr",
                  {"ikr_patterns": lib, "ikr_index": idx})


def _register():
    from slimnfu.compress.accounting import register_format

    register_format("ikr", _ikr_items, _ikr_macs, _ikr_params)


_register()
