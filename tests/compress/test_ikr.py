"""IKR pruning: library, assignment, masks, bad input, save/load, accounting."""

import io

import pytest
import torch
from torch import nn

from slimnfu.compress import ikr
from slimnfu.compress.accounting import layer_stats
from slimnfu.compress.quant import QLayer
from slimnfu.config import LayerDesc


def test_library_and_assignment_by_hand():
    w = torch.zeros(3, 1, 3, 3)
    w[0, 0, 0, 0], w[0, 0, 1, 1] = 5, 4      # taps {0, 4}
    w[1, 0, 0, 0], w[1, 0, 1, 1] = -3, 2     # taps {0, 4}
    w[2, 0, 2, 2], w[2, 0, 0, 1] = 7, 1      # taps {1, 8}
    lib = ikr.learn_library(w, 2, patterns=1)
    assert lib.tolist() == [[0, 4]]
    lib = ikr.learn_library(w, 2, patterns=16)
    assert lib.tolist() == [[0, 4], [1, 8]]
    assert ikr.assign_patterns(w, lib).view(-1).tolist() == [0, 0, 1]
    mask = ikr.pattern_mask(lib, ikr.assign_patterns(w, lib), 3)
    assert mask.sum().item() == 6 and mask[2, 0, 2, 2] == 1


@pytest.mark.parametrize("k,n,lib,index,msg", [
    (3, 10, [[0]], [[0]], "n=10 must be in \\[1, K\\*K=9\\]"),
    (3, 2, [[0, 1], [2]], [[0]], "pattern 1 has 1 distinct taps, but n=2"),
    (3, 2, [[0, 1], [2, 2]], [[0]], "pattern 1 has 1 distinct taps"),
    (3, 2, [[0, 1]], [[1]], "pattern index 1 is outside the table of 1 patterns"),
    (3, 2, [[0, 9]], [[0]], "pattern 0 has a tap outside \\[0, 9\\)"),
])
def test_bad_input_names_layer_and_field(k, n, lib, index, msg):
    lib = torch.tensor(lib) if len({len(r) for r in lib}) == 1 else lib
    with pytest.raises(ValueError, match="layer conv7: " + msg):
        ikr.check_ikr("conv7", k, n, lib, index)


def test_layer_desc_refuses_n_above_kk():
    with pytest.raises(ValueError, match="ikr_n=10 > k\\*k=9"):
        LayerDesc("conv", 2, 2, 5, 5, 3, ikr_n=10)


def test_apply_save_load_and_finetune_keep_patterns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    ikr.apply_ikr(model[0], 3, patterns=4, name="conv1")
    w = model[0].weight.reshape(4, 2, 9)
    assert ((w != 0).sum(-1) <= 3).all()
    assert model[0].ikr_patterns.shape == (model[0].ikr_patterns.shape[0], 3)
    x, y = torch.randn(64, 2, 6, 6), torch.randint(3, (64,))
    ikr.finetune(model, x, y, batches=5, batch_size=16)
    mask = ikr.pattern_mask(model[0].ikr_patterns, model[0].ikr_index, 3)
    assert (model[0].weight[mask == 0] == 0).all()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    ikr.load_ikr_state(fresh, torch.load(buf))
    assert torch.equal(fresh[0].ikr_index, model[0].ikr_index)
    assert torch.equal(fresh(x), model(x))


def test_accounting_counts_values_index_and_table():
    desc = LayerDesc("conv", 3, 5, 8, 8, 3, ikr_n=4)
    lib = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [1, 3, 5, 7]])
    idx = torch.randint(3, (5, 3))
    w = torch.zeros(5, 3, 9, dtype=torch.int64)
    w.scatter_(2, lib[idx], 7)
    q = QLayer("conv1", desc, w.view(5, 3, 3, 3), torch.zeros(5, dtype=torch.int64),
               format="ikr", extra={"ikr_patterns": lib, "ikr_index": idx})
    s = layer_stats(q, 16, 48)
    # values 15*4*16, index 15*2 bits (P=3), table 3*4*4 bits (K*K=9 taps), bias 5*48
    assert s["bits"] == 15 * 4 * 16 + 15 * 2 + 12 * 4 + 5 * 48
    assert s["macs"] == 6 * 6 * 5 * 3 * 4 and s["macs_dense"] == 6 * 6 * 5 * 3 * 9
    assert s["params"] == 15 * 4 + 5
    assert ikr.ikr_values(q).unique().tolist() == [7]
