"""Wall times of a SageMaker Debugger run: read from the first Event of each step's event file,
only when asked, once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store import open_run
from pytest_modelrules.store.smdebug_writer import SMDebugWriter

#: what the fixture's events hold: wall_time_base of its spec plus the global step
BASE = 1600000000.0


def test_fixture_wall_times_come_from_the_events(smdebug_fixture_dir) -> None:
    run = open_run(smdebug_fixture_dir)
    assert run.wall_time(0) == BASE and run.wall_time(37) == BASE + 37
    table = run.step_table()
    assert np.array_equal(table["wall_time"], BASE + table["step"].astype(np.float64))


def test_read_lazily_one_small_range_per_event_file(smdebug_fixture_dir, monkeypatch) -> None:
    run = open_run(smdebug_fixture_dir)
    storage = run._backend.storage
    calls: list[tuple[list[str], list[int], list[int]]] = []
    real = storage.read_ranges

    def counting(paths, starts, lengths, writable=False):
        calls.append((list(paths), list(starts), list(lengths)))
        return real(paths, starts, lengths, writable)

    monkeypatch.setattr(storage, "read_ranges", counting)
    run.steps()
    run.tensor("CrossEntropyLoss_output_0").steps()
    assert calls == []  # nothing asked for a wall time yet
    run.wall_time(3)
    assert len(calls) == 1
    paths, starts, lengths = calls[0]
    assert len(paths) == len(set(paths)) == 40
    assert set(starts) == {0} and set(lengths) == {21}
    run.wall_time(4)
    run.step_table()
    assert len(calls) == 1  # cached


def test_several_workers_and_a_zero_wall_time(tmp_path: Path) -> None:
    path = tmp_path / "run"
    writers = [SMDebugWriter(path, f"worker_{r}", num_workers=2) for r in range(2)]
    for g, wall in enumerate([0.0, 50.0, 75.5]):
        for r, w in enumerate(writers):
            w.write("loss", np.float32(g), g, wall_time=wall + r)
    for w in writers:
        w.close()
    run = open_run(path)
    # a step's wall time is that of the first worker listed (worker_0); protobuf omits a
    # zero double, which reads back as 0.0 (StalledTrainingRule passes such steps over)
    assert run.step_table()["wall_time"].tolist() == [0.0, 50.0, 75.5]
    assert run.wall_time(2) == 75.5


def test_a_damaged_event_header_is_a_clear_error(smdebug_fixture_dir, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(smdebug_fixture_dir, copy)
    event = copy / "events" / "000000000007" / "000000000007_worker_0.tfevents"
    data = bytearray(event.read_bytes())
    data[0] ^= 0xFF
    event.write_bytes(bytes(data))
    run = open_run(copy)
    with pytest.raises(CorruptRunError, match=r"000000000007_worker_0\.tfevents") as info:
        run.wall_time(2)
    assert "length fails its CRC" in str(info.value)
    event.unlink()
    run = open_run(copy)
    with pytest.raises(CorruptRunError, match="missing"):
        run.step_table()
