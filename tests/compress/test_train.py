"""Tests of slimnfu.compress.train: reproducibility, the checkpoint cache, evaluation, errors."""

import json
import os
import pathlib
import re

import pytest
import torch
from torch import nn

from slimnfu.compress import data, train as train_mod
from slimnfu.compress.train import evaluate, train

REPO = pathlib.Path(__file__).resolve().parents[2]
FAST = dict(epochs=1, subset=512, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def root():
    root = os.environ.get(data.ENV_VAR) or str(REPO.parent / "shared" / "data")
    if not (pathlib.Path(root) / "mnist").is_dir():
        pytest.skip(f"no datasets: {data.ENV_VAR} is unset and {root}/mnist does not exist")
    return root


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reproducible_and_cached(root, tmp_path):
    rng_before = torch.random.get_rng_state()
    model_a, info_a = train("lenet300", seed=3, cache_dir=tmp_path / "a", root=root, **FAST)
    model_b, info_b = train("lenet300", seed=3, cache_dir=tmp_path / "b", root=root, **FAST)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    assert not info_a["cache_hit"] and not info_b["cache_hit"]
    assert info_a["key"] == info_b["key"]
    assert _same_weights(model_a, model_b)
    for key in ("key", "cache_hit", "train_s", "epochs", "lr", "batch_size", "seed", "acc_test",
                "dataset"):
        assert key in info_a
    assert info_a["dataset"] == "mnist" and info_a["epochs"] == 1 and info_a["seed"] == 3
    assert info_a["batch_size"] == 64 and info_a["lr"] == 1e-3
    assert 30.0 < info_a["acc_test"] <= 100.0  # 8 steps on 512 images already beat chance

    model_c, info_c = train("lenet300", seed=3, cache_dir=tmp_path / "a", root=root, **FAST)
    assert info_c["cache_hit"] and info_c["key"] == info_a["key"]
    assert info_c["acc_test"] == info_a["acc_test"]
    assert _same_weights(model_a, model_c)
    assert not model_c.training
    assert evaluate(model_c, *data.load("mnist", "test", root)) == info_a["acc_test"]

    model_d, info_d = train("lenet300", seed=4, cache_dir=tmp_path / "a", root=root, **FAST)
    assert not info_d["cache_hit"] and info_d["key"] != info_a["key"]
    assert not _same_weights(model_a, model_d)
    # two checkpoints and their content hashes, no temp files left
    assert sorted(p.suffix for p in (tmp_path / "a").iterdir()) == [".pt", ".pt", ".sha256",
                                                                     ".sha256"]


def test_key_covers_hyperparameters():
    base = train_mod.hyperparameters("lenet5", seed=0)
    keys = {train_mod.cache_key(base)}
    for change in (dict(epochs=3), dict(lr=0.01), dict(batch_size=32), dict(seed=1),
                   dict(subset=100)):
        keys.add(train_mod.cache_key(train_mod.hyperparameters("lenet5", **change)))
    keys.add(train_mod.cache_key(train_mod.hyperparameters("lenet300")))
    assert len(keys) == 7


def test_cache_dir_from_env(root, tmp_path, monkeypatch):
    monkeypatch.setenv(train_mod.CACHE_ENV_VAR, str(tmp_path / "env"))
    _, info = train("lenet300", subset=64, epochs=1, batch_size=64, progress=False, root=root)
    assert pathlib.Path(info["path"]).parent == tmp_path / "env" / "models"
    monkeypatch.delenv(train_mod.CACHE_ENV_VAR)
    monkeypatch.setenv("SLIMNFU_BUILD", str(tmp_path / "b"))
    _, info = train("lenet300", subset=64, epochs=1, batch_size=64, progress=False, root=root)
    assert pathlib.Path(info["path"]).parent == tmp_path / "b" / "cache" / "models"


def test_corrupt_checkpoint(root, tmp_path):
    """One flipped bit in a cached checkpoint is refused, naming the file (issue 14, case 1:
    it used to give 63% accuracy with exit 0)."""
    kw = dict(cache_dir=tmp_path, root=root, subset=64, epochs=1, batch_size=64,
              progress=False)
    _, info = train("lenet300", **kw)
    path = pathlib.Path(info["path"])
    data_bytes = bytearray(path.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0x10
    path.write_bytes(bytes(data_bytes))
    with pytest.raises(ValueError, match=f"{path}: its content does not match its sha256 "
                                         f"\\(changed or corrupted\\); delete it to retrain"):
        train("lenet300", **kw)
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(ValueError, match=f"{path}: no content hash beside it"):
        train("lenet300", **kw)


def test_evaluate():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert evaluate(model, images.view(4, 1, 2, 2), labels, batch_size=3) == 75.0
    with pytest.raises(ValueError, match="differ in count: 4 != 3"):
        evaluate(model, images, labels[:3])


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(name="alexnet"), ValueError, "unknown network 'alexnet'; known networks: lenet300"),
    (dict(name="lenet5", epochs=0), ValueError, "epochs must be in \\[1, 1000\\], not 0"),
    (dict(name="lenet5", epochs=1.5), TypeError, "epochs must be an integer"),
    (dict(name="lenet5", lr=-1.0), ValueError, "lr must be in \\(0, 10\\], not -1.0"),
    (dict(name="lenet5", batch_size=0), ValueError, "batch_size must be"),
    (dict(name="lenet5", subset=60000), ValueError, "subset must be in \\[1, 55000\\]"),
    (dict(name="lenet5", seed=-1), ValueError, "seed must be in"),
])
def test_bad_arguments_fail_fast(tmp_path, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        train(cache_dir=tmp_path, progress=False, root=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_missing_data_fails_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing .*train-images-idx3-ubyte.gz"):
        train("lenet5", cache_dir=tmp_path / "cache", root=tmp_path, progress=False)


def test_cli_train_and_eval(root, tmp_path, capsys):
    from slimnfu.cli import main

    args = ["lenet300", "--epochs", "1", "--subset", "256", "--batch-size", "64",
            "--cache-dir", str(tmp_path / "cache"), "--root", root, "--no-progress"]
    assert main(["train", *args, "--json", str(tmp_path / "train.json")]) == 0
    info = json.loads((tmp_path / "train.json").read_text())
    assert info["cache_hit"] is False and info["dataset"] == "mnist"
    assert main(["eval", *args, "--split", "calib", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["cache_hit"] is True and result["split"] == "calib"
    assert "lenet300 on mnist calib (5000 images): accuracy" in capsys.readouterr().out
    assert main(["eval", *args, "--split", "valid"]) == 2
    assert "slimnfu eval: error: unknown split 'valid'" in capsys.readouterr().err
    # eval from a cache without the checkpoint says where it looked instead of training
    # for minutes (issue 14, case 10)
    other = ["lenet300", "--epochs", "1", "--subset", "256", "--batch-size", "64",
             "--cache-dir", str(tmp_path / "elsewhere"), "--root", root, "--no-progress"]
    assert main(["eval", *other]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint of lenet300 with these options in {tmp_path / 'elsewhere'}" in err
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())
    assert main(["train", "lenet7", "--root", root]) == 2
    assert "unknown network 'lenet7'" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_set_threads_refuses_bad_counts(threads):
    with pytest.raises(ValueError, match=rf"--threads must be an integer >= 1, not "
                                         rf"{re.escape(repr(threads))}"):
        train_mod.set_threads(threads)
