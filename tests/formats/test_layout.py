"""Buffer layouts: packing and unpacking are inverse, and lanes sit where the docs say."""

import dataclasses

import pytest
import torch

from slimnfu.config import CONFIGS, AccelConfig
from slimnfu.contract import Im2col
from slimnfu.formats import layout

CFG = AccelConfig("t2", tn=2, ti=2, dw=8, acc=24)


def test_input_round_trip_and_lane_order():
    x = torch.arange(-6, 12).view(3, 2, 3)
    words = layout.pack_input(x, CFG)
    assert len(words) == 2 * 2 * 3                     # 2 channel tiles * h * w
    assert words[0] == ((-6) & 0xFF) | ((0 & 0xFF) << 8)   # channels 0, 1 at pixel (0, 0)
    assert words[6] == 6                               # channel 2 alone (channel 3 padded)
    assert torch.equal(layout.unpack_output(words, 3, 2, 3, CFG), x)


def test_weight_word_order():
    w = torch.arange(3 * 3 * 1 * 1).view(3, 3, 1, 1)
    words = layout.pack_weights(w, CFG)
    lanes = layout.unpack_words(words, 4, 8)
    # word (o=0, t=0): lanes j*ti+i = w[j, i]
    assert lanes[0].tolist() == [w[0, 0, 0, 0], w[0, 1, 0, 0], w[1, 0, 0, 0], w[1, 1, 0, 0]]
    # word (o=1, t=1): only w[2, 2] is real
    assert lanes[3].tolist() == [w[2, 2, 0, 0], 0, 0, 0]


def test_bias_and_pwl_widths():
    assert layout.pack_bias(torch.tensor([-1, 2, 3]), CFG) == [0xFFFFFF | (2 << 24), 3]
    from slimnfu.fixed import PwlTable
    words = layout.pack_pwl(PwlTable([-1] * 16, [1] * 16, 2, 8), CFG)
    assert words[0] == 0xFF | (1 << 8)


@pytest.mark.parametrize("n_in, k", [(1, 5), (3, 3), (2, 4), (1, 1)])
def test_patch_order_puts_the_centre_taps_first(n_in, k):
    order = layout.patch_order(n_in, k)
    assert sorted(order.tolist()) == list(range(n_in * k * k))
    for kt in range(k % 2 or 2, k + 1, 2):
        lo, hi = (k - kt) // 2, (k - kt) // 2 + kt
        centre = {(c * k + ky) * k + kx for c in range(n_in) for ky in range(lo, hi)
                  for kx in range(lo, hi)}
        assert set(order[:n_in * kt * kt].tolist()) == centre


@pytest.mark.parametrize("n_in, h, w, k, stride, pad", [
    (1, 28, 28, 5, 1, 0), (3, 9, 11, 3, 2, 1), (1, 8, 8, 3, 1, 2), (3, 10, 10, 4, 3, 1)])
def test_patch_input_is_unfold_in_patch_order(n_in, h, w, k, stride, pad):
    x = torch.randint(-2**15, 2**15, (2, n_in, h, w))
    im = Im2col("conv1", n_in, h, w, k, stride, pad, n_in * k * k)
    got = layout.patch_input(x, im)
    cols = torch.nn.functional.unfold(x.double(), k, padding=pad, stride=stride)
    want = cols[:, layout.patch_order(n_in, k)].reshape(2, -1, im.h_out, im.w_out)
    assert got.dtype == torch.int64 and torch.equal(got, want.long())
    assert torch.equal(layout.patch_input(x[1], im), got[1])
    # a prefix of the channels: the centre taps
    assert torch.equal(layout.patch_input(x, dataclasses.replace(im, channels=n_in)),
                       got[:, :n_in])
    with pytest.raises(ValueError, match=r"the input is \(1, 4, 4\), layer conv1 takes"):
        layout.patch_input(torch.zeros(1, 4, 4, dtype=torch.int64), im)


def test_program_input_of_an_im2col_program(small_qmodel):
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(small_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    on, off = (compile_model(small_qmodel, cfg, im2col=m) for m in ("on", "off"))
    x = torch.randint(-2**15, 2**15, (1, 10, 10))
    assert on.im2col == Im2col("conv1", 1, 10, 10, 3, 1, 0, 9) and off.im2col is None
    words = layout.pack_program_input(on, x)
    assert words == layout.pack_input(layout.patch_input(x, on.im2col), cfg)
    assert len(words) == on.input_words() == 3 * 8 * 8 == on.stats["input_words"]
    assert layout.pack_program_input(off, x) == layout.pack_input(x, cfg)
    assert off.input_words() == 100
