"""The regression's permuted-FC cases build on every config with the permutation path."""

from slimnfu.config import CONFIGS
from slimnfu.sim.perm_cases import perm_cases


def test_cases_build_on_tiny_with_its_default_perm_depth():
    # tiny's s holds 1,024 entries: 42 sequences of 24 would outnumber the quadratic case's
    # 13 rows, so that case takes one group per row
    cfg = CONFIGS["tiny"].with_(name="tiny_perm", perm={"quadratic": True})
    assert "perm_affine_groups_quadratic" not in {
        c.name for c in perm_cases(cfg.with_(perm=True), seed=2)}   # affine rows only
    cases = {c.name: c for c in perm_cases(cfg, seed=2)}
    quadratic = cases["perm_affine_groups_quadratic"]
    assert quadratic.compressed.groups(quadratic.desc.layer.n_in) == 3 * cfg.tn + 1
    assert quadratic.compressed.family() == "quadratic"
