"""The IKR format's config: a window bank per input tile of the program's IKR layers."""

import dataclasses

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
    assert got.ikr.tiles == need and got.ikr.kmax == 5 and got.name == "tiny"
    assert config_for(mixed_qmodel, tiny).ikr.tiles == need
    # never lowered: a config that already has more banks keeps them
    assert fmt.configure(tiny.with_(ikr={"tiles": need + 3}), [conv2]).ikr.tiles == need + 3
    # the budget: kmax**2 * ti * dw register bits a bank; at least one bank
    wide = dataclasses.replace(conv2, desc=conv2.desc.with_(n_in=64 * tiny.ti))
    bank = 25 * tiny.ti * tiny.dw
    assert fmt.configure(tiny, [wide]).ikr.tiles == WINDOW_BANK_BITS // bank == 10
    big = tiny.with_(ti=64, tn=64)
    assert 25 * 64 * 16 > WINDOW_BANK_BITS and fmt.configure(big, [wide]).ikr.tiles == 1
    # diannao: LeNet-5's conv2 (20 input channels) gets its two banks
    lenet = dataclasses.replace(conv2, desc=conv2.desc.with_(n_in=20))
    assert fmt.configure(CONFIGS["diannao"], [lenet]).ikr.tiles == 2
