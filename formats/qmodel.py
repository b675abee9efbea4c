"""A quantised network as the engine runs it: :class:`QLayer` and :class:`QuantModel`.

:func:`slimnfu.compress.quant.quantize_model` makes them from a float network; the
compression methods turn layers into their formats; the compiler, the weight image and the
co-simulation read them. ``QLayer.format`` names the layer's :class:`~slimnfu.formats.base.
WeightFormat` and ``QLayer.compressed`` holds that format's typed record.
"""

from dataclasses import dataclass, field

import torch

from slimnfu import fixed
from slimnfu.config import LayerDesc
from slimnfu.formats.base import get_format, record_from_state, record_to_state

__all__ = ["QLayer", "QuantModel"]


def _tensor_state(t):
    return None if t is None else {"shape": list(t.shape), "values": t.reshape(-1).tolist()}


def _tensor_from_state(s):
    if s is None:
        return None
    return torch.tensor(s["values"], dtype=torch.int64).reshape(s["shape"])


@dataclass
class QLayer:
    """One engine layer of a quantised network.

    Parameters
    ----------
    name : str
        ``conv1``, ``pool1``, ``fc1``, ... (numbered per kind, in order).
    desc : LayerDesc
    w : torch.Tensor or None
        int64 weights, ``(O, C, K, K)`` for conv, ``(O, C)`` for fc, None for pooling. For a
        compressed format, the weights it stands for (e.g. zero off an IKR pattern).
    b : torch.Tensor or None
        int64 biases ``(O,)`` at scale ``f_x + f_w``, None for pooling.
    f_x, f_w, f_y : int
        Fractional bits of the input, weights (0 for pooling) and output.
    pwl : PwlTable or None
        The NFU-3 table when ``desc.act == "pwl"``.
    act_func : str or None
        ``"sigmoid"`` or ``"tanh"`` when ``desc.act == "pwl"``.
    format : str
        The weight format (:data:`slimnfu.formats.FORMATS`): ``"dense"``, or a compressed one.
    compressed : object or None
        The format's record (its ``record`` dataclass; None for ``dense``).
    """

    name: str
    desc: LayerDesc
    w: torch.Tensor = None
    b: torch.Tensor = None
    f_x: int = 0
    f_w: int = 0
    f_y: int = 0
    pwl: fixed.PwlTable = None
    act_func: str = None
    format: str = "dense"
    compressed: object = None

    @property
    def weight_format(self):
        """This layer's :class:`~slimnfu.formats.base.WeightFormat`."""
        return get_format(self.format, f"layer {self.name}")

    def run(self, x, dw, count=None, tn=None):
        """Run this layer on int64 inputs: its format's integer reference
        (:meth:`~slimnfu.formats.base.WeightFormat.run`)."""
        return self.weight_format.run(self, x, dw, count, tn)

    def to_state(self):
        fmt = self.weight_format
        extra = {} if fmt.record is None else record_to_state(self.compressed)
        return {"name": self.name, "desc": self.desc.to_dict(), "w": _tensor_state(self.w),
                "b": _tensor_state(self.b), "f_x": self.f_x, "f_w": self.f_w, "f_y": self.f_y,
                "pwl": None if self.pwl is None else self.pwl.to_dict(),
                "act_func": self.act_func, "format": self.format, "extra": extra}

    @classmethod
    def from_state(cls, s):
        pwl = None if s["pwl"] is None else fixed.PwlTable(**s["pwl"])
        name = s.get("format", "dense")
        fmt = get_format(name, f"layer {s['name']}")
        record = None if fmt.record is None else record_from_state(fmt.record, s["extra"])
        return cls(s["name"], LayerDesc.from_dict(s["desc"]), _tensor_from_state(s["w"]),
                   _tensor_from_state(s["b"]), s["f_x"], s["f_w"], s["f_y"], pwl,
                   s["act_func"], name, record)


@dataclass
class QuantModel:
    """A quantised network: engine layers plus the number format.

    Parameters
    ----------
    layers : list of QLayer
    dw, acc : int
        Data and accumulator widths.
    f_in : int
        Fractional bits of the input image.
    input_shape : tuple of int
        One input sample's shape, ``(C, H, W)`` or ``(n,)``.
    calib : dict
        How the scales were chosen (range method, number of calibration images).
    """

    layers: list
    dw: int
    acc: int
    f_in: int
    input_shape: tuple
    calib: dict = field(default_factory=dict)

    def check(self, chain=True):
        """Raise ``ValueError("layers[i] (name).field: problem")`` unless every layer is valid
        for its weight format at this model's ``dw``/``acc``
        (:meth:`~slimnfu.formats.base.WeightFormat.validate`) and, with ``chain``, the layers
        chain: each layer's input shape is the previous layer's output (a flattened one
        before an FC layer) and its ``f_x`` the previous ``f_y`` (the first one's ``f_in``).
        Returns the model."""
        names = [f"layers[{i}] ({getattr(ql, 'name', '?')})" for i, ql in enumerate(self.layers)]
        for where, ql in zip(names, self.layers):
            try:
                if not isinstance(ql, QLayer):
                    raise ValueError(f"layer: must be a QLayer, not {type(ql).__name__}")
                get_format(ql.format, "format").validate(ql, self.dw, self.acc)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}.{exc}") from None
        if not chain:
            return self
        shape, f = tuple(self.input_shape), self.f_in
        for where, ql in zip(names, self.layers):
            d = ql.desc
            n_in = 1
            for s in shape:
                n_in *= s
            got = (d.n_in,) if d.kind == "fc" else (d.n_in, d.h_in, d.w_in)
            if got != ((n_in,) if d.kind == "fc" else shape):
                raise ValueError(f"{where}.desc: takes {got}, the previous output is {shape}")
            if ql.f_x != f:
                raise ValueError(f"{where}.f_x: is {ql.f_x}, the input scale is {f}")
            n_out = ql.weight_format.out_channels(ql)
            shape = (n_out,) if d.kind == "fc" else (n_out, d.h_out, d.w_out)
            f = ql.f_y
        return self

    def to_state(self):
        """A JSON-serialisable dict (ints and lists only)."""
        return {"dw": self.dw, "acc": self.acc, "f_in": self.f_in,
                "input_shape": list(self.input_shape), "calib": dict(self.calib),
                "layers": [layer.to_state() for layer in self.layers]}

    @classmethod
    def from_state(cls, s):
        return cls([QLayer.from_state(l) for l in s["layers"]], s["dw"], s["acc"], s["f_in"],
                   tuple(s["input_shape"]), dict(s.get("calib", {})))
