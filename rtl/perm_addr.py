"""Per-lane permutation address generators of the permuted-feature FC path (method C)."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import PERM_FIELDS, Perm, bits_for, perm_addr_bits, perm_param_width
from slimnfu.rtl._params import check_config

__all__ = ["PermAddrGen"]


class PermAddrGen(wiring.Component):
    """Produce the ``tn*ti`` addresses into ``s`` of one FC step, combinationally.

    Lane ``l = j*ti + i`` (output lane ``j``, input lane ``i``) of the step ``(o, t)`` needs
    the address of ``W[r, c]``, ``c = t*ti + i``, for row ``r = o*tn + j``.

    * ``mode == AFFINE`` (generated permutations, :mod:`slimnfu.formats.perm`): row ``r``
      reads ``s[g_r*n + pi_r(c)]`` with ``pi_r(c) = (b_r + a_r*c + e_r*c*(c-1)/2) mod n``.
      The row's parameters (:data:`slimnfu.contract.PERM_FIELDS`) are ``a_r``, ``e_r``,
      ``start = g_r*n + b_r`` and ``last = g_r*n + n - 1``. Each output lane keeps the
      absolute address ``x`` of its next input and the difference ``d = pi(c+1) - pi(c)
      mod n`` in registers (``start`` and ``a_r`` on the first step of an output tile,
      ``first``) and forms its ``ti`` addresses by a chain of wrapping adds
      ``x_{k+1} = x_k + d_k`` (``> last ? - n``) beside a chain ``d_{k+1} = d_k + e_r``
      (``>= n ? - n``); ``x_k`` and ``d_k`` are both ``k`` adds deep, so the chain is as deep
      as the affine one (``e_r = 0``). No multiplier and no adder for the group base. On
      every ``step`` the registers take the next link of both chains.
    * ``mode == AFFINE`` with ``hw > 1`` (``PassDesc.flatten``: the inputs are a conv output
      of ``hw`` pixels a channel in the neuron buffer's order, affine rows): input lane ``i``
      of step ``u = t*hw + p`` (channel tile ``t``, pixel ``p``) is flatten index ``(t*ti +
      i)*hw + p``, so its address is ``x_u + i*(a_r*hw mod n)`` with ``x_u = pi_r(t*ti*hw +
      p)``. The parameters hold the lane stride ``a_r*hw mod n`` in field ``a`` (the chain's
      constant difference; no second difference) and ``a_r`` in field ``e``; a pixel counter
      (reset by ``first``) marks the last pixel of a channel tile, and the next step's
      ``x`` is ``x_u + a_r`` within a tile, ``x_{ti-1} + a_r`` (lane ``ti-1``'s address plus
      one flatten step) at a tile's end. With ``hw == 1`` every step ends a tile, and the
      next ``x`` is ``x_{ti-1} + d_{ti-1}``, the chain's next link.
    * ``mode == INDEX``: the addresses are the low ``perm_addr_bits`` of the ``dw``-bit lanes
      of ``indices`` (the index-ROM word SB holds for this step).
    * ``mode == NONE``: the addresses are 0 (the dense path does not use them).

    ``a_r, e_r < n`` and ``start <= last < perm_depth`` with ``last - start < n`` are required
    (the compression export guarantees it); with them every address is in
    ``[last - n + 1, last]``.

    Parameters
    ----------
    cfg : AccelConfig
        Must have ``perm=True``; the addresses span ``cfg.perm.depth``.

    Members
    -------
    mode : In(Perm); n : In(bits_for(perm_depth))
        The layer's weight format and sequence length (``desc.perm``, ``desc.n_in``).
    hw : In(bits_for(nbin_depth))
        Pixels of a channel tile (``desc.perm_hw``; 1: the inputs in flatten order).
    params : In(perm_param_width)
        The output tile's per-lane ``(a, e, start, last)``, for the step on the inputs.
    indices : In(tn*ti*dw)
        The step's index-ROM word (``INDEX``).
    first, step : In(1)
        The step is the first of its output tile / a step is issued (the registers move on).
    addr : Out(tn*ti*ab)
        Lane ``l``'s address at bits ``l*ab``, combinational.
    """

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg, needs="perm")
        self.ab = perm_addr_bits(cfg)
        super().__init__({
            "mode": In(Perm),
            "n": In(bits_for(cfg.perm.depth)),
            "hw": In(bits_for(cfg.nbin_depth)),
            "params": In(perm_param_width(cfg)),
            "indices": In(cfg.tn * cfg.ti * cfg.dw),
            "first": In(1),
            "step": In(1),
            "addr": Out(cfg.tn * cfg.ti * self.ab),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, ab = self.cfg, self.ab
        tn, ti = cfg.tn, cfg.ti
        n = self.n
        nf = len(PERM_FIELDS)
        # Two-level walk of a re-laid pass: pixel p of the current channel tile.
        flat = Signal()
        m.d.comb += flat.eq(self.hw > 1)
        held_p = Signal.like(self.hw, name="pixel_reg")
        p = Signal.like(self.hw, name="pixel")
        tile_end = Signal()
        m.d.comb += [p.eq(Mux(self.first, 0, held_p)), tile_end.eq(p + 1 >= self.hw)]
        with m.If(self.step):
            m.d.sync += held_p.eq(Mux(tile_end, 0, p + 1))

        def wrap_add(x, a, over, name):
            """``x + a``, minus ``n`` when it passes ``over`` (``over(total)`` is true)."""
            total = Signal(ab + 1, name=f"{name}_sum")
            out = Signal(ab, name=name)
            m.d.comb += [total.eq(x + a), out.eq(Mux(over(total), total - n, total))]
            return out

        affine = []
        for j in range(tn):
            field = {name: self.params[(nf * j + k) * ab:(nf * j + k + 1) * ab]
                     for k, name in enumerate(PERM_FIELDS)}
            held_x = Signal(ab, name=f"addr_reg{j}")
            held_d = Signal(ab, name=f"diff_reg{j}")
            x, d = Signal(ab, name=f"x{j}"), Signal(ab, name=f"d{j}")
            m.d.comb += [x.eq(Mux(self.first, field["start"], held_x)),
                         d.eq(Mux(self.first, field["a"], held_d))]
            second = Signal(ab, name=f"second{j}")
            m.d.comb += second.eq(Mux(flat, 0, field["e"]))
            xs, ds = [x], [d]
            for i in range(1, ti):
                xs.append(wrap_add(xs[-1], ds[-1], lambda s: s > field["last"], f"addr{j}_{i}"))
                ds.append(wrap_add(ds[-1], second, lambda s: s >= n, f"diff{j}_{i}"))
            next_d = wrap_add(ds[-1], second, lambda s: s >= n, f"diff{j}_{ti}")
            next_x = wrap_add(Mux(tile_end, xs[-1], x), Mux(flat, field["e"], ds[-1]),
                              lambda s: s > field["last"], f"addr{j}_{ti}")
            affine.extend(xs)
            with m.If(self.step & (self.mode == Perm.AFFINE)):
                m.d.sync += [held_x.eq(next_x), held_d.eq(next_d)]

        dw = cfg.dw
        index = [self.indices[l * dw:l * dw + ab] for l in range(tn * ti)]
        m.d.comb += self.addr.eq(Mux(self.mode == Perm.AFFINE, Cat(*affine),
                                     Mux(self.mode == Perm.INDEX, Cat(*index), 0)))
        return m
