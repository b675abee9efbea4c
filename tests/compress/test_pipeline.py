"""The pipeline checks its model first: one clear error before any long step, and a model with
BatchNorm, Dropout and bias-free layers runs through to the end."""

import functools
import time

import pytest
import torch
from torch import nn

from slimnfu.compress import ikr, pipeline, train
from slimnfu.compress.intake import IntakeError
from slimnfu.compress.pipeline import compress_network, parse_methods, plan_layers


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 10, 10, generator=g), torch.randint(0, 4, (n,), generator=g)


def _user_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding="same", bias=False), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(),
        nn.Linear(16, 4)).eval()


def test_unsupported_model_is_refused_before_any_step(monkeypatch):
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 4), nn.Softmax(1))
    data = _data(8, 0)
    with pytest.raises(IntakeError, match=r"^the model is not supported: node '5' "
                                          r"\(Softmax\(dim=1\)\): Softmax is not a layer "
                                          r"slimnfu runs; fix: remove it"):
        compress_network(model, data, data, data[0])


def test_plan_per_layer():
    conv = functools.partial(nn.Conv2d, 1, 4)
    two = nn.Sequential(conv(5), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 4))
    methods = [r["method"] for r in plan_layers(two)]
    assert methods == ["slim", "ikr", "perm", "dense"]
    assert [r["method"] for r in plan_layers(two, "auto")] == methods
    assert [r["method"] for r in plan_layers(two, ("ikr",))] == ["ikr", "ikr", "dense", "dense"]
    assert [r["method"] for r in plan_layers(two, "slim")] == ["slim", "slim", "dense", "dense"]
    assert plan_layers(two, "perm")[0]["why"] == "no conv method chosen"
    assert plan_layers(two)[-1]["why"] == "the classifier"
    one = nn.Sequential(conv(3), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    assert [r["method"] for r in plan_layers(one, "auto")] == ["slim", "dense"]
    fc = nn.Sequential(nn.Flatten(), nn.Linear(100, 8), nn.ReLU(), nn.Linear(8, 4))
    assert [r["method"] for r in plan_layers(fc, "auto")] == ["perm", "dense"]
    even = nn.Sequential(conv(2), nn.Flatten(), nn.Linear(4 * 9 * 9, 4))
    assert plan_layers(even, "auto")[0] == {
        "module": 0, "kind": "conv", "method": "dense",
        "why": "kernel 2x2: neither lower kernels nor an IKR schedule"}


@pytest.mark.parametrize("text, message", [
    ("slim,lfsr", r"--methods must be 'auto' or a comma-separated list of distinct methods "
                  r"from slim, ikr, perm, not 'slim,lfsr'"),
    ("ikr,ikr", "not 'ikr,ikr'"), ("", "not ''")])
def test_bad_methods(text, message):
    with pytest.raises(ValueError, match=message):
        parse_methods(text)
    assert parse_methods(" perm, slim") == ("slim", "perm")
    assert parse_methods("auto") == "auto"


def test_a_method_that_saves_nothing_leaves_its_layer_dense(monkeypatch):
    """IKR that can take no step (its schedule has only n = K*K, as when every step is
    rejected) leaves its layers dense, and the compiled config has no IKR hardware."""
    from slimnfu.config import CONFIGS
    from slimnfu.gen.compiler import config_for

    monkeypatch.setattr(ikr, "IkrOptions", functools.partial(
        ikr.IkrOptions, final_batches=1, n_steps={3: (9,)}))
    monkeypatch.setattr(pipeline, "_ikr_steps", lambda conv: (9, 1))
    xs, ys = _data(128, 1)
    xv, yv = _data(64, 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 8), nn.ReLU(),
                          nn.Linear(8, 4))
    fm, q, hist = compress_network(model, (xs, ys), (xv, yv), xv[:16], budget_pct=1.0,
                                   patterns=4, ikr_finetune=1, methods=("ikr",),
                                   log=lambda message: None)
    assert [(p["method"], p["final"]) for p in hist["plan"]] == \
        [("ikr", "dense"), ("ikr", "dense"), ("dense", "dense"), ("dense", "dense")]
    assert hist["ikr"]["n"] == {"0.conv": 9, "3.conv": 9}
    assert {l.format for l in q.layers} == {"dense"}
    cfg = config_for(q, CONFIGS["tiny"])
    assert not cfg.features, cfg.features


def test_batchnorm_dropout_and_bias_free_layers_run_to_the_end(monkeypatch):
    # one fine-tuning step where the pipeline would take hundreds: the point is the model's path
    monkeypatch.setattr(ikr, "IkrOptions", functools.partial(ikr.IkrOptions, final_batches=1))
    xs, ys = _data(128, 1)
    xv, yv = _data(32, 2)
    model = _user_model()
    t0 = time.monotonic()
    fm, q, hist = compress_network(model, (xs, ys), (xv, yv), xv[:16], budget_pct=100.0,
                                   patterns=4, ikr_finetune=1, fc_variant="affine",
                                   log=lambda message: None)
    assert [l.name for l in q.layers] == ["conv1", "pool1", "conv2", "fc1", "fc2"]
    assert [l.format for l in q.layers] == ["slim", "dense", "ikr", "perm_affine", "dense"]
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.Dropout)) for m in fm)
    assert time.monotonic() - t0 < 60


def test_fc_tries_train_to_convergence_and_the_final_network_is_checked(monkeypatch):
    """Each method C try trains up to its epoch budget with early stopping on the validation
    split and records its epochs; the final network is checked in float and in integer, and
    one over the budget is logged as such, not passed."""
    from slimnfu.compress import permfc

    seen = []
    real = permfc.train_early_stopping

    def spy(model, train, val, **kw):
        seen.append(kw)
        return real(model, train, val, **kw)

    monkeypatch.setattr(permfc, "train_early_stopping", spy)
    xs, ys = _data(96, 1)
    xv, yv = _data(48, 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 12), nn.ReLU(), nn.Linear(12, 4))
    logged = []
    fm, q, hist = compress_network(model, (xs, ys), (xv, yv), xv[:16], budget_pct=0.0,
                                   methods=("perm",), fc_groups=(1, 4), fc_epochs=3,
                                   fc_patience=1, log=logged.append)
    assert seen and all(kw["max_epochs"] == 3 and kw["patience"] == 1 for kw in seen)
    tries = hist["fc_tries"]
    assert [(t["variant"], t["groups"]) for t in tries][:1] == [("affine", 1)]
    for t in tries:
        assert 1 <= t["best_epoch"] <= t["epochs"] <= 3 and len(t["val_curve"]) == t["epochs"]
        assert (t["max_epochs"], t["patience"]) == (3, 1) and t["wall_s"] >= 0
    final = hist["final"]
    assert final["val_acc"] == hist["val_acc"]
    assert final["within_budget"] == (final["loss_pts"] <= 0.0)
    assert final["within_budget_int"] == (final["loss_pts_int"] <= 0.0)
    verdict = "within" if final["within_budget"] and final["within_budget_int"] else "OVER"
    assert logged[-1].startswith("final network: val ") and f"{verdict} the 0-point" in \
        logged[-1]
    assert pipeline.FC_EPOCHS == 10 and pipeline.FC_PATIENCE == 2


def _three_stage(monkeypatch):
    """A slim conv, an IKR conv and a permuted FC on random data, one step of everything."""
    monkeypatch.setattr(ikr, "IkrOptions", functools.partial(ikr.IkrOptions, final_batches=1))
    return _user_model(), _data(128, 1), _data(32, 2), _data(40, 3)


def _scripted_gate(monkeypatch, answers):
    """The check split's verdicts replaced by ``answers`` in turn (its figures still
    computed); returns the labels it judged."""
    judged, real = [], pipeline._Gate.__call__

    def scripted(gate, net, label):
        real(gate, net, label)
        judged.append(label)
        gate.steps[-1]["within_budget_check"] = answers[len(judged) - 1]
        return answers[len(judged) - 1]

    monkeypatch.setattr(pipeline._Gate, "__call__", scripted)
    return judged


@pytest.mark.parametrize("answers, shipped, formats", [
    ((True,), "A, B, C perm_affine G=1", ["slim", "dense", "ikr", "perm_affine", "dense"]),
    ((False, True), "A, B, C perm_affine G=4", ["slim", "dense", "ikr", "perm_affine", "dense"]),
    ((False, False, False, True), "A, B", ["slim", "dense", "ikr", "dense", "dense"]),
    ((False,) * 4 + (True,), "A", ["slim", "dense", "dense", "dense", "dense"]),
    ((False,) * 6, "dense", ["dense"] * 5)])
def test_a_network_over_the_budget_on_the_check_split_is_backed_off(monkeypatch, answers,
                                                                     shipped, formats):
    """Each FC try the selection split accepts is judged on the check split; one over the
    budget there is rejected like an FC try, then FC dense, B and A are undone in turn."""
    model, train_set, val, check = _three_stage(monkeypatch)
    judged = _scripted_gate(monkeypatch, answers)
    logged = []
    fm, q, hist = compress_network(model, train_set, val, val[0][:16], budget_pct=100.0,
                                   patterns=4, ikr_finetune=1, fc_groups=(1, 4), fc_epochs=1,
                                   check=check, log=logged.append)
    assert judged == ["A, B, C perm_affine G=1", "A, B, C perm_affine G=4",
                      "A, B, C perm_index G=1", "A, B", "A", "dense"][:len(answers)]
    final = hist["final"]
    assert final["shipped"] == shipped and [l.format for l in q.layers] == formats
    assert [s["network"] for s in final["check_steps"]] == judged
    assert [s["within_budget_check"] for s in final["check_steps"]] == list(answers)
    assert [t["accepted"] for t in hist["fc_tries"]] == list(answers[:3])
    assert final["check_images"] == 40 and final["check_acc_base"] == \
        100.0 * float((model.eval()(check[0]).argmax(1) == check[1]).double().mean())
    assert final["check_loss_pts_int"] == final["check_acc_base"] - final["check_acc_int"]
    assert final["within_budget_check"]  # 100 points: the real verdict on the shipped one
    assert f"final network ({shipped}): " in logged[-1] and "on the check split" in logged[-1]
    assert sum(m.startswith("  check split (40 images): ") for m in logged) == len(answers)


def test_a_forced_fc_variant_is_judged_but_not_backed_off(monkeypatch):
    model, train_set, val, check = _three_stage(monkeypatch)
    judged = _scripted_gate(monkeypatch, ())
    monkeypatch.setattr(pipeline._Gate, "figures", lambda gate, net, q: {
        "check_images": 40, "check_acc_base": 90.0, "check_acc": 50.0, "check_acc_int": 50.0,
        "within_budget_check": False})
    logged = []
    fm, q, hist = compress_network(model, train_set, val, val[0][:16], budget_pct=1.0,
                                   patterns=4, ikr_finetune=1, fc_variant="affine",
                                   fc_epochs=1, check=check, log=logged.append)
    assert judged == [] and hist["final"]["check_steps"] == []
    assert hist["final"]["shipped"] == "A, B, C perm_affine G=1"
    assert "perm_affine" in [l.format for l in q.layers]
    assert logged[-1].endswith("OVER the 1-point budget")


@pytest.mark.parametrize("check, error, message", [
    ("images", TypeError, r"^check must be None or a pair \(images, labels\), not str$"),
    ((1, 2, 3), TypeError, r"^check must be None or a pair \(images, labels\), not tuple "
                           r"of 3$"),
    ((torch.zeros(3, 1, 10, 10), torch.zeros(2)), ValueError,
     r"^check has 3 images and 2 labels; it needs one label per image, at least one image$"),
    ((torch.zeros(0, 1, 10, 10), torch.zeros(0)), ValueError, r"^check has 0 images and 0 "
                                                               r"labels")])
def test_bad_check_split_is_refused_before_any_step(monkeypatch, check, error, message):
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    data = _data(8, 0)
    with pytest.raises(error, match=message):
        compress_network(_user_model(), data, data, data[0], check=check)


def test_the_check_verdict_keeps_a_margin_of_standard_errors(monkeypatch):
    """A loss under the budget by less than CHECK_MARGIN_SE standard errors is over it."""
    right = torch.ones(100, dtype=torch.bool)
    worse = right.clone()
    worse[:4] = False  # 4 points lost, standard error 10 * sqrt(0.04 * 0.96) = 1.96 points
    monkeypatch.setattr(pipeline, "_float_correct", lambda *a: right)
    gate = pipeline._Gate(None, (torch.zeros(100), torch.zeros(100)), None, 5.0, print)
    monkeypatch.setattr(pipeline, "_float_correct", lambda *a: worse)
    monkeypatch.setattr(pipeline, "_int_correct", lambda *a: worse)
    f = gate.figures(None, None)
    assert (f["check_loss_pts"], round(f["check_se_pts"], 4)) == (4.0, 1.9596)
    assert not f["within_budget_check"]  # 4 + 2 * 1.96 > 5
    gate.budget = 8.0
    assert gate.figures(None, None)["within_budget_check"]


def _reordering_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 4)).eval()


def _lower_filter_0(smodel, *args, **kwargs):
    """Method A's greedy replaced by one change: filter 0 of the conv gets a 1x1 kernel, so
    the export order (largest kernel first) is 1, 2, 3, 0 and fc1's columns move."""
    smodel[0].ksize[0] = 1
    return {"acc_calib_base": 0.0, "acc_calib": 0.0, "log": [{"change": "lower"}]}


def test_a_perm_index_layer_takes_method_a_reorder_of_its_inputs():
    """The slim export order permutes fc1's input columns; a perm_index fc1's ROM columns are
    permuted with them (this used to fail mark_perm's check), perm_affine is refused."""
    from slimnfu.compress import permfc, slim

    sm = slim.slim_model(_reordering_model())
    _lower_filter_0(sm)
    cols = slim.reordered_inputs(sm)
    assert list(cols) == [4]
    assert cols[4].tolist() == [c * 16 + p for c in (1, 2, 3, 0) for p in range(16)]
    calib = _data(16, 3)[0]
    indexed = permfc.compress_model(sm, "index", layers=[4])
    q = pipeline.quantize_all(indexed, calib)
    fc1 = q.layers[[l.name for l in q.layers].index("fc1")]
    assert fc1.format == "perm_index"
    assert torch.equal(permfc.gather_weights(fc1), fc1.w)
    affine = permfc.compress_model(sm, "affine", layers=[4])
    with pytest.raises(ValueError, match=r"^module 4: perm_affine after a conv whose channels "
                                         r"method A reorders"):
        pipeline.quantize_all(affine, calib)
    # an untouched conv keeps its order: nothing to permute
    assert slim.reordered_inputs(slim.slim_model(_reordering_model())) == {}


def test_method_c_tries_only_perm_index_after_a_reordered_conv(monkeypatch):
    from slimnfu.compress import slim

    monkeypatch.setattr(slim, "greedy", _lower_filter_0)
    xs, ys = _data(64, 1)
    xv, yv = _data(32, 2)
    said = []
    fm, q, hist = compress_network(_reordering_model(), (xs, ys), (xv, yv), xv[:16],
                                   budget_pct=100.0, methods=("slim", "perm"), fc_epochs=1,
                                   log=said.append)
    assert [t["variant"] for t in hist["fc_tries"]] == ["index"]
    assert [l.format for l in q.layers][:4] == ["slim", "dense", "perm_index", "dense"]
    assert any("perm_affine not tried on module 4" in s for s in said)
    with pytest.raises(ValueError, match=r"^fc_variant 'affine': module 4 follows a conv whose "
                                         r"channels method A reorders"):
        compress_network(_reordering_model(), (xs, ys), (xv, yv), xv[:16], budget_pct=100.0,
                         methods=("slim", "perm"), fc_variant="affine", fc_epochs=1,
                         log=lambda message: None)
