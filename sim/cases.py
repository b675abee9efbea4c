"""Co-simulation cases: random layers from a seed, MNIST stimulus, and their expected outputs.

A :class:`Case` is one engine pass, in any weight format: its :class:`PassDesc`, integer
tensors, the format's record, and the expected output from the integer reference
(:func:`slimnfu.fixed.run_layer`, the golden model). Cases are checked against the config
(:meth:`PassDesc.check`) when they are made, so a layer the engine cannot run stops before
any simulation.

:func:`case_job` turns a case into the plain-JSON job the cocotb testbench reads: the
descriptor value and the memory words its weight format stores
(:meth:`slimnfu.formats.base.WeightFormat.passes`); no torch on the simulator side.
"""

from dataclasses import dataclass

import torch

from slimnfu import fixed
from slimnfu.config import LayerDesc, PassDesc, as_pass
from slimnfu.contract import LoadSel, descriptor_value
from slimnfu.formats import QLayer, layout

__all__ = ["Case", "make_case", "dense_cases", "case_job", "expected_cycles", "expected_steps",
           "expected_counters", "QUICK"]

#: Names of the cases of a ``--quick`` regression.
QUICK = ("nfu_step_mac", "conv3x3_s1_p1", "conv5x5_s2_p0", "fc_pwl_sigmoid", "maxpool2_s2",
         "avgpool2_s2")


@dataclass
class Case:
    """One engine pass, with its operands and the golden output.

    ``desc`` is the pass (a :class:`LayerDesc` is taken as one dense pass); ``w`` are the
    weights the layer stands for (the reference uses them); ``format`` and ``compressed`` say
    how the engine stores them (:class:`slimnfu.formats.QLayer`)."""

    name: str
    desc: PassDesc
    x: torch.Tensor
    w: torch.Tensor = None
    b: torch.Tensor = None
    pwl: fixed.PwlTable = None
    expected: torch.Tensor = None
    expected_sat: int = 0
    source: str = "random"
    format: str = "dense"
    compressed: object = None

    def __post_init__(self):
        self.desc = as_pass(self.desc)

    def layer(self):
        """The case's layer as a :class:`QLayer` of its weight format (a case has no real
        scales: ``f_w`` carries the shift, so that ``shift = f_x + f_w - f_y`` holds)."""
        d = self.desc.layer
        f_w = 0 if d.is_pool else d.shift
        return QLayer(self.name, d, self.w, self.b, 0, f_w, 0, self.pwl,
                      format=self.format, compressed=self.compressed)


def expected_cycles(desc, cfg, latency):
    """``nfu_cycles + LATENCY``: the cycle count the engine must report for pass ``desc``."""
    return as_pass(desc).nfu_cycles(cfg) + latency


def expected_steps(desc, cfg):
    """NFU steps of pass ``desc``: ``dense_cycles``, or ``ikr_n`` per kernel group for an IKR
    pass."""
    return as_pass(desc).steps(cfg)


def _with_rails(t, gen, cfg, frac=0.04):
    """Set about ``frac`` of the elements to the rails ``qmin`` / ``qmax``."""
    pick = torch.rand(t.shape, generator=gen) < frac
    low = torch.rand(t.shape, generator=gen) < 0.5
    t = t.clone()
    t[pick & low] = cfg.qmin
    t[pick & ~low] = cfg.qmax
    return t


def _mnist_input(desc, gen, cfg, images):
    """Input from real MNIST crops: one random image and offset per channel."""
    n, size = images.shape[0], images.shape[1]

    def pick():
        return torch.as_tensor(images[int(torch.randint(n, (1,), generator=gen))].copy(),
                               dtype=torch.int64)

    if desc.kind == "fc":
        # An FC input is a window of one flattened image (repeated when it is too short).
        flat = pick().flatten().repeat(-(-desc.n_in // (size * size)))
        start = int(torch.randint(flat.numel() - desc.n_in + 1, (1,), generator=gen))
        x = flat[start:start + desc.n_in]
    else:
        chans = []
        for _ in range(desc.n_in):
            h, w = min(desc.h_in, size), min(desc.w_in, size)
            oy = int(torch.randint(size - h + 1, (1,), generator=gen))
            ox = int(torch.randint(size - w + 1, (1,), generator=gen))
            crop = torch.zeros(desc.h_in, desc.w_in, dtype=torch.int64)
            crop[:h, :w] = pick()[oy:oy + h, ox:ox + w]
            chans.append(crop)
        x = torch.stack(chans)
    # Pixels 0..255 -> signed dw-bit values centred near zero, headroom below the rails.
    return (x - 64) << (cfg.dw - 9)


def make_case(name, desc, cfg, seed, images=None, act_fn=None, shift=None):
    """Build a :class:`Case` with random operands from ``seed``, rails included.

    Parameters
    ----------
    name : str
    desc : LayerDesc or PassDesc
        Its ``shift`` is replaced by a data-driven one (unless ``shift`` is given) so that
        most outputs land inside ``dw`` bits and a few saturate.
    cfg : AccelConfig
    seed : int
    images : (N, 28, 28) uint8 array, optional
        MNIST images for the input; uniform random values when None.
    act_fn : str, optional
        ``"sigmoid"`` or ``"tanh"`` for ``desc.act == "pwl"``.
    shift : int, optional
        Fixed requantisation shift.
    """
    gen = torch.Generator().manual_seed(seed)
    run = as_pass(desc)
    desc = run.layer
    if images is not None:
        x = _mnist_input(desc, gen, cfg, images)
    else:
        shape = (desc.n_in,) if desc.kind == "fc" else (desc.n_in, desc.h_in, desc.w_in)
        x = torch.randint(cfg.qmin, cfg.qmax + 1, shape, generator=gen)
    x = _with_rails(x, gen, cfg)
    w = b = pwl = None
    if not desc.is_pool:
        wshape = (desc.n_out, desc.n_in) + (() if desc.kind == "fc" else (desc.k, desc.k))
        span = 1 << (cfg.dw - 3)
        w = _with_rails(torch.randint(-span, span, wshape, generator=gen), gen, cfg)
        xb = x.view(1, *x.shape)
        acc = (fixed.linear_acc(xb, w) if desc.kind == "fc"
               else fixed.conv2d_acc(xb, w, None, desc.stride, desc.pad))
        if shift is None:
            top = float(acc.abs().double().quantile(0.9)) + 1
            shift = max(0, int(top).bit_length() - (cfg.dw - 2))
        bspan = 1 << (shift + cfg.dw - 3)
        b = torch.randint(-bspan, bspan, (desc.n_out,), generator=gen)
        desc = desc.with_(shift=shift)
    if desc.act == "pwl":
        frac = cfg.dw - 4
        pwl = fixed.pwl_table(act_fn or "sigmoid", frac, cfg.dw)
        desc = desc.with_(seg_shift=pwl.seg_shift)
    run = run.with_(layer=desc).check(cfg, None if b is None else int(b.abs().max()))
    count = fixed.SatCount()
    y = fixed.run_layer(run, x.unsqueeze(0), w, b, cfg.dw, pwl, count)[0]
    return Case(name, run, x, w, b, pwl, y, count.events,
                "mnist" if images is not None else "random")


def _rand(gen, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def dense_cases(cfg, seed=1, quick=False, images=None, extra=()):
    """The regression's dense cases for ``cfg``: NFU steps, conv, FC, pooling and each
    activation (:func:`slimnfu.sim.regression.regression_cases` adds the methods' cases).

    Channel counts are drawn so that some are not multiples of ``tn``/``ti``. ``extra`` is a
    list of ``(name, LayerDesc or PassDesc)`` added at the end. Every case is checked against
    ``cfg``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 40:
        raise ValueError(f"seed must be an integer in [0, 2**40), not {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    tn, ti = cfg.tn, cfg.ti
    specs = [
        ("nfu_step_mac", LayerDesc("conv", ti, tn), {}),
        ("nfu_step_partial_relu", LayerDesc("conv", max(1, ti - 1), max(1, tn - 1),
                                            act="relu"), {}),
        ("nfu_step_sh0", LayerDesc("conv", ti, tn), {"shift": 0}),
        ("nfu_step_fc_tanh", LayerDesc("fc", ti, tn, act="pwl"), {"act_fn": "tanh"}),
    ]
    acts = [("none", None), ("relu", None), ("pwl", "sigmoid"), ("pwl", "tanh")]
    n = 0
    for k in (1, 3, 5):
        for stride in (1, 2):
            for pad in (0, k // 2) if k > 1 else (0, 1):
                act, fn = acts[n % len(acts)]
                n += 1
                h = _rand(gen, max(k, 5), 11)
                w = _rand(gen, max(k, 5), 11)
                n_in = _rand(gen, 1, 2 * ti + 1)
                n_out = _rand(gen, 1, 2 * tn + 1)
                specs.append((f"conv{k}x{k}_s{stride}_p{pad}",
                              LayerDesc("conv", n_in, n_out, h, w, k, stride, pad, act=act),
                              {"act_fn": fn}))
    specs += [
        ("mnist_conv5x5_relu", LayerDesc("conv", 1, tn + 1, 28, 28, 5, act="relu"), {}),
        ("fc_none", LayerDesc("fc", _rand(gen, 2 * ti + 1, 6 * ti), _rand(gen, tn + 1, 3 * tn)),
         {}),
        ("fc_relu", LayerDesc("fc", 4 * ti + 3, 2 * tn + 1, act="relu"), {}),
        ("fc_pwl_sigmoid", LayerDesc("fc", 3 * ti + 1, tn + 2, act="pwl"),
         {"act_fn": "sigmoid"}),
        ("maxpool2_s2", LayerDesc("maxpool", tn + 1, tn + 1, 8, 8, 2, 2), {}),
        ("maxpool3_s2_relu", LayerDesc("maxpool", 3, 3, 9, 7, 3, 2, act="relu"), {}),
        ("avgpool2_s2", LayerDesc("avgpool", tn + 2, tn + 2, 8, 10, 2, 2), {}),
        ("avgpool4_s1_tanh", LayerDesc("avgpool", 2, 2, 7, 7, 4, 1, act="pwl"),
         {"act_fn": "tanh"}),
    ]
    specs += [(name, desc, {}) for name, desc in extra]
    if quick:
        specs = [s for s in specs if s[0] in QUICK] + [(n_, d, {}) for n_, d in extra]
    cases = []
    for i, (name, desc, kw) in enumerate(specs):
        d = as_pass(desc).layer
        imgs = images if (d.h_in * d.w_in > 1 or d.kind == "fc") else None
        cases.append(make_case(name, desc, cfg, seed * 1000 + i, imgs, **kw))
    return cases


def expected_counters(case, cfg, latency):
    """The counters the engine must report for ``case``: cycles, steps, multiplies (``tn*ti``
    a MAC step), saturation events and (with ``cfg.kgate``) gated multiplies."""
    desc = case.desc
    steps = expected_steps(desc, cfg)
    out = {"cycles": expected_cycles(desc, cfg, latency), "steps": steps,
           "mults": 0 if desc.layer.is_pool else steps * cfg.tn * cfg.ti,
           "sat_events": case.expected_sat}
    if cfg.kgate:
        out["gated"] = desc.gated_mults(cfg)
    return out


def case_job(case, cfg, latency):
    """The JSON-ready job for the cocotb testbench: descriptor value, loads, read count, and
    what the testbench must see (``expect``: the NBout words, the mask of each output tile's
    real lanes, the counters), so that its own verdict fails the results file."""
    desc = case.desc
    ql = case.layer()
    fmt = ql.weight_format
    fmt.accept(ql, cfg)
    (one_pass,) = fmt.passes(ql, cfg)
    # the case adds gating and placement to the pass its format makes, never another format
    if (one_pass.desc.ikr_n, one_pass.desc.perm) != (desc.ikr_n, desc.perm):
        raise ValueError(f"case {case.name}: format {case.format!r} runs ikr_n="
                         f"{one_pass.desc.ikr_n}, perm={one_pass.desc.perm!r}; the case's "
                         f"pass has ikr_n={desc.ikr_n}, perm={desc.perm!r}")
    desc.check(cfg, one_pass.max_abs_bias)
    loads = [[int(LoadSel.NBIN), layout.pack_input(case.x, cfg)]]
    loads += [[int(m.sel), m.words] for m in one_pass.memories.values()]
    counters = expected_counters(case, cfg, latency)
    n_out = desc.layer.n_out
    expect = {"words": layout.pack_output(
                  case.expected.reshape(n_out, desc.h_out, desc.w_out), cfg),
              "lane_masks": layout.output_lane_masks(n_out, cfg),
              "words_per_tile": desc.h_out * desc.w_out, "counters": counters}
    return {"name": case.name, "desc_value": descriptor_value(desc, cfg), "loads": loads,
            "nbout_words": desc.nbout_words(cfg), "timeout_cycles": 2 * counters["cycles"] + 1000,
            "expect": expect}
