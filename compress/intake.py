"""Model intake: load a user's model, and normalise it into the ``nn.Sequential`` the pipeline
takes, with a report of what happened to every layer.

:func:`load_model` reads a model in any of four forms:

* a Python file and the factory in it that builds the model, ``path.py:make_model``, plus an
  optional state dict (``weights``, from ``torch.save(model.state_dict(), path)``);
* a whole module saved with ``torch.save(model)`` (its classes must be importable);
* a TorchScript file (``torch.jit.save``);
* an ONNX file (read by :mod:`slimnfu.compress.onnx_graph`).

:func:`normalise` traces the model with ``torch.fx`` (a TorchScript module is exported to ONNX
first), runs every node once on a sample of ``input_shape`` to follow the shapes, and maps each
node to one of:

``kept``
    a layer the engine runs, possibly rewritten: ``padding="same"`` with an odd kernel becomes
    its explicit padding, a ``bias=False`` conv or linear layer gets a zero bias (the engine
    always adds one), a function such as ``torch.relu``, ``F.max_pool2d`` or
    ``x.view(x.size(0), -1)`` becomes its module, and an activation written after a Flatten is
    moved before it (they commute);
``folded``
    a ``BatchNorm2d`` / ``BatchNorm1d`` right after a conv / linear layer, folded into its
    weights and bias with the running statistics;
``dropped``
    ``Dropout`` (and its variants) and ``Identity``, no-ops at inference;
``unsupported``
    anything else, with the reason and what to change: a layer type or setting the engine does
    not run (see :data:`slimnfu.compress.models.SUPPORTED_TEXT`), an activation that does not
    directly follow a conv, linear or pooling layer, a shape that does not chain, and any node
    off the straight chain: a residual add, a concatenation or a branch (each naming the node
    and its inputs).

The rewritten layers form an ``nn.Sequential`` (nested ``nn.Sequential`` are flattened by the
trace) that :func:`slimnfu.compress.models.check_supported` accepts and
:func:`slimnfu.compress.quant.group_layers` groups into engine layers; the report names the
engine layer of every row. The normalised model is run against the original on random inputs,
and the largest difference is reported (BatchNorm folding changes rounding only).

:func:`require_supported` is the same as one call that returns the ``nn.Sequential`` or raises
:class:`IntakeError`; :func:`slimnfu.compress.pipeline.compress_network` calls it before any
training.
"""

import copy
import dataclasses
import functools
import importlib.util
import operator
import re
import sys
import zipfile
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from slimnfu.compress.models import (ACTIVATIONS, SUPPORTED_TEXT, activation_of,
                                     check_supported, layer_problem)
from slimnfu.compress.onnx_graph import ForeignOp, from_script_module, load_onnx
from slimnfu.compress.quant import group_layers

__all__ = ["MAPPINGS", "LayerRow", "IntakeReport", "IntakeError", "load_model", "normalise",
           "require_supported", "parse_input_shape"]

#: What can happen to a node of the user's model.
MAPPINGS = ("kept", "folded", "dropped", "unsupported")

#: The default input shape, (C, H, W) of an MNIST image.
DEFAULT_INPUT_SHAPE = (1, 28, 28)

#: Images in the sample every node is run on.
_SAMPLE_BATCH = 2

_DROPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout, nn.Identity)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)

#: What to change, for layer types users often have; the rest get the supported list.
_TYPE_FIXES = {
    "Softmax": "remove it: the engine returns the logits, whose argmax is the same",
    "LogSoftmax": "remove it: the engine returns the logits, whose argmax is the same",
    "AdaptiveAvgPool2d": "use AvgPool2d with the power-of-two window the input size gives",
    "AdaptiveMaxPool2d": "use MaxPool2d with the window the input size gives",
    "LayerNorm": "use BatchNorm after a conv or linear layer (folded), or remove it",
    "GroupNorm": "use BatchNorm2d after the conv (folded), or remove it",
    "InstanceNorm2d": "use BatchNorm2d after the conv (folded), or remove it",
    "GELU": "use ReLU, LeakyReLU, Sigmoid or Tanh",
    "SiLU": "use ReLU, LeakyReLU, Sigmoid or Tanh",
    "ELU": "use ReLU, LeakyReLU, Sigmoid or Tanh",
    "Conv1d": "use Conv2d on a (C, 1, W) input",
    "ConvTranspose2d": "the engine runs forward convolutions only",
}

_STRAIGHT_CHAIN = ("slimnfu runs a straight chain of layers: remove the skip connection or "
                   "the second path, or split the model at this node")


@dataclasses.dataclass
class LayerRow:
    """What :func:`normalise` did with one node of the model.

    Attributes
    ----------
    index : int
        Position in the traced graph (nodes that only compute sizes are not listed).
    node : str
        The module's path (``features.0``, ``conv1``), the ONNX node's name, or the ``torch.fx``
        node name of a function or method (``relu``, ``add``, ``view``).
    op : str
        What the node is (``Conv2d(1, 8, kernel_size=(3, 3), ...)``, ``torch.relu``, ...).
    mapping : str
        One of :data:`MAPPINGS`.
    in_shape, out_shape : tuple or None
        Per-sample shapes on the sample input (None where unknown).
    layer : str or None
        The engine layer it becomes part of (``conv1``, ``pool1``, ``fc2``); only once the
        whole model is supported.
    note : str
        What the normalisation changed (``padding='same' -> 1``, ``zero bias``, ...).
    reason, fix : str
        For an unsupported node: why, and what to change.
    """

    index: int
    node: str
    op: str
    mapping: str
    in_shape: tuple = None
    out_shape: tuple = None
    layer: str = None
    note: str = ""
    reason: str = ""
    fix: str = ""

    def to_dict(self):
        d = dataclasses.asdict(self)
        for key in ("in_shape", "out_shape"):
            d[key] = None if d[key] is None else list(d[key])
        return d


@dataclasses.dataclass
class IntakeReport:
    """The result of :func:`normalise`: one :class:`LayerRow` per node, and the problems that
    belong to no node (the model cannot be traced, it has two inputs or outputs, ...).

    Attributes
    ----------
    source : str
        What was checked (the model's file or class).
    input_shape : tuple
    dw : int
        The data width the activations were checked at.
    rows : list of LayerRow
    problems : list of str
    max_abs_diff : float or None
        Largest difference between the original and the normalised model on the sample
        (None when no normalised model was built).
    """

    source: str
    input_shape: tuple
    dw: int
    rows: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)
    max_abs_diff: float = None

    @property
    def unsupported(self):
        """The rows that are not supported."""
        return [r for r in self.rows if r.mapping == "unsupported"]

    @property
    def ok(self):
        """True when every node is supported and nothing else is wrong."""
        return not self.unsupported and not self.problems

    def counts(self):
        """Rows per mapping."""
        return {m: sum(r.mapping == m for r in self.rows) for m in MAPPINGS}

    def to_dict(self):
        return {"source": self.source, "input_shape": list(self.input_shape), "dw": self.dw,
                "supported": self.ok, "counts": self.counts(),
                "engine_layers": sorted({r.layer for r in self.rows if r.layer},
                                        key=[r.layer for r in self.rows].index),
                "max_abs_diff": self.max_abs_diff, "problems": list(self.problems),
                "rows": [r.to_dict() for r in self.rows]}

    def summary(self):
        """One paragraph: every unsupported node and problem with its reason and fix."""
        parts = [f"node {r.node!r} ({r.op}): {r.reason}" + (f"; fix: {r.fix}" if r.fix else "")
                 for r in self.unsupported] + list(self.problems)
        return "; ".join(parts) if parts else "every node is supported"

    def table(self):
        """The report as readable text: a table of the nodes, then the unsupported ones with
        their reasons and fixes."""
        shape = lambda s: "?" if s is None else "x".join(str(v) for v in s)  # noqa: E731
        head = ("#", "node", "operation", "input", "output", "mapping", "layer", "note")
        body = [(str(r.index), r.node, _clip(r.op, 44), shape(r.in_shape), shape(r.out_shape),
                 r.mapping, r.layer or "-", r.note if r.mapping != "unsupported" else
                 "see below") for r in self.rows]
        widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
        lines = [f"model {self.source}, input {shape(self.input_shape)}, dw {self.dw}", ""]
        for row in [head] + body:
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        c = self.counts()
        layers = len({r.layer for r in self.rows if r.layer})
        engine = f" ({layers} engine layers)" if self.ok else ""
        lines += ["", f"{c['kept']} kept{engine}, {c['folded']} folded, {c['dropped']} dropped, "
                      f"{c['unsupported']} unsupported"]
        if self.max_abs_diff is not None and self.ok:
            lines.append(f"normalised model equals the original within {self.max_abs_diff:.2g} "
                         f"on {_SAMPLE_BATCH} random inputs")
        for r in self.unsupported:
            lines += [f"unsupported: {r.node} ({r.op})", f"  why: {r.reason}"]
            if r.fix:
                lines.append(f"  fix: {r.fix}")
        lines += [f"problem: {p}" for p in self.problems]
        if any("supported layers" in r.fix for r in self.unsupported):
            lines.append(f"supported layers: {SUPPORTED_TEXT}")
        lines.append("supported: yes" if self.ok else "supported: no")
        return "\n".join(lines)


class IntakeError(ValueError):
    """A model :func:`require_supported` refuses; ``report`` is its :class:`IntakeReport`."""

    def __init__(self, report):
        super().__init__(f"{report.source} is not supported: {report.summary()}")
        self.report = report


def _clip(text, width):
    return text if len(text) <= width else text[:width - 3] + "..."


def parse_input_shape(text):
    """``"C,H,W"`` (or ``"N"`` for an FC-only model, or a tuple) to a tuple of positive ints."""
    try:
        shape = tuple(int(v) for v in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"input shape must be C,H,W (or N for an FC-only model) of positive "
                         f"integers, not {text!r}")
    return shape


# ---------------------------------------------------------------------------- loading

def _load_factory(path, factory):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_slimnfu_user_{stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    make = getattr(module, factory, None)
    if not callable(make):
        known = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                 and getattr(v, "__module__", None) == name]
        raise ValueError(f"{path} has no function {factory!r}; its functions and classes: "
                         f"{', '.join(known) or 'none'}")
    try:
        model = make()
    except Exception as exc:
        raise ValueError(f"{path}:{factory}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path}:{factory}() returned a {type(model).__name__}, not a "
                         f"torch.nn.Module")
    return model


def _is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") for n in z.namelist())


def _load_saved_module(path):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as exc:
        raise ValueError(f"{path}: torch.load cannot rebuild the saved module ({exc}): a module "
                         f"saved with torch.save(model) needs its class importable here; save "
                         f"it with torch.jit.script or torch.jit.trace instead, or give the "
                         f"file that builds it (path.py:make_model) with --weights") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a file torch.load reads ({type(exc).__name__}: "
                         f"{exc})") from None
    if isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__} (a state dict or checkpoint), "
                         f"not a module: give the file that builds the model "
                         f"(path.py:make_model) and this file as --weights")
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _load_weights(model, weights):
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{weights}: no such file") from None
    except Exception as exc:
        raise ValueError(f"{weights}: not a state dict torch.load reads with weights_only=True "
                         f"({type(exc).__name__}); save it with "
                         f"torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        keys = [k for k in state if isinstance(k, str) and k.endswith("state_dict")] \
            if isinstance(state, dict) else []
        hint = f" (it has {keys[0]!r}: save that alone)" if keys else ""
        raise ValueError(f"{weights}: not a state dict of tensors{hint}; save it with "
                         f"torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not fit the model: "
                         f"{' '.join(str(exc).split())}") from None
    return model


def load_model(spec, weights=None):
    """Load a model given as ``path.py:factory``, a ``torch.save`` module, a TorchScript file or
    an ONNX file (``.onnx``).

    Parameters
    ----------
    spec : str or path-like
        ``path.py:make_model`` calls ``make_model()`` from the Python file ``path.py`` (its
        folder is on ``sys.path`` while it is imported); any other path is a saved module,
        TorchScript or (by its ``.onnx`` suffix) ONNX.
    weights : str or path-like, optional
        A state dict (``torch.save(model.state_dict(), path)``) loaded into the model, strictly;
        not for ONNX.

    Returns
    -------
    torch.nn.Module
        The model as given (a ``torch.jit.ScriptModule`` for TorchScript, a
        :class:`torch.fx.GraphModule` for ONNX); :func:`normalise` takes each.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file and what is wrong with it.
    """
    text = str(spec)
    match = re.fullmatch(r"(.+\.py):([A-Za-z_]\w*)", text)
    if match:
        model = _load_factory(Path(match.group(1)), match.group(2))
    elif text.endswith(".py"):
        raise ValueError(f"{text}: name the function that builds the model, "
                         f"{text}:make_model")
    else:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix.lower() == ".onnx":
            if weights is not None:
                raise ValueError("--weights is for torch models; an ONNX file holds its "
                                 "weights")
            return load_onnx(path)
        if _is_torchscript(path):
            try:
                model = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise ValueError(f"{path}: torch.jit.load cannot read it ({type(exc).__name__}:"
                                 f" {' '.join(str(exc).split())[:200]})") from None
        else:
            model = _load_saved_module(path)
    if weights is not None:
        _load_weights(model, weights)
    return model


# ---------------------------------------------------------------------------- normalising

class _Tracer(fx.Tracer):
    """torch.fx's tracer, with :class:`ForeignOp` a leaf."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, ForeignOp) or super().is_leaf_module(m, qualname)


def _fx_graph(model, input_shape, report):
    """The model as a :class:`torch.fx.GraphModule`, and each module's display name; problems
    go to ``report``."""
    names = {}
    if isinstance(model, torch.jit.ScriptModule):
        try:
            model = from_script_module(model, input_shape)
        except ValueError as exc:
            report.problems.append(str(exc))
            return None, names
    if isinstance(model, fx.GraphModule):
        names = dict(model.meta.get("node_names", {}))
        declared = model.meta.get("input_shape")
        if declared is not None and tuple(declared) != tuple(input_shape):
            report.problems.append(f"the ONNX graph takes inputs of shape {tuple(declared)}, "
                                   f"not the input shape {tuple(input_shape)}: give "
                                   f"--input-shape {','.join(map(str, declared))}")
        return copy.deepcopy(model).eval(), names
    model = copy.deepcopy(model).eval()
    if not isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and \
            type(model).__module__.startswith("torch.nn"):
        model = nn.Sequential(model)
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        report.problems.append(
            f"torch.fx cannot trace {type(model).__name__}.forward ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); slimnfu takes a forward that runs the same "
            f"layers whatever the input: no if or loop on tensor values")
        return None, names
    return fx.GraphModule(model, graph), names


def _display(node, names):
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        return names.get(node.target, node.target)
    return names.get(node.name, node.name)


def _target_text(node):
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    module = getattr(t, "__module__", None) or ""
    short = {"torch.nn.functional": "F", "_operator": "operator"}.get(module, "torch")
    return f"{short}.{getattr(t, '__name__', str(t))}"


def _describe(module):
    """A short description of ``module`` for the report."""
    name = type(module).__name__
    if isinstance(module, ForeignOp):
        return f"ONNX {module.op_type}"
    one = lambda v: v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v  # noqa: E731
    if isinstance(module, nn.Conv2d):
        k, s, p = module.kernel_size, module.stride, module.padding
        parts = [str(module.in_channels), str(module.out_channels), f"k={one(k)}"]
        parts += [f"s={one(s)}"] if one(s) != 1 else []
        parts += [f"p={one(p)!r}"] if one(p) != 0 else []
        parts += [f"groups={module.groups}"] if module.groups != 1 else []
        parts += ["bias=False"] if module.bias is None else []
        return f"{name}({', '.join(parts)})"
    if isinstance(module, nn.Linear):
        tail = ", bias=False" if module.bias is None else ""
        return f"{name}({module.in_features}, {module.out_features}{tail})"
    if isinstance(module, _POOLS):
        return f"{name}(k={one(module.kernel_size)}, s={one(module.stride)})"
    if isinstance(module, _BATCHNORMS):
        return f"{name}({module.num_features})"
    return f"{name}({module.extra_repr()})"


def _pool_args(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                ceil_mode=ceil_mode, return_indices=return_indices)


def _avg_pool_args(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                   count_include_pad=True, divisor_override=None):
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                count_include_pad=count_include_pad, divisor_override=divisor_override)


def _flatten_args(input, start_dim=0, end_dim=-1):
    return dict(start_dim=start_dim, end_dim=end_dim)


def _leaky_args(input, negative_slope=0.01, inplace=False):
    return dict(negative_slope=negative_slope)


def _hardtanh_args(input, min_val=-1.0, max_val=1.0, inplace=False):
    return dict(min_val=min_val, max_val=max_val)


#: Functions and tensor methods that are a module; each maps its arguments onto the module's.
_FUNCTIONS = {
    torch.relu: lambda a, k: nn.ReLU(), F.relu: lambda a, k: nn.ReLU(),
    torch.relu_: lambda a, k: nn.ReLU(), F.relu_: lambda a, k: nn.ReLU(),
    torch.sigmoid: lambda a, k: nn.Sigmoid(), F.sigmoid: lambda a, k: nn.Sigmoid(),
    torch.tanh: lambda a, k: nn.Tanh(), F.tanh: lambda a, k: nn.Tanh(),
    F.leaky_relu: lambda a, k: nn.LeakyReLU(**_leaky_args(*a, **k)),
    F.hardtanh: lambda a, k: nn.Hardtanh(**_hardtanh_args(*a, **k)),
    F.relu6: lambda a, k: nn.ReLU6(),
    F.max_pool2d: lambda a, k: nn.MaxPool2d(**_pool_args(*a, **k)),
    F.avg_pool2d: lambda a, k: nn.AvgPool2d(**_avg_pool_args(*a, **k)),
    torch.flatten: lambda a, k: nn.Flatten(**_flatten_args(*a, **k)),
    F.dropout: lambda a, k: nn.Dropout(), F.dropout1d: lambda a, k: nn.Dropout(),
    F.dropout2d: lambda a, k: nn.Dropout(), F.alpha_dropout: lambda a, k: nn.Dropout(),
}
_METHODS = {
    "relu": _FUNCTIONS[torch.relu], "relu_": _FUNCTIONS[torch.relu],
    "sigmoid": _FUNCTIONS[torch.sigmoid], "tanh": _FUNCTIONS[torch.tanh],
    "flatten": _FUNCTIONS[torch.flatten], "contiguous": lambda a, k: nn.Identity(),
}
_MERGES = {operator.add: "residual add", operator.iadd: "residual add",
           torch.add: "residual add", "add": "residual add", "add_": "residual add",
           torch.cat: "concatenation", torch.concat: "concatenation",
           torch.stack: "concatenation", "Add": "residual add", "Sum": "residual add",
           "Concat": "concatenation"}


def _module_of(node, gm, args, kwargs, values):
    """``(module, note)`` that node ``node`` is, or ``(None, reason)``."""
    if node.op == "call_module":
        return gm.get_submodule(node.target), ""
    make = (_FUNCTIONS if node.op == "call_function" else _METHODS).get(node.target)
    text = _target_text(node)
    if node.target in ("view", "reshape") or node.target is torch.reshape:
        x, out = values.get(node.args[0]), values.get(node)
        if isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and \
                tuple(out.shape) == (x.shape[0], x[0].numel()):
            return nn.Flatten(), f"{text} -> Flatten"
        shape = None if not isinstance(out, torch.Tensor) else tuple(out.shape[1:])
        return None, (f"{text} reshapes to {shape}: only a flatten to (batch, C*H*W) is "
                      f"supported")
    if make is None:
        return None, f"{text} is not a layer slimnfu runs"
    try:
        module = make(args, kwargs)
    except (TypeError, ValueError) as exc:
        return None, f"{text}: {exc}"
    return module, f"{text} -> {type(module).__name__}"


def _copy_conv(conv, padding):
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                    conv.dilation, conv.groups, True, conv.padding_mode)
    with torch.no_grad():
        out.weight.copy_(conv.weight)
        out.bias.copy_(conv.bias if conv.bias is not None else torch.zeros(conv.out_channels))
    return out


def _copy_linear(lin):
    out = nn.Linear(lin.in_features, lin.out_features)
    with torch.no_grad():
        out.weight.copy_(lin.weight)
        out.bias.copy_(lin.bias if lin.bias is not None else torch.zeros(lin.out_features))
    return out


def _fold_batchnorm(layer, bn):
    """A copy of conv / linear ``layer`` with ``bn`` (eval mode: running statistics) folded
    into its weights and bias, computed in float64."""
    out = copy.deepcopy(layer)
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    view = (-1,) + (1,) * (layer.weight.dim() - 1)
    with torch.no_grad():
        out.weight.copy_(layer.weight.double() * scale.view(view))
        out.bias.copy_(layer.bias.double() * scale + shift)
    return out


def _conv_padding(conv):
    """``(padding, note)`` of ``conv`` with a string padding made explicit, or ``(None,
    reason)``."""
    if conv.padding == "valid":
        return 0, "padding='valid' -> 0"
    if conv.padding != "same":
        return conv.padding, ""
    ks = [(k - 1) * d for k, d in zip(conv.kernel_size, conv.dilation)]
    if any(k % 2 for k in ks):
        return None, (f"padding='same' with kernel_size={conv.kernel_size} pads unevenly "
                      f"(one more row or column after than before); the engine pads every "
                      f"side equally")
    pad = tuple(k // 2 for k in ks)
    return pad, f"padding='same' -> {pad[0] if len(set(pad)) == 1 else pad}"


class _Chain:
    """The kept modules so far, and their rows."""

    def __init__(self):
        self.modules, self.rows = [], []
        #: row of a folded BatchNorm -> row of the layer it is folded into
        self.folded = {}

    def last_layer(self, skip_flatten=False):
        """Position of the last module, or of the last non-Flatten one, or None."""
        for i in range(len(self.modules) - 1, -1, -1):
            if skip_flatten and isinstance(self.modules[i], nn.Flatten):
                continue
            return i
        return None

    def add(self, module, row, at=None):
        at = len(self.modules) if at is None else at
        self.modules.insert(at, module)
        self.rows.insert(at, row)


def _check_shape(module, in_shape):
    """Why ``module`` cannot take a per-sample input of ``in_shape``, or None."""
    if in_shape is None:
        return None
    dims = len(in_shape)
    name = type(module).__name__
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d) + _POOLS) and dims != 3:
        return f"{name} gets a {dims}-D input {in_shape}; it needs (C, H, W)"
    if isinstance(module, (nn.Linear, nn.BatchNorm1d)) and dims != 1:
        return (f"{name} gets a {dims}-D input {in_shape}; add nn.Flatten() (or "
                f"x.flatten(1)) before it")
    want = {nn.Conv2d: "in_channels", nn.Linear: "in_features"}.get(type(module))
    if isinstance(module, _BATCHNORMS):
        want = "num_features"
    if want and getattr(module, want) != in_shape[0]:
        return (f"{name} has {want}={getattr(module, want)} but gets {in_shape[0]} "
                f"({'channels' if dims == 3 else 'values'}, input shape {in_shape})")
    return None


def _run(node, gm, args, kwargs):
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


_UNKNOWN = object()


def normalise(model, input_shape=DEFAULT_INPUT_SHAPE, dw=16, source=None):
    """Normalise ``model`` into an ``nn.Sequential`` of supported layers (see the module
    docstring).

    Parameters
    ----------
    model : torch.nn.Module
        Any module :func:`load_model` returns; it is not changed.
    input_shape : tuple or str
        The per-sample input shape, ``(C, H, W)`` (or ``(N,)`` for an FC-only model).
    dw : int
        The data width the activations are checked at (LeakyReLU's slope must be a table
        slope).
    source : str, optional
        What the report calls the model (default: its class name).

    Returns
    -------
    tuple
        ``(sequential, report)``: the ``nn.Sequential`` (None unless ``report.ok``) and the
        :class:`IntakeReport`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    input_shape = parse_input_shape(input_shape)
    report = IntakeReport(source or type(model).__name__, input_shape, dw)
    gm, names = _fx_graph(model, input_shape, report)
    if gm is None:
        return None, report
    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target.endswith("_") and not node.users:
            report.problems.append(
                f"node {_display(node, names)!r} changes a tensor in place (Tensor."
                f"{node.target}) and its result is not used: torch.fx does not follow in-place "
                f"changes; write x = x.{node.target[:-1]}() or use the module")
    gm.graph.eliminate_dead_code()
    sample = torch.rand(_SAMPLE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    values, errors, tensor_nodes = {}, {}, set()
    chain, prev, inputs, output = _Chain(), None, [], None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            inputs.append(node)
            values[node] = sample if len(inputs) == 1 else _UNKNOWN
            tensor_nodes.add(node)
            prev = prev or node
            continue
        if node.op == "output":
            output = node
            continue
        if node.op == "get_attr":
            try:
                values[node] = functools.reduce(getattr, node.target.split("."), gm)
            except AttributeError:
                values[node] = _UNKNOWN
            tensor_nodes.add(node)
            continue
        args = fx.node.map_arg(node.args, lambda n: values.get(n, _UNKNOWN))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values.get(n, _UNKNOWN))
        value = _UNKNOWN
        if not any(values.get(n, _UNKNOWN) is _UNKNOWN for n in node.all_input_nodes):
            try:
                with torch.no_grad():
                    value = _run(node, gm, args, kwargs)
            except Exception as exc:
                errors[node] = " ".join(str(exc).split())[:200] or type(exc).__name__
        values[node] = value
        if value is not _UNKNOWN and not isinstance(value, torch.Tensor):
            continue                    # sizes and shapes that feed a view or pooling call
        tensor_nodes.add(node)
        prev = _row_of(node, gm, names, args, kwargs, values, errors, tensor_nodes, prev, chain,
                       report)
    _check_ends(inputs, output, report)
    if not report.ok:
        return None, report
    return _finish(gm, chain, sample, report)


def _shape(value):
    return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None


def _row_of(node, gm, names, args, kwargs, values, errors, tensor_nodes, prev, chain, report):
    """Add the row of tensor node ``node`` to ``report`` (and its module to ``chain``); return
    the node the chain now ends at."""
    ins = [n for n in node.all_input_nodes if n in tensor_nodes]
    in_shape = _shape(values.get(ins[0])) if ins else None
    row = LayerRow(len(report.rows), _display(node, names), "", "unsupported", in_shape,
                   _shape(values.get(node)))
    report.rows.append(row)
    module, note = _module_of(node, gm, args, kwargs, values)
    row.op = _describe(module) if node.op == "call_module" else _target_text(node)
    if not ins:
        row.reason = f"{row.op} takes no tensor from the model: it makes a constant"
        row.fix = "fold the constant into a layer's weights or bias, or remove it"
        return node
    held = [n for n in ins if n.op == "get_attr"]
    if held:
        row.reason = (f"node {row.node!r} uses the model's tensor {held[0].target!r} directly, "
                      f"not through a layer")
        row.fix = "fold it into a layer's weights or bias, or remove it"
        return node
    merge = _MERGES.get(module.op_type) if isinstance(module, ForeignOp) else \
        None if node.op == "call_module" else _MERGES.get(node.target)
    if len(ins) != 1:
        what = merge or f"{row.op} combining tensors"
        sources = " and ".join(f"{_display(n, names)!r}" for n in ins)
        verb = {"residual add": "adds", "concatenation": "concatenates"}.get(what, "combines")
        row.reason = f"{what}: node {row.node!r} {verb} the outputs of {sources}"
        row.fix = _STRAIGHT_CHAIN
        return node
    if ins[0] is not prev:
        row.reason = (f"branch: node {row.node!r} reads the output of "
                      f"{_display(ins[0], names)!r}, not of {_display(prev, names)!r} before "
                      f"it")
        row.fix = _STRAIGHT_CHAIN
        return node
    if module is None:
        row.reason = note
        row.fix = "replace it with one of the supported layers"
        return node
    if isinstance(module, ForeignOp):
        row.reason = module.reason
        row.fix = _TYPE_FIXES.get(module.op_type, "replace it with one of the supported "
                                                  "layers, or remove it")
        return node
    _map(module, row, note, chain, report.dw)
    if row.mapping != "unsupported" and node in errors:
        row.mapping, row.reason = "unsupported", f"fails on input {in_shape}: {errors[node]}"
        row.fix = "check --input-shape and the layer's sizes"
    return node


def _map(module, row, note, chain, dw):
    """Set ``row``'s mapping for ``module`` (and add what is kept to ``chain``)."""
    name = type(module).__name__
    problem = _check_shape(module, row.in_shape)
    if problem:
        row.reason, row.fix = problem, "check --input-shape and the layer's sizes"
        return
    if isinstance(module, _DROPPED):
        row.mapping, row.note = "dropped", f"{name}: no-op at inference"
        return
    if isinstance(module, _BATCHNORMS):
        at = chain.last_layer()
        target = chain.modules[at] if at is not None else None
        if module.running_mean is None:
            row.reason = (f"{name} without running statistics (track_running_stats=False) "
                          f"normalises with each batch's statistics")
            row.fix = "train it with track_running_stats=True, or remove it"
        elif isinstance(target, (nn.Conv2d, nn.Linear)):
            chain.modules[at] = _fold_batchnorm(target, module)
            chain.rows[at].note = "; ".join(filter(None, [chain.rows[at].note, "BN folded"]))
            row.mapping, row.note = "folded", f"into {chain.rows[at].node}"
            chain.folded[id(row)] = chain.rows[at]
        else:
            after = chain.rows[at].op if at is not None else "the input"
            row.reason = (f"{name} follows {after}, not a conv or linear layer: it folds only "
                          f"into the conv or linear layer right before it")
            row.fix = "put it directly after the conv or linear layer, before the activation"
        return
    if type(module) not in (nn.Conv2d, nn.Linear, nn.Flatten) + _POOLS + ACTIVATIONS:
        row.reason = f"{name} is not a layer slimnfu runs"
        row.fix = _TYPE_FIXES.get(name, "replace it with one of the supported layers, or "
                                        "remove it")
        return
    notes = [note] if note else []
    if isinstance(module, nn.Conv2d):
        padding, text = _conv_padding(module)
        if padding is None:
            row.reason, row.fix = text, "use an odd kernel, or explicit padding"
            return
        notes += [text] if text else []
        notes += ["zero bias"] if module.bias is None else []
        module = _copy_conv(module, padding)
    elif isinstance(module, nn.Linear):
        notes += ["zero bias"] if module.bias is None else []
        module = _copy_linear(module)
    problem = layer_problem(module, dw)
    if problem:
        attr, value, need = problem
        row.reason = f"{name} has {attr}={value!r}, but slimnfu needs {need}"
        row.fix = _setting_fix(module, need, dw)
        return
    at = None
    if activation_of(module) is not None:
        last = chain.last_layer(skip_flatten=True)
        ok = last is not None and isinstance(chain.modules[last],
                                             (nn.Conv2d, nn.Linear) + _POOLS)
        if not ok:
            after = "the input" if last is None else chain.rows[last].op
            row.reason = (f"{name} follows {after}: slimnfu fuses an activation into the "
                          f"conv, linear or pooling layer right before it")
            row.fix = "put it right after a conv, linear or pooling layer"
            return
        if last != len(chain.modules) - 1:
            at = last + 1
            notes.append("moved before Flatten")
    row.mapping, row.note = "kept", "; ".join(notes)
    chain.add(module, row, at)


def _setting_fix(module, need, dw):
    """What to change in a supported layer type whose setting the engine cannot run."""
    if isinstance(module, nn.LeakyReLU):
        step = 2.0 ** -(dw - 2)
        nearest = round(module.negative_slope / step) * step
        return (f"use a slope the table holds: negative_slope={nearest!r} (the nearest), or "
                f"a power of two such as 0.0078125")
    if isinstance(module, nn.Hardtanh):
        return ("use corners j * 2**e with |j| <= 7 for one power of two 2**e, e.g. (-1, 1), "
                "(0, 6) or (-0.5, 0.5)")
    return f"use {need.split(': ')[0]}"


def _check_ends(inputs, output, report):
    """The graph has one input and one output, and some layer."""
    if len(inputs) != 1:
        report.problems.append(f"forward takes {len(inputs)} inputs; slimnfu takes one")
    if output is None:
        report.problems.append("the model has no output")
        return
    result = output.args[0]
    if not isinstance(result, fx.Node):
        count = len(result) if isinstance(result, (tuple, list, dict)) else 0
        report.problems.append(f"forward returns {count or 'no'} tensors; slimnfu takes a model "
                               f"with one output")
    if not any(r.mapping in ("kept",) for r in report.rows) and not report.unsupported:
        report.problems.append("the model has no layer")


def _finish(gm, chain, sample, report):
    """Build the ``nn.Sequential``, name every row's engine layer and compare it with the
    original on the sample."""
    seq = nn.Sequential(*chain.modules).eval()
    try:
        check_supported(seq, report.dw)
        groups = group_layers(seq, report.input_shape)
    except (TypeError, ValueError) as exc:
        report.problems.append(f"the normalised model is refused: {exc}")
        return None, report
    by_index = {}
    for g in groups:
        for i in range(g["index"], g["last"] + 1):
            by_index[i] = g["name"]
    for i, row in enumerate(chain.rows):
        row.layer = by_index.get(i)
    for row in report.rows:
        if id(row) in chain.folded:
            row.layer = chain.folded[id(row)].layer
    with torch.no_grad():
        ref, out = gm(sample), seq(sample)
    if tuple(ref.shape) != tuple(out.shape):
        report.problems.append(f"the normalised model returns {tuple(out.shape)}, the model "
                               f"{tuple(ref.shape)}")
        return None, report
    report.max_abs_diff = float((ref - out).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if not report.max_abs_diff <= 1e-4 * scale:
        report.problems.append(f"the normalised model differs from the model by "
                               f"{report.max_abs_diff:.3g} on random inputs (an in-place "
                               f"operation the trace did not follow?)")
        return None, report
    return seq, report


def require_supported(model, input_shape=DEFAULT_INPUT_SHAPE, dw=16, source=None):
    """:func:`normalise`, returning the ``nn.Sequential`` or raising :class:`IntakeError` (a
    ``ValueError``) that names every unsupported node, its reason and its fix."""
    seq, report = normalise(model, input_shape, dw, source)
    if not report.ok:
        raise IntakeError(report)
    return seq
