"""One stored image through the accelerator after reset, the predicted class on LEDs."""

from amaranth.hdl import Array, Cat, Const, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from slimnfu.contract import RD_LATENCY
from slimnfu.rtl.accelerator import Accelerator

__all__ = ["ImageRunner"]


class ImageRunner(wiring.Component):
    """Run one stored test image through an :class:`Accelerator` and show the result.

    After reset the runner writes the image (a ROM of NBin words) into the accelerator,
    starts it, waits for ``done``, reads the logits and takes their argmax (the lowest class
    wins a tie, as ``torch.argmax`` does for these integer logits). It then holds ``done``,
    ``predicted`` and ``correct`` (``predicted == label``) and ``cycles`` (the accelerator's
    count for the inference).

    ``leds`` packs them for an eight-LED board: bits 0-3 the predicted class, bit 6
    ``correct``, bit 7 ``done``.

    Parameters
    ----------
    program : Program
        The compiled network (:func:`slimnfu.gen.compiler.compile_model`).
    image_words : list of int
        The image's NBin words (:func:`slimnfu.formats.layout.pack_program_input`).
    label : int
        The image's true class, for ``correct``.
    """

    def __init__(self, program, image_words, label):
        self._MustUse__silence = True
        self.program = program
        cfg = program.cfg
        last = program.layers[-1].desc.layer
        if last.kind != "fc" or last.n_out > 16:
            raise ValueError(f"the last layer must be an fc layer with at most 16 classes, not "
                             f"{last.kind} with {last.n_out} outputs")
        words = [int(w) for w in image_words]
        if not words or len(words) > cfg.nbin_depth:
            raise ValueError(f"image_words must hold 1..{cfg.nbin_depth} NBin words, not "
                             f"{len(words)}")
        if not isinstance(label, int) or not 0 <= label < last.n_out:
            raise ValueError(f"label must be a class in 0..{last.n_out - 1}, not {label!r}")
        self._MustUse__silence = False
        self.image_words, self.label, self.n_classes = words, label, last.n_out
        super().__init__({"done": Out(1), "predicted": Out(4), "correct": Out(1),
                          "cycles": Out(32), "leds": Out(8)})

    def elaborate(self, platform):
        m = Module()
        cfg = self.program.cfg
        tn, dw = cfg.tn, cfg.dw
        m.submodules.accel = accel = Accelerator(self.program)
        m.submodules.image = image = Memory(shape=unsigned(cfg.ti * dw),
                                            depth=len(self.image_words), init=self.image_words)
        rd = image.read_port()
        n_words = len(self.image_words)

        addr = Signal(range(max(n_words, cfg.nbout_depth)))
        wr_valid, wr_addr = Signal(), Signal.like(addr)
        m.d.sync += wr_valid.eq(0)
        m.d.comb += [rd.addr.eq(addr), accel.img_en.eq(wr_valid), accel.img_addr.eq(wr_addr),
                     accel.img_data.eq(rd.data), accel.rd_addr.eq(addr)]

        lane, cls = Signal(range(tn)), Signal(range(self.n_classes))
        wait = Signal(range(RD_LATENCY))
        best, best_val = Signal(4), Signal(dw)
        lanes = Array(accel.rd_data.word_select(j, dw).as_signed() for j in range(tn))
        done = Signal()
        m.d.comb += [self.done.eq(done), self.predicted.eq(best),
                     self.correct.eq(done & (best == self.label)), self.cycles.eq(accel.cycles),
                     self.leds.eq(Cat(best, Const(0, 2), self.correct, done))]
        with m.FSM():
            with m.State("IMAGE"):
                m.d.sync += [wr_valid.eq(1), wr_addr.eq(addr), addr.eq(addr + 1)]
                with m.If(addr == n_words - 1):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += accel.start.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(accel.done):
                    m.d.sync += [addr.eq(0), lane.eq(0), cls.eq(0)]
                    m.next = "LOGITS"
            with m.State("LOGITS"):
                # wait for the word at addr on rd_data
                with m.If(wait == RD_LATENCY - 1):
                    m.d.sync += wait.eq(0)
                    m.next = "SCAN"
                with m.Else():
                    m.d.sync += wait.eq(wait + 1)
            with m.State("SCAN"):
                v = lanes[lane]
                with m.If((cls == 0) | (v > best_val.as_signed())):
                    m.d.sync += [best.eq(cls), best_val.eq(v)]
                m.d.sync += [lane.eq(lane + 1), cls.eq(cls + 1)]
                with m.If(cls == self.n_classes - 1):
                    m.next = "DONE"
                with m.Elif(lane == tn - 1):
                    m.d.sync += [lane.eq(0), addr.eq(addr + 1)]
                    m.next = "LOGITS"
            with m.State("DONE"):
                m.d.sync += done.eq(1)
        return m
