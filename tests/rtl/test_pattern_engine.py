"""IKR layers on the layer engine in amaranth.sim, bit-exact against the integer reference."""

import pytest
import torch

from slimnfu import fixed
from slimnfu.config import CONFIGS, LayerDesc, PassDesc
from slimnfu.formats import layout
from slimnfu.contract import descriptor_value
from slimnfu.rtl.engine import LayerEngine
from slimnfu.rtl.ikr_sequencer import IkrSequencer
from slimnfu.rtl.ikr_unit import IkrUnit
from slimnfu.rtl.pattern_decoder import PatternDecoder
from slimnfu.contract import LoadSel
from slimnfu.sim.amaranth_driver import EngineDriver, simulate
from slimnfu.sim.ikr_cases import random_ikr_layer

CFG = CONFIGS["tiny"].with_(ikr={"kmax": 3, "index_depth": 16}, nbin_depth=256,
                            sb_depth=128, nbout_depth=256, bias_depth=8)


async def run_ikr(ctx, drv, run, x, w, b, patterns, index, cfg=CFG):
    desc = run.layer
    values = w.view(desc.n_out, desc.n_in, -1).gather(2, patterns[index])
    await drv.load(ctx, LoadSel.NBIN, layout.pack_input(x, cfg))
    await drv.load(ctx, LoadSel.SB, layout.pack_ikr_weights(values, cfg))
    await drv.load(ctx, LoadSel.BIAS, layout.pack_bias(b, cfg))
    await drv.load(ctx, LoadSel.IKR_INDEX, layout.pack_ikr_index(index, cfg))
    await drv.load(ctx, LoadSel.IKR_TABLE, layout.pack_ikr_table(patterns, desc.k, cfg))
    counters = await drv.run(ctx, descriptor_value(run, cfg))
    words = await drv.read_nbout(ctx, run.nbout_words(cfg))
    return layout.unpack_output(words, desc.n_out, run.h_out, run.w_out, cfg), counters


LAYERS = [
    PassDesc(LayerDesc("conv", 5, 6, 6, 5, k=3, pad=1, shift=14), ikr_n=4),
    PassDesc(LayerDesc("conv", 3, 2, 7, 6, k=3, stride=2, shift=14, act="relu"), ikr_n=1),
    PassDesc(LayerDesc("conv", 4, 5, 5, 5, k=3, pad=1, shift=14), ikr_n=9),
    PassDesc(LayerDesc("conv", 2, 3, 4, 4, k=1, shift=14), ikr_n=1),
]


def test_ikr_layers_bit_exact_and_cycles():
    dut = LayerEngine(CFG)
    drv = EngineDriver(dut)
    got = []

    async def bench(ctx):
        for i, desc in enumerate(LAYERS):
            ops = random_ikr_layer(desc, 1 + 5 * i, i, CFG)
            got.append((await run_ikr(ctx, drv, desc, *ops), ops))
        # A dense layer after the IKR ones runs as before on the same engine.
        dense = LayerDesc("conv", 3, 3, 5, 5, k=3, pad=1, shift=14)
        x, w, b = random_ikr_layer(PassDesc(dense, ikr_n=9), 1, 9, CFG)[:3]
        await drv.load(ctx, LoadSel.NBIN, layout.pack_input(x, CFG))
        await drv.load(ctx, LoadSel.SB, layout.pack_weights(w, CFG))
        await drv.load(ctx, LoadSel.BIAS, layout.pack_bias(b, CFG))
        counters = await drv.run(ctx, descriptor_value(dense, CFG))
        words = await drv.read_nbout(ctx, dense.nbout_words(CFG))
        y = layout.unpack_output(words, 3, 5, 5, CFG)
        assert torch.equal(y, fixed.run_layer(dense, x.unsqueeze(0), w, b, CFG.dw)[0])
        assert counters["cycles"] == dense.dense_cycles(CFG) + LayerEngine.LATENCY

    simulate(dut, bench)
    for desc, ((y, counters), (x, w, b, _, _)) in zip(LAYERS, got):
        want = fixed.run_layer(desc, x.unsqueeze(0), w, b, CFG.dw)[0]
        assert torch.equal(y, want), desc
        assert counters["cycles"] == desc.ikr_cycles(CFG) + LayerEngine.LATENCY, desc


@pytest.mark.parametrize("cls", [IkrSequencer, IkrUnit, PatternDecoder])
def test_ikr_blocks_refuse_ikr_off(cls):
    with pytest.raises(ValueError, match=f"^{cls.__name__} needs a config with ikr=True; "
                                         f"'tiny' has ikr=False$"):
        cls(CONFIGS["tiny"])
