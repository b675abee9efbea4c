"""Drive a :class:`LayerEngine` in amaranth.sim: load the buffers, run layers, read NBout.

This is the amaranth.sim counterpart of the cocotb testbench, for unit tests and for the
simulation-speed benchmark::

    from slimnfu.sim.amaranth_driver import run_layer_amaranth
    y, counters, wall_s = run_layer_amaranth(cfg, desc, x, w, b, pwl)

Everything goes through the engine's ports (``load_*``, ``start``/``done``, ``rd_*``), packed
with :mod:`slimnfu.formats.layout`.
"""

import time

import torch
from amaranth.sim import Simulator

from slimnfu import fixed, paths
from slimnfu.config import AccelConfig, LayerDesc, PassDesc, as_pass, get_config
from slimnfu.contract import RD_LATENCY, LoadSel, descriptor_value
from slimnfu.formats import layout
from slimnfu.formats.dense import dense_memories
from slimnfu.rtl.engine import LayerEngine

__all__ = ["EngineDriver", "run_layer_amaranth", "run_layers_amaranth", "simulate", "COUNTERS"]

#: The engine's counter ports, as they appear in the counters dict.
COUNTERS = ("cycles", "steps", "mults", "sat_events")


def simulate(dut, bench):
    """Run the async testbench ``bench(ctx)`` on ``dut`` with a 100 MHz ``sync`` clock.

    Returns the wall time of the run in seconds.
    """
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    t0 = time.perf_counter()
    sim.run()
    return time.perf_counter() - t0


def _image(desc, x, what):
    """``x`` as one image ``(C, H, W)``; return it and whether it had a batch dim of 1."""
    x = torch.as_tensor(x, dtype=torch.int64)
    single = (desc.n_in,) if desc.kind == "fc" else (desc.n_in, desc.h_in, desc.w_in)
    if tuple(x.shape) == (1, *single):
        return x[0].reshape(desc.n_in, desc.h_in, desc.w_in), True
    if tuple(x.shape) == single:
        return x.reshape(desc.n_in, desc.h_in, desc.w_in), False
    raise ValueError(f"{what} has shape {tuple(x.shape)}; layer {desc.kind} needs {single} "
                     f"or (1, *{single})")


class EngineDriver:
    """Async helpers for an amaranth.sim testbench around one :class:`LayerEngine`.

    Parameters
    ----------
    dut : LayerEngine
    """

    def __init__(self, dut):
        if not isinstance(dut, LayerEngine):
            raise TypeError(f"EngineDriver needs a LayerEngine, not {type(dut).__name__}")
        self.dut, self.cfg = dut, dut.cfg
        #: Clock cycles this driver has simulated (loads, layers and reads).
        self.sim_cycles = 0

    async def load(self, ctx, sel, words, base=0):
        """Write ``words`` into memory ``sel`` (a :class:`LoadSel` value), one per cycle."""
        dut = self.dut
        ctx.set(dut.load_sel, sel)
        ctx.set(dut.load_en, 1)
        for addr, word in enumerate(words, base):
            ctx.set(dut.load_addr, addr)
            ctx.set(dut.load_data, word)
            await ctx.tick()
        ctx.set(dut.load_en, 0)
        self.sim_cycles += len(words)

    async def run(self, ctx, desc_value):
        """Pulse ``start`` with ``desc_value``, wait for ``done``; return the counters."""
        dut = self.dut
        ctx.set(dut.desc.as_value(), desc_value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        names = COUNTERS + (("gated",) if "kgate" in dut.cfg.features else ())
        counters = {name: ctx.get(getattr(dut, name)) for name in names}
        self.sim_cycles += counters["cycles"]
        return counters

    async def read_nbout(self, ctx, count):
        """Read NBout words ``0 .. count-1`` through ``rd_addr``/``rd_data``."""
        words = []
        for addr in range(count):
            ctx.set(self.dut.rd_addr, addr)
            await ctx.tick().repeat(RD_LATENCY)
            words.append(ctx.get(self.dut.rd_data))
        self.sim_cycles += count * RD_LATENCY
        return words

    async def run_layer(self, ctx, desc, x, w=None, b=None, pwl=None):
        """Load the operands of one dense layer or pass (``desc``, a :class:`LayerDesc` or
        :class:`PassDesc`), run it and unpack NBout.

        Returns ``(y, counters)``, ``y`` shaped like :func:`slimnfu.fixed.run_layer`'s
        output for one image (with the batch dim if ``x`` had one).
        """
        cfg = self.cfg
        run = as_pass(desc)
        value = descriptor_value(run, cfg)
        desc = run.layer
        image, batched = _image(desc, x, "x")
        if not desc.is_pool and (w is None or b is None):
            raise ValueError(f"a {desc.kind} layer needs weights w and biases b")
        if desc.act == "pwl" and pwl is None:
            raise ValueError("act='pwl' needs a PwlTable (pwl=...)")
        await self.load(ctx, LoadSel.NBIN, layout.pack_input(image, cfg))
        for mem in dense_memories(desc, w, b, pwl, cfg).values():
            await self.load(ctx, mem.sel, mem.words)
        counters = await self.run(ctx, value)
        words = await self.read_nbout(ctx, run.nbout_words(cfg))
        y = layout.unpack_output(words, desc.n_out, run.h_out, run.w_out, cfg)
        if desc.kind == "fc":
            y = y.reshape(desc.n_out)
        return (y.unsqueeze(0) if batched else y), counters


def run_layers_amaranth(cfg, jobs):
    """Run several layers in one amaranth.sim simulation of a fresh :class:`LayerEngine`.

    Parameters
    ----------
    cfg : AccelConfig
    jobs : list of dict
        Keyword arguments of :meth:`EngineDriver.run_layer` (``desc``, ``x``, ``w``, ``b``,
        ``pwl``).

    Returns
    -------
    results : list of (torch.Tensor, dict)
        Output and counters per job; the counters also hold ``sim_cycles``, the clock cycles
        simulated for that job (loads, run and NBout reads).
    wall_seconds : float
        Wall time of the simulation run (elaboration excluded).
    """
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {type(cfg).__name__}")
    for n, job in enumerate(jobs):
        if not isinstance(job.get("desc"), (LayerDesc, PassDesc)):
            raise TypeError(f"job {n}: 'desc' must be a LayerDesc or a PassDesc")
        as_pass(job["desc"]).check(cfg)
    dut = LayerEngine(cfg)
    driver = EngineDriver(dut)
    results = []

    async def bench(ctx):
        for job in jobs:
            before = driver.sim_cycles
            y, counters = await driver.run_layer(ctx, **job)
            counters["sim_cycles"] = driver.sim_cycles - before
            results.append((y, counters))

    wall = simulate(dut, bench)
    return results, wall


def run_layer_amaranth(cfg, desc, x, w=None, b=None, pwl=None):
    """Run one layer on a :class:`LayerEngine` in amaranth.sim.

    Returns
    -------
    y : torch.Tensor
        int64 outputs, shaped as :func:`slimnfu.fixed.run_layer` gives them for one
        image (``(O, H_out, W_out)``, ``(O,)`` for fc; with a leading 1 if ``x`` had one).
    counters : dict
        ``cycles``, ``steps``, ``mults``, ``sat_events`` (the engine's counters) and
        ``sim_cycles`` (all clock cycles simulated, loads and reads included).
    wall_seconds : float
        Wall time of the simulation run (elaboration excluded);
        ``counters["sim_cycles"] / wall_seconds`` is the amaranth.sim speed.
    """
    (result,), wall = run_layers_amaranth(cfg, [dict(desc=desc, x=x, w=w, b=b, pwl=pwl)])
    return (*result, wall)


def measure(cfg_name="tiny", out=None):
    """Measure amaranth.sim speed and Verilog conversion time of one config; write JSON.

    Runs a random 3x3 conv (8 -> 8 channels, 8x8, pad 1) and writes ``out`` (default
    ``rtl/measure_<config>.json`` in the build root) atomically. Returns the dict.
    """
    import json
    import os
    from pathlib import Path

    from amaranth.back import verilog


    cfg = get_config(cfg_name)
    desc = LayerDesc("conv", 8, 8, 8, 8, k=3, pad=1, shift=12)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(cfg.qmin, cfg.qmax + 1, (1, 8, 8, 8), generator=gen)
    w = torch.randint(cfg.qmin, cfg.qmax + 1, (8, 8, 3, 3), generator=gen)
    b = torch.randint(-1000, 1000, (8,), generator=gen)
    y, counters, wall = run_layer_amaranth(cfg, desc, x, w, b)
    t0 = time.perf_counter()
    text = verilog.convert(LayerEngine(cfg), name="slimnfu_engine", emit_src=False)
    convert_s = time.perf_counter() - t0
    report = {
        "config": cfg.name, "layer": desc.to_dict(),
        "bit_exact": bool(torch.equal(y, fixed.run_layer(desc, x, w, b, cfg.dw))),
        "cycles": counters["cycles"], "dense_cycles": desc.dense_cycles(cfg),
        "latency": LayerEngine.latency(cfg, desc), "sim_cycles": counters["sim_cycles"],
        "amaranth_sim_wall_s": wall, "amaranth_sim_cycles_per_s": counters["sim_cycles"] / wall,
        "verilog_convert_s": convert_s, "verilog_bytes": len(text),
    }
    path = Path(out or paths.build_root() / "rtl" / f"measure_{cfg.name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return report


if __name__ == "__main__":
    import sys
    print(measure(*sys.argv[1:2]))
