"""ONNX and TorchScript models as ``torch.fx`` graphs of torch modules, for
:mod:`slimnfu.compress.intake`.

An ONNX graph is read with the ``onnx`` package (the ONNX project's own reader: protobuf and
numpy, no runtime) and rebuilt as a :class:`torch.fx.GraphModule`: every ONNX node that has a
slimnfu equivalent becomes that torch module (``Conv`` -> ``nn.Conv2d``, ``Gemm`` ->
``nn.Linear``, ``BatchNormalization`` -> ``nn.BatchNorm2d`` or ``nn.BatchNorm1d``, ``Relu``,
``Sigmoid``, ``Tanh``, ``LeakyRelu``, ``Clip`` -> ``nn.Hardtanh`` (``nn.ReLU6`` for 0..6),
``MaxPool``, ``AveragePool``, ``Flatten``, a ``Reshape`` to ``(batch, -1)`` -> ``torch.flatten``,
``Dropout``, ``Identity``), with its own settings, so that the intake checks it like a torch
model. Every other node becomes a :class:`ForeignOp` that keeps the node's name, op type and
inputs: the intake lists it as unsupported, and a residual ``Add`` or a ``Concat`` keeps its
two inputs, so it is refused as a merge naming the node.

Why not a converter package: onnx2torch (1.5.15) and onnx2pytorch (0.6.0) both import
torchvision when they are imported, and PyPI's torchvision for torch 2.13 (0.28.0) is built
against torch's CUDA libraries, so it cannot load its operators with the CPU torch wheel
slimnfu installs (``operator torchvision::nms does not exist``); the CPU torchvision is not on
PyPI. The ops slimnfu can run are few, and each maps onto one torch module.

A TorchScript module is exported to ONNX in memory with torch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``, at the intake's input shape) and read the same way.
The exporter folds a BatchNorm into the conv before it and drops Dropout (eval mode), so those
do not appear in the intake's report.
"""

import io
import re
import warnings

import torch
import torch.fx as fx
from torch import nn

__all__ = ["ForeignOp", "load_onnx", "from_onnx_proto", "from_script_module"]


class ForeignOp(nn.Module):
    """An ONNX node with no slimnfu equivalent: it keeps its name and why, and cannot run.

    Parameters
    ----------
    op_type : str
        The ONNX op type (``Add``, ``Concat``, ``Softmax``, ...).
    node_name : str
        The node's name in the ONNX graph.
    reason : str
        Why it has no equivalent.
    """

    def __init__(self, op_type, node_name, reason):
        super().__init__()
        self.op_type, self.node_name, self.reason = op_type, node_name, reason

    def forward(self, *inputs):
        raise RuntimeError(f"ONNX node {self.node_name!r} ({self.op_type}): {self.reason}")

    def extra_repr(self):
        return f"{self.op_type}, {self.node_name!r}"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ValueError("reading ONNX and TorchScript models needs the onnx package "
                         "(pip install onnx, a dependency of slimnfu)") from None
    return onnx


def load_onnx(path):
    """Read the ONNX file ``path`` into a :class:`torch.fx.GraphModule` (see the module
    docstring)."""
    onnx = _onnx()
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise ValueError(f"{path}: not a readable ONNX file ({exc})") from None
    return from_onnx_proto(proto)


def from_script_module(module, input_shape):
    """A TorchScript module as a :class:`torch.fx.GraphModule`, through an in-memory ONNX export
    at batch 1 and ``input_shape``."""
    _onnx()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(1, *input_shape),), buffer,
                              dynamo=False, training=torch.onnx.TrainingMode.EVAL)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        last = lines[-1] if lines else type(exc).__name__
        raise ValueError(f"the TorchScript model does not export to ONNX at input shape "
                         f"{tuple(input_shape)} ({last}); check --input-shape, or give the "
                         f"model as a factory file (path.py:make_model)") from None
    return from_onnx_proto(_onnx().load_from_string(buffer.getvalue()))


def _attrs(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _symmetric(pads):
    """The one padding of ONNX ``pads`` ``[top, left, bottom, right]``, or None if uneven."""
    pads = list(pads) or [0, 0, 0, 0]
    return pads[0] if len(set(pads)) == 1 else None


def _ints(value):
    return tuple(int(v) for v in value)


class _Builder:
    """Turns ONNX nodes into modules and fx nodes."""

    def __init__(self, proto):
        from onnx import numpy_helper, shape_inference

        self.proto = proto
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
                       for t in proto.graph.initializer}
        self.env = {}
        self.names = {}
        try:
            inferred = shape_inference.infer_shapes(proto).graph
        except Exception:
            inferred = proto.graph
        self.ranks = {}
        for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            if v.type.tensor_type.HasField("shape"):
                self.ranks[v.name] = len(v.type.tensor_type.shape.dim)

    def const(self, name):
        return self.consts.get(name) if name else None

    def add(self, node, index, module):
        base = re.sub(r"\W+", "_", node.name).strip("_") or f"{node.op_type}_{index}"
        if base[0].isdigit():
            base = f"n_{base}"
        name, k = base, 1
        while hasattr(self.root, name):
            name, k = f"{base}_{k}", k + 1
        self.root.add_module(name, module)
        self.names[name] = node.name or name
        args = tuple(self.env[i] for i in node.input if i in self.env)
        return self.graph.call_module(name, args)

    def module_for(self, node):
        """The torch module for ``node``, or a :class:`ForeignOp` saying why there is none."""
        op, a = node.op_type, _attrs(node)
        ins = list(node.input)
        dynamic = [i for i in ins if i in self.env]
        foreign = lambda why: ForeignOp(op, node.name, why)  # noqa: E731
        if not dynamic:
            return foreign(f"an {op} of constants only")
        if len(dynamic) > 1:
            what = {"Add": "residual add", "Sum": "residual add", "Concat": "concatenation"}
            return foreign(f"{what.get(op, op)} of {len(dynamic)} tensors")
        if op == "Conv":
            w, b = self.const(ins[1]), self.const(ins[2] if len(ins) > 2 else None)
            if w is None or w.dim() != 4:
                return foreign("a Conv whose weights are not a constant 4-D tensor")
            auto_pad = a.get("auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            k = _ints(a.get("kernel_shape", w.shape[2:]))
            pad = {"VALID": 0, "NOTSET": _symmetric(a.get("pads", []))}.get(auto_pad, "same")
            if pad is None:
                return foreign(f"uneven pads {list(a['pads'])}; the engine pads every side "
                               f"equally")
            groups = int(a.get("group", 1))
            conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], k, stride=_ints(a.get(
                "strides", (1, 1))), padding=pad, dilation=_ints(a.get("dilations", (1, 1))),
                             groups=groups, bias=b is not None)
            with torch.no_grad():
                conv.weight.copy_(w)
                if b is not None:
                    conv.bias.copy_(b)
            return conv
        if op == "Gemm":
            w, c = self.const(ins[1]), self.const(ins[2] if len(ins) > 2 else None)
            if w is None or a.get("transA", 0):
                return foreign("a Gemm whose second operand is not a constant, or with transA")
            w = w.double() * a.get("alpha", 1.0)
            w = w if a.get("transB", 0) else w.t()
            lin = nn.Linear(w.shape[1], w.shape[0], bias=c is not None)
            with torch.no_grad():
                lin.weight.copy_(w)
                if c is not None:
                    lin.bias.copy_((c.double() * a.get("beta", 1.0)).expand(w.shape[0]))
            return lin
        if op == "BatchNormalization":
            scale, bias, mean, var = (self.const(i) for i in ins[1:5])
            if any(t is None for t in (scale, bias, mean, var)):
                return foreign("a BatchNormalization whose statistics are not constants")
            cls = nn.BatchNorm1d if self.ranks.get(ins[0]) == 2 else nn.BatchNorm2d
            bn = cls(scale.numel(), eps=a.get("epsilon", 1e-5)).eval()
            with torch.no_grad():
                bn.weight.copy_(scale), bn.bias.copy_(bias)
                bn.running_mean.copy_(mean), bn.running_var.copy_(var)
            return bn
        if op in ("MaxPool", "AveragePool"):
            pad = _symmetric(a.get("pads", []))
            if pad is None or len(node.output) > 1 and node.output[1]:
                return foreign("uneven pads or a second output (indices)")
            k = _ints(a["kernel_shape"])
            stride = _ints(a.get("strides", (1,) * len(k)))
            if op == "MaxPool":
                return nn.MaxPool2d(k, stride, pad, _ints(a.get("dilations", (1, 1))),
                                    ceil_mode=bool(a.get("ceil_mode", 0)))
            return nn.AvgPool2d(k, stride, pad, ceil_mode=bool(a.get("ceil_mode", 0)),
                                count_include_pad=bool(a.get("count_include_pad", 0)))
        if op == "LeakyRelu":
            return nn.LeakyReLU(a.get("alpha", 0.01))
        if op == "Clip":
            lo = a.get("min", self.const(ins[1]) if len(ins) > 1 else None)
            hi = a.get("max", self.const(ins[2]) if len(ins) > 2 else None)
            if lo is None or hi is None:
                return foreign("a Clip without both bounds")
            lo, hi = float(lo), float(hi)
            return nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)
        if op == "Flatten":
            if a.get("axis", 1) != 1:
                return foreign(f"Flatten with axis={a['axis']}; slimnfu flattens from axis 1")
            return nn.Flatten()
        if op == "Dropout":
            return nn.Dropout(float(self.const(ins[1])) if len(ins) > 1 and ins[1] and
                              self.const(ins[1]) is not None else a.get("ratio", 0.5))
        simple = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh,
                  "Identity": nn.Identity}
        if op in simple:
            return simple[op]()
        return foreign(f"the ONNX op {op} has no slimnfu equivalent")

    def build(self):
        graph = self.proto.graph
        inputs = [v.name for v in graph.input if v.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"the ONNX graph has {len(inputs)} inputs ({', '.join(inputs)}); "
                             f"slimnfu takes a model with one input")
        self.env[inputs[0]] = self.graph.placeholder("x")
        for index, node in enumerate(graph.node):
            if node.op_type == "Constant":
                from onnx import numpy_helper

                value = node.attribute[0]
                if value.name == "value":
                    self.consts[node.output[0]] = torch.from_numpy(
                        numpy_helper.to_array(value.t).copy())
                    continue
            if node.op_type == "Identity" and node.input[0] in self.consts:
                # exporters alias equal initializers (a BatchNorm's ones and zeros) this way
                self.consts[node.output[0]] = self.consts[node.input[0]]
                continue
            if node.op_type == "Reshape" and node.input[0] in self.env:
                shape = self.const(node.input[1])
                if shape is not None and shape.numel() == 2 and int(shape[0]) in (-1, 0, 1) \
                        and node.input[1] not in self.env:
                    # a reshape to (batch, n) as exporters write x.view(x.size(0), -1); the
                    # intake checks n against the shapes
                    self.names[f"flatten_{index}"] = node.name
                    self.env[node.output[0]] = self.graph.call_function(
                        torch.flatten, (self.env[node.input[0]], 1))
                    continue
            try:
                module = self.module_for(node)
            except (ValueError, RuntimeError, TypeError) as exc:
                module = ForeignOp(node.op_type, node.name, str(exc))
            self.env[node.output[0]] = self.add(node, index, module)
        outputs = [self.env.get(v.name) for v in graph.output]
        if any(o is None for o in outputs):
            raise ValueError("an output of the ONNX graph is a constant")
        self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        gm = fx.GraphModule(self.root, self.graph, class_name="OnnxModel")
        gm.meta["node_names"] = self.names
        gm.meta["input_shape"] = self._input_shape(graph, inputs[0])
        return gm

    @staticmethod
    def _input_shape(graph, name):
        """The per-sample input shape the graph declares, or None where it is not fixed."""
        for v in graph.input:
            if v.name == name and v.type.tensor_type.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None
                        for d in v.type.tensor_type.shape.dim][1:]
                return tuple(dims) if dims and None not in dims else None
        return None


def from_onnx_proto(proto):
    """An ONNX ``ModelProto`` as a :class:`torch.fx.GraphModule` (see the module docstring).

    The result's ``meta`` has ``node_names`` (each module's ONNX node name) and ``input_shape``
    (the per-sample input shape the graph declares, or None).
    """
    return _Builder(proto).build()
