"""Properties the built-in rules promise, checked on generated runs against their truth."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pytest_modelrules import strategies as mst
from pytest_modelrules.exceptions import MissingTensorError
from pytest_modelrules.rules.activations import DeadRelu
from pytest_modelrules.rules.classification import ClassImbalance, DirectionConfusion
from pytest_modelrules.rules.loss import LossNotDecreasing
from pytest_modelrules.store.memory import transform_run

PROFILE = settings.get_profile(os.environ.get("MODELRULES_HYPOTHESIS_PROFILE", "modelrules-fast"))
FAST = settings(PROFILE)


def _verdict(result) -> tuple[bool, list[int]]:
    return result.triggered, [t.step for t in result.triggers]


# -- LossNotDecreasing ----------------------------------------------------------------------------

LOSS_RUNS = mst.training_runs(
    tensors=("loss",),
    modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
    epochs=(1, 2),
    steps_per_epoch=(2, 30),
    save_interval=(1, 3),
    missing_steps=(0, 2),
    loss=st.sampled_from(mst.LOSS_SHAPES),
    loss_kwargs={"noise": st.sampled_from([0.0, 0.1]), "nonfinite": (0, 1)},
)


@FAST
@given(LOSS_RUNS, st.integers(-20, 20), st.integers(1, 8), st.sampled_from([0.0, 5.0]))
def test_loss_not_decreasing_is_scale_invariant(gen, power, num_steps, diff) -> None:
    """Multiplying every loss by a power of two (exact in float32) changes no verdict."""
    scale = np.float32(2.0**power)
    scaled = transform_run(gen.run, lambda name, a: a * scale if name == mst.LOSS else a)
    rule = LossNotDecreasing(num_steps=num_steps, diff_percent=diff)
    before = _verdict(rule.evaluate(gen.run))
    after = _verdict(LossNotDecreasing(num_steps=num_steps, diff_percent=diff).evaluate(scaled))
    assert before == after


@FAST
@given(
    mst.training_runs(tensors=("loss",), steps_per_epoch=(2, 30), save_interval=(1, 3)),
    st.integers(1, 8),
)
def test_loss_not_decreasing_never_fires_on_a_strictly_decreasing_loss(gen, num_steps) -> None:
    assert not LossNotDecreasing(num_steps=num_steps).evaluate(gen.run).triggered


@FAST
@given(
    mst.training_runs(
        tensors=("loss",), epochs=1, steps_per_epoch=(2, 40), loss="plateau", save_interval=1
    ),
    st.integers(1, 6),
)
def test_loss_not_decreasing_fires_only_on_the_plateau(gen, num_steps) -> None:
    """With every step saved, the rule fires iff the flat part spans a whole comparison
    window (2 * num_steps steps guarantee one), and never before the plateau starts."""
    result = LossNotDecreasing(num_steps=num_steps).evaluate(gen.run)
    start = gen.truth.plateau_step()
    steps = gen.truth.steps["TRAIN"]
    if result.triggered:
        assert result.first_trigger.mode_step >= start + num_steps
    if steps[-1] - start >= 2 * num_steps:
        assert result.triggered


@FAST
@given(LOSS_RUNS, st.integers(1, 8), st.sampled_from([0.0, 5.0]))
def test_loss_not_decreasing_stepwise_agrees_with_the_whole_run(gen, num_steps, diff) -> None:
    """invoke_rule walking every step triggers where evaluate() does, NaN / inf losses (each
    one a trigger) and missing steps included."""
    from pytest_modelrules.rules.custom import invoke_rule

    whole = LossNotDecreasing(num_steps=num_steps, diff_percent=diff).evaluate(gen.run)
    walked = invoke_rule(LossNotDecreasing(num_steps=num_steps, diff_percent=diff), trial=gen.run)
    assert _verdict(walked) == _verdict(whole)
    steps, values = whole.evidence[f"{mst.LOSS}/steps"], whole.evidence[f"{mst.LOSS}/values"]
    assert set(steps[~np.isfinite(values)].tolist()) <= {t.step for t in whole.triggers}


@FAST
@given(
    mst.training_runs(
        tensors=("loss",),
        modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
        epochs=(1, 4),
        steps_per_epoch=(2, 12),
        eval_steps_per_epoch=(1, 4),
        save_interval=(1, 3),
        missing_steps=(0, 2),
        loss=st.sampled_from(mst.LOSS_SHAPES),
        loss_kwargs={"noise": st.sampled_from([0.0, 0.1]), "nonfinite": (0, 1)},
    ),
    st.integers(1, 8),
    st.sampled_from([None, "TRAIN", "EVAL"]),
    st.sampled_from([{}, {"diff_percent": 5.0}, {"min_decrease_percent": 1.0}]),
)
def test_loss_not_decreasing_stepwise_agrees_on_passes(gen, num_steps, mode, limit) -> None:
    """compare="passes" (pass means, or windows of num_steps steps where the mode has one
    stretch): invoke_rule walking every step triggers where evaluate() does."""
    from pytest_modelrules.rules.custom import invoke_rule

    params = {"num_steps": num_steps, "mode": mode, "compare": "passes", **limit}
    whole = LossNotDecreasing(**params).evaluate(gen.run)
    walked = invoke_rule(LossNotDecreasing(**params), trial=gen.run)
    assert _verdict(walked) == _verdict(whole)


# -- ClassImbalance -------------------------------------------------------------------------------


@FAST
@given(
    mst.training_runs(
        modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        num_classes=(2, 5),
        imbalance=(1.0, 8.0),
        tensors=("classification",),
    ),
    st.floats(1.0, 8.0),
)
def test_class_imbalance_counts_match_the_truth(gen, threshold) -> None:
    """The counts it reports are every worker's labels over every mode (data parallel: each
    worker saw its own batches); with ``samples=1`` and the misprediction check off, a one-step
    run triggers iff the true ratio passes the limit."""
    rule = ClassImbalance(
        threshold_imbalance=threshold, threshold_misprediction=None, samples=1, argmax=True
    )
    result = rule.evaluate(gen.run)
    want = sum(gen.truth.label_counts.values())
    got = np.asarray(result.evidence["class_counts"])  # as long as the classes it saw
    got = np.pad(got, (0, max(0, len(want) - len(got))))
    assert np.array_equal(got[: len(want)], want) and not got[len(want) :].any()
    if len(gen.run.steps()) == 1:
        seen = want[want > 0]
        ratio = seen.max() / seen.min()
        assume(abs(ratio - threshold) > 1e-9)
        assert result.triggered == (ratio > threshold)


# -- DeadRelu -------------------------------------------------------------------------------------


@FAST
@given(
    mst.training_runs(
        tensors=("relu",),
        relu_layers=st.integers(1, 3),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        relu_batch=(1, 8),
        relu_spatial=st.sampled_from([None, (2, 2)]),
    ),
    st.floats(0.0, 100.0),
    st.floats(0.01, 50.0),
)
def test_dead_relu_matches_the_true_dead_fraction(gen, threshold_layer, inactivity) -> None:
    worst = max(gen.truth.dead_fraction.values()) * 100
    assume(all(abs(f * 100 - threshold_layer) > 1e-6 for f in gen.truth.dead_fraction.values()))
    result = DeadRelu(threshold_layer=threshold_layer, threshold_inactivity=inactivity).evaluate(
        gen.run
    )
    assert result.triggered == (worst > threshold_layer)
    assert result.figure is not None and abs(result.figure - worst) < 1e-6


# -- DirectionConfusion ---------------------------------------------------------------------------

CONFUSION_RUNS = mst.training_runs(
    modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
    steps_per_epoch=(1, 6),
    workers=(1, 2),
    incomplete_steps=(0, 1),
    missing_steps=(0, 1),
    num_classes=(2, 4),
    min_count=(1, 12),
    confused=st.fixed_dictionaries(
        {(0, 1): st.sampled_from([0.0, 0.2, 0.5, 1.0]), (1, 0): st.sampled_from([0.0, 0.3])}
    ),
    tensors=("classification",),
)


@FAST
@given(CONFUSION_RUNS, st.integers(0, 6), st.sampled_from([(0, 1), (1, 0)]))
def test_direction_confusion_matches_the_truth(gen, limit, pair) -> None:
    """Every worker's batches count (as the rule documents), steps some worker never
    finished do not."""
    result = DirectionConfusion(pairs=[pair], limit=limit).evaluate(gen.run)
    counts = gen.truth.cumulative_pair_counts(0, 1, worker=None)
    want = next((g for g, n in counts if n > limit), None)
    assert result.first_step == want
    assert result.figure == gen.truth.pair_count(0, 1, mode=None)


@FAST
@given(
    mst.training_runs(
        num_classes=(2, 5),
        confused={},
        never_confuse=[(0, 1)],
        accuracy=(0.0, 0.5),
        tensors=("classification",),
    )
)
def test_direction_confusion_is_silent_when_the_pair_is_never_confused(gen) -> None:
    assert not DirectionConfusion(pairs=[(0, 1)], limit=0).evaluate(gen.run).triggered


# -- gradients, weights, non-finite values ---------------------------------------------------------

PARAM_RUNS = dict(
    tensors=("loss", "weights", "gradients"),
    steps_per_epoch=(1, 6),
    workers=(1, 2),
    incomplete_steps=(0, 1),
    missing_steps=(0, 1),
)


@FAST
@given(mst.training_runs(**PARAM_RUNS, grad_scale=st.sampled_from(["vanishing", "normal", 1e-6])))
def test_vanishing_gradient_matches_the_true_scale(gen) -> None:
    from pytest_modelrules.rules.tensors import VanishingGradient

    result = VanishingGradient().evaluate(gen.run)
    assert result.triggered == any(s < 1e-7 for s in gen.truth.grad_scale.values())


@FAST
@given(
    mst.training_runs(
        **PARAM_RUNS,
        update_ratio=st.sampled_from([0.0, 1e-3, 0.5, 20.0]),
    )
)
def test_weight_update_ratio_matches_the_true_ratio(gen) -> None:
    from pytest_modelrules.rules.tensors import WeightUpdateRatio

    ratio = gen.truth.update_ratio.get("fc.weight")
    if len(gen.truth.steps.get("TRAIN", [])) < 2:  # its documented decision: nothing to compare
        with pytest.raises(MissingTensorError, match="two saved TRAIN steps"):
            WeightUpdateRatio().evaluate(gen.run)
        return
    result = WeightUpdateRatio().evaluate(gen.run)
    assert result.triggered == (ratio == 0.0 or ratio > 10.0)


@FAST
@given(
    mst.training_runs(**PARAM_RUNS, update_ratio=st.sampled_from([0.0, 1e-2])),
    st.integers(2, 4),
)
def test_unchanged_tensor_fires_iff_weights_never_change(gen, num_steps) -> None:
    from pytest_modelrules.rules.tensors import UnchangedTensor

    rule = UnchangedTensor(tensor_regex=r"^fc\.weight$", num_steps=num_steps)
    result = rule.evaluate(gen.run)
    frozen = gen.truth.update_ratio.get("fc.weight") == 0.0
    assert result.triggered == (frozen and len(gen.truth.steps["TRAIN"]) >= num_steps)


@FAST
@given(
    mst.training_runs(
        tensors=("loss", "classification", "relu"),
        modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        loss_kwargs={"nonfinite": (0, 2), "nonfinite_values": (np.nan, np.inf, -np.inf)},
    ),
    st.booleans(),
)
def test_exploding_tensor_finds_exactly_the_nonfinite_losses(gen, only_nan) -> None:
    from pytest_modelrules.rules.tensors import ExplodingTensor

    bad = [
        v
        for curve in gen.truth.loss.values()
        for v in curve.nonfinite.values()
        if np.isnan(v) or not only_nan
    ]
    result = ExplodingTensor(only_nan=only_nan).evaluate(gen.run)
    assert result.triggered == bool(bad)


# -- the same verdict from full tensors and from stored reductions ---------------------------------


def _with_reductions(run, pick, reductions, *, drop_full: bool):
    """``run`` plus the reductions (name, abs) of the tensors ``pick`` selects, computed as
    the Recorder computes them; without the full tensors when ``drop_full``."""
    from pytest_modelrules.store.names import compute_reduction, reduction_tensor_name

    def keep(name, arr):
        return None if drop_full and pick(name) else arr

    def add(name, arr):
        if not pick(name):
            return {}
        return {
            reduction_tensor_name(name, red, ab): compute_reduction(arr, red, ab)
            for red, ab in reductions
        }

    return transform_run(run, keep, add=add)


def _same_verdict(rule_factory, run, variant) -> None:
    full = rule_factory().evaluate(run)
    other = rule_factory().evaluate(variant)
    assert (other.triggered, other.first_step) == (full.triggered, full.first_step)
    if full.figure is not None and np.isfinite(full.figure):
        assert other.figure == pytest.approx(full.figure, rel=1e-6, abs=1e-12)


@FAST
@given(
    mst.training_runs(
        tensors=("relu",),
        relu_layers=st.integers(1, 2),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        relu_spatial=st.sampled_from([None, (2, 2)]),
    ),
    st.booleans(),
    st.floats(0.0, 100.0),
)
def test_dead_relu_reads_the_positive_fraction_reduction_alike(gen, drop_full, layer) -> None:
    variant = _with_reductions(
        gen.run, lambda n: "relu_output" in n, [("positive_fraction", False)], drop_full=drop_full
    )
    _same_verdict(lambda: DeadRelu(threshold_layer=layer), gen.run, variant)


@FAST
@given(
    mst.training_runs(
        **PARAM_RUNS,
        grad_scale=st.sampled_from(["vanishing", "normal", 1e-7 * 0.999, 1e-7 * 1.001]),
    ),
    st.booleans(),
)
def test_vanishing_gradient_reads_the_abs_mean_reduction_alike(gen, drop_full) -> None:
    from pytest_modelrules.rules.tensors import VanishingGradient

    variant = _with_reductions(
        gen.run, lambda n: n.startswith("gradient/"), [("mean", True)], drop_full=drop_full
    )
    _same_verdict(VanishingGradient, gen.run, variant)


@FAST
@given(
    mst.training_runs(
        tensors=("loss",),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        loss_kwargs={"nonfinite": (0, 2), "nonfinite_values": (np.nan, np.inf, -np.inf)},
    ),
    st.booleans(),
    st.booleans(),
    st.sampled_from(
        [
            [("nan_count", False), ("inf_count", False)],
            [("nan_count", False)],
            [("min", False), ("max", False)],
            [("mean", True)],
        ]
    ),
)
def test_exploding_tensor_reads_reductions_alike(gen, drop_full, only_nan, reductions) -> None:
    from pytest_modelrules.rules.tensors import ExplodingTensor

    variant = _with_reductions(gen.run, lambda n: n == mst.LOSS, reductions, drop_full=drop_full)
    full = ExplodingTensor(only_nan=only_nan).evaluate(gen.run)
    other = ExplodingTensor(only_nan=only_nan).evaluate(variant)
    names = {r for r, _ in reductions}
    if drop_full and names == {"nan_count"} and not only_nan:
        # the documented limit: a lone nan_count cannot see inf; it must not invent one
        assert other.triggered <= full.triggered
        return
    assert (other.triggered, other.first_step) == (full.triggered, full.first_step)


# -- Confusion and ClassImbalance's misprediction check -------------------------------------------

CLASSIFICATION_RUNS = mst.training_runs(
    modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
    steps_per_epoch=(1, 4),
    workers=(1, 2),
    incomplete_steps=(0, 1),
    num_classes=(2, 4),
    accuracy=(0.3, 1.0),
    confused=st.fixed_dictionaries({(0, 1): st.sampled_from([0.0, 0.3, 0.8])}),
    tensors=("classification",),
)


def _step_confusions(gen) -> dict[int, np.ndarray]:
    """Each complete step's confusion matrix over every worker's batch."""
    out: dict[int, np.ndarray] = {}
    for (step, _worker), conf in gen.truth.batch_confusion.items():
        if step in gen.truth.global_steps:
            out[step] = out.get(step, 0) + conf
    return out


@FAST
@given(CLASSIFICATION_RUNS, st.sampled_from([0.5, 0.9, 1.0]), st.sampled_from([0.0, 0.1, 0.5]))
def test_confusion_fires_exactly_at_the_steps_whose_matrix_is_bad(gen, min_diag, max_off) -> None:
    from pytest_modelrules.rules.classification import Confusion

    want = []
    for step, conf in sorted(_step_confusions(gen).items()):
        col = conf.sum(axis=0)
        used = col > 0
        diag = np.diag(conf)[used] / col[used]
        off = (conf - np.diag(np.diag(conf))).max(axis=0)[used] / col[used]
        if np.any(diag < min_diag) or np.any(off > max_off):
            want.append(step)
    result = Confusion(min_diag=min_diag, max_off_diag=max_off).evaluate(gen.run)
    assert [t.step for t in result.triggers] == want


@FAST
@given(CLASSIFICATION_RUNS, st.sampled_from([0.0, 0.25, 0.5, 0.7]))
def test_class_imbalance_misprediction_matches_the_truth(gen, limit) -> None:
    rule = ClassImbalance(
        threshold_imbalance=1e9, threshold_misprediction=limit, samples=1, argmax=True
    )
    want, total = [], 0
    for step, conf in sorted(_step_confusions(gen).items()):
        total = total + conf
        seen = total.sum(axis=1) > 0
        wrong = (total.sum(axis=1) - np.diag(total))[seen] / total.sum(axis=1)[seen]
        if np.any(wrong > limit):
            want.append(step)
    assert [t.step for t in rule.evaluate(gen.run).triggers] == want


# -- TransferLearning -----------------------------------------------------------------------------


@FAST
@given(
    mst.training_runs(
        tensors=("weights",),
        steps_per_epoch=(2, 6),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        update_ratio=st.fixed_dictionaries(
            {p: st.sampled_from([0.0, 1e-3]) for p in ("conv1.weight", "fc.weight", "fc.bias")}
        ),
    )
)
def test_transfer_learning_matches_which_layers_were_frozen(gen) -> None:
    from pytest_modelrules.rules.transfer import TransferLearning

    assume(len(gen.truth.steps["TRAIN"]) >= 2)
    ratio = gen.truth.update_ratio
    want = ratio["conv1.weight"] > 0 or ratio["fc.weight"] == 0 or ratio["fc.bias"] == 0
    result = TransferLearning(frozen_regex=r"^conv1\.").evaluate(gen.run)
    assert result.triggered == want
