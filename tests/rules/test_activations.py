"""DeadRelu and SaturatedActivation: trigger steps, sources (full tensors / reductions), the
smdebug fixture run, parameters as strings, and invariants (Hypothesis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rule_runs import write_run

from pytest_modelrules.exceptions import MissingTensorError, RuleError
from pytest_modelrules.rules.activations import DeadRelu, SaturatedActivation
from pytest_modelrules.store.memory import build_run
from pytest_modelrules.store.names import compute_reduction, reduction_tensor_name
from pytest_modelrules.store.writer import RunWriter

L1, L2 = "layer1.relu_output_0", "layer2.relu_output_0"


def relu_batch(rng: np.random.Generator, batch: int, units: int, dead: int) -> np.ndarray:
    """A ReLU output whose first ``dead`` units are 0 in every sample, the others > 0 in
    about half of the samples (at least one)."""
    x = np.maximum(rng.normal(size=(batch, units)), 0).astype(np.float32)
    x[0, :] = 1.0
    x[:, :dead] = 0.0
    return x


def pos_frac(x: np.ndarray) -> np.ndarray:
    return compute_reduction(x, "positive_fraction")


def red(name: str) -> str:
    return reduction_tensor_name(name, "positive_fraction")


# -- DeadRelu on hand-made runs -------------------------------------------------------------


def test_dead_relu_triggers_at_the_first_step_over_the_limit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dead_per_step = [0, 10, 20, 33, 40, 50]  # of 64 units: 33/64 = 51.6% > 50% first at step 3
    run = write_run(
        tmp_path / "run",
        {
            g: {L1: relu_batch(rng, 32, 64, d), L2: relu_batch(rng, 32, 16, 0)}
            for g, d in enumerate(dead_per_step)
        },
    )
    result = DeadRelu().evaluate(run)
    assert result.triggered
    assert result.first_trigger.step == 3
    assert result.first_trigger.mode == "TRAIN" and result.first_trigger.mode_step == 3
    assert [t.step for t in result.triggers] == [3, 4, 5]
    assert (
        "layer1.relu_output_0: 51.6% of 64 units dead at global step 3 (TRAIN step 3); limit 50%"
        in (result.explanation)
    )
    assert result.figure == pytest.approx(100 * 50 / 64)
    assert result.limit == 50.0
    assert result.evidence["layers"] == [L1, L2]
    assert result.evidence["dead_percent"].shape == (6, 2)
    np.testing.assert_allclose(
        result.evidence["dead_percent"][:, 0], np.array(dead_per_step) / 64 * 100
    )
    np.testing.assert_array_equal(result.evidence["dead_percent"][:, 1], 0.0)
    assert result.evidence["steps"].tolist() == list(range(6))


def test_dead_relu_healthy_run_does_not_trigger_and_reports_the_largest_share(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    run = write_run(tmp_path / "run", {g: {L1: relu_batch(rng, 32, 64, 20)} for g in range(4)})
    result = DeadRelu().evaluate(run)
    assert not result.triggered and result.first_trigger is None and result.triggers == []
    assert result.figure == pytest.approx(100 * 20 / 64)
    assert "No layer had more than 50% dead units" in result.explanation
    assert "31.2%" in result.explanation  # 20/64


def test_dead_relu_parameters_as_strings(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    run = write_run(tmp_path / "run", {g: {L1: relu_batch(rng, 32, 64, 20)} for g in range(3)})
    # 31% dead: under the default 50% limit, over a 25% one given as a string
    assert not DeadRelu().evaluate(run).triggered
    result = DeadRelu(
        threshold_layer="25", threshold_inactivity="1.0", tensor_regex="layer1"
    ).evaluate(run)
    assert result.triggered and result.first_step == 0
    assert result.parameters["threshold_layer"] == 25.0


def test_threshold_inactivity_is_a_percent_of_the_batch(tmp_path: Path) -> None:
    # every unit is > 0 in exactly one of 64 samples: 1.56% of the batch
    x = np.zeros((64, 8), np.float32)
    x[5, :] = 1.0
    run = write_run(tmp_path / "run", {0: {L1: x}})
    assert not DeadRelu().evaluate(run).triggered  # 1.56% >= 1%: alive
    dead = DeadRelu(threshold_inactivity="2").evaluate(run)  # 1.56% < 2%: dead
    assert dead.triggered and dead.figure == 100.0


@pytest.mark.parametrize(("batch", "threshold"), [(100, 1), (50, 2), (200, 0.5), (3, 100 / 3)])
@pytest.mark.parametrize("source", ["full tensor", "reduction"])
def test_a_unit_active_in_exactly_the_threshold_share_is_not_dead(
    tmp_path: Path, batch: int, threshold: float, source: str
) -> None:
    """Strictly fewer: active in exactly 1 of 100 samples is not below 1%, though the stored
    fraction, float32(1 / 100), is a hair under 0.01."""
    x = np.zeros((batch, 10), np.float32)
    x[0, :] = 1.0  # every unit active in exactly one sample
    value = {L1: x} if source == "full tensor" else {red(L1): pos_frac(x)}
    run = write_run(tmp_path / "run", {0: value})
    assert not DeadRelu(threshold_inactivity=threshold).evaluate(run).triggered
    # a hair above the share: every unit is dead
    assert DeadRelu(threshold_inactivity=threshold * 1.001).evaluate(run).figure == 100.0


def test_conv_outputs_count_every_element_as_a_unit(tmp_path: Path) -> None:
    x = np.ones((4, 2, 3, 3), np.float32)
    x[:, 0] = 0.0  # channel 0 dead: 9 of 18 units
    x[:, 1, 0, 0] = 0.0  # plus one more element: 10 of 18 = 55.6%
    result = DeadRelu().evaluate(write_run(tmp_path / "run", {0: {L1: x}}))
    assert result.triggered
    assert result.evidence["units"] == [18]
    assert result.figure == pytest.approx(100 * 10 / 18)


def test_smaller_last_batch_is_handled(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    steps = {
        0: {L1: relu_batch(rng, 32, 10, 2)},
        1: {L1: relu_batch(rng, 32, 10, 2)},
        2: {L1: relu_batch(rng, 7, 10, 6)},
    }
    result = DeadRelu().evaluate(write_run(tmp_path / "run", steps))
    assert result.first_step == 2
    np.testing.assert_allclose(result.evidence["dead_percent"][:, 0], [20.0, 20.0, 60.0])


def test_reduction_and_full_tensor_of_one_layer_count_once_and_the_reduction_is_read(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(4)
    steps = {}
    for g, d in enumerate([0, 40, 40]):
        x = relu_batch(rng, 16, 64, d)
        steps[g] = {L1: x, red(L1): pos_frac(x)}
    run = write_run(tmp_path / "run", steps)
    result = DeadRelu().evaluate(run)
    assert result.evidence["layers"] == [L1]  # the default regex also matches the reduction name
    assert result.evidence["source"] == {L1: "positive_fraction reduction"}
    assert result.first_step == 1


def test_only_the_reduction_is_enough(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    steps = {g: {red(L2): pos_frac(relu_batch(rng, 16, 64, d))} for g, d in enumerate([0, 10, 40])}
    result = DeadRelu().evaluate(write_run(tmp_path / "run", steps))
    assert result.evidence["layers"] == [L2]
    assert result.first_step == 2


def test_missing_relu_outputs_name_the_regex_and_what_the_run_holds(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {0: {"CrossEntropyLoss_output_0": np.float32(1.0)}})
    with pytest.raises(MissingTensorError) as info:
        DeadRelu().evaluate(run)
    message = str(info.value)
    assert "'.*relu_output'" in message and "CrossEntropyLoss_output_0" in message


def test_relu_output_without_positive_fraction_says_which_collection_to_add(
    tmp_path: Path,
) -> None:
    zero = reduction_tensor_name(L1, "zero_fraction")
    run = write_run(tmp_path / "run", {0: {zero: np.float64(0.5)}})
    with pytest.raises(MissingTensorError) as info:
        DeadRelu().evaluate(run)
    message = str(info.value)
    assert "neither the full tensor nor its positive_fraction" in message
    assert 'reductions=["positive_fraction"]' in message


# -- the smdebug fixture run --------------------------------------------------------------


def _expected_layer2_crossing(truth: dict[str, np.ndarray]) -> tuple[int, list[float]]:
    """Independently of the rule: layer2's dead percent per global step and the first step
    over 50%."""
    percents = []
    for g in truth["__steps__"][:, 0]:
        x = truth[f"{g}/{L2}"].reshape(64, -1)
        percents.append(float(((x > 0).mean(axis=0) * 100 < 1.0).mean() * 100))
    first = next(int(g) for g, p in zip(truth["__steps__"][:, 0], percents) if p > 50.0)
    return first, percents


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory: pytest.TempPathFactory, smdebug_truth) -> tuple[Path, Path]:
    """The fixture run's values rewritten as native runs: full tensors, and reductions only."""
    base = tmp_path_factory.mktemp("fixture")
    full, reductions = base / "full", base / "reductions"
    with RunWriter(full) as wf, RunWriter(reductions) as wr:
        for g, mode, mode_step, _saved in smdebug_truth["__steps__"]:
            for name in (L1, L2):
                x = smdebug_truth[f"{g}/{name}"]
                wf.write(name, x, int(g), mode=int(mode), mode_step=int(mode_step))
                wr.write(red(name), pos_frac(x), int(g), mode=int(mode), mode_step=int(mode_step))
    return full, reductions


def test_fixture_layer2_crosses_50_percent_where_the_truth_says(
    fixture_runs, smdebug_truth
) -> None:
    first, percents = _expected_layer2_crossing(smdebug_truth)
    assert percents[0] < 15.0 and percents[-1] > 75.0  # 0.1 -> 0.8 over the run
    full, reductions = fixture_runs
    from_full = DeadRelu().evaluate(full)
    from_red = DeadRelu().evaluate(reductions)
    for result in (from_full, from_red):
        assert result.triggered
        assert result.first_trigger.step == first == 21
        assert (result.first_trigger.mode, result.first_trigger.mode_step) == ("TRAIN", 13)
        assert result.evidence["layers"] == [L1, L2]
        np.testing.assert_allclose(result.evidence["dead_percent"][:, 1], percents)
    assert from_full.evidence["source"][L2] == "full tensor"
    assert from_red.evidence["source"][L2] == "positive_fraction reduction"
    assert [t.step for t in from_full.triggers] == [t.step for t in from_red.triggers]
    assert from_full.explanation == from_red.explanation
    assert (
        "layer2.relu_output_0: 51.6% of 64 units dead at global step 21 (TRAIN step 13)"
        in from_full.explanation
    )


def test_fixture_run_in_smdebug_layout(smdebug_fixture_dir: Path, smdebug_truth) -> None:
    first, percents = _expected_layer2_crossing(smdebug_truth)
    result = DeadRelu(tensor_regex="relu_output").evaluate(smdebug_fixture_dir)
    assert result.first_trigger.step == first
    assert result.first_trigger.mode == "TRAIN"
    np.testing.assert_allclose(result.evidence["dead_percent"][:, 1], percents)


# -- Hypothesis ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 12),
    units=st.integers(1, 12),
    steps=st.integers(1, 4),
    layer=st.floats(0.0, 100.0),
    inactivity=st.floats(0.0, 100.0),
)
def test_dead_relu_is_invariant_to_permuting_samples(
    seed: int, batch: int, units: int, steps: int, layer: float, inactivity: float
) -> None:
    rng = np.random.default_rng(seed)
    values = [
        np.maximum(rng.normal(size=(batch, units)), 0) * (rng.random(units) < 0.5)
        for _ in range(steps)
    ]
    shuffled = [v[rng.permutation(batch)] for v in values]
    rule = DeadRelu(threshold_layer=layer, threshold_inactivity=inactivity)
    a = rule.evaluate(build_run({g: {L1: v} for g, v in enumerate(values)}))
    b = rule.evaluate(build_run({g: {L1: v} for g, v in enumerate(shuffled)}))
    assert a.triggered == b.triggered
    assert [t.step for t in a.triggers] == [t.step for t in b.triggers]
    np.testing.assert_array_equal(a.evidence["dead_percent"], b.evidence["dead_percent"])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 200),
    units=st.integers(1, 10),
    inactivity=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0]),
)
def test_full_tensor_and_reduction_agree(
    seed: int, batch: int, units: int, inactivity: float
) -> None:
    rng = np.random.default_rng(seed)
    values = [
        np.maximum(rng.normal(size=(batch, units)), 0) * (rng.random(units) < 0.6) for _ in range(3)
    ]
    full = build_run({g: {L1: v} for g, v in enumerate(values)})
    reduced = build_run({g: {red(L1): pos_frac(v)} for g, v in enumerate(values)})
    rule = DeadRelu(threshold_inactivity=inactivity, threshold_layer=0.0)
    a, b = rule.evaluate(full), rule.evaluate(reduced)
    assert (a.triggered, a.first_step) == (b.triggered, b.first_step)
    np.testing.assert_array_equal(a.evidence["dead_percent"], b.evidence["dead_percent"])


# -- SaturatedActivation ------------------------------------------------------------------


def test_saturated_tanh_triggers_where_most_units_leave_the_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    steps = {}
    for g, scale in enumerate([1.0, 1.0, 30.0, 30.0]):
        x = rng.normal(size=(32, 10)).astype(np.float32)
        x[:, :6] = np.sign(x[:, :6] + 0.01) * scale * 10  # 6 of 10 units at |x| >= 10 when scaled
        if scale == 1.0:
            x[:, :6] = rng.normal(size=(32, 6))
        steps[g] = {"rnn.tanh_input_0": x}
    result = SaturatedActivation().evaluate(write_run(tmp_path / "run", steps))
    assert result.triggered and result.first_step == 2
    assert "rnn.tanh_input_0: 60% of 10 units saturated at global step 2" in result.explanation
    assert result.figure == pytest.approx(60.0)


def test_sigmoid_uses_its_own_limits(tmp_path: Path) -> None:
    x = np.full((8, 4), 12.0, np.float32)  # outside tanh's 9.4999, inside sigmoid's 16.99999
    run = write_run(tmp_path / "run", {0: {"head.sigmoid_input_0": x, "rnn.tanh_input_0": x}})
    result = SaturatedActivation().evaluate(run)
    assert result.evidence["saturated_percent"][0].tolist() == [0.0, 100.0]
    assert "rnn.tanh_input_0" in result.explanation
    healthy = SaturatedActivation(tensor_regex="sigmoid_input").evaluate(run)
    assert not healthy.triggered


def test_saturated_activation_needs_tanh_or_sigmoid_names(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {0: {"act_input_0": np.zeros((2, 2), np.float32)}})
    with pytest.raises(RuleError, match="tanh or a sigmoid"):
        SaturatedActivation(tensor_regex="act_input").evaluate(run)
    with pytest.raises(MissingTensorError, match="tanh_input"):
        SaturatedActivation().evaluate(run)


def test_rules_are_registered_with_their_defaults() -> None:
    from pytest_modelrules.rules.base import registry

    rules = registry()
    assert rules["dead_relu"] is DeadRelu and rules["saturated_activation"] is SaturatedActivation
    assert DeadRelu().parameters == {
        "tensor_regex": ".*relu_output",
        "threshold_inactivity": 1.0,
        "threshold_layer": 50.0,
    }
    assert DeadRelu.default_enabled and not SaturatedActivation.default_enabled


@pytest.mark.parametrize("param", ["threshold_inactivity", "threshold_layer"])
@pytest.mark.parametrize("value", [-5, 100.5, 200])
@pytest.mark.parametrize("rule", [DeadRelu, SaturatedActivation])
def test_percent_thresholds_outside_0_100_are_refused(rule, param, value) -> None:
    """A percent of 200 or -5 would silently pass or fail every layer: refused, named."""
    from pytest_modelrules import RuleParameterError

    with pytest.raises(RuleParameterError, match=f"{param}.*must lie in \\[0, 100\\]"):
        rule(**{param: value})
    rule(**{param: 0})  # the edges are fine
    rule(**{param: 100})
