"""The layer regression of ``make cosim``: dense cases plus each method's cases.

Every method whose hardware feature a config has adds its own cases (its formats and the
engine paths they use), so ``slimnfu cosim --set ikr=1`` also checks IKR layers.
"""

from slimnfu.sim.cases import dense_cases
from slimnfu.sim.ikr_cases import ikr_cases
from slimnfu.sim.perm_cases import perm_cases
from slimnfu.sim.slim_cases import slim_cases

__all__ = ["METHOD_CASES", "regression_cases"]

#: Config feature -> ``cases(cfg, seed, images)`` of the method that needs it.
METHOD_CASES = {"perm": perm_cases, "kgate": slim_cases, "ikr": ikr_cases}


def regression_cases(cfg, seed=1, quick=False, images=None, extra=()):
    """The cases of a regression on ``cfg``: :func:`~slimnfu.sim.cases.dense_cases`, then
    (unless ``quick``) the cases of every method whose feature ``cfg`` has."""
    cases = dense_cases(cfg, seed, quick, images, extra)
    if not quick:
        for feature, method_cases in METHOD_CASES.items():
            if feature in cfg.features:
                cases += method_cases(cfg, seed, images)
    return cases
