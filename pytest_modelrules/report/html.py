"""The HTML report: one self-contained page (PNG images embedded as base64, inline CSS, no
network) with the rules table at the top, each rule linking to the plot that shows its
evidence (anchors ``#rule-<snake_name>``), then the plots.

:func:`write_report` draws one run (optionally against a baseline) and evaluates the default
rules unless results are given; :func:`write_report_from_verdicts` draws the runs of the
pytest plugin's ``verdicts.json``, one section per run.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rules.result import RuleResult
from .mapping import (
    PLOTS,
    REPORT_FILE,
    RULE_PLOTS,
    anchor_id,
    evidence_anchor,
    evidence_plots,
    run_slug,
    snake_name,
)

__all__ = [
    "evaluate_rules",
    "evidence_anchor",
    "write_report",
    "write_report_from_verdicts",
]

VERDICTS_VERSION = 1


# -- rule evaluation ----------------------------------------------------------------------------


@dataclass
class _Row:
    """One line of the rules table."""

    name: str
    rule: str
    verdict: str  # "TRIGGERED", "ok", "skipped", "error"
    first_step: str = ""
    figure: str = ""
    explanation: str = ""
    nodeid: str = ""
    result: RuleResult | None = None


def _as_result(item: RuleResult | dict[str, Any]) -> RuleResult:
    return item if isinstance(item, RuleResult) else RuleResult.from_dict(item)


def _default_rule_set(run: Any) -> list[Any]:
    """The rules to run when none are given: the default profile, as (name, params) pairs
    (the same set ``modelrules check`` evaluates; rules/profiles.py)."""
    from ..rules.registry import default_profile

    return list(default_profile().items())


def _evaluate_one(run: Any, item: Any) -> RuleResult:
    """Evaluate a rule given as a name, (name, params), a rule class or a rule object."""
    if isinstance(item, RuleResult):
        return item
    if isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2):
        name, params = (item, {}) if isinstance(item, str) else item
        if isinstance(params, type) or hasattr(params, "evaluate"):  # {name: class} items
            return _evaluate_one(run, params)
        try:
            from ..rules.registry import evaluate
        except ImportError:
            from ..rules.base import registry

            return registry()[snake_name(name)](**dict(params or {})).evaluate(run)
        return evaluate(run, name, **dict(params or {}))
    if isinstance(item, type):
        item = item()
    if hasattr(item, "evaluate"):
        return item.evaluate(run)
    raise TypeError(f"cannot evaluate {item!r}: expected a rule name, class or object")


def _item_name(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, tuple) and item:
        return str(item[0])
    return str(getattr(item, "name", "") or getattr(item, "__name__", "") or type(item).__name__)


def evaluate_rules(run: Any, rules: Iterable[Any] | None = None) -> list[RuleResult | _Row]:
    """Results of ``rules`` (names, (name, params), classes or objects; the default rules
    when None) on ``run``; a rule that fails becomes an "error" row instead of stopping."""
    try:
        items = list(rules) if rules is not None else _default_rule_set(run)
    except Exception as exc:  # no registry yet, or it failed: the page still shows the plots
        return [_Row("rules", "rules", "error", explanation=f"could not list the rules: {exc}")]
    out: list[RuleResult | _Row] = []
    for item in items:
        try:
            out.append(_evaluate_one(run, item))
        except Exception as exc:
            from ..exceptions import MissingTensorError

            name = _item_name(item)
            # a rule whose tensors the run does not hold does not apply: skipped, not broken
            verdict = "skipped" if isinstance(exc, MissingTensorError) else "error"
            why = str(exc) if verdict == "skipped" else f"{type(exc).__name__}: {exc}"
            out.append(_Row(snake_name(name), name, verdict, explanation=why))
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _row_of(r: RuleResult | _Row, nodeid: str = "") -> _Row:
    if isinstance(r, _Row):
        return r
    verdict = "TRIGGERED" if r.triggered else ("skipped" if r.skipped else "ok")
    verdict = "error" if getattr(r, "error", "") else verdict
    first = ""
    if r.first_trigger is not None:
        ft = r.first_trigger
        first = f"{ft.step}"
        if ft.mode and ft.mode_step is not None:
            first += f" ({ft.mode} step {ft.mode_step})"
    figure = ""
    if r.figure is not None:
        figure = f"{r.figure_name or 'figure'} = {_fmt(r.figure)}"
        if r.limit is not None:
            figure += f" (limit {_fmt(r.limit)})"
    return _Row(
        snake_name(r.name or r.rule),
        r.rule or r.name,
        verdict,
        first,
        figure,
        r.explanation,
        nodeid,
        r,
    )


_VERDICT_ORDER = {"TRIGGERED": 0, "error": 1, "ok": 2, "skipped": 3}


def _ordered(rows: list[_Row]) -> list[_Row]:
    """Failures first (triggered, then rules that could not run), each group in given order."""
    return sorted(rows, key=lambda r: _VERDICT_ORDER.get(r.verdict, 9))


# -- plots --------------------------------------------------------------------------------------


@dataclass
class _Plot:
    key: str
    png: bytes | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)  # what the plot left out (labels outside)
    rules: list[_Row] = field(default_factory=list)


def _draw(key: str, run: Any, baseline: Any, results: list[RuleResult]) -> Any:
    from . import plots

    if key == "loss":
        return plots.plot_loss(run, baseline=baseline, results=results)
    if key == "label_counts":
        return plots.plot_label_counts(run, baseline=baseline)
    if key == "confusion_matrix":
        return plots.plot_confusion_matrix(run)
    if key == "misclassified":
        return plots.plot_misclassified(run)
    if key == "dead_relu":
        return plots.plot_dead_relu(run, baseline=baseline, results=results)
    if key == "gradient_norms":
        return plots.plot_gradient_norms(run, baseline=baseline, results=results)
    raise KeyError(key)


def _plot_keys(plots: Iterable[str] | None) -> list[str]:
    if plots is None:
        return list(PLOTS)
    keys = list(plots)
    unknown = sorted(set(keys) - set(PLOTS))
    if unknown:
        raise ValueError(
            f"unknown plot(s) {', '.join(unknown)}; the report draws {', '.join(PLOTS)}"
        )
    return keys


def _render_plots(
    run: Any,
    baseline: Any,
    results: list[RuleResult],
    png_dir: Path | None,
    keys: list[str],
) -> dict[str, _Plot]:
    from .plots import figure_notes, figure_png

    out: dict[str, _Plot] = {}
    for key in PLOTS:
        plot = _Plot(key)
        if key not in keys:
            plot.error = "left out of this report (plots=...)"
        elif run is None:
            plot.error = "the run could not be opened"
        else:
            try:
                fig = _draw(key, run, baseline, results)
                plot.png = figure_png(fig)
                plot.notes = figure_notes(fig)
                fig.clear()
            except Exception as exc:  # the run lacks the tensors: say so, keep the page
                plot.error = f"{type(exc).__name__}: {exc}"
        if plot.png is not None and png_dir is not None:
            png_dir.mkdir(parents=True, exist_ok=True)
            (png_dir / PLOTS[key].filename).write_bytes(plot.png)
        out[key] = plot
    return out


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto;
       max-width: 1200px; padding: 0 1em; color: #1b1f24; }
h1 { font-size: 1.5em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h3 { margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .35em .5em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.v-TRIGGERED { background: #ffebe9; color: #a40e26; font-weight: 600; }
.v-ok { background: #dafbe1; color: #116329; }
.v-skipped { background: #f6f8fa; color: #57606a; }
.v-error { background: #fff8c5; color: #7d4e00; font-weight: 600; }
.meta { color: #57606a; font-size: .9em; }
.plot img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { background: #f6f8fa; border-left: 4px solid #d0d7de; padding: .4em .8em; }
.rules-here { font-size: .9em; } .rules-here li { margin: .2em 0; }
code { font-size: .9em; }
pre { font-size: .85em; white-space: pre-wrap; margin: .3em 0; }
summary { cursor: pointer; color: #57606a; font-size: .85em; }
"""

# Marks <body> once every image decoded: what the headless-browser test reads back.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
  document.body.setAttribute("data-images-ok", ok === imgs.length ? "true" : "false");
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _rules_table(rows: list[_Row], run_name: str, with_nodeid: bool) -> str:
    if not rows:
        return "<p class='note'>No rule results.</p>"
    head = "<tr><th>rule</th><th>verdict</th><th>first step</th><th>figure</th>"
    head += "<th>explanation</th>" + ("<th>test</th>" if with_nodeid else "") + "</tr>"
    lines = [f"<table class='rules'>\n{head}"]
    for row in rows:
        plots = evidence_plots(row.name)
        target = anchor_id(row.name, run_name)
        shows = ", ".join(PLOTS[k].title.lower() for k in plots) or "details"
        cells = [
            f"<td><a href='#{_e(target)}' title='{_e(shows)}'>{_e(row.name)}</a></td>",
            f"<td class='v-{_e(row.verdict)}'>{_e(row.verdict)}</td>",
            f"<td>{_e(row.first_step)}</td>",
            f"<td>{_e(row.figure)}</td>",
            f"<td>{_e(row.explanation)}{_evidence_details(row.result)}</td>",
        ]
        if with_nodeid:
            cells.append(f"<td><code>{_e(row.nodeid)}</code></td>")
        lines.append(f"<tr data-rule='{_e(row.name)}'>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _anchors(names: Iterable[str], run_name: str, used: set[str]) -> str:
    """Empty spans carrying the ids that rules link to (plain ids once per page)."""
    spans = []
    for name in names:
        for ident in (anchor_id(name, run_name), anchor_id(name)):
            if ident not in used:
                used.add(ident)
                spans.append(f"<span id='{_e(ident)}'></span>")
    return "".join(spans)


def _section(
    run_name: str,
    run: Any,
    rows: list[_Row],
    plots: dict[str, _Plot],
    used: set[str],
    *,
    heading: str,
    info: str,
    with_nodeid: bool,
) -> str:
    slug = run_slug(run_name)
    parts = [f"<section class='run' id='run-{_e(slug)}'>", f"<h2>{_e(heading)}</h2>", info]
    parts.append(f"<h3 id='rules-{_e(slug)}'>Rules</h3>")
    parts.append(_rules_table(rows, run_name, with_nodeid))
    # every plot holds the anchors of the rules it is the first evidence of: those that ran
    # and every known rule, so that links from assertion messages always land somewhere
    by_plot: dict[str, list[str]] = {k: [] for k in PLOTS}
    for name, keys in RULE_PLOTS.items():
        by_plot[keys[0]].append(name)
    homeless: list[_Row] = []
    for row in rows:
        keys = evidence_plots(row.name)
        if keys:
            if row.name not in by_plot[keys[0]]:
                by_plot[keys[0]].append(row.name)
            for k in keys:
                plots[k].rules.append(row)
        else:
            homeless.append(row)
    for key, spec in PLOTS.items():
        plot = plots[key]
        parts.append(f"<div class='plot' id='plot-{_e(key)}--{_e(slug)}'>")
        parts.append(_anchors(by_plot[key], run_name, used))
        parts.append(f"<h3>{_e(spec.title)}</h3>")
        if plot.rules:
            items = "".join(
                f"<li><a href='#{_e(anchor_id(r.name, run_name))}'>{_e(r.name)}</a>: "
                f"<span class='v-{_e(r.verdict)}'>{_e(r.verdict)}</span> {_e(r.explanation)}</li>"
                for r in plot.rules
            )
            parts.append(f"<ul class='rules-here'>{items}</ul>")
        parts.extend(f"<p class='note left-out'>{_e(note)}</p>" for note in plot.notes)
        if plot.png is not None:
            b64 = base64.b64encode(plot.png).decode("ascii")
            alt = f"{spec.title} of {run_name}: {spec.what}"
            parts.append(
                f"<img src='data:image/png;base64,{b64}' alt='{_e(alt)}' data-plot='{_e(key)}'>"
            )
        else:
            parts.append(f"<p class='note'>Not drawn: {_e(plot.error)}</p>")
        parts.append("</div>")
    if homeless:
        parts.append("<div class='plot'><h3>Other rules</h3><ul class='rules-here'>")
        for row in homeless:
            parts.append(
                f"<li>{_anchors([row.name], run_name, used)}<b>{_e(row.name)}</b>: "
                f"<span class='v-{_e(row.verdict)}'>{_e(row.verdict)}</span> "
                f"{_e(row.explanation)}{_evidence_summary(row.result)}</li>"
            )
        parts.append("</ul></div>")
    parts.append("</section>")
    return "\n".join(parts)


def _evidence_details(result: RuleResult | None) -> str:
    """The text evidence shown on failure in CI logs, folded under the explanation."""
    if result is None or not result.evidence_text:
        return ""
    return f"<details><summary>evidence</summary><pre>{_e(result.evidence_text)}</pre></details>"


def _evidence_summary(result: RuleResult | None) -> str:
    """Small scalar evidence values of a rule without a plot, as a line of text."""
    if result is None:
        return ""
    bits = []
    for k, v in (result.evidence or {}).items():
        if isinstance(v, (int, float, str, bool)) and len(bits) < 8:
            bits.append(f"{k} = {_fmt(v)}")
    return f"<br><span class='meta'>{_e('; '.join(bits))}</span>" if bits else ""


def _run_info(run: Any, baseline: Any = None, error: str = "", path: str = "") -> str:
    if run is None:
        return (
            f"<p class='note'>Run at <code>{_e(path)}</code> could not be opened: {_e(error)}</p>"
        )
    try:
        steps = len(run.steps())
        modes = ", ".join(f"{m.name} {len(run.steps(m))}" for m in run.modes())
        ended = "ended" if run.has_ended else "not ended (still running or killed)"
        text = (
            f"<p class='meta'>path <code>{_e(run.path)}</code>; layout {_e(run.layout)}; "
            f"{steps} saved steps ({_e(modes)}); {_e(ended)}"
        )
    except Exception as exc:  # a run that reads badly still gets its section
        text = f"<p class='meta'>path <code>{_e(getattr(run, 'path', path))}</code>; {_e(exc)}"
    if baseline is not None:
        text += f"; baseline <b>{_e(baseline.name)}</b> (<code>{_e(baseline.path)}</code>)"
    return text + "</p>"


def _header(title: str, rows: list[_Row]) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_trig = sum(r.verdict == "TRIGGERED" for r in rows)
    n_err = sum(r.verdict == "error" for r in rows)
    summary = f"{len(rows)} rule results, {n_trig} triggered"
    if n_err:
        summary += f", {n_err} could not be evaluated"
    return f"<h1>{_e(title)}</h1>\n<p class='meta'>{_e(summary)}; generated {_e(now)}</p>"


def _write_page(out_dir: str | os.PathLike, title: str, body: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = out / REPORT_FILE
    page.write_text(_page(title, body), encoding="utf-8")
    return page


# -- public API ---------------------------------------------------------------------------------


def write_report(
    run: Any,
    out_dir: str | os.PathLike,
    *,
    baseline: Any = None,
    results: Sequence[RuleResult | dict[str, Any]] | None = None,
    rules: Iterable[Any] | None = None,
    plots: Iterable[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (and each plot as ``out_dir/<plot>.png``) for one run,
    optionally against a baseline; ``results`` default to evaluating ``rules`` (the default
    rules when None); ``plots`` picks plot keys (all of :data:`PLOTS` by default). Returns
    the page's path."""
    from ..store.run import open_run

    keys = _plot_keys(plots)
    run = open_run(run)
    base = open_run(baseline) if baseline is not None else None
    if results is None:
        found = evaluate_rules(run, rules)
    else:
        found = [_as_result(r) for r in results]
    rows = _ordered([_row_of(r) for r in found])
    real = [r for r in found if isinstance(r, RuleResult)]
    drawn = _render_plots(run, base, real, Path(out_dir), keys)
    title = f"pytest-modelrules report: {run.name}"
    used: set[str] = set()
    body = (
        _header(title, rows)
        + "\n"
        + _section(
            run.name,
            run,
            rows,
            drawn,
            used,
            heading=f"Run {run.name}",
            info=_run_info(run, base),
            with_nodeid=False,
        )
    )
    return _write_page(out_dir, title, body)


def _same_path(a: str, b: str) -> bool:
    def norm(p: str) -> str:
        return p.rstrip("/\\") if "://" in p else os.path.normpath(os.path.abspath(p))

    return bool(a) and bool(b) and norm(a) == norm(b)


def write_report_from_verdicts(
    verdicts_json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    plots: Iterable[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` from the plugin's verdicts.json: one section per run
    (its rules with the tests that checked them, then its plots, PNGs in
    ``out_dir/<run>/``), the session's baseline drawn beside each run; results of runs not
    listed get a table of their own."""
    from ..store.run import open_run

    keys = _plot_keys(plots)
    src = Path(verdicts_json_path)
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{src}: cannot read the verdicts ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != VERDICTS_VERSION:
        raise ValueError(
            f"{src}: expected a verdicts file of version {VERDICTS_VERSION} "
            f"(got version {data.get('version') if isinstance(data, dict) else None!r})"
        )
    runs: dict[str, str] = {str(k): str(v) for k, v in (data.get("runs") or {}).items()}
    baselines: dict[str, str] = {str(k): str(v) for k, v in (data.get("baselines") or {}).items()}
    items = [i for i in data.get("results") or [] if isinstance(i, dict)]
    # a baseline that rules were evaluated on gets a section of its own
    for bname, bpath in baselines.items():
        if bname not in runs and any(i.get("run_name") == bname for i in items):
            runs[bname] = bpath
    grouped: dict[str, list[_Row]] = {name: [] for name in runs}
    orphans: list[_Row] = []
    for item in items:
        result = RuleResult.from_dict(item)
        row = _row_of(result, str(item.get("nodeid", "")))  # ordered below
        if result.run_name in grouped:
            grouped[result.run_name].append(row)
            continue
        match = next((n for n, p in runs.items() if _same_path(p, result.run_path)), None)
        (grouped[match] if match is not None else orphans).append(row)
    grouped = {name: _ordered(rows) for name, rows in grouped.items()}
    orphans = _ordered(orphans)
    all_rows = [r for rows in grouped.values() for r in rows] + orphans
    title = "pytest-modelrules report"
    parts = [_header(title, all_rows)]
    if runs:
        nav = "".join(
            f"<li><a href='#run-{_e(run_slug(n))}'>{_e(n)}</a>: "
            f"{sum(r.verdict == 'TRIGGERED' for r in grouped[n])} of {len(grouped[n])} "
            f"rules triggered</li>"
            for n in runs
        )
        parts.append(f"<ul class='runs'>{nav}</ul>")
    opened: dict[str, tuple[Any, str]] = {}

    def load(name: str, path: str) -> tuple[Any, str]:
        if name not in opened:
            try:
                opened[name] = (open_run(path, name=name), "")
            except Exception as exc:  # the section still shows the verdicts
                opened[name] = (None, f"{type(exc).__name__}: {exc}")
        return opened[name]

    # the session's baseline (one per session) is drawn beside every other run
    bname, bpath = next(iter(baselines.items()), (None, None))
    used: set[str] = set()
    out = Path(out_dir)
    for name, path in runs.items():
        rows = grouped[name]
        run, error = load(name, path)
        base = None
        if bname is not None and bname != name:
            base = load(bname, bpath or "")[0]
        results = [r.result for r in rows if r.result is not None]
        drawn = _render_plots(run, base, results, out / run_slug(name) if run else None, keys)
        parts.append(
            _section(
                name,
                run,
                rows,
                drawn,
                used,
                heading=f"Run {name}",
                info=_run_info(run, base, error=error, path=path),
                with_nodeid=True,
            )
        )
    if orphans:
        parts.append("<section class='run' id='run-unattributed'><h2>Results of other runs</h2>")
        parts.append(_rules_table(orphans, "", True))
        parts.append("</section>")
    return _write_page(out_dir, title, "\n".join(parts))
