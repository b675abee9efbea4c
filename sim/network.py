"""Whole-network co-simulation: real images through the accelerator's RTL, checked bit for bit.

:func:`run_network` emits the ROM build of a compiled program, builds it for Icarus or
Verilator, runs one job per image (:mod:`slimnfu.sim.tb_accel`) and compares every layer's
output and the logits with :func:`slimnfu.compress.quant.int_forward_layers`, the golden model;
on a difference, :mod:`slimnfu.sim.divergence` names the first divergent write and saves its
reproducer. :func:`run_network_fast` does the same on the fast runner
(:mod:`slimnfu.sim.fastsim`), for thousands of images: the logits and the counters of every
image, and every layer's output on request. The schedule model the runs are checked against,
:func:`layer_schedule` and :func:`expected_cycles`, lives in :mod:`slimnfu.gen.schedule` (the
compiler chooses with it) and is re-exported here.
"""

import time

import torch

from slimnfu import paths
from slimnfu.compress.quant import int_forward_layers, quantize_input
from slimnfu.formats import layout
from slimnfu.gen.schedule import expected_cycles, layer_schedule
from slimnfu.gen.verilog import emit_accelerator
from slimnfu.sim import fastsim
from slimnfu.sim.divergence import divergence_root, first_divergence, save_divergence
from slimnfu.sim.runner import build_sim, run_jobs, wave_file

__all__ = ["layer_schedule", "expected_cycles", "image_job", "run_network", "fast_spec",
           "run_network_fast"]


def _timeout_cycles(program):
    """Cycles an image may take before a testbench gives up on it."""
    return 2 * expected_cycles(program)["cycles"] + 1000


def image_job(program, x_int, name, step=True, logits=None):
    """The JSON job of one integer input sample; with the reference ``logits``, the words
    and real-lane masks the testbench checks the accelerator's logits against."""
    job = {"name": name, "image": [int(w) for w in layout.pack_program_input(program, x_int)],
           "step": step,
           "layer_words": [program.out_words(i) for i in range(len(program.layers))],
           "logit_words": program.out_words(len(program.layers) - 1),
           "timeout_cycles": _timeout_cycles(program)}
    if logits is not None:
        n, h, w = program.layers[-1].out_shape
        job["expect"] = {"words": layout.pack_output(logits.reshape(n, h, w), program.cfg),
                         "lane_masks": layout.output_lane_masks(n, program.cfg),
                         "words_per_tile": h * w}
    return job


def _check(program, raw, refs, schedule, image):
    """Compare one image's raw result with the reference outputs; return ``(passed, problem,
    divergence)`` (:func:`slimnfu.sim.divergence.first_divergence`'s report, or None)."""
    if raw.get("error"):
        return False, raw["error"], None
    report = first_divergence(program, raw, refs, schedule, image)
    if report is not None:
        return False, report["message"], report
    return True, None, None


def run_network(program, qmodel, images, labels, sim="verilator", name=None, step=True,
                waves=False, log=print, build_root=None):
    """Run ``images`` (float, the model's input scale) through the RTL of ``program``.

    The Verilog and the simulation go below ``build_root`` (default
    :func:`slimnfu.paths.build_root`).

    Returns
    -------
    dict
        ``images``, ``bit_exact`` (every image, every layer with ``step``), ``rtl_correct``,
        ``int_correct``, ``rtl_accuracy``, ``predictions``, ``labels``, ``failures`` (each
        with its image's first divergence), ``divergence`` (the first image's, with its
        reproducer case file and, with ``waves``, the waveform window; None when bit-exact), the
        counters of the first image and, with ``step``, its measured ``per_layer`` cycles (a
        layer's ``cycles`` include its move and loads, ``engine_cycles`` only its run),
        ``expected`` (:func:`expected_cycles`), and the build and simulation seconds
        (``sim_s_per_image`` excludes the testbench's per-layer reads).
    """

    name = name or program.cfg.name
    build_root = paths.build_root(build_root)
    x = quantize_input(qmodel, images)
    emitted = emit_accelerator(program, name, build_root / "verilog")
    log(f"[{sim}] building {emitted['top']} ({name}) ...")
    runner, dirs = build_sim(sim, program.cfg, waves=waves, build_root=build_root,
                             emitted=emitted, name=name)
    log(f"[{sim}] {'compiled' if dirs['compiled'] else 'reused build'} in "
        f"{dirs['build_s']:.1f} s; running {x.shape[0]} images ...")
    refs = [int_forward_layers(qmodel, x[i:i + 1]) for i in range(x.shape[0])]
    jobs = [image_job(program, x[i], f"image{i}", step, refs[i][-1][0])
            for i in range(x.shape[0])]
    t0 = time.perf_counter()
    raw = {r["name"]: r for r in run_jobs(runner, dirs, jobs, waves=waves,
                                          test_module="slimnfu.sim.tb_accel")}
    sim_s = time.perf_counter() - t0
    preds, failures, rtl_ok, int_ok, divergence = [], [], 0, 0, None
    schedule = layer_schedule(program)
    for i in range(x.shape[0]):
        r = raw[f"image{i}"]
        passed, problem, report = _check(program, r, refs[i], schedule, i)
        if report is not None and divergence is None:
            divergence = save_divergence(report, program, qmodel, x[i], refs[i], r,
                                         wave_file(dirs) if waves else None,
                                         divergence_root(build_root), name)
            log(f"[{sim}] {report['message']}; reproducer: {report.get('reproducer')}")
        if passed and r.get("tb_verdict"):
            passed, problem = False, f"the testbench disagrees: {r['tb_verdict']}"
        ref_pred = int(refs[i][-1][0].reshape(-1).argmax())
        int_ok += ref_pred == int(labels[i])
        pred = None
        if r.get("logits") is not None:
            logits = layout.unpack_program_output(program, len(program.layers) - 1, r["logits"])
            pred = int(logits.argmax())
            rtl_ok += pred == int(labels[i])
        preds.append(pred)
        if not passed:
            failures.append({"image": i, "error": problem, "divergence": report})
    first = next((r for r in raw.values() if r.get("counters")), {})
    per_layer = None
    if first.get("marks"):
        marks = [[0, 0]] + first["marks"]
        per_layer = [{"layer": l.name, "format": l.format, "model_layer": l.name.split(".")[0],
                      "im2col": l.im2col, "cycles": marks[i + 1][0] - marks[i][0],
                      "engine_cycles": marks[i + 1][1] - marks[i][1]}
                     for i, l in enumerate(program.layers)]
    run_s = [r["run_s"] - r["read_s"] for r in raw.values() if r.get("run_s")]
    n = x.shape[0]
    return {"images": n, "sim": sim, "name": name, "step": step, "bit_exact": not failures,
            "failures": failures[:10], "divergence": divergence,
            "rtl_correct": rtl_ok, "int_correct": int_ok,
            "rtl_accuracy": round(100.0 * rtl_ok / n, 2), "int_accuracy":
            round(100.0 * int_ok / n, 2), "predictions": preds,
            "labels": [int(v) for v in labels], "counters": first.get("counters"),
            "per_layer": per_layer,
            "expected": expected_cycles(program), "build_s": round(dirs["build_s"], 1),
            "compiled": dirs["compiled"], "sim_wall_s": round(sim_s, 1),
            "sim_s_per_image": round(sum(run_s) / len(run_s), 4) if run_s else None,
            "verilog": str(emitted["path"]), "verilog_sha256": emitted["sha256"]}


def fast_spec(program, emitted, name):
    """The :class:`slimnfu.sim.fastsim.FastSpec` of ``program``'s ROM build ``emitted``
    (:func:`slimnfu.gen.verilog.emit_accelerator`), built in folder ``name``."""
    return fastsim.spec_for(program, emitted, name, program.input_words(),
                            _timeout_cycles(program))


def run_network_fast(program, qmodel, images, labels, name=None, layers=False, workers=1,
                     ray_address=None, progress=None, build_root=None, log=print):
    """Run ``images`` (float, the model's input scale) through the fast runner of ``program``
    and check every image's logits (and, with ``layers``, every layer's output) bit for bit
    against the integer reference.

    Parameters
    ----------
    program : Program
    qmodel : QuantModel
    images : torch.Tensor
    labels : torch.Tensor
    name : str, optional
        The build's name (Verilog and fast-runner folders); default the config's name.
    layers : bool
        Pause after every layer and check its output too (slower: the host unpacks every
        word).
    workers : int
        Simulator processes at a time, or Ray tasks in flight with ``ray_address``.
    ray_address : str, optional
        Shard over a Ray cluster (:func:`slimnfu.sim.fastsim.run_images`).
    progress : callable, optional
        Called with 0 when the simulation starts (after the Verilog and the build), then with
        the number of images of each finished chunk.
    build_root : path-like, optional
        Default :func:`slimnfu.paths.build_root`.
    log : callable

    Returns
    -------
    dict
        ``images``, ``bit_exact`` (every image finished with the reference's logits, and its
        layers' outputs with ``layers``), ``mismatches`` (images that did not), ``failures``
        (the first 10), ``rtl_correct``, ``int_correct``, ``rtl_accuracy``,
        ``int_accuracy`` (percent, two decimals), ``predictions``, ``cycles_per_image``
        (``{"min", "max", "mean"}``), ``cycles_as_expected`` (every image's count is
        :func:`expected_cycles`), ``expected_cycles``, ``counters`` (of the first image),
        ``sat_events`` (summed), ``per_layer`` (with ``layers``), ``sim_wall_s`` (wall time
        of the sharded run), ``sim_s_per_image`` (the simulators' seconds per image), and
        the Verilog's path and sha256.
    """
    name = name or program.cfg.name
    build_root = paths.build_root(build_root)
    n = int(images.shape[0])
    x = quantize_input(qmodel, images)
    emitted = emit_accelerator(program, name, build_root / "verilog")
    spec = fast_spec(program, emitted, name)
    words = [layout.pack_program_input(program, x[i]) for i in range(n)]
    fastsim.ensure_built(spec, emitted["path"], build_root, log)
    if progress:
        progress(0)
    t0 = time.perf_counter()
    raw = fastsim.run_images(spec, emitted["path"], words, layers, workers, ray_address,
                             progress=progress, build_root=build_root, log=log)
    sim_s = time.perf_counter() - t0
    last = len(program.layers) - 1
    failures, preds, rtl_ok, int_ok = [], [], 0, 0
    for start in range(0, n, 500):
        stop = min(n, start + 500)
        refs = int_forward_layers(qmodel, x[start:stop])
        for i in range(start, stop):
            want = refs[-1][i - start].reshape(-1)
            int_ok += int(want.argmax()) == int(labels[i])
            problem, pred = None, None
            if raw["status"][i]:
                problem = {1: "timed out", 2: "done missing after the last layer"}.get(
                    int(raw["status"][i]), f"status {int(raw['status'][i])}")
            else:
                got = layout.unpack_program_output(
                    program, last, fastsim.words_of(raw["logits"][i])).reshape(-1)
                pred = int(got.argmax())
                rtl_ok += pred == int(labels[i])
                if not torch.equal(got, want):
                    problem = f"{int((got != want).sum())} logits differ"
                elif layers:
                    problem = _layers_problem(program, raw, i, refs, i - start)
            preds.append(pred)
            if problem:
                failures.append({"image": i, "error": problem})
    cycles = raw["counters"][:, spec.counters.index("cycles")].astype(float)
    expected = expected_cycles(program)
    per_layer = None
    if layers:
        marks = [[0, 0]] + raw["marks"][0].tolist()
        per_layer = [{"layer": l.name, "format": l.format, "model_layer": l.name.split(".")[0],
                      "im2col": l.im2col, "cycles": marks[i + 1][0] - marks[i][0],
                      "engine_cycles": marks[i + 1][1] - marks[i][1]}
                     for i, l in enumerate(program.layers)]
    return {"images": n, "sim": "verilator-fast", "name": name, "layers": layers,
            "bit_exact": not failures, "mismatches": len(failures), "failures": failures[:10],
            "rtl_correct": rtl_ok, "int_correct": int_ok,
            "rtl_accuracy": round(100.0 * rtl_ok / n, 2),
            "int_accuracy": round(100.0 * int_ok / n, 2), "predictions": preds,
            "cycles_per_image": {"min": int(cycles.min()), "max": int(cycles.max()),
                                 "mean": round(float(cycles.mean()), 1)},
            "cycles_as_expected": bool((cycles == expected["cycles"]).all()),
            "expected_cycles": expected,
            "counters": dict(zip(spec.counters, (int(v) for v in raw["counters"][0]))),
            "sat_events": int(raw["counters"][:, spec.counters.index("sat_events")].sum()),
            "per_layer": per_layer, "workers": workers, "ray": ray_address,
            "sim_wall_s": round(sim_s, 1), "sim_s_per_image": round(raw["wall_s"] / n, 4),
            "verilog": str(emitted["path"]), "verilog_sha256": emitted["sha256"]}


def _layers_problem(program, raw, i, refs, j):
    """The first program layer whose output differs from the reference for image ``i``
    (``j`` in ``refs``), or None."""
    for li, layer in enumerate(program.layers):
        if layer.ref is None:
            continue
        got = layout.unpack_program_output(program, li, fastsim.words_of(raw["layers"][li][i]))
        want = refs[layer.ref][j]
        if not torch.equal(got, want):
            return f"layer {layer.name}: {int((got != want).sum())} outputs differ"
    return None
