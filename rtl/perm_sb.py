"""The common-sequence memory of the permuted-feature FC path (method C)."""

from amaranth.hdl import Cat, Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for, perm_addr_bits
from slimnfu.rtl._params import check_config

__all__ = ["PermSB"]


class PermSB(wiring.Component):
    """Hold the common sequence ``s`` and read ``tn*ti`` arbitrary entries of it per cycle.

    Banking: one bank per multiplier (``tn*ti`` copies of ``s``, ``perm_depth`` words of
    ``dw`` bits each), all written together. A permutation may send the ``tn*ti`` lanes of a
    step to any addresses (the index ROM of the data-driven variant is arbitrary), and only a
    private bank per lane reads every such pattern without a conflict, so the NFU runs at its
    full rate: one step per cycle, exactly the dense cycle count. The price is ``tn*ti`` copies
    of ``s`` on chip (the image stores it once). For affine permutations with ``n`` a multiple
    of ``ti`` and ``gcd(a, ti) = 1``, ``ti`` residue banks per output lane would suffice (the
    ``ti`` addresses of a lane are distinct mod ``ti``); that cheaper banking is not built.

    Read: ``addr`` (lane ``l`` at bits ``l*ab``) with ``en`` in cycle ``S`` gives ``data``
    (lane ``l`` at bits ``l*dw``) in cycle ``S+1``, like the dense SB.

    Parameters
    ----------
    cfg : AccelConfig
        Must have ``perm=True``.
    """

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        if not cfg.perm:
            self._MustUse__silence = True
            raise ValueError(f"PermSB: config {cfg.name!r} has perm=False")
        self.ab = perm_addr_bits(cfg)
        lanes = cfg.tn * cfg.ti
        super().__init__({
            "wr_en": In(1),
            "wr_addr": In(bits_for(cfg.perm_depth - 1)),
            "wr_data": In(cfg.dw),
            "en": In(1),
            "addr": In(lanes * self.ab),
            "data": Out(lanes * cfg.dw),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, ab = self.cfg, self.ab
        outs = []
        for lane in range(cfg.tn * cfg.ti):
            bank = Memory(shape=unsigned(cfg.dw), depth=cfg.perm_depth, init=[])
            m.submodules[f"s{lane}"] = bank
            wr = bank.write_port()
            rd = bank.read_port()
            m.d.comb += [wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data),
                         wr.en.eq(self.wr_en),
                         rd.addr.eq(self.addr[lane * ab:(lane + 1) * ab]), rd.en.eq(self.en)]
            outs.append(rd.data)
        m.d.comb += self.data.eq(Cat(*outs))
        return m
