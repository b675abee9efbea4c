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
        lat = NFU3.latency(cfg)
        for row, mask in zip(accs + [None] * lat, masks + [0] * lat):
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
@pytest.mark.parametrize("pwl_lutram", [False, True])
def test_pwl_matches_reference(func, seg_shift, pwl_lutram):
    cfg = get_config("tiny").with_(pwl_lutram=pwl_lutram)
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


@pytest.mark.parametrize("pwl_lutram", [False, True])
def test_pwl_saturation_counted(pwl_lutram):
    cfg = get_config("tiny").with_(pwl_lutram=pwl_lutram)
    table = fixed.PwlTable([cfg.qmax] * 16, [0] * 16, 4, cfg.dw)  # slope ~2: saturates
    rows = [[30000, -30000, 100, 0]]
    outs, sats = run_nfu3(cfg, rows, 0, act="pwl", table=table)
    count = fixed.SatCount()
    assert outs == fixed.pwl_apply(torch.tensor(rows), table, count).tolist()
    assert sats == count.events == 2


def test_rejects_non_config():
    with pytest.raises(TypeError, match="NFU3: cfg must be an AccelConfig, not NoneType"):
        NFU3(None)


def segment_table(cfg, seg_shift):
    """A PWL table whose 16 lines all differ (slope ``s/256``, intercept ``1000*s``), so an
    input run on the wrong segment gives a wrong output."""
    p = cfg.pwl_frac
    return fixed.PwlTable([s << (p - 8) for s in range(16)], [(1000 * s) << p for s in range(16)],
                          seg_shift, cfg.dw)


def segment_edges(cfg, seg_shift):
    """Inputs at and either side of every segment boundary ``(s-8) << seg_shift`` (``s`` up to
    16, where the clamp holds the top segment), the rails and their neighbours, and
    accumulators beyond the rails (requantised to them)."""
    ys = [cfg.qmin, cfg.qmin + 1, cfg.qmax - 1, cfg.qmax, 0, -1]
    for s in range(17):
        edge = (s - 8) << seg_shift
        ys += [v for v in (edge - 1, edge, edge + 1) if cfg.qmin <= v <= cfg.qmax]
    ys += [cfg.qmax + 1, cfg.qmin - 1, 1 << 40, -(1 << 40)]
    return ys + [0] * (-len(ys) % cfg.tn)


@pytest.mark.parametrize("seg_shift", [0, 1, 4, 10, 11, 12, 13, 15])
@pytest.mark.parametrize("pwl_lutram", [False, True])
def test_pwl_segment_edges(seg_shift, pwl_lutram):
    """Every segment boundary, the top segment and beyond (``(y >> seg_shift) + 8 >= 16`` must
    clamp to 15, not wrap) and the most negative input, on a table whose lines all differ."""
    cfg = get_config("tiny").with_(pwl_lutram=pwl_lutram)
    p = cfg.pwl_frac
    table = segment_table(cfg, seg_shift)
    accs = segment_edges(cfg, seg_shift)
    rows = [accs[i:i + cfg.tn] for i in range(0, len(accs), cfg.tn)]
    outs, sats = run_nfu3(cfg, rows, 0, act="pwl", table=table)
    # the contract written out with Python integers, apart from fixed.py
    want, want_sats = [], 0
    for acc in accs:
        y = min(cfg.qmax, max(cfg.qmin, acc))
        seg = min(15, max(0, (y >> seg_shift) + 8))
        line = (table.slope[seg] * y + table.icpt[seg] + (1 << (p - 1))) >> p
        want.append(min(cfg.qmax, max(cfg.qmin, line)))
        want_sats += (y != acc) + (line != want[-1])
    assert [v for row in outs for v in row] == want
    assert sats == want_sats
    count = fixed.SatCount()
    y = fixed.requant(torch.tensor(rows), 0, cfg.dw, count)
    assert outs == fixed.pwl_apply(y, table, count).tolist()
    assert sats == count.events


def test_pwl_sigmoid_holds_beyond_the_top_segment():
    """A sigmoid table (f = 10, one real unit a segment) stays near the real sigmoid at every
    segment edge, above the covered range (``y >= 8.0``: about 1.0, not segment 0's 0.0) and
    below it."""
    cfg = get_config("tiny")
    table = fixed.pwl_table("sigmoid", 10, cfg.dw, 10)
    accs = segment_edges(cfg, 10)
    rows = [accs[i:i + cfg.tn] for i in range(0, len(accs), cfg.tn)]
    outs, _ = run_nfu3(cfg, rows, 0, act="pwl", table=table)
    y = torch.tensor(accs).clamp(cfg.qmin, cfg.qmax)
    err = (torch.tensor(outs).flatten() / 1024.0 - torch.sigmoid(y / 1024.0)).abs().max()
    # the chords' error inside [-8, 8) plus their drift out to |y| = 32
    assert err.item() < 0.02
    assert outs == fixed.pwl_apply(torch.tensor(rows).clamp(cfg.qmin, cfg.qmax),
                                   table).tolist()


@pytest.mark.parametrize("pwl_lutram", [False, True])
def test_pwl_lines_exactly_on_and_past_the_rails(pwl_lutram):
    """Lines landing exactly on ``qmax + 1`` / ``qmin - 1`` saturate and count; lines landing
    exactly on ``qmax`` / ``qmin`` (after the rounding term) pass and do not count."""
    cfg = get_config("tiny").with_(pwl_lutram=pwl_lutram)
    p, qmin, qmax = cfg.pwl_frac, cfg.qmin, cfg.qmax
    half = 1 << (p - 1)
    seg_shift = 4
    slope, icpt = [0] * 16, [0] * 16
    # constant lines in segments 2 .. 10 (input (s-8)*16 + 3 picks segment s)
    icpt[2:11] = [(qmax + 1) << p, qmax << p, qmin << p, (qmin - 1) << p, (qmax + 2) << p,
                  (qmax << p) + half - 1, (qmax << p) + half, (qmin << p) - half,
                  (qmin << p) - half - 1]
    # y + 1 in the top segment, y - 1 in the bottom one (slope 1.0)
    slope[15], icpt[15] = 1 << p, 1 << p
    slope[0], icpt[0] = 1 << p, -(1 << p)
    table = fixed.PwlTable(slope, icpt, seg_shift, cfg.dw)
    cases = [  # (input, output, saturates)
        (-93, qmax, True), (-77, qmax, False), (-61, qmin, False), (-45, qmin, True),
        (-29, qmax, True), (-13, qmax, False), (3, qmax, True), (19, qmin, False),
        (35, qmin, True),
        (qmax, qmax, True), (qmax - 1, qmax, False), (qmin, qmin, True), (qmin + 1, qmin, False),
        (100, 0, False), (-100, 0, False), (130, 131, False),
    ]
    accs = [c[0] for c in cases]
    rows = [accs[i:i + cfg.tn] for i in range(0, len(accs), cfg.tn)]
    outs, sats = run_nfu3(cfg, rows, 0, act="pwl", table=table)
    assert [v for row in outs for v in row] == [c[1] for c in cases]
    assert sats == sum(c[2] for c in cases) == 7
    count = fixed.SatCount()
    assert outs == fixed.pwl_apply(torch.tensor(rows), table, count).tolist()
    assert count.events == 7
