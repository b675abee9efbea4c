import pytest

from slimnfu.config import AccelConfig, LayerDesc, get_config
from slimnfu.contract import descriptor_value
from slimnfu.rtl.sequencer import Sequencer
from slimnfu.sim.amaranth_driver import simulate


def model_steps(desc, cfg):
    """The loop nest in Python: one tuple per NFU step."""
    ci, co = desc.tiles(cfg)
    k, s, p = desc.k, desc.stride, desc.pad
    steps = []
    for o in range(co):
        mask = sum(1 << j for j in range(cfg.tn) if o * cfg.tn + j < desc.n_out)
        for oy in range(desc.h_out):
            for ox in range(desc.w_out):
                for t in range(ci):
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = oy * s + ky - p, ox * s + kx - p
                            tile = o if desc.is_pool else t
                            inside = 0 <= iy < desc.h_in and 0 <= ix < desc.w_in
                            nbin = (tile * desc.h_in + iy) * desc.w_in + ix if inside else None
                            sb = None if desc.is_pool else ((o * ci + t) * k + ky) * k + kx
                            first = t == 0 and ky == 0 and kx == 0
                            last = t == ci - 1 and ky == k - 1 and kx == k - 1
                            nbout = (o * desc.h_out + oy) * desc.w_out + ox
                            steps.append((nbin, sb, o, first, last, nbout, mask))
    return steps


def hw_steps(desc, cfg, idle_after=3):
    dut = Sequencer(cfg)
    run, step = dut.run, dut.step
    got = {"steps": [], "valid_cycles": [], "end_cycles": []}

    async def bench(ctx):
        ctx.set(run.desc.as_value(), descriptor_value(desc, cfg))
        ctx.set(run.start, 1)
        await ctx.tick()
        ctx.set(run.start, 0)
        cycle = 1
        while ctx.get(run.busy) or cycle <= Sequencer.SETUP_CYCLES:
            if ctx.get(step.valid):
                pad = ctx.get(step.pad)
                got["steps"].append((
                    None if pad else ctx.get(step.nbin_addr),
                    None if desc.is_pool else ctx.get(step.sb_addr),
                    ctx.get(step.bias_addr), bool(ctx.get(step.first)),
                    bool(ctx.get(step.last)), ctx.get(step.nbout_addr),
                    ctx.get(step.lane_mask)))
                got["valid_cycles"].append(cycle)
                if ctx.get(step.end):
                    got["end_cycles"].append(cycle)
            await ctx.tick()
            cycle += 1
        for _ in range(idle_after):
            assert not ctx.get(step.valid)
            await ctx.tick()

    simulate(dut, bench)
    return got


T2 = AccelConfig("t2", tn=2, ti=2, dw=8, acc=24, nbin_depth=256, sb_depth=256,
                 nbout_depth=256, bias_depth=16)

LAYERS = [
    (get_config("tiny"), LayerDesc("conv", 5, 6, 5, 4, k=3, stride=1, pad=1)),
    (get_config("tiny"), LayerDesc("conv", 9, 3, 7, 6, k=3, stride=2, pad=2)),
    (get_config("tiny"), LayerDesc("conv", 3, 5, 5, 5, k=5, stride=1, pad=0)),
    (get_config("tiny"), LayerDesc("fc", 10, 7)),
    (get_config("tiny"), LayerDesc("maxpool", 6, 6, 4, 6, k=2, stride=2)),
    (T2, LayerDesc("conv", 3, 3, 4, 3, k=1, stride=2)),
    (T2, LayerDesc("avgpool", 5, 5, 3, 3, k=2, stride=1)),
]


@pytest.mark.parametrize("cfg,desc", LAYERS, ids=[f"{c.name}-{d.kind}-{i}"
                                                  for i, (c, d) in enumerate(LAYERS)])
def test_address_stream_matches_loop_nest(cfg, desc):
    got = hw_steps(desc, cfg)
    want = model_steps(desc, cfg)
    assert len(want) == desc.dense_cycles(cfg)
    assert got["steps"] == want
    # no bubbles: one step per cycle from SETUP_CYCLES + 1 cycles after start, end on the last
    first = Sequencer.SETUP_CYCLES + 1
    assert got["valid_cycles"] == list(range(first, first + len(want)))
    assert got["end_cycles"] == [got["valid_cycles"][-1]]


def test_rejects_non_config():
    with pytest.raises(TypeError, match="Sequencer: cfg must be an AccelConfig"):
        Sequencer(4)
