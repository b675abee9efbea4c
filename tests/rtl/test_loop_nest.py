"""The shared loop nest in amaranth.sim, against the loop order written out in Python."""

import itertools
import random

import pytest

from slimnfu.config import LayerDesc, PassDesc, get_config
from slimnfu.contract import descriptor_value
from slimnfu.rtl.loop_nest import LoopNest
from slimnfu.sim.amaranth_driver import simulate

TINY = get_config("tiny")
KGATE = TINY.with_(kgate=True)


def model_walk(run, cfg, taps, offsets, o_inner=False):
    """One tuple per window (or per tap with ``taps``) of pass ``run``, in the order the nest
    walks them (``o, oy, ox, t``, or with ``o_inner`` ``oy, ox, o, t``)."""
    desc = run.layer
    ci, co = desc.tiles(cfg)
    k, s = desc.k, desc.stride
    origin = (run.koff if offsets else 0) - desc.pad
    base = run.nbout_base if offsets else 0
    walk = []
    order = [(o, oy, ox, t) for o, oy, ox, t in itertools.product(
        range(co), range(run.h_out), range(run.w_out), range(ci))]
    if o_inner:
        order.sort(key=lambda g: (g[1], g[2], g[0], g[3]))
    for o, oy, ox, t in order:
        tile = o if desc.is_pool else t
        mask = sum(1 << j for j in range(cfg.tn) if o * cfg.tn + j < desc.n_out)
        for ky, kx in itertools.product(range(k), range(k)) if taps else [(0, 0)]:
            iy, ix = oy * s + ky + origin, ox * s + kx + origin
            last = t == ci - 1 and (not taps or ky == kx == k - 1)
            tile_end = last and oy == run.h_out - 1 and ox == run.w_out - 1
            walk.append((ix, iy, iy * desc.w_in, tile * desc.h_in * desc.w_in, o,
                         base + (o * run.h_out + oy) * run.w_out + ox, mask,
                         t == 0 and ky == 0 and kx == 0, last, tile_end,
                         tile_end and o == co - 1))
    return walk


def hw_walk(desc, cfg, taps, offsets, seed, pooling=True, o_inner_tiles=None):
    """Advance on random cycles; return the positions advanced from and the cycle timing."""
    dut = LoopNest(cfg, taps=taps, offsets=offsets, pooling=pooling,
                   o_inner_tiles=o_inner_tiles)
    rng = random.Random(seed)
    got = {"walk": [], "first_running": None, "busy_after": None}
    names = ("ix", "iy", "row", "tbase", "o", "nbout", "lane_mask", "first", "last",
             "tile_end", "end")
    got["o_inner"] = set()

    async def bench(ctx):
        ctx.set(dut.run.desc.as_value(), descriptor_value(desc, cfg))
        ctx.set(dut.run.start, 1)
        await ctx.tick()
        ctx.set(dut.run.start, 0)
        for cycle in itertools.count(1):
            assert ctx.get(dut.run.busy)
            advance = rng.random() < 0.7
            ctx.set(dut.advance, advance)
            if ctx.get(dut.running):
                if got["first_running"] is None:
                    got["first_running"] = cycle
                if advance:
                    got["walk"].append(tuple(ctx.get(getattr(dut, n)) for n in names))
                    got["o_inner"].add(ctx.get(dut.o_inner))
                    ctx.set(dut.stop, ctx.get(dut.end))
            await ctx.tick()
            ctx.set(dut.stop, 0)
            if not ctx.get(dut.run.busy):
                break
        assert not ctx.get(dut.running)

    simulate(dut, bench)
    return got


LAYERS = [
    (TINY, PassDesc(LayerDesc("conv", 5, 6, 5, 4, k=3, stride=1, pad=1)), False),
    (TINY, PassDesc(LayerDesc("conv", 9, 3, 7, 6, k=3, stride=2, pad=2)), False),
    (TINY, PassDesc(LayerDesc("fc", 10, 7)), False),
    (TINY, PassDesc(LayerDesc("maxpool", 6, 6, 4, 6, k=2, stride=2)), False),
    (KGATE, PassDesc(LayerDesc("conv", 3, 5, 7, 7, k=3, pad=2), koff=1, nbout_base=5), True),
]


@pytest.mark.parametrize("taps", [False, True])
@pytest.mark.parametrize("cfg, desc, offsets", LAYERS,
                         ids=[f"{d.layer.kind}-{i}" for i, (_, d, _) in enumerate(LAYERS)])
def test_walk_matches_the_loop_order(cfg, desc, offsets, taps):
    got = hw_walk(desc, cfg, taps, offsets, seed=len(desc.layer.kind))
    assert got["walk"] == model_walk(desc, cfg, taps, offsets)
    assert got["first_running"] == LoopNest.SETUP_CYCLES + 1


@pytest.mark.parametrize("cfg, desc, offsets", LAYERS[:2])
def test_walk_without_pooling_is_the_same_for_mac_layers(cfg, desc, offsets):
    got = hw_walk(desc, cfg, False, offsets, seed=3, pooling=False)
    assert got["walk"] == model_walk(desc, cfg, False, offsets)


O_INNER = [
    (TINY, PassDesc(LayerDesc("conv", 5, 9, 5, 4, k=3, stride=1, pad=1)), False, False),
    (TINY, PassDesc(LayerDesc("conv", 9, 6, 7, 6, k=3, stride=2, pad=2)), False, False),
    (KGATE, PassDesc(LayerDesc("conv", 3, 5, 7, 7, k=3, pad=2), koff=1, nbout_base=5), True,
     False),
    (TINY, PassDesc(LayerDesc("conv", 13, 6, 5, 4, k=3, stride=1, pad=1)), False, True),
]


@pytest.mark.parametrize("taps", [False, True])
@pytest.mark.parametrize("cfg, desc, offsets, wide", O_INNER,
                         ids=[f"o_inner-{i}" for i in range(len(O_INNER))])
def test_o_inner_walk_for_layers_of_few_input_tiles(cfg, desc, offsets, taps, wide):
    """With ``o_inner_tiles=3`` a layer of at most 3 input tiles walks its output tiles inside
    each pixel (``nbout`` jumping by ``h_out*w_out``); a wider one keeps DianNao's order."""
    got = hw_walk(desc, cfg, taps, offsets, seed=5, pooling=False, o_inner_tiles=3)
    assert desc.tiles(cfg)[0] > 3 if wide else desc.tiles(cfg)[0] <= 3
    assert got["walk"] == model_walk(desc, cfg, taps, offsets, o_inner=not wide)
    assert got["o_inner"] == {int(not wide)}


def test_refusals():
    with pytest.raises(TypeError, match="^LoopNest: taps must be a bool, not 1$"):
        LoopNest(TINY, taps=1)
    with pytest.raises(ValueError, match="^LoopNest needs a config with kgate=True; 'tiny' has "
                                         "kgate=False$"):
        LoopNest(TINY, taps=True, offsets=True)
    with pytest.raises(TypeError, match="^LoopNest: cfg must be an AccelConfig, not int$"):
        LoopNest(3, taps=True)
    with pytest.raises(ValueError, match="^LoopNest: o_inner_tiles needs pooling=False$"):
        LoopNest(TINY, taps=False, o_inner_tiles=2)
    with pytest.raises(ValueError, match="^LoopNest: o_inner_tiles must be a positive int or "
                                         "None, not 0$"):
        LoopNest(TINY, taps=False, pooling=False, o_inner_tiles=0)
