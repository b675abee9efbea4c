"""Parameter checks and the pipeline-register chain shared by the gateware components (not a
component itself)."""

from amaranth.hdl import Signal

from slimnfu.config import AccelConfig

__all__ = ["check_config", "delay"]


def delay(m, value, stages, prefix, reset_less=False):
    """``value`` ``stages`` cycles later: a chain of ``m.d.sync`` registers named
    ``<prefix>1``, ``<prefix>2``, ... (``value`` itself when ``stages`` is 0). Data that is
    only used beside a valid flag is delayed ``reset_less``: a register without a reset can
    be a block RAM's or a multiplier's own (:mod:`slimnfu.gen.primitive_registers`)."""
    for n in range(stages):
        reg = Signal.like(value, name=f"{prefix}{n + 1}", reset_less=reset_less)
        m.d.sync += reg.eq(value)
        value = reg
    return value


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
