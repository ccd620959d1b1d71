"""``assert_*`` helpers: a rule's verdict as a test assertion with a message a CI log can show.

Each helper evaluates one built-in rule (Debugger's parameter names and defaults, plus the plain
parameters its name promises, e.g. ``assert_dead_relu_below(run, percent=50)``), returns the
``RuleResult`` when the rule did not trigger, and raises :class:`ModelRuleFailure` (an
``AssertionError``) when it did. The message names the rule, its parameters, where it first
triggered (global and mode step) and the evidence as text: sparklines of the loss around the
trigger, the most and least frequent classes, the confused pairs, the dead units per layer.

Under pytest with the plugin, results are cached per (run, rule, parameters), listed in the
terminal summary and verdicts.json, and the message links the HTML report's section. Nothing
heavy is imported until a helper is called.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from .exceptions import RuleParameterError
from .textplot import bar_chart, fmt_number, series_window, sparkline

if TYPE_CHECKING:
    from .rules.result import RuleResult

__all__ = [
    "ModelRuleFailure",
    "assert_class_balance",
    "assert_dead_relu_below",
    "assert_good_weight_initialization",
    "assert_inputs_normalized",
    "assert_labels_not_noisy",
    "assert_loss_decreasing",
    "assert_no_confusion",
    "assert_no_direction_confusion",
    "assert_no_exploding_tensor",
    "assert_no_overfit",
    "assert_no_overtraining",
    "assert_no_regression",
    "assert_no_saturated_activation",
    "assert_no_vanishing_gradient",
    "assert_not_all_zero",
    "assert_not_stalled",
    "assert_recall_above",
    "assert_rule",
    "assert_similar_across_runs",
    "assert_tensor_variance",
    "assert_tensors_change",
    "assert_transfer_learning",
    "assert_weight_update_ratio",
    "format_failure",
    "render_evidence",
]

#: helper -> the built-in rule it evaluates (docs/assertions.md lists their parameters)
HELPER_RULES: dict[str, str] = {
    "assert_loss_decreasing": "loss_not_decreasing",
    "assert_class_balance": "class_imbalance",
    "assert_no_direction_confusion": "direction_confusion",
    "assert_dead_relu_below": "dead_relu",
    "assert_no_vanishing_gradient": "vanishing_gradient",
    "assert_no_exploding_tensor": "exploding_tensor",
    "assert_good_weight_initialization": "poor_weight_initialization",
    "assert_no_saturated_activation": "saturated_activation",
    "assert_weight_update_ratio": "weight_update_ratio",
    "assert_not_all_zero": "all_zero",
    "assert_no_overfit": "overfit",
    "assert_no_overtraining": "overtraining",
    "assert_tensor_variance": "tensor_variance",
    "assert_tensors_change": "unchanged_tensor",
    "assert_inputs_normalized": "check_input_images",
    "assert_no_confusion": "confusion",
    "assert_not_stalled": "stalled_training_rule",
    "assert_similar_across_runs": "similar_across_runs",
    "assert_recall_above": "recall_floor",
    "assert_labels_not_noisy": "noisy_labels",
    "assert_transfer_learning": "transfer_learning",
    "assert_no_regression": "baseline_comparison",
}

#: lines of evidence at most in one message (a CI log stays readable)
MAX_EVIDENCE_LINES = 40


class ModelRuleFailure(AssertionError):
    """A rule triggered where a test asserted it would not; ``.result`` is its RuleResult."""

    def __init__(self, result: RuleResult, message: str, report_link: str | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.report_link = report_link


# -- evaluation ------------------------------------------------------------------------------


def _evaluate(run: Any, rule: str, params: dict[str, Any]) -> tuple[Any, RuleResult, bool]:
    """(run, result, cached), through the plugin's session when pytest runs us."""
    from .pytest.session import active_session, evaluate_rule
    from .store.run import open_run

    session = active_session()
    if not hasattr(run, "tensor_names"):
        run = open_run(run)
    if session is not None:
        result, cached = session.evaluate(run, rule, params)
    else:
        result, cached = evaluate_rule(run, rule, params), False
    return run, result, cached


def _check(
    run: Any, rule: str, params: dict[str, Any], helper: str, aliases: dict[str, str] | None = None
) -> RuleResult:
    __tracebackhide__ = True
    from .pytest.session import active_session

    # (a parameter given as None reaches the rule: limit=None means "no count limit" there;
    # the helpers leave out their own arguments that were not given)
    try:
        run, result, cached = _evaluate(run, rule, params)
    except RuleParameterError as exc:
        for key, given_as in (aliases or {}).items():  # the argument the caller wrote
            if f"parameter {key!r}" in str(exc):
                raise RuleParameterError(
                    f"{helper}: {given_as}={params[key]!r}: "
                    + str(exc).replace(f"parameter {key!r}", f"parameter {key!r} ({given_as})")
                ) from None
        raise
    if not result.evidence_text:
        try:
            result.evidence_text = render_evidence(result, run)
        except Exception as exc:  # evidence is help, never the verdict
            result.evidence_text = f"(evidence could not be shown: {type(exc).__name__}: {exc})"
    session = active_session()
    link = session.report_link(result) if session is not None else None
    if session is not None:
        session.record(result, cached=cached)
    if result.triggered:
        raise ModelRuleFailure(result, format_failure(result, link, helper=helper), link)
    return result


# -- messages --------------------------------------------------------------------------------


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return fmt_number(value)
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    name = getattr(value, "name", None)
    if name is not None and hasattr(value, "tensor_names"):  # a run
        return f"<run {name}>"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{', '.join(map(_fmt_param, value[:8]))}, ... {len(value)} items]"
    return repr(value)


def _where(ft: Any) -> str:
    text = f"global step {ft.step}"
    if ft.mode and ft.mode_step is not None:
        text += f" ({ft.mode} step {ft.mode_step})"
    return text


def format_failure(result: RuleResult, report_link: str | None = None, *, helper: str = "") -> str:
    """The message of a failed assertion: rule, parameters, where, figure, why, evidence."""
    run = f" on run {result.run_name!r}" if result.run_name else ""
    via = f" ({helper})" if helper else ""
    lines = [f"model rule {result.name} triggered{run}{via}"]
    params = ", ".join(f"{k}={_fmt_param(v)}" for k, v in result.parameters.items())
    lines.append(f"  parameters: {params or '(none)'}")
    if result.first_trigger is not None:
        where = f"  first triggered at {_where(result.first_trigger)}"
        n = len(result.triggers)
        if n > 1:
            shown = ", ".join(str(t.step) for t in result.triggers[:8])
            more = ", ..." if n > 8 else ""
            where += f"; triggered at {n} steps ({shown}{more})"
        lines.append(where)
    if result.figure is not None:
        fig = f"  {result.figure_name or 'figure'}: {fmt_number(result.figure)}"
        if result.limit is not None:
            fig += f" (limit {fmt_number(result.limit)})"
        lines.append(fig)
    if result.explanation:
        lines.append(f"  why: {result.explanation}")
    if result.evidence_text:
        lines.append("  evidence:")
        lines.extend(f"    {line}" for line in result.evidence_text.splitlines())
    if report_link:
        lines.append(f"  report: {report_link}")
    return "\n".join(lines)


def _class(run: Any, cls: int) -> str:
    names = getattr(run, "class_names", None)
    if names and 0 <= cls < len(names):
        return f"{cls} ({names[cls]})"
    return f"class {cls}"


def _seq(value: Any) -> list[Any] | None:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else None


def _loss_lines(result: RuleResult, run: Any) -> list[str]:
    ev = result.evidence
    lines = []
    center = result.first_step
    for name in ev.get("tensors", []):
        steps, values = _seq(ev.get(f"{name}/steps")), _seq(ev.get(f"{name}/values"))
        if not steps or values is None:
            continue
        mode = ev.get("mode", "")
        lines.append(
            f"{name} ({mode}, {len(values)} steps, {fmt_number(values[0])} -> "
            f"{fmt_number(values[-1])}): {sparkline(values)}"
        )
        bad = _seq(ev.get(f"{name}/nonfinite_steps"))
        if bad:
            shown = ", ".join(str(s) for s in bad[:8]) + (", ..." if len(bad) > 8 else "")
            lines.append(f"  NaN / inf (! above) at {len(bad)} global steps: {shown}")
        window = series_window(steps, values, center, before=6, after=3)
        if window:
            lines.append(
                "  around the trigger (global step: value): "
                + "  ".join(
                    f"{'>' if center is not None and s == center else ''}{s}: {fmt_number(v)}"
                    for s, v in window
                )
            )
    return lines


def _activity_lines(result: RuleResult, run: Any) -> list[str]:
    ev = result.evidence
    layers = list(ev.get("layers", []))
    key = next((k for k in ev if k.endswith("_percent")), None)
    steps = _seq(ev.get("steps"))
    mat = _seq(ev.get(key)) if key else None
    if not layers or mat is None or not steps:
        return []
    word = key[: -len("_percent")]
    row = steps.index(result.first_step) if result.first_step in steps else len(steps) - 1
    at = mat[row]
    rows = []
    for j, layer in enumerate(layers):
        col = [r[j] for r in mat if r[j] is not None and not _isnan(r[j])]
        rows.append((layer, at[j] if not _isnan(at[j]) else 0.0, max(col) if col else 0.0))
    label = f"global step {steps[row]}"
    lines = [f"{word} units per layer at {label} (max over the run in brackets):"]
    chart = bar_chart(
        [(f"{n}", v) for n, v, _ in rows], maximum=100.0, fmt="{:.1f}%", limit=result.limit
    )
    lines.extend(f"{c}  [max {fmt_number(m)}%]" for c, (_, _, m) in zip(chart, rows))
    for j, layer in enumerate(layers[:6]):
        col = [r[j] for r in mat]
        lines.append(f"{layer} over steps: {sparkline(col, lo=0.0, hi=100.0)}")
    return lines


def _isnan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _imbalance_lines(result: RuleResult, run: Any) -> list[str]:
    counts = _seq(result.evidence.get("class_counts"))
    if not counts:
        return []
    order = sorted(range(len(counts)), key=lambda c: counts[c], reverse=True)
    seen = [c for c in order if counts[c] > 0]
    lines = [f"label counts over {len(counts)} classes: {sparkline(counts)}"]
    top = max(counts)
    lines.append("most frequent:")
    lines.extend(
        f"  {x}" for x in bar_chart([(_class(run, c), counts[c]) for c in seen[:3]], maximum=top)
    )
    rest = seen[3:][-3:]  # the least frequent not already listed (few classes: none left)
    if rest:
        lines.append("least frequent:")
        lines.extend(
            f"  {x}" for x in bar_chart([(_class(run, c), counts[c]) for c in rest], maximum=top)
        )
    unseen = [c for c in order if counts[c] == 0]
    if unseen:
        lines.append(f"never seen: {', '.join(_class(run, c) for c in unseen[:10])}")
    return lines


def _pairs_lines(result: RuleResult, run: Any) -> list[str]:
    ev = result.evidence
    pairs = ev.get("pairs") or []
    lines = []
    for pair in pairs:
        a, b = (int(x) for x in pair)
        cum = _seq(ev.get(f"{a}-{b}/cumulative"))
        if not cum:
            continue
        total = int(cum[-1])
        over = "" if result.limit is None or total <= result.limit else "  <- over"
        lines.append(
            f"{_class(run, a)} <-> {_class(run, b)}: confused {total} times "
            f"(cumulative {sparkline(cum)}){over}"
        )
    return lines


def _recall_lines(result: RuleResult, run: Any) -> list[str]:
    keys = [k for k in result.evidence if k.startswith("recall@")]
    if not keys:
        return []
    recall = _seq(result.evidence[keys[-1]]) or []
    known = [(c, r) for c, r in enumerate(recall) if not _isnan(r)]
    worst = sorted(known, key=lambda cr: cr[1])[:5]
    lines = [f"lowest recall ({keys[-1]}):"]
    lines.extend(
        f"  {x}"
        for x in bar_chart(
            [(_class(run, c), 100 * r) for c, r in worst], maximum=100.0, fmt="{:.1f}%"
        )
    )
    return lines


def _baseline_lines(result: RuleResult, run: Any) -> list[str]:
    ev = result.evidence
    lines = []
    table = ev.get("rules") or {}
    if isinstance(table, dict) and table:
        width = max(len(str(n)) for n in table)
        lines.append(f"{'rule'.ljust(width)}  {'baseline':>10}  {'this run':>10}")
        for name, row in table.items():
            if not isinstance(row, dict):
                continue
            before, now = row.get("baseline_figure"), row.get("figure")
            change = row.get("change") or ("changed" if before != now else "same")
            mark = "" if change == "same" else f"  <- {change}"
            lines.append(
                f"{str(name).ljust(width)}  {fmt_number(before):>10}  {fmt_number(now):>10}{mark}"
            )
    now, before = _seq(ev.get("recall")), _seq(ev.get("baseline_recall"))
    if now and before and len(now) == len(before):
        drops = sorted(
            ((b - n, c) for c, (n, b) in enumerate(zip(now, before)) if not _isnan(n - b)),
            reverse=True,
        )
        worst = [(d, c) for d, c in drops[:5] if d > 0]
        if worst:
            lines.append("largest recall drops (baseline -> this run):")
            lines.extend(
                f"  {_class(run, c)}: {fmt_number(100 * before[c])}% -> {fmt_number(100 * now[c])}%"
                for _, c in worst
            )
    if ev.get("baseline"):
        lines.append(f"baseline: {ev['baseline']}")
    return lines


_RENDERERS = {
    "baseline_comparison": _baseline_lines,
    "loss_not_decreasing": _loss_lines,
    "dead_relu": _activity_lines,
    "saturated_activation": _activity_lines,
    "class_imbalance": _imbalance_lines,
    "direction_confusion": _pairs_lines,
    "recall_floor": _recall_lines,
}


def _generic_lines(result: RuleResult) -> list[str]:
    """Any evidence: scalars as values, 1-D number series as sparklines, the rest by shape."""
    lines = []
    for key, value in result.evidence.items():
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) == 0:
            value = value.item()
        if isinstance(value, (int, float, str, bool)) or value is None:
            lines.append(f"{key}: {fmt_number(value) if isinstance(value, float) else value}")
            continue
        seq = _seq(value)
        if seq is not None and seq and all(isinstance(v, (int, float)) for v in seq):
            if len(seq) <= 6:
                lines.append(f"{key}: {', '.join(fmt_number(v) for v in seq)}")
            else:
                nums = [v for v in seq if not _isnan(v)]
                span = f"{fmt_number(min(nums))} .. {fmt_number(max(nums))}" if nums else "nan"
                lines.append(f"{key} ({len(seq)} values, {span}): {sparkline(seq)}")
        elif seq is not None and seq and all(isinstance(v, str) for v in seq):
            lines.append(f"{key}: {', '.join(seq[:8])}{' ...' if len(seq) > 8 else ''}")
        elif shape is not None:
            lines.append(f"{key}: array of shape {tuple(shape)}")
        elif isinstance(value, dict):
            items = list(value.items())[:6]
            lines.append(f"{key}: " + ", ".join(f"{k}={_brief(v)}" for k, v in items))
    return lines


def _brief(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) > 0:
        return f"<{'x'.join(map(str, shape))}>"
    if isinstance(value, float):
        return fmt_number(value)
    return str(value)[:40]


def render_evidence(result: RuleResult, run: Any = None) -> str:
    """The evidence of a result as plain text for a CI log (at most MAX_EVIDENCE_LINES)."""
    renderer = _RENDERERS.get(result.name)
    lines = renderer(result, run) if renderer else []
    if not lines:
        lines = _generic_lines(result)
    if len(lines) > MAX_EVIDENCE_LINES:
        lines = [*lines[:MAX_EVIDENCE_LINES], f"... {len(lines) - MAX_EVIDENCE_LINES} more lines"]
    return "\n".join(lines)


# -- the helpers -----------------------------------------------------------------------------


def assert_rule(run: Any, name: str, **params: Any) -> RuleResult:
    """Assert that the built-in rule ``name`` does not trigger on ``run`` (a Run or a path)."""
    __tracebackhide__ = True
    return _check(run, name, params, helper=f"assert_rule({name!r})")


def assert_loss_decreasing(run: Any, **params: Any) -> RuleResult:
    """LossNotDecreasing: ``num_steps`` (10), ``diff_percent`` (0), ``mode`` (None: the first
    of EVAL, TRAIN, GLOBAL with data), ``tensor_regex``, ``collection_names``..."""
    __tracebackhide__ = True
    return _check(run, "loss_not_decreasing", params, "assert_loss_decreasing")


def assert_class_balance(run: Any, **params: Any) -> RuleResult:
    """ClassImbalance: ``threshold_imbalance`` (10), ``threshold_misprediction`` (0.7),
    ``samples`` (500), ``argmax``, ``labels_regex``, ``predictions_regex``, ``mode``."""
    __tracebackhide__ = True
    return _check(run, "class_imbalance", params, "assert_class_balance")


class _Default(int):
    """A helper argument's default, told apart from the same value given (its repr is the
    value's, so the signature reads as usual)."""


def assert_no_direction_confusion(
    run: Any, pairs: Any = None, max_confusions: int | None = _Default(10), **params: Any
) -> RuleResult:
    """DirectionConfusion: fails when a pair (e.g. ``[(19, 20)]``) is confused, both ways
    together, more than ``max_confusions`` times (the rule's ``limit``; None: the rate
    ``max_rate`` alone), as the seed's rule."""
    __tracebackhide__ = True
    if "limit" in params and not isinstance(max_confusions, _Default):
        raise TypeError("give max_confusions or limit, not both")
    params.setdefault("limit", None if max_confusions is None else int(max_confusions))
    if pairs is not None:
        params["pairs"] = pairs
    return _check(run, "direction_confusion", params, "assert_no_direction_confusion")


def _alias(params: dict[str, Any], key: str, value: Any, given_as: str) -> dict[str, str]:
    """Put a helper's friendlier argument ``given_as`` into the rule parameter ``key``;
    giving both is a TypeError. Returns {key: given_as} when it was given (for _check's
    errors, which then name the argument the caller wrote)."""
    if value is None:
        return {}
    if params.get(key) is not None:
        raise TypeError(f"give {given_as} or {key}, not both")
    params[key] = value
    return {key: given_as}


def assert_dead_relu_below(run: Any, percent: float | None = None, **params: Any) -> RuleResult:
    """DeadRelu: fails when a layer has more than ``percent`` (``threshold_layer``, 50) dead
    units; ``threshold_inactivity`` (1), ``tensor_regex`` (``.*relu_output``)."""
    __tracebackhide__ = True
    aliases = _alias(params, "threshold_layer", percent, "percent")
    return _check(run, "dead_relu", params, "assert_dead_relu_below", aliases)


def assert_no_vanishing_gradient(run: Any, **params: Any) -> RuleResult:
    """VanishingGradient: ``threshold`` (1e-7) on mean(|gradient|)."""
    __tracebackhide__ = True
    return _check(run, "vanishing_gradient", params, "assert_no_vanishing_gradient")


def assert_no_exploding_tensor(run: Any, **params: Any) -> RuleResult:
    """ExplodingTensor: ``collection_names``, ``tensor_regex``, ``only_nan`` (False)."""
    __tracebackhide__ = True
    return _check(run, "exploding_tensor", params, "assert_no_exploding_tensor")


def assert_good_weight_initialization(run: Any, **params: Any) -> RuleResult:
    """PoorWeightInitialization: ``activation_inputs_regex``, ``threshold`` (10),
    ``distribution_range`` (0.001), ``patience`` (5), ``steps`` (10)."""
    __tracebackhide__ = True
    return _check(run, "poor_weight_initialization", params, "assert_good_weight_initialization")


def assert_no_saturated_activation(run: Any, **params: Any) -> RuleResult:
    """SaturatedActivation: ``tensor_regex``, the tanh/sigmoid bounds, ``threshold_inactivity``
    (1), ``threshold_layer`` (50)."""
    __tracebackhide__ = True
    return _check(run, "saturated_activation", params, "assert_no_saturated_activation")


def assert_weight_update_ratio(run: Any, **params: Any) -> RuleResult:
    """WeightUpdateRatio: ``num_steps``, ``large_threshold`` (10), ``small_threshold`` (1e-8),
    ``epsilon`` (1e-9)."""
    __tracebackhide__ = True
    return _check(run, "weight_update_ratio", params, "assert_weight_update_ratio")


def assert_not_all_zero(run: Any, **params: Any) -> RuleResult:
    """AllZero: ``collection_names`` / ``tensor_regex`` (one required), ``threshold`` (100%)."""
    __tracebackhide__ = True
    return _check(run, "all_zero", params, "assert_not_all_zero")


def assert_no_overfit(run: Any, **params: Any) -> RuleResult:
    """Overfit: ``tensor_regex``, ``start_step`` (0), ``patience`` (1), ``ratio_threshold``
    (0.1)."""
    __tracebackhide__ = True
    return _check(run, "overfit", params, "assert_no_overfit")


def assert_no_overtraining(run: Any, **params: Any) -> RuleResult:
    """Overtraining: ``patience_train`` (5), ``patience_validation`` (10), ``delta`` (0.01)."""
    __tracebackhide__ = True
    return _check(run, "overtraining", params, "assert_no_overtraining")


def assert_tensor_variance(run: Any, **params: Any) -> RuleResult:
    """TensorVariance: ``collection_names``, ``tensor_regex``, ``max_threshold``,
    ``min_threshold``."""
    __tracebackhide__ = True
    return _check(run, "tensor_variance", params, "assert_tensor_variance")


def assert_tensors_change(run: Any, **params: Any) -> RuleResult:
    """UnchangedTensor: ``collection_names``, ``tensor_regex``, ``num_steps`` (3), ``rtol``,
    ``atol``, ``equal_nan``."""
    __tracebackhide__ = True
    return _check(run, "unchanged_tensor", params, "assert_tensors_change")


def assert_inputs_normalized(run: Any, **params: Any) -> RuleResult:
    """CheckInputImages: ``threshold_mean`` (0.2), ``threshold_samples`` (500), ``regex``,
    ``channel`` (1)."""
    __tracebackhide__ = True
    return _check(run, "check_input_images", params, "assert_inputs_normalized")


def assert_no_confusion(run: Any, **params: Any) -> RuleResult:
    """Confusion: ``category_no``, ``labels``, ``predictions``, ``min_diag`` (0.9),
    ``max_off_diag`` (0.1), ``mode``."""
    __tracebackhide__ = True
    return _check(run, "confusion", params, "assert_no_confusion")


def assert_not_stalled(run: Any, **params: Any) -> RuleResult:
    """StalledTrainingRule: ``threshold`` (1800 s without a new step)."""
    __tracebackhide__ = True
    return _check(run, "stalled_training_rule", params, "assert_not_stalled")


def assert_similar_across_runs(run: Any, other: Any = None, **params: Any) -> RuleResult:
    """SimilarAcrossRuns: ``other`` (or ``other_trials``) is the run to compare with;
    ``collection_names``, ``tensor_regex``."""
    __tracebackhide__ = True
    if other is not None:
        other = other if isinstance(other, (list, tuple)) else [other]
    aliases = _alias(params, "other_trials", other, "other")
    return _check(run, "similar_across_runs", params, "assert_similar_across_runs", aliases)


def assert_recall_above(run: Any, minimum: float | None = None, **params: Any) -> RuleResult:
    """RecallFloor: every judged class's recall at least ``minimum`` (``min_recall``, 0.5);
    ``min_samples`` (20), ``classes``, ``mode`` (EVAL), ``phases`` ("last")."""
    __tracebackhide__ = True
    aliases = _alias(params, "min_recall", minimum, "minimum")
    return _check(run, "recall_floor", params, "assert_recall_above", aliases)


def assert_labels_not_noisy(run: Any, min_ratio: float | None = None, **params: Any) -> RuleResult:
    """NoisyLabels: fails when the model's accuracy on its training labels just before an
    evaluation is under ``min_ratio`` (0.85) times its EVAL accuracy; ``train_window`` (0.25),
    ``min_samples`` (200), ``phases`` ("last")."""
    __tracebackhide__ = True
    if min_ratio is not None:
        params["min_ratio"] = min_ratio
    return _check(run, "noisy_labels", params, "assert_labels_not_noisy")


def assert_transfer_learning(run: Any, **params: Any) -> RuleResult:
    """TransferLearning: parameters matching ``frozen_regex`` change by at most ``frozen_atol``
    (0), those of the new head (``head_regex``, ``fc\\.``) by more than ``min_head_update``."""
    __tracebackhide__ = True
    return _check(run, "transfer_learning", params, "assert_transfer_learning")


def assert_no_regression(run: Any, baseline: Any, **params: Any) -> RuleResult:
    """BaselineComparison: no rule figure or class got worse than on ``baseline`` by more than
    the rule's margins (see docs/assertions.md)."""
    __tracebackhide__ = True
    return _check(
        run, "baseline_comparison", {"baseline": baseline, **params}, "assert_no_regression"
    )
