"""The IKR format's config: a window bank per input tile of the program's IKR layers."""

import dataclasses

import pytest

from slimnfu.config import CONFIGS
from slimnfu.formats.ikr import WINDOW_BANK_BITS, IkrFormat
from slimnfu.gen.compiler import config_for


def _ikr_layers(qmodel):
    return [ql for ql in qmodel.layers if isinstance(ql.weight_format, IkrFormat)]


def test_configure_gives_a_bank_per_input_tile_within_the_budget(mixed_qmodel):
    conv2, = _ikr_layers(mixed_qmodel)
    tiny = CONFIGS["tiny"]
    fmt = conv2.weight_format
    need = -(-conv2.desc.n_in // tiny.ti)
    assert need > 1
    got = fmt.configure(tiny, [conv2])
    assert got.ikr.tiles == need and got.name == "tiny"
    assert config_for(mixed_qmodel, tiny).ikr.tiles == need
    # never lowered: a config that already has more banks keeps them
    assert fmt.configure(tiny.with_(ikr={"tiles": need + 3}), [conv2]).ikr.tiles == need + 3
    # the budget: kmax**2 * ti * dw register bits a bank; at least one bank
    wide = dataclasses.replace(conv2, desc=conv2.desc.with_(k=5, n_in=64 * tiny.ti))
    bank = 25 * tiny.ti * tiny.dw
    assert fmt.configure(tiny, [wide]).ikr.tiles == WINDOW_BANK_BITS // bank == 10
    big = tiny.with_(ti=64, tn=64)
    assert 25 * 64 * 16 > WINDOW_BANK_BITS and fmt.configure(big, [wide]).ikr.tiles == 1
    # diannao: LeNet-5's conv2 (20 input channels) gets its two banks
    lenet = dataclasses.replace(conv2, desc=conv2.desc.with_(k=5, n_in=20))
    assert fmt.configure(CONFIGS["diannao"], [lenet]).ikr.tiles == 2


def test_configure_fits_the_window_to_the_largest_kernel(mixed_qmodel):
    conv2, = _ikr_layers(mixed_qmodel)
    tiny = CONFIGS["tiny"]
    fmt = conv2.weight_format
    assert conv2.desc.k == 3 and fmt.configure(tiny, [conv2]).ikr.kmax == 3
    lenet2 = dataclasses.replace(conv2, desc=conv2.desc.with_(k=5, n_in=20))
    assert fmt.configure(tiny.with_(ikr={"kmax": 3}), [lenet2]).ikr.kmax == 5
    # a 3x3 network gets a 3x3 window, so its banks are 9 taps and more of them fit the budget
    # (the VGG's conv4: 64 input channels, 16 tiles on tiny, all banked)
    vgg4 = dataclasses.replace(conv2, desc=conv2.desc.with_(k=3, n_in=64))
    got = fmt.configure(tiny, [vgg4])
    assert got.ikr.kmax == 3 and got.ikr.tiles == 16
    assert WINDOW_BANK_BITS // (9 * tiny.ti * tiny.dw) == 28
    # the largest kernel of the layers decides, lowered or raised from the config's
    assert fmt.configure(tiny, [vgg4, lenet2]).ikr.kmax == 5
    k7 = dataclasses.replace(conv2, desc=conv2.desc.with_(k=7, h_in=12, w_in=12))
    assert fmt.configure(tiny.with_(ikr={"kmax": 3}), [k7]).ikr.kmax == 7
    # past the largest window the decoder has, the config's stays, and compiling names the layer
    k9 = dataclasses.replace(conv2, desc=conv2.desc.with_(k=9, h_in=12, w_in=12))
    cfg9 = fmt.configure(tiny, [k9])
    assert cfg9.ikr.kmax == 5
    with pytest.raises(ValueError, match=r"layer conv2: .* 9x9 kernel do not fit .*ikr\.kmax=5"):
        fmt.memories(k9, cfg9)
