import shutil
import subprocess

import pytest
import torch

from slimnfu import fixed
from slimnfu.config import AccelConfig, LayerDesc, PassDesc, as_pass, get_config
from slimnfu.rtl.engine import LayerEngine
from slimnfu.rtl.perm_addr import PermAddrGen
from slimnfu.contract import load_data_width
from slimnfu.rtl.ikr_sequencer import IkrSequencer
from slimnfu.rtl.loop_nest import LoopNest
from slimnfu.rtl.nfu1 import NFU1
from slimnfu.rtl.nfu2 import NFU2
from slimnfu.rtl.nfu3 import NFU3
from slimnfu.rtl.sequencer import Sequencer
from slimnfu.sim.amaranth_driver import (EngineDriver, run_layer_amaranth, run_layers_amaranth,
                                         simulate)
from slimnfu.sim.cases import case_job, make_case
from slimnfu.sim.ikr_cases import ikr_case, random_ikr_layer
from slimnfu.sim.perm_cases import make_perm_case

T2 = AccelConfig("t2", tn=2, ti=2, dw=16, acc=48, nbin_depth=256, sb_depth=256,
                 nbout_depth=256, bias_depth=16)


def rail_tensor(gen, shape, cfg, rails=0.25, span=None):
    """Random dw-bit values, a fraction ``rails`` of them at qmin or qmax."""
    lo, hi = (cfg.qmin, cfg.qmax) if span is None else (-span, span)
    x = torch.randint(lo, hi + 1, shape, generator=gen)
    pick = torch.rand(shape, generator=gen)
    x = torch.where(pick < rails / 2, torch.full_like(x, cfg.qmin), x)
    return torch.where(pick > 1 - rails / 2, torch.full_like(x, cfg.qmax), x)


def make_job(cfg, desc, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (1, desc.n_in) if desc.kind == "fc" else (1, desc.n_in, desc.h_in, desc.w_in)
    job = dict(desc=desc, x=rail_tensor(gen, shape, cfg), w=None, b=None, pwl=None)
    if not desc.is_pool:
        wshape = (desc.n_out, desc.n_in) + (() if desc.kind == "fc" else (desc.k, desc.k))
        job["w"] = rail_tensor(gen, wshape, cfg, rails=0.1)
        job["b"] = torch.randint(-(1 << 36), 1 << 36, (desc.n_out,), generator=gen)
    if desc.act == "pwl":
        job["pwl"] = fixed.pwl_table("tanh" if seed % 2 else "sigmoid", 12, cfg.dw,
                                     desc.seg_shift)
    return job


def check_jobs(cfg, layers):
    jobs = [make_job(cfg, desc, seed) for seed, desc in enumerate(layers)]
    results, wall = run_layers_amaranth(cfg, [dict(j) for j in jobs])
    for job, (y, counters) in zip(jobs, results):
        desc = job["desc"]
        count = fixed.SatCount()
        want = fixed.run_layer(desc, job["x"], job["w"], job["b"], cfg.dw, job["pwl"], count)
        assert torch.equal(y, want), desc
        dense = desc.dense_cycles(cfg)
        assert counters["steps"] == dense, desc
        assert counters["cycles"] == dense + LayerEngine.latency(cfg, desc), desc
        assert counters["mults"] == (0 if desc.is_pool else dense * cfg.tn * cfg.ti), desc
        assert counters["sat_events"] == count.events, desc
    return results


def test_tiny_layers_bit_exact():
    layers = [
        LayerDesc("conv", 5, 6, 4, 4, k=1, shift=14, act="relu"),
        LayerDesc("conv", 6, 5, 5, 5, k=3, stride=2, pad=1, shift=18, act="pwl", seg_shift=12),
        LayerDesc("conv", 3, 5, 5, 4, k=5, stride=1, pad=2, shift=16),
        LayerDesc("conv", 4, 4, 6, 6, k=3, stride=1, pad=0, shift=0),
        LayerDesc("fc", 10, 7, shift=17, act="relu"),
        LayerDesc("maxpool", 6, 6, 4, 4, k=2, stride=2),
        LayerDesc("avgpool", 5, 5, 4, 6, k=2, stride=2, act="pwl", seg_shift=10),
    ]
    results = check_jobs(get_config("tiny"), layers)
    assert sum(c["sat_events"] for _, c in results) > 0  # the rails do saturate somewhere


@pytest.mark.parametrize("product_stages", [0, 2])
def test_2x2_layers_bit_exact(product_stages):
    """Every layer kind, bit-exact with exact cycles and counters, also with fabric registers
    after the multipliers (the latency grows by ``product_stages``)."""
    cfg = T2.with_(product_stages=product_stages)
    assert LayerEngine.latency(cfg, LayerDesc("fc", 5, 3)) == \
        LayerEngine.latency(T2, LayerDesc("fc", 5, 3)) + product_stages
    layers = [
        LayerDesc("conv", 3, 3, 4, 5, k=3, stride=1, pad=1, shift=16, act="relu"),
        LayerDesc("conv", 3, 5, 5, 5, k=1, stride=2, shift=15),
        LayerDesc("conv", 1, 1, 3, 3, k=3, stride=1, pad=0, shift=31),
        LayerDesc("fc", 5, 3, shift=16, act="pwl", seg_shift=11),
        LayerDesc("maxpool", 3, 3, 4, 4, k=2, stride=1, act="relu"),
        LayerDesc("avgpool", 3, 3, 4, 4, k=2, stride=2),
    ]
    check_jobs(cfg, layers)


def test_single_layer_api_returns_counters_and_wall_time():
    cfg = get_config("tiny")
    desc = LayerDesc("conv", 2, 3, 3, 3, k=3, pad=1, shift=10)
    job = make_job(cfg, desc, 7)
    x = job["x"][0]  # no batch dim: none in the result either
    y, counters, wall = run_layer_amaranth(cfg, desc, x, job["w"], job["b"])
    assert torch.equal(y, fixed.run_layer(desc, job["x"], job["w"], job["b"])[0])
    assert wall > 0 and counters["sim_cycles"] >= counters["cycles"]


def test_bad_inputs_stop_before_simulation():
    cfg = get_config("tiny")
    desc = LayerDesc("conv", 2, 3, 3, 3, k=3, pad=1)
    w, b = torch.zeros(3, 2, 3, 3), torch.zeros(3)
    with pytest.raises(ValueError, match=r"x has shape \(2, 4, 3\); layer conv needs "
                                         r"\(2, 3, 3\) or \(1, \*\(2, 3, 3\)\)"):
        run_layer_amaranth(cfg, desc, torch.zeros(2, 4, 3), w, b)
    with pytest.raises(ValueError, match="act='pwl' needs a PwlTable"):
        pwl = LayerDesc("fc", 4, 4, act="pwl")
        run_layer_amaranth(cfg, pwl, torch.zeros(4), torch.zeros(4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="needs 2304 output words .* nbout_depth=1024"):
        big = LayerDesc("conv", 16, 36, 16, 16, k=1)
        run_layer_amaranth(cfg.with_(nbout_depth=1024), big, torch.zeros(16, 16, 16),
                           torch.zeros(36, 16), torch.zeros(36))
    with pytest.raises(TypeError, match="LayerEngine: cfg must be an AccelConfig"):
        LayerEngine("tiny")


def test_load_data_width():
    assert load_data_width(get_config("tiny")) == 4 * 4 * 16
    assert load_data_width(get_config("diannao")) == 16 * 16 * 16
    assert load_data_width(T2) == 2 * 48  # a bias word is wider than an SB word here


def test_tiny_verilog_converts_and_compiles(tmp_path):
    from amaranth.back import verilog
    text = verilog.convert(LayerEngine(get_config("tiny")), name="slimnfu_engine",
                           emit_src=False)
    for port in ("start", "busy", "done", "load_en", "load_sel", "load_addr", "load_data",
                 "rd_addr", "rd_data", "cycles", "steps", "mults", "sat_events", "desc"):
        assert f" {port}" in text, port
    if shutil.which("iverilog") is None:
        pytest.skip("iverilog not installed")
    (tmp_path / "engine.v").write_text(text)
    proc = subprocess.run(["iverilog", "-g2012", "-o", str(tmp_path / "engine.vvp"),
                           str(tmp_path / "engine.v")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


#: Each feature set's layers with their engine cycle counts written out on ``PINNED_CFG``
#: (``tiny``, ti = 4): steps + 30, an affine pass too (the permutation address generator's
#: 8 stages, PINNED_PERM_STAGES, are hidden: PINNED_AFFINE_WAIT) and an IKR pass + 4 more (the
#: IKR sequencer's output registers, PINNED_IKR_STAGES), whatever else the build has. The
#: latency is pinned here by number, so changing the pipeline is a deliberate edit.
PINNED_LAYERS = {
    "dense": [(LayerDesc("conv", 2, 3, 4, 4, k=3, shift=12), 2 * 2 * 9 + 30),
              (LayerDesc("maxpool", 4, 4, 4, 4, k=2, stride=2), 2 * 2 * 4 + 30)],
    # 4 groups of max(ikr_n, k) = 4 cycles, plus the last group's ikr_n steps
    "ikr": [(PassDesc(LayerDesc("conv", 2, 3, 4, 4, k=3, shift=12), ikr_n=4),
             4 * 4 + 4 + 30 + 4)],
    # 5 inputs: 2 input tiles of one output tile; an index pass runs its gathered weights, an
    # affine pass's steps enter the generator ahead of the sequencer's: on tiny neither pays a
    # stage (PINNED_AFFINE_WAIT); then affine passes of 1 input tile and 2
    # output tiles, and of 3 input tiles and 2 output tiles (the engine's walk of their steps)
    "perm": [(PassDesc(LayerDesc("fc", 5, 3), perm="affine"), 2 + 30),
             (PassDesc(LayerDesc("fc", 5, 3), perm="index"), 2 + 30),
             (PassDesc(LayerDesc("fc", 5, 3), perm="affine"), 2 + 30),
             (PassDesc(LayerDesc("fc", 3, 6), perm="affine"), 2 + 30),
             (PassDesc(LayerDesc("fc", 9, 6), perm="affine"), 6 + 30)],
    "kgate": [(PassDesc(LayerDesc("conv", 2, 3, 4, 4, k=3, shift=12), lane_k=(1, 3, 1)),
               2 * 2 * 9 + 30)],
}

#: Per config: (LayerEngine.latency, NFU1, NFU2, NFU3 latencies, NFU-2's adder tree stages
#: and accumulator chunks). The tree has ceil(log2 ti) levels, registered every two: ti = 1
#: none, 2..4 one, 8..16 two; the accumulator adds 24 bits a stage: acc 48 two, 24 one.
#: PermAddrGen.latency: the constant multiples (log2 of ti*ti doublings and their adds; one more
#: stage when q0 or a head lane's offset is among the last: the loop loads them a stage ahead),
#: the loop and the lane chains (one of ti lanes on tiny, t2, t1, within the engine's lead; two
#: of 5 and 3 lanes on small; a head per lane on diannao), the last lanes' registers the
#: addresses.
PINNED_PERM_STAGES = {"tiny": 7, "small": 11, "diannao": 11, "t2": 4, "t1": 2}
#: LayerEngine.perm_stages of an affine pass: the generator's stages less the 11 cycles by which
#: the engine feeds it the pass's steps ahead of the sequencer.
PINNED_AFFINE_WAIT = {"tiny": 0, "small": 0, "diannao": 0, "t2": 0, "t1": 0}
#: IkrSequencer.OUTPUT_STAGES: the window origin and column, then the fill address, then the
#: block RAMs' output registers in front of the pattern decoder, then the window bank's
#: shift register (the swap copies the bank the cycle after its last column lands): the window
#: decoder (``ikr.lanes`` off); the lane unit (the default) has its own
#: (:data:`slimnfu.rtl.ikr_lane_unit.IkrLaneUnit.OUTPUT_STAGES`).
PINNED_IKR_STAGES = {False: 4, True: 5}

PINNED_LATENCIES = {
    "tiny": (30, 2, 3, 9, 1, 2),
    "small": (32, 3, 4, 9, 2, 2),
    "diannao": (31, 2, 4, 9, 2, 2),
    "t2": (30, 2, 3, 9, 1, 2),
    "t1": (28, 2, 1, 9, 0, 1),
}


@pytest.mark.parametrize("name", sorted(PINNED_LATENCIES))
def test_latency_per_config_pinned(name):
    """The pipeline depth follows the config: the engine's latency and its parts by number."""
    cfg = {"t2": T2, "t1": AccelConfig("t1", tn=1, ti=1, dw=8, acc=24)}.get(name)
    cfg = cfg or get_config(name)
    dense, permuted = LayerDesc("fc", 5, 3), PassDesc(LayerDesc("fc", 5, 3), perm="affine")
    got = (LayerEngine.latency(cfg, dense), NFU1.latency(cfg), NFU2.latency(cfg),
           NFU3.latency(cfg), NFU2.tree_stages(cfg), NFU2.acc_chunks(cfg))
    assert got == PINNED_LATENCIES[name]
    assert LayerEngine.latency(cfg, dense) == (LayerEngine.FIRST_STEP
                                               + LayerEngine.write_delay(cfg, dense))
    # ikr and kgate add no stage to a dense pass; perm adds to the affine passes only the
    # address generator's stages that the engine's lead does not hide (the buffers are read
    # when the s banks are addressed), ikr its sequencer's output registers to the IKR passes
    # only
    for feature in ("ikr", "kgate"):
        assert LayerEngine.latency(cfg.with_(**{feature: True}), dense) == got[0]
    ikr_pass = PassDesc(LayerDesc("conv", 2, 3, 4, 4, k=3), ikr_n=4)
    for lanes, stages in PINNED_IKR_STAGES.items():
        ikr = cfg.with_(ikr={"lanes": lanes})
        assert LayerEngine.ikr_stages(ikr, dense) == 0
        assert LayerEngine.ikr_stages(ikr, ikr_pass) == stages
        assert LayerEngine.latency(ikr, ikr_pass) == got[0] + stages
    perm = cfg.with_(perm={"depth": min(1024, cfg.sb_depth)})
    assert PermAddrGen.latency(perm, LayerEngine.PERM_AHEAD) == PINNED_PERM_STAGES[name]
    assert LayerEngine.perm_stages(perm, dense) == 0
    assert LayerEngine.latency(perm, dense) == got[0]
    assert LayerEngine.PERM_AHEAD == 11
    assert LayerEngine.perm_stages(perm, permuted) == PINNED_AFFINE_WAIT[name]
    assert LayerEngine.latency(perm, permuted) == got[0] + PINNED_AFFINE_WAIT[name]
    assert LayerEngine.latency(perm, PassDesc(dense, perm="index")) == got[0]


def pinned_case(desc, cfg, seed):
    """A random :class:`slimnfu.sim.cases.Case` of ``desc`` in the format its fields name."""
    run = as_pass(desc)
    layer = run.layer
    if run.ikr_n:
        return ikr_case("ikr", run, *random_ikr_layer(run, 2, seed, cfg), cfg)
    if run.perm != "none":
        return make_perm_case("perm", layer.n_in, layer.n_out, run.perm, cfg, seed)
    return make_case(layer.kind, run, cfg, seed, shift=layer.shift)


@pytest.mark.parametrize("features", [(), ("ikr",), ("perm",), ("kgate",),
                                      ("ikr", "perm", "kgate")],
                         ids=["dense", "ikr", "perm", "kgate", "all"])
def test_latencies_pinned(features):
    """The pipeline constants by number, and the cycles each feature set's engine takes for
    a dense and a pooling layer and for the layers of its features, one after another on one
    engine: with perm, no pass pays the address generator's stages on tiny."""
    assert LoopNest.SETUP_CYCLES == Sequencer.SETUP_CYCLES == IkrSequencer.SETUP_CYCLES == 12
    params = {"ikr": {"kmax": 3, "index_depth": 8, "lanes": False}, "perm": {"depth": 64},
              "kgate": True}
    cfg = get_config("tiny").with_(nbin_depth=64, sb_depth=64, nbout_depth=64, bias_depth=8,
                                   **{f: params[f] for f in features})
    assert PermAddrGen.latency(get_config("tiny").with_(perm=True), LayerEngine.PERM_AHEAD) == \
        PINNED_PERM_STAGES["tiny"]
    layers = [l for f in ("dense",) + features for l in PINNED_LAYERS[f]]
    if "perm" in features:
        # a dense layer after the permuted one: the delay line holds no step of it
        layers.append(PINNED_LAYERS["dense"][0])
    jobs = [(case_job(pinned_case(desc, cfg, seed), cfg), cycles)
            for seed, (desc, cycles) in enumerate(layers)]
    assert [job["expect"]["counters"]["cycles"] for job, _ in jobs] == [c for _, c in jobs]
    dut = LayerEngine(cfg)
    drv = EngineDriver(dut)
    got = []

    async def bench(ctx):
        for job, _ in jobs:
            for sel, words in job["loads"]:
                await drv.load(ctx, sel, words)
            got.append((await drv.run(ctx, job["desc_value"]))["cycles"])

    simulate(dut, bench)
    assert got == [cycles for _, cycles in jobs]


def test_ping_pong_buffers_and_weight_loads_while_busy():
    """A maxpool reads buffer 0 (filled through ``nb_*``) and writes buffer 1; while it runs
    the next conv's SB and bias words are loaded; the conv then reads buffer 1 and writes
    buffer 0, and buffer 1 still holds the pool's output."""
    from slimnfu.contract import LoadSel, descriptor_value
    from slimnfu.formats import layout
    from slimnfu.formats.dense import dense_memories

    cfg = T2
    pool = LayerDesc("maxpool", 2, 2, 4, 4, k=2, stride=2)
    conv = LayerDesc("conv", 2, 2, 2, 2, k=1, shift=12)
    job = make_job(cfg, conv, 3)
    x = rail_tensor(torch.Generator().manual_seed(4), (1, 2, 4, 4), cfg)
    mid = fixed.run_layer(pool, x, None, None, cfg.dw)
    want = fixed.run_layer(conv, mid, job["w"], job["b"], cfg.dw)
    dut = LayerEngine(cfg)
    drv = EngineDriver(dut)
    got = {}

    async def bench(ctx):
        for a, word in enumerate(layout.pack_input(x[0], cfg)):
            ctx.set(dut.nb_en, 1)
            ctx.set(dut.nb_addr, a)
            ctx.set(dut.nb_data, word)
            await ctx.tick()
        ctx.set(dut.nb_en, 0)
        ctx.set(dut.desc.as_value(), descriptor_value(as_pass(pool), cfg))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for mem in dense_memories(conv, job["w"], job["b"], None, cfg).values():
            assert mem.sel != LoadSel.NBIN
            await drv.load(ctx, mem.sel, mem.words)
        got["busy_after_loads"] = ctx.get(dut.busy)
        await ctx.tick().until(dut.done)
        ctx.set(dut.in_buf, 1)
        ctx.set(dut.out_buf, 0)
        await drv.run(ctx, descriptor_value(as_pass(conv), cfg))
        got["conv"] = await drv.read_nbout(ctx, conv.nbout_words(cfg))
        ctx.set(dut.out_buf, 1)
        got["pool"] = await drv.read_nbout(ctx, pool.nbout_words(cfg))

    simulate(dut, bench)
    assert got["busy_after_loads"] == 1
    assert torch.equal(layout.unpack_output(got["pool"], 2, 2, 2, cfg), mid[0])
    assert torch.equal(layout.unpack_output(got["conv"], 2, 2, 2, cfg), want[0])
