"""Training and evaluation of the reference networks, with a content-addressed checkpoint cache.

A run is reproducible from its seed: the weights are initialised after ``torch.manual_seed``
(inside :func:`torch.random.fork_rng`, so the caller's RNG is untouched), batches are shuffled by
a seeded ``torch.Generator``, and deterministic algorithms are requested while training.

Checkpoints are cached under ``cache_dir`` (default ``models/`` in the cache root,
:func:`slimnfu.paths.models_dir`: ``$SLIMNFU_CACHE/models``, else ``build/cache/models``) by a
SHA-256 over the network definition, the dataset files' md5s, the hyperparameters, the subset,
the seed and the torch version. A cache hit loads the checkpoint instead of training.

:func:`fit` is the one training loop: training here and every compression method's
fine-tuning (:mod:`slimnfu.compress.ikr`, :mod:`slimnfu.compress.permfc`,
:mod:`slimnfu.compress.slim`) run through it, a method keeping its structure with a hook.
"""

import contextlib
import hashlib
import io
import json
import math
import pathlib
import time

import torch
from torch import nn

from slimnfu import paths
from slimnfu.atomic import read_hashed, write_hashed
from slimnfu.compress import data
from slimnfu.compress.models import build, network_info

__all__ = ["train", "evaluate", "fit", "set_threads", "cache_key", "default_cache_dir",
           "hyperparameters", "CACHE_ENV_VAR", "TRAIN_FORMAT"]

#: Environment variable naming the cache root (checkpoints go to its ``models/``).
CACHE_ENV_VAR = paths.CACHE_ENV_VAR

#: Bumped whenever the training procedure changes, so old checkpoints are not reused.
TRAIN_FORMAT = 1


def set_threads(threads):
    """Set torch's CPU threads; ``--threads`` below 1 is refused before any work starts."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be an integer >= 1, not {threads!r}")
    torch.set_num_threads(threads)


def default_cache_dir():
    """``models/`` in the cache root: ``$SLIMNFU_CACHE/models``, else ``build/cache/models``
    in the build root (:func:`slimnfu.paths.models_dir`)."""
    return paths.models_dir()


def _check_positive_int(name, value, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < 1 or (high is not None and value > high):
        limit = ">= 1" if high is None else f"in [1, {high}]"
        raise ValueError(f"{name} must be {limit}, not {value}")


def hyperparameters(name, epochs=None, lr=None, batch_size=None, seed=0, subset=None):
    """Fill in and validate the hyperparameters of a run; return them as a dict."""
    spec = network_info(name)
    epochs = spec["epochs"] if epochs is None else epochs
    lr = spec["lr"] if lr is None else lr
    batch_size = spec["batch_size"] if batch_size is None else batch_size
    _check_positive_int("epochs", epochs, 1000)
    _check_positive_int("batch_size", batch_size, 1 << 16)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr must be a number, not {lr!r}")
    if not (math.isfinite(lr) and 0 < lr <= 10):
        raise ValueError(f"lr must be in (0, 10], not {lr}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, not {seed!r}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be in [0, 2**63), not {seed}")
    train_count = data.SPLITS["train"][2] - data.SPLITS["train"][1]
    if subset is not None:
        _check_positive_int("subset", subset, train_count)
    return {"network": name, "dataset": spec["dataset"], "epochs": epochs, "lr": float(lr),
            "batch_size": batch_size, "seed": seed, "subset": subset,
            "optimizer": spec["optimizer"], "weight_decay": spec["weight_decay"],
            "schedule": spec["schedule"]}


def _build_quietly(name):
    """Build a network without advancing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        return build(name)


def _definition(name):
    return repr(_build_quietly(name))


def cache_key(hparams):
    """SHA-256 of everything that determines the trained weights."""
    content = {
        "format": TRAIN_FORMAT,
        "definition": _definition(hparams["network"]),
        "data_md5": data.data_md5s(hparams["dataset"]),
        "hparams": hparams,
        "torch": str(torch.__version__),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def evaluate(model, images, labels, batch_size=1000):
    """Top-1 accuracy of ``model`` on ``images`` in percent (the model is put in eval mode)."""
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels differ in count: {images.shape[0]} != "
                         f"{labels.shape[0]}")
    if images.shape[0] == 0:
        raise ValueError("evaluate needs at least one image")
    _check_positive_int("batch_size", batch_size)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits = model(images[start:start + batch_size].float())
            correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return 100.0 * correct / images.shape[0]


@contextlib.contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def _save_atomic(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_hashed(path, buf.getvalue())


def fit(model, images, labels, lr, batch_size=128, seed=0, epochs=1, batches=None,
        weight_decay=0.0, cosine=False, after_step=None, progress=False, desc="fit",
        optimizer=None, scheduler=None, loss=None):
    """Train ``model`` in place: the one loop behind training and every method's fine-tuning.

    Parameters
    ----------
    model : nn.Module
        Put in train mode for the loop and in eval mode after it.
    images, labels : torch.Tensor
        The training images (cast to float per batch) and their class labels.
    lr : float
        Adam's learning rate (the peak one with ``cosine``).
    batch_size : int
    seed : int
        Seeds the ``torch.Generator`` that orders or draws the batches.
    epochs : int
        Passes over a fresh random permutation of the images (the last batch of a pass may be
        short); used when ``batches`` is None.
    batches : int, optional
        Instead of epochs: this many batches of ``batch_size`` images drawn with replacement.
    weight_decay : float
        Adam's weight decay.
    cosine : bool
        Decay the learning rate to zero along a cosine over all steps, one step per batch.
    after_step : callable, optional
        ``after_step(model)`` after every optimiser step: the method's hook that keeps its
        structure (e.g. re-applies pruning masks).
    progress : bool
        A tqdm bar per epoch (or one for ``batches``), labelled ``desc``.
    optimizer, scheduler : optional
        A ``torch.optim`` optimiser (and learning-rate scheduler, stepped once per batch) kept
        by the caller across calls, used instead of a new Adam at ``lr`` (``lr``,
        ``weight_decay`` and ``cosine`` are then ignored).
    loss : callable, optional
        ``loss(logits, idx)`` -> scalar, ``idx`` the batch's rows of ``images``; default the
        cross-entropy with ``labels[idx]``.

    Returns
    -------
    nn.Module
        ``model``.

    Notes
    -----
    Adam covers the parameters that require a gradient; the loss is cross-entropy by default. The
    order of the operations is fixed (forward, loss, zero_grad, backward, step, scheduler,
    hook), so the same seed gives the same weights bit for bit.
    """
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    per_pass = batches if batches is not None else -(-images.shape[0] // batch_size)
    passes = 1 if batches is not None else epochs
    if optimizer is None:
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                                     weight_decay=weight_decay)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                                T_max=max(1, passes * per_pass))
                     if cosine else None)
    if loss is None:
        loss_fn = nn.CrossEntropyLoss()

        def loss(logits, idx):
            return loss_fn(logits, labels[idx])
    model.train()
    for epoch in range(passes):
        order = None if batches is not None else torch.randperm(images.shape[0],
                                                                generator=generator)
        label = desc if batches is not None else f"{desc} epoch {epoch + 1}/{passes}"
        with tqdm(range(per_pass), desc=label, disable=not progress, leave=False,
                  unit="batch") as bar:
            for step in bar:
                if order is None:
                    idx = torch.randint(images.shape[0], (batch_size,), generator=generator)
                else:
                    idx = order[step * batch_size:(step + 1) * batch_size]
                value = loss(model(images[idx].float()), idx)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step(model)
                if progress and step % 20 == 0:
                    bar.set_postfix(loss=f"{value.item():.4f}")
    model.eval()
    return model


def train(name, epochs=None, lr=None, batch_size=None, seed=0, subset=None, cache_dir=None,
          progress=True, root=None, cached_only=False):
    """Train a reference network on its dataset's ``"train"`` split, or load it from the cache.

    Parameters
    ----------
    name : str
        A key of :data:`slimnfu.compress.models.NETWORKS`.
    epochs, lr, batch_size : optional
        Override the network's defaults.
    seed : int
        Seeds the initial weights and the shuffling.
    subset : int, optional
        Train on the first ``subset`` images only (fast tests).
    cache_dir : str or path-like, optional
        Checkpoint folder; default :func:`default_cache_dir` (read at call time).
    progress : bool
        Show tqdm progress bars.
    root : str or path-like, optional
        The data folder; default ``$SLIMNFU_DATA``.
    cached_only : bool
        Refuse, naming the folder, instead of training when no checkpoint is cached.

    Returns
    -------
    model : torch.nn.Sequential
        In eval mode.
    info : dict
        ``key``, ``cache_hit``, ``train_s``, ``epochs``, ``lr``, ``batch_size``, ``seed``,
        ``subset``, ``acc_test`` (percent, full test set), ``dataset``, ``network``, ``path``.
    """
    hp = hyperparameters(name, epochs, lr, batch_size, seed, subset)
    data.verify(hp["dataset"], root)
    key = cache_key(hp)
    cache_dir = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)
    path = cache_dir / f"{name}-{key[:20]}.pt"
    if cached_only and not path.is_file():
        raise ValueError(f"no checkpoint of {name} with these options in {cache_dir} "
                         f"({path.name}); train it first (slimnfu train {name} with the same "
                         f"options), or point --cache-dir or SLIMNFU_CACHE at the cache that "
                         f"has it")
    if path.is_file():
        model = _build_quietly(name)
        data_bytes = read_hashed(path, "delete it to retrain")
        try:
            # early checkpoints stored torch.__version__ itself, a TorchVersion object
            with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
                checkpoint = torch.load(io.BytesIO(data_bytes), map_location="cpu",
                                        weights_only=True)
            model.load_state_dict(checkpoint["state_dict"])
            stored = checkpoint["info"]
        except Exception as exc:
            raise ValueError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                             f"delete it to retrain") from None
        if stored.get("key") != key:
            raise ValueError(f"checkpoint {path} has key {stored.get('key')!r}, expected {key!r}; "
                             f"delete it to retrain")
        model.eval()
        return model, dict(stored, cache_hit=True, path=str(path))

    images, labels = data.load(hp["dataset"], "train", root)
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _deterministic():
        torch.manual_seed(seed)
        model = build(name)
        fit(model, images, labels, hp["lr"], hp["batch_size"], hp["seed"], hp["epochs"],
            weight_decay=hp["weight_decay"], cosine=hp["schedule"] == "cosine",
            progress=progress, desc=hp["network"])
    train_s = time.perf_counter() - start
    test_images, test_labels = data.load(hp["dataset"], "test", root)
    info = {
        "key": key, "cache_hit": False, "train_s": round(train_s, 3),
        "epochs": hp["epochs"], "lr": hp["lr"], "batch_size": hp["batch_size"], "seed": seed,
        "subset": subset, "acc_test": evaluate(model, test_images, test_labels),
        "dataset": hp["dataset"], "network": name, "optimizer": hp["optimizer"],
        "schedule": hp["schedule"], "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
    _save_atomic({"state_dict": model.state_dict(), "info": info}, path)
    return model, dict(info, path=str(path))
