"""One network, the methods the accelerator runs, under one accuracy budget, planned per layer.

:func:`plan_layers` gives every conv and FC layer of the (normalised) network one method:

* **method A** (:mod:`slimnfu.compress.slim`, ``"slim"``): lower kernels and linear feature
  approximation, greedy, least important feature first; on the first conv layer (on every
  conv when IKR is not among the methods);
* **method B** (:mod:`slimnfu.compress.ikr`, ``"ikr"``): IKR pattern pruning, on the other
  conv layers (on every conv when method A is not among the methods), where
  :data:`slimnfu.compress.ikr.DEFAULT_STEPS` has a schedule for the kernel size;
* **method C** (:mod:`slimnfu.compress.permfc`, ``"perm"``): the hidden FC layers (all but the
  classifier): ``perm_affine`` with ``G`` common sequences per layer for each ``G`` of
  ``fc_groups`` in turn (fewest bits first: one sequence, then more), and, if the network is
  over the budget with all of them, ``perm_index``; the first try within the budget is kept
  (the smallest-bit point within the budget); if every try is over, the layers stay dense.
  Each try starts from the dense layers (grouped sorted rows, the best-fitting of 16
  generated permutations per row) and trains the whole network, IKR masks kept, with early
  stopping on the validation split (:func:`slimnfu.compress.permfc.train_early_stopping`, at
  most ``fc_epochs`` epochs, stopping after ``fc_patience`` epochs without a better validation
  accuracy, the best epoch kept); each try's epochs, best epoch, validation curve and wall
  time are in the history.

A layer no chosen method applies to is ``dense``. With ``methods="auto"`` all three are
chosen and a first conv on which method A saved nothing is offered to IKR too.
:func:`compress_network` runs the stages in this order; a layer whose method saved nothing
(method A kept every kernel whole and approximated nothing, IKR kept every tap, method C was
rejected) runs dense, so the compiled config switches on only the method hardware some layer
uses. It quantises the result into one :class:`slimnfu.compress.quant.QuantModel`, ready for
:func:`slimnfu.gen.compiler.compile_model`.

The budget is in accuracy points against the float base, and two held-out splits judge it.
Every decision (A's greedy steps, B's tightening steps, each FC try's early stopping and its
acceptance) is taken on the **selection** split (``val``). Our choices: A gets a third of the
budget; B what is left of two thirds after A; C the whole budget, counted from the base (so C
may use whatever A and B left). Every stage is checked against its share after its last
fine-tune: an IKR stage whose final fine-tune leaves the network over two thirds of the budget
is undone (its layers dense), as a rejected FC try is.

So many decisions on one split make its accuracy optimistic (on LeNet-5 the selection split
said 0.33 points lost where the test set said 1.10, almost all of it method C: the epoch early
stopping keeps is the selection split's best), so the verdict is taken on the **check** split
(``check``), images no decision and no fit has seen, in float and as the integer reference,
each loss plus :data:`CHECK_MARGIN_SE` of its standard errors: a network within the budget
there is shipped; one over it is backed off the way a rejected
FC try is, the last stage first: the next FC try (each try the selection split accepts is
judged on the check split before it is kept), then the FC layers dense, then B undone, then A
undone (the dense network), until one is within the budget. The check split thus judges at
most one network per FC try plus three, each a fixed step back; it never picks among
alternatives by their check accuracy. With a forced ``fc_variant`` nothing is backed off (the
verdict is still reported). The history's ``final`` has the selection and check figures and
every network the check split judged; a final network over the budget is logged, never passed
silently. The test set is never an argument here.
"""

import copy
import time

from slimnfu.config import Scenario

__all__ = ["PIPELINE", "FC_EPOCHS", "FC_PATIENCE", "METHODS", "parse_methods", "plan_layers",
           "compress_network", "quantize_all", "hash_state"]

#: Names the method sequence in cache file names (:func:`slimnfu.flows.network_file`), so a
#: changed pipeline does not reuse a result (A2: method A refuses coefficients no DW-bit word
#: holds; A3: a slim layer's output scale is calibrated on its approximation,
#: :func:`slimnfu.compress.slim.slim_ranges`, and the cache file holds the float network; C2:
#: method C tries grouped generated permutations before the index ROM; C3: each try trains to
#: convergence, at most ``fc_epochs`` epochs with early stopping, instead of one epoch; K1: the
#: verdict on an untouched check split, with back-off, module docstring; K2: that verdict with
#: a margin of :data:`CHECK_MARGIN_SE` standard errors).
PIPELINE = "A3-B2-C3-K2"

#: Method C's epoch budget and early-stopping patience per try: the project scenario's
#: (:class:`slimnfu.config.Scenario`, chosen from the measurement in docs/results.md).
FC_EPOCHS, FC_PATIENCE = Scenario.fc_epochs, Scenario.fc_patience

#: The check split's verdict: within the budget when the loss plus this many of its standard
#: errors (:func:`_loss_se`, set by the split's size) is at most the budget (a one-sided bound,
#: about 98%); the point estimate shipped a demo network 1.10 points over on the test set.
CHECK_MARGIN_SE = 2.0

#: Method C's group counts per try (``fc_variant="auto"``), fewest stored bits first.
FC_GROUPS = (1, 4, 16)

#: The methods, in the order their stages run.
METHODS = ("slim", "ikr", "perm")
SLIM, IKR, PERM = METHODS


def parse_methods(text):
    """``"auto"`` or a comma-separated subset of :data:`METHODS` (``"slim,ikr"``) as
    ``"auto"`` or a tuple in stage order; ``ValueError`` naming ``--methods`` otherwise."""
    if isinstance(text, (tuple, list)):
        text = ",".join(text)
    if not isinstance(text, str):
        raise TypeError(f"--methods must be a string, not {type(text).__name__}")
    if text.strip() == "auto":
        return "auto"
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in METHODS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"--methods must be 'auto' or a comma-separated list of distinct "
                         f"methods from {', '.join(METHODS)}, not {text!r}")
    return tuple(m for m in METHODS if m in names)


def _ikr_steps(conv):
    """IKR's ``n`` schedule for ``conv``, or None when IKR cannot prune it."""
    from slimnfu.compress.ikr import DEFAULT_STEPS

    k = conv.kernel_size
    steps = DEFAULT_STEPS.get(k[0]) if k[0] == k[1] else None
    return steps if steps and len(steps) > 1 else None


def plan_layers(model, methods=METHODS):
    """The method of every conv and FC layer of ``model`` (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Sequential
        A normalised network (:func:`slimnfu.compress.intake.require_supported`).
    methods : tuple of str or "auto"
        From :func:`parse_methods`.

    Returns
    -------
    list of dict
        One per conv or FC module, in order: ``module`` (index), ``kind`` (``conv`` or
        ``fc``), ``method`` (``slim``, ``ikr``, ``perm`` or ``dense``) and ``why`` (for a dense
        layer, why no method applies).
    """
    from torch import nn

    methods = METHODS if methods == "auto" else parse_methods(methods)
    convs = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    fcs = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    rows = []
    for pos, i in enumerate(convs):
        conv = model[i]
        k = conv.kernel_size
        able = {SLIM: k[0] == k[1] and k[0] % 2 == 1 and (k[0] > 1 or conv.out_channels > 1),
                IKR: _ikr_steps(conv) is not None}
        prefs = (SLIM, IKR) if pos == 0 or IKR not in methods else (IKR, SLIM)
        chosen = [m for m in prefs if m in methods and able[m]]
        if chosen:
            rows.append({"module": i, "kind": "conv", "method": chosen[0], "why": None})
        else:
            why = ("no conv method chosen" if not {SLIM, IKR} & set(methods) else
                   f"kernel {k[0]}x{k[1]}: neither lower kernels nor an IKR schedule")
            rows.append({"module": i, "kind": "conv", "method": "dense", "why": why})
    for i in fcs:
        if i == fcs[-1]:
            rows.append({"module": i, "kind": "fc", "method": "dense", "why": "the classifier"})
        elif PERM in methods:
            rows.append({"module": i, "kind": "fc", "method": PERM, "why": None})
        else:
            rows.append({"module": i, "kind": "fc", "method": "dense",
                         "why": "method C not chosen"})
    return rows


def compress_network(model, train, val, calib, budget_pct=1.0, fc_epochs=FC_EPOCHS,
                     patterns=16, ikr_finetune=150, fc_variant="auto", fc_groups=FC_GROUPS,
                     methods=METHODS, fc_patience=FC_PATIENCE, check=None, ikr_share=1,
                     log=print):
    """Compress ``model``; see the module docstring.

    Parameters
    ----------
    model : torch.nn.Module
        The trained float network (unchanged). It is normalised first
        (:func:`slimnfu.compress.intake.require_supported`: BatchNorm folded, Dropout dropped,
        ...), and anything it cannot run is refused then, before any training.
    train, val : tuple of tensors
        ``(images, labels)`` to fine-tune on, and the selection split every decision is taken
        on (each stage's share of the budget, IKR's steps, each FC try's early stopping).
    calib : torch.Tensor
        Calibration images for quantisation (no labels: they may be selection images).
    fc_variant : str
        ``"auto"`` (the budget picks, as above), or ``"affine"`` / ``"index"``: that variant
        whatever the accuracy (``affine``: one common sequence per layer, so that the weights
        fit on chip).
    fc_groups : tuple of int
        The group counts ``"auto"`` tries, in order (each capped at the layer's rows).
    fc_epochs, fc_patience : int
        Each method C try's epoch budget and early-stopping patience (on ``val``).
    methods : tuple of str or "auto"
        The methods to use (:func:`parse_methods`); the default is all three.
    ikr_share : int
        IKR: output channels per shared pattern (:attr:`slimnfu.compress.ikr.IkrOptions.share`;
        the config's ``tn`` lets the lane IKR unit, ``ikr.lanes``, run the layers; 1: a
        pattern per kernel, which runs on the window decoder).
    check : tuple of tensors, optional
        ``(images, labels)`` no decision has seen: the final budget verdict is taken on them,
        and a network over the budget there is backed off (see the module docstring). None:
        the verdict is on ``val`` only, with no back-off.

    Returns
    -------
    tuple
        ``(float_model, qmodel, history)``; ``history`` has the plan (``plan``: per layer the
        planned and the final method, ``method`` and ``final``), the validation accuracy after
        each method, the slim and IKR histories (None when the stage did not run), each FC
        try (``epochs`` run, ``best_epoch``, ``val_curve``, ``wall_s``, and with ``check``
        ``within_check``) and ``final``: the final network's validation accuracy in float and
        integer, its loss in points against the base and ``within_budget``; with ``check``
        also its check-split figures (``check_acc``, ``check_acc_int``, ``check_acc_base``,
        their losses, ``within_budget_check``: the verdict), the stages it keeps
        (``shipped``, e.g. ``"A, B, C perm_affine G=1"``) and every network the check split
        judged, in order (``check_steps``).

    Raises
    ------
    slimnfu.compress.intake.IntakeError
        A ``ValueError`` naming every layer of ``model`` the pipeline cannot run, raised before
        any training.
    ValueError
        A bad budget, FC variant or methods, or a ``check`` split without one label per image
        (or without images).
    TypeError
        A ``check`` that is not a pair.
    """
    from torch import nn

    from slimnfu.compress import ikr, permfc, slim
    from slimnfu.compress.intake import require_supported
    from slimnfu.compress.train import evaluate

    if not isinstance(budget_pct, (int, float)) or budget_pct < 0:
        raise ValueError(f"budget_pct must be a number >= 0, not {budget_pct!r}")
    if fc_variant not in ("auto", "affine", "index"):
        raise ValueError(f"fc_variant must be 'auto', 'affine' or 'index', not {fc_variant!r}")
    if check is not None:
        if not isinstance(check, (tuple, list)) or len(check) != 2:
            raise TypeError(f"check must be None or a pair (images, labels), not "
                            f"{type(check).__name__}" + (f" of {len(check)}" if isinstance(
                                check, (tuple, list)) else ""))
        if len(check[0]) != len(check[1]) or not len(check[1]):
            raise ValueError(f"check has {len(check[0])} images and {len(check[1])} labels; "
                             f"it needs one label per image, at least one image")
    auto = parse_methods(methods) == "auto"
    xs, ys = train
    xv, yv = val
    model = require_supported(model, tuple(xs.shape[1:]), source="the model")
    plan = plan_layers(model, methods)
    by = {m: [r["module"] for r in plan if r["method"] == m] for m in METHODS}
    base = evaluate(model, xv, yv)
    sm = slim.slim_model(model)
    a_hist, acc_a, a_idle = None, base, []
    if by["slim"]:
        names = ", ".join(f"module {i}" for i in by["slim"])
        log(f"method A (lower kernels, linear approximation) on {names} under "
            f"{budget_pct / 3:.2f} points ...")
        ranking = [r for r in slim.importance(sm, xv[:1000], yv[:1000]) if r[1] in by["slim"]]
        a_hist = slim.greedy(sm, xv, yv, budget_pct / 3, "both", ranking=ranking)
        acc_a = evaluate(sm, xv, yv)
        a_idle = [i for i in by["slim"] if not _slim_saves(sm[i])]
    ikr_convs = by["ikr"] + (a_idle if auto else [])
    before_b, ikr_hist, acc_b, pruned = sm, None, acc_a, sm
    if ikr_convs:
        left = max(0.0, 2 * budget_pct / 3 - (base - acc_a))
        log(f"  val {acc_a:.2f}% (base {base:.2f}%); method B (IKR) under {left:.2f} points "
            f"...")
        opts = ikr.IkrOptions(patterns=patterns, finetune_batches=ikr_finetune, share=ikr_share,
                              layers=tuple(f"{i}.conv" for i in ikr_convs))
        pruned, ikr_hist = ikr.ikr_prune(sm, xs, ys, xv, yv, left, opts)
        acc_b = ikr_hist["val_acc"]
        if base - acc_b > 2 * budget_pct / 3:
            log(f"  IKR: val {acc_b:.2f}% after its final fine-tune is over two thirds of the "
                f"budget ({base - acc_b:.2f} > {2 * budget_pct / 3:.2f} points): undone")
            ikr_hist["undone"] = True
            pruned, acc_b = before_b, acc_a
        for i in ikr_convs:
            conv = pruned[i].conv
            if "ikr_patterns" in conv._buffers and \
                    conv.ikr_patterns.shape[1] == conv.kernel_size[0] * conv.kernel_size[1]:
                del conv._buffers["ikr_patterns"], conv._buffers["ikr_index"]
    keep_patterns = ikr.mask_hook(pruned)
    gate = None if check is None else _Gate(model, check, calib, budget_pct, log)
    trials = ([("affine", g) for g in fc_groups] + [("index", 1)] if fc_variant == "auto"
              else [(fc_variant, 1)])
    moved = slim.reordered_inputs(pruned)
    reordered = [i for i in by["perm"] if i in moved]
    if reordered:
        # method A's export order permutes these layers' input columns, which perm_index's
        # ROM takes (its columns are permuted with them) and perm_affine's generated
        # permutations cannot
        names = ", ".join(f"module {i}" for i in reordered)
        if fc_variant == "affine":
            raise ValueError(f"fc_variant 'affine': {names} follows a conv whose channels "
                             f"method A reorders (kept features by kernel size, approximated "
                             f"last), and perm_affine's generated permutations cannot take "
                             f"the reorder; use fc_variant 'index' or 'auto'")
        if any(v == "affine" for v, _ in trials):
            log(f"method C: perm_affine not tried on {names}: method A reorders the conv "
                f"channels before it; perm_index only")
            trials = [t for t in trials if t[0] != "affine"]
    a_saves = any(_slim_saves(sm[i]) for i in by["slim"])
    after_a = "A" if a_saves else "dense"
    after_b = ", ".join(["A"] * a_saves + ["B"]) if pruned is not before_b else after_a
    tries, chosen, shipped = [], None, None
    for variant, groups in trials if by["perm"] else ():
        t0 = time.monotonic()
        kw = ({"groups": {i: min(groups, pruned[i].out_features) for i in by["perm"]},
               "candidates": 16} if variant == "affine" else {})
        trial = permfc.compress_model(pruned, variant, layers=by["perm"], **kw)
        hist = permfc.train_early_stopping(trial, train, val, max_epochs=fc_epochs,
                                           patience=fc_patience, after_step=keep_patterns)
        acc = evaluate(trial, xv, yv)
        ok = base - acc <= budget_pct or fc_variant != "auto"
        tries.append({"variant": variant, "groups": groups, "val_acc": acc,
                      "epochs": hist["epochs"], "best_epoch": hist["best_epoch"],
                      "max_epochs": fc_epochs, "patience": fc_patience,
                      "val_curve": hist["val_acc"], "wall_s": round(time.monotonic() - t0, 1),
                      "accepted": ok})
        log(f"method C perm_{variant} G={groups}: val {acc:.2f}% (base {base:.2f}%) after "
            f"{hist['epochs']} of at most {fc_epochs} epochs (best {hist['best_epoch']}), "
            f"{tries[-1]['wall_s']:.0f} s, {'accepted' if ok else 'rejected'}")
        if ok and gate is not None and fc_variant == "auto":
            label = f"{after_b}, C perm_{variant} G={groups}".removeprefix("dense, ")
            ok = tries[-1]["accepted"] = tries[-1]["within_check"] = gate(trial, label)
        if ok:
            chosen, shipped = trial, f"{after_b}, C perm_{variant} G={groups}"
            break
    if chosen is None:
        # over the budget on the check split: undo the last stage, one at a time
        backoff = [(pruned, after_b)] + [(before_b, after_a)] * (pruned is not before_b) \
            + [(slim.slim_model(model), "dense")] * a_saves
        chosen, shipped = backoff[0]
        for net, label in backoff if gate is not None and fc_variant == "auto" else ():
            chosen, shipped = net, label
            if gate(net, label):
                break
    q = quantize_all(chosen, calib)
    final = _final_methods(chosen, plan, nn)
    for row in plan:
        row["final"] = final[row["module"]]
    q = _dense_when_unchanged(q, chosen)
    acc_final = evaluate(chosen, xv, yv)
    acc_int = _int_accuracy(q, xv, yv)
    final_check = {"val_images": len(yv), "val_acc": acc_final, "val_acc_int": acc_int,
                   "loss_pts": base - acc_final, "loss_pts_int": base - acc_int,
                   "within_budget": base - acc_final <= budget_pct,
                   "within_budget_int": base - acc_int <= budget_pct}
    shown = f"val {acc_final:.2f}% float, {acc_int:.2f}% integer (base {base:.2f}%)"
    if gate is None:
        verdict = ("within" if final_check["within_budget"] and final_check["within_budget_int"]
                   else "OVER")
        log(f"final network: {shown}: {verdict} the {budget_pct:g}-point budget")
    else:
        final_check.update(gate.final(chosen, q, shipped.removeprefix("dense, ")))
        verdict = "within" if final_check["within_budget_check"] else "OVER"
        log(f"final network ({final_check['shipped']}): {shown}; on the check split "
            f"{final_check['check_acc']:.2f}% float, {final_check['check_acc_int']:.2f}% "
            f"integer (base {final_check['check_acc_base']:.2f}%): {verdict} the "
            f"{budget_pct:g}-point budget")
    slim_i = by["slim"][0] if by["slim"] else None
    history = {"budget_pct": budget_pct, "methods": "auto" if auto else list(parse_methods(
                   methods)), "plan": plan,
               "val_acc_base": base, "val_acc_after_a": acc_a,
               "val_acc_after_b": acc_b, "val_acc": acc_final, "final": final_check,
               "slim": None if a_hist is None else {
                   "module": slim_i if len(by["slim"]) == 1 else by["slim"],
                   "changes": a_hist["log"],
                   "ksize": [int(k) for k in sm[slim_i].ksize],
                   "approx": [bool(a) for a in sm[slim_i].approx]},
               "ikr": ikr_hist, "fc_tries": tries,
               "formats": {l.name: l.format for l in q.layers}}
    if len(by["slim"]) > 1:
        history["slim"]["per_module"] = {
            str(i): {"ksize": [int(k) for k in sm[i].ksize],
                     "approx": [bool(a) for a in sm[i].approx]} for i in by["slim"]}
    return copy.deepcopy(chosen), q, history


def _int_accuracy(q, images, labels):
    """Top-1 accuracy in percent of the integer reference of ``q`` on ``images``."""
    return 100.0 * float(_int_correct(q, images, labels).double().mean())


def _int_correct(q, images, labels):
    """Per image, whether the integer reference of ``q`` classifies it right."""
    from slimnfu.compress.quant import int_forward

    return int_forward(q, images)[0].argmax(1) == labels


def _float_correct(model, images, labels, batch_size=1000):
    """Per image, whether the float ``model`` (put in eval mode) classifies it right."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size].float()).argmax(1)
                          for i in range(0, len(images), batch_size)]) == labels


def _loss_se(base, net):
    """The standard error in points of the paired loss ``mean(base - net)`` (per-image
    correctness), which the split's size sets."""
    d = base.double() - net.double()
    return 100.0 * float(d.std(unbiased=False)) / len(d) ** 0.5


class _Gate:
    """The budget verdict on the check split: images no decision has seen.

    Parameters
    ----------
    model : torch.nn.Module
        The (normalised) float base; its float accuracy on the check split is the reference.
    check : tuple of tensors
        ``(images, labels)``.
    calib : torch.Tensor
        Calibration images (a checked network is quantised with them).
    budget_pct : float
    log : callable
    """

    def __init__(self, model, check, calib, budget_pct, log):
        self.images, self.labels = check
        self.calib, self.budget, self.log = calib, budget_pct, log
        self.right = _float_correct(model, self.images, self.labels)
        self.base = 100.0 * float(self.right.double().mean())
        self.steps = []

    def figures(self, net, q):
        """The float network ``net`` and its quantised ``q`` on the check split: accuracies,
        losses against the base, the losses' standard errors and the verdict (each loss plus
        :data:`CHECK_MARGIN_SE` standard errors at most the budget)."""
        right = _float_correct(net, self.images, self.labels)
        right_int = _int_correct(q, self.images, self.labels)
        acc, acc_int = (100.0 * float(r.double().mean()) for r in (right, right_int))
        return {"check_images": len(self.labels), "check_acc_base": self.base,
                "check_acc": acc, "check_acc_int": acc_int,
                "check_loss_pts": self.base - acc, "check_loss_pts_int": self.base - acc_int,
                "check_se_pts": _loss_se(self.right, right),
                "check_se_pts_int": _loss_se(self.right, right_int),
                "within_budget_check": max(
                    self.base - acc + CHECK_MARGIN_SE * _loss_se(self.right, right),
                    self.base - acc_int + CHECK_MARGIN_SE * _loss_se(self.right, right_int))
                <= self.budget}

    def __call__(self, net, label):
        """Whether ``net`` (named ``label`` in the log and the history) is within the budget
        on the check split, float and integer; each call is one step of the history."""
        q = _dense_when_unchanged(quantize_all(net, self.calib), net)
        row = {"network": label, **self.figures(net, q)}
        self.steps.append(row)
        ok = row["within_budget_check"]
        self.log(f"  check split ({len(self.labels)} images): {label}: "
                 f"{row['check_acc']:.2f}% float, {row['check_acc_int']:.2f}% integer (base "
                 f"{self.base:.2f}%, loss {row['check_loss_pts_int']:.2f} +- "
                 f"{row['check_se_pts_int']:.2f} points): "
                 f"{'within' if ok else 'OVER, backed off'}")
        return ok

    def final(self, net, q, shipped):
        """The history's check-split part of ``final`` for the shipped ``net`` (``q``)."""
        return {**self.figures(net, q), "shipped": shipped,
                "check_steps": [{k: v for k, v in row.items() if k in (
                    "network", "check_acc", "check_acc_int", "within_budget_check")}
                    for row in self.steps]}


def _slim_saves(m):
    """Whether method A changed the :class:`slimnfu.compress.slim.SlimConv` ``m``."""
    return bool(m.approx.any()) or bool((m.ksize < m.K).any())


def _final_methods(model, plan, nn):
    """Per planned module, the method it ends with (``dense`` when it saved nothing)."""
    from slimnfu.compress.permfc import PermLinear
    from slimnfu.compress.slim import SlimConv

    out = {}
    for row in plan:
        m = model[row["module"]]
        if isinstance(m, SlimConv):
            out[row["module"]] = (IKR if "ikr_patterns" in m.conv._buffers else
                                  SLIM if _slim_saves(m) else "dense")
        else:
            out[row["module"]] = PERM if isinstance(m, PermLinear) else "dense"
    return out


def _dense_when_unchanged(q, model):
    """``q`` with every method A layer that changed nothing (no IKR either) in the dense
    format, so that it needs no method hardware."""
    import dataclasses

    from slimnfu.compress.slim import SlimConv, conv_layers
    from slimnfu.formats.dense import DenseFormat

    qconvs = [j for j, l in enumerate(q.layers) if l.desc.kind == "conv"]
    layers = list(q.layers)
    for j, i in zip(qconvs, conv_layers(model)):
        m, ql = model[i], layers[j]
        if not isinstance(m, SlimConv) or _slim_saves(m) or "ikr_patterns" in m.conv._buffers:
            continue
        if list(ql.compressed.order) != list(range(len(ql.compressed.order))):
            continue
        layers[j] = dataclasses.replace(ql, format=DenseFormat.name, compressed=None)
    return dataclasses.replace(q, layers=layers)


def quantize_all(model, calib, dw=16):
    """Quantise a model that mixes :class:`slimnfu.compress.slim.SlimConv` (every conv),
    IKR-pruned convs inside them and :class:`slimnfu.compress.permfc.PermLinear` layers.

    The slim quantiser sets the channel order (kept features by kernel size, approximated
    last) and permutes each next layer's inputs; an IKR conv's pattern indices are permuted
    the same way before its layer is marked ``ikr``. Untreated slim convs that are not IKR
    stay ``slim`` (one pass each). A ``perm_index`` layer after a reordered conv gets its index
    ROM's columns permuted the same way (:func:`slimnfu.compress.slim.reordered_inputs`);
    ``perm_affine`` cannot be (:func:`compress_network` does not try it there).
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
    perms = model
    for i, cols in slim.reordered_inputs(model).items():
        if isinstance(model[i], permfc.PermLinear):
            if model[i].variant != "index":
                raise ValueError(f"module {i}: perm_{model[i].variant} after a conv whose "
                                 f"channels method A reorders (perm_index only)")
            if perms is model:
                perms = copy.deepcopy(model)
            perms[i].idx = perms[i].idx[:, cols]
    return permfc.mark_perm(q, perms, dw)


def hash_state(model):
    """SHA-256 hex digest of ``model``'s state (names and values): names a checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()

