"""``slimnfu cosim``: the cocotb regression of the layer engine on Icarus and/or Verilator.

Heavy imports (torch, amaranth, cocotb) happen inside :func:`run`, so ``slimnfu --help`` stays
fast.
"""

import json
import sys

__all__ = ["register", "run", "parse_layers", "read_case_files"]

SIMS = ("icarus", "verilator")


def register(sub):
    p = sub.add_parser(
        "cosim", help="run the cocotb regression; writes cosim/results.json in the build root",
        description="Emit the engine Verilog, compile it once per simulator and run the "
                    "regression (NFU steps, conv 1x1/3x3/5x5 at stride 1/2 with and without "
                    "padding, FC, max/avg pooling, every activation). Every output is "
                    "compared bit for bit with the integer reference and every cycle count "
                    "with dense_cycles + LATENCY. Exit status 1 on any failure.")
    p.add_argument("--sim", nargs="+", default=list(SIMS), metavar="SIM",
                   help="simulators: icarus, verilator (default: both)")
    p.add_argument("--config", default=None, help="accelerator config (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config parameter, e.g. --set acc=40, --set ikr=1, "
                        "--set ikr.kmax=3 (repeatable)")
    p.add_argument("--layer", dest="layers", action="append", default=[], metavar="JSON",
                   help="add a case: a LayerDesc as JSON, e.g. "
                        "'{\"kind\": \"conv\", \"n_in\": 3, \"n_out\": 5, \"h_in\": 8, "
                        "\"w_in\": 8, \"k\": 3}' (repeatable); or @FILE, a case file "
                        "(written by fuzz or by a network's first divergence) replayed alone "
                        "on the config it holds, with its operands")
    p.add_argument("--seed", type=int, default=1, help="random seed of the cases (default 1)")
    p.add_argument("--quick", action="store_true", help="a short regression (6 cases)")
    p.add_argument("--waves", action="store_true", help="dump waveforms (FST/VCD in run dir)")
    p.add_argument("--out", default=None,
                   help="results JSON (default: cosim/results.json in the build root: "
                        "$SLIMNFU_BUILD, else build/ in the current directory)")
    p.set_defaults(func=run)


def read_case_files(layers):
    """``[(cfg, case)]`` of the ``@FILE`` entries of ``--layer`` (see
    :func:`slimnfu.sim.cases.read_case`); ``ValueError`` naming the option and the file."""
    from slimnfu.sim.cases import read_case

    out = []
    for text in layers:
        if not text.startswith("@"):
            continue
        if not text[1:]:
            raise ValueError("--layer @FILE needs a file name after @")
        try:
            out.append(read_case(text[1:]))
        except ValueError as exc:
            raise ValueError(f"--layer @{exc}") from None
    return out


def parse_layers(layers):
    """``--layer`` JSON strings to ``(name, PassDesc)`` pairs (a layer's fields, and a pass's
    ``lane_k``, ``koff``, ... where the config has their feature)."""
    from slimnfu.atomic import parse_json
    from slimnfu.config import PassDesc

    out = []
    for n, text in enumerate(layers):
        fields = parse_json(text, f"--layer {n}", "layer")
        if not isinstance(fields, dict):
            raise ValueError(f"--layer {n}: expected a JSON object of LayerDesc fields")
        try:
            desc = PassDesc.from_dict(fields)
        except TypeError as exc:
            raise ValueError(f"--layer {n}: {exc}") from None
        out.append((f"layer{n}_{desc.layer.kind}", desc))
    return out


def _table(entries):
    head = f"{'case':<24} {'sim':<10} {'result':<6} {'cycles':>8} {'expected':>8} {'wall s':>7}"
    lines = [head, "-" * len(head)]
    for e in entries:
        lines.append(f"{e['name']:<24} {e['sim']:<10} {'PASS' if e['passed'] else 'FAIL':<6} "
                     f"{e['cycles'] if e['cycles'] is not None else '-':>8} "
                     f"{e['expected_cycles']:>8} {e['wall_s']:>7.3f}")
    return "\n".join(lines)


def run(args):
    """Check everything up front, then simulate; return 0 when every case passed, else 1."""
    from pathlib import Path

    from slimnfu.config import get_config, parse_overrides

    sims = list(dict.fromkeys(args.sim))
    bad = [s for s in sims if s not in SIMS]
    if bad:
        raise ValueError(f"--sim must be among {', '.join(SIMS)}, not {bad[0]!r}")
    replays = read_case_files(args.layers)
    if replays and (len(replays) < len(args.layers) or args.quick or args.overrides or
                    args.config is not None):
        raise ValueError("--layer @FILE replays a saved case alone, on the config the file "
                         "holds: give no --config, --set, --quick or JSON --layer with it")
    cfg = parse_overrides(get_config(args.config or "tiny"), args.overrides)
    extra = [] if replays else parse_layers(args.layers)
    for name, desc in extra:
        desc.check(cfg)

    from slimnfu.atomic import atomic_write, check_file_target
    from slimnfu.sim.regression import regression_cases
    from slimnfu.sim.mnist import mnist_images
    from slimnfu.sim.runner import cosim_root, run_regression

    out = Path(args.out) if args.out else cosim_root() / "results.json"
    check_file_target(out, "results JSON")

    def log(msg):
        print(msg, flush=True)

    entries = []
    if replays:
        groups, names = {}, set()
        for case_cfg, case in replays:
            while case.name in names:  # two files of one case: results go by name
                case.name += "_again"
            names.add(case.name)
            groups.setdefault(case_cfg.name, (case_cfg, []))[1].append(case)
        for case_cfg, cases in groups.values():
            entries += run_regression(case_cfg, cases, sims=sims, waves=args.waves, log=log)
        label = ", ".join(repr(name) for name in groups)
    else:
        cases = regression_cases(cfg, seed=args.seed, quick=args.quick,
                                 images=mnist_images(1000), extra=extra)
        entries = run_regression(cfg, cases, sims=sims, waves=args.waves, log=log)
        label = repr(cfg.name)
    atomic_write(out, json.dumps(entries, indent=1) + "\n")
    if args.waves:
        print("waveforms: " + ", ".join(sorted({e["run_dir"] for e in entries})))
    print(_table(entries))
    failed = [e for e in entries if not e["passed"]]
    for e in failed:
        print(f"FAIL {e['name']} on {e['sim']}: {e['error']}", file=sys.stderr)
    print(f"{len(entries) - len(failed)}/{len(entries)} passed on config {label} "
          f"({', '.join(sims)}); results in {out}")
    return 1 if failed else 0
