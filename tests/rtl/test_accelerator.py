"""amaranth.sim tests of the whole-network accelerator against the integer reference."""

import torch

from slimnfu.compress.quant import int_forward_layers, quantize_input
from slimnfu.formats import layout
from slimnfu.rtl.accelerator import Accelerator
from slimnfu.sim.amaranth_driver import simulate
from slimnfu.sim.network import expected_cycles


def assert_model_layers(program, layers, ref):
    """Every program layer that completes a model layer equals that layer's reference."""
    for i, words in enumerate(layers):
        if program.layers[i].ref is not None:
            assert torch.equal(layout.unpack_program_output(program, i, words),
                               ref[program.layers[i].ref][0]), program.layers[i].name


def run_program(program, images, step=True):
    """Run ``images`` (int tensors) through the accelerator in amaranth.sim.

    Returns, per image, the list of per-layer NBout words (every layer with ``step``) and the
    counters of the run.
    """
    dut = Accelerator(program)
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
            layers = []
            while not ctx.get(dut.done):
                if ctx.get(dut.paused):
                    i = ctx.get(dut.layer)
                    out = []
                    for a in range(program.out_words(i)):
                        ctx.set(dut.rd_addr, a)
                        await ctx.tick()
                        out.append(ctx.get(dut.rd_data))
                    layers.append(out)
                    ctx.set(dut.resume, 1)
                    await ctx.tick()
                    ctx.set(dut.resume, 0)
                else:
                    await ctx.tick()
            counters = {n: ctx.get(getattr(dut, n)) for n in
                        ("cycles", "engine_cycles", "load_cycles", "move_cycles", "mults")}
            last = program.out_words(len(program.layers) - 1)
            logits = []
            for a in range(last):
                ctx.set(dut.rd_addr, a)
                await ctx.tick()
                logits.append(ctx.get(dut.rd_data))
            results.append((layers, logits, counters))

    simulate(dut, bench)
    return results


def test_every_layer_bit_exact(small_qmodel, small_program):
    qmodel, program, cfg = small_qmodel, small_program, small_program.cfg
    x = quantize_input(qmodel, torch.rand(2, 1, 10, 10))
    results = run_program(program, x)
    for n, (layers, logits, counters) in enumerate(results):
        ref = int_forward_layers(qmodel, x[n:n + 1])
        assert len(layers) == len(program.layers)
        assert_model_layers(program, layers, ref)
        assert torch.equal(layout.unpack_program_output(program, len(layers) - 1, logits),
                           ref[-1][0])
        engine = sum(l.desc.dense_cycles(cfg) for l in program.layers)
        assert counters["engine_cycles"] == engine + len(layers) * 18
        assert counters["load_cycles"] == program.stats["rom_words"] + len(program.layers)
        want = expected_cycles(program)
        assert counters["move_cycles"] == want["move_cycles"]
        assert counters["cycles"] == want["cycles"]


def test_free_run_counts_the_same_cycles(small_qmodel, small_program):
    qmodel, program = small_qmodel, small_program
    x = quantize_input(qmodel, torch.rand(1, 1, 10, 10))
    (layers, logits, counters), = run_program(program, x, step=False)
    assert layers == []
    assert torch.equal(layout.unpack_program_output(program, len(program.layers) - 1, logits),
                       int_forward_layers(qmodel, x)[-1][0])
    assert counters["cycles"] == expected_cycles(program)["cycles"]


def test_slim_network_every_layer_bit_exact(slim_qmodel):
    """Method A on the accelerator: centre-tap passes, a mixed tile with gated lanes and the
    approximation passes, chained with the other layers."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(slim_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                         nbout_depth=256, bias_depth=8))
    program = compile_model(slim_qmodel, cfg)
    names = [l.name for l in program.layers]
    assert names[:3] == ["conv1.k3", "conv1.k1", "conv1.approx"] and "conv2.approx" in names
    x = quantize_input(slim_qmodel, torch.rand(1, 1, 10, 10))
    (layers, logits, counters), = run_program(program, x)
    assert_model_layers(program, layers, int_forward_layers(slim_qmodel, x))
    assert counters["cycles"] == expected_cycles(program)["cycles"]


def test_every_format_in_one_network(mixed_qmodel):
    """slim, IKR, permuted-affine and dense layers in one program, on an engine with all
    three method flags on."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(mixed_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    assert cfg.ikr and cfg.perm and cfg.kgate
    program = compile_model(mixed_qmodel, cfg)
    assert {l.format for l in program.layers} == {"slim", "dense", "ikr", "perm_affine"}
    x = quantize_input(mixed_qmodel, torch.rand(1, 1, 10, 10))
    (layers, logits, counters), = run_program(program, x)
    assert_model_layers(program, layers, int_forward_layers(mixed_qmodel, x))
    assert counters["cycles"] == expected_cycles(program)["cycles"]


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
            await ctx.tick()
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
