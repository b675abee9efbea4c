"""``slimnfu export`` and ``slimnfu inspect``: write and check weight images."""

from slimnfu import paths

__all__ = ["register"]


def _range_method(text):
    return text if text == "max" else float(text)


def _export(args):
    from slimnfu.config import get_config
    from slimnfu.compress import data
    from slimnfu.compress.models import network_info
    from slimnfu.compress.quant import quantize_model
    from slimnfu.compress.train import set_threads, train
    from slimnfu.gen.image import check_export_target, export

    dataset = network_info(args.name)["dataset"]
    cfg = get_config(args.config).changed(dw=args.dw)
    if args.calib < 1:
        raise ValueError(f"--calib must be >= 1, not {args.calib}")
    out = args.out or paths.build_root() / "images" / args.name
    check_export_target(out, args.force)
    set_threads(args.threads)
    model, info = train(args.name, seed=args.seed, subset=args.subset,
                        progress=not args.no_progress, root=args.root)
    calib, _ = data.load(dataset, "calib", args.root)
    qmodel = quantize_model(model, calib[:args.calib], dw=cfg.dw, acc=cfg.acc,
                            range_method=args.range)
    manifest = export(qmodel, cfg, out, force=args.force)
    print(f"wrote {out}: {len(manifest['layers'])} layers, {manifest['stats']['bits']} bits "
          f"({manifest['stats']['image_bits']} in the image for {cfg.name}), float test "
          f"accuracy {info['acc_test']:.2f}%")


def _inspect(args):
    from slimnfu.gen.image import load

    qmodel, cfg, m = load(args.dir)
    s = m["stats"]
    print(f"{args.dir}: schema {m['schema']} v{m['version']}, config {cfg.name} "
          f"(tn={cfg.tn}, ti={cfg.ti}, dw={cfg.dw}, acc={cfg.acc}), f_in={qmodel.f_in}, "
          f"input {tuple(qmodel.input_shape)}")
    head = f"{'layer':8} {'kind':8} {'format':11} {'n_in':>6} {'n_out':>6} {'hxw':>7} {'k':>2} {'act':5} " \
           f"{'f_x':>4} {'f_w':>4} {'f_y':>4} {'MACs':>10} {'bits':>10}  fits"
    print(head)
    for ql, st, e in zip(qmodel.layers, s["layers"], m["layers"]):
        d = ql.desc
        print(f"{ql.name:8} {d.kind:8} {ql.format:11} {d.n_in:6} {d.n_out:6} {f'{d.h_in}x{d.w_in}':>7} "
              f"{d.k:2} {d.act:5} {ql.f_x:4} {ql.f_w:4} {ql.f_y:4} {st['macs']:10} "
              f"{st['bits']:10}  {'yes' if e['fits'] else 'no: ' + e['fits_error']}")
    print(f"total: {s['macs']} MACs, {s['params']} parameters, {s['bits']} bits "
          f"({s['image_bits']} bits in the image)")


def register(sub):
    p = sub.add_parser(
        "export", help="train or load a network, quantise it, write its weight image",
        description="Train (or load from the cache) a reference network, quantise it to the "
                    "fixed-point contract on the calib split, and write its weight image "
                    "(manifest.json + $readmemh .hex files) atomically.")
    p.add_argument("name", help="network: lenet300, lenet5 or vgg_fmnist")
    p.add_argument("--config", default="tiny", help="accelerator config (default tiny)")
    p.add_argument("--dw", type=int, default=16, help="data width in bits (default 16)")
    p.add_argument("--out", help="output folder (default: images/NAME in the build root, "
                                 "$SLIMNFU_BUILD, else build/)")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it is a folder slimnfu did not write (its "
                        "files are lost)")
    p.add_argument("--calib", type=int, default=5000,
                   help="calibration images from the calib split (default 5000)")
    p.add_argument("--range", type=_range_method, default="max",
                   help="f_y calibration: 'max' or a percentile of |y| such as 99.99")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--root", help="data folder (default $SLIMNFU_DATA)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_export)

    p = sub.add_parser("inspect", help="check a weight image and print its summary",
                       description="Load a weight image (checking the whole folder) and print "
                                   "its layers, weight formats, scales, MACs and bits.")
    p.add_argument("dir", help="image folder")
    p.set_defaults(func=_inspect)
