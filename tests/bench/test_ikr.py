"""The IKR benchmark's rows and tables on a stand-in network and random data (no RTL)."""

import functools
import json
import re

import pytest
import torch
from torch import nn

from slimnfu.bench import ikr as bench_ikr
from slimnfu.bench.common import kept_rows
from slimnfu.compress import data, ikr, train

ROW_KEYS = {"network", "dataset", "method", "budget_pct", "acc_float_base", "acc_float",
            "acc_int", "macs_dense", "macs", "conv_macs_dense", "conv_macs", "params_dense",
            "params", "bits_dense", "bits", "rtl_cycles_dense", "rtl_cycles"}


def test_rows_cover_ikr_and_both_baselines(monkeypatch):
    _stand_in(monkeypatch)
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
    images = torch.rand(100, 1, 12, 12)
    monkeypatch.setattr(data, "load", lambda dataset, split, root=None: (images, images[:, 0, 0]))
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ValueError, match=r"--val 80 and --calib 30 must be >= 1 and share the "
                                         r"100 images of the calib split"):
        bench_ikr.run(["lenet5"], [1.0], val_n=80, calib_n=30)


def _stand_in(monkeypatch):
    """A small conv network on random 12x12 images in place of a trained one and its data; a
    few batches of fine-tuning after the search and in the baselines (300 by default)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 10)).eval()
    images = torch.rand(80, 1, 12, 12)
    labels = torch.randint(0, 10, (80,))
    monkeypatch.setattr(train, "train", lambda name, **kw: (model, {"train_s": 1.0}))
    monkeypatch.setattr(data, "load", lambda dataset, split, root=None: (images, labels))
    monkeypatch.setattr(ikr, "IkrOptions", functools.partial(ikr.IkrOptions, final_batches=2))
    return model


def test_resume_runs_only_the_rows_an_earlier_run_did_not_write(monkeypatch, tmp_path,
                                                                    capsys):
    """An interrupted run's report keeps every finished row; ``--resume`` reuses them (same
    settings, same base network) and runs the rest; another base network runs them again."""
    from slimnfu import cli

    _stand_in(monkeypatch)
    out = tmp_path / "ikr.json"
    argv = ["bench", "ikr", "--networks", "lenet5", "--budgets", "100", "200", "--val", "20",
            "--calib", "10", "--patterns", "4", "--finetune-batches", "2", "--no-cosim",
            "--no-area", "--out", str(out)]
    pruned, real_prune = [], ikr.ikr_prune

    def counting_prune(model, xs, ys, xv, yv, budget, *a, **k):
        pruned.append(budget)
        return real_prune(model, xs, ys, xv, yv, budget, *a, **k)

    monkeypatch.setattr(ikr, "ikr_prune", counting_prune)
    assert cli.main(argv) == 0
    full = json.loads(out.read_text())
    assert [(r["budget_pct"], r["method"]) for r in full["rows"]] == [
        (b, m) for b in (100.0, 200.0) for m in ("ikr", "unstructured", "filter")]
    assert pruned == [100.0, 200.0]
    # interrupted after the second budget's IKR row: the report as written then
    out.write_text(json.dumps({**full, "rows": full["rows"][:4]}))
    pruned.clear()
    assert cli.main(argv + ["--resume"]) == 0
    again = json.loads(out.read_text())
    assert pruned == [] and again["rows"][:4] == full["rows"][:4]
    assert [(r["budget_pct"], r["method"]) for r in again["rows"]] == \
        [(r["budget_pct"], r["method"]) for r in full["rows"]]
    # the rows of another base network are not reused
    key = full["rows"][0]["model_key"]
    out.write_text(json.dumps({**full, "rows": [{**r, "model_key": "x"} for r in full["rows"]]}))
    assert cli.main(argv + ["--resume"]) == 0
    assert pruned == [100.0, 200.0]
    assert {r["model_key"] for r in json.loads(out.read_text())["rows"]} == {key}
    # other settings are refused before anything runs
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained before checking"))
    capsys.readouterr()
    assert cli.main([a if a != "4" else "8" for a in argv] + ["--resume"]) == 2
    assert re.search(r"--resume: \S*ikr.json was written with other settings: patterns 4 "
                     r"\(now 8\); resume with the same ones or write to another --out",
                     capsys.readouterr().err)


def test_share_reaches_the_search_and_the_report(monkeypatch, tmp_path, capsys):
    """``--share 2`` prunes with one pattern per input channel and pair of output channels,
    records it in the settings and the row; ``--share 0`` is refused before anything runs."""
    from slimnfu import cli

    _stand_in(monkeypatch)
    out = tmp_path / "ikr.json"
    argv = ["bench", "ikr", "--networks", "lenet5", "--budgets", "100", "--val", "20",
            "--calib", "10", "--patterns", "4", "--finetune-batches", "2", "--no-cosim",
            "--no-area", "--out", str(out)]
    assert cli.main(argv + ["--share", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["share"] == 2 and report["rows"][0]["share"] == 2
    assert "share" not in bench_ikr.settings(1, 1, 4, 2, False)
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained before checking"))
    capsys.readouterr()
    assert cli.main(argv + ["--share", "0"]) == 2
    assert "--share must be >= 1 (1: a pattern per kernel), not 0" in capsys.readouterr().err
    assert cli.main(argv + ["--share", "2", "--lanes"]) == 2
    assert "--lanes needs --share a multiple of tiny's tn = 4 (the lane unit fetches one tap " \
           "per input lane for the tile's 4 output channels), not 2" in capsys.readouterr().err
    assert bench_ikr.settings(1, 1, 4, 2, False, 4, True)["lanes"] is True


def test_resume_refuses_a_report_of_another_benchmark(tmp_path):
    path = tmp_path / "slim.json"
    path.write_text(json.dumps({"benchmark": "slim", "rows": []}))
    with pytest.raises(ValueError, match=r"--resume: .*slim.json is not a bench-ikr report"):
        kept_rows(path, "ikr", bench_ikr.settings(1, 1, 4, 2, False))
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"--resume: .*slim.json is not a bench-ikr report"):
        kept_rows(path, "ikr", bench_ikr.settings(1, 1, 4, 2, False))
    assert kept_rows(tmp_path / "none.json", "ikr", bench_ikr.settings(1, 1, 4, 2, False)) == {}
