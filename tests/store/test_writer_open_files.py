"""RunWriter keeps a bounded number of tensor files open, sized from RLIMIT_NOFILE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.store import open_run
from pytest_modelrules.store import writer as writer_mod
from pytest_modelrules.store.writer import RunWriter, default_max_open_files

resource = pytest.importorskip("resource")  # POSIX only; the default falls back elsewhere


@pytest.mark.parametrize(
    ("soft", "expected"),
    [(1024, 512), (100, 64), (1 << 20, 4096), (resource.RLIM_INFINITY, 4096)],
)
def test_default_is_half_the_soft_limit_within_bounds(monkeypatch, soft, expected) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, resource.RLIM_INFINITY))
    assert default_max_open_files() == expected
    assert RunWriter.__init__.__kwdefaults__["max_open_files"] is None


def test_default_is_used_by_the_writer(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "run") as w:
        assert w.max_open_files == default_max_open_files()
        assert writer_mod.MIN_OPEN_FILES <= w.max_open_files <= writer_mod.MAX_OPEN_FILES
    with pytest.raises(ValueError, match="max_open_files"):
        RunWriter(tmp_path / "bad", max_open_files=0)


def test_more_tensors_than_open_files_write_and_read_back(tmp_path: Path) -> None:
    names = [f"layer{i}.relu_output_0" for i in range(23)]
    with RunWriter(tmp_path / "run", max_open_files=5) as w:
        for g in range(4):
            for i, n in enumerate(names):
                w.write(n, np.full(3, 100 * g + i, np.int32), g)
                assert len(w._files) <= 5
    run = open_run(tmp_path / "run")
    assert run.tensor_names() == sorted(names)
    for i, n in enumerate(names):
        values = run.tensor(n).values()
        assert list(values) == [0, 1, 2, 3]
        assert [v.tolist() for v in values.values()] == [[100 * g + i] * 3 for g in range(4)]
