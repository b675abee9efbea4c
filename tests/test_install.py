"""A non-editable install works from another folder and writes nothing beside its package.

A copy of the source (pip would write ``build/`` and ``*.egg-info`` into the tree it builds
from) is installed with ``pip install --no-deps`` into a fresh venv that sees the project
venv's packages through a path file (so nothing is downloaded, and the project's editable
install is not loaded there). Its ``slimnfu`` script then runs ``--help`` and a short
co-simulation on Verilator from an empty working folder, with ``SLIMNFU_BUILD`` elsewhere.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import slimnfu

REPO = Path(slimnfu.__file__).resolve().parent


def _files(folder):
    return {p.relative_to(folder) for p in folder.rglob("*")
            if "__pycache__" not in p.parts}


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.skipif(not (REPO / "pyproject.toml").is_file(),
                    reason="slimnfu is not imported from its source tree")
def test_non_editable_install_runs_from_another_folder(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "__pycache__", "*.egg-info", "tests", ".pytest_cache",
        "sim_build"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; "
                      "print(sysconfig.get_paths()['purelib'])"], tmp_path, None).strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "slimnfu_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    packages = {p.parent.relative_to(src) for p in src.rglob("__init__.py")}
    modules = {p.relative_to(src) for p in src.rglob("*.py")}
    repo_before = set(os.listdir(REPO))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-build-isolation", "--no-index", "-q", str(src)], tmp_path, None)

    installed = site / "slimnfu"
    assert packages <= {p.parent.relative_to(installed) for p in installed.rglob("__init__.py")}
    assert modules <= _files(installed), sorted(map(str, modules - _files(installed)))
    for name in ("paths.py", "flows.py", "bench/common.py", "sim/fast_harness.cpp"):
        assert (installed / name).is_file(), name
    before = _files(installed)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLIMNFU_BUILD",
                                                            "SLIMNFU_CACHE")}
    env["SLIMNFU_BUILD"] = str(tmp_path / "out")
    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(python), "-c", "import slimnfu; print(slimnfu.__file__)"], work, env)
    assert Path(where.strip()).parent == installed
    assert "cosim" in _run([str(venv / "bin" / "slimnfu"), "--help"], work, env)
    out = _run([str(venv / "bin" / "slimnfu"), "cosim", "--quick", "--sim", "verilator"], work,
               env)
    assert "6/6 passed" in out, out
    assert (tmp_path / "out" / "cosim" / "results.json").is_file()
    assert not any(work.iterdir())
    assert _files(installed) == before
    assert set(os.listdir(REPO)) == repo_before
