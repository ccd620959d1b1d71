"""Loss rules: LossNotDecreasing, Overfit, Overtraining (SageMaker Debugger's names and defaults).

Also the helpers other rule modules share: choosing loss tensors, reading scalar series, the
phases (stretches of one mode, e.g. one evaluation pass) of a run, number formatting."""

from __future__ import annotations

import re
import weakref
from bisect import bisect_left
from typing import Any, ClassVar

import numpy as np

from ..exceptions import TensorUnavailableForStep
from ..modes import ModeKeys
from ..store.names import is_reduction
from .base import BuiltinRule, Param, register
from .result import RuleResult

_LOSS_NAME = re.compile(r"(?i)loss")

# run -> {key: value}: arrays several rules decode (loss values, labels, argmax predictions),
# emptied when the run is refreshed (its generation changes)
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def run_cache(run: Any) -> dict[tuple, Any]:
    """A dict that lives as long as ``run`` and is emptied when the run is refreshed."""
    gen = getattr(run, "_generation", 0)
    entry = _CACHE.get(run)
    if entry is None or entry.get(("generation",)) != gen:
        entry = {("generation",): gen}
        _CACHE[run] = entry
    return entry


def scalars(arrays: list[np.ndarray]) -> np.ndarray:
    """The first number of each array, as float64 (one C loop for uniform shapes)."""
    if not arrays:
        return np.zeros(0, np.float64)
    try:
        return np.asarray(arrays, dtype=np.float64).reshape(len(arrays), -1)[:, 0]
    except ValueError:  # shapes differ between steps
        return np.array([np.asarray(a, dtype=np.float64).reshape(-1)[0] for a in arrays])


def is_scalar_tensor(run: Any, name: str) -> bool:
    """The tensor's first saved value holds one number (read from the record index)."""
    tensor = run.tensor(name)
    try:
        records = tensor._records()  # the index knows shapes without decoding values
        if len(records) == 0:
            return False
        shape = records.shapes(np.array([0]))[0]
    except Exception:  # a backend without an index: decode one value
        steps = tensor.steps()
        if not steps:
            return False
        shape = tensor.value(steps[0]).shape
    return int(np.prod(shape, dtype=np.int64)) == 1


def named_losses(run: Any) -> list[str]:
    """The tensors a run holds as losses: its ``losses`` collection, else the scalar tensors
    whose name contains "loss" (reductions excluded). What the loss rules read by default
    short of their last fallback (every scalar tensor, whatever it is), so an unrelated scalar
    ("foo", a learning rate) is no loss here."""
    if "losses" in run.collections():
        names = run.tensor_names(collection="losses")
        if names:
            return sorted(names)
    return sorted(n for n in _scalar_tensors(run) if _LOSS_NAME.search(n))


def _scalar_tensors(run: Any) -> list[str]:
    """The run's scalar tensors, reductions excluded: where a loss is looked for by name."""
    return [n for n in run.tensor_names() if not is_reduction(n) and is_scalar_tensor(run, n)]


def select_loss_tensors(
    rule: Any,
    run: Any,
    collection_names: list[str] | None = None,
    tensor_regex: list[str] | None = None,
    use_losses_collection: bool = True,
) -> list[str]:
    """The scalar loss tensors a loss rule reads.

    Union of the ``losses`` collection (when ``use_losses_collection``), ``collection_names``
    and ``tensor_regex``. With none of them matching and none given explicitly: scalar tensors
    whose name contains "loss", else every scalar tensor (reductions excluded). Raises
    MissingTensorError when nothing is found.
    """
    names: set[str] = set()
    if use_losses_collection and "losses" in run.collections():
        names.update(run.tensor_names(collection="losses"))
    if collection_names:
        names.update(run.tensor_names(collection=collection_names))
    if tensor_regex:
        names.update(run.tensor_names(regex=tensor_regex))
    if not names and not collection_names and not tensor_regex:
        scalars = _scalar_tensors(run)
        names.update([n for n in scalars if _LOSS_NAME.search(n)] or scalars)
    if not names:
        wanted = []
        if collection_names:
            wanted.append(f"collection(s) {collection_names}")
        if tensor_regex:
            wanted.append(f"tensor_regex {tensor_regex}")
        what = (
            " or ".join(wanted) if wanted else "a scalar tensor (looked for the losses collection)"
        )
        raise rule.missing_tensor(run, "loss tensor: " + what)
    return sorted(names)


def scalar_series(
    run: Any, name: str, mode: ModeKeys | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, global_steps, values as float64) of a scalar tensor; steps are mode steps for a
    mode, global steps for None/GLOBAL. Read once per run (cached)."""
    mode_arg = None if mode in (None, ModeKeys.GLOBAL) else mode
    key = ("scalar", name, int(mode_arg or 0))
    cache = run_cache(run)
    if key not in cache:
        series = run.tensor(name).series(mode_arg)
        cache[key] = (series.steps, series.global_steps, scalars(series.arrays))
    return cache[key]


def finite_scalar_series(
    run: Any, name: str, mode: ModeKeys | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`scalar_series` without its NaN / inf values (the steps the loss rules compare);
    cached per run."""
    mode_arg = None if mode in (None, ModeKeys.GLOBAL) else mode
    key = ("scalar-finite", name, int(mode_arg or 0))
    cache = run_cache(run)
    if key not in cache:
        steps, gsteps, values = scalar_series(run, name, mode)
        keep = np.isfinite(values)
        if not keep.all():
            steps, gsteps, values = steps[keep], gsteps[keep], values[keep]
        cache[key] = (steps, gsteps, values)
    return cache[key]


def nonfinite_line(run: Any, name: str, label: str, gsteps: np.ndarray, values: np.ndarray) -> str:
    """The message for a loss holding NaN / inf: how many steps, of which kind, and the first
    one (global and mode step); "" when every value is finite."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return ""
    k = int(np.flatnonzero(bad)[0])
    n_nan = int(np.isnan(values).sum())
    kinds = ", ".join(
        f"{count} {kind}"
        for count, kind in ((n_nan, "NaN"), (int(bad.sum()) - n_nan, "inf"))
        if count
    )
    return (
        f"{name} ({label}) is not finite at {int(bad.sum())} of {len(values)} saved steps "
        f"({kinds}), first at {where(run, int(gsteps[k]))}: {fmt(values[k])}"
    )


def resolve_mode(run: Any, names: list[str], mode: ModeKeys | None) -> ModeKeys:
    """SageMaker's choice for mode None: the first of EVAL, TRAIN that holds data, else GLOBAL."""
    if mode is not None:
        return mode
    for candidate in (ModeKeys.EVAL, ModeKeys.TRAIN):
        if any(run.tensor(n).steps(candidate) for n in names):
            return candidate
    return ModeKeys.GLOBAL


def phases(run: Any, mode: ModeKeys) -> list[np.ndarray]:
    """The run's stretches of consecutive global steps in ``mode`` (e.g. one evaluation pass),
    each as an array of global steps, in order."""
    table = run.step_table()
    steps, modes = table["step"], table["mode"]
    if len(steps) == 0:
        return []
    inside = modes == int(mode)
    if not inside.any():
        return []
    edges = np.flatnonzero(np.diff(inside.astype(np.int8)) != 0) + 1
    chunks = np.split(np.arange(len(steps)), edges)
    return [steps[c] for c in chunks if inside[c[0]]]


def fmt(x: float) -> str:
    """A number as people read it: integers plainly, others to 4 significant digits."""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x.is_integer() and abs(x) < 1e12:
        return str(int(x))
    return f"{x:.4g}"


def where(run: Any, global_step: int) -> str:
    """Where a step is, for messages: "global step 12 (EVAL step 3)"."""
    try:
        mode, mode_step = run.mode(global_step).name, run.mode_step(global_step)
        return f"global step {global_step} ({mode} step {mode_step})"
    except Exception:
        return f"global step {global_step}"


def _check_positions(steps: np.ndarray, num_steps: int) -> np.ndarray:
    """Indices of the saved steps where LossNotDecreasing compares: the first saved step with an
    earlier saved step at least ``num_steps`` back, then each first saved step at least
    ``num_steps`` after the previous check. One iteration per check, not per step; regularly
    spaced steps (the usual case) are done without a loop."""
    n = len(steps)
    if n == 0:
        return np.zeros(0, np.int64)
    first = int(np.searchsorted(steps, steps[0] + num_steps, side="left"))
    if first >= n:
        return np.zeros(0, np.int64)
    gaps = np.diff(steps[first:])
    if len(gaps) == 0 or (gaps == gaps[0]).all():
        stride = 1 if len(gaps) == 0 else -(-num_steps // int(gaps[0]))  # ceil
        return np.arange(first, n, max(stride, 1), dtype=np.int64)
    out = [first]
    step_list = steps.tolist()
    i = first
    while True:
        i = bisect_left(step_list, step_list[i] + num_steps, lo=i + 1)
        if i >= n:
            break
        out.append(i)
    return np.asarray(out, dtype=np.int64)


@register
class LossNotDecreasing(BuiltinRule):
    """The loss did not go down over ``num_steps`` steps (SageMaker Debugger's rule).

    At a saved step s with s >= last check + num_steps, loss(s) is compared with loss(p), p
    the newest saved step <= s - num_steps: with diff_percent 0 it triggers iff
    loss(s) >= loss(p), else iff loss(s) >= loss(p) * (1 + diff_percent / 100).

    This project's additions: ``compare="passes"`` compares the mean loss of each stretch of
    ``mode`` steps (an evaluation pass, an epoch of TRAIN steps) with the previous stretch's
    instead of single steps: single batches of a test set sorted by class differ more from
    each other than the model improves. A mode with one stretch (a run that never evaluates)
    is cut into windows of ``num_steps`` steps, each window's mean against the previous one's.
    ``min_decrease_percent`` asks for a decrease of at least that much:
    loss(s) > loss(p) * (1 - min_decrease / 100) triggers (a loss that creeps down by 0.01 %
    is not training).

    NaN / inf losses (this project's decision): each such saved step triggers, and the
    comparisons (and pass means) read the finite values only, as if those steps were not saved.
    """

    name = "loss_not_decreasing"
    params: ClassVar[dict[str, Param]] = {
        "collection_names": Param(None, "str_list", "collections whose tensors are losses"),
        "tensor_regex": Param(None, "regex_list", "regex(es) of loss tensor names"),
        "use_losses_collection": Param(True, "bool", "include the losses collection"),
        "num_steps": Param(10, "int", "steps between comparisons"),
        "diff_percent": Param(0.0, "float", "allowed increase, percent (0: any non-decrease)"),
        "increase_threshold_percent": Param(5.0, "float", "accepted for compatibility"),
        "mode": Param(None, "mode", "None: first of EVAL, TRAIN, GLOBAL with data"),
        "compare": Param("steps", "str", "steps (num_steps apart) | passes (stretch means)"),
        "min_decrease_percent": Param(0.0, "float", "least decrease asked for, percent"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.reset()

    def _validate(self) -> None:
        if self.num_steps is None or self.num_steps < 1:
            raise self.param_error(
                "num_steps", f"must be a whole number >= 1, got {self.num_steps}"
            )
        if self.diff_percent is None or self.diff_percent < 0:
            raise self.param_error("diff_percent", f"must be >= 0, got {self.diff_percent}")
        if self.compare not in ("steps", "passes"):
            raise self.param_error("compare", f"must be 'steps' or 'passes', got {self.compare!r}")
        if self.min_decrease_percent is None or not 0 <= self.min_decrease_percent < 100:
            raise self.param_error(
                "min_decrease_percent", f"must lie in [0, 100), got {self.min_decrease_percent}"
            )
        if self.min_decrease_percent and self.diff_percent:
            raise self.param_error(
                "min_decrease_percent", "and diff_percent are both set: give one of them"
            )
        if self.increase_threshold_percent is not None and self.increase_threshold_percent < 0:
            raise self.param_error(
                "increase_threshold_percent", f"must be >= 0, got {self.increase_threshold_percent}"
            )

    def _fails(self, now: np.ndarray, before: np.ndarray) -> np.ndarray:
        if self.min_decrease_percent:
            return now > before * (1.0 - self.min_decrease_percent / 100.0)
        if self.diff_percent == 0:
            return now >= before
        return now >= before * (1.0 + self.diff_percent / 100.0)

    def _pass_means(
        self,
        run: Any,
        mode: ModeKeys,
        steps: np.ndarray,
        gsteps: np.ndarray,
        values: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(last global step, mean loss) of each stretch of ``mode`` steps holding values, for
        compare="passes"; with fewer than two such stretches (a run that never evaluates), of
        each complete window of ``num_steps`` mode steps instead. NaN / inf values are left
        out of the means; a stretch holding none but them has no mean."""
        group = np.full(len(gsteps), -1, np.int64)
        for k, stretch in enumerate(phases(run, mode) if mode != ModeKeys.GLOBAL else []):
            group[np.isin(gsteps, stretch)] = k
        if len(np.unique(group[group >= 0])) < 2 and len(steps):
            group = (steps - steps[0]) // self.num_steps
            group[group >= (steps[-1] + 1 - steps[0]) // self.num_steps] = -1  # incomplete
        finite = np.isfinite(values)
        ks = np.unique(group[(group >= 0) & finite])
        ends = np.array([gsteps[group == k][-1] for k in ks], np.int64)
        means = np.array([values[(group == k) & finite].mean() for k in ks], np.float64)
        return ends, means

    def _check_passes(
        self,
        run: Any,
        name: str,
        mode: ModeKeys,
        series: tuple[np.ndarray, np.ndarray, np.ndarray],
        lines: list[str],
        trig_steps: set[int],
    ) -> tuple[int, int, np.ndarray]:
        """compare="passes": each stretch's mean loss against the previous stretch's;
        (checks, failed checks, the pass means)."""
        ends, means = self._pass_means(run, mode, *series)
        checks = max(len(means) - 1, 0)
        if checks == 0:
            lines.append(f"{name} ({mode.name}): fewer than 2 passes of data")
            return 0, 0, means
        fails = self._fails(means[1:], means[:-1])
        shown = " -> ".join(fmt(m) for m in means)
        need = (
            f" (asked: {fmt(self.min_decrease_percent)}% lower each pass)"
            if self.min_decrease_percent
            else ""
        )
        if fails.any():
            k = int(np.flatnonzero(fails)[0])
            trig_steps.update(ends[1:][fails].tolist())
            lines.append(
                f"{name} ({mode.name}) mean per pass did not decrease at {int(fails.sum())} of "
                f"{checks} passes; first at the pass ending {where(run, int(ends[k + 1]))}: "
                f"{fmt(means[k + 1])} vs {fmt(means[k])}{need}; pass means {shown}"
            )
        else:
            lines.append(
                f"{name} ({mode.name}) mean per pass decreased at all {checks} passes{need}: "
                f"{shown}"
            )
        return checks, int(fails.sum()), means

    def _evaluate(self, run: Any) -> RuleResult:
        names = select_loss_tensors(
            self, run, self.collection_names, self.tensor_regex, self.use_losses_collection
        )
        mode = resolve_mode(run, names, self.mode)
        trig_steps: set[int] = set()
        lines: list[str] = []
        nonfinite_lines: list[str] = []
        checks_total = fails_total = nonfinite_total = 0
        evidence: dict[str, Any] = {"mode": mode.name, "tensors": names}
        first_detail: tuple[int, str] | None = None
        passes = self.compare == "passes"
        if passes and mode == ModeKeys.GLOBAL:
            raise self.param_error("compare", "'passes' needs a mode (TRAIN or EVAL)")
        for name in names:
            steps, gsteps, values = scalar_series(run, name, mode)
            evidence[f"{name}/steps"] = gsteps
            evidence[f"{name}/values"] = values
            bad = ~np.isfinite(values)
            if bad.any():  # a NaN / inf loss triggers at its step; the finite values compare
                nonfinite_lines.append(nonfinite_line(run, name, mode.name, gsteps, values))
                trig_steps.update(gsteps[bad].tolist())
                nonfinite_total += int(bad.sum())
                evidence[f"{name}/nonfinite_steps"] = gsteps[bad]
            if passes:
                checks, fails, means = self._check_passes(
                    run, name, mode, (steps, gsteps, values), lines, trig_steps
                )
                evidence[f"{name}/pass_means"] = means
                checks_total += checks
                fails_total += fails
                continue
            steps, gsteps, values = finite_scalar_series(run, name, mode)
            pos = _check_positions(steps, self.num_steps)
            if len(pos) == 0:
                finite = " finite" if bad.any() else ""
                lines.append(
                    f"{name} ({mode.name}): fewer than {self.num_steps} steps of{finite} data"
                )
                continue
            prev = np.searchsorted(steps, steps[pos] - self.num_steps, side="right") - 1
            fails = self._fails(values[pos], values[prev])
            checks_total += len(pos)
            fails_total += int(fails.sum())
            if fails.any():
                k = int(np.flatnonzero(fails)[0])
                s, p = int(pos[k]), int(prev[k])
                trig_steps.update(gsteps[pos[fails]].tolist())
                detail = (
                    f"{name} ({mode.name}) did not decrease at {int(fails.sum())} of {len(pos)} "
                    f"checks; first at {where(run, int(gsteps[s]))}: {fmt(values[s])} vs "
                    f"{fmt(values[p])} at {mode.name} step {int(steps[p])}"
                )
                if self.diff_percent:
                    detail += f" (allowed increase {fmt(self.diff_percent)}%)"
                lines.append(detail)
                if first_detail is None or gsteps[s] < first_detail[0]:
                    first_detail = (int(gsteps[s]), detail)
            else:
                lines.append(
                    f"{name} ({mode.name}) decreased at all {len(pos)} checks every "
                    f"{self.num_steps} steps{' (finite values)' if bad.any() else ''}, from "
                    f"{fmt(values[0])} to {fmt(values[-1])}"
                )
        triggers = self.trigger_steps(run, sorted(trig_steps))
        # each NaN / inf step counts as a failed check
        checks_total += nonfinite_total
        fails_total += nonfinite_total
        figure = 100.0 * fails_total / checks_total if checks_total else 0.0
        return self.make_result(
            bool(triggers),
            "; ".join(nonfinite_lines + lines) + ".",
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=figure,
            figure_name="percent of checks where the loss did not decrease",
            limit=0.0,
            evidence=evidence,
            steps_evaluated=checks_total,
            skipped=checks_total == 0,
        )

    # -- the per-step path (custom-rule API, invoke_rule) ------------------------------------

    def reset(self) -> None:
        """Forget the per-step state (the last checked step of each loss)."""
        self._last_checked: dict[str, int] = {}
        self._step_names: list[str] | None = None
        self._step_mode: ModeKeys | None = None

    def invoke_at_step(self, run: Any, global_step: int) -> bool:
        """SageMaker's incremental evaluation at one global step; keeps state between calls.

        Raises TensorUnavailableForStep when no loss was saved at that step (invoke_rule then
        skips it), so calling it for every step of a run gives the same triggers as
        :meth:`evaluate`: a NaN / inf loss triggers at its step, and the comparisons read the
        finite values only. With ``compare="passes"`` the last saved step of each pass (or
        window) compares that pass's mean with the previous one's (:meth:`_pass_fails_at`).
        """
        if self._step_names is None:
            names = select_loss_tensors(
                self, run, self.collection_names, self.tensor_regex, self.use_losses_collection
            )
            mode = resolve_mode(run, names, self.mode)
            if self.compare == "passes" and mode == ModeKeys.GLOBAL:
                raise self.param_error("compare", "'passes' needs a mode (TRAIN or EVAL)")
            self._step_names, self._step_mode = names, mode
        mode = self._step_mode
        assert mode is not None
        if mode is ModeKeys.GLOBAL:
            step = int(global_step)
        else:
            if not run._has_step(int(global_step), None) or run.mode(global_step) != mode:
                raise TensorUnavailableForStep(self._step_names[0], global_step, None)
            step = run.mode_step(global_step)
        saved_any = False
        triggered = False
        for name in self._step_names:
            steps, _, values = scalar_series(run, name, mode)  # decoded once per run
            pos = int(np.searchsorted(steps, step))
            if pos >= len(steps) or steps[pos] != step:
                continue
            saved_any = True
            if self.compare == "passes":
                nonfinite = not np.isfinite(values[pos])
                triggered |= nonfinite or self._pass_fails_at(run, name, mode, int(global_step))
                continue
            if not np.isfinite(values[pos]):
                triggered = True  # not a check: last_checked stays
                continue
            steps, _, values = finite_scalar_series(run, name, mode)
            pos = int(np.searchsorted(steps, step))
            last = self._last_checked.get(name)
            if last is not None and step < last + self.num_steps:
                continue
            i = int(np.searchsorted(steps, step - self.num_steps, side="right")) - 1
            if i < 0:
                continue
            self._last_checked[name] = step
            if bool(self._fails(values[pos], values[i])):
                triggered = True
        if not saved_any:
            raise TensorUnavailableForStep(self._step_names[0], global_step, None)
        return triggered

    def _pass_fails_at(self, run: Any, name: str, mode: ModeKeys, global_step: int) -> bool:
        """compare="passes" at one step: True iff it is the last saved step of a pass whose
        mean loss fails against the previous pass's (the passes as :meth:`_pass_means` cuts
        them from the run as it stands; cached per run)."""
        key = ("loss-pass-means", name, int(mode), self.num_steps)
        cache = run_cache(run)
        if key not in cache:
            cache[key] = self._pass_means(run, mode, *scalar_series(run, name, mode))
        ends, means = cache[key]
        k = int(np.searchsorted(ends, global_step))
        if k == 0 or k >= len(ends) or int(ends[k]) != global_step:
            return False
        return bool(self._fails(means[k], means[k - 1]))


def _phase_means(
    steps: np.ndarray, modes: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a series (global order) into stretches of one mode: (mode, last global step,
    mean value) per stretch. NaN / inf values are left out of the means; a stretch holding
    none but them has mean NaN."""
    if len(steps) == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(modes.astype(np.int16)) != 0) + 1])
    ends = np.concatenate([starts[1:], [len(steps)]])
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), starts)
    counts = np.add.reduceat(finite.astype(np.int64), starts)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return modes[starts], steps[ends - 1], means


def _loss_all_modes(run: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(global steps, modes, values) of a scalar tensor over every mode, cached per run."""
    key = ("scalar-all-modes", name)
    cache = run_cache(run)
    if key not in cache:
        series = run.tensor(name).series(None)
        cache[key] = (series.global_steps, series.modes, scalars(series.arrays))
    return cache[key]


def _note_nonfinite(
    run: Any,
    name: str,
    gsteps: np.ndarray,
    values: np.ndarray,
    lines: list[str],
    trig: set[int],
    evidence: dict[str, Any],
) -> int:
    """Overfit's and Overtraining's NaN / inf handling: every such step (any mode) triggers,
    its message joins ``lines``; returns how many steps were non-finite."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return 0
    lines.append(nonfinite_line(run, name, "all modes", gsteps, values))
    trig.update(gsteps[bad].tolist())
    evidence[f"{name}/nonfinite_steps"] = gsteps[bad]
    return int(bad.sum())


@register
class Overfit(BuiltinRule):
    """Validation loss pulls away from training loss (SageMaker Debugger's rule).

    One check per evaluation pass (a stretch of EVAL steps): (mean EVAL loss of the pass - mean
    TRAIN loss of the stretch of TRAIN steps before it) / mean TRAIN loss > ratio_threshold for
    ``patience`` checks in a row, counting checks that end at global step >= start_step.
    A NaN / inf loss triggers at its step (any mode); the means read the finite values only.
    """

    name = "overfit"
    params: ClassVar[dict[str, Param]] = {
        "tensor_regex": Param(None, "regex_list", "loss tensors (default: the losses)"),
        "start_step": Param(0, "int", "first global step whose checks count"),
        "patience": Param(1, "int", "checks in a row over the threshold"),
        "ratio_threshold": Param(0.1, "float", "(val - train) / train limit"),
    }

    def _validate(self) -> None:
        if self.patience is None or self.patience < 1:
            raise self.param_error("patience", f"must be >= 1, got {self.patience}")
        if self.start_step is None or self.start_step < 0:
            raise self.param_error("start_step", f"must be >= 0, got {self.start_step}")
        if self.ratio_threshold is None:
            raise self.param_error("ratio_threshold", "must be a number")

    def _evaluate(self, run: Any) -> RuleResult:
        names = select_loss_tensors(self, run, None, self.tensor_regex, self.tensor_regex is None)
        trig: set[int] = set()
        lines: list[str] = []
        worst = -np.inf
        checks = 0
        evidence: dict[str, Any] = {"tensors": names}
        nonfinite_lines: list[str] = []
        for name in names:
            gsteps, modes, values = _loss_all_modes(run, name)
            n_bad = _note_nonfinite(run, name, gsteps, values, nonfinite_lines, trig, evidence)
            checks += n_bad
            pmode, pend, pmean = _phase_means(gsteps, modes, values)
            is_eval = pmode == int(ModeKeys.EVAL)
            has_train_before = np.concatenate([[False], pmode[:-1] == int(ModeKeys.TRAIN)])
            k = np.flatnonzero(is_eval & has_train_before & (pend >= self.start_step))
            if len(k) == 0:
                lines.append(f"{name}: no evaluation pass after training steps to compare")
                continue
            train_mean, val_mean = pmean[k - 1], pmean[k]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(train_mean > 0, (val_mean - train_mean) / train_mean, np.nan)
            over = np.nan_to_num(ratio, nan=-np.inf) > self.ratio_threshold
            run_len = np.convolve(over.astype(np.int64), np.ones(self.patience, np.int64))[
                : len(over)
            ]
            hits = np.flatnonzero(run_len >= self.patience)
            checks += len(k)
            worst = max(worst, float(np.nanmax(ratio)) if np.isfinite(ratio).any() else -np.inf)
            evidence[f"{name}/check_steps"] = pend[k]
            evidence[f"{name}/ratio"] = ratio
            if len(hits):
                j = int(hits[0])
                trig.update(pend[k][hits].tolist())
                lines.append(
                    f"{name}: validation loss {fmt(val_mean[j])} was {fmt(100 * ratio[j])}% above "
                    f"training loss {fmt(train_mean[j])} at the evaluation ending "
                    f"{where(run, int(pend[k][j]))}, over {fmt(100 * self.ratio_threshold)}% for "
                    f"{self.patience} check(s) in a row ({len(hits)} of {len(k)} checks)"
                )
            else:
                lines.append(
                    f"{name}: validation loss stayed within {fmt(100 * self.ratio_threshold)}% of "
                    f"training loss at all {len(k)} checks "
                    f"(largest gap {fmt(100 * np.nanmax(ratio))}%)"
                    if np.isfinite(ratio).any()
                    else f"{name}: no check had finite mean losses with a positive training "
                    "loss, no ratio to compare"
                    if n_bad
                    else f"{name}: training loss was not positive, no ratio to compare"
                )
        triggers = self.trigger_steps(run, sorted(trig))
        return self.make_result(
            bool(triggers),
            "; ".join(nonfinite_lines + lines) + ".",
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=worst if np.isfinite(worst) else None,
            figure_name="largest (validation - training) / training loss",
            limit=self.ratio_threshold,
            evidence=evidence,
            steps_evaluated=checks,
            skipped=checks == 0,
        )


def _since_improvement(values: np.ndarray, delta: float) -> np.ndarray:
    """For each check, how many checks ago the last improvement was, with Keras' early-stopping
    meaning: a check improves when its value is below the best so far (the value at the last
    improvement) by more than ``delta``; the first check counts as one.

    The value at an improvement is also the running minimum there, so the next improvement is
    the first index whose running minimum drops below it minus delta: one binary search per
    improvement, not a loop over steps.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, np.int64)
    neg_run_min = -np.minimum.accumulate(values)  # non-decreasing
    improved = [0]
    i = 0
    while True:
        j = int(np.searchsorted(neg_run_min, -(values[i] - delta), side="right"))
        if j >= n or j <= i:
            break
        improved.append(j)
        i = j
    marks = np.zeros(n, np.int64)
    marks[improved] = improved
    idx = np.arange(n)
    return idx - np.maximum.accumulate(marks)


@register
class Overtraining(BuiltinRule):
    """Training or validation loss stopped improving (SageMaker Debugger's early-stopping rule).

    Training checks are the saved TRAIN steps; validation checks are the evaluation passes
    (mean EVAL loss of each stretch of EVAL steps). A check improves when its loss is below the
    best so far by more than ``delta`` (absolute, as Keras' EarlyStopping min_delta). Triggers
    when the checks since the last improvement exceed patience_train (training) or
    patience_validation (validation). A NaN / inf loss triggers at its step (any mode); the
    checks read the finite values only.
    """

    name = "overtraining"
    params: ClassVar[dict[str, Param]] = {
        "patience_train": Param(5, "int", "training checks without improvement"),
        "patience_validation": Param(10, "int", "evaluation passes without improvement"),
        "delta": Param(0.01, "float", "least improvement that counts (absolute)"),
    }

    def _validate(self) -> None:
        for p in ("patience_train", "patience_validation"):
            if getattr(self, p) is None or getattr(self, p) < 1:
                raise self.param_error(p, f"must be >= 1, got {getattr(self, p)}")
        if self.delta is None or self.delta < 0:
            raise self.param_error("delta", f"must be >= 0, got {self.delta}")

    def _evaluate(self, run: Any) -> RuleResult:
        names = select_loss_tensors(self, run)
        trig: set[int] = set()
        lines: list[str] = []
        figure = 0.0
        checks = 0
        evidence: dict[str, Any] = {"tensors": names}
        nonfinite_lines: list[str] = []
        for name in names:
            gsteps, modes, values = _loss_all_modes(run, name)
            checks += _note_nonfinite(run, name, gsteps, values, nonfinite_lines, trig, evidence)
            train = (modes == int(ModeKeys.TRAIN)) & np.isfinite(values)
            pmode, pend, pmean = _phase_means(gsteps, modes, values)
            ev = (pmode == int(ModeKeys.EVAL)) & np.isfinite(pmean)
            for label, steps_, vals, patience in (
                ("training", gsteps[train], values[train], self.patience_train),
                ("validation", pend[ev], pmean[ev], self.patience_validation),
            ):
                if len(vals) == 0:
                    continue
                since = _since_improvement(vals, self.delta)
                checks += len(vals)
                figure = max(figure, float(since.max()) / patience)
                evidence[f"{name}/{label}_since_improvement"] = since
                hits = np.flatnonzero(since > patience)
                unit = "saved TRAIN steps" if label == "training" else "evaluation passes"
                if len(hits):
                    j = int(hits[0])
                    trig.update(steps_[hits].tolist())
                    best = float(vals[: j + 1].min())
                    lines.append(
                        f"{name}: {label} loss did not improve by more than {fmt(self.delta)} for "
                        f"{int(since[j])} {unit} (patience {patience}) by "
                        f"{where(run, int(steps_[j]))}; best {fmt(best)}, now {fmt(vals[j])}"
                    )
                else:
                    lines.append(
                        f"{name}: {label} loss kept improving (at most {int(since.max())} "
                        f"{unit} without improvement; patience {patience})"
                    )
        triggers = self.trigger_steps(run, sorted(trig))
        return self.make_result(
            bool(triggers),
            "; ".join(nonfinite_lines + lines) + "."
            if nonfinite_lines or lines
            else "No TRAIN or EVAL loss values to check.",
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=figure,
            figure_name="longest stretch without improvement / patience",
            limit=1.0,
            evidence=evidence,
            steps_evaluated=checks,
            skipped=checks == 0,
        )
