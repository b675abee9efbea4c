"""``slimnfu bench ikr``: IKR pattern pruning end to end, against unstructured and filter pruning.

For each network and accuracy budget (percent points of validation accuracy below the float
baseline; validation = the last ``--val`` images of the calib split, which training never
sees, and never the test set; quantisation calibrates on its first ``--calib`` images):

* ``method="ikr"``: :func:`slimnfu.compress.ikr.ikr_prune`, quantised (format ``"ikr"``),
  float and integer test accuracy, MACs/params/bits from :mod:`slimnfu.formats.accounting`
  (values, indices and pattern tables counted), and for every IKR conv layer the RTL cycles
  measured on Verilator (IKR run and the same layer run dense on the same engine, both
  bit-exact against the integer reference) next to the analytic ``ikr_cycles``.
* ``method="unstructured"``: ``torch.nn.utils.prune.l1_unstructured`` on each conv at the
  largest amount (from ``AMOUNTS``) within the same budget, fine-tuned as long as IKR. Bits:
  the non-zero values plus a 1-bit position map per dense conv weight (cheaper than an index
  per non-zero at these sparsities); its cycles on this engine are the dense ones.
* ``method="filter"``: L1-norm filter pruning of each conv (same search), counting the
  removed filters and the next layer's dead inputs. Cycles not measured (``rtl_cycles`` null).

``rtl_cycles*`` cover the conv layers only (``rtl_cycles_scope``).

The report is written after every row. ``--resume`` keeps the rows ``--out`` holds from a run
with the same settings (:func:`settings`) and the same base network (``model_key``, its
state's hash) and runs only the missing ones: a VGG run takes hours.
"""

import copy
import time
from typing import NamedTuple

from slimnfu.atomic import write_json
from slimnfu.bench.common import (accuracy, add_threads, host, kept_row, kept_rows, start,
                                  write_report)

__all__ = ["main", "add_arguments", "run"]

NETWORKS = ("lenet5", "vgg_fmnist")
AMOUNTS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def add_arguments(parser):
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 1.0])
    parser.add_argument("--val", type=int, default=3000,
                        help="validation images: the tail of the 5000-image calib split")
    parser.add_argument("--calib", type=int, default=2000)
    parser.add_argument("--patterns", type=int, default=16, help="P per layer (<= 16)")
    parser.add_argument("--finetune-batches", type=int, default=150)
    parser.add_argument("--share", type=int, default=1,
                        help="output channels per shared pattern (default 1: a pattern per "
                             "kernel; 4: one per input channel and tiny's tn = 4 output lanes; "
                             "see slimnfu.compress.ikr)")
    parser.add_argument("--lanes", action="store_true",
                        help="measure the cycles on the lane IKR unit (ikr.lanes: a tap per "
                             "input lane, n cycles a kernel group); needs --share a multiple of "
                             "tiny's tn = 4")
    parser.add_argument("--no-cosim", action="store_true", help="skip the RTL cycle runs")
    add_threads(parser)
    parser.add_argument("--area-only", action="store_true",
                        help="only (re)measure the area: the tiny engine with ikr off and on "
                             "(Yosys ECP5, no place and route); keeps the rows of --out")
    parser.add_argument("--no-area", action="store_true", help="skip the area measurement")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows --out already holds from a run with the same "
                             "settings and base network, and run only the missing ones (the "
                             "report is written after every row)")


class Splits(NamedTuple):
    """One network's images: training, validation (the tail of the calib split), quantisation
    calibration (its head) and test."""
    train_x: object
    train_y: object
    val_x: object
    val_y: object
    calib_x: object
    test_x: object
    test_y: object


def _bench_cfg(q, lanes=False):
    """``tiny`` with the IKR decoder (its window and banks as the IKR format configures them for
    ``q``'s IKR layers; with ``lanes`` the lane unit, ``ikr.lanes``) and buffers deep enough
    for every conv layer of ``q`` (its dense form too, which the same engine runs for the
    comparison)."""
    from slimnfu.config import CONFIGS

    convs = [l.weight_format.pass_desc(l) for l in q.layers if l.desc.kind == "conv"]
    convs += [l.desc for l in q.layers if l.desc.kind == "conv"]
    cfg = CONFIGS["tiny"].with_(ikr={"lanes": lanes})
    ikr_layers = [l for l in q.layers if l.weight_format.pass_desc(l).ikr_n]
    if ikr_layers:
        cfg = ikr_layers[0].weight_format.configure(cfg, ikr_layers)
    cfg = cfg.fit_buffers(convs)
    unit = "_lanes" if lanes else f"_t{cfg.ikr.tiles}"
    return cfg.with_(name=f"tiny_ikr_{q.input_shape[1]}px_sb{cfg.sb_depth}_k{cfg.ikr.kmax}"
                          f"{unit}")


def _cosim_layers(q, x_img, cfg):
    """Run each IKR conv of ``q`` (IKR and dense) on Verilator with its real input."""
    from slimnfu.compress.quant import int_forward_layers, quantize_input
    from slimnfu.rtl.engine import LayerEngine
    from slimnfu.sim.ikr_cases import as_dense, ikr_case
    from slimnfu.sim.runner import run_regression

    x = quantize_input(q, x_img)
    outs = int_forward_layers(q, x)
    pairs = []
    for i, layer in enumerate(q.layers):
        run = layer.weight_format.pass_desc(layer)
        if run.ikr_n == 0:
            continue
        xin = (x if i == 0 else outs[i - 1])[0]
        rec = layer.compressed
        case = ikr_case(layer.name, run, xin, layer.w, layer.b, rec.patterns, rec.index,
                        cfg, layer.pwl, "model")
        pairs.append((case, as_dense(case)))
    res = run_regression(cfg, [c for pair in pairs for c in pair], sims=("verilator",),
                         log=lambda *_: None)
    layers = []
    for k, (case, dense) in enumerate(pairs):
        r_ikr, r_dense = res[2 * k], res[2 * k + 1]
        d = case.desc
        k = d.layer.k
        layers.append({
            "name": r_ikr["name"], "k": k, "n": d.ikr_n,
            "P": int(case.compressed.patterns.shape[0]),
            "passed": r_ikr["passed"] and r_dense["passed"],
            "error": r_ikr["error"] or r_dense["error"],
            "rtl_cycles": r_ikr["cycles"], "rtl_cycles_dense": r_dense["cycles"],
            "analytic_ikr_cycles": d.ikr_cycles(cfg) + LayerEngine.latency(cfg, d),
            "analytic_dense_cycles": d.dense_cycles(cfg) + LayerEngine.latency(cfg, d),
            "speedup": (r_dense["cycles"] / r_ikr["cycles"]) if r_ikr["cycles"] else None,
            "ideal_speedup": k * k / d.ikr_n})
        L = layers[-1]
        if L["speedup"]:
            L["speedup_over_ideal"] = L["speedup"] / L["ideal_speedup"]
    return layers


def _conv_prune_stats(model, masks_or_kept, kind, dw, acc, input_shape):
    """MACs/params/bits of the network after unstructured or filter pruning (analytic)."""
    import torch
    from torch import nn

    x = torch.zeros(1, *input_shape)
    macs = params = bits = 0
    conv_macs = 0
    kept_in = input_shape[0]
    full_in = input_shape[0]
    for m in model:
        if isinstance(m, nn.Conv2d):
            y = m(x)
            hw = y.shape[2] * y.shape[3]
            kk = m.kernel_size[0] * m.kernel_size[1]
            if kind == "unstructured":
                nnz = int((m.weight != 0).sum())
                p = nnz + m.out_channels
                b = nnz * dw + m.weight.numel() + m.out_channels * acc
                mc = nnz * hw
            else:
                kept = int((m.weight.abs().sum((1, 2, 3)) != 0).sum())
                w = kept * kept_in * kk
                p, b, mc = w + kept, w * dw + kept * acc, w * hw
                kept_in = kept
            full_in = m.out_channels
            macs, params, bits, conv_macs = macs + mc, params + p, bits + b, conv_macs + mc
            x = y
        elif isinstance(m, nn.Linear):
            scale = kept_in / full_in if kind == "filter" else 1.0
            n_in = round(m.in_features * scale)
            w = n_in * m.out_features
            macs, params, bits = macs + w, params + w + m.out_features, \
                bits + w * dw + m.out_features * acc
            kept_in = full_in = m.out_features
            x = torch.zeros(1, m.out_features)
        else:
            x = m(x)
    return {"macs": macs, "conv_macs": conv_macs, "params": params, "bits": bits}


def _baseline_search(base, kind, xs, ys, xv, yv, budget, base_val, batches, seed=0,
                     cache=None):
    """Largest amount in AMOUNTS whose fine-tuned model is within ``budget``.

    ``cache`` (a dict) keeps each ``(kind, amount)`` fine-tune and its validation accuracy,
    so a second budget on the same base reuses the first one's runs (they are seeded, so
    running them again would give the same models).
    """
    from slimnfu.compress.train import evaluate

    best, best_amount = None, 0.0
    cache = {} if cache is None else cache
    for amount in AMOUNTS:
        if (kind, amount) not in cache:
            m = _baseline_prune(base, kind, amount, xs, ys, batches, seed)
            cache[kind, amount] = m, evaluate(m, xv, yv)
        m, val = cache[kind, amount]
        if base_val - val <= budget:
            best, best_amount = m, amount
        else:
            break
    return best, best_amount


def _baseline_prune(base, kind, amount, xs, ys, batches, seed):
    """``base`` pruned by ``kind`` at ``amount`` and fine-tuned ``batches`` Adam steps."""
    import torch
    from torch import nn
    from torch.nn.utils import prune

    from slimnfu.compress.train import fit

    m = copy.deepcopy(base)
    for conv in [c for c in m if isinstance(c, nn.Conv2d)]:
        if kind == "unstructured":
            prune.l1_unstructured(conv, "weight", amount=amount)
        else:
            prune.ln_structured(conv, "weight", amount=amount, n=1, dim=0)
    fit(m, xs, ys, 5e-4, 128, seed, batches=batches)
    for conv in [c for c in m if isinstance(c, nn.Conv2d)]:
        prune.remove(conv, "weight")
        if kind == "filter":
            with torch.no_grad():
                dead = conv.weight.abs().sum((1, 2, 3)) == 0
                conv.bias[dead] = 0
    return m


def settings(val_n, calib_n, patterns, ft, cosim, share=1, lanes=False):
    """What a row depends on besides its network, budget and base network: a resumed run
    keeps rows only from a run with the same (``share`` and ``lanes`` only when not 1 and
    off, so that reports written before they existed still resume)."""
    return {"val": val_n, "calib": calib_n, "patterns": patterns, "finetune_batches": ft,
            "cosim": cosim, **({"share": share} if share != 1 else {}),
            **({"lanes": True} if lanes else {})}


def run(networks, budgets, val_n=3000, calib_n=2000, patterns=16, ft=150, cosim=True,
        log=print, kept=None, save=None, share=1, lanes=False):
    """The rows of ``networks`` at ``budgets``: per budget the IKR row, then the unstructured
    and filter pruning baselines. ``kept`` (from :func:`kept_rows`): rows of an earlier run
    with the same settings, reused when their base network (``model_key``) is this run's;
    ``save(rows)`` is called after every row."""
    from slimnfu.compress import data, ikr
    from slimnfu.compress.pipeline import hash_state
    from slimnfu.formats.accounting import model_stats
    from slimnfu.compress.models import network_info
    from slimnfu.compress.quant import int_forward, quantize_model
    from slimnfu.compress.train import evaluate, train

    kept = kept or {}
    rows = []

    def add(row):
        rows.append(row)
        if save:
            save(rows)

    for name in networks:
        ds = network_info(name)["dataset"]
        xs, ys = data.load(ds, "train")
        xc, yc = data.load(ds, "calib")
        if val_n < 1 or calib_n < 1 or val_n + calib_n > xc.shape[0]:
            raise ValueError(f"--val {val_n} and --calib {calib_n} must be >= 1 and share the "
                             f"{xc.shape[0]} images of the calib split")
        model, _ = train(name, progress=False)
        model_key = hash_state(model)[:20]
        xv, yv = xc[-val_n:], yc[-val_n:]
        calib = xc[:calib_n]
        xtest, ytest = data.load(ds, "test")
        splits = Splits(xs, ys, xv, yv, calib, xtest, ytest)
        acc_base = round(evaluate(model, xtest, ytest), 4)
        base_val = evaluate(model, xv, yv)
        qd = quantize_model(model, calib)
        sd = model_stats(qd)
        in_shape = tuple(xs.shape[1:])
        baseline_runs = {}
        for budget in budgets:
            t0 = time.perf_counter()
            opts = ikr.IkrOptions(patterns=patterns, finetune_batches=ft, share=share)
            common = {"network": name, "dataset": ds, "budget_pct": budget,
                      "acc_float_base": acc_base, "macs_dense": sd["macs_dense"],
                      "conv_macs_dense": sd["conv_macs_dense"],
                      "params_dense": sd["params_dense"], "bits_dense": sd["bits_dense"],
                      "rtl_cycles_scope": "conv layers", "model_key": model_key}
            earlier = kept_row(kept, name, budget, "ikr", model_key, log)
            add(earlier or _ikr_row(model, splits, budget, opts, common, cosim, t0, log,
                                    lanes))
            dense_cyc = rows[-1]["rtl_cycles_dense"]
            for kind in ("unstructured", "filter"):
                if earlier := kept_row(kept, name, budget, kind, model_key, log):
                    add(earlier)
                    continue
                m, amount = _baseline_search(model, kind, xs, ys, xv, yv, budget, base_val,
                                             ft * 4 + opts.final_batches,
                                             cache=baseline_runs)
                if m is None:
                    m, amount = model, 0.0
                st = _conv_prune_stats(m, None, kind, 16, 48, in_shape)
                add({**common, "method": kind, "amount": amount,
                     "acc_float": round(evaluate(m, xtest, ytest), 4),
                     "acc_int": accuracy(int_forward(quantize_model(m, calib), xtest)[0], ytest),
                     **st, "rtl_cycles_dense": dense_cyc,
                     "rtl_cycles": dense_cyc if kind == "unstructured" else None})
                log(f"{name} budget {budget}: {kind} amount {amount}")
    return rows


def _ikr_row(model, splits, budget, opts, common, cosim, t0, log, lanes=False):
    """The IKR row of one budget: search, quantise, the integer test accuracy and (``cosim``)
    each IKR layer on Verilator against its dense form (on the lane unit with ``lanes``).
    ``splits``: :class:`Splits`."""
    from slimnfu.compress import ikr
    from slimnfu.formats.accounting import model_stats
    from slimnfu.compress.quant import int_forward, quantize_model
    from slimnfu.compress.train import evaluate

    d = splits
    pruned, hist = ikr.ikr_prune(model, d.train_x, d.train_y, d.val_x, d.val_y, budget, opts,
                                 log=log)
    q = ikr.mark_quantised(quantize_model(pruned, d.calib_x), pruned)
    s = model_stats(q)
    logits, _ = int_forward(q, d.test_x)
    cfg = _bench_cfg(q, lanes)
    layers = _cosim_layers(q, d.test_x[:1], cfg) if cosim else []
    row = {**common, "method": "ikr",
           "acc_float": round(evaluate(pruned, d.test_x, d.test_y), 4),
           "acc_int": accuracy(logits, d.test_y), "macs": s["macs"],
           "conv_macs": s["conv_macs"], "params": s["params"], "bits": s["bits"],
           "rtl_cycles_dense": sum(L["rtl_cycles_dense"] for L in layers) if layers else None,
           "rtl_cycles": sum(L["rtl_cycles"] for L in layers) if layers else None,
           "config": cfg.name, "n": hist["n"], "P": hist["P"],
           "share": hist["share"],
           "val_acc_base": hist["val_acc_base"], "val_acc": hist["val_acc"],
           "tries": hist["tries"], "layers": layers,
           "all_bit_exact": all(L["passed"] for L in layers),
           "wall_s": round(time.perf_counter() - t0, 1)}
    log(f"{common['network']} budget {budget}: ikr n={hist['n']} acc {row['acc_float']}")
    return row


def _x(dense, kept):
    return f"{dense / kept:.2f}" if kept else "all removed"


def markdown_tables(rows):
    """The rows as two Markdown tables (networks, then IKR layers); ratios come from the rows."""
    lines = ["| network | budget % | method | float % (base) | int % | conv MACs x | params x | "
             "bits x | conv RTL cycles (dense) | speed-up |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        what = r["method"] + (f" {r['amount']:.0%}" if "amount" in r else "")
        cyc, speed = "-", "-"
        if r.get("rtl_cycles"):
            cyc = f"{r['rtl_cycles']:,} ({r['rtl_cycles_dense']:,})"
            speed = f"{r['rtl_cycles_dense'] / r['rtl_cycles']:.2f}"
        lines.append(f"| {r['network']} | {r['budget_pct']} | {what} | {r['acc_float']:.2f} "
                     f"({r['acc_float_base']:.2f}) | {r['acc_int']:.2f} | "
                     f"{_x(r['conv_macs_dense'], r['conv_macs'])} | "
                     f"{_x(r['params_dense'], r['params'])} | {_x(r['bits_dense'], r['bits'])} "
                     f"| {cyc} | {speed} |")
    lines += ["", "| network | budget % | layer | K | n | P | RTL cycles | dense cycles | "
                  "speed-up | ideal K*K/n | speed-up / ideal | bit-exact |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        for L in r.get("layers") or []:
            p = L.get("P", "-")
            lines.append(f"| {r['network']} | {r['budget_pct']} | {L['name']} | {L['k']} | "
                         f"{L['n']} | {p} | {L['rtl_cycles']:,} | {L['rtl_cycles_dense']:,} | "
                         f"{L['speedup']:.2f} | {L['ideal_speedup']:.2f} | "
                         f"{L['speedup_over_ideal']:.2f} | {'yes' if L['passed'] else 'NO'} |")
    return "\n".join(lines)


def area(log=print):
    """Yosys (generic + ECP5) figures of the tiny engine with the IKR decoder off and on."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.synth import feature_area

    return feature_area(CONFIGS["tiny"], "ikr", "tiny_ikr_area", log)


def main(args):
    import json
    from pathlib import Path

    from slimnfu.config import CONFIGS

    t0 = start(args)
    if args.share < 1:
        raise ValueError(f"--share must be >= 1 (1: a pattern per kernel), not {args.share}")
    tn = CONFIGS["tiny"].tn
    if args.lanes and args.share % tn:
        raise ValueError(f"--lanes needs --share a multiple of tiny's tn = {tn} (the lane unit "
                         f"fetches one tap per input lane for the tile's {tn} output "
                         f"channels), not {args.share}")
    want = settings(args.val, args.calib, args.patterns, args.finetune_batches,
                    not args.no_cosim, args.share, args.lanes)
    report = {"benchmark": "ikr", "settings": want, "rows": [], "area": None, "host": host()}
    if args.area_only:
        if Path(args.out).is_file():
            report = {**json.loads(Path(args.out).read_text()), "area": None}
    else:
        kept = kept_rows(args.out, "ikr", want) if args.resume else {}
        ran = {(name, budget) for name in args.networks for budget in args.budgets}
        # the earlier run's rows of other networks and budgets stay in the report
        others = [r for key, r in kept.items() if key[:2] not in ran]
        done = []

        def save(rows):
            # written after every row, so an interrupted run keeps what it finished
            write_json(args.out, {**report, "rows": others + done + rows,
                                  "wall_s": round(time.perf_counter() - t0, 1)})

        for name in args.networks:
            done += run([name], args.budgets, args.val, args.calib, args.patterns,
                        args.finetune_batches, not args.no_cosim, kept=kept, save=save,
                        share=args.share, lanes=args.lanes)
        report["rows"] = others + done
    if not args.no_area:
        report["area"] = area()
    lines = [markdown_tables(report["rows"])]
    if report["area"]:
        lines += ["", "| engine (tiny) | LUT4 | FF | MULT18X18D | DP16KD |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {label} | {a['luts']} | {a['ffs']} | {a['dsps']} | {a['brams']} |"
                  for label, a in report["area"].items()]
    write_report(args.out, {**report, "wall_s": round(time.perf_counter() - t0, 1)},
                 "\n".join(lines))
    return 0
