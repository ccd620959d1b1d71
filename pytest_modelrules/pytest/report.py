"""End-of-session output: the terminal table of verdicts, verdicts.json and the HTML report.

All of it runs on the controller only (never on an xdist worker), from the verdicts that the
test reports carried there.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import pytest

from ..textplot import fmt_number
from .session import ModelRulesSession

HEADER = ("rule", "run", "verdict", "first step", "figure", "test")


class ModelRulesReportWarning(pytest.PytestWarning):
    """The HTML report could not be written (the tests' verdicts are not affected)."""


def header(session: ModelRulesSession) -> list[str] | None:
    """``modelrules: runs: NAME=PATH, ...; baseline: NAME=PATH`` for the session header."""
    if not session.runs and session.baseline is None:
        return None
    runs = ", ".join(f"{s.name}={s.location}" for s in session.runs) or "none"
    line = f"modelrules: runs: {runs}"
    if session.baseline is not None:
        line += f"; baseline: {session.baseline.name}={session.baseline.location}"
    return [line]


def _verdict(entry: dict[str, Any]) -> str:
    if entry.get("skipped"):
        return "skipped"
    return "TRIGGERED" if entry.get("triggered") else "ok"


def _first_step(entry: dict[str, Any]) -> str:
    ft = entry.get("first_trigger") or {}
    if not ft:
        return "-"
    text = str(ft.get("step"))
    if ft.get("mode") and ft.get("mode_step") is not None:
        text += f" ({ft['mode']} {ft['mode_step']})"
    return text


#: the most characters of a skipped verdict's reason shown in its row of the summary
REASON_WIDTH = 100


def _reason(entry: dict[str, Any]) -> str:
    """A skipped verdict's explanation on one line, cut to ``REASON_WIDTH`` characters."""
    text = " ".join(str(entry.get("explanation") or "").split())
    if len(text) > REASON_WIDTH:
        text = text[: REASON_WIDTH - 3].rstrip() + "..."
    return text or "-"


def _figure(entry: dict[str, Any]) -> str:
    fig = entry.get("figure")
    if fig is None:
        # a skipped verdict has no figure: its row says why nothing was judged instead
        return _reason(entry) if entry.get("skipped") else "-"
    text = f"{entry.get('figure_name') or 'figure'} = {fmt_number(fig)}"
    if entry.get("limit") is not None:
        text += f" (limit {fmt_number(entry['limit'])})"
    return text


def row(config: pytest.Config, entry: dict[str, Any]) -> list[str]:
    custom = config.hook.pytest_modelrules_summary_row(result=entry)
    if custom is not None:
        return [str(c) for c in custom]
    return [
        str(entry.get("name", "?")),
        str(entry.get("run_name", "")),
        _verdict(entry),
        _first_step(entry),
        _figure(entry),
        str(entry.get("nodeid", "")),
    ]


def table(rows: list[list[str]]) -> list[str]:
    """Rows aligned in columns under the header."""
    all_rows = [list(HEADER), *rows]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in all_rows) for i in range(len(HEADER))]
    lines = []
    for r in all_rows:
        cells = [c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join(cells).rstrip())
    return lines


def terminal_summary(
    terminalreporter: Any, session: ModelRulesSession, config: pytest.Config
) -> None:
    """``=== model rules ===``: every rule evaluated, then where the report files are."""
    results = session.verdicts()["results"]
    if not results and not session.messages:
        return
    tr = terminalreporter
    tr.write_sep("=", "model rules")
    if results:
        lines = table([row(config, e) for e in results])
        tr.write_line(lines[0], bold=True)
        for line, entry in zip(lines[1:], results):
            tr.write_line(line, yellow=bool(entry.get("triggered")))
        triggered = sum(1 for e in results if e.get("triggered"))
        runs = sorted({e.get("run_name", "") for e in results})
        tr.write_line(
            f"{len(results)} verdict(s) on {len(runs)} run(s): {triggered} triggered, "
            f"{len(results) - triggered} not"
        )
    for message in session.messages:
        tr.write_line(message)


def write_reports(session: ModelRulesSession) -> None:
    """verdicts.json, then (when its module and matplotlib import) report.html per run."""
    if session.report_dir is None:
        return
    path = session.write_verdicts()
    if path is not None:
        session.messages.append(f"model rules: verdicts written to {path}")
    if not session.runs:
        return
    if importlib.util.find_spec("matplotlib") is None:
        session.messages.append("model rules: report.html not written (matplotlib missing)")
        return
    try:
        found = importlib.util.find_spec("pytest_modelrules.report.html")
    except ModuleNotFoundError:
        found = None
    if found is None:
        session.messages.append(
            "model rules: report.html not written (pytest_modelrules.report.html missing)"
        )
        return
    try:
        from ..report import html

        if path is not None and hasattr(html, "write_report_from_verdicts"):
            written = html.write_report_from_verdicts(path, session.report_dir)
        else:  # one run: the page of that run
            spec = session.runs[0]
            baseline = session.open(session.baseline) if session.baseline else None
            results = [r for r in session.local_results if r.run_name == spec.name]
            written = html.write_report(
                session.open(spec), session.report_dir, baseline=baseline, results=results
            )
        session.messages.append(f"model rules: report written to {written}")
    except Exception as exc:  # the report must never change the verdicts
        text = f"model rules: report.html not written: {type(exc).__name__}: {exc}"
        session.messages.append(text)
        warnings.warn(ModelRulesReportWarning(text), stacklevel=1)
