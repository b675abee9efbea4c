"""Parameter checks shared by the gateware components (not a component itself)."""

from slimnfu.config import AccelConfig

__all__ = ["check_config"]


def check_config(component, cfg):
    """Raise ``TypeError`` unless ``cfg`` is an :class:`AccelConfig`; return it.

    ``component`` is the elaboratable being built; it is marked as deliberately unused when
    the check fails, so Amaranth does not also warn about it.
    """
    if not isinstance(cfg, AccelConfig):
        component._MustUse__silence = True
        raise TypeError(f"{type(component).__name__}: cfg must be an AccelConfig, not "
                        f"{type(cfg).__name__}")
    return cfg
