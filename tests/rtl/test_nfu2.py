import random

import pytest

from slimnfu.config import AccelConfig, get_config
from slimnfu.contract import Mode
from slimnfu.rtl.nfu2 import NFU2, adder_tree, tree_levels
from slimnfu.sim.amaranth_driver import simulate

CFG = AccelConfig("t2", tn=2, ti=2, dw=8, acc=20)


async def step(ctx, dut, products=None, neurons=None, bias=None, first=0, last=0):
    """Put one step on the inputs for one cycle (a step may follow in the next cycle)."""
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

    lat = NFU2.latency(cfg)
    # one tree stage; acc 20 is added in one stage, acc 48 in two
    assert lat == {"t2": 2, "tiny": 3}[cfg.name]
    steps = [(bias, p, n == 0, n == len(prods) - 1)
             for bias, prods in groups for n, p in enumerate(prods)]
    wants = [[bias[j] + sum(p[j * cfg.ti + i] for p in prods for i in range(cfg.ti))
              for j in range(cfg.tn)] for bias, prods in groups]

    async def bench(ctx):
        # groups back to back, no idle cycle between them
        ctx.set(dut.mode, Mode.MAC)
        got = []
        for n in range(len(steps) + lat):
            if n < len(steps):
                bias, p, first, last = steps[n]
                await step(ctx, dut, products=p, bias=bias, first=first, last=last)
            else:
                await ctx.tick()
            if ctx.get(dut.out_valid):
                got.append([ctx.get(dut.acc[j]) for j in range(cfg.tn)])
                # lat cycles after the group's last step
                assert steps[n + 1 - lat][3]
        assert got == wants

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
            for _ in range(NFU2.latency(cfg) - 1):
                await ctx.tick()
            assert ctx.get(dut.out_valid)
            for j in range(cfg.tn):
                col = [x[j] for x in window]
                want = max(col) if mode == Mode.MAXPOOL else sum(col)
                assert ctx.get(dut.acc[j]) == want

    simulate(dut, bench)


@pytest.mark.parametrize("lanes", [1, 2, 8], ids=["no_tree_stage", "one", "two"])
def test_max_pooling_groups_with_gaps_and_back_to_back(lanes):
    # random groups, some back to back and some after idle cycles, with the maximum early,
    # late and repeated: the compare made a cycle ahead must see the maximum each neuron meets
    cfg = AccelConfig(f"m{lanes}", tn=lanes, ti=lanes, dw=8, acc=20)
    dut = NFU2(cfg)
    rng = random.Random(lanes)
    values = [cfg.qmin, cfg.qmin + 1, -1, 0, 1, cfg.qmax - 1, cfg.qmax]
    groups = [[[rng.choice(values + [rng.randint(cfg.qmin, cfg.qmax)]) for _ in range(lanes)]
               for _ in range(rng.randint(1, 5))] for _ in range(40)]
    gaps = [rng.choice([0, 0, 1, 2]) for _ in groups]
    lat = NFU2.latency(cfg)

    # one entry per cycle: a step (neurons, first, last) or None for an idle cycle
    cycles = []
    for window, gap in zip(groups, gaps):
        for n, x in enumerate(window):
            # idle cycles between groups and inside a group, before its last step
            if n == len(window) - 1:
                cycles += [None] * gap
            cycles.append((x, n == 0, n == len(window) - 1))
    cycles += [None] * lat

    async def bench(ctx):
        ctx.set(dut.mode, Mode.MAXPOOL)
        got = []
        for entry in cycles:
            if entry is None:
                await ctx.tick()
            else:
                x, first, last = entry
                await step(ctx, dut, neurons=x, first=first, last=last)
            if ctx.get(dut.out_valid):
                got.append([ctx.get(dut.acc[j]) for j in range(lanes)])
        assert got == [[max(x[j] for x in window) for j in range(lanes)] for window in groups]

    simulate(dut, bench)


@pytest.mark.parametrize("n, levels_per_stage, stages", [(1, 2, 0), (2, 2, 1), (4, 2, 1),
                                                         (5, 2, 2), (16, 2, 2), (8, 1, 3)])
def test_pipelined_adder_tree(n, levels_per_stage, stages):
    """The registered tree sums exactly, ``ceil(ceil(log2 n) / levels_per_stage)`` cycles
    after its inputs, one sum per cycle."""
    from amaranth.hdl import Module, Signal, signed
    rng = random.Random(n)
    rows = [[rng.randint(-1000, 1000) for _ in range(n)] for _ in range(6)]
    ins = [Signal(signed(12), name=f"x{i}") for i in range(n)]
    m = Module()
    out = Signal(signed(16))
    m.d.comb += out.eq(adder_tree(ins, m, levels_per_stage))
    ticks = Signal(8)
    m.d.sync += ticks.eq(ticks + 1)  # a sync domain even when the tree has no register
    assert tree_levels(n) == (n - 1).bit_length()

    async def bench(ctx):
        for t in range(len(rows) + stages):
            if t < len(rows):
                for sig, v in zip(ins, rows[t]):
                    ctx.set(sig, v)
            if t >= stages:
                assert ctx.get(out) == sum(rows[t - stages])
            await ctx.tick()

    simulate(m, bench)


def test_adder_tree_rejects_empty():
    with pytest.raises(ValueError, match="adder_tree needs at least one value"):
        adder_tree([])


def test_rejects_non_config():
    with pytest.raises(TypeError, match="NFU2: cfg must be an AccelConfig"):
        NFU2("tiny")
