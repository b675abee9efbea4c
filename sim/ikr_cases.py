"""Co-simulation cases of IKR conv layers (method B, ``cfg.ikr``).

An IKR conv layer is a conv whose weights are zero off-pattern, so the golden output is
:func:`slimnfu.fixed.run_layer` on the masked weights; the engine loads the kept values, the
pattern indices and the pattern table (:class:`slimnfu.formats.ikr.IkrFormat`) and must take
``PassDesc.ikr_cycles + LATENCY`` cycles. :func:`as_dense` gives the same layer stored dense,
to measure what IKR buys on the same engine.
"""

import dataclasses

import torch

from slimnfu import fixed
from slimnfu.config import LayerDesc, PassDesc
from slimnfu.formats.ikr import IkrWeights, check_ikr
from slimnfu.sim.cases import Case

__all__ = ["random_ikr_layer", "ikr_case", "as_dense", "random_ikr_specs", "ikr_cases"]


def random_ikr_layer(run, n_pat, seed, cfg, share=1):
    """Random operands of IKR pass ``run`` (a :class:`PassDesc` with ``ikr_n``): ``x, w
    (masked), b, patterns (P, n), index``; with ``share``, each run of ``share`` output
    channels has one pattern per input channel (what ``cfg.ikr.lanes`` needs at ``tn``)."""
    gen = torch.Generator().manual_seed(seed)
    desc = run.layer
    kk = desc.k * desc.k
    patterns = torch.stack([torch.randperm(kk, generator=gen)[:run.ikr_n].sort().values
                            for _ in range(n_pat)])
    index = torch.randint(n_pat, (desc.n_out, desc.n_in), generator=gen)
    index = index[torch.arange(desc.n_out) // share * share]
    x = torch.randint(cfg.qmin, cfg.qmax + 1, (desc.n_in, desc.h_in, desc.w_in), generator=gen)
    span = 1 << (cfg.dw - 2)
    w = torch.randint(-span, span, (desc.n_out, desc.n_in, kk), generator=gen)
    w[torch.rand(w.shape, generator=gen) < 0.05] = cfg.qmin
    mask = torch.zeros_like(w)
    mask.scatter_(2, patterns[index], 1)
    w = (w * mask).view(desc.n_out, desc.n_in, desc.k, desc.k)
    b = torch.randint(-1 << 20, 1 << 20, (desc.n_out,), generator=gen)
    return x, w, b, patterns, index


def ikr_case(name, desc, x, w, b, patterns, index, cfg, pwl=None, source="random"):
    """An IKR :class:`Case` of pass ``desc`` (``ikr_n`` taps of ``patterns``), checked."""
    check_ikr(name, desc.layer.k, desc.ikr_n, patterns, index, cfg.ikr.patterns)
    count = fixed.SatCount()
    y = fixed.run_layer(desc, x.unsqueeze(0), w, b, cfg.dw, pwl, count)[0]
    return Case(name, desc, x, w, b, pwl, y, count.events, source, "ikr",
                IkrWeights(patterns, index))


def as_dense(case, name=None):
    """The same layer as ``case`` stored dense (``ikr_n = 0``), with the same golden output."""
    desc = case.desc.with_(ikr_n=0)
    return dataclasses.replace(case, name=name or f"{case.name}_dense", desc=desc,
                               format="dense", compressed=None)


def random_ikr_specs(cfg, seed=1):
    """``[(name, desc, P)]``: 3x3 and 5x5, stride 1/2, padding, n = 1 .. K*K, P = 1 .. 16; then
    layers of 2 and 3 input tiles (``_t2``, ``_t3``) at n = 1 and n > K."""
    gen = torch.Generator().manual_seed(seed)
    specs = []
    for k, n, p in ((3, 1, 1), (3, 9, 1), (3, 4, 16), (5, 1, 3), (5, 25, 2), (5, 7, 16),
                    (3, 2, 5)):
        if k > cfg.ikr.kmax:
            continue
        stride = 1 + int(torch.randint(2, (1,), generator=gen))
        pad = int(torch.randint(k // 2 + 1, (1,), generator=gen))
        h = int(torch.randint(k + 1, k + 6, (1,), generator=gen))
        n_in = int(torch.randint(1, 2 * cfg.ti + 2, (1,), generator=gen))
        n_out = int(torch.randint(1, 2 * cfg.tn + 2, (1,), generator=gen))
        act = ("none", "relu")[len(specs) % 2]
        desc = PassDesc(LayerDesc("conv", n_in, n_out, h, h + 1, k, stride, pad, shift=14,
                                  act=act), ikr_n=n)
        specs.append((f"ikr_k{k}_n{n}_p{p}_s{stride}", desc, p))
    # Two and three input tiles: each tile's window slides in its own bank when
    # ``cfg.ikr.tiles`` has them (n = 1, stride 1 and 2, padding), or hides its fill (n > K).
    for k, n, p, tiles, stride, pad in ((5, 1, 4, 2, 1, 2), (3, 1, 3, 3, 2, 1),
                                        (3, 5, 6, 2, 1, 0), (5, 7, 2, 3, 2, 1)):
        if k > cfg.ikr.kmax:
            continue
        n_in = (tiles - 1) * cfg.ti + 1 + len(specs) % cfg.ti
        desc = PassDesc(LayerDesc("conv", n_in, cfg.tn + 1, k + 2, k + 3, k, stride, pad,
                                  shift=15, act="relu"), ikr_n=n)
        specs.append((f"ikr_k{k}_n{n}_p{p}_s{stride}_t{tiles}", desc, p))
    return specs


def ikr_cases(cfg, seed=1, images=None):
    """The regression's IKR cases for ``cfg`` (random operands; ``images`` is not used). With
    ``cfg.ikr.lanes`` each output tile's kernels share a pattern per input channel."""
    share = cfg.tn if cfg.ikr.lanes else 1
    return [ikr_case(name, desc, *random_ikr_layer(desc, p, seed * 100 + i, cfg, share), cfg)
            for i, (name, desc, p) in enumerate(random_ikr_specs(cfg, seed))]
