"""The build and cache roots: read from the environment when asked, never at import time."""

from pathlib import Path

from slimnfu import paths


def test_roots_follow_the_environment_and_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.BUILD_ENV_VAR, raising=False)
    monkeypatch.delenv(paths.CACHE_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.build_root() == tmp_path / "build"
    assert paths.cache_root() == tmp_path / "build" / "cache"
    assert paths.models_dir() == tmp_path / "build" / "cache" / "models"
    assert paths.networks_dir() == tmp_path / "build" / "cache" / "network"
    monkeypatch.setenv(paths.BUILD_ENV_VAR, "out")
    assert paths.build_root() == tmp_path / "out"
    assert paths.cache_root() == tmp_path / "out" / "cache"
    monkeypatch.setenv(paths.CACHE_ENV_VAR, str(tmp_path / "shared"))
    assert paths.cache_root() == tmp_path / "shared"
    assert paths.build_root("elsewhere") == tmp_path / "elsewhere"
    assert paths.models_dir(tmp_path / "c") == tmp_path / "c" / "models"


def test_the_session_builds_outside_the_repository(build_root):
    repo = Path(paths.__file__).resolve().parent
    assert paths.build_root() == build_root
    assert repo not in paths.build_root().parents


def test_default_folders_are_read_when_called(tmp_path, monkeypatch):
    from slimnfu.config import get_config
    from slimnfu.gen.verilog import emit_engine
    from slimnfu.sim.runner import cosim_root

    monkeypatch.setenv(paths.BUILD_ENV_VAR, str(tmp_path))
    info = emit_engine(get_config("tiny"))
    assert info["path"] == tmp_path / "verilog" / "tiny" / "slimnfu_engine.v"
    assert cosim_root() == tmp_path / "cosim"
