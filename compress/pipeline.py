"""One network, all three methods the accelerator runs, under one accuracy budget.

:func:`compress_network` applies, in order:

* **method A** (:mod:`slimnfu.compress.slim`) to the first conv layer: lower kernels and
  linear feature approximation, greedy, least important feature first;
* **method B** (:mod:`slimnfu.compress.ikr`) to the other conv layers: IKR pattern pruning;
* **method C** (:mod:`slimnfu.compress.permfc`) to the hidden FC layers (all but the
  classifier): ``perm_affine`` with ``G`` common sequences per layer for each ``G`` of
  ``fc_groups`` in turn (fewest bits first: one sequence, then more), and, if the network is
  over the budget with all of them, ``perm_index``; the first try within the budget is kept
  (the smallest-bit point within the budget); if every try is over, the layers stay dense.
  Each try starts from the dense layers (grouped sorted rows, the best-fitting of 16
  generated permutations per row) and trains the whole network, IKR masks kept, with early
  stopping on the validation split (:func:`slimnfu.compress.permfc.train_early_stopping`, at
  most ``fc_epochs`` epochs).

It quantises the result into one :class:`slimnfu.compress.quant.QuantModel` whose layers carry
formats ``slim``, ``ikr`` and ``perm_*``, ready for :func:`slimnfu.gen.compiler.compile_model`.

The budget is in accuracy points on a validation split, against the float base. Our choices:
A gets a third of it; B what is left of two thirds after A; C the whole budget, counted
from the base (so C may use whatever A and B left).
"""

import copy

__all__ = ["PIPELINE", "compress_network", "quantize_all", "hash_state"]

#: Names the method sequence in cache file names (:func:`slimnfu.flows.network_file`), so a
#: changed pipeline does not reuse a result (A2: method A refuses coefficients no DW-bit word
#: holds; A3: a slim layer's output scale is calibrated on its approximation,
#: :func:`slimnfu.compress.slim.slim_ranges`, and the cache file holds the float network; C2:
#: method C tries grouped generated permutations before the index ROM).
PIPELINE = "A3-B2-C2"

#: Method C's group counts per try (``fc_variant="auto"``), fewest stored bits first.
FC_GROUPS = (1, 4, 16)


def compress_network(model, train, val, calib, budget_pct=1.0, fc_epochs=1, patterns=16,
                     ikr_finetune=150, fc_variant="auto", fc_groups=FC_GROUPS, log=print):
    """Compress ``model``; see the module docstring.

    Parameters
    ----------
    model : torch.nn.Module
        The trained float network (unchanged), with at least two conv layers. It is
        normalised first (:func:`slimnfu.compress.intake.require_supported`: BatchNorm folded,
        Dropout dropped, ...), and anything it cannot run is refused then, before any training.
    train, val : tuple of tensors
        ``(images, labels)`` to fine-tune on and to check the budget on.
    calib : torch.Tensor
        Calibration images for quantisation.
    fc_variant : str
        ``"auto"`` (the budget picks, as above), or ``"affine"`` / ``"index"``: that variant
        whatever the accuracy (``affine``: one common sequence per layer, so that the weights
        fit on chip).
    fc_groups : tuple of int
        The group counts ``"auto"`` tries, in order (each capped at the layer's rows).

    Returns
    -------
    tuple
        ``(float_model, qmodel, history)``; ``history`` has the validation accuracy after each
        method, the slim and IKR histories and each FC try.

    Raises
    ------
    slimnfu.compress.intake.IntakeError
        A ``ValueError`` naming every layer of ``model`` the pipeline cannot run, raised before
        any training.
    ValueError
        A bad budget or FC variant, or fewer than two conv layers.
    """
    from torch import nn

    from slimnfu.compress import ikr, permfc, slim
    from slimnfu.compress.intake import require_supported
    from slimnfu.compress.train import evaluate

    if not isinstance(budget_pct, (int, float)) or budget_pct < 0:
        raise ValueError(f"budget_pct must be a number >= 0, not {budget_pct!r}")
    if fc_variant not in ("auto", "affine", "index"):
        raise ValueError(f"fc_variant must be 'auto', 'affine' or 'index', not {fc_variant!r}")
    xs, ys = train
    xv, yv = val
    model = require_supported(model, tuple(xs.shape[1:]), source="the model")
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model)
    if n_convs < 2:
        raise ValueError(f"the network needs two conv layers (method A on the first, B on the "
                         f"rest), not {n_convs}")
    base = evaluate(model, xv, yv)
    sm = slim.slim_model(model)
    convs = slim.conv_layers(sm)
    log(f"method A (lower kernels, linear approximation) on module {convs[0]} under "
        f"{budget_pct / 3:.2f} points ...")
    ranking = [r for r in slim.importance(sm, xv[:1000], yv[:1000]) if r[1] == convs[0]]
    a_hist = slim.greedy(sm, xv, yv, budget_pct / 3, "both", ranking=ranking)
    acc_a = evaluate(sm, xv, yv)
    left = max(0.0, 2 * budget_pct / 3 - (base - acc_a))
    log(f"  val {acc_a:.2f}% (base {base:.2f}%); method B (IKR) under {left:.2f} points ...")
    opts = ikr.IkrOptions(patterns=patterns, finetune_batches=ikr_finetune,
                          layers=tuple(f"{i}.conv" for i in convs[1:]))
    pruned, ikr_hist = ikr.ikr_prune(sm, xs, ys, xv, yv, left, opts)
    keep_patterns = ikr.mask_hook(pruned)
    trials = ([("affine", g) for g in fc_groups] + [("index", 1)] if fc_variant == "auto"
              else [(fc_variant, 1)])
    tries, chosen = [], pruned
    for variant, groups in trials:
        linears = [i for i, mod in enumerate(pruned) if isinstance(mod, nn.Linear)][:-1]
        kw = ({"groups": {i: min(groups, pruned[i].out_features) for i in linears},
               "candidates": 16} if variant == "affine" else {})
        trial = permfc.compress_model(pruned, variant, keep_classifier=True, **kw)
        hist = permfc.train_early_stopping(trial, train, val, max_epochs=fc_epochs,
                                           patience=2, after_step=keep_patterns)
        acc = evaluate(trial, xv, yv)
        ok = base - acc <= budget_pct or fc_variant != "auto"
        tries.append({"variant": variant, "groups": groups, "val_acc": acc,
                      "epochs": hist["epochs"], "accepted": ok})
        log(f"method C perm_{variant} G={groups}: val {acc:.2f}% (base {base:.2f}%) after "
            f"{hist['epochs']} epochs, {'accepted' if ok else 'rejected'}")
        if ok:
            chosen = trial
            break
    q = quantize_all(chosen, calib)
    history = {"budget_pct": budget_pct, "val_acc_base": base, "val_acc_after_a": acc_a,
               "val_acc_after_b": ikr_hist["val_acc"], "val_acc": evaluate(chosen, xv, yv),
               "slim": {"module": convs[0], "changes": a_hist["log"],
                        "ksize": [int(k) for k in sm[convs[0]].ksize],
                        "approx": [bool(a) for a in sm[convs[0]].approx]},
               "ikr": ikr_hist, "fc_tries": tries,
               "formats": {l.name: l.format for l in q.layers}}
    return copy.deepcopy(chosen), q, history


def quantize_all(model, calib, dw=16):
    """Quantise a model that mixes :class:`slimnfu.compress.slim.SlimConv` (every conv),
    IKR-pruned convs inside them and :class:`slimnfu.compress.permfc.PermLinear` layers.

    The slim quantiser sets the channel order (kept features by kernel size, approximated
    last) and permutes each next layer's inputs; an IKR conv's pattern indices are permuted
    the same way before its layer is marked ``ikr``. Untreated slim convs that are not IKR
    stay ``slim`` (one pass each).
    """
    import torch

    from slimnfu.compress import ikr, permfc, slim

    q = slim.quantize_slim(permfc.to_dense(model), calib, dw=dw)
    marked = copy.deepcopy(model)
    order = None
    qconvs = [l for l in q.layers if l.desc.kind == "conv"]
    for i, ql in zip(slim.conv_layers(marked), qconvs):
        conv = marked[i].conv
        if "ikr_index" in conv._buffers:
            if order is not None:
                conv.ikr_index = conv.ikr_index[:, torch.tensor(order)]
            if ql.compressed.order != list(range(len(ql.compressed.order))):
                raise ValueError(f"layer {ql.name}: an IKR conv must keep its own filter order")
        order = ql.compressed.order
    q = ikr.mark_quantised(q, marked)
    return permfc.mark_perm(q, model, dw)


def hash_state(model):
    """SHA-256 hex digest of ``model``'s state (names and values): names a checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()

