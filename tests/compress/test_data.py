"""Tests of slimnfu.compress.data: splits, md5 checks, IDX header checks, fetch over loopback."""

import functools
import gzip
import hashlib
import http.server
import os
import pathlib
import shutil
import threading
import time

import pytest
import torch

from slimnfu.compress import data

REPO = pathlib.Path(__file__).resolve().parents[2]
MNIST_FILES = list(data.DATASETS["mnist"]["files"])


def _real_root():
    root = os.environ.get(data.ENV_VAR) or str(REPO.parent / "shared" / "data")
    if not (pathlib.Path(root) / "mnist").is_dir():
        pytest.skip(f"no datasets: {data.ENV_VAR} is unset and {root}/mnist does not exist")
    return pathlib.Path(root)


@pytest.fixture(scope="module")
def real_root():
    return _real_root()


def _copy_mnist(src_root, dest_root):
    (dest_root / "mnist").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(src_root / "mnist" / name, dest_root / "mnist" / name)
    return dest_root / "mnist"


def test_splits(real_root):
    sizes = {"train": 55000, "calib": 5000, "trainval": 60000, "test": 10000}
    trainval_images, trainval_labels = data.load("mnist", "trainval", real_root)
    for split, n in sizes.items():
        images, labels = data.load("mnist", split, real_root)
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0
        assert set(labels.unique().tolist()) == set(range(10))
    calib_images, calib_labels = data.load("mnist", "calib", real_root)
    assert torch.equal(calib_images, trainval_images[55000:])
    assert torch.equal(calib_labels, trainval_labels[55000:])
    # pixel / 255 exactly, and the first MNIST training label is the well-known 5
    assert torch.equal(trainval_images * 255, torch.round(trainval_images * 255))
    assert trainval_labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_load_returns_fresh_tensors(real_root):
    images, _ = data.load("mnist", "test", real_root)
    images.zero_()
    again, _ = data.load("mnist", "test", real_root)
    assert float(again.max()) == 1.0


def test_env_var_is_the_default_root(real_root, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(real_root))
    assert data.data_root() == real_root
    monkeypatch.delenv(data.ENV_VAR)
    with pytest.raises(FileNotFoundError, match=f"set {data.ENV_VAR}"):
        data.data_root()


def test_missing_folder_and_unknown_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.data_root(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; known datasets: mnist"):
        data.load("cifar10", "train", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'valid'; known splits: train, calib"):
        data.load("mnist", "valid", tmp_path)


def test_missing_file_message(real_root, tmp_path):
    folder = _copy_mnist(real_root, tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        data.load("mnist", "test", tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz (md5 ec29112dd5afa0611ce80d1b7f02629c)" in message
    assert str(folder) in message
    assert "train-images-idx3-ubyte.gz" in message  # lists every expected file


def test_empty_folder_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.verify("fashion-mnist", tmp_path)
    for name in data.DATASETS["fashion-mnist"]["files"]:
        assert name in str(info.value)
    assert str(tmp_path / "fashion-mnist") in str(info.value)


def test_corrupt_file_message(real_root, tmp_path):
    folder = _copy_mnist(real_root, tmp_path)
    path = folder / "train-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as info:
        data.verify("mnist", tmp_path)
    message = str(info.value)
    assert "train-labels-idx1-ubyte.gz" in message and str(folder) in message
    assert "expected md5 d53e105ee54ea40749a09fcbcd1e9432" in message
    assert hashlib.md5(raw).hexdigest() in message


def _write_idx(path, header_words, body):
    raw = b"".join(w.to_bytes(4, "big") for w in header_words) + body
    path.write_bytes(gzip.compress(raw))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("header, body, field", [
    ((2049, 2, 28, 28), bytes(2 * 784), "field magic is 2049, expected 2051"),
    ((2051, 2, 27, 28), bytes(2 * 27 * 28), "field rows is 27, expected 28"),
    ((2051, 3, 28, 28), bytes(2 * 784), "field count is 3"),
    ((2051, 2, 28, 28), bytes(2 * 784), "field count is 2, expected 60000"),
])
def test_bad_idx_header(real_root, tmp_path, monkeypatch, header, body, field):
    folder = _copy_mnist(real_root, tmp_path)
    name = "train-images-idx3-ubyte.gz"
    md5 = _write_idx(folder / name, header, body)
    # pretend the crafted file is the released one, so the header check is what fails
    monkeypatch.setitem(data.DATASETS["mnist"]["files"], name, md5)
    with pytest.raises(ValueError) as info:
        data.load("mnist", "train", tmp_path)
    assert f"IDX file {folder / name}" in str(info.value)
    assert field in str(info.value)


@pytest.fixture
def loopback_server(real_root, tmp_path):
    """An http.server on 127.0.0.1 (ephemeral port) serving copies of the MNIST files."""
    served = tmp_path / "served"
    _copy_mnist(real_root, served)
    (served / "bad").mkdir()
    for name in MNIST_FILES:
        (served / "bad" / name).write_bytes(b"not the file you are looking for")
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; under ``/slow/`` it promises a megabyte and trickles one byte every
    0.2 s (for at most 10 s), like a server that keeps a connection alive forever."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/slow/"):
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(50):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


def test_fetch_over_loopback(loopback_server, tmp_path):
    root = tmp_path / "fetched"
    mirrors = [loopback_server + "missing/", loopback_server + "bad/", loopback_server + "mnist/"]
    report = data.fetch("mnist", root, mirrors=mirrors, progress=False)
    assert report == {name: f"downloaded from {loopback_server}mnist/{name}"
                      for name in MNIST_FILES}
    assert data.verify("mnist", root) == root / "mnist"
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(MNIST_FILES)
    # a second fetch skips the correct files; a corrupt one is fetched again
    (root / "mnist" / MNIST_FILES[1]).write_bytes(b"truncated")
    report = data.fetch("mnist", root, mirrors=[loopback_server + "mnist/"], progress=True)
    assert report[MNIST_FILES[0]] == "present"
    assert report[MNIST_FILES[1]].startswith("downloaded from")
    data.verify("mnist", root)


def test_fetch_failure_leaves_nothing(loopback_server, tmp_path):
    root = tmp_path / "fetched"
    with pytest.raises(FileNotFoundError) as info:
        data.fetch("mnist", root, mirrors=[loopback_server + "bad/",
                                           loopback_server + "missing/"], progress=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz (md5 f68b3c2dcbeaaa9fbdd348bbdeb94873)" in message
    assert "expected f68b3c2dcbeaaa9fbdd348bbdeb94873" in message  # the bad mirror's md5
    assert "HTTPError" in message  # the missing mirror's 404
    assert list((root / "mnist").iterdir()) == []


def test_cli_data(loopback_server, real_root, tmp_path, capsys):
    from slimnfu.cli import main

    root = tmp_path / "cli"
    assert main(["data", "fetch", "--root", str(root), "--dataset", "mnist", "--no-progress",
                 "--mirror", loopback_server + "mnist/"]) == 0
    assert main(["data", "verify", "--root", str(root), "--dataset", "mnist"]) == 0
    assert "mnist: all 4 files OK" in capsys.readouterr().out
    assert main(["data", "verify", "--root", str(root), "--dataset", "fashion-mnist"]) == 2
    assert "slimnfu data: error: fashion-mnist: missing" in capsys.readouterr().err


def test_fetch_has_a_total_deadline(loopback_server, tmp_path):
    """A server sending a byte now and then cannot keep a fetch alive: the deadline ends it,
    and no partial file is left (issue 14, case 6)."""
    root = tmp_path / "fetched"
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="TimeoutError: not complete by the fetch's "
                                                "deadline"):
        data.fetch("mnist", root, mirrors=[loopback_server + "slow/"], progress=False,
                   deadline_s=1.5)
    assert time.monotonic() - t0 < 5
    assert list((root / "mnist").iterdir()) == []


def test_fetch_refuses_a_root_that_is_a_file_and_removes_stale_parts(loopback_server,
                                                                     tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile is a file, not a folder"):
        data.fetch("mnist", tmp_path / "afile", mirrors=[loopback_server + "mnist/"])
    with pytest.raises(ValueError, match=r"deadline_s must be a number of seconds"):
        data.fetch("mnist", tmp_path / "r", mirrors=[loopback_server + "mnist/"],
                   deadline_s=1e23)
    folder = tmp_path / "r" / "mnist"
    folder.mkdir(parents=True)
    stale = folder / f".{MNIST_FILES[0]}.999999999.abc.part"
    stale.write_bytes(b"partial")
    data.fetch("mnist", tmp_path / "r", mirrors=[loopback_server + "mnist/"], progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_FILES)
