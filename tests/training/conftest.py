"""Tiny training settings shared by the training tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = {
    "image_size": 32,
    "batch_size": 16,
    "train_images": 100,
    "test_per_class": 1,
    "steps": 4,
    "epochs": 2,
    "save_interval": 2,
    "device": "cpu",
    "threads": 1,
    "progress": False,
}


@pytest.fixture(scope="session")
def tiny() -> dict:
    """The tiny settings (a fresh copy per use)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modelrules-cache")


@pytest.fixture(scope="session")
def tiny_reference_run(tiny_cache: Path) -> Path:
    """A recorded tiny run of the seed recipe, through the cache (trained once per session)."""
    from pytest_modelrules.training.cache import reference_run

    return reference_run("seed", cache_dir=tiny_cache, **TINY)
