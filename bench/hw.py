"""``slimnfu bench hw``: the dense accelerator measured on Caffe LeNet-5 layer shapes.

Writes ``build/bench/hw.json`` and prints a Markdown table:

* RTL cycles (Verilator co-simulation of the ``diannao`` engine, MNIST stimulus, outputs
  checked bit for bit) per LeNet-5 layer, next to the analytic dense count, and the NFU
  utilisation ``macs / (Tn*Ti*cycles)``;
* simulation speed in cycles per second of Verilator, Icarus and amaranth.sim on the same
  layer in one run (every simulated clock cycle counted: loads, the layer and NBout reads);
* the synthesis reports of ``tiny``, ``small`` and ``diannao`` (``synth/*.json`` in the build
  root, synthesised when missing), and of ``tiny`` with each method feature on (Yosys only);
* the area of each Amaranth component (Yosys generic synthesis, not flattened: each block's
  own LUTs, flip-flops and memory bits) of ``tiny`` and of ``tiny`` with each feature on, so
  a method's hardware cost shows block by block.

With ``--sweep`` it runs the design-space sweep of :mod:`slimnfu.bench.hw_sweep` instead
(``bench/hw_sweep.json``, ``.md`` and ``.png`` unless ``--out``).
"""

import json
import time
from pathlib import Path

from slimnfu import paths
from slimnfu.bench.common import write_report
from slimnfu.config import LayerDesc, get_config

__all__ = ["LENET5", "add_arguments", "main"]

#: Caffe LeNet-5 layer shapes (MNIST 28x28 input).
LENET5 = [
    ("conv1", LayerDesc("conv", 1, 20, 28, 28, 5)),
    ("pool1", LayerDesc("maxpool", 20, 20, 24, 24, 2, 2)),
    ("conv2", LayerDesc("conv", 20, 50, 12, 12, 5)),
    ("pool2", LayerDesc("maxpool", 50, 50, 8, 8, 2, 2)),
    ("fc1", LayerDesc("fc", 800, 500, act="relu")),
    ("fc2", LayerDesc("fc", 500, 10)),
]

SYNTH_CONFIGS = ("tiny", "small", "diannao")
#: Method features whose hardware the per-block area table shows, each on ``tiny``.
AREA_FEATURES = ("ikr", "perm", "kgate")


def add_arguments(parser):
    from slimnfu.bench import hw_sweep

    parser.add_argument("--sweep", action="store_true",
                        help="synthesise the engine across NFU sizes, widths and method "
                             "features instead (table and plot: bench/hw_sweep.*)")
    parser.add_argument("--config", default="diannao", help="config of the cycle and speed "
                        "runs (default diannao)")
    parser.add_argument("--speed-layer", default="fc1", choices=[n for n, _ in LENET5],
                        help="layer of the simulator speed comparison (default fc1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-synth", action="store_true",
                        help="do not synthesise configs whose report is missing")
    parser.add_argument("--synth-only", action="store_true",
                        help="keep the cycle and speed rows of --out; only re-read the "
                             "synthesis reports (build/synth/<config>.json)")
    hw_sweep.add_arguments(parser)


def _job_cycles(desc, cfg, cycles):
    """Every clock cycle one testbench job simulates: reset, loads, the layer, NBout reads."""
    loads = desc.nbin_words(cfg) + (0 if desc.layer.is_pool else desc.sb_words(cfg) +
                                    desc.tiles(cfg)[1])
    return 3 + loads + 1 + cycles + desc.nbout_words(cfg)


def _speed_amaranth(cfg, case):
    import torch

    from slimnfu.sim.amaranth_driver import run_layer_amaranth

    y, counters, wall = run_layer_amaranth(cfg, case.desc, case.x, case.w, case.b, case.pwl)
    ok = torch.equal(y.reshape(case.expected.shape), case.expected)
    return {"sim": "amaranth.sim", "passed": bool(ok), "cycles": counters["cycles"],
            "sim_cycles": counters["sim_cycles"], "wall_s": round(wall, 3),
            "cycles_per_s": round(counters["sim_cycles"] / wall, 1)}


def _synth_reports(no_synth):
    """The reports of :data:`SYNTH_CONFIGS` and of ``tiny`` with each of
    :data:`AREA_FEATURES` on (``synth/*.json``, synthesised when missing unless
    ``no_synth``)."""
    from slimnfu.gen.synth import synth_config

    tiny = get_config("tiny")
    configs = [(name, get_config(name), name != "diannao") for name in SYNTH_CONFIGS]
    configs += [(c.name, c, False) for c in (tiny.changed(**{f: True}) for f in AREA_FEATURES)]
    reports = {}
    for name, cfg, pnr in configs:
        path = paths.build_root() / "synth" / f"{name}.json"
        if path.exists():
            reports[name] = json.loads(path.read_text())
        elif not no_synth:
            print(f"synthesising {name} (build/synth/{name}.json is missing) ...", flush=True)
            reports[name] = synth_config(cfg, pnr=pnr)
        else:
            reports[name] = None
    return reports


def _block_markdown(reports):
    """One row per Amaranth component, one column per ``tiny`` build: the component's own
    generic LUTs / flip-flops / memory bits."""
    builds = {name: r["generic"]["blocks"] for name, r in reports.items()
              if name.startswith("tiny") and r and r.get("generic", {}).get("blocks")}
    if not builds:
        return []
    names = sorted({b for blocks in builds.values() for b in blocks})
    lines = ["", "**Area by component (Yosys generic synthesis, not flattened; LUT / FF / "
                 "memory bits of each component's own logic, multipliers as LUTs)**", "",
             "| component | " + " | ".join(f"`{n}`" for n in builds) + " |",
             "|---|" + "---:|" * len(builds)]
    for b in names:
        cells = []
        for blocks in builds.values():
            f = blocks.get(b)
            cells.append(f"{f['luts']} / {f['ffs']} / {f['memory_bits']}" if f else "-")
        lines.append(f"| {b or '(top)'} | " + " | ".join(cells) + " |")
    totals = [sum(f["luts"] for f in blocks.values()) for blocks in builds.values()]
    lines.append("| total LUTs | " + " | ".join(str(t) for t in totals) + " |")
    return lines


def _markdown(result):
    cfg = result["config"]
    lines = [f"**LeNet-5 layers on `{cfg}` (Tn = Ti = {result['tn']}), Verilator "
             "co-simulation, outputs bit-exact with the integer reference**", "",
             "| layer | shape | useful MACs | dense cycles | RTL cycles | LATENCY | "
             "NFU utilisation | bit-exact |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in result["layers"]:
        lines.append(f"| {r['layer']} | {r['shape']} | {r['macs']} | {r['dense_cycles']} | "
                     f"{r['rtl_cycles']} | {r['latency']} | {100 * r['utilisation']:.1f}% | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    sp = result["sim_speed"]
    lines += ["", f"**Simulation speed on {sp['layer']} ({sp['shape']}), one run**", "",
              "| simulator | simulated cycles | wall s | cycles/s | bit-exact |",
              "|---|---:|---:|---:|---|"]
    for r in sp["runs"]:
        lines.append(f"| {r['sim']} | {r['sim_cycles']} | {r['wall_s']} | "
                     f"{r['cycles_per_s']:.0f} | {'yes' if r['passed'] else 'NO'} |")
    lines += ["", "**Synthesis (Yosys synth_ecp5; nextpnr-ecp5 out-of-context)**", "",
              "| config | NFU mults | LUT4 | FF | MULT18X18D | DP16KD | memory bits | "
              "part | fmax MHz | fits |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for name, s in result["synth"].items():
        if s is None:
            lines.append(f"| {name} | - | - | - | - | - | - | - | - | not synthesised |")
            continue
        fmax = f"{s['fmax_mhz']:.1f}" if s.get("fmax_mhz") else "-"
        lines.append(f"| {name} | {s['nfu_multipliers']} | {s['luts']} | {s['ffs']} | "
                     f"{s['dsps']} | {s['brams']} | {s['memory_bits']} | {s['part'] or '-'} | "
                     f"{fmax} | {s['fits']} |")
    lines += _block_markdown(result["synth"])
    return "\n".join(lines)


def main(args):
    """Run the benchmark (heavy imports happen here); return 1 if any run was not bit-exact
    (with ``--sweep``: :func:`slimnfu.bench.hw_sweep.main`)."""
    if getattr(args, "sweep", False):
        from slimnfu.bench import hw_sweep
        from slimnfu.bench.common import default_out

        if getattr(args, "out", None) in (None, default_out("hw")):
            args.out = default_out("hw_sweep")
        return hw_sweep.main(args)
    from slimnfu.rtl.engine import LayerEngine
    from slimnfu.sim.cases import make_case
    from slimnfu.sim.mnist import mnist_images
    from slimnfu.sim.runner import run_regression

    out = Path(getattr(args, "out", None) or paths.build_root() / "bench" / "hw.json")
    if getattr(args, "synth_only", False):
        if not out.is_file():
            raise ValueError(f"--synth-only needs the rows of an earlier run in {out}")
        result = json.loads(out.read_text())
        result["synth"] = _synth_reports(True)
        result["markdown"] = _markdown(result)
        write_report(out, result, result["markdown"])
        return 0
    cfg = get_config(getattr(args, "config", "diannao"))
    speed_layer = getattr(args, "speed_layer", "fc1")
    seed = getattr(args, "seed", 1)
    for name, desc in LENET5:
        desc.check(cfg)
    images = mnist_images(1000)
    cases = [make_case(name, desc, cfg, seed * 100 + i, images)
             for i, (name, desc) in enumerate(LENET5)]
    t0 = time.perf_counter()
    entries = {e["name"]: e for e in run_regression(cfg, cases, sims=["verilator"])}
    layers = []
    for case in cases:
        e, d = entries[case.name], case.desc.layer
        shape = (f"{d.kind} {d.n_in}->{d.n_out}" +
                 ("" if d.kind == "fc" else f" {d.k}x{d.k}/{d.stride} on {d.h_in}x{d.w_in}"))
        cycles = e["cycles"] or 0
        layers.append({"layer": case.name, "shape": shape, "desc": d.to_dict(),
                       "macs": d.macs(), "dense_cycles": d.dense_cycles(cfg),
                       "rtl_cycles": e["cycles"], "latency": LayerEngine.latency(cfg, case.desc),
                       "utilisation": d.macs() / (cfg.tn * cfg.ti * cycles) if cycles else 0.0,
                       "passed": e["passed"], "mults": e["mults"],
                       "sat_events": e["sat_events"], "error": e["error"]})

    speed_case = next(c for c in cases if c.name == speed_layer)
    runs = []
    for sim in ("verilator", "icarus"):
        e = (entries[speed_case.name] if sim == "verilator" else
             run_regression(cfg, [speed_case], sims=[sim])[0])
        sim_cycles = _job_cycles(speed_case.desc, cfg, e["cycles"] or 0)
        runs.append({"sim": sim, "passed": e["passed"], "cycles": e["cycles"],
                     "sim_cycles": sim_cycles, "wall_s": e["wall_s"],
                     "cycles_per_s": round(sim_cycles / e["wall_s"], 1)})
    print(f"amaranth.sim on {speed_layer} ...", flush=True)
    runs.append(_speed_amaranth(cfg, speed_case))

    result = {
        "config": cfg.name, "tn": cfg.tn, "ti": cfg.ti, "accel": cfg.to_dict(),
        "layers": layers,
        "sim_speed": {"layer": speed_layer, "shape": next(r["shape"] for r in layers
                                                         if r["layer"] == speed_layer),
                      "runs": runs,
                      "note": "cycles/s counts every simulated clock cycle of the job (reset, "
                              "buffer loads, the layer, NBout reads); cocotb drives loads and "
                              "reads from Python, one call per cycle"},
        "synth": _synth_reports(getattr(args, "no_synth", False)),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    result["markdown"] = _markdown(result)
    write_report(out, result, result["markdown"])
    failed = [r["layer"] for r in layers if not r["passed"]] + \
        [r["sim"] for r in runs if not r["passed"]]
    return 1 if failed else 0
