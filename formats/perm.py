"""The permuted-feature FC formats (method C): every row of W is a permutation of one sequence.

An FC layer's ``W`` (``M x N``) is stored as one common sequence ``s`` of ``N`` values and one
permutation per row, ``W[j, i] = s[pi_j(i)]``:

``perm_affine``
    ``pi_j(i) = (a_j*i + b_j) mod N`` with ``gcd(a_j, N) = 1``; stored: ``2*ceil(log2 N)`` bits
    per row (one ``PERM_PARAM`` word per output tile). The engine's address generators expand
    them on the fly; no SB words.
``perm_index``
    The index ROM: ``M*N`` indices of ``ceil(log2 N)`` bits, laid out in SB like dense FC
    weights (one index per ``dw`` lane).

Both need ``cfg.perm`` (:mod:`slimnfu.rtl.perm_addr`) and ``cfg.perm.depth >= N``. The golden
model is the dense FC layer on the gathered ``W``.
"""

import math
from dataclasses import dataclass

import torch

from slimnfu.config import PassDesc, PermParams
from slimnfu.contract import LoadSel, perm_addr_bits
from slimnfu.formats import layout
from slimnfu.formats.base import (ImageError, StoredItem, WeightFormat, Words, bias_words,
                                  check_items, check_tensor, pwl_items, pwl_shape, pwl_words,
                                  unpack_bias, unpack_pwl, unpack_weights)
from slimnfu.formats.dense import relaid_layer
from slimnfu.formats.qmodel import QLayer

__all__ = ["PermAffineWeights", "PermIndexWeights", "PermAffineFormat", "PermIndexFormat",
           "index_bits", "check_affine", "affine_perms", "check_index_rom", "check_sequence",
           "gather_weights"]


def index_bits(n):
    """Bits of one index into a sequence of length ``n`` (at least 1)."""
    return max(1, (n - 1).bit_length())


def check_affine(a, b, n, where="layer"):
    """Raise ``ValueError`` unless every ``(a_j*i + b_j) mod n`` is a permutation of ``0..n-1``.

    ``a`` and ``b`` are integer sequences (one entry per row); ``0 <= a_j, b_j < n`` and
    ``gcd(a_j, n) == 1`` are required. The message names the first bad row.
    """
    a = [int(v) for v in torch.as_tensor(a).reshape(-1).tolist()]
    b = [int(v) for v in torch.as_tensor(b).reshape(-1).tolist()]
    if len(a) != len(b):
        raise ValueError(f"{where}: {len(a)} affine multipliers a but {len(b)} offsets b")
    for j, (aj, bj) in enumerate(zip(a, b)):
        if not (0 <= aj < n and 0 <= bj < n):
            raise ValueError(f"{where}: row {j} affine parameters a={aj}, b={bj} must be in "
                             f"[0, {n - 1}] (n={n})")
        g = math.gcd(aj, n)
        if g != 1:
            raise ValueError(f"{where}: row {j} affine multiplier a={aj} is not a permutation "
                             f"of n={n}: gcd(a, n) = {g} != 1")
    return a, b


def affine_perms(a, b, n, where="layer"):
    """The index matrix ``idx[j, i] = (a_j*i + b_j) mod n`` (int64 ``(M, n)``), checked."""
    check_affine(a, b, n, where)
    a = torch.as_tensor(a, dtype=torch.int64).reshape(-1, 1)
    b = torch.as_tensor(b, dtype=torch.int64).reshape(-1, 1)
    return (a * torch.arange(n, dtype=torch.int64) + b) % n


def check_index_rom(idx, m, n, where="layer"):
    """Raise ``ValueError`` unless ``idx`` is ``(m, n)`` and each row a permutation of
    ``0..n-1``."""
    idx = torch.as_tensor(idx)
    if tuple(idx.shape) != (m, n):
        raise ValueError(f"{where}: index ROM has shape {tuple(idx.shape)}, the layer needs "
                         f"({m}, {n})")
    want = torch.arange(n, dtype=torch.int64)
    rows = torch.sort(idx.to(torch.int64), dim=1).values
    bad = (rows != want).any(dim=1).nonzero()
    if bad.numel():
        j = int(bad[0])
        missing = sorted(set(range(n)) - set(idx[j].tolist()))[:3]
        raise ValueError(f"{where}: index ROM row {j} is not a permutation of 0..{n - 1} "
                         f"(missing e.g. {missing})")
    return idx


def check_sequence(s, n, where="layer"):
    """Raise ``ValueError`` unless the common sequence has the layer's length ``n``."""
    length = torch.as_tensor(s).numel()
    if length != n:
        raise ValueError(f"{where}: common sequence has length {length}, but the layer has "
                         f"n_in={n} inputs")
    return s


@dataclass
class PermAffineWeights:
    """The record of a ``perm_affine`` layer: ``s`` ``(N,)`` and per-row ``a``, ``b``
    ``(M,)``, all int64."""

    s: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    def indices(self, n, where="layer"):
        return affine_perms(self.a, self.b, n, where)


@dataclass
class PermIndexWeights:
    """The record of a ``perm_index`` layer: ``s`` ``(N,)`` and the index ROM ``idx``
    ``(M, N)``, int64."""

    s: torch.Tensor
    idx: torch.Tensor

    def indices(self, n, where="layer"):
        return self.idx


def gather_weights(ql):
    """The integer ``W`` of a perm-format layer: ``s[idx]`` (int64 ``(M, N)``)."""
    rec = ql.compressed
    return rec.s[rec.indices(ql.desc.n_in, ql.name)]


class _PermFormat(WeightFormat):
    """What both permuted-FC formats share: ``s``, the biases and the PWL table."""

    feature = "perm"
    variant = None

    def _perm_item(self, ql, dw):
        raise NotImplementedError

    def items(self, ql, dw, acc):
        d = ql.desc
        return [StoredItem("s", d.n_in, dw), StoredItem("bias", d.n_out, acc),
                self._perm_item(ql, dw)] + pwl_items(ql, dw)

    def macs(self, ql):
        return ql.desc.macs()

    def validate(self, ql, dw, acc):
        super().validate(ql, dw, acc)
        d, rec = ql.desc, ql.compressed
        if d.kind != "fc":
            raise ValueError(f"desc.kind: format {self.name!r} needs an fc layer, not {d.kind}")
        check_sequence(rec.s, d.n_in, ql.name)
        check_tensor("compressed.s", rec.s, (d.n_in,), dw)
        if not torch.equal(gather_weights(ql), ql.w):
            raise ValueError("w: differs from the common sequence gathered by the permutations")

    def params(self, ql):
        return ql.desc.n_in + ql.desc.n_out

    def pass_desc(self, ql):
        return PassDesc(ql.desc, perm=self.variant)

    def configure(self, cfg, layers):
        need = max(ql.desc.n_in for ql in layers)
        depth = (cfg.perm or PermParams()).depth
        return cfg.with_(perm=PermParams(max(depth, 1 << max(0, need - 1).bit_length())))

    def _perm_memory(self, ql, cfg):
        raise NotImplementedError

    def memories(self, ql, cfg):
        mem = {"s": Words(LoadSel.PERM_S, layout.pack_perm_s(ql.compressed.s, cfg), cfg.dw),
               "bias": bias_words(ql.b, cfg), **self._perm_memory(ql, cfg)}
        if ql.desc.act == "pwl":
            mem["pwl"] = pwl_words(ql.pwl, cfg)
        return mem

    def _shapes(self, desc, cfg):
        raise NotImplementedError

    def _restore_perm(self, words, desc, cfg, fname):
        raise NotImplementedError

    def restore(self, entry, files, contents, desc, cfg, where):
        """Checks the listed items, every file's shape, the common sequence's length against
        ``n_in``, and that the affine parameters / index ROM are permutations."""
        if desc.kind != "fc":
            raise ImageError("manifest.json", f"{where}.desc",
                             f"format {self.name!r} needs an fc layer, not {desc.kind}")
        co = desc.tiles(cfg)[1]
        shapes = {"s": (desc.n_in, cfg.dw), "bias": (co, cfg.tn * cfg.acc),
                  **self._shapes(desc, cfg)}
        if desc.act == "pwl":
            shapes["pwl"] = pwl_shape(cfg)

        def explain_s(words, width):
            if width == cfg.dw:
                return (f"the common sequence has {words} values but the layer has "
                        f"n_in={desc.n_in}")
            return None

        data = check_items(entry, files, contents, shapes, self.name, desc, where,
                           "manifest.json", explain={"s": explain_s})
        fn = entry["files"]
        s = layout.unpack_words(data["s"], 1, cfg.dw).reshape(-1)
        item = next(k for k in self._shapes(desc, cfg))
        try:
            rec = self._restore_perm(s, data[item], desc, cfg, fn[item])
            idx = rec.indices(desc.n_in, fn[item])
        except ValueError as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(fn[item], "values", str(exc)) from None
        bias = unpack_bias(data["bias"], desc, cfg, fn["bias"])
        pwl = unpack_pwl(data["pwl"], desc, cfg, fn["pwl"]) if "pwl" in data else None
        return QLayer(entry["name"], desc, s[idx], bias, entry["f_x"], entry["f_w"],
                      entry["f_y"], pwl, entry["act_func"], self.name, rec)


class PermAffineFormat(_PermFormat):
    """Rows as affine permutations ``(a_j*i + b_j) mod N`` of one sequence."""

    name = "perm_affine"
    variant = "affine"
    record = PermAffineWeights

    def _perm_item(self, ql, dw):
        return StoredItem("perm_ab", 2 * ql.desc.n_out, index_bits(ql.desc.n_in))

    def _perm_memory(self, ql, cfg):
        rec = ql.compressed
        return {"perm_ab": Words(LoadSel.PERM_PARAM, layout.pack_perm_params(rec.a, rec.b, cfg),
                                 2 * cfg.tn * perm_addr_bits(cfg))}

    def _shapes(self, desc, cfg):
        return {"perm_ab": (desc.tiles(cfg)[1], 2 * cfg.tn * perm_addr_bits(cfg))}

    def _restore_perm(self, s, words, desc, cfg, fname):
        ab = perm_addr_bits(cfg)
        pairs = layout.unpack_words(words, 2 * cfg.tn, ab).reshape(-1, 2) & ((1 << ab) - 1)
        return PermAffineWeights(s, pairs[:desc.n_out, 0].clone(), pairs[:desc.n_out, 1].clone())


class PermIndexFormat(_PermFormat):
    """Rows as arbitrary permutations of one sequence, stored as an index ROM."""

    name = "perm_index"
    variant = "index"
    record = PermIndexWeights

    def _perm_item(self, ql, dw):
        d = ql.desc
        return StoredItem("perm_index", d.n_out * d.n_in, index_bits(d.n_in))

    def _perm_memory(self, ql, cfg):
        return {"perm_index": Words(LoadSel.SB, layout.pack_perm_index(ql.compressed.idx, cfg),
                                    cfg.tn * cfg.ti * cfg.dw)}

    def _shapes(self, desc, cfg):
        return {"perm_index": (PassDesc(desc, perm=self.variant).sb_words(cfg),
                               cfg.tn * cfg.ti * cfg.dw)}

    def relayout_input(self, ql, src):
        # The index ROM takes any column order. Each padding column gathers a zero appended
        # to s (s has one value per input), so every row stays a permutation.
        rec, n = ql.compressed, ql.desc.n_in
        pad = src < 0
        s = torch.cat([rec.s, rec.s.new_zeros(int(pad.sum()))])
        idx = rec.idx[:, src.clamp(min=0)]
        idx[:, pad] = torch.arange(n, s.numel(), dtype=idx.dtype)
        return relaid_layer(ql, s[idx], PermIndexWeights(s, idx))

    def _restore_perm(self, s, words, desc, cfg, fname):
        idx = unpack_weights(words, desc, cfg, fname)
        check_index_rom(idx, desc.n_out, desc.n_in, fname)
        return PermIndexWeights(s, idx)
