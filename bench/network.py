"""``slimnfu bench network``: whole LeNet-5 inferences on the accelerator's RTL.

LeNet-5 (the cached checkpoint, or trained) is compressed under ``--budget`` points with all
three methods (:func:`slimnfu.compress.pipeline.compress_network`: method A on conv1, IKR on
conv2, permuted fc1), quantised, compiled (:mod:`slimnfu.gen.compiler`) for ``--config`` with
the flags it needs, and ``--images`` MNIST test images go through the ROM build's Verilog on
Verilator, every layer's output and the logits checked bit for bit against the integer
reference (Icarus runs ``--icarus-images``). The dense network runs the same way on the dense
build (``--dense-images``) for its cycles.

Rows (docs/design.md section 9), ``method`` ``dense`` and ``compressed`` (``formats`` names each
layer's): accuracies on the full test set
(float and integer) and on the simulated images (``acc_rtl``), MACs, params and bits (every
stored bit), ``rtl_cycles`` per inference measured on Verilator, plus ``rtl_engine_cycles``
(layers running) and ``ideal_cycles``: the dense engine cycles of each layer scaled by its MAC
ratio. ``rtl_cycles_parts`` says where every cycle went: ``engine_cycles``, ``load_cycles``
(waiting for weights, one cycle a layer at least), ``move_cycles`` (activation moves), two
cycles a layer to start and stop it (``control_cycles``), and beside them
``overlap_load_cycles``, the weight words loaded while something else ran. ``per_layer``
gives each program layer's measured cycles, ``layers`` each model layer's: cycles, MACs, the
speed-up over the dense build and its ratio to the MAC-ideal one (``speedup_over_ideal``), and
NFU utilisation (MACs over ``tn*ti`` times the layer's cycles). ``input_words`` is the NBin
words the host writes before ``start`` (one a cycle; ``rtl_cycles_with_input`` adds them), and
``im2col`` the compiler's choice for conv1 (run as a 1x1 conv over the image's patches,
:func:`slimnfu.gen.compiler.compile_model`). ``sim_s_per_image`` is the
Verilator seconds per inference. ``acc_float_same_images``, ``acc_int_same_images`` and
``acc_rtl`` put the three accuracies on the simulated images side by side; ``attribution``
(:func:`slimnfu.flows.attribution`) gives each layer's SQNR against the float network and its
saturation events on the calibration images.
"""

import time

from slimnfu.bench.common import accuracy, add_threads, host, start, write_report
from slimnfu.compress import attribution
from slimnfu.config import IM2COL_MODES, Scenario

__all__ = ["main", "add_arguments", "measure", "measure_models", "markdown", "layer_rows",
           "cycle_parts"]

#: The project's scenario (LeNet-5 on MNIST): the options below default to it.
DEFAULT = Scenario()


def add_arguments(parser):
    parser.add_argument("--config", default="diannao", help="base accelerator config")
    parser.add_argument("--images", type=int, default=100,
                        help="MNIST test images through the compressed RTL on Verilator")
    parser.add_argument("--icarus-images", type=int, default=0,
                        help="images also run on Icarus (default 0: on diannao with every "
                             "method built, Icarus takes tens of minutes an image)")
    parser.add_argument("--dense-images", type=int, default=10)
    parser.add_argument("--budget", type=float, default=DEFAULT.budget,
                        help="accuracy budget, points")
    parser.add_argument("--val", type=int, default=DEFAULT.val,
                        help="selection images (every compression decision): the calib "
                             "split's images before the check split")
    parser.add_argument("--check", type=int, default=DEFAULT.check,
                        help="check images (only the final budget verdict): the calib "
                             "split's tail")
    parser.add_argument("--calib", type=int, default=DEFAULT.calib,
                        help="calibration images: the calib split's head")
    parser.add_argument("--recompress", action="store_true",
                        help="compress again even when the cache holds the result")
    parser.add_argument("--im2col", default=DEFAULT.im2col, choices=IM2COL_MODES,
                        help="run conv1 as a 1x1 conv over the image's patches: auto "
                             "(default; when it fits and the schedule model says it is "
                             "faster), on, off (both builds)")
    add_threads(parser)


def check_args(args):
    """Refuse bad numbers before any long work, naming the option."""
    from slimnfu.config import CONFIGS

    if args.config not in CONFIGS:
        raise SystemExit(f"--config must be one of {', '.join(CONFIGS)}, not {args.config!r}")
    for name in ("images", "icarus_images", "dense_images"):
        v = getattr(args, name)
        if not 0 <= v <= 10000:
            raise SystemExit(f"--{name.replace('_', '-')} must be in 0..10000, not {v}")
    if args.images < 1:
        raise SystemExit(f"--images must be at least 1, not {args.images}")
    if not 0 <= args.budget <= 100:
        raise SystemExit(f"--budget must be in 0..100 points, not {args.budget}")
    for name in ("val", "calib"):
        v = getattr(args, name)
        if v < 1 or args.check < 1 or v + args.check > 5000:
            raise SystemExit(f"--{name} {v} and --check {args.check} must be >= 1 and fit "
                             f"side by side in the 5000 images of the calib split")


def _ideal(dense_layers, stats_dense, stats):
    """Dense engine cycles of each layer times its MAC ratio, summed."""
    total = 0.0
    for d, ld, lc in zip(dense_layers, stats_dense["layers"], stats["layers"]):
        ratio = lc["macs"] / ld["macs"] if ld["macs"] else 1.0
        total += d["engine_cycles"] * ratio
    return round(total)


def cycle_parts(counters, n_layers):
    """Where the cycles of one inference went: the accelerator's counters plus
    ``control_cycles`` (``RUN`` and ``PAUSE``, two a program layer), which with
    ``engine_cycles``, ``load_cycles`` and ``move_cycles`` sums to ``cycles``."""
    parts = {k: counters[k] for k in ("engine_cycles", "load_cycles", "move_cycles",
                                      "overlap_load_cycles")}
    parts["control_cycles"] = 2 * n_layers
    if counters["cycles"] != sum(parts[k] for k in ("engine_cycles", "load_cycles",
                                                    "move_cycles", "control_cycles")):
        raise ValueError(f"the counters do not add up to the {counters['cycles']} cycles: "
                         f"{parts}")
    return parts


def layer_rows(per_layer, stats, lanes, dense=None):
    """One row per model layer of a measured run: ``name``, ``format``, ``cycles`` (its
    program layers' measured cycles), ``macs``, ``nfu_util`` (``macs / (lanes * cycles)``,
    None for pooling), and with the dense build's rows ``dense``: ``dense_cycles``,
    ``speedup``, ``ideal`` (the MAC ratio) and ``speedup_over_ideal``.

    Parameters
    ----------
    per_layer : list of dict
        The run's ``per_layer`` (program layers).
    stats : dict
        :func:`slimnfu.formats.accounting.model_stats` of the model.
    lanes : int
        The NFU's multipliers, ``tn * ti``.
    dense : list of dict, optional
        This function's rows of the dense build.
    """
    cycles = per_model_layer(per_layer)
    by_dense = {r["name"]: r for r in dense or []}
    rows = []
    for st in stats["layers"]:
        c, fmt = cycles[st["name"]]
        row = {"name": st["name"], "format": fmt, "cycles": c, "macs": st["macs"],
               "nfu_util": round(st["macs"] / (lanes * c), 4) if st["macs"] else None}
        d = by_dense.get(st["name"])
        if d:
            ideal = d["macs"] / st["macs"] if st["macs"] else 1.0
            row.update({"dense_cycles": d["cycles"], "speedup": round(d["cycles"] / c, 3),
                        "ideal": round(ideal, 3),
                        "speedup_over_ideal": round(d["cycles"] / c / ideal, 3)})
        rows.append(row)
    return rows


def measure(scenario, images=100, icarus_images=0, dense_images=10, recompress=False,
            build_root=None, cache_root=None, log=print):
    """The scenario's network, dense and compressed, measured on the RTL: the rows.

    Parameters
    ----------
    scenario : Scenario
    images, icarus_images, dense_images : int
        Test images through the compressed build on Verilator, how many of those also on
        Icarus, and test images through the dense build on Verilator (0: not run).
    recompress : bool
        Compress again even when the cache holds the result.
    build_root, cache_root : path-like, optional
        Default :func:`slimnfu.paths.build_root` and :func:`slimnfu.paths.cache_root`.

    Returns
    -------
    tuple
        ``(rows, history)``: one row per build (see the module docstring) and the
        compression history.
    """
    from slimnfu import flows
    from slimnfu.compress import data
    from slimnfu.compress.quant import quantize_model
    from slimnfu.compress.train import evaluate

    model, _ = flows.train_or_load(scenario, cache_root, progress=True)
    xc, _ = data.load(scenario.dataset, "calib")
    xt, yt = data.load(scenario.dataset, "test")
    acc_base = round(evaluate(model, xt, yt), 2)
    qd = quantize_model(model, xc[:scenario.calib])
    q, hist, fm = flows.compress(scenario, model, cache_root, recompress, log=log,
                                 with_float=True)
    floats = {"dense": model, "compressed": fm}
    rows = measure_models(scenario, acc_base, qd, q, hist, (xt, yt), images, icarus_images,
                          dense_images, floats=floats, build_root=build_root, log=log)
    return rows, hist


def measure_models(scenario, acc_base, qd, q, hist, test, images=100, icarus_images=0,
                   dense_images=10, floats=None, calib=None, build_root=None, log=print):
    """The rows of a network measured on the RTL, dense (``qd``) and compressed (``q``).

    Parameters
    ----------
    scenario : Scenario
        Its ``network`` and ``config`` name the builds (:func:`slimnfu.flows.compile_for`),
        its ``dataset`` and ``budget`` go into the rows.
    acc_base : float
        The float network's test accuracy.
    qd, q : QuantModel
        The dense and the compressed network.
    hist : dict
        The compression history (``test_acc_float``: the compressed float accuracy).
    test : tuple
        ``(images, labels)``: the test set; the first images go through the RTL.
    images, icarus_images, dense_images : int
        As :func:`measure`.
    floats : dict, optional
        The float networks, ``{"dense": ..., "compressed": ...}``, for the numerical
        attribution (None, or a missing one: attributed without float figures).
    calib : tuple, optional
        ``(images, labels)`` the attribution runs on; default the scenario's calibration
        images (:func:`slimnfu.flows.attribution`).

    Returns
    -------
    list of dict
        One row per build (see the module docstring).
    """
    from slimnfu import flows
    from slimnfu.compress.quant import int_forward
    from slimnfu.compress.train import evaluate
    from slimnfu.formats.accounting import model_stats

    xt, yt = test
    sd, sc = model_stats(qd), model_stats(q)
    programs = {label: (qm, flows.compile_for(qm, scenario, label))
                for label, qm in (("dense", qd), ("compressed", q))}
    rows, runs = [], {}
    for label, (qm, prog) in programs.items():
        n = dense_images if label == "dense" else images
        sims = {"verilator": n}
        if label != "dense" and icarus_images:
            sims["icarus"] = icarus_images
        for sim, count in sims.items():
            if count == 0:
                continue
            runs[label, sim] = flows.run_on_rtl(prog, qm, xt[:count], yt[:count], sim=sim,
                                                build_root=build_root, log=log)
            r = runs[label, sim]
            log(f"{label} on {sim}: {count} images, bit-exact {r['bit_exact']}, RTL accuracy "
                f"{r['rtl_accuracy']}%, {r['counters']['cycles'] if r['counters'] else '-'} "
                f"cycles per inference")
    acc_int_c = accuracy(int_forward(q, xt)[0], yt, 2)
    acc_int_d = accuracy(int_forward(qd, xt)[0], yt, 2)
    floats = floats or {}
    dense_run = runs.get(("dense", "verilator"))
    for label, (qm, prog) in programs.items():
        st = sd if label == "dense" else sc
        r = runs.get((label, "verilator"))
        row = {"network": scenario.network, "dataset": scenario.dataset, "method": label,
               "budget_pct": None if label == "dense" else scenario.budget,
               "acc_float_base": acc_base,
               "acc_float": acc_base if label == "dense" else hist.get("test_acc_float"),
               "acc_int": acc_int_d if label == "dense" else acc_int_c,
               "macs_dense": sd["macs"], "macs": st["macs"],
               "conv_macs_dense": sd["conv_macs"], "conv_macs": st["conv_macs"],
               "params_dense": sd["params"], "params": st["params"],
               "bits_dense": sd["bits"], "bits": st["bits"],
               "config": prog.cfg.name, "accel": prog.cfg.to_dict(),
               "formats": {l.name: l.format for l in qm.layers},
               "rom_words": prog.stats["rom_words"], "rom_width": prog.rom_width,
               "input_words": prog.input_words(), "im2col": prog.stats["im2col"],
               "rom_item_bits": prog.stats["stored_bits"],
               "rtl_cycles_dense": dense_run["counters"]["cycles"] if dense_run else None,
               "attribution": flows.attribution(scenario, floats.get(label), qm, calib)}
        if r:
            fm = floats.get(label)
            row["acc_float_same_images"] = None if fm is None else \
                round(evaluate(fm, xt[:r["images"]], yt[:r["images"]]), 2)
            row.update({"rtl_cycles": r["counters"]["cycles"],
                        "rtl_cycles_with_input": r["counters"]["cycles"] + prog.input_words(),
                        "rtl_engine_cycles": r["counters"]["engine_cycles"],
                        "rtl_cycles_parts": cycle_parts(r["counters"], len(prog.layers)),
                        "images_rtl": r["images"], "acc_rtl": r["rtl_accuracy"],
                        "acc_int_same_images": r["int_accuracy"],
                        "bit_exact": r["bit_exact"], "failures": r["failures"],
                        "per_layer": r["per_layer"], "sim_s_per_image": r["sim_s_per_image"],
                        "sim_build_s": r["build_s"], "mults": r["counters"]["mults"],
                        "sat_events": r["counters"].get("sat_events")})
        if dense_run and dense_run["per_layer"]:
            row["ideal_cycles"] = _ideal(dense_run["per_layer"], sd, st)
        if r and r["per_layer"]:
            lanes = prog.cfg.tn * prog.cfg.ti
            dense_rows = (layer_rows(dense_run["per_layer"], sd, lanes)
                          if dense_run and dense_run["per_layer"] and label != "dense" else None)
            row["layers"] = layer_rows(r["per_layer"], st, lanes, dense_rows)
        for (lab, sim), rr in runs.items():
            if lab == label and sim != "verilator":
                row[f"{sim}_images"], row[f"{sim}_bit_exact"] = rr["images"], rr["bit_exact"]
                row[f"{sim}_sim_s_per_image"] = rr["sim_s_per_image"]
        rows.append(row)
    return rows




def per_model_layer(per_layer):
    """Measured cycles per model layer (a slim layer's passes summed), in order:
    ``{name: (cycles, format)}`` (the format followed by ``im2col`` for a layer run so)."""
    out = {}
    for l in per_layer:
        key = l.get("model_layer", l["layer"].split(".")[0])
        fmt = l["format"] + (" im2col" if l.get("im2col") else "")
        out[key] = (out.get(key, (0, None))[0] + l["cycles"], fmt)
    return out


def markdown(rows):
    """The rows as Markdown: one line per network build, then cycles per layer."""
    lines = ["| build | config | int % (test set) | RTL % (images) | bit-exact | MACs x | bits x "
             "| cycles / inference | engine cycles | ideal | speed-up | sim s / image |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sp = (f"{r['rtl_cycles_dense'] / r['rtl_cycles']:.2f}"
              if r.get("rtl_cycles") and r.get("rtl_cycles_dense") else "-")
        lines.append(
            f"| {r['method']} | {r['config']} | {r['acc_int']:.2f} | "
            f"{r.get('acc_rtl', '-')} ({r.get('images_rtl', 0)}) | "
            f"{'yes' if r.get('bit_exact') else 'NO'} | {r['macs_dense'] / r['macs']:.2f} | "
            f"{r['bits_dense'] / r['bits']:.2f} | {_num(r.get('rtl_cycles'))} | "
            f"{_num(r.get('rtl_engine_cycles'))} | {_num(r.get('ideal_cycles'))} | {sp} | "
            f"{r.get('sim_s_per_image', '-')} |")
    parts = [r for r in rows if r.get("rtl_cycles_parts")]
    if parts:
        lines += ["", "| build | cycles | engine | waiting for weights | moves | run + pause "
                  "| weight words hidden | input words | cycles with the input | im2col |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in parts:
            p = r["rtl_cycles_parts"]
            im = r.get("im2col") or {}
            lines.append(f"| {r['method']} | {r['rtl_cycles']:,} | {p['engine_cycles']:,} | "
                         f"{p['load_cycles']:,} ({100 * p['load_cycles'] / r['rtl_cycles']:.2f}"
                         f"%) | {p['move_cycles']:,} | {p['control_cycles']:,} | "
                         f"{p['overlap_load_cycles']:,} | {_num(r.get('input_words'))} | "
                         f"{_num(r.get('rtl_cycles_with_input'))} | "
                         f"{im.get('layer', '-') if im.get('chosen') else 'no'} |")
    dense = next((r for r in rows if r["method"] == "dense"), None)
    other = next((r for r in rows if r["method"] != "dense" and r.get("layers")), None)
    if dense and dense.get("layers") and other:
        util = {l["name"]: l["nfu_util"] for l in dense["layers"]}
        lines += ["", f"| layer | format | dense cycles | {other['method']} cycles | speed-up "
                  "| MACs x (ideal) | speed-up / ideal | NFU util dense | NFU util "
                  f"{other['method']} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for l in other["layers"]:
            if "dense_cycles" not in l:
                continue
            lines.append(f"| {l['name']} | {l['format']} | {l['dense_cycles']:,} | "
                         f"{l['cycles']:,} | {l['speedup']:.2f} | {l['ideal']:.2f} | "
                         f"{l['speedup_over_ideal']:.2f} | {_pct(util.get(l['name']))} | "
                         f"{_pct(l['nfu_util'])} |")
    for r in rows:
        if r.get("attribution"):
            if r.get("images_rtl"):
                f = r.get("acc_float_same_images")
                lines += ["", f"{r['method']}: on the {r['images_rtl']} test images run on the "
                              f"RTL, float {'-' if f is None else f}% -> integer "
                              f"{r['acc_int_same_images']}% -> RTL {r['acc_rtl']}%."]
            lines += ["", attribution.markdown(r["attribution"], f"of {r['method']}")]
    return "\n".join(lines)


def _num(v):
    return "-" if v is None else f"{v:,}"


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def main(args):
    check_args(args)
    t0 = start(args)
    scenario = DEFAULT.with_(config=args.config, budget=args.budget, val=args.val,
                             check=args.check, calib=args.calib, threads=args.threads,
                             im2col=args.im2col)
    rows, hist = measure(scenario, args.images, args.icarus_images, args.dense_images,
                         args.recompress)
    report = {"benchmark": "network", "rows": rows, "compression": hist,
              "host": host(), "wall_s": round(time.perf_counter() - t0, 1)}
    write_report(args.out, report, markdown(rows))
    return 0 if all(r.get("bit_exact", True) for r in rows) else 1
