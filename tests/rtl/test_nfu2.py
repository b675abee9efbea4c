import random

import pytest

from slimnfu.config import AccelConfig, get_config
from slimnfu.contract import Mode
from slimnfu.rtl.nfu2 import NFU2, adder_tree
from slimnfu.sim.amaranth_driver import simulate

CFG = AccelConfig("t2", tn=2, ti=2, dw=8, acc=20)


async def step(ctx, dut, products=None, neurons=None, bias=None, first=0, last=0):
    cfg = dut.cfg
    ctx.set(dut.valid, 1)
    ctx.set(dut.first, first)
    ctx.set(dut.last, last)
    for lane, v in enumerate(products or [0] * (cfg.tn * cfg.ti)):
        ctx.set(dut.products[lane], v)
    for i, v in enumerate(neurons or [0] * cfg.ti):
        ctx.set(dut.neurons[i], v)
    for j, v in enumerate(bias or [0] * cfg.tn):
        ctx.set(dut.bias[j], v)
    await ctx.tick()
    ctx.set(dut.valid, 0)


@pytest.mark.parametrize("cfg", [CFG, get_config("tiny")], ids=["t2", "tiny"])
def test_mac_sums_with_bias_and_back_to_back_groups(cfg):
    dut = NFU2(cfg)
    rng = random.Random(2)
    big = 1 << (2 * cfg.dw - 2)
    groups = []
    for length in (3, 1, 2):
        bias = [rng.randint(-1000, 1000) for _ in range(cfg.tn)]
        prods = [[rng.choice([big, -big + 1, rng.randint(-big, big)])
                  for _ in range(cfg.tn * cfg.ti)] for _ in range(length)]
        groups.append((bias, prods))

    async def bench(ctx):
        ctx.set(dut.mode, Mode.MAC)
        for bias, prods in groups:
            for n, p in enumerate(prods):
                await step(ctx, dut, products=p, bias=bias, first=n == 0,
                           last=n == len(prods) - 1)
                assert ctx.get(dut.out_valid) == (n == len(prods) - 1)
            for j in range(cfg.tn):
                want = bias[j] + sum(p[j * cfg.ti + i] for p in prods for i in range(cfg.ti))
                assert ctx.get(dut.acc[j]) == want

    simulate(dut, bench)


def test_max_and_sum_pooling():
    cfg = get_config("tiny")
    dut = NFU2(cfg)
    lo, hi = cfg.qmin, cfg.qmax
    window = [[lo, 5, -3, 0], [lo, -7, hi, -1], [lo, 6, 2, -2], [lo, -8, 1, hi]]

    async def bench(ctx):
        for mode in (Mode.MAXPOOL, Mode.AVGPOOL):
            ctx.set(dut.mode, mode)
            for n, x in enumerate(window):
                # products and bias must be ignored in pooling
                await step(ctx, dut, neurons=x, products=[99] * 16, bias=[5] * 4,
                           first=n == 0, last=n == len(window) - 1)
            for j in range(cfg.tn):
                col = [x[j] for x in window]
                want = max(col) if mode == Mode.MAXPOOL else sum(col)
                assert ctx.get(dut.acc[j]) == want

    simulate(dut, bench)


def test_adder_tree_rejects_empty():
    with pytest.raises(ValueError, match="adder_tree needs at least one value"):
        adder_tree([])


def test_rejects_non_config():
    with pytest.raises(TypeError, match="NFU2: cfg must be an AccelConfig"):
        NFU2("tiny")
