"""The ``slimnfu`` command line.

Each area of the project registers its own subcommands from a small ``cli_*`` module, so that
``slimnfu --help`` stays fast (heavy imports such as torch happen inside the commands).
"""

import argparse
import importlib
import sys

__all__ = ["main", "COMMAND_MODULES"]

#: Modules that each define ``register(subparsers)``.
COMMAND_MODULES = [
    "slimnfu.compress.cli_data",
    "slimnfu.compress.cli_train",
    "slimnfu.gen.cli_image",
    "slimnfu.gen.cli_hw",
    "slimnfu.sim.cli_cosim",
    "slimnfu.bench.cli_bench",
    "slimnfu.demo",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="slimnfu",
        description="Compress CNNs, generate a DianNao-style accelerator for them, and check it "
                    "bit-exactly against the integer reference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None):
    """Entry point of the ``slimnfu`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"slimnfu {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
