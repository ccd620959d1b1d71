"""Tensor rules of SageMaker Debugger: VanishingGradient, ExplodingTensor,
PoorWeightInitialization, WeightUpdateRatio, AllZero, TensorVariance, UnchangedTensor.

Every rule reads each selected tensor once as a Series over the whole run and computes its
per-step numbers with numpy; a stored reduction is read instead of the full tensor whenever
it gives the same number.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..modes import ModeKeys
from ..store.names import SMDEBUG_REDUCTIONS
from . import _select as sel
from .base import BuiltinRule, Param, register
from .result import RuleResult

_WEIGHT_RE = re.compile(r"(^|\.)weight$")
_LOSS_RE = re.compile(r"[Ll]oss_output_\d+$")
_FLAGS = "reductions (as flags)"
#: how to record what PoorWeightInitialization's variance check reads (off by default)
_RELU_INPUT_HINT = (
    " (the default recording saves no relu_input: add "
    'Recorder(..., collections=[CollectionConfig("relu_input", save_interval=1)]) to record '
    "their variance at every step, or save_interval=N for every N-th)"
)


def _scalar_series(
    run: Any,
    name: str,
    reductions: list[tuple[str, bool, Callable[[np.ndarray], np.ndarray]]],
    full: Callable[[np.ndarray], np.ndarray] | None,
    *,
    mode: ModeKeys | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """(global steps, mode steps, one number per step, source) from the first stored
    reduction of ``reductions`` [(reduction, abs, transform of the stacked values)], else from
    the full tensor through ``full`` (stacked (steps, *shape) -> (steps,)); None if neither."""
    for red, absolute, transform in reductions:
        stored = sel.stored_reduction(run, name, red, absolute)
        if stored is not None:
            s = run.tensor(stored).series(mode)
            vals = sel.apply_per_step(s, lambda x: np.asarray(x, np.float64).reshape(x.shape[0]))
            return (
                s.global_steps,
                s.steps,
                transform(vals),
                f"{'abs_' if absolute else ''}{red} reduction",
            )
    if full is not None and run.has_tensor(name):
        s = run.tensor(name).series(mode)
        return (
            s.global_steps,
            s.steps,
            sel.apply_per_step(s, full).astype(np.float64),
            "full tensor",
        )
    return None


def _train_mode(run: Any) -> ModeKeys | None:
    """TRAIN when the run has TRAIN steps (where weights change), else None (all steps)."""
    return ModeKeys.TRAIN if ModeKeys.TRAIN in run.modes() else None


def _gradient_names(run: Any) -> list[str]:
    return sorted(
        set(sel.select(run, collection_names="gradients"))
        | {n for n in sel.base_names(run) if n.startswith(sel.GRADIENT_PREFIX)}
    )


def _abs_mean(x: np.ndarray) -> np.ndarray:
    f = sel.flat_float(x)
    return np.abs(f).mean(axis=1) if f.shape[1] else np.full(f.shape[0], np.nan)


def _variance(x: np.ndarray) -> np.ndarray:
    f = sel.flat_float(x)
    return f.var(axis=1) if f.shape[1] else np.full(f.shape[0], np.nan)


def _worst(mat: np.ndarray, largest: bool) -> tuple[int, int, float] | None:
    """(row, column, value) of the largest (or smallest) finite-or-inf entry, ignoring NaN."""
    if mat.size == 0 or np.all(np.isnan(mat)):
        return None
    flat = int(np.nanargmax(mat) if largest else np.nanargmin(mat))
    r, c = divmod(flat, mat.shape[1])
    return r, c, float(mat[r, c])


class _PerTensorRule(BuiltinRule):
    """A rule that computes one number per selected tensor and step and triggers where a
    condition on it holds; subclasses give the selection, the number and the condition."""

    quantity = "value"
    #: the evidence key of the (steps x tensors) matrix of numbers
    evidence_key = "value"

    def _names(self, run: Any) -> list[str]:
        raise NotImplementedError

    def _number(self, run: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
        raise NotImplementedError

    def _bad(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _limit_text(self) -> str:
        raise NotImplementedError

    figure_largest = True
    limit_value: float | None = None

    def _how_to_record(self, names: list[str]) -> str:
        """Advice appended to "not stored" messages: how to record what the rule needs."""
        return ""

    def _evaluate(self, run: Any) -> RuleResult:
        names = self._names(run)
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        sources: dict[str, str] = {}
        skipped: list[str] = []
        for name in names:
            got = self._number(run, name)
            if got is None:
                skipped.append(name)
                continue
            gsteps, _ms, vals, source = got
            per[name] = (gsteps, vals)
            sources[name] = source
        if not per:
            raise sel.missing(
                type(self).__name__,
                f"none of the selected tensors ({', '.join(names[:5])}) is stored in a form this "
                "rule can read (the full tensor or the reduction it needs)"
                + self._how_to_record(names),
                run,
            )
        tensors = list(per)
        steps, mat = sel.align(per)
        with np.errstate(invalid="ignore"):
            bad = self._bad(mat) & ~np.isnan(mat)
        rows = np.nonzero(bad.any(axis=1))[0]
        triggers = sel.trigger_steps(self, run, steps[rows])
        worst = _worst(mat, self.figure_largest)
        q = self.quantity
        if len(rows):
            r0 = int(rows[0])
            c0 = int(np.nonzero(bad[r0])[0][0])
            bad_cols = np.nonzero(bad.any(axis=0))[0]
            text = (
                f"{tensors[c0]}: {q} {sel.fmt(mat[r0, c0])} at {sel.step_label(run, steps[r0])}; "
                f"{self._limit_text()}. {len(bad_cols)} of {len(tensors)} tensor(s) crossed it at "
                f"{len(rows)} of {len(steps)} steps: "
                + ", ".join(
                    f"{tensors[j]} ({int(bad[:, j].sum())} steps, first at global step "
                    f"{int(steps[np.argmax(bad[:, j])])})"
                    for j in bad_cols[:8]
                )
                + ("." if len(bad_cols) <= 8 else ", ...")
            )
        else:
            extreme = ""
            if worst is not None:
                r, c, v = worst
                extreme = (
                    f"; the {'largest' if self.figure_largest else 'smallest'} {q} was "
                    f"{sel.fmt(v)} ({tensors[c]} at {sel.step_label(run, steps[r])})"
                )
            text = (
                f"No tensor crossed the limit ({self._limit_text()}) in {len(steps)} steps of "
                f"{len(tensors)} tensor(s){extreme}."
            )
        if skipped:
            text += f" Not checked (not stored in a readable form): {', '.join(skipped[:5])}"
            text += self._how_to_record(skipped) + "."
        return self.make_result(
            bool(len(rows)),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=worst[2] if worst else None,
            figure_name=f"{'largest' if self.figure_largest else 'smallest'} {q}",
            limit=self.limit_value,
            evidence={
                "tensors": tensors,
                "steps": steps,
                self.evidence_key: mat,
                "triggered": bad,
                "source": sources,
                "skipped": skipped,
            },
            steps_evaluated=len(steps),
        )


@register
class VanishingGradient(_PerTensorRule):
    """Vanishing gradients: mean(abs(g)) of a gradient tensor below ``threshold`` at a step.

    Gradients are the ``gradient/<param>`` tensors and the ``gradients`` collection; the value
    comes from the stored ``smdebug/reductions/abs_mean/gradient/...`` when present, else from
    the full gradient.
    """

    name = "vanishing_gradient"
    higher_is_worse = False
    quantity = "mean |gradient|"
    evidence_key = "abs_mean"
    figure_largest = False
    params: ClassVar[dict[str, Param]] = {
        "threshold": Param(1e-7, "float", "mean |g| under which a gradient vanished")
    }

    @property
    def limit_value(self) -> float:  # type: ignore[override]
        return self.threshold

    def _validate(self) -> None:
        if not self.threshold >= 0:  # a mean |g| is never below a negative one
            raise self.param_error("threshold", f"must be at least 0, got {self.threshold}")

    def _names(self, run: Any) -> list[str]:
        names = _gradient_names(run)
        if not names:
            raise sel.missing(
                "VanishingGradient",
                "no gradient tensors (named gradient/<param>, or in the gradients collection)",
                run,
            )
        return names

    def _number(self, run: Any, name: str):
        return _scalar_series(run, name, [("mean", True, lambda v: v)], _abs_mean)

    def _bad(self, values: np.ndarray) -> np.ndarray:
        return values < self.threshold

    def _limit_text(self) -> str:
        return f"limit {sel.fmt(self.threshold)} (a smaller mean means the gradient vanished)"


@register
class AllZero(_PerTensorRule):
    """All-zero tensors: the percent of zeros in a selected tensor >= ``threshold`` at a step.

    collection_names or tensor_regex is required. Reads ``modelrules/reductions/zero_fraction``
    when stored, else the full tensor.
    """

    name = "all_zero"
    quantity = "zero percent"
    evidence_key = "zero_percent"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "collection_names": Param(None, "str_list"),
        "tensor_regex": Param(None, "regex_list"),
        "threshold": Param(100.0, "float", "percent of zeros at or above which it triggers"),
    }

    @property
    def limit_value(self) -> float:  # type: ignore[override]
        return self.threshold

    def _validate(self) -> None:
        if not self.collection_names and not self.tensor_regex:
            raise self.param_error(
                "collection_names", "or 'tensor_regex' is required: AllZero needs tensors to check"
            )
        if not 0 <= self.threshold <= 100:
            raise self.param_error(
                "threshold", f"is a percent and must lie in [0, 100], got {self.threshold}"
            )

    def _names(self, run: Any) -> list[str]:
        return sel.select_required("AllZero", run, self.collection_names, self.tensor_regex)

    def _number(self, run: Any, name: str):
        def zero_pct(x: np.ndarray) -> np.ndarray:
            f = x.reshape(x.shape[0], -1)
            return (f == 0).mean(axis=1) * 100.0 if f.shape[1] else np.full(f.shape[0], np.nan)

        return _scalar_series(run, name, [("zero_fraction", False, lambda v: v * 100.0)], zero_pct)

    def _how_to_record(self, names: list[str]) -> str:
        if any("relu_output" in n for n in names):
            # the default relu_output collection stores positive_fraction only
            return (
                "; the default recording stores only positive_fraction of ReLU outputs: record "
                'with Recorder(..., collections=[CollectionConfig("relu_output", '
                'reductions=["positive_fraction", "zero_fraction"])])'
            )
        return (
            "; record the zero_fraction reduction of these tensors, e.g. "
            'CollectionConfig(<collection>, reductions=["zero_fraction"])'
        )

    def _bad(self, values: np.ndarray) -> np.ndarray:
        return values >= self.threshold

    def _limit_text(self) -> str:
        return f"limit {sel.pct(self.threshold)} zeros"


@register
class TensorVariance(_PerTensorRule):
    """Variance of a selected tensor above ``max_threshold`` or below ``min_threshold``.

    A selection (collection_names or tensor_regex) and at least one threshold are required.
    Reads the stored variance (or std, squared) reduction when present, else the full tensor.
    """

    name = "tensor_variance"
    quantity = "variance"
    evidence_key = "variance"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "collection_names": Param(None, "str_list"),
        "tensor_regex": Param(None, "regex_list"),
        "max_threshold": Param(None, "float"),
        "min_threshold": Param(None, "float"),
    }

    def _validate(self) -> None:
        if not self.collection_names and not self.tensor_regex:
            raise self.param_error("collection_names", "or 'tensor_regex' is required")
        if self.max_threshold is None and self.min_threshold is None:
            raise self.param_error("max_threshold", "or 'min_threshold' is required")
        if (
            self.max_threshold is not None
            and self.min_threshold is not None
            and self.min_threshold > self.max_threshold
        ):
            raise self.param_error("min_threshold", "must not exceed max_threshold")

    @property
    def limit_value(self) -> float | None:  # type: ignore[override]
        return self.max_threshold if self.max_threshold is not None else self.min_threshold

    @property
    def figure_largest(self) -> bool:  # type: ignore[override]
        return self.max_threshold is not None

    def _names(self, run: Any) -> list[str]:
        return sel.select_required("TensorVariance", run, self.collection_names, self.tensor_regex)

    def _number(self, run: Any, name: str):
        return _scalar_series(
            run,
            name,
            [("variance", False, lambda v: v), ("std", False, lambda v: v * v)],
            _variance,
        )

    def _bad(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(values.shape, bool)
        if self.max_threshold is not None:
            out |= values > self.max_threshold
        if self.min_threshold is not None:
            out |= values < self.min_threshold
        return out

    def _limit_text(self) -> str:
        parts = []
        if self.min_threshold is not None:
            parts.append(f"min {sel.fmt(self.min_threshold)}")
        if self.max_threshold is not None:
            parts.append(f"max {sel.fmt(self.max_threshold)}")
        return "limits " + ", ".join(parts)


@register
class ExplodingTensor(BuiltinRule):
    """NaN (or, unless ``only_nan``, +/-inf) in a selected tensor; no selection = all tensors.

    Sources, cheapest exact first: the stored ``nan_count``/``inf_count`` reductions, the full
    tensor, the ``nan_count`` reduction alone (inf not counted), then any stored SageMaker
    reductions (min, max, mean, l2, ...: the Recorder's defaults for weights and gradients),
    read as flags: NaN in one means a NaN in the tensor, +/-inf an inf. (A mean, sum, std or
    variance is also NaN when the tensor holds both +inf and -inf.) Non-numeric and integer
    tensors cannot hold NaN and are passed over.
    """

    name = "exploding_tensor"
    params: ClassVar[dict[str, Param]] = {
        "collection_names": Param(None, "str_list"),
        "tensor_regex": Param(None, "regex_list"),
        "only_nan": Param(False, "bool"),
    }

    def _counts(self, run: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
        """(global steps, nan count, inf count, source); from SageMaker reductions the counts
        are 0/1 flags."""
        nan_red = sel.stored_reduction(run, name, "nan_count")
        inf_red = sel.stored_reduction(run, name, "inf_count")
        if nan_red and (inf_red or self.only_nan):
            s = run.tensor(nan_red).series()
            nan = np.asarray(sel.apply_per_step(s, lambda x: x.reshape(x.shape[0])), np.float64)
            if inf_red:
                t = run.tensor(inf_red).series()
                inf_all = np.asarray(
                    sel.apply_per_step(t, lambda x: x.reshape(x.shape[0])), np.float64
                )
                inf = np.zeros(len(s.global_steps))
                pos = np.searchsorted(t.global_steps, s.global_steps).clip(
                    0, max(len(t.global_steps) - 1, 0)
                )
                found = (
                    (t.global_steps[pos] == s.global_steps)
                    if len(t.global_steps)
                    else np.zeros(len(inf), bool)
                )
                inf[found] = inf_all[pos[found]]
            else:
                inf = np.zeros(len(s.global_steps))
            return s.global_steps, nan, inf, "nan_count/inf_count reductions"
        if run.has_tensor(name):
            s = run.tensor(name).series()
            dtypes = {s.stack().dtype} if s.uniform and len(s) else {a.dtype for a in s.arrays}
            if not len(s) or any(d.kind not in "biufc" for d in dtypes):
                zeros = np.zeros(len(s))
                return s.global_steps, zeros, zeros, "full tensor (not numeric)"
            if all(d.kind in "biu" for d in dtypes):
                zeros = np.zeros(len(s))
                return s.global_steps, zeros, zeros, "full tensor (integer)"

            def counts(x: np.ndarray) -> np.ndarray:
                f = x.reshape(x.shape[0], -1)
                return np.stack([np.isnan(f).sum(axis=1), np.isinf(f).sum(axis=1)], axis=1)

            c = sel.apply_per_step(s, counts).astype(np.float64)
            return s.global_steps, c[:, 0], c[:, 1], "full tensor"
        if nan_red:  # NaN counts without inf counts, full tensor or min/max
            s = run.tensor(nan_red).series()
            nan = np.asarray(sel.apply_per_step(s, lambda x: x.reshape(x.shape[0])), np.float64)
            return s.global_steps, nan, np.zeros(len(s)), "nan_count reduction (no inf count)"
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for red in SMDEBUG_REDUCTIONS:
            for absolute in (False, True):
                stored = sel.stored_reduction(run, name, red, absolute)
                if stored:
                    s = run.tensor(stored).series()
                    flat = sel.apply_per_step(s, lambda x: x.reshape(x.shape[0], -1)[:, 0])
                    per[("abs_" if absolute else "") + red] = (
                        s.global_steps,
                        np.asarray(flat, np.float64),
                    )
        if not per:
            return None
        steps, mat = sel.align(per)
        # align fills unsaved steps with NaN: only a saved NaN means a NaN in the tensor
        nan = np.zeros(len(steps), bool)
        for j, (saved_steps, _v) in enumerate(per.values()):
            nan |= np.isin(steps, saved_steps) & np.isnan(mat[:, j])
        inf = np.isinf(mat).any(axis=1)
        return steps, nan.astype(np.float64), inf.astype(np.float64), f"{'/'.join(per)} {_FLAGS}"

    def _evaluate(self, run: Any) -> RuleResult:
        names = sel.select_required(
            "ExplodingTensor", run, self.collection_names, self.tensor_regex, default_all=True
        )
        nan_per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        inf_per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        sources: dict[str, str] = {}
        skipped: list[str] = []
        for name in names:
            got = self._counts(run, name)
            if got is None:
                skipped.append(name)
                continue
            gsteps, nan, inf, source = got
            nan_per[name] = (gsteps, nan)
            inf_per[name] = (gsteps, inf)
            sources[name] = source
        if not nan_per:
            raise sel.missing(
                "ExplodingTensor",
                "none of the selected tensors is stored in full or with nan_count/inf_count or "
                f"SageMaker reductions ({', '.join(names[:5])})",
                run,
            )
        tensors = list(nan_per)
        steps, nan_mat = sel.align(nan_per)
        _, inf_mat = sel.align(inf_per)
        nan_mat0 = np.nan_to_num(nan_mat, nan=0.0)
        inf_mat0 = np.nan_to_num(inf_mat, nan=0.0)
        bad = nan_mat0 > 0
        if not self.only_nan:
            bad |= inf_mat0 > 0
        rows = np.nonzero(bad.any(axis=1))[0]
        triggers = sel.trigger_steps(self, run, steps[rows])
        what = "NaN" if self.only_nan else "NaN or inf"
        if len(rows):
            r0 = int(rows[0])
            cols = np.nonzero(bad[r0])[0]
            detail = ", ".join(
                f"{tensors[j]} ({int(nan_mat0[r0, j])} NaN"
                + ("" if self.only_nan else f", {int(inf_mat0[r0, j])} inf")
                + (
                    ")"
                    if not sources[tensors[j]].endswith(_FLAGS)
                    else f"; from {sources[tensors[j]]}, counts unknown)"
                )
                for j in cols[:6]
            )
            bad_cols = np.nonzero(bad.any(axis=0))[0]
            text = (
                f"{what} found first at {sel.step_label(run, steps[r0])} in {detail}. "
                f"{len(bad_cols)} of {len(tensors)} tensor(s) held {what} at {len(rows)} of "
                f"{len(steps)} steps: {', '.join(tensors[j] for j in bad_cols[:8])}"
                + ("." if len(bad_cols) <= 8 else ", ...")
            )
        else:
            text = f"No {what} in {len(tensors)} tensor(s) over {len(steps)} steps."
        if skipped:
            text += (
                " Not checked (neither the full tensor nor a reduction that shows NaN/inf is "
                f"stored): {', '.join(skipped[:5])}."
            )
        count = float(bad.sum())
        return self.make_result(
            bool(len(rows)),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=count,
            figure_name=f"tensor-steps with {what}",
            limit=0.0,
            evidence={
                "tensors": tensors,
                "steps": steps,
                "nan_count": nan_mat,
                "inf_count": inf_mat,
                "triggered": bad,
                "source": sources,
                "skipped": skipped,
            },
            steps_evaluated=len(steps),
        )


@register
class PoorWeightInitialization(BuiltinRule):
    """Poor weight initialisation, judged within the first ``steps`` TRAIN steps (mode steps
    0..steps-1; global steps when the run has no TRAIN mode). Triggers at a step where

    - the ratio of the largest to the smallest variance of the activation inputs
      (``activation_inputs_regex``, at least two layers) exceeds ``threshold``, or
    - the smallest spread (95th minus 5th percentile) over the gradient tensors is below
      ``distribution_range``, or
    - a loss has not decreased for ``patience`` steps: at the k-th saved step (k >= patience)
      none of the last ``patience`` losses is below the loss ``patience`` saved steps earlier
      (finite losses only: a NaN / inf loss triggers at its step and is left out).

    Each check runs when its tensors are present; MissingTensorError when none can run.
    Decision: not in the default set, since fine-tuned pretrained models routinely have
    gradient spreads under 0.001 and layer variances that differ tenfold.
    """

    name = "poor_weight_initialization"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "activation_inputs_regex": Param(".*relu_input", "regex_union", optional=False),
        "threshold": Param(10.0, "float"),
        "distribution_range": Param(0.001, "float"),
        "patience": Param(5, "int"),
        "steps": Param(10, "int"),
    }

    def _validate(self) -> None:
        if self.patience < 1:
            raise self.param_error("patience", f"must be at least 1, got {self.patience}")
        if self.steps < 1:
            raise self.param_error("steps", f"must be at least 1, got {self.steps}")

    def _window(self, run: Any, name: str, reductions, full):
        got = _scalar_series(run, name, reductions, full, mode=_train_mode(run))
        if got is None:
            return None
        g, ms, v, _src = got
        keep = ms < self.steps
        return g[keep], v[keep]

    def _evaluate(self, run: Any) -> RuleResult:
        checks: list[str] = []
        bad_steps: dict[int, list[str]] = {}
        evidence: dict[str, Any] = {}
        evaluated: set[int] = set()

        def note(steps: np.ndarray, reason: Callable[[int], str]) -> None:
            for i, g in enumerate(steps):
                bad_steps.setdefault(int(g), []).append(reason(i))

        # 1: variance ratio across layers of activation inputs
        acts = sel.select(run, tensor_regex=self.activation_inputs_regex)
        per = {}
        for n in acts:
            got = self._window(
                run,
                n,
                [("variance", False, lambda v: v), ("std", False, lambda v: v * v)],
                _variance,
            )
            if got is not None:
                per[n] = got
        if len(per) >= 2:
            checks.append("activation-input variance ratio")
            steps, mat = sel.align(per)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.nanmax(mat, axis=1) / np.nanmin(mat, axis=1)
            counted = (~np.isnan(mat)).sum(axis=1) >= 2
            hit = counted & (ratio > self.threshold)
            evaluated.update(steps.tolist())
            evidence.update(
                activation_layers=list(per),
                variance_steps=steps,
                variance=mat,
                variance_ratio=ratio,
            )
            note(
                steps[hit],
                lambda i, r=ratio[hit]: (
                    "largest/smallest activation-input variance "
                    f"{sel.fmt(r[i])} > {sel.fmt(self.threshold)}"
                ),
            )
        # 2: spread of gradients
        grads = _gradient_names(run)
        per = {}
        for n in grads:
            stored = sel.stored_reduction(run, n, "p05") and sel.stored_reduction(run, n, "p95")
            if stored:
                lo = self._window(run, n, [("p05", False, lambda v: v)], None)
                hi = self._window(run, n, [("p95", False, lambda v: v)], None)
                if lo is not None and hi is not None and np.array_equal(lo[0], hi[0]):
                    per[n] = (lo[0], hi[1] - lo[1])
                    continue

            def spread(x: np.ndarray) -> np.ndarray:
                f = sel.flat_float(x)
                q = np.percentile(f, [5, 95], axis=1)
                return q[1] - q[0]

            got = self._window(run, n, [], spread)
            if got is not None:
                per[n] = got
        if per:
            checks.append("gradient spread")
            steps, mat = sel.align(per)
            smallest = np.nanmin(mat, axis=1)
            hit = smallest < self.distribution_range
            evaluated.update(steps.tolist())
            evidence.update(gradients=list(per), spread_steps=steps, spread=mat)
            note(
                steps[hit],
                lambda i, s=smallest[hit]: (
                    "smallest gradient spread (p95-p05) "
                    f"{sel.fmt(s[i])} < {sel.fmt(self.distribution_range)}"
                ),
            )
        # 3: loss not decreasing for `patience` steps
        losses = sorted(
            set(sel.select(run, collection_names="losses"))
            | {n for n in sel.base_names(run) if _LOSS_RE.search(n)}
        )
        loss_ev = {}
        for n in losses:
            got = self._window(run, n, [], lambda x: sel.flat_float(x).mean(axis=1))
            if got is None:
                continue
            g, v = got
            loss_ev[n] = {"steps": g, "loss": v}
            evaluated.update(g.tolist())
            if "loss" not in " ".join(checks):
                checks.append("loss decrease")
            bad = ~np.isfinite(v)
            if bad.any():  # a NaN / inf loss triggers at its step; the finite values compare
                count = f"not finite at {int(bad.sum())} of the {len(v)} loss values read"
                note(
                    g[bad],
                    lambda i, n=n, vb=v[bad], c=count: f"{n} is {sel.fmt(vb[i])} ({c})",
                )
                g, v = g[~bad], v[~bad]
            if len(v) <= self.patience:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(v, self.patience + 1)
            stalled = windows[:, 1:].min(axis=1) >= windows[:, 0]
            hit_idx = np.nonzero(stalled)[0] + self.patience
            note(
                g[hit_idx],
                lambda i, n=n, idx=hit_idx, v=v: (
                    f"{n} did not decrease for {self.patience} steps (from "
                    f"{sel.fmt(v[idx[i] - self.patience])} to {sel.fmt(v[idx[i]])})"
                ),
            )
        if loss_ev:
            evidence["losses"] = loss_ev
        if not checks:
            raise sel.missing(
                "PoorWeightInitialization",
                "nothing to check: no two activation inputs match "
                f"{self.activation_inputs_regex!r}{_RELU_INPUT_HINT}, no gradient tensors, "
                "no loss tensors",
                run,
            )
        not_run = [
            c
            for c in ("activation-input variance ratio", "gradient spread", "loss decrease")
            if c not in checks
        ]
        trig = sorted(bad_steps)
        triggers = sel.trigger_steps(self, run, trig)
        window = f"the first {self.steps} {'TRAIN ' if _train_mode(run) else ''}steps"
        if trig:
            text = (
                f"Poor initialisation signs within {window}: at {sel.step_label(run, trig[0])}, "
                + "; ".join(bad_steps[trig[0]])
                + f". {len(trig)} step(s) triggered. Checks run: {', '.join(checks)}."
            )
        else:
            text = (
                f"No sign of poor initialisation within {window}. Checks run: {', '.join(checks)}."
            )
        if not_run:
            text += f" Not run (tensors missing): {', '.join(not_run)}."
            if "activation-input variance ratio" in not_run:
                text += (
                    " Activation inputs: fewer than two readable tensors match "
                    f"{self.activation_inputs_regex!r}"
                    f"{_RELU_INPUT_HINT}."
                )
        evidence["checks"] = checks
        evidence["reasons"] = {int(k): v for k, v in bad_steps.items()}
        return self.make_result(
            bool(trig),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=float(len(trig)),
            figure_name="steps with poor-initialisation signs",
            limit=0.0,
            evidence=evidence,
            steps_evaluated=len(evaluated),
        )


def _diff_norms(
    stacked: np.ndarray, cur: np.ndarray, prev: np.ndarray, chunk_elems: int = 1 << 24
) -> tuple[np.ndarray, np.ndarray]:
    """norm(W[cur] - W[prev]) and norm(W[prev]) per pair, in float64, in memory-bounded chunks."""
    flat = stacked.reshape(stacked.shape[0], -1)
    per_chunk = max(1, chunk_elems // max(flat.shape[1], 1))
    diff = np.empty(len(cur))
    base = np.empty(len(cur))
    for a in range(0, len(cur), per_chunk):
        c, p = cur[a : a + per_chunk], prev[a : a + per_chunk]
        wp = flat[p].astype(np.float64)
        diff[a : a + per_chunk] = np.linalg.norm(flat[c].astype(np.float64) - wp, axis=1)
        base[a : a + per_chunk] = np.linalg.norm(wp, axis=1)
    return diff, base


@register
class WeightUpdateRatio(BuiltinRule):
    """Weight updates too large or too small: ratio = norm(w_s - w_p) / (norm(w_p) + epsilon)
    triggers when > ``large_threshold`` or < ``small_threshold``.

    Decisions: weights are the ``weights`` collection, else tensors named ``*.weight`` (not
    biases, which start at zero); only TRAIN steps are compared (weights do not change during
    EVAL); p is the previous saved TRAIN step, or with ``num_steps`` the newest saved step
    <= s - num_steps. The rule needs full weight tensors: norms of two steps cannot give the
    norm of their difference, so a run holding only reductions of the weights is a
    MissingTensorError that says so. Not in the default set (it needs full weights).
    """

    name = "weight_update_ratio"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "num_steps": Param(None, "int"),
        "large_threshold": Param(10.0, "float"),
        "small_threshold": Param(1e-8, "float"),
        "epsilon": Param(1e-9, "float"),
    }

    def _validate(self) -> None:
        if self.num_steps is not None and self.num_steps < 1:
            raise self.param_error("num_steps", f"must be at least 1, got {self.num_steps}")

    def _evaluate(self, run: Any) -> RuleResult:
        candidates = sel.select(run, collection_names="weights") or [
            n
            for n in sel.base_names(run)
            if _WEIGHT_RE.search(n) and not n.startswith(sel.GRADIENT_PREFIX)
        ]
        names = [n for n in candidates if run.has_tensor(n)]
        if not names:
            if candidates:
                raise sel.missing(
                    "WeightUpdateRatio",
                    "it needs full weight tensors, but only reductions of "
                    f"{', '.join(candidates[:5])} are stored (norms of two steps do not give "
                    "the norm of their difference); record the weights in full",
                    run,
                )
            raise sel.missing(
                "WeightUpdateRatio", "no weight tensors (the weights collection or *.weight)", run
            )
        mode = _train_mode(run)
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for n in names:
            s = run.tensor(n).series(mode)
            if len(s) < 2 or not s.uniform:
                continue
            if self.num_steps is None:
                cur = np.arange(1, len(s))
                prev = cur - 1
            else:
                p = np.searchsorted(s.steps, s.steps - self.num_steps, side="right") - 1
                cur = np.nonzero(p >= 0)[0]
                prev = p[cur]
            if not len(cur):
                continue
            diff, base = _diff_norms(s.stack(), cur, prev)
            per[n] = (s.global_steps[cur], diff / (base + self.epsilon))
        if not per:
            raise sel.missing(
                "WeightUpdateRatio",
                f"no weight tensor has two saved {'TRAIN ' if mode else ''}steps to compare "
                f"({', '.join(names[:5])})",
                run,
            )
        tensors = list(per)
        steps, mat = sel.align(per)
        with np.errstate(invalid="ignore"):
            large = mat > self.large_threshold
            small = mat < self.small_threshold
        bad = large | small
        rows = np.nonzero(bad.any(axis=1))[0]
        triggers = sel.trigger_steps(self, run, steps[rows])
        if len(rows):
            r0 = int(rows[0])
            c0 = int(np.nonzero(bad[r0])[0][0])
            kind = "above" if large[r0, c0] else "below"
            lim = self.large_threshold if large[r0, c0] else self.small_threshold
            bad_cols = np.nonzero(bad.any(axis=0))[0]
            text = (
                f"{tensors[c0]}: update ratio {sel.fmt(mat[r0, c0])} at "
                f"{sel.step_label(run, steps[r0])}, {kind} the limit {sel.fmt(lim)} (limits: "
                f"{sel.fmt(self.small_threshold)} to {sel.fmt(self.large_threshold)}). "
                f"{len(bad_cols)} of {len(tensors)} weight tensor(s) out of range at "
                f"{len(rows)} step(s): "
                + ", ".join(
                    f"{tensors[j]} ({int(large[:, j].sum())} too large, "
                    f"{int(small[:, j].sum())} too small)"
                    for j in bad_cols[:8]
                )
                + "."
            )
        else:
            text = (
                f"Every update ratio of {len(tensors)} weight tensor(s) over {len(steps)} steps "
                "lay "
                f"within {sel.fmt(self.small_threshold)} to {sel.fmt(self.large_threshold)} "
                f"(from {sel.fmt(np.nanmin(mat))} to {sel.fmt(np.nanmax(mat))})."
            )
        if small.any() and not large.any():
            worst = _worst(mat, False)
            fig_name, limit = "smallest update ratio", self.small_threshold
        else:
            worst = _worst(mat, True)
            fig_name, limit = "largest update ratio", self.large_threshold
        return self.make_result(
            bool(len(rows)),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=worst[2] if worst else None,
            figure_name=fig_name,
            limit=limit,
            evidence={"tensors": tensors, "steps": steps, "update_ratio": mat, "triggered": bad},
            steps_evaluated=len(steps),
        )


def _unchanged_flags(
    series: Any, num_steps: int, rtol: float, atol: float, equal_nan: bool
) -> np.ndarray:
    """flags[k]: the values at the previous num_steps-1 saved steps are all close to value k."""
    n = len(series)
    flags = np.zeros(n, bool)
    if n < num_steps:
        return flags
    flags[num_steps - 1 :] = True
    arrays = series.arrays if not series.uniform else None
    if arrays is None or all(a.shape == arrays[0].shape for a in arrays):
        x = (series.stack() if arrays is None else np.stack(arrays)).reshape(n, -1)
        if x.dtype.kind not in "fc":
            x = x.astype(np.float64)
        for lag in range(1, num_steps):
            close = sel.rows_close(x[:-lag], x[lag:], rtol, atol, equal_nan)
            flags[lag:] &= close
            flags[:lag] = False
        return flags
    # shapes change across steps (rare): compare pairwise
    for k in range(num_steps - 1, n):
        flags[k] = all(
            arrays[k - lag].shape == arrays[k].shape
            and np.allclose(arrays[k - lag], arrays[k], rtol=rtol, atol=atol, equal_nan=equal_nan)
            for lag in range(1, num_steps)
        )
    return flags


@register
class UnchangedTensor(BuiltinRule):
    """A tensor that stopped changing: at a saved step s, the last ``num_steps`` saved values
    (up to s, not necessarily consecutive steps) are all allclose(v, v_s, rtol, atol,
    equal_nan) to the value at s.

    Decisions: no selection = every tensor stored in full; values are compared in global step
    order over all modes; ``num_steps`` must be at least 2 (one value cannot be "unchanged").
    Tensors stored only as reductions are not checked. Not in the default set: frozen
    parameters and tensors saved during EVAL legitimately stay the same.
    """

    name = "unchanged_tensor"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "collection_names": Param(None, "str_list"),
        "tensor_regex": Param(None, "regex_list"),
        "num_steps": Param(3, "int"),
        "rtol": Param(1e-5, "float"),
        "atol": Param(1e-8, "float"),
        "equal_nan": Param(False, "bool"),
    }

    def _validate(self) -> None:
        if self.num_steps < 2:
            raise self.param_error("num_steps", f"must be at least 2, got {self.num_steps}")
        for p in ("rtol", "atol"):  # numpy.allclose's tolerances
            if not getattr(self, p) >= 0:
                raise self.param_error(p, f"must be at least 0, got {getattr(self, p)}")

    def _evaluate(self, run: Any) -> RuleResult:
        names = sel.select(run, self.collection_names, self.tensor_regex, default_all=True)
        full = [n for n in names if run.has_tensor(n)]
        if not full:
            what = (
                f"no tensor matches {sel.selection_text(self.collection_names, self.tensor_regex)}"
            )
            if names:
                what = (
                    f"the selected tensors ({', '.join(names[:5])}) are stored only as reductions"
                )
            raise sel.missing("UnchangedTensor", what, run)
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for n in full:
            s = run.tensor(n).series()
            per[n] = (
                s.global_steps,
                _unchanged_flags(s, self.num_steps, self.rtol, self.atol, self.equal_nan).astype(
                    np.float64
                ),
            )
        tensors = list(per)
        steps, mat = sel.align(per)
        bad = np.nan_to_num(mat, nan=0.0) > 0
        rows = np.nonzero(bad.any(axis=1))[0]
        triggers = sel.trigger_steps(self, run, steps[rows])
        if len(rows):
            r0 = int(rows[0])
            cols = np.nonzero(bad[r0])[0]
            bad_cols = np.nonzero(bad.any(axis=0))[0]
            text = (
                f"{', '.join(tensors[j] for j in cols[:5])}: the last {self.num_steps} saved "
                "values "
                f"were all close (rtol {sel.fmt(self.rtol)}, atol {sel.fmt(self.atol)}) at "
                f"{sel.step_label(run, steps[r0])}. {len(bad_cols)} of {len(tensors)} tensor(s) "
                f"unchanged at {len(rows)} step(s): "
                + ", ".join(f"{tensors[j]} ({int(bad[:, j].sum())} steps)" for j in bad_cols[:8])
                + "."
            )
        else:
            text = (
                f"None of {len(tensors)} tensor(s) stayed the same over {self.num_steps} saved "
                f"values in {len(steps)} steps."
            )
        skipped = [n for n in names if n not in per]
        if skipped:
            text += f" Not checked (stored only as reductions): {', '.join(skipped[:5])}."
        return self.make_result(
            bool(len(rows)),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=float(len(np.nonzero(bad.any(axis=0))[0])),
            figure_name="unchanged tensors",
            limit=0.0,
            evidence={"tensors": tensors, "steps": steps, "unchanged": bad, "skipped": skipped},
            steps_evaluated=len(steps),
        )
