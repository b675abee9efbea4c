"""The flow of a :class:`~slimnfu.config.Scenario` as typed functions.

Train or load the float network (:func:`train_or_load`), compress it with all three methods
(:func:`compress`, cached), compile it for the scenario's config (:func:`compile_for`), then
synthesise its ROM build (:func:`synth_build`), build a board bitstream (:func:`board_build`),
run images through its RTL (:func:`run_on_rtl`) or verify the whole test set on the fast
runner (:func:`verify`). ``slimnfu demo``, ``synth --rom``, ``board``, ``verify`` and ``bench
network`` call these with their scenario as data.

Every function that writes takes ``build_root`` or ``cache_root`` (default
:func:`slimnfu.paths.build_root` and :func:`slimnfu.paths.cache_root`, read at call time).
"""

import hashlib
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

from slimnfu import paths
from slimnfu.atomic import check_file_target, read_hashed, write_hashed, write_json
from slimnfu.compress import data
from slimnfu.compress.attribution import NOT_CACHED, attribute, float_from_state, float_state
from slimnfu.compress.models import NETWORKS, network_info
from slimnfu.compress.pipeline import PIPELINE, compress_network, hash_state
from slimnfu.compress.quant import int_forward, int_forward_layers, quantize_input, \
    quantize_model
from slimnfu.compress.train import evaluate, fit, set_threads, train
from slimnfu.config import Scenario, get_config
from slimnfu.formats import QuantModel, layout
from slimnfu.gen.board import board_platform, build_board, pnr_figures
from slimnfu.gen.compiler import compile_model, config_for
from slimnfu.gen.synth import block_ram_fit, synth_emitted
from slimnfu.gen.verilog import emit_accelerator, verilog_root
from slimnfu.sim.fastsim import ray_or_error
from slimnfu.sim.network import run_network, run_network_fast

__all__ = ["check", "holdout", "model_name", "prepare", "train_or_load", "network_file", "compress",
           "load_float", "attribution", "compile_for", "rom_program",
           "fitting_program",
           "synth_build", "run_on_rtl", "board_build", "verify_plan", "verify"]

#: Compression settings that name a cached network only when they differ from the default
#: scenario's, so the default's file name stays what it was.
_NAMED = {"subset": "s", "fc_epochs": "fe", "fc_patience": "fp", "patterns": "p",
          "ikr_finetune": "ft", "ikr_share": "sh"}


def check(scenario):
    """Refuse a scenario whose dataset is not its network's own, or whose splits do not fit
    its calib split (:func:`holdout`); return it."""
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, not {type(scenario).__name__}")
    own = network_info(scenario.network)["dataset"]
    if scenario.dataset != own:
        raise ValueError(f"network {scenario.network!r} is trained on {own!r}, not "
                         f"{scenario.dataset!r}")
    n_calib = data.SPLITS["calib"][2] - data.SPLITS["calib"][1]
    _fit_holdout(scenario, n_calib)
    return scenario


def _fit_holdout(scenario, n):
    """Refuse ``scenario``'s splits when they do not fit ``n`` held-out images."""
    for name in ("val", "calib"):
        if getattr(scenario, name) + scenario.check > n:
            raise ValueError(f"{name} {getattr(scenario, name)} and check {scenario.check} "
                             f"must fit side by side in the {n} images of the calib split")


def holdout(scenario, images, labels, shrink=False):
    """The three parts of a calib split (images held out from training) for ``scenario``.

    The check split is its last ``scenario.check`` images: only the final budget verdict sees
    them. The selection split is the ``scenario.val`` images just before them: every
    compression decision is taken on them. The calibration images are its first
    ``scenario.calib``: quantisation reads them without labels, so they may overlap the
    selection split, never the check split. (Session 13 and earlier took every decision and
    the verdict on its last 3,000 images; the cache names say which layout made a network.)

    Parameters
    ----------
    scenario : Scenario
    images, labels : torch.Tensor
        The calib split.
    shrink : bool
        A user's data set (:func:`prepare`): shrink the check split to a third of the images
        and the others to what is left, instead of refusing.

    Returns
    -------
    dict
        ``selection`` and ``check`` (each ``(images, labels)``), ``calibration`` (images).

    Raises
    ------
    ValueError
        Without ``shrink``, splits that do not fit; with it, fewer than 3 images, or images
        and labels of different lengths.
    """
    n = len(labels)
    if len(images) != n:
        raise ValueError(f"the calib split has {len(images)} images and {n} labels")
    if shrink:
        if n < 3:
            raise ValueError(f"the calib split has {n} images; a selection and a check split "
                             f"need at least 3")
        n_check = min(scenario.check, n // 3)
        scenario = scenario.with_(check=n_check, val=min(scenario.val, n - n_check),
                                  calib=min(scenario.calib, n - n_check))
    _fit_holdout(scenario, n)
    first, cut = n - scenario.check - scenario.val, n - scenario.check
    return {"selection": (images[first:cut], labels[first:cut]),
            "check": (images[cut:], labels[cut:]), "calibration": images[:scenario.calib]}


def model_name(model_spec):
    """A build name for a user's model: its file's stem, lower case, ``[a-z0-9_]`` only."""
    text = str(model_spec)
    stem = Path(text.split(":")[0] if re.fullmatch(r".+\.py:\w+", text) else text).stem
    return re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_") or "model"


def prepare(model_spec, data_spec, out, weights=None, train_epochs=None, budget=1.0,
            methods="auto", config="tiny", compress_options=None, train_options=None,
            log=print):
    """The first steps of ``slimnfu run`` for a user's model: check the data and the model
    (before any training), train, compress under ``budget`` and quantise.

    Parameters
    ----------
    model_spec : str or path-like
        As :func:`slimnfu.compress.intake.load_model` takes it.
    data_spec : str or path-like
        As :func:`slimnfu.compress.userdata.load_data` takes it.
    out : path-like
        The run's folder: the float network, trained, is written to its ``model.pt``.
    weights : path-like, optional
        A state dict for a factory's model.
    train_epochs : int, optional
        Epochs to train first; default 2 for a factory without ``weights`` (an untrained
        model), else 0.
    budget : float
        Accuracy budget in points.
    methods : tuple of str or "auto"
        :func:`slimnfu.compress.pipeline.parse_methods`.
    config : str
        The base accelerator config.
    compress_options, train_options : dict, optional
        Passed on to :func:`slimnfu.compress.pipeline.compress_network` (e.g. ``patterns``,
        ``ikr_finetune``, ``ikr_share``) and :func:`slimnfu.compress.train.fit` (``lr``,
        ``batch_size``).
    log : callable

    Returns
    -------
    dict
        ``scenario`` (the config, budget and the model's name, which name the builds),
        ``data`` (:class:`slimnfu.compress.userdata.DataSet`), ``model`` (the normalised
        float network), ``epochs``, ``acc_base`` (its test accuracy), ``qdense``, ``qmodel``
        (dense and compressed, quantised), ``history`` (with ``test_acc_float``), ``float``
        (the compressed float network) and ``calib`` (the calibration images and labels).
    """
    import io

    import torch
    from torch import nn

    from slimnfu.atomic import atomic_write
    from slimnfu.compress.intake import load_model, require_supported
    from slimnfu.compress.pipeline import parse_methods
    from slimnfu.compress.userdata import load_data

    methods = parse_methods(methods)
    text = str(model_spec)
    scenario = Scenario(config=config, budget=budget)
    log(f"[1/7] data {data_spec}")
    ds = load_data(data_spec)
    log(f"      {ds.summary()}")
    log(f"[2/7] model {model_spec}")
    model = load_model(model_spec, weights)
    seq = require_supported(model, ds.input_shape, source=text)
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    n_out = linears[-1].out_features if linears else None
    if n_out is None or n_out < ds.classes:
        raise ValueError(f"{text}: the model gives {n_out} outputs, but the data {ds.name} "
                         f"has labels 0..{ds.classes - 1}; its last layer must be a Linear "
                         f"with at least {ds.classes} outputs")
    fresh = re.fullmatch(r".+\.py:\w+", text) is not None and weights is None
    epochs = (2 if fresh else 0) if train_epochs is None else train_epochs
    if epochs:
        opts = {"lr": 1e-3, "batch_size": 128, **(train_options or {})}
        log(f"      training {epochs} epoch(s) on {len(ds.train[1])} images")
        fit(seq, *ds.train, epochs=epochs, seed=0, progress=True, **opts)
    seq.eval()
    buf = io.BytesIO()
    torch.save(seq, buf)
    atomic_write(Path(out) / "model.pt", buf.getvalue())
    xt, yt = ds.test
    acc_base = round(evaluate(seq, xt, yt), 2)
    log(f"      float test accuracy {acc_base:.2f}% ({len(yt)} images)")
    held = holdout(scenario, *ds.calib, shrink=True)
    shown = methods if methods == "auto" else ",".join(methods)
    log(f"[3/7] compressing under {budget} points (methods {shown})")
    fm, q, hist = compress_network(seq, ds.train, held["selection"], held["calibration"],
                                   budget, methods=methods, check=held["check"],
                                   log=lambda message: log("      " + message),
                                   **(compress_options or {}))
    hist["test_acc_float"] = round(evaluate(fm, xt, yt), 2)
    hist = json.loads(json.dumps(hist, default=float))
    log(f"      formats: {hist['formats']}")
    return {"scenario": scenario.with_(network=model_name(model_spec), dataset=ds.name),
            "data": ds, "model": seq, "epochs": epochs, "acc_base": acc_base,
            "qdense": quantize_model(seq, held["calibration"]), "qmodel": q, "history": hist,
            "float": fm, "calib": (held["calibration"],
                                   ds.calib[1][:len(held["calibration"])])}


def train_or_load(scenario, cache_root=None, progress=True):
    """The scenario's trained float network: its cached checkpoint, or trained now.

    Parameters
    ----------
    scenario : Scenario
    cache_root : path-like, optional
        Checkpoints are in its ``models/`` (default :func:`slimnfu.paths.cache_root`).
    progress : bool
        Show training progress bars.

    Returns
    -------
    tuple
        ``(model, info)`` as :func:`slimnfu.compress.train.train` returns them.
    """
    check(scenario)
    if scenario.threads is not None:
        set_threads(scenario.threads)
    return train(scenario.network, epochs=scenario.epochs, seed=scenario.seed,
                 subset=scenario.subset, cache_dir=paths.models_dir(cache_root),
                 progress=progress)


def network_file(scenario, model):
    """The cache file name of ``model`` compressed under ``scenario``.

    It names the base checkpoint (its weights' hash), the pipeline (with the budget rule,
    :data:`slimnfu.compress.pipeline.PIPELINE`), the budget, the splits (selection ``v``,
    check ``k``, calibration ``c``) and every compression setting that differs from the
    default scenario's.
    """
    default = Scenario()
    fc = "" if scenario.fc_variant == "auto" else f"_fc{scenario.fc_variant}"
    extra = "".join(f"_{tag}{getattr(scenario, key)}" for key, tag in _NAMED.items()
                    if getattr(scenario, key) != getattr(default, key))
    return (f"{scenario.network}_{hash_state(model)[:12]}_{PIPELINE}{fc}"
            f"_b{float(scenario.budget)}_v{scenario.val}_k{scenario.check}_c{scenario.calib}"
            f"{extra}.json")


def compress(scenario, model, cache_root=None, recompress=False, log=print, with_float=False):
    """:func:`slimnfu.compress.pipeline.compress_network` of ``model`` under ``scenario``,
    cached in ``network/`` of the cache root (default :func:`slimnfu.paths.cache_root`).

    The selection, check and calibration images are the calib split's parts
    (:func:`holdout`); the test set is read only after the compression, for the history's
    ``test_acc_float``, which decides nothing. A cached result is reused unless
    ``recompress``.

    Returns
    -------
    tuple
        ``(qmodel, history)``, and the compressed float network third with ``with_float``
        (None for a cache file that predates it), from the one read of the cache file;
        ``history["test_acc_float"]`` is the compressed float network's test accuracy.
    """
    check(scenario)
    path = paths.networks_dir(cache_root) / network_file(scenario, model)
    if path.is_file() and not recompress:
        log(f"reusing {path}")
        q, hist, fm = load_network(path, with_float=True)
        return (q, hist, fm) if with_float else (q, hist)
    xs, ys = data.load(scenario.dataset, "train")
    if scenario.subset is not None:
        xs, ys = xs[:scenario.subset], ys[:scenario.subset]
    held = holdout(scenario, *data.load(scenario.dataset, "calib"))
    t0 = time.monotonic()
    fm, q, hist = compress_network(model, (xs, ys), held["selection"], held["calibration"],
                                   scenario.budget, check=held["check"],
                                   fc_epochs=scenario.fc_epochs,
                                   fc_patience=scenario.fc_patience, patterns=scenario.patterns,
                                   ikr_finetune=scenario.ikr_finetune,
                                   ikr_share=scenario.ikr_share,
                                   fc_variant=scenario.fc_variant, log=log)
    hist["wall_s"] = round(time.monotonic() - t0, 1)
    xt, yt = data.load(scenario.dataset, "test")
    hist["test_acc_float"] = round(evaluate(fm, xt, yt), 2)
    state = {"qmodel": q.to_state(), "history": json.loads(json.dumps(hist, default=float)),
             "float": float_state(fm)}
    write_hashed(path, json.dumps(state).encode())
    return (q, state["history"], fm) if with_float else (q, state["history"])


def load_float(path):
    """The compressed float network cached in the network file ``path``
    (:func:`slimnfu.compress.attribution.float_from_state`), or None when the file predates
    it (:data:`~slimnfu.compress.attribution.NOT_CACHED` says what to do). ``ValueError``
    naming the file for a stored network that does not read back."""
    return _float_of(json.loads(read_hashed(path, "delete it, or run again with --recompress")),
                     path)


def _float_of(state, path):
    """The float network of a network file's parsed ``state`` (see :func:`load_float`)."""
    if "float" not in state:
        return None
    try:
        return float_from_state(state["float"])
    except (ValueError, KeyError, TypeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{path}: its float network does not read back ({what}); delete it, "
                         f"or run again with --recompress") from None


def attribution(scenario, float_model, qmodel, calib=None):
    """:func:`slimnfu.compress.attribution.attribute` of ``qmodel`` against ``float_model`` on
    the calibration images ``calib`` (``(images, labels)``; default the scenario's: the first
    ``scenario.calib`` of its data set's calib split): per layer SQNR and saturation events,
    float and integer accuracy."""
    if calib is None:
        xc, yc = data.load(scenario.dataset, "calib")
        calib = (xc[:scenario.calib], yc[:scenario.calib])
    return attribute(float_model, qmodel, *calib)


def load_network(path, with_float=False):
    """``(qmodel, history)`` of a cached compressed network, checked: its content hash, its
    JSON, and the model itself (:meth:`QuantModel.check`: every layer against its format and
    widths, the chain of shapes and scales). ``ValueError`` naming the file otherwise. With
    ``with_float``, its float network third (:func:`load_float`'s, from the same read)."""
    rebuild = "delete it, or run again with --recompress, to compress the network again"
    data = read_hashed(path, rebuild)
    try:
        state = json.loads(data)
        q = QuantModel.from_state(state["qmodel"]).check()
        history = state["history"]
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a compressed network; "
                         f"{rebuild}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{path}: not a valid compressed network ({what}); {rebuild}") from None
    if not with_float:
        return q, history
    return q, history, _float_of(state, path)


def compile_for(qmodel, scenario, label="compressed"):
    """Compile ``qmodel`` for the scenario's config with the features it needs.

    The build is named ``<config>_<network>_<label>``, plus ``_fc<variant>`` for a
    compressed network whose method C variant was forced; the scenario's ``im2col`` is the
    compiler's choice for the first layer.
    """
    fc = "" if label != "compressed" or scenario.fc_variant == "auto" else \
        f"_fc{scenario.fc_variant}"
    base = get_config(scenario.config)
    cfg = config_for(qmodel, base, scenario.im2col).with_(
        name=f"{base.name}_{scenario.network}_{label}{fc}")
    return compile_model(qmodel, cfg, scenario.im2col)


def rom_program(scenario, cache_root=None, log=print):
    """Train or load, compress and compile: ``(qmodel, program, key)``, ``key`` naming the
    base checkpoint (the first 12 hex digits of its weights' hash); the program as
    :func:`fitting_program` compiles it for the LFE5U-85F."""
    model, _ = train_or_load(scenario, cache_root)
    q, _ = compress(scenario, model, cache_root, log=log)
    return q, fitting_program(q, scenario, log=log)[0], hash_state(model)[:12]


def fitting_program(qmodel, scenario, part="LFE5U-85F", log=print):
    """``(program, fit)``: ``qmodel`` compiled for the scenario (:func:`compile_for`) and its
    ROM build's block RAM on ``part`` (:func:`slimnfu.gen.synth.block_ram_fit`).

    With ``im2col="auto"``, a program whose first layer's patches make the ROM build miss the
    part's block RAM while the program without them fits is compiled without im2col (a slower
    first layer, smaller neuron buffers), and the log says so."""
    program = compile_for(qmodel, scenario)
    fit = block_ram_fit(program, "rom", part)
    if scenario.im2col == "auto" and program.im2col is not None and not fit["fits"]:
        plain = compile_for(qmodel, replace(scenario, im2col="off"))
        plain_fit = block_ram_fit(plain, "rom", part)
        if plain_fit["fits"]:
            log(f"      im2col off: with it, {fit['summary']}; without it, "
                f"{plain_fit['summary']}")
            plain.stats["im2col"]["why"] = f"switched off to fit {part}: {fit['summary']}"
            return plain, plain_fit
    return program, fit


def synth_build(program, weights, why, out=None, pnr=True, part=None, pnr_timeout_s=None,
                reuse=False, build_root=None, pnr_opts=None):
    """Emit and synthesise the ``weights`` build (``"rom"`` or ``"port"``, with the reason
    ``why`` from :func:`slimnfu.gen.synth.choose_weights`) of a compiled program. The report
    has the DP16KD estimate of :func:`slimnfu.gen.synth.block_ram_fit` beside Yosys's count
    (``block_ram_estimate``).

    The build is the program's config name (``_port`` added for the port build); see
    :func:`slimnfu.gen.synth.synth_emitted` for the other arguments. Returns its report.
    """
    name = program.cfg.name + ("" if weights == "rom" else "_port")
    emitted = emit_accelerator(program, name, verilog_root(build_root), weights=weights)
    fit = block_ram_fit(program, weights)
    estimate = {k: fit[k] for k in ("brams", "available", "fits", "by_group", "summary")}
    return synth_emitted(emitted, name, {"config": name, "accel": program.cfg.to_dict(),
                                         "weights": weights, "weights_why": why,
                                         "block_ram_estimate": estimate},
                         out=out, build_root=build_root, pnr=pnr, part=part, reuse=reuse,
                         pnr_timeout_s=pnr_timeout_s, pnr_opts=pnr_opts)


def run_on_rtl(program, qmodel, images, labels, sim="verilator", build_root=None, log=print):
    """Run ``images`` through the RTL of ``program`` on ``sim``, every layer checked bit for bit
    against the integer reference; see :func:`slimnfu.sim.network.run_network`."""
    return run_network(program, qmodel, images, labels, sim=sim, name=program.cfg.name,
                       log=log, build_root=build_root)


def board_build(scenario, board, image=0, do_build=True, build_root=None, cache_root=None,
                log=print):
    """The board bitstream: the scenario's compressed network (by default the budgeted one)
    with MNIST test image ``image`` stored, in ``board/<board>/`` of the build root; returns
    the report (also written to its ``report.json``).

    The report has the LEDs the board should show, the integer test accuracy of the network
    and the dense network's, the block RAM the whole build needs against the board's part
    (:func:`slimnfu.gen.synth.block_ram_fit`; ``fits``) and, with ``do_build``, the
    bitstream's hash and nextpnr's fmax and utilisation. A build that does not fit is not
    run: its report is written (``fits`` false, where the blocks go) and a ``ValueError``
    says so, before any tool runs.
    """
    platform = board_platform(board)
    clk_mhz = platform.default_clk_frequency / 1e6
    if not 0 <= image < 10000:
        raise ValueError(f"--image must be a test image index in 0..9999, not {image}")
    model, info = train_or_load(scenario, cache_root, progress=False)
    q, hist = compress(scenario, model, cache_root, log=log)
    (program, fit), key = fitting_program(q, scenario, platform.device, log), \
        hash_state(model)[:12]
    images, labels = data.load(scenario.dataset, "test")
    x = quantize_input(q, images[image:image + 1])
    predicted = int(int_forward_layers(q, x)[-1][0].argmax())
    label = int(labels[image])
    out = paths.build_root(build_root) / "board" / board
    t0 = time.monotonic()
    acc = float((int_forward(q, images)[0].argmax(1) == labels).double().mean())
    report = {"board": board, "config": program.cfg.to_dict(), "image": image,
              "model_key": key, "fc": scenario.fc_variant, "formats": hist.get("formats"),
              "acc_int_test": round(100 * acc, 2), "acc_float_test_dense": info.get("acc_test"),
              "budget_pts": scenario.budget, "fits": fit["fits"], "part": fit["part"],
              "block_ram": {k: fit[k] for k in ("brams", "available", "by_group", "summary")},
              "rom_bits": len(program.rom) * program.rom_width, "label": label,
              "reference_class": predicted,
              "leds_expected": predicted | (0x40 if predicted == label else 0) | 0x80,
              "bitstream": None, "bitstream_sha256": None, "pnr": None}
    if not fit["fits"]:
        report["wall_s"] = round(time.monotonic() - t0, 1)
        write_json(out / "report.json", report)
        raise ValueError(f"the board build of {program.cfg.name!r} does not fit {board}: "
                         f"{fit['summary']}; report in {out / 'report.json'}")
    log(f"building {board} for {program.cfg.name!r}, test image {image} (label {label}, "
        f"reference class {predicted}) in {out}; {fit['summary']}")
    bit = build_board(program, layout.pack_program_input(program, x[0]), label, board, out,
                      do_build=do_build)
    report.update({"bitstream": str(bit) if bit else None,
                   "bitstream_sha256": hashlib.sha256(Path(bit).read_bytes()).hexdigest()
                   if bit else None, "pnr": pnr_figures(out, clk_mhz) if bit else None,
                   "wall_s": round(time.monotonic() - t0, 1)})
    write_json(out / "report.json", report)
    return report


def _image_range(images, total):
    """``images`` (``"all"``, ``"N"``: the first N, or ``"A:B"``: images A..B-1) as a
    ``range`` of the ``total`` test images; ``ValueError`` naming ``--images`` otherwise."""
    text = str(images).strip()
    try:
        if text == "all":
            start, stop = 0, total
        elif ":" in text:
            a, b = text.split(":", 1)
            start, stop = int(a or 0), int(b or total)
        else:
            start, stop = 0, int(text)
    except ValueError:
        raise ValueError(f"--images must be 'all', a count N or a range A:B, not "
                         f"{images!r}") from None
    if not 0 <= start < stop <= total:
        raise ValueError(f"--images must select images in 0..{total - 1} (a count in "
                         f"1..{total}, or A:B with 0 <= A < B <= {total}), not {images!r}")
    return range(start, stop)


def verify_plan(target, scenario, images="all", dense=False, workers=None, ray_address=None,
                out=None, build_root=None):
    """Check a :func:`verify` request before any long step; return the plan (a dict).

    ``target`` is a network name (:data:`slimnfu.compress.models.NETWORKS`: trained or
    loaded, then compressed under ``scenario``) or a compressed network file (a ``.json`` of
    the cache's ``network/`` folder, loaded and checked here by :func:`load_network`; the
    network its name starts with, if any, names the build and the dataset). The default
    ``out`` is ``verify/<network>_<config>.json`` in the build root. Every problem is one
    ``ValueError`` (``FileNotFoundError`` for a missing file) naming the option: an unknown
    network, a missing or invalid file, ``--dense`` with a file (it has no float network to
    quantise), ``--images`` out of range, ``--workers`` below 1, ``--ray`` without the ray
    package, an ``--out`` that is a folder.
    """
    check(scenario)
    if isinstance(workers, bool) or not isinstance(workers, (int, type(None))) or \
            (workers is not None and workers < 1):
        raise ValueError(f"--workers must be an integer >= 1, not {workers!r}")
    plan = {"target": str(target), "file": None}
    path = Path(str(target))
    if target in NETWORKS:
        scenario = scenario.with_(network=target, dataset=network_info(target)["dataset"])
        check(scenario)
    elif path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{target}: no such compressed network file")
        if dense:
            raise ValueError(f"--dense needs a network name (its float network is quantised "
                             f"dense), not the compressed network file {target}")
        plan["file"], plan["qmodel"] = path, load_network(path)[0]
        # a cache file's name starts with its network (network_file)
        name = path.name.split("_")[0]
        if name in NETWORKS:
            scenario = scenario.with_(network=name, dataset=network_info(name)["dataset"])
    else:
        raise ValueError(f"unknown network {str(target)!r}: give one of "
                         f"{', '.join(NETWORKS)}, or a compressed network file (.json)")
    total = data.SPLITS["test"][2] - data.SPLITS["test"][1]
    plan["images"] = _image_range(images, total)
    data.verify(scenario.dataset)
    if ray_address is not None:
        ray_or_error()
    plan["workers"] = workers or len(os.sched_getaffinity(0))
    plan["ray"] = ray_address
    out = Path(out) if out else paths.build_root(build_root) / "verify" / \
        f"{scenario.network}_{scenario.config}.json"
    check_file_target(out)
    plan.update(scenario=scenario, dense=dense, out=out)
    return plan


def verify(plan, layers=False, progress=True, build_root=None, cache_root=None, log=print):
    """Every image of ``plan`` (:func:`verify_plan`) through the fast runner of the compressed
    network's RTL (and the dense network's with ``plan["dense"]``), bit-exact against the
    integer reference; the report is written to ``plan["out"]`` (atomically) and returned.

    Parameters
    ----------
    plan : dict
        From :func:`verify_plan`.
    layers : bool
        Check every layer's output of every image too (slower).
    progress : bool
        Show a progress bar per build.
    build_root, cache_root : path-like, optional
        Default :func:`slimnfu.paths.build_root` and :func:`slimnfu.paths.cache_root`.
    log : callable

    Returns
    -------
    dict
        ``images`` (count), ``first_image``, ``bit_exact`` (every build), ``acc_equal``
        (every build's RTL accuracy equals the integer reference's), ``builds``: per build
        (``compressed``, ``dense``) ``images``, ``bit_exact``, ``mismatches``, ``failures``,
        ``acc_rtl``, ``acc_int`` (the integer reference on the same images),
        ``cycles_per_image``, ``cycles_as_expected``, ``expected_cycles``, ``sat_events``,
        ``input_words`` (NBin words the host writes first), ``im2col`` (the compiler's choice
        for the first layer, ``Program.stats["im2col"]``),
        ``sim_s_per_image``, ``sim_wall_s``, ``wall_s``, ``acc_float`` (the float network on
        the same images; None when the cache holds no float network) and ``attribution``
        (:func:`attribution`: per layer SQNR and saturation events on the calibration
        images); and the whole ``wall_s``.
    """
    from tqdm import tqdm

    t0 = time.monotonic()
    scenario, sel = plan["scenario"], plan["images"]
    xt, yt = data.load(scenario.dataset, "test")
    xt, yt = xt[sel.start:sel.stop], yt[sel.start:sel.stop]
    if plan["file"] is not None:
        models, key = {"compressed": plan["qmodel"]}, None
        floats = {"compressed": load_float(plan["file"])}
    else:
        model, _ = train_or_load(scenario, cache_root, progress=progress)
        q, _, fm = compress(scenario, model, cache_root, log=log, with_float=True)
        models, key = {"compressed": q}, hash_state(model)[:12]
        floats = {"compressed": fm, "dense": model}
        if plan["dense"]:
            xc, _ = data.load(scenario.dataset, "calib")
            models["dense"] = quantize_model(model, xc[:scenario.calib])
    builds = {}
    for label, qm in models.items():
        t1 = time.monotonic()
        program = compile_for(qm, scenario, label)
        log(f"{label}: {len(sel)} images through the RTL of {program.cfg.name!r} on "
            f"{plan['workers']} {'Ray tasks' if plan['ray'] else 'local workers'}")
        bar = tqdm(total=len(sel), unit="image", desc=label, disable=not progress)
        try:
            r = run_network_fast(program, qm, xt, yt, name=program.cfg.name, layers=layers,
                                 workers=plan["workers"], ray_address=plan["ray"],
                                 progress=lambda k: bar.update(k) if k else bar.reset(),
                                 build_root=build_root, log=log)
        finally:
            bar.close()
        builds[label] = {"config": program.cfg.name, "images": r["images"],
                         "bit_exact": r["bit_exact"], "every_layer": layers,
                         "mismatches": r["mismatches"], "failures": r["failures"],
                         "acc_rtl": r["rtl_accuracy"], "acc_int": r["int_accuracy"],
                         "rtl_correct": r["rtl_correct"], "int_correct": r["int_correct"],
                         "cycles_per_image": r["cycles_per_image"],
                         "cycles_as_expected": r["cycles_as_expected"],
                         "expected_cycles": r["expected_cycles"], "counters": r["counters"],
                         "sat_events": r["sat_events"], "sim_s_per_image": r["sim_s_per_image"],
                         "sim_wall_s": r["sim_wall_s"],
                         "input_words": program.input_words(),
                         "im2col": program.stats["im2col"],
                         "wall_s": round(time.monotonic() - t1, 1),
                         "verilog_sha256": r["verilog_sha256"]}
        b = builds[label]
        fm = floats.get(label)
        b["acc_float"] = None if fm is None else round(evaluate(fm, xt, yt), 2)
        b["attribution"] = attribution(scenario, fm, qm)
        a = b["attribution"]
        log(f"{label}: accuracy on the {b['images']} images float "
            f"{b['acc_float'] if fm is not None else '- (' + NOT_CACHED + ')'}% -> integer "
            f"{b['acc_int']}% -> RTL {b['acc_rtl']}%; {a['sat_events']} saturation events on "
            f"{a['images']} calibration images")
        exact = "bit-exact" if b["bit_exact"] else f"{b['mismatches']} MISMATCHES"
        log(f"{label}: {exact}, "
            f"RTL accuracy {b['acc_rtl']}% (integer reference {b['acc_int']}%), "
            f"{b['cycles_per_image']['max']:,} cycles per image (start to done; the input "
            f"is {b['input_words']:,} words, first layer as im2col: "
            f"{b['im2col']['chosen']}, {b['im2col']['why']}), simulated in "
            f"{b['sim_wall_s']} s")
    report = {"target": plan["target"], "network": scenario.network,
              "dataset": scenario.dataset, "config": scenario.config, "model_key": key,
              "images": len(sel), "first_image": sel.start, "workers": plan["workers"],
              "ray": plan["ray"],
              "bit_exact": all(b["bit_exact"] for b in builds.values()),
              "acc_equal": all(b["rtl_correct"] == b["int_correct"] for b in builds.values()),
              "builds": builds, "wall_s": round(time.monotonic() - t0, 1)}
    write_json(plan["out"], report)
    return report
