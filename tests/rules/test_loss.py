"""LossNotDecreasing, Overfit, Overtraining on runs written with RunWriter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelrules import MissingTensorError, RuleParameterError, RunWriter, open_run
from pytest_modelrules.rules.custom import as_custom_rule, invoke_rule
from pytest_modelrules.rules.loss import (
    LossNotDecreasing,
    Overfit,
    Overtraining,
    _since_improvement,
)
from pytest_modelrules.store.memory import MemoryRunBuilder

LOSS = "CrossEntropyLoss_output_0"


def write_losses(path, rows, collections=None, **extra):
    """rows: (global_step, mode, loss[, mode_step]); extra: name -> {global_step: array}."""
    with RunWriter(path) as w:
        if collections:
            w.set_collections(collections)
        for row in rows:
            g, mode, value = row[:3]
            mode_step = row[3] if len(row) > 3 else None
            w.write(LOSS, np.float32(value), g, mode, mode_step=mode_step)
            for name, by_step in extra.items():
                if g in by_step:
                    w.write(name, by_step[g], g, mode, mode_step=mode_step)
    return open_run(path)


@pytest.fixture
def old_case(tmp_path):
    """SageMaker's old test: losses at steps 0, 4, 8, 12, 16."""
    rows = [(s, "TRAIN", v, s) for s, v in zip([0, 4, 8, 12, 16], [0.30, 0.33, 0.31, 0.30, 0.28])]
    return write_losses(tmp_path / "run", rows)


def test_old_sequence_triggers_first_at_12(old_case):
    result = LossNotDecreasing(num_steps=10, diff_percent=0).evaluate(old_case)
    assert result.triggered
    assert result.first_step == 12
    assert [t.step for t in result.triggers] == [12]
    assert result.first_trigger.mode == "TRAIN"
    assert "0.3 vs 0.3" in result.explanation


def test_old_sequence_stepwise_on_one_rule_object(old_case):
    rule = LossNotDecreasing(num_steps="10", diff_percent="0")
    assert rule.invoke_at_step(old_case, 12) is True
    assert rule.invoke_at_step(old_case, 16) is False  # 16 < 12 + 10: not checked again
    result = invoke_rule(rule, start_step=13, end_step=17, trial=old_case)
    assert not result.triggered
    assert result.steps_evaluated == 1  # 16; 13, 14, 15 are no saved steps of the run
    # a fresh object walking the whole run agrees with the vectorised evaluation
    walked = invoke_rule(LossNotDecreasing(num_steps=10), trial=old_case)
    assert [t.step for t in walked.triggers] == [12]


def test_one_rule_object_in_several_invoke_rule_calls(tmp_path):
    """Each invoke_rule walk starts afresh: the same LossNotDecreasing object gives, on the
    same run again, on another run, and through one as_custom_rule wrapper walked twice, what a
    fresh object gives."""
    flat = write_losses(tmp_path / "flat", [(g, "TRAIN", 1.5) for g in range(35)])
    # EVAL only: the mode the rule resolves differs from flat's TRAIN
    rising = write_losses(tmp_path / "rising", [(g, "EVAL", 0.1 * g) for g in range(25)])
    assert [t.step for t in invoke_rule(LossNotDecreasing(), trial=flat).triggers] == [10, 20, 30]
    assert [t.step for t in invoke_rule(LossNotDecreasing(), trial=rising).triggers] == [10, 20]
    rule = LossNotDecreasing()
    for run, expected in ((flat, [10, 20, 30]), (flat, [10, 20, 30]), (rising, [10, 20])):
        assert [t.step for t in invoke_rule(rule, trial=run).triggers] == expected
    stepwise = as_custom_rule(rule, flat)
    for _ in range(2):
        assert [t.step for t in invoke_rule(stepwise).triggers] == [10, 20, 30]


def test_step_by_step_follows_a_run_being_written(tmp_path):
    """as_custom_rule(LossNotDecreasing(), run).invoke_at_step sees steps written after the
    run was opened (the run is refreshed), as invoke_rule and the other rules do."""
    path = tmp_path / "live"
    w = RunWriter(path)

    def write(steps, loss):
        for g in steps:
            w.write(LOSS, np.float32(loss(g)), g, "TRAIN", mode_step=g)
            w.end_step()

    write(range(12), lambda g: 2.0 / (g + 1))  # decreasing
    stepwise = as_custom_rule(LossNotDecreasing(num_steps=10), open_run(path))
    assert [stepwise.invoke_at_step(g) for g in (10, 11)] == [False, False]
    write(range(12, 25), lambda g: 5.0)  # the loss jumps up and stays flat
    assert stepwise.invoke_at_step(20) is True
    assert [t.step for t in invoke_rule(stepwise).triggers] == [20]
    w.close()
    assert [t.step for t in LossNotDecreasing(num_steps=10).evaluate(path).triggers] == [20]


def test_decreasing_loss_passes(tmp_path):
    run = write_losses(tmp_path / "r", [(g, "TRAIN", 2.0 / (g + 1)) for g in range(60)])
    result = LossNotDecreasing().evaluate(run)
    assert not result.triggered
    assert result.steps_evaluated == 5  # checks at 10, 20, 30, 40, 50
    assert "decreased at all 5 checks" in result.explanation


def test_flat_loss_triggers_at_first_check(tmp_path):
    run = write_losses(tmp_path / "r", [(g, "TRAIN", 1.5) for g in range(35)])
    result = LossNotDecreasing(num_steps=10).evaluate(run)
    assert [t.step for t in result.triggers] == [10, 20, 30]
    assert result.figure == 100.0


def test_diff_percent_allows_small_increase(tmp_path):
    rows = [(0, "TRAIN", 1.0, 0), (10, "TRAIN", 1.03, 10), (20, "TRAIN", 1.03 * 1.06, 20)]
    run = write_losses(tmp_path / "r", rows)
    assert [t.step for t in LossNotDecreasing(diff_percent="5").evaluate(run).triggers] == [20]
    assert [t.step for t in LossNotDecreasing().evaluate(run).triggers] == [10, 20]


def test_irregular_steps_check_sequence(tmp_path):
    steps = [0, 3, 9, 11, 14, 22, 23, 40]
    run = write_losses(tmp_path / "r", [(s, "TRAIN", 1.0, s) for s in steps])
    result = LossNotDecreasing(num_steps=10).evaluate(run)
    # checks: 11 (first >= 0 + 10), then first >= 21 -> 22, then first >= 32 -> 40
    assert [t.step for t in result.triggers] == [11, 22, 40]


def test_mode_none_prefers_eval(tmp_path):
    rows = [(g, "TRAIN", 1.0 / (g + 1)) for g in range(20)]
    rows += [(g, "EVAL", 0.5) for g in range(20, 40)]
    run = write_losses(tmp_path / "r", rows)
    auto = LossNotDecreasing().evaluate(run)
    assert auto.evidence["mode"] == "EVAL" and auto.triggered
    assert auto.first_trigger.mode == "EVAL" and auto.first_trigger.mode_step == 10
    assert auto.first_step == 30
    train = LossNotDecreasing(mode="TRAIN").evaluate(run)
    assert train.evidence["mode"] == "TRAIN" and not train.triggered
    assert LossNotDecreasing(mode="modes.GLOBAL").evaluate(run).evidence["mode"] == "GLOBAL"


def test_losses_collection_and_regex(tmp_path):
    other = {g: np.float32(5.0) for g in range(30)}  # flat, but not a loss
    run = write_losses(
        tmp_path / "r",
        [(g, "TRAIN", 1.0 / (g + 1)) for g in range(30)],
        collections={"losses": {"tensor_names": [LOSS]}},
        lr=other,
    )
    assert LossNotDecreasing().evaluate(run).evidence["tensors"] == [LOSS]
    flat = LossNotDecreasing(tensor_regex="^lr$", use_losses_collection="false").evaluate(run)
    assert flat.evidence["tensors"] == ["lr"] and flat.triggered


def test_scalar_fallback_without_collection(tmp_path):
    run = write_losses(
        tmp_path / "r",
        [(g, "TRAIN", 1.0) for g in range(12)],
        features={g: np.zeros((4, 3), np.float32) for g in range(12)},
    )
    assert LossNotDecreasing().evaluate(run).evidence["tensors"] == [LOSS]


def test_missing_loss_names_what_the_run_has(tmp_path):
    with RunWriter(tmp_path / "r") as w:
        w.write("fc.weight", np.ones((3, 3), np.float32), 0)
    with pytest.raises(MissingTensorError) as info:
        LossNotDecreasing().evaluate(tmp_path / "r")
    assert "loss tensor" in str(info.value) and "fc.weight" in str(info.value)
    run = write_losses(tmp_path / "r2", [(0, "TRAIN", 1.0)])
    with pytest.raises(MissingTensorError, match=r"tensor_regex \['nope'\].*CrossEntropyLoss"):
        LossNotDecreasing(tensor_regex="nope").evaluate(run)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"num_steps": "0"}, "num_steps"),
        ({"num_steps": "ten"}, "num_steps"),
        ({"diff_percent": "-1"}, "diff_percent"),
        ({"mode": "TRAINING"}, "mode"),
        ({"use_losses_collection": "maybe"}, "use_losses_collection"),
        ({"numsteps": 3}, "unknown parameter"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(RuleParameterError, match=match):
        LossNotDecreasing(**params)


def test_parameters_as_strings_equal_values(old_case):
    a = LossNotDecreasing(num_steps="10", diff_percent="0.0", mode="TRAIN").evaluate(old_case)
    b = LossNotDecreasing(num_steps=10, diff_percent=0.0, mode="TRAIN").evaluate(old_case)
    assert a.triggers == b.triggers and a.parameters == b.parameters


def _class_sorted_eval_passes(tmp_path):
    """Three epochs of 4 flat TRAIN steps and 3 EVAL batches whose pass means fall
    2.0 -> 1.9 -> 1.89 while single batches jump (1.0 / 3.0 / 2.0)."""
    rows, g = [], 0
    for shift in (0.0, -0.1, -0.11):
        for _ in range(4):
            rows.append((g, "TRAIN", 2.0))
            g += 1
        for v in (1.0, 3.0, 2.0):
            rows.append((g, "EVAL", v + shift))
            g += 1
    return write_losses(tmp_path / "r", rows)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"mode": "EVAL", "num_steps": 2, "compare": "passes"}, []),  # was [6, 12, 20]
        ({"mode": "EVAL", "compare": "passes", "min_decrease_percent": 1}, [20]),
        ({"mode": "EVAL", "compare": "passes", "diff_percent": 10}, []),
        ({"mode": "TRAIN", "compare": "passes"}, [10, 17]),  # flat epochs
        ({"compare": "passes"}, []),  # mode None: EVAL
        ({"mode": "EVAL", "num_steps": 2}, [6, 12, 20]),  # single batches
    ],
)
def test_stepwise_compare_passes_agrees_with_the_whole_run(tmp_path, params, expected):
    run = _class_sorted_eval_passes(tmp_path)
    whole = LossNotDecreasing(**params).evaluate(run)
    walked = invoke_rule(LossNotDecreasing(**params), trial=run)
    assert [t.step for t in whole.triggers] == expected
    assert [t.step for t in walked.triggers] == expected


def test_stepwise_compare_passes_on_windows_and_bad_mode(tmp_path):
    # no evaluation passes: windows of num_steps TRAIN steps (0-4, 5-9, 10-14; 15-16 left out)
    values = [2.0, 2.0, 1.8, 1.8, 1.8, 1.9, 3.0]
    rows = [(g, "TRAIN", values[g // 5] if g != 7 else np.nan) for g in range(17)]
    run = write_losses(tmp_path / "train", rows)
    cases = [
        ({"num_steps": 5}, [7, 9]),  # the NaN step; window means 2 -> 2 -> 1.8
        ({"num_steps": 5, "min_decrease_percent": 15}, [7, 9, 14]),  # 1.8 is 10 % below 2
        ({"num_steps": 3}, [5, 7, 8]),  # 2, 2, 2 (NaN left out), 1.867, 1.8
    ]
    for params, expected in cases:
        whole = LossNotDecreasing(compare="passes", **params).evaluate(run)
        walked = invoke_rule(LossNotDecreasing(compare="passes", **params), trial=run)
        assert [t.step for t in whole.triggers] == expected
        assert [t.step for t in walked.triggers] == expected
    # passes need a mode: both paths refuse GLOBAL alike
    for call in (
        lambda: LossNotDecreasing(mode="GLOBAL", compare="passes").evaluate(run),
        lambda: invoke_rule(LossNotDecreasing(mode="GLOBAL", compare="passes"), trial=run),
    ):
        with pytest.raises(RuleParameterError, match="'passes' needs a mode"):
            call()


# -- Overfit ------------------------------------------------------------------------------------


def epochs(train_losses, eval_losses, train_steps=5, eval_steps=3):
    """Rows of alternating TRAIN / EVAL phases with the given per-phase losses."""
    rows, g = [], 0
    for tl, el in zip(train_losses, eval_losses):
        for _ in range(train_steps):
            rows.append((g, "TRAIN", tl))
            g += 1
        for _ in range(eval_steps):
            rows.append((g, "EVAL", el))
            g += 1
    return rows


def test_loss_not_decreasing_compares_pass_means(tmp_path):
    # EVAL batches of a class-sorted test set differ (1.0 / 3.0 / 2.0) more than the model
    # improves; the pass means fall 2.0 -> 1.9 -> 1.89
    run = _class_sorted_eval_passes(tmp_path)
    assert LossNotDecreasing(mode="EVAL", num_steps=2).evaluate(run).triggered  # batches differ
    ok = LossNotDecreasing(mode="EVAL", compare="passes").evaluate(run)
    assert not ok.triggered and ok.steps_evaluated == 2
    assert "decreased at all 2 passes: 2 -> 1.9 -> 1.89" in ok.explanation
    # asking for 1 % a pass: 1.9 -> 1.89 is 0.5 %
    strict = LossNotDecreasing(mode="EVAL", compare="passes", min_decrease_percent=1).evaluate(run)
    assert strict.triggered and strict.first_step == 20 and strict.figure == 50.0
    assert "1.89 vs 1.9 (asked: 1% lower each pass)" in strict.explanation
    # TRAIN stretches (epochs): flat
    assert LossNotDecreasing(mode="TRAIN", compare="passes").evaluate(run).triggered
    one = write_losses(tmp_path / "one", [(0, "EVAL", 1.0), (1, "EVAL", 0.5)])
    assert LossNotDecreasing(mode="EVAL", compare="passes").evaluate(one).skipped
    # no evaluation passes: windows of num_steps TRAIN steps (0-4, 5-9; 10-11 incomplete)
    falling = [(g, "TRAIN", 2.0 - 0.1 * (g // 5)) for g in range(12)]
    train_only = write_losses(tmp_path / "train", falling)
    windows = LossNotDecreasing(compare="passes", num_steps=5).evaluate(train_only)
    assert not windows.triggered and windows.steps_evaluated == 1
    assert "2 -> 1.9" in windows.explanation
    for bad in ({"compare": "epochs"}, {"min_decrease_percent": 100},
                {"min_decrease_percent": 1, "diff_percent": 1}):  # fmt: skip
        with pytest.raises(RuleParameterError):
            LossNotDecreasing(**bad)


def test_overfit_triggers_with_patience(tmp_path):
    # gaps: 0%, 5%, 20%, 30%, 40% -> over 10% at checks 3, 4, 5 (ending 23, 31, 39)
    run = write_losses(tmp_path / "r", epochs([1.0] * 5, [1.0, 1.05, 1.2, 1.3, 1.4]))
    assert Overfit().evaluate(run).first_step == 23
    result = Overfit(patience="2").evaluate(run)
    assert [t.step for t in result.triggers] == [31, 39]
    assert result.first_trigger.mode == "EVAL"
    assert Overfit(patience=4).evaluate(run).triggered is False
    assert Overfit(start_step=32).evaluate(run).first_step == 39
    assert result.figure == pytest.approx(0.4, rel=1e-5)


def test_overfit_passes_and_skips_without_eval(tmp_path):
    run = write_losses(tmp_path / "r", epochs([1.0, 0.8, 0.6], [1.05, 0.85, 0.65]))
    assert not Overfit().evaluate(run).triggered
    only_train = write_losses(tmp_path / "t", [(g, "TRAIN", 1.0) for g in range(10)])
    result = Overfit().evaluate(only_train)
    assert result.skipped and not result.triggered


def test_overfit_bad_patience():
    with pytest.raises(RuleParameterError, match="patience"):
        Overfit(patience="0")


# -- Overtraining -------------------------------------------------------------------------------


def test_overtraining_training_patience(tmp_path):
    values = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    run = write_losses(tmp_path / "r", [(g, "TRAIN", v) for g, v in enumerate(values)])
    result = Overtraining().evaluate(run)
    # last improvement at step 2; 6 steps later (step 8) exceeds patience_train 5
    assert result.first_step == 8
    assert "patience 5" in result.explanation
    assert not Overtraining(patience_train="7").evaluate(run).triggered


def test_overtraining_validation_passes(tmp_path):
    evals = [1.0, 0.9] + [0.9] * 11
    run = write_losses(tmp_path / "r", epochs([1.0 - 0.05 * i for i in range(13)], evals, 2, 2))
    result = Overtraining(patience_train=100).evaluate(run)
    assert result.triggered
    assert result.first_trigger.mode == "EVAL"
    assert "validation loss" in result.explanation
    assert not Overtraining(patience_train=100, patience_validation=11).evaluate(run).triggered


def test_overtraining_slow_steady_decrease_counts_as_improvement(tmp_path):
    # 0.004 per step: every third step beats the best by more than delta 0.01 (Keras semantics)
    run = write_losses(tmp_path / "r", [(g, "TRAIN", 1.0 - 0.004 * g) for g in range(40)])
    assert not Overtraining().evaluate(run).triggered


def test_overtraining_bad_delta():
    with pytest.raises(RuleParameterError, match="delta"):
        Overtraining(delta="-0.1")


# -- NaN / inf losses ---------------------------------------------------------------------------


def test_nan_and_inf_losses_trigger_loss_not_decreasing(tmp_path):
    values = {g: 2.0 / (g + 1) for g in range(60)}
    values[12], values[30] = np.nan, np.inf
    run = write_losses(tmp_path / "r", [(g, "TRAIN", v) for g, v in values.items()])
    result = LossNotDecreasing().evaluate(run)
    # the finite losses decrease at every check; each NaN / inf step triggers
    assert [t.step for t in result.triggers] == [12, 30]
    assert result.first_trigger.mode == "TRAIN" and result.first_trigger.mode_step == 12
    assert result.explanation.startswith(
        f"{LOSS} (TRAIN) is not finite at 2 of 60 saved steps (1 NaN, 1 inf), first at "
        "global step 12 (TRAIN step 12): nan; "
    )
    assert "decreased at all 5 checks every 10 steps (finite values)" in result.explanation
    assert result.evidence[f"{LOSS}/nonfinite_steps"].tolist() == [12, 30]
    assert result.steps_evaluated == 7  # 5 checks + 2 non-finite steps, counted as failed
    assert result.figure == pytest.approx(100 * 2 / 7)


def test_loss_going_nan_for_good_triggers_where_it_started(tmp_path):
    rows = [(g, "TRAIN", 2.0 / (g + 1) if g < 25 else np.nan) for g in range(40)]
    run = write_losses(tmp_path / "r", rows)
    result = LossNotDecreasing().evaluate(run)
    assert result.triggered and result.first_step == 25
    assert [t.step for t in result.triggers] == list(range(25, 40))
    assert "not finite at 15 of 40 saved steps (15 NaN), first at global step 25" in (
        result.explanation
    )
    assert "nan -> nan" not in result.explanation
    only_nan = write_losses(tmp_path / "nan", [(g, "TRAIN", np.nan) for g in range(5)])
    result = LossNotDecreasing().evaluate(only_nan)
    assert result.triggered and not result.skipped and result.first_step == 0
    assert "fewer than 10 steps of finite data" in result.explanation


def test_nonfinite_loss_is_left_out_of_the_comparisons(tmp_path):
    # a flat loss whose first value is NaN: compared as if step 0 were not saved, so the
    # first check is step 11 (against 1), not step 10 against the NaN (never >=)
    rows = [(g, "TRAIN", np.nan if g == 0 else 1.0) for g in range(35)]
    run = write_losses(tmp_path / "r", rows)
    assert [t.step for t in LossNotDecreasing().evaluate(run).triggers] == [0, 11, 21, 31]
    # -inf is no "decrease" either: it triggers, and the next check compares finite values
    rows = [(g, "TRAIN", -np.inf if g == 10 else 2.0 - 0.01 * g) for g in range(25)]
    run = write_losses(tmp_path / "neg", rows)
    result = LossNotDecreasing().evaluate(run)
    assert [t.step for t in result.triggers] == [10]
    assert "(1 inf), first at global step 10 (TRAIN step 10): -inf" in result.explanation


def test_nonfinite_loss_in_a_pass_is_left_out_of_its_mean(tmp_path):
    rows, g = [], 0
    for p, mean in enumerate((2.0, 1.8, 1.6)):
        for _ in range(3):
            rows.append((g, "TRAIN", 2.0))
            g += 1
        for v in (mean - 0.1, mean + 0.1, np.inf if p == 1 else mean):
            rows.append((g, "EVAL", v))
            g += 1
    run = write_losses(tmp_path / "r", rows)
    result = LossNotDecreasing(mode="EVAL", compare="passes").evaluate(run)
    assert [t.step for t in result.triggers] == [11]  # the inf step; the means fall
    assert "decreased at all 2 passes: 2 -> 1.8 -> 1.6" in result.explanation
    assert "is not finite at 1 of 9 saved steps (1 inf), first at global step 11" in (
        result.explanation
    )


def test_overfit_with_nonfinite_losses(tmp_path):
    # one NaN TRAIN step: the pass means read the finite values (train 1.0, eval 1.3: 30 %)
    rows = epochs([1.0, 1.0], [1.05, 1.3])
    rows[9] = (9, "TRAIN", np.nan)
    run = write_losses(tmp_path / "r", rows)
    result = Overfit().evaluate(run)
    assert [t.step for t in result.triggers] == [9, 15]
    assert result.explanation.startswith(
        f"{LOSS} (all modes) is not finite at 1 of 16 saved steps (1 NaN), first at global "
        "step 9 (TRAIN step 6): nan; "
    )
    assert "validation loss 1.3 was 30% above training loss 1" in result.explanation
    # every TRAIN loss NaN: no ratio, and not "the training loss was not positive"
    rows = epochs([np.nan, np.nan], [1.0, 1.0])
    run = write_losses(tmp_path / "nan", rows)
    result = Overfit().evaluate(run)
    assert result.triggered and result.first_step == 0 and not result.skipped
    assert "not positive" not in result.explanation
    assert "no check had finite mean losses with a positive training loss" in (result.explanation)


def test_overtraining_with_nonfinite_losses(tmp_path):
    values = [1.0 - 0.05 * g for g in range(12)]
    values[4] = np.nan
    run = write_losses(tmp_path / "r", [(g, "TRAIN", v) for g, v in enumerate(values)])
    result = Overtraining().evaluate(run)
    # the finite losses keep improving; the NaN step triggers (and breaks no best-so-far)
    assert [t.step for t in result.triggers] == [4]
    assert "not finite at 1 of 12 saved steps (1 NaN), first at global step 4" in (
        result.explanation
    )
    assert "training loss kept improving (at most 0 saved TRAIN steps" in result.explanation
    # an inf EVAL batch is left out of its pass's mean
    evals = [[1.0, 0.9], [np.inf, 0.8], [0.7, 0.7]]
    rows, g = [], 0
    for e in evals:
        rows.append((g, "TRAIN", 1.0 - 0.1 * g))
        g += 1
        for v in e:
            rows.append((g, "EVAL", v))
            g += 1
    run = write_losses(tmp_path / "eval", rows)
    result = Overtraining(patience_validation=1).evaluate(run)
    assert [t.step for t in result.triggers] == [4]
    assert result.evidence[f"{LOSS}/validation_since_improvement"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("rule", [LossNotDecreasing, Overfit, Overtraining])
def test_nonfinite_losses_stepwise_agree_with_the_whole_run(tmp_path, rule):
    rows = epochs([1.0, 0.9, np.nan, 0.8, 0.8], [1.0, np.inf, 0.9, 1.2, np.nan], 6, 4)
    run = write_losses(tmp_path / "r", rows)
    whole = rule().evaluate(run)
    walked = invoke_rule(rule(), trial=run)
    assert whole.triggered and walked.triggered
    assert [t.step for t in walked.triggers] == [t.step for t in whole.triggers]
    for params in (
        {"mode": "TRAIN", "num_steps": 2},
        {"mode": "GLOBAL", "num_steps": 3},
        {"mode": "EVAL", "compare": "passes"},
        {"mode": "TRAIN", "compare": "passes", "num_steps": 2},
    ):
        if rule is LossNotDecreasing:
            whole = rule(**params).evaluate(run)
            walked = invoke_rule(rule(**params), trial=run)
            assert [t.step for t in walked.triggers] == [t.step for t in whole.triggers]


# -- properties -----------------------------------------------------------------------------


def _memory_run(values, mode="TRAIN"):
    """A loss per global step; ``mode`` is one mode or one per step."""
    builder = MemoryRunBuilder()
    for g, v in enumerate(values):
        builder.write(LOSS, np.float32(v), g, mode if isinstance(mode, str) else mode[g])
    builder.close()
    return builder.run()


losses = st.lists(st.floats(0.015625, 10.0, width=32), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=losses, factor=st.sampled_from([0.5, 2.0, 8.0, 0.125]), n=st.integers(1, 12))
def test_scaling_losses_keeps_the_verdict(values, factor, n):
    # powers of two scale float32 exactly, so comparisons are unchanged
    a = LossNotDecreasing(num_steps=n).evaluate(_memory_run(values))
    b = LossNotDecreasing(num_steps=n).evaluate(_memory_run([v * factor for v in values]))
    assert a.triggered == b.triggered
    assert [t.step for t in a.triggers] == [t.step for t in b.triggers]


#: a loss value, NaN / inf among them (one value in eight, about)
loss_or_nonfinite = st.one_of(
    st.floats(0.015625, 10.0, width=32),
    st.sampled_from([np.nan, np.inf, -np.inf]),
)
losses_nonfinite = st.lists(loss_or_nonfinite, min_size=1, max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=losses_nonfinite, n=st.integers(1, 12), diff=st.sampled_from([0.0, 5.0]))
def test_vectorised_and_stepwise_agree(values, n, diff):
    run = _memory_run(values)
    whole = LossNotDecreasing(num_steps=n, diff_percent=diff).evaluate(run)
    walked = invoke_rule(LossNotDecreasing(num_steps=n, diff_percent=diff), trial=run)
    assert [t.step for t in whole.triggers] == [t.step for t in walked.triggers]
    bad = [g for g, v in enumerate(values) if not np.isfinite(v)]
    assert set(bad) <= {t.step for t in whole.triggers}  # every NaN / inf step triggers


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(loss_or_nonfinite, st.sampled_from(["TRAIN", "EVAL"])),
        min_size=1,
        max_size=60,
    ),
    n=st.integers(1, 8),
    params=st.sampled_from(
        [
            {"compare": "passes"},
            {"compare": "passes", "mode": "TRAIN"},
            {"compare": "passes", "mode": "EVAL", "diff_percent": 5.0},
            {"compare": "passes", "min_decrease_percent": 1.0},
            {"compare": "steps"},
            {"compare": "steps", "mode": "TRAIN", "min_decrease_percent": 1.0},
        ]
    ),
)
def test_vectorised_and_stepwise_agree_on_passes(rows, n, params):
    """Interleaved TRAIN / EVAL stretches (passes, or windows where a mode has one stretch),
    NaN / inf among the losses: invoke_rule triggers where evaluate() does."""
    run = _memory_run([v for v, _ in rows], [m for _, m in rows])
    whole = LossNotDecreasing(num_steps=n, **params).evaluate(run)
    walked = invoke_rule(LossNotDecreasing(num_steps=n, **params), trial=run)
    assert [t.step for t in whole.triggers] == [t.step for t in walked.triggers]


@given(
    values=st.lists(st.floats(0, 1, width=16), min_size=1, max_size=40),
    delta=st.sampled_from([0.0, 0.01, 0.1]),
)
def test_since_improvement_matches_keras(values, delta):
    best, last, expected = np.inf, 0, []
    for i, v in enumerate(values):
        if i == 0 or v < best - delta:
            best, last = v, i
        expected.append(i - last)
    assert _since_improvement(np.array(values, np.float64), delta).tolist() == expected


def test_fixture_run_matches_the_reference_algorithm(smdebug_fixture_dir, smdebug_truth):
    """RULES.md's step-by-step algorithm, written as a plain loop, on the real smdebug run."""
    rows = [r for r in smdebug_truth["__steps__"].tolist() if r[3]]
    run = open_run(smdebug_fixture_dir)
    for mode_name, mode_key, n in (("EVAL", 2, 3), ("TRAIN", 1, 4), (None, 2, 10)):
        series = [
            (ms, g, float(smdebug_truth[f"{g}/{LOSS}"])) for g, m, ms, _ in rows if m == mode_key
        ]
        last, expected = None, []
        for i, (ms, g, value) in enumerate(series):
            if last is not None and ms < last + n:
                continue
            prior = [v for s, _, v in series[:i] if s <= ms - n]
            if not prior:
                continue
            last = ms
            if value >= prior[-1]:
                expected.append(g)
        result = LossNotDecreasing(num_steps=n, mode=mode_name).evaluate(run)
        assert [t.step for t in result.triggers] == expected
        assert result.evidence["mode"] == {1: "TRAIN", 2: "EVAL"}[mode_key]
