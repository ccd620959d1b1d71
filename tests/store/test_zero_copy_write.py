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
