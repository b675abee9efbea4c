"""The config object and layer descriptors refuse what the engine cannot run."""

import itertools

import pytest

from slimnfu.config import (CONFIGS, PASS_FIELDS, AccelConfig, IkrParams, LayerDesc, PassDesc,
                            PermParams, as_pass, get_config)


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
    (dict(tn=4, ti=4, product_stages=3), ValueError, r"product_stages must be in \[0, 2\], not 3"),
    (dict(tn=4, ti=4, pwl_lutram=2), TypeError, r"pwl_lutram must be a bool \(or the integer"),
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
     r"k=5 is larger than the padded input 3x3"),
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

    cfg = CONFIGS["tiny"].with_(ikr={"index_depth": 64, "lanes": False})
    conv = LayerDesc("conv", 32, 32, 28, 28, 3, pad=1)          # 8 tiles * 784 words in and out
    ikr = PassDesc(LayerDesc("conv", 64, 64, 14, 14, 3, pad=1), ikr_n=4)   # 16*16 index words
    got = cfg.fit_buffers([conv, ikr], name="fit")
    assert got.name == "fit"
    assert (got.nbin_depth, got.nbout_depth) == (8192, 8192)
    assert got.sb_depth == 1024 and got.bias_depth == 128 and got.ikr.index_depth == 256
    assert got.fit_buffers([LayerDesc("fc", 8, 4, 1, 1, 1)]) == got
    conv.check(got) and ikr.check(got)
    with pytest.raises(ValueError, match="needs 256 IKR index words, but config 'fit' has "
                                         r"ikr\.index_depth=64"):
        ikr.check(got.with_(ikr={"index_depth": 64, "lanes": False}))
    # the lane unit's tap memory: a word per SB word, 16*16 tile pairs of 4 taps
    lanes = cfg.with_(ikr={"index_depth": 64}).fit_buffers([conv, ikr])
    assert lanes.ikr.index_depth == 1024 and ikr.ikr_index_words(lanes) == 16 * 16 * 4


def test_a_layer_is_geometry_and_a_pass_adds_format_and_placement():
    """LayerDesc holds what the model says; PassDesc what one engine run does with it."""
    layer = LayerDesc("conv", 3, 5, 9, 9, 3, pad=1, shift=4)
    assert not set(PASS_FIELDS) & set(layer.to_dict())
    with pytest.raises(TypeError):
        LayerDesc("conv", 3, 5, 9, 9, 3, ikr_n=4)
    centre = PassDesc(layer, koff=1, nbout_base=7)
    assert (layer.h_out, centre.h_out) == (9, 7)
    assert centre.nbout_words(CONFIGS["tiny"]) == 2 * 7 * 7
    assert PassDesc.from_dict(centre.to_dict()) == centre
    assert as_pass(layer) == PassDesc(layer) and as_pass(centre) is centre
    with pytest.raises(ValueError, match="need kgate, but config 'tiny' has kgate=False"):
        centre.check(CONFIGS["tiny"])
    centre.check(CONFIGS["tiny"].with_(kgate=True))
    with pytest.raises(ValueError, match=r"ikr_n=10 > k\*k=9"):
        PassDesc(layer, ikr_n=10)
    with pytest.raises(ValueError, match="perm='affine' applies to fc layers only"):
        PassDesc(layer, perm="affine")
    # descriptors written before the split (image version 1, network caches) still load
    old = {**layer.to_dict(), "ikr_n": 4, "perm": "none", "lane_k": [], "koff": 0,
           "nbout_base": 0, "lane_skip": 0}
    assert LayerDesc.from_dict(old) == layer


def test_features_are_a_set_with_a_parameter_record_each():
    tiny = CONFIGS["tiny"]
    assert tiny.features == frozenset() and tiny.ikr is None
    on = tiny.with_(ikr=True, kgate=1)
    assert on.features == {"ikr", "kgate"} and on.ikr == IkrParams()
    assert tiny.with_(ikr={"kmax": 3}).ikr == IkrParams(kmax=3)
    with pytest.raises(ValueError, match=r"ikr\.kmax must be in \[1, 7\], not 9"):
        tiny.with_(ikr={"kmax": 9})
    with pytest.raises(TypeError, match="ikr parameters must be among: kmax, patterns, "
                                        "index_depth, tiles, lanes; not depth"):
        tiny.with_(ikr={"depth": 3})
    # the lane unit is the default; the window decoder a flag, named in the config
    assert IkrParams().lanes is True and tiny.changed(ikr=1).name == "tiny+ikr=1"
    window = tiny.changed(**{"ikr.lanes": 0})
    assert window.ikr == IkrParams(lanes=False) and window.ikr.lanes is False
    assert window.name == "tiny+ikr=1+ikr.lanes=False"
    assert AccelConfig.from_dict(window.to_dict()) == window
    assert AccelConfig.from_dict(on.to_dict()) == on
    # a stored config from before the lane unit (no lanes, or version 1's flat flag) is the
    # window decoder it was built with
    old = on.to_dict()
    del old["ikr"]["lanes"]
    assert AccelConfig.from_dict(old).ikr == IkrParams(lanes=False)
    assert AccelConfig.from_dict({**old, "ikr": True}).ikr == IkrParams(lanes=False)
    with pytest.raises(TypeError, match=r"ikr\.lanes must be a bool \(or the integer 0/1\), "
                                        r"not 2"):
        tiny.with_(ikr={"lanes": 2})
    # the window banks: one per input tile, checked like every parameter
    assert tiny.with_(ikr={"tiles": 64}).ikr.tiles == 64 and IkrParams().tiles == 1
    for bad in (0, 65):
        with pytest.raises(ValueError, match=rf"^ikr\.tiles must be in \[1, 64\], not {bad}$"):
            tiny.with_(ikr={"tiles": bad})
    with pytest.raises(TypeError, match=r"^ikr\.tiles must be an integer, not 2\.0$"):
        tiny.with_(ikr={"tiles": 2.0})
    with pytest.raises(TypeError, match="perm must be a bool"):
        tiny.with_(perm="yes")
    # the permutation path: affine rows by default, s in SB (perm.depth <= sb_depth)
    perm = tiny.changed(perm=1)
    assert perm.perm == PermParams(depth=1024, quadratic=False)
    quad = tiny.changed(**{"perm.quadratic": 1})
    assert quad.perm.quadratic is True and quad.name == "tiny+perm=1+perm.quadratic=True"
    assert AccelConfig.from_dict(quad.to_dict()) == quad
    with pytest.raises(ValueError, match=r"^perm\.depth=2048 exceeds sb_depth=1024: the common "
                                         r"sequence s is held in SB"):
        tiny.changed(**{"perm.depth": 2048})
    # a stored config from before (no quadratic: the generator walked quadratic rows; s in a
    # memory of its own, as deep as perm.depth) is read as the build that runs what it ran
    old = {**tiny.to_dict(), "perm": {"depth": 4096}}
    got_old = AccelConfig.from_dict(old)
    assert got_old.perm == PermParams(depth=4096, quadratic=True) and got_old.sb_depth == 4096
    with pytest.raises(TypeError, match=r"perm\.quadratic must be a bool"):
        tiny.with_(perm={"quadratic": 2})
    # a feature parameter switches its feature on, and names the config
    got = tiny.changed(**{"ikr.kmax": 3})
    assert got.ikr == IkrParams(kmax=3) and got.name == "tiny+ikr=1+ikr.kmax=3"
    assert got.changed(ikr=False).name == "tiny+ikr=0" and got.changed(ikr=False).ikr is None
    with pytest.raises(TypeError, match="unknown config parameter 'ikr_kmax'"):
        tiny.changed(ikr_kmax=3)
    assert AccelConfig.from_dict(got.to_dict()) == got
    # the flat form of weight images of version 1
    flat = {**tiny.to_dict(), "ikr": True, "ikr_kmax": 3, "ikr_patterns": 16,
            "ikr_index_depth": 512, "perm": False, "perm_depth": 1024, "kgate": False}
    assert AccelConfig.from_dict(flat) == tiny.with_(ikr={"kmax": 3, "lanes": False})


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


@pytest.mark.parametrize("kw", [
    {},
    {"tn": 3, "ti": 3, "acc": 40},
    {"ikr": True},
    {"ikr": {"kmax": 3, "patterns": 4}, "perm": {"depth": 64}, "kgate": True, "dw": 8,
     "acc": 30},
])
def test_changes_from_is_what_changed_takes(kw):
    base = get_config("tiny")
    cfg = base.with_(name="other", **kw)
    changes = cfg.changes_from(base)
    assert base.changed(**changes).with_(name="other") == cfg
    assert cfg.changes_from(cfg) == {}
    # and back: a feature on in the base and off here is 0
    assert base.changes_from(cfg) == {} or base.changed(**changes).changed(
        **base.changes_from(cfg)).with_(name="tiny") == base


@pytest.mark.parametrize("tiles, n_in, n_out, stride, n", [
    (5, 20, 50, 1, 1), (2, 9, 13, 2, 2), (1, 4, 9, 1, 5), (2, 12, 8, 1, 1)])
def test_ikr_slot_cycles_walk_the_banked_order(tiles, n_in, n_out, stride, n):
    """``ikr_slot_cycles`` is the sum of the slots in the pass's walk (``ikr_group_slot``):
    ``oy, ox, o, t`` when banked, output tile 0's groups filling ``k`` columns at a row start
    and ``min(stride, k)`` after, the other output tiles' none; ``o, oy, ox, t`` and
    ``max(n, k)`` a slot when not."""
    cfg = CONFIGS["tiny"].with_(ikr={"tiles": tiles, "lanes": False})
    run = PassDesc(LayerDesc("conv", n_in, n_out, 7, 8, 3, stride, 1), ikr_n=n)
    ci, co = run.tiles(cfg)
    banked = run.ikr_banked(cfg)
    assert banked == (ci <= tiles)
    groups = sorted(itertools.product(range(co), range(run.h_out), range(run.w_out)),
                    key=lambda g: run.ikr_group_slot(cfg, *g))
    assert [run.ikr_group_slot(cfg, *g) for g in groups] == list(range(0, len(groups) * ci, ci))
    slots = []
    for o, oy, ox in groups:
        cols = 3 if not banked or o == 0 and ox == 0 else 0 if o else min(stride, 3)
        slots += [max(n, cols)] * ci
    assert groups[1] == ((1, 0, 0) if banked and co > 1 else (0, 0, 1))
    assert [run.ikr_slot_cycles(cfg, q) for q in range(len(slots) + 1)] == \
        list(itertools.accumulate(slots, initial=0))
    assert run.ikr_cycles(cfg) == sum(slots) + n


def test_pwl_lutram_flag():
    """``small`` keeps its PWL table in LUT RAM (issue 16 item 3: its place and route); the
    others in registers; ``SET="pwl_lutram=1"`` gives a bool and a derived name."""
    assert get_config("small").pwl_lutram is True
    assert get_config("tiny").pwl_lutram is False
    cfg = get_config("tiny").changed(pwl_lutram=1)
    assert cfg.pwl_lutram is True and cfg.name == "tiny+pwl_lutram=True"
