"""``slimnfu verilog`` (emit only) and ``slimnfu synth`` (emit, Yosys, nextpnr, JSON report)."""

__all__ = ["register"]


def register(sub):
    p = sub.add_parser("verilog", help="emit the engine (or one block) Verilog for a config",
                       description="Write build/verilog/<config>/slimnfu_<block>.v "
                                   "(reproducible, atomic).")
    p.add_argument("--config", default="tiny", help="accelerator config (default: tiny)")
    p.add_argument("--block", default="engine", help="engine, nfu1, nfu2 or nfu3")
    p.set_defaults(func=_verilog)

    p = sub.add_parser("synth", help="emit, synthesise (Yosys generic + ECP5), place and route",
                       description="Emit the engine Verilog, synthesise it with Yosys (generic, "
                                   "memories kept, and synth_ecp5), place and route it with "
                                   "nextpnr-ecp5 on the smallest LFE5U part that holds it, and "
                                   "write build/synth/<config>.json.")
    p.add_argument("--config", default="tiny", help="accelerator config (default: tiny)")
    p.add_argument("--no-pnr", action="store_true", help="skip place and route")
    p.add_argument("--out", default=None, help="report path (default build/synth/<config>.json)")
    p.add_argument("--part", default=None,
                   help="place and route on this part (LFE5U-25F, LFE5U-45F or LFE5U-85F) "
                        "instead of the smallest that holds the design")
    p.add_argument("--rom", action="store_true",
                   help="synthesise the ROM build of compressed LeNet-5 (the accelerator with "
                        "the weights baked in; compressed under 1 point first unless "
                        "build/network holds it) instead of the bare engine")
    p.set_defaults(func=_synth)


def _verilog(args):
    from slimnfu.config import get_config
    from slimnfu.gen.verilog import emit_block

    info = emit_block(args.block, get_config(args.config))
    print(f"{info['path']} ({'written' if info['changed'] else 'unchanged'}, "
          f"sha256 {info['sha256'][:16]})")
    return 0


def _synth(args):
    from slimnfu.config import get_config
    from slimnfu.gen.synth import synth_config

    cfg = get_config(args.config)
    if args.rom:
        report = _synth_rom(cfg, args)
    else:
        report = synth_config(cfg, out=args.out, pnr=not args.no_pnr, part=args.part)
    fmax = report["fmax_mhz"]
    print(f"{report['config']}: {report['cells']} cells, {report['luts']} LUT4, {report['ffs']} FF, "
          f"{report['dsps']} DSP, {report['brams']} DP16KD, "
          f"{report['memory_bits']} memory bits (generic); "
          f"fmax {'%.1f MHz' % fmax if fmax else 'n/a'}; {report['fits']}")
    return 0


def _synth_rom(cfg, args):
    from slimnfu.compress import data
    from slimnfu.compress.pipeline import cached_compress
    from slimnfu.compress.train import train
    from slimnfu.gen.compiler import compile_model, config_for
    from slimnfu.gen.synth import check_part, synth_emitted
    from slimnfu.gen.verilog import emit_accelerator

    check_part(args.part)
    data.verify("mnist")
    model, _ = train("lenet5")
    _, q, _ = cached_compress(model, 1.0, 3000, 2000)
    rom_cfg = config_for(q, cfg).with_(name=f"{cfg.name}_lenet5_compressed")
    emitted = emit_accelerator(compile_model(q, rom_cfg), rom_cfg.name)
    return synth_emitted(emitted, rom_cfg.name, {"config": rom_cfg.name,
                                                 "accel": rom_cfg.to_dict()},
                         out=args.out, pnr=not args.no_pnr, part=args.part)
