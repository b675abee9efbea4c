"""The IKR benchmark's rows and tables on a stand-in network and random data (no RTL)."""

import functools

import torch
from torch import nn

from slimnfu.bench import ikr as bench_ikr
from slimnfu.compress import data, ikr, train

ROW_KEYS = {"network", "dataset", "method", "budget_pct", "acc_float_base", "acc_float",
            "acc_int", "macs_dense", "macs", "conv_macs_dense", "conv_macs", "params_dense",
            "params", "bits_dense", "bits", "rtl_cycles_dense", "rtl_cycles"}


def test_rows_cover_ikr_and_both_baselines(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 10)).eval()
    images = torch.rand(80, 1, 12, 12)
    labels = torch.randint(0, 10, (80,))
    monkeypatch.setattr(train, "train", lambda name, **kw: (model, {"train_s": 1.0}))
    monkeypatch.setattr(data, "load", lambda dataset, split, root=None: (images, labels))
    # a few batches of fine-tuning after the search and in the baselines (300 by default)
    monkeypatch.setattr(ikr, "IkrOptions", functools.partial(ikr.IkrOptions, final_batches=2))
    rows = bench_ikr.run(["lenet5"], [100.0, 200.0], val_n=20, calib_n=10, patterns=4, ft=2,
                         cosim=False, log=lambda *a: None)
    assert [(r["method"], r["budget_pct"]) for r in rows] == [
        ("ikr", 100.0), ("unstructured", 100.0), ("filter", 100.0),
        ("ikr", 200.0), ("unstructured", 200.0), ("filter", 200.0)]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["conv_macs"] <= r["conv_macs_dense"] and r["bits"] <= r["bits_dense"]
    ikr_row = rows[0]
    # a budget of 100 points accepts every step: n = 1 tap per 3x3 kernel
    assert ikr_row["conv_macs"] * 9 == ikr_row["conv_macs_dense"]
    assert rows[1]["amount"] == bench_ikr.AMOUNTS[-1]
    table = bench_ikr.markdown_tables(rows)
    assert "| lenet5 | 100.0 | ikr |" in table and "| 9.00 |" in table


def test_validation_and_calibration_must_share_the_calib_split(monkeypatch):
    import pytest

    images = torch.rand(100, 1, 12, 12)
    monkeypatch.setattr(data, "load", lambda dataset, split, root=None: (images, images[:, 0, 0]))
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ValueError, match=r"--val 80 and --calib 30 must be >= 1 and share the "
                                         r"100 images of the calib split"):
        bench_ikr.run(["lenet5"], [1.0], val_n=80, calib_n=30)
