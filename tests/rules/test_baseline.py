"""BaselineComparison: regressions against a baseline run gate a merge."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_modelrules import RuleParameterError, RunWriter, open_run
from pytest_modelrules.rules.baseline import BaselineComparison


def write_run(path, recall3=1.0, loss_slope=0.05, confusions=0, passes=2):
    """TRAIN x 4 then EVAL x 2 per pass; class 3's EVAL recall and 1<->2 confusions set."""
    g = 0
    with RunWriter(path) as w:
        for _ in range(passes):
            for mode in ["TRAIN"] * 4 + ["EVAL"] * 2:
                lab = np.arange(64) % 4
                pred = lab.copy()
                if mode == "EVAL":
                    threes = np.flatnonzero(lab == 3)
                    pred[threes[: round(len(threes) * (1 - recall3))]] = 0
                    if confusions and g == 5:  # the first EVAL pass: confusions of 1 and 2
                        ones = np.flatnonzero(lab == 1)[:confusions]
                        pred[ones] = 2
                logits = np.zeros((64, 4), np.float32)
                logits[np.arange(64), pred] = 2.0
                loss = 2.0 - loss_slope * g
                w.write("CrossEntropyLoss_output_0", np.float32(loss), g, mode)
                w.write("CrossEntropyLoss_input_0", logits, g, mode)
                w.write("CrossEntropyLoss_input_1", lab, g, mode)
                g += 1
    return open_run(path)


def test_recall_drop_beyond_margin_is_a_regression(tmp_path):
    base = write_run(tmp_path / "base", recall3=1.0)
    worse = write_run(tmp_path / "new", recall3=0.75)
    result = BaselineComparison(baseline=base, rules="recall_floor").evaluate(worse)
    assert result.triggered
    assert "class 3 recall 75% vs 100% in the baseline (-25 points, margin 5)" in result.explanation
    # the recall drop itself, and recall_floor's figure (lowest recall 0.75 vs 1, lower is worse)
    assert result.figure == 2
    assert "recall_floor: lowest recall of a judged class 0.75 vs 1" in result.explanation
    assert result.first_step == 11  # the run's last step
    ok = BaselineComparison(
        baseline=str(base.path), recall_margin="0.3", figure_margin="0.3", rules="recall_floor"
    )
    assert not ok.evaluate(worse).triggered


def test_same_run_has_no_regression(tmp_path):
    run = write_run(tmp_path / "r")
    result = BaselineComparison(baseline=run.path).evaluate(run)
    assert not result.triggered
    assert "no class recall and no rule figure got worse" in result.explanation
    assert {"class_imbalance", "confusion", "overfit"} <= set(result.evidence["rules"])


def test_rule_triggering_now_but_not_before(tmp_path):
    base = write_run(tmp_path / "base", loss_slope=0.05)
    flat = write_run(tmp_path / "new", loss_slope=0.0)
    params = {"loss_not_decreasing": {"mode": "TRAIN", "num_steps": "2"}}
    rule = BaselineComparison(baseline=base, rules=["loss_not_decreasing"], rule_parameters=params)
    result = rule.evaluate(flat)
    assert result.triggered
    assert "loss_not_decreasing triggers now but not in the baseline" in result.explanation


def test_figure_worse_by_more_than_the_margin(tmp_path):
    base = write_run(tmp_path / "base", confusions=2)
    new = write_run(tmp_path / "new", confusions=5)
    params = {"direction_confusion": {"pairs": "1-2"}}
    result = BaselineComparison(
        baseline=base, rules="direction_confusion", rule_parameters=params
    ).evaluate(new)
    # 5 vs 2 confusions (limit 10): worse by 3 > 0.1 x max(2, 10)
    assert result.triggered
    assert "direction_confusion: most confusions of one pair 5 vs 2" in result.explanation
    wide = BaselineComparison(
        baseline=base, rules="direction_confusion", rule_parameters=params, figure_margin=0.5
    )
    assert not wide.evaluate(new).triggered


def test_lower_is_worse_for_recall_figures(tmp_path):
    base = write_run(tmp_path / "base", recall3=1.0)
    worse = write_run(tmp_path / "new", recall3=0.75)
    result = BaselineComparison(
        baseline=base, rules="recall_floor", recall_margin=1.0, figure_margin=0.1
    ).evaluate(worse)
    assert result.triggered
    assert "lower is worse" in result.explanation


def test_bad_parameters():
    with pytest.raises(RuleParameterError, match="baseline"):
        BaselineComparison()
    with pytest.raises(
        RuleParameterError, match="parameter 'rules' names unknown rule 'no_such_rule'"
    ):
        BaselineComparison(baseline="x", rules="no_such_rule")
    with pytest.raises(RuleParameterError, match="recall_margin"):
        BaselineComparison(baseline="x", recall_margin="-1")


def test_a_rule_skipped_on_a_run_is_named_as_not_compared(tmp_path):
    """direction_confusion has no pairs to check on runs without class names (skipped): the
    explanation says it was not compared, as docs/rules.md promises, where it was dropped."""
    base = write_run(tmp_path / "base")
    run = write_run(tmp_path / "new")
    result = BaselineComparison(baseline=base, rules="direction_confusion,recall_floor").evaluate(
        run
    )
    assert not result.triggered
    assert "Not compared: direction_confusion (skipped on both runs)" in (result.explanation)
    assert set(result.evidence["rules"]) == {"recall_floor"}


def test_the_evidence_says_how_each_figure_moved(tmp_path):
    """Each compared rule's row says regression / worse within the margin / better / same,
    and the assertion's table shows it (every changed figure read "<- changed", improvements
    included)."""
    from pytest_modelrules.assertions import _baseline_lines

    base = write_run(tmp_path / "base", confusions=2)
    params = {"direction_confusion": {"pairs": "1-2"}}

    def change(run):
        result = BaselineComparison(
            baseline=base, rules="direction_confusion", rule_parameters=params
        ).evaluate(run)
        return result, result.evidence["rules"]["direction_confusion"]["change"]

    result, moved = change(write_run(tmp_path / "worse", confusions=5))  # 5 vs 2, margin 1
    assert moved == "regression"
    assert any(ln.endswith("<- regression") for ln in _baseline_lines(result, base))
    assert change(write_run(tmp_path / "bit", confusions=3))[1] == "worse, within margin"
    result, moved = change(write_run(tmp_path / "better", confusions=0))
    assert moved == "better" and not result.triggered
    assert any(ln.endswith("<- better") for ln in _baseline_lines(result, base))
    result, moved = change(base)
    assert moved == "same"
    rows = [ln for ln in _baseline_lines(result, base) if ln.startswith("direction_confusion")]
    assert rows and "<-" not in rows[0]
