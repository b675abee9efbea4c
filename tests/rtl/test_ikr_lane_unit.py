"""The lane IKR unit (``ikr.lanes``) on the layer engine in amaranth.sim: IKR layers bit-exact
against the integer reference at ``groups * n`` NFU cycles, dense layers as before."""

import pytest
import torch

from slimnfu import fixed
from slimnfu.config import CONFIGS, LayerDesc, PassDesc
from slimnfu.formats import layout
from slimnfu.rtl.engine import LayerEngine
from slimnfu.rtl.ikr_lane_unit import IkrLaneUnit
from slimnfu.sim.amaranth_driver import EngineDriver, simulate
from slimnfu.sim.cases import case_job
from slimnfu.sim.ikr_cases import ikr_case, random_ikr_layer

CFG = CONFIGS["tiny"].with_(ikr={"kmax": 5, "index_depth": 256, "lanes": True},
                            nbin_depth=512, sb_depth=256, nbout_depth=512, bias_depth=8)

LAYERS = [
    # padding on every side, two input tiles, a partial output tile
    PassDesc(LayerDesc("conv", 5, 6, 6, 5, k=3, pad=1, shift=14), ikr_n=4),
    PassDesc(LayerDesc("conv", 3, 2, 7, 6, k=3, stride=2, shift=14, act="relu"), ikr_n=1),
    PassDesc(LayerDesc("conv", 4, 5, 5, 5, k=3, pad=1, shift=14), ikr_n=9),
    PassDesc(LayerDesc("conv", 2, 3, 4, 4, k=1, shift=14), ikr_n=1),
    PassDesc(LayerDesc("conv", 6, 9, 8, 7, k=5, stride=2, pad=2, shift=15, act="relu"),
             ikr_n=3),
    PassDesc(LayerDesc("conv", 1, 4, 9, 9, k=5, shift=14), ikr_n=25),
]


async def run_ikr(ctx, drv, run, x, w, b, patterns, index, cfg=CFG):
    """Load an IKR layer as its format's memories say (the lanes' tap words and tap table),
    run it and unpack NBout."""
    job = case_job(ikr_case("lanes", run, x, w, b, patterns, index, cfg), cfg)
    for sel, words in job["loads"]:
        await drv.load(ctx, sel, words)
    counters = await drv.run(ctx, job["desc_value"])
    words = await drv.read_nbout(ctx, run.nbout_words(cfg))
    return layout.unpack_output(words, run.layer.n_out, run.h_out, run.w_out, cfg), counters


def test_ikr_layers_bit_exact_at_n_cycles_a_group():
    dut = LayerEngine(CFG)
    drv = EngineDriver(dut)
    got = []

    async def bench(ctx):
        for i, run in enumerate(LAYERS):
            ops = random_ikr_layer(run, 1 + 3 * i, i, CFG, share=CFG.tn)
            got.append((await run_ikr(ctx, drv, run, *ops), ops))
        # A dense layer after the IKR ones runs as before on the same engine.
        dense = LayerDesc("conv", 3, 3, 5, 5, k=3, pad=1, shift=14)
        x, w, b = random_ikr_layer(PassDesc(dense, ikr_n=9), 1, 9, CFG)[:3]
        y, counters = await drv.run_layer(ctx, dense, x, w, b)
        assert torch.equal(y, fixed.run_layer(dense, x.unsqueeze(0), w, b, CFG.dw)[0])
        assert counters["cycles"] == dense.dense_cycles(CFG) + LayerEngine.latency(CFG, dense)

    simulate(dut, bench)
    for run, ((y, counters), (x, w, b, _, _)) in zip(LAYERS, got):
        want = fixed.run_layer(run, x.unsqueeze(0), w, b, CFG.dw)[0]
        assert torch.equal(y, want), run
        ci, co = run.tiles(CFG)
        groups = run.h_out * run.w_out * ci * co
        assert run.ikr_cycles(CFG) == groups * run.ikr_n
        assert counters["cycles"] == run.ikr_cycles(CFG) + LayerEngine.latency(CFG, run), run
        assert counters["steps"] == groups * run.ikr_n


def test_lane_unit_needs_lanes():
    with pytest.raises(ValueError, match="IkrLaneUnit needs a config with ikr.lanes; 'tiny' "
                                         "has the window decoder"):
        IkrLaneUnit(CONFIGS["tiny"].with_(ikr={"lanes": False}))


def test_lanes_keep_the_buffers_block_rams():
    """Each neuron buffer is ``ti`` lane memories of ``dw`` bits (a read address each), no
    copies: the same bits as the one memory of the dense engine."""
    dut = LayerEngine(CFG)
    dut._MustUse__silence = True
    assert dut.buffers is None and LayerEngine.buffer_copies(CFG) == 1
    for lanes, depth in zip(dut.buffer_data, (CFG.nbin_depth, CFG.nbout_depth)):
        assert [(lane.shape.width, lane.depth) for lane in lanes] == [(CFG.dw, depth)] * CFG.ti
