"""``slimnfu verilog``: emit the engine (or one block) Verilog.

``slimnfu synth`` and ``slimnfu board`` are registered by :mod:`slimnfu.cli`: with ``--rom``
and for the board they run the scenario's flow (:mod:`slimnfu.flows`), which sits above gen.
"""

__all__ = ["register", "add_pnr_arguments", "pnr_arguments", "given_pnr_arguments"]


def add_pnr_arguments(parser):
    """nextpnr's options (:data:`slimnfu.gen.synth.PNR_DEFAULTS`) as ``--placer``, ``--router``,
    ``--freq``, ``--pnr-seed`` and ``--no-tmdriv``; :func:`pnr_arguments` reads them back."""
    from slimnfu.gen.synth import CONFIG_PNR
    from slimnfu.gen.synth import PNR_DEFAULTS as d

    def default(key):
        own = ", ".join(f"{c}: {o[key]}" for c, o in sorted(CONFIG_PNR.items()) if key in o)
        return f"default {d[key]}" + (f"; {own}" if own else "")

    parser.add_argument("--placer", choices=("heap", "sa"), default=None,
                        help=f"nextpnr placer ({default('placer')})")
    parser.add_argument("--router", choices=("router1", "router2"), default=None,
                        help=f"nextpnr router ({default('router')})")
    parser.add_argument("--freq", type=float, default=None, metavar="MHZ",
                        help=f"nextpnr clock target, MHz ({default('freq_mhz')})")
    parser.add_argument("--pnr-seed", type=int, default=None, metavar="N",
                        help=f"nextpnr seed (default {d['seed']})")
    parser.add_argument("--no-tmdriv", action="store_true",
                        help="nextpnr without timing-driven placement and routing")


def given_pnr_arguments(args):
    """Only the nextpnr flags of :func:`add_pnr_arguments` that were given, checked: what a
    config's own settings (:data:`slimnfu.gen.synth.CONFIG_PNR`) give way to."""
    from slimnfu.gen.synth import pnr_options

    given = {"placer": args.placer, "router": args.router, "freq_mhz": args.freq,
             "seed": args.pnr_seed, "tmdriv": False if args.no_tmdriv else None}
    given = {k: v for k, v in given.items() if v is not None}
    pnr_options(**given)
    return given


def pnr_arguments(args):
    """The nextpnr options of :func:`add_pnr_arguments`'s flags, checked
    (:func:`slimnfu.gen.synth.pnr_options`): :func:`given_pnr_arguments` over the defaults."""
    from slimnfu.gen.synth import pnr_options

    return pnr_options(**given_pnr_arguments(args))


def register(sub):
    p = sub.add_parser("verilog", help="emit the engine (or one block) Verilog for a config",
                       description="Write verilog/<config>/slimnfu_<block>.v in the build "
                                   "root (reproducible, atomic).")
    p.add_argument("--config", default="tiny", help="accelerator config (default: tiny)")
    p.add_argument("--block", default="engine", help="engine, nfu1, nfu2 or nfu3")
    p.set_defaults(func=_verilog)


def _verilog(args):
    from slimnfu.config import get_config
    from slimnfu.gen.verilog import emit_block

    info = emit_block(args.block, get_config(args.config))
    print(f"{info['path']} ({'written' if info['changed'] else 'unchanged'}, "
          f"sha256 {info['sha256'][:16]})")
    return 0
