"""Per-lane permutation address generators of the permuted-feature FC path (method C)."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import Perm, bits_for, perm_addr_bits, perm_param_width
from slimnfu.rtl._params import check_config

__all__ = ["PermAddrGen"]


class PermAddrGen(wiring.Component):
    """Produce the ``tn*ti`` addresses into ``s`` of one FC step, combinationally.

    Lane ``l = j*ti + i`` (output lane ``j``, input lane ``i``) of the step ``(o, t)`` needs
    ``pi_r(t*ti + i)`` for row ``r = o*tn + j``, i.e. ``W[r, t*ti + i] = s[pi_r(t*ti + i)]``.

    * ``mode == AFFINE``: ``pi_r(c) = (a_r*c + b_r) mod n``. Each output lane keeps
      ``base_j = pi_r(t*ti)`` in a register (``b_r`` itself on the first step of an output
      tile, ``first``) and forms its ``ti`` addresses by a chain of modular adds
      ``base, base + a, base + 2a, ...`` (each ``x + a >= n ? x + a - n : x + a``; no
      multiplier). On every ``step`` the register takes ``base_j + ti*a_r mod n``, the next
      link of the chain.
    * ``mode == INDEX``: the addresses are the low ``perm_addr_bits`` of the ``dw``-bit lanes
      of ``indices`` (the index-ROM word SB holds for this step).
    * ``mode == NONE``: the addresses are 0 (the dense path does not use them).

    ``a_r < n`` and ``b_r < n`` are required (the compression export guarantees it); with
    them every address is ``< n``.

    Parameters
    ----------
    cfg : AccelConfig
        Must have ``perm=True``; the addresses span ``cfg.perm.depth``.

    Members
    -------
    mode : In(Perm); n : In(bits_for(perm_depth))
        The layer's weight format and sequence length (``desc.perm``, ``desc.n_in``).
    params : In(perm_param_width)
        The output tile's ``(a_j, b_j)``, for the step on the inputs.
    indices : In(tn*ti*dw)
        The step's index-ROM word (``INDEX``).
    first, step : In(1)
        The step is the first of its output tile / a step is issued (the register moves on).
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

        def mod_add(x, a, name):
            total = Signal(ab + 1, name=f"{name}_sum")
            out = Signal(ab, name=name)
            m.d.comb += [total.eq(x + a), out.eq(Mux(total >= n, total - n, total))]
            return out

        affine = []
        for j in range(tn):
            a = self.params[2 * ab * j:2 * ab * j + ab]
            b = self.params[2 * ab * j + ab:2 * ab * (j + 1)]
            held = Signal(ab, name=f"base_reg{j}")
            base = Signal(ab, name=f"base{j}")
            m.d.comb += base.eq(Mux(self.first, b, held))
            chain = [base]
            for i in range(1, ti + 1):
                chain.append(mod_add(chain[-1], a, f"addr{j}_{i}"))
            affine.extend(chain[:ti])
            with m.If(self.step & (self.mode == Perm.AFFINE)):
                m.d.sync += held.eq(chain[ti])

        dw = cfg.dw
        index = [self.indices[l * dw:l * dw + ab] for l in range(tn * ti)]
        m.d.comb += self.addr.eq(Mux(self.mode == Perm.AFFINE, Cat(*affine),
                                     Mux(self.mode == Perm.INDEX, Cat(*index), 0)))
        return m
