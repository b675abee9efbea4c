"""``slimnfu bench intake``: networks no built-in covers, through ``slimnfu run``'s flow.

Each case writes a user's files into its folder, as a user would give them: a Python file with
a ``make_model`` factory (or an ONNX file the case exports from one) and an ``.npz`` data set
(a few hundred MNIST images, or synthetic 3x32x32 ones). Then, as ``slimnfu run`` does
(:func:`slimnfu.flows.prepare`), the data and the model are checked, the model is trained for
``--train-epochs``, compressed under ``--budget`` with ``--methods`` planned per layer,
quantised and compiled, and ``--images`` test images go through its RTL on Verilator (the
first case's ``--icarus-images`` also on Icarus), every layer bit-exact against the integer
reference (:func:`slimnfu.bench.network.measure_models`).

Cases (:data:`CASES`): ``lecun`` (LeCun's LeNet-5: Tanh, AvgPool, padding), ``batchnorm``
(BatchNorm2d/1d folded, Dropout dropped), ``bias_free`` (every layer ``bias=False``),
``rgb32`` (3x32x32 inputs), ``one_conv`` (one conv: method A only), ``fc_only`` (no conv:
method C only) and ``onnx`` (the ``batchnorm`` network with ``bias=False`` convs, exported to
ONNX by the case).

The report is written after every case (``done`` counts the cases in it). Rows: per case
the input shape, the plan (planned and final method per layer), the formats,
float, compressed float and integer test accuracies, the RTL accuracy on the simulated images,
``bit_exact``, MAC and bit savings, cycles per inference and saturation events (first image).
"""

import time
import warnings
from pathlib import Path

from slimnfu.bench.common import add_threads, host, start, write_report

__all__ = ["CASES", "add_arguments", "write_case", "run_case", "main", "markdown"]

_MNIST_NET = {
    "lecun": """
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10)""",
    "batchnorm": """
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(200, 32), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Linear(32, 10)""",
    "bias_free": """
        nn.Conv2d(1, 4, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding="same", bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(216, 24, bias=False), nn.ReLU(), nn.Linear(24, 10, bias=False)""",
    "one_conv": """
        nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(144, 10)""",
    "fc_only": """
        nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)""",
    "onnx": """
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(200, 32), nn.ReLU(), nn.Linear(32, 10)""",
}

_RGB_NET = """
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(288, 16), nn.ReLU(), nn.Linear(16, 4)"""

#: The cases, in the order they run.
CASES = ("lecun", "batchnorm", "bias_free", "rgb32", "one_conv", "fc_only", "onnx")


def add_arguments(parser):
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma list of cases (default: all: {','.join(CASES)})")
    parser.add_argument("--config", default="tiny", help="base accelerator config")
    parser.add_argument("--images", type=int, default=3,
                        help="test images through each compressed RTL on Verilator")
    parser.add_argument("--icarus-images", type=int, default=1,
                        help="of those, on Icarus too (the first case only)")
    parser.add_argument("--train-images", type=int, default=600,
                        help="images of each case's data set (MNIST or synthetic)")
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--budget", type=float, default=2.0, help="accuracy budget, points")
    parser.add_argument("--methods", default="auto", help="auto or a comma list")
    add_threads(parser)


def _factory(body):
    return ("from torch import nn\n\n\ndef make_model():\n"
            f"    return nn.Sequential({body.strip()})\n")


def write_case(case, folder, images=600, seed=0):
    """Write case ``case``'s model and data into ``folder``; return ``(model_spec,
    data_spec)`` as ``slimnfu run`` takes them (MNIST cases read ``$SLIMNFU_DATA``)."""
    import numpy as np
    import torch

    from slimnfu.compress import data

    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; the cases are {', '.join(CASES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_test = max(28, images // 5)
    if case == "rgb32":
        rng = np.random.default_rng(seed)
        n = images + n_test
        y = np.arange(n) % 4
        x = rng.integers(0, 80, (n, 3, 32, 32)).astype(np.uint8)
        for c in range(4):
            r, q = divmod(c, 2)
            x[y == c, c % 3, 16 * r:16 * r + 16, 16 * q:16 * q + 16] += 150
        arrays = {"x": x[:images], "y": y[:images], "x_test": x[images:], "y_test": y[images:]}
        body = _RGB_NET
    else:
        xs, ys = data.load("mnist", "trainval")
        xt, yt = data.load("mnist", "test")
        arrays = {"x": (xs[:images] * 255).round().to(torch.uint8).numpy(),
                  "y": ys[:images].numpy(), "x_test": (xt[:n_test] * 255).round()
                  .to(torch.uint8).numpy(), "y_test": yt[:n_test].numpy()}
        body = _MNIST_NET[case]
    np.savez(folder / "data.npz", **arrays)
    py = folder / f"{case}.py"
    py.write_text(_factory(body))
    spec = f"{py}:make_model"
    if case == "onnx":
        from slimnfu.compress.intake import load_model

        torch.manual_seed(seed)
        model = load_model(spec).eval()
        # no constant folding: the file keeps its BatchNormalization nodes for the intake
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.rand(1, 1, 28, 28),), str(folder / "onnx.onnx"),
                              dynamo=False, do_constant_folding=False)
        py.unlink()
        spec = str(folder / "onnx.onnx")
    return spec, str(folder / "data.npz")


def run_case(case, folder, config="tiny", images=3, icarus_images=0, train_images=600,
             train_epochs=3, budget=2.0, methods="auto", compress_options=None,
             build_root=None, log=print):
    """One case through the flow; its row."""
    import torch

    from slimnfu import flows
    from slimnfu.bench.network import measure_models

    t0 = time.monotonic()
    spec, data_spec = write_case(case, folder, train_images)
    torch.manual_seed(0)
    prep = flows.prepare(spec, data_spec, folder, train_epochs=train_epochs, budget=budget,
                         methods=methods, config=config, compress_options=compress_options,
                         log=log)
    hist = prep["history"]
    rows = measure_models(prep["scenario"], prep["acc_base"], prep["qdense"], prep["qmodel"],
                          hist, prep["data"].test, images, icarus_images, 0,
                          floats={"dense": prep["model"], "compressed": prep["float"]},
                          calib=prep["calib"], build_root=build_root, log=log)
    r = rows[-1]
    return {"case": case, "model": Path(spec.split(":")[0]).name,
            "input_shape": list(prep["data"].input_shape), "classes": prep["data"].classes,
            "train_images": len(prep["data"].train[1]), "plan": hist["plan"],
            "formats": r["formats"], "acc_float_base": prep["acc_base"],
            "acc_float": r["acc_float"], "acc_int": r["acc_int"], "acc_rtl": r.get("acc_rtl"),
            "images_rtl": r.get("images_rtl"), "bit_exact": r.get("bit_exact"),
            "icarus_images": r.get("icarus_images"),
            "icarus_bit_exact": r.get("icarus_bit_exact"),
            "macs_dense": r["macs_dense"], "macs": r["macs"], "bits_dense": r["bits_dense"],
            "bits": r["bits"], "rtl_cycles": r.get("rtl_cycles"),
            "sat_events": r.get("sat_events"), "config": r["config"], "accel": r["accel"],
            "wall_s": round(time.monotonic() - t0, 1)}


def markdown(rows):
    lines = ["| case | input | formats | float % | int % | RTL % (images) | bit-exact | "
             "MACs x | bits x | cycles | saturations |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        fmts = ", ".join(f"{k} {v}" for k, v in r["formats"].items() if "pool" not in k)
        lines.append(
            f"| {r['case']} | {'x'.join(map(str, r['input_shape']))} | {fmts} | "
            f"{r['acc_float_base']:.2f} | {r['acc_int']:.2f} | {r['acc_rtl']} "
            f"({r['images_rtl']}) | {'yes' if r['bit_exact'] else 'NO'} | "
            f"{r['macs_dense'] / r['macs']:.2f} | {r['bits_dense'] / r['bits']:.2f} | "
            f"{r['rtl_cycles']:,} | {r['sat_events']} |")
    return "\n".join(lines)


def main(args):
    from slimnfu import paths
    from slimnfu.compress.pipeline import parse_methods

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        raise SystemExit(f"--cases must be a comma list of {', '.join(CASES)}, not "
                         f"{args.cases!r}")
    if not 1 <= args.images <= 100 or not 0 <= args.icarus_images <= args.images:
        raise SystemExit(f"--images must be in 1..100 and --icarus-images in 0..--images, not "
                         f"{args.images} and {args.icarus_images}")
    if not 100 <= args.train_images <= 60000:
        raise SystemExit(f"--train-images must be in 100..60000, not {args.train_images}")
    parse_methods(args.methods)
    from slimnfu.atomic import write_json

    t0 = start(args)
    rows = []
    for i, case in enumerate(cases):
        folder = paths.build_root() / "bench" / "intake" / case
        rows.append(run_case(case, folder, args.config, args.images,
                             args.icarus_images if i == 0 else 0, args.train_images,
                             args.train_epochs, args.budget, args.methods))
        report = {"benchmark": "intake", "cases": cases, "done": len(rows), "rows": rows,
                  "host": host(), "wall_s": round(time.perf_counter() - t0, 1)}
        if len(rows) < len(cases):
            write_json(args.out, report)
    write_report(args.out, report, markdown(rows))
    return 0 if all(r["bit_exact"] and r["icarus_bit_exact"] is not False for r in rows) else 1
