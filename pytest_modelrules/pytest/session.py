"""The plugin's per-process state, made at configure time (as pytest-benchmark's session).

It opens each run once, caches every rule result per (run, rule, parameters) so that a rule
is evaluated at most once per process (per xdist worker), and keeps what each test evaluated
until its report carries it to the controller (``report.modelrules``, which pytest-xdist
serialises with the report). The assertion helpers find the active session through
:func:`active_session`, so that they cache and record when called under pytest and work
plainly when called from a notebook.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import config_rules, options
from .options import RunSpec

if TYPE_CHECKING:
    from ..rules.result import RuleResult
    from ..store.run import Run

SESSION_KEY = pytest.StashKey["ModelRulesSession"]()
REPORT_ATTR = "modelrules"  # the attribute of TestReport that carries the verdicts
PROPERTY_PREFIX = "modelrules"

_ACTIVE: list[ModelRulesSession] = []  # a stack: pytester runs pytest inside pytest


def active_session() -> ModelRulesSession | None:
    """The session of the innermost running pytest with the plugin, or None outside pytest."""
    return _ACTIVE[-1] if _ACTIVE else None


def get_session(config: pytest.Config) -> ModelRulesSession:
    return config.stash[SESSION_KEY]


def _param_key(value: Any) -> Any:
    """A JSON-able stand-in for a parameter value: runs by their location, modes by name."""
    path = getattr(value, "path", None)
    if path is not None and hasattr(value, "tensor_names"):
        return f"<run {path}>"
    name = getattr(value, "name", None)
    if name is not None and hasattr(value, "value"):
        return name
    if isinstance(value, (list, tuple)):
        return [_param_key(v) for v in value]
    return str(value)


def cache_key(run: Any, rule: str, params: dict[str, Any]) -> str:
    """(run location, run name, rule, parameters) as one string."""
    frozen = json.dumps(params, sort_keys=True, default=_param_key)
    return f"{getattr(run, 'path', run)}|{getattr(run, 'name', '')}|{rule}|{frozen}"


def normalized_params(rule: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters as the rule reads them (``"10"`` and ``10`` alike), for the cache key;
    the given ones when the rule is not a registered built-in."""
    try:
        from ..rules.base import registry

        cls = registry().get(rule)
        if cls is not None:
            return dict(cls(**params).parameters)
    except Exception:  # a bad parameter: evaluation raises the rule's own error
        pass
    return params


def evaluate_rule(run: Any, rule: str, params: dict[str, Any]) -> RuleResult:
    """Evaluate a built-in rule through the rules' registry (``rules.registry.evaluate``)."""
    try:
        from ..rules.registry import evaluate
    except ModuleNotFoundError as exc:
        if exc.name != "pytest_modelrules.rules.registry":
            raise
        from ..rules.base import registry  # the registry module has not landed: same thing

        rules = registry()
        if rule not in rules:
            from ..exceptions import RuleError

            raise RuleError(
                f"unknown rule {rule!r}; available: {', '.join(sorted(rules)) or 'none'}"
            ) from None
        return rules[rule](**params).evaluate(run)
    return evaluate(run, rule, **params)


class ModelRulesSession:
    """State of the plugin in one pytest process (the controller or one xdist worker)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.runs: list[RunSpec] = options.run_specs(config)
        self.baseline: RunSpec | None = options.baseline_spec(config)
        self.report_dir: Path | None = options.report_dir(config)
        options.cache_dir(config)  # its type checked now (trained_run reads it later)
        workerinput = getattr(config, "workerinput", None)
        self.worker: str = workerinput["workerid"] if workerinput else "main"
        self.is_controller = workerinput is None
        self._declared: list[config_rules.RuleSpec] | None = None
        if self.is_controller:  # a bad declaration is a usage error here, before xdist's
            self.declared_rules()  # workers would meet it at collection
        self._opened: dict[tuple[str, str], Run] = {}
        self._cache: dict[str, RuleResult] = {}
        self.evaluations = 0  # rule evaluations really done in this process
        self.current_item: pytest.Item | None = None
        self._pending: dict[str, list[dict[str, Any]]] = {}
        #: every verdict of the session (filled from reports: on the controller, all workers')
        self.results: list[dict[str, Any]] = []
        #: full results evaluated here (with evidence), for the HTML report
        self.local_results: list[RuleResult] = []
        self.messages: list[str] = []  # shown at the end of the terminal summary

    def declared_rules(self) -> list[config_rules.RuleSpec]:
        """The rules declared in pyproject.toml / the ini (config_rules), read once."""
        if self._declared is None:
            self._declared = config_rules.declared_rules(self.config)
        return self._declared

    # -- runs ----------------------------------------------------------------------------------

    def open(self, spec: RunSpec, role: str = "--model-run") -> Run:
        """The run of a spec, opened once per process (a plugin hook may provide it). A run
        that cannot be opened (missing, not a run, damaged) fails the test that needs it
        with the reader's one-line message, naming the option it came from, and no frames
        of the plugin's."""
        __tracebackhide__ = True
        key = (spec.name, spec.location)
        run = self._opened.get(key)
        if run is None:
            from ..exceptions import RunError

            try:
                run = self.config.hook.pytest_modelrules_open_run(
                    config=self.config, location=spec.location, name=spec.name
                )
                if run is None:
                    from ..store.run import open_run

                    run = open_run(spec.location, name=spec.name)
            except RunError as exc:
                failed = f"{role} {spec.name} ({spec.location}): {type(exc).__name__}: {exc}"
            else:
                failed = ""
            if failed:  # raised outside the except: no "during handling" chain in the log
                pytest.fail(failed, pytrace=False)
            self._warn_not_ended(spec, role, run)
            self._opened[key] = run
        return run

    @staticmethod
    def _warn_not_ended(spec: RunSpec, role: str, run: Run) -> None:
        """One RunNotEndedWarning per process for a run that has not ended; where warnings
        are errors (``-W error::pytest_modelrules.RunNotEndedWarning``), the test that
        opens it fails with the warning's one line instead of a traceback."""
        __tracebackhide__ = True
        from ..exceptions import RunNotEndedWarning
        from ..store.summary import not_ended_note

        note = not_ended_note(run)
        if note is None:
            return
        text = f"{role} {spec.name} ({spec.location}): {note}"
        try:
            warnings.warn(RunNotEndedWarning(text), stacklevel=2)
        except RunNotEndedWarning:
            failed = f"RunNotEndedWarning: {text}"
        else:
            return
        pytest.fail(failed, pytrace=False)

    def open_baseline(self) -> Run:
        __tracebackhide__ = True
        if self.baseline is None:
            pytest.skip(options.NO_BASELINE_REASON)
        return self.open(self.baseline, role="--model-run-baseline")

    # -- rules ---------------------------------------------------------------------------------

    def evaluate(self, run: Any, rule: str, params: dict[str, Any]) -> tuple[RuleResult, bool]:
        """(result, cached): a rule's result on a run, evaluated once per parameters."""
        key = cache_key(run, rule, normalized_params(rule, params))
        found = self._cache.get(key)
        if found is not None:
            return found, True
        result = evaluate_rule(run, rule, params)
        self.evaluations += 1
        self._cache[key] = result
        self.local_results.append(result)
        return result, False

    def report_link(self, result: RuleResult) -> str | None:
        """Where the HTML report shows this rule on this run: ``DIR/report.html#rule-...``."""
        if self.report_dir is None:
            return None
        try:
            from ..report.mapping import evidence_anchor

            anchor = evidence_anchor(result.name, result.run_name or None)
        except ImportError:  # the report package is optional
            anchor = f"#rule-{result.name}"
        return f"{self.report_dir / 'report.html'}{anchor}"

    def record(self, result: RuleResult, *, cached: bool) -> None:
        """Note a verdict for the running test: JUnit properties, the hook, the report."""
        item = self.current_item
        nodeid = item.nodeid if item is not None else ""
        entry = result.to_dict(include_evidence=False)
        entry.update(nodeid=nodeid, worker=self.worker, cached=cached)
        self._pending.setdefault(nodeid, []).append(entry)
        if item is not None:
            prefix = f"{PROPERTY_PREFIX}.{result.name}"
            item.user_properties.extend(
                [
                    (f"{prefix}.triggered", "true" if result.triggered else "false"),
                    (
                        f"{prefix}.first_step",
                        "" if result.first_step is None else result.first_step,
                    ),
                    (f"{prefix}.figure", "" if result.figure is None else result.figure),
                    (f"{prefix}.run", result.run_name),
                ]
            )
        self.config.hook.pytest_modelrules_result(result=result, item=item)

    def drain(self, nodeid: str) -> list[dict[str, Any]]:
        """The verdicts noted for a test since its last report phase."""
        return self._pending.pop(nodeid, [])

    def collect(self, report: pytest.TestReport) -> None:
        """Keep the verdicts a report carries (on the controller: from every worker)."""
        entries = getattr(report, REPORT_ATTR, None)
        if entries:
            self.results.extend(entries)

    # -- output --------------------------------------------------------------------------------

    def verdicts(self) -> dict[str, Any]:
        """What DIR/verdicts.json holds (version 1)."""
        leftover = [e for entries in self._pending.values() for e in entries]
        return {
            "version": 1,
            "runs": {s.name: s.location for s in self.runs},
            "baselines": {self.baseline.name: self.baseline.location} if self.baseline else {},
            "results": self.results + leftover,
        }

    def write_verdicts(self) -> Path | None:
        if self.report_dir is None:
            return None
        data = self.verdicts()
        self.config.hook.pytest_modelrules_update_json(config=self.config, output_json=data)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        path = self.report_dir / "verdicts.json"
        tmp = path.with_name(f".verdicts.{os.getpid()}.tmp")
        from ..strict_json import dumps  # NaN and infinities as null: strict JSON

        tmp.write_text(dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        return path


def push(session: ModelRulesSession) -> None:
    _ACTIVE.append(session)


def pop(session: ModelRulesSession) -> None:
    if session in _ACTIVE:
        _ACTIVE.remove(session)
