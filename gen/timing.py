"""Timing reports that explain themselves: nextpnr's critical paths in Amaranth's names.

``nextpnr-ecp5 --report r.json --detailed-timing-report`` lists, per clock pair, the critical
path as segments (``clk-to-q``, ``logic``, ``routing``, ``setup``) between placed cells, and
for every net the arrival time at each endpoint. Yosys names a flattened cell after the
Amaranth component that holds it and the signal it drives, followed by what techmapping
added: ``nfu3.out_TRELLIS_FF_Q_20`` is bit 20 of the register ``out`` of the component
``nfu3``; ``nfu3.$69_MULT18X18D_P9`` is a multiplier on the unnamed value ``$69``. This module
strips the techmapping suffixes to give each cell's component and signal, and summarises a
path as one line a designer can act on: where it starts and ends, how much of it is logic
and how much routing, how many logic levels, multipliers, carry cells and block RAMs it
crosses.
"""

import re

__all__ = ["amaranth_name", "summarise_path", "worst_endpoints", "timing_summary",
           "one_line"]

#: What Yosys and nextpnr append to a cell or net name when they map it to ECP5 primitives.
_TECH_SUFFIX = re.compile(r"(_TRELLIS_|_CCU2C|\$CCU2|_LUT4|_PFUMX|_L6MUX21|_MULT18X18D|"
                          r"_ALU54B|_DP16KD|_TRELLIS_RAMW|_DPR16X4)")


def amaranth_name(cell):
    """``(component, signal)`` of a flattened cell or net name.

    The component is the dotted Amaranth hierarchy below the top (``""`` for the top
    itself); the signal is the name the cell drives before techmapping (``$<n>`` for a value
    Amaranth did not name).
    """
    base = _TECH_SUFFIX.split(cell.lstrip("\\"), maxsplit=1)[0]
    base = re.sub(r"\[\d+\]$", "", base)
    component, _, signal = base.rpartition(".")
    return component, signal


def _primitive(cell):
    for kind, key in (("MULT18X18D", "multipliers"), ("DP16KD", "block_rams"),
                      ("CCU2", "carry_cells"), ("TRELLIS_RAMW", "lut_rams"),
                      ("DPR16X4", "lut_rams")):
        if kind in cell:
            return key
    return None


def summarise_path(path):
    """One critical path of a nextpnr report (``{"from", "to", "path": [segments]}``) in
    Amaranth's names.

    Returns
    -------
    dict
        ``clock`` (the launching and capturing events), ``delay_ns``, ``logic_ns``,
        ``routing_ns``, ``logic_levels`` (logic segments with a delay), ``start`` and ``end``
        (``component``, ``signal``, ``cell``, ``port``), ``components`` (the components the
        path crosses, each once, in the order it first enters them) and the counts of
        ``multipliers``, ``block_rams``,
        ``carry_cells`` and ``lut_rams`` on it.
    """
    segs = path["path"]
    first, last = segs[0]["from"], segs[-1]["to"]
    out = {"clock": f"{path.get('from', '?')} -> {path.get('to', '?')}",
           "delay_ns": round(sum(s["delay"] for s in segs), 3),
           "logic_ns": round(sum(s["delay"] for s in segs if s["type"] != "routing"), 3),
           "routing_ns": round(sum(s["delay"] for s in segs if s["type"] == "routing"), 3),
           "logic_levels": sum(1 for s in segs if s["type"] == "logic" and s["delay"] > 0)}
    for key, end in (("start", first), ("end", last)):
        component, signal = amaranth_name(end["cell"])
        out[key] = {"component": component, "signal": signal, "cell": end["cell"],
                    "port": end["port"]}
    components, counted = [], {}
    for s in segs:
        cell = s["to"]["cell"]
        component = amaranth_name(cell)[0]
        if component not in components:
            components.append(component)
        kind = _primitive(cell)
        if kind and s["type"] == "logic":
            counted.setdefault(kind, set()).add(cell.split("$CCU2")[0])
    out["components"] = components
    for key in ("multipliers", "block_rams", "carry_cells", "lut_rams"):
        out[key] = len(counted.get(key, ()))
    return out


def worst_endpoints(report, count=10):
    """The ``count`` endpoint signals with the latest arrival, from the report's
    ``detailed_net_timings``: ``[{"component", "signal", "arrival_ns", "bits"}]``, one row a
    signal (its worst bit), latest first."""
    worst = {}
    for net in report.get("detailed_net_timings", ()):
        for ep in net.get("endpoints", ()):
            delay = ep.get("delay")
            arrival = max(delay) if isinstance(delay, list) else delay
            if arrival is None:
                continue
            key = amaranth_name(ep["cell"])
            row = worst.setdefault(key, {"component": key[0], "signal": key[1],
                                         "arrival_ns": 0.0, "bits": 0})
            row["arrival_ns"] = round(max(row["arrival_ns"], arrival), 3)
            row["bits"] += 1
    return sorted(worst.values(), key=lambda r: -r["arrival_ns"])[:count]


def timing_summary(report, count=10):
    """``{"critical_paths": [...], "worst_endpoints": [...]}`` of a nextpnr JSON report
    (:func:`summarise_path` for each clock pair's critical path, worst first)."""
    paths = sorted((summarise_path(p) for p in report.get("critical_paths", ())
                    if p.get("path")), key=lambda p: -p["delay_ns"])
    return {"critical_paths": paths, "worst_endpoints": worst_endpoints(report, count)}


def _where(end):
    return f"{end['component']}.{end['signal']}" if end["component"] else end["signal"]


def one_line(path):
    """A critical path summary (:func:`summarise_path`) as one line."""
    parts = [f"{path['logic_levels']} logic levels"]
    for key, what in (("multipliers", "DSP"), ("block_rams", "block RAM"),
                      ("carry_cells", "carry cells"), ("lut_rams", "LUT RAM")):
        if path[key]:
            parts.append(f"{path[key]} {what}")
    via = [c or "(top)" for c in path["components"]]
    return (f"worst path {path['delay_ns']:.1f} ns: {_where(path['start'])} -> "
            f"{_where(path['end'])} through {', '.join(via)} ({', '.join(parts)}; "
            f"{path['logic_ns']:.1f} ns logic, {path['routing_ns']:.1f} ns routing)")
