"""NFU-2: adder trees and accumulators (MAC), or max / sum units (pooling)."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import Mode
from slimnfu.rtl._params import check_config

__all__ = ["NFU2", "adder_tree"]


def adder_tree(values):
    """Sum ``values`` with a balanced tree of two-input adders (widths grow per level)."""
    values = list(values)
    if not values:
        raise ValueError("adder_tree needs at least one value")
    while len(values) > 1:
        pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            pairs.append(values[-1])
        values = pairs
    return values[0]


class NFU2(wiring.Component):
    """``tn`` adder trees and ``acc``-bit accumulators (DianNao's NFU-2).

    In every cycle with ``valid`` high, lane ``j`` updates its accumulator:

    * ``Mode.MAC``: ``acc[j] = (bias[j] if first else acc[j]) + sum_i products[j*ti + i]``
    * ``Mode.MAXPOOL``: ``acc[j] = neurons[j] if first else max(acc[j], neurons[j])``
    * ``Mode.AVGPOOL``: ``acc[j] = (0 if first else acc[j]) + neurons[j]``

    (pooling maps input lane ``j`` onto output lane ``j``, so ``tn == ti``). ``first`` marks
    the first step of an output group, ``last`` its last: ``out_valid`` is high in the cycle
    after a valid ``last`` step, while ``acc`` holds the finished group. The sum wraps at
    ``acc`` bits; :meth:`slimnfu.config.LayerDesc.check` refuses layers that could overflow.

    Parameters
    ----------
    cfg : AccelConfig

    Members
    -------
    mode : In(Mode)
    valid, first, last : In(1)
        The step's strobe and its place in the output group (a delayed
        :class:`slimnfu.rtl.signatures.StepSignature`).
    products : In(ArrayLayout(signed(2*dw), tn*ti)); neurons : In(ArrayLayout(signed(dw), ti))
        NFU-1's products (MAC) or the input neurons (pooling) of the step.
    bias : In(ArrayLayout(signed(acc), tn))
        Taken on ``first`` (MAC).
    acc : Out(ArrayLayout(signed(acc), tn)), registered; out_valid : Out(1)
        ``out_valid`` marks the cycle in which ``acc`` holds a finished group.
    """

    LATENCY = 1

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        super().__init__({
            "mode": In(Mode),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "products": In(data.ArrayLayout(signed(2 * cfg.dw), cfg.tn * cfg.ti)),
            "neurons": In(data.ArrayLayout(signed(cfg.dw), cfg.ti)),
            "bias": In(data.ArrayLayout(signed(cfg.acc), cfg.tn)),
            "acc": Out(data.ArrayLayout(signed(cfg.acc), cfg.tn)),
            "out_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        tn, ti = self.cfg.tn, self.cfg.ti
        m.d.sync += self.out_valid.eq(self.valid & self.last)
        for j in range(tn):
            acc = self.acc[j]
            tree = Signal(signed(self.cfg.acc), name=f"tree{j}")
            m.d.comb += tree.eq(adder_tree(self.products[j * ti + i] for i in range(ti)))
            x = self.neurons[j]
            with m.If(self.valid):
                with m.Switch(self.mode):
                    with m.Case(Mode.MAC):
                        m.d.sync += acc.eq(Mux(self.first, self.bias[j], acc) + tree)
                    with m.Case(Mode.MAXPOOL):
                        m.d.sync += acc.eq(Mux(self.first | (x > acc), x, acc))
                    with m.Case(Mode.AVGPOOL):
                        m.d.sync += acc.eq(Mux(self.first, 0, acc) + x)
        return m
