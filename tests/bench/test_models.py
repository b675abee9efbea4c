"""The models benchmark's rows and table, on a stand-in network and random data (no training)."""

import json
from types import SimpleNamespace

import torch
from torch import nn

from slimnfu.bench import models as bench_models
from slimnfu.compress import data, train

ROW_KEYS = {"network", "dataset", "method", "budget_pct", "acc_float_base", "acc_float",
            "acc_int", "macs_dense", "macs", "conv_macs_dense", "conv_macs", "params_dense",
            "params", "bits_dense", "bits", "rtl_cycles_dense", "rtl_cycles", "dw", "train_s",
            "sat_events", "analytic_cycles_tiny", "analytic_cycles_small",
            "analytic_cycles_diannao"}


def test_rows_and_table(monkeypatch, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 12 * 12, 10)).eval()
    images = torch.rand(40, 1, 28, 28)
    labels = torch.randint(0, 10, (40,))
    monkeypatch.setattr(train, "train", lambda name, **kw: (model, {"train_s": 1.5,
                                                                    "cache_hit": True}))
    monkeypatch.setattr(data, "load", lambda dataset, split, root=None: (images, labels))
    args = SimpleNamespace(networks=["lenet5"], dws=[16, 8], calib=20, test_limit=None,
                           subset=None, threads=1, no_progress=True,
                           out=str(tmp_path / "models.json"))
    assert bench_models.main(args) == 0
    rows = json.loads((tmp_path / "models.json").read_text())["rows"]
    assert [(r["network"], r["dw"]) for r in rows] == [("lenet5", 16), ("lenet5", 8)]
    r = rows[0]
    assert ROW_KEYS <= set(r) and r["method"] == "dense" and r["rtl_cycles"] is None
    assert r["conv_macs"] == 4 * 24 * 24 * 25 and r["macs"] == r["conv_macs"] + 5760
    assert r["params"] == 4 * 25 + 4 + 5760 + 10
    assert r["bits"] == (4 * 25 + 5760) * 16 + 14 * 48
    with torch.no_grad():
        float_acc = 100.0 * float((model(images).argmax(1) == labels).double().mean())
    assert abs(r["acc_float"] - float_acc) < 1e-6
    # tiny (4x4): conv 24*24*1*1*25 + pool 12*12*1*4 + fc 1*3*... via dense_cycles
    assert r["analytic_cycles_tiny"] == 24 * 24 * 25 + 12 * 12 * 4 + 144 * 3
    table = bench_models.markdown_table(rows)
    assert table.count("\n") == 3 and "| lenet5 | mnist | 8 |" in table


def test_slim_bench_treatments_match_the_compressor():
    from slimnfu.bench import slim as bench_slim
    from slimnfu.compress import slim

    assert bench_slim.TREATMENTS == slim.TREATMENTS
