"""The config object and layer descriptors refuse what the engine cannot run."""

import pytest

from slimnfu.config import AccelConfig, LayerDesc, get_config


def test_named_configs():
    assert (get_config("tiny").tn, get_config("small").tn, get_config("diannao").tn) == (4, 8, 16)
    with pytest.raises(ValueError, match="unknown config 'huge'; known configs: tiny"):
        get_config("huge")


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(tn=0, ti=4), ValueError, r"tn must be in \[1, 64\], not 0"),
    (dict(tn=4, ti=4, acc=30), ValueError, r"acc must be >= 35 for dw=16, ti=4"),
    (dict(tn=4.0, ti=4), TypeError, "tn must be an integer"),
    (dict(tn=4, ti=8), ValueError, "tn must equal ti"),
    (dict(tn=4, ti=4, sb_depth=1), ValueError, "sb_depth must be in"),
    (dict(tn=4, ti=4, ikr=1.0), TypeError, r"ikr must be a bool \(or the integer 0/1\), not 1.0"),
    (dict(tn=4, ti=4, kgate=0.0), TypeError, "kgate must be a bool .* not 0.0"),
    (dict(tn=4, ti=4, perm="yes"), TypeError, "perm must be a bool .* not 'yes'"),
])
def test_invalid_config(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        AccelConfig("bad", **kw)


def test_layer_too_big_for_buffers():
    with pytest.raises(ValueError, match="needs 25000 weight words .* has sb_depth=1024"):
        LayerDesc("fc", 800, 500).check(get_config("tiny"))


def test_acc_too_narrow_for_layer():
    cfg = AccelConfig("narrow", tn=4, ti=4, acc=36, sb_depth=4096)
    with pytest.raises(ValueError, match="can sum to 40 bits, but config 'narrow' has acc=36"):
        LayerDesc("conv", 16, 4, 8, 8, 5).check(cfg)


@pytest.mark.parametrize("kw, msg", [
    (dict(kind="deconv", n_in=1, n_out=1), "layer kind must be one of"),
    (dict(kind="maxpool", n_in=4, n_out=5, h_in=4, w_in=4, k=2), "pooling needs n_out == n_in"),
    (dict(kind="avgpool", n_in=4, n_out=4, h_in=6, w_in=6, k=3), "power-of-two window"),
    (dict(kind="maxpool", n_in=4, n_out=4, h_in=4, w_in=4, k=2, pad=1), "pooling takes no pad"),
    (dict(kind="fc", n_in=4, n_out=4, h_in=2), "an fc layer must have"),
    (dict(kind="conv", n_in=1, n_out=1, h_in=3, w_in=3, k=5),
     r"k=5 \(\+ 2\*koff=0\) is larger than the padded"),
    (dict(kind="conv", n_in=1, n_out=1, act="gelu"), "act must be one of"),
])
def test_descriptor_the_engine_cannot_run(kw, msg):
    with pytest.raises(ValueError, match=msg):
        LayerDesc(**kw)


def test_descriptor_field_width():
    with pytest.raises(ValueError, match="k must be < 16"):
        LayerDesc("conv", 1, 1, 20, 20, 16).check(get_config("tiny"))


def test_dense_cycles_formula():
    cfg = get_config("diannao")
    assert LayerDesc("conv", 1, 20, 28, 28, 5).dense_cycles(cfg) == 24 * 24 * 2 * 1 * 25
    assert LayerDesc("conv", 20, 50, 12, 12, 5).dense_cycles(cfg) == 8 * 8 * 4 * 2 * 25
    assert LayerDesc("fc", 800, 500).dense_cycles(cfg) == 32 * 50
    assert LayerDesc("maxpool", 20, 20, 24, 24, 2, 2).dense_cycles(cfg) == 12 * 12 * 2 * 4


def test_fit_buffers_raises_depths_to_powers_of_two_and_keeps_larger_ones():
    from slimnfu.config import CONFIGS, LayerDesc

    cfg = CONFIGS["tiny"]
    conv = LayerDesc("conv", 32, 32, 28, 28, 3, pad=1)          # 8 tiles * 784 words in and out
    ikr = LayerDesc("conv", 64, 64, 14, 14, 3, pad=1, ikr_n=4)   # 16*16 index words
    got = cfg.fit_buffers([conv, ikr], name="fit")
    assert got.name == "fit"
    assert (got.nbin_depth, got.nbout_depth) == (8192, 8192)
    assert got.sb_depth == 1024 and got.bias_depth == 128 and got.ikr_index_depth == 512
    assert got.fit_buffers([LayerDesc("fc", 8, 4, 1, 1, 1)]) == got
    conv.check(got.with_(ikr=True)) and ikr.check(got.with_(ikr=True))


def test_changed_configs_are_named_after_what_changed():
    """--set and --dw must not reuse another config's name, build folder or labels."""
    tiny = get_config("tiny")
    big = tiny.changed(nbout_depth=8192)
    assert big.name == "tiny+nbout_depth=8192" and big.nbout_depth == 8192
    assert big.changed(ikr=True).name == "tiny+ikr=1+nbout_depth=8192"
    assert tiny.changed(dw=16) is tiny and tiny.changed(ikr=0) is tiny
    assert AccelConfig.from_dict(big.to_dict()) == big
    with pytest.raises(ValueError, match="config name must be an identifier, optionally "
                                         "followed by \\+key=value"):
        AccelConfig("tiny/../x", tn=4, ti=4)
