import random

import pytest
import torch

from slimnfu import fixed
from slimnfu.config import AccelConfig, get_config
from slimnfu.formats.layout import pack_pwl
from slimnfu.contract import Act
from slimnfu.rtl.nfu3 import NFU3
from slimnfu.sim.amaranth_driver import simulate


def run_nfu3(cfg, accs, shift, act="none", table=None, masks=None):
    """Feed rows of ``tn`` accumulators back to back; return outputs and the sat count."""
    dut = NFU3(cfg)
    masks = masks or [(1 << cfg.tn) - 1] * len(accs)
    outs = []

    async def bench(ctx):
        if table is not None:
            ctx.set(dut.pwl.en, 1)
            for s, word in enumerate(pack_pwl(table, cfg)):
                ctx.set(dut.pwl.addr, s)
                ctx.set(dut.pwl.data, word)
                await ctx.tick()
            ctx.set(dut.pwl.en, 0)
            ctx.set(dut.seg_shift, table.seg_shift)
        ctx.set(dut.shift, shift)
        ctx.set(dut.act, {"none": Act.NONE, "relu": Act.RELU, "pwl": Act.PWL}[act])
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for row, mask in zip(accs + [None] * NFU3.LATENCY, masks + [0] * NFU3.LATENCY):
            ctx.set(dut.in_valid, row is not None)
            for j, v in enumerate(row or [0] * cfg.tn):
                ctx.set(dut.acc[j], v)
            ctx.set(dut.lane_mask, mask)
            await ctx.tick()
            if ctx.get(dut.out_valid):
                outs.append([ctx.get(dut.out[j]) for j in range(cfg.tn)])
        outs.append(ctx.get(dut.sat_events))

    simulate(dut, bench)
    return outs[:-1], outs[-1]


def test_requant_ties_rails_and_sh0():
    cfg = get_config("tiny")
    big = 1 << 40
    rows = [[5, 6, 7, -5], [-6, -7, 4, 12], [big, -big, 32767 * 16 + 8, -32768 * 16 - 9],
            [(1 << 47) - 1, -(1 << 47), 0, -1]]
    for shift in (0, 1, 4, 47):
        outs, sats = run_nfu3(cfg, rows, shift)
        count = fixed.SatCount()
        want = fixed.requant(torch.tensor(rows), shift, cfg.dw, count)
        assert outs == want.tolist(), shift
        assert sats == count.events, shift
    # hand-computed ties at sh = 1: 5/2 = 2.5 -> 3, -5/2 = -2.5 -> -2, and sh = 0 passes through
    assert run_nfu3(cfg, [[5, -5, 7, -7]], 1)[0] == [[3, -2, 4, -3]]
    assert run_nfu3(cfg, [[32767, -32768, 32768, -32769]], 0) == ([[32767, -32768, 32767,
                                                                    -32768]], 2)


def test_relu_and_masked_saturation_count():
    cfg = AccelConfig("t2", tn=2, ti=2, dw=8, acc=20)
    rows = [[1000, -1000], [-3, 3], [400, 400]]
    outs, sats = run_nfu3(cfg, rows, 1, act="relu", masks=[0b11, 0b11, 0b01])
    assert outs == [[127, 0], [0, 2], [127, 127]]
    assert sats == 3  # the second lane of the last row is not a real channel


@pytest.mark.parametrize("func,seg_shift", [("sigmoid", 10), ("tanh", 9), ("tanh", 0)])
def test_pwl_matches_reference(func, seg_shift):
    cfg = get_config("tiny")
    table = fixed.pwl_table(func, 10, cfg.dw, seg_shift)
    rng = random.Random(3)
    accs = [cfg.qmin, cfg.qmax, 0, -1, 1 << 20, -(1 << 20)]
    accs += [rng.randint(cfg.qmin, cfg.qmax) for _ in range(38)]
    rows = [accs[i:i + cfg.tn] for i in range(0, len(accs), cfg.tn)]
    outs, sats = run_nfu3(cfg, rows, 0, act="pwl", table=table)
    count = fixed.SatCount()
    y = fixed.requant(torch.tensor(rows), 0, cfg.dw, count)
    want = fixed.pwl_apply(y, table, count)
    assert outs == want.tolist()
    assert sats == count.events


def test_pwl_saturation_counted():
    cfg = get_config("tiny")
    table = fixed.PwlTable([cfg.qmax] * 16, [0] * 16, 4, cfg.dw)  # slope ~2: saturates
    rows = [[30000, -30000, 100, 0]]
    outs, sats = run_nfu3(cfg, rows, 0, act="pwl", table=table)
    count = fixed.SatCount()
    assert outs == fixed.pwl_apply(torch.tensor(rows), table, count).tolist()
    assert sats == count.events == 2


def test_rejects_non_config():
    with pytest.raises(TypeError, match="NFU3: cfg must be an AccelConfig, not NoneType"):
        NFU3(None)
