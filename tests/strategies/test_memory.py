"""In-memory runs behave as runs written with RunWriter and read from disk."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelrules.exceptions import StepUnavailable, TensorUnavailable
from pytest_modelrules.store.memory import (
    MemoryRun,
    MemoryRunBuilder,
    build_run,
    run_differences,
    transform_run,
)
from pytest_modelrules.store.run import Run, open_run
from pytest_modelrules.store.writer import RunWriter

PROFILE = settings.get_profile(os.environ.get("MODELRULES_HYPOTHESIS_PROFILE", "modelrules-fast"))

NAMES = st.sampled_from(["loss", "a/b", "layer1.0.relu_output_0", "gradient/fc.weight"])
ARRAYS = st.one_of(
    st.floats(allow_nan=True, width=32).map(np.float32),
    st.lists(st.integers(-5, 5), min_size=0, max_size=4).map(lambda v: np.asarray(v, np.int64)),
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=6).map(
        lambda v: np.asarray(v, np.float32).reshape(-1, 1)
    ),
)


@st.composite
def write_plans(draw):
    """Per worker: [(step, mode, {name: array})] in increasing steps; flags for end/close."""
    n_workers = draw(st.integers(1, 3))
    steps = sorted(draw(st.sets(st.integers(0, 12), min_size=1, max_size=6)))
    modes = {s: draw(st.sampled_from(["TRAIN", "EVAL", "PREDICT"])) for s in steps}
    plan = []
    for _ in range(n_workers):
        mine = [s for s in steps if draw(st.booleans()) or s == steps[0]]
        rows = []
        for s in mine:
            tensors = draw(st.dictionaries(NAMES, ARRAYS, min_size=1, max_size=3))
            rows.append((s, modes[s], tensors))
        plan.append(rows)
    ended = draw(st.booleans())
    metadata = draw(st.sampled_from([{}, {"class_names": ["a", "b"]}]))
    collections = draw(st.sampled_from([{}, {"losses": {"tensor_names": ["loss"]}}]))
    return plan, ended, metadata, collections


def _apply(writers, plan, ended, collections) -> None:
    for writer, rows in zip(writers, plan):
        if collections:
            writer.set_collections(collections)
        for step, mode, tensors in rows:
            for name, arr in tensors.items():
                writer.write(name, arr, step, mode=mode, wall_time=1000.0 + step)
        if ended:
            writer.close("stopped")
        else:
            writer.end_step()


@settings(PROFILE, max_examples=30)
@given(write_plans())
def test_memory_runs_read_back_as_the_same_writes_on_disk(case) -> None:
    plan, ended, metadata, collections = case
    n = len(plan)
    builder = MemoryRunBuilder(num_workers=n, metadata=metadata)
    _apply([builder.writer(f"worker_{i}", rank=i) for i in range(n)], plan, ended, collections)
    mem = builder.run()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run")
        disk_writers = [
            RunWriter(path, f"worker_{i}", rank=i, num_workers=n, metadata=metadata)
            for i in range(n)
        ]
        _apply(disk_writers, plan, ended, collections)
        if not ended:
            for w in disk_writers:
                w.abort()  # close the files without an end marker
        disk = open_run(path)
        assert run_differences(mem, disk) == []
        for g in disk.steps():
            assert mem.mode(g) == disk.mode(g) and mem.mode_step(g) == disk.mode_step(g)
        assert mem.steps(show_incomplete_steps=True) == disk.steps(show_incomplete_steps=True)
        saved = mem.save(os.path.join(tmp, "saved"))
        assert run_differences(mem, saved) == []


def test_a_step_is_visible_once_committed_and_refresh_picks_up_more() -> None:
    b = MemoryRunBuilder("live")
    b.write("loss", np.float32(3.0), 0)
    run = b.run()
    assert isinstance(run, MemoryRun) and isinstance(run, Run) and run.layout == "memory"
    assert run.steps() == [] and run.has_tensor("loss")
    b.write("loss", np.float32(2.0), 5, mode="EVAL")  # commits step 0
    run.refresh()
    assert run.steps() == [0]
    b.end_step()
    assert run.steps() == [0]  # a live view changes only on refresh
    run.refresh()
    assert run.steps() == [0, 5] and run.steps("EVAL") == [0]
    assert run.tensor("loss").value(0, mode="EVAL") == np.float32(2.0)
    assert not run.has_ended
    b.close("done")
    run.refresh()
    assert run.has_ended and run.end_info["reason"] == "done"


def test_a_step_counts_only_once_every_worker_committed_it() -> None:
    b = MemoryRunBuilder(num_workers=2)
    w1 = b.writer("worker_1")
    b.write("x", np.zeros(2), 0)
    b.write("x", np.ones(2), 1)
    w1.write("x", np.full(2, 7.0), 0)
    b.close()
    w1.close()
    run = b.run()
    assert run.steps() == [0] and run.steps(show_incomplete_steps=True) == [0, 1]
    assert run.tensor("x").workers(0) == ["worker_0", "worker_1"]
    assert np.array_equal(run.tensor("x").value(0, worker="worker_1"), np.full(2, 7.0))
    with pytest.raises(StepUnavailable):
        run.tensor("x").value(1)


def test_writer_checks_match_run_writer() -> None:
    b = MemoryRunBuilder()
    b.write("x", 1.0, 3)
    with pytest.raises(ValueError, match="written twice"):
        b.write("x", 2.0, 3)
    with pytest.raises(ValueError, match="mode"):
        b.write("y", 2.0, 3, mode="EVAL")
    with pytest.raises(ValueError, match="must not go back"):
        b.write("x", 2.0, 2)
    b.end_step()
    with pytest.raises(ValueError, match="already committed"):
        b.write("x", 2.0, 3)
    with pytest.raises(ValueError, match="rank"):
        b.writer("worker_9", rank=5)
    with pytest.raises(ValueError, match="worker name"):
        b.writer("../evil")
    b.close()
    with pytest.raises(ValueError, match="closed"):
        b.write("x", 1.0, 9)


def test_values_are_copies_that_readers_cannot_change() -> None:
    arr = np.arange(3.0)
    run = build_run({0: {"x": arr}})
    arr[0] = 99.0
    assert run.tensor("x").value(0)[0] == 0.0
    with pytest.raises(ValueError):
        run.tensor("x").series().arrays[0][0] = 5.0


def test_build_run_and_transform_run() -> None:
    run = build_run(
        {2: {"loss": np.float32(1.0)}, 0: {"loss": np.float32(2.0)}, 4: {"loss": np.float32(0.5)}},
        modes={4: "EVAL"},
        metadata={"class_names": ["x", "y"]},
    )
    assert run.steps() == [0, 2, 4] and run.steps("TRAIN") == [0, 1] and run.steps("EVAL") == [0]
    assert run.class_names == ["x", "y"] and run.has_ended
    doubled = transform_run(run, lambda name, a: a * 2)
    assert doubled.tensor("loss").values() == {0: 4.0, 2: 2.0, 4: 1.0}
    assert run_differences(run, doubled)[0].startswith("loss values at step 0")
    dropped = transform_run(run, lambda name, a: None if float(a) < 1 else a)
    assert dropped.steps() == [0, 2]
    with pytest.raises(TensorUnavailable):
        run.tensor("los")
    with pytest.raises(ValueError, match="no tensors"):
        build_run({0: {}})


def test_saving_over_a_run_is_refused(tmp_path) -> None:
    run = build_run({0: {"x": np.zeros(1)}})
    run.save(tmp_path / "r")
    with pytest.raises(FileExistsError):
        run.save(tmp_path / "r")


def test_only_the_strategies_module_imports_hypothesis() -> None:
    """Hypothesis is an optional extra: the package, the plugin and in-memory runs load
    without it, and nothing imports pytest_modelrules.strategies behind the user's back."""
    import subprocess
    import sys

    code = (
        "import sys, pytest_modelrules, pytest_modelrules.plugin, pytest_modelrules.store.memory\n"
        "from pytest_modelrules.rules.base import registry; registry()\n"
        "bad = [m for m in sys.modules if m.startswith('hypothesis')"
        " or m == 'pytest_modelrules.strategies']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
