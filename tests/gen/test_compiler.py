"""The network compiler: what it produces, and each refusal naming the layer."""

import dataclasses

import pytest
import torch

from slimnfu.config import CONFIGS
from slimnfu.gen.compiler import compile_model, config_for


def test_program_moves_and_rom(small_qmodel, small_program):
    # no moves: each layer reads the buffer the previous one wrote
    assert [l.move[0] for l in small_program.layers] == ["image"] + ["none"] * 5
    assert [(l.in_buf, l.out_buf) for l in small_program.layers] == [(0, 1), (1, 0)] * 3
    assert sum(l.move_cycles for l in small_program.layers) == 0
    # fc1 reads pool2's 5x2x2 output in the buffer's order: 2 tiles of tn=4 channels
    fc1 = small_program.layers[4]
    assert fc1.desc.layer.n_in == 2 * 4 * 2 * 2
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
    layer = json.loads((tmp_path / "rom" / "program.json").read_text())["layers"][4]
    assert (layer["move"], layer["in_buf"], layer["out_buf"]) == (["none"], 0, 1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a ROM image that slimnfu wrote .*refusing to "
                                         "replace it"):
        write_rom_image(small_program, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    write_rom_image(small_program, tmp_path / "rom")   # its own folder: replaced


def test_buffer_order():
    from slimnfu.gen.compiler import buffer_order

    # 3 channels of 2 pixels on tn=2: words (tile, pixel) hold channels (0, 1), then (2, pad)
    assert buffer_order(3, 1, 2, 2).tolist() == [0, 2, 1, 3, 4, -1, 5, -1]
    src = buffer_order(5, 2, 2, 4)
    assert sorted(src[src >= 0].tolist()) == list(range(20)) and int((src < 0).sum()) == 12


@pytest.mark.parametrize("variant", ["dense", "perm_index", "perm_affine"])
def test_fc_after_conv_reads_the_buffer_order(small_qmodel, mixed_index_qmodel, mixed_qmodel,
                                              variant):
    """The re-laid fc1 on pool2's output in the buffer's order (padding lanes holding junk)
    gives the model's fc1 on the flattened output, and stays in its format."""
    from slimnfu.compress.quant import int_forward_layers, quantize_input
    from slimnfu.formats import layout
    from slimnfu.gen.compiler import buffer_order, engine_layers

    q = {"dense": small_qmodel, "perm_index": mixed_index_qmodel,
         "perm_affine": mixed_qmodel}[variant]
    cfg = _cfg(q)
    (fc1, move), = [e for e in engine_layers(q, cfg) if e[0].name == "fc1"]
    assert move == ("none",) and fc1.format == variant and fc1.desc.n_in == 32
    fc1.weight_format.accept(fc1, cfg)
    x = quantize_input(q, torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(1)))
    refs = int_forward_layers(q, x)
    for n in range(3):
        words = layout.pack_output(refs[3][n], cfg)
        vals = layout.unpack_words(words, cfg.tn, cfg.dw).reshape(-1).clone()
        vals[buffer_order(5, 2, 2, cfg.tn) < 0] = 12345     # junk in the padding lanes
        got = fc1.weight_format.run(fc1, vals.view(1, -1), q.dw)
        assert torch.equal(got[0], refs[4][n]), n


def test_perm_affine_after_conv_is_not_moved(mixed_qmodel):
    """perm_affine fc1 reads pool2's output where pool2 wrote it: its pass walks the flatten
    order over the buffer's (5 channels of 2x2 pixels: 2 tiles of 4, 3 padding lanes), its
    parameter words hold the lane stride a*hw mod N and the step a, and nothing is moved."""
    from slimnfu.contract import perm_fields
    from slimnfu.formats import layout

    cfg = config_for(mixed_qmodel, CONFIGS["tiny"])
    program = compile_model(mixed_qmodel, cfg)
    fc1 = next(l for l in program.layers if l.name == "fc1")
    assert (fc1.move, fc1.in_buf, fc1.out_buf, fc1.move_cycles) == (("none",), 0, 1, 0)
    assert fc1.desc.flatten == (5, 4) and fc1.desc.perm_n == 20 and fc1.desc.layer.n_in == 32
    assert perm_fields(fc1.desc, cfg) == {"perm_hw": 4, "perm_tail": 4, "perm_lanes": 1}
    rec = mixed_qmodel.layers[4].compressed
    want = layout.pack_perm_params(rec.a, rec.b, cfg, 20, hw=4)
    (sel, base, words), = [ld for ld in fc1.loads if ld[0] == 5]
    assert program.rom[base:base + words] == want
    assert sum(l.move_cycles for l in program.layers) == 0


def test_affine_layer_loads_s_into_every_sb_bank_before_it_starts(mixed_qmodel):
    """A perm_affine layer's s goes into SB, each value in all tn*ti lanes of its word (the
    image's bits count it once), and the layer waits for that whole load (it reads s anywhere
    from its first step); a layer whose SB words it reads in order waits for all but its SB
    load, which streams on beside it."""
    from slimnfu.contract import LoadSel

    cfg = config_for(mixed_qmodel, CONFIGS["tiny"])
    program = compile_model(mixed_qmodel, cfg)
    entries, need = program.load_plan()
    done = 0
    for i, layer in enumerate(program.layers):
        mine = [ld for ld in layer.loads if ld[2]]
        done += len(mine)
        if layer.desc.perm == "affine":
            assert need[i] == done, layer.name
            s = mixed_qmodel.layers[4].compressed.s
            (_, base, words), = [ld for ld in mine if ld[0] == LoadSel.SB]
            spread = sum(1 << (k * cfg.dw) for k in range(cfg.tn * cfg.ti))
            assert words == s.numel()
            assert program.rom[base:base + words] == [int(v) % (1 << cfg.dw) * spread for v in s]
        elif mine and mine[-1][0] == LoadSel.SB:
            assert need[i] == done - 1, layer.name
    assert any(layer.desc.perm == "affine" for layer in program.layers)


def test_refuses_quadratic_perm_affine_after_conv(mixed_qmodel):
    """Quadratic rows cannot be walked in the buffer's order: refused, naming the layer."""
    import dataclasses

    from slimnfu.gen.compiler import engine_layers

    fc1 = mixed_qmodel.layers[4]
    quad = dataclasses.replace(fc1, compressed=dataclasses.replace(
        fc1.compressed, e=torch.ones(fc1.desc.n_out, dtype=torch.int64)))
    layers = list(mixed_qmodel.layers)
    layers[4] = quad
    q = dataclasses.replace(mixed_qmodel, layers=layers)
    with pytest.raises(ValueError, match=r"^layer fc1: perm_affine rows of the quadratic "
                                         r"family .* cannot be walked in the neuron buffer's "
                                         r"order"):
        engine_layers(q, CONFIGS["tiny"].with_(perm=True))


def test_config_for_sizes_both_buffers_from_the_program(small_qmodel):
    """Both neuron buffers get one depth, what the program needs, whatever the named config
    says (every read port of a buffer is a block RAM copy of it)."""
    from slimnfu.gen.compiler import buffer_depth, buffer_words

    cfg = config_for(small_qmodel, CONFIGS["tiny"].with_(nbin_depth=128, nbout_depth=512))
    # conv1's output: 2 tiles of 8x8 words; the image: 100 words in buffer 0; its patches
    # (conv1 may run as im2col): 3 words of 9 channels at each of the 8x8 positions
    assert buffer_words(small_qmodel, cfg) == (100, 128)
    assert cfg.nbin_depth == cfg.nbout_depth == 256
    assert compile_model(small_qmodel, cfg).input_words() == 192
    assert config_for(small_qmodel, CONFIGS["tiny"]) == cfg
    compile_model(small_qmodel, cfg)
    assert [buffer_depth(n) for n in (1, 3, 100, 512, 513, 2880, 3072)] == \
        [2, 4, 128, 512, 1024, 3072, 3072]


def test_refuses_output_beyond_its_buffer():
    """conv2's output goes to buffer 0 (NBin's depth), which the image fits but it does not."""
    from torch import nn

    from slimnfu.compress.quant import quantize_model

    torch.manual_seed(0)
    q = quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 12, 1)),
                       torch.rand(4, 1, 6, 6))
    cfg = CONFIGS["tiny"].with_(nbin_depth=40, nbout_depth=64, sb_depth=64, bias_depth=8)
    with pytest.raises(ValueError, match=r"^layer conv2: its output needs 48 words of neuron "
                                         r"buffer 0, config 'tiny' has 40 \(nbin_depth\)"):
        compile_model(q, cfg)
    compile_model(q, cfg.with_(nbin_depth=48))


def _first_conv(n_in, n_out, k, stride=1, pad=0, size=10, seed=0):
    """A small dense network whose first layer is a ``k x k`` conv over ``n_in`` channels."""
    from torch import nn

    from slimnfu.compress.quant import quantize_model

    torch.manual_seed(seed)
    conv = nn.Conv2d(n_in, n_out, k, stride=stride, padding=pad)
    h = (size + 2 * pad - k) // stride + 1
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(n_out * h * h, 3))
    return quantize_model(model, torch.rand(8, n_in, size, size))


@pytest.mark.parametrize("net", [
    dict(n_in=1, n_out=6, k=3),                  # small_qmodel's conv1: pays (1,152 -> 384 steps)
    dict(n_in=3, n_out=4, k=3),                  # 27 channels in 7 tiles for 9 steps: does not pay
    dict(n_in=3, n_out=8, k=5, stride=2, pad=2),
    dict(n_in=2, n_out=2, k=3, pad=1)])
def test_auto_im2col_follows_the_schedule_model(net):
    """``auto`` is im2col exactly when the schedule model counts fewer cycles from the first
    input word, and records both counts."""
    from slimnfu.gen.schedule import expected_cycles, inference_cycles

    q = _first_conv(**net)
    cfg = _cfg(q, nbin_depth=1024, nbout_depth=1024)
    on, off, auto = (compile_model(q, cfg, im2col=m) for m in ("on", "off", "auto"))
    c_on, c_off = inference_cycles(on), inference_cycles(off)
    assert c_on == on.input_words() + expected_cycles(on)["cycles"]
    chosen = auto.stats["im2col"]
    assert chosen["chosen"] == (c_on < c_off)
    assert chosen["cycles"] == {"on": c_on, "off": c_off}
    assert chosen["input_words"] == {"on": on.input_words(), "off": off.input_words()}
    want = on if c_on < c_off else off
    assert auto.rom == want.rom and auto.im2col == want.im2col
    assert [l.im2col for l in auto.layers] == [l.im2col for l in want.layers]
    # im2col: one 1x1 pass over n_in*k*k patch channels on the output grid
    first = on.layers[0]
    assert first.im2col and not any(l.im2col for l in on.layers[1:])
    assert (first.desc.layer.k, first.desc.layer.n_in) == (1, net["n_in"] * net["k"] ** 2)
    assert on.stats["im2col"]["why"] == "switched on"
    assert off.stats["im2col"] == {"mode": "off", "layer": "conv1", "chosen": False,
                                   "why": "switched off"}


def test_auto_im2col_both_ways_on_the_examples():
    from slimnfu.gen.schedule import inference_cycles

    pays, costs = _first_conv(1, 6, 3), _first_conv(3, 4, 3)
    cfg = _cfg(costs, nbin_depth=1024, nbout_depth=1024)
    assert compile_model(pays, _cfg(pays)).im2col is not None
    assert compile_model(costs, cfg).im2col is None
    on = compile_model(costs, cfg, im2col="on")
    off = compile_model(costs, cfg, im2col="off")
    assert inference_cycles(on) > inference_cycles(off)


def test_im2col_only_where_the_patches_fit(small_qmodel):
    # 3 x 64 = 192 patch words; NBin of 128 holds the 100-word image only
    cfg = _cfg(small_qmodel, nbin_depth=128)
    auto = compile_model(small_qmodel, cfg)
    assert auto.im2col is None and not auto.stats["im2col"]["chosen"]
    assert auto.stats["im2col"]["why"].startswith("does not fit: layer conv1: ")
    with pytest.raises(ValueError, match="conv1.*192 input words.*nbin_depth=128"):
        compile_model(small_qmodel, cfg, im2col="on")


def test_im2col_on_refuses_what_cannot_run_so(small_qmodel):
    with pytest.raises(ValueError, match="im2col must be one of auto, on, off, not 'yes'"):
        compile_model(small_qmodel, _cfg(small_qmodel), im2col="yes")
    wide = _first_conv(4, 3, 3)           # n_in = ti = 4
    with pytest.raises(ValueError, match=r"^im2col='on': layer conv1 is a conv with k=3, "
                                         r"n_in=4 and ti=4; im2col takes a first conv with "
                                         r"k > 1 and n_in < ti$"):
        compile_model(wide, _cfg(wide), im2col="on")
    assert compile_model(wide, _cfg(wide)).stats["im2col"]["chosen"] is False
    fc = dataclasses.replace(small_qmodel, layers=small_qmodel.layers[-1:],
                             input_shape=(small_qmodel.layers[-1].desc.n_in,))
    with pytest.raises(ValueError, match="layer fc2 is a fc layer"):
        compile_model(fc, _cfg(fc), im2col="on")
