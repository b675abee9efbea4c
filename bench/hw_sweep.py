"""``slimnfu bench hw --sweep``: the engine's design space, synthesised point by point.

Each point is the base config (``--base``, default ``tiny``: its buffer depths and accumulator
width) with ``tn = ti`` from ``--tn``/``--ti``, ``dw`` from ``--dw`` and the method features of
one ``--features`` item on (:meth:`slimnfu.config.AccelConfig.changed`, so each point is named
after what changed, e.g. ``tiny+dw=8+ti=2+tn=2``). The driver emits every point's Verilog
first (every config is checked before any synthesis), then runs Yosys ``synth_ecp5`` and, with
``--pnr``, nextpnr-ecp5 on the smallest LFE5U part that holds the netlist
(:func:`slimnfu.gen.synth.synth_verilog`) for the points not in the cache:

* **in parallel**: a process pool of ``--workers`` processes (default: the CPUs this process
  may use), or, with ``--ray ADDRESS``, the same task on a Ray cluster (``local`` starts one
  here), ``--workers`` tasks in flight; a tqdm bar counts finished points;
* **cached**: a point's key is the SHA-256 of its Verilog's hash, the tool versions, the flow
  (place and route or not) and the nextpnr options; a finished point is written to
  ``sweep/points/<key>.json`` in the build root (atomically) as soon as it arrives, so a sweep
  that is interrupted and run again synthesises only the points that had not finished. Points
  that timed out or failed are not cached (a second run tries them again);
* **bounded**: ``--timeout`` seconds a point (Yosys and nextpnr together); a point that runs
  out reports ``status: "timeout"`` and the step it was in. A point whose SB, NBin and NBout
  alone exceed the largest ECP5's block RAM is not synthesised (``status: "skipped"``).

Writes the table as JSON (``bench/hw_sweep.json`` unless ``--out``) and Markdown (``.md``
beside it) and one plot (``.png``): LUT4, DP16KD, MULT18X18D and fmax against the NFU size
(``tn * ti`` multipliers), one line per DW and feature set, each point labelled with the
smallest ECP5 part that holds it and the three parts' capacities drawn in.
"""

import argparse
import hashlib
import itertools
import json
import os
import time
from pathlib import Path

from slimnfu import paths
from slimnfu.atomic import atomic_write, write_json

__all__ = ["add_arguments", "parse_grid", "sweep_points", "point_key", "run_point", "sweep",
           "markdown", "plot", "main"]

#: The default grid: every NFU size from 2x2 to 16x16, both widths, dense and each method.
DEFAULT_TN = "2,4,8,16"
DEFAULT_DW = "8,16"
DEFAULT_FEATURES = "dense,ikr,perm,kgate"
#: Default budget of one point, seconds (Yosys and nextpnr together).
DEFAULT_TIMEOUT_S = 3600
#: A point's report keys copied into the sweep's table.
_FIGURES = ("cells", "luts", "ffs", "dsps", "brams", "memory_bits", "part", "fits",
            "fmax_mhz", "worst_path")


def add_arguments(parser):
    """The sweep's options (``--sweep`` itself is :mod:`slimnfu.bench.hw`'s)."""
    from slimnfu.gen.cli_hw import add_pnr_arguments

    g = parser.add_argument_group("design-space sweep (with --sweep)")
    g.add_argument("--base", default="tiny",
                   help="config whose buffer depths and acc every point keeps (default tiny)")
    g.add_argument("--tn", default=DEFAULT_TN, metavar="LIST",
                   help=f"NFU output lanes, comma-separated (default {DEFAULT_TN})")
    g.add_argument("--ti", default=None, metavar="LIST",
                   help="NFU input lanes, comma-separated (default: equal to each --tn; the "
                        "engine needs tn = ti)")
    g.add_argument("--dw", default=DEFAULT_DW, metavar="LIST",
                   help=f"data widths, comma-separated (default {DEFAULT_DW})")
    g.add_argument("--features", default=DEFAULT_FEATURES, metavar="LIST",
                   help="method feature sets, comma-separated: dense, or features joined by + "
                        f"(e.g. ikr+perm) (default {DEFAULT_FEATURES})")
    g.add_argument("--pnr", action=argparse.BooleanOptionalAction, default=True,
                   help="place and route each point that fits a part, for fmax (default: on)")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds a point may take, Yosys and nextpnr together (default "
                        f"{DEFAULT_TIMEOUT_S})")
    g.add_argument("--workers", type=int, default=None,
                   help="synthesis jobs at a time (default: the CPUs this process may use)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the points on the Ray cluster at ADDRESS ('local' starts one "
                        "here) instead of a local process pool")
    add_pnr_arguments(g)


def _int_list(option, text):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{option} must be a comma-separated list of integers, not {text!r}")
    return sorted(set(values))


def _feature_sets(text):
    from slimnfu.config import FEATURES

    out = []
    for item in str(text).split(","):
        item = item.strip()
        names = [] if item == "dense" else item.split("+")
        for name in names:
            if name not in FEATURES:
                raise ValueError(f"--features: unknown feature {name!r} in {item!r}; known: "
                                 f"dense, {', '.join(sorted(FEATURES))}")
        key = tuple(sorted(set(names)))
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError(f"--features must name at least one feature set, not {text!r}")
    return out


def parse_grid(base="tiny", tn=DEFAULT_TN, ti=None, dw=DEFAULT_DW, features=DEFAULT_FEATURES):
    """The sweep's configs, each checked (``ValueError`` naming the option or the point and
    the config's own message, before any synthesis).

    Returns
    -------
    list of AccelConfig
        One per (tn, ti, dw, feature set), in that order, named by
        :meth:`~slimnfu.config.AccelConfig.changed`.
    """
    from slimnfu.config import get_config

    cfg0 = get_config(base)
    tns = _int_list("--tn", tn)
    tis = _int_list("--ti", ti) if ti is not None else None
    dws = _int_list("--dw", dw)
    feats = _feature_sets(features)
    out = []
    for n in tns:
        for i, d, fs in itertools.product(tis or [n], dws, feats):
            try:
                cfg = cfg0.changed(tn=n, ti=i, dw=d, **{f: True for f in fs})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"sweep point tn={n} ti={i} dw={d} features="
                                 f"{'+'.join(fs) or 'dense'} of --base {base}: {exc}") from None
            if cfg not in out:
                out.append(cfg)
    return out


def point_key(verilog_sha256, tools, pnr, pnr_opts):
    """The cache key of a point: SHA-256 of its Verilog's hash, the tool versions and the
    flow (place and route or not, and nextpnr's options when it runs)."""
    flow = {"verilog": verilog_sha256, "tools": tools, "pnr": bool(pnr),
            "pnr_options": pnr_opts if pnr else None}
    return hashlib.sha256(json.dumps(flow, sort_keys=True).encode()).hexdigest()


def sweep_points(configs, build_root, tools, pnr, pnr_opts):
    """Emit every config's engine Verilog (``verilog/<name>/`` in ``build_root``) and return
    the points: ``name``, ``accel``, ``tn``, ``ti``, ``dw``, ``features``,
    ``nfu_multipliers``, ``verilog`` (path), ``top``, ``verilog_sha256``, ``key`` and
    ``skip`` (None, or why the point is not synthesised)."""
    from slimnfu.gen.synth import block_ram_shortfall
    from slimnfu.gen.verilog import emit_engine

    points = []
    for cfg in configs:
        emitted = emit_engine(cfg, build_root / "verilog")
        points.append({"name": cfg.name, "accel": cfg.to_dict(), "tn": cfg.tn, "ti": cfg.ti,
                       "dw": cfg.dw, "features": "+".join(sorted(cfg.features)) or "dense",
                       "nfu_multipliers": cfg.tn * cfg.ti, "verilog": str(emitted["path"]),
                       "top": emitted["top"], "verilog_sha256": emitted["sha256"],
                       "key": point_key(emitted["sha256"], tools, pnr, pnr_opts),
                       "skip": block_ram_shortfall(cfg)})
    return points


def run_point(point, text, work_root, pnr, pnr_opts, timeout_s, synth=None):
    """Synthesise one point (a task of the process pool or of Ray): write ``text`` (its
    Verilog) into ``work_root/<name>/`` and run ``synth`` (default
    :func:`slimnfu.gen.synth.synth_verilog`) there.

    Returns
    -------
    dict
        ``status`` (``"done"``, ``"timeout"`` or ``"error"``), ``error`` (None or what went
        wrong), the figures of :data:`_FIGURES`, ``pnr_error`` (nextpnr's timeout, if any),
        ``synth_wall_s`` and ``host`` (the machine that ran it).
    """
    import platform

    from slimnfu.gen import synth as gs

    synth = synth or gs.synth_verilog
    workdir = Path(work_root) / point["name"]
    vfile = atomic_write(workdir / "src" / Path(point["verilog"]).name, text)
    start = time.monotonic()
    out = {"status": "done", "error": None, "host": platform.node()}
    try:
        report = synth(vfile, point["top"], workdir / "run", pnr=pnr, progress=False,
                       timeout_s=timeout_s, pnr_opts=pnr_opts)
    except gs.StepTimeout as exc:
        out.update(status="timeout", error=str(exc))
        report = {}
    except (RuntimeError, OSError, ValueError) as exc:
        out.update(status="error", error=str(exc)[-2000:])
        report = {}
    out.update({k: report.get(k) for k in _FIGURES})
    out["pnr_error"] = (report.get("pnr") or {}).get("error")
    if out["pnr_error"] and "did not finish" in out["pnr_error"]:
        out["status"] = "timeout"
    out["synth_wall_s"] = round(time.monotonic() - start, 2)
    return out


def _ray_point(*args):
    """The Ray task: :func:`run_point`."""
    return run_point(*args)


def _execute(tasks, workers, ray_address, done):
    """Run ``tasks`` (``(point, args)`` pairs, ``args`` for :func:`run_point`) on a local
    process pool of ``workers`` or on Ray, calling ``done(point, result)`` as each finishes."""
    if ray_address is None:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            futures = {pool.submit(run_point, *args): point for point, args in tasks}
            for future in as_completed(futures):
                done(futures[future], future.result())
        except BaseException:
            # Interrupted (Ctrl-C also reaches the workers and their tools): drop the queued
            # points without waiting; the finished ones are already in the cache.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return
    from slimnfu.sim.fastsim import ray_or_error

    ray = ray_or_error()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False,
                 **({"num_cpus": workers} if ray_address == "local" else {}))
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_point)
        pending, todo = {}, list(tasks)
        while todo or pending:
            while todo and len(pending) < workers:
                point, args = todo.pop(0)
                pending[task.remote(*args)] = point
            ready, _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(ready[0])
            done(point, ray.get(ready[0]))
    finally:
        if started_here:
            ray.shutdown()


def sweep(configs, build_root=None, pnr=True, pnr_opts=None, timeout_s=DEFAULT_TIMEOUT_S,
          workers=None, ray_address=None, synth=None, tools=None, progress=True, log=print):
    """Synthesise ``configs`` (see the module docstring); return the table's rows.

    Parameters
    ----------
    configs : list of AccelConfig
    build_root : path-like, optional
        Holds ``verilog/``, ``sweep/points/`` (the cache) and ``sweep/work/``.
    pnr : bool
    pnr_opts : dict, optional
        nextpnr options (:func:`slimnfu.gen.synth.pnr_options`).
    timeout_s : float
        Budget of one point.
    workers : int, optional
        Points at a time (default: the CPUs this process may use).
    ray_address : str, optional
    synth : callable, optional
        Replaces :func:`slimnfu.gen.synth.synth_verilog` (same arguments; must be picklable).
    tools : dict, optional
        The tool versions of the cache key (default :func:`slimnfu.gen.synth.tool_versions`).

    Returns
    -------
    list of dict
        One row a point, in ``configs`` order: the point's fields (without ``skip``) and
        ``status`` (``done``, ``timeout``, ``error`` or ``skipped``), ``reused`` (read from
        the cache), the figures, ``error`` and ``synth_wall_s``.
    """
    from tqdm import tqdm

    from slimnfu.gen.synth import pnr_options, tool_versions

    if isinstance(workers, bool) or not isinstance(workers, (int, type(None))) or \
            (workers is not None and workers < 1):
        raise ValueError(f"--workers must be an integer >= 1, not {workers!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"--timeout must be a positive number of seconds, not {timeout_s!r}")
    if ray_address is not None:
        from slimnfu.sim.fastsim import ray_or_error

        ray_or_error()
    pnr_opts = pnr_options(**(pnr_opts or {}))
    workers = workers or len(os.sched_getaffinity(0))
    build_root = paths.build_root(build_root)
    cache = build_root / "sweep" / "points"
    tools = tools or tool_versions()
    points = sweep_points(configs, build_root, tools, pnr, pnr_opts)
    rows = {}
    for p in points:
        row = {k: v for k, v in p.items() if k != "skip"}
        cached = cache / f"{p['key']}.json"
        if p["skip"]:
            rows[p["name"]] = {**row, "status": "skipped", "error": p["skip"], "reused": False,
                               **{k: None for k in _FIGURES}}
        elif cached.is_file():
            rows[p["name"]] = {**json.loads(cached.read_text()), "reused": True}
    todo = [p for p in points if p["name"] not in rows]
    log(f"sweep: {len(points)} points, {len(points) - len(todo)} from the cache or skipped, "
        f"{len(todo)} to synthesise on {workers} "
        f"{'Ray tasks' if ray_address else 'local processes'}")
    bar = tqdm(total=len(todo), desc="sweep", unit="point", disable=not progress or not todo)

    def done(point, result):
        row = {**{k: v for k, v in point.items() if k != "skip"}, **result, "reused": False,
               "tools": tools, "pnr": pnr, "pnr_options": pnr_opts if pnr else None}
        if result["status"] == "done":
            write_json(cache / f"{point['key']}.json", row)
        rows[point["name"]] = row
        bar.set_postfix_str(f"{point['name']}: {result['status']}")
        bar.update(1)

    work_root = str(build_root / "sweep" / "work")
    tasks = [(p, (p, Path(p["verilog"]).read_text(), work_root, pnr, pnr_opts, timeout_s,
                  synth)) for p in todo]
    try:
        _execute(tasks, workers, ray_address, done)
    finally:
        bar.close()
    return [rows[p["name"]] for p in points]


def _fmt(v, digits=None):
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if digits is not None else f"{v:,}" if isinstance(v, int) else v


def markdown(rows):
    """The sweep's table: one row a point."""
    lines = ["| point | Tn=Ti | DW | features | LUT4 | FF | MULT18X18D | DP16KD | fmax MHz | "
             "smallest part | status | synth s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        status = r["status"] + (" (cached)" if r.get("reused") else "")
        if r["status"] in ("timeout", "error", "skipped") or r.get("pnr_error"):
            status += f": {r.get('error') or r.get('pnr_error')}"
        if r["status"] == "done" and not r.get("part"):
            status += f" ({r.get('fits')})"
        lines.append(f"| `{r['name']}` | {r['tn']} | {r['dw']} | {r['features']} | "
                     f"{_fmt(r.get('luts'))} | {_fmt(r.get('ffs'))} | {_fmt(r.get('dsps'))} | "
                     f"{_fmt(r.get('brams'))} | {_fmt(r.get('fmax_mhz'), 1)} | "
                     f"{r.get('part') or '-'} | {status} | {_fmt(r.get('synth_wall_s'), 0)} |")
    return "\n".join(lines)


def plot(rows, out):
    """LUT4, DP16KD, MULT18X18D and fmax against ``tn * ti``, one line per (DW, features),
    each synthesised point labelled with its smallest ECP5 part; written to ``out`` (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimnfu.gen.synth import ECP5_PARTS

    panels = [("luts", "LUT4", "luts"), ("brams", "DP16KD", "brams"),
              ("dsps", "MULT18X18D", "dsps"), ("fmax_mhz", "fmax (MHz)", None)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    series = sorted({(r["dw"], r["features"]) for r in rows})
    for ax, (key, label, cap) in zip(axes.flat, panels):
        for dw, feats in series:
            pts = sorted((r["nfu_multipliers"], r[key], r.get("part")) for r in rows
                         if (r["dw"], r["features"]) == (dw, feats) and r.get(key) is not None)
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            label=f"DW {dw}, {feats}")
            if key == "luts":
                for x, y, part in pts:
                    ax.annotate(part.replace("LFE5U-", "") if part else "none", (x, y),
                                textcoords="offset points", xytext=(3, 3), fontsize=7,
                                color=line.get_color())
        if cap:
            for part, res in ECP5_PARTS.items():
                ax.axhline(res[cap], color="grey", lw=0.6, ls="--")
                ax.annotate(part, (0.01, res[cap]), xycoords=("axes fraction", "data"),
                            fontsize=7, color="grey", va="bottom")
        if cap:
            ax.set_yscale("log")
        elif not ax.lines:
            ax.text(0.5, 0.5, "no point placed and routed", transform=ax.transAxes,
                    ha="center", color="grey")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        sizes = sorted({r["nfu_multipliers"] for r in rows})
        ax.set_xticks(sizes, [str(x) for x in sizes])
        ax.grid(True, lw=0.3)
    for ax in axes[1]:
        ax.set_xlabel("NFU size (Tn x Ti multipliers)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("slimnfu engine on ECP5 (Yosys synth_ecp5, nextpnr-ecp5 out of context); "
                 "labels: smallest part that holds it", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(out, buf.getvalue())


def main(args, synth=None):
    """Run the sweep of ``args`` and write its JSON, Markdown and plot; return 1 when a point
    timed out or failed, else 0."""
    from slimnfu.gen.cli_hw import pnr_arguments

    configs = parse_grid(args.base, args.tn, args.ti, args.dw, args.features)
    pnr_opts = pnr_arguments(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    rows = sweep(configs, pnr=args.pnr, pnr_opts=pnr_opts, timeout_s=args.timeout,
                 workers=args.workers, ray_address=args.ray, synth=synth)
    text = markdown(rows)
    png = plot(rows, out.with_suffix(".png"))
    atomic_write(out.with_suffix(".md"), text + "\n")
    result = {"benchmark": "hw_sweep", "base": args.base,
              "grid": {"tn": args.tn, "ti": args.ti or "= tn", "dw": args.dw,
                       "features": args.features},
              "pnr": args.pnr, "pnr_options": pnr_opts if args.pnr else None,
              "timeout_s": args.timeout, "workers": args.workers, "ray": args.ray,
              "points": rows, "synthesised": sum(not r["reused"] and r["status"] != "skipped"
                                                 for r in rows),
              "reused": sum(bool(r["reused"]) for r in rows), "plot": str(png),
              "markdown": text, "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(out, result)
    print(text)
    print(f"wrote {out}, {out.with_suffix('.md')} and {png}")
    return 1 if any(r["status"] in ("timeout", "error") for r in rows) else 0
