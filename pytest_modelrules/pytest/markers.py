"""The ``model_rule`` marker: a built-in rule evaluated as (part of) a test, per model run."""

from __future__ import annotations

from typing import Any

import pytest

from .items import needs_baseline

MARKER = "model_rule"
MARKER_HELP = (
    "model_rule(name, **params): run the built-in rule `name` with these parameters against "
    "each model run as (part of) this test; the test is parametrized with the runs"
)
#: set on an exception raised by a marker's rule, so that its report shows the message only
FLAG = "modelrules_marker"


def has_marker(node: Any) -> bool:
    return node.get_closest_marker(MARKER) is not None


def request_run_fixtures(metafunc: pytest.Metafunc) -> None:
    """A marked test that does not ask for ``model_run`` still runs per run."""
    if metafunc.definition.get_closest_marker(MARKER) is not None:
        for name in ("model_run", "model_run_spec"):
            if name not in metafunc.fixturenames:
                metafunc.fixturenames.append(name)


def add_fixtures(items: list[pytest.Item]) -> None:
    """After parametrization, make marked tests set up ``model_run`` (and the baseline when
    their rule compares with one), which pytest pruned from tests that do not ask for it."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        names = []
        for mark in item.iter_markers(MARKER):
            names.append("model_run")
            if mark.args and needs_baseline(str(mark.args[0]), dict(mark.kwargs)):
                names.append("baseline_run")
        for name in names:
            if name not in item.fixturenames:
                item.fixturenames.append(name)


def run_marker_rules(item: pytest.Item) -> None:
    """Evaluate the ``model_rule`` markers of a test (before its body)."""
    __tracebackhide__ = True
    if not isinstance(item, pytest.Function):
        return
    marks = list(item.iter_markers(MARKER))
    if not marks:
        return
    from ..assertions import assert_rule
    from ..exceptions import ModelRulesError

    for mark in reversed(marks):  # the outermost (module, class) first
        if not mark.args:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{MARKER} needs a rule name")
        if len(mark.args) > 1:  # parameters go by name: a second positional one is a slip
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.{MARKER}({mark.args[0]!r}, ...) takes one rule "
                f"name, then parameters by name; got {mark.args[1:]!r} too"
            )
        name = str(mark.args[0])
        params: dict[str, Any] = dict(mark.kwargs)
        if needs_baseline(name, params):
            params["baseline"] = item.funcargs["baseline_run"]
        try:
            assert_rule(item.funcargs["model_run"], name, **params)
        except (AssertionError, ModelRulesError) as exc:
            setattr(exc, FLAG, True)
            raise


def short_repr(report: pytest.TestReport, call: pytest.CallInfo) -> None:
    """A marker's failure shows the rule's message (or error), not the plugin's frames."""
    if not report.failed or call.excinfo is None:
        return
    exc = call.excinfo.value
    if getattr(exc, FLAG, False):
        report.longrepr = (
            str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
        )
