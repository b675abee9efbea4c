"""``slimnfu bench slim`` refuses bad options before any training."""

import re

import pytest
import torch

from slimnfu.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--calib", "0"], r"--calib must be in \[1, 5000\] \(the calib split's size\), not 0"),
    (["--calib", "6000"], r"--calib must be in \[1, 5000\]"),
    (["--finetune", "-1"], r"--finetune must be in \[0, 55000\]"),
    (["--budgets", "0.5", "101"], r"--budgets must be in \[0, 100\] points, not 101.0"),
    (["--lanes", "0"], r"--lanes must be >= 1 \(1: off\), not 0"),
])
def test_bad_option(argv, message, capsys, tmp_path):
    out = tmp_path / "slim.json"
    assert main(["bench", "slim", "--out", str(out), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_layer_rows_sum_each_layers_passes():
    from slimnfu.bench.slim import layer_rows, markdown

    dense = {"by_case": {"dense_conv1": 1000, "dense_conv2": 4000}}
    slim = {"by_case": {"slim_conv1_pass0_k5": 300, "slim_conv1_pass1_k1": 100,
                        "slim_conv2_pass0_k3_mixed": 1500, "slim_conv2_approx1x1": 500,
                        "slim_conv10_pass0_k1": 7}}
    macs = [{"macs_dense": 100, "macs": 25}, {"macs_dense": 400, "macs": 200}]
    rows = layer_rows(["conv1", "conv2"], dense, slim, macs)
    assert [(r["layer"], r["rtl_cycles"], r["rtl_cycles_ideal"]) for r in rows] == [
        ("conv1", 400, 250), ("conv2", 2000, 2000)]
    assert [r["speedup_over_ideal"] for r in rows] == [0.625, 1.0]
    row = {"network": "lenet5", "budget_pct": 1.0, "method": "slim_both", "acc_float": 99.0,
           "acc_float_base": 99.2, "acc_int": 99.0, "conv_macs": 225, "conv_macs_dense": 500,
           "rtl_cycles": None, "rtl_layers": rows}
    table = markdown([row])
    assert "| lenet5 | 1.0 | both | conv1 | 75.0% | 400 | 1,000 | 250 | 2.50 | 0.62 |" in table
    assert "| conv2 | 50.0% | 2,000 | 4,000 | 2,000 | 2.00 | 1.00 |" in table


def test_layer_rows_refuse_a_layer_count_mismatch():
    from slimnfu.bench.slim import layer_rows

    with pytest.raises(ValueError):
        layer_rows(["conv1"], {"by_case": {"dense_conv1": 1}}, {"by_case": {}}, [])


def test_resume_runs_only_the_rows_an_earlier_run_did_not_write(monkeypatch, tmp_path, capsys):
    """An interrupted run's report keeps every finished row; ``--resume`` reuses them (same
    settings, same base network) and runs the rest; other settings are refused before any
    training. A stand-in network and the greedy step counted, no RTL."""
    import json

    from torch import nn

    from slimnfu.compress import data, slim, train

    images, labels = torch.rand(600, 1, 28, 28), torch.randint(0, 10, (600,))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 10)).eval()
    monkeypatch.setattr(train, "train", lambda name, **kw: (model, {"train_s": 1.0}))
    monkeypatch.setattr(data, "load", lambda dataset, split, root=None: (images, labels))
    greedy, real_greedy = [], slim.greedy

    def counting_greedy(sm, cx, cy, budget, *a, **k):
        greedy.append(budget)
        return real_greedy(sm, cx, cy, budget, *a, **k)

    monkeypatch.setattr(slim, "greedy", counting_greedy)
    out = tmp_path / "slim.json"
    argv = ["bench", "slim", "--networks", "lenet5", "--treatments", "lower", "--budgets", "99",
            "100", "--calib", "100", "--finetune", "0", "--no-cosim", "--no-area", "--out",
            str(out)]
    assert main(argv) == 0
    full = json.loads(out.read_text())
    assert [r["budget_pct"] for r in full["rows"]] == [99.0, 100.0] and greedy == [99.0, 100.0]
    out.write_text(json.dumps({**full, "rows": full["rows"][:1]}))
    greedy.clear()
    assert main(argv + ["--resume"]) == 0
    again = json.loads(out.read_text())
    assert greedy == [100.0] and again["rows"][0] == full["rows"][0]
    assert [r["budget_pct"] for r in again["rows"]] == [99.0, 100.0]
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained before checking"))
    capsys.readouterr()
    argv[argv.index("--calib") + 1] = "50"
    assert main(argv + ["--resume"]) == 2
    assert re.search(r"--resume: \S*slim.json was written with other settings: calib 100 "
                     r"\(now 50\)", capsys.readouterr().err)
