"""RuleResult: the one result type every rule returns (built-in, custom, or baseline)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class TriggerStep:
    """One step where a rule's condition held."""

    step: int  # global step
    mode: str | None = None  # "TRAIN", "EVAL", ... (None when the rule is not per mode)
    mode_step: int | None = None


@dataclass
class RuleResult:
    """What a rule found on a run.

    ``explanation`` is one paragraph in plain words with the numbers that decided the verdict,
    written for a person reading a CI log. ``figure``/``figure_name`` is the one number that
    sums the verdict up (e.g. the largest dead-unit percentage) and ``limit`` what it was
    compared with; the terminal summary and the baseline comparison use them. ``evidence``
    holds arrays for plots and for the text shown on failure (numpy arrays or JSON values).
    """

    rule: str  # class name, e.g. "DeadRelu"
    name: str  # snake_case name, e.g. "dead_relu"
    triggered: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    first_trigger: TriggerStep | None = None
    triggers: list[TriggerStep] = field(default_factory=list)
    figure: float | None = None
    figure_name: str = ""
    limit: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    steps_evaluated: int = 0
    run_name: str = ""
    run_path: str = ""
    duration_s: float = 0.0
    skipped: bool = False  # the run held nothing this rule could look at
    #: why the rule could not evaluate the run ("ClassAxisError: ..."; with skipped=True), where
    #: a check of many rules goes on without it (registry.evaluate_or_not_judged)
    error: str = ""
    evidence_text: str = ""  # pre-rendered text evidence for CI logs (filled by assertions)

    @property
    def passed(self) -> bool:
        return not self.triggered

    @property
    def first_step(self) -> int | None:
        """Global step of the first trigger, or None."""
        return self.first_trigger.step if self.first_trigger else None

    def __bool__(self) -> bool:  # `if result:` reads as "the rule triggered"
        return self.triggered

    def summary(self) -> str:
        """One line: rule, verdict, where, figure."""
        if self.error:
            return f"{self.name}: ERROR {self.error}"
        verdict = "TRIGGERED" if self.triggered else "ok"
        where = ""
        if self.first_trigger is not None:
            ft = self.first_trigger
            where = f" first at global step {ft.step}"
            if ft.mode and ft.mode_step is not None:
                where += f" ({ft.mode} step {ft.mode_step})"
        fig = ""
        if self.figure is not None:
            fig = f"; {self.figure_name or 'figure'} = {_fmt(self.figure)}"
            if self.limit is not None:
                fig += f" (limit {_fmt(self.limit)})"
        return f"{self.name}: {verdict}{where}{fig}"

    def to_dict(self, include_evidence: bool = True) -> dict[str, Any]:
        """A JSON-able dict (numpy arrays become lists)."""
        data = asdict(self)
        if not include_evidence:
            data.pop("evidence", None)
        return json.loads(json.dumps(data, default=_jsonable))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleResult:
        data = dict(data)
        ft = data.get("first_trigger")
        data["first_trigger"] = TriggerStep(**ft) if isinstance(ft, dict) else None
        data["triggers"] = [
            TriggerStep(**t) for t in data.get("triggers", []) if isinstance(t, dict)
        ]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "name") and hasattr(obj, "value"):  # enums
        return obj.name
    return str(obj)


def _fmt(x: float) -> str:
    if isinstance(x, (int, np.integer)) or (
        isinstance(x, float) and x.is_integer() and abs(x) < 1e12
    ):
        return str(int(x))
    return f"{x:.4g}"
