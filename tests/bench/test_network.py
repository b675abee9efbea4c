"""The network bench's per-layer figures and its table, on made-up measurements."""

import pytest

from slimnfu.bench.network import cycle_parts, layer_rows, markdown


def _stats(macs):
    return {"layers": [{"name": n, "macs": m} for n, m in macs]}


DENSE_RUN = [{"layer": "conv1", "format": "dense", "model_layer": "conv1", "cycles": 1000},
             {"layer": "pool1", "format": "dense", "model_layer": "pool1", "cycles": 100},
             {"layer": "fc1", "format": "dense", "model_layer": "fc1", "cycles": 400}]
COMP_RUN = [{"layer": "conv1.k5", "format": "slim", "model_layer": "conv1", "cycles": 300},
            {"layer": "conv1.approx", "format": "slim", "model_layer": "conv1", "cycles": 100},
            {"layer": "pool1", "format": "dense", "model_layer": "pool1", "cycles": 100},
            {"layer": "fc1", "format": "perm_index", "model_layer": "fc1", "cycles": 400}]


def test_layer_rows_speedup_over_ideal_and_utilisation():
    dense = layer_rows(DENSE_RUN, _stats([("conv1", 64000), ("pool1", 0), ("fc1", 12800)]), 64)
    assert [r["nfu_util"] for r in dense] == [1.0, None, 0.5]
    rows = layer_rows(COMP_RUN, _stats([("conv1", 8000), ("pool1", 0), ("fc1", 12800)]), 64,
                      dense)
    conv1, pool1, fc1 = rows
    # conv1: its two passes summed; 8x fewer MACs, 2.5x fewer cycles
    assert (conv1["cycles"], conv1["speedup"], conv1["ideal"]) == (400, 2.5, 8.0)
    assert conv1["speedup_over_ideal"] == 0.312 and conv1["nfu_util"] == 0.3125
    assert (pool1["ideal"], pool1["nfu_util"], fc1["speedup_over_ideal"]) == (1.0, None, 1.0)


def test_cycle_parts_add_up_or_refuse():
    counters = {"cycles": 120, "engine_cycles": 100, "load_cycles": 8, "move_cycles": 0,
                "overlap_load_cycles": 500}
    assert cycle_parts(counters, 6)["control_cycles"] == 12
    with pytest.raises(ValueError, match="do not add up to the 121 cycles"):
        cycle_parts({**counters, "cycles": 121}, 6)


def test_markdown_shows_where_the_cycles_went():
    dense = layer_rows(DENSE_RUN, _stats([("conv1", 64000), ("pool1", 0), ("fc1", 12800)]), 64)
    comp = layer_rows(COMP_RUN, _stats([("conv1", 8000), ("pool1", 0), ("fc1", 12800)]), 64,
                      dense)
    common = {"config": "c", "acc_int": 99.0, "macs_dense": 76800, "bits_dense": 10,
              "bits": 5, "rtl_cycles_dense": 1512, "bit_exact": True}
    parts = {"engine_cycles": 1400, "load_cycles": 4, "move_cycles": 0, "control_cycles": 8,
             "overlap_load_cycles": 300}
    rows = [{**common, "method": "dense", "macs": 76800, "rtl_cycles": 1512,
             "rtl_engine_cycles": 1400, "rtl_cycles_parts": parts, "layers": dense},
            {**common, "method": "compressed", "macs": 20800, "rtl_cycles": 1412,
             "rtl_engine_cycles": 1300, "rtl_cycles_parts": {**parts, "engine_cycles": 1300},
             "layers": comp}]
    text = markdown(rows)
    assert "| compressed | 1,412 | 1,300 | 4 (0.28%) | 0 | 8 | 300 |" in text
    assert "| conv1 | slim | 1,000 | 400 | 2.50 | 8.00 | 0.31 | 100.0% | 31.2% |" in text
    assert "| pool1 | dense | 100 | 100 | 1.00 | 1.00 | 1.00 | - | - |" in text


@pytest.mark.parametrize("argv, message", [
    (["--val", "3001", "--check", "2000"],
     r"^--val 3001 and --check 2000 must be >= 1 and fit side by side in the 5000 images"),
    (["--calib", "2000", "--check", "3001"],
     r"^--val 3000 and --check 3001 must be >= 1 and fit side by side"),
    (["--check", "0"], r"^--val 3000 and --check 0 must be >= 1"),
])
def test_check_args_refuse_splits_that_do_not_fit(argv, message):
    import argparse

    from slimnfu.bench.network import add_arguments, check_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit, match=message):
        check_args(parser.parse_args(argv))
