"""The plugin's fixtures, registered as a plugin object at configure time.

All are session-scoped: a run is opened once, and Hypothesis's ``@given`` tests may use them
without its function-scoped-fixture health check complaining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import options
from .options import NO_RUN_REASON, RunSpec
from .session import get_session

#: the training module another part of the package provides (reference job, cached)
TRAINING_MODULE = "pytest_modelrules.training.cache"

NO_TRAINING_REASON = (
    "no model run given and none can be trained here: pass --model-run=PATH_OR_URL, or install "
    f"the training extra (pytest-modelrules[torch]) that provides {TRAINING_MODULE}.reference_run"
)


@pytest.fixture(scope="session")
def model_run_spec(request: pytest.FixtureRequest) -> RunSpec | None:
    """The run this test runs against (name and location), or None when none was given.

    The plugin parametrizes it with every ``--model-run``, so that each test using a run
    fixture runs once per run, its id showing the run's name.
    """
    return getattr(request, "param", None)


@pytest.fixture(scope="session")
def model_run(request: pytest.FixtureRequest, model_run_spec: RunSpec | None) -> Any:
    """The run under test (``pytest_modelrules.open_run``'s ``Run``); skips without one."""
    if model_run_spec is None:
        pytest.skip(NO_RUN_REASON)
    return get_session(request.config).open(model_run_spec)


@pytest.fixture(scope="session")
def baseline_run(request: pytest.FixtureRequest) -> Any:
    """The baseline run (``--model-run-baseline``); skips without one."""
    return get_session(request.config).open_baseline()


def _training_module() -> Any | None:
    """``pytest_modelrules.training.cache`` when it (and torch) can be imported, else None."""
    import importlib

    try:
        return importlib.import_module(TRAINING_MODULE)
    except ModuleNotFoundError as exc:
        # only "the module (or torch) is not there" means unavailable; a broken import shows
        if exc.name and (
            TRAINING_MODULE.startswith(exc.name) or exc.name in ("torch", "torchvision")
        ):
            return None
        raise


def _cache_dir(
    config: pytest.Config, module: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Where trained reference runs are kept: the ini's ``model_run_cache``, else the training
    module's default (``$MODELRULES_CACHE_DIR`` or ``~/.cache/pytest-modelrules``, shared
    with ``modelrules train``/``demo``), else pytest's cache folder."""
    configured = options.cache_dir(config)
    if configured is not None:
        return configured
    default = getattr(module, "default_cache_dir", None)
    if callable(default):
        return Path(default())
    cache = getattr(config, "cache", None)
    return Path(cache.mkdir("modelrules")) if cache is not None else tmp_path_factory.mktemp("mr")


@pytest.fixture(scope="session")
def trained_run(
    request: pytest.FixtureRequest,
    model_run_spec: RunSpec | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """The given ``--model-run`` if any; else the reference job's run, trained once and
    cached (``pytest_modelrules.training.cache.reference_run``); else a skip saying why."""
    session = get_session(request.config)
    if model_run_spec is not None:
        return session.open(model_run_spec)
    module = _training_module()
    reference_run = getattr(module, "reference_run", None)
    if reference_run is None:
        pytest.skip(NO_TRAINING_REASON)
    cache_dir = _cache_dir(request.config, module, tmp_path_factory)
    path = reference_run(recipe="seed", cache_dir=cache_dir)
    return session.open(RunSpec(name="reference-seed", location=str(path)))
