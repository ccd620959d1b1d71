"""Test items for rules declared in configuration: ``modelrules::class_imbalance[run-name]``.

They hang under one collector named ``modelrules`` (so ``-k "not modelrules"`` leaves them
out) and show the rule's message on failure, never a Python traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .config_rules import RuleSpec
from .options import NO_BASELINE_REASON, NO_RUN_REASON, RunSpec
from .session import get_session

COLLECTOR_NAME = "modelrules"


def needs_baseline(rule: str, params: dict[str, Any]) -> bool:
    """The rule compares with a baseline run and none was passed in its parameters."""
    if "baseline" in params:
        return False
    if rule == "baseline_comparison":
        return True
    try:
        from ..rules.base import registry

        cls = registry().get(rule)
    except Exception:
        return False
    return cls is not None and "baseline" in getattr(cls, "params", {})


def _skip_here(reason: str) -> None:
    """Skip, reported at the item's location (the config file) rather than this module's."""
    try:
        raise pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # a pytest without the keyword
        pytest.skip(reason)


class ModelRulesCollector(pytest.Collector):
    """The parent of the config-declared rule items (collection happens in the plugin)."""

    def collect(self) -> list[pytest.Item]:  # items are made by :func:`make_items`
        return []


class RuleItem(pytest.Item):
    """One declared rule against one run."""

    def __init__(self, *, spec: RuleSpec, run_spec: RunSpec | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.run_spec = run_spec

    def setup(self) -> None:
        session = get_session(self.config)
        if self.run_spec is None:
            _skip_here(NO_RUN_REASON)
        if needs_baseline(self.spec.rule, self.spec.params) and session.baseline is None:
            _skip_here(NO_BASELINE_REASON)

    def runtest(self) -> None:
        __tracebackhide__ = True
        from ..assertions import assert_rule

        session = get_session(self.config)
        assert self.run_spec is not None
        run = session.open(self.run_spec)
        params = dict(self.spec.params)
        if needs_baseline(self.spec.rule, params):
            params["baseline"] = session.open_baseline()
        assert_rule(run, self.spec.rule, **params)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from ..assertions import ModelRuleFailure
        from ..exceptions import ModelRulesError

        if isinstance(excinfo.value, (ModelRuleFailure, ModelRulesError)):
            text = str(excinfo.value)
            if self.spec.source and not isinstance(excinfo.value, ModelRuleFailure):
                text = f"{type(excinfo.value).__name__}: {text}\n(declared in {self.spec.source})"
            return text
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        """Where the rule was declared: pyproject.toml, or the ini file for its lines (skips
        are reported there)."""
        run = f" on {self.run_spec.name}" if self.run_spec else ""
        path, inipath = self.path, self.config.inipath
        if inipath is not None and self.spec.source.startswith(f"{inipath} model_rules line"):
            path = Path(inipath)
        return path, 0, f"model rule {self.spec.rule}{run} ({self.spec.source})"


def only_node_ids(config: pytest.Config) -> bool:
    """The user asked for given tests (``path::name``): declared rules stay out."""
    args = config.args
    return bool(args) and all("::" in str(a) for a in args)


def add_declared_rules(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Append an item per rule declared in pyproject.toml / the ini and per run."""
    from .config_rules import pyproject_path

    specs = get_session(config).declared_rules()
    if not specs or only_node_ids(config):
        return
    source = pyproject_path(config) or config.inipath or config.rootpath
    made = make_items(session, specs, get_session(config).runs, Path(source))
    items.extend(made)
    # reported as collected, as pytest reports a module's items: the terminal's "collected N
    # items / M deselected / K selected" then counts them (it counted the Python tests only,
    # and `-k modelrules` read "0 selected", `-k "dead_relu and bad"` "-5 selected")
    if made:
        config.hook.pytest_collectreport(
            report=pytest.CollectReport(COLLECTOR_NAME, "passed", None, list(made))
        )


def make_items(
    session: pytest.Session, specs: list[RuleSpec], runs: list[RunSpec], source: Path
) -> list[RuleItem]:
    """One item per declared rule and run (one skipped item per rule when no run is given)."""
    from ..assertions import ModelRuleFailure

    collector = ModelRulesCollector.from_parent(
        session, name=COLLECTOR_NAME, nodeid=COLLECTOR_NAME, path=source
    )
    items: list[RuleItem] = []
    used: dict[str, int] = {}
    for spec in specs:
        base = spec.test_id
        used[base] = used.get(base, 0) + 1
        if used[base] > 1:
            base = f"{base}-{used[base]}"
        for run in runs or [None]:
            name = f"{base}[{run.name}]" if run is not None else base
            # the id given whole, as a string: pytest 9 parses it as it parses the ids it reads
            # back from its cache ("rule[run]": name and parameter), so that --lf and
            # --deselect match these items (an id derived from the parent would take the
            # brackets for part of the name and match nothing)
            item = RuleItem.from_parent(
                collector,
                name=name,
                nodeid=f"{COLLECTOR_NAME}::{name}",
                spec=spec,
                run_spec=run,
            )
            if spec.xfail:
                item.add_marker(
                    pytest.mark.xfail(
                        reason=spec.xfail, strict=spec.strict, raises=ModelRuleFailure
                    )
                )
            items.append(item)
    return items
