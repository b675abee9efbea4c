"""Atomic writes: a file or a folder is either complete or absent, never half-written."""

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "write_json", "write_folder"]


def atomic_write(path, data):
    """Write ``data`` (str or bytes) to ``path`` through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically (non-JSON values as ``str``)."""
    return atomic_write(path, json.dumps(obj, indent=1, default=str) + "\n")


def write_folder(out_dir, files, marker, kind):
    """Write ``files`` (``{name: str or bytes}``) as the folder ``out_dir``, atomically.

    The folder is built in a hidden temporary sibling and renamed into place. An existing
    ``out_dir`` is replaced only if it holds ``marker`` (a file only a folder of this ``kind``
    has); anything else there is refused with a ``ValueError``, before anything is written.
    Returns ``out_dir`` as a :class:`~pathlib.Path`.
    """
    out = Path(out_dir)
    if out.exists() and not (out / marker).is_file():
        raise ValueError(f"{out} exists and is not a {kind}; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, data in files.items():
            _write_file(tmp / name, data)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_file(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def _move_into_place(tmp, out):
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "image")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "image", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
