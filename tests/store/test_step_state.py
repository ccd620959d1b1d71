"""SageMaker Debugger's step-availability API on a run still being written: has_passed_step,
wait_for_steps, last_complete_step, and Tensor.reduction_values."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pytest_modelrules import StepState, modes
from pytest_modelrules.exceptions import (
    NoMoreData,
    StepNotYetAvailable,
    StepUnavailable,
    TensorUnavailableForStep,
)
from pytest_modelrules.store import RunWriter, open_run


def _two_workers(root):
    w0 = RunWriter(root, "worker_0", rank=0, num_workers=2)
    w1 = RunWriter(root, "worker_1", rank=1, num_workers=2)
    for g in (0, 2, 4):  # steps 1 and 3 are not saved by anyone
        w0.write("loss", np.float32(g), g)
        w0.end_step()
    for g in (0, 2):
        w1.write("loss", np.float32(g), g)
        w1.end_step()
    return w0, w1


def test_has_passed_step_tells_available_pending_and_never(tmp_path):
    root = tmp_path / "r"
    w0, w1 = _two_workers(root)
    run = open_run(root)
    assert run.last_complete_step == 2
    assert run.has_passed_step(0) is StepState.AVAILABLE
    assert run.has_passed_step(1) is StepState.UNAVAILABLE  # both workers are past it
    assert run.has_passed_step(4) is StepState.NOT_YET_AVAILABLE  # worker_1 has not written it
    assert run.has_passed_step(5) is StepState.NOT_YET_AVAILABLE  # may still come
    w1.write("loss", np.float32(4), 4)
    w0.close()
    w1.close()
    assert run.has_passed_step(4) is StepState.NOT_YET_AVAILABLE  # until refreshed, as smdebug
    run.refresh()
    assert run.last_complete_step == 4
    assert run.has_passed_step(4) is StepState.AVAILABLE
    assert run.has_passed_step(5) is StepState.UNAVAILABLE  # the run has ended
    assert run.has_passed_step(0, modes.TRAIN) is StepState.AVAILABLE  # mode steps: 0, 1, 2
    assert run.has_passed_step(3, mode="TRAIN") is StepState.UNAVAILABLE


def test_a_step_only_some_workers_wrote_before_the_end_never_becomes_available(tmp_path):
    root = tmp_path / "r"
    w0, w1 = _two_workers(root)
    w0.close()
    w1.close()
    run = open_run(root)
    assert run.has_passed_step(4) is StepState.UNAVAILABLE
    with pytest.raises(NoMoreData):  # what value(4) says too
        run.wait_for_steps([4])
    with pytest.raises(NoMoreData):
        run.tensor("loss").value(4)


def test_wait_for_steps_returns_once_a_writer_commits_them(tmp_path):
    root = tmp_path / "r"
    w = RunWriter(root)
    w.write("loss", np.float32(0), 0)
    w.end_step()
    run = open_run(root)

    def write_later() -> None:
        time.sleep(0.3)
        for g in (1, 2):
            w.write("loss", np.float32(g), g)
            w.end_step()

    thread = threading.Thread(target=write_later)
    thread.start()
    try:
        run.wait_for_steps([0, 2], poll_interval=0.05, timeout=30)
    finally:
        thread.join()
    assert run.steps() == [0, 1, 2]
    assert run.tensor("loss").value(2).item() == 2.0
    with pytest.raises(StepNotYetAvailable, match=r"still not written after 0\.2 s"):
        run.wait_for_steps([3], poll_interval=0.05, timeout=0.2)
    w.close()
    with pytest.raises(NoMoreData):
        run.wait_for_steps([3], poll_interval=0.05)  # the end arrives: no wait forever


def test_wait_for_steps_refuses_a_step_that_was_skipped(tmp_path):
    with RunWriter(tmp_path / "r") as w:
        for g in (0, 5):
            w.write("loss", np.float32(g), g)
    run = open_run(tmp_path / "r")
    with pytest.raises(StepUnavailable) as info:
        run.wait_for_steps([0, 3], poll_interval=0.01)
    assert not isinstance(info.value, NoMoreData)
    assert "from 0 to 5" in str(info.value)


def test_reduction_values_gives_every_stored_reduction_at_a_step(tmp_path):
    with RunWriter(tmp_path / "r") as w:
        w.write("smdebug/reductions/l2/gradient/fc.weight", np.float64(3.0), 0)
        w.write("smdebug/reductions/abs_mean/gradient/fc.weight", np.float64(0.5), 0)
        w.write("smdebug/reductions/l2/gradient/fc.weight", np.float64(4.0), 1)
        w.write("fc.weight", np.ones(3, np.float32), 1)
    run = open_run(tmp_path / "r")
    grad = run.tensor("gradient/fc.weight")
    at0 = grad.reduction_values(0)
    assert set(at0) == {("l2", False), ("mean", True)}
    assert at0[("l2", False)].item() == 3.0 and at0[("mean", True)].item() == 0.5
    assert {k: v.item() for k, v in grad.reduction_values(1).items()} == {("l2", False): 4.0}
    assert run.tensor("fc.weight").reduction_values(1) == {}  # only its full value is stored
    with pytest.raises(StepUnavailable):
        grad.reduction_values(7)


def test_workers_of_a_step_where_the_tensor_was_not_saved_is_an_error(tmp_path):
    """As SageMaker Debugger: TensorUnavailableForStep, not an empty list that reads as "no
    worker wrote it" (and StepUnavailable for a step the run does not have)."""
    with RunWriter(tmp_path / "r") as w:
        w.write("loss", np.float32(0), 0)
        w.write("smdebug/reductions/l2/gradient/w", np.float64(1.0), 0)
        w.write("loss", np.float32(1), 1)
        w.write("labels", np.arange(3), 1)
    run = open_run(tmp_path / "r")
    assert run.tensor("labels").workers(1) == ["worker_0"]
    with pytest.raises(TensorUnavailableForStep, match="saved at steps"):
        run.tensor("labels").workers(0)
    with pytest.raises(TensorUnavailableForStep):
        run.tensor("gradient/w").workers(1)  # stored only as a reduction, at step 0
    assert run.tensor("gradient/w").workers(0) == ["worker_0"]
    with pytest.raises(NoMoreData):
        run.tensor("labels").workers(5)
