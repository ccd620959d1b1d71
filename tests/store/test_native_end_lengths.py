"""END lists the length of every file its writer wrote: in an ended run, a file cut at a record
boundary (a copy or download cut short) or deleted is one CorruptRunError naming it, where the
reader used to show fewer steps and no error. Runs whose END has no such list read as before."""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store import RunWriter, open_run
from pytest_modelrules.store import writer as writer_module
from pytest_modelrules.store.format import RECORD_HEADER, encode_record, parse_file_header


def make_run(root: Path | str, steps: int = 4, **kw) -> Path | str:
    """A closed run: tensor ``x`` (a 2x3 array), a row of scalars ``a``, ``b``, every step."""
    with RunWriter(root, **kw) as w:
        for g in range(steps):
            w.write_step(
                g,
                [("x", np.arange(6, dtype=np.float32).reshape(2, 3) + g)],
                scalars=[(["a", "b"], np.array([g, -g], np.float32))],
            )
    return root


def worker_dir(root: Path, worker: str = "worker_0") -> Path:
    return root / "workers" / worker


def end_of(root: Path, worker: str = "worker_0") -> dict:
    return json.loads((worker_dir(root, worker) / "END").read_text())


def write_end(root: Path, end: dict, worker: str = "worker_0") -> None:
    (worker_dir(root, worker) / "END").write_text(json.dumps(end))


def record_starts(data: bytes) -> list[int]:
    """Offsets of the records of a sound file's bytes."""
    pos = parse_file_header(data, "f").data_offset
    out = []
    while pos < len(data):
        out.append(pos)
        fields = RECORD_HEADER.unpack_from(data, pos)
        nbytes, ndim = fields[5], fields[8]
        pos += RECORD_HEADER.size + 8 * ndim + nbytes
    return out


def cut_last_record(path: Path) -> tuple[int, int]:
    """Cut a file at the start of its last record (a record boundary): (length before, after)."""
    data = path.read_bytes()
    keep = record_starts(data)[-1]
    path.write_bytes(data[:keep])
    return len(data), keep


def only_rows_file(root: Path, worker: str = "worker_0") -> Path:
    (found,) = (worker_dir(root, worker) / "rows").iterdir()
    return found


def test_end_lists_every_file_the_writer_wrote_with_its_length(tmp_path):
    root = make_run(tmp_path / "run")
    wdir = worker_dir(root)
    on_disk = {
        p.relative_to(wdir).as_posix(): p.stat().st_size for p in wdir.rglob("*.mrt") if p.is_file()
    }
    assert set(on_disk) == {"steps.mrt", "tensors/x.mrt", f"rows/{only_rows_file(root).name}"}
    assert end_of(root)["files"] == on_disk
    run = open_run(root)
    assert run.tensor("x").steps() == run.tensor("a").steps() == [0, 1, 2, 3]
    assert "files" not in run.end_info  # per-worker bookkeeping, not what the end says


@pytest.mark.parametrize("which", ["tensors/x.mrt", "rows", "steps.mrt"])
def test_a_file_cut_at_a_record_boundary_is_named_at_open(tmp_path, which):
    """A tensor file, a rows file or the commit log cut where a record starts: no reader of
    the records alone can tell; END's length can."""
    root = make_run(tmp_path / "run")
    f = only_rows_file(root) if which == "rows" else worker_dir(root) / which
    before, after = cut_last_record(f)
    with pytest.raises(CorruptRunError) as err:
        open_run(root)
    assert err.value.path == str(f)
    assert f"cut: END of worker_0 records {before} bytes, the file has {after}" in str(err.value)


def test_a_cut_or_deletion_after_open_is_named_when_the_file_is_read(tmp_path):
    """open_run compares the listing with END once; every read compares its file again."""
    root = make_run(tmp_path / "run")
    run = open_run(root)
    cut_last_record(worker_dir(root) / "tensors" / "x.mrt")
    with pytest.raises(CorruptRunError, match="cut: END of worker_0 records"):
        run.tensor("x").steps()
    with pytest.raises(CorruptRunError, match="cut: END"):  # and at every later read
        run.tensor("x").values()
    again = open_run(make_run(tmp_path / "run2"))
    (tmp_path / "run2" / "workers" / "worker_0" / "tensors" / "x.mrt").unlink()
    with pytest.raises(CorruptRunError, match="missing: END of worker_0 records"):
        again.tensor("x").steps()


@pytest.mark.parametrize("which", ["tensors/x.mrt", "rows", "steps.mrt"])
def test_a_deleted_file_is_named_at_open(tmp_path, which):
    root = make_run(tmp_path / "run")
    f = only_rows_file(root) if which == "rows" else worker_dir(root) / which
    length = f.stat().st_size
    f.unlink()
    with pytest.raises(CorruptRunError) as err:
        open_run(root)
    assert err.value.path == str(f)
    assert f"missing: END of worker_0 records {length} bytes for it" in str(err.value)


def test_a_hashed_long_name_file_cut_at_a_record_boundary_is_named_at_open(tmp_path):
    """Such a file is read for its header when the run is listed: the cut is found then."""
    long = "layer/" + "very_long_name_" * 16
    root = tmp_path / "run"
    with RunWriter(root) as w:
        for g in range(3):
            w.write(long, np.arange(6, dtype=np.float32) + g, g)
    (f,) = (worker_dir(root) / "tensors").iterdir()
    assert "~" in f.name
    data = f.read_bytes()
    cut_last_record(f)
    with pytest.raises(CorruptRunError, match="cut: END of worker_0") as err:
        open_run(root)
    assert err.value.path == str(f)
    f.write_bytes(data[:-10])  # inside step 2's record: the short file is read at open, and
    with pytest.raises(CorruptRunError, match="inside the record of committed step 2") as err:
        open_run(root)  # the damage keeps its precise message
    assert err.value.path == str(f)


def test_a_file_longer_than_end_says_reads_as_before(tmp_path):
    """Trailing bytes past END's length hold no committed step (END follows the last commit)."""
    root = make_run(tmp_path / "run")
    f = worker_dir(root) / "tensors" / "x.mrt"
    rec = encode_record(np.zeros((2, 3), np.float32), step=9, mode=1, mode_step=9, wall_time=0.0)
    with open(f, "ab") as fh:
        fh.write(rec + rec[:20])
    assert open_run(root).tensor("x").steps() == [0, 1, 2, 3]


def test_a_file_end_does_not_list_is_named_at_open(tmp_path):
    root = make_run(tmp_path / "run")
    extra = worker_dir(root) / "tensors" / "y.mrt"
    extra.write_bytes((worker_dir(root) / "tensors" / "x.mrt").read_bytes())
    with pytest.raises(CorruptRunError, match="END, which lists every file it wrote") as err:
        open_run(root)
    assert err.value.path == str(extra)
    # what the reader never reads is no part of the run: not checked
    (worker_dir(root) / "tensors" / "y.mrt").rename(worker_dir(root) / "tensors" / "y.mrt.tmp")
    (worker_dir(root) / "tensors" / ".hidden.mrt").write_bytes(b"")
    assert open_run(root).tensor("x").steps() == [0, 1, 2, 3]


def test_a_run_whose_end_lists_no_files_reads_as_before(tmp_path):
    """Every run written before END had "files": a cut or deleted file goes unnoticed there,
    as it always did (nothing tells the reader how long the files were)."""
    root = make_run(tmp_path / "run")
    end = end_of(root)
    del end["files"]
    write_end(root, end)
    cut_last_record(worker_dir(root) / "tensors" / "x.mrt")
    cut_last_record(only_rows_file(root))
    run = open_run(root)
    assert run.has_ended and run.steps() == [0, 1, 2, 3]
    assert run.tensor("x").steps() == run.tensor("a").steps() == [0, 1, 2]
    (worker_dir(root) / "tensors" / "x.mrt").unlink()
    assert open_run(root).tensor_names() == ["a", "b"]


def follow_to_the_end(root: Path):
    """A run read while written (tensor ``x`` read at 3 steps), then ended at 6 steps."""
    w = RunWriter(root)
    for g in range(3):
        w.write("x", np.full(4, g, np.int64), g)
    w.end_step()
    run = open_run(root)
    assert run.tensor("x").steps() == [0, 1, 2] and not run.has_ended
    for g in range(3, 6):
        w.write("x", np.full(4, g, np.int64), g)
    w.close()
    return run


def test_a_run_followed_while_written_finds_a_cut_made_after_it_ended(tmp_path):
    """The refresh that first sees END compares the listing with it; a file read before END
    came gets END's length too, for the reads after that refresh."""
    run = follow_to_the_end(tmp_path / "run")
    cut_last_record(worker_dir(tmp_path / "run") / "tensors" / "x.mrt")  # longer than read
    with pytest.raises(CorruptRunError, match="cut: END of worker_0"):
        run.refresh()
    run = follow_to_the_end(tmp_path / "run2")
    run.refresh()  # the file is whole: the listing agrees with END (x is not read again)
    assert run.has_ended
    cut_last_record(worker_dir(tmp_path / "run2") / "tensors" / "x.mrt")  # longer than read
    with pytest.raises(CorruptRunError, match="cut: END of worker_0"):
        run.tensor("x").steps()


def test_each_worker_is_checked_against_its_own_end(tmp_path):
    root = tmp_path / "run"
    for rank in range(2):
        make_run(root, worker=f"worker_{rank}", rank=rank, num_workers=2)
    assert end_of(root, "worker_0")["files"].keys() == end_of(root, "worker_1")["files"].keys()
    f = worker_dir(root, "worker_1") / "tensors" / "x.mrt"
    cut_last_record(f)
    with pytest.raises(CorruptRunError, match="cut: END of worker_1") as err:
        open_run(root)
    assert err.value.path == str(f)


def test_files_closed_at_the_open_file_limit_are_listed_with_their_final_length(tmp_path):
    root = tmp_path / "run"
    names = [f"t{i}" for i in range(7)]
    with RunWriter(root, max_open_files=2) as w:
        for g in range(3):
            for i, n in enumerate(names):
                w.write(n, np.full(i + 1, g, np.float32), g)
    files = end_of(root)["files"]
    for n in names:
        f = worker_dir(root) / "tensors" / f"{n}.mrt"
        assert files[f"tensors/{n}.mrt"] == f.stat().st_size
    run = open_run(root)
    assert all(run.tensor(n).steps() == [0, 1, 2] for n in names)


@pytest.mark.skipif(not hasattr(os, "writev"), reason="simulates the failure in os.writev")
def test_a_writer_that_failed_on_a_full_disk_ends_a_run_that_reads_without_error(
    tmp_path, monkeypatch
):
    """A write fails half way (its record torn at the file's end), another when a new file's
    header is written; the writer's context manager still closes the run. END records what is
    on disk, so the run reads as its committed steps, with no error."""
    real_writev = os.writev

    def half_then_full(fd, parts):
        head = bytes(parts[0])
        if RECORD_HEADER.unpack_from(head)[2] == 2:  # step 2: half the header, then full
            os.write(fd, head[:20])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, parts)

    root = tmp_path / "run"
    monkeypatch.setattr(writer_module, "_WRITEV", half_then_full)
    with pytest.raises(OSError, match="No space"), RunWriter(root) as w:
        for g in range(3):
            w.write("x", np.full(5, g, np.float32), g)
    run = open_run(root)
    assert run.has_ended and run.end_info["reason"] == "error: OSError"
    assert run.steps() == [0, 1] and run.tensor("x").steps() == [0, 1]
    f = worker_dir(root) / "tensors" / "x.mrt"
    assert end_of(root)["files"]["tensors/x.mrt"] == f.stat().st_size
    data_offset = parse_file_header(f.read_bytes(), str(f)).data_offset
    record = RECORD_HEADER.size + 8 + 5 * 4  # a (5,) float32 array's record
    assert f.stat().st_size == data_offset + 2 * record + 20  # the torn record is counted

    real_header = writer_module.encode_file_header

    def no_room_for_y(fields):
        if fields.get("name") == "y":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_header(fields)

    monkeypatch.setattr(writer_module, "_WRITEV", real_writev)
    monkeypatch.setattr(writer_module, "encode_file_header", no_room_for_y)
    root2 = tmp_path / "run2"
    with pytest.raises(OSError, match="No space"), RunWriter(root2) as w:
        w.write("x", np.zeros(2, np.float32), 0)
        w.write("y", np.zeros(2, np.float32), 1)
    assert end_of(root2)["files"]["tensors/y.mrt"] == 0  # created, then the disk was full
    run2 = open_run(root2)
    assert run2.steps() == [0] and run2.tensor("x").steps() == [0]
    assert run2.tensor("y").steps() == []


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ([], "'files' must be a JSON object"),
        ("steps.mrt", "'files' must be a JSON object"),
        ({"../../../etc/passwd": 1}, "'files' names '../../../etc/passwd'"),
        ({"/etc/x.mrt": 1}, "'files' names '/etc/x.mrt'"),
        ({"tensors/../../x.mrt": 1}, "'files' names"),
        ({"tensors/a/b.mrt": 1}, "'files' names"),
        ({"tensors\\x.mrt": 1}, "'files' names"),
        ({"tensors/.x.mrt": 1}, "'files' names"),
        ({"tensors/x.txt": 1}, "'files' names"),
        ({"worker.json": 1}, "'files' names"),
        ({"tensors/x.mrt": -1}, "the length -1"),
        ({"tensors/x.mrt": 1.5}, "the length 1.5"),
        ({"tensors/x.mrt": 1234.0}, "the length 1234.0"),
        ({"tensors/x.mrt": True}, "the length True"),
        ({"tensors/x.mrt": "1234"}, "the length 1234"),
        ({"tensors/x.mrt": None}, "the length None"),
        ({"tensors/x.mrt": 2**53}, "expected an integer in"),
        ({"steps.mrt": 10**300}, "expected an integer in"),
    ],
)
def test_hostile_end_files_are_one_error_naming_end(tmp_path, files, match):
    root = make_run(tmp_path / "run")
    end = end_of(root)
    end["files"] = files
    write_end(root, end)
    with pytest.raises(CorruptRunError, match=match) as err:
        open_run(root)
    assert err.value.path == str(worker_dir(root) / "END")


def test_a_run_at_a_memory_url_lists_its_files_and_a_cut_there_is_named(tmp_path):
    import fsspec

    url = f"memory://modelrules-{uuid.uuid4().hex}/run"
    make_run(url)
    fs, root = fsspec.core.url_to_fs(url)
    end = json.loads(fs.cat_file(f"{root}/workers/worker_0/END"))
    for rel, length in end["files"].items():
        assert fs.size(f"{root}/workers/worker_0/{rel}") == length
    assert len(end["files"]) == 3
    assert open_run(url).tensor("x").steps() == [0, 1, 2, 3]
    for rel in ("tensors/x.mrt", "steps.mrt"):  # each cut at a record boundary, then mended
        key = f"{root}/workers/worker_0/{rel}"
        data = fs.cat_file(key)
        fs.pipe_file(key, data[: record_starts(data)[-1]])
        with pytest.raises(CorruptRunError, match="cut: END of worker_0") as err:
            open_run(url)
        assert err.value.path.endswith(f"workers/worker_0/{rel}")
        fs.pipe_file(key, data)
    fs.rm(f"{root}/workers/worker_0/tensors/x.mrt")
    with pytest.raises(CorruptRunError, match="missing: END of worker_0") as err:
        open_run(url)
    assert err.value.path.endswith("tensors/x.mrt")
