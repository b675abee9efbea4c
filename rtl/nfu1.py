"""NFU-1: the ``tn x ti`` array of signed multipliers, with registered operands and products."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.rtl._params import check_config, delay

__all__ = ["NFU1"]


class NFU1(wiring.Component):
    """``tn * ti`` signed ``dw x dw`` multipliers (DianNao's NFU-1).

    Product ``j*ti + i`` is ``neurons[i] * synapses[j*ti + i]``: output lane ``j`` multiplies
    the same ``ti`` input neurons by its own ``ti`` synapses, which is the SB word layout of
    :mod:`slimnfu.formats.layout`. Products are exact (``2*dw`` bits). The operands are
    registered in the cycle they are on the inputs (the multiplier's input registers) and the
    products one cycle later (its output registers), so each multiplier (one MULT18X18D on
    ECP5 for ``dw <= 18``) sits between two registers; ``cfg.product_stages`` fabric
    registers follow, so that the route from a DSP block to the adder trees has a cycle of its
    own. A product appears :meth:`latency` cycles after its operands. When ``en`` is low the
    operand registers, and one cycle later the product registers, hold their value (operand
    isolation for pooling steps, which do not multiply).

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    neurons : In(ArrayLayout(signed(dw), ti))
    synapses : In(ArrayLayout(signed(dw), tn*ti))
    en : In(1)
    lane_neurons, lane_sel : In(ArrayLayout(signed(dw), tn*ti)), In(1); only with ``cfg.ikr``
        and its window decoder (not ``ikr.lanes``, whose lanes read their own taps)
        When ``lane_sel`` is high, product ``j*ti + i`` takes ``lane_neurons[j*ti + i]``
        instead of ``neurons[i]`` (IKR: each multiplier has its own input tap).
    products : Out(ArrayLayout(signed(2*dw), tn*ti)), registered
    """

    #: Register stages around each multiplier: operand and product registers.
    STAGES = 2

    @classmethod
    def latency(cls, cfg):
        """Cycles from operands on the inputs to their products on ``products``:
        :attr:`STAGES` plus ``cfg.product_stages``."""
        return cls.STAGES + cfg.product_stages

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        super().__init__({
            "neurons": In(data.ArrayLayout(signed(cfg.dw), cfg.ti)),
            "synapses": In(data.ArrayLayout(signed(cfg.dw), cfg.tn * cfg.ti)),
            "en": In(1),
            "products": Out(data.ArrayLayout(signed(2 * cfg.dw), cfg.tn * cfg.ti)),
            **({"lane_neurons": In(data.ArrayLayout(signed(cfg.dw), cfg.tn * cfg.ti)),
                "lane_sel": In(1)} if cfg.ikr and not cfg.ikr.lanes else {}),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        tn, ti = cfg.tn, cfg.ti
        en1 = Signal()
        m.d.sync += en1.eq(self.en)
        for j in range(tn):
            for i in range(ti):
                lane = j * ti + i
                neuron = self.neurons[i]
                if cfg.ikr and not cfg.ikr.lanes:
                    neuron = Mux(self.lane_sel, self.lane_neurons[lane], neuron)
                # reset-less, so that they can be the MULT18X18D's own registers
                a = Signal(signed(cfg.dw), name=f"a{lane}", reset_less=True)
                b = Signal(signed(cfg.dw), name=f"b{lane}", reset_less=True)
                product = Signal(signed(2 * cfg.dw), name=f"p{lane}", reset_less=True)
                with m.If(self.en):
                    m.d.sync += [a.eq(neuron), b.eq(self.synapses[lane])]
                with m.If(en1):
                    m.d.sync += product.eq(a * b)
                m.d.comb += self.products[lane].eq(
                    delay(m, product, cfg.product_stages, f"p{lane}_s", reset_less=True))
        return m
