"""amaranth.sim test of the board's image runner: the stored image's class on the LEDs."""

import pytest
import torch

from slimnfu.compress.quant import int_forward_layers, quantize_input
from slimnfu.formats import layout
from slimnfu.rtl.image_runner import ImageRunner
from slimnfu.sim.amaranth_driver import simulate
from slimnfu.sim.network import expected_cycles


def test_predicts_the_reference_class(small_qmodel, small_program):
    x = quantize_input(small_qmodel, torch.rand(1, 1, 10, 10, generator=torch.Generator()
                                                .manual_seed(5)))
    logits = int_forward_layers(small_qmodel, x)[-1][0]
    want = int(logits.argmax())
    dut = ImageRunner(small_program, layout.pack_program_input(small_program, x[0]), label=want)
    seen = {}

    async def bench(ctx):
        await ctx.tick().until(dut.done)
        seen.update(predicted=ctx.get(dut.predicted), leds=ctx.get(dut.leds),
                    cycles=ctx.get(dut.cycles), correct=ctx.get(dut.correct))

    simulate(dut, bench)
    assert seen["predicted"] == want
    assert seen["leds"] == want | 0xC0
    assert seen["cycles"] == expected_cycles(small_program)["cycles"]


def test_refusals(small_program):
    with pytest.raises(ValueError, match="label must be a class in 0..2, not 3"):
        ImageRunner(small_program, [0], label=3)
    depth = small_program.cfg.nbin_depth
    with pytest.raises(ValueError, match=f"image_words must hold 1..{depth} NBin words, not 0"):
        ImageRunner(small_program, [], label=0)
