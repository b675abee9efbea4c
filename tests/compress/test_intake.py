"""Model intake: every model form loads, normalisation keeps, folds and drops what it should
(and computes the same function), and every refusal names the node, why and what to change."""

import textwrap
import warnings
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnfu.compress import intake
from slimnfu.compress.intake import IntakeError, load_model, normalise, require_supported
from slimnfu.compress.quant import int_forward, quantize_model

SHAPE = (1, 28, 28)


class StraightNet(nn.Module):
    """Not an nn.Sequential: a forward calling its layers and functions in a straight line,
    with BatchNorm after a bias-free conv, padding='same', Dropout and a view as Flatten."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding="same", bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 5)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(8 * 5 * 5, 20, bias=False)
        self.bn2 = nn.BatchNorm1d(20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.drop(x.view(x.size(0), -1))
        return self.fc2(F.relu(self.bn2(self.fc1(x))))


def _randomise_batchnorms(model):
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


def _net():
    torch.manual_seed(0)
    return _randomise_batchnorms(StraightNet()).eval()


def _row(report, node):
    return next(r for r in report.rows if r.node == node)


def _unsupported(model, shape=SHAPE, **kwargs):
    """The report of a model that must be refused."""
    seq, report = normalise(model, shape, **kwargs)
    assert seq is None and not report.ok
    return report


# ---------------------------------------------------------------- normalising what is supported

def test_straight_chain_module_is_normalised():
    model = _net()
    seq, report = normalise(model, SHAPE)
    assert report.ok and isinstance(seq, nn.Sequential)
    assert [type(m).__name__ for m in seq] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU",
        "Linear"]
    assert [(r.node, r.mapping) for r in report.rows] == [
        ("conv1", "kept"), ("bn1", "folded"), ("relu", "kept"), ("max_pool2d", "kept"),
        ("conv2", "kept"), ("max_pool2d_1", "kept"), ("view", "kept"), ("drop", "dropped"),
        ("fc1", "kept"), ("bn2", "folded"), ("relu_1", "kept"), ("fc2", "kept")]
    assert [r.layer for r in report.rows] == [
        "conv1", "conv1", "conv1", "pool1", "conv2", "pool2", None, None, "fc1", "fc1", "fc1",
        "fc2"]
    assert _row(report, "conv1").in_shape == (1, 28, 28)
    assert _row(report, "conv1").out_shape == (6, 28, 28)
    assert _row(report, "view").out_shape == (200,)
    assert "padding='same' -> 1" in _row(report, "conv1").note
    assert "zero bias" in _row(report, "conv1").note
    assert _row(report, "bn1").note == "into conv1"
    assert report.counts() == {"kept": 9, "folded": 2, "dropped": 1, "unsupported": 0}


def test_batchnorm_folding_equals_the_float_model():
    model = _net()
    seq, report = normalise(model, SHAPE)
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - seq(x)).abs().max() < 1e-5
    assert report.max_abs_diff < 1e-5


def test_folded_model_quantises_like_any_other():
    seq, _ = normalise(_net(), SHAPE)
    x = torch.rand(40, *SHAPE, generator=torch.Generator().manual_seed(2))
    q = quantize_model(seq, x[:20])
    assert [l.name for l in q.layers] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"]
    logits, _ = int_forward(q, x[20:])
    with torch.no_grad():
        ref = seq(x[20:]).double()
    real = logits.double() / 2 ** q.layers[-1].f_y
    assert (real - ref).abs().max() < 0.02 * ref.abs().max()


def test_bias_false_gets_a_zero_bias():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 26 * 26, 10, bias=False))
    seq, report = normalise(model, SHAPE)
    assert report.ok and all(torch.equal(seq[i].bias, torch.zeros(seq[i].bias.shape))
                             for i in (0, 3))
    assert [r.note for r in report.rows] == ["zero bias", "", "", "zero bias"]
    assert model[0].bias is None          # the user's model is not changed


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_same_padding_with_odd_kernels(k):
    model = nn.Sequential(nn.Conv2d(1, 2, k, padding="same"), nn.Flatten(),
                          nn.Linear(2 * 28 * 28, 3))
    seq, report = normalise(model, SHAPE)
    assert seq[0].padding == (k // 2, k // 2)
    assert report.rows[0].note == f"padding='same' -> {k // 2}"
    assert report.rows[0].out_shape == (2, 28, 28) and report.max_abs_diff < 1e-5


def test_valid_padding_is_zero():
    seq, report = normalise(nn.Sequential(nn.Conv2d(1, 2, 3, padding="valid")), SHAPE)
    assert seq[0].padding == (0, 0) and report.rows[0].note == "padding='valid' -> 0"


def test_dropout_and_identity_are_dropped_and_nested_sequentials_flattened():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 3, 3), nn.Dropout2d(0.2), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Identity(), nn.MaxPool2d(2)), nn.Flatten()),
        nn.Dropout(0.5), nn.Linear(3 * 13 * 13, 10))
    seq, report = normalise(model, SHAPE)
    assert [r.node for r in report.rows] == ["0.0", "0.1", "0.2", "1.0.0", "1.0.1", "1.1", "2",
                                             "3"]
    assert [r.mapping for r in report.rows] == ["kept", "dropped", "kept", "dropped", "kept",
                                                "kept", "dropped", "kept"]
    assert [type(m).__name__ for m in seq] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                               "Linear"]


@pytest.mark.parametrize("pool, side", [(nn.MaxPool2d(2), 13), (nn.MaxPool2d(3, 3), 8),
                                        (nn.AvgPool2d(4, 4), 6), (nn.MaxPool2d(2, 1), 25)])
def test_flatten_after_pooling_of_any_size(pool, side):
    model = nn.Sequential(nn.Conv2d(1, 5, 3), pool, nn.Flatten(), nn.Linear(5 * side * side, 4))
    seq, report = normalise(model, SHAPE)
    assert report.ok and report.rows[2].out_shape == (5 * side * side,)
    assert quantize_model(seq, torch.rand(4, *SHAPE)).layers[-1].desc.n_in == 5 * side * side


def test_activation_after_flatten_moves_before_it():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.ReLU(),
                          nn.Linear(2 * 26 * 26, 3))
    seq, report = normalise(model, SHAPE)
    assert [type(m).__name__ for m in seq] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert report.rows[2].note == "moved before Flatten" and report.rows[2].layer == "conv1"


def test_fc_only_model_takes_a_vector():
    model = nn.Sequential(nn.Linear(784, 30), nn.Sigmoid(), nn.Linear(30, 10))
    seq, report = normalise(model, (784,))
    assert report.ok and [r.layer for r in report.rows] == ["fc1", "fc1", "fc2"]


def test_a_single_layer_is_a_model():
    seq, report = normalise(nn.Linear(12, 3), (12,))
    assert report.ok and [type(m) for m in seq] == [nn.Linear]


@pytest.mark.parametrize("act, func", [
    (nn.LeakyReLU(0.125), "leaky_relu(0.125)"), (nn.Hardtanh(), "hardtanh(-1.0,1.0)"),
    (nn.ReLU6(), "hardtanh(0.0,6.0)"), (nn.Hardtanh(-0.5, 2.0), "hardtanh(-0.5,2.0)")])
def test_exact_piecewise_linear_activations_are_kept(act, func):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), act, nn.Flatten(), nn.Linear(3 * 26 * 26, 5))
    seq, report = normalise(model, SHAPE)
    assert report.ok and report.rows[1].layer == "conv1"
    q = quantize_model(seq, torch.rand(8, *SHAPE))
    assert q.layers[0].desc.act == "pwl" and q.layers[0].act_func == func


def test_functional_activations_become_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 13 * 13, 4)

        def forward(self, x):
            x = F.avg_pool2d(F.leaky_relu(self.conv(x), 0.25), 2)
            return torch.tanh(self.fc(x.flatten(1)))

    seq, report = normalise(Net(), SHAPE)
    assert [type(m).__name__ for m in seq] == ["Conv2d", "LeakyReLU", "AvgPool2d", "Flatten",
                                               "Linear", "Tanh"]
    assert seq[1].negative_slope == 0.25 and report.max_abs_diff < 1e-6
    assert report.rows[1].note == "F.leaky_relu -> LeakyReLU"


def test_require_supported_returns_the_sequential():
    seq = require_supported(_net(), SHAPE)
    assert isinstance(seq, nn.Sequential) and len(seq) == 9


def test_input_shape_is_checked():
    for bad in ("1,28", "a,b,c", "0,28,28", (1, -2, 3)):
        with pytest.raises(ValueError, match="input shape must be C,H,W"):
            normalise(_net(), bad)
    assert intake.parse_input_shape("3, 32, 32") == (3, 32, 32)


# ---------------------------------------------------------------- refusals, one test each

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.fc(torch.flatten(self.conv2(y) + y, 1))


def test_residual_add_is_refused_naming_the_node():
    report = _unsupported(Residual())
    (row,) = report.unsupported
    assert row.node == "add" and row.op == "operator.add"
    assert row.reason == "residual add: node 'add' adds the outputs of 'conv2' and 'relu'"
    assert row.fix.startswith("slimnfu runs a straight chain of layers")
    with pytest.raises(IntakeError, match=r"Residual is not supported: node 'add' "
                                          r"\(operator.add\): residual add"):
        require_supported(Residual(), SHAPE)


def test_concatenation_is_refused_naming_the_node():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1)

    report = _unsupported(Cat())
    assert [(r.node, r.mapping) for r in report.rows] == [
        ("a", "kept"), ("b", "unsupported"), ("cat", "unsupported")]
    assert report.rows[1].reason == "branch: node 'b' reads the output of 'input', not of 'a' " \
                                    "before it"
    assert report.rows[2].reason == "concatenation: node 'cat' concatenates the outputs of " \
                                    "'a' and 'b'"


@pytest.mark.parametrize("layer, reason, fix", [
    (nn.Softmax(1), "Softmax is not a layer slimnfu runs", "remove it: the engine returns"),
    (nn.GELU(), "GELU is not a layer slimnfu runs", "use ReLU, LeakyReLU, Sigmoid or Tanh"),
    (nn.LayerNorm(10), "LayerNorm is not a layer slimnfu runs", "use BatchNorm"),
    (nn.LeakyReLU(), "LeakyReLU has negative_slope=0.01, but slimnfu needs an exact PWL table: "
                     "negative_slope=0.01 is not a multiple of 2**-14",
     "use a slope the table holds: negative_slope=0.010009765625 (the nearest)"),
    (nn.Hardtanh(0.0, 9.0), "Hardtanh has min_val, max_val=(0.0, 9.0), but slimnfu needs an "
                            "exact PWL table: corners 0.0 and 9.0 are not both on the PWL "
                            "table's segment boundaries", "use corners j * 2**e with |j| <= 7"),
])
def test_unsupported_layer_after_the_classifier(layer, reason, fix):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), layer)
    (row,) = _unsupported(model).unsupported
    assert row.node == "2" and row.reason.startswith(reason) and row.fix.startswith(fix)


@pytest.mark.parametrize("layer, reason", [
    (nn.Conv2d(3, 6, 3, groups=3), "Conv2d has groups=3, but slimnfu needs groups=1"),
    (nn.Conv2d(3, 4, (3, 5)), "Conv2d has kernel_size=(3, 5), but slimnfu needs a square kernel"),
    (nn.MaxPool2d(2, ceil_mode=True), "MaxPool2d has ceil_mode=True"),
    (nn.AvgPool2d(3), "AvgPool2d has kernel_size=3, but slimnfu needs a power-of-two window"),
    (nn.Conv2d(3, 4, 4, padding="same"), "padding='same' with kernel_size=(4, 4) pads unevenly"),
    (nn.Conv1d(3, 4, 3), "Conv1d is not a layer slimnfu runs"),
])
def test_unsupported_settings_are_named(layer, reason):
    (row,) = _unsupported(nn.Sequential(layer), (3, 8, 8)).unsupported
    assert row.reason.startswith(reason), row.reason
    assert row.fix, row


def test_unsupported_setting_fix_says_what_to_use():
    (row,) = _unsupported(nn.Sequential(nn.Conv2d(3, 6, 3, groups=3)), (3, 8, 8)).unsupported
    assert row.fix == "use groups=1"


def test_batchnorm_not_after_a_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2))
    (row,) = _unsupported(model).unsupported
    assert row.reason == ("BatchNorm2d follows ReLU(), not a conv or linear layer: it folds "
                          "only into the conv or linear layer right before it")
    assert row.fix == "put it directly after the conv or linear layer, before the activation"


def test_batchnorm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    (row,) = _unsupported(model).unsupported
    assert row.reason.startswith("BatchNorm2d without running statistics")


def test_activation_that_follows_no_layer_is_refused():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 2, 3))
    (row,) = _unsupported(model).unsupported
    assert row.reason == ("ReLU follows the input: slimnfu fuses an activation into the conv, "
                          "linear or pooling layer right before it")
    (row,) = _unsupported(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Tanh())).unsupported
    assert row.reason.startswith("Tanh follows ReLU(): slimnfu fuses")


@pytest.mark.parametrize("model, reason", [
    (nn.Sequential(nn.Conv2d(3, 2, 3)), "Conv2d has in_channels=3 but gets 1 (channels, input "
                                        "shape (1, 28, 28))"),
    (nn.Sequential(nn.Linear(28, 2)), "Linear gets a 3-D input (1, 28, 28); add nn.Flatten()"),
    (nn.Sequential(nn.Flatten(), nn.Linear(100, 2)), "Linear has in_features=100 but gets 784"),
    (nn.Sequential(nn.Conv2d(1, 2, 29)), "fails on input (1, 28, 28)"),
])
def test_shapes_that_do_not_chain_are_refused(model, reason):
    (row,) = _unsupported(model).unsupported
    assert row.reason.startswith(reason), row.reason
    assert row.fix == "check --input-shape and the layer's sizes"


def test_view_that_is_not_a_flatten_is_refused():
    class Net(nn.Module):
        def forward(self, x):
            return x.view(-1, 14, 56)

    (row,) = _unsupported(Net()).unsupported
    assert row.reason == "Tensor.view reshapes to (14, 56): only a flatten to (batch, C*H*W) " \
                         "is supported"


def test_untraceable_forward_is_a_problem():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    report = _unsupported(Net(), (4,))
    assert report.rows == [] and report.problems[0].startswith("torch.fx cannot trace Net.")
    assert "no if or loop on tensor values" in report.problems[0]


def test_constant_tensor_is_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + torch.ones(x.shape[1])

    rows = _unsupported(Net(), (4,)).unsupported
    assert [(r.node, r.reason) for r in rows] == [
        ("ones", "torch.ones takes no tensor from the model: it makes a constant"),
        ("add", "residual add: node 'add' adds the outputs of 'fc' and 'ones'")]
    assert rows[0].fix == "fold the constant into a layer's weights or bias, or remove it"


def test_tensor_used_outside_a_layer_is_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.fc(x) * self.scale

    (row,) = _unsupported(Net(), (4,)).unsupported
    assert row.reason == "node 'mul' uses the model's tensor 'scale' directly, not through a " \
                         "layer"


def test_function_that_is_no_layer_is_refused():
    class Net(nn.Module):
        def forward(self, x):
            return x.mean(1)

    (row,) = _unsupported(Net()).unsupported
    assert (row.node, row.reason) == ("mean", "Tensor.mean is not a layer slimnfu runs")
    assert row.fix == "replace it with one of the supported layers"
    assert "supported layers: Conv2d (square kernel" in _unsupported(Net()).table()


def test_unused_in_place_change_is_a_problem():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 26 * 26, 3)

        def forward(self, x):
            y = self.conv(x)
            y.relu_()
            return self.fc(y.flatten(1))

    report = _unsupported(Net())
    assert report.problems == [
        "node 'relu_' changes a tensor in place (Tensor.relu_) and its result is not used: "
        "torch.fx does not follow in-place changes; write x = x.relu() or use the module"]


def test_a_model_without_layers_is_a_problem():
    assert _unsupported(nn.Sequential(nn.Dropout())).problems == ["the model has no layer"]


def test_two_inputs_are_a_problem():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, a, b):
            return self.fc(a)

    assert _unsupported(Net(), (4,)).problems == ["forward takes 2 inputs; slimnfu takes one"]


def test_batchnorm_of_other_width_is_refused():
    (row,) = _unsupported(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3))).unsupported
    assert row.reason == ("BatchNorm2d has num_features=3 but gets 2 (channels, input shape "
                          "(2, 26, 26))")


def test_two_outputs_are_a_problem():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.fc(x)
            return y, y

    report = _unsupported(Net(), (4,))
    assert report.problems == ["forward returns 2 tensors; slimnfu takes a model with one "
                               "output"]


def test_report_table_and_json():
    report = _unsupported(Residual())
    text = report.table()
    assert "unsupported: add (operator.add)" in text
    assert "  why: residual add: node 'add' adds the outputs of 'conv2' and 'relu'" in text
    assert text.endswith("supported: no")
    d = report.to_dict()
    assert d["supported"] is False and d["counts"]["unsupported"] == 1
    assert d["rows"][0]["in_shape"] == [1, 28, 28]
    _, good = normalise(_net(), SHAPE)
    assert good.to_dict()["engine_layers"] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"]
    assert good.table().endswith("supported: yes")


# ---------------------------------------------------------------- loading every form

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding="same", bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 14 * 14, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
            return self.fc(torch.flatten(x, 1))


    def make_model():
        torch.manual_seed(0)
        return Net()
''')


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "user_net.py"
    path.write_text(FACTORY)
    return path


def _same_function(a, b, shape=SHAPE):
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item()


def test_load_factory_with_weights(factory, tmp_path):
    trained = load_model(f"{factory}:make_model")
    _randomise_batchnorms(trained)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = load_model(f"{factory}:make_model", tmp_path / "w.pt")
    assert _same_function(model, trained) == 0
    seq, report = normalise(model, SHAPE)
    assert report.ok and [r.mapping for r in report.rows].count("folded") == 1
    assert _same_function(seq, trained) < 1e-5


def test_load_full_saved_module(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 26 * 26, 10)).eval()
    torch.save(model, tmp_path / "full.pt")
    loaded = load_model(tmp_path / "full.pt")
    assert _same_function(loaded, model) == 0 and normalise(loaded, SHAPE)[1].ok


@pytest.mark.parametrize("how", ["script", "trace"])
def test_load_torchscript(factory, tmp_path, how):
    pytest.importorskip("onnx")
    model = _randomise_batchnorms(load_model(f"{factory}:make_model")).eval()
    scripted = torch.jit.script(model) if how == "script" else \
        torch.jit.trace(model, torch.rand(1, *SHAPE))
    torch.jit.save(scripted, tmp_path / "ts.pt")
    loaded = load_model(tmp_path / "ts.pt")
    assert isinstance(loaded, torch.jit.ScriptModule)
    seq, report = normalise(loaded, SHAPE)
    assert report.ok, report.summary()
    assert [type(m).__name__ for m in seq] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                               "Linear"]
    assert _same_function(seq, model) < 1e-5


def _export_onnx(model, path, shape=SHAPE):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(1, *shape),), str(path), dynamo=False)


def test_load_onnx(factory, tmp_path):
    pytest.importorskip("onnx")
    model = _randomise_batchnorms(load_model(f"{factory}:make_model")).eval()
    _export_onnx(model, tmp_path / "net.onnx")
    loaded = load_model(tmp_path / "net.onnx")
    seq, report = normalise(loaded, SHAPE)
    assert report.ok, report.summary()
    assert report.rows[0].node == "/conv1/Conv"
    assert _same_function(seq, model) < 1e-5


def test_torchscript_that_does_not_run_at_the_input_shape(tmp_path):
    pytest.importorskip("onnx")
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3))), tmp_path / "ts.pt")
    report = _unsupported(load_model(tmp_path / "ts.pt"))
    assert report.problems == [
        "the TorchScript model does not export to ONNX at input shape (1, 28, 28) (RuntimeError: "
        "Given groups=1, weight of size [2, 3, 3, 3], expected input[1, 1, 28, 28] to have 3 "
        "channels, but got 1 channels instead); check --input-shape, or give the model as a "
        "factory file (path.py:make_model)"]


def test_onnx_residual_add_is_refused_naming_the_node(tmp_path):
    pytest.importorskip("onnx")
    _export_onnx(Residual(), tmp_path / "res.onnx")
    (row,) = _unsupported(load_model(tmp_path / "res.onnx")).unsupported
    assert row.node == "/Add" and row.op == "ONNX Add"
    assert row.reason == "residual add: node '/Add' adds the outputs of '/conv2/Conv' and " \
                         "'/Relu'"


def test_onnx_input_shape_must_match(tmp_path):
    pytest.importorskip("onnx")
    _export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), tmp_path / "m.onnx",
                 (3, 8, 8))
    report = _unsupported(load_model(tmp_path / "m.onnx"))
    assert report.problems[0].startswith("the ONNX graph takes inputs of shape (3, 8, 8), not "
                                         "the input shape (1, 28, 28): give --input-shape 3,8,8")
    assert normalise(load_model(tmp_path / "m.onnx"), (3, 8, 8))[1].ok


@pytest.mark.parametrize("spec, error, message", [
    ("missing.pt", FileNotFoundError, r"missing.pt: no such file"),
    ("user_net.py", ValueError, r"user_net.py: name the function that builds the model, "
                                r"user_net.py:make_model"),
    ("user_net.py:build", ValueError, r"user_net.py has no function 'build'; its functions "
                                      r"and classes: Net, make_model"),
    ("broken.py:make_model", ValueError, r"broken.py: importing it raised NameError"),
    ("returns_int.py:make_model", ValueError, r"returns_int.py:make_model\(\) returned a int, "
                                              r"not a torch.nn.Module"),
    ("state.pt", ValueError, r"state.pt holds a OrderedDict \(a state dict or checkpoint\), not "
                             r"a module: give the file that builds the model"),
    ("junk.pt", ValueError, r"junk.pt: not a file torch.load reads"),
    ("junk.onnx", ValueError, r"junk.onnx: not a readable ONNX file"),
    ("raises.py:make_model", ValueError, r"raises.py:make_model\(\) raised RuntimeError: no "
                                         r"GPU here"),
    ("tensor.pt", ValueError, r"tensor.pt holds a Tensor, not a torch.nn.Module"),
    ("bad_ts.pt", ValueError, r"bad_ts.pt: torch.jit.load cannot read it"),
])
def test_load_refusals(tmp_path, monkeypatch, factory, spec, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("x = undefined_name\n")
    (tmp_path / "returns_int.py").write_text("def make_model():\n    return 3\n")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "state.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff not onnx")
    (tmp_path / "raises.py").write_text("def make_model():\n    raise RuntimeError('no GPU "
                                        "here')\n")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with zipfile.ZipFile(tmp_path / "bad_ts.pt", "w") as z:
        z.writestr("archive/constants.pkl", b"junk")
    with pytest.raises(error, match=message):
        load_model(spec)


def test_load_weights_refusals(factory, tmp_path):
    spec = f"{factory}:make_model"
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt does not fit the model: Error\(s\) in "
                                         r"loading state_dict for Net: Missing key"):
        load_model(spec, tmp_path / "other.pt")
    torch.save({"model_state_dict": load_model(spec).state_dict(), "epoch": 3},
               tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"ckpt.pt: not a state dict of tensors \(it has "
                                         r"'model_state_dict': save that alone\)"):
        load_model(spec, tmp_path / "ckpt.pt")
    with pytest.raises(FileNotFoundError, match=r"none.pt: no such file"):
        load_model(spec, tmp_path / "none.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ValueError, match=r"module.pt: not a state dict torch.load reads with "
                                         r"weights_only=True \(UnpicklingError\); save it with "
                                         r"torch.save\(model.state_dict\(\), path\)"):
        load_model(spec, tmp_path / "module.pt")
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="--weights is for torch models"):
        load_model(tmp_path / "x.onnx", tmp_path / "w.pt")


def test_saved_module_whose_class_is_gone(factory, tmp_path):
    model = load_model(f"{factory}:make_model")
    torch.save(model, tmp_path / "full.pt")
    import sys
    for name in [n for n in sys.modules if n.startswith("_slimnfu_user_user_net")]:
        del sys.modules[name]
    with pytest.raises(ValueError, match=r"full.pt: torch.load cannot rebuild the saved module "
                                         r".*save it with torch.jit.script or torch.jit.trace"):
        load_model(tmp_path / "full.pt")
