"""NFU-2: adder trees and accumulators (MAC), or max / sum units (pooling)."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import Mode
from slimnfu.rtl._params import check_config, delay

__all__ = ["NFU2", "adder_tree", "tree_levels"]

#: Adder levels between two registers of the pipelined adder tree.
LEVELS_PER_STAGE = 2
#: Accumulator bits added in one stage (a carry-chain of this length and a 2:1 mux fit a
#: 125 MHz cycle on ECP5); the carry goes to the next chunk through a register.
ACC_CHUNK_BITS = 24


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
    are delayed with it); then the accumulator adds in :meth:`acc_chunks` stages of
    :meth:`chunk_bits` bits, low chunk first, each chunk one stage after the one below it
    with that chunk's carry (a skewed carry-save accumulator: a step may follow in every
    cycle), and the chunks are realigned on ``acc``. A max-pooling maximum is a ``dw``-bit
    value: a register of its own holds it (the lowest chunk reads it), the other chunks its
    sign; each neuron is compared with the maximum it will meet a cycle ahead of stage A
    (:meth:`_beats`). ``out_valid`` is high
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

    @staticmethod
    def chunk_bits(cfg):
        """Bits of the accumulator added in one stage: ``max(ACC_CHUNK_BITS, dw)``."""
        return max(ACC_CHUNK_BITS, cfg.dw)

    @classmethod
    def acc_chunks(cls, cfg):
        """Stages of the accumulator: ``ceil(acc / chunk_bits)``."""
        return -(-cfg.acc // cls.chunk_bits(cfg))

    @classmethod
    def latency(cls, cfg):
        """Cycles from a step on the inputs to ``out_valid`` after it: tree stages plus
        accumulator chunks."""
        return cls.tree_stages(cfg) + cls.acc_chunks(cfg)

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
        tn, ti, dw = cfg.tn, cfg.ti, cfg.dw
        chunks, width = self.acc_chunks(cfg), self.chunk_bits(cfg)

        def delayed(value, stages, name):
            return delay(m, value, stages, f"{name}_t")

        # Stage A: the tree's sum meets the step.
        tree_stages = self.tree_stages(cfg)
        valid = delayed(self.valid, tree_stages, "valid")
        first = delayed(self.first, tree_stages, "first")
        last = delayed(self.last, tree_stages, "last")
        # the neurons a cycle before stage A too: the max-pool compare is made a cycle ahead
        ahead, neurons = None, self.neurons
        if tree_stages:
            ahead = delayed(self.neurons, tree_stages - 1, "neurons")
            neurons = delayed(ahead, 1, "neurons_a")
        bias = delayed(self.bias, tree_stages, "bias")
        m.d.comb += self.out_valid.eq(delayed(valid & last, chunks, "out_valid"))
        is_mac, is_max = self.mode == Mode.MAC, self.mode == Mode.MAXPOOL
        # Chunk c of the accumulator adds in stage A + c, with the carry of chunk c - 1.
        valids = [delayed(valid, c, f"valid_c{c}") for c in range(chunks)]
        firsts = [delayed(first, c, f"first_c{c}") for c in range(chunks)]
        for j in range(tn):
            tree = Signal(signed(cfg.acc), name=f"tree{j}")
            m.d.comb += tree.eq(adder_tree((self.products[j * ti + i] for i in range(ti)),
                                           m, LEVELS_PER_STAGE, name=f"tree{j}"))
            x = neurons[j]
            addend = Signal(signed(cfg.acc), name=f"addend{j}")
            start = Signal(signed(cfg.acc), name=f"start{j}")
            m.d.comb += [addend.eq(Mux(is_mac, tree, x)), start.eq(Mux(is_mac, bias[j], 0))]
            outs, carry, prev = [], 0, None
            for c in range(chunks):
                lo, hi = c * width, min((c + 1) * width, cfg.acc)
                part = Signal(hi - lo, name=f"acc{j}_c{c}")
                add = delayed(addend[lo:hi], c, f"addend{j}_c{c}")
                init = delayed(start[lo:hi], c, f"start{j}_c{c}")
                total = Mux(firsts[c], init, part) + add + carry
                carry_out = Signal(name=f"carry{j}_c{c}")
                out = part
                if c == 0:
                    # A max of dw-bit values in a register of its own (its compare drives
                    # dw enables, not the accumulator's); chunk 0 reads it, sign-extended.
                    peak = Signal(signed(dw), name=f"peak{j}", reset_less=True)
                    beats = self._beats(m, j, x, ahead, peak, valids[0], firsts[0])
                    with m.If(valids[0] & is_max):
                        m.d.sync += peak.eq(Mux(firsts[0] | beats, x, peak))
                    out = Signal(hi - lo, name=f"acc{j}_out{c}")
                    m.d.comb += out.eq(Mux(is_max, peak, part))
                with m.If(valids[c]):
                    with m.If(is_max):
                        if c > 0:
                            m.d.sync += part.eq(Mux(prev[-1], (1 << (hi - lo)) - 1, 0))
                    with m.Else():
                        m.d.sync += [part.eq(total[:hi - lo]), carry_out.eq(total[hi - lo])]
                outs.append(delayed(out, chunks - 1 - c, f"acc{j}_c{c}"))
                carry, prev = carry_out, out
            m.d.comb += self.acc[j].eq(Cat(*outs))
        return m

    @staticmethod
    def _beats(m, j, x, ahead, peak, valid, first):
        """Whether lane ``j``'s neuron ``x`` in stage A exceeds the maximum ``peak`` it meets.

        With ``ahead`` (the neurons a cycle before stage A) the compare is registered: in the
        cycle before, the next neuron is compared with the maximum it will meet, ``peak``
        updated by this cycle's step (``x`` itself after a ``first`` step, ``max(peak, x)``
        after another valid step, ``peak`` after none), so only a register drives ``peak``'s
        enables. The compares are unsigned, on the values with their sign bit flipped (the
        same order): a carry chain's carry-out is the result, with no sign logic after it.
        """
        if ahead is None:
            return x > peak

        def above(a, b):
            flip = 1 << (len(a) - 1)
            return (a.as_unsigned() ^ flip) > (b.as_unsigned() ^ flip)

        nxt = ahead[j]
        beats = Signal(name=f"beats{j}", reset_less=True)
        over_x, over_peak = above(nxt, x), above(nxt, peak)
        m.d.sync += beats.eq(Mux(valid, over_x & (first | over_peak), over_peak))
        return beats
