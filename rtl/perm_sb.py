"""The common-sequence memory of the permuted-feature FC path (method C)."""

from amaranth.hdl import Cat, Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from slimnfu.contract import perm_addr_bits
from slimnfu.rtl._params import check_config
from slimnfu.rtl.signatures import LoadSignature

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
    (lane ``l`` at bits ``l*dw``) in cycle ``S+1``, like the dense SB. Write: ``write`` puts
    one entry of ``s`` into every bank at the clock edge.

    Parameters
    ----------
    cfg : AccelConfig
        Must have ``perm=True``; each bank holds ``cfg.perm.depth`` entries.

    Members
    -------
    write : In(LoadSignature(addr_width=perm address bits, data_width=dw))
    en : In(1)
    addr : In(tn*ti*ab)
    data : Out(tn*ti*dw)
    """

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg, needs="perm")
        lanes, ab = cfg.tn * cfg.ti, perm_addr_bits(cfg)
        super().__init__({
            "write": In(LoadSignature(addr_width=ab, data_width=cfg.dw)),
            "en": In(1),
            "addr": In(lanes * ab),
            "data": Out(lanes * cfg.dw),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        ab = perm_addr_bits(cfg)
        outs = []
        for lane in range(cfg.tn * cfg.ti):
            bank = Memory(shape=unsigned(cfg.dw), depth=cfg.perm.depth, init=[])
            m.submodules[f"s{lane}"] = bank
            wiring.connect(m, wiring.flipped(self.write), bank.write_port())
            rd = bank.read_port()
            m.d.comb += [rd.addr.eq(self.addr[lane * ab:(lane + 1) * ab]), rd.en.eq(self.en)]
            outs.append(rd.data)
        m.d.comb += self.data.eq(Cat(*outs))
        return m
