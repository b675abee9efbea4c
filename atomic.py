"""Atomic file writes: a file is either complete or absent, never half-written."""

import json
import os
from pathlib import Path

__all__ = ["atomic_write", "write_json"]


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
