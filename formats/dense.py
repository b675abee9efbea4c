"""The dense format: every weight stored, one engine pass, no method hardware.

Stored: the weights in SB words (``tn*ti`` lanes of ``dw`` bits, one word per tap of a tile
pair), the biases in bias words (``tn`` lanes of ``acc`` bits) and, with ``act="pwl"``, the
16-word PWL table. Pooling layers store only their PWL table, if any.
"""

from dataclasses import replace

import torch

from slimnfu.contract import LoadSel
from slimnfu.formats import layout
from slimnfu.formats.base import (StoredItem, WeightFormat, Words, check_items, common_memories,
                                  im2col_desc, pwl_items, pwl_shape, unpack_bias, unpack_pwl,
                                  unpack_weights)
from slimnfu.formats.qmodel import QLayer

__all__ = ["DenseFormat", "dense_memories", "weight_count", "relaid_layer"]


def relaid_layer(ql, w, compressed=None):
    """``ql`` with the weights ``w`` (``(n_out, n)``) over ``n`` re-laid inputs
    (:meth:`slimnfu.formats.base.WeightFormat.relayout_input`) and the format's record
    ``compressed``."""
    return replace(ql, desc=replace(ql.desc, n_in=int(w.shape[1])), w=w, compressed=compressed)


def weight_count(desc):
    """Weights of the dense layer ``desc`` (0 for pooling)."""
    if desc.is_pool:
        return 0
    return desc.n_out * desc.n_in * (desc.k * desc.k if desc.kind == "conv" else 1)


def dense_memories(desc, w, b, pwl, cfg):
    """``{item: Words}`` of a dense layer or engine pass: weights and bias (not for pooling)
    and the PWL table (``act="pwl"``)."""
    mem = {}
    if not desc.is_pool:
        mem["weights"] = Words(LoadSel.SB, layout.pack_weights(w, cfg), cfg.tn * cfg.ti * cfg.dw)
    mem.update(common_memories(desc, b, pwl, cfg))
    return mem


def image_shapes(desc, cfg):
    """``{item: (words, width)}`` a dense layer's image lists."""
    shapes = {}
    if not desc.is_pool:
        shapes["weights"] = (desc.sb_words(cfg), cfg.tn * cfg.ti * cfg.dw)
        shapes["bias"] = (desc.tiles(cfg)[1], cfg.tn * cfg.acc)
    if desc.act == "pwl":
        shapes["pwl"] = pwl_shape(cfg)
    return shapes


class DenseFormat(WeightFormat):
    """Every weight stored as it is (the format of an uncompressed layer)."""

    name = "dense"

    def items(self, ql, dw, acc):
        d = ql.desc
        items = [] if d.is_pool else [StoredItem("weights", weight_count(d), dw),
                                      StoredItem("bias", d.n_out, acc)]
        return items + pwl_items(ql, dw)

    def macs(self, ql):
        return 0 if ql.desc.is_pool else ql.desc.macs()

    def params(self, ql):
        return 0 if ql.desc.is_pool else weight_count(ql.desc) + ql.desc.n_out

    def memories(self, ql, cfg):
        return dense_memories(ql.desc, ql.w, ql.b, ql.pwl, cfg)

    def relayout_input(self, ql, src):
        # padding columns are zero weights
        return relaid_layer(ql, torch.cat([ql.w, ql.w.new_zeros(ql.desc.n_out, 1)], 1)[:, src])

    def im2col(self, ql):
        # the weights over every patch channel, in the patch order
        d = ql.desc
        if d.kind != "conv":
            return None
        n = d.n_in * d.k * d.k
        return replace(ql, desc=im2col_desc(d, n), w=layout.patch_weights(ql.w, n))

    def restore(self, entry, files, contents, desc, cfg, where):
        shapes = image_shapes(desc, cfg)
        pwl_message = "a PWL table is %d words of %d bits" % pwl_shape(cfg)
        data = check_items(entry, files, contents, shapes, self.name, desc, where,
                           "manifest.json", explain={"pwl": lambda *_: pwl_message})
        fn = entry["files"]
        w = b = pwl = None
        if "weights" in data:
            w = unpack_weights(data["weights"], desc, cfg, fn["weights"])
            b = unpack_bias(data["bias"], desc, cfg, fn["bias"])
        if "pwl" in data:
            pwl = unpack_pwl(data["pwl"], desc, cfg, fn["pwl"])
        return QLayer(entry["name"], desc, w, b, entry["f_x"], entry["f_w"], entry["f_y"], pwl,
                      entry["act_func"], self.name)

