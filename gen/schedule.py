"""The schedule model: when each program layer runs in one inference, cycle by cycle.

:func:`layer_schedule` follows :class:`slimnfu.rtl.accelerator.Accelerator`'s controller and
weight stream exactly (the co-simulation tests check it against the RTL's counters at every
pause); :func:`expected_cycles` sums it, and :func:`inference_cycles` adds the cycles the host
spends writing the input (one NBin word a cycle) before ``start``. The compiler chooses with
it (:func:`slimnfu.gen.compiler.compile_model`'s im2col choice), and :mod:`slimnfu.sim.network`
checks the runs against it.
"""

from slimnfu.rtl.engine import LayerEngine

__all__ = ["layer_schedule", "expected_cycles", "inference_cycles"]


def layer_schedule(program):
    """When each program layer runs in one inference, as the controller spends the cycles.

    Per layer (:class:`slimnfu.rtl.accelerator.Accelerator`): the move (0: every layer reads
    its input where the previous one wrote it), ``READY`` until the weight stream has delivered what
    the layer waits for (at least one cycle), the ``RUN`` cycle that starts the engine, the
    engine (``dense_cycles`` or ``ikr_cycles`` plus the pass's latency: its ``done`` cycle is
    ``LayerEngine.latency(cfg, desc) + nfu_cycles`` after the start; only a permuted pass
    pays the permutation pipeline) and one ``PAUSE`` cycle. Beside them the weight
    stream (:meth:`slimnfu.contract.Program.load_plan`) issues one word a cycle: entry ``e``
    from ``max(end of entry e-1, gate open, first cycle of layer after)``, a gate of ``g``
    opening the cycle after the ``done`` of program layer ``g - 1``. Cycles are counted as the
    accelerator's ``cycles`` counter counts them (0 is the first cycle after ``start``; paused
    cycles are not counted).

    Returns
    -------
    list of dict
        Per program layer: ``first`` (its first cycle), ``run`` (the engine's start cycle),
        ``move``, ``loads`` (``READY`` cycles: weight loads the layer waits for, plus one)
        and ``engine`` (cycles of each part), ``end`` (the cycle after its ``PAUSE``, the next
        layer's ``first``), ``overlap_loads`` (words the stream issues outside ``READY``
        from this layer's ``first`` to its ``end``).
    """
    cfg = program.cfg
    entries, need = program.load_plan()
    starts, done, first = [], [], []    # entry start cycles; per layer its done, first cycle

    def stream_until(e):
        """Start cycles of entries up to ``e`` (exclusive); the cycle entry ``e-1`` ends."""
        while len(starts) < e:
            i = len(starts)
            free = starts[-1] + entries[i - 1][2] if i else 0
            _, _, _, gate, after = entries[i]
            starts.append(max(free, done[gate - 1] + 1 if gate else 0, first[after]))
        return starts[e - 1] + entries[e - 1][2] if e else 0

    t, out = 0, []
    for i, layer in enumerate(program.layers):
        first.append(t)
        move = layer.move_cycles
        ready = max(t + move, stream_until(need[i]))
        run = ready + 1
        engine = layer.desc.nfu_cycles(cfg) + LayerEngine.latency(cfg, layer.desc)
        done.append(run + engine)
        out.append({"first": t, "run": run, "move": move, "loads": run - t - move,
                    "engine": engine, "end": run + engine + 2})
        t = run + engine + 2
    stream_until(len(entries))
    issues = [(s, s + e[2]) for s, e in zip(starts, entries)]
    for sch in out:
        ready = (sch["first"] + sch["move"], sch["run"])
        sch["overlap_loads"] = sum(_overlap(iv, (sch["first"], sch["end"])) -
                                   _overlap(iv, ready) for iv in issues)
    return out


def _overlap(a, b):
    """Cycles two half-open intervals share."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def expected_cycles(program):
    """Cycles of one inference, ``start`` to ``done``: the sums of :func:`layer_schedule`'s
    parts (``cycles`` is ``engine_cycles + load_cycles + move_cycles`` plus two a layer).
    Returns a dict of the parts, ``overlap_load_cycles`` (load words hidden behind the other
    states) and ``cycles``."""
    sched = layer_schedule(program)
    parts = {"move_cycles": sum(s["move"] for s in sched),
             "load_cycles": sum(s["loads"] for s in sched),
             "engine_cycles": sum(s["engine"] for s in sched),
             "overlap_load_cycles": sum(s["overlap_loads"] for s in sched)}
    parts["cycles"] = sched[-1]["end"] if sched else 0
    return parts


def inference_cycles(program):
    """Cycles of one inference counted from the first input word the host writes: the input
    words (:meth:`slimnfu.contract.Program.input_words`, one a cycle through ``img_*``) plus
    :func:`expected_cycles`'s ``cycles`` (``start`` to ``done``)."""
    return program.input_words() + expected_cycles(program)["cycles"]
