"""Where a network run first goes wrong: model layer, pass, output tile, element and cycle.

When the accelerator's output of some model layer differs from the integer reference
(:func:`slimnfu.compress.quant.int_forward_layers`), :func:`first_divergence` names the first
model layer in program order that differs, and in it the differing element that was written
first: the pass (program layer) that wrote it, its output tile, its ``(channel, y, x)`` and the
cycle of the write. The cycle comes from the engine's loop order and the pass's geometry
(:func:`write_cycle`) and the accelerator's schedule
(:func:`slimnfu.sim.network.layer_schedule`); the start cycles the accelerator reports at its
pauses are given beside it when the run paused after every layer.

:func:`save_divergence` writes the pass's inputs and weights as a case file that
``slimnfu cosim --layer @FILE`` replays on the bare engine
(:func:`slimnfu.sim.cases.write_case`) and, for a traced run, cuts a window of the waveform
around the write (a VCD window; an FST file is named with the window's times).
"""

from pathlib import Path

import torch

from slimnfu import paths
from slimnfu.formats import layout
from slimnfu.gen.compiler import im2col_layer
from slimnfu.rtl.engine import LayerEngine
from slimnfu.sim.cases import pass_cases, write_case
from slimnfu.sim.driver import CLOCK_NS

__all__ = ["write_cycle", "layer_passes", "writer", "first_divergence", "save_divergence",
           "vcd_window", "divergence_root", "WINDOW_CYCLES"]

#: Cycles of waveform kept on either side of the first divergent write.
WINDOW_CYCLES = 40


def divergence_root(build_root=None):
    """``divergence/`` in the build root (default :func:`slimnfu.paths.build_root`)."""
    return paths.build_root(build_root) / "divergence"


def write_cycle(desc, cfg, o, oy, ox):
    """The engine cycle in which pass ``desc`` writes output group ``(o, oy, ox)`` (output
    tile ``o``, pixel ``(oy, ox)``) to NBout; cycle 0 is the ``start`` cycle.

    A dense pass walks the groups in DianNao's order (``o``, ``oy``, ``ox``; then input tiles
    and taps), ``ci_tiles*k*k`` steps a group (pooling: ``k*k``), from cycle
    ``LayerEngine.FIRST_STEP`` on; an IKR pass spends a slot a kernel group (one per input
    tile, :meth:`slimnfu.config.PassDesc.ikr_slot_cycles`; a banked pass walks ``oy, ox, o``,
    :meth:`slimnfu.config.PassDesc.ikr_group_slot`), after one slot that only fills the first
    window, and its output is written after the last input tile's ``n`` steps (with
    ``ikr.lanes``: DianNao's order, ``ci_tiles*n`` steps a group). A step issued
    in cycle ``S`` writes in ``S + LayerEngine.write_delay(cfg, desc)``.
    """
    ci, _ = desc.tiles(cfg)
    g = (o * desc.h_out + oy) * desc.w_out + ox
    k = desc.layer.k
    if desc.ikr_n and cfg.ikr.lanes:
        last = LayerEngine.FIRST_STEP + (g + 1) * ci * desc.ikr_n - 1
    elif desc.ikr_n:
        slot = desc.ikr_group_slot(cfg, o, oy, ox) + ci
        last = LayerEngine.FIRST_STEP + desc.ikr_slot_cycles(cfg, slot) + desc.ikr_n - 1
    else:
        last = LayerEngine.FIRST_STEP + (g + 1) * ci * k * k - 1
    return last + LayerEngine.write_delay(cfg, desc)


def layer_passes(program, i):
    """The program layers that compute the model layer whose output program layer ``i``
    completes (``program.layers[i].ref``): ``range(first, i + 1)``."""
    first = i
    while first > 0 and program.layers[first - 1].ref is None:
        first -= 1
    return range(first, i + 1)


def writer(program, passes, c, y, x):
    """``(j, tile, local_channel)``: the last pass ``j`` of ``passes`` that writes element
    ``(c, y, x)`` of the model layer's output (its NBout word and lane), its output tile and
    the element's channel in the pass; None when no pass writes it."""
    cfg = program.cfg
    hw = program.layers[passes[-1]].out_shape[1] * program.layers[passes[-1]].out_shape[2]
    w = program.layers[passes[-1]].out_shape[2]
    addr, lane = (c // cfg.tn) * hw + y * w + x, c % cfg.tn
    found = None
    for j in passes:
        d = program.layers[j].desc
        base, words = d.nbout_base, d.nbout_words(cfg)
        if not base <= addr < base + words:
            continue
        tile = (addr - base) // hw
        local = tile * cfg.tn + lane
        if local < d.layer.n_out and not (tile == 0 and lane < d.lane_skip):
            found = (j, tile, local)
    return found


def first_divergence(program, raw, refs, schedule, image=0):
    """The first divergence of one image's run, or None when every output checked matches.

    Parameters
    ----------
    program : Program
    raw : dict
        The testbench's result of the image (:mod:`slimnfu.sim.tb_accel`): ``layers`` (NBout
        words after each program layer, with ``step``), ``logits``, ``marks``.
    refs : list of torch.Tensor
        The reference output of every model layer (batch of one).
    schedule : list of dict
        :func:`slimnfu.sim.network.layer_schedule` of ``program``.
    image : int
        The image's index, for the report.

    Returns
    -------
    dict or None
        ``image``, ``model_layer`` (index) and ``model_layer_name``, ``program_layer`` (the
        pass's index) and ``pass``, ``tile`` (the pass's output tile), ``element`` (``channel,
        y, x`` of the model layer's output), ``pass_channel``, ``rtl`` and ``reference``
        values, ``differing`` (elements of the layer that differ), ``engine_cycle`` (of the
        pass, :func:`write_cycle`), ``cycle`` (of the inference, the accelerator's ``cycles``
        counter in the write's cycle, from the schedule), ``pass_cycles`` (the schedule's
        ``first`` cycle of the pass and its engine ``start`` cycle), ``measured_start`` (the
        start cycle from the counters read at the pauses, when there are any) and
        ``message``; None where no pass writes the element (which would be a compiler bug).
    """
    cfg = program.cfg
    checks = [(i, words) for i, words in enumerate(raw.get("layers") or [])
              if program.layers[i].ref is not None]
    checks.append((len(program.layers) - 1, raw["logits"]))
    for i, words in checks:
        m = program.layers[i].ref
        got = layout.unpack_program_output(program, i, words)
        want = refs[m][0].reshape(got.shape)
        if torch.equal(got, want):
            continue
        n, h, w = program.layers[i].out_shape
        got3, want3 = got.reshape(n, h, w), want.reshape(n, h, w)
        passes = layer_passes(program, i)
        best = None
        for c, y, x in (got3 != want3).nonzero().tolist():
            found = writer(program, passes, c, y, x)
            if found is None:
                key = (float("inf"), c, y, x)
                cand = (key, None, None, None, None)
            else:
                j, tile, local = found
                eng = write_cycle(program.layers[j].desc, cfg, tile, y, x)
                key = (schedule[j]["run"] + eng, c, y, x)
                cand = (key, j, tile, local, eng)
            if best is None or cand[0] < best[0]:
                best = cand
        (cycle, c, y, x), j, tile, local, eng = best
        report = {"image": image, "model_layer": m, "model_layer_name": _model_name(program, i),
                  "program_layer": j, "pass": None if j is None else program.layers[j].name,
                  "tile": tile, "element": {"channel": c, "y": y, "x": x},
                  "pass_channel": local, "rtl": int(got3[c, y, x]),
                  "reference": int(want3[c, y, x]),
                  "differing": int((got3 != want3).sum()), "engine_cycle": eng,
                  "cycle": None if j is None else cycle,
                  "pass_cycles": None if j is None else {"first": schedule[j]["first"],
                                                         "start": schedule[j]["run"]},
                  "measured_start": None}
        marks = raw.get("marks") or []
        if j is not None and len(marks) > j:
            # the counters read in layer j's PAUSE: its RUN cycle is the engine cycles and
            # the PAUSE cycle before
            engine = program.layers[j].desc.nfu_cycles(cfg) + LayerEngine.latency(
                cfg, program.layers[j].desc)
            report["measured_start"] = marks[j][0] - engine - 1
        where = ("no pass writes it" if j is None else
                 f"pass {report['pass']} (program layer {j}), output tile {tile}")
        report["message"] = (
            f"first divergence: image {image}, model layer {report['model_layer_name']} "
            f"(layer {m}), {where}, element (channel {c}, y {y}, x {x}): rtl {report['rtl']}, "
            f"reference {report['reference']}"
            + ("" if j is None else f"; written in cycle {cycle} of the inference (engine "
                                    f"cycle {eng} of the pass)")
            + f"; {report['differing']} outputs of the layer differ")
        return report
    return None


def _model_name(program, i):
    return program.layers[i].name.split(".")[0]


def save_divergence(report, program, qmodel, x, refs, raw=None, waves=None, out_dir=None,
                    name=None):
    """Write the reproducer of ``report`` (:func:`first_divergence`): the diverging pass's
    inputs (the reference input of its model layer, or the outputs of the earlier passes it
    reads) and weights as a case file, and, when ``waves`` (a waveform file of the run) is
    given, a window of it around the divergent write. Adds ``reproducer`` (and ``waves``: the
    file, ``window_ns`` and, for a VCD, the ``window`` file) to ``report``; returns it.

    ``x`` is the image (integer, one sample); ``raw`` the testbench's result (``start_ns`` and
    ``resume_ns`` place the cycle in simulation time). Files go to ``out_dir`` (default
    :func:`divergence_root`), named after ``name`` (default: the config's name), the image and
    the pass.
    """
    if report["program_layer"] is None:
        return report
    out_dir = Path(out_dir) if out_dir else divergence_root()
    cfg = program.cfg
    m, j = report["model_layer"], report["program_layer"]
    xin, layer = (x, qmodel.layers[m]) if m == 0 else (refs[m - 1][0], qmodel.layers[m])
    if m == 0 and program.im2col is not None:
        # the first layer ran as a 1x1 conv over the image's patches
        layer, xin = im2col_layer(qmodel, cfg)[0], layout.patch_input(x, program.im2col)
    first = layer_passes(program, next(i for i in range(j, len(program.layers))
                                       if program.layers[i].ref is not None)).start
    stem = f"{name or cfg.name}-image{report['image']}-{program.layers[j].name}"
    cases = pass_cases(layer, xin, cfg, prefix=f"image{report['image']}_")
    case = cases[j - first]
    note = {k: v for k, v in report.items() if k not in ("waves", "reproducer")}
    report["reproducer"] = str(write_case(out_dir / f"{stem}.json", case, cfg,
                                          {"found_by": "network first divergence", **note}))
    if waves and raw is not None:
        t = _cycle_ns(report, raw)
        if t is not None:
            lo = max(0, t - WINDOW_CYCLES * CLOCK_NS)
            info = {"file": str(waves), "window_ns": [lo, t + WINDOW_CYCLES * CLOCK_NS],
                    "write_ns": t}
            if Path(waves).suffix == ".vcd":
                info["window"] = str(vcd_window(waves, out_dir / f"{stem}.window.vcd",
                                                lo, t + WINDOW_CYCLES * CLOCK_NS))
            report["waves"] = info
    return report


def _cycle_ns(report, raw):
    """Simulation time (ns) of the clock edge that ends the counted cycle of ``report``'s
    write: counted from the edge that samples ``start`` or, with pauses, from the edge that
    samples ``resume`` after the previous layer (paused cycles are not counted)."""
    if raw.get("start_ns") is None:
        return None
    j, cycle = report["program_layer"], report["cycle"]
    resumes = raw.get("resume_ns") or []
    if j == 0 or len(resumes) < j:
        return raw["start_ns"] + CLOCK_NS // 2 + (cycle + 1) * CLOCK_NS
    # that edge ends the previous layer's PAUSE cycle, the one before this layer's first
    first = report["pass_cycles"]["first"]
    return resumes[j - 1] + CLOCK_NS // 2 + (cycle - first + 1) * CLOCK_NS


def vcd_window(src, dest, t0_ns, t1_ns):
    """Write the part of VCD file ``src`` between ``t0_ns`` and ``t1_ns`` to ``dest``: its
    header, every signal's value at ``t0_ns`` (as ``$dumpvars``), and the changes up to
    ``t1_ns``. Returns ``dest``."""
    scale = {"s": 10 ** 15, "ms": 10 ** 12, "us": 10 ** 9, "ns": 10 ** 6, "ps": 10 ** 3,
             "fs": 1}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    header, values, unit_fs = [], {}, 10 ** 3
    with open(src) as f, open(dest, "w") as out:
        line = ""
        timescale = []
        for line in f:
            header.append(line)
            if "$timescale" in line or timescale:
                timescale.append(line)
                if "$end" in line:
                    text = " ".join(timescale).replace("$timescale", "").replace("$end", "")
                    num = "".join(ch for ch in text if ch.isdigit()) or "1"
                    unit = text.strip().lstrip("0123456789 ").strip()
                    unit_fs = int(num) * scale.get(unit, 10 ** 3)
                    timescale = []
            if line.startswith("$enddefinitions"):
                break
        out.writelines(header)
        lo, hi = int(t0_ns * 10 ** 6 // unit_fs), int(t1_ns * 10 ** 6 // unit_fs)
        now, started = 0, False
        for line in f:
            if line.startswith("#"):
                now = int(line[1:])
                if now > hi:
                    break
                if now >= lo and not started:
                    started = True
                    out.write(f"#{lo}\n$dumpvars\n")
                    out.writelines(values.values())
                    out.write("$end\n")
                if started and now > lo:
                    out.write(line)
                continue
            if line.startswith("$"):
                continue
            ident = line.split()[-1] if line[0] in "brsBRS" else line[1:].strip()
            if started:
                out.write(line)
            else:
                values[ident] = line if line.endswith("\n") else line + "\n"
    return dest
