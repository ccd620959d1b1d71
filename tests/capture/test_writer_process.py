"""Recorder(writer_process=True): the run a writer process writes equals the writer thread's,
and its failures keep the thread's promises (one report, training goes on, nothing committed
lost, a killed training leaves an unended run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from capture_helpers import (
    TinyNet,
    assert_end_lists_every_file,
    assert_same_values,
    batches,
    run_values,
    train,
)

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.exceptions import RecorderError

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[2]


def _fresh():
    torch.manual_seed(0)
    model = TinyNet()
    return model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1)


def _record(path: Path, data, **kwargs) -> tuple[list[float], Recorder]:
    model, loss_fn, opt = _fresh()
    with Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1,
                  metadata={"scale": np.float32(0.5)}, **kwargs) as rec:  # fmt: skip
        losses = train(model, loss_fn, opt, data, accumulate=2)
        rec.update_metadata({"classes": ["a", "b", "c", "d", "e"]})
        rec.set_mode(modes.EVAL)
        with torch.no_grad():
            for x, _ in data[:2]:
                model(x)
    return losses, rec


def test_the_process_writes_the_run_the_thread_writes(tmp_path):
    data = batches(8)
    thread_losses, _ = _record(tmp_path / "thread", data)
    process_losses, rec = _record(tmp_path / "process", data, writer_process=True)
    assert not rec.dead, rec.error
    assert process_losses == thread_losses
    assert_same_values(run_values(tmp_path / "process"), run_values(tmp_path / "thread"))
    a, b = open_run(tmp_path / "thread"), open_run(tmp_path / "process")
    assert b.steps() == a.steps() and b.steps(modes.EVAL) == a.steps(modes.EVAL) == [0, 1]
    assert b.metadata == a.metadata and b.metadata["classes"] == ["a", "b", "c", "d", "e"]
    assert b.has_ended
    assert_end_lists_every_file(tmp_path / "process")
    assert {n: c.tensor_names for n, c in b.collections().items()} == {
        n: c.tensor_names for n, c in a.collections().items()
    }
    assert rec.writer.closed
    with pytest.raises(ProcessLookupError):  # the process is gone
        os.kill(rec.writer.pid, 0)


def _kill_the_process(rec: Recorder, run: Path) -> None:
    deadline = time.monotonic() + 30
    while len(open_run(run).steps()) < 3:  # steps 0-2 committed by the process
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(rec.writer.pid, signal.SIGKILL)


def _break_the_tensors_folder(rec: Recorder, run: Path) -> None:
    """No tensor file can open: the process's write of the next step fails."""
    tensors = run / "workers" / "worker_0" / "tensors"
    if tensors.is_dir():
        tensors.rmdir()
    tensors.write_text("not a folder")


@pytest.mark.parametrize(
    "sabotage, message, kept",
    [
        (_kill_the_process, "is gone", 3),
        (_break_the_tensors_folder, "the writer process failed", 0),
    ],
    ids=["process-killed", "write-fails"],
)
def test_a_failing_writer_process_stops_recording_once_and_training_goes_on(
    tmp_path, sabotage, message, kept
):
    """The process killed after 3 steps, or its write failing (the disk): one report, the
    recording stops, training is unchanged, the steps committed before stay, unended."""
    data = batches(8)
    model, loss_fn, opt = _fresh()
    baseline = train(model, loss_fn, opt, data)
    model, loss_fn, opt = _fresh()
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(run, model, loss=loss_fn, optimizer=opt, save_interval=1,
                      writer_process=True) as rec:  # fmt: skip
            losses = train(model, loss_fn, opt, data[:kept])
            sabotage(rec, run)
            losses += train(model, loss_fn, opt, data[kept:])
    assert losses == baseline
    ours = [str(w.message) for w in caught if "Recorder" in str(w.message)]
    assert len(ours) == 1, ours
    assert message in ours[0]
    assert rec.dead
    if kept:
        reread = open_run(run)
        assert reread.steps()[:kept] == list(range(kept)) and not reread.has_ended


def test_a_run_the_process_cannot_write_is_one_error(tmp_path):
    (tmp_path / "run" / "workers" / "worker_0").mkdir(parents=True)
    (tmp_path / "run" / "workers" / "worker_0" / "steps.mrt").write_bytes(b"")  # a run there
    model, loss_fn, opt = _fresh()
    with pytest.raises(RecorderError) as thread:
        Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt)
    with pytest.raises(RecorderError) as process:  # the same refusal, from the process
        Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, writer_process=True)
    assert str(process.value) == str(thread.value)


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread", "process"])
def test_a_disk_error_while_opening_the_run_is_reported_not_raised(
    tmp_path, monkeypatch, writer_process
):
    """The run's folder is made, then the first write of its collections fails (a disk
    error: here worker.json cannot be replaced). The writer thread's Recorder reported it and
    recorded nothing; the writer process's raised its WriterProcessError out of the
    Recorder's construction, so that the training script failed before its first step."""
    from pytest_modelrules.capture import writer_process as writer_process_module
    from pytest_modelrules.store import writer as writer_module

    cls = writer_process_module.ProcessWriter if writer_process else writer_module.RunWriter
    real_init = cls.__init__

    def opened_then_broken(self, path, *args, **kwargs):
        real_init(self, path, *args, **kwargs)
        worker_file = Path(path) / "workers" / "worker_0" / "worker.json"
        worker_file.unlink()
        (worker_file / "in-the-way").mkdir(parents=True)  # a folder: no file replaces it

    monkeypatch.setattr(cls, "__init__", opened_then_broken)
    data = batches(3)
    model, loss_fn, opt = _fresh()
    baseline = train(model, loss_fn, opt, data)
    model, loss_fn, opt = _fresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                      writer_process=writer_process) as rec:  # fmt: skip
            losses = train(model, loss_fn, opt, data)
    assert losses == baseline
    ours = [str(w.message) for w in caught if "Recorder" in str(w.message)]
    assert len(ours) == 1, ours
    assert "opening the run" in ours[0] and "Is a directory" in ours[0]
    assert rec.dead and rec.writer.closed
    # the copy of worker.json that could not replace it is not left in the run's folder
    assert [p.name for p in (tmp_path / "run" / "workers" / "worker_0").glob("*.tmp")] == []


def test_writer_process_configuration_errors(tmp_path):
    model, loss_fn, _ = _fresh()
    with pytest.raises(RecorderError, match="local run"):
        Recorder("memory://run", model, loss=loss_fn, writer_process=True)
    with pytest.raises(RecorderError, match="async_write=False"):
        Recorder(tmp_path / "r", model, loss=loss_fn, writer_process=True, async_write=False)


KILLED = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {helpers!r})
    from capture_helpers import TinyNet, batches
    from pytest_modelrules import Recorder
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyNet(); loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(sys.argv[1], model, loss=loss_fn, optimizer=opt, save_interval=1,
                   writer_process=True)
    print(rec.writer.pid, flush=True)
    step = 0
    for x, y in batches(10_000):
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        step += 1
        if step == 12:
            print("ready", flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_of_the_training_keeps_the_committed_steps(tmp_path):
    """The writer process outlives a killed training process just long enough: it reads the
    end of its input, keeps every step it committed, leaves the run unended and exits."""
    script = tmp_path / "train.py"
    script.write_text(KILLED.format(repo=str(REPO), helpers=str(Path(__file__).parent)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        child = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the orphan notices and exits
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the writer process outlived the training process")
    run = open_run(tmp_path / "run")
    steps = run.steps()
    assert len(steps) >= 9 and steps == list(range(len(steps)))  # 2 steps may be in flight
    assert not run.has_ended
    loss = run.tensor("CrossEntropyLoss_output_0")
    assert loss.steps() == steps


def test_layouts_travel_as_json_and_back():
    """What the process rebuilds from JSON is the layout the Recorder made."""
    from pytest_modelrules.capture import host

    layouts = [
        host.Red([("a", "mean", (2, 3)), ("b", "l2", ())]),
        host.Scalars(["x", "y"], "float64", np.array([4.0, 9.0])),
        host.Scalars(["x"], "float32"),
        host.Counts((("r", 8, 16), ("s", 8, 4))),
        host.Full("t", (5, 1)),
    ]
    for layout in layouts:
        back = host.layout_from_json(host.layout_to_json(layout))
        assert type(back) is type(layout)
        for got, want in zip(back, layout):
            if isinstance(want, np.ndarray):
                np.testing.assert_array_equal(got, want)
            else:
                assert got == want
    with pytest.raises(ValueError, match="unknown layout"):
        host.layout_from_json(["other"])


CTRL_C = textwrap.dedent(
    """
    import json, os, signal, sys, time, torch
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {helpers!r})
    from capture_helpers import TinyNet, batches, train
    from pytest_modelrules import Recorder, open_run
    torch.set_num_threads(1)
    model = TinyNet(); loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        with Recorder(sys.argv[1], model, loss=loss_fn, optimizer=opt, save_interval=1,
                      writer_process=True) as rec:
            train(model, loss_fn, opt, batches(3))
            os.killpg(os.getpgrp(), signal.SIGINT)  # Ctrl-C: the whole process group
            time.sleep(2)
    except KeyboardInterrupt:
        pass
    run = open_run(sys.argv[1])
    print(json.dumps({{"dead": rec.dead, "ended": run.has_ended, "steps": run.steps(),
                      "reason": run.end_info.get("reason")}}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups (POSIX)")
def test_ctrl_c_reaches_the_training_not_the_writer_process(tmp_path):
    """Ctrl-C goes to the terminal's whole process group: the writer process ignores it, so
    the training's Recorder closes the run with the interrupt as its reason, as with the
    writer thread."""
    import json

    script = tmp_path / "train.py"
    script.write_text(CTRL_C.format(repo=str(REPO), helpers=str(Path(__file__).parent)))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
        timeout=120, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {
        "dead": False, "ended": True, "steps": [0, 1, 2], "reason": "error: KeyboardInterrupt: "
    }, proc.stderr[-2000:]  # fmt: skip
