"""``slimnfu bench permfc``: permuted-feature FC compression (method C), measured end to end.

Default: the Pareto sweep (:func:`pareto_sweep`): per network (LeNet-300-100, LeNet-5 fc1, the
VGG head) accuracy against FC bits over the group count ``G`` of the grouped generated
permutations (:data:`SWEEP`), in both families (``perm_affine``: affine, ``perm_quadratic``:
quadratic), with HashedNets and magnitude pruning at each point's bits; every method is
initialised from the dense layer and trained with early stopping on the validation split
under the same epoch budget (by default one Adam on a one-cycle schedule, with distillation
from the dense head). Rows :data:`PARETO_KEYS` (and more), the table, and the plot
``permfc_pareto.png`` beside the report (``build/bench/permfc_pareto.png``).

``--variants``: the earlier comparison of the one-sequence variants, below.

For each network (LeNet-300-100 and LeNet-5 on MNIST, the FC head of the VGG-style network on
Fashion-MNIST) the trained dense model (checkpoint cache) is the base. Its FC layers (all but
the classifier, unless ``--compress-classifier``) are compressed by

* ``perm_affine``: generated permutations ``(a_j*i + b_j) mod N``, ``s`` and biases tuned;
* ``perm_index``: data-driven (mean sorted row, rank-order index ROM), ``s`` and biases tuned;
* ``hashed``: HashedNets weight sharing with the same weight bits per layer as ``perm_affine``;
* ``pruned``: magnitude pruning with the same weight bits per layer as ``perm_affine``
  (kept values plus their column indices and row lengths).

Every variant gets the same fine-tuning (``--epochs`` over the first ``--train-subset`` train
images), is quantised on the calib split and evaluated, float and integer, on the test set.
Bits come from :mod:`slimnfu.formats.accounting` (the perm formats count ``s``, biases and
every permutation bit); for the baselines the compressed layers' dense weight bits are
replaced by the baseline's storage (:mod:`slimnfu.compress.permfc_baselines`).

RTL cycles (``--rtl``): every compressed FC layer of each network, in both perm variants, and
the same layer dense, run in co-simulation (Verilator by default) on a ``tiny``-shaped build
with buffers deep enough for these layers (config ``tiny_permbench``), with a real input
(the integer activation of the first test image), checked bit for bit against
``fixed.run_layer``. ``rtl_cycles_dense`` / ``rtl_cycles`` are the sums over those layers
(``rtl_scope = "compressed fc layers"``).

Area (``--synth``): the address generator and the ``s`` memory of the ``tiny`` config alone,
and the whole engine of ``tiny`` with ``perm`` on and off, through Yosys (generic and ECP5).
"""

import json
import time
from pathlib import Path

from slimnfu import paths
from slimnfu.atomic import write_json
from slimnfu.bench.common import accuracy, add_threads, host, start, write_report

__all__ = ["main", "add_arguments", "run", "markdown_table"]

NETWORKS = ("lenet300", "lenet5", "vgg_fmnist")
METHODS = ("perm_affine", "perm_index", "hashed", "pruned")


def add_arguments(parser):
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (default 1)")
    parser.add_argument("--train-subset", type=int, default=20000,
                        help="fine-tune on the first N train images (default 20000)")
    parser.add_argument("--calib", type=int, default=2000, help="calibration images")
    parser.add_argument("--test-limit", type=int, help="evaluate on the first N test images")
    parser.add_argument("--compress-classifier", action="store_true",
                        help="also compress the last Linear")
    parser.add_argument("--no-rtl", action="store_true", help="skip the co-simulation")
    parser.add_argument("--sim", default="verilator", choices=("verilator", "icarus"))
    parser.add_argument("--no-synth", action="store_true", help="skip the area measurement")
    parser.add_argument("--area-only", action="store_true",
                        help="only (re)measure the area; keep the rows of an existing --out")
    add_threads(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", action="store_true",
                        help="instead of the Pareto sweep, the one-sequence variants "
                             "(perm_affine, perm_index, hashed, pruned) fine-tuned --epochs, "
                             "with their RTL cycles")
    parser.add_argument("--sweep-methods", nargs="+", default=list(SWEEP_METHODS),
                        choices=SWEEP_METHODS)
    parser.add_argument("--points", nargs="+", metavar="G1,G2",
                        help="group counts of the sweep points, one per compressed module "
                             "(default: SWEEP's per network)")
    parser.add_argument("--quick", action="store_true",
                        help="sweep: only the point near 20x fewer FC bits (10x on VGG) per "
                             "network (QUICK)")
    parser.add_argument("--max-epochs", type=int, default=30,
                        help="sweep: epoch budget of every method (default 30)")
    parser.add_argument("--patience", type=int, default=3,
                        help="sweep: early-stopping patience in epochs (default 3)")
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="sweep: peak Adam rate (default 3e-3)")
    parser.add_argument("--schedule", default="onecycle", choices=("epoch", "onecycle"),
                        help="sweep: learning-rate schedule of every method (default onecycle: "
                             "one Adam over the epoch budget; epoch: a new Adam per epoch at a "
                             "per-epoch cosine rate)")
    parser.add_argument("--distill", type=float, default=0.7,
                        help="sweep: weight of distillation from the dense network in every "
                             "method's loss, 0 to 1 (default 0.7)")
    parser.add_argument("--candidates", type=int, default=16,
                        help="sweep: generated permutations tried per row at init")
    parser.add_argument("--sweep-subset", type=int,
                        help="sweep: train on the first N train images (default all 55,000)")
    parser.add_argument("--base-epochs", nargs="+", default=[], metavar="NET=EPOCHS",
                        help="train a network's dense base for this many epochs instead of "
                             "its default (e.g. lenet5=2); other networks use the default")


def parse_base_epochs(items):
    """``["lenet5=2", ...]`` -> ``{"lenet5": 2}``; one message names a bad item."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in NETWORKS or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--base-epochs needs NET=EPOCHS with NET one of "
                             f"{', '.join(NETWORKS)} and EPOCHS >= 1, not {item!r}")
        out[name] = int(value)
    return out


def _bench_config():
    from slimnfu.config import get_config

    return get_config("tiny").with_(name="tiny_permbench", sb_depth=65536,
                                    perm={"depth": 4096})


def _compress(base, method, layers, dw, seed):
    """The compressed float model and per-layer baseline storage (bits, params)."""
    from slimnfu.compress import permfc
    from slimnfu.formats.perm import index_bits

    if method.startswith("perm_"):
        return permfc.compress_model(base, method[5:], layers=layers, seed=seed), {}
    # perm_affine's s + (a, b) bits per layer
    budgets = [base[i].in_features * dw + 2 * base[i].out_features *
               index_bits(base[i].in_features) for i in layers]
    return _baseline_model(base, method, layers, budgets, dw, seed)


def _baseline_model(base, method, layers, budgets, dw, seed):
    """``base`` with each of ``layers`` replaced by its HashedNets (``method == "hashed"``) or
    magnitude-pruned counterpart within that layer's bit budget; with the storage per layer
    (bits, params)."""
    import copy

    from slimnfu.compress import permfc_baselines as bl

    model, storage = copy.deepcopy(base), {}
    for k, (i, budget) in enumerate(zip(layers, budgets)):
        lin = base[i]
        m, n = lin.out_features, lin.in_features
        if method == "hashed":
            kk = bl.budget_hashed(budget, dw)
            model[i] = bl.hashed_from_linear(lin, kk, seed + k)
            storage[i] = (bl.hashed_bits(kk, dw), kk)
        else:
            kk = bl.budget_pruned(budget, m, n, dw)
            model[i] = bl.prune_linear(lin, kk)
            storage[i] = (bl.pruned_bits(kk, m, n, dw), kk)
    return model, storage


def _evaluate(model, method, storage, calib, x_test, y_test, dw):
    """Quantise and evaluate; return (acc_float, acc_int, stats, qmodel)."""
    from slimnfu.compress import permfc
    from slimnfu.compress import permfc_baselines as bl
    from slimnfu.formats.accounting import model_stats
    from slimnfu.compress.quant import int_forward, quantize_model
    from slimnfu.compress.train import evaluate

    acc_float = round(evaluate(model, x_test, y_test), 4)
    if method.startswith("perm_"):
        q = permfc.quantize_perm_model(model, calib, dw=dw)
    else:
        q = quantize_model(bl.to_dense_any(model), calib, dw=dw)
    logits, count = int_forward(q, x_test)
    stats = model_stats(q)
    if storage:
        # Baselines: replace the compressed layers' dense weight bits/params by their storage.
        fc_idx = [i for i, mod in enumerate(model) if hasattr(mod, "in_features")]
        fc_stats = [l for l in stats["layers"] if l["kind"] == "fc"]
        for i, lstat in zip(fc_idx, fc_stats):
            if i in storage:
                dense_w = lstat["params_dense"] - model[i].out_features
                lstat["bits"] += storage[i][0] - dense_w * dw
                lstat["params"] += storage[i][1] - dense_w
        for key in ("bits", "params"):
            stats[key] = sum(l[key] for l in stats["layers"])
    return acc_float, accuracy(logits, y_test), stats, q, count.events


def _rtl_cases(q, x_int, cfg, prefix):
    """Dense and perm co-simulation cases for every perm layer of ``q`` (real input)."""
    import dataclasses

    from slimnfu import fixed
    from slimnfu.compress.quant import int_forward_layers
    from slimnfu.formats.perm import gather_weights
    from slimnfu.sim.cases import Case

    outs = int_forward_layers(q, x_int)
    cases = []
    for n, layer in enumerate(q.layers):
        run = layer.weight_format.pass_desc(layer)
        if run.perm == "none":
            continue
        x = (x_int if n == 0 else outs[n - 1])[0].reshape(-1)
        w = gather_weights(layer)
        count = fixed.SatCount()
        y = fixed.run_layer(layer.desc, x.unsqueeze(0), w, layer.b, cfg.dw, layer.pwl, count)[0]
        case = Case(f"{prefix}_{layer.name}_{layer.format}", run, x, w, layer.b,
                    layer.pwl, y, count.events, "model", layer.format, layer.compressed)
        cases.append(case)
        cases.append(dataclasses.replace(case, name=f"{prefix}_{layer.name}_dense_for_"
                                                    f"{layer.format}", desc=layer.desc,
                                         format="dense", compressed=None))
    return cases


def _run_rtl(rtl_jobs, sim, progress):
    """Co-simulate all collected cases in one build; return {case name: entry}."""
    from slimnfu.sim.runner import run_regression

    cfg = _bench_config()
    cases = [c for _, cs in rtl_jobs for c in cs]
    if not cases:
        return {}
    entries = run_regression(cfg, cases, sims=(sim,),
                             log=(lambda msg: print(msg, flush=True)) if progress else
                             (lambda msg: None))
    return {e["name"]: e for e in entries}


def _synth(progress):
    """Area of the generator and the engine with perm on/off (tiny; ``s`` is held in SB)."""
    from amaranth.back import verilog

    from slimnfu.config import get_config
    from slimnfu.atomic import atomic_write
    from slimnfu.gen.synth import feature_area, synth_verilog
    from slimnfu.rtl.engine import LayerEngine
    from slimnfu.rtl.perm_addr import PermAddrGen

    cfg = get_config("tiny")
    blocks_cfg = cfg.with_(perm=True)
    out = {"config": cfg.name, "perm_depth": blocks_cfg.perm.depth}
    root = paths.build_root() / "bench" / "permfc_synth"
    def step(key, work):
        # each figure stands alone: one failed synthesis does not lose the others
        try:
            out[key] = work()
        except Exception as exc:
            out[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}

    for name, comp in (("perm_addr_gen", PermAddrGen(blocks_cfg, LayerEngine.PERM_AHEAD)),):
        vfile = root / f"{name}.v"
        vfile.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(vfile, verilog.convert(comp, name=name, emit_src=False))
        # place and route only the small generator: its fmax is the figure of interest
        step(name, lambda: synth_verilog(vfile, name, root / name, ecp5=True,
                                         pnr=name == "perm_addr_gen", progress=progress))
    step("engine", lambda: feature_area(cfg, "perm", "tiny_permon"))
    return out


def run(networks=NETWORKS, methods=METHODS, epochs=1, train_subset=20000, calib_n=2000,
        test_limit=None, compress_classifier=False, rtl=True, sim="verilator", seed=0,
        progress=True, lr=3e-3, base_epochs=None):
    """Return ``(rows, rtl_entries)`` (see the module docstring)."""
    from torch import nn

    from slimnfu.compress import data, permfc
    from slimnfu.formats.accounting import model_stats
    from slimnfu.compress.models import network_info
    from slimnfu.compress.quant import int_forward, quantize_input, quantize_model
    from slimnfu.compress.train import evaluate, train

    if epochs < 1 or train_subset < 1 or calib_n < 1:
        raise ValueError("--epochs, --train-subset and --calib must be >= 1")
    dw = 16
    cfg = _bench_config()
    rows, rtl_jobs = [], []
    for name in networks:
        dataset = network_info(name)["dataset"]
        base, info = train(name, epochs=(base_epochs or {}).get(name), progress=progress)
        x_train, y_train = data.load(dataset, "train")
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
        x_test, y_test = data.load(dataset, "test")
        if test_limit is not None:
            x_test, y_test = x_test[:test_limit], y_test[:test_limit]
        calib = data.load(dataset, "calib")[0][:calib_n]
        acc_base = round(evaluate(base, x_test, y_test), 4)
        lin_idx = [i for i, mod in enumerate(base) if isinstance(mod, nn.Linear)]
        layers = lin_idx if compress_classifier else lin_idx[:-1]
        qd = quantize_model(base, calib, dw=dw)
        dense_stats = model_stats(qd)
        logits, _ = int_forward(qd, x_test)
        common = {"network": name, "dataset": dataset, "budget_pct": None,
                  "acc_float_base": acc_base, "macs_dense": dense_stats["macs_dense"],
                  "conv_macs_dense": dense_stats["conv_macs_dense"],
                  "conv_macs": dense_stats["conv_macs"],
                  "params_dense": dense_stats["params_dense"],
                  "bits_dense": dense_stats["bits_dense"], "dw": dw,
                  "compressed_layers": [f"module {i} Linear {base[i].in_features}->"
                                        f"{base[i].out_features}" for i in layers],
                  "fc_params_dense": sum(l["params_dense"] for l in dense_stats["layers"]
                                         if l["kind"] == "fc"),
                  "fc_bits_dense": sum(l["bits_dense"] for l in dense_stats["layers"]
                                       if l["kind"] == "fc"),
                  "config": cfg.name, "rtl_scope": "compressed fc layers",
                  "base_epochs": info["epochs"], "base_cache_hit": info["cache_hit"]}
        rows.append({**common, "method": "dense", "acc_float": acc_base,
                     "acc_int": accuracy(logits, y_test), "macs": dense_stats["macs"],
                     "params": dense_stats["params"], "bits": dense_stats["bits"],
                     "fc_params": common["fc_params_dense"], "fc_bits": common["fc_bits_dense"],
                     "finetune": None, "rtl_cycles_dense": None, "rtl_cycles": None})
        for method in methods:
            start = time.perf_counter()
            model, storage = _compress(base, method, layers, dw, seed)
            acc_before = round(evaluate(model, x_test, y_test), 4)
            permfc.finetune(model, x_train, y_train, epochs=epochs, lr=lr, seed=seed)
            acc_float, acc_int, st, q, sat = _evaluate(model, method, storage, calib, x_test,
                                                       y_test, dw)
            row = {**common, "method": method, "acc_float": acc_float, "acc_int": acc_int,
                   "acc_float_before_finetune": acc_before, "macs": st["macs"],
                   "params": st["params"], "bits": st["bits"],
                   "fc_params": sum(l["params"] for l in st["layers"] if l["kind"] == "fc"),
                   "fc_bits": sum(l["bits"] for l in st["layers"] if l["kind"] == "fc"),
                   "sat_events": sat, "seconds": round(time.perf_counter() - start, 2),
                   "finetune": {"epochs": epochs, "lr": lr,
                                "train_images": int(x_train.shape[0])},
                   "layers": [{k: l[k] for k in ("name", "format", "params", "bits", "items")
                               if k in l} for l in st["layers"] if l["kind"] == "fc"],
                   "rtl_cycles_dense": None, "rtl_cycles": None}
            if storage:
                row["baseline_storage"] = {f"module {i}": {"bits": b, "kept_or_buckets": k}
                                           for i, (b, k) in storage.items()}
            rows.append(row)
            if rtl and method.startswith("perm_"):
                rtl_jobs.append((len(rows) - 1, _rtl_cases(q, quantize_input(q, x_test[:1]),
                                                           cfg, name)))
            if progress:
                print(f"{name} {method}: float {acc_float:.2f}% int {acc_int:.2f}% "
                      f"(base {acc_base:.2f}%) bits {st['bits']:,} / "
                      f"{common['bits_dense']:,}", flush=True)
    entries = _run_rtl(rtl_jobs, sim, progress) if rtl else {}
    for row_i, cases in rtl_jobs:
        got = [entries[c.name] for c in cases]
        row = rows[row_i]
        row["rtl_bit_exact"] = all(e["passed"] for e in got)
        row["rtl_cycles"] = sum(e["cycles"] or 0 for e, c in zip(got, cases)
                                if c.desc.perm != "none")
        row["rtl_cycles_dense"] = sum(e["cycles"] or 0 for e, c in zip(got, cases)
                                      if c.desc.perm == "none")
        row["rtl_cases"] = got
        for r in rows:
            if r["network"] == row["network"] and r["method"] != row["method"] and \
                    r.get("rtl_cycles_dense") is None:
                r["rtl_cycles_dense"] = row["rtl_cycles_dense"]
    return rows, entries


def markdown_table(rows):
    """Rows as a Markdown table; every ratio is derived from the row values."""
    lines = ["| network | method | float % (base) | int % | FC params x | FC bits x | "
             "total params x | total bits x | FC RTL cycles (dense) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cyc = "-" if r.get("rtl_cycles") is None else \
            f"{r['rtl_cycles']:,} ({r['rtl_cycles_dense']:,})"
        lines.append(
            f"| {r['network']} | {r['method']} | {r['acc_float']:.2f} ({r['acc_float_base']:.2f})"
            f" | {r['acc_int']:.2f} | {r['fc_params_dense'] / r['fc_params']:.2f} | "
            f"{r['fc_bits_dense'] / r['fc_bits']:.2f} | {r['params_dense'] / r['params']:.2f} | "
            f"{r['bits_dense'] / r['bits']:.2f} | {cyc} |")
    return "\n".join(lines)



# The Pareto sweep (the default of ``slimnfu bench permfc``).

#: Per network: the compressed Linear modules (the classifier stays dense) and the sweep's
#: group counts, one tuple per point (one G per compressed module, in module order).
SWEEP = {
    "lenet300": {"layers": (1, 3), "groups": ((1, 1), (3, 1), (10, 4), (20, 8))},
    "lenet5": {"layers": (5,), "groups": ((1,), (4,), (16,), (32,))},
    "vgg_fmnist": {"layers": (11,), "groups": ((4,), (24,))},
}
#: The points of ``--quick``: the one near 20x (10x on the VGG head) fewer FC bits per network.
QUICK = {"lenet300": ((10, 4),), "lenet5": ((16,),), "vgg_fmnist": ((24,),)}
#: Rows of the sweep, in this order (``pareto_rows``).
PARETO_KEYS = ("network", "method", "groups", "family", "epochs", "acc_float", "acc_int",
               "bits_dense", "bits", "fc_bits_dense", "fc_bits")
SWEEP_METHODS = ("perm_affine", "perm_quadratic", "hashed", "pruned")


def perm_weight_bits(m, n, groups, family, dw):
    """Stored bits of a grouped generated-permutation layer's weights (no biases): the
    ``G`` sequences, ``a``, ``b`` (``e``) per row and the row's group
    (:class:`slimnfu.formats.perm.PermAffineFormat`)."""
    from slimnfu.formats.perm import index_bits

    fields = 3 if family == "quadratic" else 2
    return groups * n * dw + m * (fields * index_bits(n) + (index_bits(groups) if groups > 1
                                                              else 0))


def _head_split(base, first):
    """``(prefix, head)``: the modules before the first compressed Linear (kept frozen, run
    once to make the head's inputs) and the rest."""
    import copy

    from torch import nn

    return (nn.Sequential(*copy.deepcopy(list(base)[:first])).eval(),
            nn.Sequential(*copy.deepcopy(list(base)[first:])))


def _features(prefix, images, batch=500):
    import torch

    with torch.no_grad():
        return torch.cat([prefix(images[i:i + batch].float())
                          for i in range(0, images.shape[0], batch)])


def _sweep_model(head, method, layers, groups, dw, seed, candidates):
    """The head with its compressed layers replaced (``layers`` index the head); baseline
    storage per layer as in :func:`_compress`."""
    from slimnfu.compress import permfc

    if method.startswith("perm_"):
        family = "quadratic" if method == "perm_quadratic" else "affine"
        return permfc.compress_model(head, "affine", layers=list(layers), seed=seed,
                                     groups=dict(zip(layers, groups)), family=family,
                                     candidates=candidates), {}
    budgets = [perm_weight_bits(head[i].out_features, head[i].in_features, g, "affine", dw)
               for i, g in zip(layers, groups)]
    return _baseline_model(head, method, layers, budgets, dw, seed)


def pareto_sweep(networks=NETWORKS, methods=SWEEP_METHODS, points=None, max_epochs=30,
                 patience=3, lr=3e-3, train_subset=None, calib_n=2000, test_limit=None,
                 candidates=16, seed=0, progress=True, base_epochs=None, log=print,
                 schedule="onecycle", distill=0.7):
    """Accuracy against FC bits over the group counts of :data:`SWEEP` (see ``main``).

    The dense base network (checkpoint cache) is split before its first compressed Linear:
    the frozen prefix (the conv layers, or nothing) runs once and its outputs train the FC
    head. Every compressed head (``perm_affine`` and ``perm_quadratic`` at each point's
    groups, ``hashed`` and ``pruned`` at the ``perm_affine`` point's weight bits per layer)
    is initialised from the dense head and trained with
    :func:`slimnfu.compress.permfc.train_early_stopping` (the same budget for every method:
    ``max_epochs``, ``patience``, ``lr``, ``schedule``, and ``distill``: the weight of
    distillation from the dense head, the teacher of every method), validated on the
    ``calib`` split (5,000 train images that the training never sees). Then the whole
    network is quantised (calibrated on the first ``calib_n`` of ``calib``) and evaluated,
    float and integer, on the test set.
    Bits are counted by :mod:`slimnfu.formats.accounting` (baselines: their storage in place
    of the dense weights, as in :func:`run`).

    ``points`` maps a network to its list of group tuples (default :data:`SWEEP`'s).

    Returns
    -------
    list of dict
        One row per network and method and point, the :data:`PARETO_KEYS` first.
    """
    import copy

    from torch import nn

    from slimnfu.compress import data, permfc
    from slimnfu.compress.models import network_info
    from slimnfu.compress.quant import int_forward, quantize_model
    from slimnfu.compress.train import evaluate, train
    from slimnfu.formats.accounting import model_stats

    if schedule not in permfc.SCHEDULES:
        raise ValueError(f"schedule must be one of {permfc.SCHEDULES}, not {schedule!r}")
    if not 0 <= distill <= 1:
        raise ValueError(f"--distill must be in [0, 1], not {distill!r}")
    dw = 16
    rows = []
    for name in networks:
        spec = SWEEP[name]
        dataset = network_info(name)["dataset"]
        base, info = train(name, epochs=(base_epochs or {}).get(name), progress=progress)
        x_train, y_train = data.load(dataset, "train")
        if train_subset is not None:
            x_train, y_train = x_train[:train_subset], y_train[:train_subset]
        x_val, y_val = data.load(dataset, "calib")
        x_test, y_test = data.load(dataset, "test")
        if test_limit is not None:
            x_test, y_test = x_test[:test_limit], y_test[:test_limit]
        calib = x_val[:calib_n]
        first = spec["layers"][0]
        if not all(isinstance(base[i], nn.Linear) for i in spec["layers"]):
            raise ValueError(f"{name}: modules {spec['layers']} must be Linear")
        prefix, head = _head_split(base, first)
        f_train, f_val = _features(prefix, x_train), _features(prefix, x_val)
        hl = [i - first for i in spec["layers"]]
        qd = quantize_model(base, calib, dw=dw)
        dense = model_stats(qd)
        fc_dense = sum(l["bits_dense"] for l in dense["layers"] if l["kind"] == "fc")
        common = {"network": name, "dataset": dataset, "bits_dense": dense["bits_dense"],
                  "fc_bits_dense": fc_dense, "base_epochs": info["epochs"],
                  "compressed_layers": [f"module {i} Linear {base[i].in_features}->"
                                        f"{base[i].out_features}" for i in spec["layers"]],
                  "max_epochs": max_epochs, "patience": patience, "lr": lr,
                  "train_images": int(x_train.shape[0]), "val_split": "calib",
                  "candidates": candidates, "schedule": schedule, "distill": distill}
        logits, _ = int_forward(qd, x_test)
        rows.append({**common, "method": "dense", "groups": None, "family": None,
                     "epochs": info["epochs"], "acc_float": round(evaluate(base, x_test, y_test),
                                                                  4),
                     "acc_int": accuracy(logits, y_test), "bits": dense["bits"],
                     "fc_bits": fc_dense})
        log(f"{name} dense: int {rows[-1]['acc_int']:.2f}% fc bits {fc_dense:,}")
        for groups in (points or {}).get(name, spec["groups"]):
            for method in methods:
                start = time.perf_counter()
                h, storage = _sweep_model(head, method, hl, groups, dw, seed, candidates)
                hist = permfc.train_early_stopping(h, (f_train, y_train), (f_val, y_val),
                                                   max_epochs, patience, lr, seed=seed,
                                                   schedule=schedule, teacher=head,
                                                   distill=distill)
                model = nn.Sequential(*copy.deepcopy(list(prefix)), *h)
                storage = {i + first: v for i, v in storage.items()}
                acc_float, acc_int, st, _, sat = _evaluate(model, method, storage, calib,
                                                           x_test, y_test, dw)
                row = {**common, "method": method, "groups": list(groups),
                       "family": {"perm_affine": "affine", "perm_quadratic": "quadratic"}.get(
                           method), "epochs": hist["epochs"], "acc_float": acc_float,
                       "acc_int": acc_int, "bits": st["bits"],
                       "fc_bits": sum(l["bits"] for l in st["layers"] if l["kind"] == "fc"),
                       "best_epoch": hist["best_epoch"], "val_acc": hist["val_acc"],
                       "sat_events": sat, "seconds": round(time.perf_counter() - start, 1)}
                if storage:
                    row["baseline_storage"] = {f"module {i}": {"bits": b, "kept_or_buckets": k}
                                               for i, (b, k) in storage.items()}
                rows.append(row)
                log(f"{name} {method} G={list(groups)}: float {acc_float:.2f}% int "
                    f"{acc_int:.2f}% fc bits {row['fc_bits']:,} ({fc_dense / row['fc_bits']:.1f}x"
                    f" fewer) epochs {hist['epochs']} (best {hist['best_epoch']})")
    return rows


def pareto_table(rows):
    """The sweep rows as a Markdown table (ratios derived from the row values)."""
    lines = ["| network | method | groups | family | epochs | float % | int % | FC bits | "
             "FC bits x |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        g = "-" if r["groups"] is None else ",".join(map(str, r["groups"]))
        lines.append(f"| {r['network']} | {r['method']} | {g} | {r['family'] or '-'} | "
                     f"{r['epochs']} | {r['acc_float']:.2f} | {r['acc_int']:.2f} | "
                     f"{r['fc_bits']:,} | {r['fc_bits_dense'] / r['fc_bits']:.2f} |")
    return "\n".join(lines)


def pareto_plot(rows, path):
    """Integer accuracy against FC bits, one panel per network, one line per method; the
    dense point and a band 1 point below it. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimnfu.atomic import atomic_write

    nets = list(dict.fromkeys(r["network"] for r in rows))
    fig, axes = plt.subplots(1, len(nets), figsize=(5 * len(nets), 4), squeeze=False)
    for ax, net in zip(axes[0], nets):
        mine = [r for r in rows if r["network"] == net]
        for method in dict.fromkeys(r["method"] for r in mine if r["method"] != "dense"):
            pts = sorted((r["fc_bits"], r["acc_int"]) for r in mine if r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        for r in mine:
            if r["method"] == "dense":
                ax.axhline(r["acc_int"], color="k", lw=0.8, label="dense")
                ax.axhline(r["acc_int"] - 1, color="k", lw=0.8, ls="--", label="dense - 1")
                ax.axvline(r["fc_bits_dense"] / 20, color="grey", lw=0.8, ls=":",
                           label="20x fewer FC bits")
        ax.set_xscale("log")
        ax.set_xlabel("FC bits (stored)")
        ax.set_ylabel("integer test accuracy %")
        ax.set_title(net)
        top = max(r["acc_int"] for r in mine)
        ax.set_ylim(max(0, top - 10), top + 0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def main(args):
    t0 = start(args)
    base_epochs = parse_base_epochs(args.base_epochs)
    if args.area_only:
        old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        report = {**old, "benchmark": "permfc", "rows": old.get("rows", []),
                  "area": _synth(progress=True)}
        write_report(args.out, report)
        return 0
    if args.variants:
        rows, _ = run(args.networks, args.methods, args.epochs, args.train_subset, args.calib,
                      args.test_limit, args.compress_classifier, not args.no_rtl, args.sim,
                      args.seed, progress=True, base_epochs=base_epochs)
        table = markdown_table(rows)
    else:
        points = QUICK if args.quick else None
        if args.points:
            points = {n: [tuple(int(g) for g in p.split(",")) for p in args.points]
                      for n in args.networks}
        rows = pareto_sweep(args.networks, args.sweep_methods, points, args.max_epochs,
                            args.patience, args.lr, args.sweep_subset, args.calib,
                            args.test_limit, args.candidates, args.seed, progress=False,
                            base_epochs=base_epochs,
                            log=lambda msg: print(msg, flush=True), schedule=args.schedule,
                            distill=args.distill)
        plot = Path(args.out).with_name(Path(args.out).stem + "_pareto.png")
        pareto_plot(rows, plot)
        print(f"wrote {plot}")
        table = pareto_table(rows)
    report = {"benchmark": "permfc", "mode": "variants" if args.variants else "pareto",
              "rows": rows, "area": None, "host": host(args.threads)}
    write_json(args.out, {**report, "wall_s": round(time.perf_counter() - t0, 3)})
    if not args.no_synth:
        try:
            report["area"] = _synth(progress=True)
        except Exception as exc:  # the rows above stay valid; say why the area is missing
            report["area"] = {"error": f"{type(exc).__name__}: {exc}"}
    write_report(args.out, {**report, "wall_s": round(time.perf_counter() - t0, 3)}, table)
    return 0
