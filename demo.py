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

__all__ = ["register", "run_demo", "demo", "run_command", "run_model", "budget_check"]

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

    p = sub.add_parser(
        "run", help="one flow for any model: train or load, check, compress, quantise, compile, "
                    "export, emit, synthesise (--synth) and run it on the RTL",
        description=RUN_DOC)
    p.add_argument("model", metavar="MODEL",
                   help="path.py:make_model (a factory; with --weights, a state dict), a "
                        "torch.save module, a TorchScript file, an ONNX file, or a reference "
                        "network's name (lenet5: the demo)")
    p.add_argument("--data", required=True, metavar="D",
                   help="mnist, fashion-mnist, an .npz with x (N, C, H, W) and y, or a folder "
                        "with one folder of images per class")
    p.add_argument("--weights", default=None, help="a state dict for a factory's model")
    p.add_argument("--train-epochs", type=int, default=None, metavar="E",
                   help="train E epochs first (default: 2 for a factory without --weights, "
                        "else 0: the model is trained)")
    p.add_argument("--budget", type=float, default=DEFAULT.budget,
                   help=f"accuracy budget in points (default: {DEFAULT.budget})")
    p.add_argument("--methods", default="auto",
                   help="auto (default: every method where it saves something) or a comma "
                        "list of slim, ikr, perm")
    p.add_argument("--patterns", type=int, default=DEFAULT.patterns,
                   help=f"IKR patterns per layer, 1..16 (default: {DEFAULT.patterns})")
    p.add_argument("--ikr-finetune", type=int, default=DEFAULT.ikr_finetune, metavar="B",
                   help=f"IKR fine-tuning batches per try (default: {DEFAULT.ikr_finetune})")
    p.add_argument("--ikr-share", type=int, default=DEFAULT.ikr_share, metavar="S",
                   help="IKR: the kernels of each S output channels share a pattern per input "
                        "channel; the config's tn (4 on tiny) lets the lane IKR unit run the "
                        "network, n cycles a kernel group (default: 1, a pattern per kernel, on "
                        "the window decoder)")
    p.add_argument("--config", default=DEFAULT.config,
                   help=f"base accelerator config (default: {DEFAULT.config})")
    p.add_argument("--images", type=int, default=20,
                   help="test images through the RTL on Verilator (default: 20)")
    p.add_argument("--icarus-images", type=int, default=1,
                   help="of those, how many also run on Icarus (default: 1)")
    p.add_argument("--dense-images", type=int, default=1,
                   help="test images through the dense network's RTL, for its cycles "
                        "(default: 1; 0 skips that build)")
    p.add_argument("--synth", action="store_true", help="synthesise (Yosys, nextpnr-ecp5)")
    p.add_argument("--pnr-timeout", type=float, default=1800, metavar="S",
                   help="stop place and route after S seconds (default 1800)")
    p.add_argument("--out", help="report folder (default: run/<model name>/ in the build root)")
    p.set_defaults(func=run_command)


RUN_DOC = """Run any model through the whole flow into one folder: check the data (built-in,
.npz or class folders) and the model (slimnfu check) before any training, train it (or take
its weights), compress it under --budget with the methods planned per layer, quantise, compile,
write the ROM image (rom/), the weight image (image/) and the Verilog, synthesise it (--synth),
run test images through the RTL on Verilator (and --icarus-images on Icarus), every layer
checked bit for bit against the integer reference, and write report.{md,json}, the plots and
model.pt (the trained float network) into --out. `slimnfu run lenet5 --data mnist` is the
demo. Exit status 1 when an image is not bit-exact."""


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


def _check_run(args):
    from slimnfu.compress.pipeline import parse_methods

    _check(args)
    if not 0 <= args.dense_images <= 1000:
        raise ValueError(f"--dense-images must be in [0, 1000], not {args.dense_images}")
    if args.train_epochs is not None and not 0 <= args.train_epochs <= 1000:
        raise ValueError(f"--train-epochs must be in [0, 1000], not {args.train_epochs}")
    if not 1 <= args.patterns <= 16:
        raise ValueError(f"--patterns must be in [1, 16], not {args.patterns}")
    if not 0 <= args.ikr_finetune <= 100000:
        raise ValueError(f"--ikr-finetune must be in [0, 100000], not {args.ikr_finetune}")
    if not 1 <= args.ikr_share <= 1024:
        raise ValueError(f"--ikr-share must be in [1, 1024], not {args.ikr_share}")
    return parse_methods(args.methods)


def run_command(args):
    """``slimnfu run``: check the options, then :func:`run_model` (:func:`demo` for a
    reference network on its own data set with the default methods)."""
    from slimnfu.compress.models import NETWORKS, network_info
    from slimnfu.compress.pipeline import METHODS

    methods = _check_run(args)
    if args.model in NETWORKS:
        own = network_info(args.model)["dataset"]
        if args.data != own or args.weights is not None or args.train_epochs is not None:
            raise ValueError(f"a reference network runs on its own data set with its own "
                             f"training: {args.model} --data {own} (no --weights, no "
                             f"--train-epochs), or give a model file")
        if args.model != DEFAULT.network or methods not in ("auto", METHODS) \
                or (args.patterns, args.ikr_finetune, args.ikr_share) != (
                    DEFAULT.patterns, DEFAULT.ikr_finetune, DEFAULT.ikr_share):
            raise ValueError(f"the reference flow is {DEFAULT.network} with all three methods "
                             f"and the default --patterns, --ikr-finetune and --ikr-share; for "
                             f"{args.model} or other settings give the model as a file")
        return demo(DEFAULT.with_(config=args.config, budget=args.budget), args.images,
                    args.icarus_images, args.dense_images, synth=args.synth,
                    pnr_timeout_s=args.pnr_timeout, out=args.out)
    return run_model(args.model, args.data, weights=args.weights,
                     train_epochs=args.train_epochs, budget=args.budget, methods=methods,
                     config=args.config, images=args.images, icarus_images=args.icarus_images,
                     dense_images=args.dense_images, synth=args.synth,
                     pnr_timeout_s=args.pnr_timeout, out=args.out,
                     compress_options={"patterns": args.patterns,
                                       "ikr_finetune": args.ikr_finetune,
                                       "ikr_share": args.ikr_share})


def run_model(model_spec, data_spec, weights=None, train_epochs=None, budget=1.0,
              methods="auto", config="tiny", images=20, icarus_images=1, dense_images=1,
              synth=False, pnr_timeout_s=1800, out=None, build_root=None, compress_options=None,
              train_options=None):
    """``slimnfu run`` of a user's model (see :data:`RUN_DOC`).

    Parameters
    ----------
    model_spec : str or path-like
        As :func:`slimnfu.compress.intake.load_model` takes it.
    data_spec : str or path-like
        As :func:`slimnfu.compress.userdata.load_data` takes it.
    weights : path-like, optional
        A state dict for a factory's model.
    train_epochs : int, optional
        Epochs to train first; default 2 for a factory without ``weights``, else 0.
    budget : float
        Accuracy budget in points.
    methods : tuple of str or "auto"
        :func:`slimnfu.compress.pipeline.parse_methods`.
    config : str
        The base accelerator config.
    images, icarus_images, dense_images : int
        As :func:`demo`.
    synth : bool
    pnr_timeout_s : float
    out : path-like, optional
        The report folder; default ``run/<model name>/`` in the build root.
    build_root : path-like, optional
    compress_options, train_options : dict, optional
        Passed on to :func:`slimnfu.compress.pipeline.compress_network` (e.g. ``patterns``,
        ``ikr_finetune``, ``ikr_share``) and :func:`slimnfu.compress.train.fit` (``lr``,
        ``batch_size``).

    Returns
    -------
    int
        0 when every image was bit-exact on every simulator, else 1.
    """
    from slimnfu import flows

    t0 = time.monotonic()
    out = Path(out) if out else paths.build_root(build_root) / "run" / flows.model_name(
        model_spec)
    prep = flows.prepare(model_spec, data_spec, out, weights=weights,
                         train_epochs=train_epochs, budget=budget, methods=methods,
                         config=config, compress_options=compress_options,
                         train_options=train_options, log=print)
    ds, text = prep["data"], str(model_spec)
    c, h, w = ds.input_shape
    n = len(ds.test[1])
    extra = {"title": f"slimnfu run: {text} on {ds.name}",
             "test_set": f"{n:,} test images of {ds.name} ({c}x{h}x{w})",
             "title_plot": f"{prep['scenario'].network} on {Path(ds.name).name}",
             "wall_name": "Run", "model": text, "data": ds.summary(), "input_shape": [c, h, w],
             "classes": ds.classes, "trained_epochs": prep["epochs"], "image": None,
             "layers": None}
    return _deliver(prep["scenario"], prep["model"], prep["acc_base"], prep["qdense"],
                    prep["qmodel"], prep["history"], ds.test, out, t0, min(images, n),
                    min(icarus_images, n), min(dense_images, n), synth, pnr_timeout_s,
                    build_root, steps=7, extra=extra,
                    floats={"dense": prep["model"], "compressed": prep["float"]},
                    calib=prep["calib"])


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
    from slimnfu.compress import data
    from slimnfu.compress.quant import quantize_model

    data.verify(scenario.dataset)
    out = Path(out) if out else paths.build_root(build_root) / "demo"
    t0 = time.monotonic()
    print("[1/6] LeNet-5 on MNIST (trained, or the cached checkpoint)", flush=True)
    model, info = flows.train_or_load(scenario, cache_root)
    print(f"      float test accuracy {info['acc_test']:.2f}%")
    print(f"[2/6] compressing under {scenario.budget} points (A on conv1, IKR on conv2, "
          f"permuted fc1)", flush=True)
    q, hist, fm = flows.compress(scenario, model, cache_root, log=_log, with_float=True)
    print(f"      formats: {hist['formats']}")
    xc, _ = data.load(scenario.dataset, "calib")
    test = data.load(scenario.dataset, "test")
    qd = quantize_model(model, xc[:scenario.calib])
    floats = {"dense": model, "compressed": fm}
    return _deliver(scenario, model, info["acc_test"], qd, q, hist, test, out, t0, images,
                    icarus_images, dense_images, synth, pnr_timeout_s, build_root,
                    floats=floats)


def _log(message):
    print("      " + message, flush=True)


def _deliver(scenario, model, acc_base, qd, q, hist, test, out, t0, images, icarus_images,
             dense_images, synth, pnr_timeout_s, build_root, steps=6, extra=None, floats=None,
             calib=None):
    """Steps 3 to 6 of the demo (and of ``slimnfu run``): compile, export the ROM (and, for
    ``slimnfu run``, the weight image), emit, synthesise, run on the RTL; then write the
    report, its JSON and the plots into ``out``. ``extra`` is added to the report; ``floats``
    and ``calib`` go to :func:`slimnfu.bench.network.measure_models` for the numerical
    attribution. Returns the exit status."""
    from slimnfu import flows
    from slimnfu.bench import network
    from slimnfu.gen.compiler import write_rom_image
    from slimnfu.gen.synth import block_ram_fit, synth_config
    from slimnfu.gen.verilog import emit_accelerator, verilog_root

    first = steps - 3
    program = flows.compile_for(q, scenario)
    cfg = program.cfg
    if cfg.ikr is not None:
        _log("IKR unit: " + ("the lane unit" if cfg.ikr.lanes else
                             f"the window decoder (the IKR layers' patterns are not shared per "
                             f"output tile of tn={cfg.tn}; --ikr-share {cfg.tn} prunes for the "
                             f"lane unit)"))
    print(f"[{first}/{steps}] exporting the compiled network's ROM image to {out / 'rom'}",
          flush=True)
    rom = write_rom_image(program, out / "rom")
    print(f"      {rom['rom']['words']} words of {rom['rom']['width']} bits, "
          f"{len(program.layers)} program layers")
    extra = dict(extra or {})
    if "image" in extra:
        from slimnfu.gen.image import export

        try:
            manifest = export(q, cfg, out / "image", force=True)
            extra["image"] = {"folder": str(out / "image"), "files": len(manifest["files"]),
                              "image_bits": manifest["stats"].get("image_bits")}
            print(f"      weight image in {out / 'image'} ({len(manifest['files'])} files)")
        except ValueError as exc:
            extra["image"] = {"folder": None, "not_written": str(exc)}
            print(f"      weight image not written: {exc}")
    print(f"[{first + 1}/{steps}] emitting the ROM build for {cfg.name!r}", flush=True)
    emitted = emit_accelerator(program, cfg.name, verilog_root(build_root))
    print(f"      {emitted['path']}")
    fits = {w: block_ram_fit(program, w) for w in ("rom", "port")}
    print(f"      block RAM: {fits['rom']['summary']}")
    report_synth = None
    weights = next((w for w in ("rom", "port") if fits[w]["fits"]), None)
    if synth and weights is None:
        print(f"[{first + 2}/{steps}] the whole accelerator does not fit: "
              f"{fits['port']['summary']}; synthesising the {scenario.config!r} engine with "
              f"its own buffers instead (slimnfu synth --rom runs the whole one anyway)",
              flush=True)
        report_synth = synth_config(get_config(scenario.config), build_root=build_root,
                                    reuse=True, pnr_timeout_s=pnr_timeout_s)
        report_synth = {**report_synth, "weights": "none", "scope": "engine",
                        "weights_why": f"engine only: {fits['port']['summary']}"}
    elif synth:
        why = fits[weights]["summary"]
        print(f"[{first + 2}/{steps}] synthesising the {weights} build (Yosys ECP5, "
              f"nextpnr-ecp5): {why}", flush=True)
        report_synth = flows.synth_build(program, weights, why, reuse=True,
                                         pnr_timeout_s=pnr_timeout_s, build_root=build_root)
        report_synth.pop("reused", None)
    else:
        print(f"[{first + 2}/{steps}] synthesis skipped "
              f"({'--no-synth' if steps == 6 else 'no --synth'})")
    print(f"[{steps}/{steps}] running {images} test images through the RTL", flush=True)
    rows = network.measure_models(scenario, round(acc_base, 2), qd, q, hist, test, images,
                                  icarus_images, dense_images, floats=floats, calib=calib,
                                  build_root=build_root, log=_log)
    report = {"rows": rows, "compression": hist, "acc_float_base": acc_base,
              "budget_check": budget_check(acc_base, rows, hist),
              "block_ram": {w: {k: f[k] for k in ("part", "available", "brams", "fits",
                                                   "by_group", "summary")}
                            for w, f in fits.items()},
              "rom_image": {k: rom["rom"][k] for k in ("words", "width", "sha256")},
              "synth": None if report_synth is None else {k: report_synth.get(k) for k in (
                  "config", "weights", "weights_why", "cells", "luts", "ffs", "dsps", "brams",
                  "memory_bits", "fmax_mhz", "part", "fits", "scope") if k in report_synth},
              "board": _board_report(model, build_root), **extra,
              "wall_s": round(time.monotonic() - t0, 1)}
    if "layers" in extra:
        report["layers"] = _layer_table(q, hist, rows)
    text = _markdown(report)
    _plots(rows, out, report.get("title_plot", "LeNet-5 on MNIST"))
    atomic_write(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write(out / "report.md", text + "\n")
    print(text)
    bad = [r for r in rows if not r.get("bit_exact", True) or
           r.get("icarus_bit_exact") is False]
    for r in bad:
        print(f"FAIL {r['method']}: {r.get('failures')}", file=sys.stderr)
    print(f"report written to {out / 'report.md'} (and .json, plots)")
    return 1 if bad else 0


def budget_check(acc_base, rows, hist):
    """The compressed network against the accuracy budget, on the test set, on the
    validation (selection) split and on the check split (the pipeline's verdict, images no
    decision saw; absent from a history that predates it): the dense network's float test
    accuracy ``acc_base``, the compressed one's float and integer test accuracy (the row
    ``compressed`` of ``rows``), the points lost, and ``within_budget`` for each, and the
    stages shipped; ``verdict`` says it in one sentence, plainly when the test set is over
    the budget. The test set is reported here, after every decision, never used for one."""
    c = {r["method"]: r for r in rows}["compressed"]
    budget = hist.get("budget_pct")
    final = hist.get("final") or {}
    loss = round(acc_base - c["acc_int"], 2)
    out = {"budget_pts": budget, "acc_test_dense": round(acc_base, 2),
           "acc_test_float": c.get("acc_float"), "acc_test_int": c["acc_int"],
           "loss_test_int_pts": loss,
           "within_budget_test": None if budget is None else loss <= budget,
           "val_acc_base": hist.get("val_acc_base"), "val_acc": final.get("val_acc"),
           "val_acc_int": final.get("val_acc_int"),
           "within_budget_val": None if not final else
           bool(final["within_budget"] and final["within_budget_int"]),
           **{k: final.get(k) for k in ("check_images", "check_acc_base", "check_acc",
                                        "check_acc_int", "within_budget_check", "shipped")}}
    if budget is None:
        out["verdict"] = f"integer test accuracy {c['acc_int']:.2f}% against {acc_base:.2f}%"
    elif out["within_budget_test"]:
        out["verdict"] = (f"within the {budget:g}-point budget on the test set: integer "
                          f"{c['acc_int']:.2f}% against the dense {acc_base:.2f}% "
                          f"({loss:.2f} points)")
    else:
        out["verdict"] = (f"OVER the {budget:g}-point budget on the test set: integer "
                          f"{c['acc_int']:.2f}% against the dense {acc_base:.2f}% "
                          f"({loss:.2f} points lost)"
                          + (" although the check split was within it"
                             if out["within_budget_check"] else
                             " although the validation split was within it"
                             if out["within_budget_val"] and out["within_budget_check"] is None
                             else ""))
    return out


def _layer_table(q, hist, rows):
    """Per model layer: format, planned method, MACs, stored bits, measured cycles."""
    from slimnfu.bench.network import per_model_layer
    from slimnfu.formats.accounting import model_stats

    row = {r["method"]: r for r in rows}["compressed"]
    cycles = per_model_layer(row.get("per_layer") or [])
    plan = {}
    for p in hist.get("plan") or []:
        plan[p["module"]] = p
    out = []
    for l in model_stats(q)["layers"]:
        out.append({"layer": l["name"], "format": l.get("format"), "kind": l.get("kind"),
                    "macs_dense": l.get("macs_dense"), "macs": l.get("macs"),
                    "bits_dense": l.get("bits_dense"), "bits": l.get("bits"),
                    "cycles": cycles.get(l["name"], (None, None))[0]})
    return out


def _markdown(report):
    from slimnfu.bench.network import markdown

    rows = {r["method"]: r for r in report["rows"]}
    c = rows["compressed"]
    title = report.get("title", "slimnfu demo: compressed LeNet-5 on the generated accelerator")
    lines = [f"# {title}", "",
             f"Accuracy on the {report.get('test_set', '10,000 MNIST test images')}: float "
             f"{report['acc_float_base']:.2f}% "
             f"(dense), {c['acc_float']}% (compressed, float), {c['acc_int']:.2f}% (compressed, "
             f"integer reference); RTL {c.get('acc_rtl')}% on {c.get('images_rtl')} images, "
             f"{'every layer bit-exact' if c.get('bit_exact') else 'NOT bit-exact'} on "
             f"Verilator" + (f" ({c['icarus_images']} also on Icarus, "
                             f"{'bit-exact' if c.get('icarus_bit_exact') else 'NOT bit-exact'})"
                             if "icarus_images" in c else "") + ".", "",
             f"Savings: {c['macs_dense'] / c['macs']:.2f}x fewer MACs "
             f"({c['conv_macs_dense'] / c['conv_macs']:.1f}x in the convs), "
             f"{c['bits_dense'] / c['bits']:.2f}x fewer stored bits "
             f"({c['bits_dense']:,} -> {c['bits']:,}).", ""]
    b = report.get("budget_check")
    if b:
        lines += [f"Budget: {b['verdict']}" + (
            f"; validation split {b['val_acc']:.2f}% float, {b['val_acc_int']:.2f}% integer "
            f"against {b['val_acc_base']:.2f}%" if b.get("val_acc") is not None else "") + (
            f"; check split ({b['check_images']:,} images no decision saw) "
            f"{b['check_acc']:.2f}% float, {b['check_acc_int']:.2f}% integer against "
            f"{b['check_acc_base']:.2f}%, shipped: {b['shipped']}"
            if b.get("check_acc") is not None else "") + ".", ""]
    tries = (report.get("compression") or {}).get("fc_tries") or []
    if tries:
        lines += ["Method C tries: " + "; ".join(
            f"perm_{t['variant']} G={t['groups']}: val {t['val_acc']:.2f}% after "
            f"{t['epochs']} epochs" + (f" (best {t['best_epoch']}, {t['wall_s']:.0f} s)"
                                       if "best_epoch" in t else "")
            + (", accepted" if t["accepted"] else ", rejected") for t in tries) + ".", ""]
    if report.get("block_ram"):
        lines += [f"Block RAM (estimated, `gen.synth.block_ram_fit`): "
                  f"{report['block_ram']['rom']['summary']}.", ""]
    lines += [markdown(report["rows"]), ""]
    if report.get("layers"):
        plan = {p["module"]: p for p in (report["compression"].get("plan") or [])}
        lines += ["| layer | format | MACs (dense) | MACs | bits (dense) | bits | cycles (RTL) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for l in report["layers"]:
            cyc = "-" if l["cycles"] is None else f"{l['cycles']:,}"
            lines.append(f"| {l['layer']} | {l['format']} | {l['macs_dense']:,} | "
                         f"{l['macs']:,} | {l['bits_dense']:,} | {l['bits']:,} | {cyc} |")
        lines += ["", "Method plan: " + "; ".join(
            f"module {m}: {p['method']} -> {p.get('final', p['method'])}"
            + (f" ({p['why']})" if p.get("why") else "") for m, p in plan.items()) + ".",
            f"Saturation events on the RTL (first image, every layer): "
            f"{c.get('sat_events', '-')}.", ""]
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
    lines.append(f"{report.get('wall_name', 'Demo')} wall time {report['wall_s']} s.")
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


def _plots(rows, out, title="LeNet-5 on MNIST"):
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
    ax.set_title(title)
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
