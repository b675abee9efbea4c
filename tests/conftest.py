"""Shared fixtures: a build and cache root of the session's own, and a small quantised network
that exercises every kind of layer move."""

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session", autouse=True)
def build_root(tmp_path_factory):
    """``SLIMNFU_BUILD`` and ``SLIMNFU_CACHE`` point into a temporary folder for the whole
    session, set before any test runs, so no test writes into the repository's ``build/``.

    No test reads a trained checkpoint or a compressed network from the cache: the tests that
    train use a few hundred images into their own folders, so an empty cache costs nothing."""
    from slimnfu import paths

    root = tmp_path_factory.mktemp("build")
    patch = pytest.MonkeyPatch()
    patch.setenv(paths.BUILD_ENV_VAR, str(root))
    patch.setenv(paths.CACHE_ENV_VAR, str(root / "cache"))
    yield root
    patch.undo()


@pytest.fixture(scope="session")
def small_qmodel():
    """conv -> relu -> maxpool -> conv(pad) -> avgpool -> flatten -> fc -> sigmoid -> fc, on
    10x10 images, quantised on random calibration images."""
    from slimnfu.compress.quant import quantize_model

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(5 * 2 * 2, 7), nn.Sigmoid(), nn.Linear(7, 3))
    return quantize_model(model, torch.rand(16, 1, 10, 10))


@pytest.fixture(scope="session")
def small_program(small_qmodel):
    """``small_qmodel`` compiled for a ``tiny`` engine with small buffers."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import compile_model, config_for

    cfg = config_for(small_qmodel, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64,
                                                          nbout_depth=256, bias_depth=8))
    return compile_model(small_qmodel, cfg)


@pytest.fixture(scope="session")
def slim_qmodel():
    """The same network with method A on both convs: per-filter kernel sizes (tiles that mix
    sizes and tiles of one size) and linearly approximated features (one filling a tile the
    kept features began)."""
    from slimnfu.compress import slim

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(5 * 2 * 2, 7), nn.Sigmoid(), nn.Linear(7, 3))
    sm = slim.slim_model(model)
    x = torch.rand(64, 1, 10, 10)
    c1, c2 = sm[0], sm[3]
    c1.ksize[:] = torch.tensor([3, 1, 3, 1, 3, 3])
    c1.approx[4] = True
    c2.ksize[:] = torch.tensor([1, 3, 1, 3, 3])
    c2.approx[2:4] = True
    slim.refit_linear(c1, slim._input_of(sm, 0, x))
    slim.refit_linear(c2, slim._input_of(sm, 3, x))
    return slim.quantize_slim(sm, x)


@pytest.fixture(scope="session")
def mixed_qmodel(small_qmodel, slim_qmodel):
    """Every format in one network: slim conv1 (method A), IKR conv2 (method B, its weights
    masked to random patterns), perm_affine fc1 (method C, its weights gathered from a common
    sequence) and a dense fc2. Accuracy is not the point; bit-exactness is."""
    import dataclasses

    from slimnfu.compress import permfc
    from slimnfu.compress.ikr import pattern_mask
    from slimnfu.formats.ikr import IkrWeights
    from slimnfu.formats.perm import PermAffineWeights, affine_perms

    layers = list(small_qmodel.layers)
    layers[0] = slim_qmodel.layers[0]
    conv2 = layers[2]
    gen = torch.Generator().manual_seed(7)
    k, n = conv2.desc.k, 4
    patterns = torch.stack([torch.randperm(k * k, generator=gen)[:n].sort().values
                            for _ in range(5)])
    index = torch.randint(5, tuple(conv2.w.shape[:2]), generator=gen)
    mask = pattern_mask(patterns, index, k).to(torch.int64)
    layers[2] = dataclasses.replace(conv2, w=conv2.w * mask, format="ikr",
                                    compressed=IkrWeights(patterns, index))
    fc1 = layers[4]
    m_out, n_in = fc1.w.shape
    a, b = permfc.random_affine_params(m_out, n_in, seed=3)
    s = fc1.w.flatten()[:n_in].clone()
    w = s[affine_perms(a, b, n_in)]
    layers[4] = dataclasses.replace(
        fc1, w=w, format="perm_affine", compressed=PermAffineWeights(s, a, b))
    return dataclasses.replace(small_qmodel, layers=layers)


@pytest.fixture(scope="session")
def mixed_lanes_qmodel(small_qmodel, mixed_qmodel):
    """``mixed_qmodel`` with conv2's kernels sharing a pattern per input channel and output
    tile of ``tiny``'s 4 lanes: what the lane IKR unit (``ikr.lanes``) runs."""
    import dataclasses

    from slimnfu.compress.ikr import pattern_mask
    from slimnfu.formats.ikr import IkrWeights

    conv2, dense = mixed_qmodel.layers[2], small_qmodel.layers[2]
    patterns, index = conv2.compressed.patterns, conv2.compressed.index
    index = index[torch.arange(index.shape[0]) // 4 * 4]
    mask = pattern_mask(patterns, index, conv2.desc.k).to(torch.int64)
    layers = list(mixed_qmodel.layers)
    layers[2] = dataclasses.replace(conv2, w=dense.w * mask,
                                    compressed=IkrWeights(patterns, index))
    return dataclasses.replace(mixed_qmodel, layers=layers)


@pytest.fixture(scope="session")
def mixed_index_qmodel(mixed_qmodel):
    """``mixed_qmodel`` with fc1 in ``perm_index`` (random permutations of one sequence): an
    FC layer whose columns the compiler re-lays into the conv output's buffer order, padding
    included (pool2 gives 5 channels, ``tiny`` tiles them by 4)."""
    import dataclasses

    from slimnfu.formats.perm import PermIndexWeights

    fc1 = mixed_qmodel.layers[4]
    m_out, n_in = fc1.w.shape
    gen = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(n_in, generator=gen) for _ in range(m_out)])
    s = fc1.compressed.s
    layers = list(mixed_qmodel.layers)
    layers[4] = dataclasses.replace(fc1, w=s[idx], format="perm_index",
                                    compressed=PermIndexWeights(s, idx))
    return dataclasses.replace(mixed_qmodel, layers=layers)
