"""IKR conv layers on Icarus and Verilator: bit-exact vs the integer reference, exact cycles,
steps and saturation events (the one regression flow of every format)."""

import pytest

from slimnfu.config import CONFIGS
from slimnfu.sim.ikr_cases import as_dense, ikr_cases
from slimnfu.sim.runner import run_regression

#: The window decoder, its windows sliding in 3 banks; the lane unit (the default).
CONFIGS_BY_UNIT = {"window": CONFIGS["tiny"].with_(name="tiny_ikr", ikr={"tiles": 3,
                                                                          "lanes": False}),
                   "lanes": CONFIGS["tiny"].with_(name="tiny_ikr_lanes", ikr=True)}


@pytest.mark.parametrize("unit", sorted(CONFIGS_BY_UNIT))
@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_ikr_random_layers(sim, unit):
    cfg = CONFIGS_BY_UNIT[unit]
    cases = ikr_cases(cfg, seed=3)
    assert {c.desc.ikr_n for c in cases} >= {1, 9, 25}
    # windows that slide in the decoder's banks: 2 and 3 input tiles, stride 1 and 2, n = 1
    banked = {(c.desc.tiles(cfg)[0], c.desc.layer.stride) for c in cases if c.desc.ikr_n == 1}
    assert banked >= {(2, 1), (3, 2)}
    if sim == "icarus":
        # Icarus is ~50x slower than Verilator: it checks the extremes n = 1 and n = K*K.
        cases = [c for c in cases if c.desc.ikr_n in (1, c.desc.layer.k * c.desc.layer.k)]
    else:
        cases += [as_dense(c) for c in cases]
    results = run_regression(cfg, cases, sims=(sim,), log=lambda *_: None)
    bad = [(r["name"], r["error"]) for r in results if not r["passed"]]
    assert not bad, bad
    assert len(results) == len(cases)
