"""How tensors sit in the engine's memories: the one definition of every buffer layout.

The gateware, the amaranth.sim tests, the cocotb testbenches and the weight-image writer all
pack and unpack through these functions. Lane 0 is at the least significant bits of a word;
values are two's complement; channels past the layer's count are zero.

=========  ==================================================  =============================
memory     word address                                        lane ``l`` of the word
=========  ==================================================  =============================
NBin       ``(t * h_in + y) * w_in + x``                       channel ``t*ti + l``
SB         ``((o * ci_tiles + t) * k + ky) * k + kx``          ``w[o*tn + l//ti, t*ti + l%ti,
                                                               ky, kx]`` (``tn*ti`` lanes)
bias       ``o``                                               bias of channel ``o*tn + l``
                                                               (``acc`` bits per lane)
NBout      ``(o * h_out + y) * w_out + x``                     channel ``o*tn + l``
PWL        segment ``s``                                       ``slope`` in bits ``[0, dw)``,
                                                               ``icpt`` in ``[dw, 3*dw)``
=========  ==================================================  =============================

An FC layer is laid out as a 1x1 image: NBin word ``t`` holds inputs ``t*ti ...``.

A program whose first layer runs as im2col (:class:`slimnfu.contract.Im2col`) takes the
image's patches instead: channel ``j`` at output position ``(y, x)`` is tap
``patch_order(n_in, k)[j]`` of that position's window (:func:`patch_input`), and the layer's
weights are laid out over the same channels (:func:`patch_weights`).
"""

import torch
import torch.nn.functional as F

from slimnfu.contract import (PERM_FIELDS, bits_for, ikr_coord_bits, ikr_index_bits,
                              ikr_tap_bits, perm_addr_bits)

__all__ = ["pack_words", "unpack_words", "pack_input", "pack_weights", "pack_bias",
           "unpack_output", "pack_output", "output_lane_masks", "pack_pwl", "pack_ikr_weights",
           "pack_ikr_index", "pack_ikr_table", "pack_ikr_taps", "pack_ikr_lane_table",
           "pack_perm_s", "pack_perm_params",
           "unpack_perm_params",
           "pack_perm_index", "buffer_order", "patch_order", "patch_input", "patch_weights",
           "pack_program_input", "unpack_program_output"]


def pack_words(lanes, width):
    """Pack an integer tensor ``(words, lanes)`` into a list of unsigned words."""
    lanes = torch.as_tensor(lanes, dtype=torch.int64)
    mask = (1 << width) - 1
    words = []
    for row in lanes.tolist():
        word = 0
        for i, v in enumerate(row):
            word |= (int(v) & mask) << (i * width)
        words.append(word)
    return words


def unpack_words(words, lanes, width):
    """Unpack unsigned words into a signed int64 tensor ``(len(words), lanes)``."""
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    out = []
    for word in words:
        row = []
        for i in range(lanes):
            v = (int(word) >> (i * width)) & mask
            row.append(v - (1 << width) if v & sign else v)
        out.append(row)
    return torch.tensor(out, dtype=torch.int64).reshape(len(out), lanes)


def _pad_channels(x, dim, multiple):
    n = x.shape[dim]
    extra = -n % multiple
    if extra:
        shape = list(x.shape)
        shape[dim] = extra
        x = torch.cat([x, torch.zeros(shape, dtype=x.dtype)], dim=dim)
    return x


def pack_input(x, cfg):
    """NBin words for one image ``(C, H, W)`` (or one FC input vector ``(C,)``)."""
    x = torch.as_tensor(x, dtype=torch.int64)
    if x.dim() == 1:
        x = x.view(-1, 1, 1)
    x = _pad_channels(x, 0, cfg.ti)
    c, h, w = x.shape
    lanes = x.view(c // cfg.ti, cfg.ti, h, w).permute(0, 2, 3, 1).reshape(-1, cfg.ti)
    return pack_words(lanes, cfg.dw)


def pack_weights(w, cfg):
    """SB words for conv weights ``(O, C, K, K)`` (or FC weights ``(O, C)``)."""
    w = torch.as_tensor(w, dtype=torch.int64)
    if w.dim() == 2:
        w = w.view(*w.shape, 1, 1)
    w = _pad_channels(_pad_channels(w, 0, cfg.tn), 1, cfg.ti)
    o, c, k, _ = w.shape
    lanes = (w.view(o // cfg.tn, cfg.tn, c // cfg.ti, cfg.ti, k, k)
             .permute(0, 2, 4, 5, 1, 3).reshape(-1, cfg.tn * cfg.ti))
    return pack_words(lanes, cfg.dw)


def pack_bias(b, cfg):
    """Bias words, ``acc`` bits per lane, one word per output tile."""
    b = _pad_channels(torch.as_tensor(b, dtype=torch.int64), 0, cfg.tn)
    return pack_words(b.view(-1, cfg.tn), cfg.acc)


def unpack_output(words, n_out, h_out, w_out, cfg):
    """Turn NBout words back into ``(n_out, h_out, w_out)`` int64 values."""
    tiles = -(-n_out // cfg.tn)
    lanes = unpack_words(words, cfg.tn, cfg.dw)
    if lanes.shape[0] != tiles * h_out * w_out:
        raise ValueError(f"expected {tiles * h_out * w_out} NBout words, got {lanes.shape[0]}")
    y = lanes.view(tiles, h_out, w_out, cfg.tn).permute(0, 3, 1, 2).reshape(-1, h_out, w_out)
    return y[:n_out]


def pack_output(y, cfg):
    """NBout words of an output ``(n_out, h_out, w_out)`` (or ``(n_out,)``): the inverse of
    :func:`unpack_output`, padding lanes zero."""
    y = torch.as_tensor(y, dtype=torch.int64)
    if y.dim() == 1:
        y = y.view(-1, 1, 1)
    y = _pad_channels(y, 0, cfg.tn)
    c, h, w = y.shape
    return pack_words(y.view(c // cfg.tn, cfg.tn, h, w).permute(0, 2, 3, 1).reshape(-1, cfg.tn),
                      cfg.dw)


def output_lane_masks(n_out, cfg):
    """Per output tile, the mask of an NBout word's real lanes (the channels below
    ``n_out``; the last tile's padding lanes hold whatever the engine computed for them)."""
    tiles = -(-n_out // cfg.tn)
    lane = (1 << cfg.dw) - 1
    return [sum(lane << (j * cfg.dw) for j in range(min(cfg.tn, n_out - o * cfg.tn)))
            for o in range(tiles)]


def pack_pwl(table, cfg):
    """The ``PWL_SEGMENTS`` words of a :class:`slimnfu.fixed.PwlTable`."""
    if table.dw != cfg.dw:
        raise ValueError(f"PWL table is for dw={table.dw}, config has dw={cfg.dw}")
    m1, m2 = (1 << cfg.dw) - 1, (1 << (2 * cfg.dw)) - 1
    return [(s & m1) | ((i & m2) << cfg.dw) for s, i in zip(table.slope, table.icpt)]


# IKR (method B) memories; see slimnfu.rtl.pattern_decoder and slimnfu.compress.ikr.

def pack_ikr_weights(values, cfg):
    """SB words of an IKR conv layer: ``values (O, C, n)``, the kept weights of each kernel in
    its pattern's tap order. Word ``(o*ci_tiles + t)*n + s``, lane ``j*ti + i`` holds
    ``values[o*tn + j, t*ti + i, s]``."""
    v = torch.as_tensor(values, dtype=torch.int64)
    v = _pad_channels(_pad_channels(v, 0, cfg.tn), 1, cfg.ti)
    o, c, n = v.shape
    lanes = (v.view(o // cfg.tn, cfg.tn, c // cfg.ti, cfg.ti, n)
             .permute(0, 2, 4, 1, 3).reshape(-1, cfg.tn * cfg.ti))
    return pack_words(lanes, cfg.dw)


def pack_ikr_index(index, cfg):
    """IKR index words: ``index (O, C)`` pattern numbers. Word ``o*ci_tiles + t``, lane
    ``j*ti + i`` holds ``index[o*tn + j, t*ti + i]`` in ``bits_for(ikr_patterns - 1)`` bits."""
    idx = torch.as_tensor(index, dtype=torch.int64)
    idx = _pad_channels(_pad_channels(idx, 0, cfg.tn), 1, cfg.ti)
    o, c = idx.shape
    lanes = idx.view(o // cfg.tn, cfg.tn, c // cfg.ti, cfg.ti).permute(0, 2, 1, 3)
    return pack_words(lanes.reshape(-1, cfg.tn * cfg.ti), ikr_index_bits(cfg))


def pack_ikr_table(patterns, k, cfg):
    """IKR pattern-table words: ``patterns (P, n)`` taps ``ky*k + kx`` of a ``k x k`` kernel.
    Word ``s``, entry ``p`` holds pattern ``p``'s tap ``s`` as ``ky*ikr_kmax + kx``."""
    pat = torch.as_tensor(patterns, dtype=torch.int64)
    phys = (pat // k) * cfg.ikr.kmax + pat % k
    rows = torch.zeros(pat.shape[1], cfg.ikr.patterns, dtype=torch.int64)
    rows[:, :pat.shape[0]] = phys.t()
    return pack_words(rows, ikr_tap_bits(cfg))


def pack_ikr_taps(patterns, tile_index, cfg):
    """Tap words of the lane IKR unit (``cfg.ikr.lanes``, :class:`slimnfu.rtl.ikr_lane_unit.
    IkrLaneUnit`) from ``tile_index (ceil(O/tn), C)``, the pattern each output tile's kernels
    share per input channel (``index[::tn]`` of an index that
    :func:`slimnfu.formats.ikr.unshared_pattern` accepts): word ``(o*ci_tiles + t)*n + s``
    (beside SB word ``(o*ci_tiles + t)*n + s``, :func:`pack_ikr_weights`), lane ``i`` holds tap
    ``s`` (``ky*k + kx``) of the pattern of output tile ``o`` and input channel ``t*ti + i`` (0
    for a padding channel), in ``ikr_tap_bits`` bits."""
    pat = torch.as_tensor(patterns, dtype=torch.int64)
    idx = torch.as_tensor(tile_index, dtype=torch.int64)
    ti = cfg.ti
    taps = _pad_channels(pat[idx], 1, ti)                    # (co, C, n)
    co, c, n = taps.shape
    lanes = taps.view(co, c // ti, ti, n).permute(0, 1, 3, 2).reshape(-1, ti)
    return pack_words(lanes, ikr_tap_bits(cfg))


def pack_ikr_lane_table(k, w_in, cfg):
    """Tap-table words of the lane IKR unit for a ``k x k`` layer of input width ``w_in``:
    word ``ky*k + kx`` holds the tap's NBin word offset ``ky*w_in + kx`` from its window's
    first word, then ``ky`` and ``kx`` (:func:`slimnfu.contract.ikr_lane_table_width`)."""
    offset_bits = bits_for(cfg.nbin_depth - 1)
    coord = ikr_coord_bits(cfg)
    return [(ky * w_in + kx) | (ky << offset_bits) | (kx << (offset_bits + coord))
            for ky in range(k) for kx in range(k)]


# Permuted-feature FC (method C) memories; see slimnfu.rtl.perm_addr and the engine (s in SB).

def pack_perm_s(s, cfg):
    """Words of ``s``: ``s[k]`` at SB address ``k``, ``dw`` bits (written into every bank; a
    ``perm_index`` layer's only into its image, so ``perm.depth`` is checked when built)."""
    s = torch.as_tensor(s, dtype=torch.int64).reshape(-1, 1)
    if cfg.perm and s.shape[0] > cfg.perm.depth:
        raise ValueError(f"common sequence of length {s.shape[0]} exceeds config "
                         f"{cfg.name!r} perm.depth={cfg.perm.depth}")
    return pack_words(s, cfg.dw)


def pack_perm_params(a, b, cfg, n, e=None, group=None, hw=1, base=0):
    """Words of the ``PERM_PARAM`` load: output tile ``o``, lane ``j`` holds row
    ``r = o*tn + j`` as :data:`PERM_FIELDS`, ``ab = perm_addr_bits(cfg)`` bits each, lane ``j``
    at bits ``[4*ab*j, 4*ab*(j+1))``: the first difference ``a_r``, the second difference
    ``e_r`` (0: affine), the first address ``start = g_r*n + b_r`` and the last address of the
    row's sequence ``last = g_r*n + n - 1`` (absolute addresses into ``s``, so the generator
    wraps without an adder for the group base).

    ``hw > 1``: the rows read a conv output of ``hw`` pixels a channel in the buffer's order
    (``PassDesc.flatten``; affine rows only, ``e`` must be 0): the first field holds the lane
    stride ``a_r*hw mod n`` and the second the step within a channel tile, ``a_r``.

    ``base``: the SB address of ``s[0]`` (0: where the image's words go; a testbench may keep
    ``s`` above other SB words)."""
    ab = perm_addr_bits(cfg)
    a = torch.as_tensor(a, dtype=torch.int64).reshape(-1)
    b = torch.as_tensor(b, dtype=torch.int64).reshape(-1)
    m = a.numel()
    e = torch.zeros(m, dtype=torch.int64) if e is None else torch.as_tensor(e).reshape(-1)
    if bool(e.any()) and not cfg.perm.quadratic:
        raise ValueError(f"row {int(e.nonzero()[0, 0])} is quadratic (e={int(e[e != 0][0])}), "
                         f"but config {cfg.name!r} has perm.quadratic=False (the address "
                         f"generators walk affine rows only; set perm.quadratic=1)")
    if hw > 1:
        if bool(e.any()):
            raise ValueError(f"hw={hw}: rows in the buffer's order must be affine (e = 0), "
                             f"row {int(e.nonzero()[0, 0])} has e={int(e[e != 0][0])}")
        a, e = a * hw % n, a
    g = torch.zeros(m, dtype=torch.int64) if group is None else torch.as_tensor(group).reshape(-1)
    top = base + int(g.max()) * n + n - 1 if m else 0
    if top >= cfg.perm.depth:
        raise ValueError(f"common sequences of {int(g.max()) + 1} x {n} values exceed config "
                         f"{cfg.name!r} perm.depth={cfg.perm.depth}")
    tiles = -(-m // cfg.tn)
    rows = torch.zeros(tiles * cfg.tn, len(PERM_FIELDS), dtype=torch.int64)
    rows[:m, 0], rows[:m, 1] = a, e
    rows[:m, 2], rows[:m, 3] = base + g * n + b, base + g * n + n - 1
    return pack_words(rows.reshape(tiles, len(PERM_FIELDS) * cfg.tn), ab)


def buffer_order(c, h, w, tn):
    """Where PyTorch's flatten order puts each value of a ``c x h x w`` output in the neuron
    buffer: ``src[j]`` is the flatten index of buffer value ``j`` (word ``j // tn``, lane
    ``j % tn``; word ``t*h*w + p`` holds channels ``t*tn ..`` at pixel ``p``), -1 for a padding
    lane of the last channel tile. int64, ``ceil(c/tn)*tn*h*w`` values."""
    tiles, hw = -(-c // tn), h * w
    word = torch.arange(tiles * hw, dtype=torch.int64).reshape(-1, 1)
    chan = word // hw * tn + torch.arange(tn, dtype=torch.int64)
    src = chan * hw + word % hw
    return torch.where(chan < c, src, -1).reshape(-1)


def unpack_perm_params(words, m, n, groups, cfg):
    """The inverse of :func:`pack_perm_params` for ``m`` rows of sequences of ``n`` values in
    ``groups`` groups: ``(a, b, e, group)``; ``ValueError`` naming the first row whose
    ``last``/``start`` is not inside one of the sequences."""
    ab = perm_addr_bits(cfg)
    rows = (unpack_words(words, len(PERM_FIELDS) * cfg.tn, ab).reshape(-1, len(PERM_FIELDS))
            & ((1 << ab) - 1))[:m]
    a, e, start, last = (rows[:, k].clone() for k in range(len(PERM_FIELDS)))
    base = last - (n - 1)
    group = base.div(n, rounding_mode="floor")
    b = start - base
    bad = ((base < 0) | (base % n != 0) | (group >= groups) | (b < 0) | (b >= n)).nonzero()
    if bad.numel():
        j = int(bad[0])
        raise ValueError(f"row {j}: start={int(start[j])}, last={int(last[j])} are not inside "
                         f"one of the {groups} common sequences of n={n} values")
    return a, b, e, group


def pack_perm_index(idx, cfg):
    """SB words of the index ROM: laid out as dense FC weights, one index per ``dw`` lane (what
    the weight image stores; the engine is loaded with the gathered weights)."""
    idx = torch.as_tensor(idx, dtype=torch.int64)
    top = int(idx.max()) if idx.numel() else 0
    if top >= 1 << cfg.dw:
        raise ValueError(f"config {cfg.name!r}: index {top} does not fit dw={cfg.dw} bits")
    return pack_weights(idx, cfg)


# im2col: a first conv layer with few input channels run as a 1x1 conv over its patches.

def patch_order(n_in, k):
    """The window tap of each patch channel: int64 ``(n_in*k*k,)``, entry ``j`` the flat index
    ``(c*k + ky)*k + kx`` of ``w[:, c, ky, kx]`` (and of window value ``(c, ky, kx)``).

    Centre taps come first: taps are ordered by their ring ``max(|2*ky - (k-1)|, |2*kx -
    (k-1)|)``, then channel, row and column. So the ``n_in*kt*kt`` first channels are exactly
    the centred ``kt x kt`` windows of every input channel (``kt`` of ``k``'s parity), and a
    filter whose taps lie in that centre reads only those channels.
    """
    for name, v in (("n_in", n_in), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"patch_order: {name} must be a positive integer, not {v!r}")
    taps = [(max(abs(2 * ky - (k - 1)), abs(2 * kx - (k - 1))), c, ky, kx)
            for c in range(n_in) for ky in range(k) for kx in range(k)]
    return torch.tensor([(c * k + ky) * k + kx for _, c, ky, kx in sorted(taps)],
                        dtype=torch.int64)


def patch_input(x, im):
    """The patches of int64 input ``x`` (``(C, H, W)``, or a batch ``(N, C, H, W)``) for the
    im2col layer ``im`` (:class:`slimnfu.contract.Im2col`): ``(im.channels, h_out, w_out)``
    (batched likewise), channel ``j`` at ``(y, x)`` the window value ``patch_order[j]`` of
    output position ``(y, x)``, zero where the window covers padding."""
    x = torch.as_tensor(x, dtype=torch.int64)
    if tuple(x.shape[-3:]) != (im.n_in, im.h_in, im.w_in):
        raise ValueError(f"patch_input: the input is {tuple(x.shape[-3:])}, layer {im.layer} "
                         f"takes ({im.n_in}, {im.h_in}, {im.w_in})")
    xp = F.pad(x, (im.pad,) * 4) if im.pad else x
    k, s = im.k, im.stride
    ys, xs = s * (im.h_out - 1) + 1, s * (im.w_out - 1) + 1
    planes = []
    for j in patch_order(im.n_in, k)[:im.channels].tolist():
        c, ky, kx = j // (k * k), j // k % k, j % k
        planes.append(xp[..., c, ky:ky + ys:s, kx:kx + xs:s])
    return torch.stack(planes, dim=-3)


def patch_weights(w, channels):
    """Conv weights ``(O, C, K, K)`` over the patch channels of :func:`patch_order`:
    ``(O, channels, 1, 1)``, the first ``channels`` of them (the others must be zero: the
    caller's filters use only those taps)."""
    w = torch.as_tensor(w, dtype=torch.int64)
    o, c, k, _ = w.shape
    return w.reshape(o, -1)[:, patch_order(c, k)[:channels]].reshape(o, channels, 1, 1)


# A compiled program's input and outputs (slimnfu.contract.Program).

def pack_program_input(program, x):
    """NBin words of one integer input sample of ``program`` (flattened when its first layer
    is FC; its patches, :func:`patch_input`, when it runs as im2col)."""
    if program.im2col is not None:
        x = patch_input(x, program.im2col)
    elif program.layers[0].desc.layer.kind == "fc":
        x = torch.as_tensor(x).reshape(-1)
    return pack_input(x, program.cfg)


def unpack_program_output(program, i, words):
    """The NBout words of program layer ``i`` as the integer reference's output of one
    sample (its model layer's output; flat after an FC layer)."""
    layer = program.layers[i]
    n, h, w = layer.out_shape
    y = unpack_output(words, n, h, w, program.cfg)
    return y.reshape(-1) if layer.desc.layer.kind == "fc" else y
