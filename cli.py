"""The ``slimnfu`` command line.

Each area of the project registers its own subcommands from a small ``cli_*`` module, so that
``slimnfu --help`` stays fast (heavy imports such as torch happen inside the commands). This
module registers ``synth``, ``board`` and ``verify`` itself: they run the scenario's flow
(:mod:`slimnfu.flows`), which the gen and sim levels below it must not import.
"""

import argparse
import importlib
import sys

from slimnfu.config import FC_VARIANTS, IM2COL_MODES, Scenario
from slimnfu.gen.cli_hw import add_pnr_arguments, given_pnr_arguments, pnr_arguments

__all__ = ["main", "register", "COMMAND_MODULES"]

#: Modules that each define ``register(subparsers)``, in the order of ``slimnfu --help``.
COMMAND_MODULES = [
    "slimnfu.compress.cli_data",
    "slimnfu.compress.cli_train",
    "slimnfu.compress.cli_check",
    "slimnfu.gen.cli_image",
    "slimnfu.gen.cli_hw",
    "slimnfu.cli",
    "slimnfu.sim.cli_cosim",
    "slimnfu.sim.cli_fuzz",
    "slimnfu.bench.cli_bench",
    "slimnfu.demo",
]

#: The project's scenario; ``synth --rom``, ``board`` and ``verify`` change only what their
#: options say.
DEFAULT = Scenario()


def add_im2col_argument(p):
    """``--im2col``: the compiler's choice for a first conv layer with few input channels."""
    p.add_argument("--im2col", default=DEFAULT.im2col, choices=IM2COL_MODES,
                   help="run a first conv layer with fewer input channels than the engine's "
                        "input lanes as a 1x1 conv over the image's patches: auto (default; "
                        "when it fits and the schedule model says it is faster), on, off")


def register(sub):
    """Add ``synth``, ``board`` and ``verify`` to ``sub``."""
    p = sub.add_parser("synth", help="emit, synthesise (Yosys generic + ECP5), place and route",
                       description="Emit the engine Verilog, synthesise it with Yosys (generic, "
                                   "memories kept, and synth_ecp5), place and route it with "
                                   "nextpnr-ecp5 on the smallest LFE5U part that holds it, and "
                                   "write synth/<config>.json in the build root.")
    p.add_argument("--config", default=DEFAULT.config,
                   help=f"accelerator config (default: {DEFAULT.config})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config parameter of the bare engine, e.g. --set ikr=1 "
                        "or --set ikr.kmax=3 (repeatable; the report is named after it)")
    p.add_argument("--no-pnr", action="store_true", help="skip place and route")
    p.add_argument("--out", default=None,
                   help="report path (default: synth/<config>.json in the build root)")
    p.add_argument("--part", default=None,
                   help="place and route on this part (LFE5U-25F, LFE5U-45F or LFE5U-85F) "
                        "instead of the config's own (small: LFE5U-85F) or else the smallest "
                        "that holds the design")
    p.add_argument("--pnr-timeout", type=float, default=1800, metavar="S",
                   help="stop place and route after S seconds (default 1800; the report then "
                        "has no fmax and says it timed out)")
    add_pnr_arguments(p)
    p.add_argument("--rom", action="store_true",
                   help="synthesise the whole accelerator for compressed LeNet-5 instead of "
                        "the bare engine (compressed under 1 point first unless the cache "
                        "holds it): the ROM build when its weights fit the block RAM, else "
                        "the port build")
    p.add_argument("--fc", default=DEFAULT.fc_variant, choices=FC_VARIANTS,
                   help="with --rom, fc1's permuted format: auto (default; the 1-point budget "
                        "picks), affine (its weights fit on chip, at some accuracy) or index")
    add_im2col_argument(p)
    p.set_defaults(func=_synth)

    p = sub.add_parser("board", help="build a ULX3S bitstream: compressed LeNet-5 classifies a "
                                     "stored MNIST test image and shows the class on the LEDs",
                       description="Compile compressed LeNet-5 (from the cache, or "
                                   "compressed under 1 point first) for --config, store MNIST "
                                   "test image --image, and build the bitstream with Yosys, "
                                   "nextpnr-ecp5 and ecppack (YoWASP). LEDs 0-3: the predicted "
                                   "class; LED 6: it equals the label; LED 7: done. Writes "
                                   "board/<board>/ in the build root and its report.json.")
    p.add_argument("--config", default=DEFAULT.config,
                   help=f"accelerator config (default: {DEFAULT.config})")
    p.add_argument("--board", default="ulx3s-85f",
                   help="ulx3s-12f, ulx3s-25f, ulx3s-45f or ulx3s-85f (default: ulx3s-85f)")
    p.add_argument("--image", type=int, default=0, help="MNIST test image index (default: 0)")
    p.add_argument("--fc", default=DEFAULT.fc_variant, choices=FC_VARIANTS,
                   help="fc1's permuted format: auto (default: the network the 1-point budget "
                        "picks, as the demo runs it), affine (one sequence) or index")
    p.add_argument("--no-build", action="store_true",
                   help="write the build files and script only, no bitstream")
    add_im2col_argument(p)
    p.set_defaults(func=_board)

    p = sub.add_parser(
        "verify", help="run MNIST test images (all 10,000 by default) through the RTL on the "
                       "fast Verilator runner, bit-exact against the integer reference",
        description="Compile the compressed network (trained and compressed first unless the "
                    "cache holds it; or a compressed network file) for --config, build its ROM "
                    "build on a lean Verilator model with a C++ harness, and run the test "
                    "images through it, sharded over local worker processes (or a Ray "
                    "cluster): every image's logits must equal the integer reference's, so the "
                    "RTL accuracy equals the reference's exactly. Writes "
                    "verify/<network>_<config>.json in the build root (images, bit_exact, "
                    "acc_rtl, acc_int, cycles per image, mismatches, wall time). Exit status 1 "
                    "on any mismatch.")
    p.add_argument("target", nargs="?", default=DEFAULT.network, metavar="MODEL-OR-NETWORK",
                   help=f"a reference network's name (default {DEFAULT.network}; an "
                        f"unknown name lists them) or a compressed network file (.json in "
                        f"the cache's network/ folder)")
    p.add_argument("--images", default="all",
                   help="test images: all (default), a count N (the first N) or a range A:B")
    p.add_argument("--config", default=DEFAULT.config,
                   help=f"base accelerator config (default: {DEFAULT.config})")
    p.add_argument("--dense", action="store_true",
                   help="also verify the dense network (quantised, uncompressed)")
    p.add_argument("--workers", type=int, default=None,
                   help="simulator processes at a time, or Ray tasks in flight (default: "
                        "the CPUs this process may use)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="shard over the Ray cluster at ADDRESS (ray.init's address; 'local' "
                        "starts one here) instead of local processes; needs the ray package")
    p.add_argument("--every-layer", action="store_true",
                   help="also check every layer's output of every image (slower)")
    p.add_argument("--budget", type=float, default=DEFAULT.budget,
                   help=f"accuracy budget of the compression, points (default: "
                        f"{DEFAULT.budget})")
    p.add_argument("--fc", default=DEFAULT.fc_variant, choices=FC_VARIANTS,
                   help="fc1's permuted format: auto (default; the budget picks), affine or "
                        "index")
    p.add_argument("--out", default=None,
                   help="report path (default: verify/<network>_<config>.json in the build "
                        "root)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_im2col_argument(p)
    p.set_defaults(func=_verify)


def _synth(args):
    from slimnfu.config import get_config, parse_overrides
    from slimnfu.gen.synth import check_part, choose_weights, synth_config

    if args.rom and args.overrides:
        raise ValueError("--set applies to the bare engine; --rom builds the scenario's "
                         "accelerator with the features its network needs")
    cfg = parse_overrides(get_config(args.config), args.overrides)
    check_part(args.part)
    pnr_opts = pnr_arguments(args)
    if args.rom:
        from slimnfu import flows

        _, program, _ = flows.rom_program(DEFAULT.with_(config=args.config,
                                                         fc_variant=args.fc,
                                                         im2col=args.im2col))
        weights, why = choose_weights(program)
        print(why, flush=True)
        report = flows.synth_build(program, weights, why, out=args.out, pnr=not args.no_pnr,
                                   part=args.part, pnr_timeout_s=args.pnr_timeout,
                                   pnr_opts=pnr_opts)
    else:
        report = synth_config(cfg, out=args.out, pnr=not args.no_pnr, part=args.part,
                              pnr_timeout_s=args.pnr_timeout,
                              pnr_opts=given_pnr_arguments(args))
    fmax = report["fmax_mhz"]
    print(f"{report['config']}: {report['cells']} cells, {report['luts']} LUT4, "
          f"{report['ffs']} FF, "
          f"{report['dsps']} DSP, {report['brams']} DP16KD, "
          f"{report['memory_bits']} memory bits (generic); "
          f"fmax {'%.1f MHz' % fmax if fmax else 'n/a'}; {report['fits']}")
    if report.get("worst_path"):
        print(report["worst_path"])
    if (report.get("pnr") or {}).get("error"):
        print(f"place and route: {report['pnr']['error']}")
    return 0


def _board(args):
    import json

    from slimnfu import flows

    report = flows.board_build(DEFAULT.with_(config=args.config, fc_variant=args.fc,
                                             im2col=args.im2col),
                               args.board, args.image, do_build=not args.no_build,
                               log=lambda message: print(message, flush=True))
    print(json.dumps(report, indent=1))
    return 0


def _verify(args):
    from slimnfu import flows

    plan = flows.verify_plan(args.target, DEFAULT.with_(config=args.config, budget=args.budget,
                                                        fc_variant=args.fc,
                                                        im2col=args.im2col),
                             args.images, dense=args.dense, workers=args.workers,
                             ray_address=args.ray, out=args.out)
    report = flows.verify(plan, layers=args.every_layer, progress=not args.no_progress,
                          log=lambda message: print(message, flush=True))
    print(f"{report['images']} images, bit-exact {report['bit_exact']}, RTL accuracy equal to "
          f"the integer reference's {report['acc_equal']}; report in {plan['out']} "
          f"({report['wall_s']} s)")
    return 0 if report["bit_exact"] and report["acc_equal"] else 1


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
