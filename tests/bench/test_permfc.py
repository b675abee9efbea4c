"""The permuted-FC benchmark's area step, without running Yosys."""

from slimnfu.bench import permfc
from slimnfu.gen import synth


def test_area_step_builds_every_block(monkeypatch):
    """Each block is built from a perm-enabled config; a stub stands in for synthesis."""
    calls = []
    monkeypatch.setattr(synth, "synth_verilog",
                        lambda vfile, top, workdir, **kw: calls.append(top) or {"luts": 1})
    monkeypatch.setattr(synth, "feature_area", lambda cfg, feature, name: {"feature": feature})
    out = permfc._synth(progress=False)
    assert calls == ["perm_addr_gen"]
    assert out["perm_addr_gen"] == {"luts": 1}
    assert out["engine"] == {"feature": "perm"}


def test_perm_weight_bits_is_what_accounting_counts():
    """The baselines' budget equals the grouped layer's stored bits less its biases."""
    import torch
    from torch import nn

    from slimnfu.compress import permfc as pf
    from slimnfu.formats import accounting

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(40, 12), nn.ReLU(), nn.Linear(12, 3))
    for family in ("affine", "quadratic"):
        model = pf.compress_model(base, "affine", layers=[0], groups=3, family=family)
        q = pf.quantize_perm_model(model, torch.rand(10, 40))
        st = accounting.layer_stats(q.layers[0], 16, 48)
        assert st["bits"] - 12 * 48 == permfc.perm_weight_bits(12, 40, 3, family, 16)


def test_pareto_table_and_plot(tmp_path):
    rows = [{"network": "lenet300", "method": "dense", "groups": None, "family": None,
             "epochs": 20, "acc_float": 98.3, "acc_int": 98.25, "bits": 100, "fc_bits": 4000,
             "fc_bits_dense": 4000, "bits_dense": 100}]
    for method, acc in (("perm_affine", 97.5), ("hashed", 97.0)):
        for bits in (200, 400):
            rows.append({**rows[0], "method": method, "groups": [1, 2], "family": "affine",
                         "epochs": 5, "acc_float": acc, "acc_int": acc, "fc_bits": bits})
    table = permfc.pareto_table(rows)
    assert "| lenet300 | perm_affine | 1,2 | affine | 5 | 97.50 | 97.50 | 200 | 20.00 |" in table
    png = tmp_path / "p.png"
    permfc.pareto_plot(rows, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sweep_defaults_are_onecycle_with_distillation():
    """The sweep trains every method with one Adam over a one-cycle schedule peaking at 3e-3
    and distillation weight 0.7 from the dense head, from the command line and from the
    function alike."""
    import argparse
    import inspect

    parser = argparse.ArgumentParser()
    permfc.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.schedule, args.distill, args.lr) == ("onecycle", 0.7, 3e-3)
    sig = inspect.signature(permfc.pareto_sweep).parameters
    assert (sig["schedule"].default, sig["distill"].default, sig["lr"].default) == \
        ("onecycle", 0.7, 3e-3)


def test_sweep_refuses_bad_distill_before_loading_anything():
    import pytest

    with pytest.raises(ValueError, match=r"--distill must be in \[0, 1\], not -0.1"):
        permfc.pareto_sweep(["lenet300"], distill=-0.1)
    with pytest.raises(ValueError, match=r"schedule must be one of"):
        permfc.pareto_sweep(["lenet300"], schedule="step")
