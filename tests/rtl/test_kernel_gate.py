import pytest

from slimnfu.config import get_config
from slimnfu.rtl.kernel_gate import KernelGate
from slimnfu.sim.amaranth_driver import simulate


def _expected(k, lane_k, ky, kx):
    c = (k - 1) // 2
    en = []
    for lk in lane_k:
        h = (lk - 1) // 2 if lk else k
        en.append(int(abs(ky - c) <= h and abs(kx - c) <= h))
    return en


@pytest.mark.parametrize("k, lane_k", [(5, [5, 3, 1, 3]), (3, [1, 3, 1, 0]), (5, [0, 0, 0, 0]),
                                       (1, [1, 1, 1, 1])])
def test_lanes_follow_the_tap_walk(k, lane_k):
    cfg = get_config("tiny")
    dut = KernelGate(cfg)
    ci_tiles, groups = 2, 3
    seen = []
    assert KernelGate.LATENCY == 1

    async def bench(ctx):
        ctx.set(dut.k, k)
        for j, v in enumerate(lane_k):
            ctx.set(dut.lane_k[j], v)
        async def tick(want):
            """Clock the step on the inputs; its (lane_en, gated lanes), or no step (None), must
            appear KernelGate.LATENCY (1) cycle later."""
            await ctx.tick()
            en = [ctx.get(dut.lane_en[j]) for j in range(cfg.tn)]
            off = [ctx.get(dut.lane_off[j]) for j in range(cfg.tn)]
            if want is None:
                assert off == [0] * cfg.tn
            else:
                assert off == [1 - e for e in en]
                assert (en, sum(off)) == want
                seen.append(want[1])

        # an idle cycle between groups must not move the walk
        for g in range(groups):
            for t in range(ci_tiles):
                for ky in range(k):
                    for kx in range(k):
                        ctx.set(dut.valid, 1)
                        ctx.set(dut.first, int(t == ky == kx == 0))
                        want = _expected(k, lane_k, ky, kx)
                        await tick((want, cfg.tn - sum(want)))
            ctx.set(dut.valid, 0)
            await tick(None)

    simulate(dut, bench)
    per_group = sum(k * k - min(lk or k, k) ** 2 for lk in lane_k) * ci_tiles
    assert sum(seen) == per_group * groups


def test_bad_config_message():
    with pytest.raises(TypeError, match="KernelGate: cfg must be an AccelConfig"):
        KernelGate("tiny")
