"""``create_trial(path, range_steps=(first, end))``: SageMaker Debugger's way to read only
the global steps ``first <= step < end``; and its other create_trial keywords."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules import StepState, create_trial, evaluate, modes, open_run
from pytest_modelrules.exceptions import NoMoreData, StepUnavailable
from pytest_modelrules.store import RunWriter

SMDEBUG_RUN = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "smdebug_sample_run"
if not SMDEBUG_RUN.exists():
    SMDEBUG_RUN = Path("/tmp/shared/fixtures/smdebug_sample_run")


def _write(root: Path, steps: int = 10, close: bool = True) -> RunWriter:
    """Global steps 0..steps-1: TRAIN, except every fourth step (EVAL); loss = the step."""
    w = RunWriter(root)
    for g in range(steps):
        mode = "EVAL" if g % 4 == 3 else "TRAIN"
        w.write("loss", np.float32(g), g, mode=mode)
        w.end_step()
    if close:
        w.close()
    return w


def test_only_the_steps_in_range_are_read(tmp_path: Path) -> None:
    _write(tmp_path / "r")
    run = create_trial(tmp_path / "r", range_steps=(2, 8))
    assert run.steps() == [2, 3, 4, 5, 6, 7]
    assert run.steps(modes.EVAL) == [0, 1]  # global steps 3 and 7 are EVAL steps 0 and 1
    assert run.steps(modes.TRAIN) == [2, 3, 4, 5]
    loss = run.tensor("loss")
    assert loss.steps() == [2, 3, 4, 5, 6, 7]
    assert {k: float(v) for k, v in loss.values().items()} == {g: g for g in range(2, 8)}
    assert loss.steps(show_incomplete_steps=True) == [2, 3, 4, 5, 6, 7]
    assert run.steps(show_incomplete_steps=True) == [2, 3, 4, 5, 6, 7]
    with pytest.raises(StepUnavailable, match=r"range_steps=\(2, 8\), which leaves it out"):
        loss.value(8)
    with pytest.raises(StepUnavailable, match="which leaves it out"):
        loss.value(1)
    assert run.has_passed_step(9) is StepState.UNAVAILABLE
    assert "range_steps=(2, 8)" in repr(run)


def test_open_bounds_and_the_whole_run(tmp_path: Path) -> None:
    _write(tmp_path / "r")
    assert open_run(tmp_path / "r", range_steps=(7, None)).steps() == [7, 8, 9]
    assert open_run(tmp_path / "r", range_steps=(None, 2)).steps() == [0, 1]
    assert open_run(tmp_path / "r", range_steps=(None, None)).steps() == list(range(10))
    assert open_run(tmp_path / "r", range_steps=(np.int64(5), 5)).steps() == []


def test_rules_judge_only_the_range(tmp_path: Path) -> None:
    w = RunWriter(tmp_path / "r")
    for g in range(40):  # the loss falls for 20 steps, then is flat
        w.write("CrossEntropyLoss_output_0", np.float32(max(2.0 - 0.1 * g, 0.5)), g, mode="TRAIN")
        w.end_step()
    w.close()
    whole = evaluate(tmp_path / "r", "loss_not_decreasing", num_steps=10)
    start = evaluate(
        open_run(tmp_path / "r", range_steps=(0, 20)), "loss_not_decreasing", num_steps=10
    )
    assert whole.triggered and not start.triggered


def test_smdebug_layout_is_limited_the_same_way() -> None:
    whole = open_run(SMDEBUG_RUN)
    part = create_trial(str(SMDEBUG_RUN), range_steps=(10, 20))
    assert part.steps() == [s for s in whole.steps() if 10 <= s < 20]
    name = "CrossEntropyLoss_output_0"
    assert part.tensor(name).steps() == [s for s in whole.tensor(name).steps() if 10 <= s < 20]
    for step in part.tensor(name).steps():
        np.testing.assert_array_equal(part.tensor(name).value(step), whole.tensor(name).value(step))


def test_a_live_run_past_the_range_end_has_no_more_data(tmp_path: Path) -> None:
    w = _write(tmp_path / "r", steps=6, close=False)
    run = open_run(tmp_path / "r", range_steps=(0, 4))
    assert not run.has_ended
    assert run.has_passed_step(5) is StepState.UNAVAILABLE  # outside the range
    # TRAIN steps 0-2 are global 0-2: a later TRAIN step would be past the range's end
    assert run.has_passed_step(3, modes.TRAIN) is StepState.UNAVAILABLE
    with pytest.raises(NoMoreData, match="whose last step has been written"):
        run.wait_for_steps([3], mode=modes.TRAIN, timeout=5, poll_interval=0.01)
    longer = open_run(tmp_path / "r", range_steps=(0, 10))  # steps 6..9 may still come
    assert longer.has_passed_step(7) is StepState.NOT_YET_AVAILABLE
    assert longer.has_passed_step(5, modes.TRAIN) is StepState.NOT_YET_AVAILABLE
    w.close()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ((1,), r"must be \(first, end\)"),
        ("0:5", r"must be \(first, end\)"),
        ((5, 2), "the end is before the first step"),
        ((1.5, None), "integers or None"),
        ((True, None), "integers or None"),
    ],
)
def test_a_malformed_range_is_one_clear_error(tmp_path: Path, value, message) -> None:
    _write(tmp_path / "r")
    with pytest.raises(ValueError, match=message):
        open_run(tmp_path / "r", range_steps=value)


def test_smdebug_create_trial_keywords_are_accepted(tmp_path: Path) -> None:
    _write(tmp_path / "r")
    run = create_trial(str(tmp_path / "r"), "mine", None, True, False, True)
    assert run.name == "mine" and run.steps() == list(range(10))
    run = create_trial(str(tmp_path / "r"), check=True, index_mode=False, cache=True)
    assert run.steps() == list(range(10))
    run = create_trial(str(tmp_path / "r"), parallel=False)  # LocalTrial's and S3Trial's too
    assert run.steps() == list(range(10))
    with pytest.raises(TypeError, match="unexpected keyword argument 'paralel'"):
        create_trial(str(tmp_path / "r"), paralel=True)  # a misspelt keyword is an error


def test_range_steps_with_an_open_run_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "r")
    run = open_run(tmp_path / "r")
    assert open_run(run) is run
    with pytest.raises(ValueError, match="not to an open Run"):
        open_run(run, range_steps=(0, 2))
