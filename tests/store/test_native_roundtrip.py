"""The native format: round trips of every dtype and shape, SageMaker step semantics, the
errors a user sees, several workers, and the zero-copy paths."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_modelrules.exceptions import (
    StepUnavailable,
    TensorUnavailable,
    TensorUnavailableForStep,
)
from pytest_modelrules.store import RunWriter, open_run
from pytest_modelrules.store.format import DTYPE_CODES

SHAPES = [(), (0,), (3, 0), (5,), (2, 3, 4), (1,) * 32]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_dtype_and_shape_round_trips(tmp_path, shape):
    rng = np.random.default_rng(0)
    written = {}
    with RunWriter(tmp_path / "r") as w:
        for step in range(3):
            for dt in DTYPE_CODES.values():
                a = (rng.standard_normal(shape) * 50).astype(dt)
                if dt.kind == "c":
                    a = a + 1j * a
                written[(str(dt), step)] = a
                w.write(f"t/{dt}", a, step)
    run = open_run(tmp_path / "r")
    assert len(run.tensor_names()) == len(DTYPE_CODES)
    for (dt, step), a in written.items():
        got = run.tensor(f"t/{dt}").value(step)
        assert got.dtype == a.dtype and got.shape == a.shape
        assert got.tobytes() == a.tobytes()
        got[...] = 0  # value() gives the caller's own array
    for dt in DTYPE_CODES.values():
        vals = run.tensor(f"t/{dt}").values()
        assert sorted(vals) == [0, 1, 2]
        for step, v in vals.items():
            assert v.shape == shape and v.tobytes() == written[(str(dt), step)].tobytes()
            assert not v.flags.writeable  # bulk values are read-only (zero-copy) views


def test_torch_tensors_and_mixed_shapes(tmp_path):
    torch = pytest.importorskip("torch")
    with RunWriter(tmp_path / "r") as w:
        w.write("x", torch.arange(6, dtype=torch.int8).reshape(2, 3), 0)
        w.write("x", torch.ones(4, dtype=torch.bfloat16), 1)  # written as float32
        w.write("x", np.zeros((2, 2), np.int8), 2)
    t = open_run(tmp_path / "r").tensor("x")
    assert t.value(0).dtype == np.int8 and t.value(0).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert t.value(1).dtype == np.float32
    s = t.series()
    assert not s.uniform
    with pytest.raises(ValueError, match="changes shape across steps"):
        s.stack()
    assert [a.shape for a in s.arrays] == [(2, 3), (4,), (2, 2)]


def _modes_run(path):
    """Epochs of 3 TRAIN then 2 EVAL steps; the global counter runs across modes."""
    with RunWriter(path) as w:
        g = 0
        for _epoch in range(2):
            for _ in range(3):
                w.write("loss", np.float32(g), g, "TRAIN")
                g += 1
            for _ in range(2):
                w.write("loss", np.float32(g), g, "EVAL")
                w.write("acc", np.float32(-g), g, "EVAL")
                g += 1
    return open_run(path)


def test_modes_and_mode_steps(tmp_path):
    run = _modes_run(tmp_path / "r")
    assert run.steps() == list(range(10))
    assert run.steps("GLOBAL") == list(range(10))
    assert run.steps("TRAIN") == [0, 1, 2, 3, 4, 5]
    assert run.steps("EVAL") == [0, 1, 2, 3]
    assert [int(m) for m in run.modes()] == [1, 2]
    assert run.mode(3) == 2 and run.mode_step(3) == 0
    assert run.global_step("EVAL", 3) == 9 and run.global_step("TRAIN", 3) == 5
    t = run.tensor("loss")
    assert t.steps("EVAL") == [0, 1, 2, 3]
    assert t.value(2, mode="EVAL").item() == 8.0
    assert t.value(8).item() == 8.0
    assert list(t.values("TRAIN")) == [0, 1, 2, 3, 4, 5]
    s = t.series("EVAL")
    assert s.steps.tolist() == [0, 1, 2, 3] and s.global_steps.tolist() == [3, 4, 8, 9]
    assert s.stack().tolist() == [3.0, 4.0, 8.0, 9.0]
    assert run.tensor("acc").steps() == [3, 4, 8, 9]
    assert run.tensor_names(step=3) == ["acc", "loss"]
    assert run.tensor_names(step=0) == ["loss"]
    assert run.tensor_names(regex="^ac") == ["acc"]


def test_error_messages(tmp_path):
    run = _modes_run(tmp_path / "r")
    with pytest.raises(TensorUnavailable, match=r"no tensor named 'los'; did you mean 'loss'"):
        run.tensor("los")
    with pytest.raises(TensorUnavailableForStep, match=r"'acc' was not saved at step 0"):
        run.tensor("acc").value(0)
    with pytest.raises(TensorUnavailableForStep, match=r"saved at steps \[3, 4, 8, 9\]"):
        run.tensor("acc").value(1)
    with pytest.raises(StepUnavailable, match=r"no step 10; its global steps run from 0 to 9"):
        run.tensor("loss").value(10)
    with pytest.raises(StepUnavailable, match=r"no EVAL step 4; its EVAL steps run from 0 to 3"):
        run.tensor("loss").value(4, mode="EVAL")
    with pytest.raises(StepUnavailable, match="no step 42"):
        run.mode(42)
    with pytest.raises(StepUnavailable):
        run.global_step("TRAIN", 6)


def test_writer_rejects_misuse(tmp_path):
    w = RunWriter(tmp_path / "r")
    w.write("x", np.zeros(2), 5)
    with pytest.raises(ValueError, match="steps must not go back"):
        w.write("x", np.zeros(2), 4)
    with pytest.raises(ValueError, match="written twice at step 5"):
        w.write("x", np.zeros(2), 5)
    with pytest.raises(TypeError, match="cannot be stored"):
        w.write("s", np.array(["a"]), 5)
    w.close()
    with pytest.raises(FileExistsError, match="already holds a recorded run"):
        RunWriter(tmp_path / "r")


def test_exception_inside_the_writer_drops_the_step_in_flight(tmp_path):
    with pytest.raises(RuntimeError), RunWriter(tmp_path / "r") as w:
        w.write("x", np.zeros(2), 0)
        w.write("x", np.ones(2), 1)
        raise RuntimeError("training crashed mid-step")
    run = open_run(tmp_path / "r")
    assert run.steps() == [0]
    assert run.has_ended and run.end_info["reason"] == "error: RuntimeError"


def test_multi_worker_merge(tmp_path):
    root = tmp_path / "r"
    w0 = RunWriter(root, "worker_0", rank=0, num_workers=2, metadata={"class_names": ["a"]})
    w1 = RunWriter(root, "worker_1", rank=1, num_workers=2)
    for g in range(4):
        w0.write("loss", np.float32(g), g)
        w0.write("labels", np.arange(3) + g, g)
    for g in range(2):
        w1.write("loss", np.float32(100 + g), g)
    w0.end_step()
    w1.end_step()
    run = open_run(root)
    assert run.workers() == ["worker_0", "worker_1"] and run.num_workers == 2
    assert run.steps() == [0, 1]  # worker_1 committed only 0 and 1
    assert run.steps(show_incomplete_steps=True) == [0, 1, 2, 3]
    loss = run.tensor("loss")
    assert loss.value(1).item() == 1.0  # rank 0 wins
    assert loss.value(1, worker="worker_1").item() == 101.0
    assert loss.workers(0) == ["worker_0", "worker_1"]
    allw = loss.series(all_workers=True)
    assert allw.steps.tolist() == [0, 0, 1, 1] and allw.workers.tolist() == [0, 1, 0, 1]
    assert run.class_names == ["a"]
    assert not run.has_ended
    for g in range(2, 4):
        w1.write("loss", np.float32(100 + g), g)
    w1.close()
    w0.close()
    run.refresh()
    assert run.steps() == [0, 1, 2, 3] and run.has_ended


def test_series_stack_and_values_are_views_and_value_is_a_copy(tmp_path):
    with RunWriter(tmp_path / "r") as w:
        for g in range(50):
            w.write("logits", np.full((8, 5), g, np.float32), g)
            w.write("loss", np.float32(g), g)
    run = open_run(tmp_path / "r")
    s = run.tensor("logits").series()
    st = s.stack()
    assert st.shape == (50, 8, 5) and not st.flags.writeable
    assert st.base is not None and not st.flags.owndata  # a view of the file's bytes
    assert s.stack() is st
    assert st[:, 0, 0].tolist() == list(range(50))
    assert s.concat().shape == (400, 5)
    loss = run.tensor("loss").series()
    assert loss.stack().tolist() == list(map(float, range(50)))
    assert all(a.shape == () and isinstance(a, np.ndarray) for a in loss.arrays)
    vals = run.tensor("logits").values()
    assert np.shares_memory(vals[3], st)  # no copy
    with pytest.raises(ValueError, match="read-only"):
        vals[3][0, 0] = -1
    mine = run.tensor("logits").value(3)
    mine[0, 0] = -1  # value() gives the caller's own array
    assert run.tensor("logits").value(3)[0, 0] == 3 and vals[3][0, 0] == 3
    assert all(a.shape == () for a in run.tensor("loss").values().values())


def test_long_and_odd_tensor_names(tmp_path):
    names = ["a/b c%d", ".hidden", "x" * 400, "gradient/layer1.0.conv1.weight", "ü"]
    with RunWriter(tmp_path / "r") as w:
        for n in names:
            w.write(n, np.float32(1), 0)
    run = open_run(tmp_path / "r")
    assert run.tensor_names() == sorted(names)
    assert all(run.tensor(n).value(0).item() == 1.0 for n in names)


def test_stack_of_one_large_value_and_of_several_chunks(tmp_path):
    root = tmp_path / "r"
    w = RunWriter(root)
    big = np.arange(600_000, dtype=np.float32).reshape(600, 1000)  # 2.4 MB, above 1 MiB
    w.write("big", big, 0)
    w.write("small", np.float32(0), 0)
    w.end_step()
    run = open_run(root)
    assert np.array_equal(run.tensor("big").series().stack()[0], big)
    for g in range(1, 6):  # read in three chunks: the stack spans them
        w.write("small", np.float32(g), g)
        if g % 2 == 0:
            w.end_step()
            run.refresh()
            run.tensor("small").values()
    w.close()
    run.refresh()
    assert run.tensor("small").series().stack().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
