"""What the benchmarks share: the accuracy of logits, the common options and the report.

Every benchmark has ``--out`` (added by :mod:`slimnfu.bench.cli_bench`: ``bench/<name>.json`` in
the build root unless given); those that run torch add ``--threads`` with
:func:`add_threads`, set it with :func:`start`, and all write their JSON report and print its
table with :func:`write_report`.
"""

import platform
import time

from slimnfu import paths
from slimnfu.atomic import write_json

__all__ = ["accuracy", "add_out", "default_out", "add_threads", "start", "host",
           "write_report", "kept_rows", "kept_row"]


def accuracy(logits, labels, digits=4):
    """Top-1 accuracy of ``logits`` (one row per image) against ``labels``, in percent,
    rounded to ``digits``."""
    return round(100.0 * float((logits.argmax(1) == labels).double().mean()), digits)


def add_out(parser, name):
    """``--out``: the report's path (default: ``bench/<name>.json`` in the build root, resolved
    when the benchmark runs)."""
    parser.add_argument("--out", help=f"output JSON path (default: bench/{name}.json in the "
                                      f"build root)")


def default_out(name):
    """``bench/<name>.json`` in the build root, as a string."""
    return str(paths.build_root() / "bench" / f"{name}.json")


def add_threads(parser, default=2):
    """``--threads``: torch's CPU threads for the run."""
    parser.add_argument("--threads", type=int, default=default,
                        help=f"torch CPU threads (default {default})")


def start(args):
    """Set torch's threads from ``args.threads`` (refusing a bad count before any work);
    return the start time (:func:`time.perf_counter`)."""
    from slimnfu.compress.train import set_threads

    set_threads(args.threads)
    return time.perf_counter()


def host(threads=None):
    """The Python and torch versions (and ``threads`` when given) for a report."""
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    if threads is not None:
        out["threads"] = threads
    return out


def write_report(out, report, text=None):
    """Write ``report`` as JSON to ``out`` atomically, then print ``text`` (the benchmark's
    table) and where the report went."""
    write_json(out, report)
    if text:
        print(text)
    print(f"wrote {out}")


def kept_rows(path, benchmark, want):
    """The rows of the ``benchmark`` report ``path``, as a dict ``(network, budget_pct, method)
    -> row``, when it was written with the settings ``want`` (a dict); none when there is no
    such file. A report of other settings, or of another benchmark, is refused (``--resume``).
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text())
        rows, got = report["rows"], report.get("settings")
        keys = [(r["network"], r["budget_pct"], r["method"]) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--resume: {path} is not a bench-{benchmark} report ({exc})") from None
    if report.get("benchmark") != benchmark:
        raise ValueError(f"--resume: {path} is not a bench-{benchmark} report")
    if got != want:
        diff = ", ".join(f"{k} {got.get(k) if got else None!r} (now {v!r})"
                         for k, v in want.items() if not got or got.get(k) != v)
        raise ValueError(f"--resume: {path} was written with other settings: {diff}; "
                         f"resume with the same ones or write to another --out")
    return dict(zip(keys, rows))


def kept_row(kept, network, budget, method, model_key, log=print):
    """The row ``(network, budget, method)`` of ``kept`` (from :func:`kept_rows`) when it was
    measured on the same base network (its ``model_key``, the base state's hash), else None:
    a row of another base network is run again."""
    row = kept.get((network, budget, method))
    if row is None or row.get("model_key") != model_key:
        return None
    log(f"{network} budget {budget} {method}: row kept from the earlier run")
    return row
