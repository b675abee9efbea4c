"""A tiny MNIST IDX reader for co-simulation stimulus (the full dataset module lives elsewhere).

The location comes from the ``SLIMNFU_DATA`` environment setting, never a hard-coded path.
"""

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["mnist_images"]

_CACHE = {}


def mnist_images(count=None):
    """The MNIST test images as a ``(N, 28, 28)`` uint8 array (the first ``count`` of them).

    Reads ``$SLIMNFU_DATA/mnist/t10k-images-idx3-ubyte.gz``; raises ``FileNotFoundError``
    naming the setting when it is missing.
    """
    root = os.environ.get("SLIMNFU_DATA")
    if not root:
        raise FileNotFoundError("SLIMNFU_DATA is not set; point it at the folder holding "
                                "mnist/t10k-images-idx3-ubyte.gz")
    path = Path(root) / "mnist" / "t10k-images-idx3-ubyte.gz"
    if path not in _CACHE:
        if not path.is_file():
            raise FileNotFoundError(f"MNIST test images not found at {path} (SLIMNFU_DATA)")
        with gzip.open(path, "rb") as f:
            raw = f.read()
        magic, n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
        if magic != 0x803 or len(raw) != 16 + n * rows * cols:
            raise ValueError(f"{path} is not an IDX3 image file (magic {magic:#x}, "
                             f"{len(raw)} bytes for {n}x{rows}x{cols})")
        _CACHE[path] = np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)
    images = _CACHE[path]
    return images if count is None else images[:count]
