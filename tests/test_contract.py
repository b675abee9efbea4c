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
