"""Atomic writes: a file or a folder is either complete or absent, never half-written."""

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "write_json", "write_folder", "check_folder_target",
           "check_file_target", "parse_json", "OWNER_MARK", "write_hashed", "read_hashed", "process_alive"]


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


def _hash_file(path):
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_hashed(path, data):
    """Write ``data`` (bytes) to ``path`` atomically, then its sha256 to ``path.sha256`` (so
    the hash exists only beside a complete file). For caches: :func:`read_hashed` checks it."""
    atomic_write(path, data)
    atomic_write(_hash_file(path), hashlib.sha256(data).hexdigest() + "\n")
    return path


def read_hashed(path, rebuild):
    """The bytes of a cache file written by :func:`write_hashed`, checked against the sha256
    beside it; ``ValueError`` naming the file and saying ``rebuild`` (how to make it again)
    when the hash is missing or differs."""
    path = Path(path)
    data = path.read_bytes()
    try:
        want = _hash_file(path).read_text().strip()
    except OSError:
        raise ValueError(f"{path}: no content hash beside it ({_hash_file(path).name}; written "
                         f"by an older slimnfu, or cut short); {rebuild}") from None
    if hashlib.sha256(data).hexdigest() != want:
        raise ValueError(f"{path}: its content does not match its sha256 (changed or "
                         f"corrupted); {rebuild}")
    return data


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically (non-JSON values as ``str``)."""
    return atomic_write(path, json.dumps(obj, indent=1, default=str) + "\n")


#: The file a folder written by :func:`write_folder` carries: ``{"kind", "files"}``.
OWNER_MARK = ".slimnfu-folder.json"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _owned_by_slimnfu(out, kind, legacy=None):
    """True when ``out`` is a folder :func:`write_folder` wrote as ``kind`` and holds nothing
    else (so replacing it loses nothing anyone else wrote). ``legacy`` ``(manifest, schema)``
    also recognises a folder written before :data:`OWNER_MARK` existed: its manifest has that
    schema and every other file is named in it."""
    names = {p.name for p in out.iterdir()}
    try:
        if (out / OWNER_MARK).is_file():
            mark = json.loads((out / OWNER_MARK).read_text())
            return mark["kind"] == kind and names <= set(mark["files"]) | {OWNER_MARK}
        if legacy is not None:
            manifest, schema = legacy
            m = json.loads((out / manifest).read_text())
            return m.get("schema") == schema and names <= set(_strings(m)) | {manifest}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    return False


def parse_json(text, where, what):
    """``json.loads(text)``, or one ``ValueError`` starting with ``where`` that says why it is
    not JSON (the parser's message) or is nested too deeply to be a ``what``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to be a {what}") from None


def check_file_target(out, what="report JSON"):
    """Raise ``ValueError`` naming ``--out`` unless ``out`` can be written as a file: not a
    folder, and no file in the place of a folder above it. Commands call it before any long
    step."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name for the {what}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a folder")
            break
    return out


def check_folder_target(out_dir, kind, force=False, legacy=None):
    """Raise ``ValueError`` naming the path unless ``out_dir`` can be written as a ``kind``
    folder: it is absent, an empty folder, or a ``kind`` folder slimnfu wrote (with nothing
    added; ``legacy`` as in :func:`_owned_by_slimnfu`); ``force`` allows replacing any folder.
    A parent that is a file is refused too."""
    out = Path(out_dir)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{out}: {parent} is a file, not a folder")
            break
    if not out.exists() and not out.is_symlink():
        return out
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; refusing to replace it")
    if force or not any(out.iterdir()) or _owned_by_slimnfu(out, kind, legacy):
        return out
    raise ValueError(f"{out} exists and is not a {kind} that slimnfu wrote (or holds other "
                     f"files); refusing to replace it (choose another folder, or --force)")


def write_folder(out_dir, files, kind, force=False, legacy=None):
    """Write ``files`` (``{name: str or bytes}``) as the folder ``out_dir``, atomically.

    The folder is built in a hidden temporary sibling, every file synced, and then swapped
    into place: with an existing folder the two are exchanged in one step
    (``renameat2(RENAME_EXCHANGE)``), so ``out_dir`` always holds either the old folder or the
    new one, complete. What may be replaced is :func:`check_folder_target`'s rule, checked
    before anything is written. The folder gets the usual permissions (umask), and carries
    :data:`OWNER_MARK`. Temporaries a killed run left beside it are removed. Returns
    ``out_dir`` as a :class:`~pathlib.Path`.
    """
    out = check_folder_target(out_dir, kind, force, legacy)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        files = {**files, OWNER_MARK: json.dumps({"kind": kind, "files": sorted(files)}) + "\n"}
        for name, data in files.items():
            _write_file(tmp / name, data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        _fsync_dir(tmp)
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_file(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Swap two paths in one step (Linux ``renameat2``); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp, out):
    """Put folder ``tmp`` at ``out``; what was at ``out`` ends at ``tmp`` (to be removed)."""
    if not out.exists():
        os.replace(tmp, out)
    elif not _exchange(tmp, out):
        # Without an atomic exchange: the old folder moves aside only now that the new one is
        # complete on disk, and comes back if the second rename fails.
        old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        os.replace(old, tmp)
    _fsync_dir(out.parent)


def _remove_stale_temporaries(out):
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` folders of processes that are gone."""
    for path in out.parent.glob(f".{out.name}.[to][ml][pd]-*"):
        pid = path.name[len(out.name) + 6:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def process_alive(pid):
    """True while process ``pid`` exists (a temporary named after it is still in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
