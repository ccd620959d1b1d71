"""The assert_* helpers called directly: verdicts, plain parameters, failure messages."""

from __future__ import annotations

from pathlib import Path

import pytest

import pytest_modelrules
from pytest_modelrules import assertions, modes
from pytest_modelrules.assertions import HELPER_RULES, ModelRuleFailure
from pytest_modelrules.exceptions import RuleError, RuleParameterError


def test_every_lazy_helper_name_is_provided() -> None:
    lazy = [
        n
        for n, mod in pytest_modelrules._LAZY.items()
        if mod.endswith(".assertions") and n.startswith("assert_")
    ]
    assert len(lazy) == 23
    assert pytest_modelrules.ModelRuleFailure is ModelRuleFailure
    for name in lazy:
        assert callable(getattr(pytest_modelrules, name)), name
        assert name in assertions.__all__


@pytest.mark.parametrize("helper", sorted(HELPER_RULES))
def test_each_helper_evaluates_its_rule(helper: str, runs: dict[str, Path]) -> None:
    """An unknown parameter is rejected by the helper's rule class: proof of the mapping."""
    from pytest_modelrules.rules.registry import rule_class

    cls = rule_class(HELPER_RULES[helper])
    fn = getattr(assertions, helper)
    args = (runs["good"],) if helper != "assert_no_regression" else (runs["good"], runs["good"])
    with pytest.raises(RuleParameterError, match=rf"{cls.__name__}: unknown parameter.*bogus_x"):
        fn(*args, bogus_x=1)


def test_a_passing_rule_returns_its_result(runs) -> None:
    result = assertions.assert_class_balance(runs["good"], samples=10)
    assert result.name == "class_imbalance" and result.passed
    assert result.parameters["samples"] == 10


def test_failure_is_an_assertion_error_carrying_the_result(runs) -> None:
    with pytest.raises(AssertionError) as info:
        assertions.assert_class_balance(runs["bad"], samples=10)
    exc = info.value
    assert isinstance(exc, ModelRuleFailure)
    assert exc.result.triggered and exc.result.name == "class_imbalance"
    text = str(exc)
    assert text.startswith(
        "model rule class_imbalance triggered on run 'bad' (assert_class_balance)"
    )
    assert "threshold_imbalance=10" in text and "samples=10" in text
    assert "first triggered at global step 0 (TRAIN step 0)" in text
    assert "largest / smallest class count: 248.3 (limit 10)" in text
    # most and least frequent classes with names and counts
    most = text.split("most frequent:")[1].split("least frequent:")[0]
    assert "0 (sign 0)  1490" in most
    least = text.split("least frequent:")[1]
    assert "4 (sign 4)  6" in least


def test_dead_relu_percent_is_threshold_layer(runs) -> None:
    with pytest.raises(ModelRuleFailure) as info:
        assertions.assert_dead_relu_below(runs["bad"], percent=50)
    text = str(info.value)
    assert "threshold_layer=50" in text
    assert "layer1.relu_output_0  90.0%" in text and "<- over" in text
    assert assertions.assert_dead_relu_below(runs["bad"], percent=95).passed
    with pytest.raises(TypeError, match="percent or threshold_layer"):
        assertions.assert_dead_relu_below(runs["bad"], percent=50, threshold_layer=40)


def test_mode_takes_modekeys_or_its_name(runs) -> None:
    by_key = assertions.assert_loss_decreasing(runs["good"], mode=modes.TRAIN)
    by_name = assertions.assert_loss_decreasing(runs["good"], mode="TRAIN")
    assert by_key.parameters["mode"] == by_name.parameters["mode"] == "TRAIN"
    with pytest.raises(RuleParameterError, match="mode"):
        assertions.assert_loss_decreasing(runs["good"], mode="TRAINING")


def test_loss_message_shows_values_around_the_plateau(runs) -> None:
    with pytest.raises(ModelRuleFailure) as info:
        assertions.assert_loss_decreasing(runs["bad"])
    text = str(info.value)
    assert "first triggered at global step 20 (TRAIN step 20)" in text
    assert "CrossEntropyLoss_output_0 (TRAIN, 24 steps, 2 -> 1.62):" in text
    assert "▁" in text and "█" in text
    assert ">20: 1.62" in text


def test_loss_message_names_nan_and_inf_steps(tmp_path) -> None:
    import numpy as np

    from pytest_modelrules.store.writer import RunWriter

    with RunWriter(tmp_path / "nan") as w:
        for g in range(30):
            loss = 2.0 - 0.05 * g if g < 18 else (np.inf if g == 18 else np.nan)
            w.write("CrossEntropyLoss_output_0", np.float32(loss), g, mode="TRAIN")
    with pytest.raises(ModelRuleFailure) as info:
        assertions.assert_loss_decreasing(tmp_path / "nan")
    text = str(info.value)
    assert "first triggered at global step 18 (TRAIN step 18); triggered at 12 steps" in text
    assert (
        "why: CrossEntropyLoss_output_0 (TRAIN) is not finite at 12 of 30 saved steps "
        "(11 NaN, 1 inf), first at global step 18 (TRAIN step 18): inf;"
    ) in text
    assert "NaN / inf (! above) at 12 global steps: 18, 19, 20, 21, 22, 23, 24, 25, ..." in text
    assert ">18: inf" in text


def test_direction_confusion_max_confusions_is_the_rules_limit(runs) -> None:
    # the bad run predicts its labels exactly: no confusion at all
    result = assertions.assert_no_direction_confusion(runs["bad"], pairs=[(0, 1)])
    assert result.parameters["limit"] == 10
    relaxed = assertions.assert_no_direction_confusion(
        runs["bad"], pairs=[(0, 1)], max_confusions=3
    )
    assert relaxed.parameters["limit"] == 3


def test_a_rule_that_cannot_run_raises_its_own_error(runs) -> None:
    with pytest.raises(RuleError):
        assertions.assert_no_vanishing_gradient(runs["good"])  # the run holds no gradients


def test_assert_rule_and_unknown_rules(runs) -> None:
    assert assertions.assert_rule(runs["good"], "dead_relu", threshold_layer=50).passed
    with pytest.raises(RuleError, match="no_such_rule"):
        assertions.assert_rule(runs["good"], "no_such_rule")


def test_assert_no_regression_against_a_baseline(runs) -> None:
    same = assertions.assert_no_regression(runs["good"], runs["good"], mode="TRAIN")
    assert same.passed
    with pytest.raises(ModelRuleFailure) as info:
        assertions.assert_no_regression(runs["bad"], runs["good"], mode="TRAIN")
    text = str(info.value)
    assert "model rule baseline_comparison triggered on run 'bad'" in text
    assert f"baseline='{runs['good']}'" in text
    assert "dead_relu triggers now but not in the baseline" in text
    # the evidence table: each compared rule's figure, baseline against this run
    assert any(
        line.split()[:3] == ["dead_relu", "0", "90"] for line in text.splitlines() if "<-" in line
    )


BASELINE_TESTS = """
    from pytest_modelrules import assert_no_regression

    def test_no_regression(model_run, baseline_run):
        assert_no_regression(model_run, baseline_run, mode="TRAIN")
"""


def test_baseline_fixture_and_config_rule(pytester: pytest.Pytester, run_inner, runs) -> None:
    pytester.makepyfile(BASELINE_TESTS)
    pytester.makeini("[pytest]\nmodel_rules =\n    baseline_comparison mode=TRAIN\n")
    result = run_inner(
        f"--model-run={runs['good']}",
        f"--model-run={runs['bad']}",
        f"--model-run-baseline=main={runs['good']}",
        "-rA",
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "PASSED *::test_no_regression[[]good[]]",
            "FAILED *::test_no_regression[[]bad[]]*",
            "PASSED modelrules::baseline_comparison[[]good[]]",
            "FAILED modelrules::baseline_comparison[[]bad[]]*",
        ]
    )
    assert "Compared with baseline 'main'" in result.stdout.str()
    without = run_inner(f"--model-run={runs['good']}", "-rs")
    without.assert_outcomes(skipped=2)
    without.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *.py:3: no baseline run given*",
            "SKIPPED [[]1[]] tox.ini:1: no baseline*",
        ]
    )


def test_a_parameter_given_as_none_reaches_the_rule(smdebug_fixture_dir) -> None:
    """limit=None means "the rate alone" to DirectionConfusion: the helper, assert_rule and
    evaluate all pass it on (the helpers used to drop every None, so the count limit of 10
    came back)."""
    from pytest_modelrules import evaluate, open_run

    run = open_run(smdebug_fixture_dir)
    params = {"pairs": [(19, 20)], "max_rate": 0.9}
    assert not evaluate(run, "direction_confusion", limit=None, **params).triggered
    assert assertions.assert_no_direction_confusion(run, max_confusions=None, **params).passed
    assert assertions.assert_rule(run, "direction_confusion", limit=None, **params).passed
    with pytest.raises(ModelRuleFailure, match="limit 10"):  # the default count limit
        assertions.assert_no_direction_confusion(run, **params)
    with pytest.raises(TypeError, match="not both"):  # even when max_confusions is the default's
        assertions.assert_no_direction_confusion(run, max_confusions=10, limit=3, **params)


def test_a_helper_argument_with_a_bad_value_is_named_as_written(tmp_path) -> None:
    """percent= and minimum= are the helpers' names for threshold_layer and min_recall: an
    error names both, and the value the caller wrote."""
    import numpy as np

    from pytest_modelrules import RunWriter

    with RunWriter(tmp_path / "run") as w:
        w.write("loss", np.float32(1), 0)
    with pytest.raises(RuleParameterError, match=r"percent='fifty'.*'threshold_layer' \(percent\)"):
        assertions.assert_dead_relu_below(tmp_path / "run", percent="fifty")
    with pytest.raises(RuleParameterError, match=r"minimum=3: .*'min_recall' \(minimum\)"):
        assertions.assert_recall_above(tmp_path / "run", minimum=3)


def test_few_classes_are_listed_once(tmp_path) -> None:
    """With 3 classes or fewer the most frequent list holds them all: no "least frequent"
    list repeating them."""
    import numpy as np

    from pytest_modelrules import RunWriter

    with RunWriter(tmp_path / "three") as w:
        for g in range(5):
            labels = np.array([0] * 60 + [1] * 3 + [2])
            w.write("CrossEntropyLoss_input_1", labels, g, "TRAIN")
    with pytest.raises(ModelRuleFailure) as info:
        assertions.assert_class_balance(tmp_path / "three", samples=1)
    text = str(info.value)
    assert "most frequent:" in text and "least frequent:" not in text
    bars = [line.split() for line in text.splitlines() if line.strip().startswith("class ")]
    assert [b[:3] for b in bars] == [
        ["class", "0", "300"],
        ["class", "1", "15"],
        ["class", "2", "5"],
    ]
