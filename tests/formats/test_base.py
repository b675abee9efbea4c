"""``WeightFormat.im2col``: a first conv layer as a 1x1 conv over its input's patches gives
the same integers, in every format that supports it; the others say they cannot."""

import dataclasses

import pytest
import torch

from slimnfu.config import AccelConfig, LayerDesc
from slimnfu.contract import Im2col
from slimnfu.formats import layout
from slimnfu.formats.ikr import IkrWeights
from slimnfu.formats.qmodel import QLayer
from slimnfu.formats.slim import SlimWeights

CFGS = [AccelConfig("t4", tn=4, ti=4, dw=16, acc=48, nbin_depth=4096, sb_depth=1024,
                    nbout_depth=4096, bias_depth=64, kgate=True),
        AccelConfig("t16", tn=16, ti=16, dw=16, acc=48, nbin_depth=4096, sb_depth=1024,
                    nbout_depth=4096, bias_depth=64, kgate=True)]

#: (n_in, n_out, h, w, k, stride, pad): n_in 1 and 3, padding and stride.
SHAPES = [(1, 6, 12, 12, 5, 1, 0), (3, 5, 9, 11, 3, 2, 1), (1, 3, 8, 8, 3, 1, 2),
          (3, 7, 10, 10, 5, 2, 2)]


def _conv(n_in, n_out, h, w, k, stride, pad, seed, act="relu"):
    gen = torch.Generator().manual_seed(seed)
    desc = LayerDesc("conv", n_in, n_out, h, w, k=k, stride=stride, pad=pad, shift=9, act=act)
    wt = torch.randint(-2**13, 2**13, (n_out, n_in, k, k), generator=gen)
    b = torch.randint(-2**20, 2**20, (n_out,), generator=gen)
    x = torch.randint(-2**15, 2**15, (2, n_in, h, w), generator=gen)
    x[:, :, 0, :3] = -2**15     # rails
    wt[0, 0, 0, 0] = -2**15
    return QLayer("conv1", desc, wt, b, 6, 12, 9), x


def _slim(ql, ksize, n_approx, seed):
    """``ql`` as a slim layer: filter ``j`` keeps its centred ``ksize[j]`` taps; ``n_approx``
    features approximated from the kept ones."""
    gen = torch.Generator().manual_seed(seed)
    K, w = ql.desc.k, ql.w.clone()
    for j, kj in enumerate(ksize):
        o = (K - kj) // 2
        keep = torch.zeros(K, K, dtype=torch.bool)
        keep[o:o + kj, o:o + kj] = True
        w[j][:, ~keep] = 0
    n = ql.desc.n_out + n_approx
    rec = SlimWeights(K, torch.tensor(ksize), n_approx, list(range(n)),
                      list(range(ql.desc.n_out)), list(range(ql.desc.n_out, n)),
                      torch.randint(-2**10, 2**10, (n_approx, ql.desc.n_out), generator=gen),
                      torch.randint(-2**12, 2**12, (n_approx,), generator=gen), 8)
    return dataclasses.replace(ql, w=w, format="slim", compressed=rec)


def _im2col(ql, new):
    d = ql.desc
    return Im2col(ql.name, d.n_in, d.h_in, d.w_in, d.k, d.stride, d.pad, new.desc.n_in)


def _same(ql, x, cfg):
    """The im2col layer of ``ql`` on the patches of ``x`` equals ``ql`` on ``x`` (and so do
    its engine passes, computed pass by pass); returns it."""
    fmt = ql.weight_format
    new = fmt.im2col(ql)
    assert new.desc.k == 1 and (new.desc.h_in, new.desc.w_in) == (ql.desc.h_out, ql.desc.w_out)
    px = layout.patch_input(x, _im2col(ql, new))
    want = fmt.run(ql, x, 16)
    assert torch.equal(fmt.run(new, px, 16), want)
    assert torch.equal(fmt.run(new, px, 16, tn=cfg.tn), want)
    for p in fmt.check(new, cfg):
        assert p.desc.layer.k == 1 and p.desc.lane_k == () and p.desc.koff == 0
    return new


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_im2col_is_the_same_layer(shape):
    ql, x = _conv(*shape, seed=sum(shape))
    new = _same(ql, x, CFGS[0])
    n_in, _, _, _, k, _, _ = shape
    assert new.desc.n_in == n_in * k * k
    # the reshape: patch channel j holds weight (c, ky, kx) = patch_order[j]
    order = layout.patch_order(n_in, k)
    assert torch.equal(new.w.reshape(new.desc.n_out, -1), ql.w.reshape(ql.desc.n_out, -1)[:, order])


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.name)
@pytest.mark.parametrize("shape, ksize, n_approx", [
    (SHAPES[0], [5, 5, 5, 5, 3, 1], 3),      # LeNet-5's compressed conv1: a mixed tile
    (SHAPES[1], [3, 3, 3, 1, 1], 0),
    (SHAPES[3], [5, 5, 5, 5, 3, 3, 3], 2),
    (SHAPES[0], [3, 3, 3, 3, 1, 1], 1)])     # no filter uses the outer ring: 9 channels
def test_slim_im2col_reads_the_centre_channels(cfg, shape, ksize, n_approx):
    ql, x = _conv(*shape, seed=len(ksize))
    ql = _slim(dataclasses.replace(ql, desc=ql.desc.with_(n_out=len(ksize)),
                                   w=ql.w[:len(ksize)], b=ql.b[:len(ksize)]),
               ksize, n_approx, seed=3)
    ql.weight_format.validate(ql, 16, 48)
    new = _same(ql, x, cfg)
    n_in = shape[0]
    assert new.desc.n_in == n_in * max(ksize) ** 2
    passes = new.weight_format.check(new, cfg)
    kernel = [p for p in passes if p.reads != "kept"]
    # one 1x1 pass per run of tiles with the same largest kernel, over its centre channels
    tiles = [max(ksize[t:t + cfg.tn]) for t in range(0, len(ksize), cfg.tn)]
    runs = [k for i, k in enumerate(tiles) if i == 0 or tiles[i - 1] != k]
    assert [p.desc.layer.n_in for p in kernel] == [n_in * k * k for k in runs]
    assert [p.name for p in kernel] == [f"conv1.im2col{k}" for k in runs]
    assert len(passes) == len(kernel) + (1 if n_approx else 0)


def test_slim_im2col_refuses_weights_past_a_filters_centre():
    ql, _ = _conv(*SHAPES[0], seed=1)
    ql = _slim(ql, [5, 5, 5, 5, 3, 1], 0, seed=1)
    new = ql.weight_format.im2col(ql)
    new.w[5, 1] = 1          # filter 5 (1x1) reads only patch channel 0
    with pytest.raises(ValueError, match="filter 5 of the im2col layer reads patch channels "
                                         "past its 1x1 centre"):
        new.weight_format.validate(new, 16, 48)


def test_formats_without_im2col_say_so():
    ql, _ = _conv(1, 4, 8, 8, 3, 1, 0, seed=2)
    ikr = dataclasses.replace(ql, format="ikr", compressed=IkrWeights(
        torch.tensor([[0, 4, 8]]), torch.zeros(4, 1, dtype=torch.int64)))
    assert ikr.weight_format.im2col(ikr) is None
    fc = QLayer("fc", LayerDesc("fc", 8, 3), torch.zeros(3, 8, dtype=torch.int64),
                torch.zeros(3, dtype=torch.int64))
    pool = QLayer("pool", LayerDesc("maxpool", 2, 2, 4, 4, k=2, stride=2))
    assert fc.weight_format.im2col(fc) is None and pool.weight_format.im2col(pool) is None
