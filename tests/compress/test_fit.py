"""The one training loop (``train.fit``) gives bit for bit the weights of the loops it replaced.

Each ``_old_*`` function is a verbatim copy of a loop as it stood before the merge (training,
IKR, permuted-FC and slim fine-tuning, the IKR benchmark's pruning baselines); the new call
must give identical tensors from the same start and seed, so no benchmark figure moves.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slimnfu.compress import ikr, permfc, slim, train


def _old_fit(model, images, labels, hp):
    generator = torch.Generator().manual_seed(hp["seed"])
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps_per_epoch = -(-images.shape[0] // hp["batch_size"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=hp["epochs"] * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(hp["epochs"]):
        order = torch.randperm(images.shape[0], generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * hp["batch_size"]:(step + 1) * hp["batch_size"]]
            loss = loss_fn(model(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return model


def _old_ikr_finetune(model, images, labels, batches, batch_size=128, lr=5e-4, seed=0):
    if batches <= 0:
        return model
    masks = {n: m for n, m in ikr.masks_of(model).items()}
    convs = dict(ikr.ikr_layers(model))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(batches):
        idx = torch.randint(images.shape[0], (batch_size,), generator=gen)
        loss = loss_fn(model(images[idx].float()), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, conv in convs.items():
                conv.weight.mul_(masks[n])
    model.eval()
    return model


def _old_permfc_finetune(model, images, labels, epochs=1, lr=1e-3, batch_size=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps = -(-images.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=gen)
        for step in range(steps):
            sel = order[step * batch_size:(step + 1) * batch_size]
            loss = loss_fn(model(images[sel]), labels[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def _old_slim_fine_tune(smodel, x, y, epochs=1, lr=2e-4, batch_size=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(smodel.parameters(), lr=lr)
    smodel.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for s in range(0, x.shape[0], batch_size):
            idx = order[s:s + batch_size]
            loss = F.cross_entropy(smodel(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    smodel.eval()
    return smodel


def _old_baseline_loop(m, xs, ys, batches, seed):
    opt = torch.optim.Adam(m.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(batches):
        i = torch.randint(xs.shape[0], (128,), generator=gen)
        loss = nn.functional.cross_entropy(m(xs[i].float()), ys[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 12), nn.ReLU(),
                         nn.Linear(12, 10))


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(300, 1, 12, 12, generator=gen), torch.randint(10, (300,), generator=gen)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.training == b.training


def test_training_loop(batch):
    x, y = batch
    hp = {"seed": 5, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 2}
    old, new = _net(), _net()
    _old_fit(old, x, y, hp)
    train.fit(new, x, y, hp["lr"], hp["batch_size"], hp["seed"], hp["epochs"],
              weight_decay=hp["weight_decay"], cosine=True)
    _same(old, new)


@pytest.mark.parametrize("batches", [0, 7])
def test_ikr_finetune_keeps_the_masks(batch, batches):
    x, y = batch
    base = _net()
    ikr.apply_ikr(base[3], 4, patterns=3, name="3")
    old, new = copy.deepcopy(base), copy.deepcopy(base)
    _old_ikr_finetune(old, x, y, batches, batch_size=32, lr=1e-3, seed=3)
    ikr.finetune(new, x, y, batches, batch_size=32, lr=1e-3, seed=3)
    _same(old, new)
    mask = ikr.masks_of(new)["3"]
    assert torch.equal(new[3].weight * mask, new[3].weight)


def test_permfc_finetune(batch):
    x, y = batch
    base = permfc.compress_model(_net(), "affine", keep_classifier=True, seed=2)
    old, new = copy.deepcopy(base), copy.deepcopy(base)
    _old_permfc_finetune(old, x, y, epochs=2, lr=3e-3, batch_size=64, seed=4)
    permfc.finetune(new, x, y, epochs=2, lr=3e-3, batch_size=64, seed=4)
    _same(old, new)


@pytest.mark.parametrize("n", [0, 300])
def test_slim_fine_tune(batch, n):
    x, y = batch
    base = slim.slim_model(_net())
    base[0].ksize[:2] = 1
    base[0].approx[3] = True
    old, new = copy.deepcopy(base), copy.deepcopy(base)
    old.train(False), new.train(False)
    _old_slim_fine_tune(old, x[:n], y[:n], epochs=2, lr=1e-3, batch_size=64, seed=6)
    slim.fine_tune(new, x[:n], y[:n], epochs=2, lr=1e-3, batch_size=64, seed=6)
    _same(old, new)


def test_pruning_baselines_loop(batch):
    from torch.nn.utils import prune

    from slimnfu.bench import ikr as bench_ikr

    x, y = batch
    old = _net()
    for conv in (old[0], old[3]):
        prune.l1_unstructured(conv, "weight", amount=0.5)
    _old_baseline_loop(old, x, y, 9, 2)
    for conv in (old[0], old[3]):
        prune.remove(conv, "weight")
    new = bench_ikr._baseline_prune(_net(), "unstructured", 0.5, x, y, 9, 2)
    for k, v in old.state_dict().items():
        assert torch.equal(v, new.state_dict()[k]), k
