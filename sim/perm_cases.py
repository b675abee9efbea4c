"""Co-simulation cases of the permuted-feature FC path (method C, ``cfg.perm``).

Each case is an FC layer whose weights are permutations of common sequences: generated (the
engine's address generators expand per-row parameters; affine or quadratic, one sequence or
``G`` groups whose rows share an output tile) or index (an index ROM over one sequence; SB
holds the gathered weights). The golden output is :func:`slimnfu.fixed.run_layer` on the
gathered ``W = s[pi]``, the same integer contract as a dense FC layer. Shapes are random, with
``n_in`` not a multiple of ``ti`` and ``n_out`` not a multiple of ``tn`` among them; the rails
appear in ``s`` and in the inputs.
"""

import torch

from slimnfu import fixed
from slimnfu.compress.permfc import random_generated_params
from slimnfu.config import LayerDesc, PassDesc
from slimnfu.formats import layout
from slimnfu.formats.perm import PermAffineWeights, PermIndexWeights, generated_perms
from slimnfu.formats.qmodel import QLayer
from slimnfu.sim.cases import Case, _with_rails

__all__ = ["make_perm_case", "make_flatten_case", "perm_cases"]


def make_perm_case(name, n_in, n_out, variant, cfg, seed, act="none", images=None, groups=1,
                   family="affine"):
    """An FC :class:`Case` of format ``perm_<variant>`` with random ``s``, permutation, inputs
    and biases (``groups`` sequences, rows dealt to them in turn, and ``family``: affine
    variant)."""
    gen = torch.Generator().manual_seed(seed)
    span = 1 << (cfg.dw - 3)
    s = _with_rails(torch.randint(-span, span, (groups * n_in,), generator=gen), gen, cfg, 0.1)
    a = b = e = group = idx = None
    if variant == "affine":
        a, b, e = random_generated_params(n_out, n_in, family, seed)
        group = torch.arange(n_out) % groups
        perm = group.reshape(-1, 1) * n_in + generated_perms(a, b, e, n_in, name)
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
    rec = (PermAffineWeights(s, a, b, e if bool(e.any()) else None,
                             group if groups > 1 else None)
           if variant == "affine" else PermIndexWeights(s, idx))
    return Case(name, desc, x, w, bias, None, y, count.events,
                "mnist" if images is not None else "random", f"perm_{variant}", rec)


def make_flatten_case(name, channels, pixels, n_out, cfg, seed, groups=1):
    """A ``perm_affine`` FC :class:`Case` after a conv output of ``channels x pixels`` values:
    the layer re-laid into the neuron buffer's order
    (:meth:`~slimnfu.formats.perm.PermAffineFormat.relayout_input`), its input the conv
    output where the engine writes it, junk (the rails) in the padding lanes of the last
    channel tile; the golden output is the model's layer on the flattened values."""
    n = channels * pixels
    gen = torch.Generator().manual_seed(seed)
    span = 1 << (cfg.dw - 3)
    s = _with_rails(torch.randint(-span, span, (groups * n,), generator=gen), gen, cfg, 0.1)
    a, b, _ = random_generated_params(n_out, n, "affine", seed)
    group = torch.arange(n_out) % groups
    rec = PermAffineWeights(s, a, b, None, group if groups > 1 else None)
    w = s[rec.indices(n, name)]
    x = _with_rails(torch.randint(cfg.qmin, cfg.qmax + 1, (n,), generator=gen), gen, cfg)
    acc = fixed.linear_acc(x.view(1, -1), w)
    top = float(acc.abs().double().quantile(0.9)) + 1
    shift = max(0, int(top).bit_length() - (cfg.dw - 2))
    bias = torch.randint(-(1 << (shift + cfg.dw - 3)), 1 << (shift + cfg.dw - 3), (n_out,),
                         generator=gen)
    layer = QLayer(name, LayerDesc("fc", n, n_out, shift=shift, act="relu"), w, bias, 0, shift,
                   0, None, format="perm_affine", compressed=rec)
    src = layout.buffer_order(channels, pixels, 1, cfg.tn)
    relaid = layer.weight_format.relayout_input(layer, src)
    xbuf = torch.where(src < 0, torch.where(src % 2 == 0, cfg.qmax, cfg.qmin),
                       x[src.clamp(min=0)])
    desc = relaid.weight_format.pass_desc(relaid)
    desc.check(cfg, int(bias.abs().max()))
    count = fixed.SatCount()
    y = fixed.run_layer(layer.desc, x.unsqueeze(0), w, bias, cfg.dw, None, count)[0]
    return Case(name, desc, xbuf, relaid.w, bias, None, y, count.events, "random",
                "perm_affine", relaid.compressed)


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
    # G groups filling perm.depth (at most one per row), rows of one output tile in different
    # groups; quadratic permutations on n_in = 24 or 18 (nonzero second differences) when
    # they fit and the generators walk them (perm.quadratic).
    n = 24 if cfg.perm.depth >= 48 else 18
    if cfg.perm.depth >= 2 * n and cfg.perm.quadratic:
        rows = 3 * tn + 1
        cases.append(make_perm_case("perm_affine_groups_quadratic", n, rows, "affine", cfg,
                                    seed * 1000 + 612, act="relu", images=images,
                                    groups=min(rows, cfg.perm.depth // n),
                                    family="quadratic"))
    g = min(3 * tn - 1, max(1, cfg.perm.depth // (top - 1)))
    cases.append(make_perm_case("perm_affine_groups_ragged", top - 1, 3 * tn - 1, "affine", cfg,
                                seed * 1000 + 613, groups=g))
    # after a conv output of c % tn != 0 channels and hw > 1 pixels, in the buffer's order
    # (padding lanes of the last channel tile), in one sequence and in two groups
    c = tn + 1 if tn > 1 else 2
    hw = max(2, min(5, cfg.perm.depth // (2 * c)))
    if 2 * c * hw <= cfg.perm.depth:
        cases.append(make_flatten_case("perm_affine_flatten", c, hw, 2 * tn + 1, cfg,
                                       seed * 1000 + 614))
        cases.append(make_flatten_case("perm_affine_flatten_groups", c, hw, 3 * tn - 1, cfg,
                                       seed * 1000 + 615, groups=2))
    return cases
