"""QuantModel.check: every layer valid for its format, and the layers chain (issue 14, case 4:
a tampered compressed-network cache must not compile silently)."""

import dataclasses

import pytest

from slimnfu.formats import QuantModel


def _replace(q, i, **kw):
    layers = list(q.layers)
    layers[i] = dataclasses.replace(layers[i], **kw)
    return dataclasses.replace(q, layers=layers)


def test_real_models_pass(slim_qmodel, small_qmodel):
    for q in (slim_qmodel, small_qmodel):
        assert q.check() is q
        assert QuantModel.from_state(q.to_state()).check().to_state() == q.to_state()


def test_layers_are_checked_before_the_chain(mixed_qmodel):
    # mixed_qmodel puts a separately quantised slim conv1 before the rest, so its scales do
    # not chain; every layer of every format is valid
    with pytest.raises(ValueError, match=r"layers\[1\] \(pool1\)\.f_x: is \d+, the input "
                                         r"scale is"):
        mixed_qmodel.check()


def _bump(t, index, value):
    t = t.clone()
    t.view(-1)[index] = value
    return t


@pytest.mark.parametrize("edit, message", [
    (lambda q: _replace(q, 5, w=_bump(q.layers[5].w, 0, 1_000_000)),
     r"layers\[5\] \(fc2\)\.w: holds 1000000, outside 16 signed bits"),
    (lambda q: _replace(q, 5, b=q.layers[5].b[:2]),
     r"layers\[5\] \(fc2\)\.b: has shape \(2,\), the descriptor needs \(3,\)"),
    (lambda q: _replace(q, 5, f_y=q.layers[5].f_y + 1),
     r"layers\[5\] \(fc2\)\.desc.shift: is \d+, f_x \+ f_w - f_y"),
    (lambda q: _replace(q, 5, desc=dataclasses.replace(q.layers[5].desc, n_out=9)),
     r"layers\[5\] \(fc2\)\.w: has shape \(3, 7\), the descriptor needs \(9, 7\)"),
    (lambda q: _replace(q, 2, w=q.layers[2].w + 1),
     r"layers\[2\] \(conv2\)\.w: a weight lies off its kernel's IKR pattern"),
    (lambda q: _replace(q, 4, w=_bump(q.layers[4].w, 0, 7)),
     r"layers\[4\] \(fc1\)\.w: differs from the common sequence"),
    (lambda q: _replace(q, 0, compressed=None),
     r"layers\[0\] \(conv1\)\.layer conv1: format 'slim' needs compressed to be a "
     r"SlimWeights"),
    (lambda q: _replace(q, 0, w=q.layers[0].w + 1),
     r"layers\[0\] \(conv1\)\.w: filter 3 has weights outside its 1x1 kernel"),
    (lambda q: _replace(q, 4, format="csr"),
     r"layers\[4\] \(fc1\)\.format: unknown weight format 'csr'"),
])
def test_tampered_layers_are_refused_naming_layer_and_field(mixed_qmodel, edit, message):
    with pytest.raises(ValueError, match=message):
        edit(mixed_qmodel).check()


def test_layers_that_do_not_chain_are_refused(small_qmodel):
    q = _replace(small_qmodel, 5, f_x=small_qmodel.layers[5].f_x + 1,
                 f_y=small_qmodel.layers[5].f_y + 1)
    with pytest.raises(ValueError, match=r"layers\[5\] \(fc2\)\.f_x: is \d+, the input scale "
                                         r"is"):
        q.check()
    q = _replace(small_qmodel, 4, desc=dataclasses.replace(small_qmodel.layers[4].desc,
                                                           n_in=21))
    with pytest.raises(ValueError, match=r"layers\[4\] \(fc1\)\."):
        q.check()
