"""The plugin's own hooks; implement them in a conftest.py or a plugin (see docs/plugin.md)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_modelrules_open_run(config: pytest.Config, location: str, name: str) -> Any | None:
    """Open the run at ``location`` (from ``--model-run``) yourself: return a ``Run`` (e.g.
    after downloading it, or with storage options), or None to let the plugin call
    ``open_run(location, name=name)``. Called once per run and process."""


@pytest.hookspec
def pytest_modelrules_result(result: Any, item: pytest.Item | None) -> None:
    """A rule was evaluated (or taken from the cache) for ``item``: ``result`` is the
    ``RuleResult`` with its evidence. Called in the process that ran the test (an xdist
    worker under ``-n``); ``item`` is None outside a test."""


@pytest.hookspec
def pytest_modelrules_update_json(config: pytest.Config, output_json: dict[str, Any]) -> None:
    """Change or extend ``verdicts.json`` before the controller writes it (as
    pytest-benchmark's ``pytest_benchmark_update_json``): add CI metadata, drop fields."""


@pytest.hookspec(firstresult=True)
def pytest_modelrules_summary_row(result: dict[str, Any]) -> list[str] | None:
    """Return the cells (rule, run, verdict, first step, figure, test) of the terminal summary
    row of one verdict (a ``RuleResult.to_dict`` plus nodeid), or None for the default."""
