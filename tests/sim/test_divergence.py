"""The first divergence of a network run: the write cycle of an output (checked against the
engine in amaranth.sim), the report on results broken by hand, the waveform window, and a ROM
word broken on purpose in the accelerator's Verilog."""

import dataclasses
import json

import pytest
import torch

from slimnfu.compress.quant import int_forward_layers, quantize_input
from slimnfu.config import CONFIGS, LayerDesc, PassDesc
from slimnfu.contract import LoadSel
from slimnfu.formats import layout
from slimnfu.formats.ikr import IkrWeights
from slimnfu.gen.compiler import compile_model, config_for
from slimnfu.rtl.engine import LayerEngine
from slimnfu.sim.amaranth_driver import EngineDriver, simulate
from slimnfu.sim.cases import Case, case_job, read_case, reference
from slimnfu.sim.divergence import first_divergence, save_divergence, vcd_window, write_cycle
from slimnfu.sim.network import expected_cycles, layer_schedule

CFG = CONFIGS["tiny"].with_(name="tiny_wc", ikr={"lanes": False}, kgate=True, nbin_depth=256,
                            sb_depth=256, nbout_depth=256, bias_depth=8)


LANES_CFG = CFG.with_(name="tiny_wc_lanes", ikr={"lanes": True, "kmax": 3, "index_depth": 256})


def _case(desc, seed, ikr=None, cfg=CFG):
    """Small operands (no saturation), so that a second run with another seed changes every
    output."""
    g = torch.Generator().manual_seed(seed)
    d = desc.layer
    x = torch.randint(-4, 5, (d.n_in, d.h_in, d.w_in), generator=g)
    w = b = None
    if d.is_pool:
        x = x + 50 * seed
    else:
        w = torch.randint(-4, 5, (d.n_out, d.n_in, d.k, d.k), generator=g)
        if ikr is not None:
            pats, idx = ikr
            mask = torch.zeros(d.n_out, d.n_in, d.k * d.k, dtype=torch.int64)
            mask.scatter_(2, pats[idx], 1)
            w = w * mask.view(w.shape)
        b = torch.full((d.n_out,), 1000 * (seed + 1))
    y, sat = reference(desc, x, w, b, None, cfg)
    return Case(f"c{seed}", desc, x, w, b, None, y, sat, "t", "ikr" if ikr else "dense",
                IkrWeights(*ikr) if ikr else None)


def _nbout_word(ctx, dut, addr):
    """NBout word ``addr`` as the simulation holds it (one memory, or ``ti`` lane memories)."""
    if dut.buffers is not None:
        return ctx.get(dut.buffers[1][addr])
    return sum(ctx.get(lane[addr]) << (i * dut.cfg.dw)
               for i, lane in enumerate(dut.buffer_data[1]))


def _write_ticks(pairs, cfg=CFG):
    """For each ``((case_a, case_b), address)``: run ``case_a``, then ``case_b`` watching
    NBout ``address``; the clock edges after ``start`` until NBout holds its new value (read
    from the simulation: ``rd_addr`` reads only while the engine is idle)."""
    dut = LayerEngine(cfg)
    drv = EngineDriver(dut)
    out = []

    async def bench(ctx):
        for (case_a, case_b), addr in pairs:
            for case in (case_a, case_b):
                job = case_job(case, cfg)
                for sel, words in job["loads"]:
                    await drv.load(ctx, sel, words)
                old = _nbout_word(ctx, dut, addr)
                ctx.set(dut.desc.as_value(), job["desc_value"])
                ctx.set(dut.start, 1)
                await ctx.tick()
                ctx.set(dut.start, 0)
                ticks, seen = 1, None
                for _ in range(job["expect"]["counters"]["cycles"] + 3):
                    await ctx.tick()
                    ticks += 1
                    if seen is None and _nbout_word(ctx, dut, addr) != old:
                        seen = ticks
            out.append(seen)

    simulate(dut, bench)
    return out


def test_write_cycle_is_when_the_engine_writes():
    """The engine writes output group ``(o, oy, ox)`` in :func:`write_cycle`: NBout holds it
    after that cycle's clock edge, for dense, pooling, centre-tap and placed passes
    and IKR passes with ``n`` above and below ``k``."""
    gen = torch.Generator().manual_seed(1)
    descs = [PassDesc(LayerDesc("conv", 5, 6, 4, 5, 3, pad=1)),
             PassDesc(LayerDesc("maxpool", 5, 5, 6, 6, 2, 2)),
             PassDesc(LayerDesc("conv", 3, 5, 7, 6, 3, 1, 0), koff=1, nbout_base=7,
                      lane_k=(1, 3, 0, 1)),
             PassDesc(LayerDesc("conv", 5, 6, 4, 4, 3, pad=1), ikr_n=4),
             PassDesc(LayerDesc("conv", 3, 2, 4, 4, 3, pad=1, stride=2), ikr_n=2),
             # one input tile, two output tiles: banked, walked oy, ox, o
             PassDesc(LayerDesc("conv", 3, 6, 4, 4, 3, pad=1), ikr_n=3)]
    pairs, want = [], []
    for desc in descs:
        ikr = None
        if desc.ikr_n:
            pats = torch.stack([torch.randperm(9, generator=gen)[:desc.ikr_n].sort().values
                                for _ in range(3)])
            ikr = (pats, torch.randint(3, (desc.layer.n_out, desc.layer.n_in), generator=gen))
        cases = (_case(desc, 0, ikr), _case(desc, 1, ikr))
        co = desc.tiles(CFG)[1]
        for o, oy, ox in ((0, 0, 0), (co - 1, desc.h_out - 1, desc.w_out - 1), (co - 1, 0, 1),
                          (0, 1, 0)):
            pairs.append((cases, desc.nbout_base + (o * desc.h_out + oy) * desc.w_out + ox))
            want.append(write_cycle(desc, CFG, o, oy, ox) + 1)
    assert descs[-1].ikr_banked(CFG) and descs[-1].tiles(CFG)[1] == 2
    assert _write_ticks(pairs) == want
    last = descs[0]
    co = last.tiles(CFG)[1]
    assert write_cycle(last, CFG, co - 1, last.h_out - 1, last.w_out - 1) == \
        last.dense_cycles(CFG) + LayerEngine.latency(CFG, last) - 1


def test_write_cycle_with_the_lane_ikr_unit():
    """With ``ikr.lanes`` an IKR pass writes output group ``(o, oy, ox)`` in
    :func:`write_cycle` too (DianNao's order, ``n`` steps a kernel group)."""
    gen = torch.Generator().manual_seed(2)
    descs = [PassDesc(LayerDesc("conv", 5, 6, 4, 4, 3, pad=1), ikr_n=4),
             PassDesc(LayerDesc("conv", 3, 6, 5, 4, 3, pad=1, stride=2), ikr_n=1)]
    pairs, want = [], []
    for desc in descs:
        pats = torch.stack([torch.randperm(9, generator=gen)[:desc.ikr_n].sort().values
                            for _ in range(3)])
        idx = torch.randint(3, (desc.layer.n_out, desc.layer.n_in), generator=gen)
        ikr = (pats, idx[torch.arange(desc.layer.n_out) // LANES_CFG.tn * LANES_CFG.tn])
        cases = (_case(desc, 0, ikr, LANES_CFG), _case(desc, 1, ikr, LANES_CFG))
        co = desc.tiles(LANES_CFG)[1]
        for o, oy, ox in ((0, 0, 0), (co - 1, desc.h_out - 1, desc.w_out - 1), (co - 1, 0, 1)):
            pairs.append((cases, (o * desc.h_out + oy) * desc.w_out + ox))
            want.append(write_cycle(desc, LANES_CFG, o, oy, ox) + 1)
    assert _write_ticks(pairs, LANES_CFG) == want
    last = descs[0]
    co = last.tiles(LANES_CFG)[1]
    assert write_cycle(last, LANES_CFG, co - 1, last.h_out - 1, last.w_out - 1) == \
        last.ikr_cycles(LANES_CFG) + LayerEngine.latency(LANES_CFG, last) - 1


def _raw(program, x, refs):
    """What the testbench reads of a bit-exact run: every layer's words, the logits and the
    counters at the pauses."""
    layers = []
    for i, layer in enumerate(program.layers):
        if layer.ref is None:
            layers.append([])
            continue
        n, h, w = layer.out_shape
        layers.append(layout.pack_output(refs[layer.ref][0].reshape(n, h, w), program.cfg))
    sched = layer_schedule(program)
    return {"layers": layers, "logits": layers[-1],
            "marks": [[s["end"] - 1, 0] for s in sched], "start_ns": 100, "resume_ns": []}


@pytest.mark.parametrize("model", ["small", "slim", "mixed"])
def test_report_names_the_layer_pass_tile_element_and_cycle(model, request, tmp_path):
    """Break one lane of one NBout word of a pass by hand: the report names that pass, its
    tile, the element and the cycle the schedule gives it; nothing broken, no report."""
    qmodel = request.getfixturevalue(f"{model}_qmodel")
    cfg = config_for(qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                    nbout_depth=256, bias_depth=8))
    program = compile_model(qmodel, cfg)
    x = quantize_input(qmodel, torch.rand(1, 1, 10, 10, generator=torch.Generator()
                                          .manual_seed(2)))[0]
    refs = int_forward_layers(qmodel, x.unsqueeze(0))
    sched = layer_schedule(program)
    assert sched[-1]["end"] == expected_cycles(program)["cycles"]
    raw = _raw(program, x, refs)
    assert first_divergence(program, raw, refs, sched) is None
    # the last program layer of the first model layer (a slim layer's approximation pass)
    i = next(i for i, l in enumerate(program.layers) if l.ref == 0)
    desc = program.layers[i].desc
    o = desc.nbout_base // (desc.h_out * desc.w_out) + desc.tiles(cfg)[1] - 1
    lane = (desc.layer.n_out - 1) % cfg.tn if desc.tiles(cfg)[1] > 1 or not desc.lane_skip \
        else desc.lane_skip
    oy, ox = 1, 2
    addr = (o * desc.h_out + oy) * desc.w_out + ox
    raw["layers"][i][addr] ^= 1 << (lane * cfg.dw + 3)
    report = first_divergence(program, raw, refs, sched, image=4)
    channel = o * cfg.tn + lane
    assert report["model_layer"] == 0 and report["program_layer"] == i
    assert report["pass"] == program.layers[i].name
    assert report["element"] == {"channel": channel, "y": oy, "x": ox}
    assert report["tile"] == o - desc.nbout_base // (desc.h_out * desc.w_out)
    assert report["differing"] == 1 and report["image"] == 4
    assert report["cycle"] == sched[i]["run"] + write_cycle(desc, cfg, report["tile"], oy, ox)
    assert report["measured_start"] == sched[i]["run"]
    assert f"element (channel {channel}, y {oy}, x {ox})" in report["message"]
    # the reproducer is the pass on its own, with the reference output of that element
    save_divergence(report, program, qmodel, x, refs, out_dir=tmp_path, name="t")
    rcfg, case = read_case(report["reproducer"])
    assert rcfg.changes_from(cfg) == {} and case.desc == desc
    got = case.expected.reshape(desc.layer.n_out, desc.h_out, desc.w_out)
    assert got[report["pass_channel"], oy, ox] == report["reference"]


def test_a_later_layer_and_the_logits(small_qmodel, small_program):
    program = small_program
    x = quantize_input(small_qmodel, torch.rand(1, 1, 10, 10))[0]
    refs = int_forward_layers(small_qmodel, x.unsqueeze(0))
    raw = _raw(program, x, refs)
    sched = layer_schedule(program)
    raw["layers"][3][0] ^= 1
    raw["layers"][4][-1] ^= 1
    report = first_divergence(program, raw, refs, sched)
    assert (report["program_layer"], report["element"]) == (3, {"channel": 0, "y": 0, "x": 0})
    # a free run reads only the logits: the last layer is all it can name
    free = {"layers": None, "logits": list(raw["layers"][-1]), "marks": []}
    free["logits"][0] ^= 1 << 2
    report = first_divergence(program, free, refs, sched)
    last = len(program.layers) - 1
    assert report["program_layer"] == last and report["element"]["channel"] == 0
    assert report["measured_start"] is None


def test_vcd_window(tmp_path):
    src = tmp_path / "w.vcd"
    src.write_text("$timescale 1ps $end\n$scope module t $end\n$var wire 1 ! clk $end\n"
                   "$var wire 4 \" d $end\n$upscope $end\n$enddefinitions $end\n"
                   "#0\n$dumpvars\n0!\nb0000 \"\n$end\n#5000\n1!\n#10000\n0!\nb0011 \"\n"
                   "#15000\n1!\n#20000\n0!\nb0101 \"\n#25000\n1!\n")
    out = vcd_window(src, tmp_path / "win.vcd", 12, 21)
    text = out.read_text()
    head, body = text.split("$enddefinitions $end\n")
    assert "$var wire 4 \" d $end" in head
    assert body.startswith("#12000\n$dumpvars\n0!\nb0011 \"\n$end\n#15000\n1!\n#20000\n")
    assert "#25000" not in body


def test_broken_rom_word_on_icarus(small_qmodel, tmp_path, capsys):
    """One bias word of conv2 broken in the ROM build's Verilog: the report names conv2, the
    output tile of that bias word and its lane's channel at (0, 0), the first written; the
    start cycle read at the pause is the schedule's; the reproducer replays, bit-exact, on the
    bare engine (the engine is right: the ROM was wrong)."""
    from slimnfu.cli import main
    from slimnfu.sim.network import run_network

    cfg = config_for(small_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    program = compile_model(small_qmodel, cfg)
    i, o, lane = 2, 1, 0
    _, base, _ = next(l for l in program.layers[i].loads if l[0] == LoadSel.BIAS)
    rom, mask = list(program.rom), ((1 << cfg.acc) - 1) << (lane * cfg.acc)
    rom[base + o] = (rom[base + o] & ~mask) | (((1 << (cfg.acc - 2)) - 1) << (lane * cfg.acc))
    broken = dataclasses.replace(program, rom=rom)
    images = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(3))
    r = run_network(broken, small_qmodel, images, torch.tensor([0, 1]), sim="icarus",
                    name="test_broken_rom", log=lambda *_: None, build_root=tmp_path)
    assert not r["bit_exact"] and len(r["failures"]) == 2
    d = r["divergence"]
    assert (d["model_layer_name"], d["pass"], d["tile"]) == ("conv2", "conv2", o)
    assert d["element"] == {"channel": o * cfg.tn + lane, "y": 0, "x": 0}
    assert d["rtl"] == cfg.qmax != d["reference"]
    sched = layer_schedule(broken)
    assert d["measured_start"] == d["pass_cycles"]["start"] == sched[i]["run"]
    assert d["cycle"] == sched[i]["run"] + write_cycle(program.layers[i].desc, cfg, o, 0, 0)
    assert r["failures"][1]["divergence"]["element"] == d["element"]
    assert d["reproducer"].startswith(str(tmp_path / "divergence"))
    note = json.loads(open(d["reproducer"]).read())["note"]
    assert note["found_by"] == "network first divergence" and note["cycle"] == d["cycle"]
    out = tmp_path / "replay.json"
    assert main(["cosim", "--sim", "icarus", "--layer", f"@{d['reproducer']}", "--out",
                 str(out)]) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())[0]["passed"]


def _vcd_values(path, names, at_ps):
    """The value of each signal of ``names`` (the first declared with that name) at time
    ``at_ps`` in VCD file ``path``."""
    ids, values, now = {}, {}, 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts[:1] == ["$var"] and parts[4] in names and parts[4] not in ids.values():
                ids[parts[3]] = parts[4]
            elif line.startswith("#"):
                now = int(line[1:])
                if now > at_ps:
                    break
            elif parts and parts[0][0] in "01" and parts[0][1:] in ids:
                values[ids[parts[0][1:]]] = int(parts[0][0])
            elif len(parts) == 2 and parts[0][0] == "b" and parts[1] in ids:
                values[ids[parts[1]]] = int(parts[0][1:].replace("x", "0"), 2)
    return values


def test_waveform_window_on_verilator(small_qmodel, tmp_path):
    """With waves on, the window cut from the run's VCD shows the engine writing the reported
    word in the reported cycle (and not in the cycle before)."""
    from slimnfu.sim.network import run_network

    cfg = config_for(small_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    program = compile_model(small_qmodel, cfg)
    i, o = 2, 1
    _, base, _ = next(l for l in program.layers[i].loads if l[0] == LoadSel.BIAS)
    rom, mask = list(program.rom), (1 << cfg.acc) - 1
    rom[base + o] = (rom[base + o] & ~mask) | ((1 << (cfg.acc - 2)) - 1)
    broken = dataclasses.replace(program, rom=rom)
    images = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(3))
    r = run_network(broken, small_qmodel, images, torch.tensor([0]), sim="verilator",
                    name="test_broken_waves", waves=True, log=lambda *_: None,
                    build_root=tmp_path)
    d = r["divergence"]
    assert (d["pass"], d["tile"], d["element"]) == ("conv2", o,
                                                      {"channel": o * cfg.tn, "y": 0, "x": 0})
    waves = d["waves"]
    lo, hi = waves["window_ns"]
    assert lo < waves["write_ns"] < hi and waves["window"].endswith(".window.vcd")
    desc = program.layers[i].desc
    addr = o * desc.h_out * desc.w_out
    t = int(waves["write_ns"] * 1000)
    names = ("nbout_wr__en", "nbout_wr__addr")
    during = _vcd_values(waves["window"], names, t - 5000)
    before = _vcd_values(waves["window"], names, t - 15000)
    assert during == {"nbout_wr__en": 1, "nbout_wr__addr": addr}
    assert before != during
