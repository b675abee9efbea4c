"""``slimnfu bench slim``: slimmer CNNs (method A) under accuracy budgets, measured.

For each network, treatment (lower kernel, linear approximation, both) and budget: rank the
conv features on calibration images, run the greedy budget algorithm, fine-tune, quantise,
and report the docs/design.md section 9 rows. RTL cycles are measured in co-simulation
(Verilator by default, config ``tiny`` with ``kgate``) on one test image, for the **conv
layers** (``rtl_scope``): the dense conv layers versus every engine pass of the slim layers
(kernel-size passes, gated mixed tiles, 1x1 approximation passes). ``rtl_cycles_ideal`` is the
dense conv cycles times the conv MAC ratio; ``rtl_layers`` gives the same per conv layer, with
``speedup_over_ideal`` (ideal over measured cycles). ``gated`` / ``mults`` is the share of issued
multiplies the kernel gate switched off. ``area`` holds Yosys figures of the engine with the
gate off and on (``--no-area`` skips them).

The report is written after every row; ``--resume`` keeps the rows ``--out`` holds from a run
with the same settings (:func:`settings`) and base network (``model_key``) and runs the rest.
"""

import json
import time
from pathlib import Path

from slimnfu.atomic import write_json
from slimnfu.bench.common import (accuracy, add_threads, host, kept_row, kept_rows, start,
                                  write_report)

NETWORKS = {"lenet5": "mnist", "vgg_fmnist": "fashion-mnist"}
#: :data:`slimnfu.compress.slim.TREATMENTS`, spelt out so that ``slimnfu --help`` need not
#: import torch (a test keeps the two equal).
TREATMENTS = ("lower", "linear", "both")


def add_arguments(parser):
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=sorted(NETWORKS),
                        help="networks (default: lenet5 vgg_fmnist; vgg_fmnist takes about 20 "
                             "minutes a row, 2 hours for its 6, on 2 cores beside other jobs)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 1.0],
                        help="accuracy budgets in percentage points (default 0.5 1)")
    parser.add_argument("--treatments", nargs="+", default=list(TREATMENTS),
                        choices=TREATMENTS, help="treatments (default all)")
    parser.add_argument("--calib", type=int, default=3000,
                        help="calibration images for the budget check (default 3000; with 1000 "
                             "the greedy step overfits them and VGG misses its budget on the "
                             "test set)")
    parser.add_argument("--finetune", type=int, default=10000,
                        help="training images of the one fine-tune epoch (default 10000; 0: off)")
    parser.add_argument("--config", default="tiny", help="accelerator config (default tiny)")
    parser.add_argument("--lanes", type=int, default=None,
                        help="make every layer's kept features a whole number of tiles of this "
                             "many lanes (default: the config's tn; 1: off; see "
                             "slimnfu.compress.slim.fill_lanes)")
    parser.add_argument("--sim", default="verilator", choices=("verilator", "icarus"),
                        help="simulator of the cycle measurement")
    parser.add_argument("--no-cosim", action="store_true", help="skip the RTL measurement")
    parser.add_argument("--no-area", action="store_true",
                        help="skip the Yosys synthesis of the engine with the gate off and on")
    parser.add_argument("--area-only", action="store_true",
                        help="only (re)measure the area of the gate (Yosys ECP5, tiny, off and "
                             "on); keeps the rows of --out")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows --out already holds from a run with the same "
                             "settings and base network, and run only the missing ones (the "
                             "report is written after every row)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --out for the networks not run now (run "
                             "vgg_fmnist once, then re-run lenet5 alone)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar for the greedy step (one tick a conv feature; a "
                             "VGG row's step takes about 15 minutes)")
    add_threads(parser)
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train the base network on this many images (smoke runs)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the base network (default: the network's own)")


def _dense_cases(qdense, x_img, cfg):
    from slimnfu import fixed
    from slimnfu.sim.cases import Case

    cases, x = [], x_img
    for layer in qdense.layers:
        if layer.desc.kind == "conv":
            count = fixed.SatCount()
            y = layer.run(x, cfg.dw, count)
            cases.append(Case(f"dense_{layer.name}", layer.desc, x[0], layer.w, layer.b,
                              layer.pwl, y[0], count.events, "mnist"))
        x = layer.run(x, cfg.dw) if layer.desc.kind != "fc" else x
        if layer.desc.kind == "fc":
            break
    return cases


def _slim_cases(qslim, x_img, cfg):
    from slimnfu.formats.slim import SlimWeights
    from slimnfu.sim.slim_cases import slim_layer_cases

    cases, x = [], x_img
    for layer in qslim.layers:
        if isinstance(layer.compressed, SlimWeights):
            cs, _ = slim_layer_cases(layer, x, cfg, f"slim_{layer.name}", "mnist")
            cases += cs
            x = layer.run(x, cfg.dw)
        elif layer.desc.kind == "fc":
            break
        else:
            x = layer.run(x, cfg.dw)
    return cases


def _bench_cfg(qdense, cfg):
    """``cfg`` with buffers deep enough for every conv layer of the network (powers of two)."""
    return cfg.fit_buffers([l.desc for l in qdense.layers if l.desc.kind == "conv"])


def _measure(cases, cfg, sim):
    from slimnfu.sim.runner import run_regression

    entries = run_regression(cfg, cases, sims=(sim,), log=lambda *a: None)
    bad = [f"{e['name']}: {e['error']}" for e in entries if not e["passed"]]
    return {"cycles": sum(e["cycles"] or 0 for e in entries),
            "by_case": {e["name"]: e["cycles"] or 0 for e in entries},
            "mults": sum(e["mults"] or 0 for e in entries),
            "gated": sum(e.get("gated") or 0 for e in entries),
            "passes": len(entries), "bit_exact": not bad, "errors": bad[:5]}


def layer_rows(conv_names, dense_rtl, slim_rtl, macs):
    """Per conv layer: its dense and slim RTL cycles, MACs, ideal and ``speedup_over_ideal``.

    ``conv_names`` are the conv layers' names in order, ``dense_rtl`` / ``slim_rtl`` the
    :func:`_measure` results (cases ``dense_<layer>`` and ``slim_<layer>_pass<n>...``), and
    ``macs`` :func:`slimnfu.compress.slim.conv_macs`'s per-layer list in the same order (a
    layer's slim cycles are those of every case ``slim_<layer>_...``: its kernel-size passes
    and its 1x1 approximation pass). The
    ideal is the layer's dense cycles times its MAC ratio; ``speedup_over_ideal`` is ideal over
    cycles (1.0: the MAC saving fully reached the cycle count)."""
    rows = []
    for name, mac in zip(conv_names, macs, strict=True):
        dense = dense_rtl["by_case"][f"dense_{name}"]
        slim = sum(c for case, c in slim_rtl["by_case"].items()
                   if case.startswith(f"slim_{name}_"))
        ideal = dense * mac["macs"] / mac["macs_dense"]
        rows.append({"layer": name, "rtl_cycles_dense": dense, "rtl_cycles": slim,
                     "macs_dense": mac["macs_dense"], "macs": mac["macs"],
                     "rtl_cycles_ideal": round(ideal),
                     "speedup_over_ideal": round(ideal / slim, 3) if slim else None})
    return rows


def settings(args):
    """What a row depends on besides its network, treatment, budget and base network: a
    resumed run (``--resume``) keeps rows only from a run with the same."""
    return {"calib": args.calib, "finetune": args.finetune, "config": args.config,
            "lanes": args.lanes, "sim": args.sim, "cosim": not args.no_cosim,
            "train_subset": args.train_subset, "epochs": args.epochs}


def run_network(name, args, cfg, log=print, on_row=None, kept=None):
    """The rows of network ``name``, one per treatment and budget (``on_row(row)`` after
    each); ``kept`` (from :func:`slimnfu.bench.common.kept_rows`): rows of an earlier run
    with the same settings, reused when their base network (``model_key``) is this run's."""
    from slimnfu.compress import data, slim, train
    from slimnfu.compress.pipeline import hash_state
    from slimnfu import fixed
    from slimnfu.formats.accounting import model_stats
    from slimnfu.compress.quant import int_forward, quantize_model

    ds = NETWORKS[name]
    model, info = train.train(name, epochs=args.epochs, subset=args.train_subset,
                              progress=False)
    model_key = hash_state(model)[:20]
    kept = kept or {}
    cx, cy = data.load(ds, "calib")
    tx, ty = data.load(ds, "test")
    trx, try_ = data.load(ds, "train")
    cx, cy = cx[:args.calib], cy[:args.calib]
    sample = tuple(tx.shape[1:])
    qdense = quantize_model(model, cx[:500], cfg.dw, cfg.acc)
    cfg = _bench_cfg(qdense, cfg)
    dense_stats = model_stats(qdense)
    acc_int_base = accuracy(int_forward(qdense, tx)[0], ty, 2)
    acc_base = round(train.evaluate(model, tx, ty), 2)
    x_img = fixed.quantize(tx[:1], qdense.f_in, cfg.dw)
    dense_rtl = None
    if not args.no_cosim:
        dense_rtl = _measure(_dense_cases(qdense, x_img, cfg), cfg, args.sim)
        log(f"{name}: dense conv layers {dense_rtl['cycles']} cycles ({args.sim})")
    t0 = time.perf_counter()
    ranking = slim.importance(slim.slim_model(model), cx[:500], cy[:500])
    rank_s = time.perf_counter() - t0
    lanes = args.lanes or cfg.tn
    rows = []
    for treatment in args.treatments:
        for budget in args.budgets:
            before = kept_row(kept, name, budget, f"slim_{treatment}", model_key, log)
            if before:
                rows.append(before)
                if on_row:
                    on_row(before)
                continue
            t0 = time.perf_counter()
            sm = slim.slim_model(model)
            g = slim.greedy(sm, cx, cy, budget, treatment, ranking=ranking, dw=cfg.dw,
                            lanes=lanes, progress=not args.no_progress)
            greedy_s = time.perf_counter() - t0
            acc_greedy = round(train.evaluate(sm, tx, ty), 2)
            if args.finetune:
                slim.fine_tune(sm, trx[:args.finetune], try_[:args.finetune])
            qslim = slim.quantize_slim(sm, cx[:500], cfg.dw, cfg.acc)
            st = model_stats(qslim)
            conv_dense, conv_slim, layer_macs = slim.conv_macs(sm, sample)
            row = {
                "network": name, "dataset": ds, "method": f"slim_{treatment}",
                "budget_pct": budget, "model_key": model_key, "acc_float_base": acc_base,
                "acc_float": round(train.evaluate(sm, tx, ty), 2),
                "acc_int": accuracy(slim.slim_int_forward(qslim, tx)[0], ty, 2),
                "acc_int_base": acc_int_base, "acc_float_before_finetune": acc_greedy,
                "acc_calib_base": g["acc_calib_base"], "acc_calib_greedy": g["acc_calib"],
                "macs_dense": dense_stats["macs_dense"],
                "macs": dense_stats["macs"] - dense_stats["conv_macs"] + st["conv_macs"],
                "conv_macs_dense": dense_stats["conv_macs"], "conv_macs": st["conv_macs"],
                "params_dense": dense_stats["params"], "params": st["params"],
                "bits_dense": dense_stats["bits"], "bits": st["bits"],
                "rtl_cycles_dense": None, "rtl_cycles": None, "config": cfg.name,
                "rtl_scope": "conv layers, one test image", "calib_images": args.calib,
                "finetune_images": args.finetune, "greedy_s": round(greedy_s, 1),
                "ranking_s": round(rank_s, 1), "changes": len(g["log"]),
                "lanes": lanes, "lane_fill": g["lanes"],
                "layers": slim.slim_report(sm, sample),
            }
            assert conv_dense == row["conv_macs_dense"] and conv_slim == row["conv_macs"]
            if dense_rtl is not None:
                m = _measure(_slim_cases(qslim, fixed.quantize(tx[:1], qslim.f_in, cfg.dw),
                                         cfg), cfg, args.sim)
                row.update({
                    "rtl_cycles_dense": dense_rtl["cycles"], "rtl_cycles": m["cycles"],
                    "rtl_cycles_ideal": round(dense_rtl["cycles"] * conv_slim / conv_dense),
                    "rtl_mults": m["mults"], "rtl_gated": m["gated"],
                    "gated_share": round(m["gated"] / max(1, m["mults"]), 4),
                    "rtl_passes": m["passes"], "rtl_bit_exact": m["bit_exact"] and
                    dense_rtl["bit_exact"], "rtl_errors": m["errors"] + dense_rtl["errors"],
                    "rtl_layers": layer_rows(
                        [l.name for l in qdense.layers if l.desc.kind == "conv"], dense_rtl, m,
                        layer_macs),
                    "sim": args.sim})
                assert sum(l["rtl_cycles"] for l in row["rtl_layers"]) == m["cycles"]
            log(f"{name} {treatment} {budget}%: acc {row['acc_float']} (int {row['acc_int']}, "
                f"base {acc_base}), conv MACs {row['conv_macs']}/{row['conv_macs_dense']}, "
                f"cycles {row['rtl_cycles']}/{row['rtl_cycles_dense']} "
                f"(ideal {row.get('rtl_cycles_ideal')}), gated {row.get('gated_share')}")
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def area(log=print):
    """Yosys figures of the engine with the kernel gate off and on (config tiny)."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.synth import feature_area

    return feature_area(CONFIGS["tiny"], "kgate", "tiny_kgate_area", log)


def markdown(rows, area=None):
    """The rows (and the gate's area) as Markdown; every ratio is derived from the rows."""
    lines = ["| network | budget % | treatment | float % (base) | int % | conv MAC saving | "
             "conv RTL cycles | dense | ideal | speed-up | cycles / ideal | gated share | "
             "bit-exact |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cyc, ideal = r.get("rtl_cycles"), r.get("rtl_cycles_ideal")
        lines.append(
            f"| {r['network']} | {r['budget_pct']} | {r['method'][5:]} | {r['acc_float']:.2f} "
            f"({r['acc_float_base']:.2f}) | {r['acc_int']:.2f} | "
            f"{100 * (1 - r['conv_macs'] / r['conv_macs_dense']):.1f}% | "
            + (f"{cyc:,} | {r['rtl_cycles_dense']:,} | {ideal:,} | "
               f"{r['rtl_cycles_dense'] / cyc:.2f} | {cyc / ideal:.2f} | "
               f"{100 * r['gated_share']:.1f}% | {'yes' if r['rtl_bit_exact'] else 'NO'} |"
               if cyc else "- | - | - | - | - | - | - |"))
    per_layer = [(r, l) for r in rows for l in r.get("rtl_layers") or ()]
    if per_layer:
        lines += ["", "| network | budget % | treatment | layer | MAC saving | RTL cycles | "
                  "dense | ideal | speed-up | speed-up / ideal |",
                  "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['network']} | {r['budget_pct']} | {r['method'][5:]} | {l['layer']} | "
                  f"{100 * (1 - l['macs'] / l['macs_dense']):.1f}% | {l['rtl_cycles']:,} | "
                  f"{l['rtl_cycles_dense']:,} | {l['rtl_cycles_ideal']:,} | "
                  f"{l['rtl_cycles_dense'] / l['rtl_cycles']:.2f} | {l['speedup_over_ideal']:.2f} |"
                  for r, l in per_layer if l["rtl_cycles"]]
    if area:
        lines += ["", "| engine (tiny) | LUT4 | FF | MULT18X18D | DP16KD |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['luts']:,} | {v['ffs']:,} | {v['dsps']} | {v['brams']} |"
                  for k, v in area.items()]
    return "\n".join(lines)


def check_args(args):
    """Refuse bad options before any training (the sizes of the calib and train splits bound
    ``--calib`` and ``--finetune``)."""
    from slimnfu.compress.data import SPLITS

    n_calib = SPLITS["calib"][2] - SPLITS["calib"][1]
    n_train = SPLITS["train"][2] - SPLITS["train"][1]
    if not 1 <= args.calib <= n_calib:
        raise ValueError(f"--calib must be in [1, {n_calib}] (the calib split's size), not "
                         f"{args.calib}")
    if not 0 <= args.finetune <= n_train:
        raise ValueError(f"--finetune must be in [0, {n_train}] (the train split's size), not "
                         f"{args.finetune}")
    bad = [b for b in args.budgets if not 0 <= b <= 100]
    if bad:
        raise ValueError(f"--budgets must be in [0, 100] points, not {bad[0]}")
    if args.lanes is not None and args.lanes < 1:
        raise ValueError(f"--lanes must be >= 1 (1: off), not {args.lanes}")


def main(args):
    check_args(args)
    from slimnfu.config import get_config

    t0 = start(args)
    cfg = get_config(args.config)
    cfg = cfg.with_(name=f"{cfg.name}_kgate_bench", kgate=True)
    rows = []
    result = {"benchmark": "slim", "settings": settings(args), "rows": rows}
    if args.area_only:
        if Path(args.out).is_file():
            result = {**json.loads(Path(args.out).read_text()), "area": None}
    else:
        kept = kept_rows(args.out, "slim", result["settings"]) if args.resume else {}
        if args.resume:
            # the earlier run's rows of other networks, treatments and budgets stay
            ran = {(n, b, f"slim_{t}") for n in args.networks for b in args.budgets
                   for t in args.treatments}
            rows += [r for key, r in kept.items() if key not in ran]
        elif args.merge and Path(args.out).is_file():
            rows += [r for r in json.loads(Path(args.out).read_text())["rows"]
                     if r["network"] not in args.networks]
        for name in args.networks:
            run_network(name, args, cfg, kept=kept,
                        on_row=lambda row: (rows.append(row), write_json(args.out, result)))
    if not args.no_area:
        result["area"] = area()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["host"] = host()
    write_report(args.out, result, markdown(result["rows"], result.get("area")))
    return 0
