"""Two regressions started at the same time on one build root both pass (issue 14, case 3:
they used to share one run folder and clobber each other's jobs and results)."""

import json
import os
import subprocess
import sys


def test_two_regressions_at_once(tmp_path):
    env = {**os.environ, "SLIMNFU_BUILD": str(tmp_path / "build")}
    procs = [subprocess.Popen([sys.executable, "-m", "slimnfu.cli", "cosim", "--quick",
                              "--sim", "verilator", "--config", "tiny",
                              "--out", str(tmp_path / f"results{i}.json")],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
        assert "6/6 passed" in out, out
    runs = [{e["run_dir"] for e in json.loads((tmp_path / f"results{i}.json").read_text())}
            for i in range(2)]
    assert len(runs[0]) == len(runs[1]) == 1 and runs[0] != runs[1]
    # one of them compiled the model, the other waited for it and reused it
    assert sum("compiled in" in out for out in outputs) == 1, outputs
