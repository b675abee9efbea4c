"""``slimnfu check``: load a user's model and list, before any training or compression, what
the pipeline does with every layer (:mod:`slimnfu.compress.intake`)."""

import json

__all__ = ["register"]


def _check(args):
    from slimnfu.compress.intake import load_model, normalise, parse_input_shape

    shape = parse_input_shape(args.input_shape)
    if not 4 <= args.dw <= 32:
        raise ValueError(f"--dw must be between 4 and 32, not {args.dw}")
    model = load_model(args.model, args.weights)
    _, report = normalise(model, shape, args.dw, source=args.model)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    return 0 if report.ok else 1


def register(sub):
    """Add the ``check`` subcommand to ``sub``."""
    p = sub.add_parser(
        "check", help="check a model of your own: every layer kept, folded, dropped or "
                      "unsupported, and why",
        description="Load MODEL and list every layer with what the pipeline does with it: kept "
                    "(possibly rewritten: padding='same' made explicit, a zero bias added, a "
                    "function made a module), folded (BatchNorm into the conv or linear layer "
                    "before it), dropped (Dropout, Identity) or unsupported (with the reason "
                    "and what to change), with each layer's input and output shape. Nothing is "
                    "trained or compressed. Exit status: 0 when every layer is supported, 1 "
                    "when one is not, 2 when MODEL cannot be loaded.")
    p.add_argument("model", metavar="MODEL",
                   help="path.py:make_model (a function in a Python file that returns the "
                        "model), a module saved with torch.save(model), a TorchScript file, "
                        "or an ONNX file (.onnx)")
    p.add_argument("--weights", metavar="PATH",
                   help="a state dict to load into the model first "
                        "(torch.save(model.state_dict(), PATH)); not for ONNX")
    p.add_argument("--input-shape", default="1,28,28", metavar="C,H,W",
                   help="the shape of one input, C,H,W (or N for an FC-only model); default "
                        "1,28,28 (an MNIST image)")
    p.add_argument("--dw", type=int, default=16,
                   help="data width the activations are checked at (default 16): LeakyReLU's "
                        "slope must be a multiple of 2**-(dw-2)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON instead of the table")
    p.set_defaults(func=_check)
