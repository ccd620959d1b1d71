"""SimilarAcrossRuns and StalledTrainingRule."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_modelrules.exceptions import MissingTensorError, RuleParameterError
from pytest_modelrules.rules.base import registry
from pytest_modelrules.rules.runs import SimilarAcrossRuns, StalledTrainingRule
from pytest_modelrules.store.run import open_run
from pytest_modelrules.store.writer import RunWriter


def write_run(
    path: Path,
    steps: dict[int, dict[str, Any]],
    wall: dict[int, float] | None = None,
    close: bool = True,
) -> Path:
    w = RunWriter(path)
    for g in sorted(steps):
        for name, value in steps[g].items():
            w.write(name, value, g, wall_time=None if wall is None else wall[g])
    if close:
        w.close()
    else:
        w.end_step()
    return path


def values(seed: int, n: int = 5) -> dict[int, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return {
        g: {"fc.weight": rng.normal(size=(3, 3)), "loss": np.float32(1.0 / (g + 1))}
        for g in range(n)
    }


# -- SimilarAcrossRuns ----------------------------------------------------------------------


def test_identical_runs_are_similar(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", values(0))
    b = write_run(tmp_path / "b", values(0))
    result = SimilarAcrossRuns(other_trials=str(b)).evaluate(a)
    assert not result.triggered
    assert "All 2 compared tensor(s) match at 5 common step(s)" in result.explanation


def test_a_difference_triggers_at_its_step(tmp_path: Path) -> None:
    va, vb = values(0), values(0)
    vb[3]["fc.weight"] = vb[3]["fc.weight"] + 1e-3
    a, b = write_run(tmp_path / "a", va), write_run(tmp_path / "b", vb)
    result = SimilarAcrossRuns(other_trials=[open_run(b)]).evaluate(a)
    assert result.triggered and result.first_step == 3 and [t.step for t in result.triggers] == [3]
    assert result.explanation.startswith(
        "fc.weight differ(s) from the other run at global step 3 (TRAIN step 3)"
    )
    # a selection that leaves the changed tensor out, other_trials as a JSON string
    only_loss = SimilarAcrossRuns(other_trials=json.dumps([str(b)]), tensor_regex="loss").evaluate(
        a
    )
    assert not only_loss.triggered and only_loss.evidence["tensors"] == ["loss"]


def test_tiny_float_noise_is_similar_and_missing_tensors_are_listed(tmp_path: Path) -> None:
    va, vb = values(1), values(1)
    for g in vb:
        vb[g]["fc.weight"] = vb[g]["fc.weight"] * (1 + 1e-7)
        del vb[g]["loss"]
    a, b = write_run(tmp_path / "a", va), write_run(tmp_path / "b", vb)
    result = SimilarAcrossRuns(other_trials=b).evaluate(a)
    assert not result.triggered
    assert result.evidence["lacking"] == {"b": ["loss"]}
    assert "Not in b: loss." in result.explanation


def test_other_trials_is_required_and_nothing_in_common_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleParameterError, match="other_trials"):
        SimilarAcrossRuns()
    assert SimilarAcrossRuns.default_enabled is False
    a = write_run(tmp_path / "a", {0: {"x": np.ones(2)}})
    b = write_run(tmp_path / "b", {0: {"y": np.ones(2)}})
    with pytest.raises(MissingTensorError, match="nothing to compare"):
        SimilarAcrossRuns(other_trials=str(b)).evaluate(a)


# -- StalledTrainingRule --------------------------------------------------------------------


def test_a_gap_between_steps_triggers_at_the_step_before_it(tmp_path: Path) -> None:
    wall = {0: 1000.0, 1: 1060.0, 2: 1120.0, 3: 3520.0, 4: 3580.0}
    run = write_run(tmp_path / "run", {g: {"loss": np.float32(1)} for g in wall}, wall=wall)
    result = StalledTrainingRule().evaluate(run)
    assert result.triggered and result.first_step == 2
    assert "no new step for 2400 s after global step 2 (TRAIN step 2)" in result.explanation
    assert result.figure == 2400.0 and result.limit == 1800.0
    assert not StalledTrainingRule(threshold="3000").evaluate(run).triggered


def test_a_finished_run_with_short_gaps_does_not_trigger(tmp_path: Path) -> None:
    wall = {g: 1000.0 + 30 * g for g in range(6)}
    run = write_run(tmp_path / "run", {g: {"loss": np.float32(1)} for g in wall}, wall=wall)
    result = StalledTrainingRule().evaluate(run)
    assert not result.triggered
    assert "the run ended" in result.explanation
    assert result.evidence["seconds_since_last_step"] is None


def test_a_running_job_is_timed_against_now(tmp_path: Path) -> None:
    old = {g: 1000.0 + g for g in range(3)}  # last step long ago, never closed
    stale = write_run(
        tmp_path / "stale", {g: {"loss": np.float32(1)} for g in old}, wall=old, close=False
    )
    result = StalledTrainingRule(threshold="600", stop_training_on_fire="True").evaluate(stale)
    assert result.triggered and result.first_step == 2
    assert (
        "has not ended" in result.explanation
        and "stop_training_on_fire is set" in result.explanation
    )
    assert result.evidence["stop_training_on_fire"] is True
    assert result.parameters["stop_training_on_fire"] is True
    now = time.time()
    fresh_wall = {g: now - 10 + g for g in range(3)}
    fresh = write_run(
        tmp_path / "fresh",
        {g: {"loss": np.float32(1)} for g in fresh_wall},
        wall=fresh_wall,
        close=False,
    )
    assert not StalledTrainingRule(threshold="600").evaluate(fresh).triggered


def test_stalled_training_registered_and_validated() -> None:
    assert registry()["stalled_training_rule"] is StalledTrainingRule
    assert StalledTrainingRule().parameters == {"threshold": 1800.0, "stop_training_on_fire": False}
    with pytest.raises(RuleParameterError, match="threshold"):
        StalledTrainingRule(threshold=0)
    assert registry()["similar_across_runs"] is SimilarAcrossRuns


def test_stalled_training_on_a_sagemaker_debugger_run(smdebug_fixture_dir) -> None:
    """The fixture's events are stamped wall_time_base + global step: every gap is 1 s."""
    run = open_run(smdebug_fixture_dir)
    walls = run.step_table()["wall_time"]
    assert np.diff(walls).max() == 1.0 and walls[0] == 1600000000.0
    below = StalledTrainingRule(threshold="0.5").evaluate(run)
    assert below.triggered and below.first_step == 0 and len(below.triggers) == 39
    assert below.figure == 1.0
    assert "no new step for 1 s after global step 0 (TRAIN step 0)" in below.explanation
    above = StalledTrainingRule(threshold="2").evaluate(run)
    assert not above.triggered and above.steps_evaluated == 40
    assert "the longest gap between 40 steps was 1 s" in above.explanation
