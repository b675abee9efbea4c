"""Permuted-feature FC layers (both variants; generated ones in G groups and in the quadratic
family too, and affine ones after a conv output in the neuron buffer's order; on the
affine-only generator too) on Icarus and Verilator: bit-exact vs the integer reference, exact
cycles, steps, multiplies and saturation events, through the one regression flow (cocotb
asserts each job's verdict)."""

import pytest

from slimnfu.config import CONFIGS
from slimnfu.sim.perm_cases import perm_cases
from slimnfu.sim.runner import run_regression

CFG = CONFIGS["tiny"].with_(name="tiny_perm", perm={"depth": 64, "quadratic": True})
#: ``perm``'s default generator: affine rows only.
AFFINE = CFG.with_(name="tiny_affine", perm={"depth": 64})


@pytest.mark.parametrize("sim, cfg", [("icarus", CFG), ("verilator", CFG),
                                      ("verilator", AFFINE)],
                         ids=["icarus", "verilator", "verilator-affine"])
def test_perm_random_layers(sim, cfg):
    cases = perm_cases(cfg, seed=2)
    assert {c.desc.perm for c in cases} == {"affine", "index"}
    grouped = [c for c in cases if "groups" in c.name]
    quadratic = cfg.perm.quadratic
    assert [c.compressed.groups(c.desc.layer.n_in) for c in grouped] == [2] * (2 + quadratic)
    assert [c.compressed.family() for c in grouped][:1] == ["quadratic" if quadratic
                                                            else "affine"]
    # c = 5 channels of hw = 5 pixels on tn = 4: 2 channel tiles, 3 padding lanes in the last
    flat = [c for c in cases if c.desc.flatten]
    assert [(c.desc.flatten, c.desc.layer.n_in) for c in flat] == [((5, 5), 40)] * 2
    if sim == "icarus":
        cases = [c for c in cases if "ragged" in c.name or "quadratic" in c.name
                 or c.desc.flatten]
    results = run_regression(cfg, cases, sims=(sim,), log=lambda *_: None)
    bad = [(r["name"], r["error"]) for r in results if not r["passed"]]
    assert not bad, bad
    assert len(results) == len(cases)


#: A 6x6 build: its generator's lane addresses are a chain of lanes 0-4 and lane 5 from a head
#: lane with an offset register (``PermAddrGen.lane_span``), where ``tiny``'s are one chain.
HEADS = CONFIGS["tiny"].with_(name="t6_perm", tn=6, ti=6, nbin_depth=256, sb_depth=256,
                              nbout_depth=256, bias_depth=16,
                              perm={"depth": 64, "quadratic": True})


def test_perm_head_lanes_on_verilator():
    from slimnfu.rtl.engine import LayerEngine
    from slimnfu.rtl.perm_addr import PermAddrGen

    assert PermAddrGen.lane_span(HEADS, LayerEngine.PERM_AHEAD) == 5
    assert PermAddrGen.lane_span(CFG, LayerEngine.PERM_AHEAD) == CFG.ti
    cases = perm_cases(HEADS, seed=3)
    kinds = {(c.desc.perm, bool(c.desc.flatten), "quadratic" in c.name) for c in cases}
    assert {("affine", False, False), ("affine", True, False), ("affine", False, True)} <= kinds
    results = run_regression(HEADS, cases, sims=("verilator",), log=lambda *_: None)
    bad = [(r["name"], r["error"]) for r in results if not r["passed"]]
    assert not bad, bad
    assert len(results) == len(cases)
