"""NFU-2: adder trees and accumulators (MAC), or max / sum units (pooling)."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import Mode
from slimnfu.rtl._params import check_config

__all__ = ["NFU2", "adder_tree", "tree_levels"]

#: Adder levels between two registers of the pipelined adder tree.
LEVELS_PER_STAGE = 2


def tree_levels(n):
    """Adder levels of a balanced tree over ``n`` values (``ceil(log2 n)``; 0 for one)."""
    return (n - 1).bit_length()


def adder_tree(values, m=None, levels_per_stage=None, name="tree"):
    """Sum ``values`` with a balanced tree of two-input adders (widths grow per level).

    With a module ``m`` and ``levels_per_stage``, the partial sums are registered (in
    ``m.d.sync``) after every ``levels_per_stage`` levels and after the last one, so the
    sum appears ``ceil(levels / levels_per_stage)`` cycles after ``values``
    (:func:`tree_levels`); otherwise the tree is combinational.
    """
    values = list(values)
    if not values:
        raise ValueError("adder_tree needs at least one value")
    level = 0
    while len(values) > 1:
        pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            pairs.append(values[-1])
        values = pairs
        level += 1
        if m is not None and (level % levels_per_stage == 0 or len(values) == 1):
            regs = []
            for n, value in enumerate(values):
                reg = Signal.like(value, name=f"{name}_l{level}_{n}")
                m.d.sync += reg.eq(value)
                regs.append(reg)
            values = regs
    return values[0]


class NFU2(wiring.Component):
    """``tn`` adder trees and ``acc``-bit accumulators (DianNao's NFU-2).

    For every step with ``valid`` high, lane ``j`` updates its accumulator:

    * ``Mode.MAC``: ``acc[j] = (bias[j] if first else acc[j]) + sum_i products[j*ti + i]``
    * ``Mode.MAXPOOL``: ``acc[j] = neurons[j] if first else max(acc[j], neurons[j])``
    * ``Mode.AVGPOOL``: ``acc[j] = (0 if first else acc[j]) + neurons[j]``

    (pooling maps input lane ``j`` onto output lane ``j``, so ``tn == ti``). ``first`` marks
    the first step of an output group, ``last`` its last. Pipeline: the adder tree is
    registered after every :data:`LEVELS_PER_STAGE` adder levels and after its last
    (:meth:`tree_stages` stages; ``valid``, ``first``, ``last``, ``neurons`` and ``bias``
    are delayed with it), then the accumulator register. ``out_valid`` is high
    :meth:`latency` cycles after a valid ``last`` step is on the inputs, while ``acc`` holds
    the finished group. Steps may follow each other in every cycle. The sum wraps at ``acc``
    bits; :meth:`slimnfu.config.LayerDesc.check` refuses layers that could overflow.

    Parameters
    ----------
    cfg : AccelConfig

    Members
    -------
    mode : In(Mode)
        Constant while a layer runs.
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

    @staticmethod
    def tree_stages(cfg):
        """Register stages of the adder tree: ``ceil(ceil(log2 ti) / LEVELS_PER_STAGE)``."""
        return -(-tree_levels(cfg.ti) // LEVELS_PER_STAGE)

    @classmethod
    def latency(cls, cfg):
        """Cycles from a step on the inputs to its accumulator update: tree stages + 1."""
        return cls.tree_stages(cfg) + 1

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
        cfg = self.cfg
        tn, ti = cfg.tn, cfg.ti
        stages = self.tree_stages(cfg)

        def delayed(value, name):
            for n in range(stages):
                reg = Signal.like(value, name=f"{name}_t{n + 1}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        valid, first = delayed(self.valid, "valid"), delayed(self.first, "first")
        last, neurons = delayed(self.last, "last"), delayed(self.neurons, "neurons")
        bias = delayed(self.bias, "bias")
        m.d.sync += self.out_valid.eq(valid & last)
        for j in range(tn):
            acc = self.acc[j]
            tree = Signal(signed(cfg.acc), name=f"tree{j}")
            m.d.comb += tree.eq(adder_tree((self.products[j * ti + i] for i in range(ti)),
                                           m, LEVELS_PER_STAGE, name=f"tree{j}"))
            x = neurons[j]
            with m.If(valid):
                with m.Switch(self.mode):
                    with m.Case(Mode.MAC):
                        m.d.sync += acc.eq(Mux(first, bias[j], acc) + tree)
                    with m.Case(Mode.MAXPOOL):
                        m.d.sync += acc.eq(Mux(first | (x > acc), x, acc))
                    with m.Case(Mode.AVGPOOL):
                        m.d.sync += acc.eq(Mux(first, 0, acc) + x)
        return m
