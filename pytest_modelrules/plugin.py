"""pytest-modelrules' pytest plugin: hooks only (the logic lives in ``pytest_modelrules.pytest``).

Registered through the ``pytest11`` entry point. Importing it imports neither numpy nor torch
nor matplotlib: a run is opened, and a rule evaluated, only when a test asks for one.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from .pytest import config_rules, hookspecs, options, report
from .pytest import fixtures as fixtures_module
from .pytest import items as items_mod
from .pytest import session as session_module

MARKERS = (
    "model_rule(name, **params): run the built-in rule `name` with these parameters against "
    "each model run as (part of) this test; the test is parametrized with the runs",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    session = session_module.ModelRulesSession(config)
    config.stash[session_module.SESSION_KEY] = session
    session_module.push(session)
    if not config.pluginmanager.is_registered(fixtures_module):
        config.pluginmanager.register(fixtures_module, "modelrules-fixtures")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(session_module.SESSION_KEY, None)
    if session is not None:
        session_module.pop(session)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = session_module.get_session(config)
    if not session.runs and session.baseline is None:
        return None
    runs = ", ".join(f"{s.name}={s.location}" for s in session.runs) or "none"
    line = f"modelrules: runs: {runs}"
    if session.baseline is not None:
        line += f"; baseline: {session.baseline.name}={session.baseline.location}"
    return [line]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = session_module.get_session(metafunc.config)
    if metafunc.definition.get_closest_marker("model_rule") is not None:
        for name in ("model_run", "model_run_spec"):
            if name not in metafunc.fixturenames:
                metafunc.fixturenames.append(name)
    if "model_run_spec" in metafunc.fixturenames and session.runs:
        metafunc.parametrize(
            "model_run_spec",
            session.runs,
            ids=[s.name for s in session.runs],
            indirect=True,
            scope="session",
        )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    for item in items:
        mark = item.get_closest_marker("model_rule")
        if mark is not None and isinstance(item, pytest.Function):
            names = ["model_run"]
            if _mark_needs_baseline(mark):
                names.append("baseline_run")
            for name in names:
                if name not in item.fixturenames:
                    item.fixturenames.append(name)
    specs = config_rules.declared_rules(config)
    if specs and not _only_node_ids(config):
        source = config_rules.pyproject_path(config) or config.inipath or config.rootpath
        runs = session_module.get_session(config).runs
        items.extend(items_mod.make_items(session, specs, runs, source))


def _mark_needs_baseline(mark: pytest.Mark) -> bool:
    return bool(mark.args) and items_mod.needs_baseline(str(mark.args[0]), dict(mark.kwargs))


def _only_node_ids(config: pytest.Config) -> bool:
    """The user asked for given tests (``path::name``): leave declared rules out."""
    args = config.args
    return bool(args) and all("::" in str(a) for a in args)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    session = session_module.get_session(item.config)
    session.current_item = item
    try:
        return (yield)
    finally:
        session.current_item = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    __tracebackhide__ = True
    if isinstance(item, pytest.Function):
        marker_rules(item)


def marker_rules(item: pytest.Function) -> None:
    """Evaluate the ``model_rule`` markers of a test before its body."""
    __tracebackhide__ = True
    from .assertions import assert_rule

    for mark in reversed(list(item.iter_markers("model_rule"))):
        if not mark.args:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.model_rule needs a rule name")
        params: dict[str, Any] = dict(mark.kwargs)
        if items_mod.needs_baseline(str(mark.args[0]), params):
            params["baseline"] = item.funcargs["baseline_run"]
        try:
            assert_rule(item.funcargs["model_run"], str(mark.args[0]), **params)
        except AssertionError as exc:
            exc.modelrules_marker = True  # type: ignore[attr-defined]  # report: message only
            raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator:
    rep = yield
    if (
        rep.failed
        and call.excinfo is not None
        and getattr(call.excinfo.value, "modelrules_marker", False)
    ):
        rep.longrepr = str(call.excinfo.value)  # the rule's message, not the plugin's frames
    entries = session_module.get_session(item.config).drain(item.nodeid)
    if entries:
        setattr(rep, session_module.REPORT_ATTR, entries)
    return rep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # on the controller this sees every worker's reports; on a worker, its own
    session = session_module.active_session()
    if session is not None:
        session.collect(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session_module.get_session(session.config)
    if state.is_controller:
        report.write_reports(state)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = session_module.get_session(config)
    if state.is_controller:
        report.terminal_summary(terminalreporter, state, config)
