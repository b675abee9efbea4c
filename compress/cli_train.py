"""``slimnfu train`` and ``slimnfu eval``: train (or load from the cache) a reference network."""

import argparse
from slimnfu.atomic import write_json

__all__ = ["register"]


def _add_common(parser):
    parser.add_argument("name", help="network: lenet300, lenet5 or vgg_fmnist")
    parser.add_argument("--epochs", type=int, help="epochs (default: the network's own)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the network's)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the network's)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--subset", type=int,
                        help="train on the first N training images only")
    parser.add_argument("--cache-dir",
                        help="checkpoint folder (default: models/ in the cache root, "
                             "$SLIMNFU_CACHE, else build/cache/models)")
    parser.add_argument("--root", help="data folder (default $SLIMNFU_DATA)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (default 2)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the run's info as JSON to PATH (atomically)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run(args, cached_only=False):
    from slimnfu.compress.train import set_threads, train

    set_threads(args.threads)
    return train(args.name, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 seed=args.seed, subset=args.subset, cache_dir=args.cache_dir,
                 progress=not args.no_progress, root=args.root, cached_only=cached_only)


def _train(args):
    _, info = _run(args)
    how = "loaded from cache" if info["cache_hit"] else f"trained in {info['train_s']:.1f} s"
    print(f"{args.name} on {info['dataset']}: {how}, test accuracy {info['acc_test']:.2f}% "
          f"({info['path']})")
    if args.json:
        write_json(args.json, info)
    return 0


def _eval(args):
    from slimnfu.compress import data
    from slimnfu.compress.train import evaluate

    if args.split not in data.SPLITS:
        raise ValueError(f"unknown split {args.split!r}; known splits: {', '.join(data.SPLITS)}")
    model, info = _run(args, cached_only=not args.train_if_missing)
    images, labels = data.load(info["dataset"], args.split, args.root)
    acc = evaluate(model, images, labels)
    print(f"{args.name} on {info['dataset']} {args.split} ({len(labels)} images): "
          f"accuracy {acc:.2f}%")
    if args.json:
        write_json(args.json, dict(info, split=args.split, acc=acc))
    return 0


def register(sub):
    """Add the ``train`` and ``eval`` subcommands to ``sub``."""
    p = sub.add_parser("train", help="train a reference network (or load its cached checkpoint)",
                       description="Train a reference network on its dataset's train split "
                                   "(the first 55000 images), or load the checkpoint cached "
                                   "for the same network, data, hyperparameters and seed.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_common(p)
    p.set_defaults(func=_train)
    p = sub.add_parser("eval", help="report a reference network's accuracy",
                       description="Load the checkpoint `slimnfu train` cached with the same "
                                   "options (refusing, with the folder it looked in, when there "
                                   "is none, unless --train-if-missing), then print its "
                                   "accuracy on a split.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_common(p)
    p.add_argument("--split", default="test", help="train, calib, trainval or test")
    p.add_argument("--train-if-missing", action="store_true",
                   help="train the network when no checkpoint is cached")
    p.set_defaults(func=_eval)
