"""Where slimnfu writes: one build root and one cache root, read when a function is called.

``build_root()``
    ``$SLIMNFU_BUILD``, else ``build/`` under the current directory. Everything a command
    produces goes below it: ``verilog/``, ``cosim/``, ``synth/``, ``board/``, ``bench/``,
    ``demo/``, ``images/``, ``rtl/``, ``fuzz/`` (fuzz case files), ``divergence/`` (a network
    run's first-divergence reproducers).
``cache_root()``
    ``$SLIMNFU_CACHE``, else ``cache/`` in the build root. What is slow to make again and
    valid wherever it is used: trained checkpoints (``models/``) and compressed networks
    (``network/``). Point several build folders at one cache to share them.

Functions that write take the folder as an argument (``build_root=None`` or ``cache_dir=None``)
and ask these functions only when it is None, at call time, never at import time, so a test
or a caller that changes the environment or the working directory is followed. The datasets
are read from ``$SLIMNFU_DATA`` (:mod:`slimnfu.compress.data`), not from here.
"""

import os
from pathlib import Path

__all__ = ["BUILD_ENV_VAR", "CACHE_ENV_VAR", "build_root", "cache_root", "models_dir",
           "networks_dir"]

#: Environment variable naming the build root.
BUILD_ENV_VAR = "SLIMNFU_BUILD"

#: Environment variable naming the cache root.
CACHE_ENV_VAR = "SLIMNFU_CACHE"


def build_root(root=None):
    """``root`` if given, else ``$SLIMNFU_BUILD``, else ``build/`` in the current directory.

    Parameters
    ----------
    root : str or path-like, optional
        An explicit build root; returned as an absolute :class:`~pathlib.Path`.

    Returns
    -------
    pathlib.Path
        An absolute path (it need not exist yet).
    """
    if root is None:
        root = os.environ.get(BUILD_ENV_VAR) or Path.cwd() / "build"
    return Path(root).absolute()


def cache_root(root=None):
    """``root`` if given, else ``$SLIMNFU_CACHE``, else ``cache/`` in :func:`build_root`.

    Returns
    -------
    pathlib.Path
        An absolute path (it need not exist yet).
    """
    if root is None:
        root = os.environ.get(CACHE_ENV_VAR) or build_root() / "cache"
    return Path(root).absolute()


def models_dir(cache=None):
    """The checkpoint folder: ``models/`` in the cache root ``cache`` (default
    :func:`cache_root`)."""
    return cache_root(cache) / "models"


def networks_dir(cache=None):
    """The compressed-network folder: ``network/`` in the cache root ``cache`` (default
    :func:`cache_root`)."""
    return cache_root(cache) / "network"
