"""The intake benchmark's networks: each case's files load, normalise and get the methods that
apply; two cases run the whole ``slimnfu run`` flow bit-exact on Verilator (the others run in
``make bench-intake``)."""

import functools
import os
import pathlib

import pytest

from slimnfu.bench import intake
from slimnfu.compress import data, ikr

#: Per case: the planned method of every conv and FC layer at ``--methods auto``.
PLANS = {
    "lecun": ["slim", "ikr", "perm", "perm", "dense"],
    "batchnorm": ["slim", "ikr", "perm", "dense"],
    "bias_free": ["slim", "ikr", "perm", "dense"],
    "rgb32": ["slim", "ikr", "perm", "dense"],
    "one_conv": ["slim", "dense"],
    "fc_only": ["perm", "dense"],
    "onnx": ["slim", "ikr", "perm", "dense"],
}


def _needs_mnist(case):
    root = pathlib.Path(os.environ.get(data.ENV_VAR) or "/nonexistent")
    if case != "rgb32" and not (root / "mnist").is_dir():
        pytest.skip(f"no datasets: {data.ENV_VAR} does not name a folder with mnist/")


@pytest.mark.parametrize("case", intake.CASES)
def test_case_files_normalise_and_plan(case, tmp_path):
    from torch import nn

    from slimnfu.compress.intake import load_model, normalise
    from slimnfu.compress.pipeline import plan_layers
    from slimnfu.compress.userdata import load_data

    _needs_mnist(case)
    spec, data_spec = intake.write_case(case, tmp_path, images=140)
    ds = load_data(data_spec)
    assert ds.input_shape == ((3, 32, 32) if case == "rgb32" else (1, 28, 28))
    seq, report = normalise(load_model(spec), ds.input_shape)
    assert report.ok, report
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)) for m in seq)
    assert [r["method"] for r in plan_layers(seq, "auto")] == PLANS[case]
    mappings = {r.mapping for r in report.rows}
    assert ("folded" in mappings) == (case in ("batchnorm", "onnx"))
    # the ONNX exporter drops Dropout itself
    assert ("dropped" in mappings) == (case == "batchnorm")


def test_unknown_case(tmp_path):
    with pytest.raises(ValueError, match="unknown case 'vgg'; the cases are lecun, batchnorm"):
        intake.write_case("vgg", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["rgb32", "onnx"])
def test_case_runs_bit_exact_on_the_rtl(case, tmp_path, build_root, monkeypatch):
    """A 3x32x32 network (Verilator and Icarus) and an ONNX file with BatchNorm, Dropout and
    bias-free convs exported here (Verilator), trained, compressed with every method, on the
    RTL; a 100-point budget accepts every step, so every format runs."""
    _needs_mnist(case)
    monkeypatch.setattr(ikr, "IkrOptions", functools.partial(ikr.IkrOptions, final_batches=2))
    row = intake.run_case(case, tmp_path / case, images=2,
                          icarus_images=1 if case == "rgb32" else 0, train_images=300,
                          train_epochs=1, budget=100.0,
                          compress_options={"patterns": 4, "ikr_finetune": 2},
                          log=lambda message: None)
    assert row["bit_exact"] is True and row["images_rtl"] == 2, row
    assert row["icarus_bit_exact"] is (True if case == "rgb32" else None)
    formats = [f for name, f in row["formats"].items() if not name.startswith("pool")]
    assert formats == ["slim", "ikr", "perm_affine", "dense"]
    assert [p["final"] for p in row["plan"]] == ["slim", "ikr", "perm", "dense"]
    assert row["input_shape"] == ([3, 32, 32] if case == "rgb32" else [1, 28, 28])
    assert row["macs"] < row["macs_dense"] and row["bits"] < row["bits_dense"]
    assert row["rtl_cycles"] > 0 and row["sat_events"] is not None
