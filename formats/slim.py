"""The slim format (method A): per-filter kernel sizes and linearly approximated features.

A slim conv layer keeps ``n_out`` filters of the layer's ``K x K`` kernel, filter ``j`` using
only its centred ``ksize[j] x ksize[j]`` taps, in export order (kernel size, largest first),
and computes ``n_approx`` more features as a 1x1 conv over the kept ones
(``approx_w`` at ``approx_f`` fractional bits, ``approx_b``, the layer's activation).

It runs as several engine passes (:func:`passes`): one per run of equal-kernel tiles of ``tn``
filters, each walking only its ``k_t x k_t`` centre taps (``koff``) and writing its tiles in
place (``nbout_base``); a tile that mixes sizes runs at its largest kernel with the smaller
lanes gated (``lane_k``); then the 1x1 approximation pass over the kept outputs, which fills
the tile the kept features began (``lane_skip``). It needs ``cfg.kgate``
(:mod:`slimnfu.rtl.kernel_gate`).

As the first layer of a network with few input channels it may run as im2col
(:meth:`SlimFormat.im2col`): a 1x1 layer over the image's patches, centre taps first, so a
run of tiles whose largest kernel is ``k_t`` reads only the ``n_in*k_t*k_t`` first patch
channels (no gating: the smaller filters' outer taps are zero weights).

Stored (the weight image): the centred weights and the biases of every kernel pass, the
approximation pass's weights and biases, and the PWL table once; the manifest entry holds
``K``, ``ksize``, the channel ``order`` and the positions of kept and approximated features.
"""

import math
from dataclasses import dataclass, field, replace

import torch

from slimnfu import fixed
from slimnfu.config import LayerDesc, PassDesc
from slimnfu.formats import layout
from slimnfu.formats.base import (EnginePass, ImageError, StoredItem, WeightFormat, check_items,
                                  check_tensor, im2col_desc, max_abs, pwl_items, pwl_shape,
                                  pwl_words, unpack_bias, unpack_pwl, unpack_weights)
from slimnfu.formats.dense import dense_memories
from slimnfu.formats.qmodel import QLayer

__all__ = ["SlimWeights", "SlimFormat", "check_kernel_sizes", "tile_map",
           "passes", "pass_operands", "approx_desc", "slim_layer_run"]


def check_kernel_sizes(ksize, K, where="layer"):
    """Refuse a kernel size that is even, < 1, or larger than the layer's ``K``."""
    for j, k in enumerate(int(v) for v in ksize):
        if k < 1 or k > K:
            raise ValueError(f"{where}: kernel size {k} of filter {j} is larger than the "
                             f"layer's K={K}" if k > K else
                             f"{where}: kernel size {k} of filter {j} must be >= 1")
        if k % 2 == 0:
            raise ValueError(f"{where}: kernel size {k} of filter {j} is even; lower kernels "
                             f"are odd and centred (K={K})")


@dataclass
class SlimWeights:
    """The record of a slim conv layer (``QLayer.compressed``).

    Parameters
    ----------
    K : int
        The layer's kernel size (``desc.k``).
    ksize : torch.Tensor
        ``(n_out,)`` int64: each kept filter's odd kernel size, in export order.
    n_approx : int
        Approximated features.
    order : list of int
        The original index of every output channel (kept ones, then approximated ones).
    kept_pos, approx_pos : list of int
        Output positions of the kept and the approximated features.
    approx_w : torch.Tensor or None
        ``(n_approx, n_out)`` int64 coefficients at ``approx_f`` fractional bits.
    approx_b : torch.Tensor or None
        ``(n_approx,)`` int64 biases at ``f_y + approx_f``.
    approx_f : int or None
    patch_n_in, patch_ksize : int, torch.Tensor or None
        Only in the 1x1 layer :meth:`SlimFormat.im2col` makes (None otherwise, and never
        stored): the image's channels and each filter's kernel size in the original layer;
        filter ``j`` reads the first ``patch_n_in * patch_ksize[j]**2`` patch channels.
    """

    K: int
    ksize: torch.Tensor
    n_approx: int
    order: list
    kept_pos: list
    approx_pos: list = field(default_factory=list)
    approx_w: torch.Tensor = None
    approx_b: torch.Tensor = None
    approx_f: int = None
    patch_n_in: int = None
    patch_ksize: torch.Tensor = None


def tile_map(ksize, tn):
    """Per tile of ``tn`` filters (in export order): the lane kernel sizes and the tile's
    pass kernel (the largest of its lanes)."""
    ks = [int(k) for k in ksize]
    return [{"lanes": ks[t:t + tn], "k": max(ks[t:t + tn])} for t in range(0, len(ks), tn)]


def passes(layer, tn):
    """The kernel passes of a slim conv layer: one per run of equal tiles of :func:`tile_map`
    (kernel ``k_t``, its filters, the lane kernel sizes, and the descriptor with the centred
    window: ``pad' = max(0, pad - off)``, input cropped by ``max(0, off - pad)`` on each side,
    ``off = (K - k_t) // 2``)."""
    d, rec = layer.desc, layer.compressed
    K = rec.K
    out, start = [], 0
    tiles = tile_map(rec.ksize, tn)
    t = 0
    while t < len(tiles):
        u = t
        while (u + 1 < len(tiles) and tiles[u + 1]["k"] == tiles[t]["k"]
               and len(set(tiles[u + 1]["lanes"])) == 1 and len(set(tiles[t]["lanes"])) == 1):
            u += 1
        kt = tiles[t]["k"]
        n = sum(len(tt["lanes"]) for tt in tiles[t:u + 1])
        off = (K - kt) // 2
        crop, pad = max(0, off - d.pad), max(0, d.pad - off)
        pd = LayerDesc("conv", d.n_in, n, d.h_in - 2 * crop, d.w_in - 2 * crop, k=kt,
                       stride=d.stride, pad=pad, shift=d.shift, act=d.act,
                       seg_shift=d.seg_shift)
        lanes = tiles[t]["lanes"] if len(set(tiles[t]["lanes"])) > 1 else None
        out.append({"filters": (start, start + n), "k": kt, "off": off, "crop": crop,
                    "desc": pd, "lane_k": lanes})
        start += n
        t = u + 1
    return out


def pass_operands(layer, p, x):
    """Input, centre-cropped weights and biases of pass ``p`` of :func:`passes` for int64
    input ``x`` ``(N, C, H, W)``."""
    lo, hi = p["filters"]
    c, off, kt = p["crop"], p["off"], p["k"]
    xx = x[:, :, c:x.shape[2] - c, c:x.shape[3] - c] if c else x
    w = layer.w[lo:hi, :, off:off + kt, off:off + kt]
    return xx, w, layer.b[lo:hi]


def approx_desc(layer):
    """The 1x1 conv pass that computes a slim layer's approximated features."""
    d, rec = layer.desc, layer.compressed
    return LayerDesc("conv", d.n_out, rec.n_approx, d.h_out, d.w_out, k=1, shift=rec.approx_f,
                     act=d.act, seg_shift=d.seg_shift)


def slim_layer_run(layer, x, dw, count=None, by_passes=None):
    """Integer reference of a slim conv layer: the kept conv (or its engine passes with
    ``by_passes=tn``), then the 1x1 approximation pass; channels in export order."""
    rec = layer.compressed
    if by_passes:
        ys = []
        for p in passes(layer, by_passes):
            xx, w, b = pass_operands(layer, p, x)
            ys.append(fixed.run_layer(p["desc"], xx, w, b, dw, layer.pwl, count))
        kept = torch.cat(ys, 1)
    else:
        kept = fixed.run_layer(layer.desc, x, layer.w, layer.b, dw, layer.pwl, count)
    if not rec.n_approx:
        return kept
    apx = fixed.run_layer(approx_desc(layer), kept, rec.approx_w.view(*rec.approx_w.shape, 1, 1),
                          rec.approx_b, dw, layer.pwl, count)
    n = kept.shape[1] + apx.shape[1]
    out = torch.empty(kept.shape[0], n, *kept.shape[2:], dtype=torch.int64)
    out[:, rec.kept_pos] = kept
    out[:, rec.approx_pos] = apx
    return out


def _int_list(value, file, field_name):
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int)
                                          for v in value):
        raise ImageError(file, field_name, f"must be a list of integers, not {value!r}")
    return value


class SlimFormat(WeightFormat):
    """Lower kernels and linear feature approximation (method A)."""

    name = "slim"
    title = "slim (method A)"
    feature = "kgate"
    record = SlimWeights
    image_keys = frozenset({"K", "ksize", "n_approx", "order", "kept_pos", "approx_pos",
                            "approx_f"})

    def out_channels(self, ql):
        return ql.desc.n_out + ql.compressed.n_approx

    def channel_order(self, ql):
        return [int(j) for j in ql.compressed.order]

    def run(self, ql, x, dw, count=None, tn=None):
        return slim_layer_run(ql, x, dw, count, tn)

    def validate(self, ql, dw, acc):
        super().validate(ql, dw, acc)
        rec, d = ql.compressed, ql.desc
        if d.kind != "conv" or rec.K != d.k:
            raise ValueError(f"compressed.K: is {rec.K}, a slim layer is a conv with k = K")
        if tuple(rec.ksize.shape) != (d.n_out,):
            raise ValueError(f"compressed.ksize: has {rec.ksize.numel()} kernel sizes for "
                             f"n_out={d.n_out}")
        check_kernel_sizes(rec.ksize, rec.K, ql.name)
        for j, k in enumerate(int(v) for v in rec.ksize):
            o = (rec.K - k) // 2
            outer = ql.w[j].clone()
            outer[:, o:o + k, o:o + k] = 0
            if bool(outer.any()):
                raise ValueError(f"w: filter {j} has weights outside its {k}x{k} kernel")
        n = d.n_out + rec.n_approx
        if sorted(rec.order) != list(range(n)) or \
                sorted(list(rec.kept_pos) + list(rec.approx_pos)) != list(range(n)):
            raise ValueError(f"compressed.order: order, kept_pos and approx_pos must place "
                             f"the {n} output channels")
        if rec.n_approx:
            check_tensor("compressed.approx_w", rec.approx_w, (rec.n_approx, d.n_out), dw)
            check_tensor("compressed.approx_b", rec.approx_b, (rec.n_approx,), acc)
        if rec.patch_ksize is not None:
            for j, k in enumerate(int(v) for v in rec.patch_ksize):
                if rec.K != 1 or bool(ql.w[j, rec.patch_n_in * k * k:].any()):
                    raise ValueError(f"w: filter {j} of the im2col layer reads patch channels "
                                     f"past its {k}x{k} centre")

    def items(self, ql, dw, acc):
        rec, d = ql.compressed, ql.desc
        ks = [int(k) for k in rec.ksize]
        items = [StoredItem("weights", sum(k * k for k in ks) * d.n_in, dw),
                 StoredItem("bias", d.n_out, acc),
                 StoredItem("kernel_sizes", len(ks),
                            max(1, math.ceil(math.log2(rec.K // 2 + 1))))]
        if rec.n_approx:
            items += [StoredItem("approx_coef", rec.n_approx * d.n_out, dw),
                      StoredItem("approx_bias", rec.n_approx, acc)]
        return items + pwl_items(ql, dw)

    def macs(self, ql):
        rec, d = ql.compressed, ql.desc
        hw = d.h_out * d.w_out
        return hw * d.n_in * sum(int(k) ** 2 for k in rec.ksize) + hw * d.n_out * rec.n_approx

    def params(self, ql):
        rec, d = ql.compressed, ql.desc
        return (d.n_in * sum(int(k) ** 2 for k in rec.ksize) + d.n_out
                + rec.n_approx * (d.n_out + 1))

    def im2col(self, ql):
        d, rec = ql.desc, ql.compressed
        kmax = max(int(k) for k in rec.ksize)
        n = d.n_in * kmax * kmax
        return replace(ql, desc=im2col_desc(d, n), w=layout.patch_weights(ql.w, n),
                       compressed=replace(rec, K=1, ksize=torch.ones_like(rec.ksize),
                                          patch_n_in=d.n_in, patch_ksize=rec.ksize.clone()))

    def _patch_passes(self, ql, cfg):
        """The kernel passes of an im2col layer: one 1x1 pass per run of tiles with the same
        largest original kernel ``k_t``, over the ``patch_n_in*k_t*k_t`` first patch
        channels."""
        d, rec = ql.desc, ql.compressed
        tiles = tile_map(rec.patch_ksize, cfg.tn)
        out, start, t = [], 0, 0
        while t < len(tiles):
            u = t
            while u + 1 < len(tiles) and tiles[u + 1]["k"] == tiles[t]["k"]:
                u += 1
            kt = tiles[t]["k"]
            n = sum(len(tt["lanes"]) for tt in tiles[t:u + 1])
            ch = rec.patch_n_in * kt * kt
            desc = PassDesc(LayerDesc("conv", ch, n, d.h_in, d.w_in, k=1, shift=d.shift,
                                      act=d.act, seg_shift=d.seg_shift),
                            nbout_base=start // cfg.tn * d.h_out * d.w_out)
            out.append((f"{ql.name}.im2col{kt}", desc, ql.w[start:start + n, :ch],
                        ql.b[start:start + n], "layer" if not out else "same"))
            start += n
            t = u + 1
        return out

    def _pass_operands(self, ql, cfg):
        """``[(name, desc, w, b, reads)]`` of every engine pass (see the module docstring)."""
        d, rec = ql.desc, ql.compressed
        hw = d.h_out * d.w_out
        out = self._patch_passes(ql, cfg) if rec.patch_ksize is not None else []
        for n, p in enumerate(passes(ql, cfg.tn) if rec.patch_ksize is None else []):
            lo, hi = p["filters"]
            kt, off = p["k"], p["off"]
            desc = PassDesc(LayerDesc("conv", d.n_in, hi - lo, d.h_in, d.w_in, k=kt,
                                      stride=d.stride, pad=d.pad, shift=d.shift, act=d.act,
                                      seg_shift=d.seg_shift),
                            koff=off, lane_k=tuple(p["lane_k"] or ()),
                            nbout_base=lo // cfg.tn * hw)
            out.append((f"{ql.name}.k{kt}", desc, ql.w[lo:hi, :, off:off + kt, off:off + kt],
                        ql.b[lo:hi], "layer" if n == 0 else "same"))
        if rec.n_approx:
            kept, skip = d.n_out, d.n_out % cfg.tn
            desc = PassDesc(LayerDesc("conv", kept, skip + rec.n_approx, d.h_out, d.w_out, k=1,
                                      shift=rec.approx_f, act=d.act, seg_shift=d.seg_shift),
                            nbout_base=kept // cfg.tn * hw, lane_skip=skip)
            w = torch.cat([torch.zeros(skip, kept, dtype=torch.int64), rec.approx_w])
            b = torch.cat([torch.zeros(skip, dtype=torch.int64), rec.approx_b])
            out.append((f"{ql.name}.approx", desc, w.view(*w.shape, 1, 1), b, "kept"))
        return out

    def passes(self, ql, cfg):
        return [EnginePass(name, desc, dense_memories(desc.layer, w, b, ql.pwl, cfg), reads,
                           max_abs(b))
                for name, desc, w, b, reads in self._pass_operands(ql, cfg)]

    def pass_weights(self, ql, cfg):
        # every pass stores its centred weights dense
        return [(p, w, b, "dense", None) for p, (_, _, w, b, _) in
                zip(self.passes(ql, cfg), self._pass_operands(ql, cfg))]

    def memories(self, ql, cfg):
        mem = {}
        for n, (name, desc, w, b, reads) in enumerate(self._pass_operands(ql, cfg)):
            prefix = "approx" if reads == "kept" else f"pass{n}"
            for item, words in dense_memories(desc.layer, w, b, None, cfg).items():
                if item != "pwl":
                    mem[f"{prefix}.{item}"] = words
        if ql.desc.act == "pwl":
            mem["pwl"] = pwl_words(ql.pwl, cfg)
        return mem

    def image_entry(self, ql):
        rec = ql.compressed
        return {"K": rec.K, "ksize": [int(k) for k in rec.ksize], "n_approx": rec.n_approx,
                "order": [int(j) for j in rec.order],
                "kept_pos": [int(j) for j in rec.kept_pos],
                "approx_pos": [int(j) for j in rec.approx_pos], "approx_f": rec.approx_f}

    def _check_entry(self, entry, desc, where):
        """The manifest fields of a slim layer, type- and range-checked."""
        mf = "manifest.json"
        if desc.kind != "conv" or desc.k % 2 == 0:
            raise ImageError(mf, f"{where}.desc", "format 'slim' needs a conv layer with an odd "
                                                  "k")
        if entry["K"] != desc.k:
            raise ImageError(mf, f"{where}.K", f"is {entry['K']!r}, the layer's desc.k is "
                                               f"{desc.k}")
        ks = _int_list(entry["ksize"], mf, f"{where}.ksize")
        if len(ks) != desc.n_out:
            raise ImageError(mf, f"{where}.ksize", f"has {len(ks)} kernel sizes for "
                                                   f"n_out={desc.n_out} kept filters")
        try:
            check_kernel_sizes(ks, desc.k, f"layer {entry['name']}")
        except ValueError as exc:
            raise ImageError(mf, f"{where}.ksize", str(exc)) from None
        n_apx = entry["n_approx"]
        if isinstance(n_apx, bool) or not isinstance(n_apx, int) or n_apx < 0:
            raise ImageError(mf, f"{where}.n_approx", f"must be an integer >= 0, not {n_apx!r}")
        order = _int_list(entry["order"], mf, f"{where}.order")
        kept = _int_list(entry["kept_pos"], mf, f"{where}.kept_pos")
        apx = _int_list(entry["approx_pos"], mf, f"{where}.approx_pos")
        n = desc.n_out + n_apx
        if sorted(order) != list(range(n)):
            raise ImageError(mf, f"{where}.order", f"must be a permutation of 0..{n - 1}")
        if len(kept) != desc.n_out or len(apx) != n_apx or sorted(kept + apx) != list(range(n)):
            raise ImageError(mf, f"{where}.kept_pos", f"kept_pos and approx_pos must split the "
                                                      f"{n} output positions into n_out="
                                                      f"{desc.n_out} and n_approx={n_apx}")
        f = entry["approx_f"]
        if n_apx and (isinstance(f, bool) or not isinstance(f, int) or f < 0):
            raise ImageError(mf, f"{where}.approx_f", f"must be an integer >= 0, not {f!r}")
        return SlimWeights(desc.k, torch.tensor(ks, dtype=torch.int64), n_apx, order, kept, apx,
                           approx_f=f if n_apx else None)

    def restore(self, entry, files, contents, desc, cfg, where):
        """Checks the manifest fields (kernel sizes, channel order, basis), every pass's files
        against the passes the kernel sizes give, and that no weight lies outside its filter's
        kernel size or in a lane another pass owns."""
        rec = self._check_entry(entry, desc, where)
        if rec.n_approx:
            rec.approx_w = torch.zeros(rec.n_approx, desc.n_out, dtype=torch.int64)
            rec.approx_b = torch.zeros(rec.n_approx, dtype=torch.int64)
        shell = QLayer(entry["name"], desc, torch.zeros(desc.n_out, desc.n_in, desc.k, desc.k,
                                                        dtype=torch.int64),
                       torch.zeros(desc.n_out, dtype=torch.int64), format=self.name,
                       compressed=rec)
        ops = self._pass_operands(shell, cfg)
        shapes = {item: (len(words.words), words.width)
                  for item, words in self.memories(shell, cfg).items() if item != "pwl"}
        if desc.act == "pwl":
            shapes["pwl"] = pwl_shape(cfg)
        data = check_items(entry, files, contents, shapes, self.name, desc, where,
                           "manifest.json")
        fn = entry["files"]
        w = torch.zeros(desc.n_out, desc.n_in, desc.k, desc.k, dtype=torch.int64)
        biases = []
        for n, (name, pdesc, _, _, reads) in enumerate(ops):
            prefix = "approx" if reads == "kept" else f"pass{n}"
            wf, bf = fn[f"{prefix}.weights"], fn[f"{prefix}.bias"]
            pw = unpack_weights(data[f"{prefix}.weights"], pdesc.layer, cfg, wf)
            pb = unpack_bias(data[f"{prefix}.bias"], pdesc.layer, cfg, bf)
            if reads == "kept":
                skip = pdesc.lane_skip
                if int(pw[:skip].abs().sum()) or int(pb[:skip].abs().sum()):
                    raise ImageError(wf, "values", f"the first {skip} lanes belong to the kept "
                                                   f"features and must be zero")
                rec.approx_w = pw[skip:, :, 0, 0].clone()
                rec.approx_b = pb[skip:].clone()
                continue
            lo = pdesc.nbout_base // (desc.h_out * desc.w_out) * cfg.tn
            kt, off = pdesc.layer.k, pdesc.koff
            for j in range(pdesc.layer.n_out):
                k = int(rec.ksize[lo + j])
                inner = torch.zeros(kt, kt, dtype=torch.bool)
                o = (kt - k) // 2
                inner[o:o + k, o:o + k] = True
                if int(pw[j][:, ~inner].abs().sum()):
                    raise ImageError(wf, "values", f"filter {lo + j} has weights outside its "
                                                   f"{k}x{k} kernel")
            w[lo:lo + pdesc.layer.n_out, :, off:off + kt, off:off + kt] = pw
            biases.append(pb)
        pwl = unpack_pwl(data["pwl"], desc, cfg, fn["pwl"]) if "pwl" in data else None
        return QLayer(entry["name"], desc, w, torch.cat(biases), entry["f_x"], entry["f_w"],
                      entry["f_y"], pwl, entry["act_func"], self.name, rec)
