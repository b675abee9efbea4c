"""IKR conv layers on Icarus and Verilator: bit-exact vs the integer reference, exact cycles."""

import pytest

from slimnfu.config import CONFIGS
from slimnfu.sim.ikr_jobs import random_cases, run_ikr_cosim

CFG = CONFIGS["tiny"].with_(name="tiny_ikr", ikr=True)


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_ikr_random_layers(sim):
    cases = random_cases(CFG, seed=3)
    assert {c[1].ikr_n for c in cases} >= {1, 9, 25}
    if sim == "icarus":
        # Icarus is ~50x slower than Verilator: it checks the extremes n = 1 and n = K*K.
        cases = [c for c in cases if c[1].ikr_n in (1, c[1].k * c[1].k)]
    results = run_ikr_cosim(CFG, cases, sim, with_dense=(sim == "verilator"))
    bad = [(r["name"], r["error"]) for r in results if not r["passed"]]
    assert not bad, bad
