"""Rules about whole runs: SimilarAcrossRuns (two runs that should match) and
StalledTrainingRule (no new step for too long)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar

import numpy as np

from . import _select as sel
from .base import BuiltinRule, Param, register
from .result import RuleResult

#: tolerances of SimilarAcrossRuns' comparison (numpy.allclose's defaults; NaN equals NaN)
SIMILAR_RTOL = 1e-5
SIMILAR_ATOL = 1e-8


def _other_runs(value: Any) -> list[Any]:
    """other_trials as a list of runs or paths: a Run, a path, a list, or a JSON list string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return list(json.loads(text))
        return [text]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, os.PathLike) or hasattr(value, "tensor_names"):
        return [value]
    raise ValueError(f"{value!r} is not a run, a path or a list of them")


def _differs(a: Any, ia: np.ndarray, b: Any, ib: np.ndarray) -> np.ndarray:
    """Per common step (indices ``ia`` into Series ``a``, ``ib`` into ``b``): the shapes
    differ or the values are not allclose (vectorised when both series are uniform)."""
    if a.uniform and b.uniform and len(ia):
        x, y = a.stack()[ia], b.stack()[ib]
        if x.shape == y.shape:
            x, y = x.reshape(len(ia), -1), y.reshape(len(ib), -1)
            if x.dtype.kind not in "biufc" or y.dtype.kind not in "biufc":
                return ~(x == y).all(axis=1)
            return ~sel.rows_close(x, y, SIMILAR_RTOL, SIMILAR_ATOL, equal_nan=True)
    pairs = zip((a.arrays[i] for i in ia), (b.arrays[i] for i in ib))
    return np.array(
        [
            x.shape != y.shape
            or not np.allclose(x, y, rtol=SIMILAR_RTOL, atol=SIMILAR_ATOL, equal_nan=True)
            for x, y in pairs
        ],
        dtype=bool,
    )


@register
class SimilarAcrossRuns(BuiltinRule):
    """Two runs that should be the same are not: a selected tensor differs between this run
    and another at the same global step.

    Decisions: ``other_trials`` (required) is a run, a path/URL, or a list of them; the
    selection defaults to every tensor stored in full in this run; values are compared at the
    global steps both runs saved, with numpy.allclose (rtol 1e-5, atol 1e-8, NaN equal to NaN;
    a changed shape differs). Tensors the other run lacks are listed, not counted as a
    difference; nothing in common at all is a MissingTensorError.
    """

    name = "similar_across_runs"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "other_trials": Param(None, "any", "the run(s) to compare with", optional=False),
        "collection_names": Param(None, "str_list"),
        "tensor_regex": Param(None, "regex_list"),
    }

    def _validate(self) -> None:
        try:
            self._others = _other_runs(self.other_trials)
        except (ValueError, TypeError) as exc:
            raise self.param_error("other_trials", f"is invalid: {exc}") from None
        if not self._others:
            raise self.param_error(
                "other_trials", "is empty: give at least one run to compare with"
            )
        self.parameters["other_trials"] = [
            getattr(o, "path", None) or os.fspath(o) if not isinstance(o, str) else o
            for o in self._others
        ]

    def _evaluate(self, run: Any) -> RuleResult:
        from ..store.run import open_run

        names = [
            n
            for n in sel.select(run, self.collection_names, self.tensor_regex, default_all=True)
            if run.has_tensor(n)
        ]
        if not names:
            raise sel.missing(
                "SimilarAcrossRuns",
                "no full tensor matches "
                + sel.selection_text(self.collection_names, self.tensor_regex),
                run,
            )
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        lacking: dict[str, list[str]] = {}
        no_common: list[str] = []
        first_diff: dict[str, tuple[int, str]] = {}
        others = [open_run(o) for o in self._others]
        for other in others:
            for n in names:
                key = n if len(others) == 1 else f"{n} vs {other.name}"
                if not other.has_tensor(n):
                    lacking.setdefault(other.name, []).append(n)
                    continue
                a = run.tensor(n).series()
                b = other.tensor(n).series()
                common, ia, ib = np.intersect1d(a.global_steps, b.global_steps, return_indices=True)
                if not len(common):
                    no_common.append(key)
                    continue
                diff = _differs(a, ia, b, ib)
                per[key] = (common, diff.astype(np.float64))
                if diff.any():
                    first_diff[key] = (int(common[np.argmax(diff)]), other.name)
        if not per:
            raise sel.missing(
                "SimilarAcrossRuns",
                f"nothing to compare: the other run(s) {', '.join(o.name for o in others)} hold "
                f"none of the selected tensors at a step this run saved ({', '.join(names[:5])})",
                run,
            )
        keys = list(per)
        steps, mat = sel.align(per)
        bad = np.nan_to_num(mat, nan=0.0) > 0
        rows = np.nonzero(bad.any(axis=1))[0]
        triggers = sel.trigger_steps(self, run, steps[rows])
        if len(rows):
            r0 = int(rows[0])
            cols = np.nonzero(bad[r0])[0]
            bad_cols = np.nonzero(bad.any(axis=0))[0]
            text = (
                f"{', '.join(keys[j] for j in cols[:5])} differ(s) from the other run at "
                f"{sel.step_label(run, steps[r0])} (allclose rtol {SIMILAR_RTOL}, atol "
                f"{SIMILAR_ATOL}). {len(bad_cols)} of {len(keys)} tensor(s) differ at "
                f"{len(rows)} of {len(steps)} common steps: "
                + ", ".join(f"{keys[j]} ({int(bad[:, j].sum())} steps)" for j in bad_cols[:8])
                + "."
            )
        else:
            text = (
                f"All {len(keys)} compared tensor(s) match at {len(steps)} common step(s) "
                f"(allclose rtol {SIMILAR_RTOL}, atol {SIMILAR_ATOL})."
            )
        for other_name, missing_names in lacking.items():
            text += f" Not in {other_name}: {', '.join(missing_names[:5])}."
        if no_common:
            text += f" No common step: {', '.join(no_common[:5])}."
        return self.make_result(
            bool(len(rows)),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=float(bad.any(axis=0).sum()),
            figure_name="tensors that differ",
            limit=0.0,
            evidence={
                "tensors": keys,
                "steps": steps,
                "differs": bad,
                "lacking": lacking,
                "no_common_step": no_common,
                "other_runs": [o.path for o in others],
            },
            steps_evaluated=len(steps),
        )


@register
class StalledTrainingRule(BuiltinRule):
    """No new step for ``threshold`` seconds, from the wall times of the saved steps.

    Decisions: every gap between consecutive saved (complete) global steps is checked, and,
    while the run has not ended, the time since the last step (against the clock now). A stall
    is reported at the last step before it. ``stop_training_on_fire`` is recorded in the result
    (``evidence["stop_training_on_fire"]``) for a RuleMonitor to act on; evaluating never stops
    anything. A run with no complete step is a MissingTensorError. Steps without a wall time
    (0 or NaN) are passed over.
    """

    name = "stalled_training_rule"
    params: ClassVar[dict[str, Param]] = {
        "threshold": Param(1800.0, "float", "seconds without a new step"),
        "stop_training_on_fire": Param(False, "bool", "a RuleMonitor stops the job when it fires"),
    }

    def _validate(self) -> None:
        if self.threshold <= 0:
            raise self.param_error("threshold", f"must be positive, got {self.threshold}")

    def _evaluate(self, run: Any, now: float | None = None) -> RuleResult:
        table = run.step_table()
        keep = np.isfinite(table["wall_time"]) & (table["wall_time"] > 0)
        steps = table["step"][keep]
        walls = table["wall_time"][keep]
        if not len(steps):
            raise sel.missing(
                "StalledTrainingRule", "no complete step with a wall time (nothing to time)", run
            )
        order = np.argsort(steps, kind="stable")
        steps, walls = steps[order], walls[order]
        gaps = np.diff(walls)
        ended = bool(run.has_ended)
        now = time.time() if now is None else float(now)
        since_last = None if ended else max(0.0, now - float(walls[-1]))
        stall_rows = np.nonzero(gaps > self.threshold)[0]
        stalls = [(int(steps[i]), float(gaps[i]), int(steps[i + 1])) for i in stall_rows]
        live_stall = since_last is not None and since_last > self.threshold
        trig_steps = [s for s, _g, _n in stalls] + ([int(steps[-1])] if live_stall else [])
        triggers = sel.trigger_steps(self, run, trig_steps)
        longest = float(gaps.max()) if len(gaps) else 0.0
        if since_last is not None:
            longest = max(longest, since_last)
        parts = []
        if stalls:
            s, g, n = stalls[0]
            parts.append(
                f"no new step for {sel.fmt(g, 5)} s after {sel.step_label(run, s)} (the next was "
                f"global step {n})"
            )
            if len(stalls) > 1:
                parts.append(f"{len(stalls)} gaps over the limit in all")
        if live_stall:
            parts.append(
                f"the run has not ended and its last step ({sel.step_label(run, int(steps[-1]))}) "
                f"was written {sel.fmt(since_last, 5)} s ago"
            )
        limit_text = f"limit {sel.fmt(self.threshold)} s"
        if parts:
            text = "Training stalled: " + "; ".join(parts) + f"; {limit_text}."
            if self.stop_training_on_fire:
                text += " stop_training_on_fire is set: a RuleMonitor stops the job."
        else:
            state = (
                "ended" if ended else f"is running (last step {sel.fmt(since_last or 0, 4)} s ago)"
            )
            text = (
                f"No stall: the longest gap between {len(steps)} steps was "
                f"{sel.fmt(float(gaps.max()) if len(gaps) else 0.0, 4)} s ({limit_text}); the run "
                f"{state}."
            )
        return self.make_result(
            bool(trig_steps),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=longest,
            figure_name="longest time without a step (s)",
            limit=self.threshold,
            evidence={
                "steps": steps,
                "wall_time": walls,
                "gap_s": gaps,
                "ended": ended,
                "seconds_since_last_step": since_last,
                "stop_training_on_fire": bool(self.stop_training_on_fire),
            },
            steps_evaluated=len(steps),
        )
