"""``slimnfu demo`` refuses bad options before any long step."""

from argparse import Namespace

import pytest

from slimnfu.demo import run_demo


def _args(**kw):
    base = dict(config="tiny", images=20, icarus_images=2, budget=1.0, no_synth=True,
                out="build/demo_test_never_written")
    return Namespace(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"config": "huge"}, "--config must be one of tiny, small, diannao, not 'huge'"),
    ({"images": 0}, r"--images must be in \[1, 1000\], not 0"),
    ({"icarus_images": 30}, r"--icarus-images must be in \[0, --images\], not 30"),
    ({"budget": -1.0}, r"--budget must be in \[0, 100\] points, not -1.0"),
])
def test_bad_option(kw, message):
    with pytest.raises(ValueError, match=message):
        run_demo(_args(**kw))
