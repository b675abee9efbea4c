"""NFU-1: the ``tn x ti`` array of signed multipliers, with registered products."""

from amaranth.hdl import Module, Mux, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from slimnfu.rtl._params import check_config

__all__ = ["NFU1"]


class NFU1(wiring.Component):
    """``tn * ti`` signed ``dw x dw`` multipliers (DianNao's NFU-1).

    Product ``j*ti + i`` is ``neurons[i] * synapses[j*ti + i]``: output lane ``j`` multiplies
    the same ``ti`` input neurons by its own ``ti`` synapses, which is the SB word layout of
    :mod:`slimnfu.formats.layout`. Products are exact (``2*dw`` bits) and registered: they appear
    one cycle after the operands. When ``en`` is low the product registers hold their value
    (operand isolation for pooling steps, which do not multiply).

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    neurons : In(ArrayLayout(signed(dw), ti))
    synapses : In(ArrayLayout(signed(dw), tn*ti))
    en : In(1)
    lane_neurons, lane_sel : In(ArrayLayout(signed(dw), tn*ti)), In(1); only with ``cfg.ikr``
        When ``lane_sel`` is high, product ``j*ti + i`` takes ``lane_neurons[j*ti + i]``
        instead of ``neurons[i]`` (IKR: each multiplier has its own input tap).
    products : Out(ArrayLayout(signed(2*dw), tn*ti)), registered
    """

    LATENCY = 1

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        super().__init__({
            "neurons": In(data.ArrayLayout(signed(cfg.dw), cfg.ti)),
            "synapses": In(data.ArrayLayout(signed(cfg.dw), cfg.tn * cfg.ti)),
            "en": In(1),
            "products": Out(data.ArrayLayout(signed(2 * cfg.dw), cfg.tn * cfg.ti)),
            **({"lane_neurons": In(data.ArrayLayout(signed(cfg.dw), cfg.tn * cfg.ti)),
                "lane_sel": In(1)} if cfg.ikr else {}),
        })

    def elaborate(self, platform):
        m = Module()
        tn, ti = self.cfg.tn, self.cfg.ti
        with m.If(self.en):
            for j in range(tn):
                for i in range(ti):
                    lane = j * ti + i
                    neuron = self.neurons[i]
                    if self.cfg.ikr:
                        neuron = Mux(self.lane_sel, self.lane_neurons[lane], neuron)
                    m.d.sync += self.products[lane].eq(neuron * self.synapses[lane])
        return m
