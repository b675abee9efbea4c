"""The one config object, and the layer and engine-pass descriptors it runs.

:class:`AccelConfig` fixes the accelerator's parameters (NFU size, data and accumulator
widths, buffer depths) and its set of optional features, each with a parameter record of its
own (:class:`IkrParams`, :class:`PermParams`, :class:`KgateParams`). The same object drives
the Amaranth gateware, the integer reference and the cocotb testbenches, so the model and the
RTL cannot drift apart.

:class:`LayerDesc` is one layer's geometry and numerics. :class:`PassDesc` is one run of the
layer engine: a layer plus how its weights are stored (``ikr_n``, ``perm``, ``lane_k``) and
where its outputs go (``koff``, ``nbout_base``, ``lane_skip``); the weight formats make them
and :func:`slimnfu.contract.descriptor_value` turns one into the engine's descriptor. Its
:meth:`PassDesc.check` refuses, with one message naming the field and its limit, anything the
engine cannot run on a given config, before any simulation starts.

:class:`Scenario` is the data of one run of the whole flow (:mod:`slimnfu.flows`): which
network, trained how, compressed under which budget, for which config. Its defaults, Caffe
LeNet-5 on MNIST under a 1-point budget, are the project's scenario, written here once.
"""

from dataclasses import dataclass, asdict, fields, replace
import math
import re

__all__ = ["AccelConfig", "IkrParams", "PermParams", "KgateParams", "FEATURES", "LayerDesc",
           "PassDesc", "PASS_FIELDS", "as_pass", "CONFIGS", "get_config", "parse_overrides",
           "KINDS", "ACTS", "Scenario", "FC_VARIANTS", "IM2COL_MODES", "out_size",
           "SB_RING_MIN_DEPTH"]

KINDS = ("conv", "fc", "maxpool", "avgpool")
ACTS = ("none", "relu", "pwl")
#: FC weight formats of the permuted-feature path (method C); see ``LayerDesc.perm``.
PERMS = ("none", "affine", "index")
#: The smallest SB (words, a power of two) through which the accelerator streams an FC pass's
#: weights as a ring (:meth:`PassDesc.sb_ring`): a slot is written again ``sb_depth`` cycles
#: after its word, which must come after the word's read (the engine's first step and the
#: index path's delay; tests/rtl/test_accelerator.py checks the margin).
SB_RING_MIN_DEPTH = 64


#: A config name: an identifier, then ``+key=value`` for each parameter changed from a named
#: config (``key`` may be a feature parameter, ``ikr.kmax``).
_NAME = re.compile(r"[A-Za-z_]\w*(\+[\w.]+=[\w.-]+)*")


def _check_flag(name, value):
    if type(value) is not bool and not (type(value) is int and value in (0, 1)):
        raise TypeError(f"{name} must be a bool (or the integer 0/1), not {value!r}")


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        limit = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {limit}, not {value}")


@dataclass(frozen=True)
class IkrParams:
    """Parameters of the IKR pattern-index decoder (feature ``ikr``, method B).

    Parameters
    ----------
    kmax : int
        Largest kernel the IKR window register holds (``kmax**2`` taps per input lane).
    patterns : int
        Pattern-table entries P per layer (at most 16: a 4-bit index per kernel).
    index_depth : int
        Words of the IKR index memory; each word holds the ``tn*ti`` pattern indices of one
        ``(o, t)`` tile pair.
    tiles : int
        Filled-window banks of the pattern decoder, one per input tile (at most
        :attr:`MAX_TILES`). The window slides from one output pixel to the next (only the
        ``min(stride, k)`` new columns are read) in a layer of at most ``tiles`` input tiles;
        a layer with more refills all ``k`` columns of every window
        (:meth:`PassDesc.ikr_cycles`). Each bank is ``kmax**2`` registers of ``ti*dw`` bits.
    lanes : bool
        The lane-addressed IKR unit (:mod:`slimnfu.rtl.ikr_lane_unit`, the default) instead of
        the window decoder (:mod:`slimnfu.rtl.ikr_unit`, ``False``): each input lane reads its
        own tap from its own neuron-buffer bank, so a kernel group takes ``n`` cycles; the
        ``tn`` kernels of an output tile that read an input channel must share a pattern
        (:func:`slimnfu.formats.ikr.unshared_pattern`), and a program whose IKR layers do not
        gets the window decoder from :meth:`slimnfu.formats.ikr.IkrFormat.configure`.
        ``index_depth`` is then the depth of its tap memory (one word per SB word of an IKR
        layer) and ``tiles`` is not used.
    """

    #: Largest :attr:`kmax`.
    MAX_KMAX = 7
    #: Largest :attr:`tiles`.
    MAX_TILES = 64

    kmax: int = 5
    patterns: int = 16
    index_depth: int = 512
    tiles: int = 1
    lanes: bool = True

    def __post_init__(self):
        _check_flag("ikr.lanes", self.lanes)
        object.__setattr__(self, "lanes", bool(self.lanes))
        _check_int("ikr.kmax", self.kmax, 1, self.MAX_KMAX)
        _check_int("ikr.patterns", self.patterns, 1, 16)
        _check_int("ikr.index_depth", self.index_depth, 2, 1 << 20)
        _check_int("ikr.tiles", self.tiles, 1, self.MAX_TILES)


@dataclass(frozen=True)
class PermParams:
    """Parameters of the permuted-feature FC path (feature ``perm``, method C).

    Parameters
    ----------
    depth : int
        Longest common sequence ``s`` (all ``G`` of a layer's, ``G*n_in``) the path holds;
        at most ``sb_depth`` (``s`` is held in SB).
    quadratic : bool
        The address generators walk quadratic rows too (``e != 0``: a first difference that
        moves, :mod:`slimnfu.rtl.perm_addr`); off, affine rows only (``tiny``: 7,669 LUT4
        against 8,213). :meth:`slimnfu.formats.perm.PermAffineFormat.configure` switches it on
        for a program with quadratic rows.
    """

    depth: int = 1024
    quadratic: bool = False

    def __post_init__(self):
        _check_int("perm.depth", self.depth, 2, 1 << 16)
        _check_flag("perm.quadratic", self.quadratic)
        object.__setattr__(self, "quadratic", bool(self.quadratic))


@dataclass(frozen=True)
class KgateParams:
    """The kernel-size-aware multiplier gate (feature ``kgate``, method A) has no parameters;
    its record says the feature is on."""


#: The optional hardware features, each with its parameter record's type.
FEATURES = {"ikr": IkrParams, "perm": PermParams, "kgate": KgateParams}

#: Flat keys of configs written before the feature records (weight images of version 1).
_LEGACY_KEYS = {"ikr_kmax": ("ikr", "kmax"), "ikr_patterns": ("ikr", "patterns"),
                "ikr_index_depth": ("ikr", "index_depth"), "perm_depth": ("perm", "depth")}


def _feature_record(name, value):
    """A feature's record from what a caller gave: the record, a dict of its parameters, a
    flag (True/1: the defaults, False/0/None: off)."""
    cls = FEATURES[name]
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = [f.name for f in fields(cls)]
        if not set(value) <= set(known):
            raise TypeError(f"{name} parameters must be among: {', '.join(known) or 'none'}; "
                            f"not {', '.join(sorted(value))}")
        return cls(**value)
    _check_flag(name, value)
    return cls() if value else None


@dataclass(frozen=True)
class AccelConfig:
    """Parameters of one accelerator build: the NFU and its buffers, plus a set of optional
    features, each with its own parameter record.

    Parameters
    ----------
    name : str
        Config name, used in report and build paths.
    tn : int
        Output lanes of the NFU (neurons computed in parallel).
    ti : int
        Input lanes of the NFU (synapses per output lane per cycle).
    dw : int
        Width of activations and weights, signed two's complement.
    acc : int
        Width of the accumulators (NFU-2) and of the stored biases.
    nbin_depth : int
        Words of NBin; each word holds ``ti`` activations of one pixel.
    sb_depth : int
        Words of SB; each word holds ``tn * ti`` weights of one tap.
    nbout_depth : int
        Words of NBout; each word holds ``tn`` activations of one pixel.
    bias_depth : int
        Words of the bias memory; each word holds ``tn`` biases (one output tile).
    product_stages : int
        Fabric register stages (0 to 2) between the multipliers' output registers and NFU-2's
        adder trees: each gives the route from the DSP blocks to the trees a cycle of its own
        (:class:`slimnfu.rtl.nfu1.NFU1`), one cycle more of latency per pass. ``small``'s 72
        multipliers fill the DSP rows of an LFE5U-45F, so that route crosses the die.
    pwl_lutram : bool
        NFU-3's PWL table as a 16-word distributed RAM per output lane (read asynchronously by
        the lane's segment) instead of one set of 16 registers behind a 16:1 multiplexer per
        lane and bit (:class:`slimnfu.rtl.nfu3.NFU3`). Same cycles and results once a table is
        loaded; ``small`` takes it: its 8 lanes' multiplexers were the place-and-route
        congestion (the registers fanned out to every lane).
    ikr : IkrParams or None
        The IKR pattern-index decoder (:mod:`slimnfu.rtl.ikr_unit`). None (the default): the
        engine is exactly the dense engine; on, conv passes with ``PassDesc.ikr_n > 0`` take
        ``max(n, k)`` cycles per kernel group instead of ``k*k`` (``max(n, stride)`` when the
        window slides: layers of at most ``ikr.tiles`` input tiles,
        :meth:`PassDesc.ikr_cycles`).
    perm : PermParams or None
        The permuted-feature FC path (method C, :mod:`slimnfu.rtl.perm_addr`): the per-lane
        permutation address generators, the affine-parameter memory and SB as a bank per
        multiplier, each holding the common sequence for a ``perm_affine`` pass. None (the
        default): the engine is exactly the dense engine.
    kgate : KgateParams or None
        The kernel-size-aware multiplier gating (method A, :mod:`slimnfu.rtl.kernel_gate`): the
        descriptor gets ``lane_k`` and the placement fields, the engine a ``gated`` counter.
        None (the default): the engine is exactly the dense engine.

    Each feature also takes ``True``/``1`` (its default record), ``False``/``0`` (off) or a
    dict of its parameters; :attr:`features` is the set of those that are on.
    """

    name: str
    tn: int
    ti: int
    dw: int = 16
    acc: int = 48
    nbin_depth: int = 1024
    sb_depth: int = 1024
    nbout_depth: int = 1024
    bias_depth: int = 64
    product_stages: int = 0
    pwl_lutram: bool = False
    ikr: IkrParams = None
    perm: PermParams = None
    kgate: KgateParams = None

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"config name must be a string, not {self.name!r}")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"config name must be an identifier, optionally followed by "
                             f"+key=value changes (e.g. tiny+nbout_depth=8192), not "
                             f"{self.name!r}")
        _check_int("tn", self.tn, 1, 64)
        _check_int("ti", self.ti, 1, 64)
        _check_int("dw", self.dw, 4, 32)
        for name in ("nbin_depth", "sb_depth", "nbout_depth", "bias_depth"):
            _check_int(name, getattr(self, name), 2, 1 << 20)
        _check_int("acc", self.acc, 1, 64)
        _check_int("product_stages", self.product_stages, 0, 2)
        _check_flag("pwl_lutram", self.pwl_lutram)
        object.__setattr__(self, "pwl_lutram", bool(self.pwl_lutram))
        if self.acc < self.min_acc:
            raise ValueError(
                f"acc must be >= {self.min_acc} for dw={self.dw}, ti={self.ti} (one adder-tree "
                f"sum of {self.ti} products of {self.dw}-bit operands), not {self.acc}")
        if self.tn != self.ti:
            raise ValueError(f"tn must equal ti (pooling maps input lanes onto output lanes), "
                             f"not tn={self.tn}, ti={self.ti}")
        for name in FEATURES:
            object.__setattr__(self, name, _feature_record(name, getattr(self, name)))
        if self.perm and self.perm.depth > self.sb_depth:
            raise ValueError(f"perm.depth={self.perm.depth} exceeds sb_depth={self.sb_depth}: "
                             f"the common sequence s is held in SB (a copy in every "
                             f"multiplier's bank); raise sb_depth or lower perm.depth")

    @property
    def features(self):
        """The names of the features that are on (a frozenset of :data:`FEATURES` keys)."""
        return frozenset(name for name in FEATURES if getattr(self, name) is not None)

    @property
    def min_acc(self):
        """Narrowest accumulator that holds one adder-tree sum plus a sign bit."""
        return 2 * self.dw + max(1, math.ceil(math.log2(self.ti))) + 1

    @property
    def pwl_frac(self):
        """Fractional bits of the piecewise-linear activation slopes."""
        return self.dw - 2

    @property
    def qmin(self):
        return -(1 << (self.dw - 1))

    @property
    def qmax(self):
        return (1 << (self.dw - 1)) - 1

    def to_dict(self):
        """Plain data: each feature as a dict of its parameters, or None when off."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict`. Also reads the flat form of weight images of
        version 1 (``ikr: true, ikr_kmax: 5, ...``). An ``ikr`` without ``lanes`` was written
        before the lane IKR unit existed: it is the window decoder (``lanes`` false); a
        ``perm`` without ``quadratic``, before the affine-only generator and ``s`` in SB:
        ``quadratic`` true, and ``sb_depth`` at least ``perm.depth``."""
        d = dict(d)
        legacy = {key: d.pop(key) for key in list(d) if key in _LEGACY_KEYS}
        for key, value in legacy.items():
            feature, param = _LEGACY_KEYS[key]
            if d.get(feature) == 1:  # True or 1: the flat flag of version 1
                d[feature] = {}
            if isinstance(d.get(feature), dict):
                d[feature][param] = value
        if d.get("ikr") == 1:
            d["ikr"] = {}
        if isinstance(d.get("ikr"), dict) and "lanes" not in d["ikr"]:
            d["ikr"] = {**d["ikr"], "lanes": False}
        if d.get("perm") == 1:
            d["perm"] = {}
        if isinstance(d.get("perm"), dict) and "quadratic" not in d["perm"]:
            d["perm"] = {**d["perm"], "quadratic": True}
            # s had a memory of its own then; it is held in SB now
            depth = d["perm"].get("depth", PermParams.depth)
            if isinstance(depth, int) and isinstance(d.get("sb_depth"), int):
                d["sb_depth"] = max(d["sb_depth"], depth)
        return cls(**d)

    @classmethod
    def parameter_names(cls):
        """What :meth:`changed` takes: the plain fields, the features and each feature's
        parameters as ``feature.param``."""
        plain = [f.name for f in fields(cls) if f.name != "name"]
        return plain + [f"{name}.{f.name}" for name, rec in FEATURES.items()
                        for f in fields(rec)]

    def with_(self, **kw):
        """Return a copy with some parameters changed (and validated again)."""
        return replace(self, **kw)

    def changed(self, **kw):
        """A copy with some parameters changed, named after what changed (``tiny`` with
        ``nbout_depth=8192`` is ``tiny+nbout_depth=8192``), so that nothing built or reported
        for one config is taken for the other's. A feature parameter is given as
        ``feature.param`` (``**{"ikr.kmax": 3}``) and switches its feature on. Values equal to
        the current ones change nothing."""
        if "name" in kw:
            raise TypeError("changed() derives the name; use with_(name=...) to rename")
        unknown = set(kw) - set(self.parameter_names())
        if unknown:
            raise TypeError(f"unknown config parameter {sorted(unknown)[0]!r}; known: "
                            f"{', '.join(self.parameter_names())}")
        flat = {k: v for k, v in kw.items() if "." not in k}
        for name in FEATURES:
            if name in flat:
                flat[name] = _feature_record(name, flat[name])
        for key, value in kw.items():
            if "." in key:
                feature, param = key.split(".")
                base = flat.get(feature, getattr(self, feature)) or FEATURES[feature]()
                flat[feature] = replace(base, **{param: value})
        new = replace(self, **flat)
        if new == self:
            return self
        return replace(new, name=self._derived_name(new))

    def changes_from(self, base):
        """The parameters that make ``base`` into this config, as :meth:`changed` takes them:
        ``base.changed(**cfg.changes_from(base))`` equals ``cfg`` but for its name. A feature
        is ``1`` (on) or ``0`` (off) and each of its parameters that differs from ``base``'s
        (or from its defaults, when ``base`` has it off) is ``feature.param``."""
        out = {}
        for f in fields(self):
            mine, theirs = getattr(base, f.name), getattr(self, f.name)
            if f.name == "name":
                continue
            if f.name not in FEATURES:
                if mine != theirs:
                    out[f.name] = theirs
                continue
            if theirs is None:
                if mine is not None:
                    out[f.name] = 0
                continue
            if mine is None:
                out[f.name] = 1
            ref = mine or FEATURES[f.name]()
            out.update({f"{f.name}.{p.name}": getattr(theirs, p.name) for p in fields(theirs)
                        if getattr(theirs, p.name) != getattr(ref, p.name)})
        return out

    def _derived_name(self, new):
        base, _, old = self.name.partition("+")
        changes = dict(c.split("=", 1) for c in old.split("+") if c)
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(new, f.name)
            if f.name == "name" or mine == theirs:
                continue
            if f.name not in FEATURES:
                changes[f.name] = str(theirs)
                continue
            changes = {k: v for k, v in changes.items() if not k.startswith(f.name + ".")}
            changes[f.name] = "1" if theirs is not None else "0"
            if theirs is not None:
                default = FEATURES[f.name]()
                for p in fields(theirs):
                    if getattr(theirs, p.name) != getattr(default, p.name):
                        changes[f"{f.name}.{p.name}"] = str(getattr(theirs, p.name))
        return "+".join([base] + [f"{k}={v}" for k, v in sorted(changes.items())])

    def fit_buffers(self, passes, name=None, stream=False):
        """A copy whose buffers hold every engine pass of ``passes`` (:class:`PassDesc` or
        :class:`LayerDesc`), depths kept or raised to powers of two: NBin, SB, NBout, bias
        and (with ``ikr``) the IKR index memory. For benchmarks that run real networks'
        layers one at a time on a small array. With ``stream`` (a program for the whole
        accelerator), a pass whose SB words the accelerator can stream (:meth:`PassDesc.sb_ring`)
        raises SB only to :data:`SB_RING_MIN_DEPTH`."""
        need = {"nbin_depth": 0, "sb_depth": 0, "nbout_depth": 0, "bias_depth": 0,
                "index_depth": 0}
        for p in map(as_pass, passes):
            ci, co = p.tiles(self)
            sb = p.sb_words(self)
            if stream and p.sb_streams():
                sb = min(sb, SB_RING_MIN_DEPTH)
            for key, words in (("nbin_depth", p.nbin_words(self)), ("sb_depth", sb),
                               ("nbout_depth", p.nbout_words(self)),
                               ("bias_depth", 0 if p.layer.is_pool else co),
                               ("index_depth", p.ikr_index_words(self))):
                need[key] = max(need[key], words)

        def fit(have, words):
            return max(have, 1 << max(0, words - 1).bit_length())

        kw = {k: fit(getattr(self, k), v) for k, v in need.items() if k != "index_depth"}
        if self.ikr is not None:
            kw["ikr"] = replace(self.ikr, index_depth=fit(self.ikr.index_depth,
                                                          need["index_depth"]))
        return self.with_(name=name or self.name, **kw)


CONFIGS = {
    "tiny": AccelConfig("tiny", tn=4, ti=4, dw=16, acc=48, nbin_depth=2048, sb_depth=1024,
                        nbout_depth=4096, bias_depth=128),
    "small": AccelConfig("small", tn=8, ti=8, dw=16, acc=48, nbin_depth=1024, sb_depth=1024,
                         nbout_depth=2048, bias_depth=64, product_stages=1,
                         pwl_lutram=True),
    "diannao": AccelConfig("diannao", tn=16, ti=16, dw=16, acc=48, nbin_depth=2048,
                           sb_depth=2048, nbout_depth=2048, bias_depth=32),
}


def get_config(name):
    """Return the named config, or raise ``ValueError`` listing the known ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; known configs: {', '.join(CONFIGS)}") from None


def parse_overrides(cfg, overrides):
    """Apply ``KEY=VALUE`` strings to ``cfg``; the config's own checks name bad values. The
    result is named after what changed (:meth:`AccelConfig.changed`)."""
    fields = set(cfg.parameter_names())
    kw = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set needs KEY=VALUE with KEY one of {', '.join(sorted(fields))}"
                             f", not {item!r}")
        try:
            kw[key] = int(value)
        except ValueError:
            raise ValueError(f"--set {key} must be an integer, not {value!r}") from None
    return cfg.changed(**kw)


def out_size(size, k, stride, pad):
    """Output rows (or columns) of a ``k``-wide window at ``stride`` over ``size`` values padded
    by ``pad`` on each side."""
    return (size + 2 * pad - k) // stride + 1


@dataclass(frozen=True)
class LayerDesc:
    """One layer's geometry and numerics: what the model says, whatever the weight format.

    How a layer's weights are stored and where an engine run puts its outputs are not here:
    they belong to the engine pass that runs it (:class:`PassDesc`).

    Parameters
    ----------
    kind : str
        ``"conv"``, ``"fc"``, ``"maxpool"`` or ``"avgpool"``. An FC layer is a 1x1 conv on a
        1x1 image with ``n_in`` channels.
    n_in, n_out : int
        Input and output channels (features). Pooling needs ``n_out == n_in``.
    h_in, w_in : int
        Input height and width.
    k : int
        Kernel (or pooling window) size, square.
    stride, pad : int
        Stride and zero padding. Pooling takes no padding.
    shift : int
        Requantisation shift ``sh = f_x + f_w - f_y`` (conv, fc). Average pooling uses
        ``log2(k*k)`` and max pooling 0, whatever is given.
    act : str
        ``"none"``, ``"relu"`` or ``"pwl"`` (the 16-segment table loaded into NFU-3).
    seg_shift : int
        For ``act="pwl"``: each segment spans ``2**seg_shift`` integer steps of the input.
    """

    kind: str
    n_in: int
    n_out: int
    h_in: int = 1
    w_in: int = 1
    k: int = 1
    stride: int = 1
    pad: int = 0
    shift: int = 0
    act: str = "none"
    seg_shift: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"layer kind must be one of {KINDS}, not {self.kind!r}")
        if self.act not in ACTS:
            raise ValueError(f"act must be one of {ACTS}, not {self.act!r}")
        for name in ("n_in", "n_out", "h_in", "w_in", "k", "stride"):
            _check_int(name, getattr(self, name), 1)
        for name in ("pad", "shift", "seg_shift"):
            _check_int(name, getattr(self, name), 0)
        if self.kind == "fc" and (self.h_in, self.w_in, self.k, self.stride, self.pad) != \
                (1, 1, 1, 1, 0):
            raise ValueError("an fc layer must have h_in = w_in = k = stride = 1 and pad = 0")
        if self.kind in ("maxpool", "avgpool"):
            if self.n_out != self.n_in:
                raise ValueError(f"pooling needs n_out == n_in, not {self.n_out} != {self.n_in}")
            if self.pad:
                raise ValueError(f"pooling takes no padding, not pad={self.pad}")
            if self.kind == "avgpool" and (self.k * self.k) & (self.k * self.k - 1):
                raise ValueError(f"avgpool needs a power-of-two window k*k, not k={self.k}")
        if self.k > self.h_in + 2 * self.pad or self.k > self.w_in + 2 * self.pad:
            raise ValueError(f"k={self.k} is larger than the padded input "
                             f"{self.h_in + 2 * self.pad}x{self.w_in + 2 * self.pad}")

    @property
    def is_pool(self):
        return self.kind in ("maxpool", "avgpool")

    @property
    def h_out(self):
        return out_size(self.h_in, self.k, self.stride, self.pad)

    @property
    def w_out(self):
        return out_size(self.w_in, self.k, self.stride, self.pad)

    @property
    def effective_shift(self):
        """The shift NFU-3 applies: ``shift`` for conv/fc, ``log2(k*k)`` for avgpool."""
        if self.kind == "avgpool":
            return (self.k * self.k).bit_length() - 1
        if self.kind == "maxpool":
            return 0
        return self.shift

    def with_(self, **changes):
        """A copy with ``changes`` applied (and checked)."""
        return replace(self, **changes)

    def tiles(self, cfg):
        """Return ``(ci_tiles, co_tiles)`` for ``cfg``."""
        if self.is_pool:
            return 1, -(-self.n_in // cfg.tn)
        return -(-self.n_in // cfg.ti), -(-self.n_out // cfg.tn)

    def in_tiles(self, cfg):
        """Input channel tiles in NBin (pooling reads one input tile per output tile)."""
        return -(-self.n_in // cfg.ti)

    def macs(self):
        """Useful multiply-accumulates (pooling: compared or summed inputs)."""
        per_out = self.k * self.k * (1 if self.is_pool else self.n_in)
        return self.h_out * self.w_out * self.n_out * per_out

    def nbin_words(self, cfg):
        return self.in_tiles(cfg) * self.h_in * self.w_in

    def nbout_words(self, cfg):
        """Words the layer writes, run as one dense pass (:meth:`PassDesc.nbout_words`)."""
        return PassDesc(self).nbout_words(cfg)

    def sb_words(self, cfg):
        """SB words of the layer's dense weights (:meth:`PassDesc.sb_words`)."""
        return PassDesc(self).sb_words(cfg)

    def dense_cycles(self, cfg):
        """NFU cycles of the layer run as one dense pass (:meth:`PassDesc.dense_cycles`)."""
        return PassDesc(self).dense_cycles(cfg)

    def max_acc_bits(self, cfg, max_abs_bias=None):
        """Bits an accumulator needs for this layer's largest possible sum, sign included.

        The worst case is every product at ``(-2**(dw-1))**2`` plus the largest bias; when
        ``max_abs_bias`` is not given, a bias of the same size as one product is assumed.
        """
        if self.is_pool:
            return cfg.dw + (self.k * self.k).bit_length()
        terms = self.k * self.k * self.n_in
        prod = 1 << (2 * cfg.dw - 2)
        bias = prod if max_abs_bias is None else int(max_abs_bias)
        return (terms * prod + bias).bit_length() + 1

    def check(self, cfg, max_abs_bias=None):
        """Raise ``ValueError`` naming the field and its limit unless ``cfg`` can run this
        layer as one dense engine pass (:meth:`PassDesc.check`); returns the layer."""
        PassDesc(self).check(cfg, max_abs_bias)
        return self

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict`. Descriptors written before the pass record existed
        (weight images of version 1, network caches) also held the pass fields; the weight
        format's record holds what they said, so they are dropped here."""
        return cls(**{k: v for k, v in d.items() if k not in PASS_FIELDS})


#: The fields a :class:`PassDesc` adds to its layer.
PASS_FIELDS = ("ikr_n", "perm", "lane_k", "koff", "nbout_base", "lane_skip", "flatten")


@dataclass(frozen=True)
class PassDesc:
    """One run of the layer engine: a layer's geometry and numerics (:class:`LayerDesc`), how
    its weights are stored, and where its outputs go. The weight formats
    (:mod:`slimnfu.formats`) make them; :func:`slimnfu.contract.descriptor_value` turns one
    into the value of the engine's ``desc`` port.

    Parameters
    ----------
    layer : LayerDesc
        What the pass computes. For a centre-tap pass (``koff``), the ``k x k`` kernel it
        applies, with the padding of the model layer it is part of.
    ikr_n : int
        0 for dense weights; for an IKR conv pass (``cfg.ikr``) the number of taps each kernel
        keeps, ``1 <= ikr_n <= k*k``. SB then holds ``ikr_n`` words per tile pair, not ``k*k``.
    perm : str
        ``"none"`` (dense), or for an FC pass whose rows are permutations of one common
        sequence (``cfg.perm``): ``"affine"`` (generated permutations, the engine's address
        generators expand them) or ``"index"`` (an index ROM; SB holds the gathered weights).
    lane_k : tuple of int
        Kernel-size-aware gating (``cfg.kgate``): the centred kernel size of each output lane
        of every tile of this pass (odd, ``<= k``; 0 or absent: the full ``k``). Lanes whose
        kernel does not cover the current tap are gated.
    koff : int
        Centre-tap offset (``cfg.kgate``): the pass applies its ``k x k`` kernel centred in a
        layer kernel of ``k + 2*koff``, i.e. it reads the input at ``oy*stride + ky + koff -
        pad``. The sequencer walks only those ``k*k`` taps. Output size: ``(h_in + 2*(pad -
        koff) - k) // stride + 1``.
    nbout_base : int
        NBout word of the pass's first output (``cfg.kgate``): passes that compute different
        output tiles of one layer write beside each other.
    lane_skip : int
        Lanes ``0 .. lane_skip-1`` of the pass's first output tile are not written
        (``cfg.kgate``), so a pass can fill the rest of a tile another pass began.
    flatten : tuple of int
        ``()``, or for an FC pass with ``perm="affine"`` that reads a conv output where the
        engine wrote it: ``(channels, pixels)`` of that output. Its inputs are then the
        buffer's values in order (word ``t*pixels + p`` holds channels ``t*tn ..`` at pixel
        ``p``; :func:`slimnfu.formats.layout.buffer_order`), ``layer.n_in =
        ceil(channels/tn)*tn*pixels`` of them, the lanes of a last partial channel tile
        padding; the common sequence has ``channels*pixels`` values, and the address
        generators walk PyTorch's flatten order over the buffer's (:mod:`slimnfu.rtl.perm_addr`).
    """

    layer: LayerDesc
    ikr_n: int = 0
    perm: str = "none"
    lane_k: tuple = ()
    koff: int = 0
    nbout_base: int = 0
    lane_skip: int = 0
    flatten: tuple = ()

    def __post_init__(self):
        d = self.layer
        if not isinstance(d, LayerDesc):
            raise TypeError(f"a pass's layer must be a LayerDesc, not {type(d).__name__}")
        object.__setattr__(self, "lane_k", tuple(self.lane_k))
        object.__setattr__(self, "flatten", tuple(self.flatten))
        if self.flatten:
            if len(self.flatten) != 2:
                raise ValueError(f"flatten must be (channels, pixels), not {self.flatten!r}")
            for name, v in zip(("flatten channels", "flatten pixels"), self.flatten):
                _check_int(name, v, 1)
            if self.perm != "affine":
                raise ValueError(f"flatten applies to perm='affine' fc passes only, not "
                                 f"perm={self.perm!r}")
        for name in ("koff", "nbout_base", "lane_skip", "ikr_n"):
            _check_int(name, getattr(self, name), 0)
        if self.koff and d.kind != "conv":
            raise ValueError(f"koff applies to conv layers only, not {d.kind}")
        for j, lk in enumerate(self.lane_k):
            _check_int(f"lane_k[{j}]", lk, 0, d.k)
            if lk % 2 == 0 and lk:
                raise ValueError(f"lane_k[{j}]={lk} is even; a lane's kernel is odd and centred "
                                 f"in the layer's k={d.k} (0: the full k)")
        if self.lane_k and (d.kind != "conv" or d.k % 2 == 0):
            raise ValueError(f"lane_k applies to conv layers with an odd k, not {d.kind} "
                             f"k={d.k}")
        if self.ikr_n and d.kind != "conv":
            raise ValueError(f"ikr_n applies to conv layers only, not {d.kind}")
        if self.ikr_n > d.k * d.k:
            raise ValueError(f"layer conv {d.n_in}->{d.n_out} k={d.k}: ikr_n="
                             f"{self.ikr_n} > k*k={d.k * d.k}")
        if self.perm not in PERMS:
            raise ValueError(f"perm must be one of {PERMS}, not {self.perm!r}")
        if self.perm != "none" and d.kind != "fc":
            raise ValueError(f"perm={self.perm!r} applies to fc layers only, not {d.kind}")
        if d.k + 2 * self.koff > d.h_in + 2 * d.pad or d.k + 2 * self.koff > d.w_in + 2 * d.pad:
            raise ValueError(f"k={d.k} (+ 2*koff={2 * self.koff}) is larger than the padded "
                             f"input {d.h_in + 2 * d.pad}x{d.w_in + 2 * d.pad}")

    @property
    def h_out(self):
        d = self.layer
        return (d.h_in + 2 * (d.pad - self.koff) - d.k) // d.stride + 1

    @property
    def w_out(self):
        d = self.layer
        return (d.w_in + 2 * (d.pad - self.koff) - d.k) // d.stride + 1

    def with_(self, **changes):
        """A copy with ``changes`` applied (and checked)."""
        return replace(self, **changes)

    @property
    def perm_n(self):
        """The length ``N`` of a permuted pass's common sequence: ``channels*pixels`` with
        ``flatten``, else ``layer.n_in``."""
        return self.flatten[0] * self.flatten[1] if self.flatten else self.layer.n_in

    def tiles(self, cfg):
        """Return ``(ci_tiles, co_tiles)`` for ``cfg``."""
        return self.layer.tiles(cfg)

    def nbin_words(self, cfg):
        return self.layer.nbin_words(cfg)

    def nbout_words(self, cfg):
        """Words the pass writes (from ``nbout_base``)."""
        return self.tiles(cfg)[1] * self.h_out * self.w_out

    def sb_words(self, cfg):
        # an affine-permuted FC pass has no weight words: it gathers them from s (which it
        # loads into SB, perm_n*G words, checked against perm.depth <= sb_depth)
        d = self.layer
        if d.is_pool or self.perm == "affine":
            return 0
        ci, co = self.tiles(cfg)
        return ci * co * (self.ikr_n or d.k * d.k)

    def sb_streams(self):
        """Whether the pass reads each of its SB words once, in address order, one a step: an
        FC pass that reads SB (dense weights or ``perm="index"``)."""
        return self.layer.kind == "fc" and self.perm != "affine"

    def sb_ring(self, cfg):
        """Whether the accelerator streams this pass's SB words through SB as a ring: it
        :meth:`sb_streams` and has more words than ``cfg.sb_depth``. The weight stream then
        begins the layer's SB words when the layer begins and writes word ``a`` into slot ``a
        mod sb_depth``, one a cycle, as the engine reads them one a step
        (:meth:`slimnfu.contract.Program.load_plan`); the engine alone cannot run it."""
        return self.sb_streams() and self.sb_words(cfg) > cfg.sb_depth

    def dense_cycles(self, cfg):
        """Analytic NFU cycle count of the dense engine:
        ``H_out*W_out*ceil(N_out/Tn)*ceil(N_in/Ti)*K*K``. Pooling walks one input tile per
        output tile."""
        ci, co = self.tiles(cfg)
        return self.h_out * self.w_out * co * ci * self.layer.k * self.layer.k

    def ikr_cycles(self, cfg):
        """Analytic NFU cycle count of an IKR conv pass (``ikr_n > 0``) on the IKR engine.

        Each kernel group (one output pixel, one output tile, one input tile) takes
        ``max(ikr_n, cols)`` cycles: ``ikr_n`` compute steps, while the next group's window
        fills ``cols`` columns (k pixels, k NBin read ports) one per cycle. ``cols = k``,
        except when the layer has at most ``cfg.ikr.tiles`` input tiles (*banked*: the pattern
        decoder's window banks, one per input tile). A banked layer is walked ``oy, ox, o, t``
        (:meth:`ikr_banked`), so a bank's window serves every output tile of its pixel:
        output tile 0's window of every output pixel but the first of each row slides from
        the same input tile's window of the previous pixel and fills only
        ``min(stride, k)`` new columns, and the other output tiles' groups fill nothing
        (``cols = 0``). One extra slot fills the first window, and the last slot ends after
        its ``ikr_n`` steps::

            ci > tiles:  groups * max(n, k) + n
            ci <= tiles: h_out * (ci * (max(n, k) + (co - 1) * n)
                                  + (w_out - 1) * ci * (max(n, min(stride, k)) + (co - 1) * n))
                         + n

        With ``cfg.ikr.lanes`` (the lane-addressed unit) a group takes ``n`` cycles:
        ``groups * n``.
        """
        ci, co = self.tiles(cfg)
        if cfg.ikr.lanes:
            # the lane unit: every input lane fetches its own tap, no window to fill
            return self.h_out * self.w_out * co * ci * self.ikr_n
        return self.ikr_slot_cycles(cfg, self.h_out * self.w_out * co * ci) + self.ikr_n

    def ikr_index_words(self, cfg):
        """Words of the IKR index memory the pass needs: one per tile pair ``(o, t)`` (the
        window decoder's pattern indices), one per SB word with ``ikr.lanes`` (the lane
        unit's taps); 0 for a pass that is not IKR."""
        if not self.ikr_n:
            return 0
        ci, co = self.tiles(cfg)
        return ci * co * (self.ikr_n if cfg.ikr is not None and cfg.ikr.lanes else 1)

    def ikr_banked(self, cfg):
        """Whether an IKR pass is *banked* (at most ``cfg.ikr.tiles`` input tiles, a decoder
        window bank each) and so walked ``oy, ox, o, t``, the output tile inside the output
        pixel; else DianNao's order ``o, oy, ox, t`` (see :meth:`ikr_cycles`)."""
        return not cfg.ikr.lanes and self.tiles(cfg)[0] <= cfg.ikr.tiles

    def ikr_group_slot(self, cfg, o, oy, ox):
        """The slot of output group ``(o, oy, ox)``'s first kernel group (input tile 0) in
        the pass's walk (:meth:`ikr_banked`)."""
        ci, co = self.tiles(cfg)
        pixel = oy * self.w_out + ox
        return ((pixel * co + o) if self.ikr_banked(cfg) else (o * self.h_out * self.w_out
                                                                + pixel)) * ci

    def ikr_slot_cycles(self, cfg, slots):
        """Cycles of an IKR pass's first ``slots`` slots (slot ``q`` fills kernel group ``q``
        of the walk, :meth:`ikr_banked`, and computes group ``q - 1``); see
        :meth:`ikr_cycles`."""
        ci, co = self.tiles(cfg)
        n, k = self.ikr_n, self.layer.k
        if not self.ikr_banked(cfg):
            return slots * max(n, k)
        slide = max(n, min(self.layer.stride, k))

        def pixel(fill, q):
            # the first q slots of a pixel: ci groups of output tile 0 fill, the rest do not
            return min(q, ci) * fill + max(q - ci, 0) * n

        per_pixel = co * ci
        rows, rest = divmod(slots, self.w_out * per_pixel)
        pixels, q = divmod(rest, per_pixel)
        row = pixel(max(n, k), per_pixel) + (self.w_out - 1) * pixel(slide, per_pixel)
        done = (pixel(max(n, k), per_pixel) + (pixels - 1) * pixel(slide, per_pixel)
                if pixels else 0)
        return rows * row + done + pixel(slide if pixels else max(n, k), q)

    def nfu_cycles(self, cfg):
        """The NFU cycles of the pass: :meth:`ikr_cycles` for an IKR pass, else
        :meth:`dense_cycles`."""
        return self.ikr_cycles(cfg) if self.ikr_n else self.dense_cycles(cfg)

    def steps(self, cfg):
        """NFU steps: :meth:`dense_cycles`, or ``ikr_n`` per kernel group for an IKR pass."""
        if self.ikr_n:
            ci, co = self.tiles(cfg)
            return self.h_out * self.w_out * ci * co * self.ikr_n
        return self.dense_cycles(cfg)

    def gated_mults(self, cfg):
        """Multiplies the kernel gate switches off: per output group and input tile, lane ``j``
        is gated on ``k*k - lane_k[j]**2`` taps, ``ti`` multipliers each."""
        k = self.layer.k
        per_group = sum(k * k - lk * lk for lk in self.lane_k if lk)
        ci, co = self.tiles(cfg)
        return self.h_out * self.w_out * co * ci * per_group * cfg.ti

    def check(self, cfg, max_abs_bias=None, stream=False):
        """Raise ``ValueError`` naming the field and its limit if ``cfg`` cannot run this pass;
        returns the pass. With ``stream`` (the pass is part of a program for the whole
        accelerator), a pass with more SB words than ``cfg.sb_depth`` that :meth:`sb_streams`
        only needs SB to be a power of two of at least :data:`SB_RING_MIN_DEPTH` words
        (:meth:`sb_ring`)."""
        d = self.layer
        if self.lane_k and (cfg.kgate is None or len(self.lane_k) > cfg.tn):
            raise ValueError(f"lane_k has {len(self.lane_k)} lanes; config {cfg.name!r} has "
                             f"kgate={cfg.kgate is not None} and tn={cfg.tn} (lane_k needs "
                             f"kgate and at most tn lanes)")
        placed = (self.koff, self.nbout_base, self.lane_skip)
        if any(placed) and cfg.kgate is None:
            raise ValueError(f"koff={self.koff}, nbout_base={self.nbout_base}, lane_skip="
                             f"{self.lane_skip} need kgate, but config {cfg.name!r} has "
                             f"kgate=False")
        if self.lane_skip >= cfg.tn:
            raise ValueError(f"lane_skip must be < tn={cfg.tn}, not {self.lane_skip}")
        limits = {
            "nbin_depth": (self.nbin_words(cfg), "input words (ceil(n_in/ti)*h_in*w_in)"),
            "nbout_depth": (self.nbout_base + self.nbout_words(cfg),
                            "output words (nbout_base + ceil(n_out/tn)*h_out*w_out)"),
            "sb_depth": (self.sb_words(cfg), "weight words (ceil(n_in/ti)*ceil(n_out/tn)*k*k)"),
            "bias_depth": (0 if d.is_pool else self.tiles(cfg)[1], "bias words (output tiles)"),
        }
        if stream and self.sb_ring(cfg):
            del limits["sb_depth"]
            have = cfg.sb_depth
            if have < SB_RING_MIN_DEPTH or have & (have - 1):
                raise ValueError(f"layer fc {d.n_in}->{d.n_out} streams {self.sb_words(cfg)} "
                                 f"weight words through SB, which needs sb_depth a power of "
                                 f"two >= {SB_RING_MIN_DEPTH}, but config {cfg.name!r} has "
                                 f"sb_depth={have}")
        for name, (need, what) in limits.items():
            have = getattr(cfg, name)
            if need > have:
                raise ValueError(f"layer {d.kind} {d.n_in}->{d.n_out} "
                                 f"{d.h_in}x{d.w_in} k={d.k} needs {need} {what}, but "
                                 f"config {cfg.name!r} has {name}={have}")
        need = d.max_acc_bits(cfg, max_abs_bias)
        if need > cfg.acc:
            raise ValueError(f"layer {d.kind} {d.n_in}->{d.n_out} k={d.k} can sum "
                             f"to {need} bits, but config {cfg.name!r} has acc={cfg.acc}")
        if d.effective_shift >= cfg.acc:
            raise ValueError(f"shift must be < acc={cfg.acc}, not {d.effective_shift}")
        if d.act == "pwl" and d.seg_shift >= cfg.dw:
            raise ValueError(f"seg_shift must be < dw={cfg.dw}, not {d.seg_shift}")
        if self.ikr_n:
            if cfg.ikr is None:
                raise ValueError(f"layer conv {d.n_in}->{d.n_out} k={d.k} has ikr_n="
                                 f"{self.ikr_n}, but config {cfg.name!r} has ikr=False")
            if d.k > cfg.ikr.kmax:
                raise ValueError(f"layer conv {d.n_in}->{d.n_out}: IKR needs k <= "
                                 f"ikr.kmax={cfg.ikr.kmax}, not k={d.k}")
            words = self.ikr_index_words(cfg)
            if words > cfg.ikr.index_depth:
                raise ValueError(f"layer conv {d.n_in}->{d.n_out} needs {words} IKR "
                                 f"index words, but config {cfg.name!r} has ikr.index_depth="
                                 f"{cfg.ikr.index_depth}")
        if self.perm == "affine":
            if cfg.perm is None:
                raise ValueError(f"layer fc {d.n_in}->{d.n_out} has perm={self.perm!r}, "
                                 f"but config {cfg.name!r} has perm=False")
            n = self.perm_n
            if n > cfg.perm.depth:
                raise ValueError(f"layer fc {d.n_in}->{d.n_out}: its common sequence "
                                 f"needs n_in={n} words, but config {cfg.name!r} has "
                                 f"perm.depth={cfg.perm.depth}")
            if self.flatten:
                c, hw = self.flatten
                want = -(-c // cfg.tn) * cfg.tn * hw
                if d.n_in != want:
                    raise ValueError(f"layer fc {d.n_in}->{d.n_out}: flatten={self.flatten} "
                                     f"reads ceil({c}/tn)*tn*{hw} = {want} buffer values on "
                                     f"config {cfg.name!r} (tn={cfg.tn}), not n_in={d.n_in}")
        for name, bits in (("h_in", 12), ("w_in", 12), ("k", 4), ("stride", 4), ("pad", 4)):
            if getattr(d, name) >= (1 << bits):
                raise ValueError(f"{name} must be < {1 << bits} (descriptor field width), "
                                 f"not {getattr(d, name)}")
        if self.koff >= 16:
            raise ValueError(f"koff must be < 16 (descriptor field width), not {self.koff}")
        return self

    def to_dict(self):
        """Plain data: the layer's fields and the pass's, in one flat dict."""
        return {**self.layer.to_dict(), **{f: getattr(self, f) for f in PASS_FIELDS}}

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict` (a plain layer's dict is a dense pass)."""
        layer = {k: v for k, v in d.items() if k not in PASS_FIELDS}
        return cls(LayerDesc(**layer), **{k: v for k, v in d.items() if k in PASS_FIELDS})


def as_pass(desc):
    """``desc`` as a :class:`PassDesc`: a :class:`LayerDesc` is one dense pass over its
    whole input."""
    if isinstance(desc, PassDesc):
        return desc
    if isinstance(desc, LayerDesc):
        return PassDesc(desc)
    raise TypeError(f"expected a LayerDesc or a PassDesc, not {type(desc).__name__}")


#: Method C's choices in a :class:`Scenario`: the budget picks, or one variant whatever the
#: accuracy.
FC_VARIANTS = ("auto", "affine", "index")

#: The compiler's im2col choice for a first conv layer with few input channels
#: (:func:`slimnfu.gen.compiler.compile_model`): chosen by the schedule model, forced on, off.
IM2COL_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Scenario:
    """One run of the flow: train or load, compress, compile, run (:mod:`slimnfu.flows`).

    The defaults are the project's scenario; ``slimnfu demo``, ``board``, ``synth --rom`` and
    ``bench network`` start from them and change only what their options say.

    Parameters
    ----------
    network : str
        A reference network (:data:`slimnfu.compress.models.NETWORKS`), or the build name of
        a user's model (:func:`slimnfu.flows.model_name`).
    dataset : str
        Its dataset; the flow refuses one that is not the network's own.
    budget : float
        Accuracy budget in points below the float network, judged on the check split.
    val, check, calib : int
        The dataset's calib split, held out from training, holds three parts
        (:func:`slimnfu.flows.holdout`): the selection split (``val`` images, every
        compression decision is taken on them), the check split (its last ``check`` images,
        which only judge the final network against the budget) and the calibration images
        (its first ``calib``, label-free: they may overlap the selection split, never the
        check split).
    fc_variant : str
        One of :data:`FC_VARIANTS`: method C's variant.
    config : str
        The base accelerator config, a key of :data:`CONFIGS`.
    seed : int
        Training seed.
    epochs : int or None
        Training epochs; None: the network's own.
    subset : int or None
        Train, and fine-tune while compressing, on the first ``subset`` training images only;
        None: all of them.
    threads : int or None
        torch CPU threads for the run; None: torch's setting is left alone.
    fc_epochs, fc_patience, patterns, ikr_finetune, ikr_share : int
        Compression: the epoch budget and early-stopping patience of each method C try, IKR
        patterns per layer, IKR fine-tuning batches per try, IKR output channels per shared
        pattern (:func:`slimnfu.compress.pipeline.compress_network`; the config's ``tn`` lets
        the lane IKR unit run the network).
    im2col : str
        One of :data:`IM2COL_MODES`: whether the compiler runs the first layer as im2col
        (:func:`slimnfu.gen.compiler.compile_model`; not part of the compression, so not of
        the network cache's name).
    """

    network: str = "lenet5"
    dataset: str = "mnist"
    budget: float = 1.0
    val: int = 3000
    calib: int = 2000
    check: int = 2000
    fc_variant: str = "auto"
    config: str = "tiny"
    seed: int = 0
    epochs: int | None = None
    subset: int | None = None
    threads: int | None = None
    fc_epochs: int = 10
    fc_patience: int = 2
    patterns: int = 16
    ikr_finetune: int = 150
    ikr_share: int = 1
    im2col: str = "auto"

    def __post_init__(self):
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or \
                not 0 <= self.budget <= 100:
            raise ValueError(f"budget must be in [0, 100] points, not {self.budget!r}")
        if self.fc_variant not in FC_VARIANTS:
            raise ValueError(f"fc_variant must be one of {', '.join(FC_VARIANTS)}, not "
                             f"{self.fc_variant!r}")
        if self.im2col not in IM2COL_MODES:
            raise ValueError(f"im2col must be one of {', '.join(IM2COL_MODES)}, not "
                             f"{self.im2col!r}")
        get_config(self.config)
        for name in ("val", "calib", "check", "fc_epochs", "fc_patience", "patterns",
                     "ikr_share"):
            _check_int(name, getattr(self, name), 1)
        _check_int("ikr_finetune", self.ikr_finetune, 0)
        for name in ("epochs", "subset", "threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)

    def with_(self, **changes):
        """A copy with ``changes`` applied (and checked)."""
        return replace(self, **changes)
