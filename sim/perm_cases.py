"""Co-simulation cases of the permuted-feature FC path (method C, ``cfg.perm``).

Each case is an FC layer whose weights are permutations of one common sequence
``s``: affine (the engine's address generators expand per-row ``(a, b)``) or index (SB holds
the index ROM). The golden output is :func:`slimnfu.fixed.run_layer` on the gathered
``W = s[pi]``, the same integer contract as a dense FC layer. Shapes are random, with ``n_in``
not a multiple of ``ti`` and ``n_out`` not a multiple of ``tn`` among them; the rails appear
in ``s`` and in the inputs.
"""

import torch

from slimnfu import fixed
from slimnfu.compress.permfc import random_affine_params
from slimnfu.config import LayerDesc, PassDesc
from slimnfu.formats.perm import PermAffineWeights, PermIndexWeights, affine_perms
from slimnfu.sim.cases import Case, _with_rails

__all__ = ["make_perm_case", "perm_cases"]


def make_perm_case(name, n_in, n_out, variant, cfg, seed, act="none", images=None):
    """An FC :class:`Case` of format ``perm_<variant>`` with random ``s``, permutation, inputs
    and biases."""
    gen = torch.Generator().manual_seed(seed)
    span = 1 << (cfg.dw - 3)
    s = _with_rails(torch.randint(-span, span, (n_in,), generator=gen), gen, cfg, 0.1)
    a = b = idx = None
    if variant == "affine":
        a, b = random_affine_params(n_out, n_in, seed)
        perm = affine_perms(a, b, n_in, name)
    else:
        idx = torch.stack([torch.randperm(n_in, generator=gen) for _ in range(n_out)])
        perm = idx
    w = s[perm]
    if images is not None:
        pick = int(torch.randint(images.shape[0], (1,), generator=gen))
        flat = torch.as_tensor(images[pick].copy(), dtype=torch.int64).flatten()
        x = ((flat.repeat(-(-n_in // flat.numel()))[:n_in] - 64) << (cfg.dw - 9))
    else:
        x = torch.randint(cfg.qmin, cfg.qmax + 1, (n_in,), generator=gen)
    x = _with_rails(x, gen, cfg)
    acc = fixed.linear_acc(x.view(1, -1), w)
    top = float(acc.abs().double().quantile(0.9)) + 1
    shift = max(0, int(top).bit_length() - (cfg.dw - 2))
    bias = torch.randint(-(1 << (shift + cfg.dw - 3)), 1 << (shift + cfg.dw - 3), (n_out,),
                         generator=gen)
    desc = PassDesc(LayerDesc("fc", n_in, n_out, shift=shift, act=act), perm=variant)
    desc.check(cfg, int(bias.abs().max()))
    count = fixed.SatCount()
    y = fixed.run_layer(desc, x.unsqueeze(0), w, bias, cfg.dw, None, count)[0]
    rec = PermAffineWeights(s, a, b) if variant == "affine" else PermIndexWeights(s, idx)
    return Case(name, desc, x, w, bias, None, y, count.events,
                "mnist" if images is not None else "random", f"perm_{variant}", rec)


def perm_cases(cfg, seed=1, images=None):
    """The regression's permuted-FC cases for ``cfg`` (empty unless ``cfg.perm``)."""
    if not cfg.perm:
        return []
    gen = torch.Generator().manual_seed(seed + 600)
    tn, ti = cfg.tn, cfg.ti
    top = min(cfg.perm.depth, 8 * ti)

    def rand(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    cases = []
    for k, variant in enumerate(("affine", "index")):
        cases.append(make_perm_case(f"perm_{variant}_ragged", top - 1 if top % ti == 0 else top,
                                    3 * tn + 1, variant, cfg, seed * 1000 + 600 + 4 * k,
                                    act="relu", images=images))
        cases.append(make_perm_case(f"perm_{variant}_rand", rand(2, top), rand(1, 3 * tn),
                                    variant, cfg, seed * 1000 + 601 + 4 * k))
        cases.append(make_perm_case(f"perm_{variant}_aligned", 2 * ti, 2 * tn, variant, cfg,
                                    seed * 1000 + 602 + 4 * k))
    return cases
