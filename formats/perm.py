"""The permuted-feature FC formats (method C): every row of W is a permutation of a sequence.

An FC layer's ``W`` (``M x N``) is stored as common sequences of ``N`` values and one
permutation per row, ``W[j, i] = s_{g_j}[pi_j(i)]``:

``perm_affine`` (generated permutations, ``G`` groups)
    ``G`` common sequences (``1 <= G <= M``), stored one after the other in ``s``
    (``G*N`` values); row ``j`` belongs to group ``g_j`` and reads
    ``s[g_j*N + pi_j(i)]`` with ``pi_j(i) = (b_j + a_j*i + e_j*i*(i-1)/2) mod N``. Two
    families (:data:`FAMILIES`): ``"affine"`` (``e_j = 0``, ``gcd(a_j, N) = 1``) and
    ``"quadratic"`` (``e_j != 0`` allowed: a quadratic permutation polynomial, written by its
    first difference ``a_j`` and constant second difference ``e_j``; :func:`check_generated`
    checks every row is a permutation). Stored per row: ``a_j``, ``b_j`` (and ``e_j`` in the
    quadratic family) at ``ceil(log2 N)`` bits, and ``g_j`` at ``ceil(log2 G)`` bits when
    ``G > 1`` (one ``PERM_PARAM`` word per output tile holds the hardware's form of them,
    :func:`slimnfu.formats.layout.pack_perm_params`). The engine's address generators expand
    them on the fly, one SB-word step per cycle; no SB words.
``perm_index``
    One common sequence of ``N`` values and the index ROM: ``M*N`` indices of
    ``ceil(log2 N)`` bits, laid out in SB like dense FC weights (one index per ``dw`` lane).

Both need ``cfg.perm`` (:mod:`slimnfu.rtl.perm_addr`) and ``cfg.perm.depth >= G*N``. The golden
model is the dense FC layer on the gathered ``W``.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch

from slimnfu.config import PassDesc, PermParams
from slimnfu.contract import LoadSel, perm_param_width
from slimnfu.formats import layout
from slimnfu.formats.base import (EnginePass, ImageError, StoredItem, WeightFormat, Words,
                                  bias_words, check_items, check_tensor, max_abs, pwl_items,
                                  pwl_shape, pwl_words, unpack_bias, unpack_pwl, unpack_weights)
from slimnfu.formats.dense import dense_memories, relaid_layer
from slimnfu.formats.qmodel import QLayer

__all__ = ["PermAffineWeights", "PermIndexWeights", "PermAffineFormat", "PermIndexFormat",
           "FAMILIES", "index_bits", "check_affine", "affine_perms", "check_generated",
           "generated_perms", "check_index_rom", "check_sequence", "check_groups",
           "gather_weights"]

#: The generated-permutation families of ``perm_affine``.
FAMILIES = ("affine", "quadratic")


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


def generated_perms(a, b, e, n, where="layer"):
    """The index matrix ``pi[j, i] = (b_j + a_j*i + e_j*i*(i-1)/2) mod n`` (int64 ``(M, n)``).

    ``e=None`` (or all zero) is the affine family, checked by :func:`check_affine`; otherwise
    every ``a_j, b_j, e_j`` must be in ``[0, n)`` and every row a permutation
    (:func:`check_index_rom` names the first row that is not)."""
    if e is None or not bool(torch.as_tensor(e).any()):
        return affine_perms(a, b, n, where)
    a, b, e = (torch.as_tensor(v, dtype=torch.int64).reshape(-1, 1) for v in (a, b, e))
    if not (a.shape == b.shape == e.shape):
        raise ValueError(f"{where}: {a.shape[0]} first differences a, {b.shape[0]} offsets b "
                         f"and {e.shape[0]} second differences e")
    for name, v in (("a", a), ("b", b), ("e", e)):
        bad = ((v < 0) | (v >= n)).nonzero()
        if bad.numel():
            j = int(bad[0, 0])
            raise ValueError(f"{where}: row {j} parameter {name}={int(v[j, 0])} must be in "
                             f"[0, {n - 1}] (n={n})")
    i = torch.arange(n, dtype=torch.int64)
    idx = (b + a * i + e * (i * (i - 1) // 2 % n)) % n
    check_index_rom(idx, a.shape[0], n, where)
    return idx


def check_generated(a, b, e, n, where="layer"):
    """Raise ``ValueError`` unless every row's generated map (:func:`generated_perms`) is a
    permutation of ``0..n-1``."""
    generated_perms(a, b, e, n, where)


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


def check_groups(s, group, n, m, where="layer"):
    """Raise ``ValueError`` unless ``s`` holds ``G >= 1`` whole sequences of ``n`` values
    (``G <= m``) and every row's group is in ``[0, G)``; return ``G``."""
    length = torch.as_tensor(s).numel()
    if length == 0 or length % n:
        raise ValueError(f"{where}: the common sequences have {length} values, not a positive "
                         f"multiple of the layer's n_in={n}")
    groups = length // n
    if groups > m:
        raise ValueError(f"{where}: {groups} common sequences for {m} rows (at most one per "
                         f"row)")
    if group is not None:
        group = torch.as_tensor(group).reshape(-1)
        if group.numel() != m:
            raise ValueError(f"{where}: {group.numel()} row groups for {m} rows")
        bad = ((group < 0) | (group >= groups)).nonzero()
        if bad.numel():
            j = int(bad[0])
            raise ValueError(f"{where}: row {j} is in group {int(group[j])}, but there are "
                             f"{groups} common sequences (groups 0..{groups - 1})")
    return groups


@dataclass
class PermAffineWeights:
    """The record of a ``perm_affine`` layer, all int64.

    ``s`` ``(G*N,)``: the ``G`` common sequences one after the other; per row (``(M,)``):
    ``a`` (first difference), ``b`` (offset), ``e`` (second difference; None: all zero, the
    affine family) and ``group`` (None: all in group 0).

    ``order`` is the compiler's (a network cache never holds it): ``(c, hw, tn)`` when the
    layer's inputs are a ``c x hw`` conv output in the neuron buffer's order for ``tn`` lanes
    (:func:`slimnfu.formats.layout.buffer_order`, :meth:`PermAffineFormat.relayout_input`):
    input ``j`` of the layer is flatten index ``src[j]``, a padding input when ``src[j] <
    0``; ``N = c*hw`` then, not the layer's ``n_in``.
    """

    s: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    e: torch.Tensor = None
    group: torch.Tensor = None
    order: tuple = dataclasses.field(default=None, metadata={"omit_none": True})

    def __post_init__(self):
        if self.order is not None:
            self.order = tuple(int(v) for v in self.order)

    def seq_len(self, n):
        """``N``, the length of one common sequence of a layer of ``n`` inputs."""
        return self.order[0] * self.order[1] if self.order else n

    def groups(self, n):
        """``G``: how many sequences of ``N`` values ``s`` holds (``n``: the layer's
        inputs)."""
        return max(1, torch.as_tensor(self.s).numel() // self.seq_len(n))

    def family(self):
        """``"quadratic"`` when a row has a nonzero second difference, else ``"affine"``."""
        return "quadratic" if self.e is not None and bool(self.e.any()) else "affine"

    def row_groups(self):
        """Each row's group (int64 ``(M,)``)."""
        if self.group is None:
            return torch.zeros(torch.as_tensor(self.a).numel(), dtype=torch.int64)
        return torch.as_tensor(self.group, dtype=torch.int64).reshape(-1)

    def indices(self, n, where="layer"):
        """Absolute indices into ``s``: ``group_j*N + pi_j(i)`` (int64 ``(M, n)``), checked;
        with ``order``, over the buffer's order, -1 at the padding inputs."""
        m, seq = torch.as_tensor(self.a).numel(), self.seq_len(n)
        check_groups(self.s, self.group, seq, m, where)
        pi = generated_perms(self.a, self.b, self.e, seq, where)
        idx = self.row_groups().reshape(-1, 1) * seq + pi
        if not self.order:
            return idx
        c, hw, tn = self.order
        src = layout.buffer_order(c, hw, 1, tn)
        if src.numel() != n:
            raise ValueError(f"{where}: {c} channels of {hw} pixels on tn={tn} are "
                             f"{src.numel()} buffer values, the layer has n_in={n}")
        idx = idx[:, src.clamp(min=0)]
        idx[:, src < 0] = -1
        return idx


@dataclass
class PermIndexWeights:
    """The record of a ``perm_index`` layer: ``s`` ``(N,)`` and the index ROM ``idx``
    ``(M, N)``, int64."""

    s: torch.Tensor
    idx: torch.Tensor

    def seq_len(self, n):
        return n

    def groups(self, n):
        return 1

    def indices(self, n, where="layer"):
        return self.idx


def gather_weights(ql):
    """The integer ``W`` of a perm-format layer: ``s[idx]`` (int64 ``(M, n_in)``; 0 at the
    padding inputs of a re-laid layer)."""
    rec = ql.compressed
    idx = rec.indices(ql.desc.n_in, ql.name)
    return torch.where(idx < 0, 0, rec.s[idx.clamp(min=0)])


class _PermFormat(WeightFormat):
    """What both permuted-FC formats share: ``s``, the biases and the PWL table."""

    feature = "perm"
    variant = None
    grouped = False

    def _perm_items(self, ql, dw):
        raise NotImplementedError

    def items(self, ql, dw, acc):
        d = ql.desc
        rec = ql.compressed
        g, n = rec.groups(d.n_in), rec.seq_len(d.n_in)
        return [StoredItem("s", g * n, dw), StoredItem("bias", d.n_out, acc),
                *self._perm_items(ql, dw)] + pwl_items(ql, dw)

    def macs(self, ql):
        return ql.desc.macs()

    def validate(self, ql, dw, acc):
        super().validate(ql, dw, acc)
        d, rec = ql.desc, ql.compressed
        if d.kind != "fc":
            raise ValueError(f"desc.kind: format {self.name!r} needs an fc layer, not {d.kind}")
        self._check_s(rec, d)
        check_tensor("compressed.s", rec.s, (rec.groups(d.n_in) * rec.seq_len(d.n_in),), dw)
        if not torch.equal(gather_weights(ql), ql.w):
            raise ValueError("w: differs from the common sequence gathered by the permutations")

    def _check_s(self, rec, desc):
        check_sequence(rec.s, desc.n_in, "compressed.s")

    def params(self, ql):
        rec, n = ql.compressed, ql.desc.n_in
        return rec.groups(n) * rec.seq_len(n) + ql.desc.n_out

    def pass_desc(self, ql):
        return PassDesc(ql.desc, perm=self.variant)

    def _perm_memory(self, ql, cfg):
        raise NotImplementedError

    def memories(self, ql, cfg):
        # s goes into every SB bank: a perm_affine pass reads each at its lane's address
        mem = {"s": Words(LoadSel.SB, layout.pack_perm_s(ql.compressed.s, cfg), cfg.dw,
                          lanes=cfg.tn * cfg.ti),
               "bias": bias_words(ql.b, cfg), **self._perm_memory(ql, cfg)}
        if ql.desc.act == "pwl":
            mem["pwl"] = pwl_words(ql.pwl, cfg)
        return mem

    def _shapes(self, desc, cfg):
        raise NotImplementedError

    def _restore_perm(self, words, desc, cfg, fname):
        raise NotImplementedError

    def _stored_groups(self, entry, files, desc):
        """``G`` as the stored ``s`` says (1 when it says nothing usable: the shape check
        then names the problem)."""
        return 1

    def restore(self, entry, files, contents, desc, cfg, where):
        """Checks the listed items, every file's shape, the common sequence's length against
        ``n_in``, and that the affine parameters / index ROM are permutations."""
        if desc.kind != "fc":
            raise ImageError("manifest.json", f"{where}.desc",
                             f"format {self.name!r} needs an fc layer, not {desc.kind}")
        co = desc.tiles(cfg)[1]
        groups = self._stored_groups(entry, files, desc)
        shapes = {"s": (groups * desc.n_in, cfg.dw), "bias": (co, cfg.tn * cfg.acc),
                  **self._shapes(desc, cfg)}
        if desc.act == "pwl":
            shapes["pwl"] = pwl_shape(cfg)

        def explain_s(words, width):
            if width == cfg.dw:
                return (f"the common sequences have {words} values, not a positive multiple "
                        f"of the layer's n_in={desc.n_in}" if self.grouped else
                        f"the common sequence has {words} values but the layer has "
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
    """Rows as generated permutations (affine or quadratic) of one of ``G`` sequences."""

    name = "perm_affine"
    variant = "affine"
    record = PermAffineWeights
    grouped = True

    def _perm_items(self, ql, dw):
        d, rec = ql.desc, ql.compressed
        fields = 3 if rec.family() == "quadratic" else 2
        out = [StoredItem("perm_ab", fields * d.n_out, index_bits(rec.seq_len(d.n_in)))]
        g = rec.groups(d.n_in)
        if g > 1:
            out.append(StoredItem("perm_group", d.n_out, index_bits(g)))
        return out

    def _check_s(self, rec, desc):
        check_groups(rec.s, rec.group, rec.seq_len(desc.n_in), desc.n_out, "compressed.s")

    def configure(self, cfg, layers):
        # s is held in SB (a copy per multiplier lane): SB as deep as perm.depth at least;
        # quadratic rows need the generators' second differences
        need = max(ql.compressed.groups(ql.desc.n_in) * ql.compressed.seq_len(ql.desc.n_in)
                   for ql in layers)
        perm = cfg.perm or PermParams()
        depth = max(perm.depth, 1 << max(0, need - 1).bit_length())
        quadratic = perm.quadratic or any(ql.compressed.family() == "quadratic"
                                          for ql in layers)
        return cfg.with_(sb_depth=max(cfg.sb_depth, depth),
                         perm=dataclasses.replace(perm, depth=depth, quadratic=quadratic))

    def pass_desc(self, ql):
        order = ql.compressed.order
        return PassDesc(ql.desc, perm=self.variant, flatten=order[:2] if order else ())

    def _perm_memory(self, ql, cfg):
        rec = ql.compressed
        n = rec.seq_len(ql.desc.n_in)
        words = layout.pack_perm_params(rec.a, rec.b, cfg, n, rec.e, rec.row_groups(),
                                        hw=rec.order[1] if rec.order else 1)
        return {"perm_ab": Words(LoadSel.PERM_PARAM, words, perm_param_width(cfg))}

    def relayout_input(self, ql, src):
        # Only a conv output in the buffer's order (layout.buffer_order, hw > 1 pixels) of
        # affine rows: the address generators walk the flatten order over it (rtl/perm_addr).
        rec, n = ql.compressed, ql.desc.n_in
        if rec.family() != "affine":
            # A quadratic row's lane difference changes with the channel tile and the pixel,
            # and its step with both: three more chains and four more parameters per row.
            raise ValueError("perm_affine rows of the quadratic family (nonzero second "
                             "differences e) cannot be walked in the neuron buffer's order of "
                             "a conv output; use the affine family for an FC layer after a "
                             "conv output of more than one pixel")
        if rec.order or n < 2:
            return None
        at = (src == 1).nonzero()
        if not at.numel():
            return None
        tn = int(at[0, 0])
        for hw in range(2, n + 1):
            c = n // hw
            if n % hw or tn < 1 or src.numel() != -(-c // tn) * tn * hw:
                continue
            if torch.equal(layout.buffer_order(c, hw, 1, tn), src):
                w = torch.cat([ql.w, ql.w.new_zeros(ql.desc.n_out, 1)], 1)[:, src]
                return relaid_layer(ql, w, dataclasses.replace(rec, order=(c, hw, tn)))
        return None

    def _shapes(self, desc, cfg):
        return {"perm_ab": (desc.tiles(cfg)[1], perm_param_width(cfg))}

    def _stored_groups(self, entry, files, desc):
        fname = entry["files"].get("s") if isinstance(entry.get("files"), dict) else None
        words = files.get(fname, {}).get("words") if isinstance(fname, str) else None
        if isinstance(words, int) and words > 0 and words % desc.n_in == 0:
            return words // desc.n_in
        return 1

    def _restore_perm(self, s, words, desc, cfg, fname):
        a, b, e, group = layout.unpack_perm_params(words, desc.n_out, desc.n_in,
                                                   s.numel() // desc.n_in, cfg)
        return PermAffineWeights(s, a, b, e if bool(e.any()) else None,
                                 group if bool(group.any()) else None)


class PermIndexFormat(_PermFormat):
    """Rows as arbitrary permutations of one sequence, stored as an index ROM."""

    name = "perm_index"
    variant = "index"
    record = PermIndexWeights
    #: the engine runs the gathered weights (:meth:`passes`): no method hardware
    feature = None

    def _perm_items(self, ql, dw):
        d = ql.desc
        return [StoredItem("perm_index", d.n_out * d.n_in, index_bits(d.n_in))]

    def _perm_memory(self, ql, cfg):
        return {"perm_index": Words(LoadSel.SB, layout.pack_perm_index(ql.compressed.idx, cfg),
                                    cfg.tn * cfg.ti * cfg.dw)}

    def passes(self, ql, cfg):
        # The engine takes an index layer as its gathered weights, W[r, c] = s[idx[r, c]], in
        # SB: the same words as the index ROM (an index a lane, dw bits), so the same load and
        # cycles, and no s (the image stores s and the index ROM; accounting counts those).
        return [EnginePass(ql.name, self.pass_desc(ql), dense_memories(ql.desc, ql.w, ql.b,
                                                                         ql.pwl, cfg),
                           max_abs_bias=max_abs(ql.b))]

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
