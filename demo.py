"""``slimnfu demo``: the dense accelerator, start to finish, on a real conv layer.

1. Train Caffe LeNet-5 on MNIST, or load the cached checkpoint.
2. Quantise it to the fixed-point contract (scales calibrated on the calibration split).
3. Emit the Verilog of the layer engine for the chosen config.
4. Synthesise it with Yosys (generic and ECP5) and place and route it with nextpnr-ecp5; a
   report whose Verilog hash matches is reused.
5. Run LeNet-5's first conv layer (20 filters of 5x5) on real MNIST test images through the RTL
   on Verilator and Icarus, and compare every output with the integer reference bit for bit,
   and the cycle count with the analytic dense count.

The report is printed and written to ``build/demo/report.json``.
"""

import json
import sys
import time
from pathlib import Path

__all__ = ["register", "run_demo"]


def register(sub):
    p = sub.add_parser(
        "demo", help="train, quantise, generate, synthesise and co-simulate LeNet-5's conv1",
        description=__doc__.split("\n\n")[0] + " Writes build/demo/report.json.")
    p.add_argument("--config", default="tiny", help="accelerator config (default: tiny)")
    p.add_argument("--images", type=int, default=2,
                   help="MNIST test images to run through the RTL (default: 2)")
    p.add_argument("--sim", nargs="+", default=["verilator", "icarus"],
                   help="simulators (default: verilator icarus)")
    p.add_argument("--no-synth", action="store_true", help="skip synthesis")
    p.add_argument("--waves", action="store_true", help="dump waveforms")
    p.add_argument("--out", default="build/demo/report.json", help="report JSON path")
    p.set_defaults(func=run_demo)


def run_demo(args):
    """Run the demo; returns 0 when every image was bit-exact on every simulator."""
    from slimnfu.config import get_config
    from slimnfu.sim.runner import SIMS

    cfg = get_config(args.config)
    bad = [s for s in args.sim if s not in SIMS]
    if bad:
        raise ValueError(f"--sim must be among {', '.join(SIMS)}, not {bad[0]!r}")
    if not 1 <= args.images <= 100:
        raise ValueError(f"--images must be in [1, 100], not {args.images}")

    from slimnfu.compress import data, fixed
    from slimnfu.compress.quant import quantize_input, quantize_model
    from slimnfu.compress.train import train
    from slimnfu.gen.verilog import atomic_write, emit_engine
    from slimnfu.gen.synth import synth_config
    from slimnfu.rtl.engine import LayerEngine
    from slimnfu.sim.cases import Case
    from slimnfu.sim.runner import run_regression

    # Fail on missing data before any long step.
    data.verify("mnist")
    t0 = time.monotonic()
    print("[1/5] LeNet-5 on MNIST (trained, or the cached checkpoint)", flush=True)
    model, info = train("lenet5")
    how = "cached" if info["cache_hit"] else f"trained in {info['train_s']:.0f} s"
    print(f"      float test accuracy {info['acc_test']:.2f}% ({how})")
    print("[2/5] quantising on the calibration split", flush=True)
    calib, _ = data.load("mnist", "calib")
    qmodel = quantize_model(model, calib, dw=cfg.dw, acc=cfg.acc)
    conv1 = qmodel.layers[0]
    conv1.desc.check(cfg, int(conv1.b.abs().max()))

    print(f"[3/5] emitting Verilog for config {cfg.name!r}", flush=True)
    emit_engine(cfg)
    synth, reused = None, False
    if not args.no_synth:
        print("[4/5] synthesising (Yosys generic + ECP5, nextpnr-ecp5)", flush=True)
        synth = synth_config(cfg, reuse=True)
        reused = bool(synth.pop("reused", False))
    else:
        print("[4/5] synthesis skipped (--no-synth)")

    print(f"[5/5] co-simulating conv1 on {args.images} MNIST test image(s)", flush=True)
    images, labels = data.load("mnist", "test")
    x = quantize_input(qmodel, images[:args.images])
    cases = []
    for i in range(args.images):
        count = fixed.SatCount()
        y = conv1.run(x[i:i + 1], cfg.dw, count)[0]
        cases.append(Case(f"lenet5_conv1_img{i}", conv1.desc, x[i], conv1.w, conv1.b,
                          conv1.pwl, y, count.events, "mnist"))
    entries = run_regression(cfg, cases, sims=args.sim, waves=args.waves,
                             log=lambda msg: print("      " + msg, flush=True))

    report = {
        "config": cfg.to_dict(),
        "layer": conv1.desc.to_dict(),
        "acc_float": info["acc_test"],
        "dense_cycles": conv1.desc.dense_cycles(cfg),
        "latency": LayerEngine.LATENCY,
        "macs": conv1.desc.macs(),
        "cosim": entries,
        "synth": None if synth is None else {k: synth.get(k) for k in (
            "cells", "luts", "ffs", "dsps", "brams", "fmax_mhz", "part", "fits")},
        "synth_reused": reused,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    atomic_write(Path(args.out), json.dumps(report, indent=1) + "\n")
    print(_format(report, cfg))
    failed = [e for e in entries if not e["passed"]]
    for e in failed:
        print(f"FAIL {e['name']} on {e['sim']}: {e['error']}", file=sys.stderr)
    print(f"report written to {args.out}")
    return 1 if failed else 0


def _format(report, cfg):
    lines = ["", f"slimnfu demo: LeNet-5 conv1 on config {cfg.name!r} "
                 f"({cfg.tn}x{cfg.ti} NFU, DW {cfg.dw}, ACC {cfg.acc})", ""]
    lines.append("| image | simulator | bit-exact | RTL cycles | dense + latency | "
                 "NFU utilisation | wall s |")
    lines.append("|---|---|---|---:|---:|---:|---:|")
    for e in report["cosim"]:
        util = report["macs"] / (cfg.tn * cfg.ti * e["cycles"]) if e["cycles"] else 0
        lines.append(f"| {e['name']} | {e['sim']} | {'yes' if e['passed'] else 'NO'} | "
                     f"{e['cycles']} | {e['expected_cycles']} | {100 * util:.1f}% | "
                     f"{e['wall_s']:.2f} |")
    s = report["synth"]
    if s:
        fmax = "-" if s["fmax_mhz"] is None else f"{s['fmax_mhz']:.1f} MHz"
        lines += ["", f"synthesis: {s['luts']} LUT4, {s['ffs']} FF, {s['dsps']} multipliers, "
                      f"{s['brams']} block RAMs; fmax {fmax} on {s['part'] or 'no ECP5 part'}"
                      f" ({s['fits']})"]
    lines.append(f"float test accuracy of LeNet-5: {report['acc_float']:.2f}%; "
                 f"demo wall time {report['wall_s']} s")
    return "\n".join(lines)
