"""``slimnfu data fetch|verify``: download and check MNIST and Fashion-MNIST."""

__all__ = ["register"]

_DATASETS = ("mnist", "fashion-mnist")


def _datasets(args):
    return list(_DATASETS) if args.dataset == "all" else [args.dataset]


def _fetch(args):
    import os
    from slimnfu.compress import data

    root = args.root or os.environ.get(data.ENV_VAR)
    if not root:
        raise ValueError(f"slimnfu data fetch needs --root DIR or {data.ENV_VAR} set")
    for name in _datasets(args):
        report = data.fetch(name, root, mirrors=args.mirror or None,
                            progress=not args.no_progress, deadline_s=args.deadline)
        for file, status in report.items():
            print(f"{name}/{file}: {status}")
        data.verify(name, root)
    return 0


def _verify(args):
    from slimnfu.compress import data

    for name in _datasets(args):
        folder = data.verify(name, args.root)
        print(f"{name}: all {len(data.DATASETS[name]['files'])} files OK in {folder}")
    return 0


def register(sub):
    """Add the ``data`` subcommand (``fetch``, ``verify``) to ``sub``."""
    p = sub.add_parser("data", help="download or verify the datasets",
                       description="Download (fetch) or md5-check (verify) MNIST and "
                                   "Fashion-MNIST in their original IDX .gz files.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, func, text in (("fetch", _fetch, "download missing or corrupt files, "
                                                 "md5-checked"),
                               ("verify", _verify, "check every file's md5")):
        q = actions.add_parser(action, help=text, description=text)
        q.add_argument("--root", help="data folder (default $SLIMNFU_DATA)")
        q.add_argument("--dataset", choices=_DATASETS + ("all",), default="all",
                       help="dataset (default all)")
        if action == "fetch":
            q.add_argument("--mirror", action="append", metavar="URL",
                           help="base URL to try instead of the usual mirrors (repeatable)")
            q.add_argument("--no-progress", action="store_true", help="no progress bars")
            q.add_argument("--deadline", type=float, default=900.0, metavar="SECONDS",
                           help="the most the whole fetch may take (default 900)")
        q.set_defaults(func=func)
