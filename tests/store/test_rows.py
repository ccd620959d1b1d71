"""Rows files (format version 2): a row of scalars - one per tensor, the norms of every
parameter - stored as one record of one file per step, read back as each tensor's 0-d values;
and hostile rows files, each refused with one error naming the file."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store import RunWriter, layout, open_run
from pytest_modelrules.store import format as format_mod
from pytest_modelrules.store import writer as writer_mod
from pytest_modelrules.store.format import (
    FILE_HEADER,
    FILE_MAGIC,
    FORMAT_VERSION,
    encode_record,
)


def _rows_dir(root: Path, worker: str = "worker_0") -> Path:
    return root / layout.WORKERS_DIR / worker / layout.ROWS_DIR


def _write(root: Path, rows: list[tuple[list[str], np.ndarray]], steps: int = 3, **kw) -> None:
    with RunWriter(root, **kw) as w:
        for step in range(steps):
            w.write_step(
                step, [("loss", np.float32(step))], scalars=[(n, v + step) for n, v in rows]
            )


def test_a_row_reads_back_as_each_tensors_values_in_one_pass(tmp_path):
    names = [f"layer{i}.weight" for i in range(5)]
    row = np.arange(5, dtype=np.float64) * 1.5
    _write(tmp_path / "run", [(names, row)])
    (only,) = _rows_dir(tmp_path / "run").iterdir()
    assert only.name == layout.rows_filename(names)
    run = open_run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["version"] == FORMAT_VERSION
    assert run.tensor_names() == sorted([*names, "loss"])
    for i, name in enumerate(names):
        values = run.tensor(name).values()
        assert list(values) == [0, 1, 2]
        for step, value in values.items():
            assert value.shape == () and value.dtype == np.float64
            assert value == row[i] + step
        # the series of a column is a strided view of the file's bytes, no copy per step
        series = run.tensor(name).series()
        np.testing.assert_array_equal(series.stack(), row[i] + np.arange(3))
        assert run.tensor(name).value(1) == row[i] + 1


def test_a_rows_file_is_read_once_per_refresh_for_all_its_tensors(tmp_path, monkeypatch):
    """Its tensors share the file: reading all of them looks at it once per refresh (on an
    object store each look is a request), and a refresh picks up new rows."""
    from pytest_modelrules.store.fs import Storage

    names = [f"p{i}" for i in range(6)]
    root = tmp_path / "run"
    w = RunWriter(root)
    w.write_step(0, [], scalars=[(names, np.arange(6.0))])
    w.end_step()
    looks = []
    real_size = Storage.size

    def size(self, path):
        if f"/{layout.ROWS_DIR}/" in path.replace("\\", "/"):
            looks.append(path)
        return real_size(self, path)

    monkeypatch.setattr(Storage, "size", size)
    run = open_run(root)
    for name in names:
        assert run.tensor(name).values() == {0: float(names.index(name))}
    assert len(looks) == 1
    w.write_step(1, [], scalars=[(names, np.arange(6.0) + 10)])
    w.close()
    run.refresh()
    assert [run.tensor(name).values()[1] for name in names] == list(np.arange(6.0) + 10)
    assert len(looks) == 2
    w.close()


def test_long_rows_are_split_over_files_by_count_and_by_name_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "ROW_FILE_NAMES", 2)
    names = [f"p{i}" for i in range(5)]
    _write(tmp_path / "count", [(names, np.arange(5.0))])
    assert len(list(_rows_dir(tmp_path / "count").iterdir())) == 3
    monkeypatch.setattr(writer_mod, "ROW_FILE_NAMES", 1024)
    monkeypatch.setattr(writer_mod, "ROW_FILE_NAME_BYTES", 100)
    long_names = [f"{'x' * 60}{i}" for i in range(4)]  # two fit in 100 bytes? no: one each
    _write(tmp_path / "bytes", [(long_names, np.arange(4.0))])
    assert len(list(_rows_dir(tmp_path / "bytes").iterdir())) == 4
    for root, ns in ((tmp_path / "count", names), (tmp_path / "bytes", long_names)):
        run = open_run(root)
        for i, name in enumerate(ns):
            assert run.tensor(name).values() == {s: i + s for s in range(3)}


def test_a_tensor_moves_between_a_row_a_tensor_file_and_another_row(tmp_path):
    """The same name in a tensor file at one step and in two different rows at others (a
    parameter without a gradient at some steps changes the row): all its steps read back."""
    with RunWriter(tmp_path / "run") as w:
        w.write("g", np.float32(10.0), 0)
        w.write_step(1, [], scalars=[(["g", "h"], np.array([11.0, 1.0], np.float32))])
        w.write_step(2, [], scalars=[(["h", "g"], np.array([2.0, 12.0], np.float32))])
        w.write_step(3, [], scalars=[(["h"], np.array([3.0], np.float32))])
    run = open_run(tmp_path / "run")
    assert run.tensor("g").values() == {0: 10.0, 1: 11.0, 2: 12.0}
    assert run.tensor("h").values() == {1: 1.0, 2: 2.0, 3: 3.0}
    assert run.tensor("g").steps() == [0, 1, 2]


def test_rows_of_two_workers_merge(tmp_path):
    root = tmp_path / "run"
    for rank in range(2):
        with RunWriter(root, f"worker_{rank}", rank=rank, num_workers=2) as w:
            for step in range(2):
                w.write_step(step, [], scalars=[(["a", "b"], np.array([rank, step], np.int64))])
    run = open_run(root)
    assert run.workers() == ["worker_0", "worker_1"]
    assert run.tensor("a").value(1, worker="worker_1") == 1
    assert run.tensor("a").value(1) == 0  # the lowest rank wins a step both saved
    assert run.tensor("b").workers(1) == ["worker_0", "worker_1"]


def test_a_row_being_written_is_read_as_steps_commit(tmp_path):
    root = tmp_path / "run"
    w = RunWriter(root)
    w.write_step(0, [], scalars=[(["a", "b"], np.array([0.0, 1.0]))])
    run = open_run(root)
    assert run.tensor("b").values() == {0: 1.0}
    w.write_step(1, [], scalars=[(["a", "b"], np.array([2.0, 3.0]))])
    w.write("other", np.float32(0.0), 2)  # step 2 open: not committed
    w.write_step(2, [], scalars=[(["a", "b"], np.array([4.0, 5.0]))])
    run.refresh()
    assert run.tensor("b").values() == {0: 1.0, 1: 3.0, 2: 5.0}
    w.close()


def test_version_1_runs_still_read(tmp_path):
    """A run written before rows files (version 1) opens as before."""
    root = tmp_path / "run"
    with RunWriter(root) as w:
        for step in range(2):
            w.write("x", np.full(2, step, np.float32), step)
    info = json.loads((root / "run.json").read_text())
    (root / "run.json").write_text(json.dumps({**info, "version": 1}))
    assert open_run(root).tensor("x").values()[1].tolist() == [1.0, 1.0]


def _file(header: dict, records: list[bytes] = ()) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-(FILE_HEADER.size + len(raw)) % 8)
    return FILE_HEADER.pack(FILE_MAGIC, len(raw), zlib.crc32(raw)) + raw + b"".join(records)


def _run_with_rows_file(root: Path, content: bytes) -> Path:
    _write(root, [(["a", "b"], np.zeros(2))], steps=2)
    (path,) = _rows_dir(root).iterdir()
    path.write_bytes(content)
    return path


def _record(array: np.ndarray, step: int) -> bytes:
    return encode_record(array, step=step, mode=1, mode_step=step, wall_time=0.0)


@pytest.mark.parametrize(
    "header,message",
    [
        ({"kind": "rows", "name": "", "worker": "worker_0"}, "no list of tensor names"),
        ({"kind": "rows", "name": "", "names": "a,b"}, "no list of tensor names"),
        ({"kind": "rows", "name": "", "names": []}, "no list of tensor names"),
        ({"kind": "rows", "name": "", "names": ["a", 3]}, "is not a string"),
        ({"kind": "rows", "name": "", "names": ["a", ""]}, "is not a string"),
        ({"kind": "rows", "name": "", "names": ["a", "a"]}, "names a tensor twice"),
        ({"kind": "tensor", "name": "a", "names": ["a", "b"]}, "expected 'rows'"),
    ],
    ids=[
        "no-names",
        "names-a-string",
        "no-names-listed",
        "a-number",
        "an-empty-name",
        "twice",
        "wrong-kind",
    ],
)
def test_a_hostile_rows_header_is_refused_naming_the_file(tmp_path, header, message):
    path = _run_with_rows_file(tmp_path / "run", _file(header, [_record(np.zeros(2), 0)]))
    with pytest.raises(CorruptRunError, match=message) as caught:
        open_run(tmp_path / "run")
    assert str(path) in str(caught.value)


def test_a_header_naming_too_many_tensors_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(format_mod, "MAX_ROW_NAMES", 1)
    _write(tmp_path / "run", [(["a", "b"], np.zeros(2))])
    with pytest.raises(CorruptRunError, match="names 2 tensors"):
        open_run(tmp_path / "run")


@pytest.mark.parametrize("shape", [(3,), (1,), (2, 1), ()], ids=str)
def test_a_row_of_the_wrong_length_is_refused_naming_the_file(tmp_path, shape):
    header = {"kind": "rows", "name": "", "worker": "worker_0", "names": ["a", "b"]}
    good = _record(np.zeros(2), 0)
    bad = _record(np.zeros(shape), 1)
    path = _run_with_rows_file(tmp_path / "run", _file(header, [good, bad]))
    with pytest.raises(CorruptRunError, match="in a rows file that names 2 tensors") as caught:
        open_run(tmp_path / "run").tensor("a").values()
    assert str(path) in str(caught.value)


def test_a_torn_row_at_the_end_is_ignored(tmp_path):
    """As for tensor files: a record cut short by a crash (its step never committed) is not
    read, the committed steps are."""
    root = tmp_path / "run"
    _write(root, [(["a", "b"], np.array([1.0, 2.0]))], steps=2)
    (path,) = _rows_dir(root).iterdir()
    with open(path, "ab") as fh:
        fh.write(_record(np.array([9.0, 9.0]), 2)[:30])
    assert open_run(root).tensor("b").values() == {0: 2.0, 1: 3.0}


def test_a_fraction_record_in_a_rows_file_is_refused_naming_the_file(tmp_path):
    """Rows hold one scalar per tensor; a fraction record (counts over a denominator) has no
    place there and is refused rather than read as counts."""
    from pytest_modelrules.store.format import Fraction

    header = {"kind": "rows", "name": "", "worker": "worker_0", "names": ["a", "b"]}
    bad = _record(Fraction(np.array([1, 2], np.uint8), 4), 0)
    path = _run_with_rows_file(tmp_path / "run", _file(header, [bad]))
    with pytest.raises(CorruptRunError, match="a fraction record in a rows file") as caught:
        open_run(tmp_path / "run").tensor("a").values()
    assert str(path) in str(caught.value)
