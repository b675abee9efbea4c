"""amaranth.sim tests of the whole-network accelerator against the integer reference."""

import torch

from slimnfu.compress.quant import int_forward_layers, quantize_input
from slimnfu.rtl.accelerator import Accelerator
from slimnfu.rtl.simdrive import simulate
from slimnfu.sim.network import expected_cycles


def run_program(program, images, step=True):
    """Run ``images`` (int tensors) through the accelerator in amaranth.sim.

    Returns, per image, the list of per-layer NBout words (every layer with ``step``) and the
    counters of the run.
    """
    dut = Accelerator(program)
    results = []

    async def bench(ctx):
        for x in images:
            words = program.pack_image(x)
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
                    for a in range(program.layers[i].desc.nbout_words(program.cfg)):
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
            last = program.layers[-1].desc.nbout_words(program.cfg)
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
        for i, words in enumerate(layers):
            got = program.unpack_layer(i, words)
            assert torch.equal(got, ref[i][0]), program.layers[i].name
        assert torch.equal(program.unpack_layer(len(layers) - 1, logits), ref[-1][0])
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
    assert torch.equal(program.unpack_layer(len(program.layers) - 1, logits),
                       int_forward_layers(qmodel, x)[-1][0])
    assert counters["cycles"] == expected_cycles(program)["cycles"]
