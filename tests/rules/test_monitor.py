"""RuleMonitor stops a real (tiny) training loop whose loss does not go down."""

from __future__ import annotations

import importlib
import time

import numpy as np
import pytest

from pytest_modelrules import RuleParameterError, RunWriter, open_run
from pytest_modelrules.rules.loss import LossNotDecreasing
from pytest_modelrules.rules.monitor import RuleMonitor

LOSS = "CrossEntropyLoss_output_0"


def tiny_problem(lr: float):
    """A linear classifier on one fixed batch; lr 0 is the bug (the loss never moves)."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(32, 8)
    y = torch.randint(0, 3, (32,))
    model = torch.nn.Linear(8, 3)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return x, y, model, loss_fn, opt


def manual_loop(path, monitor, lr, max_steps=400):
    """Train with RunWriter writing the loss; returns the step the loop stopped after."""
    x, y, model, loss_fn, opt = tiny_problem(lr)
    last = -1
    with RunWriter(path) as w:
        w.set_collections({"losses": {"tensor_names": [LOSS]}})
        monitor.attach(path)
        for step in range(max_steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            w.write(LOSS, loss.detach(), step)
            w.write("CrossEntropyLoss_input_0", model(x).detach(), step)
            w.write("CrossEntropyLoss_input_1", y, step)
            w.end_step()
            monitor.on_step_committed(step)
            last = step
            if monitor.stop_requested:
                break
            if monitor.background:
                time.sleep(0.001)  # a real step takes time; let the worker run
        w.close(reason=monitor.stop_reason)
    monitor.close()
    return last


def test_monitor_stops_the_buggy_loop_synchronously(tmp_path):
    monitor = RuleMonitor(["loss_not_decreasing"], every_n_steps=20, background=False)
    last = manual_loop(tmp_path / "run", monitor, lr=0.0)
    assert last == 19  # the first evaluation, after 20 committed steps
    assert monitor.stop_requested
    assert monitor.stop_reason.startswith("loss_not_decreasing: TRIGGERED first at global step 10")
    assert open_run(tmp_path / "run").end_info.get("reason") == monitor.stop_reason
    (result,) = monitor.results
    assert result.triggered and result.first_step == 10
    assert monitor.evaluations == 2  # at step 19, and the final one in close()


def test_monitor_stops_the_buggy_loop_in_the_background(tmp_path):
    monitor = RuleMonitor(
        [("loss_not_decreasing", {"num_steps": "5"}), "class_imbalance"], every_n_steps=10
    )
    last = manual_loop(tmp_path / "run", monitor, lr=0.0)
    assert monitor.stop_requested
    assert last < 399  # stopped long before the end
    assert "loss_not_decreasing" in monitor.stop_reason
    by_name = {r.name: r for r in monitor.results}
    assert by_name["loss_not_decreasing"].first_step == 5
    assert not by_name["class_imbalance"].triggered
    assert monitor.errors == []


def test_monitor_lets_a_healthy_loop_finish(tmp_path):
    monitor = RuleMonitor([LossNotDecreasing(num_steps=10)], every_n_steps=10, background=False)
    last = manual_loop(tmp_path / "run", monitor, lr=0.5, max_steps=60)
    assert last == 59
    assert not monitor.stop_requested and monitor.stop_reason is None
    assert monitor.evaluations == 7
    assert not monitor.results[0].triggered


def test_monitor_with_the_recorder_if_present(tmp_path):
    """With the Recorder (capture.recorder) the same bug stops training; without it, the
    RunWriter loop stands in."""
    try:
        recorder_mod = importlib.import_module("pytest_modelrules.capture.recorder")
    except ImportError:
        recorder_mod = None
    monitor = RuleMonitor(["loss_not_decreasing"], every_n_steps=20, background=False)
    if recorder_mod is None:
        last = manual_loop(tmp_path / "run", monitor, lr=0.0)
    else:
        x, y, model, loss_fn, opt = tiny_problem(0.0)
        last = -1
        with recorder_mod.Recorder(
            tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1, monitor=monitor
        ) as rec:
            for step in range(400):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                last = step
                if rec.should_stop:
                    break
    assert monitor.stop_requested
    assert last < 399
    assert monitor.results[0].triggered


def test_rule_errors_are_kept_not_raised(tmp_path):
    monitor = RuleMonitor(
        ["direction_confusion", "recall_floor"], every_n_steps=5, background=False
    )
    with RunWriter(tmp_path / "run") as w:  # only a loss: both rules lack labels
        monitor.attach(tmp_path / "run")
        for step in range(5):
            w.write(LOSS, np.float32(1.0), step)
            w.end_step()
            monitor.on_step_committed(step)
    monitor.close()
    assert not monitor.stop_requested
    assert any("RecallFloor" in e and "labels tensor" in e for e in monitor.errors)


def test_bad_configuration(tmp_path):
    with pytest.raises(RuleParameterError, match="unknown rule"):
        RuleMonitor(["no_such_rule"])
    with pytest.raises(ValueError, match="every_n_steps"):
        RuleMonitor(["overfit"], every_n_steps=0)
    with pytest.raises(ValueError, match="at least one rule"):
        RuleMonitor([])
    monitor = RuleMonitor("overfit")
    with pytest.raises(RuntimeError, match="attach"):
        monitor.on_step_committed(0)
    assert monitor.close() == []


def test_monitor_attached_before_the_run_exists(tmp_path):
    monitor = RuleMonitor(["loss_not_decreasing"], every_n_steps=1, background=False)
    monitor.attach(tmp_path / "later")
    monitor.on_step_committed(0)  # nothing on disk yet: noted, not raised
    assert monitor.errors and "later" in monitor.errors[0]
    with RunWriter(tmp_path / "later") as w:
        for step in range(12):
            w.write(LOSS, np.float32(1.0), step)
            w.end_step()
            monitor.on_step_committed(step)
            if monitor.stop_requested:
                break
    assert step == 10 and monitor.stop_requested
    monitor.close()


def _stalled_run(path, monitor, gap_at: int):
    """Steps one second apart, then a gap of an hour before step ``gap_at``."""
    with RunWriter(path) as w:
        monitor.attach(path)
        wall = 1_600_000_000.0
        for step in range(gap_at + 3):
            wall += 3600.0 if step == gap_at else 1.0
            w.write(LOSS, np.float32(1.0 / (step + 1)), step, wall_time=wall)
            w.end_step()
            monitor.on_step_committed(step)
            if monitor.stop_requested:
                break


@pytest.mark.parametrize("on_fire", [True, False])
def test_stop_training_on_fire_stops_even_without_stop_on_trigger(tmp_path, on_fire):
    rule = ("stalled_training", {"threshold": 1800, "stop_training_on_fire": on_fire})
    monitor = RuleMonitor([rule], every_n_steps=1, stop_on_trigger=False, background=False)
    _stalled_run(tmp_path / "run", monitor, gap_at=5)
    monitor.close()
    assert monitor.stop_requested is on_fire
    if on_fire:
        assert "stalled_training" in monitor.stop_reason
    else:
        assert monitor.stop_reason is None
        assert any(r.triggered for r in monitor.results)
