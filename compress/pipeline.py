"""One network, every method the accelerator runs, under one accuracy budget.

:func:`compress_network` applies IKR pattern pruning to the conv layers and stores the hidden
FC layers as permutations of one sequence, then quantises the result into a
:class:`slimnfu.compress.quant.QuantModel` whose layers carry formats ``ikr`` and
``perm_affine`` / ``perm_index``, ready for :func:`slimnfu.gen.compiler.compile_model`.

The budget is in accuracy points on a validation split, against the float base. Our choices:

* IKR gets half of it (:func:`slimnfu.compress.ikr.ikr_prune`, its own greedy schedule);
* the FC layers (all but the classifier) then try ``perm_affine`` (the smallest storage) and,
  if the whole network is then over the budget, ``perm_index``; if both are over, they stay
  dense. Each try fine-tunes the whole network for ``fc_epochs`` with the IKR masks kept.

Lower-kernel and linear approximation (:mod:`slimnfu.compress.slim`) are not applied: the
accelerator's compiler does not run their layers yet.
"""

import copy
from pathlib import Path

__all__ = ["compress_network", "cached_compress"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def compress_network(model, train, val, calib, budget_pct=1.0, fc_epochs=1, patterns=16,
                     ikr_finetune=150, log=print):
    """Compress ``model``; see the module docstring.

    Parameters
    ----------
    model : nn.Sequential
        The trained float network (unchanged).
    train, val : tuple of tensors
        ``(images, labels)`` to fine-tune on and to check the budget on.
    calib : torch.Tensor
        Calibration images for quantisation.

    Returns
    -------
    tuple
        ``(float_model, qmodel, history)``; ``history`` has the validation accuracies, the IKR
        history and each FC try.
    """
    import torch

    from slimnfu.compress import ikr, permfc
    from slimnfu.compress.train import evaluate

    if not isinstance(budget_pct, (int, float)) or budget_pct < 0:
        raise ValueError(f"budget_pct must be a number >= 0, not {budget_pct!r}")
    xs, ys = train
    xv, yv = val
    base = evaluate(model, xv, yv)
    log(f"IKR under {budget_pct / 2:.2f} points ...")
    pruned, ikr_hist = ikr.ikr_prune(model, xs, ys, xv, yv, budget_pct / 2,
                                     ikr.IkrOptions(patterns=patterns,
                                                    finetune_batches=ikr_finetune))
    batches = fc_epochs * -(-xs.shape[0] // 128)
    tries, chosen = [], pruned
    for variant in ("affine", "index"):
        trial = permfc.compress_model(pruned, variant, keep_classifier=True)
        ikr.finetune(trial, xs, ys, batches, lr=1e-3)
        acc = evaluate(trial, xv, yv)
        ok = base - acc <= budget_pct
        tries.append({"variant": variant, "val_acc": acc, "accepted": ok})
        log(f"FC perm_{variant}: val {acc:.2f}% (base {base:.2f}%) "
            f"{'accepted' if ok else 'rejected'}")
        if ok:
            chosen = trial
            break
    q = permfc.quantize_perm_model(chosen, calib, dw=16)
    q = ikr.mark_quantised(q, chosen)
    with torch.no_grad():
        val_acc = evaluate(chosen, xv, yv)
    history = {"budget_pct": budget_pct, "val_acc_base": base, "val_acc": val_acc,
               "ikr": ikr_hist, "fc_tries": tries,
               "formats": {l.name: l.format for l in q.layers}}
    return copy.deepcopy(chosen), q, history


def cached_compress(model, budget, val_n, calib_n, recompress=False, log=print):
    """:func:`compress_network` of LeNet-5 on MNIST, cached in ``build/network``.

    The cache key is the base model's weights, the budget and the splits; a hit returns
    ``(None, qmodel, history)`` (the float model is not kept). ``history["test_acc_float"]`` is
    the compressed float model's test accuracy.
    """
    import json

    from slimnfu.atomic import atomic_write
    from slimnfu.compress import data
    from slimnfu.compress.quant import QuantModel
    from slimnfu.compress.train import evaluate

    xs, ys = data.load("mnist", "train")
    xc, yc = data.load("mnist", "calib")
    key = hash_state(model)[:12]
    path = REPO_ROOT / "build" / "network" / f"lenet5_{key}_b{budget}_v{val_n}_c{calib_n}.json"
    if path.is_file() and not recompress:
        state = json.loads(path.read_text())
        log(f"reusing {path}")
        return None, QuantModel.from_state(state["qmodel"]), state["history"]
    fm, q, hist = compress_network(model, (xs, ys), (xc[-val_n:], yc[-val_n:]), xc[:calib_n],
                                   budget, log=log)
    xt, yt = data.load("mnist", "test")
    hist["test_acc_float"] = round(evaluate(fm, xt, yt), 2)
    state = {"qmodel": q.to_state(), "history": _jsonable(hist)}
    atomic_write(path, json.dumps(state))
    return fm, q, state["history"]


def hash_state(model):
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _jsonable(x):
    import json
    return json.loads(json.dumps(x, default=float))
