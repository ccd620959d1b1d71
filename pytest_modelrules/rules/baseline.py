"""BaselineComparison: gate a merge on "nothing got worse than in the baseline run".

A regression is (a) a class whose recall (over the last evaluation pass) fell by more than
``recall_margin``, (b) a compared rule that triggers on this run but not on the baseline, or
(c) a compared rule whose figure (``RuleResult.figure``) moved the bad way by more than
``figure_margin`` times max(|baseline figure|, |limit|) (a relative margin: 0.1 = 10%).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..exceptions import MissingTensorError, RuleError, RuleParameterError
from ..modes import ModeKeys
from ._labels import with_note
from .base import BuiltinRule, Param, register
from .classification import (
    class_label,
    read_label_data,
    recall_by_phase,
    resolve_labels_predictions,
)
from .loss import fmt, phases
from .result import RuleResult


@register
class BaselineComparison(BuiltinRule):
    """No class's recall and no rule's figure worse than in ``baseline`` by more than a margin."""

    name = "baseline_comparison"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "baseline": Param(None, "any", "the baseline run (a Run or a path/URL)", optional=False),
        "recall_margin": Param(0.05, "float", "allowed drop of a class's recall"),
        "rules": Param(None, "str_list", "rules to compare (default: the default rule set)"),
        "figure_margin": Param(0.1, "float", "allowed relative worsening of a rule's figure"),
        "min_samples": Param(20, "int", "samples a class needs (in both runs) to be compared"),
        "mode": Param(ModeKeys.EVAL, "mode", "steps whose predictions give the recall"),
        "rule_parameters": Param(None, "any", "{rule name: {parameter: value}} for compared rules"),
        "labels_regex": Param(".*labels", "regex", "labels tensor (fallback: PyTorch's)"),
        "predictions_regex": Param(".*predictions", "regex", "predictions (fallback: logits)"),
    }

    def _validate(self) -> None:
        for p in ("recall_margin", "figure_margin"):
            v = getattr(self, p)
            if v is None or v < 0:
                raise self.param_error(p, f"must be >= 0, got {v}")
        if self.rule_parameters is not None and not isinstance(self.rule_parameters, dict):
            raise self.param_error("rule_parameters", "must be a dict {rule: {param: value}}")
        if self.rules:
            from .registry import rule_class

            for r in self.rules:
                try:
                    rule_class(r)  # unknown names fail here, with the list of rules
                except RuleParameterError as exc:
                    raise self.param_error("rules", f"names {exc}") from None

    def _rule_names(self) -> list[str]:
        from .registry import default_rules, rule_class

        names = self.rules if self.rules else default_rules()
        return [rule_class(n).name for n in names if rule_class(n).name != self.name]

    def _evaluate(self, run: Any) -> RuleResult:
        from ..store.run import open_run

        base = open_run(self.baseline)
        regressions: list[str] = []
        notes: list[str] = []
        evidence: dict[str, Any] = {"baseline": base.path}
        compared = 0

        # per-class recall
        left_out: list[str] = []
        recall = self._recalls(run, base, notes, left_out)
        if recall is not None:
            now, before, n_now, n_before = recall
            judged = (n_now >= self.min_samples) & (n_before >= self.min_samples)
            drop = np.where(judged, before - now, -np.inf)
            evidence["recall"] = now
            evidence["baseline_recall"] = before
            compared += int(judged.sum())
            for c in np.flatnonzero(drop > self.recall_margin + 1e-12):
                regressions.append(
                    f"class {class_label(run, int(c))} recall {fmt(100 * now[c])}% vs "
                    f"{fmt(100 * before[c])}% in the baseline (-{fmt(100 * drop[c])} points, "
                    f"margin {fmt(100 * self.recall_margin)})"
                )

        # rules
        from .registry import make_rule, rule_class

        params = self.rule_parameters or {}
        table: dict[str, Any] = {}
        for rname in self._rule_names():
            rule_params = params.get(rname, {})
            try:
                ours = make_rule(rname, **rule_params).evaluate(run)
                theirs = make_rule(rname, **rule_params).evaluate(base)
            except (MissingTensorError, RuleError) as exc:
                notes.append(f"{rname} ({exc})")
                continue
            if ours.skipped or theirs.skipped:
                which = (
                    "both runs"
                    if ours.skipped and theirs.skipped
                    else ("this run" if ours.skipped else "the baseline")
                )
                notes.append(f"{rname} (skipped on {which})")
                continue
            compared += 1
            # "change": how the figure moved, for the evidence table (regression, worse within
            # the margin, better, same; "changed" where the figures cannot be compared)
            row = table[rname] = {"figure": ours.figure, "baseline_figure": theirs.figure}
            if ours.triggered and not theirs.triggered:
                row["change"] = "regression"
                regressions.append(
                    f"{rname} triggers now but not in the baseline: {ours.summary()}"
                )
                continue
            cls = rule_class(rname)
            worse = _worse_by(cls, ours, theirs)
            if worse is None:
                row["change"] = "same" if ours.figure == theirs.figure else "changed"
                continue
            tolerance = self.figure_margin * max(
                abs(theirs.figure or 0.0), abs(ours.limit or 0.0), 1e-12
            )
            row["change"] = (
                "regression"
                if worse > tolerance
                else "worse, within margin"
                if worse > 0
                else "better"
                if worse < 0
                else "same"
            )
            if worse > tolerance:
                regressions.append(
                    f"{rname}: {ours.figure_name or 'figure'} {fmt(ours.figure)} vs "
                    f"{fmt(theirs.figure)} in the baseline (worse by {fmt(worse)}, margin "
                    f"{fmt(tolerance)}{'' if cls.higher_is_worse else ', lower is worse'})"
                )
        evidence["rules"] = table
        head = f"Compared with baseline {base.name!r}"
        if regressions:
            text = f"{head}: {len(regressions)} regression(s): " + "; ".join(regressions) + "."
        else:
            text = f"{head}: no class recall and no rule figure got worse beyond the margins."
        if notes:
            text += " Not compared: " + "; ".join(notes) + "."
        text = with_note(text, "; ".join(left_out))
        last = run.steps()
        trigger = [self.trigger_step(run, last[-1])] if regressions and last else []
        return self.make_result(
            bool(regressions),
            text,
            first_trigger=trigger[0] if trigger else None,
            triggers=trigger,
            figure=float(len(regressions)),
            figure_name="regressions",
            limit=0.0,
            evidence=evidence,
            steps_evaluated=compared,
            skipped=compared == 0,
        )

    def _recalls(self, run: Any, base: Any, notes: list[str], left_out: list[str]):
        """(recall now, recall before, samples now, samples before) per class, or None; the
        labels left out of each run's last pass go to ``left_out``."""
        mode = self.mode or ModeKeys.EVAL
        out = []
        for i, r in enumerate((run, base)):
            try:
                lname, pname = resolve_labels_predictions(
                    self, r, self.labels_regex, self.predictions_regex
                )
            except MissingTensorError as exc:
                notes.append(f"per-class recall ({exc})")
                return None
            data = read_label_data(r, lname, pname, mode, False)
            groups = recall_by_phase(r, data, mode, "last") if len(data.global_steps) else []
            if not groups:
                notes.append(f"per-class recall (run {r.name!r} has no {mode.name} steps)")
                return None
            out.append(groups[-1])
            note = data.left_out_note(phases(r, mode)[-1], f" in the last {mode.name} pass")
            if note:
                left_out.append(f"baseline {r.name!r}: {note}" if i else note)
        k = max(len(out[0][1]), len(out[1][1]))
        (_, c_now, n_now), (_, c_before, n_before) = [
            (e, np.pad(c, (0, k - len(c))), np.pad(n, (0, k - len(n)))) for e, c, n in out
        ]
        with np.errstate(divide="ignore", invalid="ignore"):
            now = np.where(n_now > 0, c_now / np.maximum(n_now, 1), 0.0)
            before = np.where(n_before > 0, c_before / np.maximum(n_before, 1), 0.0)
        return now, before, n_now, n_before


def _worse_by(cls: type[BuiltinRule], ours: RuleResult, theirs: RuleResult) -> float | None:
    """How much worse this run's figure is than the baseline's (positive = worse)."""
    if ours.figure is None or theirs.figure is None:
        return None
    a, b = float(ours.figure), float(theirs.figure)
    if not (np.isfinite(a) and np.isfinite(b)):
        return None
    return a - b if cls.higher_is_worse else b - a
