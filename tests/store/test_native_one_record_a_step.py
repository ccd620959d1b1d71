"""A worker saves a tensor at most once a step, and each tensor lives in one tensor file of a
worker: a run that breaks either (two files that both claim the tensor, or one step in two
files) is refused with an error naming both files, where the reader used to pick one value
silently. END's ``last_step``, ``wall_time`` and ``reason`` are checked too, and the commit
log of an ended worker must end at END's ``last_step``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store import RunWriter, open_run
from pytest_modelrules.store.format import RECORD_HEADER, parse_file_header
from pytest_modelrules.store.memory import MemoryRunBuilder


def worker_dir(root: Path) -> Path:
    return root / "workers" / "worker_0"


def drop_end_files(root: Path) -> None:
    """Remove END's list of file lengths (as in runs written before it existed), so that the
    check under test is the only one that can find the damage."""
    end_path = worker_dir(root) / "END"
    end = json.loads(end_path.read_text())
    del end["files"]
    end_path.write_text(json.dumps(end))


def rows_run(root: Path, steps: range) -> Path:
    """Tensor ``x`` in its own file, ``a`` and ``b`` in a rows file, at ``steps``."""
    with RunWriter(root) as w:
        for g in steps:
            w.write_step(
                g,
                [("x", np.full(3, g, np.float32))],
                scalars=[(["a", "b"], np.array([g, -g], np.float32))],
            )
    return root


def own_file_run(root: Path, steps: range, value: float) -> Path:
    """Tensor ``a`` in its own file at ``steps``."""
    with RunWriter(root) as w:
        for g in steps:
            w.write_step(g, [("a", np.float32(value))])
    return root


def test_a_tensor_in_its_own_file_and_a_rows_file_at_other_steps_reads_whole(tmp_path):
    with RunWriter(tmp_path / "run") as w:
        w.write_step(0, [("a", np.float32(10))])
        w.write_step(1, [("a", np.float32(11))])
        w.write_step(2, [], scalars=[(["a", "b"], np.array([12, 0], np.float32))])
        w.write_step(3, [], scalars=[(["a", "c"], np.array([13, 0], np.float32))])
    run = open_run(tmp_path / "run")
    assert {s: float(v) for s, v in run.tensor("a").values().items()} == {
        0: 10.0,
        1: 11.0,
        2: 12.0,
        3: 13.0,
    }


def test_a_step_in_its_own_file_and_in_a_rows_file_is_refused(tmp_path):
    root = rows_run(tmp_path / "run", range(4))
    other = own_file_run(tmp_path / "other", range(2, 6), value=99.0)
    shutil.copy(worker_dir(other) / "tensors" / "a.mrt", worker_dir(root) / "tensors" / "a.mrt")
    drop_end_files(root)
    run = open_run(root)
    assert run.tensor("b").value(2) == -2  # the row's other tensor is sound
    with pytest.raises(CorruptRunError) as err:
        run.tensor("a").values()
    message = str(err.value)
    (rows_file,) = (worker_dir(root) / "rows").iterdir()
    assert "tensor 'a' at step 2 is also in" in message
    assert "a.mrt" in message and rows_file.name in message


def test_a_step_in_two_rows_files_is_refused(tmp_path):
    root = rows_run(tmp_path / "run", range(4))
    with RunWriter(tmp_path / "other") as w:  # another row naming "a", steps 3-4
        for g in (3, 4):
            w.write_step(g, [], scalars=[(["c", "a"], np.array([0, 50], np.float32))])
    (theirs,) = (worker_dir(tmp_path / "other") / "rows").iterdir()
    (ours,) = (worker_dir(root) / "rows").iterdir()
    assert theirs.name != ours.name  # named by their lists of names
    shutil.copy(theirs, worker_dir(root) / "rows" / theirs.name)
    drop_end_files(root)
    with pytest.raises(CorruptRunError, match="tensor 'a' at step 3 is also in"):
        open_run(root).tensor("a").value(0)
    # the tensors each rows file holds alone still read
    assert open_run(root).tensor("b").value(3) == -3


def test_two_tensor_files_of_one_tensor_are_refused_at_open(tmp_path):
    root = rows_run(tmp_path / "run", range(3))
    tensors = worker_dir(root) / "tensors"
    # "%78" decodes to "x": a second file of tensor x, its header saying so too
    shutil.copy(tensors / "x.mrt", tensors / "%78.mrt")
    drop_end_files(root)
    with pytest.raises(CorruptRunError, match="holds tensor 'x', as does") as err:
        open_run(root)
    assert "x.mrt" in str(err.value) and "%78.mrt" in str(err.value)


def test_a_hashed_file_name_claiming_another_files_tensor_is_refused(tmp_path):
    root = rows_run(tmp_path / "run", range(3))
    tensors = worker_dir(root) / "tensors"
    # a long name's file ("<prefix>~<digest>.mrt") is named by its header: here "x" again
    shutil.copy(tensors / "x.mrt", tensors / ("y" * 100 + "~" + "0" * 32 + ".mrt"))
    drop_end_files(root)
    with pytest.raises(CorruptRunError, match="holds tensor 'x', as does"):
        open_run(root)


def test_the_same_tensor_and_step_on_two_workers_is_one_value_per_worker(tmp_path):
    """Workers may each save a tensor at a step (every rank's loss): not a duplicate."""
    root = tmp_path / "run"
    for rank in (0, 1):
        with RunWriter(root, worker=f"worker_{rank}", rank=rank, num_workers=2) as w:
            for g in range(3):
                w.write_step(g, [("loss", np.float32(g + 10 * rank))])
    loss = open_run(root).tensor("loss")
    assert float(loss.value(1, worker="worker_0")) == 1.0
    assert float(loss.value(1, worker="worker_1")) == 11.0


# -- END's other keys --------------------------------------------------------------------------


def rewrite_end(root: Path, **changes) -> None:
    end_path = worker_dir(root) / "END"
    end = json.loads(end_path.read_text())
    end.update(changes)
    end_path.write_text(json.dumps(end))


def test_end_gives_the_last_committed_step(tmp_path):
    root = rows_run(tmp_path / "run", range(5))
    end = json.loads((worker_dir(root) / "END").read_text())
    assert end["last_step"] == 4
    assert open_run(root).steps() == [0, 1, 2, 3, 4]


def test_a_commit_log_that_ends_before_ends_last_step_is_refused(tmp_path):
    """A commit log cut at a record boundary (in a run whose END lists no file lengths) lost
    committed steps: END's last_step tells."""
    root = rows_run(tmp_path / "run", range(5))
    drop_end_files(root)
    steps_file = worker_dir(root) / "steps.mrt"
    data = steps_file.read_bytes()
    pos = parse_file_header(data, "steps.mrt").data_offset
    starts = []
    while pos < len(data):
        starts.append(pos)
        fields = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER.size + 8 * fields[8] + fields[5]
    steps_file.write_bytes(data[: starts[3]])  # steps 0-2 left
    with pytest.raises(CorruptRunError) as err:
        open_run(root)
    message = str(err.value)
    assert "steps.mrt" in message
    assert "gives 4 as the last committed step; the commit log ends at step 2" in message
    assert "steps lost" in message


def test_an_end_whose_last_step_was_never_committed_is_refused(tmp_path):
    root = rows_run(tmp_path / "run", range(3))
    rewrite_end(root, last_step=1)
    with pytest.raises(CorruptRunError, match="gives 1 as the last committed step; the commit"):
        open_run(root)


def test_a_writer_closed_before_any_step_reads_as_an_empty_ended_run(tmp_path):
    RunWriter(tmp_path / "run").close()
    assert json.loads((worker_dir(tmp_path / "run") / "END").read_text())["last_step"] == -1
    run = open_run(tmp_path / "run")
    assert run.has_ended and run.steps() == []
    rewrite_end(tmp_path / "run", last_step=0)
    with pytest.raises(CorruptRunError, match="the commit log holds no step"):
        open_run(tmp_path / "run")


def test_an_end_without_last_step_reads_as_before(tmp_path):
    root = rows_run(tmp_path / "run", range(3))
    end_path = worker_dir(root) / "END"
    end = json.loads(end_path.read_text())
    del end["last_step"], end["wall_time"]
    end_path.write_text(json.dumps(end))
    run = open_run(root)
    assert run.has_ended and run.steps() == [0, 1, 2]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("last_step", "2", "'last_step' must be an integer from -1 up, found 2"),
        ("last_step", True, "'last_step' must be an integer"),
        ("last_step", 2.0, "'last_step' must be an integer"),
        ("last_step", -2, "'last_step' must be an integer"),
        ("last_step", 2**63, "'last_step' must be an integer"),
        ("wall_time", "yesterday", "'wall_time' must be a number, found yesterday"),
        ("wall_time", [1], "'wall_time' must be a number"),
        ("wall_time", 1e400, "'wall_time' must be a number"),
        ("reason", {"rule": "x"}, "'reason' must be a string, found dict"),
    ],
)
def test_an_end_field_of_the_wrong_type_is_one_error_naming_end(tmp_path, key, value, problem):
    root = rows_run(tmp_path / "run", range(3))
    end_path = worker_dir(root) / "END"
    end = json.loads(end_path.read_text())
    end[key] = value
    text = json.dumps(end)
    if value == 1e400:  # json.dumps writes Infinity; a writer in another language might write
        text = text.replace("Infinity", "1e400")  # a number that overflows a double
    end_path.write_text(text)
    with pytest.raises(CorruptRunError) as err:
        open_run(root)
    assert str(end_path) in str(err.value) and problem in str(err.value)


def test_the_writer_refuses_an_end_reason_that_is_not_a_string(tmp_path):
    """What the reader would refuse is never written: the run stays open for a proper close."""
    w = RunWriter(tmp_path / "run")
    w.write_step(0, [("x", np.float32(1))])
    with pytest.raises(TypeError, match="the end reason must be a string, got dict"):
        w.close(reason={"rule": "LossNotDecreasing"})
    assert not (worker_dir(tmp_path / "run") / "END").exists()
    w.close(reason="LossNotDecreasing triggered at step 0")
    run = open_run(tmp_path / "run")
    assert run.end_info["reason"] == "LossNotDecreasing triggered at step 0"
    assert run.steps() == [0]


def test_the_in_memory_writer_refuses_an_end_reason_that_is_not_a_string():
    builder = MemoryRunBuilder()
    builder.write("x", np.float32(1), step=0)
    with pytest.raises(TypeError, match="the end reason must be a string, got int"):
        builder.close(reason=3)
    assert not builder.run().has_ended
    builder.close(reason="stopped")
    assert builder.run().end_info["reason"] == "stopped"


def test_the_recorder_refuses_an_end_reason_that_is_not_a_string_and_stays_open(tmp_path):
    """A wrong reason is the caller's error, said at once: the Recorder stays open, so that a
    second close still ends the run (caught inside, it would have left the run unended)."""
    torch = pytest.importorskip("torch")
    from pytest_modelrules import Recorder

    model = torch.nn.Linear(3, 2)
    rec = Recorder(tmp_path / "run", model, save_interval=1)
    model(torch.ones(4, 3))
    with pytest.raises(TypeError, match="the end reason must be a string, got int"):
        rec.close(reason=7)
    assert not rec.closed
    rec.close(reason="stopped by hand")
    run = open_run(tmp_path / "run")
    assert run.has_ended and run.end_info["reason"] == "stopped by hand"
    assert run.steps() == [0]
