"""The reference networks, and the check that a network uses only supported layers.

Every network is an ``nn.Sequential`` that takes ``(N, 1, 28, 28)`` float inputs in ``[0, 1]``
(``pixel / 255``, no normalisation layer) and returns ``(N, 10)`` logits.

Networks
--------
``lenet300`` (MNIST)
    LeNet-300-100: Flatten, Linear 784-300, ReLU, Linear 300-100, ReLU, Linear 100-10.
``lenet5`` (MNIST)
    Caffe LeNet-5: Conv 1->20 5x5, MaxPool 2, Conv 20->50 5x5, MaxPool 2, Flatten,
    Linear 800-500, ReLU, Linear 500-10. As in Caffe, the convolutions have no ReLU.
``vgg_fmnist`` (Fashion-MNIST)
    A VGG-style stack of 3x3 convolutions with padding 1, each followed by ReLU, in two blocks
    that each end in a 2x2 max pool, then a classifier::

        Conv 1->32, ReLU, Conv 32->32, ReLU, MaxPool 2        28x28 -> 14x14
        Conv 32->64, ReLU, Conv 64->64, ReLU, MaxPool 2      14x14 -> 7x7
        Flatten, Linear 3136-256, ReLU, Linear 256-10

    No BatchNorm and no Dropout, so the float network is exactly what the accelerator runs.
    About 19.3 M MACs and 0.88 M parameters per inference.

Each entry of :data:`NETWORKS` also holds the dataset and the default training
hyperparameters (Adam with a per-step cosine learning-rate decay to zero) that
:func:`slimnfu.compress.train.train` uses.
"""

from torch import nn

from slimnfu import fixed

__all__ = ["SUPPORTED", "ACTIVATIONS", "SUPPORTED_TEXT", "NETWORKS", "build", "check_supported",
           "network_info", "activation_of", "layer_problem"]

#: The activation modules the engine runs: ReLU in NFU-3's ReLU stage, the others through its
#: PWL table (sigmoid and tanh as chord approximations; LeakyReLU, Hardtanh and ReLU6 only where
#: the table is exact, :func:`slimnfu.fixed.pwl_exact_problem`).
ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Hardtanh, nn.ReLU6)

SUPPORTED = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten) + ACTIVATIONS

#: What :func:`check_supported` accepts, for messages.
SUPPORTED_TEXT = (
    "Conv2d (square kernel and stride, groups=1, dilation=1, padding_mode='zeros', equal "
    "integer padding), Linear, ReLU, Sigmoid, Tanh, LeakyReLU (negative_slope a multiple of "
    "2**-(dw-2)), Hardtanh and ReLU6 (corners j * 2**e, |j| <= 7), MaxPool2d (square window and "
    "stride, no padding, dilation=1, ceil_mode=False), AvgPool2d (square power-of-two window, no "
    "padding, ceil_mode=False, no divisor_override), Flatten (start_dim=1, end_dim=-1)")


def _lenet300():
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )


def _lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500), nn.ReLU(),
        nn.Linear(500, 10),
    )


def _vgg_fmnist():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )


#: Reference networks: builder, dataset and default training hyperparameters.
NETWORKS = {
    "lenet300": {
        "build": _lenet300, "dataset": "mnist", "title": "LeNet-300-100",
        "epochs": 20, "lr": 1e-3, "batch_size": 128, "optimizer": "adam",
        "weight_decay": 0.0, "schedule": "cosine",
    },
    "lenet5": {
        "build": _lenet5, "dataset": "mnist", "title": "LeNet-5 (Caffe)",
        "epochs": 8, "lr": 1e-3, "batch_size": 64, "optimizer": "adam",
        "weight_decay": 0.0, "schedule": "cosine",
    },
    "vgg_fmnist": {
        "build": _vgg_fmnist, "dataset": "fashion-mnist", "title": "VGG-style (Fashion-MNIST)",
        "epochs": 10, "lr": 1e-3, "batch_size": 128, "optimizer": "adam",
        "weight_decay": 0.0, "schedule": "cosine",
    },
}


def network_info(name):
    """Return ``NETWORKS[name]``, or raise ``ValueError`` listing the known names."""
    try:
        return NETWORKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown network {name!r}; known networks: "
                         f"{', '.join(NETWORKS)}") from None


def build(name):
    """Build a freshly initialised reference network (uses torch's global RNG).

    Returns
    -------
    torch.nn.Sequential
    """
    model = network_info(name)["build"]()
    check_supported(model)
    return model


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def activation_of(module):
    """``(act, act_func)`` of an activation module, as a :class:`~slimnfu.config.LayerDesc` and
    :class:`~slimnfu.formats.QLayer` hold them: ``("relu", None)``, or ``("pwl", name)`` with a
    PWL activation name (:func:`slimnfu.fixed.pwl_name`); ``None`` for any other module."""
    if type(module) is nn.ReLU:
        return "relu", None
    if type(module) in (nn.Sigmoid, nn.Tanh):
        return "pwl", fixed.pwl_name(type(module).__name__.lower())
    if type(module) is nn.LeakyReLU:
        return "pwl", fixed.pwl_name("leaky_relu", module.negative_slope)
    if type(module) in (nn.Hardtanh, nn.ReLU6):
        return "pwl", fixed.pwl_name("hardtanh", module.min_val, module.max_val)
    return None


def layer_problem(layer, dw=16):
    """``(attribute, value, requirement)`` for the first detail of a supported layer type that
    the engine cannot run at ``dw`` bits, or None."""
    if type(layer) in (nn.LeakyReLU, nn.Hardtanh, nn.ReLU6):
        problem = fixed.pwl_exact_problem(activation_of(layer)[1], dw)
        if problem is not None:
            attr = "negative_slope" if type(layer) is nn.LeakyReLU else "min_val, max_val"
            value = layer.negative_slope if attr == "negative_slope" else \
                (layer.min_val, layer.max_val)
            return attr, value, f"an exact PWL table: {problem}"
    if isinstance(layer, nn.Conv2d):
        kh, kw = _pair(layer.kernel_size)
        if kh != kw:
            return "kernel_size", layer.kernel_size, "a square kernel"
        if _pair(layer.stride)[0] != _pair(layer.stride)[1]:
            return "stride", layer.stride, "equal strides"
        if layer.groups != 1:
            return "groups", layer.groups, "groups=1"
        if _pair(layer.dilation) != (1, 1):
            return "dilation", layer.dilation, "dilation=1"
        if layer.padding_mode != "zeros":
            return "padding_mode", layer.padding_mode, "padding_mode='zeros'"
        pad = layer.padding
        if isinstance(pad, str) or len(set(_pair(pad))) != 1:
            return "padding", pad, "one integer padding for both sides and axes"
    elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        kh, kw = _pair(layer.kernel_size)
        if kh != kw:
            return "kernel_size", layer.kernel_size, "a square window"
        stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
        if stride[0] != stride[1]:
            return "stride", layer.stride, "equal strides"
        if _pair(layer.padding) != (0, 0):
            return "padding", layer.padding, "no padding"
        if layer.ceil_mode:
            return "ceil_mode", layer.ceil_mode, "ceil_mode=False"
        if isinstance(layer, nn.MaxPool2d):
            if _pair(layer.dilation) != (1, 1):
                return "dilation", layer.dilation, "dilation=1"
            if layer.return_indices:
                return "return_indices", True, "return_indices=False"
        else:
            if (kh * kw) & (kh * kw - 1):
                return "kernel_size", layer.kernel_size, "a power-of-two window k*k"
            if layer.divisor_override is not None:
                return "divisor_override", layer.divisor_override, "divisor_override=None"
    elif isinstance(layer, nn.Flatten):
        if (layer.start_dim, layer.end_dim) != (1, -1):
            return ("start_dim, end_dim", (layer.start_dim, layer.end_dim),
                    "start_dim=1, end_dim=-1")
    return None


def check_supported(model, dw=16):
    """Raise if ``model`` is not an ``nn.Sequential`` of supported layers (at ``dw`` bits).

    :func:`slimnfu.compress.intake.normalise` turns other models into one, folding BatchNorm
    and dropping Dropout and Identity.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Sequential``.
    ValueError
        Naming the first offending layer (index, class, attribute) and listing what is
        supported.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be a torch.nn.Sequential of supported layers, not "
                        f"{type(model).__name__}; supported: {SUPPORTED_TEXT}")
    if len(model) == 0:
        raise ValueError("model is an empty nn.Sequential")
    for index, layer in enumerate(model):
        if type(layer) not in SUPPORTED:
            raise ValueError(f"layer {index} ({type(layer).__name__}) is not supported; "
                             f"supported layers: {SUPPORTED_TEXT}")
        problem = layer_problem(layer, dw)
        if problem is not None:
            attr, value, need = problem
            raise ValueError(f"layer {index} ({type(layer).__name__}) has {attr}={value!r}, "
                             f"but slimnfu needs {need}; supported layers: {SUPPORTED_TEXT}")
    return model
