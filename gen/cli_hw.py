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
    p.add_argument("--pnr-timeout", type=float, default=None, metavar="S",
                   help="stop place and route after S seconds (the report then has no fmax)")
    p.add_argument("--rom", action="store_true",
                   help="synthesise the whole accelerator for compressed LeNet-5 instead of "
                        "the bare engine (compressed under 1 point first unless build/network "
                        "holds it): the ROM build when its weights fit the block RAM, else "
                        "the port build")
    p.add_argument("--fc", default="auto", choices=("auto", "affine", "index"),
                   help="with --rom, fc1's permuted format: auto (default; the 1-point budget "
                        "picks), affine (its weights fit on chip, at some accuracy) or index")
    p.set_defaults(func=_synth)

    p = sub.add_parser("board", help="build a ULX3S bitstream: compressed LeNet-5 classifies a "
                                     "stored MNIST test image and shows the class on the LEDs",
                       description="Compile compressed LeNet-5 (cached in build/network, or "
                                   "compressed under 1 point first) for --config, store MNIST "
                                   "test image --image, and build the bitstream with Yosys, "
                                   "nextpnr-ecp5 and ecppack (YoWASP). LEDs 0-3: the predicted "
                                   "class; LED 6: it equals the label; LED 7: done. Writes "
                                   "build/board/<board>/ and its report.json.")
    p.add_argument("--config", default="tiny", help="accelerator config (default: tiny)")
    p.add_argument("--board", default="ulx3s-85f",
                   help="ulx3s-12f, ulx3s-25f, ulx3s-45f or ulx3s-85f (default: ulx3s-85f)")
    p.add_argument("--image", type=int, default=0, help="MNIST test image index (default: 0)")
    p.add_argument("--fc", default="affine", choices=("auto", "affine", "index"),
                   help="fc1's permuted format: affine (default; its weights fit on chip, at "
                        "some accuracy), index, or auto (the 1-point budget picks)")
    p.add_argument("--no-build", action="store_true",
                   help="write the build files and script only, no bitstream")
    p.set_defaults(func=_board)


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
        report = synth_config(cfg, out=args.out, pnr=not args.no_pnr, part=args.part,
                              pnr_timeout_s=args.pnr_timeout)
    fmax = report["fmax_mhz"]
    print(f"{report['config']}: {report['cells']} cells, {report['luts']} LUT4, "
          f"{report['ffs']} FF, "
          f"{report['dsps']} DSP, {report['brams']} DP16KD, "
          f"{report['memory_bits']} memory bits (generic); "
          f"fmax {'%.1f MHz' % fmax if fmax else 'n/a'}; {report['fits']}")
    return 0


def _synth_rom(cfg, args):
    from slimnfu.gen.synth import check_part, choose_weights, synth_emitted
    from slimnfu.gen.verilog import emit_accelerator

    check_part(args.part)
    _, program, _ = _compressed_program(cfg, args.fc)
    weights, why = choose_weights(program)
    print(why, flush=True)
    name = program.cfg.name + ("" if weights == "rom" else "_port")
    emitted = emit_accelerator(program, name, weights=weights)
    return synth_emitted(emitted, name, {"config": name, "accel": program.cfg.to_dict(),
                                         "weights": weights, "weights_why": why},
                         out=args.out, pnr=not args.no_pnr, part=args.part,
                         pnr_timeout_s=args.pnr_timeout)


def _compressed_program(cfg, fc_variant="auto"):
    """``(qmodel, program, key)``: cached compressed LeNet-5 compiled for ``cfg``'s ROM build;
    ``key`` names the base checkpoint (:func:`slimnfu.compress.pipeline.hash_state`)."""
    from slimnfu.compress import data
    from slimnfu.compress.pipeline import cached_compress, hash_state
    from slimnfu.compress.train import train
    from slimnfu.gen.compiler import compile_model, config_for

    data.verify("mnist")
    model, _ = train("lenet5")
    _, q, _ = cached_compress(model, 1.0, 3000, 2000, fc_variant=fc_variant)
    suffix = "" if fc_variant == "auto" else f"_fc{fc_variant}"
    rom_cfg = config_for(q, cfg).with_(name=f"{cfg.name}_lenet5_compressed{suffix}")
    return q, compile_model(q, rom_cfg), hash_state(model)[:12]


def _board(args):
    import hashlib
    import json
    import time
    from pathlib import Path

    from slimnfu.atomic import write_json
    from slimnfu.compress import data
    from slimnfu.compress.quant import int_forward, int_forward_layers, quantize_input
    from slimnfu.config import get_config
    from slimnfu.gen.board import board_platform, build_board, pnr_figures
    from slimnfu import paths

    cfg = get_config(args.config)
    clk_mhz = board_platform(args.board).default_clk_frequency / 1e6
    if not 0 <= args.image < 10000:
        raise ValueError(f"--image must be a test image index in 0..9999, not {args.image}")
    q, program, key = _compressed_program(cfg, args.fc)
    images, labels = data.load("mnist", "test")
    x = quantize_input(q, images[args.image:args.image + 1])
    predicted = int(int_forward_layers(q, x)[-1][0].argmax())
    out = paths.build_root() / "board" / args.board
    t0 = time.monotonic()
    print(f"building {args.board} for {program.cfg.name!r}, test image {args.image} "
          f"(label {int(labels[args.image])}, reference class {predicted}) in {out}", flush=True)
    bit = build_board(program, program.pack_image(x[0]), int(labels[args.image]), args.board,
                      out, do_build=not args.no_build)
    acc = float((int_forward(q, images)[0].argmax(1) == labels).double().mean())
    report = {"board": args.board, "config": program.cfg.to_dict(), "image": args.image,
              "model_key": key,
              "fc": args.fc, "acc_int_test": round(100 * acc, 2),
              "rom_bits": len(program.rom) * program.rom_width,
              "label": int(labels[args.image]), "reference_class": predicted,
              "leds_expected": predicted | (0x40 if predicted == int(labels[args.image]) else 0)
              | 0x80, "bitstream": str(bit) if bit else None,
              "bitstream_sha256": hashlib.sha256(Path(bit).read_bytes()).hexdigest()
              if bit else None, "pnr": pnr_figures(out, clk_mhz) if bit else None,
              "wall_s": round(time.monotonic() - t0, 1)}
    write_json(out / "report.json", report)
    print(json.dumps(report, indent=1))
    return 0
