"""IKR co-simulation: random IKR layers, cocotb jobs, and their check against the reference.

An IKR conv layer is a conv whose weights are zero off-pattern, so the golden model is
:func:`slimnfu.compress.fixed.run_layer` on the masked weights. A job loads NBin, SB (the kept
values, :func:`slimnfu.gen.layout.pack_ikr_weights`), bias, the IKR index memory and the
pattern table, and runs the layer through the same testbench as the dense regression
(:mod:`slimnfu.sim.tb_engine`). Cycles must equal ``LayerDesc.ikr_cycles + LATENCY``.
"""

import torch

from slimnfu.compress import fixed
from slimnfu.config import LayerDesc
from slimnfu.gen import layout
from slimnfu.rtl.descriptor import descriptor_value

__all__ = ["random_ikr_layer", "ikr_job", "dense_job", "check_result", "random_cases",
           "run_ikr_cosim"]


def random_ikr_layer(desc, n_pat, seed, cfg):
    """Random operands of IKR layer ``desc``: ``x, w (masked), b, patterns (P, n), index``."""
    gen = torch.Generator().manual_seed(seed)
    kk = desc.k * desc.k
    patterns = torch.stack([torch.randperm(kk, generator=gen)[:desc.ikr_n].sort().values
                            for _ in range(n_pat)])
    index = torch.randint(n_pat, (desc.n_out, desc.n_in), generator=gen)
    x = torch.randint(cfg.qmin, cfg.qmax + 1, (desc.n_in, desc.h_in, desc.w_in), generator=gen)
    span = 1 << (cfg.dw - 2)
    w = torch.randint(-span, span, (desc.n_out, desc.n_in, kk), generator=gen)
    w[torch.rand(w.shape, generator=gen) < 0.05] = cfg.qmin
    mask = torch.zeros_like(w)
    mask.scatter_(2, patterns[index], 1)
    w = (w * mask).view(desc.n_out, desc.n_in, desc.k, desc.k)
    b = torch.randint(-1 << 20, 1 << 20, (desc.n_out,), generator=gen)
    return x, w, b, patterns, index


def ikr_job(name, desc, x, w, b, patterns, index, cfg, latency, pwl=None):
    """The JSON job (see :func:`slimnfu.sim.cases.case_job`) of an IKR layer."""
    from slimnfu.compress.ikr import check_ikr
    from slimnfu.rtl.engine import LoadSel

    check_ikr(name, desc.k, desc.ikr_n, patterns, index, cfg.ikr_patterns)
    values = w.reshape(desc.n_out, desc.n_in, -1).gather(2, patterns[index])
    loads = [[LoadSel.NBIN, layout.pack_input(x, cfg)],
             [LoadSel.SB, layout.pack_ikr_weights(values, cfg)],
             [LoadSel.BIAS, layout.pack_bias(b, cfg)],
             [LoadSel.IKR_INDEX, layout.pack_ikr_index(index, cfg)],
             [LoadSel.IKR_TABLE, layout.pack_ikr_table(patterns, desc.k, cfg)]]
    if desc.act == "pwl":
        loads.append([LoadSel.PWL, layout.pack_pwl(pwl, cfg)])
    want = desc.ikr_cycles(cfg) + latency
    return {"name": name, "desc_value": descriptor_value(desc, cfg), "loads": loads,
            "nbout_words": desc.nbout_words(cfg), "timeout_cycles": 2 * want + 1000}


def dense_job(name, desc, x, w, b, cfg, latency, pwl=None):
    """The JSON job of the same layer run dense (``ikr_n = 0``) on the same engine."""
    from slimnfu.rtl.engine import LoadSel

    desc = LayerDesc(**{**desc.to_dict(), "ikr_n": 0})
    loads = [[LoadSel.NBIN, layout.pack_input(x, cfg)],
             [LoadSel.SB, layout.pack_weights(w, cfg)], [LoadSel.BIAS, layout.pack_bias(b, cfg)]]
    if desc.act == "pwl":
        loads.append([LoadSel.PWL, layout.pack_pwl(pwl, cfg)])
    want = desc.dense_cycles(cfg) + latency
    return {"name": name, "desc_value": descriptor_value(desc, cfg), "loads": loads,
            "nbout_words": desc.nbout_words(cfg), "timeout_cycles": 2 * want + 1000}


def check_result(raw, desc, x, w, b, cfg, latency, pwl=None):
    """Compare one raw result with the reference; return a dict (``passed``, cycles, ...)."""
    expected_cycles = (desc.ikr_cycles(cfg) if desc.ikr_n else desc.dense_cycles(cfg)) + latency
    counters = raw.get("counters") or {}
    out = {"name": raw["name"], "passed": False, "cycles": counters.get("cycles"),
           "expected_cycles": expected_cycles, "error": raw.get("error"),
           "desc": desc.to_dict()}
    if out["error"]:
        return out
    y = layout.unpack_output(raw["words"], desc.n_out, desc.h_out, desc.w_out, cfg)
    want = fixed.run_layer(desc, x.unsqueeze(0), w, b, cfg.dw, pwl)[0]
    want = want.reshape(desc.n_out, desc.h_out, desc.w_out)
    bad = int((y != want).sum())
    problems = [f"{bad} outputs differ from the reference"] if bad else []
    if out["cycles"] != expected_cycles:
        problems.append(f"cycles {out['cycles']} != expected {expected_cycles}")
    out.update(mismatches=bad, error="; ".join(problems) or None, passed=not problems)
    return out


def random_cases(cfg, seed=1):
    """Random IKR layers: 3x3 and 5x5, stride 1/2, padding, n = 1 .. K*K, P = 1 .. 16."""
    gen = torch.Generator().manual_seed(seed)
    specs = []
    for k, n, p in ((3, 1, 1), (3, 9, 1), (3, 4, 16), (5, 1, 3), (5, 25, 2), (5, 7, 16),
                    (3, 2, 5)):
        if k > cfg.ikr_kmax:
            continue
        stride = 1 + int(torch.randint(2, (1,), generator=gen))
        pad = int(torch.randint(k // 2 + 1, (1,), generator=gen))
        h = int(torch.randint(k + 1, k + 6, (1,), generator=gen))
        n_in = int(torch.randint(1, 2 * cfg.ti + 2, (1,), generator=gen))
        n_out = int(torch.randint(1, 2 * cfg.tn + 2, (1,), generator=gen))
        act = ("none", "relu")[len(specs) % 2]
        desc = LayerDesc("conv", n_in, n_out, h, h + 1, k, stride, pad, shift=14, act=act,
                         ikr_n=n)
        specs.append((f"ikr_k{k}_n{n}_p{p}_s{stride}", desc, p))
    return [(name, desc, random_ikr_layer(desc, p, seed * 100 + i, cfg))
            for i, (name, desc, p) in enumerate(specs)]


def run_ikr_cosim(cfg, cases, sim, with_dense=False):
    """Run ``cases`` (``(name, desc, (x, w, b, patterns, index))``) on ``sim``; return results.

    With ``with_dense``, each layer also runs dense on the same engine (``<name>_dense``).
    """
    from slimnfu.rtl.engine import LayerEngine
    from slimnfu.sim.runner import build_sim, run_jobs

    latency = LayerEngine.LATENCY
    jobs, checks = [], []
    for name, desc, (x, w, b, patterns, index) in cases:
        jobs.append(ikr_job(name, desc, x, w, b, patterns, index, cfg, latency))
        checks.append((desc, x, w, b))
        if with_dense:
            jobs.append(dense_job(f"{name}_dense", desc, x, w, b, cfg, latency))
            checks.append((LayerDesc(**{**desc.to_dict(), "ikr_n": 0}), x, w, b))
    runner, dirs = build_sim(sim, cfg)
    raw = {r["name"]: r for r in run_jobs(runner, dirs, jobs)}
    results = []
    for job, (desc, x, w, b) in zip(jobs, checks):
        res = check_result(raw[job["name"]], desc, x, w, b, cfg, latency)
        res.update(sim=sim, config=cfg.name, build_s=round(dirs["build_s"], 2),
                   wall_s=round(raw[job["name"]].get("wall_s", 0.0), 3))
        results.append(res)
    return results


def regression_ikr_cases(cfg, seed=1):
    """The IKR layers of :func:`random_cases` as regression :class:`Case` objects (``make
    cosim`` with an ``ikr`` config), loading their own memories through ``engine_loads``."""
    from dataclasses import dataclass

    from slimnfu.sim.cases import Case

    @dataclass
    class IkrCase(Case):
        patterns: torch.Tensor = None
        index: torch.Tensor = None

        def engine_loads(self, cfg):
            return ikr_job(self.name, self.desc, self.x, self.w, self.b, self.patterns,
                           self.index, cfg, 0)["loads"]

    out = []
    for name, desc, (x, w, b, patterns, index) in random_cases(cfg, seed):
        count = fixed.SatCount()
        y = fixed.run_layer(desc, x.unsqueeze(0), w, b, cfg.dw, None, count)[0]
        out.append(IkrCase(name, desc, x, w, b, None, y, count.events, "random",
                           patterns, index))
    return out
