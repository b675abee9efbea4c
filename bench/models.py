"""``slimnfu bench models``: the dense reference networks, float and integer, on the full test set.

For each network (LeNet-300-100 and LeNet-5 on MNIST, the VGG-style network on Fashion-MNIST):
train it (or load it from the checkpoint cache), measure the float test accuracy, quantise it
on the calib split at each DW and measure the integer-reference accuracy on the full test set,
and count MACs, parameters and bits with :mod:`slimnfu.formats.accounting`.

One row per (network, dw) with the docs/design.md section 9 keys (method ``"dense"``). RTL cycles
are not measured here (``rtl_cycles*`` are null); ``analytic_cycles_<config>`` is the
analytic dense cycle count ``sum(LayerDesc.dense_cycles)`` for each named config.
"""

import time

from slimnfu.bench.common import accuracy, add_threads, host, start, write_report

__all__ = ["main", "add_arguments", "run", "markdown_table"]

NETWORKS = ("lenet300", "lenet5", "vgg_fmnist")


def add_arguments(parser):
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS,
                        help="networks to run (default: all three)")
    parser.add_argument("--dws", nargs="+", type=int, default=[16, 8],
                        help="data widths (default: 16 8)")
    parser.add_argument("--calib", type=int, default=5000,
                        help="calibration images from the calib split (default 5000)")
    parser.add_argument("--test-limit", type=int,
                        help="evaluate on the first N test images only (default: all)")
    parser.add_argument("--subset", type=int, help="train on the first N images (quick runs)")
    add_threads(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(networks=NETWORKS, dws=(16, 8), calib_n=5000, test_limit=None, subset=None,
        progress=True):
    """Return the list of rows (see the module docstring)."""
    from slimnfu.config import CONFIGS, get_config
    from slimnfu.compress import data
    from slimnfu.formats.accounting import model_stats
    from slimnfu.compress.models import network_info
    from slimnfu.compress.quant import int_forward, quantize_model
    from slimnfu.compress.train import evaluate, train

    for dw in dws:
        get_config("tiny").with_(dw=dw)
    if calib_n < 1:
        raise ValueError(f"--calib must be >= 1, not {calib_n}")
    rows = []
    for name in networks:
        dataset = network_info(name)["dataset"]
        model, info = train(name, subset=subset, progress=progress)
        x_test, y_test = data.load(dataset, "test")
        if test_limit is not None:
            x_test, y_test = x_test[:test_limit], y_test[:test_limit]
        calib, _ = data.load(dataset, "calib")
        acc_float = round(evaluate(model, x_test, y_test), 4)
        for dw in dws:
            start = time.perf_counter()
            q = quantize_model(model, calib[:calib_n], dw=dw)
            logits, count = int_forward(q, x_test)
            int_s = time.perf_counter() - start
            s = model_stats(q)
            row = {
                "network": name, "dataset": dataset, "method": "dense", "budget_pct": None,
                "acc_float_base": acc_float, "acc_float": acc_float,
                "acc_int": accuracy(logits, y_test),
                "macs_dense": s["macs_dense"], "macs": s["macs"],
                "conv_macs_dense": s["conv_macs_dense"], "conv_macs": s["conv_macs"],
                "params_dense": s["params_dense"], "params": s["params"],
                "bits_dense": s["bits_dense"], "bits": s["bits"],
                "rtl_cycles_dense": None, "rtl_cycles": None,
                "dw": dw, "train_s": info["train_s"], "train_cache_hit": info["cache_hit"],
                "sat_events": count.events, "test_images": int(x_test.shape[0]),
                "calib_images": int(min(calib_n, calib.shape[0])),
                "int_quant_eval_s": round(int_s, 3), "subset": subset,
                "layers": [{k: l[k] for k in ("name", "kind", "macs", "params", "bits")}
                           for l in s["layers"]],
                "scales": [{"name": l.name, "f_x": l.f_x, "f_w": l.f_w, "f_y": l.f_y,
                            "shift": l.desc.shift} for l in q.layers],
            }
            for cname, cfg in CONFIGS.items():
                row[f"analytic_cycles_{cname}"] = sum(l.desc.dense_cycles(cfg)
                                                      for l in q.layers)
            rows.append(row)
            if progress:
                print(f"{name} dw={dw}: float {acc_float:.2f}% int {row['acc_int']:.2f}% "
                      f"sat {count.events}", flush=True)
    return rows


def markdown_table(rows):
    """The rows as a Markdown table (ratios derived from the rows)."""
    lines = ["| network | dataset | DW | float % | int % | int - float | MACs | params | "
             "bits | sat events | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['dataset']} | {r['dw']} | {r['acc_float']:.2f} | "
                     f"{r['acc_int']:.2f} | {r['acc_int'] - r['acc_float']:+.2f} | "
                     f"{r['macs']:,} | {r['params']:,} | {r['bits']:,} | {r['sat_events']} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


def main(args):
    t0 = start(args)
    rows = run(args.networks, args.dws, args.calib, args.test_limit, args.subset,
               not args.no_progress)
    write_report(args.out, {"benchmark": "models", "rows": rows,
                            "wall_s": round(time.perf_counter() - t0, 3),
                            "host": host(args.threads)}, markdown_table(rows))
    return 0
