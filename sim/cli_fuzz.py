"""``slimnfu fuzz``: random layers on random configs, checked on the simulators, failures shrunk.

Heavy imports (torch, hypothesis, cocotb) happen inside :func:`run`, so ``slimnfu --help``
stays fast. Every argument is checked before anything is drawn or built.
"""

import sys

__all__ = ["register", "run", "parse_args"]

SIMS = ("icarus", "verilator")


def register(sub):
    p = sub.add_parser(
        "fuzz", help="draw random layers on random configs and check them bit-exactly on the "
                     "simulators; shrink failures to a case file cosim --layer @FILE replays",
        description="Draw random configs (tn = ti in 1..16, DW 8 or 16, buffer depths, "
                    "method features) and, for each, random layers of every kind, format and "
                    "activation (dense conv and fc, IKR, perm_affine, perm_index, slim passes "
                    "with lane_k, koff, nbout_base and lane_skip, max and average pooling, "
                    "PWL), with rails, saturating inputs and exact ties and saturations drawn "
                    "on purpose. Each config is built once per simulator and runs its cases in "
                    "batches; every output is compared bit for bit and every counter exactly. "
                    "A failing case is shrunk by hypothesis and written to fuzz/ in the build "
                    "root. Exit status 1 on any failure.")
    p.add_argument("--cases", default="100", metavar="N",
                   help="cases to draw; each runs on every simulator (default 100)")
    p.add_argument("--seed", default="0", metavar="S",
                   help="seed of the draws (integer, 0 .. 2**32-1; default 0)")
    p.add_argument("--sim", default="verilator", metavar="SIMS",
                   help="simulators, comma-separated: icarus, verilator (default: verilator)")
    p.add_argument("--time-budget", default=None, metavar="T",
                   help="seconds; no new batch starts after them (a failure is still shrunk)")
    p.add_argument("--per-config", default="500", metavar="M",
                   help="cases per config, i.e. per simulator build (default 500)")
    p.add_argument("--batch", default="200", metavar="B",
                   help="cases per simulation run (default 200)")
    p.add_argument("--max-tn", default="16", metavar="T",
                   help="largest tn = ti drawn, 1 .. 16 (default 16; smaller compiles faster)")
    p.add_argument("--no-shrink", action="store_true", help="write failing cases as drawn")
    p.add_argument("--max-shrinks", default="3", metavar="K",
                   help="failures to shrink in the run at most (default 3)")
    p.add_argument("--waves", action="store_true",
                   help="also write a waveform of each shrunk case beside its file")
    p.add_argument("--keep-builds", action="store_true",
                   help="keep the configs' simulator builds (removed after use by default)")
    p.set_defaults(func=run)


def _int(option, value, low, high=None):
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = None
    if n is None or n < low or (high is not None and n > high):
        limit = f">= {low}" if high is None else f"in {low} .. {high}"
        raise ValueError(f"{option} must be an integer {limit}, not {value!r}")
    return n


def parse_args(args):
    """The checked arguments of ``slimnfu fuzz`` as :func:`slimnfu.sim.fuzz.run_fuzz`'s
    keywords; ``ValueError`` naming the first bad option."""
    kw = {"cases": _int("--cases", args.cases, 1),
          "seed": _int("--seed", args.seed, 0, (1 << 32) - 1)}
    sims = [s.strip() for s in str(args.sim).split(",")]
    bad = [s for s in sims if s not in SIMS]
    if bad or not sims:
        raise ValueError(f"--sim must be a comma-separated list of {', '.join(SIMS)}, not "
                         f"{(bad or [''])[0]!r}")
    kw["sims"] = list(dict.fromkeys(sims))
    if args.time_budget is not None:
        try:
            budget = float(args.time_budget)
        except ValueError:
            budget = -1.0
        if not budget > 0:
            raise ValueError(f"--time-budget must be a number of seconds > 0, not "
                             f"{args.time_budget!r}")
        kw["time_budget"] = budget
    kw["per_config"] = _int("--per-config", args.per_config, 1)
    kw["batch"] = _int("--batch", args.batch, 1)
    kw["max_tn"] = _int("--max-tn", args.max_tn, 1, 16)
    kw["max_shrinks"] = _int("--max-shrinks", args.max_shrinks, 0)
    kw.update(shrink=not args.no_shrink, waves=args.waves, keep_builds=args.keep_builds)
    return kw


def run(args):
    """Check the arguments, fuzz, print the summary; 0 when every case passed, else 1."""
    kw = parse_args(args)
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise ValueError("fuzz needs the hypothesis package (pip install -e . installs it)") \
            from None
    from slimnfu.sim.fuzz import fuzz_root, run_fuzz

    summary = run_fuzz(**kw, log=lambda msg: print(msg, flush=True))
    for sim, d in summary["per_sim"].items():
        print(f"{sim}: {d['cases']} cases, {d['failed']} failed, {d['sim_s']} s of "
              f"simulation runs ({d['cases_per_min']} cases/min, builds included)")
    for f in summary["failures"]:
        if "file" in f:
            print(f"FAIL {f['case']} on {f['sim']} ({f['kind']}): {f['error']}\n"
                  f"     case: {f['file']}" + (f"\n     shrunk: {f['shrunk']}"
                                                 if "shrunk" in f else ""), file=sys.stderr)
    if summary["budget_hit"]:
        print(f"time budget reached: {summary['drawn']} of {summary['requested']} cases drawn")
    print(f"{summary['failed']} failures in {summary['wall_s']} s; summary in "
          f"{fuzz_root() / 'summary.json'}")
    return 1 if summary["failed"] else 0
