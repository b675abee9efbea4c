import pytest

from slimnfu.config import LayerDesc, get_config
from slimnfu.contract import descriptor_layout, descriptor_value


def test_n_out_field_is_last_and_holds_the_channel_count():
    # the dense layout: optional features (perm, ikr) append their fields after n_out
    cfg = get_config("tiny").with_(perm=False, ikr=False)
    layout = descriptor_layout(cfg)
    assert [name for name, _ in layout][-1] == "n_out"
    desc = LayerDesc("conv", 5, 7, 4, 4, k=3, pad=1, shift=3)
    value = descriptor_value(desc, cfg)

    def field(name):
        f = layout[name]
        return (value >> f.offset) & ((1 << f.width) - 1)

    assert (field("n_out"), field("ci_tiles"), field("co_tiles")) == (7, 2, 2)
    assert (field("h_out"), field("shift"), field("pad")) == (4, 3, 1)
    assert value >> layout["n_out"].offset == 7  # n_out sits at the most significant bits


def test_ikr_pass_cannot_write_the_buffer_it_reads():
    """The engine reads an IKR layer's window rows on its input buffer's write ports, so a
    program layer that would write that buffer is refused; a dense pass may (slim's
    approximation pass reads words it does not write)."""

    from slimnfu.config import PassDesc
    from slimnfu.contract import ProgramLayer

    conv = LayerDesc("conv", 4, 4, 6, 6, k=3, pad=1)
    ikr = PassDesc(conv, ikr_n=4)
    for buf in (0, 1):
        with pytest.raises(ValueError, match=rf"^layer c1: an IKR pass cannot write the neuron "
                                             rf"buffer it reads \(in_buf = out_buf = {buf}\)"):
            ProgramLayer("c1", ikr, 0, [], ("none",), "ikr", in_buf=buf, out_buf=buf)
        ProgramLayer("c1", PassDesc(conv), 0, [], ("none",), "dense", in_buf=buf, out_buf=buf)
    assert ProgramLayer("c1", ikr, 0, [], ("none",), "ikr", in_buf=1, out_buf=0).in_buf == 1
