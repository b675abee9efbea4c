"""``slimnfu demo``: a compressed LeNet-5 on generated hardware, start to finish.

1. Train Caffe LeNet-5 on MNIST, or load the cached checkpoint.
2. Compress it under an accuracy budget with all three methods: lower kernels and linear
   approximation on conv1, IKR pattern pruning on conv2, permuted-feature storage of fc1
   (:func:`slimnfu.compress.pipeline.compress_network`; cached in ``network/`` in the cache
   root).
3. Compile the quantised network (:mod:`slimnfu.gen.compiler`) and export its ROM image
   (``<out>/rom``: ``rom.hex`` and ``program.json``).
4. Emit the ROM build of the accelerator (the same words baked in as memory init).
5. Synthesise it with Yosys for ECP5 and place and route it with nextpnr-ecp5 (a report whose
   Verilog hash matches is reused). When the network's buffers alone exceed the largest
   ECP5's block RAM, the config's engine with its own buffers is synthesised instead, and the
   report says so; a ``slimnfu board`` report of the same checkpoint is added when one exists.
6. Run real MNIST test images through the RTL on Verilator (and a few on Icarus), checking
   every layer's output and the logits bit for bit against the integer reference, and the
   dense network's build for its cycles (:mod:`slimnfu.bench.network`).

The report is printed and written to ``<out>/report.json``, ``<out>/report.md`` and two
plots: ``accuracy_vs_macs.png`` and ``cycles_per_layer.png``.
"""

import json
import sys
import time
from pathlib import Path

from slimnfu import paths
from slimnfu.atomic import atomic_write
from slimnfu.config import Scenario, get_config

__all__ = ["register", "run_demo", "demo"]

#: The project's scenario, which the demo runs; ``--config`` and ``--budget`` change it.
DEFAULT = Scenario()


def register(sub):
    p = sub.add_parser(
        "demo", help="train, compress, export, generate, synthesise and run LeNet-5 on the RTL",
        description=__doc__.split("\n\n")[0] + " Writes demo/report.{json,md} and plots in the "
                                                 "build root.")
    p.add_argument("--config", default=DEFAULT.config,
                   help=f"base accelerator config (default: {DEFAULT.config})")
    p.add_argument("--images", type=int, default=20,
                   help="MNIST test images through the RTL on Verilator (default: 20)")
    p.add_argument("--icarus-images", type=int, default=1,
                   help="of those, how many also run on Icarus (default: 1)")
    p.add_argument("--budget", type=float, default=DEFAULT.budget,
                   help=f"accuracy budget in points (default: {DEFAULT.budget})")
    p.add_argument("--no-synth", action="store_true", help="skip synthesis")
    p.add_argument("--pnr-timeout", type=float, default=1800, metavar="S",
                   help="stop place and route after S seconds (default 1800)")
    p.add_argument("--out", help="report folder (default: demo/ in the build root, "
                                 "$SLIMNFU_BUILD, else build/)")
    p.set_defaults(func=run_demo)


def _check(args):
    from slimnfu.config import CONFIGS

    if args.config not in CONFIGS:
        raise ValueError(f"--config must be one of {', '.join(CONFIGS)}, not {args.config!r}")
    if not 1 <= args.images <= 1000:
        raise ValueError(f"--images must be in [1, 1000], not {args.images}")
    if not 0 <= args.icarus_images <= args.images:
        raise ValueError(f"--icarus-images must be in [0, --images], not {args.icarus_images}")
    if not 0 <= args.budget <= 100:
        raise ValueError(f"--budget must be in [0, 100] points, not {args.budget}")


def run_demo(args):
    """``slimnfu demo``: check the options, then :func:`demo` the default scenario with
    ``--config`` and ``--budget``."""
    _check(args)
    return demo(DEFAULT.with_(config=args.config, budget=args.budget), args.images,
                args.icarus_images, synth=not args.no_synth, pnr_timeout_s=args.pnr_timeout,
                out=args.out)


def demo(scenario, images=20, icarus_images=1, dense_images=1, synth=True, pnr_timeout_s=1800,
         out=None, build_root=None, cache_root=None):
    """Run the demo of ``scenario`` (see the module docstring) and write its report.

    Parameters
    ----------
    scenario : Scenario
    images, icarus_images, dense_images : int
        Test images through the compressed network's RTL on Verilator, how many of those also
        on Icarus, and through the dense network's on Verilator.
    synth : bool
        Synthesise (step 5).
    pnr_timeout_s : float
        Stop place and route after this many seconds.
    out : path-like, optional
        The report folder; default ``demo/`` in the build root.
    build_root, cache_root : path-like, optional
        Default :func:`slimnfu.paths.build_root` and :func:`slimnfu.paths.cache_root`.

    Returns
    -------
    int
        0 when every image was bit-exact on every simulator, else 1.
    """
    from slimnfu import flows
    from slimnfu.bench import network
    from slimnfu.compress import data
    from slimnfu.gen.compiler import write_rom_image
    from slimnfu.gen.synth import block_ram_shortfall, choose_weights, synth_config
    from slimnfu.gen.verilog import emit_accelerator, verilog_root

    def log(message):
        print("      " + message, flush=True)

    data.verify(scenario.dataset)
    out = Path(out) if out else paths.build_root(build_root) / "demo"
    t0 = time.monotonic()
    print("[1/6] LeNet-5 on MNIST (trained, or the cached checkpoint)", flush=True)
    model, info = flows.train_or_load(scenario, cache_root)
    print(f"      float test accuracy {info['acc_test']:.2f}%")
    print(f"[2/6] compressing under {scenario.budget} points (A on conv1, IKR on conv2, "
          f"permuted fc1)", flush=True)
    q, hist = flows.compress(scenario, model, cache_root, log=log)
    print(f"      formats: {hist['formats']}")
    program = flows.compile_for(q, scenario)
    cfg = program.cfg
    print(f"[3/6] exporting the compiled network's ROM image to {out / 'rom'}", flush=True)
    rom = write_rom_image(program, out / "rom")
    print(f"      {rom['rom']['words']} words of {rom['rom']['width']} bits, "
          f"{len(program.layers)} program layers")
    print(f"[4/6] emitting the ROM build for {cfg.name!r}", flush=True)
    emitted = emit_accelerator(program, cfg.name, verilog_root(build_root))
    print(f"      {emitted['path']}")
    report_synth = None
    too_big = block_ram_shortfall(cfg)
    if synth and too_big:
        print(f"[5/6] the whole accelerator does not fit: {too_big}; synthesising the "
              f"{scenario.config!r} engine with its own buffers instead (slimnfu synth --rom "
              f"runs the whole one anyway)", flush=True)
        report_synth = synth_config(get_config(scenario.config), build_root=build_root,
                                    reuse=True, pnr_timeout_s=pnr_timeout_s)
        report_synth = {**report_synth, "weights": "none", "scope": "engine",
                        "weights_why": f"engine only: {too_big}"}
    elif synth:
        weights, why = choose_weights(program)
        print(f"[5/6] synthesising the {weights} build (Yosys ECP5, nextpnr-ecp5): {why}",
              flush=True)
        report_synth = flows.synth_build(program, weights, why, reuse=True,
                                         pnr_timeout_s=pnr_timeout_s, build_root=build_root)
        report_synth.pop("reused", None)
    else:
        print("[5/6] synthesis skipped (--no-synth)")
    print(f"[6/6] running {images} test images through the RTL", flush=True)
    rows, hist = network.measure(scenario, images, icarus_images, dense_images,
                                 build_root=build_root, cache_root=cache_root, log=log)
    report = {"rows": rows, "compression": hist, "acc_float_base": info["acc_test"],
              "rom_image": {k: rom["rom"][k] for k in ("words", "width", "sha256")},
              "synth": None if report_synth is None else {k: report_synth.get(k) for k in (
                  "config", "weights", "weights_why", "cells", "luts", "ffs", "dsps", "brams",
                  "memory_bits", "fmax_mhz", "part", "fits", "scope") if k in report_synth},
              "board": _board_report(model, build_root),
              "wall_s": round(time.monotonic() - t0, 1)}
    text = _markdown(report)
    _plots(rows, out)
    atomic_write(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write(out / "report.md", text + "\n")
    print(text)
    bad = [r for r in rows if not r.get("bit_exact", True) or
           r.get("icarus_bit_exact") is False]
    for r in bad:
        print(f"FAIL {r['method']}: {r.get('failures')}", file=sys.stderr)
    print(f"report written to {out / 'report.md'} (and .json, plots)")
    return 1 if bad else 0


def _markdown(report):
    from slimnfu.bench.network import markdown

    rows = {r["method"]: r for r in report["rows"]}
    c = rows["compressed"]
    lines = ["# slimnfu demo: compressed LeNet-5 on the generated accelerator", "",
             f"Accuracy on the 10,000 MNIST test images: float {report['acc_float_base']:.2f}% "
             f"(dense), {c['acc_float']}% (compressed, float), {c['acc_int']:.2f}% (compressed, "
             f"integer reference); RTL {c.get('acc_rtl')}% on {c.get('images_rtl')} images, "
             f"{'every layer bit-exact' if c.get('bit_exact') else 'NOT bit-exact'} on "
             f"Verilator" + (f" ({c['icarus_images']} also on Icarus, "
                             f"{'bit-exact' if c.get('icarus_bit_exact') else 'NOT bit-exact'})"
                             if "icarus_images" in c else "") + ".", "",
             f"Savings: {c['macs_dense'] / c['macs']:.2f}x fewer MACs "
             f"({c['conv_macs_dense'] / c['conv_macs']:.1f}x in the convs), "
             f"{c['bits_dense'] / c['bits']:.2f}x fewer stored bits "
             f"({c['bits_dense']:,} -> {c['bits']:,}).", "", markdown(report["rows"]), ""]
    s = report["synth"]
    if s:
        fmax = "-" if s["fmax_mhz"] is None else f"{s['fmax_mhz']:.1f} MHz"
        what = (f"the {s['config']!r} engine" if s.get("scope") == "engine" else
                f"the {s['weights']} build")
        lines.append(f"Synthesis of {what} ({s['weights_why']}): "
                     f"{s['luts']:,} LUT4, {s['ffs']:,} FF, {s['dsps']} "
                     f"multipliers, {s['brams']} DP16KD; fmax {fmax} on "
                     f"{s['part'] or 'no ECP5 part'} ({s['fits']}).")
    b = report.get("board")
    if b:
        util = ", ".join(f"{v['used']:,}/{v['available']:,} {k}"
                         for k, v in b["pnr"]["utilization"].items()
                         if k in ("TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D"))
        lines.append(f"Board build (`slimnfu board`, {b['board']}, fc1 {b['fc']}, integer "
                     f"test accuracy {b['acc_int_test']:.2f}%): bitstream placed and routed at "
                     f"{b['pnr']['fmax_mhz']:.1f} MHz against the board's "
                     f"{b['pnr']['target_mhz']:g} MHz clock; "
                     f"{util}.")
    lines.append(f"Demo wall time {report['wall_s']} s.")
    return "\n".join(lines)


def _board_report(model, build_root=None):
    """The newest ``slimnfu board`` report built from this checkpoint with a bitstream, or None.
    """
    from slimnfu.compress.pipeline import hash_state

    key = hash_state(model)[:12]
    found = []
    for path in paths.build_root(build_root).glob("board/*/report.json"):
        r = json.loads(path.read_text())
        if r.get("model_key") == key and r.get("bitstream") and r.get("pnr"):
            found.append((path.stat().st_mtime, r))
    return max(found, key=lambda f: f[0])[1] if found else None


def _plots(rows, out):
    """accuracy_vs_macs.png and cycles_per_layer.png in ``out``."""
    import matplotlib

    from slimnfu.bench.network import per_model_layer

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        x = r["macs_dense"] / r["macs"]
        for key, marker in (("acc_float", "o"), ("acc_int", "s")):
            if r.get(key) is not None:
                ax.scatter(x, r[key], marker=marker, label=f"{r['method']} {key[4:]}")
    ax.set_xlabel("MAC savings (dense MACs / MACs)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("LeNet-5 on MNIST")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_macs.png", dpi=120)
    plt.close(fig)
    per = {r["method"]: per_model_layer(r.get("per_layer") or []) for r in rows}
    if all(per.values()):
        names = list(per["dense"])
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.4
        for i, (method, layers) in enumerate(per.items()):
            ax.bar([j + i * width for j in range(len(names))],
                   [layers.get(n, (0, None))[0] for n in names], width, label=method)
        ax.set_xticks([j + width / 2 for j in range(len(names))], names)
        ax.set_yscale("log")
        ax.set_ylabel("cycles (measured)")
        ax.set_title("cycles per layer, dense vs compressed")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "cycles_per_layer.png", dpi=120)
        plt.close(fig)
