"""Method A on both simulators: mixed-size tiles (gated lanes), kernel-size passes, the 1x1
approximation pass and a reordered conv block, bit-exact and with the gated count."""

import shutil

import pytest

from slimnfu.config import get_config
from slimnfu.sim.runner import run_regression
from slimnfu.sim.slim_cases import slim_cases


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus")
def test_slim_cases_bit_exact_on_both_simulators():
    cfg = get_config("tiny").with_(name="tiny_kgate", kgate=True)
    cases = slim_cases(cfg, seed=2)
    assert any(c.desc.lane_k for c in cases) and any("approx" in c.name for c in cases)
    entries = run_regression(cfg, cases, log=lambda *a: None)
    bad = [(e["name"], e["sim"], e["error"]) for e in entries if not e["passed"]]
    assert not bad, bad
    mixed = [e for e in entries if e["desc"]["lane_k"]]
    assert mixed and all(e["gated"] == e["expected_gated"] > 0 for e in mixed)
