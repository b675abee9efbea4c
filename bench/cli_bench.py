"""``slimnfu bench NAME``: run one benchmark and write ``build/bench/NAME.json``."""

import importlib

BENCHES = {
    "hw": "slimnfu.bench.hw",
    "models": "slimnfu.bench.models",
    "ikr": "slimnfu.bench.ikr",
    "permfc": "slimnfu.bench.permfc",
    "slim": "slimnfu.bench.slim",
    "network": "slimnfu.bench.network",
}


def register(sub):
    p = sub.add_parser("bench", help="run a benchmark; writes build/bench/<name>.json",
                       description="Run a benchmark. Each writes build/bench/<name>.json.")
    bsub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, module in BENCHES.items():
        bp = bsub.add_parser(name, help=f"the {name} benchmark ({module})")
        bp.add_argument("--out", default=f"build/bench/{name}.json", help="output JSON path")
        bp.set_defaults(func=_runner(module))
        add_arguments = getattr(importlib.import_module(module), "add_arguments", None)
        if add_arguments:
            add_arguments(bp)


def _runner(module):
    def run(args):
        return importlib.import_module(module).main(args)
    return run
