"""Recording never breaks training; the RuleMonitor interface; object storage output."""

from __future__ import annotations

import errno
import os
import threading
import uuid
import warnings

import pytest
from capture_helpers import TinyNet, batches, train

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.capture import CollectionConfig
from pytest_modelrules.capture import recorder as recorder_module
from pytest_modelrules.exceptions import RecorderError
from pytest_modelrules.store import writer as writer_module
from pytest_modelrules.store.format import RECORD_HEADER
from pytest_modelrules.store.writer import RunWriter

torch = pytest.importorskip("torch")


def _fresh():
    torch.manual_seed(0)
    model = TinyNet()
    return model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.skipif(not hasattr(os, "writev"), reason="simulates the failure in os.writev")
def test_disk_full_during_training_is_reported_once_and_training_goes_on(tmp_path, monkeypatch):
    data = batches(8)
    model, loss_fn, opt = _fresh()
    baseline = train(model, loss_fn, opt, data)

    real_writev = os.writev
    written_in_step_3 = []

    def failing_writev(fd, parts):  # the system call that appends a record
        step = RECORD_HEADER.unpack_from(b"".join(bytes(p) for p in parts)[:48])[2]
        if step >= 3 and written_in_step_3:  # the disk fills up in the middle of step 3
            raise OSError(errno.ENOSPC, "No space left on device")
        if step == 3:
            written_in_step_3.append(fd)
        return real_writev(fd, parts)

    monkeypatch.setattr(writer_module, "_WRITEV", failing_writev)
    model, loss_fn, opt = _fresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
            losses = train(model, loss_fn, opt, data)
    assert losses == baseline  # recording changed nothing, even while failing
    ours = [w for w in caught if "Recorder" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "No space left on device" in str(ours[0].message)
    assert "step 3" in str(ours[0].message)
    assert rec.dead and isinstance(rec.error, OSError)
    # nothing of the recorder is left on the model
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert not model.relu._forward_hooks and not opt._optimizer_step_pre_hooks
    # what was committed before the failure still reads; the half-written step 3 does not
    assert len(written_in_step_3) == 1
    assert open_run(tmp_path / "run").steps() == [0, 1, 2]


@pytest.mark.skipif(not hasattr(os, "writev"), reason="simulates the failure in os.writev")
def test_a_disk_error_without_the_writer_thread_names_its_step_once(tmp_path, monkeypatch):
    """async_write=False writes each step on the training thread: the report named the step
    twice ('while writing step 2 (TRAIN step 2) at global step 2 (TRAIN step 2)')."""

    def failing_writev(fd, parts):
        if RECORD_HEADER.unpack_from(b"".join(bytes(p) for p in parts)[:48])[2] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, parts)

    real_writev = os.writev
    monkeypatch.setattr(writer_module, "_WRITEV", failing_writev)
    model, loss_fn, opt = _fresh()
    with (
        pytest.warns(RuntimeWarning, match="No space left") as record,
        Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                 async_write=False) as rec,
    ):  # fmt: skip
        train(model, loss_fn, opt, batches(4))
    (message,) = [str(w.message) for w in record if "Recorder" in str(w.message)]
    assert "while writing step 2 (TRAIN step 2) (OSError" in message, message
    assert message.count("step 2") == 2 and rec.dead


def test_read_only_run_folder_after_start(tmp_path, monkeypatch):
    """The run's files vanish into a folder that refuses new files (as chmod a-w would for a
    normal user; the tests may run as root, so the refusal is simulated at open())."""
    model, loss_fn, opt = _fresh()
    data = batches(4)
    real_open = RunWriter._open
    armed = threading.Event()

    def refusing_open(self, path, kind, name):
        if armed.is_set():
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(self, path, kind, name)

    monkeypatch.setattr(RunWriter, "_open", refusing_open)
    with (
        pytest.warns(RuntimeWarning, match="Permission denied") as record,
        Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1),
    ):
        armed.set()  # the first tensor file would be created now
        losses = train(model, loss_fn, opt, data)
    assert len([w for w in record if "Recorder" in str(w.message)]) == 1
    assert len(losses) == 4


def _train_through_a_failure(path, match: str, steps: int) -> tuple[list[float], Recorder]:
    """Train ``steps`` steps recorded at every step, expecting one warning matching ``match``."""
    model, loss_fn, opt = _fresh()
    with (
        pytest.warns(RuntimeWarning, match=match),
        Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1) as rec,
    ):
        losses = train(model, loss_fn, opt, batches(steps))
    return losses, rec


def test_an_error_inside_a_hook_stops_recording_not_training(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("weird output")

    monkeypatch.setattr(recorder_module, "compute_many", broken)
    losses, rec = _train_through_a_failure(tmp_path / "run", "weird output", 3)
    assert len(losses) == 3 and rec.dead


def test_an_error_on_the_training_thread_keeps_the_steps_already_queued(tmp_path, monkeypatch):
    """A failure while the writer is behind (steps 0-2 still queued when step 3 fails): the
    writer still writes those steps before it closes the run's files; nothing recorded before
    the error is lost."""
    import time

    real_rows = recorder_module.compute_batch_rows
    calls = []

    def fails_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) > 6:  # weights and gradients: 2 calls a step
            raise RuntimeError("weird parameter")
        return real_rows(*args, **kwargs)

    real_write = RunWriter.write_step

    def slow_write(self, *args, **kwargs):
        time.sleep(0.2)  # the writer falls behind the training loop
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(recorder_module, "compute_batch_rows", fails_at_step_3)
    monkeypatch.setattr(RunWriter, "write_step", slow_write)
    losses, rec = _train_through_a_failure(tmp_path / "run", "weird parameter", 6)
    assert len(losses) == 6 and rec.dead
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2] and not run.has_ended


def test_configuration_errors_raise_at_construction(tmp_path, tiny):
    model = tiny[0]
    with pytest.raises(RecorderError, match=r"loss must be a torch\.nn\.Module"):
        Recorder(tmp_path / "a", model, loss=torch.nn.functional.cross_entropy)
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        CollectionConfig("x", reductions=["median"])
    with pytest.raises(RecorderError, match="unknown collection 'relus'"):
        Recorder(tmp_path / "b", model, collections=["relus"])
    Recorder(tmp_path / "c", model).close()
    with pytest.raises(RecorderError, match="already holds a recorded run"):
        Recorder(tmp_path / "c", model)


class FakeMonitor:
    """The RuleMonitor interface the Recorder codes against."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.attached: list[str] = []
        self.committed: list[int] = []
        self.closed = 0
        self.stop_after = stop_after
        self.stop_reason: str | None = None

    def attach(self, run_path: str) -> None:
        self.attached.append(run_path)

    def on_step_committed(self, step: int) -> None:
        self.committed.append(step)
        if self.stop_after is not None and step >= self.stop_after and self.stop_reason is None:
            self.stop_reason = f"rule fake triggered at step {step}"

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("async_write", [False, True])
def test_rule_monitor_hook(tmp_path, async_write):
    model, loss_fn, opt = _fresh()
    monitor = FakeMonitor(stop_after=4)
    steps = 0
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=2,
                  monitor=monitor, async_write=async_write) as rec:  # fmt: skip
        assert monitor.attached == [str(tmp_path / "run")]
        for x, y in batches(20):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            steps += 1
            if rec.should_stop:
                break
    # the monitor hears of each committed step; should_stop follows it. With the writer
    # thread a step is committed a little later, so the loop may run a few steps longer.
    assert monitor.committed[:3] == [0, 2, 4]
    assert steps == 5 if not async_write else 5 <= steps <= 12
    assert monitor.closed == 1
    run = open_run(tmp_path / "run")
    assert run.end_info["reason"] == "rule fake triggered at step 4"


def test_close_with_an_explicit_reason(tmp_path, tiny):
    model, loss_fn, opt = tiny
    rec = Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1)
    train(model, loss_fn, opt, batches(1))
    rec.close(reason="budget spent")
    rec.close()  # idempotent
    assert open_run(tmp_path / "run").end_info["reason"] == "budget spent"
    assert not rec.should_stop


def test_fsspec_memory_url(tiny):
    model, loss_fn, opt = tiny
    url = f"memory://modelrules-test-{uuid.uuid4().hex}/run"
    with Recorder(
        url, model, loss=loss_fn, optimizer=opt, save_interval=1, sync_interval_s=0
    ) as rec:
        train(model, loss_fn, opt, batches(2))
        rec.set_mode(modes.EVAL)
        with torch.no_grad():
            model(batches(1)[0][0])
    run = open_run(url)
    assert run.steps() == [0, 1, 2] and run.has_ended
    assert run.tensor("CrossEntropyLoss_output_0").steps(modes.TRAIN) == [0, 1]


def test_local_file_url(tmp_path, tiny):
    model, loss_fn, opt = tiny
    with Recorder(f"file://{tmp_path}/run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        train(model, loss_fn, opt, batches(2))
    assert open_run(tmp_path / "run").steps() == [0, 1]


def test_warnings_as_errors_still_never_fail_training(tmp_path, monkeypatch):
    model, loss_fn, opt = _fresh()

    def broken(*args, **kwargs):
        raise RuntimeError("weird output")

    monkeypatch.setattr(recorder_module, "compute_many", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
            losses = train(model, loss_fn, opt, batches(3))
    assert len(losses) == 3 and rec.dead
