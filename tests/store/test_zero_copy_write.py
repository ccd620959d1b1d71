"""Zero-copy record writes: encode_record_parts + os.writev give the same bytes on disk as
encode_record + write, the payload is the caller's memory, and short writes are completed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pytest_modelrules.store import RunWriter, layout, open_run
from pytest_modelrules.store import writer as writer_mod
from pytest_modelrules.store.format import (
    DTYPE_CODES,
    encode_file_header,
    encode_record,
    encode_record_parts,
)

SHAPES = [(), (0,), (3, 0), (5,), (2, 3, 4)]


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for shape in SHAPES:
        for dt in DTYPE_CODES.values():
            a = (rng.standard_normal(shape) * 50).astype(dt)
            if dt.kind == "c":
                a = a + 1j * a
            out.append(a)
    base = rng.standard_normal((4, 6))
    out += [
        base.T,  # not C-contiguous: converted
        base.astype(">f8"),  # big-endian: converted to little-endian
        base.astype(np.float32)[:, ::2],  # strided
        np.asfortranarray(base),
    ]
    return out


@pytest.mark.parametrize("i", range(len(_arrays())))
def test_parts_equal_encode_record(i: int) -> None:
    arr = _arrays()[i]
    kw = {"step": 7, "mode": 2, "mode_step": 3, "wall_time": 1234.5}
    head, payload = encode_record_parts(arr, **kw)
    assert head + payload.tobytes() == encode_record(arr, **kw)
    assert payload.nbytes == arr.nbytes


def test_payload_is_the_arrays_own_memory() -> None:
    arr = np.arange(1000, dtype=np.float32)
    _head, payload = encode_record_parts(arr, step=0, mode=1, mode_step=0, wall_time=0.0)
    assert np.shares_memory(np.frombuffer(payload, np.uint8), arr)
    f64 = np.arange(12.0).reshape(3, 4)  # a 2-D C-contiguous array: still no copy
    _head, payload = encode_record_parts(f64, step=0, mode=1, mode_step=0, wall_time=0.0)
    assert np.shares_memory(np.frombuffer(payload, np.uint8), f64)


def _expected_file(name: str, records: list[tuple[int, np.ndarray]], wall: float) -> bytes:
    data = encode_file_header({"kind": "tensor", "name": name, "worker": "worker_0"})
    for step, arr in records:
        data += encode_record(arr, step=step, mode=1, mode_step=step, wall_time=wall)
    return data


def _write_run(path, records: list[tuple[int, np.ndarray]], wall: float) -> bytes:
    with RunWriter(path) as w:
        for step, arr in records:
            w.write("t", arr, step, wall_time=wall)
    tensor_file = os.path.join(path, layout.WORKERS_DIR, "worker_0", layout.TENSORS_DIR, "t.mrt")
    with open(tensor_file, "rb") as fh:
        return fh.read()


RECORDS = [(s, a) for s, a in enumerate(_arrays()[:20])]


def test_writev_file_is_identical_to_encode_record(tmp_path, monkeypatch) -> None:
    if writer_mod._WRITEV is None:
        pytest.skip("os.writev is not available on this platform")  # Windows only
    calls = []
    real = writer_mod._WRITEV

    def counting(fd, parts):
        calls.append(len(parts))
        return real(fd, parts)

    monkeypatch.setattr(writer_mod, "_WRITEV", counting)
    got = _write_run(tmp_path / "r", RECORDS, wall=99.25)
    assert got == _expected_file("t", RECORDS, wall=99.25)
    assert calls == [2] * len(RECORDS)  # one system call per record, header + payload
    values = open_run(tmp_path / "r").tensor("t").values()
    for step, arr in RECORDS:
        assert values[step].tobytes() == np.ascontiguousarray(arr).tobytes()


def test_fallback_without_writev_is_identical(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(writer_mod, "_WRITEV", None)
    got = _write_run(tmp_path / "r", RECORDS, wall=5.0)
    assert got == _expected_file("t", RECORDS, wall=5.0)


@pytest.mark.parametrize("cut", [0, 10, 48, 60, 200])
def test_short_writev_is_completed(tmp_path, monkeypatch, cut: int) -> None:
    """A writev that writes only ``cut`` bytes (a signal, a full pipe) is finished by plain
    writes: the record on disk is whole and in order."""

    def short(fd, parts):
        data = b"".join(bytes(p) for p in parts)[:cut]
        return os.write(fd, data) if data else 0

    monkeypatch.setattr(writer_mod, "_WRITEV", short)
    records = [(0, np.arange(40, dtype=np.float64)), (1, np.ones((3, 5), np.int32))]
    got = _write_run(tmp_path / "r", records, wall=1.0)
    assert got == _expected_file("t", records, wall=1.0)


@pytest.mark.parametrize("i", range(len(_arrays())))
def test_fast_encoder_equals_encode_record(i: int) -> None:
    from pytest_modelrules.store.format import encode_record_fast

    arr = _arrays()[i]
    head, payload = encode_record_fast(arr, 7, 2, 3, 1234.5)
    assert head + bytes(payload) == encode_record(arr, step=7, mode=2, mode_step=3,
                                                  wall_time=1234.5)  # fmt: skip
    if arr.ndim == 0:  # numpy scalars too (what iterating over a row gives)
        scalar = arr[()]
        head, payload = encode_record_fast(scalar, 7, 2, 3, 1234.5)
        assert head + bytes(payload) == encode_record(arr, step=7, mode=2, mode_step=3,
                                                      wall_time=1234.5)  # fmt: skip


def _tree(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def test_write_step_stores_what_write_and_end_step_store(tmp_path) -> None:
    """write_step writes the same tensor files as write() of each array, and each row of
    scalars as one record of a rows file (format version 2) that reads back as the same 0-d
    values, steps and mode steps as one write() per scalar."""
    rng = np.random.default_rng(1)
    steps = []
    for s in range(3):
        arrays = [("a", rng.standard_normal((3, 4)).astype(np.float32)),
                  ("b", np.int64(s)), ("c/d", rng.standard_normal(()))]  # fmt: skip
        scalars = [(["w1", "w2", "w3"], rng.standard_normal(3)),
                   (["g1", "g2"], rng.standard_normal(2).astype(np.float32))]  # fmt: skip
        steps.append((s * 2, arrays, scalars))
    with RunWriter(tmp_path / "one") as w:
        for step, arrays, scalars in steps:
            for name, arr in arrays:
                w.write(name, arr, step, "EVAL", wall_time=5.0)
            for names, values in scalars:
                for name, value in zip(names, values):
                    w.write(name, value, step, "EVAL", wall_time=5.0)
            w.end_step()
    with RunWriter(tmp_path / "batched") as w:
        for step, arrays, scalars in steps:
            w.write_step(step, arrays, "EVAL", wall_time=5.0, scalars=scalars)
    one, batched = _tree(tmp_path / "one"), _tree(tmp_path / "batched")
    tensors = os.path.join(layout.WORKERS_DIR, "worker_0", layout.TENSORS_DIR)
    for name in ("a", "b", "c/d"):
        rel = os.path.join(tensors, layout.tensor_filename(name))
        assert batched[rel] == one[rel], rel
    in_tensors = {os.path.basename(rel) for rel in batched if rel.startswith(tensors)}
    assert in_tensors == {layout.tensor_filename(name) for name in ("a", "b", "c/d")}
    rows = sorted(r for r in batched if os.sep + layout.ROWS_DIR + os.sep in r)
    assert len(rows) == 2  # one file per row of names, one record per step in each
    a, b = open_run(tmp_path / "one"), open_run(tmp_path / "batched")
    assert a.tensor_names() == b.tensor_names()
    assert b.steps() == [0, 2, 4] and b.steps(mode="EVAL") == [0, 1, 2]
    for name in ("w1", "w2", "w3", "g1", "g2"):
        for mode in (None, "EVAL"):
            got, expected = b.tensor(name).values(mode=mode), a.tensor(name).values(mode=mode)
            assert list(got) == list(expected)
            for step, value in expected.items():
                assert got[step].shape == () and got[step].dtype == value.dtype
                assert got[step] == value
    assert b.tensor("w2").value(2) == steps[1][2][0][1][1]  # global step 2
    assert b.tensor("w2").value(1, mode="EVAL") == steps[1][2][0][1][1]  # its EVAL step 1


def test_write_step_refuses_what_write_refuses_before_writing_anything(tmp_path) -> None:
    with RunWriter(tmp_path / "r") as w:
        w.write_step(3, [("a", np.zeros(2))])
        with pytest.raises(ValueError, match="already committed"):
            w.write_step(3, [("a", np.zeros(2))])
        with pytest.raises(ValueError, match="'a' written twice"):
            w.write_step(4, [("a", np.zeros(2))], scalars=[(["a"], np.zeros(1))])
        with pytest.raises(ValueError, match=r"2 names for scalar values of shape \(1,\)"):
            w.write_step(5, [], scalars=[(["x", "y"], np.zeros(1))])
        with pytest.raises(ValueError, match=r"2 names for scalar values of shape \(2, 1\)"):
            w.write_step(5, [], scalars=[(["x", "y"], np.zeros((2, 1)))])
        with pytest.raises(ValueError, match="non-empty string"):
            w.write_step(6, [("", np.zeros(1))])
        w.write_step(7, [])  # nothing to write: nothing happens
        w.write("b", np.ones(1), 8)  # an open step: write_step adds to it, then commits
        with pytest.raises(ValueError, match="'b' written twice"):
            w.write_step(8, [("b", np.ones(1))])
        w.write_step(8, [("c", np.ones(1))])
        w.write("d", np.ones(1), 9)  # open: a write_step of the next step may save it again
        w.write_step(10, [("d", np.zeros(1))], scalars=[(["c"], np.zeros(1))])
    run = open_run(tmp_path / "r")
    assert run.steps() == [3, 8, 9, 10]  # the refused calls left nothing behind
    assert run.tensor_names() == ["a", "b", "c", "d"]
    assert run.tensor("d").steps() == [9, 10] and run.tensor("c").steps() == [8, 10]


@pytest.mark.parametrize("cut", [0, 10, 48, 60])
@pytest.mark.parametrize("max_open", [64, 2], ids=["all-files-open", "files-reopened"])
def test_write_step_completes_short_writes(tmp_path, monkeypatch, cut: int, max_open) -> None:
    """write_step finishes a short write, with every file of the step open and with fewer
    files allowed open than the step writes."""
    if writer_mod._WRITEV is None:
        pytest.skip("os.writev is not available on this platform")

    def short(fd, parts):
        data = b"".join(bytes(p) for p in parts)[:cut]
        return os.write(fd, data) if data else 0

    arrays = [("a", np.arange(40, dtype=np.float64)), ("b", np.ones((3, 5), np.int32))]
    scalars = [(["c", "d", "e"], np.array([1.5, -2.0, 3.25]))]
    with RunWriter(tmp_path / "ref") as w:
        w.write_step(0, arrays, scalars=scalars, wall_time=1.0)
    monkeypatch.setattr(writer_mod, "_WRITEV", short)
    with RunWriter(tmp_path / "short", max_open_files=max_open) as w:
        w.write_step(0, arrays, scalars=scalars, wall_time=1.0)
    ref, got = _tree(tmp_path / "ref"), _tree(tmp_path / "short")
    for rel, data in ref.items():
        if rel.endswith(".mrt"):
            assert got[rel] == data, rel
    assert open_run(tmp_path / "short").tensor("d").value(0) == -2.0
