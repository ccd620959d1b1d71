"""Runs behind fsspec URLs: memory:// and S3 (moto's server on 127.0.0.1, started here)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store import RunWriter, open_run
from pytest_modelrules.store.smdebug_writer import SMDebugWriter


def _upload(fs, local: Path, prefix: str) -> None:
    """Copy a local folder's files under ``prefix`` (same relative keys)."""
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(f), f"{prefix}/{f.relative_to(local).as_posix()}")


def _native_run(path, steps: int = 5, **kw) -> dict[int, np.ndarray]:
    vals = {g: np.arange(12, dtype=np.float32).reshape(3, 4) * g for g in range(steps)}
    with RunWriter(path, metadata={"class_names": ["stop", "yield"]}, **kw) as w:
        for g, v in vals.items():
            w.write("logits", v, g, "TRAIN" if g < 3 else "EVAL")
            w.write("loss", np.float32(g), g, "TRAIN" if g < 3 else "EVAL")
    return vals


def _check_native(run, vals) -> None:
    assert run.layout == "native" and run.has_ended
    assert run.steps() == sorted(vals)
    assert run.steps("EVAL") == [0, 1]
    assert run.class_names == ["stop", "yield"]
    got = run.tensor("logits").values()
    assert all(np.array_equal(got[g], v) for g, v in vals.items())


def test_memory_url_native_and_smdebug(tmp_path, smdebug_fixture_dir, smdebug_truth):
    import fsspec

    base = f"memory://modelrules-{uuid.uuid4().hex}"
    vals = _native_run(f"{base}/native")
    _check_native(open_run(f"{base}/native"), vals)
    fs = fsspec.filesystem("memory")
    fs.put(str(smdebug_fixture_dir), f"{base}/smd", recursive=True)
    run = open_run(f"{base}/smd")
    assert run.layout == "smdebug" and len(run.steps()) == 40
    g = 17
    v = run.tensor("CrossEntropyLoss_input_0").value(g)
    assert v.tobytes() == smdebug_truth[f"{g}/CrossEntropyLoss_input_0"].tobytes()


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free local port, and the storage options that reach it."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    opts = {"client_kwargs": {"endpoint_url": endpoint}, "key": "x", "secret": "y"}
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("runs")
    try:
        yield opts
    finally:
        server.stop()


def test_s3_native_run_written_through_the_url(s3):
    url = "s3://runs/native-1"
    vals = _native_run(url, storage_options=s3)
    _check_native(open_run(url, storage_options=s3), vals)
    with pytest.raises(FileExistsError, match="already holds a recorded run"):
        RunWriter(url, storage_options=s3)


def test_s3_reader_sees_synced_steps_of_a_live_run(s3):
    url = "s3://runs/live"
    w = RunWriter(url, storage_options=s3)
    for g in range(3):
        w.write("x", np.full(4, g, np.int64), g)
    w.end_step()
    w.sync()
    run = open_run(url, storage_options=s3)
    assert run.steps() == [0, 1, 2] and not run.has_ended
    for g in range(3, 6):
        w.write("x", np.full(4, g, np.int64), g)
    w.sync()  # step 5 is in flight: only 3 and 4 are committed
    run.refresh()
    assert run.steps() == [0, 1, 2, 3, 4]
    assert run.tensor("x").value(4).tolist() == [4, 4, 4, 4]
    staged = Path(w.root)
    w.close()
    assert not staged.exists()  # staging removed once everything is uploaded
    run.refresh()
    assert run.has_ended and run.steps() == list(range(6))


def test_s3_smdebug_run(s3, tmp_path, smdebug_fixture_dir, smdebug_truth):
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    fs.put(str(smdebug_fixture_dir), "runs/smd", recursive=True)
    run = open_run("s3://runs/smd", storage_options=s3)
    assert run.layout == "smdebug" and run.has_ended
    rows = smdebug_truth["__steps__"]
    assert run.steps("EVAL") == sorted(rows[rows[:, 1] == 2][:, 2].tolist())
    got = run.tensor("CrossEntropyLoss_input_1").values()
    assert len(got) == 40
    assert all(
        v.tobytes() == smdebug_truth[f"{g}/CrossEntropyLoss_input_1"].tobytes()
        for g, v in got.items()
    )
    # a run that grows on S3: refresh picks up new index files
    local = tmp_path / "grow"
    w = SMDebugWriter(local)
    w.write("loss", np.float32(1), 0)
    w.end_step()
    _upload(fs, local, "runs/grow")
    live = open_run("s3://runs/grow", storage_options=s3)
    assert live.steps() == [0] and not live.has_ended
    w.write("loss", np.float32(2), 1)
    w.close()
    _upload(fs, local, "runs/grow")
    live.refresh()
    assert live.steps() == [0, 1] and live.has_ended
    assert live.tensor("loss").value(1).item() == 2.0


def test_failed_upload_keeps_the_staged_run(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # staged here, not left in /tmp
    w = RunWriter("memory://modelrules-fail/run")
    w.write("x", np.zeros(2), 0)

    def broken(*a, **k):
        raise ConnectionError("network down")

    w.sync = broken  # what close() calls to upload
    with pytest.raises(OSError, match="the recorded run is kept in") as err:
        w.close()
    staged = Path(w.root)
    assert staged.is_dir() and str(staged) in str(err.value) and staged.parent == tmp_path
    run = open_run(staged)
    assert run.steps() == [0]


@pytest.mark.parametrize("value", [None, 3, b"bytes"])
def test_open_run_of_something_that_is_no_run_says_what_it_takes(value):
    with pytest.raises(TypeError, match="a run is a path, an fsspec URL or an open Run"):
        open_run(value)


@pytest.mark.parametrize("where", ["absolute", "relative", "memory", "s3"])
def test_rows_files_read_back_however_the_run_is_named(where, tmp_path, monkeypatch, request):
    """The weight and gradient norms live in rows files: a run opened by a relative path or
    an fsspec URL finds them too (their paths were once joined to the run's root twice, so
    only absolute local paths listed them)."""
    options: dict = {}
    if where == "s3":
        options = {"storage_options": request.getfixturevalue("s3")}
        url = f"s3://runs/rows-{uuid.uuid4().hex}"
    elif where == "memory":
        url = f"memory://modelrules-{uuid.uuid4().hex}/rows"
    else:
        monkeypatch.chdir(tmp_path)
        url = "runs/rows" if where == "relative" else str(tmp_path / "runs" / "rows")
    names = ["conv.weight", "gradient/conv.weight"]
    with RunWriter(url, **options) as w:
        for step in range(3):
            row = np.array([1.0, 2.0]) * (step + 1)
            w.write_step(step, [("loss", np.float32(step))], scalars=[(names, row)])
    run = open_run(url, **options)
    assert run.tensor_names() == sorted([*names, "loss"])
    assert {s: float(v) for s, v in run.tensor("gradient/conv.weight").values().items()} == {
        0: 2.0,
        1: 4.0,
        2: 6.0,
    }


def test_s3_end_lengths_cost_no_request_per_file_and_name_a_cut(s3, monkeypatch):
    """The lengths END lists are compared with the sizes S3's listing returns anyway: opening
    a run of 12 tensor files makes the requests a run of 2 makes (docs/format.md, "File
    lengths in END"), and a file cut there is named."""
    import s3fs

    for n in (2, 12):
        with RunWriter(f"s3://runs/files-{n}", storage_options=s3) as w:
            for g in range(2):
                for i in range(n):
                    w.write(f"t{i}", np.full(3, g, np.float32), g)
    calls: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls.append(str(method))
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    requests = []
    for n in (2, 12):
        calls.clear()
        assert open_run(f"s3://runs/files-{n}", storage_options=s3).has_ended
        requests.append(sorted(calls))
    assert requests[0] == requests[1]
    fs = s3fs.S3FileSystem(**s3)
    key = "runs/files-12/workers/worker_0/tensors/t7.mrt"
    data = fs.cat_file(key)
    fs.pipe_file(key, data[: -(48 + 8 + 3 * 4)])  # the last record (header, shape, payload)
    with pytest.raises(CorruptRunError, match="cut: END of worker_0") as err:
        open_run("s3://runs/files-12", storage_options=s3)
    assert err.value.path.endswith("tensors/t7.mrt")
