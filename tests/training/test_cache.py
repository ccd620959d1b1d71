"""reference_run: trains once, caches by recipe + parameters + code, safe against races."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pytest_modelrules.training import cache
from pytest_modelrules.training.cache import DONE_MARKER, reference_run, run_key


def test_second_call_reuses_the_run(tiny_reference_run: Path, tiny_cache: Path, tiny, monkeypatch):
    assert (tiny_reference_run / DONE_MARKER).is_file()
    assert tiny_reference_run.parent == tiny_cache
    monkeypatch.setattr("pytest_modelrules.training.job.train", _no_training)
    assert reference_run("seed", cache_dir=tiny_cache, **tiny) == tiny_reference_run


def _no_training(*args, **kwargs):
    raise AssertionError("trained again instead of using the cache")


def test_key_depends_on_recipe_parameters_and_code(tiny, monkeypatch):
    k1, _ = run_key("seed", **tiny)
    assert run_key("seed", **tiny)[0] == k1
    assert run_key("fixed", **tiny)[0] != k1
    assert run_key("seed", **{**tiny, "seed": 7})[0] != k1
    monkeypatch.setattr(cache, "code_version", lambda: "other-code")
    assert run_key("seed", **tiny)[0] != k1


def test_cache_dir_from_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MODELRULES_CACHE_DIR", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MODELRULES_CACHE_DIR")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "pytest-modelrules"


def test_concurrent_callers_train_once(tiny, monkeypatch, tmp_path: Path):
    calls: list[Path] = []

    def fake_train(config, out, data_dir=None, **kw):
        calls.append(Path(out))
        threading.Event().wait(0.3)  # long enough for the others to queue on the lock
        out.mkdir(parents=True)
        (out / "payload").write_text("run")

        class R:
            def to_dict(self):
                return {"fake": True}

        return R()

    monkeypatch.setattr("pytest_modelrules.training.job.train", fake_train)
    monkeypatch.setattr("pytest_modelrules.training.job.prepare_data", lambda *a, **k: None)
    got: list[Path] = []
    threads = [
        threading.Thread(target=lambda: got.append(reference_run("fixed", tmp_path, **tiny)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(got)) == 1 and len(got) == 4
    final = got[0]
    assert (final / "payload").read_text() == "run"
    assert json.loads((final / DONE_MARKER).read_text()) == {"fake": True}
    assert not list(tmp_path.glob(".fixed-*.tmp-*"))  # the temporary folder was renamed


def test_failed_training_leaves_no_run(tiny, monkeypatch, tmp_path: Path):
    def broken(config, out, data_dir=None, **kw):
        Path(out).mkdir(parents=True)
        raise RuntimeError("boom")

    monkeypatch.setattr("pytest_modelrules.training.job.train", broken)
    monkeypatch.setattr("pytest_modelrules.training.job.prepare_data", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="boom"):
        reference_run("seed", tmp_path, **tiny)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
