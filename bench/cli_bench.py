"""``slimnfu bench NAME``: run one benchmark and write ``bench/NAME.json`` in the build root."""

import importlib

from slimnfu.bench import common

BENCHES = {
    "hw": "slimnfu.bench.hw",
    "models": "slimnfu.bench.models",
    "ikr": "slimnfu.bench.ikr",
    "permfc": "slimnfu.bench.permfc",
    "slim": "slimnfu.bench.slim",
    "network": "slimnfu.bench.network",
    "intake": "slimnfu.bench.intake",
}


def register(sub):
    p = sub.add_parser("bench", help="run a benchmark; writes bench/<name>.json in the build root",
                       description="Run a benchmark. Each writes bench/<name>.json in the build "
                                   "root ($SLIMNFU_BUILD, else build/ in the current directory).")
    bsub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, module in BENCHES.items():
        bp = bsub.add_parser(name, help=f"the {name} benchmark ({module})")
        common.add_out(bp, name)
        bp.set_defaults(func=_runner(module, name))
        add_arguments = getattr(importlib.import_module(module), "add_arguments", None)
        if add_arguments:
            add_arguments(bp)


def _runner(module, name):
    def run(args):
        args.out = args.out or common.default_out(name)
        return importlib.import_module(module).main(args)
    return run
