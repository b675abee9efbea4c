"""The layer sequencer: DianNao's loop nest, one NFU step per cycle, no bubbles."""

from amaranth.hdl import Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import bits_for
from slimnfu.rtl._params import check_config
from slimnfu.rtl.loop_nest import LoopNest, tile_counter
from slimnfu.rtl.signatures import RunSignature, StepFeature, StepSignature

__all__ = ["Sequencer"]


class Sequencer(wiring.Component):
    """Walk one layer's loop nest and issue one NFU step per cycle.

    The loop order is DianNao's (:class:`slimnfu.rtl.loop_nest.LoopNest` with its taps)::

        for o in co_tiles: for oy in h_out: for ox in w_out:
            for t in ci_tiles: for ky in k: for kx in k:  step

    with ``t = o`` (and ``ci_tiles = 1``) in the pooling modes. With ``cfg.kgate`` the
    descriptor's ``koff`` moves the window (``iy = oy*stride + ky + koff - pad``), NBout
    addresses start at ``nbout_base``, and ``step.write_mask`` clears the lanes below
    ``lane_skip`` in the first output tile. Each step (a :class:`StepSignature` with ``NBIN``)
    gives the NBin word ``(t*h_in + iy)*w_in + ix`` at ``iy = oy*stride + ky - pad``,
    ``ix = ox*stride + kx - pad`` (or ``pad`` high when that lies outside the input: the
    operand is zero), the SB word ``((o*ci_tiles + t)*k + ky)*k + kx``, the bias word ``o``,
    ``first``/``last`` of the output group (one output pixel of one output tile), the NBout word
    ``(o*h_out + oy)*w_out + ox``, the real-channel mask ``lane_mask[j] = o*tn + j < n_out`` and
    ``end`` on the layer's last step. Steps are issued back to back, across output groups too.

    All addresses come from incremental counters; the per-layer products they need are
    computed after ``run.start`` by a shift-and-add over :attr:`SETUP_CYCLES` cycles, so
    address generation has no multiplier. The first step is issued ``SETUP_CYCLES + 1``
    cycles after the ``run.start`` pulse; ``run.busy`` falls after the ``end`` step.

    Parameters
    ----------
    cfg : AccelConfig

    Members
    -------
    run : In(RunSignature)
    step : Out(StepSignature), with ``NBIN`` (and ``WRITE_MASK`` with ``cfg.kgate``)
    """

    #: Cycles of the shift-and-add setup (one per bit of ``h_in``).
    SETUP_CYCLES = LoopNest.SETUP_CYCLES

    def __init__(self, cfg):
        self.cfg = check_config(self, cfg)
        features = {StepFeature.NBIN} | ({StepFeature.WRITE_MASK} if cfg.kgate else set())
        super().__init__({
            "run": In(RunSignature.for_config(cfg)),
            "step": Out(StepSignature.for_config(cfg, features=features)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, step = self.cfg, self.step
        m.submodules.nest = nest = LoopNest(cfg, taps=True, offsets=bool(cfg.kgate))
        wiring.connect(m, wiring.flipped(self.run), nest.run)
        d, ix, iy = nest.layer, nest.ix, nest.iy
        # Every running cycle is a step; the layer's last step ends the walk.
        m.d.comb += [nest.advance.eq(1), nest.stop.eq(nest.end)]
        sb_addr = tile_counter(m, nest, self.run.start & ~self.run.busy, nest.running, 1,
                               unsigned(bits_for(cfg.sb_depth - 1) + 1), "sb_addr")
        m.d.comb += [
            step.valid.eq(nest.running),
            step.nbin_addr.eq(nest.tbase + nest.row + ix),
            step.pad.eq((iy < 0) | (iy >= d.h_in) | (ix < 0) | (ix >= d.w_in)),
            step.sb_addr.eq(sb_addr),
            step.bias_addr.eq(nest.o),
            step.first.eq(nest.first),
            step.last.eq(nest.last),
            step.end.eq(nest.end),
            step.nbout_addr.eq(nest.nbout),
            step.lane_mask.eq(nest.lane_mask),
        ]
        if cfg.kgate:
            for j in range(cfg.tn):
                m.d.comb += step.write_mask[j].eq((nest.o != 0) | (d.lane_skip <= j))
        return m
