"""amaranth.sim tests of the whole-network accelerator against the integer reference."""

import pytest
import torch

from slimnfu import fixed
from slimnfu.compress.quant import int_forward_layers, quantize_input
from slimnfu.config import CONFIGS
from slimnfu.contract import COUNTER_BITS, RD_LATENCY
from slimnfu.formats import layout
from slimnfu.gen.compiler import compile_model, config_for
from slimnfu.rtl.accelerator import Accelerator
from slimnfu.rtl.engine import LayerEngine
from slimnfu.sim.amaranth_driver import simulate
from slimnfu.sim.cases import expected_steps
from slimnfu.sim.network import expected_cycles, layer_schedule


@pytest.fixture(scope="module")
def mixed_program(mixed_qmodel):
    """``mixed_qmodel`` compiled for a ``tiny`` engine with all three method flags on (conv1
    as the slim passes, not im2col, so that its mixed tile gates lanes)."""
    cfg = config_for(mixed_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    assert cfg.ikr and cfg.perm and cfg.kgate
    return compile_model(mixed_qmodel, cfg, im2col="off")


def assert_model_layers(program, layers, ref):
    """Every program layer that completes a model layer equals that layer's reference."""
    for i, words in enumerate(layers):
        if program.layers[i].ref is not None:
            assert torch.equal(layout.unpack_program_output(program, i, words),
                               ref[program.layers[i].ref][0]), program.layers[i].name


def run_program(program, images, step=True):
    """Run ``images`` (int tensors) through the accelerator in amaranth.sim.

    Returns, per image, the list of per-layer NBout words (every layer with ``step``), the
    logits' words, the counters of the run (every counter port the accelerator has) and the
    counters at each pause (with ``step``).
    """
    dut = Accelerator(program)
    names = [n for n in COUNTER_BITS if hasattr(dut, n)]
    results = []

    async def bench(ctx):
        for x in images:
            words = layout.pack_program_input(program, x)
            ctx.set(dut.img_en, 1)
            for a, w in enumerate(words):
                ctx.set(dut.img_addr, a)
                ctx.set(dut.img_data, w)
                await ctx.tick()
            ctx.set(dut.img_en, 0)
            ctx.set(dut.step, int(step))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            layers, paused_counters = [], []
            while not ctx.get(dut.done):
                if ctx.get(dut.paused):
                    paused_counters.append({n: ctx.get(getattr(dut, n)) for n in names})
                    i = ctx.get(dut.layer)
                    out = []
                    for a in range(program.out_words(i)):
                        ctx.set(dut.rd_addr, a)
                        await ctx.tick().repeat(RD_LATENCY)
                        out.append(ctx.get(dut.rd_data))
                    layers.append(out)
                    ctx.set(dut.resume, 1)
                    await ctx.tick()
                    ctx.set(dut.resume, 0)
                else:
                    await ctx.tick()
            counters = {n: ctx.get(getattr(dut, n)) for n in names}
            last = program.out_words(len(program.layers) - 1)
            logits = []
            for a in range(last):
                ctx.set(dut.rd_addr, a)
                await ctx.tick().repeat(RD_LATENCY)
                logits.append(ctx.get(dut.rd_data))
            results.append((layers, logits, counters, paused_counters))

    simulate(dut, bench)
    return results


def test_every_layer_bit_exact(small_qmodel, small_program):
    qmodel, program, cfg = small_qmodel, small_program, small_program.cfg
    x = quantize_input(qmodel, torch.rand(2, 1, 10, 10))
    results = run_program(program, x)
    for n, (layers, logits, counters, _) in enumerate(results):
        ref = int_forward_layers(qmodel, x[n:n + 1])
        assert len(layers) == len(program.layers)
        assert_model_layers(program, layers, ref)
        assert torch.equal(layout.unpack_program_output(program, len(layers) - 1, logits),
                           ref[-1][0])
        engine = sum(l.desc.dense_cycles(cfg) for l in program.layers)
        # the engine latency of this config (ti = 4) by number: see test_engine.py
        assert counters["engine_cycles"] == engine + len(layers) * 30
        want = expected_cycles(program)
        assert {n: counters[n] for n in want} == want
        # every word is streamed: waited for in READY, or hidden behind a layer
        assert counters["move_cycles"] == 0 and counters["overlap_load_cycles"] > 0
        assert counters["load_cycles"] < program.stats["rom_words"] + len(program.layers)


def test_free_run_counts_the_same_cycles(small_qmodel, small_program):
    qmodel, program = small_qmodel, small_program
    x = quantize_input(qmodel, torch.rand(1, 1, 10, 10))
    (layers, logits, counters, _), = run_program(program, x, step=False)
    assert layers == []
    assert torch.equal(layout.unpack_program_output(program, len(program.layers) - 1, logits),
                       int_forward_layers(qmodel, x)[-1][0])
    assert counters["cycles"] == expected_cycles(program)["cycles"]


@pytest.mark.parametrize("im2col, first", [
    ("off", ["conv1.k3", "conv1.k1", "conv1.approx"]),
    ("auto", ["conv1.im2col3", "conv1.im2col1", "conv1.approx"])])
def test_slim_network_every_layer_bit_exact(slim_qmodel, im2col, first):
    """Method A on the accelerator: centre-tap passes, a mixed tile with gated lanes and the
    approximation passes, chained with the other layers; with im2col, conv1's tiles as 1x1
    passes over the 9 and the 1 centre channels of its patches."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(slim_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                         nbout_depth=256, bias_depth=8))
    program = compile_model(slim_qmodel, cfg, im2col=im2col)
    names = [l.name for l in program.layers]
    assert names[:len(first)] == first and "conv2.approx" in names
    assert program.stats["im2col"]["chosen"] == (im2col == "auto")
    x = quantize_input(slim_qmodel, torch.rand(1, 1, 10, 10))
    (layers, logits, counters, _), = run_program(program, x)
    assert_model_layers(program, layers, int_forward_layers(slim_qmodel, x))
    assert counters["cycles"] == expected_cycles(program)["cycles"]


def test_every_format_in_one_network(mixed_qmodel, mixed_program):
    """slim, IKR, permuted-affine and dense layers in one program, on an engine with all
    three method flags on."""
    program = mixed_program
    assert {l.format for l in program.layers} == {"slim", "dense", "ikr", "perm_affine"}
    x = quantize_input(mixed_qmodel, torch.rand(1, 1, 10, 10))
    (layers, logits, counters, _), = run_program(program, x)
    assert_model_layers(program, layers, int_forward_layers(mixed_qmodel, x))
    assert counters["cycles"] == expected_cycles(program)["cycles"]


def test_no_moves_between_layers(mixed_index_qmodel):
    """With fc1 in ``perm_index`` nothing moves: every layer reads its input where the one
    before wrote it (the approximation pass in the buffer it writes), and fc1 reads pool2's
    output in the buffer's channel tiles, its padding lanes included."""
    program = compile_model(mixed_index_qmodel, config_for(mixed_index_qmodel, CONFIGS["tiny"]))
    assert sum(l.move_cycles for l in program.layers) == 0
    assert any(l.in_buf == l.out_buf for l in program.layers)
    x = quantize_input(mixed_index_qmodel, torch.rand(2, 1, 10, 10))
    for n, (layers, _, counters, _) in enumerate(run_program(program, x)):
        assert_model_layers(program, layers, int_forward_layers(mixed_index_qmodel,
                                                                x[n:n + 1]))
        assert counters["move_cycles"] == 0
        assert counters["cycles"] == expected_cycles(program)["cycles"]


def layer_figures(program, qmodel, x):
    """What the engine reports for each program layer of ``program`` run on ``x``.

    Returns one dict a layer: ``engine_cycles`` (its ``dense_cycles`` or ``ikr_cycles`` plus
    ``LayerEngine.latency(cfg, desc)``), ``load_cycles`` (its ``READY`` cycles in the schedule
    model), ``move_cycles``,
    ``mults`` (``tn*ti`` a MAC step), ``gated`` (:meth:`LayerDesc.gated_mults`) and
    ``sat_events``: the integer reference's saturations of the model layer the program layer
    completes (``ref``), 0 for a pass that leaves it unfinished.
    """
    cfg = program.cfg
    sat_events = []
    for layer in qmodel.layers:
        count = fixed.SatCount()
        x = layer.run(x, qmodel.dw, count)
        sat_events.append(count.events)
    figures = []
    for layer, sched in zip(program.layers, layer_schedule(program)):
        d = layer.desc
        figures.append({
            "engine_cycles": d.nfu_cycles(cfg) + LayerEngine.latency(cfg, d),
            "load_cycles": sched["loads"],
            "move_cycles": layer.move_cycles,
            "mults": 0 if d.layer.is_pool else expected_steps(d, cfg) * cfg.tn * cfg.ti,
            "gated": d.gated_mults(cfg),
            "sat_events": 0 if layer.ref is None else sat_events[layer.ref]})
    return figures


def test_counters_are_the_sums_of_the_layers(mixed_qmodel, mixed_program):
    """At each pause and at ``done`` every counter is the sum of the engine's figures for the
    layers run so far (``cycles`` adds the start and pause cycles); a free run ends with the
    same counters. The input saturates (an IKR layer), the slim passes gate lanes."""
    program = mixed_program
    x = quantize_input(mixed_qmodel, 4 * torch.rand(1, 1, 10, 10,
                                                    generator=torch.Generator().manual_seed(5)))
    figures = layer_figures(program, mixed_qmodel, x)
    (_, _, counters, paused_counters), = run_program(program, x)
    assert len(paused_counters) == len(program.layers)
    want = dict.fromkeys(figures[0], 0)
    for i, (layer, got) in enumerate(zip(program.layers, paused_counters)):
        for name, value in figures[i].items():
            want[name] += value
        assert {n: got[n] for n in want} == want, layer.name
        assert got["cycles"] == sum(want[n] for n in ("engine_cycles", "load_cycles",
                                                      "move_cycles")) + 2 * i + 1, layer.name
    expect = expected_cycles(program)
    assert counters == {**want, "cycles": paused_counters[-1]["cycles"] + 1,
                        "overlap_load_cycles": expect["overlap_load_cycles"]}
    assert counters["cycles"] == expect["cycles"]
    # each word the program stores is written once, hidden or while a layer waits in READY
    assert 0 < counters["overlap_load_cycles"] <= program.stats["rom_words"]
    assert min(counters["mults"], counters["gated"], counters["sat_events"]) > 0
    assert run_program(program, x, step=False)[0][2] == counters


def test_weights_through_the_port(small_qmodel, small_program):
    """The port build: the testbench plays a synchronous memory holding the program's words."""
    from slimnfu.rtl.accelerator import Accelerator

    dut = Accelerator(small_program, weights="port")
    x = quantize_input(small_qmodel, torch.rand(1, 1, 10, 10))
    rom = small_program.rom
    out = {}

    async def memory(ctx):
        async for clk_edge, rst, addr in ctx.tick().sample(dut.wt_addr):
            ctx.set(dut.wt_data, rom[addr] if addr < len(rom) else 0)

    async def bench(ctx):
        for a, w in enumerate(layout.pack_program_input(small_program, x[0])):
            ctx.set(dut.img_en, 1)
            ctx.set(dut.img_addr, a)
            ctx.set(dut.img_data, w)
            await ctx.tick()
        ctx.set(dut.img_en, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        out["cycles"] = ctx.get(dut.cycles)
        words = []
        for a in range(small_program.out_words(len(small_program.layers) - 1)):
            ctx.set(dut.rd_addr, a)
            await ctx.tick().repeat(RD_LATENCY)
            words.append(ctx.get(dut.rd_data))
        out["logits"] = layout.unpack_program_output(small_program,
                                                     len(small_program.layers) - 1, words)

    from amaranth.sim import Simulator
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(memory)
    sim.add_testbench(bench)
    sim.run()
    assert torch.equal(out["logits"], int_forward_layers(small_qmodel, x)[-1][0])
    assert out["cycles"] == expected_cycles(small_program)["cycles"]


def test_bad_weights_option(small_program):
    import pytest

    from slimnfu.rtl.accelerator import Accelerator

    with pytest.raises(ValueError, match="weights must be 'rom' or 'port', not 'flash'"):
        Accelerator(small_program, weights="flash")


@pytest.fixture(scope="module")
def wide_fc_qmodels():
    """conv -> maxpool -> fc 200->64 -> fc 64->10 on 12x12 images, with fc1 dense and in
    ``perm_index``: fc1 has 800 SB words on ``tiny`` (50 input tiles, 16 output tiles), more
    than an SB of 64, and the pool before it runs 200 cycles, long enough for a stream that did
    not wait for fc1 to overrun a ring of 64."""
    import dataclasses

    from torch import nn

    from slimnfu.compress.quant import quantize_model
    from slimnfu.formats.perm import PermIndexWeights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(200, 64), nn.ReLU(), nn.Linear(64, 10))
    dense = quantize_model(model, torch.rand(16, 1, 12, 12))
    fc1 = dense.layers[2]
    m_out, n_in = fc1.w.shape
    gen = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(n_in, generator=gen) for _ in range(m_out)])
    s = fc1.w.flatten()[:n_in].clone()
    layers = list(dense.layers)
    layers[2] = dataclasses.replace(fc1, w=s[idx], format="perm_index",
                                    compressed=PermIndexWeights(s, idx))
    return {"dense": dense, "perm_index": dataclasses.replace(dense, layers=layers)}


@pytest.mark.parametrize("fmt", ["dense", "perm_index"])
def test_fc_weights_stream_through_a_small_sb(wide_fc_qmodels, fmt):
    """An FC layer with more SB words than SB: the weight stream writes them into SB as a
    ring while the layer runs, every layer bit-exact at the schedule model's cycles."""
    qmodel = wide_fc_qmodels[fmt]
    cfg = config_for(qmodel, CONFIGS["tiny"].with_(sb_depth=64))
    program = compile_model(qmodel, cfg, im2col="off")
    # an index layer runs its gathered weights: no method hardware
    assert cfg.sb_depth == 64 and cfg.perm is None
    fc1 = next(l for l in program.layers if l.name == "fc1")
    assert fc1.format == fmt and fc1.desc.sb_words(cfg) == 800 and fc1.desc.sb_ring(cfg)
    assert not program.layers[-1].desc.sb_ring(cfg)
    entries, need = program.load_plan()
    ring = [e for e in entries if e[4]]
    assert ring == [entries[need[program.layers.index(fc1)]]]
    x = quantize_input(qmodel, torch.rand(1, 1, 12, 12))
    (layers, logits, counters, _), = run_program(program, x)
    ref = int_forward_layers(qmodel, x)
    assert_model_layers(program, layers, ref)
    assert torch.equal(layout.unpack_program_output(program, len(layers) - 1, logits),
                       ref[-1][0])
    want = expected_cycles(program)
    assert {n: counters[n] for n in want} == want


def test_sb_ring_margin():
    """A ring slot is written again ``sb_depth`` cycles after its word: later than the
    engine's read of it (at its step; no pass waits for the address generator but an affine
    one, which does not stream: it reads its s anywhere, so its SB load is complete first)."""
    from slimnfu.config import SB_RING_MIN_DEPTH, LayerDesc, PassDesc

    for name in ("tiny", "small", "diannao"):
        cfg = CONFIGS[name].with_(perm=True)
        index = PassDesc(LayerDesc("fc", 4096, 512), perm="index")
        assert LayerEngine.perm_stages(cfg, index) == 0
        assert LayerEngine.FIRST_STEP < SB_RING_MIN_DEPTH


def test_sb_ring_needs_a_power_of_two(wide_fc_qmodels):
    qmodel = wide_fc_qmodels["dense"]
    for depth in (32, 96):
        with pytest.raises(ValueError, match=r"layer fc1: layer fc 200->64 streams 800 weight "
                           r"words through SB, which needs sb_depth a power of two >= 64, but "
                           rf"config .* has sb_depth={depth}"):
            compile_model(qmodel, CONFIGS["tiny"].with_(sb_depth=depth), im2col="off")
