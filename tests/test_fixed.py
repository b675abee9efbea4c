"""Hand-computed checks of the fixed-point contract (docs/design.md section 2)."""

import pytest
import torch

from slimnfu import fixed
from slimnfu.config import LayerDesc


def t(*v):
    return torch.tensor(v, dtype=torch.int64)


def test_requant_rounds_ties_half_up():
    # (acc + 2) >> 2 : 2/4 = 0.5 -> 1, 6/4 = 1.5 -> 2, -2/4 = -0.5 -> 0, -6/4 = -1.5 -> -1
    assert fixed.requant(t(2, 6, -2, -6, 1, -1, 3, -3), 2, 16).tolist() == \
        [1, 2, 0, -1, 0, 0, 1, -1]


def test_requant_sh_zero_has_no_rounding_term():
    assert fixed.requant(t(5, -5, 0, 32767, -32768), 0, 16).tolist() == [5, -5, 0, 32767, -32768]


def test_saturation_at_both_rails_is_counted():
    count = fixed.SatCount()
    y = fixed.requant(t(32767 * 4, 32768 * 4, -32768 * 4, -32769 * 4, 1 << 40, -(1 << 40)),
                      2, 16, count)
    assert y.tolist() == [32767, 32767, -32768, -32768, 32767, -32768]
    # 32768*4>>2 = 32768 clamps; -32769*4 >> 2 = -32769 clamps; the two 2**40 clamp
    assert count.events == 4


def test_most_negative_value_products_are_exact():
    acc = fixed.linear_acc(t(-32768, -32768).view(1, 2), t(-32768, -32768).view(1, 2))
    assert acc.item() == 2 * (1 << 30)
    assert fixed.requant(acc, 15, 16).item() == 32767  # 2**16 saturates


def test_dw8_rails():
    count = fixed.SatCount()
    assert fixed.sat(t(-129, -128, 127, 128), 8, count).tolist() == [-128, -128, 127, 127]
    assert count.events == 2


def test_relu():
    assert fixed.relu(t(-3, 0, 4)).tolist() == [0, 0, 4]


def test_conv_by_hand():
    x = torch.arange(9, dtype=torch.int64).view(1, 1, 3, 3)       # 0..8
    w = t(1, 0, 0, -1).view(1, 1, 2, 2)                           # x[i,j] - x[i+1,j+1]
    assert fixed.conv2d_acc(x, w, t(10)).view(-1).tolist() == [6, 6, 6, 6]
    # padding 1, stride 2: windows at padded (0,0), (0,2), (2,0), (2,2)
    y = fixed.conv2d_acc(x, w, None, stride=2, pad=1).view(-1).tolist()
    assert y == [0 - 0, 0 - 2, 0 - 6, 4 - 8]


def test_pooling_by_hand():
    x = t(1, 2, -3, -4, 5, 6, 7, 9, -1, -1, -1, -2, 0, 0, 0, 1).view(1, 1, 4, 4)
    assert fixed.maxpool(x, 2, 2).view(-1).tolist() == [6, 9, 0, 1]
    # sums 14, 9, -2, -2 ; (s + 2) >> 2 -> 4, 2, 0, 0
    assert fixed.avgpool(x, 2, 2, 16).view(-1).tolist() == [4, 2, 0, 0]
    with pytest.raises(ValueError, match="power-of-two"):
        fixed.avgpool(x, 3, 1, 16)


def test_pwl_by_hand():
    # identity table: slope 1.0 (2**14), icpt 0 -> out == y for every segment
    table = fixed.PwlTable([1 << 14] * 16, [0] * 16, 4, 16)
    y = t(-32768, -100, 0, 99, 32767)
    assert fixed.pwl_apply(y, table).tolist() == y.tolist()
    # segment of y = 40 with seg_shift 4: (40 >> 4) + 8 = 10; slope 0.5, icpt 3 * 2**14
    slope, icpt = [0] * 16, [0] * 16
    slope[10], icpt[10] = 1 << 13, 3 << 14
    assert fixed.pwl_apply(t(40), fixed.PwlTable(slope, icpt, 4, 16)).item() == 23


def test_pwl_sigmoid_tanh_track_float():
    for name, fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        table = fixed.pwl_table(name, 10, 16)
        y = torch.arange(-8 << 10, 8 << 10, 97)
        err = (fixed.pwl_apply(y, table) / 1024.0 - fn(y / 1024.0)).abs().max().item()
        assert err < 0.025, name


def _exact_reference(name, y, f, dw):
    """``name``'s float value on ``y / 2**f``, rounded half up to the output scale (exact in
    float64 for these inputs), saturated."""
    real = fixed.pwl_function(name)(y.double() / 2.0 ** f)
    return fixed.sat(torch.floor(real * 2.0 ** f + 0.5), dw)


@pytest.mark.parametrize("name, f, dw", [
    ("leaky_relu(0.125)", 12, 16), ("leaky_relu(-0.5)", 9, 16), ("leaky_relu(0.015625)", 4, 8),
    ("hardtanh(-1.0,1.0)", 14, 16), ("hardtanh(0.0,6.0)", 12, 16), ("hardtanh(-0.5,0.5)", 6, 8),
    ("hardtanh(-4.0,20.0)", 10, 16)])
def test_piecewise_linear_pwl_tables_are_exact_on_every_input(name, f, dw):
    assert fixed.pwl_exact_problem(name, dw) is None
    y = torch.arange(-(1 << (dw - 1)), 1 << (dw - 1))
    table = fixed.pwl_table(name, f, dw)
    assert torch.equal(fixed.pwl_apply(y, table), _exact_reference(name, y, f, dw))


@pytest.mark.parametrize("name, dw, words", [
    ("leaky_relu(0.01)", 16, "negative_slope=0.01 is not a multiple of 2**-14 in [-2, 2)"),
    ("leaky_relu(0.0078125)", 8, "negative_slope=0.0078125 is not a multiple of 2**-6"),
    ("leaky_relu(3.0)", 16, "negative_slope=3.0 is not a multiple of 2**-14 in [-2, 2)"),
    ("hardtanh(0.0,9.0)", 16, "corners 0.0 and 9.0 are not both on the PWL table's segment"),
    ("hardtanh(0.1,1.0)", 16, "corners 0.1 and 1.0 are not both"),
    ("hardtanh(-2.5,0.75)", 16, "corners -2.5 and 0.75 are not both"),
])
def test_inexact_piecewise_linear_activations_are_named(name, dw, words):
    problem = fixed.pwl_exact_problem(name, dw)
    assert problem.startswith(words), problem
    if name == "hardtanh(-2.5,0.75)":       # and the table would indeed be wrong
        y = torch.arange(-(1 << 15), 1 << 15)
        out = fixed.pwl_apply(y, fixed.pwl_table(name, 12, 16))
        assert not torch.equal(out, _exact_reference(name, y, 12, 16))


def test_pwl_names():
    assert fixed.pwl_name("hardtanh", 0, 6) == "hardtanh(0.0,6.0)"
    assert fixed.parse_pwl_name("leaky_relu(0.125)") == ("leaky_relu", (0.125,))
    assert fixed.parse_pwl_name("tanh") == ("tanh", ())
    for bad in ("gelu", "hardtanh(1.0,-1.0)", "leaky_relu()", "hardtanh(0,x)", None,
                "leaky_relu(nan)"):
        with pytest.raises(ValueError, match="unknown PWL activation"):
            fixed.parse_pwl_name(bad)
    with pytest.raises(ValueError, match="a segment of 2\\*\\*-1 steps is not a whole number"):
        fixed.pwl_table("hardtanh(-0.5,0.5)", 0, 16)


def test_pwl_table_range_checked():
    with pytest.raises(ValueError, match="slope 40000 is outside"):
        fixed.PwlTable([40000] + [0] * 15, [0] * 16, 4, 16)


def test_quantize_and_frac_bits():
    assert fixed.frac_bits_for(1.0, 16) == 14
    assert fixed.frac_bits_for(0.99, 16) == 15
    count = fixed.SatCount()
    assert fixed.quantize(torch.tensor([0.5, -1.0, 3.0]), 14, 16, count).tolist() == \
        [8192, -16384, 32767]
    assert count.events == 1


def test_run_layer_matches_float_for_exact_values():
    torch.manual_seed(0)
    desc = LayerDesc("conv", 3, 4, 6, 6, 3, stride=2, pad=1, shift=0, act="relu")
    x = torch.randint(-8, 8, (2, 3, 6, 6))
    w = torch.randint(-8, 8, (4, 3, 3, 3))
    b = torch.randint(-8, 8, (4,))
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), 2, 1))
    assert torch.equal(fixed.run_layer(desc, x, w, b, 16), ref.long())


def test_non_integer_input_refused():
    with pytest.raises(ValueError, match="non-integer"):
        fixed.requant(torch.tensor([0.5]), 1, 16)


_CONV = LayerDesc("conv", 3, 4, 6, 6, 3, pad=1, shift=4)


def _operands():
    torch.manual_seed(1)
    return (torch.randint(-8, 8, (2, 3, 6, 6)), torch.randint(-8, 8, (4, 3, 3, 3)),
            torch.randint(-8, 8, (4,)))


@pytest.mark.parametrize("edit, message", [
    (lambda x, w, b: (x, torch.zeros(4, 3, 5, 5, dtype=torch.int64), b),
     r"w has shape \(4, 3, 5, 5\), the descriptor needs \(4, 3, 3, 3\)"),
    (lambda x, w, b: (x[:, :, :5], w, b), r"x has shape \(2, 3, 5, 6\), the descriptor needs "
                                          r"\('N', 3, 6, 6\)"),
    (lambda x, w, b: (x[0], w, b), r"x has shape \(3, 6, 6\)"),
    (lambda x, w, b: (x, w[:3], b), r"w has shape \(3, 3, 3, 3\)"),
    (lambda x, w, b: (x, w, b[:1]), r"b has shape \(1,\), the descriptor needs \(4,\)"),
    (lambda x, w, b: (x.index_fill(3, torch.tensor([0]), 40000), w, b),
     r"x holds 40000, outside dw=16 bits \[-32768, 32767\]"),
    (lambda x, w, b: (x.double().index_fill(3, torch.tensor([0]), float("inf")), w, b),
     "x holds a value that is not finite"),
    (lambda x, w, b: (x, w.index_fill(0, torch.tensor([1]), 2 ** 31), b),
     r"w holds 2147483648, outside dw=16 bits"),
])
def test_run_layer_refuses_operands_the_descriptor_does_not_allow(edit, message):
    x, w, b = edit(*_operands())
    with pytest.raises(ValueError, match="run_layer: " + message):
        fixed.run_layer(_CONV, x, w, b, 16)


def test_run_layer_refuses_sums_its_accumulator_cannot_hold():
    x, w, b = _operands()
    with pytest.raises(ValueError, match=r"b holds 200, outside acc=8 bits \[-128, 127\]"):
        fixed.run_layer(_CONV, x, w, b.index_fill(0, torch.tensor([0]), 200), 16, acc=8)
    with pytest.raises(ValueError, match="can sum to 36 bits, more than the 35-bit accumulator"):
        fixed.run_layer(_CONV, x, w, b, 16, acc=35)
    big = LayerDesc("fc", 4096, 1)
    with pytest.raises(ValueError, match="can sum to 76 bits, more than the 64-bit accumulator"):
        fixed.run_layer(big, torch.zeros(1, 4096, dtype=torch.int64),
                        torch.zeros(1, 4096, dtype=torch.int64),
                        torch.zeros(1, dtype=torch.int64), 32)


def test_gated_weights_keep_each_lanes_centred_kernel():
    from slimnfu.config import PassDesc

    w = torch.ones(6, 2, 5, 5, dtype=torch.int64)
    desc = PassDesc(LayerDesc("conv", 2, 6, 7, 7, k=5), lane_k=(1, 3, 0, 5))
    g = fixed.gated_weights(desc, w, tn=4)
    # output o runs on lane o % 4; lane 2 (0) and the lanes past lane_k keep the whole kernel
    assert [int(g[o, 0].sum()) for o in range(6)] == [1, 9, 25, 25, 1, 9]
    assert g[1, 1, 1:4, 1:4].eq(1).all() and g[1, 1, 0].eq(0).all()
    assert fixed.gated_weights(PassDesc(desc.layer), w, tn=4) is w


def test_accumulate_is_run_layers_sum_before_requantisation():
    from slimnfu.config import PassDesc

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-50, 50, (1, 2, 7, 6), generator=gen)
    w = torch.randint(-5, 5, (3, 2, 3, 3), generator=gen)
    b = torch.randint(-9, 9, (3,), generator=gen)
    for koff, pad in ((0, 1), (1, 0), (1, 2)):
        desc = PassDesc(LayerDesc("conv", 2, 3, 7, 6, 3, pad=pad), koff=koff)
        acc = fixed.accumulate(desc, x, w, b)
        assert torch.equal(fixed.requant(acc, 0, 16), fixed.run_layer(desc, x, w, b, 16))
    assert acc.shape == (1, 3, 7, 6)
