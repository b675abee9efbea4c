"""``slimnfu verilog``: emit the engine (or one block) Verilog.

``slimnfu synth`` and ``slimnfu board`` are registered by :mod:`slimnfu.cli`: with ``--rom``
and for the board they run the scenario's flow (:mod:`slimnfu.flows`), which sits above gen.
"""

__all__ = ["register"]


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
