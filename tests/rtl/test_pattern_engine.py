"""IKR layers on the layer engine in amaranth.sim, bit-exact against the integer reference."""

import itertools

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

CFG = CONFIGS["tiny"].with_(ikr={"kmax": 3, "index_depth": 16, "lanes": False}, nbin_depth=256,
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
        assert counters["cycles"] == dense.dense_cycles(CFG) + LayerEngine.latency(CFG, dense)

    simulate(dut, bench)
    for desc, ((y, counters), (x, w, b, _, _)) in zip(LAYERS, got):
        want = fixed.run_layer(desc, x.unsqueeze(0), w, b, CFG.dw)[0]
        assert torch.equal(y, want), desc
        assert counters["cycles"] == desc.ikr_cycles(CFG) + LayerEngine.latency(CFG, desc), desc


def every_slot_ikr_layer(run, seed, cfg=CFG):
    """Operands of IKR pass ``run`` that use all ``cfg.ikr.patterns`` pattern slots.

    The patterns are distinct sets of ``ikr_n`` taps; every slot is the index of kernels
    spread over the input and output tiles. Returns ``x, w (masked), b, patterns, index``
    like :func:`slimnfu.sim.ikr_cases.random_ikr_layer`.
    """
    gen = torch.Generator().manual_seed(seed)
    desc = run.layer
    kk, slots = desc.k * desc.k, cfg.ikr.patterns
    tap_sets = list(itertools.combinations(range(kk), run.ikr_n))
    pick = torch.randperm(len(tap_sets), generator=gen)[:slots]
    patterns = torch.tensor([tap_sets[i] for i in pick])
    index = (torch.randperm(desc.n_out * desc.n_in, generator=gen) % slots).view(
        desc.n_out, desc.n_in)
    x = torch.randint(cfg.qmin, cfg.qmax + 1, (desc.n_in, desc.h_in, desc.w_in), generator=gen)
    w = torch.randint(cfg.qmin, cfg.qmax + 1, (desc.n_out, desc.n_in, kk), generator=gen)
    mask = torch.zeros_like(w)
    mask.scatter_(2, patterns[index], 1)
    w = (w * mask).view(desc.n_out, desc.n_in, desc.k, desc.k)
    b = torch.randint(-1 << 20, 1 << 20, (desc.n_out,), generator=gen)
    return x, w, b, patterns, index


def test_ikr_layer_of_many_tiles_uses_every_pattern_slot():
    """Three input tiles (the last one partial) by three output tiles, every one of the 16
    pattern slots in use: each (output tile, input tile) index word and table entry is read."""
    desc = PassDesc(LayerDesc("conv", 2 * CFG.ti + 2, 2 * CFG.tn + 1, 5, 4, k=3, pad=1,
                              shift=17), ikr_n=4)
    assert desc.tiles(CFG) == (3, 3) and CFG.ikr.patterns == 16
    x, w, b, patterns, index = every_slot_ikr_layer(desc, 11)
    assert len(set(map(tuple, patterns.tolist()))) == 16
    last_tile = index[:, 2 * CFG.ti:]
    assert index.unique().numel() == 16 and last_tile.unique().numel() > 1
    dut = LayerEngine(CFG)
    drv = EngineDriver(dut)
    got = []

    async def bench(ctx):
        got.append(await run_ikr(ctx, drv, desc, x, w, b, patterns, index))

    simulate(dut, bench)
    (y, counters), = got
    count = fixed.SatCount()
    assert torch.equal(y, fixed.run_layer(desc, x.unsqueeze(0), w, b, CFG.dw, count=count)[0])
    assert counters["cycles"] == desc.ikr_cycles(CFG) + LayerEngine.latency(CFG, desc)
    assert counters["mults"] == 5 * 4 * 3 * 3 * 4 * CFG.tn * CFG.ti
    assert counters["sat_events"] == count.events


@pytest.mark.parametrize("cls", [IkrSequencer, IkrUnit, PatternDecoder])
def test_ikr_blocks_refuse_ikr_off(cls):
    with pytest.raises(ValueError, match=f"^{cls.__name__} needs a config with ikr=True; "
                                         f"'tiny' has ikr=False$"):
        cls(CONFIGS["tiny"])


def test_decoder_stages_add_no_latency():
    """Session 13's registers for 100 MHz on tiny+ikr take stages that were there: the
    decoder's fabric copies of the block RAM words (LOOKAHEAD 3) take stages of the
    sequencer's step delay, and the split window select (WINDOW_STAGES) one of the engine's
    lane_neurons registers, so IkrSequencer.OUTPUT_STAGES (pinned in test_engine; 4 since the
    banked order's swap) does not grow with them."""
    assert PatternDecoder.LOOKAHEAD == 3 < IkrSequencer.OUTPUT_STAGES == 4
    assert IkrUnit.WINDOW_STAGES == PatternDecoder.WINDOW_STAGES == 1
    assert PatternDecoder.window_select_bits(CONFIGS["tiny"].with_(ikr={"lanes": False})) == 3
    assert PatternDecoder.window_select_bits(CFG) == 2


@pytest.mark.parametrize("kmax", [1, 2, 7])
def test_decoder_elaborates_for_every_window_size(kmax):
    """The split window select holds for a window of one tap (no high bits) and the
    largest."""
    from amaranth.back import rtlil

    rtlil.convert(PatternDecoder(CFG.with_(ikr={"kmax": kmax, "lanes": False})))


@pytest.mark.parametrize("stride, cycles", [(1, 6 * (3 + 5 * 1) + 1), (2, 3 * (3 + 2 * 2) + 1)])
def test_single_input_tile_window_slides(stride, cycles):
    """One input tile at n = 1: every output pixel but the first of its row reads only the
    ``stride`` new window columns, so it takes ``stride`` cycles, not ``k``."""
    run = PassDesc(LayerDesc("conv", CFG.ti, 3, 6, 6, k=3, stride=stride, pad=1, shift=14),
                   ikr_n=1)
    assert run.tiles(CFG) == (1, 1) and run.ikr_cycles(CFG) == cycles
    ops = random_ikr_layer(run, 3, 5 + stride, CFG)
    dut = LayerEngine(CFG)
    got = []

    async def bench(ctx):
        got.append(await run_ikr(ctx, EngineDriver(dut), run, *ops))

    simulate(dut, bench)
    (y, counters), = got
    x, w, b = ops[:3]
    assert torch.equal(y, fixed.run_layer(run, x.unsqueeze(0), w, b, CFG.dw)[0])
    assert counters["cycles"] == cycles + LayerEngine.latency(CFG, run)


@pytest.mark.parametrize("tiles, n_in, n_out, stride, pad, n, banked", [
    (3, 2 * CFG.ti, 2 * CFG.tn, 1, 1, 1, True),      # two input tiles, each its own bank
    (3, 2 * CFG.ti + 1, 2 * CFG.tn, 2, 1, 1, True),  # three (the last partial), stride 2
    (3, 2 * CFG.ti, 2 * CFG.tn, 1, 0, 5, True),      # n > k: slots of n cycles, fill hidden
    (2, 2 * CFG.ti, 3 * CFG.tn - 1, 2, 1, 2, True),  # three output tiles, n = 2, stride 2
    (1, CFG.ti, 3 * CFG.tn, 1, 1, 1, True),          # one bank, three output tiles
    (2, 2 * CFG.ti + 1, 2 * CFG.tn, 1, 1, 1, False),  # more input tiles than banks: refills
])
def test_banked_window_slides_with_several_input_tiles(tiles, n_in, n_out, stride, pad, n,
                                                       banked):
    """With ``ikr.tiles`` window banks a layer of up to that many input tiles is walked
    ``oy, ox, o, t``: each tile's window slides in its own bank (``min(stride, k)`` new columns
    a group of output tile 0, ``max(n, k)`` only at the start of a row) and serves the pixel's
    other output tiles in ``n`` cycles a group; a wider layer keeps DianNao's order and refills
    every window in ``max(n, k)`` cycles."""
    cfg = CFG.with_(ikr={"kmax": 3, "index_depth": 16, "tiles": tiles, "lanes": False})
    run = PassDesc(LayerDesc("conv", n_in, n_out, 6, 7, k=3, stride=stride, pad=pad,
                             shift=15, act="relu"), ikr_n=n)
    ci, co = run.tiles(cfg)
    assert co > 1 and run.ikr_banked(cfg) == banked
    groups = co * run.h_out * run.w_out * ci
    full, slide = max(n, 3), max(n, min(stride, 3))
    first = ci * full + (co - 1) * ci * n        # a row's first pixel
    pixel = ci * slide + (co - 1) * ci * n       # the others
    row = first + (run.w_out - 1) * pixel
    want = run.h_out * row + n if banked else groups * full + n
    assert run.ikr_cycles(cfg) == want and (want < groups * full + n) == (banked and n < 3)
    slots = (0, 1, ci, ci + 1, ci * co, ci * co + 1, ci * co * run.w_out)
    assert [run.ikr_slot_cycles(cfg, q) for q in slots] == (
        [0, full, ci * full, ci * full + n, first, first + slide, row] if banked
        else [q * full for q in slots])
    ops = random_ikr_layer(run, 7, 40 + tiles + stride + n, cfg)
    dut = LayerEngine(cfg)
    got = []

    async def bench(ctx):
        got.append(await run_ikr(ctx, EngineDriver(dut), run, *ops, cfg=cfg))

    simulate(dut, bench)
    (y, counters), = got
    x, w, b = ops[:3]
    assert torch.equal(y, fixed.run_layer(run, x.unsqueeze(0), w, b, cfg.dw)[0])
    assert counters["cycles"] == want + LayerEngine.latency(cfg, run)



def test_ikr_layers_read_both_buffers_and_their_copies_stay_alike():
    """kmax = 5: each neuron buffer is three block RAM copies, window rows 1 and 3 read on
    copies' write ports. An IKR layer reads buffer 0 and writes buffer 1, the next reads
    buffer 1 and writes buffer 0 (bit-exact, exact cycles), then buffer 1 is written through
    ``nb_*`` the cycle after ``done``: every copy of each buffer holds the same words
    throughout, so no write went to a window row's address."""
    cfg = CONFIGS["tiny"].with_(ikr={"kmax": 5, "index_depth": 16, "lanes": False}, nbin_depth=64,
                                sb_depth=128, nbout_depth=64, bias_depth=8)
    assert LayerEngine.buffer_copies(cfg) == 3
    first = PassDesc(LayerDesc("conv", 4, 4, 6, 5, k=5, pad=2, shift=15), ikr_n=7)
    second = PassDesc(LayerDesc("conv", 4, 3, 6, 5, k=5, pad=2, shift=15, act="relu"),
                      ikr_n=11)
    x, *ops1 = random_ikr_layer(first, 3, 1, cfg)
    _, *ops2 = random_ikr_layer(second, 4, 2, cfg)
    mid = fixed.run_layer(first, x.unsqueeze(0), *ops1[:2], cfg.dw)
    want = fixed.run_layer(second, mid, *ops2[:2], cfg.dw)[0]
    refill = list(range(1, cfg.nbout_depth + 1))
    dut = LayerEngine(cfg)
    drv = EngineDriver(dut)
    got = {"differ": []}

    async def check_copies(ctx, when):
        for b, copies in enumerate(dut.buffer_data):
            words = [[ctx.get(data[a]) for a in range(data.depth)] for data in copies]
            if any(w != words[0] for w in words[1:]):
                got["differ"].append((when, b))
        return words

    async def load_weights(ctx, run, w, b, patterns, index):
        values = w.view(run.layer.n_out, run.layer.n_in, -1).gather(2, patterns[index])
        await drv.load(ctx, LoadSel.SB, layout.pack_ikr_weights(values, cfg))
        await drv.load(ctx, LoadSel.BIAS, layout.pack_bias(b, cfg))
        await drv.load(ctx, LoadSel.IKR_INDEX, layout.pack_ikr_index(index, cfg))
        await drv.load(ctx, LoadSel.IKR_TABLE, layout.pack_ikr_table(patterns, run.layer.k,
                                                                      cfg))

    async def bench(ctx):
        await drv.load(ctx, LoadSel.NBIN, layout.pack_input(x, cfg))
        await load_weights(ctx, first, *ops1)
        got["first"] = await drv.run(ctx, descriptor_value(first, cfg))
        await check_copies(ctx, "first")
        await load_weights(ctx, second, *ops2)
        ctx.set(dut.in_buf, 1)
        ctx.set(dut.out_buf, 0)
        got["second"] = await drv.run(ctx, descriptor_value(second, cfg))
        # drv.run returns in the cycle done pulses: buffer 1, the layer's input, is written
        # from the first idle cycle on
        for a, word in enumerate(refill):
            ctx.set(dut.nb_en, 1)
            ctx.set(dut.nb_addr, a)
            ctx.set(dut.nb_data, word)
            await ctx.tick()
        ctx.set(dut.nb_en, 0)
        got["refilled"] = (await check_copies(ctx, "refill"))[0]
        got["y"] = await drv.read_nbout(ctx, second.nbout_words(cfg))

    simulate(dut, bench)
    assert got["differ"] == [] and got["refilled"] == refill
    assert torch.equal(layout.unpack_output(got["y"], 3, 6, 5, cfg), want)
    for run, counters in ((first, got["first"]), (second, got["second"])):
        assert counters["cycles"] == run.ikr_cycles(cfg) + LayerEngine.latency(cfg, run)
