"""The perm formats' re-laid input (an FC layer over a conv output in the buffer's order)."""

import pytest
import torch

from slimnfu.compress import permfc
from slimnfu.config import CONFIGS, LayerDesc, PassDesc
from slimnfu.formats import layout, perm
from slimnfu.formats.qmodel import QLayer

CFG = CONFIGS["tiny"].with_(perm={"depth": 64})


def test_relayout_takes_only_affine_rows_in_a_buffer_order():
    """perm_affine re-lays affine rows over exactly a conv output's buffer order (recording
    it); quadratic rows are refused, another column order is not taken."""
    n, m = 24, 9
    a, b, e = permfc.random_generated_params(m, n, "quadratic", 6)
    s = torch.arange(n)
    rec = perm.PermAffineWeights(s, a, b, e)
    ql = QLayer("fc1", LayerDesc("fc", n, m, shift=0), s[rec.indices(n)], torch.zeros(m,
                dtype=torch.int64), 0, 0, 0, None, format="perm_affine", compressed=rec)
    src = layout.buffer_order(6, 4, 1, 4)
    assert bool(e.any())
    with pytest.raises(ValueError, match="quadratic family .* cannot be walked in the neuron "
                                         "buffer's order"):
        ql.weight_format.relayout_input(ql, src)
    affine = perm.PermAffineWeights(s, a, b)
    qa = QLayer("fc1", ql.desc, s[affine.indices(n)], ql.b, 0, 0, 0, None,
                format="perm_affine", compressed=affine)
    assert qa.weight_format.relayout_input(qa, src.flip(0)) is None     # not a buffer order
    assert qa.weight_format.relayout_input(qa, src).compressed.order == (6, 4, 4)
    with pytest.raises(ValueError, match=r"flatten=\(3, 4\) reads ceil\(3/tn\)\*tn\*4 = 16 "
                                         r"buffer values on config 'tiny' \(tn=4\), not n_in=12"):
        PassDesc(LayerDesc("fc", 12, 5), perm="affine", flatten=(3, 4)).check(CFG)
    with pytest.raises(ValueError, match="flatten applies to perm='affine'"):
        PassDesc(LayerDesc("fc", 16, 5), perm="index", flatten=(3, 4))
