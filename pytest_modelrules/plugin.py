"""pytest-modelrules' pytest plugin: hooks only (the logic lives in ``pytest_modelrules.pytest``).

Registered through the ``pytest11`` entry point. Importing it imports neither numpy nor torch
nor matplotlib: a run is opened, and a rule evaluated, only when a test asks for one.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from .pytest import fixtures, hookspecs, markers, options, report
from .pytest import items as rule_items
from .pytest import session as state


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", markers.MARKER_HELP)
    session = state.ModelRulesSession(config)
    config.stash[state.SESSION_KEY] = session
    state.push(session)
    if not config.pluginmanager.is_registered(fixtures):
        config.pluginmanager.register(fixtures, "modelrules-fixtures")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(state.SESSION_KEY, None)
    if session is not None:
        state.pop(session)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    return report.header(state.get_session(config))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    markers.request_run_fixtures(metafunc)
    runs = state.get_session(metafunc.config).runs
    if "model_run_spec" in metafunc.fixturenames and runs:
        metafunc.parametrize(
            "model_run_spec", runs, ids=[s.name for s in runs], indirect=True, scope="session"
        )


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, which then applies to ours
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    markers.add_fixtures(items)
    rule_items.add_declared_rules(session, config, items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    session = state.get_session(item.config)
    session.current_item = item
    try:
        return (yield)
    finally:
        session.current_item = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    __tracebackhide__ = True
    markers.run_marker_rules(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator:
    rep = yield
    markers.short_repr(rep, call)
    entries = state.get_session(item.config).drain(item.nodeid)
    if entries:
        setattr(rep, state.REPORT_ATTR, entries)
    return rep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # on the controller this sees every worker's reports (xdist), on a worker its own
    session = state.active_session()
    if session is not None:
        session.collect(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    current = state.get_session(session.config)
    if current.is_controller:
        report.write_reports(current)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    current = state.get_session(config)
    if current.is_controller:
        report.terminal_summary(terminalreporter, current, config)
