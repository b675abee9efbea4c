"""Co-simulation cases of method A (slimmer CNNs): kernel-size passes, mixed-size tiles
(gated lanes), the 1x1 approximation pass, and a whole reordered conv block.

:func:`slim_layer_cases` turns one slim conv layer of :func:`slimnfu.compress.slim.quantize_slim`
and its int64 input into engine cases (one per pass of :func:`slimnfu.formats.slim.passes`,
then the approximation pass), each with the golden output of the integer reference. The
bench uses it on LeNet-5; :func:`slim_cases` adds random ones to the regression when
``cfg.kgate`` is on.
"""

import torch
import torch.nn as nn

from slimnfu import fixed
from slimnfu.compress import slim
from slimnfu.config import LayerDesc, PassDesc, as_pass
from slimnfu.formats.slim import approx_desc, pass_operands, passes
from slimnfu.sim.cases import Case

__all__ = ["slim_layer_cases", "slim_cases"]


def _case(name, desc, x, w, b, dw, pwl, source, ref_w=None):
    """A case of pass ``desc`` loading weights ``w``; the golden output uses ``ref_w``
    (default ``w``)."""
    count = fixed.SatCount()
    y = fixed.run_layer(desc, x, w if ref_w is None else ref_w, b, dw, pwl, count)
    return Case(name, desc, x[0], w, b, pwl, y[0], count.events, source)


def slim_layer_cases(layer, x, cfg, prefix, source="slim"):
    """Engine cases of slim conv ``layer`` on one int64 image ``x`` ``(1, C, H, W)``.

    Mixed tiles carry their lanes' kernel sizes in the pass's ``lane_k`` and their full-size
    weights, so only the gate keeps the outer taps of the smaller lanes out of the sums; the
    expected output uses the centred weights. Returns ``(cases, kept_output)``.
    """
    cases, ys = [], []
    for n, p in enumerate(passes(layer, cfg.tn)):
        xx, w, b = pass_operands(layer, p, x)
        desc = as_pass(p["desc"])
        want_w = w
        if p["lane_k"]:
            desc = desc.with_(lane_k=tuple(p["lane_k"]))
            # lanes' outer taps get non-zero junk that the gate must suppress
            gen = torch.Generator().manual_seed(n)
            junk = torch.randint(cfg.qmin, cfg.qmax + 1, w.shape, generator=gen)
            full = w.clone()
            for o in range(w.shape[0]):
                lk = p["lane_k"][o % cfg.tn]
                off = (p["k"] - lk) // 2
                inner = torch.zeros(p["k"], p["k"], dtype=torch.bool)
                inner[off:off + lk, off:off + lk] = True
                full[o][:, ~inner] = junk[o][:, ~inner]
            w = full
        case = _case(f"{prefix}_pass{n}_k{p['k']}" + ("_mixed" if p["lane_k"] else ""),
                     desc, xx, w, b, cfg.dw, layer.pwl, source, want_w)
        cases.append(case)
        ys.append(case.expected.unsqueeze(0))
    kept = torch.cat(ys, 1)
    rec = layer.compressed
    if rec.n_approx:
        aw = rec.approx_w
        cases.append(_case(f"{prefix}_approx1x1", approx_desc(layer), kept,
                           aw.view(*aw.shape, 1, 1), rec.approx_b, cfg.dw,
                           layer.pwl, source))
    return cases, kept


def slim_cases(cfg, seed=1, images=None):
    """Regression cases: a mixed-size tile on a random layer and a reordered conv block (a
    small random net slimmed by hand, run pass by pass on one image)."""
    gen = torch.Generator().manual_seed(seed)
    tn = cfg.tn
    lane_k = tuple(([5, 3, 1, 3] * tn)[:tn])
    desc = PassDesc(LayerDesc("conv", cfg.ti + 1, tn, 9, 8, k=5, pad=1, shift=12, act="relu"),
                    lane_k=lane_k)
    n_in = desc.layer.n_in
    x = torch.randint(cfg.qmin, cfg.qmax + 1, (1, n_in, 9, 8), generator=gen)
    w = torch.randint(cfg.qmin, cfg.qmax + 1, (tn, n_in, 5, 5), generator=gen)
    b = torch.randint(-9999, 9999, (tn,), generator=gen)
    cases = [_case("slim_mixed_tile_k5", desc, x, w, b, cfg.dw, None, "random",
                   fixed.gated_weights(desc, w, tn))]

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2 * tn + 1, 5), nn.ReLU()).eval()
    sm = slim.slim_model(net)
    m = sm[0]
    pattern = [5, 3, 1, 5, 3, 1, 3, 5, 1]
    m.ksize[:] = torch.tensor([pattern[j % len(pattern)] for j in range(len(m.ksize))])
    m.approx[[1, 4]] = True
    calib = torch.rand(20, 1, 12, 12, generator=gen)
    if images is not None:
        calib = torch.as_tensor(images[:20, :12, :12], dtype=torch.float32).unsqueeze(1) / 255
    slim.refit_linear(m, calib)
    q = slim.quantize_slim(sm, calib, cfg.dw, cfg.acc)
    xq = fixed.quantize(calib[:1], q.f_in, cfg.dw)
    block, _ = slim_layer_cases(q.layers[0], xq, cfg, "slim_block", "mnist" if images is not
                                None else "random")
    return cases + block
