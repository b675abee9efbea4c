"""Slimmer CNNs (docs/design.md section 3A): importance ranking, lower kernels and linear feature
approximation under an accuracy budget, and their export to the fixed-point contract.

Choices (documented here because the paper's text is not available)
----------------------------------------------------------------------
* **Importance** of output feature ``j`` of a conv layer (``method="loss"``, the default): the
  increase of the cross-entropy loss on calibration images when the feature's map is replaced
  by its mean over those images (per position). Cheap proxies: ``"l1"`` (filter L1 norm) and
  ``"act"`` (mean absolute activation). One ranking over all conv layers, least important first.
* **Lower kernel**: filter ``j``'s ``KxK`` kernel becomes its centred ``kxk`` part (``k`` odd,
  ``k < K``); the outer taps are zero (masked in training, not stored in the image).
* **Linear approximation** combines the **post-activation** maps (what the engine writes to
  NBout: after ReLU for VGG, the raw conv output for LeNet-5, whose convs have no activation)::

      a_j = act(sum_i c_ji * a_i + d_j),   i over the layer's kept (not approximated) features

  fitted by least squares on calibration activations; in hardware it is a 1x1 conv pass over
  the kept features with the layer's own activation, and the integer reference runs exactly
  that pass (:func:`slim_int_forward`).
* **Greedy budget**: features in ranking order; for each, the cheapest treatment first
  (``"linear"`` costs ``n_kept`` MACs per pixel; then kernel sizes from 1 up). A treatment is
  accepted while the calibration accuracy stays within ``budget_pct`` points of the base, all
  approximations of the layer refitted after every change. Then a short fine-tune with the
  treatments frozen.
* **Lanes** (``greedy(..., lanes=tn)``, :func:`fill_lanes`): the engine computes the kept
  features in tiles of ``tn`` lanes, each tile at its largest kernel, so a kept count that is
  not a multiple of ``tn`` leaves lanes idle, and a tile shared by two kernel sizes gates its
  smaller lanes; neither saves a cycle. After the greedy step each layer first takes the
  change that saves a tile's cycles (approximate the least important kept features, lower the
  least important features of the larger size) when the budget allows, else the one that uses
  the lanes (compute the most important approximated features exactly, raise the most
  important features of the smaller size): no more cycles, more MACs on lanes that issued
  zeros, accuracy checked against the same budget; tiles left mixed are tried again after the
  other layers' changes (:data:`FILL_ROUNDS`).
* **Export**: kept filters are sorted by kernel size (largest first) into ``tn``-wide tiles;
  the approximated features follow; the next conv/fc layer's input channels are permuted to
  match. Each tile runs as its own engine pass at the largest kernel of its lanes (only the
  centre taps are walked); in a tile that mixes sizes the smaller lanes are gated per tap.
"""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimnfu import fixed
from slimnfu.compress.models import ACTIVATIONS
from slimnfu.compress.quant import quantize_input, quantize_model
from slimnfu.compress.train import fit
from slimnfu.config import LayerDesc
from slimnfu.formats import QLayer
from slimnfu.formats.slim import SlimFormat, SlimWeights, check_kernel_sizes

__all__ = ["SlimConv", "slim_model", "conv_layers", "importance", "refit_linear", "greedy",
           "fill_lanes", "fine_tune", "slim_report", "conv_macs", "slim_ranges", "quantize_slim",
           "slim_int_forward", "reordered_inputs", "TREATMENTS", "IMPORTANCE_METHODS"]

TREATMENTS = ("lower", "linear", "both")
#: :func:`fill_lanes` tries at most this many feature sets per direction and tile.
FILL_TRIES = 4
#: :func:`fill_lanes` goes over the layers at most this many times.
FILL_ROUNDS = 3
IMPORTANCE_METHODS = ("loss", "l1", "act")


def _centre_mask(K, ksize):
    """``(O, 1, K, K)`` float mask keeping the centred ``ksize[j]`` taps of filter ``j``."""
    r = torch.arange(K)
    masks = []
    for k in ksize.tolist():
        off = (K - k) // 2
        m1 = ((r >= off) & (r < off + k)).float()
        masks.append(m1[:, None] * m1[None, :])
    return torch.stack(masks).unsqueeze(1)


class SlimConv(nn.Module):
    """A conv layer with per-filter kernel sizes and linearly approximated features.

    Parameters
    ----------
    conv : nn.Conv2d
        The original layer (copied).
    act : nn.Module or None
        The activation that follows ``conv`` in the network (``None``: no activation). The
        approximation combines maps after it; it stays in the network after this module too
        (ReLU is idempotent).
    """

    def __init__(self, conv, act=None):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SlimConv wraps an nn.Conv2d, not {type(conv).__name__}")
        self.conv = copy.deepcopy(conv)
        self.act = copy.deepcopy(act) if act is not None else None
        o = conv.out_channels
        self.K = conv.kernel_size[0]
        self.register_buffer("ksize", torch.full((o,), self.K, dtype=torch.int64))
        self.register_buffer("approx", torch.zeros(o, dtype=torch.bool))
        self.coef = nn.Parameter(torch.zeros(o, o))
        self.coef_bias = nn.Parameter(torch.zeros(o))

    @property
    def kept(self):
        return (~self.approx).nonzero().flatten()

    def masked_weight(self):
        return self.conv.weight * _centre_mask(self.K, self.ksize).to(self.conv.weight.dtype)

    def pre_activations(self, x):
        """``(y, a, lin)``: the masked conv's output ``y`` (every filter), its activation
        ``a``, and the approximated features' linear combinations ``lin`` before their
        activation (``(N, n_approx, H, W)``, None without approximated features)."""
        c = self.conv
        y = F.conv2d(x, self.masked_weight(), c.bias, c.stride, c.padding)
        a = self.act(y) if self.act is not None else y
        lin = None
        if bool(self.approx.any()):
            kept, apx = self.kept, self.approx.nonzero().flatten()
            lin = torch.einsum("ak,nkhw->nahw", self.coef[apx][:, kept], a[:, kept])
            lin = lin + self.coef_bias[apx].view(1, -1, 1, 1)
        return y, a, lin

    def forward(self, x):
        _, a, lin = self.pre_activations(x)
        if lin is not None:
            a = a.clone()
            a[:, self.approx] = self.act(lin) if self.act is not None else lin
        return a


def slim_model(model):
    """A copy of ``model`` (an ``nn.Sequential``) with every ``Conv2d`` wrapped in
    :class:`SlimConv` (no treatment applied yet)."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"slim_model needs an nn.Sequential, not {type(model).__name__}")
    mods = list(copy.deepcopy(model))
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            act = nxt if type(nxt) in ACTIVATIONS else None
            mods[i] = SlimConv(m, act)
    out = nn.Sequential(*mods)
    out.eval()
    return out


def conv_layers(smodel):
    """Indices of the :class:`SlimConv` modules of ``smodel``."""
    return [i for i, m in enumerate(smodel) if isinstance(m, SlimConv)]


def _shapes(smodel, sample_shape):
    """Output (h, w) of every SlimConv, by a dry run."""
    out, x = {}, torch.zeros(1, *sample_shape)
    with torch.no_grad():
        for i, m in enumerate(smodel):
            x = m(x)
            if isinstance(m, SlimConv):
                out[i] = tuple(x.shape[2:])
    return out


def conv_macs(smodel, sample_shape):
    """``(dense, slim)`` conv MACs per inference, and a per-layer list."""
    shapes = _shapes(smodel, sample_shape)
    dense = slim = 0
    per_layer = []
    for i in conv_layers(smodel):
        m = smodel[i]
        hw = shapes[i][0] * shapes[i][1]
        cin = m.conv.in_channels
        d = hw * m.K * m.K * cin * m.conv.out_channels
        kept = ~m.approx
        s = hw * cin * int((m.ksize[kept] ** 2).sum()) + hw * int(kept.sum()) * int(m.approx.sum())
        per_layer.append({"module": i, "macs_dense": d, "macs": s})
        dense, slim = dense + d, slim + s
    return dense, slim, per_layer


def _accuracy_loss(smodel, x, y, batch=1000):
    correct, loss = 0, 0.0
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            logits = smodel(x[s:s + batch])
            correct += int((logits.argmax(1) == y[s:s + batch]).sum())
            loss += float(F.cross_entropy(logits, y[s:s + batch], reduction="sum"))
    return 100.0 * correct / x.shape[0], loss / x.shape[0]


def importance(smodel, x, y, method="loss"):
    """Rank every conv feature of ``smodel``; returns a list of ``(score, module, feature)``
    sorted least important first (see the module docstring for the methods)."""
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"importance method must be one of {IMPORTANCE_METHODS}, not "
                         f"{method!r}")
    scores = []
    with torch.no_grad():
        feats = x
        for i, m in enumerate(smodel):
            if isinstance(m, SlimConv):
                a = m(feats)
                rest = smodel[i + 1:]
                if method == "loss":
                    base = float(F.cross_entropy(rest(a), y))
                    mean = a.mean(0, keepdim=True)
                for j in range(m.conv.out_channels):
                    if method == "l1":
                        s = float(m.conv.weight[j].abs().sum())
                    elif method == "act":
                        s = float(a[:, j].abs().mean())
                    else:
                        b = a.clone()
                        b[:, j] = mean[:, j]
                        s = float(F.cross_entropy(rest(b), y)) - base
                    scores.append((s, i, j))
            feats = m(feats)
    scores.sort()
    return scores


def refit_linear(m, feats_in):
    """Least-squares refit of every approximated feature of SlimConv ``m`` on its input
    batch ``feats_in`` (post-activation maps of the kept features, plus a bias)."""
    if not bool(m.approx.any()):
        return
    with torch.no_grad():
        c = m.conv
        y = F.conv2d(feats_in, m.masked_weight(), c.bias, c.stride, c.padding)
        a = m.act(y) if m.act is not None else y
        kept, apx = m.kept, m.approx.nonzero().flatten()
        A = a[:, kept].permute(0, 2, 3, 1).reshape(-1, len(kept)).double()
        A = torch.cat([A, torch.ones(A.shape[0], 1, dtype=A.dtype)], 1)
        B = a[:, apx].permute(0, 2, 3, 1).reshape(-1, len(apx)).double()
        sol = torch.linalg.lstsq(A, B, driver="gelsd").solution
        m.coef.zero_()
        m.coef[apx.unsqueeze(1), kept.unsqueeze(0)] = sol[:-1].t().float()
        m.coef_bias[apx] = sol[-1].float()


def coef_fits(m, dw):
    """Whether the approximation coefficients of SlimConv ``m`` fit the 1x1 pass at ``dw`` bits:
    their largest magnitude needs a non-negative requantisation shift (``approx_f >= 0``).

    A least-squares fit on nearly collinear kept features can give huge coefficients that
    cancel in float but that no fixed-point word holds."""
    if not bool(m.approx.any()):
        return True
    return fixed.frac_bits_for(float(m.coef.detach()[m.approx].abs().max()), dw) >= 0


def _input_of(smodel, i, x):
    with torch.no_grad():
        return smodel[:i](x) if i else x


def greedy(smodel, calib_x, calib_y, budget_pct, treatment="both", ranking=None,
           fit_images=200, progress=False, dw=16, lanes=1):
    """Apply treatments feature by feature while calib accuracy loss <= ``budget_pct``.

    Parameters
    ----------
    smodel : nn.Sequential from :func:`slim_model` (changed in place)
    calib_x, calib_y : calibration images and labels (accuracy check)
    budget_pct : float
        Allowed accuracy loss in percentage points on the calibration images.
    treatment : "lower", "linear" or "both"
    ranking : list from :func:`importance` (computed with ``method="loss"`` if None)
    fit_images : int
        Calibration images used for the least-squares fits.
    dw : int
        Data width of the fixed-point contract: a change whose refitted coefficients
        :func:`coef_fits` refuses is not taken, whatever its accuracy.
    lanes : int
        The engine's output lanes (``tn``): every layer's kept features are then made whole
        tiles of one kernel size where the budget allows (:func:`fill_lanes`); 1: off.

    Returns
    -------
    dict with ``acc_calib_base``, ``acc_calib``, ``log`` (accepted changes) and ``lanes``
    (:func:`fill_lanes`'s entries; empty when off).
    """
    if treatment not in TREATMENTS:
        raise ValueError(f"treatment must be one of {TREATMENTS}, not {treatment!r}")
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes must be an int >= 1 (the engine's tn; 1: off), not {lanes!r}")
    if not isinstance(budget_pct, (int, float)) or not 0 <= budget_pct <= 100:
        raise ValueError(f"budget_pct must be a number in [0, 100], not {budget_pct!r}")
    if ranking is None:
        ranking = importance(smodel, calib_x[:1000], calib_y[:1000])
    base, _ = _accuracy_loss(smodel, calib_x, calib_y)
    fit_x = calib_x[:fit_images]
    log = []
    # calib inputs of each conv module, dropped when an earlier module changes
    cache = {}
    from tqdm import tqdm
    for _, i, j in tqdm(ranking, desc=f"greedy {treatment} {budget_pct}%", disable=not progress,
                        leave=False):
        m = smodel[i]
        options = []
        if treatment in ("linear", "both") and int((~m.approx).sum()) > 1:
            options.append("linear")
        if treatment in ("lower", "both"):
            options += [k for k in range(1, m.K, 2)]
        feats_in = None
        for opt in options:
            old = _state(m)
            if opt == "linear":
                m.approx[j] = True
            else:
                m.ksize[j] = opt
            if bool(m.approx.any()):
                if feats_in is None:
                    feats_in = _input_of(smodel, i, fit_x)
                refit_linear(m, feats_in)
            if i not in cache:
                cache[i] = _input_of(smodel, i, calib_x)
            acc = _accuracy_loss(smodel[i:], cache[i], calib_y)[0] if coef_fits(m, dw) else None
            if acc is not None and base - acc <= budget_pct:
                log.append({"module": i, "feature": j, "treatment": opt, "acc_calib": acc})
                for later in [c for c in cache if c > i]:
                    del cache[later]
                break
            _restore(m, old)
    filled = []
    if lanes > 1:
        filled = fill_lanes(smodel, calib_x, calib_y, base - budget_pct, lanes, ranking,
                            fit_x, dw)
    acc, _ = _accuracy_loss(smodel, calib_x, calib_y)
    return {"acc_calib_base": base, "acc_calib": acc, "log": log, "lanes": filled}


def _state(m):
    return (m.ksize.clone(), m.approx.clone(), m.coef.detach().clone(),
            m.coef_bias.detach().clone())


def _restore(m, old):
    with torch.no_grad():
        m.ksize.copy_(old[0]), m.approx.copy_(old[1])
        m.coef.copy_(old[2]), m.coef_bias.copy_(old[3])


def fill_lanes(smodel, calib_x, calib_y, acc_floor, lanes, ranking, fit_x, dw=16):
    """Make each slim layer's kept features whole ``lanes``-wide tiles of one kernel size.

    The engine runs kept features in tiles of ``lanes`` (export order: kernel size, largest
    first), each tile at its largest kernel; a tile's idle lanes issue zeros and its smaller
    lanes are gated, neither saves a cycle. Per layer, in ranking order (least important first):

    1. **Kept count** ``k`` (when the layer has approximated features): ``r = k % lanes`` lanes
       of the last tile are busy. Approximate the ``r`` least important kept features (one tile
       fewer), else compute the ``lanes - r`` most important approximated ones exactly (no more
       kernel-pass cycles, a smaller 1x1 pass).
    2. **Kernel-size boundaries**, largest size first: where the features of size ``>= s``
       leave ``r`` lanes of a tile to be shared with the next size ``t``, lower the ``r`` least
       important features of size ``s`` to ``t`` (a tile of ``t``: fewer cycles), else raise
       the ``lanes - r`` most important of size ``t`` to ``s`` (a tile of ``s``: the same
       cycles, no gating).

    Each change is kept only if the calibration accuracy stays at or above ``acc_floor`` and
    the refitted coefficients fit ``dw`` bits; the cycle-saving change is tried first, on the
    least important features, then on the next ones (:data:`FILL_TRIES` disjoint sets), then
    the lane-using change the same way. A change in one layer moves the accuracy that every
    other layer's attempts were measured against (a raise or a restore usually gives some
    back), so after a round over the layers that changed something the tiles still mixed are
    tried again, at most :data:`FILL_ROUNDS` rounds. Changes ``smodel`` in place.

    Returns
    -------
    list of dicts, one per tile looked at, in the order first looked at: ``module``, ``tile``
    ("kept", or e.g. "5/3" for the boundary of sizes 5 and 3), ``filled`` ("approximated",
    "restored", "lowered", "raised", or None: left as it was in every round) and ``features``
    (the changed features).
    """
    tiles = {}
    for _ in range(FILL_ROUNDS):
        entries = _fill_round(smodel, calib_x, calib_y, acc_floor, lanes, ranking, fit_x, dw)
        for entry in entries:
            key = entry["module"], entry["tile"]
            if entry["filled"] or key not in tiles:
                tiles[key] = entry
        if not any(entry["filled"] for entry in entries):
            break
    return list(tiles.values())


def _fill_round(smodel, calib_x, calib_y, acc_floor, lanes, ranking, fit_x, dw):
    """One round of :func:`fill_lanes` over the slim layers: its entries for this round."""
    out = []
    for i in conv_layers(smodel):
        m = smodel[i]
        order = [j for _, ii, j in ranking if ii == i]
        if not order:
            continue
        inputs = {}

        def attempt(tile, options):
            for how, js, change in options:
                if not js:
                    continue
                if not inputs:
                    # the layer's inputs, as greedy caches them: only this layer changes here
                    inputs.update(fit=_input_of(smodel, i, fit_x),
                                  calib=_input_of(smodel, i, calib_x))
                old = _state(m)
                with torch.no_grad():
                    change(js)
                    m.coef[js], m.coef_bias[js] = 0.0, 0.0
                refit_linear(m, inputs["fit"])
                if (coef_fits(m, dw) and
                        _accuracy_loss(smodel[i:], inputs["calib"], calib_y)[0] >= acc_floor):
                    out.append({"module": i, "tile": tile, "filled": how, "features": js})
                    return
                _restore(m, old)
            out.append({"module": i, "tile": tile, "filled": None, "features": []})

        k = int((~m.approx).sum())
        r = k % lanes
        if bool(m.approx.any()) and r:
            kept = [j for j in order if not m.approx[j]]
            apx = [j for j in reversed(order) if m.approx[j]]
            attempt("kept", [
                *(("approximated", js, lambda js: m.approx.__setitem__(js, True))
                  for js in _windows(kept, r) if k > r),
                *(("restored", js, lambda js: m.approx.__setitem__(js, False))
                  for js in _windows(apx, lanes - r))])
        done = set()
        while True:
            ks = {j: int(m.ksize[j]) for j in order if not m.approx[j]}
            sizes = sorted(set(ks.values()), reverse=True)
            edge = next(((s, t, r) for s, t in zip(sizes, sizes[1:]) if s not in done
                         for r in [sum(v >= s for v in ks.values()) % lanes] if r), None)
            if edge is None:
                break
            s, t, r = edge
            done.add(s)
            big = [j for j in order if ks.get(j) == s]
            small = [j for j in reversed(order) if ks.get(j) == t]
            attempt(f"{s}/{t}", [
                *(("lowered", js, lambda js, t=t: m.ksize.__setitem__(js, t))
                  for js in _windows(big, r)),
                *(("raised", js, lambda js, s=s: m.ksize.__setitem__(js, s))
                  for js in _windows(small, lanes - r))])
    return out


def _windows(features, n, tries=FILL_TRIES):
    """The first ``tries`` disjoint runs of ``n`` of ``features`` (in their order)."""
    return [features[w:w + n] for w in range(0, len(features) - n + 1, n)][:tries]


def fine_tune(smodel, x, y, epochs=1, lr=2e-4, batch_size=128, seed=0):
    """Fine-tune weights, biases and approximation coefficients with the treatments frozen
    (masked taps stay zero in the forward pass): :func:`slimnfu.compress.train.fit`."""
    return fit(smodel, x, y, lr, batch_size, seed, epochs)


def slim_report(smodel, sample_shape):
    """Per-layer treatment report: which features got which kernel size or were approximated."""
    _, _, macs = conv_macs(smodel, sample_shape)
    rows = []
    for (i, m), mac in zip(((i, smodel[i]) for i in conv_layers(smodel)), macs):
        kept = ~m.approx
        hist = {str(k): int(((m.ksize == k) & kept).sum()) for k in range(1, m.K + 1, 2)}
        rows.append({"module": i, "K": m.K, "features": m.conv.out_channels,
                     "kernel_sizes": hist, "approximated": m.approx.nonzero().flatten().tolist(),
                     "lowered": {int(j): int(m.ksize[j]) for j in range(len(m.ksize))
                                 if kept[j] and m.ksize[j] < m.K},
                     "macs_dense": mac["macs_dense"], "macs": mac["macs"]})
    return rows


# ---------------------------------------------------------------- export (integer side)

def _export_order(m):
    """Kept filters by kernel size (largest first, stable), then the approximated ones."""
    kept = [int(j) for j in m.kept]
    kept.sort(key=lambda j: -int(m.ksize[j]))
    return kept, [int(j) for j in m.approx.nonzero().flatten()]


def _dense_equivalent(smodel, identity_order=False):
    """An ``nn.Sequential`` of plain modules with the slim layers' channel order (kept by
    kernel size, approximated last), masked weights, and permuted next-layer inputs. Used to
    calibrate scales; approximated filters keep their (masked) original weights there."""
    mods = [copy.deepcopy(m) for m in smodel]
    perm = None
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, SlimConv):
            conv = copy.deepcopy(m.conv)
            with torch.no_grad():
                conv.weight.copy_(m.masked_weight())
                if perm is not None:
                    conv.weight.copy_(conv.weight[:, perm])
            kept, apx = _export_order(m)
            order = list(range(len(m.ksize))) if identity_order else kept + apx
            bias = conv.bias if conv.bias is not None else \
                torch.zeros(conv.out_channels, dtype=conv.weight.dtype)
            with torch.no_grad():
                conv.weight = nn.Parameter(conv.weight[order].clone())
                conv.bias = nn.Parameter(bias[order].clone())
            conv.out_channels = len(order)
            out.append(conv)
            perm = torch.tensor(order)
            continue
        if isinstance(m, nn.Linear) and perm is not None:
            with torch.no_grad():
                m.weight = nn.Parameter(m.weight[:, _columns(perm, m.in_features)].clone())
            perm = None
        out.append(m)
    return nn.Sequential(*out)


def _columns(order, n_in):
    """The weight column of a linear layer's ``n_in`` flattened inputs that each input takes
    when the channels before the flatten come in ``order`` (``order[c]``: the original channel
    at position ``c``; each channel's pixels stay together and in order)."""
    per = n_in // len(order)
    return (order.view(-1, 1) * per + torch.arange(per).view(1, -1)).flatten()


def reordered_inputs(smodel):
    """``{i: cols}`` for each linear module ``smodel[i]`` (anything with ``in_features``)
    right after a slim conv whose export order (kept filters by kernel size, approximated last)
    is not its own: :func:`quantize_slim` gives it its weight columns ``cols`` in that order.
    A weight format that fixes its columns' structure (``perm_affine``'s generated
    permutations) cannot take such a reorder."""
    out, order = {}, None
    for i, m in enumerate(smodel):
        if isinstance(m, SlimConv):
            kept, apx = _export_order(m)
            order = None if kept + apx == sorted(kept + apx) else torch.tensor(kept + apx)
        elif hasattr(m, "in_features"):
            if order is not None:
                out[i] = _columns(order, m.in_features)
            order = None
    return out


def slim_ranges(smodel, calib_images, batch=500):
    """The calibrated output range of every engine layer of a slimmed model, measured on the
    slimmed model itself: the largest magnitude, on ``calib_images``, of each conv, FC or
    pooling module's output before its activation. A slim conv layer's range covers its kept
    filters' conv outputs and its approximated features' linear combinations before the
    activation (the values the engine requantises to the layer's ``f_y``), not the original
    filters of the approximated features, which are not computed; every later layer sees the
    approximated features as the engine computes them.

    Returns
    -------
    dict of int to float
        ``{module index: range}`` for :func:`slimnfu.compress.quant.quantize_model`'s
        ``ranges`` (on :func:`_dense_equivalent`, whose module indices are the same).
    """
    out = {i: 0.0 for i, m in enumerate(smodel)
           if isinstance(m, (SlimConv, nn.Linear, nn.MaxPool2d, nn.AvgPool2d))}
    calib_images = torch.as_tensor(calib_images)
    with torch.no_grad():
        for s in range(0, calib_images.shape[0], batch):
            h = calib_images[s:s + batch].float()
            for i, m in enumerate(smodel):
                if isinstance(m, SlimConv):
                    y, _, lin = m.pre_activations(h)
                    parts = [y[:, m.kept]] + ([lin] if lin is not None else [])
                    out[i] = max([out[i]] + [float(p.abs().max()) for p in parts if p.numel()])
                h = m(h)
                if i in out and not isinstance(m, SlimConv) and h.numel():
                    out[i] = max(out[i], float(h.abs().max()))
    return out


def quantize_slim(smodel, calib_images, dw=16, acc=48, identity_order=False):
    """Quantise a slimmed model to the fixed-point contract.

    Scales come from :func:`slimnfu.compress.quant.quantize_model` on the dense equivalent,
    with every output scale ``f_y`` calibrated on what the slimmed model computes
    (:func:`slim_ranges`): a slim layer's kept filters and the linear approximation of its
    approximated features (which the 1x1 pass requantises to that same ``f_y``), and every
    later layer on those features.
    Each slim conv layer becomes a ``QLayer`` with ``format="slim"`` holding only its kept
    filters (export order: kernel size, largest first) and, in ``compressed`` (a
    :class:`~slimnfu.formats.slim.SlimWeights`): ``ksize`` (per kept
    filter), ``n_approx``, ``approx_w`` ``(n_approx, n_kept)`` at ``approx_f`` fractional bits,
    ``approx_b`` at ``f_y + approx_f``, ``order`` (original index of every output channel),
    the kept and approximated positions, and ``K``. The next layer's input channels are
    permuted to the export order.

    ``identity_order=True`` keeps the original channel order (for the reordering test; kernel
    sizes are then not grouped into tiles).
    """
    dense = _dense_equivalent(smodel, identity_order)
    qm = quantize_model(dense, calib_images, dw, acc, ranges=slim_ranges(smodel, calib_images))
    slim_mods = [smodel[i] for i in conv_layers(smodel)]
    convs = [l for l in qm.layers if l.desc.kind == "conv"]
    if len(convs) != len(slim_mods):
        raise ValueError("every conv layer must be a SlimConv (use slim_model)")
    new_layers = []
    for layer in qm.layers:
        if layer.desc.kind != "conv":
            new_layers.append(layer)
            continue
        m = slim_mods.pop(0)
        kept, apx = _export_order(m)
        order = list(range(len(m.ksize))) if identity_order else kept + apx
        sel = [p for p, j in enumerate(order) if not bool(m.approx[j])]
        if identity_order:
            kept = [order[p] for p in sel]
        ks = m.ksize[kept]
        check_kernel_sizes(ks, m.K, layer.name)
        desc = LayerDesc(**{**layer.desc.to_dict(), "n_out": len(kept)})
        rec = SlimWeights(m.K, ks.clone(), len(apx), order, sel)
        if apx:
            coef = m.coef.detach().double()[apx][:, kept]
            f_c = fixed.frac_bits_for(float(coef.abs().max()), dw)
            rec.approx_w = fixed.quantize(coef, f_c, dw)
            rec.approx_b = torch.round(m.coef_bias.detach().double()[apx]
                                       * 2.0 ** (layer.f_y + f_c)).to(torch.int64)
            rec.approx_f = f_c
            rec.approx_pos = [p for p, j in enumerate(order) if bool(m.approx[j])]
        new_layers.append(QLayer(layer.name, desc, layer.w[sel], layer.b[sel], layer.f_x,
                                 layer.f_w, layer.f_y, layer.pwl, layer.act_func, SlimFormat.name,
                                 rec))
    qm.layers = new_layers
    return qm


def slim_int_forward(qmodel, images, batch=100, by_passes=None):
    """Integer inference of a :func:`quantize_slim` model; returns ``(logits, SatCount)``."""
    count = fixed.SatCount()
    outs = []
    for s in range(0, images.shape[0], batch):
        x = quantize_input(qmodel, images[s:s + batch], count)
        for layer in qmodel.layers:
            x = layer.run(x, qmodel.dw, count, by_passes)
        outs.append(x.reshape(x.shape[0], -1))
    return torch.cat(outs), count
