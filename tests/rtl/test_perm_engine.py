"""The permuted-feature FC path of the layer engine in amaranth.sim, against fixed.run_layer."""

import pytest
import torch

from slimnfu import fixed
from slimnfu.compress import permfc
from slimnfu.formats import perm
from slimnfu.config import CONFIGS, LayerDesc, PassDesc, as_pass
from slimnfu.formats import layout
from slimnfu.contract import descriptor_value
from slimnfu.rtl.engine import LayerEngine
from slimnfu.contract import LoadSel, load_addr_width
from slimnfu.rtl.perm_addr import PermAddrGen
from slimnfu.formats.base import Words
from slimnfu.sim.amaranth_driver import EngineDriver, simulate

CFG = CONFIGS["tiny"].with_(perm={"depth": 64, "quadratic": True})
#: ``perm``'s default generator: affine rows only (x and its increment the loop's registers).
AFFINE = CONFIGS["tiny"].with_(name="affine", perm={"depth": 64})
#: An 8x8 build: its generator's lane addresses are two chains, of lanes 0-4 and of 5-7 from a
#: head lane with an offset register (one chain's 14 stages would outlast the engine's 11-cycle
#: lead); ``tiny``'s are one chain.
TI8 = CFG.with_(name="ti8", tn=8, ti=8)


def _sequence(gen, length, cfg):
    """A common sequence ``s`` (the first draw of ``_layer``'s generator), both extremes in it."""
    s = torch.randint(cfg.qmin, cfg.qmax + 1, (length,), generator=gen)
    s[0], s[-1] = cfg.qmin, cfg.qmax
    return s


def _s_words(s, cfg):
    """``s`` as loaded: a value into every SB bank."""
    return Words(LoadSel.SB, layout.pack_perm_s(s, cfg), cfg.dw, lanes=cfg.tn * cfg.ti).loaded


def _layer(m, n, variant, seed, groups=1, family="affine", cfg=CFG):
    CFG = cfg
    gen = torch.Generator().manual_seed(seed)
    s = _sequence(gen, groups * n, CFG)
    if variant == "affine":
        a, b, e = permfc.random_generated_params(m, n, family, seed)
        group = torch.arange(m) % groups
        idx = group.reshape(-1, 1) * n + perm.generated_perms(a, b, e, n)
        loads = [(LoadSel.PERM_PARAM, layout.pack_perm_params(a, b, CFG, n, e, group)),
                 (LoadSel.SB, _s_words(s, CFG))]
    else:
        # the engine runs an index layer as its gathered weights (PermIndexFormat.passes)
        idx = torch.stack([torch.randperm(n, generator=gen) for _ in range(m)])
        loads = [(LoadSel.SB, layout.pack_weights(s[idx], CFG))]
    x = torch.randint(CFG.qmin, CFG.qmax + 1, (n,), generator=gen)
    b = torch.randint(-1 << 20, 1 << 20, (m,), generator=gen)
    desc = PassDesc(LayerDesc("fc", n, m, shift=14, act="relu"), perm=variant)
    w = s[idx]
    want = fixed.run_layer(desc, x.unsqueeze(0), w, b, CFG.dw)[0]
    return desc, x, b, loads, want


def _run(jobs, cfg=CFG):
    CFG = cfg
    dut = LayerEngine(CFG)
    drv = EngineDriver(dut)
    results = []

    async def bench(ctx):
        for desc, x, b, loads, _ in jobs:
            await drv.load(ctx, LoadSel.NBIN, layout.pack_input(x, CFG))
            await drv.load(ctx, LoadSel.BIAS, layout.pack_bias(b, CFG))
            for sel, words in loads:
                await drv.load(ctx, sel, words)
            counters = await drv.run(ctx, descriptor_value(desc, CFG))
            words = await drv.read_nbout(ctx, desc.nbout_words(CFG))
            y = layout.unpack_output(words, as_pass(desc).layer.n_out, 1, 1, CFG).reshape(-1)
            results.append((y, counters))

    simulate(dut, bench)
    return results


@pytest.mark.parametrize("cfg", [CFG, TI8, AFFINE], ids=["tiny", "ti8", "affine"])
def test_perm_fc_bit_exact_and_full_rate(cfg):
    # N not a multiple of ti, M not a multiple of tn; the dense FC still runs on the same build.
    # Groups: the rows of one output tile read different sequences; quadratic permutations
    # (n = 24 and 18 have nonzero second differences) run on the same generator, whose lane
    # addresses are one chain on tiny and two (one from a head lane) on the 8x8 build.
    assert PermAddrGen.lane_span(cfg, LayerEngine.PERM_AHEAD) == (5 if cfg is TI8 else 4)
    jobs = [_layer(7, 13, "affine", 1, cfg=cfg), _layer(9, 10, "index", 2, cfg=cfg),
            _layer(4, 4, "affine", 3, cfg=cfg), _layer(5, 1, "index", 4, cfg=cfg),
            _layer(5, 11, "affine", 8, groups=5, cfg=cfg)]
    if cfg.perm.quadratic:
        jobs += [_layer(9, 24, "affine", 6, groups=2, family="quadratic", cfg=cfg),
                 _layer(6, 18, "affine", 7, groups=3, family="quadratic", cfg=cfg)]
    else:
        with pytest.raises(ValueError, match=r"row 0 is quadratic \(e=\d+\), but config "
                                             r"'affine' has perm.quadratic=False"):
            _layer(9, 24, "affine", 6, groups=2, family="quadratic", cfg=cfg)
    for m, n, seed in ((9, 24, 6), (6, 18, 7)):
        assert bool(permfc.random_generated_params(m, n, "quadratic", seed)[2].all())
    CFG = cfg
    dense = _layer(6, 11, "affine", 5, cfg=cfg)
    ddesc = LayerDesc("fc", 11, 6, shift=14, act="relu")
    gen = torch.Generator().manual_seed(9)
    w = torch.randint(-3000, 3000, (6, 11), generator=gen)
    dense_want = fixed.run_layer(ddesc, dense[1].unsqueeze(0), w, dense[2], CFG.dw)[0]
    jobs.append((ddesc, dense[1], dense[2], [(LoadSel.SB, layout.pack_weights(w, CFG))],
                 dense_want))
    for (desc, *_, want), (y, counters) in zip(jobs, _run(jobs, cfg)):
        assert torch.equal(y, want), desc
        assert counters["cycles"] == desc.dense_cycles(CFG) + LayerEngine.latency(CFG, desc)


#: A perm build with diannao's ti = tn = 16: its generator's 11 stages (every lane a head, with
#: an offset register) take all of the engine's lead, so the walk starts in the ``start`` cycle
#: itself.
WIDE = CONFIGS["tiny"].with_(name="wide", tn=16, ti=16, nbin_depth=16, sb_depth=64,
                             nbout_depth=16, bias_depth=4, perm={"depth": 64, "quadratic": True})
#: A 20x20 build: its generator's 12 stages outlast the lead by one, so its affine passes wait
#: a cycle in the delay line, which must hold no step of the pass before.
W20 = WIDE.with_(name="w20", tn=20, ti=20)


@pytest.mark.parametrize("cfg, dense_latency, gen_stages, wait",
                         [(CFG, 30, 8, 0), (WIDE, 31, 11, 0), (W20, 32, 12, 1)],
                         ids=["tiny", "wide", "w20"])
def test_affine_passes_pay_only_what_the_generator_lead_does_not_hide(cfg, dense_latency,
                                                                     gen_stages, wait):
    """In one perm build, a dense FC, an affine FC, the dense FC and the affine FC again run
    back to back (each ``start`` the cycle after the previous ``done``; the same input, bias,
    ``s`` and output words; SB holds the dense weights at 0 and ``s`` from word 16), then, SB
    holding an index layer's gathered weights at 0, an index FC, the affine FC and the index
    FC again: the dense and index passes take the non-permuted latency, the affine ones too on
    ``tiny`` (the engine feeds the generator the pass's steps 12 cycles ahead of the sequencer,
    more than its 9 stages) and on the 16x16 build (12 stages), on the 20x20 build the one of
    its generator's 13 stages that the lead does not hide (pinned by number); all bit-exact.
    So no pass finds a step of the pass before it in the generator or the delay line."""
    desc, x, b, loads, want = _layer(6, 11, "affine", 5, cfg=cfg)
    a, pb, _ = permfc.random_generated_params(6, 11, "affine", 5)
    s = _sequence(torch.Generator().manual_seed(5), 11, cfg)
    loads = [(LoadSel.PERM_PARAM, layout.pack_perm_params(a, pb, cfg, 11, base=16)),
             (LoadSel.SB, [0] * 16 + _s_words(s, cfg))]
    ddesc = LayerDesc("fc", 11, 6, shift=14, act="relu")
    w = torch.randint(-3000, 3000, (6, 11), generator=torch.Generator().manual_seed(9))
    dense_want = fixed.run_layer(ddesc, x.unsqueeze(0), w, b, cfg.dw)[0]
    idx = torch.stack([torch.randperm(11, generator=torch.Generator().manual_seed(20 + r))
                       for r in range(6)])
    idesc = PassDesc(ddesc, perm="index")
    assert PermAddrGen.latency(cfg, LayerEngine.PERM_AHEAD) == gen_stages
    assert LayerEngine.perm_stages(cfg, desc) == LayerEngine.affine_wait(cfg) == wait
    assert LayerEngine.latency(cfg, ddesc) == LayerEngine.latency(cfg, idesc) == dense_latency
    assert LayerEngine.latency(cfg, desc) == dense_latency + wait
    steps = ddesc.dense_cycles(cfg)
    assert steps == desc.dense_cycles(cfg) == idesc.dense_cycles(cfg)
    words_out = desc.nbout_words(cfg)
    dut = LayerEngine(cfg)
    drv = EngineDriver(dut)
    got = []

    async def bench(ctx):
        await drv.load(ctx, LoadSel.NBIN, layout.pack_input(x, cfg))
        await drv.load(ctx, LoadSel.BIAS, layout.pack_bias(b, cfg))
        for sel, words in loads:
            await drv.load(ctx, sel, words)
        await drv.load(ctx, LoadSel.SB, layout.pack_weights(w, cfg))
        for k, run in enumerate((ddesc, desc, ddesc, desc, "index", idesc, desc, idesc)):
            if run == "index":
                await drv.load(ctx, LoadSel.SB, layout.pack_weights(w_index, cfg))
                continue
            counters = await drv.run(ctx, descriptor_value(run, cfg))
            words = await drv.read_nbout(ctx, words_out)
            got.append((counters["cycles"], layout.unpack_output(words, 6, 1, 1, cfg).reshape(-1)))

    w_index = s[idx]
    simulate(dut, bench)
    cycles = [c for c, _ in got]
    assert cycles == [steps + dense_latency + (run is desc) * wait
                      for run in (ddesc, desc, ddesc, desc, idesc, desc, idesc)]
    index_want = fixed.run_layer(ddesc, x.unsqueeze(0), w_index, b, cfg.dw)[0]
    wants = (dense_want, want, dense_want, want, index_want, want, index_want)
    for k, ((_, y), expect) in enumerate(zip(got, wants)):
        assert torch.equal(y, expect), k


def test_sequence_deeper_than_the_buffers_loads_whole():
    # s (4 groups of 60 = 240 entries) reaches past the neuron buffers' and bias depths: SB
    # holds it (perm.depth <= sb_depth), and the load address spans it.
    cfg = CONFIGS["tiny"].with_(nbin_depth=32, sb_depth=256, nbout_depth=32, bias_depth=16,
                                perm={"depth": 256})
    assert load_addr_width(cfg) == 8
    job = _layer(8, 60, "affine", 11, groups=4, cfg=cfg)
    (y, counters), = _run([job], cfg)
    assert torch.equal(y, job[-1])
    assert counters["cycles"] == job[0].dense_cycles(cfg) + LayerEngine.latency(cfg, job[0])


def test_components_refuse_perm_off():
    with pytest.raises(ValueError, match="has perm=False"):
        PermAddrGen(CONFIGS["tiny"].with_(perm=False), LayerEngine.PERM_AHEAD)
    with pytest.raises(ValueError, match="lead must be an int >= 0, not -1"):
        PermAddrGen(CFG, -1)
    with pytest.raises(ValueError, match=r"perm\.depth=2048 exceeds sb_depth=1024: the common "
                                         r"sequence s is held in SB"):
        CONFIGS["tiny"].with_(perm={"depth": 2048})


def test_descriptor_refuses_perm_layer_without_perm_config():
    desc = PassDesc(LayerDesc("fc", 10, 4), perm="affine")
    with pytest.raises(ValueError, match="has perm=False"):
        descriptor_value(desc, CONFIGS["small"])
    # an index pass is a dense pass to the engine (its gathered weights in SB)
    index = PassDesc(LayerDesc("fc", 10, 4), perm="index")
    assert descriptor_value(index, CONFIGS["small"]) == descriptor_value(index.layer,
                                                                         CONFIGS["small"])
    with pytest.raises(ValueError, match=r"perm\.depth=64"):
        PassDesc(LayerDesc("fc", 65, 4), perm="affine").check(CFG)
    # an index layer runs as its gathered weights: s is not on chip
    PassDesc(LayerDesc("fc", 65, 4), perm="index").check(CFG)


def test_affine_layer_needs_no_sb_words():
    cfg = CONFIGS["tiny"].with_(perm=True)
    big = PassDesc(LayerDesc("fc", 784, 300), perm="affine")
    assert big.sb_words(cfg) == 0
    big.check(cfg)
    with pytest.raises(ValueError, match="sb_depth"):
        PassDesc(LayerDesc("fc", 784, 300), perm="index").check(cfg)


def _relaid_job(c, hw, m, seed, groups=1, cfg=CFG):
    """A perm_affine FC layer over a ``c x hw`` conv output, re-laid into the buffer's order
    (junk in the padding lanes), and its golden output on the flattened values."""
    from slimnfu.formats.qmodel import QLayer

    n = c * hw
    gen = torch.Generator().manual_seed(seed)
    s = torch.randint(cfg.qmin, cfg.qmax + 1, (groups * n,), generator=gen)
    a, b, _ = permfc.random_generated_params(m, n, "affine", seed)
    group = torch.arange(m) % groups
    rec = perm.PermAffineWeights(s, a, b, None, group if groups > 1 else None)
    w = s[rec.indices(n)]
    bias = torch.randint(-1 << 20, 1 << 20, (m,), generator=gen)
    desc = LayerDesc("fc", n, m, shift=14, act="relu")
    ql = QLayer("fc1", desc, w, bias, 0, 14, 0, None, format="perm_affine", compressed=rec)
    x = torch.randint(cfg.qmin, cfg.qmax + 1, (n,), generator=gen)
    want = fixed.run_layer(desc, x.unsqueeze(0), w, bias, cfg.dw)[0]
    src = layout.buffer_order(c, hw, 1, cfg.tn)
    relaid = ql.weight_format.relayout_input(ql, src)
    assert relaid is not None and relaid.compressed.order == (c, hw, cfg.tn)
    (p,) = relaid.weight_format.check(relaid, cfg)
    assert p.desc.flatten == (c, hw) and p.desc.layer.n_in == src.numel()
    xbuf = torch.where(src < 0, cfg.qmax, x[src.clamp(min=0)])     # junk in padding lanes
    loads = [(w.sel, w.loaded) for k, w in p.memories.items() if k != "bias"]
    return p.desc, xbuf, bias, loads, want


@pytest.mark.parametrize("cfg", [CFG, TI8, AFFINE], ids=["tiny", "ti8", "affine"])
def test_relaid_affine_fc_reads_the_buffer_order(cfg):
    """A perm_affine FC after a conv output of c % tn != 0 channels and hw > 1 pixels runs on
    the values where the conv wrote them (two-level address walk, padding lanes dropped),
    bit-exact with the model's layer on the flattened output, at the re-laid dense cycles; a
    plain affine layer and a quadratic one follow on the same build (one lane chain on tiny, a
    second from a head lane on the 8x8 build)."""
    jobs = [_relaid_job(5, 3, 7, 21, cfg=cfg), _relaid_job(6, 4, 9, 22, groups=2, cfg=cfg),
            _relaid_job(3, 2, 4, 23, cfg=cfg), _layer(7, 13, "affine", 1, cfg=cfg)]
    if cfg.perm.quadratic:
        jobs.append(_layer(9, 24, "affine", 6, groups=2, family="quadratic", cfg=cfg))
    assert jobs[0][0].flatten == (5, 3) and jobs[0][0].layer.n_in == 24
    CFG = cfg
    for (desc, *_, want), (y, counters) in zip(jobs, _run(jobs, cfg)):
        assert torch.equal(y, want), desc
        assert counters["cycles"] == desc.dense_cycles(CFG) + LayerEngine.latency(CFG, desc)
