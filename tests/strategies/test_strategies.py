"""Every promise of pytest_modelrules.strategies, checked over many generated examples."""

from __future__ import annotations

import itertools
import math
import os
import tempfile

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from pytest_modelrules import strategies as mst
from pytest_modelrules.store.memory import run_differences
from pytest_modelrules.store.run import open_run

PROFILE = settings.get_profile(os.environ.get("MODELRULES_HYPOTHESIS_PROFILE", "modelrules-fast"))
FAST = settings(PROFILE)


def _finite_runs(curve: mst.LossCurve) -> list[np.ndarray]:
    """Maximal runs of consecutive finite values (NaN/inf break a curve into pieces)."""
    out, cur = [], []
    for v in curve.values:
        if np.isfinite(v):
            cur.append(v)
        else:
            out.append(np.asarray(cur, np.float32))
            cur = []
    out.append(np.asarray(cur, np.float32))
    return out


def _draw(strategy: st.SearchStrategy) -> object:
    """One example of a strategy (arguments are checked when drawing)."""
    return find(strategy, lambda _: True, settings=settings(database=None))


# -- loss curves --------------------------------------------------------------------------------


@FAST
@given(mst.loss_curves("decreasing", length=(1, 40)))
def test_strictly_decreasing_curves_are_strictly_decreasing(curve: mst.LossCurve) -> None:
    v = curve.values
    assert v.dtype == np.float32 and v.ndim == 1
    assert np.all(np.isfinite(v)) and np.all(v > 0)
    assert np.all(v[1:] < v[:-1])


@FAST
@given(mst.loss_curves("decreasing", strict=False, max_drop=0.0, length=(2, 10)))
def test_non_strict_decreasing_allows_flat_steps(curve: mst.LossCurve) -> None:
    assert np.all(curve.values[1:] <= curve.values[:-1])
    assert np.all(curve.values == curve.values[0])  # max_drop 0: nothing drops


@FAST
@given(mst.loss_curves("plateau", length=(2, 30), noise=st.sampled_from([0.0, 0.05])))
def test_plateau_starts_at_change_index(curve: mst.LossCurve) -> None:
    c = curve.change_index
    assert c is not None and 0 <= c <= len(curve) - 2
    head, tail = curve.values[: c + 1], curve.values[c:].astype(np.float64)
    assert np.all(head[1:] < head[:-1])
    level = float(curve.values[c])
    if curve.noise == 0:
        assert np.all(tail == level)
    else:
        assert np.all(np.abs(tail / level - 1.0) <= curve.noise)


@FAST
@given(mst.loss_curves("plateau", length=10, change_index=st.integers(3, 6)))
def test_plateau_change_index_is_the_one_asked(curve: mst.LossCurve) -> None:
    assert 3 <= curve.change_index <= 6
    assert curve.values[curve.change_index - 1] > curve.values[curve.change_index]


@FAST
@given(mst.loss_curves("diverging", length=(2, 40)))
def test_diverging_curves_turn_upwards_at_change_index(curve: mst.LossCurve) -> None:
    c = curve.change_index
    v = curve.values
    assert np.all(v[1 : c + 1] < v[:c])
    assert np.all(v[c + 1 :] > v[c:-1])
    assert np.all(np.isfinite(v))


@FAST
@given(mst.loss_curves("noisy", length=(1, 40), noise=(0.0, 0.5)))
def test_noisy_curves_stay_within_the_noise_band(curve: mst.LossCurve) -> None:
    assert curve.trend is not None
    assert np.all(curve.trend[1:] < curve.trend[:-1])
    rel = np.abs(curve.values.astype(np.float64) / curve.trend.astype(np.float64) - 1.0)
    assert np.all(rel <= curve.noise)


@FAST
@given(mst.loss_curves("constant", length=(1, 10)))
def test_constant_curves_are_constant(curve: mst.LossCurve) -> None:
    assert np.all(curve.values == curve.values[0])


@FAST
@given(
    mst.loss_curves(st.sampled_from(mst.LOSS_SHAPES), length=(3, 20), nonfinite=(1, 3), noise=0.01)
)
def test_nonfinite_values_exactly_where_promised(curve: mst.LossCurve) -> None:
    bad = set(np.nonzero(~np.isfinite(curve.values))[0].tolist())
    assert bad == set(curve.nonfinite)
    for i, val in curve.nonfinite.items():
        assert (math.isnan(val) and np.isnan(curve.values[i])) or curve.values[i] == val
    if curve.shape == "decreasing":  # the finite pieces keep the shape
        for piece in _finite_runs(curve):
            assert np.all(piece[1:] < piece[:-1])


def test_loss_curve_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="shape"):
        _draw(mst.loss_curves("wiggly"))
    with pytest.raises(InvalidArgument, match="float32"):
        _draw(mst.loss_curves("decreasing", length=10_000, max_drop=0.9))
    with pytest.raises(InvalidArgument, match="change_index"):
        _draw(mst.loss_curves("plateau", length=3, change_index=5))


# -- labels and predictions ------------------------------------------------------------------------


@FAST
@given(mst.label_streams(num_classes=(2, 8), imbalance=(1.0, 20.0), num_batches=(1, 6)))
def test_label_stream_counts_and_ratio(stream: mst.LabelStream) -> None:
    labels = stream.labels
    assert labels.dtype == np.int64
    assert np.array_equal(np.bincount(labels, minlength=stream.num_classes), stream.counts)
    assert stream.counts.min() >= 1
    # the stated tolerance: round(ratio * min_count) / min_count
    assert abs(stream.ratio - stream.requested_ratio) <= 0.5 / stream.min_count + 1e-12
    sizes = [len(b) for b in stream.batches]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@FAST
@given(mst.label_streams(num_classes=4, imbalance=5.0, min_count=(10, 30)))
def test_integer_ratio_is_exact(stream: mst.LabelStream) -> None:
    assert stream.ratio == 5.0


@st.composite
def _prediction_cases(draw):
    c = draw(st.integers(2, 7))
    stream = draw(mst.label_streams(num_classes=c, min_count=(1, 30), imbalance=(1.0, 4.0)))
    pairs = draw(
        st.dictionaries(
            st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)).filter(lambda p: p[0] != p[1]),
            st.floats(0.0, 0.3),
            max_size=3,
        )
    )
    return stream, pairs


@FAST
@given(_prediction_cases(), st.data())
def test_predictions_hold_exactly_the_confusions_asked(case, data) -> None:
    stream, pairs = case
    p = data.draw(mst.predictions(stream, confused=pairs))
    # logits: float32, a unique maximum at the prediction
    assert p.logits.dtype == np.float32 and p.logits.shape == (
        len(stream.labels),
        stream.num_classes,
    )
    assert np.array_equal(p.logits.argmax(axis=1), p.predicted)
    top = np.sort(p.logits, axis=1)
    if stream.num_classes > 1:
        assert np.all(top[:, -1] > top[:, -2])
    assert np.array_equal(p.confusion, mst._confusion(p.labels, p.predicted, stream.num_classes))
    for (a, b), rate in pairs.items():
        assert p.confusion[a, b] == math.floor(rate * stream.counts[a] + 0.5)
        if (b, a) not in pairs:
            assert p.confusion[b, a] == 0
    if p.accuracy_reachable:
        assert p.correct == math.floor(p.requested_accuracy * len(p.labels) + 0.5)


@FAST
@given(mst.predictions(mst.label_streams(num_classes=(3, 6)), accuracy=(0.0, 1.0)))
def test_accuracy_is_exact_without_constraints(p: mst.Predictions) -> None:
    assert p.accuracy_reachable
    assert p.correct == math.floor(p.requested_accuracy * len(p.labels) + 0.5)


@FAST
@given(
    mst.predictions(
        mst.label_streams(num_classes=(3, 6)), accuracy=(0.0, 0.5), never_confuse=[(0, 1)]
    )
)
def test_never_confuse_pairs_are_never_confused(p: mst.Predictions) -> None:
    assert p.pair_count(0, 1) == 0


def test_confusion_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="add up"):
        _draw(mst.predictions(np.array([0, 1, 2]), confused={(0, 1): 0.7, (0, 2): 0.5}))
    with pytest.raises(InvalidArgument, match="itself"):
        _draw(mst.predictions(np.array([0, 1]), confused={(1, 1): 0.5}))


# -- ReLU, weights, gradients -----------------------------------------------------------------


@FAST
@given(mst.relu_outputs(spatial=st.sampled_from([None, (2, 3)]), batch_size=(1, 12), units=(1, 20)))
def test_dead_fraction_is_exact(out: mst.ReluOutput) -> None:
    arr = out.array
    assert arr.dtype == np.float32 and np.all(arr >= 0)
    b, u = arr.shape[0], arr.shape[1]
    assert len(out.dead_units) == math.floor(out.requested_fraction * u + 0.5)
    per_elem = (arr > 0).reshape(b, -1).mean(axis=0)  # active share of each element
    dead_elem = per_elem == 0
    alive = np.setdiff1d(np.arange(u), out.dead_units)
    assert np.all(arr[:, out.dead_units] == 0)
    need = math.ceil(0.5 * b)
    assert np.all((arr[:, alive] > 0).sum(axis=0) >= need)
    assert dead_elem.mean() == pytest.approx(out.dead_fraction, abs=0)


@FAST
@given(
    mst.param_series(
        grad_scale=st.sampled_from(["vanishing", "normal", "exploding", 0.5]),
        update_ratio=st.sampled_from([0.0, 1e-4, 1e-2, 1.0]),
        shape=st.sampled_from([(3,), (4, 3), (2, 3, 3)]),
    )
)
def test_param_series_scales(ps: mst.ParamSeries) -> None:
    for g in ps.gradients:
        assert g.dtype == np.float32
    assert all(abs(m / ps.grad_scale - 1) <= 1e-5 for m in ps.grad_mean_abs)
    if ps.update_ratio == 0:
        assert all(np.array_equal(w, ps.weights[0]) for w in ps.weights)
    else:
        assert all(abs(r / ps.update_ratio - 1) <= 1e-3 for r in ps.update_ratios)


def test_named_scales_mean_what_they_say() -> None:
    assert mst.GRADIENT_SCALES["vanishing"] < 1e-7 < mst.GRADIENT_SCALES["normal"]
    with pytest.raises(InvalidArgument, match="scale"):
        _draw(mst.param_series(grad_scale="tiny"))


# -- whole runs --------------------------------------------------------------------------------

ALL_TENSORS = ("loss", "classification", "relu", "weights", "gradients")


def _check_run_against_truth(gen: mst.GeneratedRun) -> None:
    run, truth = gen.run, gen.truth
    assert run.workers() == gen.workers
    assert run.class_names == gen.class_names
    assert run.steps() == truth.global_steps
    assert [m.name for m in run.modes()] == [m for m in ("TRAIN", "EVAL") if truth.steps.get(m)]
    for mode, steps in truth.steps.items():
        assert run.steps(mode) == steps
    for row in gen.schedule:
        if row.complete:
            assert run.mode(row.step).name == row.mode
            assert run.mode_step(row.step) == row.mode_step
            assert run.global_step(row.mode, row.mode_step) == row.step
        else:
            assert row.step not in run.steps()
            assert row.step in run.steps(show_incomplete_steps=True)
    for g in truth.missing:
        assert g not in run.steps(show_incomplete_steps=True)
    for mode, curve in truth.loss.items():
        series = run.tensor(mst.LOSS).series(mode)
        assert series.steps.tolist() == truth.steps[mode]
        assert np.array_equal(series.stack(), curve.values, equal_nan=True)
        assert all(a.shape == () and a.dtype == np.float32 for a in series.arrays)
    for mode, counts in truth.label_counts.items():
        labels = run.tensor(mst.LABELS).series(mode, all_workers=True)
        logits = run.tensor(mst.LOGITS).series(mode, all_workers=True)
        lab = labels.concat()
        pred = logits.concat().argmax(axis=1)
        assert lab.dtype == np.int64
        assert np.array_equal(np.bincount(lab, minlength=gen.num_classes), counts)
        assert np.array_equal(mst._confusion(lab, pred, gen.num_classes), truth.confusion[mode])
        for worker, cm in truth.confusion_by_worker[mode].items():
            wl = run.tensor(mst.LABELS).series(mode, worker=worker)
            wp = run.tensor(mst.LOGITS).series(mode, worker=worker)
            got = mst._confusion(wl.concat(), wp.concat().argmax(axis=1), gen.num_classes)
            assert np.array_equal(got, cm)
    for tname, frac in truth.dead_fraction.items():
        for arr in run.tensor(tname).series(all_workers=True).arrays:
            dead = ((arr > 0).mean(axis=0) == 0).mean()
            assert dead == frac
    for gname, scale in truth.grad_scale.items():
        for arr in run.tensor(gname).series().arrays:
            assert abs(np.abs(arr.astype(np.float64)).mean() / scale - 1) <= 1e-5
    for pname, ratio in truth.update_ratio.items():
        ws = run.tensor(pname).series("TRAIN").arrays
        for a, b in itertools.pairwise(ws):
            if ratio == 0:
                assert np.array_equal(a, b)
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            assert abs(np.linalg.norm(b64 - a64) / np.linalg.norm(a64) / ratio - 1) <= 1e-3


@FAST
@given(
    mst.training_runs(
        modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
        epochs=(1, 3),
        save_interval=(1, 3),
        missing_steps=(0, 2),
        workers=(1, 3),
        incomplete_steps=(0, 2),
        tensors=ALL_TENSORS,
        loss=st.sampled_from(mst.LOSS_SHAPES),
        imbalance=(1.0, 4.0),
        confused={(0, 1): 0.25},
    )
)
def test_runs_read_back_with_the_truth_they_were_built_from(gen: mst.GeneratedRun) -> None:
    _check_run_against_truth(gen)


@settings(PROFILE, max_examples=15)
@given(
    mst.training_runs(
        modes=("TRAIN", "EVAL"),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        missing_steps=(0, 1),
        tensors=ALL_TENSORS,
        loss_kwargs={"nonfinite": (0, 1)},
    )
)
def test_saved_runs_read_back_equal(gen: mst.GeneratedRun) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        on_disk = gen.save(os.path.join(tmp, "run"))
        assert on_disk.layout == "native"
        assert run_differences(gen.run, on_disk) == []
        assert run_differences(gen.run, open_run(os.path.join(tmp, "run"))) == []


@settings(PROFILE, max_examples=5)
@given(
    mst.training_runs(
        modes=("TRAIN", "EVAL"),
        epochs=2,
        steps_per_epoch=4,
        eval_steps_per_epoch=2,
        save_interval=2,
    )
)
def test_save_interval_and_modes_follow_smdebug_counting(gen: mst.GeneratedRun) -> None:
    # epoch: TRAIN global 0-3, EVAL 4-5, TRAIN 6-9, EVAL 10-11; every 2nd mode step saved
    assert gen.truth.global_steps == [0, 2, 4, 6, 8, 10]
    assert gen.truth.steps == {"TRAIN": [0, 2, 4, 6], "EVAL": [0, 2]}
    assert gen.run.steps("EVAL") == [0, 2]
    assert gen.run.global_step("EVAL", 2) == 10


def test_failing_examples_shrink_to_small_runs() -> None:
    """Asking for a property makes Hypothesis find a small run that has it."""
    gen = find(
        mst.training_runs(workers=(1, 3), confused={(0, 1): 0.5}, min_count=(1, 20)),
        lambda g: g.truth.pair_count(0, 1) >= 3,
        settings=settings(PROFILE, max_examples=100, database=None, derandomize=True),
    )
    assert gen.truth.pair_count(0, 1) == 3
    assert gen.num_classes == 2
    assert gen.truth.label_counts["TRAIN"].sum() <= 12
    assert "GeneratedRun(" in repr(gen) and "confusions[TRAIN]" in repr(gen)
    assert len(repr(gen)) < 400
    gen = find(
        mst.training_runs(workers=(1, 4), incomplete_steps=(0, 3), steps_per_epoch=(1, 8)),
        lambda g: bool(g.truth.incomplete),
        settings=settings(PROFILE, max_examples=100, database=None, derandomize=True),
    )
    assert gen.workers == ["worker_0", "worker_1"]
    assert len(gen.schedule) == 2 and len(gen.run.steps()) == 1


def test_training_run_arguments_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="tensors"):
        _draw(mst.training_runs(tensors=("loss", "histograms")))
    with pytest.raises(InvalidArgument, match="modes"):
        _draw(mst.training_runs(modes=("PREDICT",)))


@FAST
@given(
    mst.training_runs(
        tensors=("relu", "weights", "gradients"),
        relu_layers=["relu", "layer1.0.relu"],
        dead_fraction={"layer1.0.relu": 1.0},
        grad_scale={"fc.weight": "vanishing"},
        update_ratio={"conv1.weight": 0.0},
    )
)
def test_per_layer_and_per_parameter_choices(gen: mst.GeneratedRun) -> None:
    assert gen.truth.dead_fraction == {
        "relu_output_0": 0.0,  # the root's own ReLU, as the Recorder names it
        "layer1.0.relu_output_0": 1.0,
    }
    assert gen.truth.grad_scale["gradient/fc.weight"] == mst.GRADIENT_SCALES["vanishing"]
    assert gen.truth.grad_scale["gradient/fc.bias"] == mst.GRADIENT_SCALES["normal"]
    assert gen.truth.update_ratio["conv1.weight"] == 0.0
    _check_run_against_truth(gen)


def test_relu_names_are_the_recorders(tmp_path) -> None:
    """Generated runs name ReLU outputs as a recorded run does, so that a rule tested on them
    finds the same names in the real thing."""
    torch = pytest.importorskip("torch")
    from pytest_modelrules import Recorder, open_run

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = torch.nn.ReLU()
            self.block = torch.nn.Module()  # a plain container: block.relu is its ReLU
            self.block.relu = torch.nn.ReLU()
            self.features = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())

        def forward(self, x):
            return self.features(self.block.relu(self.relu(x)))

    with Recorder(tmp_path / "run", Net(), save_interval=1) as rec:
        rec.model(torch.ones(2, 3))
    recorded = {
        n.rpartition("/")[2]
        for n in open_run(tmp_path / "run").tensor_names()
        if "relu_output" in n
    }
    assert recorded == {mst.relu_name(p) for p in ("relu", "block.relu", "features.1")}
