"""Hostile and damaged SageMaker Debugger runs (found by fuzzing the reader): each gives one
CorruptRunError naming the file, or reads right; none leaks into another run."""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules import open_run
from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store.smdebug_writer import SMDebugWriter
from pytest_modelrules.store.tfrecord import frame_record


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([num << 3 | 2]) + _varint(len(payload)) + payload


def _dim(n: int, name: bytes | None = None) -> bytes:
    return _field(2, b"\x08" + _varint(n) + (_field(2, name) if name is not None else b""))


def _event(tensor: bytes, tag: bytes = b"loss") -> bytes:
    """An Event (wall time 1.0, step 0) whose one Summary value holds ``tensor``."""
    value = _field(1, tag) + _field(8, tensor)
    return b"\x09" + struct.pack("<d", 1.0) + _field(5, _field(1, value))


def _index(root: Path, step: int = 0, worker: str = "worker_0") -> Path:
    return root / "index" / f"{step // 1000:09d}" / f"{step:012d}_{worker}.json"


def _events(root: Path, step: int = 0, worker: str = "worker_0") -> Path:
    return root / "events" / f"{step:012d}" / f"{step:012d}_{worker}.tfevents"


def _one_step(root: Path) -> Path:
    w = SMDebugWriter(root)
    w.write("loss", np.float32(0.5), 0, wall_time=1.0)
    w.write("w", np.ones((2, 3), np.float32), 0, wall_time=1.0)
    w.close()
    return root


def _only_record(root: Path, event: bytes, name: str = "loss") -> None:
    """Make ``event`` the step's one record (the index re-pointed at it)."""
    record = frame_record(event)
    _events(root).write_bytes(record)
    data = json.loads(_index(root).read_text())
    data["tensor_payload"] = [{"tensorname": name, "start_idx": 0, "length": len(record)}]
    _index(root).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "where, value", [("mode_step", 2**63), ("start_idx", 2**63), ("start_idx", 2**64 + 5)]
)
def test_index_integers_past_int64_are_refused(tmp_path, where, value):
    root = _one_step(tmp_path / "run")
    data = json.loads(_index(root).read_text())
    if where == "mode_step":
        data["meta"]["mode_step"] = value
    else:
        data["tensor_payload"][0]["start_idx"] = value
    _index(root).write_text(json.dumps(data))
    with pytest.raises(CorruptRunError, match=f"invalid {where}") as info:
        open_run(root).tensor("loss").values()
    assert str(_index(root)) in str(info.value)


@pytest.mark.parametrize("how", ["deleted", "a file where the folder is"])
def test_an_event_file_the_index_names_but_is_missing(tmp_path, how):
    root = _one_step(tmp_path / "run")
    if how == "deleted":
        _events(root).unlink()
    else:
        shutil.rmtree(root / "events")
        (root / "events").write_text("x")
    with pytest.raises(CorruptRunError, match="an index names this event file; it is missing"):
        open_run(root).tensor("loss").values()


def test_a_string_tensor_that_is_not_utf8_reads_as_bytes(tmp_path):
    w = SMDebugWriter(tmp_path / "run")
    w.write("names", np.array([b"\xff", b"ab"]), 0, wall_time=1.0)
    w.close()
    value = open_run(tmp_path / "run").tensor("names").value(0)
    assert value.dtype.kind == "S" and value.tolist() == [b"\xff", b"ab"]


@pytest.mark.parametrize(
    "dtype_and_content",
    [b"\x08\x01" + b"\x22\x00", b"\x08\x01", b"\x08\x0e", b"\x08\x07"],
    ids=["float32-empty-content", "float32-no-content", "bfloat16", "string"],
)
def test_an_empty_tensor_claiming_huge_dimensions(tmp_path, dtype_and_content):
    """(0, 2**62, 2**62) holds no values, yet no array has that shape."""
    root = _one_step(tmp_path / "run")
    shape = _field(2, _dim(0) + _dim(2**62) + _dim(2**62))
    _only_record(root, _event(dtype_and_content[:2] + shape + dtype_and_content[2:]))
    with pytest.raises(CorruptRunError, match="larger than allowed") as info:
        open_run(root).tensor("loss").value(0)
    assert str(_events(root)) in str(info.value)


def test_a_half_value_wider_than_16_bits(tmp_path):
    root = _one_step(tmp_path / "run")
    shape = b"\x12\x04\x12\x02\x08\x01"  # [1]
    _only_record(root, _event(b"\x08\x13" + shape + b"\x6a\x03" + _varint(70000)))
    with pytest.raises(CorruptRunError, match="half_val entry wider than 16 bits"):
        open_run(root).tensor("loss").value(0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30, -3e9])
def test_float_values_an_integer_tensor_cannot_hold_are_refused_without_a_warning(tmp_path, value):
    """float_val in an int32 tensor: a value it holds reads back; NaN, an infinity or a value
    out of its range was cast by numpy with a RuntimeWarning (an exception under ``-W
    error``) into a made-up integer."""
    root = _one_step(tmp_path / "run")
    shape = b"\x12\x04\x12\x02\x08\x01"  # [1]
    _only_record(root, _event(b"\x08\x03" + shape + b"\x2a\x04" + struct.pack("<f", value)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            CorruptRunError, match="float_val values that a tensor of dtype int32 cannot"
        ):
            open_run(root).tensor("loss").value(0)
    _only_record(root, _event(b"\x08\x03" + shape + b"\x2a\x04" + struct.pack("<f", -7.0)))
    assert open_run(root).tensor("loss").value(0).tolist() == [-7]


@pytest.mark.parametrize(
    "dtype, field, payload",
    [
        (9, 6, struct.pack("<d", 2.0**63)),  # int64: 2^63 is past its range (max 2^63 - 1)
        (23, 6, struct.pack("<d", 2.0**64)),  # uint64: 2^64 likewise
        (3, 13, _varint(0x7E00)),  # int32: half_val NaN
        (3, 13, _varint(0x7C00)),  # int32: half_val infinity
    ],
)
def test_values_just_past_an_integer_type_or_half_nans_are_refused(tmp_path, dtype, field, payload):
    """A double_val of exactly 2^63 passed the range check (float(2^63 - 1) is 2^63) and was
    cast to -2^63 with a RuntimeWarning; a half_val NaN in an integer tensor was a KeyError."""
    root = _one_step(tmp_path / "run")
    shape = b"\x12\x04\x12\x02\x08\x01"  # [1]
    _only_record(root, _event(bytes([8, dtype]) + shape + _field(field, payload)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            CorruptRunError, match=r"_val values that a tensor of dtype u?int(32|64) cannot"
        ):
            open_run(root).tensor("loss").value(0)


def test_a_tensor_with_two_shapes_is_refused_and_leaves_other_runs_alone(tmp_path):
    """The shape cache is shared by every run of the process: a hostile tensor's second shape
    must neither be added to its first nor cached for the clean run read next."""
    victim = _dim(6, b"x_6")  # what SMDebugWriter writes for tag "x", shape (6,)
    hostile = _one_step(tmp_path / "hostile")
    tensor = b"\x08\x01" + _field(2, _dim(1)) + _field(2, victim) + _field(4, b"\0" * 24)
    _only_record(hostile, _event(tensor))
    with pytest.raises(CorruptRunError, match="two shapes"):
        open_run(hostile).tensor("loss").value(0)
    w = SMDebugWriter(tmp_path / "clean")
    w.write("x", np.arange(6, dtype=np.float32), 0, wall_time=1.0)
    w.close()
    assert open_run(tmp_path / "clean").tensor("x").value(0).shape == (6,)


def test_a_step_indexed_twice_for_one_worker_is_not_a_second_worker(tmp_path):
    """Copied into a second index folder, worker_0's step 1 would complete a step that worker_1
    never wrote."""
    root = tmp_path / "run"
    w0 = SMDebugWriter(root, "worker_0", num_workers=2)
    w1 = SMDebugWriter(root, "worker_1", num_workers=2)
    w0.write("loss", np.float32(0), 0)
    w1.write("loss", np.float32(0), 0)
    w0.write("loss", np.float32(1), 1)
    w0.close(end_of_job=False)
    w1.close(end_of_job=False)
    assert open_run(root).steps() == [0]
    copy = root / "index" / "000000001" / "000000000001_worker_0.json"
    copy.parent.mkdir()
    shutil.copy(_index(root, 1), copy)
    with pytest.raises(CorruptRunError, match="indexed a second time"):
        open_run(root).steps()


def _peak_of(read: Callable[[], object]) -> tuple[object, int]:
    """``read()``'s result and the peak of what it allocated (tracemalloc sees numpy's)."""
    tracemalloc.start()
    try:
        result = read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


_VECTOR = _field(2, _dim(2**18))  # shape [2**18]: 262,144 values


def test_a_tensor_of_unpacked_int_values_costs_memory_in_proportion_to_its_values(tmp_path):
    """262,144 int_val fields of two bytes each (512 KiB): a tuple and a Python int per field
    made it ~40 MB (a 50 MB event file: a MemoryError under 3 GiB); now the values' int64s."""
    root = _one_step(tmp_path / "run")
    _only_record(root, _event(b"\x08\x03" + _VECTOR + b"\x38\x07" * 2**18))
    value, peak = _peak_of(lambda: open_run(root).tensor("loss").value(0))
    assert value.dtype == np.int32 and value.shape == (2**18,) and bool(np.all(value == 7))
    assert peak < 8 << 20, f"reading 512 KiB of int_val allocated {peak} bytes"


def test_unknown_fields_of_an_event_cost_no_memory_per_field(tmp_path):
    """Protobuf skips unknown fields; a list of every field of the message (an 80-byte tuple
    per two-byte field) made 512 KiB of them cost ~20 MB: fields are walked one at a time."""
    root = _one_step(tmp_path / "run")
    tensor = b"\x08\x01" + _field(2, _dim(1)) + _field(4, struct.pack("<f", 0.5))
    _only_record(root, _event(tensor + b"\x78\x00" * 2**18) + b"\x18\x00" * 2**18)
    value, peak = _peak_of(lambda: open_run(root).tensor("loss").value(0))
    assert value.tolist() == [0.5]
    assert peak < 4 << 20, f"reading 1 MiB of unknown fields allocated {peak} bytes"


def test_a_string_tensor_of_many_values_costs_no_python_object_per_value(tmp_path):
    """262,144 string_val fields (an empty string, then "é" every 4th): a tuple, a bytes and
    a str per value made them cost ~30 MB; now one fixed-width array (and values as before:
    str where all are UTF-8, bytes otherwise)."""
    root = _one_step(tmp_path / "run")
    strings = (b"\x42\x00" * 3 + b"\x42\x02\xc3\xa9") * 2**16
    _only_record(root, _event(b"\x08\x07" + _VECTOR + strings))
    value, peak = _peak_of(lambda: open_run(root).tensor("loss").value(0))
    assert value.dtype == np.dtype("<U2") and value.shape == (2**18,)
    assert value[:4].tolist() == ["", "", "", "é"] and bool(np.all(value[3::4] == "é"))
    assert peak < 12 << 20, f"reading 512 KiB of string_val allocated {peak} bytes"
    _only_record(root, _event(b"\x08\x07" + _field(2, _dim(2)) + b"\x42\x01\xff\x42\x00"))
    assert open_run(root).tensor("loss").value(0).tolist() == [b"\xff", b""]
