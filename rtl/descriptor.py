"""The layer descriptor as the engine sees it: a packed struct on the ``desc`` port.

:func:`descriptor_layout` builds the layout from the config; :func:`descriptor_value` turns a
:class:`slimnfu.config.LayerDesc` into the integer a testbench drives onto the port. Both use
the same layout object, so the Python side and the gateware cannot disagree on bit positions.
"""

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

__all__ = ["Mode", "Act", "Perm", "descriptor_layout", "descriptor_value", "DESC_FIELD_BITS"]

#: Width of the geometry fields; :meth:`LayerDesc.check` refuses values that do not fit.
DESC_FIELD_BITS = {"h_in": 12, "w_in": 12, "h_out": 12, "w_out": 12, "k": 4, "stride": 4,
                   "pad": 4}


class Mode(enum.Enum, shape=2):
    MAC = 0      #: conv and fc: NFU-1 multiplies, NFU-2 sums
    MAXPOOL = 1  #: NFU-1 bypassed, NFU-2 keeps the maximum
    AVGPOOL = 2  #: NFU-1 bypassed, NFU-2 sums, NFU-3 shifts


class Perm(enum.Enum, shape=2):
    NONE = 0    #: dense FC weights from SB
    AFFINE = 1  #: s gathered at (a_j*i + b_j) mod n_in, per-row (a, b) from the perm memory
    INDEX = 2   #: s gathered at the index ROM entries SB holds


class Act(enum.Enum, shape=2):
    NONE = 0
    RELU = 1
    PWL = 2


def _bits(n):
    return max(1, int(n).bit_length())


def descriptor_layout(cfg):
    """The :class:`amaranth.lib.data.StructLayout` of the ``desc`` port for ``cfg``."""
    tiles = max(cfg.nbin_depth, cfg.nbout_depth, cfg.sb_depth)
    fields = {
        "mode": Mode,
        "act": Act,
        "ci_tiles": unsigned(_bits(tiles)),
        "co_tiles": unsigned(_bits(tiles)),
    }
    for name, bits in DESC_FIELD_BITS.items():
        fields[name] = unsigned(bits)
    fields["shift"] = unsigned(_bits(cfg.acc - 1))
    fields["seg_shift"] = unsigned(_bits(cfg.dw - 1))
    # Output channels: NFU-3 counts saturation only on lanes below n_out (added last, so the
    # fields above keep their bit positions).
    fields["n_out"] = unsigned(_bits(tiles * cfg.tn))
    if cfg.ikr:
        # Taps kept per kernel of an IKR conv layer; 0 runs the layer dense.
        fields["ikr_n"] = unsigned(_bits(cfg.ikr_kmax ** 2))
    if cfg.perm:
        # Permuted-feature FC (method C): the weight format and the sequence length N.
        fields["perm"] = Perm
        fields["n_in"] = unsigned(_bits(cfg.perm_depth))
    if cfg.kgate:
        # Kernel-size-aware gating (method A): each lane's centred kernel; 0 is the full k.
        fields["lane_k"] = data.ArrayLayout(unsigned(DESC_FIELD_BITS["k"]), cfg.tn)
        # Centre-tap passes: the tap offset, where the pass's outputs go in NBout, and the
        # lanes of its first output tile that another pass owns.
        fields["koff"] = unsigned(DESC_FIELD_BITS["k"])
        fields["nbout_base"] = unsigned(_bits(cfg.nbout_depth - 1))
        fields["lane_skip"] = unsigned(_bits(cfg.tn - 1))
    return data.StructLayout(fields)


def descriptor_value(desc, cfg, check=True):
    """The integer for the ``desc`` port that runs ``desc`` (a :class:`LayerDesc`) on ``cfg``.

    ``check=False`` skips :meth:`LayerDesc.check` (buffer depths), for weight images that list
    layers too large for ``cfg``; every field must still fit its width.
    """
    if check:
        desc.check(cfg)
    mode = {"conv": Mode.MAC, "fc": Mode.MAC, "maxpool": Mode.MAXPOOL,
            "avgpool": Mode.AVGPOOL}[desc.kind]
    act = {"none": Act.NONE, "relu": Act.RELU, "pwl": Act.PWL}[desc.act]
    ci, co = desc.tiles(cfg)
    fields = dict(mode=mode, act=act, ci_tiles=ci, co_tiles=co, h_in=desc.h_in,
                  w_in=desc.w_in, h_out=desc.h_out, w_out=desc.w_out, k=desc.k,
                  stride=desc.stride, pad=desc.pad, shift=desc.effective_shift,
                  seg_shift=desc.seg_shift, n_out=desc.n_out)
    if cfg.ikr:
        fields["ikr_n"] = desc.ikr_n
    elif desc.ikr_n:
        raise ValueError(f"layer has ikr_n={desc.ikr_n}, but config {cfg.name!r} has ikr=False")
    if cfg.perm:
        fields["perm"] = {"none": Perm.NONE, "affine": Perm.AFFINE,
                          "index": Perm.INDEX}[desc.perm]
        fields["n_in"] = desc.n_in if desc.perm != "none" else 0
    elif desc.perm != "none":
        raise ValueError(f"layer has perm={desc.perm!r}, but config {cfg.name!r} has perm=False")
    if cfg.kgate:
        fields["lane_k"] = list(desc.lane_k) + [0] * (cfg.tn - len(desc.lane_k))
        fields.update(koff=desc.koff, nbout_base=desc.nbout_base, lane_skip=desc.lane_skip)
    elif desc.lane_k or desc.koff or desc.nbout_base or desc.lane_skip:
        raise ValueError(f"layer has lane_k={list(desc.lane_k)}, koff={desc.koff}, nbout_base="
                         f"{desc.nbout_base}, lane_skip={desc.lane_skip}, but config "
                         f"{cfg.name!r} has kgate=False")
    layout = descriptor_layout(cfg)
    for name, value in fields.items():
        if isinstance(value, int) and value >= 1 << layout[name].shape.width:
            raise ValueError(f"descriptor field {name}={value} does not fit its "
                             f"{layout[name].shape.width} bits for config {cfg.name!r}")
    return layout.const(fields).as_value().value
