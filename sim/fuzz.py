"""Fuzzing: random layers of every kind on random configs, checked bit-exactly on the simulators.

Drawing and shrinking are hypothesis's (:mod:`hypothesis`, a maintained property-based
testing library); nothing here is a shrinker of its own.

- :func:`configs` draws an :class:`~slimnfu.config.AccelConfig`: ``tn = ti`` in 1..16, DW 8 or
  16, an accumulator from the narrowest the config allows up, buffer depths, and each method
  feature on or off with its parameters.
- :func:`case_specs` draws, for one config, a :class:`FuzzSpec`: the variant (dense ``conv``
  and ``fc``, ``maxpool``, ``avgpool``, ``ikr_conv``, ``affine_fc`` and ``index_fc`` (the two
  permuted formats), and ``slim_pass``: a conv pass with per-lane kernels ``lane_k``, a
  centre-tap offset ``koff`` and the placement fields ``nbout_base``/``lane_skip``), its
  geometry, the activation (none, ReLU, the sigmoid and tanh
  tables, a random table), the shift, how many values are non-zero, a seed for the values, and
  *targets*: outputs whose accumulator is set, through the bias (or the window, for pooling),
  to an exact rounding tie (positive, negative, at zero), one step either side of the positive
  and negative rails, a deep negative saturation, or a PWL segment edge.
- :func:`build_case` turns a spec into a :class:`~slimnfu.sim.cases.Case` (operands and the
  golden output); the values come from the spec's seed and each element's position, with
  about 4% of them on the rails.

:func:`run_fuzz` draws the configs, then for each config a batch of specs (one hypothesis run
per variant, from the seed), runs them on every simulator in batches (one build per config and
simulator, reused by all its cases; the comparison is :func:`slimnfu.sim.runner.compare`:
outputs, cycles, steps, multiplies, saturation and gated counts) and, for a case that fails,
runs hypothesis again on the same draws with the simulator in the loop, so that it finds the
failing spec and shrinks it (smaller shapes, fewer channels, fewer non-zero values, fewer
targets). The minimal case is written under ``fuzz/`` in the build root as a case file that
``slimnfu cosim --layer @FILE`` replays (:func:`slimnfu.sim.cases.write_case`), with a
waveform of it on request.
"""

import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from slimnfu import fixed, paths
from slimnfu.atomic import atomic_write
from slimnfu.compress.permfc import random_affine_params
from slimnfu.config import LayerDesc, PassDesc, get_config
from slimnfu.formats.ikr import IkrWeights
from slimnfu.formats.perm import PermAffineWeights, PermIndexWeights, affine_perms
from slimnfu.sim.cases import Case, reference, write_case
from slimnfu.sim.runner import SIMS, cosim_root, run_regression, wave_file

__all__ = ["VARIANTS", "ACTIVATIONS", "TARGETS", "MAX_STEPS", "FEATURE_ORDER", "RUN_DRAWS",
           "FuzzSpec", "configs", "case_specs", "build_case", "draw_configs", "draw_cases",
           "failure_kind",
           "shrink_failure", "run_fuzz", "fuzz_root"]

#: The case variants, simplest first (hypothesis shrinks toward the first).
VARIANTS = ("fc", "conv", "maxpool", "avgpool", "ikr_conv", "affine_fc", "index_fc",
            "slim_pass")

#: The config feature each method variant needs.
_NEEDS = {"ikr_conv": "ikr", "affine_fc": "perm", "index_fc": "perm", "slim_pass": "kgate"}

#: The weight format of each variant (dense when not named) and its permutation kind.
_FORMAT = {"ikr_conv": "ikr", "affine_fc": "perm_affine", "index_fc": "perm_index"}
_PERM = {"affine_fc": "affine", "index_fc": "index"}

#: Activations: none, ReLU, the sigmoid and tanh tables, and a table of random chords.
ACTIVATIONS = ("none", "relu", "sigmoid", "tanh", "pwl_random")

#: Outputs a spec can aim at (see :func:`build_case`).
TARGETS = ("tie_pos", "tie_neg", "tie_zero", "hi_edge", "hi_over", "lo_edge", "lo_under",
           "neg_far", "pwl_edge")

#: NFU steps of a case at most, so that a batch of cases simulates in seconds.
MAX_STEPS = 1536

#: Largest output height and width of a conv or pooling case.
MAX_OUT = 8


def fuzz_root(build_root=None):
    """``fuzz/`` in the build root (default :func:`slimnfu.paths.build_root`)."""
    return paths.build_root(build_root) / "fuzz"


@dataclass(frozen=True)
class FuzzSpec:
    """What one fuzz case is, as plain data hypothesis draws and shrinks.

    ``variant`` is one of :data:`VARIANTS`; the geometry fields are the
    :class:`~slimnfu.config.LayerDesc`'s; ``ikr_n``/``patterns`` (IKR), ``koff``, ``lane_k``,
    ``nbout_base``, ``lane_skip`` (slim) are the pass's; ``act`` is one of
    :data:`ACTIVATIONS` and ``pwl_f`` the table's scale; the shift is the data-driven one
    (most outputs fit, a few saturate) plus ``shift_delta``, or 0 with ``shift_zero``;
    ``density`` is the percentage of non-zero inputs, weights and biases; ``seed`` draws the
    values; ``targets`` are ``(kind, channel, pixel)`` with ``kind`` in :data:`TARGETS`.
    """

    variant: str
    n_in: int
    n_out: int
    h_in: int = 1
    w_in: int = 1
    k: int = 1
    stride: int = 1
    pad: int = 0
    act: str = "none"
    pwl_f: int = 0
    shift_delta: int = 0
    shift_zero: bool = False
    ikr_n: int = 0
    patterns: int = 1
    koff: int = 0
    lane_k: tuple = ()
    nbout_base: int = 0
    lane_skip: int = 0
    density: tuple = (100, 100, 100)
    seed: int = 0
    targets: tuple = ()

    def to_dict(self):
        return asdict(self)


def _st():
    """The hypothesis strategies module (imported when fuzzing, not with the package)."""
    from hypothesis import strategies
    return strategies


def configs(max_tn=16, features=None):
    """A hypothesis strategy of fuzz configs: ``tiny`` changed to ``tn = ti`` in
    ``1..max_tn``, DW 16 or 8, ACC from the narrowest allowed to ``2*DW + 20`` (at most 64),
    buffer depths (not only powers of two) and each method feature on or off (or the
    ``features`` given on) with random parameters. Named after what changed
    (:meth:`AccelConfig.changed`)."""
    st = _st()

    def on(name):
        return st.booleans() if features is None else st.just(name in features)


    @st.composite
    def draw_config(draw):
        tn = draw(st.one_of(st.integers(1, min(4, max_tn)), st.integers(1, max_tn)))
        dw = draw(st.sampled_from((16, 8)))
        min_acc = 2 * dw + max(1, math.ceil(math.log2(tn))) + 1
        ch = {"tn": tn, "ti": tn, "dw": dw,
              "acc": draw(st.integers(min_acc, max(min_acc, min(64, 2 * dw + 20)))),
              "nbin_depth": draw(st.integers(300, 4096)),
              "sb_depth": draw(st.integers(MAX_STEPS, 4096)),
              "nbout_depth": draw(st.integers(400, 4096)),
              "bias_depth": draw(st.integers(4, 64))}
        ikr = draw(on("ikr"))
        if ikr:
            ch.update({"ikr": 1, "ikr.kmax": draw(st.integers(1, 7)),
                       "ikr.patterns": draw(st.integers(1, 16)),
                       "ikr.index_depth": draw(st.integers(16, 512))})
        if draw(on("perm")):
            # s is held in SB: perm.depth <= sb_depth
            ch.update({"perm": 1, "perm.depth": draw(st.integers(2, min(ch["sb_depth"], 1024)))})
        if draw(on("kgate")):
            ch["kgate"] = 1
        if ikr:
            # drawn last, so that the other parameters of a seed stay what they were; window
            # banks for several input tiles first (one bank, the unbanked decoder, last)
            ch["ikr.tiles"] = draw(st.sampled_from((2, 3, 4, 1)))
            # the lane unit (each output tile's kernels then share a pattern, build_case)
            ch["ikr.lanes"] = draw(st.booleans())
        return get_config("tiny").changed(**ch)

    return draw_config()


def _variants(cfg):
    return [v for v in VARIANTS if _NEEDS.get(v) is None or _NEEDS[v] in cfg.features]


def _in_size(out, k, stride, pad, koff, extra):
    """An input size whose output is ``out`` (or more, when the kernel needs more input)."""
    return max(1, k + 2 * koff - 2 * pad, (out - 1) * stride + k + 2 * koff - 2 * pad + extra)


def case_specs(cfg, variant=None):
    """A hypothesis strategy of :class:`FuzzSpec` that ``cfg`` can run (each is checked again
    by :func:`build_case`): shapes within the buffers, the accumulator and :data:`MAX_STEPS`;
    of one ``variant`` when given, else of any the config has the feature for."""
    st = _st()
    tn, ti = cfg.tn, cfg.ti
    # terms n_in*k*k whose worst-case sum takes at most half the accumulator's range, leaving
    # the other half to the bias
    max_terms = max(1, 1 << max(0, cfg.acc - 2 * cfg.dw))
    fixed_variant = variant

    @st.composite
    def draw_spec(draw):
        variant = draw(st.sampled_from([fixed_variant] if fixed_variant else _variants(cfg)))
        fc = variant == "fc" or variant in _PERM
        pool = variant in ("maxpool", "avgpool")
        kw = {}
        k, stride, pad, koff = 1, 1, 0, 0
        if not fc:
            if variant == "avgpool":
                k = draw(st.sampled_from((1, 2, 4)))
            elif variant == "maxpool":
                k = draw(st.integers(1, 4))
            else:
                top = max(1, min(7, math.isqrt(max_terms)))
                if variant == "ikr_conv":
                    top = min(top, cfg.ikr.kmax)
                k = draw(st.integers(1, top))
                if variant == "slim_pass":
                    k -= 1 - k % 2  # odd
                    koff = draw(st.integers(0, 3))
            stride = draw(st.integers(1, 3))
            pad = 0 if pool else draw(st.integers(0, k))
        if pool:
            n_in = n_out = draw(st.integers(1, 2 * tn + 1))
            ci = co = -(-n_in // tn)
        else:
            cap = 4 * ti + 3 if fc else 2 * ti + 1
            if variant in _PERM:
                cap = min(cfg.perm.depth, 8 * ti + 3)
            n_in = draw(st.integers(1, max(1, min(cap, max_terms // (k * k)))))
            n_out = draw(st.integers(1, 3 * tn + 2 if fc else 2 * tn + 1))
            ci, co = -(-n_in // ti), -(-n_out // tn)
        h = w = 1
        if not fc:
            per_pixel = ci * co * k * k if not pool else co * k * k
            room = max(1, MAX_STEPS // per_pixel)
            h_out = draw(st.integers(1, max(1, min(MAX_OUT, room))))
            w_out = draw(st.integers(1, max(1, min(MAX_OUT, room // h_out))))
            h = _in_size(h_out, k, stride, pad, koff, draw(st.integers(0, stride - 1)))
            w = _in_size(w_out, k, stride, pad, koff, draw(st.integers(0, stride - 1)))
        if variant == "ikr_conv":
            kw["ikr_n"] = draw(st.integers(1, k * k))
            kw["patterns"] = draw(st.integers(1, cfg.ikr.patterns))
        if variant == "slim_pass":
            kw["koff"] = koff
            sizes = [0] + list(range(1, k + 1, 2))
            lanes = draw(st.lists(st.sampled_from(sizes), min_size=tn, max_size=tn))
            kw["lane_k"] = tuple(lanes) if any(lanes) else ()
            kw["nbout_base"] = draw(st.integers(0, 48))
            kw["lane_skip"] = draw(st.integers(0, max(0, min(tn, n_out) - 1)))
        act = draw(st.sampled_from(ACTIVATIONS))
        if act in ("sigmoid", "tanh", "pwl_random"):
            kw["pwl_f"] = draw(st.integers(0, cfg.dw - 2))
        if not pool:
            kw["shift_delta"] = draw(st.integers(-3, 3))
            kw["shift_zero"] = draw(st.booleans())
        kw["density"] = tuple(draw(st.integers(0, 100)) for _ in range(3))
        kw["seed"] = draw(st.integers(0, (1 << 32) - 1))
        kw["targets"] = tuple(draw(st.lists(st.tuples(st.sampled_from(TARGETS),
                                                       st.integers(0, 255),
                                                       st.integers(0, 255)), max_size=4)))
        return FuzzSpec(variant, n_in, n_out, h, w, k, stride, pad, act, **kw)

    return draw_spec()


def _lsr(z, n):
    """Logical right shift of int64 ``z``."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _hash(seed, tag, shape):
    """64 random bits for every element of ``shape`` (at most 4 dimensions of < 256 each),
    from ``seed``, ``tag`` and the element's position alone (splitmix64), so that an element
    keeps its value when hypothesis shrinks the shape around it."""
    idx = torch.zeros(shape, dtype=torch.int64)
    for d, n in enumerate(shape):
        view = [1] * len(shape)
        view[d] = n
        idx = idx + (torch.arange(n, dtype=torch.int64) << (8 * (len(shape) - 1 - d))).view(view)
    key = (seed * 0x9E3779B1 + tag * 0x85EBCA77) % ((1 << 30) - 35)
    z = idx + (key << 32) + 0x1234567
    z = (z ^ _lsr(z, 30)) * -4658895280553007687
    z = (z ^ _lsr(z, 27)) * -7723592293110705685
    return z ^ _lsr(z, 31)


def _values(seed, tag, shape, lo, hi, cfg, rails=0.04, percent=100):
    """Uniform integers in ``[lo, hi]`` by position (:func:`_hash`), about ``rails`` of them on
    ``qmin``/``qmax``, and about ``100 - percent`` percent of them zero."""
    bits = [_lsr(_hash(seed, 4 * tag + n, shape), 11) for n in range(1, 3)]
    t = _lsr(_hash(seed, 4 * tag, shape), 1) % (hi - lo + 1) + lo
    rail = bits[0] < int(rails * (1 << 53))
    t = torch.where(rail & (bits[0] % 2 == 0), cfg.qmin, t)
    t = torch.where(rail & (bits[0] % 2 == 1), cfg.qmax, t)
    return torch.where(bits[1] < int(percent / 100 * (1 << 53)), t, 0)


def _rand(gen, lo, hi, shape):
    return torch.randint(lo, hi + 1, shape, generator=gen)


def _pwl(spec, cfg, gen):
    if spec.act == "pwl_random":
        slope = _rand(gen, cfg.qmin, cfg.qmax, (16,))
        icpt = _rand(gen, -(1 << (2 * cfg.dw - 1)), (1 << (2 * cfg.dw - 1)) - 1, (16,))
        return fixed.PwlTable(slope.tolist(), icpt.tolist(), spec.pwl_f, cfg.dw)
    if spec.act in ("sigmoid", "tanh"):
        return fixed.pwl_table(spec.act, spec.pwl_f, cfg.dw)
    return None


def _target_acc(kind, sh, cfg, pwl, pick):
    """The accumulator value whose output is target ``kind`` (None: not possible here)."""
    half = 1 << (sh - 1) if sh else 0
    q = {"hi_edge": (cfg.qmax << sh) + max(0, half - 1),
         "lo_edge": (cfg.qmin << sh) - half}
    if kind in q:
        return q[kind]
    if kind == "hi_over":
        return q["hi_edge"] + 1
    if kind == "lo_under":
        return q["lo_edge"] - 1
    if kind == "neg_far":
        return (cfg.qmin << sh) * 4
    if kind.startswith("tie"):
        if not sh:
            return None
        m = {"tie_pos": pick % cfg.qmax, "tie_neg": cfg.qmin + pick % -cfg.qmin,
             "tie_zero": -1}[kind]
        return (m << sh) + half
    if kind == "pwl_edge" and pwl is not None:
        y = ((pick % 17 - 8) << pwl.seg_shift) - (pick // 17) % 2
        return max(cfg.qmin, min(cfg.qmax, y)) << sh
    return None


def _pool_targets(spec, x, cfg, pwl):
    """Set pooling windows for the spec's targets: exact max ties, average-window sums at an
    exact half, windows on the rails, PWL segment edges."""
    k, s = spec.k, spec.stride
    w_out = (spec.w_in - k) // s + 1
    n_win = ((spec.h_in - k) // s + 1) * w_out
    m = k * k
    for kind, c, p in spec.targets:
        c, p = c % spec.n_in, p % n_win
        oy, ox = divmod(p, w_out)

        def put(i, value):
            x[c, oy * s + i // k, ox * s + i % k] = value

        win = x[c, oy * s:oy * s + k, ox * s:ox * s + k]
        if kind in ("lo_edge", "lo_under", "neg_far"):
            win.fill_(cfg.qmin)
        elif kind in ("hi_edge", "hi_over"):
            put(p % m, cfg.qmax)
        elif kind.startswith("tie") and spec.variant == "maxpool":
            top = int(win.max())
            put(0, top)
            put(m - 1, top)
        elif kind.startswith("tie") and m > 1:
            t = {"tie_pos": p % 64, "tie_neg": -1 - p % 64, "tie_zero": -1}[kind]
            win.fill_(t)
            put(m - 1, t + m // 2)
        elif kind == "pwl_edge" and pwl is not None:
            win.fill_(max(cfg.qmin, min(cfg.qmax, (p % 17 - 8) << pwl.seg_shift)))


def build_case(spec, cfg, name):
    """The :class:`~slimnfu.sim.cases.Case` of ``spec`` on ``cfg``: operands from the spec's
    seed, the targets applied, the golden output; ``ValueError`` when ``cfg`` cannot run it."""
    gen = torch.Generator().manual_seed(spec.seed)
    v = spec.variant
    kind = "fc" if v == "fc" or v in _PERM else v if v in ("maxpool", "avgpool") else "conv"
    pwl = _pwl(spec, cfg, gen)
    act = {"none": "none", "relu": "relu"}.get(spec.act, "pwl")
    layer = LayerDesc(kind, spec.n_in, spec.n_out, spec.h_in, spec.w_in, spec.k, spec.stride,
                      spec.pad, act=act, seg_shift=0 if pwl is None else pwl.seg_shift)
    desc = PassDesc(layer, ikr_n=spec.ikr_n, perm=_PERM.get(v, "none"),
                    lane_k=spec.lane_k, koff=spec.koff, nbout_base=spec.nbout_base,
                    lane_skip=spec.lane_skip)
    x_shape = (spec.n_in,) if kind == "fc" else (spec.n_in, spec.h_in, spec.w_in)
    x = _values(spec.seed, 0, x_shape, cfg.qmin, cfg.qmax, cfg, percent=spec.density[0])
    fmt, rec, w, b = "dense", None, None, None
    if not layer.is_pool:
        span = 1 << (cfg.dw - 3)
        if v in _PERM:
            s = _values(spec.seed, 1, (spec.n_in,), -span, span - 1, cfg, 0.1, spec.density[1])
            if v == "affine_fc":
                a, bb = random_affine_params(spec.n_out, spec.n_in, spec.seed)
                w, rec = s[affine_perms(a, bb, spec.n_in, name)], PermAffineWeights(s, a, bb)
            else:
                idx = torch.stack([torch.randperm(spec.n_in, generator=gen)
                                   for _ in range(spec.n_out)])
                w, rec = s[idx], PermIndexWeights(s, idx)
            fmt = _FORMAT[v]
        else:
            wshape = (spec.n_out, spec.n_in) + ((spec.k, spec.k) if kind == "conv" else ())
            w = _values(spec.seed, 1, wshape, -span, span - 1, cfg, percent=spec.density[1])
            if v == "ikr_conv":
                kk = spec.k * spec.k
                patterns = torch.stack([torch.randperm(kk, generator=gen)[:spec.ikr_n].sort()
                                        .values for _ in range(spec.patterns)])
                index = torch.randint(spec.patterns, (spec.n_out, spec.n_in), generator=gen)
                if cfg.ikr.lanes:
                    index = index[torch.arange(spec.n_out) // cfg.tn * cfg.tn]
                mask = torch.zeros(spec.n_out, spec.n_in, kk, dtype=torch.int64)
                mask.scatter_(2, patterns[index], 1)
                w = w * mask.view(w.shape)
                fmt, rec = _FORMAT[v], IkrWeights(patterns, index)
        acc0 = fixed.accumulate(desc, x.unsqueeze(0),
                                fixed.gated_weights(desc, w, cfg.tn))[0].reshape(spec.n_out, -1)
        top = float(acc0.abs().double().quantile(0.9)) + 1
        shift = max(0, int(top).bit_length() - (cfg.dw - 2))
        shift = 0 if spec.shift_zero else max(0, min(cfg.acc - 1, shift + spec.shift_delta))
        terms = layer.n_in * layer.k * layer.k
        b_max = (1 << (cfg.acc - 1)) - 1 - terms * (1 << (2 * cfg.dw - 2))
        if b_max < 0:
            raise ValueError(f"acc={cfg.acc} cannot hold a {terms}-term sum")
        bspan = min(1 << min(62, shift + cfg.dw - 3), b_max + 1)
        b = _values(spec.seed, 2, (spec.n_out,), -bspan, bspan - 1, cfg, 0, spec.density[2])
        for kind_, c, p in spec.targets:
            c = c % spec.n_out
            want = _target_acc(kind_, shift, cfg, pwl, p)
            if want is not None:
                need = want - int(acc0[c, p % acc0.shape[1]])
                if abs(need) <= b_max:
                    b[c] = need
        layer = layer.with_(shift=shift)
        desc = desc.with_(layer=layer)
    else:
        _pool_targets(spec, x, cfg, pwl)
    desc.check(cfg, None if b is None or not b.numel() else int(b.abs().max()))
    if desc.steps(cfg) > MAX_STEPS:
        raise ValueError(f"{desc.steps(cfg)} steps, more than MAX_STEPS={MAX_STEPS}")
    y, sat = reference(desc, x, w, b, pwl, cfg)
    return Case(name, desc, x, w, b, pwl, y, sat, "fuzz", fmt, rec)


def _settings(n, shrink=False):
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    phases = (Phase.generate, Phase.shrink) if shrink else (Phase.generate,)
    return settings(max_examples=n, database=None, deadline=None, phases=phases,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                    print_blob=False, verbosity=Verbosity.quiet)


@contextmanager
def _no_local_constants():
    """Hypothesis mixes into its draws constants it finds in the source of the local modules
    imported so far, so one seed would draw differently after other imports (in a test, or
    between a batch and the replay that shrinks it). The fuzzer's draws use none: while they
    run, hypothesis sees no local constants. (This reaches into hypothesis's provider module,
    hence the exact version pin; without those names it changes nothing.)"""
    try:
        from hypothesis.internal.conjecture import providers
        empty = type(providers._local_constants)()
        saved = providers._get_local_constants
    except (ImportError, AttributeError, TypeError):
        yield
        return
    providers.CONSTANTS_CACHE.cache.clear()
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = saved
        providers.CONSTANTS_CACHE.cache.clear()


def _run_hypothesis(strategy, n, seed, test, shrink=False):
    """Run ``test`` on the examples hypothesis draws from ``strategy`` with ``seed`` (the same
    draws, in the same order, for the same arguments)."""
    from hypothesis import given
    from hypothesis import seed as hseed

    with _no_local_constants():
        hseed(seed)(_settings(n, shrink)(given(strategy)(test)))()


#: The method features of the configs of a run, in turn: every feature, each alone, each
#: pair, none (with few configs, every feature is still on in some of them).
FEATURE_ORDER = (("ikr", "kgate", "perm"), ("kgate",), ("perm",), ("ikr",), ("kgate", "perm"),
                 ("ikr", "kgate"), ("ikr", "perm"), ())


def draw_configs(n, seed, max_tn=16):
    """``n`` distinct configs, each drawn by a hypothesis run of :func:`configs` of its own
    (from ``seed`` and its index), with the features ``FEATURE_ORDER[i % 8]``: the run's second
    draw (its first is always the simplest config of the set, ``tn = 1`` and the narrowest
    accumulator; a run's later draws are often simplified copies of earlier ones)."""
    picked = {}
    for i in range(8 * n):
        if len(picked) == n:
            break
        draws = []

        def record(cfg):
            draws.append(cfg)

        _run_hypothesis(configs(max_tn, FEATURE_ORDER[i % len(FEATURE_ORDER)]), 2,
                        seed * 1009 + i, record)
        cfg = draws[-1]
        picked.setdefault(cfg.name, cfg)
    return list(picked.values())


#: Draws of one hypothesis run: a run's later draws are mostly variations of its earlier ones,
#: so a variant's cases come from several short runs.
RUN_DRAWS = 20


def _variant_runs(cfg, n, seed):
    """``{variant: (cases, [seed, ...])}``: the cases of each variant ``cfg`` can run (``n``
    shared evenly, so that every variant is drawn as often) and the seeds of the hypothesis
    runs of :data:`RUN_DRAWS` draws that :func:`draw_cases` makes for it, in turn, until it
    has as many distinct cases (a run's first draw is always the simplest)."""
    vs = _variants(cfg)
    runs = {}
    for i, v in enumerate(vs):
        count = n // len(vs) + (i < n % len(vs))
        runs[v] = (count, [(seed * 16 + i) * 4096 + k for k in range(2 * (count // RUN_DRAWS)
                                                                        + 2)])
    return runs


def draw_cases(cfg, n, seed, prefix="case"):
    """``[(spec, case)]``: ``n`` specs (fewer only if hypothesis keeps drawing the same ones)
    drawn for ``cfg`` from :func:`case_specs` with ``seed``, as many of each variant,
    interleaved, each built (:func:`build_case`) and named ``<prefix><index>_<variant>``."""
    from hypothesis import reject

    per_variant = []
    for variant, (count, seeds) in _variant_runs(cfg, n, seed).items():
        out = {}
        for vseed in seeds:
            if len(out) >= count:
                break

            def record(spec):
                if spec in out:
                    return
                try:
                    out[spec] = build_case(spec, cfg, prefix)
                except ValueError:
                    reject()

            _run_hypothesis(case_specs(cfg, variant), RUN_DRAWS, vseed, record)
        per_variant.append(list(out.items())[:count])
    drawn = [run[k] for k in range(max(map(len, per_variant), default=0))
             for run in per_variant if k < len(run)]
    for i, (spec, case) in enumerate(drawn):
        case.name = f"{prefix}{i}_{spec.variant}"
    return drawn


def failure_kind(entry):
    """What went wrong in a failed results entry, most telling first: ``error`` (the
    simulation did not finish the case), ``outputs``, ``counters`` (cycles, steps,
    multiplies), ``sat_events``, ``gated``, ``clobbered`` (NBout words outside the pass
    changed) or ``verdict`` (the testbench disagrees with the comparison)."""
    if entry.get("mismatches") is None:
        return "error"
    if entry["mismatches"]:
        return "outputs"
    if any(entry.get(k) != entry.get("expected_" + k) for k in ("cycles", "steps", "mults")):
        return "counters"
    for key in ("sat_events", "gated"):
        if entry.get(key) != entry.get("expected_" + key):
            return key
    return "clobbered" if "outside the pass" in (entry.get("error") or "") else "verdict"


class _Failing(Exception):
    """Raised inside hypothesis for a failing case; one subclass per :func:`failure_kind`, so
    that shrinking keeps the kind of failure it started from."""


_KINDS = {}


def _failing(kind):
    return _KINDS.setdefault(kind, type(f"Failing_{kind}", (_Failing,), {}))


def shrink_failure(cfg, n, seed, spec, results, run_one, kind, prefix="case"):
    """Shrink a failing case with hypothesis.

    Hypothesis replays the runs of :func:`draw_cases` (same ``cfg``, ``n`` and ``seed``) of
    the failing ``spec``'s variant until one draws it; ``results`` (``{spec: results entry}``
    of the batch on one simulator) answers for its draws until the failing spec comes up,
    then hypothesis shrinks it, and each smaller spec it tries runs through
    ``run_one(case) -> results entry``. A spec counts as failing when its
    :func:`failure_kind` is ``kind``.

    Returns
    -------
    tuple or None
        ``(spec, case, entry, runs)`` of the smallest failing spec (``runs``: simulations it
        took), or None when the failing spec did not come up again.
    """
    from hypothesis import reject

    state = {"found": False, "best": None, "runs": 0}

    def test(spec):
        entry = results.get(spec)
        if entry is not None and entry["passed"]:
            return
        if entry is None and not state["found"]:
            return  # a draw the batch did not make: not simulated
        try:
            case = build_case(spec, cfg, f"{prefix}_min")
        except ValueError:
            reject()
        if entry is None:
            state["runs"] += 1
            entry = run_one(case)
        else:
            state["found"] = True
        if not entry["passed"] and failure_kind(entry) == kind:
            state["best"] = (spec, case, entry)
            raise _failing(kind)(entry["error"])

    for vseed in _variant_runs(cfg, n, seed)[spec.variant][1]:
        try:
            _run_hypothesis(case_specs(cfg, spec.variant), RUN_DRAWS, vseed, test, shrink=True)
        except Exception:  # the failure hypothesis shrank (or Flaky, if it did not replay)
            pass
        if state["found"]:
            break
    if state["best"] is None:
        return None
    return (*state["best"], state["runs"])


def _quiet(*_):
    pass


def _rmtree_config(build_root, sim, cfg):
    """Remove the builds and runs of ``cfg`` on ``sim`` (a fuzz config is seldom drawn
    again, and a Verilator build takes 100 to 200 MB)."""
    for name in (cfg.name, cfg.name + "_waves"):
        shutil.rmtree(cosim_root(build_root) / sim / name, ignore_errors=True)


def _save_waves(cfg, case, sim, path, build_root):
    """Replay ``case`` on a build with tracing and copy its waveform beside ``path``."""
    entry = run_regression(cfg, [case], sims=(sim,), waves=True, log=_quiet,
                           build_root=build_root)[0]
    wave = wave_file({"run": entry["run_dir"]})
    if wave is None:
        return None
    dest = path.with_suffix(wave.suffix)
    shutil.copyfile(wave, dest)
    return str(dest)


def run_fuzz(cases, seed, sims=SIMS, time_budget=None, per_config=500, batch=200, max_tn=16,
             shrink=True, max_shrinks=3, waves=False, keep_builds=False, build_root=None,
             log=print, run_batch=None):
    """Fuzz ``cases`` random cases on each simulator of ``sims``; see the module docstring.

    Parameters
    ----------
    cases : int
        Cases to draw (each runs on every simulator of ``sims``).
    seed : int
        Seeds hypothesis: the same arguments draw the same configs and cases.
    sims : sequence of str
    time_budget : float, optional
        Seconds; no new batch starts after them (a failure found is still shrunk).
    per_config : int
        Cases per config: one build per config and simulator serves them all.
    batch : int
        Cases per simulation run.
    max_tn : int
        Largest ``tn`` drawn (smaller configs compile faster).
    shrink : bool
        Shrink failures: the first of each kind on each config, at most ``max_shrinks`` in
        the run (every first failure of a kind is written as it was drawn, too).
    waves : bool
        Write a waveform of each shrunk case beside its file (one more build, traced).
    keep_builds : bool
        Keep each config's simulator builds (by default removed once its cases ran).
    build_root : path, optional
        Default :func:`slimnfu.paths.build_root`; the case files and ``summary.json`` go to
        its ``fuzz/``.
    run_batch : callable, optional
        ``run_batch(cfg, cases, sim) -> results entries``, a stand-in for the simulators
        (:func:`slimnfu.sim.runner.run_regression` on one simulator) for tests.

    Returns
    -------
    dict
        The summary also written to ``fuzz/summary.json``: ``seed``, ``sims``, ``drawn``,
        ``per_sim`` (``cases``, ``failed``, ``sim_s`` and ``cases_per_min``: simulated cases
        per minute of batch runs, builds included), ``wall_s``, ``configs`` (name, cases
        drawn and run), ``coverage`` (cases per ``variant/act``), ``targets`` (cases per
        target kind), ``failures`` (each with its case file, and the shrunk file when shrunk)
        and ``budget_hit``.
    """
    t_start = time.perf_counter()
    out_dir = fuzz_root(build_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    simulated = run_batch is None
    if simulated:
        def run_batch(cfg, batch_cases, sim):
            return run_regression(cfg, batch_cases, sims=(sim,), log=_quiet,
                                  build_root=build_root)
    cfgs = draw_configs(-(-cases // per_config), seed, max_tn)
    log(f"fuzz: {cases} cases on {len(cfgs)} configs, seed {seed}, on {', '.join(sims)}")
    per_sim = {sim: {"cases": 0, "failed": 0, "sim_s": 0.0} for sim in sims}
    summary = {"seed": seed, "sims": list(sims), "requested": cases, "drawn": 0,
               "configs": [], "coverage": {}, "targets": {}, "failures": [],
               "budget_hit": False}
    left, shrinks = cases, 0

    def over_budget():
        hit = time_budget is not None and time.perf_counter() - t_start > time_budget
        summary["budget_hit"] |= hit
        return hit

    for ci, cfg in enumerate(cfgs):
        if left <= 0 or over_budget():
            break
        n_here, cseed, prefix = min(per_config, left), seed * 1000 + ci, f"s{seed}c{ci}_"
        drawn = draw_cases(cfg, n_here, cseed, prefix)
        left -= len(drawn)
        summary["drawn"] += len(drawn)
        for spec, _ in drawn:
            key = f"{spec.variant}/{spec.act}"
            summary["coverage"][key] = summary["coverage"].get(key, 0) + 1
            for t in spec.targets:
                summary["targets"][t[0]] = summary["targets"].get(t[0], 0) + 1
        conf = {"name": cfg.name, "drawn": len(drawn), "ran": {}}
        results = {sim: {} for sim in sims}
        for sim in sims:
            for start in range(0, len(drawn), batch):
                if over_budget():
                    break
                part = drawn[start:start + batch]
                t0 = time.perf_counter()
                entries = run_batch(cfg, [c for _, c in part], sim)
                wall = time.perf_counter() - t0
                per_sim[sim]["cases"] += len(part)
                per_sim[sim]["sim_s"] += wall
                bad = 0
                for (spec, _), entry in zip(part, entries):
                    results[sim][spec] = entry
                    bad += not entry["passed"]
                per_sim[sim]["failed"] += bad
                log(f"[{sim}] config {ci + 1}/{len(cfgs)} {cfg.name}: cases "
                    f"{start + 1}-{start + len(part)} of {len(drawn)}: {bad} failed, "
                    f"{wall:.1f} s")
            conf["ran"][sim] = len(results[sim])
        summary["configs"].append(conf)
        # failures: Verilator's first (faster to shrink on), one shrink per kind
        seen, shrunk = set(), set()
        order = sorted(sims, key=lambda sim: sim != "verilator")
        for sim in order:
            for spec, case in drawn:
                entry = results[sim].get(spec)
                if entry is None or entry["passed"]:
                    continue
                kind = failure_kind(entry)
                record = {"case": case.name, "config": cfg.name, "sim": sim, "kind": kind,
                          "error": entry["error"], "spec": spec.to_dict()}
                summary["failures"].append(record)
                if (sim, kind) in seen:
                    continue
                seen.add((sim, kind))
                note = {"found_by": "slimnfu fuzz", "seed": seed, "config_index": ci,
                        "sim": sim, "kind": kind, "error": entry["error"],
                        "spec": spec.to_dict()}
                record["file"] = str(write_case(out_dir / f"{case.name}-{sim}.json", case,
                                                cfg, note))
                if not shrink or shrinks >= max_shrinks or kind in shrunk:
                    continue
                shrinks += 1
                shrunk.add(kind)
                log(f"[{sim}] {case.name} failed ({kind}: {entry['error']}); shrinking ...")
                t0 = time.perf_counter()
                got = shrink_failure(cfg, n_here, cseed, spec, results[sim],
                                     lambda c, s=sim: run_batch(cfg, [c], s)[0], kind, prefix)
                if got is None:
                    log(f"[{sim}] the failing draw did not come up again; not shrunk")
                    continue
                mspec, mcase, mentry, runs = got
                mcase.name = f"{case.name}_min"
                path = write_case(out_dir / f"{mcase.name}-{sim}.json", mcase, cfg,
                                  {**note, "error": mentry["error"], "spec": mspec.to_dict(),
                                   "shrunk_from": case.name})
                record.update(shrunk=str(path), shrunk_spec=mspec.to_dict(), shrink_runs=runs,
                              shrink_s=round(time.perf_counter() - t0, 1))
                log(f"[{sim}] shrunk in {runs} runs to {mspec}; replay with: slimnfu cosim "
                    f"--sim {sim} --layer @{path}")
                if waves and simulated:
                    record["waves"] = _save_waves(cfg, mcase, sim, path, build_root)
        if simulated and not keep_builds:
            for sim in sims:
                _rmtree_config(build_root, sim, cfg)
    for d in per_sim.values():
        d["cases_per_min"] = round(60 * d["cases"] / d["sim_s"], 1) if d["sim_s"] else None
        d["sim_s"] = round(d["sim_s"], 1)
    summary.update(per_sim=per_sim, wall_s=round(time.perf_counter() - t_start, 1),
                   failed=sum(d["failed"] for d in per_sim.values()))
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
