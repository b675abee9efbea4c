"""Parameter checks shared by the gateware components (not a component itself)."""

from slimnfu.config import AccelConfig

__all__ = ["check_config"]


def check_config(component, cfg, needs=None):
    """Return ``cfg`` if it is an :class:`AccelConfig` with the method flag ``needs`` set.

    Raises ``TypeError`` when ``cfg`` is not an :class:`AccelConfig` and ``ValueError`` when
    ``needs`` (``"ikr"``, ``"perm"`` or ``"kgate"``) is given and off in ``cfg``. ``component``
    is the elaboratable being built; it is marked as deliberately unused when a check fails, so
    Amaranth does not also warn about it.
    """
    name = type(component).__name__
    if not isinstance(cfg, AccelConfig):
        component._MustUse__silence = True
        raise TypeError(f"{name}: cfg must be an AccelConfig, not {type(cfg).__name__}")
    if needs is not None and not getattr(cfg, needs):
        component._MustUse__silence = True
        raise ValueError(f"{name} needs a config with {needs}=True; {cfg.name!r} has "
                         f"{needs}=False")
    return cfg
