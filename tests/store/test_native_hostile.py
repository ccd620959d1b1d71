"""Hostile and damaged native runs: each gives one CorruptRunError that names the file,
never a crash, a hang or a big allocation; and loading never unpickles anything."""

from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store import RunWriter, open_run
from pytest_modelrules.store.format import FILE_HEADER, RECORD_HEADER, parse_file_header


def make_run(root: Path, steps: int = 3) -> Path:
    with RunWriter(root) as w:
        for g in range(steps):
            w.write("x", np.arange(6, dtype=np.float32).reshape(2, 3) + g, g)
    return root


def tensor_file(root: Path, name: str = "x") -> Path:
    return root / "workers" / "worker_0" / "tensors" / f"{name}.mrt"


def record_offsets(path: Path) -> list[int]:
    """File offsets of each record of a (sound) file."""
    data = path.read_bytes()
    pos = parse_file_header(data, str(path)).data_offset
    out = []
    while pos < len(data):
        out.append(pos)
        (*_, nbytes, _m, _c, ndim, _f, _d) = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER.size + 8 * ndim + nbytes
    return out


def patch_record(path: Path, rec: int, fmt: str, at: int, value, fix_crc: bool = True) -> None:
    """Overwrite a field of record ``rec`` (at byte ``at`` of its header) and re-sign it, so
    that only the structural check can catch it."""
    data = bytearray(path.read_bytes())
    offs = record_offsets(path)
    pos = offs[rec]
    struct.pack_into(fmt, data, pos + at, *([value] if not isinstance(value, tuple) else value))
    if fix_crc:
        end = offs[rec + 1] if rec + 1 < len(offs) else len(data)
        struct.pack_into("<I", data, pos + 4, zlib.crc32(bytes(data[pos + 8 : end])))
    path.write_bytes(bytes(data))


def read_everything(root: Path) -> None:
    run = open_run(root)
    for name in run.tensor_names():
        run.tensor(name).values()
        run.tensor(name).series().stack()


def expect_corrupt(root: Path, match: str, path: Path) -> CorruptRunError:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRunError, match=match) as err:
            read_everything(root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert peak < 20 << 20, f"reading a hostile file allocated {peak} bytes"
    return err.value


def test_record_claiming_10_to_the_12_elements(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    # shape (10**6, 10**6) float32 and a matching byte count: 4 TB claimed by a 48-byte header
    data = bytearray(f.read_bytes())
    pos = record_offsets(f)[1]
    struct.pack_into("<Q", data, pos + 32, 4 * 10**12)
    struct.pack_into("<QQ", data, pos + RECORD_HEADER.size, 10**6, 10**6)
    f.write_bytes(bytes(data))
    err = expect_corrupt(root, r"claims 4000000000000 bytes", f)
    assert err.offset == pos


def test_shape_disagreeing_with_byte_count(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    patch_record(f, 0, "<QQ", RECORD_HEADER.size, (2**63, 3))
    expect_corrupt(root, r"record of shape \(9223372036854775808, 3\) .* claims 24 bytes", f)


def test_truncated_inside_a_committed_step(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    f.write_bytes(f.read_bytes()[: record_offsets(f)[2] + 60])
    expect_corrupt(root, "truncated inside the record of committed step 2", f)


def test_wrong_dtype_code(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    patch_record(f, 1, "<B", 41, 200)
    expect_corrupt(root, "unknown dtype code 200", f)


def test_bad_record_magic_and_bad_file_magic(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    patch_record(f, 1, "<4s", 0, b"EVIL")
    expect_corrupt(root, "bad record magic b'EVIL'", f)
    root2 = make_run(tmp_path / "r2")
    f2 = tensor_file(root2)
    f2.write_bytes(b"\x80\x04PICKLE!" + f2.read_bytes()[8:])
    expect_corrupt(root2, "not a pytest-modelrules file", f2)


def test_flipped_payload_byte_fails_the_checksum(tmp_path):
    root = make_run(tmp_path / "r", steps=10)
    f = tensor_file(root)
    data = bytearray(f.read_bytes())
    data[record_offsets(f)[6] + RECORD_HEADER.size + 16 + 5] ^= 0x10
    f.write_bytes(bytes(data))
    expect_corrupt(root, "checksum mismatch in the record of step 6", f)


def test_too_many_dimensions_unknown_mode_and_flags(tmp_path):
    for i, (fmt, at, value, match) in enumerate((
        ("<B", 42, 200, "200 dimensions"),
        ("<B", 40, 9, "unknown mode 9"),
        ("<B", 43, 2, "unknown record flags 0x2"),
        # the fraction flag on float32 values: a fraction's counts are unsigned integers
        ("<B", 43, 1, "fraction record of dtype float32: its counts must be unsigned"),
        # the denominator field of a plain record: zero, as versions 1 and 2 wrote it
        ("<I", 44, 7, "header bytes 44-47 of a plain record are not 0"),
    )):  # fmt: skip
        root = make_run(tmp_path / f"r{i}")
        f = tensor_file(root)
        patch_record(f, 0, fmt, at, value)
        expect_corrupt(root, match, f)


def test_steps_going_back_within_a_file(tmp_path):
    root = make_run(tmp_path / "r", steps=6)
    f = tensor_file(root)
    patch_record(f, 4, "<q", 8, 1)
    expect_corrupt(root, "steps must increase within a file", f)


def test_giant_file_header_length(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    data = bytearray(f.read_bytes())
    struct.pack_into("<I", data, 8, 0xFFFFFFF0)
    f.write_bytes(bytes(data))
    expect_corrupt(root, "file header claims 4294967280 bytes of JSON", f)


def test_file_header_with_bad_json_or_wrong_kind(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    raw = b'{"kind": "tensor", "name": '
    f.write_bytes(FILE_HEADER.pack(b"MRTFILE1", len(raw), zlib.crc32(raw)) + raw)
    expect_corrupt(root, "file header is not valid JSON", f)
    raw = b'{"kind": "steps", "name": "x", "worker": "worker_0"}'
    f.write_bytes(FILE_HEADER.pack(b"MRTFILE1", len(raw), zlib.crc32(raw)) + raw)
    expect_corrupt(root, "file kind 'steps', expected 'tensor'", f)


@pytest.mark.parametrize(
    ("rel", "content", "match"),
    [
        ("run.json", '{"format": "pytest-modelrules", "version": ', "invalid JSON"),
        ("run.json", "[1, 2]", "expected a JSON object"),
        ("run.json", '{"format": "pytest-modelrules", "version": 99}', "newer than this reader"),
        ("run.json", '{"format": "pytest-modelrules", "version": "2"}',
         "version must be a positive integer, found '2'"),
        ("run.json", '{"format": "pytest-modelrules", "version": 0}',
         "version must be a positive integer, found 0"),
        ("run.json", '{"format": "safetensors", "version": 1}', "format is 'safetensors'"),
        ("workers/worker_0/worker.json", "{'rank': 0}", "invalid JSON"),
        ("workers/worker_0/worker.json", '{"rank": 3, "num_workers": 2}', "invalid rank 3"),
        ("workers/worker_0/worker.json", '{"rank": 0, "num_workers": 1, "metadata": []}',
         "'metadata' must be a JSON object"),
        ("workers/worker_0/worker.json", '{"rank": false, "num_workers": true}',
         "invalid rank False / num_workers True"),
        ("workers/worker_0/worker.json", '{"rank": 0, "num_workers": 1, "collections": {"c": 5}}',
         "collection 'c' must be a JSON object"),
        ("workers/worker_0/END", "NaN garbage", "invalid JSON"),
        ("run.json", "[" * 100000 + "]" * 100000, "invalid JSON"),
    ],
)  # fmt: skip
def test_bad_json_files(tmp_path, rel, content, match):
    root = make_run(tmp_path / "r")
    (root / rel).write_text(content)
    expect_corrupt(root, match, root / rel)


def test_steps_file_damage_is_named(tmp_path):
    root = make_run(tmp_path / "r")
    f = root / "workers" / "worker_0" / "steps.mrt"
    patch_record(f, 1, "<B", 41, 77)
    expect_corrupt(root, "unknown dtype code 77", f)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle executed')",))


def test_loading_never_unpickles(tmp_path, monkeypatch, smdebug_fixture_dir):
    payload = pickle.dumps(_Boom())
    root = tmp_path / "r"
    with RunWriter(root, metadata={"blob": payload.hex(), "class_names": ["a"]}) as w:
        w.write("pickled", np.frombuffer(payload, np.uint8), 0)
        w.write("x", np.zeros(3), 0)
    calls = []

    def forbidden(*a, **k):
        calls.append(a)
        raise AssertionError("loading a run must never unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    real_np_load = np.load
    monkeypatch.setattr(
        np, "load", lambda *a, **k: real_np_load(*a, **{**k, "allow_pickle": False})
    )
    run = open_run(root)
    got = run.tensor("pickled").value(0)
    assert got.dtype == np.uint8 and got.tobytes() == payload  # bytes, never an object
    assert run.metadata["blob"] == payload.hex()
    read_everything(root)
    read_everything(smdebug_fixture_dir)
    assert calls == []


def test_negative_step(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    patch_record(f, 0, "<q", 8, -5)
    expect_corrupt(root, "negative step -5", f)


def test_an_invalid_regex_is_one_value_error_naming_it_and_where_it_came_from(tmp_path):
    """A bad pattern given to tensor_names, or stored in a run's collections (a run comes from
    a pull request), is a ValueError naming the pattern and its source, not re.error."""
    path = tmp_path / "run"
    with RunWriter(path) as w:
        w.write("loss", np.float32(1), step=0)
        w.set_collections({"bad": {"include_regex": ["("]}, "odd": {"include_regex": 5}})
    run = open_run(path)
    with pytest.raises(ValueError, match=r"regex: '\(' is not a regular expression"):
        run.tensor_names(regex="(")
    with pytest.raises(ValueError, match=r"regex: 3 is not a regular expression"):
        run.tensor_names(regex=["ok", 3])
    with pytest.raises(ValueError, match=r"collection 'bad' of run .*run \(its include_regex\)"):
        run.tensor_names(collection="bad")
    with pytest.raises(ValueError, match=r"collection 'odd' .* 5 is neither"):
        run.tensor_names(collection="odd")
    assert run.tensor_names(regex=["^lo", "nothing"]) == ["loss"]


def test_a_folder_where_a_file_belongs_is_named(tmp_path):
    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    f.unlink()
    f.mkdir()
    expect_corrupt(root, "not a regular file", f)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_in_a_run_is_refused_at_once_not_waited_on(tmp_path):
    """Opening a FIFO for reading waits for a writer, forever: a run from a pull request with
    one where a tensor file belongs must be refused at once (in a subprocess with a timeout,
    so that a regression fails instead of hanging the suite)."""
    import os
    import subprocess
    import sys

    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    f.unlink()
    os.mkfifo(f)
    code = (
        "import sys\n"
        "from pytest_modelrules import open_run\n"
        "try:\n"
        "    open_run(sys.argv[1]).tensor('x').values()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("CorruptRunError") and "not a regular file" in proc.stdout
    assert str(f) in proc.stdout


def _run_linking_to(tmp_path: Path, target: Path) -> tuple[Path, Path]:
    """A run whose tensor file is a symbolic link to ``target``: (run, the link)."""
    import os

    root = make_run(tmp_path / "r")
    f = tensor_file(root)
    f.unlink()
    try:
        os.symlink(target, f)
    except (OSError, NotImplementedError):
        pytest.skip("no symbolic links here")
    return root, f


def test_a_link_to_a_host_file_is_refused_without_showing_its_bytes(tmp_path):
    """A run may hold a symbolic link to any file of the machine that reads it; the error
    names the run's file and shows none of the target's bytes."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET and more")
    root, f = _run_linking_to(tmp_path, secret)
    err = expect_corrupt(root, "not a pytest-modelrules file", f)
    assert "TOPSECR" not in str(err)


def test_a_link_to_a_large_host_file_is_refused_after_its_first_bytes(tmp_path, monkeypatch):
    """A link to a big file of the machine (a 64 MB one here, say a dataset or a core dump)
    is refused on its first 16 bytes: never read whole into memory."""
    from pytest_modelrules.store import fs

    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: no magic number at its start
    root, f = _run_linking_to(tmp_path, big)
    read = []
    real_read = fs.Storage.read

    def counting_read(self, path, start=0, length=None):
        data = real_read(self, path, start, length)
        read.append((path, len(data)))
        return data

    monkeypatch.setattr(fs.Storage, "read", counting_read)
    expect_corrupt(root, "not a pytest-modelrules file", f)
    assert [n for path, n in read if path == str(f)] == [16]


def _zero_size_record(path: Path, rec: int, shape: tuple[int, ...]) -> None:
    """Rewrite record ``rec`` as a zero-byte record of ``shape`` (re-signed): the shape's
    product is 0, as its byte count says, whatever its other dimensions claim."""
    data = bytearray(path.read_bytes())
    offs = record_offsets(path)
    start, end = offs[rec], (offs[rec + 1] if rec + 1 < len(offs) else len(data))
    head = bytearray(data[start : start + RECORD_HEADER.size])
    struct.pack_into("<Q", head, 32, 0)  # nbytes
    head[42] = len(shape)  # ndim
    new = head + struct.pack(f"<{len(shape)}Q", *shape)
    struct.pack_into("<I", new, 4, zlib.crc32(bytes(new[8:])))
    path.write_bytes(bytes(data[:start] + new + data[end:]))


@pytest.mark.parametrize("shape", [(2**63, 0), (2**62, 2**62, 0), (2**64 - 1, 0)])
@pytest.mark.parametrize("records", [[1], [0, 1, 2]], ids=["one", "all"])
def test_a_zero_size_record_claiming_huge_dimensions(tmp_path, shape, records):
    """A zero beside huge dimensions passes the byte-count check (0 bytes either way), but no
    array has that shape: one CorruptRunError at the record, read one by one or stacked."""
    root = make_run(tmp_path / "run")
    for rec in records:
        _zero_size_record(tensor_file(root), rec, shape)
    expect_corrupt(root, "is larger than allowed", tensor_file(root))


def test_json_with_a_huge_integer_or_deep_nesting_is_one_corrupt_run_error(tmp_path):
    """Python's JSON decoder refuses integers of over 4,300 digits (ValueError) and deep
    nesting (RecursionError): both are the file's fault, named as such, in the run's JSON files
    and in a tensor file's header."""
    root = make_run(tmp_path / "run")
    run_json = root / "run.json"
    run_json.write_text(run_json.read_text()[:-1] + ', "n": ' + "9" * 5000 + "}")
    expect_corrupt(root, "invalid JSON", run_json)
    for payload in (b'{"n": ' + b"9" * 5000 + b"}", b"[" * 100_000):
        root = make_run(tmp_path / f"run{len(payload)}")
        path = tensor_file(root)
        data = path.read_bytes()
        header = FILE_HEADER.unpack_from(data)
        end = FILE_HEADER.size + header[1]
        path.write_bytes(
            FILE_HEADER.pack(header[0], len(payload), zlib.crc32(payload)) + payload + data[end:]
        )
        expect_corrupt(root, "file header is not valid JSON", path)


def test_a_stray_file_in_workers_is_not_a_worker(tmp_path):
    """A file beside the worker folders (notes, a README) is ignored, not read as a worker."""
    root = make_run(tmp_path / "run")
    (root / "workers" / "README.md").write_text("notes about this run\n")
    (root / "workers" / "worker_9.tmp").write_text("")
    run = open_run(root)
    assert run.workers() == ["worker_0"]
    assert run.tensor("x").steps() == [0, 1, 2]


@pytest.mark.parametrize("where", ["tensor file", "tensors folder"])
def test_a_symbolic_link_loop_is_one_corrupt_run_error(tmp_path, where):
    root = make_run(tmp_path / "run")
    target = tensor_file(root) if where == "tensor file" else tensor_file(root).parent
    if where == "tensors folder":
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(target)  # a link to itself: ELOOP
    with pytest.raises(CorruptRunError, match=r"cannot be (read|listed)") as info:
        read_everything(root)
    assert str(target) in str(info.value)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux /proc only")
def test_a_link_to_a_file_that_fails_to_read_is_one_corrupt_run_error(tmp_path):
    """/proc/self/mem looks like an empty regular file and fails with an I/O error when read."""
    root = make_run(tmp_path / "run")
    end = root / "workers" / "worker_0" / "END"
    end.unlink()
    end.symlink_to("/proc/self/mem")
    with pytest.raises(CorruptRunError, match="cannot be read") as info:
        read_everything(root)
    assert str(end) in str(info.value)


def test_a_long_named_tensor_file_truncated_inside_a_committed_step_is_named(tmp_path):
    """A tensor whose name is too long for a file name is stored under a hashed name, read once
    for its header when the run is listed: a cut inside a committed record is the same error
    there as in any tensor file, not a step silently lost. (A run written before END listed
    its files' lengths: with them, open_run finds the cut, test_native_end_lengths.py.)"""
    long = "layer/" + "very_long_name_" * 16
    root = tmp_path / "run"
    with RunWriter(root) as w:
        for step in range(3):
            w.write("short", np.arange(6, dtype=np.float32) + step, step)
            w.write(long, np.arange(6, dtype=np.float32) + step, step)
    end = root / "workers" / "worker_0" / "END"
    end.write_text(
        json.dumps({k: v for k, v in json.loads(end.read_text()).items() if k != "files"})
    )
    hashed = [p for p in tensor_file(root).parent.iterdir() if "~" in p.name]
    assert len(hashed) == 1
    hashed[0].write_bytes(hashed[0].read_bytes()[:-10])  # inside step 2's record
    assert open_run(root).tensor("short").steps() == [0, 1, 2]
    with pytest.raises(CorruptRunError, match="truncated inside the record of committed step 2"):
        open_run(root).tensor(long).steps()


def test_collections_of_the_wrong_types_are_no_names(tmp_path):
    """A run's collections with odd types (as a pull request could hold them) list no names;
    an include_regex that is no pattern is named when the collection is used."""
    root = tmp_path / "run"
    with RunWriter(root) as w:
        w.write("loss", np.float32(1), step=0)
        w.set_collections(
            {"a": {"tensor_names": None}, "b": {"tensor_names": 5, "include_regex": 5},
             "c": {"tensor_names": ["loss", 3]}}
        )  # fmt: skip
    run = open_run(root)
    collections = run.collections()
    assert collections["a"].tensor_names == [] and collections["b"].tensor_names == []
    assert collections["c"].tensor_names == ["loss"]
    with pytest.raises(ValueError, match=r"collection 'b' .* 5 is neither"):
        run.tensor_names(collection="b")


def test_a_damaged_file_is_an_error_at_every_read_not_only_the_first(tmp_path):
    """Reading a damaged tensor twice (two tests on one run) fails twice: the second read must
    not find "nothing new" and hand out a tensor with no steps."""
    root = make_run(tmp_path / "run")
    data = bytearray(tensor_file(root).read_bytes())
    data[record_offsets(tensor_file(root))[1] + RECORD_HEADER.size + 16 + 1] ^= 0xFF  # payload
    tensor_file(root).write_bytes(bytes(data))
    run = open_run(root)
    for _ in range(3):
        with pytest.raises(CorruptRunError, match="checksum"):
            run.tensor("x").series()
        with pytest.raises(CorruptRunError, match="checksum"):
            run.tensor("x").steps()


def test_a_worker_with_steps_but_no_worker_json_is_named(tmp_path):
    """The writer writes worker.json before the steps file: steps without it are damage, not
    a worker being created (which would read as a run with no tensors)."""
    root = make_run(tmp_path / "run")
    wfile = root / "workers" / "worker_0" / "worker.json"
    wfile.unlink()
    expect_corrupt(root, "missing, where the worker's steps file is there", wfile)
