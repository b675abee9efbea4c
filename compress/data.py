"""MNIST and Fashion-MNIST, read from their original IDX ``.gz`` files.

The data folder comes from the ``root`` argument, else the ``SLIMNFU_DATA`` environment
variable; it holds one sub-folder per dataset (``mnist/``, ``fashion-mnist/``) with the four
standard files. :func:`fetch` downloads them from the usual public mirrors, :func:`verify`
checks their md5s against the values torchvision lists, and :func:`load` decodes them.

Splits
------
``"train"``
    The first 55000 training images (what the networks are trained on).
``"calib"``
    The last 5000 training images, held out of training, for calibrating quantisation.
``"trainval"``
    All 60000 training images.
``"test"``
    The 10000 test images.
"""

import functools
import gzip
import hashlib
import os
import pathlib
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import torch

from slimnfu.atomic import process_alive

__all__ = ["DATASETS", "SPLITS", "ENV_VAR", "data_root", "dataset_dir", "verify", "fetch",
           "load", "md5_of", "data_md5s"]

#: Environment variable naming the data folder.
ENV_VAR = "SLIMNFU_DATA"

#: Images per split: ``(file role, first index, stop index)``.
SPLITS = {
    "train": ("train", 0, 55000),
    "calib": ("train", 55000, 60000),
    "trainval": ("train", 0, 60000),
    "test": ("test", 0, 10000),
}

_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

#: The file names of each role, the sample counts and the classes, which both data sets share.
_MNIST_LAYOUT = {
    "roles": {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    },
    "counts": {"train": 60000, "test": 10000},
    "classes": 10,
}

#: Known datasets: sub-folder, files with their md5s (as torchvision lists them), the file of
#: each role, the sample counts, and the mirrors tried in order by :func:`fetch`.
DATASETS = {
    "mnist": {
        "folder": "mnist",
        "files": _MNIST_FILES,
        **_MNIST_LAYOUT,
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
    },
    "fashion-mnist": {
        "folder": "fashion-mnist",
        "files": _FASHION_FILES,
        **_MNIST_LAYOUT,
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ],
    },
}

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_SIDE = 28


def _dataset(dataset):
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: "
                         f"{', '.join(DATASETS)}") from None


def data_root(root=None):
    """Return the data folder: ``root`` if given, else ``$SLIMNFU_DATA``.

    Raises
    ------
    FileNotFoundError
        If neither is set, or the folder does not exist.
    """
    if root is None:
        root = os.environ.get(ENV_VAR)
        if not root:
            raise FileNotFoundError(
                f"no data folder: pass --root DIR (root=...) or set {ENV_VAR} to the folder that "
                f"holds {', '.join(d['folder'] + '/' for d in DATASETS.values())} "
                f"(e.g. ../shared/data; `make` sets it when that folder exists)")
        source = f"{ENV_VAR}={root!r}"
    else:
        source = f"root {str(root)!r}"
    path = pathlib.Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} ({source}) does not exist")
    return path


def dataset_dir(dataset, root=None):
    """Return the folder that holds ``dataset``'s files (it may not exist yet)."""
    return data_root(root) / _dataset(dataset)["folder"]


@functools.lru_cache(maxsize=64)
def _md5_cached(path, mtime_ns, size):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_of(path):
    """The md5 hex digest of a file (cached while its size and mtime do not change)."""
    st = os.stat(path)
    return _md5_cached(str(path), st.st_mtime_ns, st.st_size)


def data_md5s(dataset):
    """The expected md5 of every file of ``dataset``, ``{file name: md5}``."""
    return dict(_dataset(dataset)["files"])


def verify(dataset, root=None):
    """Check the md5 of every file of ``dataset``.

    Returns
    -------
    pathlib.Path
        The dataset folder.

    Raises
    ------
    FileNotFoundError
        A file is missing (the message names every expected file, the folder and the md5s).
    ValueError
        A file's md5 is wrong (the message names the file, the folder and both md5s).
    """
    info = _dataset(dataset)
    folder = dataset_dir(dataset, root)
    missing = [name for name in info["files"] if not (folder / name).is_file()]
    if missing:
        listing = ", ".join(f"{name} (md5 {info['files'][name]})" for name in missing)
        raise FileNotFoundError(
            f"{dataset}: missing {listing} in folder {folder}; expected the files "
            f"{', '.join(info['files'])} (run `slimnfu data fetch --dataset {dataset} "
            f"--root {folder.parent}`)")
    for name, md5 in info["files"].items():
        got = md5_of(folder / name)
        if got != md5:
            raise ValueError(f"{dataset}: file {name} in folder {folder} is corrupt: md5 {got}, "
                             f"expected md5 {md5} (delete it and run `slimnfu data fetch`)")
    return folder


def _download(url, dest, md5, progress, deadline):
    """Download ``url`` to ``dest`` atomically, by ``deadline`` (a ``time.monotonic()``
    value); return None on success, else the reason. The partial file is always removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".part",
                               dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the fetch's deadline passed before this download")
            with urllib.request.urlopen(url, timeout=min(30.0, left)) as resp:
                total = resp.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                bar = None
                if progress:
                    from tqdm import tqdm
                    bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                               leave=False)
                try:
                    # read1 returns after one receive, so a server that trickles bytes
                    # cannot hold the download past the deadline
                    for chunk in iter(lambda: resp.read1(1 << 16), b""):
                        out.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                        if time.monotonic() > deadline:
                            raise TimeoutError("not complete by the fetch's deadline")
                finally:
                    if bar is not None:
                        bar.close()
        got = md5_of(tmp)
        if got != md5:
            return f"md5 {got}, expected {md5}"
        os.replace(tmp, dest)
        tmp = None
        return None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_parts(folder):
    """Remove ``.NAME.PID.*.part`` files of fetches whose process is gone."""
    for part in folder.glob(".*.part"):
        pid = part.name.split(".")[-3] if part.name.count(".") >= 4 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            part.unlink(missing_ok=True)


def fetch(dataset, root, mirrors=None, progress=True, deadline_s=900.0):
    """Download the four files of ``dataset`` into ``root/<folder>``, checking their md5s.

    Files already present with the right md5 are skipped. Each file is written to a temporary
    sibling and renamed into place only when its md5 matches.

    Parameters
    ----------
    dataset : str
        ``"mnist"`` or ``"fashion-mnist"``.
    root : str or path-like or None
        The data folder (created if needed); None means ``$SLIMNFU_DATA``.
    mirrors : list of str, optional
        Base URLs tried in order (default: ``DATASETS[dataset]["mirrors"]``).
    progress : bool
        Show tqdm progress bars.
    deadline_s : float
        Seconds the whole fetch may take; a download still running then is abandoned and its
        partial file removed (a server that sends a byte now and then cannot hold it).

    Returns
    -------
    dict
        ``{file name: "present" | "downloaded from <url>"}``.
    """
    info = _dataset(dataset)
    if root is None:
        root = data_root(None)
    mirrors = list(info["mirrors"] if mirrors is None else mirrors)
    if not mirrors:
        raise ValueError("fetch needs at least one mirror URL")
    if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or \
            not 0 < deadline_s < 86400:
        raise ValueError(f"deadline_s must be a number of seconds in (0, 86400), not "
                         f"{deadline_s!r}")
    root = pathlib.Path(root).expanduser()
    for path in (root, *root.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"data root {root}: {path} is a file, not a folder")
            break
    deadline = time.monotonic() + deadline_s
    folder = root / info["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(folder)
    report = {}
    for name, md5 in info["files"].items():
        dest = folder / name
        if dest.is_file() and md5_of(dest) == md5:
            report[name] = "present"
            continue
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            reason = _download(url, dest, md5, progress, deadline)
            if reason is None:
                report[name] = f"downloaded from {url}"
                break
            failures.append(f"{url}: {reason}")
        else:
            raise FileNotFoundError(f"{dataset}: could not fetch {name} (md5 {md5}) into folder "
                                    f"{folder}; tried " + "; ".join(failures))
    return report


def _read_idx(path, magic, ndim):
    """Decode one IDX ``.gz`` file to a read-only uint8 array, checking its header."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"IDX file {path}: not a readable gzip file ({exc})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path}: header is {len(raw)} bytes, expected {header}")
    got_magic = int.from_bytes(raw[0:4], "big")
    if got_magic != magic:
        raise ValueError(f"IDX file {path}: field magic is {got_magic}, expected {magic} "
                         f"(uint8, {ndim} dimension{'s' if ndim > 1 else ''})")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    for i, name in enumerate(("rows", "cols"), start=1):
        if ndim > i and dims[i] != _SIDE:
            raise ValueError(f"IDX file {path}: field {name} is {dims[i]}, expected {_SIDE}")
    need = int(np.prod(dims))
    if len(raw) - header != need:
        raise ValueError(f"IDX file {path}: field count is {dims[0]}, so the data should be "
                         f"{need} bytes, but it is {len(raw) - header} bytes")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=8)
def _decoded(folder, dataset, role, stamps):
    info = DATASETS[dataset]
    images_name, labels_name = info["roles"][role]
    folder = pathlib.Path(folder)
    images = _read_idx(folder / images_name, _IMAGES_MAGIC, 3)
    labels = _read_idx(folder / labels_name, _LABELS_MAGIC, 1)
    count = info["counts"][role]
    for name, array in ((images_name, images), (labels_name, labels)):
        if array.shape[0] != count:
            raise ValueError(f"IDX file {folder / name}: field count is {array.shape[0]}, "
                             f"expected {count}")
    if labels.max() >= info["classes"]:
        raise ValueError(f"IDX file {folder / labels_name}: label {labels.max()} is out of "
                         f"range 0..{info['classes'] - 1}")
    return images, labels


def load(dataset, split, root=None):
    """Load one split of a dataset.

    Parameters
    ----------
    dataset : str
        ``"mnist"`` or ``"fashion-mnist"``.
    split : str
        ``"train"``, ``"calib"``, ``"trainval"`` or ``"test"`` (see the module docstring).
    root : str or path-like, optional
        The data folder; default ``$SLIMNFU_DATA``.

    Returns
    -------
    images : torch.Tensor
        float32, shape ``(N, 1, 28, 28)``, ``pixel / 255`` in ``[0, 1]``; a fresh tensor.
    labels : torch.Tensor
        int64, shape ``(N,)``.
    """
    _dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    role, start, stop = SPLITS[split]
    folder = verify(dataset, root)
    names = DATASETS[dataset]["roles"][role]
    stamps = tuple((os.stat(folder / n).st_mtime_ns, os.stat(folder / n).st_size) for n in names)
    images, labels = _decoded(str(folder.resolve()), dataset, role, stamps)
    x = torch.from_numpy(images[start:stop].astype(np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels[start:stop].astype(np.int64))
    return x, y
