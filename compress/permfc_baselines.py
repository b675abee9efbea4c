"""Baselines for the permuted-FC comparison at equal storage: HashedNets and magnitude pruning.

``HashedLinear`` (HashedNets style, Chen et al. 2015): ``W[j, i] = sign(j, i) * h[bucket(j, i)]``
with ``K`` trainable buckets; the bucket and sign functions are a fixed pseudo-random hash of
``(j, i)`` from a seed, so only ``h`` (``K`` values) and the seed are stored. Here the hash is
drawn once from a seeded ``torch.Generator`` (a hash function in hardware; a 32-bit seed).

Magnitude pruning: keep the ``k`` largest ``|W|``, fine-tune with the mask fixed. Storage in a
CSR-like form: ``k`` values at ``dw`` bits, ``k`` column indices at ``ceil(log2 N)`` bits and
``M`` row lengths at ``ceil(log2 (N+1))`` bits.

:func:`budget_hashed` and :func:`budget_pruned` turn a bit budget (the permuted layer's
``s`` + permutation bits) into ``K`` and ``k``.
"""

import copy

import torch
from torch import nn

from slimnfu.compress.permfc import PermLinear
from slimnfu.formats.perm import index_bits

__all__ = ["HashedLinear", "hashed_from_linear", "budget_hashed", "budget_pruned",
           "hashed_bits", "pruned_bits", "prune_linear", "MaskedLinear", "to_dense_any",
           "SEED_BITS"]

#: Bits of the stored hash seed.
SEED_BITS = 32


def hashed_bits(k, dw):
    """Stored bits of a hashed weight matrix: ``K`` buckets at ``dw`` bits plus the seed."""
    return k * dw + SEED_BITS


def pruned_bits(k, m, n, dw):
    """Stored bits of a pruned ``M x N`` matrix with ``k`` kept weights (CSR-like)."""
    return k * (dw + index_bits(n)) + m * index_bits(n + 1)


def budget_hashed(bits, dw):
    """Largest bucket count ``K >= 1`` whose storage fits ``bits``."""
    return max(1, (bits - SEED_BITS) // dw)


def budget_pruned(bits, m, n, dw):
    """Largest kept-weight count ``k >= 1`` whose storage fits ``bits``."""
    return max(1, (bits - m * index_bits(n + 1)) // (dw + index_bits(n)))


class HashedLinear(nn.Module):
    """A Linear whose weights share ``K`` buckets through a fixed hash (see module docstring)."""

    def __init__(self, in_features, out_features, k, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.in_features, self.out_features, self.k = in_features, out_features, k
        self.register_buffer("bucket", torch.randint(k, (out_features, in_features),
                                                     generator=gen))
        sign = torch.randint(2, (out_features, in_features), generator=gen) * 2 - 1
        self.register_buffer("sign", sign.to(torch.float32))
        self.h = nn.Parameter(torch.zeros(k))
        self.bias = nn.Parameter(torch.zeros(out_features))

    @property
    def weight(self):
        return self.h[self.bucket] * self.sign

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def hashed_from_linear(linear, k, seed=0):
    """A :class:`HashedLinear` whose buckets are the least-squares fit to ``linear.weight``."""
    out = HashedLinear(linear.in_features, linear.out_features, k, seed)
    w = linear.weight.detach() * out.sign
    total = torch.zeros(k).scatter_add_(0, out.bucket.reshape(-1), w.reshape(-1))
    count = torch.zeros(k).scatter_add_(0, out.bucket.reshape(-1), torch.ones(w.numel()))
    with torch.no_grad():
        out.h.copy_(total / count.clamp(min=1))
        out.bias.copy_(linear.bias.detach())
    return out


class MaskedLinear(nn.Linear):
    """A Linear with a fixed 0/1 mask on its weights (magnitude pruning)."""

    def __init__(self, linear, mask):
        super().__init__(linear.in_features, linear.out_features)
        with torch.no_grad():
            self.weight.copy_(linear.weight.detach() * mask)
            self.bias.copy_(linear.bias.detach())
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, x):
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def prune_linear(linear, k):
    """Keep the ``k`` largest-magnitude weights of ``linear``; return a :class:`MaskedLinear`."""
    w = linear.weight.detach().abs().reshape(-1)
    k = min(k, w.numel())
    mask = torch.zeros_like(w)
    mask[torch.topk(w, k).indices] = 1
    return MaskedLinear(linear, mask.reshape(linear.weight.shape))


def to_dense_any(model):
    """Copy with hashed / masked / permuted layers replaced by plain ``nn.Linear``."""

    out = copy.deepcopy(model)
    for i, mod in enumerate(out):
        if isinstance(mod, (HashedLinear, MaskedLinear, PermLinear)):
            lin = nn.Linear(mod.in_features, mod.out_features)
            w = mod.weight * mod.mask if isinstance(mod, MaskedLinear) else mod.weight
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(mod.bias)
            out[i] = lin
    return out
