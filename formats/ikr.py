"""The IKR format (method B): every KxK kernel keeps ``n`` taps of one of ``P`` patterns.

It needs ``cfg.ikr``: the lane unit (``ikr.lanes``, :mod:`slimnfu.rtl.ikr_lane_unit`, ``n``
cycles a kernel group), when the ``tn`` kernels of each output tile share a pattern per input
channel (:func:`unshared_pattern`), or else the window decoder (:mod:`slimnfu.rtl.ikr_unit`);
:meth:`IkrFormat.configure` picks the one the program's IKR layers can run on.

Stored per layer: the kept values (``n`` SB words per tile pair instead of ``k*k``), the
biases and the PWL table, and for the window decoder one ``ceil(log2 P)``-bit pattern index
per kernel (the IKR index memory, one word per tile pair) and the pattern table (``n`` words,
each the ``s``-th tap of all ``P`` slots as ``ky*ikr_kmax + kx``); for the lane unit a tap
word per SB word (each input lane's tap ``ky*k + kx``) and the layer's ``k*k``-word tap table
(:func:`slimnfu.formats.layout.pack_ikr_taps`, :func:`~slimnfu.formats.layout.
pack_ikr_lane_table`). The decoder runs a kernel group in ``max(n, k)`` cycles, or in a layer
of at most ``cfg.ikr.tiles`` input tiles ``max(n, stride)`` while the window slides and ``n``
for the pixel's output tiles after the first (``PassDesc.ikr_cycles``); ``configure`` gives
it a window bank per input tile of the program's IKR layers, within
:data:`WINDOW_BANK_BITS`, and a window as wide as their largest kernel.
"""

import math
from dataclasses import dataclass, field, replace

import torch

from slimnfu.config import IkrParams, PassDesc
from slimnfu.contract import LoadSel, ikr_index_bits, ikr_lane_table_width, ikr_tap_bits
from slimnfu.formats import layout
from slimnfu.formats.base import (ImageError, StoredItem, WeightFormat, Words, check_items,
                                  common_memories, crop_padding, pwl_items, pwl_shape, unpack_bias,
                                  unpack_pwl)
from slimnfu.formats.qmodel import QLayer

__all__ = ["IkrWeights", "IkrFormat", "check_ikr", "ikr_values", "unshared_pattern",
           "WINDOW_BANK_BITS"]

#: Register bits :meth:`IkrFormat.configure` lets the pattern decoder's window banks take
#: (``ikr.tiles * ikr.kmax**2 * ti * dw``): at ``kmax = 5``, 2 banks on ``diannao`` and 10 on
#: ``tiny``; at ``kmax = 3``, 7 and 28.
WINDOW_BANK_BITS = 16384


@dataclass
class IkrWeights:
    """The record of an IKR layer (``QLayer.compressed``).

    Parameters
    ----------
    patterns : torch.Tensor
        ``(P, n)`` int64: each pattern's taps ``ky*k + kx``, ascending.
    index : torch.Tensor
        ``(O, C)`` int64: the pattern of each kernel.
    """

    patterns: torch.Tensor = field(metadata={"state_key": "ikr_patterns"})
    index: torch.Tensor = field(metadata={"state_key": "ikr_index"})

    @property
    def taps(self):
        """``n``: the taps each kernel keeps (the engine pass's ``ikr_n``)."""
        return int(self.patterns.shape[1]) if self.patterns.dim() == 2 else 0


def check_ikr(name, k, n, library, index, patterns_max=16):
    """Raise ``ValueError`` naming layer ``name`` and the field when the IKR data are invalid.

    Checks: ``1 <= n <= k*k``; the table has at most ``patterns_max`` patterns, each with
    exactly ``n`` distinct taps in ``[0, k*k)``; every index lies in the table.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= k * k:
        raise ValueError(f"layer {name}: n={n!r} must be in [1, K*K={k * k}]")
    rows = library.tolist() if isinstance(library, torch.Tensor) else [list(r) for r in library]
    if not 1 <= len(rows) <= patterns_max:
        raise ValueError(f"layer {name}: the pattern table must have 1 <= P <= {patterns_max} "
                         f"patterns, not {len(rows)}")
    for p, row in enumerate(rows):
        if len(row) != n or len(set(row)) != n:
            raise ValueError(f"layer {name}: pattern {p} has {len(set(row))} distinct taps, "
                             f"but n={n}")
        if min(row) < 0 or max(row) >= k * k:
            raise ValueError(f"layer {name}: pattern {p} has a tap outside [0, {k * k})")
    index = torch.as_tensor(index)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(rows)):
        bad = int(index.max()) if int(index.max()) >= len(rows) else int(index.min())
        raise ValueError(f"layer {name}: pattern index {bad} is outside the table of "
                         f"{len(rows)} patterns")


def unshared_pattern(index, tn):
    """The first ``(output tile, input channel)`` of ``index (O, C)`` whose kernels (output
    channels ``tile*tn`` to ``tile*tn + tn - 1``) have different patterns, or ``None`` when
    every output tile of ``tn`` channels shares one pattern per input channel: what the lane
    IKR unit (``ikr.lanes``, :func:`slimnfu.formats.layout.pack_ikr_taps`) needs."""
    idx = torch.as_tensor(index)
    for o in range(0, idx.shape[0], tn):
        differ = (idx[o:o + tn] != idx[o]).any(0).nonzero()
        if differ.numel():
            return o // tn, int(differ[0])
    return None


def ikr_values(ql):
    """Kept integer weights ``(O, C, n)`` of an IKR :class:`QLayer`, in pattern tap order."""
    rec = ql.compressed
    o, c = rec.index.shape
    return ql.w.reshape(o, c, -1).gather(2, rec.patterns[rec.index])


def _unpack_table(words, p, k, cfg, fname):
    """Pattern table words -> ``(P, n)`` taps ``ky*k + kx``; entries past ``P`` must be 0."""
    bits = ikr_tap_bits(cfg)
    phys = layout.unpack_words(words, cfg.ikr.patterns, bits) & ((1 << bits) - 1)  # (n, slots)
    if int(phys[:, p:].abs().sum()):
        raise ImageError(fname, "table", f"entries past the manifest's ikr_patterns={p} must "
                                         f"be zero")
    ky, kx = phys[:, :p] // cfg.ikr.kmax, phys[:, :p] % cfg.ikr.kmax
    if bool((ky >= k).any() or (kx >= k).any()):
        raise ImageError(fname, "table", f"a tap lies outside the {k}x{k} kernel")
    return (ky * k + kx).t().contiguous()


def _unpack_lane_taps(data, n, desc, cfg, fn):
    """The lane IKR unit's tap words (and its tap table, checked against the layer's) back to
    a pattern table ``(P', n)`` and an index ``(O, C)``: the distinct tap rows the output
    tiles use (in another order than the table written, perhaps, with the same weights;
    ``restore`` checks them and that there are at most the manifest's ``ikr_patterns``)."""
    if [int(v) for v in data["ikr_table"]] != layout.pack_ikr_lane_table(desc.k, desc.w_in, cfg):
        raise ImageError(fn["ikr_table"], "values",
                         f"must be the tap offsets of a {desc.k}x{desc.k} kernel over input "
                         f"rows of {desc.w_in} words (slimnfu.formats.layout.pack_ikr_lane_table)")
    ci, co = desc.tiles(cfg)
    bits = ikr_tap_bits(cfg)
    lanes = layout.unpack_words(data["ikr_taps"], cfg.ti, bits) & ((1 << bits) - 1)
    taps = lanes.view(co, ci, n, cfg.ti).permute(0, 1, 3, 2).reshape(co, ci * cfg.ti, n)
    if int(taps[:, desc.n_in:].sum()):
        raise ImageError(fn["ikr_taps"], "padding", f"lanes past n_in={desc.n_in} must be zero")
    taps = taps[:, :desc.n_in]
    if int(taps.max()) >= desc.k ** 2:
        raise ImageError(fn["ikr_taps"], "values",
                         f"a tap lies outside the {desc.k}x{desc.k} kernel")
    lib, tile_index = torch.unique(taps.reshape(-1, n), dim=0, return_inverse=True)
    idx = tile_index.view(co, 1, desc.n_in).expand(co, cfg.tn, desc.n_in)
    return lib, idx.reshape(co * cfg.tn, desc.n_in)[:desc.n_out].clone()


class IkrFormat(WeightFormat):
    """IKR pattern pruning: ``n`` values per kernel plus a pattern index (method B)."""

    name = "ikr"
    title = "IKR"
    feature = "ikr"
    record = IkrWeights
    image_keys = frozenset({"ikr_patterns", "ikr_n"})

    def configure(self, cfg, layers):
        """``cfg`` with ``ikr`` on, a window as wide as the largest kernel of ``layers``
        (``ikr.kmax``, lowered or raised to it, at most :attr:`IkrParams.MAX_KMAX`: a 3x3
        network needs no 5x5 window, whose registers, tap selects and NBin row reads cost
        area), and a window bank per input tile of the widest of ``layers`` (``ikr.tiles``,
        never lowered), so that their windows slide; at most as many banks as fit in
        :data:`WINDOW_BANK_BITS` (at least one): a wider layer refills its windows
        (:meth:`slimnfu.config.PassDesc.ikr_cycles`)."""
        cfg = super().configure(cfg, layers)
        if cfg.ikr.lanes and any(unshared_pattern(ql.compressed.index, cfg.tn) is not None
                                 for ql in layers):
            cfg = cfg.with_(ikr=replace(cfg.ikr, lanes=False))
        k = max(ql.desc.k for ql in layers)
        kmax = k if k <= IkrParams.MAX_KMAX else cfg.ikr.kmax
        need = max(-(-ql.desc.n_in // cfg.ti) for ql in layers)
        bank = kmax ** 2 * cfg.ti * cfg.dw
        cap = max(1, min(IkrParams.MAX_TILES, WINDOW_BANK_BITS // bank))
        tiles = max(cfg.ikr.tiles, min(need, cap))
        ikr = replace(cfg.ikr, kmax=kmax, tiles=tiles)
        return cfg if ikr == cfg.ikr else cfg.with_(ikr=ikr)

    def validate(self, ql, dw, acc):
        super().validate(ql, dw, acc)
        rec, d = ql.compressed, ql.desc
        if d.kind != "conv":
            raise ValueError(f"desc.kind: an IKR layer is a conv, not {d.kind}")
        if rec.patterns.dim() != 2:
            raise ValueError(f"compressed.patterns: must be (P, n), not of shape "
                             f"{tuple(rec.patterns.shape)}")
        if tuple(rec.index.shape) != (d.n_out, d.n_in):
            raise ValueError(f"compressed.index: has shape {tuple(rec.index.shape)}, the layer "
                             f"needs ({d.n_out}, {d.n_in})")
        check_ikr(ql.name, d.k, rec.taps, rec.patterns, rec.index)
        mask = torch.zeros(d.n_out, d.n_in, d.k * d.k, dtype=torch.bool)
        mask.scatter_(2, rec.patterns[rec.index], True)
        if bool((ql.w.reshape(d.n_out, d.n_in, -1)[~mask] != 0).any()):
            raise ValueError("w: a weight lies off its kernel's IKR pattern")

    def items(self, ql, dw, acc):
        d = ql.desc
        p, n = ql.compressed.patterns.shape
        kernels = d.n_out * d.n_in
        return [StoredItem("ikr_values", kernels * n, dw),
                StoredItem("ikr_index", kernels, max(1, math.ceil(math.log2(p)))),
                StoredItem("ikr_table", p * n, max(1, math.ceil(math.log2(d.k * d.k)))),
                StoredItem("bias", d.n_out, acc)] + pwl_items(ql, dw)

    def macs(self, ql):
        d = ql.desc
        return d.h_out * d.w_out * d.n_out * d.n_in * ql.compressed.taps

    def params(self, ql):
        d = ql.desc
        return d.n_out * d.n_in * ql.compressed.taps + d.n_out

    def pass_desc(self, ql):
        return PassDesc(ql.desc, ikr_n=ql.compressed.taps)

    def memories(self, ql, cfg):
        rec = ql.compressed
        if rec.patterns.shape[0] > cfg.ikr.patterns or ql.desc.k > cfg.ikr.kmax:
            raise ValueError(f"layer {ql.name}: P={rec.patterns.shape[0]} patterns of a "
                             f"{ql.desc.k}x{ql.desc.k} kernel do not fit config {cfg.name!r} "
                             f"(ikr.patterns={cfg.ikr.patterns}, ikr.kmax={cfg.ikr.kmax})")
        mem = {"ikr_values": Words(LoadSel.SB, layout.pack_ikr_weights(ikr_values(ql), cfg),
                                   cfg.tn * cfg.ti * cfg.dw)}
        if cfg.ikr.lanes:
            # the lane unit: a tap per input lane and SB word, and the layer's tap offsets
            bad = unshared_pattern(rec.index, cfg.tn)
            if bad is not None:
                o, c = bad
                raise ValueError(
                    f"layer {ql.name}: output channels {o * cfg.tn}.."
                    f"{min(o * cfg.tn + cfg.tn, rec.index.shape[0]) - 1} (output tile {o}) have "
                    f"different IKR patterns for input channel {c}: the lane IKR unit "
                    f"(ikr.lanes) needs one per input channel and output tile of tn={cfg.tn} "
                    f"channels (prune with IkrOptions.share={cfg.tn}, slimnfu run --ikr-share "
                    f"{cfg.tn}), or the window decoder (--set ikr.lanes=0)")
            taps = layout.pack_ikr_taps(rec.patterns, rec.index[::cfg.tn], cfg)
            mem["ikr_taps"] = Words(LoadSel.IKR_INDEX, taps, cfg.ti * ikr_tap_bits(cfg))
            mem["ikr_table"] = Words(LoadSel.IKR_TABLE,
                                     layout.pack_ikr_lane_table(ql.desc.k, ql.desc.w_in, cfg),
                                     ikr_lane_table_width(cfg))
        else:
            mem["ikr_index"] = Words(LoadSel.IKR_INDEX, layout.pack_ikr_index(rec.index, cfg),
                                     cfg.tn * cfg.ti * ikr_index_bits(cfg))
            mem["ikr_table"] = Words(LoadSel.IKR_TABLE,
                                     layout.pack_ikr_table(rec.patterns, ql.desc.k, cfg),
                                     cfg.ikr.patterns * ikr_tap_bits(cfg))
        mem.update(common_memories(ql.desc, ql.b, ql.pwl, cfg))
        return mem

    def image_entry(self, ql):
        return {"ikr_patterns": int(ql.compressed.patterns.shape[0]),
                "ikr_n": ql.compressed.taps}

    def restore(self, entry, files, contents, desc, cfg, where):
        """Checks the listed items and every file's shape against ``desc`` and the manifest's
        ``ikr_n`` (taps per pattern) and ``ikr_patterns``, then :func:`check_ikr` (distinct
        taps, indices inside the table), naming the file. With ``cfg.ikr.lanes`` the items are
        the tap words and the tap table (checked against the layer's), and the pattern table
        is rebuilt from the tap rows the output tiles use (:func:`_unpack_lane_taps`)."""
        if desc.kind != "conv":
            raise ImageError("manifest.json", f"{where}.desc",
                             f"format 'ikr' needs a conv layer, not {desc.kind}")
        n = entry["ikr_n"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= desc.k ** 2:
            raise ImageError("manifest.json", f"{where}.ikr_n",
                             f"must be an integer in [1, k*k={desc.k ** 2}], not {n!r}")
        p = entry["ikr_patterns"]
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= cfg.ikr.patterns:
            raise ImageError("manifest.json", f"{where}.ikr_patterns",
                             f"must be an integer in [1, {cfg.ikr.patterns}], not {p!r}")
        ci, co = desc.tiles(cfg)
        table_width = cfg.ikr.patterns * ikr_tap_bits(cfg)
        shapes = {"ikr_values": (ci * co * n, cfg.tn * cfg.ti * cfg.dw),
                  "bias": (co, cfg.tn * cfg.acc)}
        if cfg.ikr.lanes:
            shapes.update(ikr_taps=(ci * co * n, cfg.ti * ikr_tap_bits(cfg)),
                          ikr_table=(desc.k ** 2, ikr_lane_table_width(cfg)))
        else:
            shapes.update(ikr_index=(ci * co, cfg.tn * cfg.ti * ikr_index_bits(cfg)),
                          ikr_table=(n, table_width))
        if desc.act == "pwl":
            shapes["pwl"] = pwl_shape(cfg)

        def explain_table(words, width):
            if width == table_width and not cfg.ikr.lanes:
                return f"holds {words} taps per pattern, but {where}.ikr_n is {n}"
            return None

        data = check_items(entry, files, contents, shapes, self.name, desc, where,
                           "manifest.json", explain={"ikr_table": explain_table})
        fn = entry["files"]
        if cfg.ikr.lanes:
            lib, idx = _unpack_lane_taps(data, n, desc, cfg, fn)
            index_file = table_file = fn["ikr_taps"]
        else:
            lib = _unpack_table(data["ikr_table"], p, desc.k, cfg, fn["ikr_table"])
            ib = ikr_index_bits(cfg)
            lanes = layout.unpack_words(data["ikr_index"], cfg.tn * cfg.ti, ib) & ((1 << ib) - 1)
            idx = crop_padding(lanes.view(co, ci, cfg.tn, cfg.ti).permute(0, 2, 1, 3)
                               .reshape(co * cfg.tn, ci * cfg.ti), desc, fn["ikr_index"])
            index_file, table_file = fn["ikr_index"], fn["ikr_table"]
        try:
            check_ikr(entry["name"], desc.k, n, lib, idx, cfg.ikr.patterns)
        except ValueError as exc:
            bad_index = "pattern index" in str(exc)
            raise ImageError(index_file if bad_index else table_file, "values",
                             str(exc)) from None
        if lib.shape[0] > p:
            raise ImageError(table_file, "values", f"holds {lib.shape[0]} distinct patterns, but "
                                                   f"the manifest's ikr_patterns is {p}")
        lanes = layout.unpack_words(data["ikr_values"], cfg.tn * cfg.ti, cfg.dw)
        v = crop_padding(lanes.view(co, ci, n, cfg.tn, cfg.ti).permute(0, 3, 1, 4, 2)
                         .reshape(co * cfg.tn, ci * cfg.ti, n), desc, fn["ikr_values"])
        w = torch.zeros(desc.n_out, desc.n_in, desc.k * desc.k, dtype=torch.int64)
        w.scatter_(2, lib[idx], v)
        bias = unpack_bias(data["bias"], desc, cfg, fn["bias"])
        pwl = unpack_pwl(data["pwl"], desc, cfg, fn["pwl"]) if "pwl" in data else None
        return QLayer(entry["name"], desc, w.view(desc.n_out, desc.n_in, desc.k, desc.k), bias,
                      entry["f_x"], entry["f_w"], entry["f_y"], pwl, entry["act_func"],
                      self.name, IkrWeights(lib, idx))
