import pytest
import torch

from slimnfu import fixed
from slimnfu.config import LayerDesc, PassDesc, get_config
from slimnfu.contract import descriptor_value
from slimnfu.rtl.engine import LayerEngine
from slimnfu.sim.amaranth_driver import run_layer_amaranth


def _centred(w, lane_k, tn):
    """Zero the taps outside each filter's centred kernel (filter o is lane o % tn)."""
    w = w.clone()
    k = w.shape[-1]
    for o in range(w.shape[0]):
        lk = (lane_k[o % tn] if lane_k else 0) or k
        off = (k - lk) // 2
        keep = torch.zeros(k, k, dtype=torch.bool)
        keep[off:off + lk, off:off + lk] = True
        w[o][:, ~keep] = 0
    return w


@pytest.mark.parametrize("n_in, n_out, k, pad, lane_k", [
    (5, 4, 5, 0, (5, 3, 1, 3)),
    (3, 6, 3, 1, (1, 3, 0, 1)),
    (6, 5, 3, 1, ()),  # no lane_k: the gated engine is the dense engine
])
def test_mixed_tile_is_bit_exact_and_gated_multiplies_are_counted(n_in, n_out, k, pad, lane_k):
    cfg = get_config("tiny").with_(kgate=True)
    desc = PassDesc(LayerDesc("conv", n_in, n_out, 7, 6, k=k, pad=pad, shift=10, act="relu"),
                    lane_k=lane_k)
    gen = torch.Generator().manual_seed(k)
    x = torch.randint(cfg.qmin, cfg.qmax + 1, (1, n_in, 7, 6), generator=gen)
    # full KxK weights: the gate, not the weights, must remove the outer taps of small lanes
    w = torch.randint(cfg.qmin, cfg.qmax + 1, (n_out, n_in, k, k), generator=gen)
    b = torch.randint(-5000, 5000, (n_out,), generator=gen)
    y, counters, _ = run_layer_amaranth(cfg, desc, x, w, b)
    want = fixed.run_layer(desc, x, _centred(w, lane_k, cfg.tn), b, cfg.dw)
    assert torch.equal(y, want)
    assert counters["gated"] == desc.gated_mults(cfg)
    assert (counters["gated"] > 0) == bool(lane_k)
    assert counters["cycles"] == desc.dense_cycles(cfg) + LayerEngine.latency(cfg, desc)


def test_gating_off_is_the_dense_engine():
    cfg = get_config("tiny").with_(kgate=False)
    engine = LayerEngine(cfg)
    engine._MustUse__silence = True
    assert not hasattr(engine, "gated")
    desc = PassDesc(LayerDesc("conv", 2, 2, 5, 5, k=3), lane_k=(1, 3))
    with pytest.raises(ValueError, match="lane_k needs kgate"):
        descriptor_value(desc, cfg)


def test_bad_lane_kernels():
    with pytest.raises(ValueError, match=r"lane_k\[1\] must be in \[0, 3\], not 5"):
        PassDesc(LayerDesc("conv", 2, 2, 5, 5, k=3), lane_k=(1, 5))
    with pytest.raises(ValueError, match=r"lane_k\[0\]=2 is even"):
        PassDesc(LayerDesc("conv", 2, 2, 5, 5, k=3), lane_k=(2,))


@pytest.mark.parametrize("pad, koff, k", [(0, 1, 3), (1, 1, 3), (0, 2, 1), (2, 1, 3),
                                          (1, 2, 1)])
def test_centre_tap_pass_walks_only_its_taps(pad, koff, k):
    """A pass of a k x k kernel centred (koff) in a larger layer kernel: bit-exact with the
    reference (a conv at padding pad - koff) in exactly k*k steps per output group."""
    cfg = get_config("tiny").with_(kgate=True, nbin_depth=512, nbout_depth=512, sb_depth=256,
                                   bias_depth=16)
    desc = PassDesc(LayerDesc("conv", 5, 6, 9, 9, k=k, pad=pad, shift=4, act="relu"), koff=koff)
    gen = torch.Generator().manual_seed(10 * pad + koff)
    x = torch.randint(-300, 300, (5, 9, 9), generator=gen)
    w = torch.randint(-50, 50, (6, 5, k, k), generator=gen)
    b = torch.randint(-500, 500, (6,), generator=gen)
    y, counters, _ = run_layer_amaranth(cfg, desc, x, w, b)
    assert desc.h_out == 9 + 2 * (pad - koff) - k + 1
    assert torch.equal(y, fixed.run_layer(desc, x.unsqueeze(0), w, b, cfg.dw)[0])
    assert counters["cycles"] == desc.dense_cycles(cfg) + LayerEngine.latency(cfg, desc)


def test_placement_fields_need_kgate():
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="koff=1, nbout_base=0, lane_skip=0 need kgate"):
        PassDesc(LayerDesc("conv", 2, 2, 5, 5, k=1), koff=1).check(cfg)
    with pytest.raises(ValueError, match="lane_skip must be < tn=4, not 4"):
        PassDesc(LayerDesc("conv", 2, 2, 5, 5, k=1), lane_skip=4).check(cfg.with_(kgate=True))
