"""Tensor rules: VanishingGradient, ExplodingTensor, PoorWeightInitialization,
WeightUpdateRatio, AllZero, TensorVariance, UnchangedTensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rule_runs import write_run

from pytest_modelrules.exceptions import MissingTensorError, RuleParameterError
from pytest_modelrules.rules.base import registry
from pytest_modelrules.rules.tensors import (
    AllZero,
    ExplodingTensor,
    PoorWeightInitialization,
    TensorVariance,
    UnchangedTensor,
    VanishingGradient,
    WeightUpdateRatio,
)
from pytest_modelrules.store.memory import build_run
from pytest_modelrules.store.names import compute_reduction, reduction_tensor_name


def rname(tensor: str, reduction: str, abs: bool = False) -> str:
    return reduction_tensor_name(tensor, reduction, abs)


def grad(rng: np.random.Generator, scale: float, shape: tuple[int, ...] = (8, 4)) -> np.ndarray:
    g = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return (g * scale / np.abs(g).mean()).astype(np.float32)


# -- VanishingGradient ----------------------------------------------------------------------


def test_vanishing_gradient_triggers_where_mean_abs_falls_below(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scales = [1e-2, 1e-4, 1e-6, 1e-8, 1e-9]
    steps = {
        g: {"gradient/fc.weight": grad(rng, s), "gradient/conv1.weight": grad(rng, 1e-3)}
        for g, s in enumerate(scales)
    }
    result = VanishingGradient().evaluate(write_run(tmp_path / "run", steps))
    assert result.triggered and result.first_step == 3
    assert [t.step for t in result.triggers] == [3, 4]
    assert result.explanation.startswith(
        "gradient/fc.weight: mean |gradient| 1e-08 at global step 3 (TRAIN step 3)"
    )
    assert result.figure == pytest.approx(1e-9, rel=1e-4) and result.limit == 1e-7
    assert result.evidence["tensors"] == ["gradient/conv1.weight", "gradient/fc.weight"]
    assert VanishingGradient.higher_is_worse is False
    # threshold as a string
    assert VanishingGradient(threshold="1e-5").evaluate(tmp_path / "run").first_step == 2


def test_vanishing_gradient_healthy_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    steps = {g: {"gradient/fc.weight": grad(rng, 1e-3)} for g in range(4)}
    result = VanishingGradient().evaluate(write_run(tmp_path / "run", steps))
    assert not result.triggered
    assert "No tensor crossed the limit" in result.explanation


def test_vanishing_gradient_reads_the_abs_mean_reduction(tmp_path: Path) -> None:
    steps = {
        g: {rname("gradient/fc.weight", "mean", abs=True): np.float64(v)}
        for g, v in enumerate([1e-3, 1e-5, 1e-8])
    }
    result = VanishingGradient().evaluate(write_run(tmp_path / "run", steps))
    assert result.first_step == 2
    assert result.evidence["tensors"] == ["gradient/fc.weight"]
    assert result.evidence["source"] == {"gradient/fc.weight": "abs_mean reduction"}


def test_vanishing_gradient_gradients_collection_and_missing(tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "run",
        {0: {"g_fc": np.zeros(3, np.float32), "loss": np.float32(1)}},
        collections={"gradients": {"tensor_names": ["g_fc"]}},
    )
    assert VanishingGradient().evaluate(run).evidence["tensors"] == ["g_fc"]
    empty = write_run(tmp_path / "empty", {0: {"loss": np.float32(1)}})
    with pytest.raises(MissingTensorError, match=r"no gradient tensors.*loss"):
        VanishingGradient().evaluate(empty)


# -- ExplodingTensor ------------------------------------------------------------------------


def test_exploding_tensor_nan_and_inf(tmp_path: Path) -> None:
    steps: dict[int, dict[str, Any]] = {}
    for g in range(6):
        w = np.ones(4, np.float32)
        if g == 2:
            w[1] = np.inf
        if g == 4:
            w[0] = np.nan
        steps[g] = {"fc.weight": w, "labels": np.arange(4)}
    run = write_run(tmp_path / "run", steps)
    result = ExplodingTensor().evaluate(run)
    assert result.triggered and result.first_step == 2
    assert [t.step for t in result.triggers] == [2, 4]
    assert (
        "NaN or inf found first at global step 2 (TRAIN step 2) in fc.weight (0 NaN, 1 inf)"
        in result.explanation
    )
    only_nan = ExplodingTensor(only_nan="True").evaluate(run)
    assert only_nan.first_step == 4 and [t.step for t in only_nan.triggers] == [4]
    assert ExplodingTensor(tensor_regex="labels").evaluate(run).triggered is False


def test_exploding_tensor_from_count_and_minmax_reductions(tmp_path: Path) -> None:
    steps = {
        g: {
            rname("a", "nan_count"): np.int64(1 if g == 3 else 0),
            rname("a", "inf_count"): np.int64(0),
            rname("b", "min"): np.float64(-np.inf if g == 1 else -1.0),
            rname("b", "max"): np.float64(1.0),
            rname("c", "max"): np.float64(np.nan if g == 2 else 1.0),
        }
        for g in range(5)
    }
    run = write_run(tmp_path / "run", steps)
    result = ExplodingTensor().evaluate(run)
    assert result.evidence["tensors"] == ["a", "b", "c"]
    assert result.evidence["source"] == {
        "a": "nan_count/inf_count reductions",
        "b": "min/max reductions (as flags)",
        "c": "max reductions (as flags)",
    }
    assert [t.step for t in result.triggers] == [1, 2, 3]
    assert [t.step for t in ExplodingTensor(only_nan=True).evaluate(run).triggers] == [2, 3]
    # the Recorder's defaults for gradients: l2, mean, std, abs_mean
    grads = {
        g: {
            rname("gradient/w", "l2"): np.float64(np.nan if g == 2 else 1.0),
            rname("gradient/w", "mean"): np.float64(np.inf if g == 1 else 0.1),
            rname("gradient/w", "mean", abs=True): np.float64(0.2),
        }
        for g in range(4)
    }
    result = ExplodingTensor().evaluate(write_run(tmp_path / "grads", grads))
    assert [t.step for t in result.triggers] == [1, 2]
    assert result.evidence["source"] == {"gradient/w": "mean/abs_mean/l2 reductions (as flags)"}
    assert "from mean/abs_mean/l2 reductions (as flags), counts unknown" in result.explanation
    nan_only = write_run(
        tmp_path / "nan_only", {g: {rname("d", "nan_count"): np.int64(g == 1)} for g in range(3)}
    )
    result = ExplodingTensor().evaluate(nan_only)
    assert [t.step for t in result.triggers] == [1]
    assert result.evidence["source"] == {"d": "nan_count reduction (no inf count)"}


def test_exploding_tensor_healthy_and_missing(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {g: {"w": np.ones(3)} for g in range(3)})
    result = ExplodingTensor().evaluate(run)
    assert not result.triggered and result.figure == 0
    with pytest.raises(MissingTensorError, match="tensor_regex"):
        ExplodingTensor(tensor_regex="nothing_like_this").evaluate(run)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.lists(
            st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf]), min_size=1, max_size=6
        ),
        min_size=1,
        max_size=5,
    ),
    only_nan=st.booleans(),
)
def test_exploding_tensor_triggers_iff_a_nan_is_present(
    data: list[list[float]], only_nan: bool
) -> None:
    run = build_run({g: {"t": np.array(v, np.float32)} for g, v in enumerate(data)})
    result = ExplodingTensor(only_nan=only_nan).evaluate(run)
    bad = [
        g for g, v in enumerate(data) if np.isnan(v).any() or (not only_nan and np.isinf(v).any())
    ]
    assert result.triggered == bool(bad)
    assert [t.step for t in result.triggers] == bad


# -- PoorWeightInitialization ---------------------------------------------------------------


def test_poor_weight_init_variance_ratio(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    steps = {
        g: {
            "layer1.relu_input_0": rng.normal(0, 1, (16, 8)),
            "layer2.relu_input_0": rng.normal(0, 1 if g < 2 else 10, (16, 8)),  # variance 100x
        }
        for g in range(4)
    }
    result = PoorWeightInitialization().evaluate(write_run(tmp_path / "run", steps))
    assert result.triggered and result.first_step == 2
    assert "activation-input variance" in result.explanation
    assert result.evidence["checks"] == ["activation-input variance ratio"]


def test_poor_weight_init_gradient_spread_and_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    # tiny spread at step 12 only: outside the first 10 steps, so it does not count
    steps = {
        g: {"gradient/fc.weight": grad(rng, 1e-5 if g == 12 else 1e-1, (64,))} for g in range(14)
    }
    run = write_run(tmp_path / "run", steps)
    assert not PoorWeightInitialization().evaluate(run).triggered
    wide = PoorWeightInitialization(steps="13").evaluate(run)
    assert wide.triggered and wide.first_step == 12
    assert "smallest gradient spread (p95-p05)" in wide.explanation


def test_poor_weight_init_loss_not_decreasing_for_patience_steps(tmp_path: Path) -> None:
    losses = [2.0, 1.9, 1.95, 1.92, 1.91, 1.93, 1.94, 1.5]
    run = write_run(
        tmp_path / "run",
        {g: {"CrossEntropyLoss_output_0": np.float32(v)} for g, v in enumerate(losses)},
    )
    # at step 6 none of losses[2..6] is below losses[1] = 1.9
    result = PoorWeightInitialization().evaluate(run)
    assert result.triggered and [t.step for t in result.triggers] == [6]
    assert "did not decrease for 5 steps" in result.explanation
    decreasing = write_run(
        tmp_path / "ok",
        {g: {"CrossEntropyLoss_output_0": np.float32(2 - 0.1 * g)} for g in range(10)},
    )
    assert not PoorWeightInitialization().evaluate(decreasing).triggered


def test_poor_weight_init_nonfinite_loss_triggers_and_is_left_out(tmp_path: Path) -> None:
    losses = [2.0, 1.9, np.nan, 1.8, 1.7, np.inf, 1.6, 1.5, 1.4, 1.3]
    run = write_run(
        tmp_path / "run",
        {g: {"CrossEntropyLoss_output_0": np.float32(v)} for g, v in enumerate(losses)},
    )
    # the finite losses decrease at every step; the NaN and the inf trigger where they are
    result = PoorWeightInitialization().evaluate(run)
    assert [t.step for t in result.triggers] == [2, 5]
    assert "CrossEntropyLoss_output_0 is nan (not finite at 2 of the 10 loss values read)" in (
        result.explanation
    )
    assert "did not decrease" not in result.explanation


def test_poor_weight_init_needs_something_to_check(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {0: {"x": np.ones(2)}})
    with pytest.raises(MissingTensorError, match="nothing to check"):
        PoorWeightInitialization().evaluate(run)


# -- WeightUpdateRatio ----------------------------------------------------------------------


def test_weight_update_ratio_too_large_and_too_small(tmp_path: Path) -> None:
    w0 = np.ones(10, np.float32)
    weights = [w0, w0 * 1.01, w0 * 1.02, w0 * 500, w0 * 500, w0 * 505]
    run = write_run(
        tmp_path / "run",
        {g: {"fc.weight": w, "fc.bias": np.zeros(2)} for g, w in enumerate(weights)},
    )
    result = WeightUpdateRatio().evaluate(run)
    assert result.evidence["tensors"] == ["fc.weight"]  # biases are not checked
    assert [t.step for t in result.triggers] == [3, 4]
    assert result.first_step == 3
    assert (
        "fc.weight: update ratio 489.2 at global step 3 (TRAIN step 3), above the limit 10"
        in result.explanation
    )
    assert result.evidence["steps"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        result.evidence["update_ratio"][:, 0], [0.01, 0.0099, 489.2, 0.0, 0.01], rtol=1e-3
    )


def test_weight_update_ratio_compares_train_steps_only(tmp_path: Path) -> None:
    w = [np.full(4, 1.0 + 0.01 * i, np.float32) for i in range(6)]
    modes = {0: "TRAIN", 1: "TRAIN", 2: "EVAL", 3: "EVAL", 4: "TRAIN", 5: "TRAIN"}
    # weights do not change during EVAL: steps 2, 3 repeat step 1's weights
    values = [w[0], w[1], w[1], w[1], w[2], w[3]]
    result = WeightUpdateRatio().evaluate(
        write_run(tmp_path / "run", {g: {"fc.weight": v} for g, v in enumerate(values)}, modes)
    )
    assert not result.triggered
    assert result.evidence["steps"].tolist() == [1, 4, 5]


def test_weight_update_ratio_num_steps_and_strings(tmp_path: Path) -> None:
    values = [np.full(4, 1.0 + 0.001 * g, np.float32) for g in range(6)]
    run = write_run(tmp_path / "run", {g: {"conv1.weight": v} for g, v in enumerate(values)})
    result = WeightUpdateRatio(num_steps="2", small_threshold="0.0015").evaluate(run)
    assert result.evidence["steps"].tolist() == [2, 3, 4, 5]
    assert not result.triggered  # two steps apart the ratio is ~0.002
    consecutive = WeightUpdateRatio(small_threshold="0.0015").evaluate(run)
    assert consecutive.triggered and consecutive.first_step == 1
    assert consecutive.figure_name == "smallest update ratio" and consecutive.limit == 0.0015


def test_weight_update_ratio_needs_full_weights(tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "run", {g: {rname("fc.weight", "l2"): np.float64(1.0 + g)} for g in range(3)}
    )
    with pytest.raises(MissingTensorError, match="needs full weight tensors"):
        WeightUpdateRatio().evaluate(run)


# -- AllZero --------------------------------------------------------------------------------


def test_all_zero(tmp_path: Path) -> None:
    steps = {
        g: {"fc.weight": np.ones(4) * (g < 2), "fc.bias": np.array([0.0, 0.0, 1.0, 1.0])}
        for g in range(4)
    }
    run = write_run(tmp_path / "run", steps)
    result = AllZero(tensor_regex="fc").evaluate(run)
    assert result.triggered and result.first_step == 2
    assert result.explanation.startswith(
        "fc.weight: zero percent 100 at global step 2 (TRAIN step 2); limit 100% zeros"
    )
    half = AllZero(tensor_regex="fc.bias", threshold="50").evaluate(run)
    assert half.triggered and half.first_step == 0
    assert not AllZero(tensor_regex="fc.bias").evaluate(run).triggered


def test_all_zero_requires_a_selection_and_reads_zero_fraction(tmp_path: Path) -> None:
    with pytest.raises(RuleParameterError, match="collection_names"):
        AllZero()
    assert AllZero.default_enabled is False
    run = write_run(
        tmp_path / "run",
        {g: {rname("act", "zero_fraction"): np.float64(f)} for g, f in enumerate([0.2, 1.0])},
        collections={"acts": {"tensor_names": ["act"]}},
    )
    result = AllZero(collection_names="acts").evaluate(run)
    assert result.first_step == 1 and result.evidence["source"] == {
        "act": "zero_fraction reduction"
    }


def test_all_zero_on_default_relu_outputs_says_which_collection_to_add(tmp_path: Path) -> None:
    """The default recording stores only positive_fraction of ReLU outputs: AllZero on them
    names the CollectionConfig that adds zero_fraction."""
    pf = np.full(8, 0.5, np.float32)
    run = write_run(
        tmp_path / "run",
        {g: {rname("layer1.0.relu_output_0", "positive_fraction"): pf} for g in range(2)},
    )
    with pytest.raises(MissingTensorError) as info:
        AllZero(tensor_regex=".*relu_output").evaluate(run)
    assert (
        'CollectionConfig("relu_output", reductions=["positive_fraction", "zero_fraction"])'
        in str(info.value)
    )


def test_poor_weight_initialization_without_relu_inputs_says_how_to_record_them(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    steps = {
        g: {"gradient/fc.weight": grad(rng, 1.0, (64, 8)), "CrossEntropyLoss_output_0": 2.0 - g}
        for g in range(3)
    }
    run = write_run(tmp_path / "run", steps)
    result = PoorWeightInitialization().evaluate(run)
    assert "activation-input variance ratio" not in result.evidence["checks"]
    assert 'CollectionConfig("relu_input", save_interval=1)' in result.explanation
    empty = write_run(tmp_path / "empty", {0: {"other": np.zeros(2, np.float32)}})
    with pytest.raises(MissingTensorError, match=r'CollectionConfig\("relu_input"'):
        PoorWeightInitialization().evaluate(empty)


# -- TensorVariance -------------------------------------------------------------------------


def test_tensor_variance(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    steps = {g: {"x": rng.normal(0, s, 1000)} for g, s in enumerate([1.0, 1.0, 5.0, 0.01])}
    run = write_run(tmp_path / "run", steps)
    high = TensorVariance(tensor_regex="x", max_threshold="10").evaluate(run)
    assert [t.step for t in high.triggers] == [2]
    low = TensorVariance(tensor_regex="x", min_threshold="0.1").evaluate(run)
    assert [t.step for t in low.triggers] == [3]
    both = TensorVariance(tensor_regex="x", min_threshold=0.1, max_threshold=10).evaluate(run)
    assert [t.step for t in both.triggers] == [2, 3]
    assert (
        not TensorVariance(tensor_regex="x", min_threshold=1e-6, max_threshold=1e3)
        .evaluate(run)
        .triggered
    )


def test_tensor_variance_parameters_and_std_reduction(tmp_path: Path) -> None:
    with pytest.raises(RuleParameterError, match="max_threshold"):
        TensorVariance(tensor_regex="x")
    with pytest.raises(RuleParameterError, match="tensor_regex"):
        TensorVariance(max_threshold=1)
    run = write_run(
        tmp_path / "run", {g: {rname("x", "std"): np.float64(s)} for g, s in enumerate([1.0, 4.0])}
    )
    result = TensorVariance(tensor_regex="x", max_threshold=10).evaluate(run)
    assert result.first_step == 1 and result.figure == 16.0


# -- UnchangedTensor ------------------------------------------------------------------------


def test_unchanged_tensor_old_test_cases(tmp_path: Path) -> None:
    # SageMaker's old tests: ones saved at steps 0, 1, 2 trigger at 2
    ones = write_run(tmp_path / "ones", {g: {"foo": np.ones((3, 3))} for g in range(3)})
    result = UnchangedTensor(tensor_regex="foo").evaluate(ones)
    assert result.triggered and result.first_step == 2 and [t.step for t in result.triggers] == [2]
    assert "the last 3 saved values were all close" in result.explanation
    # a tensor saved at a single step never triggers
    single = write_run(
        tmp_path / "single",
        {0: {"foo": np.ones(3)}, 1: {"bar": np.ones(3)}, 2: {"bar": np.arange(3.0)}},
    )
    assert not UnchangedTensor(tensor_regex="foo").evaluate(single).triggered


def test_unchanged_tensor_saved_steps_need_not_be_consecutive_and_changes_pass(
    tmp_path: Path,
) -> None:
    steps = {
        0: {"w": np.ones(2)},
        5: {"w": np.ones(2) + 1e-9},
        10: {"w": np.ones(2)},
        11: {"v": np.zeros(1)},
    }
    run = write_run(tmp_path / "run", steps)
    assert UnchangedTensor(tensor_regex="w").evaluate(run).first_step == 10
    changing = write_run(tmp_path / "changing", {g: {"w": np.full(2, float(g))} for g in range(5)})
    assert not UnchangedTensor().evaluate(changing).triggered
    assert UnchangedTensor(num_steps="2").evaluate(tmp_path / "run").first_step == 5
    with pytest.raises(RuleParameterError, match="num_steps"):
        UnchangedTensor(num_steps=1)


@pytest.mark.parametrize(
    ("rule", "params", "problem"),
    [
        ("unchanged_tensor", {"rtol": -1}, "'rtol' must be at least 0, got -1"),
        ("unchanged_tensor", {"atol": "-1e-3"}, "'atol' must be at least 0, got -0.001"),
        ("all_zero", {"tensor_regex": "w", "threshold": -5}, "must lie in [0, 100], got -5"),
        ("all_zero", {"tensor_regex": "w", "threshold": 101}, "must lie in [0, 100], got 101"),
        ("vanishing_gradient", {"threshold": -1}, "'threshold' must be at least 0, got -1"),
        ("vanishing_gradient", {"threshold": "nan"}, "'threshold' must be at least 0, got nan"),
    ],
)
def test_a_threshold_no_value_can_meet_is_refused(rule: str, params: dict, problem: str) -> None:
    """Negative tolerances make nothing close, a negative percent of zeros triggers at every
    step, a negative mean |g| can never be under it: wrong values, said before any run."""
    with pytest.raises(RuleParameterError) as err:
        registry()[rule](**params)
    assert problem in str(err.value)


def test_unchanged_tensor_and_all_zero_missing_tensors(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {g: {rname("w", "l2"): np.float64(1.0)} for g in range(3)})
    with pytest.raises(MissingTensorError, match="stored only as reductions"):
        UnchangedTensor(tensor_regex="w").evaluate(run)
    with pytest.raises(MissingTensorError, match=r"tensor_regex=.*relu"):
        AllZero(tensor_regex="relu").evaluate(run)
    with pytest.raises(MissingTensorError, match="tensor_regex"):
        TensorVariance(tensor_regex="relu", max_threshold=1).evaluate(run)


def test_unchanged_tensor_nan_handling(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {g: {"w": np.array([np.nan, 1.0])} for g in range(3)})
    assert not UnchangedTensor().evaluate(run).triggered
    assert UnchangedTensor(equal_nan="true").evaluate(run).first_step == 2


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=1, max_size=8),
    before=st.lists(st.floats(-5, 5, allow_nan=False), min_size=0, max_size=4),
    num_steps=st.integers(2, 4),
)
def test_unchanged_tensor_invariant_to_adding_steps_before(
    values: list[float], before: list[float], num_steps: int
) -> None:
    rule = UnchangedTensor(num_steps=num_steps)
    shift = len(before)
    base = rule.evaluate(build_run({g: {"t": np.full(2, v)} for g, v in enumerate(values)}))
    longer = rule.evaluate(
        build_run({g: {"t": np.full(2, v)} for g, v in enumerate(before + values)})
    )
    # the verdict at a step whose window lies inside the original steps is unchanged
    kept = {t.step - shift for t in longer.triggers if t.step - shift >= num_steps - 1}
    assert kept == {t.step for t in base.triggers}


def test_every_rule_of_this_module_is_registered() -> None:
    rules = registry()
    for name, cls in [
        ("vanishing_gradient", VanishingGradient),
        ("exploding_tensor", ExplodingTensor),
        ("poor_weight_initialization", PoorWeightInitialization),
        ("weight_update_ratio", WeightUpdateRatio),
        ("all_zero", AllZero),
        ("tensor_variance", TensorVariance),
        ("unchanged_tensor", UnchangedTensor),
    ]:
        assert rules[name] is cls
    assert VanishingGradient().parameters == {"threshold": 1e-7}
    assert WeightUpdateRatio().parameters == {
        "num_steps": None,
        "large_threshold": 10.0,
        "small_threshold": 1e-8,
        "epsilon": 1e-9,
    }
    assert (
        UnchangedTensor().parameters["rtol"] == 1e-5
        and UnchangedTensor().parameters["num_steps"] == 3
    )
    assert PoorWeightInitialization().parameters == {
        "activation_inputs_regex": ".*relu_input",
        "threshold": 10.0,
        "distribution_range": 0.001,
        "patience": 5,
        "steps": 10,
    }


def test_reduction_value_matches_compute_reduction_for_rules() -> None:
    # the rules' full-tensor path and the stored-reduction path agree on the same numbers
    rng = np.random.default_rng(5)
    vals = [rng.normal(0, 1e-7, (4, 4)) for _ in range(3)]
    full = VanishingGradient().evaluate(
        build_run({g: {"gradient/w": v} for g, v in enumerate(vals)})
    )
    red = VanishingGradient().evaluate(
        build_run(
            {
                g: {rname("gradient/w", "mean", True): compute_reduction(v, "mean", True)}
                for g, v in enumerate(vals)
            }
        )
    )
    np.testing.assert_allclose(full.evidence["abs_mean"], red.evidence["abs_mean"])
    assert [t.step for t in full.triggers] == [t.step for t in red.triggers]
