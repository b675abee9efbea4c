"""The gateware's interface signatures: members, parameters, equality and refusals."""

import pytest
from amaranth.hdl import Fragment, Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.config import get_config
from slimnfu.contract import descriptor_layout
from slimnfu.rtl.signatures import (LoadSignature, RunSignature, StepFeature, StepSignature,
                                    WindowSignature)

TINY = get_config("tiny")
WIDTHS = dict(lanes=4, sb_addr_width=10, bias_addr_width=7, nbout_addr_width=12)


def test_step_members_follow_the_features():
    base = StepSignature(**WIDTHS)
    assert list(base.members) == ["valid", "sb_addr", "bias_addr", "first", "last", "end",
                                  "nbout_addr", "lane_mask"]
    full = StepSignature(**WIDTHS, nbin_addr_width=11,
                         features={StepFeature.NBIN, StepFeature.WRITE_MASK})
    assert set(full.members) - set(base.members) == {"nbin_addr", "pad", "write_mask"}
    assert full.members["nbin_addr"] == Out(11)
    # a step without a write mask writes every lane
    assert full.members["write_mask"].init == 0b1111
    assert full.features == {StepFeature.NBIN, StepFeature.WRITE_MASK}


def test_step_for_config_and_equality():
    sig = StepSignature.for_config(TINY, features=["nbin"])
    assert sig == StepSignature(lanes=TINY.tn, sb_addr_width=10, bias_addr_width=7,
                                nbout_addr_width=12, nbin_addr_width=11,
                                features=[StepFeature.NBIN])
    assert sig != StepSignature.for_config(TINY)
    assert sig != StepSignature.for_config(TINY.with_(tn=2, ti=2), features=["nbin"])
    # the properties read through a flipped signature too
    assert sig.flip().nbin_addr_width == 11 and In(sig).signature.lanes == TINY.tn
    assert repr(StepSignature(**WIDTHS)) == (
        "StepSignature(lanes=4, sb_addr_width=10, bias_addr_width=7, nbout_addr_width=12, "
        "nbin_addr_width=None, features=frozenset())")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(WIDTHS, lanes="4"), TypeError, "lanes must be a positive integer, not '4'"),
    (dict(WIDTHS, lanes=True), TypeError, "lanes must be a positive integer, not True"),
    (dict(WIDTHS, sb_addr_width=0), ValueError, "sb_addr_width must be a positive integer, not 0"),
    (dict(WIDTHS, features={"nbin"}), TypeError,
     "nbin_addr_width must be a positive integer, not None"),
    (dict(WIDTHS, nbin_addr_width=11), ValueError,
     "nbin_addr_width goes with the NBIN feature only, not 11 without it"),
    (dict(WIDTHS, features="nbin"), TypeError,
     "features must be an iterable of StepFeature, not 'nbin'"),
    (dict(WIDTHS, features={"pad"}), ValueError,
     "features must hold StepFeature members, not 'pad'"),
])
def test_step_refusals(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        StepSignature(**kwargs)


def test_load_signature_is_a_memory_write_port():
    sig = LoadSignature(addr_width=4, data_width=8)
    assert list(sig.members) == ["en", "addr", "data"]
    assert sig == LoadSignature(addr_width=4, data_width=8)
    assert sig != LoadSignature(addr_width=5, data_width=8)
    assert repr(sig) == "LoadSignature(addr_width=4, data_width=8)"
    # a loader port of matching widths drives a memory's write port through wiring.connect
    m = Module()
    m.submodules.mem = mem = Memory(shape=unsigned(8), depth=16, init=[])
    wiring.connect(m, sig.create(), mem.write_port())
    Fragment.get(m, None)
    with pytest.raises(TypeError, match="^addr_width must be a positive integer, not 2.0$"):
        LoadSignature(addr_width=2.0, data_width=8)
    with pytest.raises(ValueError, match="^data_width must be a positive integer, not -1$"):
        LoadSignature(addr_width=2, data_width=-1)


def test_window_and_run_signatures():
    cfg = TINY.with_(ikr={"kmax": 3, "index_depth": 16})
    win = WindowSignature.for_config(cfg)
    assert win == WindowSignature(kmax=3, index_addr_width=4)
    assert {n: m.shape for n, m in win.members.items()} == {
        "swap": 1, "swap_bank": 1, "fill_valid": 1, "fill_bank": 1, "fill_pad": 3,
        "tap_offset": 2, "step": 4, "idx_addr": 4}
    banked = WindowSignature.for_config(
        TINY.with_(ikr={"kmax": 3, "index_depth": 16, "tiles": 5}))
    assert banked == WindowSignature(kmax=3, index_addr_width=4, tiles=5) != win
    assert banked.members["fill_bank"].shape == banked.members["swap_bank"].shape == 3
    with pytest.raises(ValueError, match="^kmax must be a positive integer, not 0$"):
        WindowSignature(kmax=0, index_addr_width=4)
    with pytest.raises(ValueError, match="^tiles must be a positive integer, not 0$"):
        WindowSignature(kmax=3, index_addr_width=4, tiles=0)
    run = RunSignature.for_config(TINY)
    assert run == RunSignature(desc_layout=descriptor_layout(TINY))
    assert run != RunSignature.for_config(cfg)  # the IKR descriptor has ikr_n
    assert run.members["busy"].flow == In
    with pytest.raises(TypeError, match="^desc_layout must be a StructLayout, not 8$"):
        RunSignature(desc_layout=8)
    with pytest.raises(TypeError, match="^cfg must be an AccelConfig, not str$"):
        StepSignature.for_config("tiny")
