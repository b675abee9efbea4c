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
            xs, ds = [x], [d]
            for i in range(1, ti + 1):
                xs.append(wrap_add(xs[-1], ds[-1], lambda s: s > field["last"], f"addr{j}_{i}"))
                ds.append(wrap_add(ds[-1], field["e"], lambda s: s >= n, f"diff{j}_{i}"))
            affine.extend(xs[:ti])
            with m.If(self.step & (self.mode == Perm.AFFINE)):
                m.d.sync += [held_x.eq(xs[ti]), held_d.eq(ds[ti])]

        dw = cfg.dw
        index = [self.indices[l * dw:l * dw + ab] for l in range(tn * ti)]
        m.d.comb += self.addr.eq(Mux(self.mode == Perm.AFFINE, Cat(*affine),
                                     Mux(self.mode == Perm.INDEX, Cat(*index), 0)))
        return m
