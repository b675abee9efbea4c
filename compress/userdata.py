"""Data intake for ``slimnfu run``: a built-in data set or a user's, checked before any training.

:func:`load_data` takes one of:

* a built-in name, ``mnist`` or ``fashion-mnist`` (:mod:`slimnfu.compress.data`, read from
  ``$SLIMNFU_DATA``), split as :data:`slimnfu.compress.data.SPLITS` says;
* an ``.npz`` file with ``x``, the images ``(N, C, H, W)`` (``uint8``, read as ``pixel / 255``,
  or floating point, taken as they are), and ``y``, the class labels ``(N,)`` in
  ``0..classes-1``; optionally ``x_test`` and ``y_test``, the test images and labels;
* a folder with one sub-folder of images per class (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``,
  ``.gif``), the classes in the sorted order of the sub-folder names; the images are read as
  ``L`` (one channel) when every image is grey, else as ``RGB``, and must all have one size.

A user's images are split as the built-in ones are, in the same proportions (MNIST's 55,000
train, 5,000 calib and 10,000 test of 70,000): after one seeded shuffle (a folder is read class
by class), the first 11/14 train, the next 1/14 calib, the last 2/14 test; with ``x_test`` the
given test images are the test split and ``x`` is split 11:1 into train and calib. As for the
built-in sets, the calib split's head calibrates quantisation, its tail is the check split of
the compression budget and the images before it its selection split
(:func:`slimnfu.flows.holdout`).

Every problem is one ``ValueError`` (``FileNotFoundError`` for a missing path) naming the file,
the field and the limit: a missing array, a wrong shape or type, non-finite values, a label out
of range, a class with no image (in ``y`` or as an empty folder), an image of another size or
that cannot be read, too few images for a split.
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from slimnfu.compress import data

__all__ = ["DataSet", "load_data", "IMAGE_SUFFIXES", "MIN_PER_SPLIT"]

#: Image file suffixes read from a class folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

#: The fewest images each split may have.
MIN_PER_SPLIT = 2

#: The largest image side and channel count the flow takes (the engine's buffers are sized to
#: the network; larger inputs are almost surely a mistake such as (N, H, W, C) order).
MAX_SIDE = 512
MAX_CHANNELS = 64

#: Train : calib : test, as MNIST's 55,000 : 5,000 : 10,000.
_PARTS = (11, 1, 2)

_SEED = 0


@dataclasses.dataclass
class DataSet:
    """Images and labels of one data set, split.

    Attributes
    ----------
    name : str
        The built-in name, or the file or folder given.
    train, calib, test : tuple of torch.Tensor
        ``(images, labels)``: float32 ``(N, C, H, W)`` and int64 ``(N,)``.
    classes : int
        The number of classes (labels are ``0..classes-1``).
    class_names : list of str
        A name per class (the folder names, or the class numbers).
    """

    name: str
    train: tuple
    calib: tuple
    test: tuple
    classes: int
    class_names: list

    @property
    def input_shape(self):
        """``(C, H, W)`` of one image."""
        return tuple(int(v) for v in self.train[0].shape[1:])

    def summary(self):
        """One line: name, shape, classes and split sizes."""
        c, h, w = self.input_shape
        return (f"{self.name}: {c}x{h}x{w} images, {self.classes} classes, "
                f"{len(self.train[1])} train, {len(self.calib[1])} calib, "
                f"{len(self.test[1])} test")


def load_data(spec, root=None):
    """Load and check the data set ``spec`` (see the module docstring).

    Parameters
    ----------
    spec : str or path-like
        A built-in name, an ``.npz`` file or a folder of class folders.
    root : path-like, optional
        The data folder of the built-in sets (default ``$SLIMNFU_DATA``).

    Returns
    -------
    DataSet
    """
    text = str(spec)
    if text in data.DATASETS:
        splits = {s: data.load(text, s, root) for s in ("train", "calib", "test")}
        classes = data.DATASETS[text]["classes"]
        return DataSet(text, splits["train"], splits["calib"], splits["test"], classes,
                       [str(c) for c in range(classes)])
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"--data {text}: no such file or folder (give "
                                f"{' or '.join(data.DATASETS)}, an .npz file with x and y, or "
                                f"a folder with one folder of images per class)")
    if path.is_dir():
        x, y, names = _read_folder(path)
        return _split(str(path), x, y, None, None, len(names), names)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"--data {path}: a data file must be an .npz with arrays x and y, "
                         f"not a {path.suffix or 'suffix-less'} file")
    return _read_npz(path)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"{path}: no array {key!r} (it has {', '.join(arrays) or 'none'}; "
                             f"x must be the images (N, C, H, W) and y their labels (N,))")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: x_test and y_test go together (it has only "
                         f"{'x_test' if 'x_test' in arrays else 'y_test'})")
    x = _images(arrays["x"], path, "x")
    y = _labels(arrays["y"], path, "y", x.shape[0])
    xt = yt = None
    if "x_test" in arrays:
        xt = _images(arrays["x_test"], path, "x_test")
        if xt.shape[1:] != x.shape[1:]:
            raise ValueError(f"{path}: field x_test has images of shape "
                             f"{tuple(xt.shape[1:])}, x has {tuple(x.shape[1:])}")
        yt = _labels(arrays["y_test"], path, "y_test", xt.shape[0])
    classes = int(y.max()) + 1
    missing = sorted(set(range(classes)) - set(y.tolist()))
    if missing:
        raise ValueError(f"{path}: field y has no image of class {missing[0]} (labels run "
                         f"0..{classes - 1}; every class needs training images)")
    return _split(str(path), x, y, xt, yt, classes, [str(c) for c in range(classes)])


def _images(a, path, field):
    """``a`` as float32 ``(N, C, H, W)``, checked; ``uint8`` scaled by 1/255."""
    if a.ndim != 4:
        hint = " (add the channel axis: x[:, None])" if a.ndim == 3 else ""
        raise ValueError(f"{path}: field {field} has shape {a.shape}; it must be 4-D "
                         f"(N, C, H, W){hint}")
    n, c, h, w = a.shape
    if not 1 <= c <= MAX_CHANNELS or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"{path}: field {field} has shape {a.shape}: C must be in "
                         f"1..{MAX_CHANNELS} and H, W in 1..{MAX_SIDE} (is it (N, H, W, C)? "
                         f"transpose it to (N, C, H, W))")
    if n == 0:
        raise ValueError(f"{path}: field {field} holds no images")
    if a.dtype == np.uint8:
        return torch.from_numpy(a.astype(np.float32) / 255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{path}: field {field} is {a.dtype}; images must be uint8 (0..255) "
                         f"or floating point")
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: field {field} has non-finite values (NaN or inf)")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _labels(a, path, field, n):
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{path}: field {field} has shape {a.shape}; it must be ({n},), one "
                         f"label per image")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{path}: field {field} is {a.dtype}; labels must be integers")
    if int(a.min()) < 0:
        raise ValueError(f"{path}: field {field} has label {int(a.min())}; labels must be "
                         f">= 0")
    return torch.from_numpy(a.astype(np.int64))


def _read_folder(path):
    from PIL import Image, UnidentifiedImageError

    names = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise ValueError(f"{path}: a data folder needs one folder of images per class, at "
                         f"least 2; it has {len(names)}")
    files = []
    for label, name in enumerate(names):
        found = sorted(p for p in (path / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"{path / name}: class {name!r} has no image "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        files += [(f, label) for f in found]
    images, size = [], None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{f}: not a readable image ({exc})") from None
        if size is None:
            size, first = images[-1].size, f
        elif images[-1].size != size:
            raise ValueError(f"{f}: image is {images[-1].size[0]}x{images[-1].size[1]} "
                             f"(width x height), but {first} is {size[0]}x{size[1]}; every "
                             f"image must have one size")
    if max(size) > MAX_SIDE:
        raise ValueError(f"{first}: image is {size[0]}x{size[1]}; sides must be at most "
                         f"{MAX_SIDE}")
    mode = "L" if all(im.mode in ("1", "L", "LA", "I", "I;16") for im in images) else "RGB"
    x = np.stack([np.asarray(im.convert(mode), dtype=np.uint8) for im in images])
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(np.ascontiguousarray(x).astype(np.float32) / 255.0), y, names


def _split(name, x, y, xt, yt, classes, class_names):
    """Shuffle once (seeded) and split as the module docstring says."""
    gen = torch.Generator().manual_seed(_SEED)
    order = torch.randperm(x.shape[0], generator=gen)
    x, y = x[order], y[order]
    n = x.shape[0]
    if xt is None:
        total = sum(_PARTS)
        n_train, n_calib = n * _PARTS[0] // total, n * _PARTS[1] // total
        cuts = (n_train, n_train + n_calib)
        xt, yt = x[cuts[1]:], y[cuts[1]:]
    else:
        n_train = n * _PARTS[0] // (_PARTS[0] + _PARTS[1])
        cuts = (n_train, n)
    parts = {"train": (x[:cuts[0]], y[:cuts[0]]), "calib": (x[cuts[0]:cuts[1]],
                                                             y[cuts[0]:cuts[1]]),
             "test": (xt, yt)}
    for split, (_, labels) in parts.items():
        if len(labels) < MIN_PER_SPLIT:
            need = MIN_PER_SPLIT * sum(_PARTS) // _PARTS[1]
            raise ValueError(f"{name}: {n} images give the {split} split {len(labels)}; each "
                             f"split needs at least {MIN_PER_SPLIT} (give {need} images or "
                             f"more)")
    if int(yt.max()) >= classes:
        raise ValueError(f"{name}: field y_test has label {int(yt.max())}, out of the "
                         f"classes 0..{classes - 1} of y")
    return DataSet(name, parts["train"], parts["calib"], parts["test"], classes,
                   list(class_names))
