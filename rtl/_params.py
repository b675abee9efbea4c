"""Parameter checks shared by the gateware components (not a component itself)."""

from slimnfu.config import AccelConfig

__all__ = ["check_config", "bits_for"]


def check_config(component, cfg):
    """Raise ``TypeError`` unless ``cfg`` is an :class:`AccelConfig`; return it."""
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"{component}: cfg must be an AccelConfig, not {type(cfg).__name__}")
    return cfg


def bits_for(max_value):
    """Bits of an unsigned signal that holds ``0 .. max_value`` (at least 1)."""
    return max(1, int(max_value).bit_length())
