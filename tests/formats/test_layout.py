"""Buffer layouts: packing and unpacking are inverse, and lanes sit where the docs say."""

import torch

from slimnfu.config import AccelConfig
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
