"""The network compiler: what it produces, and each refusal naming the layer."""

import dataclasses

import pytest
import torch

from slimnfu.config import CONFIGS
from slimnfu.gen.compiler import compile_model, config_for


def test_program_moves_and_rom(small_qmodel, small_program):
    moves = [l.move[0] for l in small_program.layers]
    assert moves == ["image", "copy", "copy", "copy", "flatten", "copy"]
    assert small_program.layers[4].move == ("flatten", 5, 2, 2)
    rom_words = sum(n for l in small_program.layers for _, _, n in l.loads)
    assert rom_words == len(small_program.rom) == small_program.stats["rom_words"]
    assert all(w < 1 << small_program.rom_width for w in small_program.rom)


def _cfg(q, **kw):
    return config_for(q, CONFIGS["tiny"].with_(nbin_depth=256, sb_depth=64, nbout_depth=256,
                                                bias_depth=8)).with_(**kw)


def test_refuses_other_widths(small_qmodel):
    with pytest.raises(ValueError, match="dw=8, acc=48, but the model is quantised for dw=16"):
        compile_model(small_qmodel, _cfg(small_qmodel, dw=8))


def test_refuses_layer_too_big(small_qmodel):
    with pytest.raises(ValueError, match="^layer conv1: "):
        compile_model(small_qmodel, _cfg(small_qmodel, nbout_depth=16))


def test_refuses_unknown_format(small_qmodel):
    q = dataclasses.replace(small_qmodel, layers=list(small_qmodel.layers))
    q.layers[3] = dataclasses.replace(q.layers[3], format="csr")
    with pytest.raises(ValueError, match="layer pool2: unknown weight format 'csr'; known "
                                         "formats: dense"):
        compile_model(q, _cfg(small_qmodel))


def test_refuses_method_without_its_hardware(small_qmodel):
    q = dataclasses.replace(small_qmodel, layers=list(small_qmodel.layers))
    q.layers[0] = dataclasses.replace(q.layers[0], format="ikr")
    with pytest.raises(ValueError, match="layer conv1 is IKR, but config 'tiny' has ikr=False"):
        compile_model(q, _cfg(small_qmodel))


def test_refuses_values_outside_their_width(small_qmodel):
    q = dataclasses.replace(small_qmodel, layers=list(small_qmodel.layers))
    b = q.layers[4].b.clone()
    b[0] = 1 << 50
    q.layers[4] = dataclasses.replace(q.layers[4], b=b)
    with pytest.raises(ValueError, match=r"layer fc1: b: holds 1125899906842624, outside 48 "
                                         r"signed bits"):
        compile_model(q, _cfg(small_qmodel))


def test_refuses_broken_chain(small_qmodel):
    q = dataclasses.replace(small_qmodel, layers=list(small_qmodel.layers))
    d, w = q.layers[5].desc, q.layers[5].w
    q.layers[5] = dataclasses.replace(q.layers[5], desc=dataclasses.replace(d, n_in=d.n_in + 1),
                                      w=torch.cat([w, torch.zeros_like(w[:, :1])], 1))
    with pytest.raises(ValueError, match="layer fc2 takes 8x1x1, but fc1 gives 7x1x1"):
        compile_model(q, _cfg(small_qmodel))


def test_rom_image(small_program, tmp_path):
    import json

    from slimnfu.gen.compiler import write_rom_image
    from slimnfu.gen.image import read_hex

    m = write_rom_image(small_program, tmp_path / "rom")
    words = read_hex(tmp_path / "rom" / "rom.hex", m["rom"]["words"], m["rom"]["width"])
    assert [int(w) for w in words] == small_program.rom
    assert json.loads((tmp_path / "rom" / "program.json").read_text())["layers"][4]["move"] == \
        ["flatten", 5, 2, 2]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a ROM image that slimnfu wrote .*refusing to "
                                         "replace it"):
        write_rom_image(small_program, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    write_rom_image(small_program, tmp_path / "rom")   # its own folder: replaced
