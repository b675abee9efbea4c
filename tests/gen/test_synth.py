"""Quick synthesis of a small block: generic Yosys keeps memories and reports the keys."""

import json

import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.gen import synth
from slimnfu.atomic import atomic_write
from slimnfu.gen.verilog import verilog_text


class TinyMac(wiring.Component):
    """A 4x4-bit multiply-accumulate reading its weight from a 16-word memory."""

    addr: In(4)
    x: In(signed(4))
    acc: Out(signed(12))

    def elaborate(self, platform):
        m = Module()
        m.submodules.weights = mem = memory.Memory(shape=signed(4), depth=16,
                                                   init=list(range(-8, 8)))
        rd = mem.read_port()
        m.d.comb += rd.addr.eq(self.addr)
        m.d.sync += self.acc.eq(self.acc + rd.data * self.x)
        return m


class TwoMacs(wiring.Component):
    """Two :class:`TinyMac` components fed by one input, summed: a hierarchy for the
    per-block area."""

    x: In(signed(4))
    total: Out(signed(13))

    def elaborate(self, platform):
        m = Module()
        m.submodules.left, m.submodules.right = macs = TinyMac(), TinyMac()
        for mac in macs:
            m.d.comb += [mac.addr.eq(self.x.as_unsigned()), mac.x.eq(self.x)]
        m.d.sync += self.total.eq(macs[0].acc + macs[1].acc)
        return m


def test_generic_synth_gives_each_component_its_own_area(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    workdir = tmp_path / "blocks"
    vfile = atomic_write(workdir / "two_macs.v", verilog_text(TwoMacs(), "two_macs"))
    generic = synth.synth_verilog(vfile, "two_macs", workdir / "run", ecp5=False,
                                  progress=False)["generic"]
    blocks = generic["blocks"]
    assert set(blocks) == {"", "left", "right"}
    assert blocks["left"] == blocks["right"]
    assert blocks["left"]["memory_bits"] == 64 and blocks[""]["memory_bits"] == 0
    assert blocks[""]["ffs"] == 13 and blocks["left"]["ffs"] >= 12
    assert sum(b["memory_bits"] for b in blocks.values()) == generic["memory_bits"] == 128


def test_generic_synth_keeps_memories_and_reports_keys(tmp_path, monkeypatch):
    """In a folder below /tmp, which a YoWASP tool sees only through relative paths, run from
    another working directory."""
    monkeypatch.chdir("/")
    workdir = tmp_path / "test_synth"
    vfile = atomic_write(workdir / "src" / "tiny_mac.v", verilog_text(TinyMac(), "tiny_mac"))
    report = synth.synth_verilog(vfile, "tiny_mac", workdir / "run", ecp5=False, progress=False)
    for key in ("cells", "luts", "ffs", "dsps", "brams", "fmax_mhz", "part", "fits",
                "generic", "tools", "wall_s"):
        assert key in report, key
    assert report["generic"]["memories"] == 1
    assert report["generic"]["memory_bits"] == 64
    # one module holds every memory: the dump still names it
    assert report["generic"]["blocks"] == {"": {"luts": report["luts"], "ffs": report["ffs"],
                                                "memories": 1, "memory_bits": 64}}
    assert report["generic"]["mults"] == 1
    assert report["luts"] > 0 and report["ffs"] >= 12
    assert report["fmax_mhz"] is None


def test_choose_part_sizes_to_multipliers():
    fig = {"luts": 1000, "ffs": 1000, "brams": 10}
    assert synth.choose_part({**fig, "dsps": 16})[0] == "LFE5U-25F"
    assert synth.choose_part({**fig, "dsps": 64})[0] == "LFE5U-45F"
    part, why = synth.choose_part({**fig, "dsps": 272})
    assert part is None and "dsps 272 > 156" in why


def test_synth_config_reuses_a_report_only_for_the_same_verilog(tmp_path, monkeypatch):
    import json

    from slimnfu.config import CONFIGS
    from slimnfu.gen.verilog import emit_engine

    cfg = CONFIGS["tiny"]
    sha = emit_engine(cfg, tmp_path / "verilog")["sha256"]
    out = tmp_path / "synth" / "tiny.json"
    out.parent.mkdir()
    calls = []
    monkeypatch.setattr(synth, "synth_verilog", lambda *a, **k: calls.append(a) or {"x": 1})
    out.write_text(json.dumps({"verilog_sha256": sha, "part": "LFE5U-25F", "pnr": None}))
    assert synth.synth_config(cfg, out=out, build_root=tmp_path, pnr=False, reuse=True)[
        "reused"] and not calls
    # the report lacks place and route, which pnr=True asks for
    synth.synth_config(cfg, out=out, build_root=tmp_path, pnr=True, reuse=True)
    assert len(calls) == 1 and json.loads(out.read_text())["x"] == 1
    out.write_text(json.dumps({"verilog_sha256": "0" * 64, "part": None, "pnr": None}))
    synth.synth_config(cfg, out=out, build_root=tmp_path, pnr=False, reuse=True)
    assert len(calls) == 2


def test_small_places_on_its_own_part_and_target(tmp_path, monkeypatch):
    """``small`` (and a ``small+...`` variant) goes to nextpnr on :data:`CONFIG_PNR`'s part
    at its 100 MHz target unless ``--part``/``--freq`` say otherwise; ``tiny`` keeps the
    smallest part and :data:`PNR_DEFAULTS`; ``slimnfu synth`` passes only the flags given."""
    import argparse

    from slimnfu.config import CONFIGS
    from slimnfu.gen.cli_hw import add_pnr_arguments, given_pnr_arguments

    calls = []
    monkeypatch.setattr(synth, "synth_verilog", lambda *a, **k: calls.append(k) or {})
    monkeypatch.setattr(synth, "emit_engine", lambda cfg, root: {
        "path": "x.v", "top": "t", "sha256": "0" * 64})
    small = CONFIGS["small"]
    synth.synth_config(small, build_root=tmp_path)
    assert calls[-1]["part"] == "LFE5U-85F" and calls[-1]["pnr_opts"] == {"freq_mhz": 100}
    synth.synth_config(small.changed(product_stages=2), build_root=tmp_path,
                       part="LFE5U-45F", pnr_opts={"freq_mhz": 90, "router": "router2"})
    assert calls[-1]["part"] == "LFE5U-45F"
    assert calls[-1]["pnr_opts"] == {"freq_mhz": 90, "router": "router2"}
    synth.synth_config(CONFIGS["tiny"], build_root=tmp_path)
    assert calls[-1]["part"] is None and calls[-1]["pnr_opts"] == {}
    parser = argparse.ArgumentParser()
    add_pnr_arguments(parser)
    assert given_pnr_arguments(parser.parse_args([])) == {}
    assert given_pnr_arguments(parser.parse_args(["--freq", "90", "--no-tmdriv"])) == {
        "freq_mhz": 90.0, "tmdriv": False}
    with pytest.raises(ValueError, match="freq_mhz must be a number in 1..500"):
        given_pnr_arguments(parser.parse_args(["--freq", "900"]))


def test_unknown_part_is_refused_before_any_work(tmp_path):
    from slimnfu.config import CONFIGS
    from slimnfu.gen.synth import synth_config

    with pytest.raises(ValueError, match="--part must be one of LFE5U-25F"):
        synth_config(CONFIGS["tiny"], out=tmp_path / "r.json", part="LFE5U-12F")
    assert not (tmp_path / "r.json").exists()


def test_asked_part_reports_the_smallest():
    from slimnfu.gen.synth import _on_part

    small = {"dsps": 20, "brams": 46, "luts": 7000, "ffs": 3000}
    part, why = _on_part(small, "LFE5U-85F")
    assert part == "LFE5U-85F" and "smallest that holds it is LFE5U-25F" in why
    part, why = _on_part({**small, "dsps": 100}, "LFE5U-45F")
    assert part is None and "dsps 100 > 72" in why


def test_choose_weights(small_program):
    import dataclasses

    from slimnfu.gen.synth import choose_weights

    weights, why = choose_weights(small_program)
    assert weights == "rom" and "within the 208 of the LFE5U-85F" in why
    big = dataclasses.replace(small_program, rom=[(1 << 256) - 1] * 40000, rom_width=256)
    weights, why = choose_weights(big)
    assert weights == "port" and "the ROM build does not fit" in why, why
    assert "rom 563" in why and "over the 208 of the LFE5U-85F" in why


#: The last session's whole ROM build of compressed LeNet-5 on ``tiny`` (fc1 perm_affine with
#: 4 groups): per memory its depth, width, read ports and the DP16KD Yosys's synth_ecp5 gave
#: it (``ecp5.json``, counted by gen.synth.dp16kd_by_memory), 369 in all.
LENET5_BUILD = [("engine.nbin", 4096, 64, 7, True, 112), ("engine.nbout", 4096, 64, 7, True, 112),
                ("rom", 4020, 256, 1, False, 57), ("engine.bias", 128, 192, 1, True, 6),
                ("engine.sb0", 1024, 64, 1, True, 4), ("engine.perm_sb.s0", 4096, 16, 1, True, 4),
                ("engine.ikr.decoder.index", 512, 64, 1, True, 2)]


@pytest.mark.parametrize("name, depth, width, ports, written, blocks", LENET5_BUILD)
def test_dp16kd_count_is_yosys_count(name, depth, width, ports, written, blocks):
    from slimnfu.gen.synth import rom_dp16kd

    assert ports * rom_dp16kd(depth, width, mixed=not written) == blocks, name


def test_block_ram_fit_counts_every_memory_of_the_build(small_program):
    """The fit check elaborates the build: each buffer once per read port, the ROM by its
    used columns, LUT memories at zero; the total is the sum, the port build has no ROM."""
    import dataclasses

    from slimnfu.gen.synth import block_ram_fit, rom_dp16kd

    cfg = small_program.cfg
    fit = block_ram_fit(small_program)
    rows = {r["name"]: r for r in fit["memories"]}
    assert {"rom", "engine.nbin", "engine.nbout", "engine.bias"} <= set(rows)
    nbin = rows["engine.nbin"]
    assert (nbin["depth"], nbin["width"]) == (cfg.nbin_depth, cfg.ti * cfg.dw)
    # one read port a buffer (the pipeline's while busy, rd_addr's while idle)
    assert nbin["copies"] == nbin["read_ports"] == 1
    assert nbin["dp16kd"] == nbin["copies"] * rom_dp16kd(cfg.nbin_depth, 64, mixed=False)
    assert rows["rom"]["used_width"] == small_program.rom_width == 256
    # Yosys drops the ROM's columns that are zero in every word
    narrow = dataclasses.replace(small_program, rom=[w & 0xFFFF for w in small_program.rom])
    rom = {r["name"]: r for r in block_ram_fit(narrow)["memories"]}["rom"]
    assert rom["used_width"] == 16 and rom["dp16kd"] == rom_dp16kd(rom["depth"], 16)
    assert fit["brams"] == sum(r["dp16kd"] for r in fit["memories"])
    assert fit["brams"] == sum(fit["by_group"].values())
    assert fit["fits"] and fit["available"] == 208
    assert all(r["dp16kd"] == 0 for r in fit["memories"] if r["kind"] == "lut")
    port = block_ram_fit(small_program, "port", "LFE5U-25F")
    assert "rom" not in {r["name"] for r in port["memories"]}
    assert port["brams"] == fit["brams"] - rows["rom"]["dp16kd"] and port["available"] == 56
    with pytest.raises(ValueError, match="part must be one of LFE5U-25F, LFE5U-45F, "
                                         "LFE5U-85F, not 'LFE5U-12F'"):
        block_ram_fit(small_program, part="LFE5U-12F")


def test_dp16kd_by_memory(tmp_path):
    from slimnfu.gen.synth import dp16kd_by_memory

    cells = {"engine.nbin.0.0": "DP16KD", "engine.nbin.6.3": "DP16KD", "rom.0.16": "DP16KD",
             "engine.bias$298.0.0": "DP16KD", "engine.x": "LUT4"}
    path = tmp_path / "ecp5.json"
    path.write_text(json.dumps({"modules": {"top": {"cells": {
        k: {"type": v} for k, v in cells.items()}}}}))
    assert dp16kd_by_memory(path) == {"engine.nbin": 2, "rom": 1, "engine.bias": 1}
    assert dp16kd_by_memory(tmp_path / "missing.json") == {}


def test_place_route_timeout_is_reported(monkeypatch, tmp_path):
    import subprocess

    def slow(cmd, cwd, log, timeout=None):
        assert cmd[cmd.index("--log") + 1] == synth.PNR_LOG
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(synth, "_run", slow)
    r = synth.place_route(tmp_path, "LFE5U-85F", timeout_s=5)
    assert r["fmax_mhz"] is None
    assert r["error"] == (f"nextpnr-ecp5 did not finish on LFE5U-85F within 5 s (stopped while "
                          f"packing; {tmp_path / synth.PNR_LOG})")
    # the log nextpnr writes as it goes says how far it got
    (tmp_path / synth.PNR_LOG).write_text(
        "Info: Packing IOs..\nInfo: Running main analytical placer, max placement attempts per "
        "cell = 10000\nInfo:     at iteration #5, type ALL: wirelen solved = 56710\n")
    r = synth.place_route(tmp_path, "LFE5U-85F", timeout_s=5)
    assert r["progress"] == {"stage": "placing", "last": "Info:     at iteration #5, type ALL: "
                                                         "wirelen solved = 56710"}
    assert "stopped while placing" in r["error"]
    assert synth.pnr_progress("Info: HeAP Placer Time: 60s\nInfo: Routing..\nInfo: Routing "
                              "56086 arcs.\nInfo:   1000 |  0 1000 |  0 1000 | 55086|")[
        "stage"] == "routing"


def test_place_route_passes_its_options_to_nextpnr(monkeypatch, tmp_path):
    import subprocess

    ran = []

    def capture(cmd, cwd, log, timeout=None):
        ran.append(cmd)
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(synth, "_run", capture)
    r = synth.place_route(tmp_path, "LFE5U-25F", timeout_s=5,
                          options={"freq_mhz": 125, "seed": 3})
    assert r["options"]["freq_mhz"] == 125 and r["options"]["seed"] == 3
    cmd = ran[-1]
    assert cmd[cmd.index("--freq") + 1] == "125" and cmd[cmd.index("--seed") + 1] == "3"
    r = synth.place_route(tmp_path, "LFE5U-25F", freq_mhz=80, timeout_s=5,
                          options={"freq_mhz": 125})
    assert r["options"]["freq_mhz"] == 80


def test_block_ram_shortfall():
    from slimnfu.config import CONFIGS
    from slimnfu.gen.synth import block_ram_shortfall

    assert block_ram_shortfall(CONFIGS["tiny"]) is None
    why = block_ram_shortfall(CONFIGS["tiny"].with_(sb_depth=32768))
    assert "needs 8,781,824 bits of SB, NBin and NBout (sb_depth 32768)" in why


def test_block_ram_fit_counts_a_shared_port_read_once(mixed_qmodel):
    """An IKR build's neuron buffers are ``LayerEngine.buffer_copies`` copies, each one set
    of block RAMs: a window row read on the write port's own address takes no copy."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for
    from slimnfu.gen.synth import block_ram_fit, rom_dp16kd
    from slimnfu.rtl.engine import LayerEngine

    program = compile_model(mixed_qmodel, config_for(mixed_qmodel, CONFIGS["tiny"]),
                            im2col="off")
    cfg = program.cfg
    copies = LayerEngine.buffer_copies(cfg)
    # the mixed network's IKR conv2 is 3x3, so the window is (IkrFormat.configure)
    assert cfg.ikr.kmax == 3 and copies == 2
    fit = block_ram_fit(program)
    rows = {r["name"]: r for r in fit["memories"]}
    for buf in ("nbin", "nbout"):
        names = [f"engine.{buf}", f"engine.{buf}_copy1"]
        assert f"engine.{buf}_copy2" not in rows
        # copy 0: the pipeline's port and row 1; copy 1: row 2 (and its idle write port)
        assert [rows[n]["read_ports"] for n in names] == [2, 1]
        assert [rows[n]["copies"] for n in names] == [1, 1]
        one = rom_dp16kd(rows[names[0]]["depth"], cfg.ti * cfg.dw, mixed=False)
        assert one > 0 and fit["by_group"][buf] == copies * one
