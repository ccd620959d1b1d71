"""Shared fixtures of the project's own test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# The optional Triton kernel (pytest_modelrules/capture/kernels.py) is tested on CPU tensors by
# Triton's interpreter, which must be chosen before Triton is first imported (its library
# functions are built for one mode or the other at import).
os.environ.setdefault("TRITON_INTERPRET", "1")


def shared_dir() -> Path:
    """The read-only shared/ folder beside the checkout (CI lays it there too)."""
    env = os.environ.get("MODELRULES_SHARED_DIR")
    if env:
        return Path(env)
    for candidate in (REPO_ROOT / "shared", REPO_ROOT.parent / "shared"):
        if (candidate / "fixtures").is_dir():
            return candidate
    raise FileNotFoundError(
        "shared/ (with fixtures/) not found beside the repository; set MODELRULES_SHARED_DIR"
    )


@pytest.fixture(scope="session")
def smdebug_fixture_dir() -> Path:
    """The real SageMaker Debugger run of shared/fixtures (read-only: copy before changing)."""
    return shared_dir() / "fixtures" / "smdebug_sample_run"


@pytest.fixture(scope="session")
def smdebug_truth(smdebug_fixture_dir: Path):
    """Every value of the fixture run: {"<global_step>/<tensor>": array, "__steps__": rows}."""
    import numpy as np

    with np.load(smdebug_fixture_dir.parent / "smdebug_sample_run.truth.npz") as data:
        return {k: data[k] for k in data.files}
