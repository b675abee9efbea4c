"""The permuted-FC benchmark's area step, without running Yosys."""

from slimnfu.bench import permfc
from slimnfu.gen import synth


def test_area_step_builds_every_block(monkeypatch):
    """Each block is built from a perm-enabled config; a stub stands in for synthesis."""
    calls = []
    monkeypatch.setattr(synth, "synth_verilog",
                        lambda vfile, top, workdir, **kw: calls.append(top) or {"luts": 1})
    monkeypatch.setattr(synth, "feature_area", lambda cfg, feature, name: {"feature": feature})
    out = permfc._synth(progress=False)
    assert calls == ["perm_addr_gen", "perm_sb"]
    assert out["perm_addr_gen"] == {"luts": 1} and out["perm_sb"] == {"luts": 1}
    assert out["engine"] == {"feature": "perm"}
