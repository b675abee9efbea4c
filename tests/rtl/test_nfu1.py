import random

import pytest

from slimnfu.config import get_config
from slimnfu.rtl.nfu1 import NFU1
from slimnfu.sim.amaranth_driver import simulate


@pytest.mark.parametrize("product_stages", [0, 1, 2])
def test_products_exact_including_most_negative(product_stages):
    cfg = get_config("tiny").with_(product_stages=product_stages)
    dut = NFU1(cfg)
    rng = random.Random(1)
    lo, hi = cfg.qmin, cfg.qmax
    cases = [([lo] * cfg.ti, [lo] * (cfg.tn * cfg.ti)),
             ([hi] * cfg.ti, [lo] * (cfg.tn * cfg.ti)),
             ([lo, hi, 0, -1], [hi, lo, -1, 1] * cfg.tn)]
    for _ in range(20):
        cases.append(([rng.randint(lo, hi) for _ in range(cfg.ti)],
                      [rng.randint(lo, hi) for _ in range(cfg.tn * cfg.ti)]))

    lat = NFU1.latency(cfg)
    assert lat == 2 + product_stages

    async def bench(ctx):
        # back to back: the products of case n appear ``lat`` cycles after its operands
        ctx.set(dut.en, 1)
        for n in range(len(cases) + lat):
            if n < len(cases):
                x, w = cases[n]
                for i, v in enumerate(x):
                    ctx.set(dut.neurons[i], v)
                for lane, v in enumerate(w):
                    ctx.set(dut.synapses[lane], v)
            await ctx.tick()
            if n + 1 >= lat:
                x, w = cases[min(n + 1 - lat, len(cases) - 1)]
                for j in range(cfg.tn):
                    for i in range(cfg.ti):
                        lane = j * cfg.ti + i
                        assert ctx.get(dut.products[lane]) == x[i] * w[lane]
        # en low: the products hold (operand isolation).
        ctx.set(dut.en, 0)
        ctx.set(dut.neurons[0], 7)
        for _ in range(lat + 1):
            await ctx.tick()
            assert ctx.get(dut.products[0]) == x[0] * w[0]

    simulate(dut, bench)
    assert (-32768) * (-32768) == 1 << 30  # the case above, on dw=16


def test_rejects_non_config():
    with pytest.raises(TypeError, match="NFU1: cfg must be an AccelConfig, not dict"):
        NFU1({"tn": 4})
