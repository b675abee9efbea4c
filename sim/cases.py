"""Co-simulation cases: random layers from a seed, MNIST stimulus, and their expected outputs.

A :class:`Case` is one engine pass, in any weight format: its :class:`PassDesc`, integer
tensors, the format's record, and the expected output from the integer reference
(:func:`slimnfu.fixed.run_layer`, the golden model). Cases are checked against the config
(:meth:`PassDesc.check`) when they are made, so a layer the engine cannot run stops before
any simulation.

:func:`case_job` turns a case into the plain-JSON job the cocotb testbench reads: the
descriptor value and the memory words its weight format stores
(:meth:`slimnfu.formats.base.WeightFormat.passes`); no torch on the simulator side.

A case is also a file (:func:`write_case`, :func:`read_case`): the pass, the config as
changes from a named one, and the operands, so that ``slimnfu cosim --layer @FILE`` replays
what the fuzzer (:mod:`slimnfu.sim.fuzz`) or a network's first divergence
(:mod:`slimnfu.sim.divergence`) found.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from slimnfu import fixed
from slimnfu.atomic import atomic_write, parse_json
from slimnfu.config import CONFIGS, LayerDesc, PassDesc, as_pass, get_config
from slimnfu.contract import LoadSel, descriptor_value
from slimnfu.formats import QLayer, layout
from slimnfu.formats.base import get_format, record_from_state, record_to_state
from slimnfu.rtl.engine import LayerEngine

__all__ = ["Case", "make_case", "dense_cases", "case_job", "expected_cycles", "expected_steps",
           "expected_counters", "QUICK", "reference", "pass_cases", "case_to_dict",
           "case_from_dict", "write_case", "read_case", "CASE_SCHEMA", "untouched_words"]

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


def expected_cycles(desc, cfg):
    """``nfu_cycles + LayerEngine.latency(cfg, desc)``: the cycle count the engine must
    report for pass ``desc`` (a permuted pass pays the permutation pipeline, no other does)."""
    run = as_pass(desc)
    return run.nfu_cycles(cfg) + LayerEngine.latency(cfg, run)


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


def expected_counters(case, cfg):
    """The counters the engine must report for ``case``: cycles, steps, multiplies (``tn*ti``
    a MAC step), saturation events and (with ``cfg.kgate``) gated multiplies."""
    desc = case.desc
    steps = expected_steps(desc, cfg)
    out = {"cycles": expected_cycles(desc, cfg), "steps": steps,
           "mults": 0 if desc.layer.is_pool else steps * cfg.tn * cfg.ti,
           "sat_events": case.expected_sat}
    if cfg.kgate:
        out["gated"] = desc.gated_mults(cfg)
    return out


def reference(desc, x, w, b, pwl, cfg):
    """The golden output of pass ``desc`` on one sample ``x`` (no batch dimension) and its
    saturation events: :func:`slimnfu.fixed.run_layer` on the weights the kernel gate lets
    through (:func:`slimnfu.fixed.gated_weights`). Returns ``(y, sat_events)``."""
    count = fixed.SatCount()
    y = fixed.run_layer(desc, x.unsqueeze(0), fixed.gated_weights(desc, w, cfg.tn), b, cfg.dw,
                        pwl, count)
    return y[0], count.events


def pass_cases(ql, x, cfg, prefix="", source="network"):
    """A :class:`Case` for every engine pass of model layer ``ql`` on its int64 input ``x``
    (one sample, no batch dimension), in program order.

    Each pass applies the operands its format gives it
    (:meth:`~slimnfu.formats.base.WeightFormat.pass_weights`) to the layer's input (its first
    ``n_in`` channels), or, for a pass that reads the outputs the earlier passes wrote
    (``reads == "kept"``), to those."""
    xin = x.reshape(-1) if ql.desc.kind == "fc" else x
    cases, outputs = [], []
    for p, w, b, fmt, rec in ql.weight_format.pass_weights(ql, cfg):
        # a pass may read only the first channels of the input (im2col: the centre taps)
        px = torch.cat(outputs) if p.reads == "kept" else xin[:p.desc.layer.n_in]
        y, sat = reference(p.desc, px, w, b, ql.pwl, cfg)
        outputs.append(y)
        cases.append(Case(prefix + p.name, p.desc, px, w, b, ql.pwl, y, sat, source, fmt, rec))
    return cases


def untouched_words(desc, cfg, margin=16):
    """``[[address, low_bits], ...]``: NBout bits a pass must leave as they were: up to
    ``margin`` words on either side of the words it writes, and the ``lane_skip`` lanes of
    its first output tile."""
    words, per_tile = desc.nbout_words(cfg), desc.h_out * desc.w_out
    base, width = desc.nbout_base, cfg.tn * cfg.dw
    margin = min(margin, per_tile)
    spans = [[a, width] for a in range(max(0, base - margin), base)]
    spans += [[a, width] for a in range(base + words, min(cfg.nbout_depth,
                                                          base + words + margin))]
    if desc.lane_skip:
        spans += [[a, desc.lane_skip * cfg.dw] for a in range(base, base + per_tile)]
    return spans


def case_job(case, cfg):
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
    loads += [[int(m.sel), m.loaded] for m in one_pass.memories.values()]
    counters = expected_counters(case, cfg)
    n_out = desc.layer.n_out
    masks = layout.output_lane_masks(n_out, cfg)
    # the lanes below lane_skip of the first tile are not written (untouched_words)
    masks[0] &= ~((1 << (desc.lane_skip * cfg.dw)) - 1)
    expect = {"words": layout.pack_output(
                  case.expected.reshape(n_out, desc.h_out, desc.w_out), cfg),
              "lane_masks": masks,
              "words_per_tile": desc.h_out * desc.w_out, "counters": counters}
    return {"name": case.name, "desc_value": descriptor_value(desc, cfg), "loads": loads,
            "nbout_base": desc.nbout_base, "nbout_words": desc.nbout_words(cfg),
            "untouched": untouched_words(desc, cfg),
            "timeout_cycles": 2 * counters["cycles"] + 1000, "expect": expect}


#: The ``schema`` of a case file.
CASE_SCHEMA = "slimnfu-case"


def _tensor(t):
    return None if t is None else {"shape": list(t.shape), "values": t.reshape(-1).tolist()}


def _base_config(cfg):
    """The named config ``cfg`` is derived from (its name's first part), else ``tiny``."""
    base = cfg.name.split("+")[0]
    return base if base in CONFIGS else "tiny"


def case_to_dict(case, cfg, note=None):
    """A case as plain JSON data: the pass, the config as changes from a named one, the
    operands and the weight format's record; ``note`` (any JSON) says where it came from.
    The golden output is not stored: :func:`case_from_dict` computes it again."""
    base = _base_config(cfg)
    return {"schema": CASE_SCHEMA, "version": 1, "name": case.name, "source": case.source,
            "config": {"base": base, "set": cfg.changes_from(get_config(base))},
            "pass": case.desc.to_dict(), "format": case.format,
            "compressed": None if case.compressed is None else record_to_state(case.compressed),
            "x": _tensor(case.x), "w": _tensor(case.w), "b": _tensor(case.b),
            "pwl": None if case.pwl is None else case.pwl.to_dict(), "note": note}


def case_from_dict(d, where="case"):
    """The inverse of :func:`case_to_dict`: ``(cfg, case)``, the case checked against the
    config and its expected output computed by the golden model (:func:`reference`).
    ``ValueError`` naming ``where`` and the field of the first problem."""
    def field(name, check, what):
        if name not in d or not check(d[name]):
            raise ValueError(f"{where}: {name}: must be {what}, not {d.get(name)!r}")
        return d[name]

    if not isinstance(d, dict) or d.get("schema") != CASE_SCHEMA or d.get("version") != 1:
        raise ValueError(f"{where}: not a case file (schema {CASE_SCHEMA!r}, version 1)")
    name = field("name", lambda v: isinstance(v, str) and v, "a name")
    conf = field("config", lambda v: isinstance(v, dict) and set(v) == {"base", "set"}
                 and isinstance(v["set"], dict), "{\"base\": NAME, \"set\": {KEY: VALUE}}")
    step = "config"
    try:
        cfg = get_config(conf["base"]).changed(**conf["set"])
        step = "pass"
        desc = PassDesc.from_dict(field("pass", lambda v: isinstance(v, dict), "an object"))
        step = "format"
        fmt = get_format(d.get("format"), "format")
        rec = d.get("compressed")
        rec = None if fmt.record is None else record_from_state(fmt.record, rec or {})
        tensors = {}
        for key in ("x", "w", "b"):
            step = key
            t = d.get(key)
            tensors[key] = None if t is None else \
                torch.tensor(t["values"], dtype=torch.int64).reshape(t["shape"])
        step = "pwl"
        pwl = None if d.get("pwl") is None else fixed.PwlTable(**d["pwl"])
        step = "operands"
        y, sat = reference(desc, tensors["x"], tensors["w"], tensors["b"], pwl, cfg)
        case = Case(name, desc, tensors["x"], tensors["w"], tensors["b"], pwl, y, sat,
                    d.get("source", "file"), fmt.name, rec)
        case.layer().weight_format.accept(case.layer(), cfg)
        desc.check(cfg, None if case.b is None or not case.b.numel()
                   else int(case.b.abs().max()))
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{where}: {step}: {exc}") from None
    return cfg, case


def write_case(path, case, cfg, note=None):
    """Write ``case`` (on ``cfg``) to ``path`` as JSON, atomically; returns the path."""
    path = Path(path)
    text = json.dumps(case_to_dict(case, cfg, note), indent=1)
    # one line per list of numbers (operands, shapes), not one line per number
    text = re.sub(r"\[\s+([-\d,\s]+?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    atomic_write(path, text + "\n")
    return path


def read_case(path):
    """``(cfg, case)`` from a file of :func:`write_case`; ``ValueError`` naming the file
    when it cannot be read or is not a valid case."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return case_from_dict(parse_json(text, str(path), "case"), str(path))
