"""The pictures of the seed's investigation, from a run (and optionally a baseline run).

Every function takes a :class:`~pytest_modelrules.store.run.Run` (or a path), returns a
matplotlib :class:`~matplotlib.figure.Figure` drawn on the Agg canvas (no display, no pyplot
state) and, given ``path``, also saves it as a PNG. Large runs stay fast: stored reductions
are read instead of full tensors where the run holds them, the loss line is subsampled past
``max_points`` and the gallery reads model inputs only at the steps it shows.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import MissingTensorError, ModelRulesError
from ..modes import ModeKeys, parse_mode
from ..rules._labels import decode_classes, decode_labels, left_out_note, scores_width
from ..rules._labels import in_range as _in_range
from ..store.names import (
    compute_reduction,
    is_reduction,
    parse_reduction_name,
    reduction_tensor_name,
)
from .mapping import evidence_plots

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..rules.result import RuleResult
    from ..store.run import Run

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_LOSS_POINTS = 5000
MAX_NAMED_CLASSES = 100  # past this many classes, axes show ids at matplotlib's own ticks
DPI = 100

_LABEL_NAMES = (r"CrossEntropyLoss_input_1$", r"(?i)labels?$", r"(?i)labels?")
_LOGIT_NAMES = (r"CrossEntropyLoss_input_0$", r"(?i)(predictions?|logits)$", r"(?i)predictions?")
_INPUT_NAMES = (r"ResNet_input_0$", r"(?i)model_input", r"^(?!.*(?i:loss))[A-Za-z0-9]+_input_0$")
_LOSS_NAMES = (r"CrossEntropyLoss_output_0$", r"(?i)loss\w*_output_0$", r"(?i)loss")


# -- matplotlib plumbing ------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A Figure on its own Agg canvas: no display, no pyplot registry to leak figures into."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pytest-modelrules' plots need matplotlib: pip install 'pytest-modelrules[plots]'"
        ) from exc
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a figure as a PNG (folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI)
    return out


def figure_png(fig: Figure) -> bytes:
    """A figure as PNG bytes (what the HTML report embeds)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


# -- reading helpers ----------------------------------------------------------------------------


def _open(run: Any) -> Run:
    from ..store.run import open_run

    return open_run(run)


def _mode(mode: Any) -> ModeKeys | None:
    m = parse_mode(mode)
    return None if m is ModeKeys.GLOBAL else m


def _mode_with_data(run: Run, mode: Any) -> ModeKeys | None:
    """``mode`` as ModeKeys; a run that recorded no step in that mode (a SageMaker Debugger
    job that never set modes saves GLOBAL steps only) is read over all its steps instead."""
    m = _mode(mode)
    if m is not None and not run.steps(m):
        return None
    return m


def _step_label(mode: ModeKeys | None) -> str:
    return "global step" if mode is None else f"{mode.name} step"


def find_tensor(run: Run, patterns: Sequence[str], what: str, given: str | None = None) -> str:
    """The tensor to plot: ``given`` if set, else the first full tensor that matches a
    pattern (patterns tried in order); MissingTensorError names what was looked for."""
    if given is not None:
        if not run.has_tensor(given):
            run.tensor(given)  # raises TensorUnavailable with close names
        return given
    names = [n for n in run.tensor_names() if not is_reduction(n)]
    for pattern in patterns:
        rx = re.compile(pattern)
        found = [n for n in names if rx.search(n)]
        if found:
            return found[0]
    raise MissingTensorError(
        f"run {run.name!r} has no {what} tensor (looked for {', '.join(patterns)}); "
        f"pass the tensor's name explicitly"
    )


def _pick_mode(run: Run, tensor: str, mode: Any, prefer: Sequence[ModeKeys]) -> ModeKeys | None:
    """``mode`` when given, else the first preferred mode in which ``tensor`` was saved."""
    if mode is not None:
        return _mode(mode)
    t = run.tensor(tensor)
    for m in prefer:
        if t.steps(m):
            return m
    return None


def class_names_of(run: Run, num_classes: int, given: Sequence[str] | None = None) -> list[str]:
    """Class names for ``num_classes`` classes: given, from the run's metadata, else ids."""
    names = list(given) if given is not None else (run.class_names or [])
    return [names[i] if i < len(names) else str(i) for i in range(num_classes)]


def _labels_of(arrays: Iterable[np.ndarray], predictions: Any | None = None) -> np.ndarray:
    """Integer labels from label batches, flattened: class ids of any shape ((N,), a
    segmentation mask (N, H, W)), or class probabilities / one-hot rows, whose argmax over the
    class axis 1 is the class (``predictions``: a batch of the run's logits, which tells the
    probabilities' shape; without it only (N, C) rows are read so)."""
    parts = [decode_labels(a, predictions) for a in arrays]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts).astype(np.int64)


# -- labels outside the classes ------------------------------------------------------------------
# A label the model cannot predict (PyTorch's ignore_index -100, a -1 "unknown", 255 in
# segmentation masks, or a bad id) is no class: the plots leave it out and say so, on the figure
# (its title) and in the figure's notes, which the HTML report prints under the plot. The test
# and the wording (``_in_range``, ``left_out_note``) are shared with the rules (rules/_labels.py).

NOTES_ATTR = "modelrules_notes"


def figure_notes(fig: Figure) -> list[str]:
    """What a plot says it left out (labels outside the classes), one line each."""
    return list(getattr(fig, NOTES_ATTR, ()))


def _add_notes(fig: Figure, notes: Iterable[str]) -> list[str]:
    """Keep the non-empty notes on the figure (see :func:`figure_notes`); returns them."""
    kept = [n for n in notes if n]
    setattr(fig, NOTES_ATTR, figure_notes(fig) + kept)
    return kept


def _class_count(
    run: Run, num_classes: int | None, class_names: Sequence[str] | None, width: int | None
) -> int | None:
    """The number of classes: ``num_classes``, else the logits' width, else the number of
    class names (given, else the run's); None when nothing says (only negatives are out)."""
    if num_classes:
        return int(num_classes)
    if width:
        return width
    names = class_names if class_names is not None else run.class_names
    return len(names) if names else None


def _logits_batch(run: Run, mode: ModeKeys | None) -> np.ndarray | None:
    """One saved batch of the run's logits (its shape says the class count, axis 1, and the
    shape of class probabilities as labels); None without (readable) logits."""
    try:
        name = find_tensor(run, _LOGIT_NAMES, "predictions/logits")
        t = run.tensor(name)
        steps = t.steps(mode)
        if not steps:
            mode, steps = None, t.steps()
        return t.value(steps[0], mode) if steps else None
    except (ModelRulesError, OSError, ValueError):  # no (readable) logits: no width
        return None


def _count_labels(
    run: Run,
    mode: ModeKeys | None,
    name: str,
    num_classes: int | None,
    class_names: Sequence[str] | None,
) -> tuple[np.ndarray, dict[int, int], int | None]:
    """(samples per class, {label left out: count}, number of classes or None) of a mode; a
    segmentation mask's pixels are samples."""
    series = run.tensor(name).series(mode)
    arrays = series.arrays
    plain = bool(series.uniform and arrays and arrays[0].ndim <= 1)
    logits = None if plain and num_classes else _logits_batch(run, mode)
    labels = series.concat().astype(np.int64) if plain else _labels_of(arrays, logits)
    width = None if num_classes else scores_width(logits)
    n = _class_count(run, num_classes, class_names, width)
    ok, outside = _in_range(labels, n)
    return np.bincount(labels[ok], minlength=n or 0), outside, n


def label_counts(
    run: Any, mode: Any = "TRAIN", *, tensor: str | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Samples per class seen in ``mode`` (all labels joined with ``Series.concat``; a mask's
    pixels are samples); labels outside classes 0..n-1 (n: ``num_classes``, else the logits'
    width, their axis 1, else the run's class names) are left out, as negative ones
    (ignore_index) always are."""
    run = _open(run)
    name = find_tensor(run, _LABEL_NAMES, "labels", tensor)
    return _count_labels(run, _mode_with_data(run, mode), name, num_classes, None)[0]


def confusion_matrix(
    run: Any,
    mode: Any = None,
    *,
    labels_tensor: str | None = None,
    predictions_tensor: str | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, ModeKeys | None]:
    """C[true][predicted] counts over the mode's saved steps (EVAL, else TRAIN, by default),
    the predicted class being the logits' argmax over the class axis 1 (a segmentation
    model's pixels one by one); samples whose label (or predicted id) is outside classes
    0..n-1 are left out (n: ``num_classes``, else the logits' width, else the run's class
    names). Shapes that do not fit raise ClassAxisError (a ValueError)."""
    cm, m, _ = _confusion(run, mode, labels_tensor, predictions_tensor, num_classes, None)
    return cm, m


def _confusion(
    run: Any,
    mode: Any,
    labels_tensor: str | None,
    predictions_tensor: str | None,
    num_classes: int | None,
    class_names: Sequence[str] | None,
) -> tuple[np.ndarray, ModeKeys | None, list[str]]:
    """(confusion matrix, mode, notes on the labels and predicted ids left out)."""
    run = _open(run)
    lab = find_tensor(run, _LABEL_NAMES, "labels", labels_tensor)
    pred = find_tensor(run, _LOGIT_NAMES, "predictions/logits", predictions_tensor)
    m = _pick_mode(run, lab, mode, (ModeKeys.EVAL, ModeKeys.TRAIN, ModeKeys.PREDICT))
    ls = run.tensor(lab).series(m)
    ps = run.tensor(pred).series(m)
    common = np.intersect1d(ls.global_steps, ps.global_steps)
    li = {int(g): i for i, g in enumerate(ls.global_steps)}
    pi = {int(g): i for i, g in enumerate(ps.global_steps)}
    y_parts: list[np.ndarray] = []
    p_parts: list[np.ndarray] = []
    width: int | None = None
    for k, g in enumerate(common):
        y_step, p_step, w = decode_classes(
            ls.arrays[li[int(g)]],
            ps.arrays[pi[int(g)]],
            labels_name=lab,
            predictions_name=pred,
            where=lambda g=g: f"at global step {int(g)}",
        )
        y_parts.append(y_step)
        p_parts.append(p_step)
        width = w if k == 0 else width
    y = np.concatenate(y_parts).astype(np.int64) if y_parts else np.zeros(0, np.int64)
    p = np.concatenate(p_parts) if p_parts else np.zeros(0, np.int64)
    n = _class_count(run, num_classes, class_names, width)
    ok, out_y = _in_range(y, n)
    ok_p, out_p = _in_range(np.where(ok, p, 0), n)  # a sample left out for its label counts once
    ok &= ok_p
    notes = [left_out_note(out_y, n), left_out_note(out_p, n, "predicted id")]
    if n is None:
        n = int(max(y[ok].max(initial=-1), p[ok].max(initial=-1))) + 1
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y[ok], p[ok]), 1)
    return cm, m, [t for t in notes if t]


def _subsample(n: int, max_points: int, keep: Iterable[int] = ()) -> np.ndarray:
    """Indices of at most ~max_points evenly spread points of n (plus the ones to keep)."""
    if n <= max_points:
        return np.arange(n)
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    extra = np.asarray([k for k in keep if 0 <= k < n], dtype=np.int64)
    return np.union1d(idx, extra)


def _thin(
    steps: np.ndarray, values: np.ndarray, max_points: int, extremes: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """At most ~max_points of a line, evenly spread, keeping its smallest and largest values."""
    keep: list[int] = []
    if extremes and len(values) > max_points and np.isfinite(values).any():
        keep = [int(np.nanargmin(values)), int(np.nanargmax(values))]
    idx = _subsample(len(steps), max_points, keep)
    return steps[idx], values[idx]


def _scalar_series(run: Run, name: str, mode: ModeKeys | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a tensor whose values are scalars (means taken otherwise)."""
    s = run.tensor(name).series(mode)
    if not len(s):
        return np.zeros(0, np.int64), np.zeros(0)
    if s.uniform and s.arrays[0].size == 1:
        vals = s.stack().reshape(len(s)).astype(np.float64)
    else:
        vals = np.array([float(np.mean(a)) if a.size else np.nan for a in s.arrays])
    return s.steps, vals


def _trigger_points(
    run: Run, results: Iterable[RuleResult] | None, plot_key: str, limit: int = 50
) -> list[tuple[str, ModeKeys, int]]:
    """(rule name, mode, mode step) of the triggers of the rules whose evidence this plot is."""
    points: list[tuple[str, ModeKeys, int]] = []
    for r in results or ():
        if not getattr(r, "triggered", False) or plot_key not in evidence_plots(r.name):
            continue
        triggers = list(r.triggers or ([r.first_trigger] if r.first_trigger else []))[:limit]
        for t in triggers:
            try:
                m = parse_mode(t.mode) if t.mode else run.mode(int(t.step))
                ms = int(t.mode_step) if t.mode_step is not None else run.mode_step(int(t.step))
            except Exception:  # a trigger at a step this run does not hold: nothing to mark
                continue
            points.append((r.name, m, ms))
    return points


def _mark_first_triggers(
    ax: Axes, run: Run, results: Iterable[RuleResult] | None, plot_key: str, mode: ModeKeys | None
) -> None:
    """A dotted red line at the first trigger of each rule this plot is evidence of."""
    seen: set[str] = set()
    for rule, m, ms in _trigger_points(run, results, plot_key, limit=1):
        if rule in seen or (mode is not None and m != mode):
            continue
        seen.add(rule)
        x = ms if mode is not None else run.global_step(m, ms)
        ax.axvline(x, color="C3", ls=":", lw=1.2, label=f"{rule} first triggered")


# -- the plots ----------------------------------------------------------------------------------


def _loss_tensor(run: Run, given: str | None) -> str:
    """The loss to plot: ``given``, else a tensor named as a loss, else the first full tensor
    of the ``losses`` collection (a model that returns its own loss: ``<Model>_output_0``)."""
    try:
        return find_tensor(run, _LOSS_NAMES, "loss", given)
    except MissingTensorError:
        if given is not None or "losses" not in run.collections():
            raise
        names = [n for n in run.tensor_names(collection="losses") if not is_reduction(n)]
        if not names:
            raise
        return names[0]


def plot_loss(
    run: Any,
    *,
    baseline: Any = None,
    modes: Sequence[Any] | None = None,
    tensor: str | None = None,
    results: Iterable[RuleResult] | None = None,
    max_points: int = MAX_LOSS_POINTS,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Loss over mode steps, one panel per mode (TRAIN, EVAL, ...), the baseline dashed, and
    the steps where loss rules (``results``) triggered marked in red."""
    run = _open(run)
    name = _loss_tensor(run, tensor)
    base = _open(baseline) if baseline is not None else None
    wanted = (
        [_mode(m) for m in modes] if modes else [m for m in run.modes() if m is not ModeKeys.GLOBAL]
    )
    wanted = [m for m in wanted if m is not None and run.tensor(name).steps(m)] or [None]
    triggers = _trigger_points(run, results, "loss")
    fig = new_figure(7.5, 2.9 * len(wanted))
    axes = fig.subplots(len(wanted), 1, squeeze=False)[:, 0]
    for ax, m in zip(axes, wanted):
        steps, vals = _scalar_series(run, name, m)
        marks = [(r, ms) for r, tm, ms in triggers if m is None or tm == m]
        keep = np.searchsorted(steps, [ms for _, ms in marks]) if len(steps) else []
        idx = _subsample(len(steps), max_points, keep)
        finite = np.isfinite(vals[idx])
        shown = idx[finite]  # NaN / inf cannot be drawn: the line joins the finite values
        ax.plot(
            steps[shown], vals[shown], color="C0", lw=1.4, label=run.name,
            marker="." if not finite.all() else None, ms=4,
        )  # fmt: skip
        bad = idx[~finite]
        if len(bad):  # marked along the bottom of the panel, where no value can hide them
            label = f"NaN / inf ({len(bad)} step{'' if len(bad) == 1 else 's'})"
            ax.plot(
                steps[bad], np.full(len(bad), 0.02), ls="none", marker="x", color="C3", ms=5,
                transform=ax.get_xaxis_transform(), label=label,
            )  # fmt: skip
        if len(idx) and not finite.any():
            ax.text(
                0.5, 0.5, f"all {len(bad)} loss values shown are NaN or inf",
                transform=ax.transAxes, ha="center", va="center", color="C3",
            )  # fmt: skip
        if base is not None and base.has_tensor(name):
            bsteps, bvals = _scalar_series(base, name, m)
            bidx = _subsample(len(bsteps), max_points)
            ax.plot(
                bsteps[bidx],
                bvals[bidx],
                color="C1",
                lw=1.4,
                ls="--",
                label=f"{base.name} (baseline)",
            )
        seen: set[str] = set()
        for rule, ms in marks:
            pos = int(np.searchsorted(steps, ms))
            y = vals[pos] if pos < len(steps) and steps[pos] == ms else np.nan
            label = None if rule in seen else f"{rule} triggered"
            seen.add(rule)
            ax.axvline(ms, color="C3", ls=":", lw=1)
            if np.isfinite(y):
                ax.plot([ms], [y], marker="v", color="C3", ms=8, ls="none", label=label)
            else:  # at the top of the panel: a NaN value has no height
                ax.plot(
                    [ms], [0.97], marker="v", color="C3", ms=8, ls="none", label=label,
                    transform=ax.get_xaxis_transform(),
                )  # fmt: skip
        mode_name = "all modes" if m is None else m.name
        ax.set_title(f"{mode_name} loss ({name})")
        ax.set_xlabel(_step_label(m))
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if len(idx) < len(steps):
            ax.text(
                0.99,
                0.97,
                f"{len(idx)} of {len(steps)} steps shown",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
                color="0.4",
            )
        ax.legend(fontsize=8, loc="upper right" if len(idx) == len(steps) else "center right")
    return _finish(fig, path)


def _short(text: str, width: int = 30) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_label_counts(
    run: Any,
    *,
    baseline: Any = None,
    mode: Any = "TRAIN",
    tensor: str | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Samples per class (bars, one per class; with a baseline the two runs side by side),
    x ticks named by class, the max/min ratio (what ClassImbalance compares) in the title."""
    run = _open(run)
    name = find_tensor(run, _LABEL_NAMES, "labels", tensor)
    m = _mode_with_data(run, mode)
    run_counts, outside, n_run = _count_labels(run, m, name, num_classes, class_names)
    counts = [(run.name, run_counts)]
    left_out = [left_out_note(outside, n_run)]
    note = ""
    if baseline is not None:
        base = _open(baseline)
        if base.has_tensor(name):
            bm = _mode_with_data(base, m)
            base_counts, b_out, b_n = _count_labels(base, bm, name, num_classes, class_names)
            counts.append((f"{base.name} (baseline)", base_counts))
            left_out.append(left_out_note(b_out, b_n, prefix=f"baseline {base.name}: "))
        else:  # the run's bars alone, saying why (the baseline's own damage is not the run's)
            note = f"baseline {base.name} holds no {name}"
    n = max(len(c) for _, c in counts)
    counts = [(lbl, np.pad(c, (0, n - len(c)))) for lbl, c in counts]
    names = class_names_of(run, n, class_names)
    fig = new_figure(min(30.0, max(8.0, 0.24 * n * len(counts) ** 0.5 + 2)), 5.2)
    left_out = _add_notes(fig, left_out)
    ax = fig.subplots()
    width = 0.8 / len(counts)
    x = np.arange(n)
    for i, (lbl, c) in enumerate(counts):
        if n <= MAX_NAMED_CLASSES:
            offset = (i - (len(counts) - 1) / 2) * width
            ax.bar(x + offset, c, width=width, label=lbl, color=f"C{i}")
        else:  # one artist instead of thousands of bars
            edges = np.arange(n + 1) - 0.5
            ax.stairs(c, edges, fill=i == 0, color=f"C{i}", alpha=0.8, label=lbl)
    ratios = []
    for lbl, c in counts:
        nz = c[c > 0]
        ratio = (
            f"{c.max() / c.min():.1f}" if c.size and c.min() > 0 else ("inf" if nz.size else "n/a")
        )
        ratios.append(f"{lbl}: max/min {ratio}")
    if n <= MAX_NAMED_CLASSES:
        ax.set_xticks(x)
        ticklabels = [f"{i} {_short(nm)}" if nm != str(i) else nm for i, nm in enumerate(names)]
        ax.set_xticklabels(ticklabels, rotation=90, fontsize=6 if n > 20 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("class")
    ax.set_ylabel("samples")
    mode_name = "all modes" if m is None else m.name
    title = f"Label counts per class ({mode_name}, {name}); " + "; ".join(ratios)
    ax.set_title("\n".join([title, *left_out]), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if note:
        ax.text(0.01, 0.97, note, transform=ax.transAxes, ha="left", va="top", color="C3")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_confusion_matrix(
    run: Any,
    *,
    mode: Any = None,
    labels_tensor: str | None = None,
    predictions_tensor: str | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    normalize: bool = True,
    top: int = 5,
    path: str | os.PathLike | None = None,
) -> Figure:
    """The confusion matrix (rows true class, columns predicted) as a heat map with class
    names; by default each row as fractions of its class, the ``top`` largest off-diagonal
    cells outlined and listed."""
    run = _open(run)
    cm, m, left_out = _confusion(
        run, mode, labels_tensor, predictions_tensor, num_classes, class_names
    )
    n = cm.shape[0]
    names = class_names_of(run, n, class_names)
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) if normalize else cm
    size = min(13.0, max(6.0, 0.2 * n + 4))
    fig = new_figure(size + 1.2, size)
    ax = fig.subplots()
    im = ax.imshow(
        shown, cmap="Blues", interpolation="nearest", vmin=0, vmax=1 if normalize else None
    )
    fig.colorbar(
        im, ax=ax, shrink=0.8, label="fraction of the true class" if normalize else "samples"
    )
    if n <= MAX_NAMED_CLASSES:
        ticks = [f"{i} {_short(nm, 24)}" if nm != str(i) else nm for i, nm in enumerate(names)]
        fs = 5 if n > 30 else 8
        ax.set_xticks(np.arange(n))
        ax.set_xticklabels(ticks, rotation=90, fontsize=fs)
        ax.set_yticks(np.arange(n))
        ax.set_yticklabels(ticks, fontsize=fs)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    worst = [(int(i // n), int(i % n)) for i in order if off.flat[i] > 0]
    from matplotlib.patches import Rectangle

    for t, p in worst:
        ax.add_patch(Rectangle((p - 0.5, t - 0.5), 1, 1, fill=False, ec="C3", lw=1.5))
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")
    mode_name = "all modes" if m is None else m.name
    left_out = _add_notes(fig, left_out)
    title = f"Confusion matrix ({mode_name}, {total} samples, accuracy {acc:.1%})"
    ax.set_title("\n".join([title, *left_out]), fontsize=10)
    if worst:
        lines = [f"{names[t]} → {names[p]}: {cm[t, p]}" for t, p in worst]
        fig.text(
            0.01,
            0.005,
            "most confused (true → predicted): " + "; ".join(lines),
            fontsize=7,
            ha="left",
            va="bottom",
            wrap=True,
        )
        fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))
    return _finish(fig, path)


def _normalization(
    run: Run, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    meta = run.metadata.get("normalize") if isinstance(run.metadata, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    mean = mean if mean is not None else meta.get("mean", IMAGENET_MEAN)
    std = std if std is not None else meta.get("std", IMAGENET_STD)
    return np.asarray(mean, dtype=np.float64).ravel(), np.asarray(std, dtype=np.float64).ravel()


def to_pixels(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised CHW (or HWC, or HW) image back to HWC/HW pixels in [0, 1]:
    ``x * std + mean`` per channel (uint8 images are only scaled)."""
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[0] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = np.moveaxis(x, 0, -1)  # CHW -> HWC
    if x.dtype == np.uint8:
        out = x.astype(np.float64) / 255.0
    else:
        c = x.shape[-1] if x.ndim == 3 else 1
        mean_a = np.asarray(mean, dtype=np.float64)
        std_a = np.asarray(std, dtype=np.float64)
        if mean_a.size != c:
            mean_a = np.full(c, mean_a.mean())
        if std_a.size != c:
            std_a = np.full(c, std_a.mean())
        out = x.astype(np.float64) * (std_a if x.ndim == 3 else std_a[0]) + (
            mean_a if x.ndim == 3 else mean_a[0]
        )
    if out.ndim == 3 and out.shape[-1] == 1:
        out = out[..., 0]
    return np.clip(out, 0.0, 1.0)


def misclassified_samples(
    run: Any,
    mode: Any = None,
    *,
    max_images: int = 16,
    pairs: Iterable[tuple[int, int]] | None = None,
    labels_tensor: str | None = None,
    predictions_tensor: str | None = None,
    steps_with: str | None = None,
    newest_first: bool = True,
) -> tuple[list[tuple[int, int, int, int]], ModeKeys | None]:
    """Up to ``max_images`` mistakes as (mode step, index in batch, predicted, truth), newest
    steps first by default (the model as training left it); ``pairs`` keeps only confusions
    within those class pairs (either way); ``steps_with`` keeps the steps that saved that tensor.
    A sample whose label is outside the classes (ignore_index) is no mistake: left out. With
    per-pixel labels (logits (N, C, H, W), masks (N, H, W)) the index is the image's, each
    (image, predicted, truth) listed once."""
    found, m, _ = _misclassified(
        run, mode, max_images, pairs, labels_tensor, predictions_tensor, steps_with, newest_first
    )
    return found, m


def _misclassified(
    run: Any,
    mode: Any,
    max_images: int,
    pairs: Iterable[tuple[int, int]] | None,
    labels_tensor: str | None,
    predictions_tensor: str | None,
    steps_with: str | None,
    newest_first: bool,
    class_names: Sequence[str] | None = None,
) -> tuple[list[tuple[int, int, int, int]], ModeKeys | None, str]:
    """:func:`misclassified_samples`, and a note on the labels left out in the steps read."""
    run = _open(run)
    lab = find_tensor(run, _LABEL_NAMES, "labels", labels_tensor)
    pred = find_tensor(run, _LOGIT_NAMES, "predictions/logits", predictions_tensor)
    m = _pick_mode(run, lab, mode, (ModeKeys.EVAL, ModeKeys.TRAIN, ModeKeys.PREDICT))
    wanted = {frozenset(p) for p in pairs} if pairs is not None else None
    lt, pt = run.tensor(lab), run.tensor(pred)
    steps = sorted(set(lt.steps(m)) & set(pt.steps(m)))
    if steps_with is not None:
        steps = sorted(set(steps) & set(run.tensor(steps_with).steps(m)))
    found: list[tuple[int, int, int, int]] = []
    outside: dict[int, int] = {}
    n: int | None = None
    searched = 0
    for s in reversed(steps) if newest_first else steps:
        labels = lt.value(s, m)
        y, p, width = decode_classes(
            labels,
            pt.value(s, m),
            labels_name=lab,
            predictions_name=pred,
            where=f"at {_step_label(m)} {s}",
        )
        y = y.astype(np.int64)
        if searched == 0:  # the first batch of logits says how many classes there are
            n = _class_count(run, None, class_names, width)
        searched += 1
        ok, out = _in_range(y, n)
        for v, c in out.items():
            outside[v] = outside.get(v, 0) + c
        ok &= _in_range(p, n)[0]  # predicted ids no class name can show
        # a segmentation model's labels are pixels: a mistake is shown on its image, once per
        # (image, predicted, truth)
        images = np.shape(labels)[0] if np.ndim(labels) else 1
        per_image = max(1, len(y) // max(images, 1))
        seen: set[tuple[int, int, int]] = set()
        for i in np.nonzero(ok & (y != p))[0]:
            if wanted is not None and frozenset((int(p[i]), int(y[i]))) not in wanted:
                continue
            key = (int(i) // per_image, int(p[i]), int(y[i]))
            if key in seen:
                continue
            seen.add(key)
            found.append((int(s), *key))
            if len(found) >= max_images:
                break
        if len(found) >= max_images:
            break
    found.sort()
    where = f" in the {searched} {_step_label(m)}{'s' if searched != 1 else ''} searched"
    return found, m, left_out_note(outside, n, where=where)


def plot_misclassified(
    run: Any,
    *,
    mode: Any = None,
    max_images: int = 16,
    pairs: Iterable[tuple[int, int]] | None = None,
    inputs_tensor: str | None = None,
    labels_tensor: str | None = None,
    predictions_tensor: str | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    columns: int = 4,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A gallery of misclassified inputs, each titled "predicted X, truth Y", un-normalised
    with the run's ``metadata["normalize"]`` mean/std (ImageNet's by default). Only the steps
    shown are read; without a saved model input the panels say so and keep their titles."""
    run = _open(run)
    try:
        inp: str | None = find_tensor(run, _INPUT_NAMES, "model input", inputs_tensor)
    except MissingTensorError:
        if inputs_tensor is not None:
            raise
        inp = None
    # with no images anywhere (inp None) every step counts: the mistakes are still listed
    samples, m, left_out = _misclassified(
        run, mode, max_images, pairs, labels_tensor, predictions_tensor, inp, True, class_names
    )
    n_classes = max(
        [max(p, t) + 1 for _, _, p, t in samples] + [len(class_names or run.class_names or [])]
    )
    names = class_names_of(run, n_classes, class_names)
    mean_a, std_a = _normalization(run, mean, std)
    cols = max(1, min(columns, len(samples) or 1))
    rows = max(1, -(-len(samples) // cols))
    fig = new_figure(2.6 * cols + 0.4, 2.9 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    batches: dict[int, np.ndarray] = {}
    for ax, (s, i, p, t) in zip(axes, samples):
        title = f"predicted {names[p]}, truth {names[t]}"
        ax.set_title(textwrap.fill(title, 28), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{_step_label(m)} {s}, sample {i}", fontsize=7)
        if inp is None:
            ax.text(
                0.5,
                0.5,
                "model input\nnot saved",
                ha="center",
                va="center",
                fontsize=8,
                color="0.4",
                transform=ax.transAxes,
            )
            continue
        if s not in batches:
            batches[s] = run.tensor(inp).value(s, m)
        batch = batches[s]
        if i >= len(batch):
            ax.text(
                0.5,
                0.5,
                "input batch\nshorter than labels",
                ha="center",
                va="center",
                fontsize=8,
                transform=ax.transAxes,
            )
            continue
        px = to_pixels(batch[i], mean_a, std_a)
        ax.imshow(
            px, cmap="gray" if px.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
        )
    for ax in axes[len(samples) :]:
        ax.axis("off")
    mode_name = "all modes" if m is None else m.name
    if not samples:
        axes[0].text(
            0.5,
            0.5,
            "no misclassified samples",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
    what = f"model input {inp}" if inp else "model input not saved"
    title = f"Misclassified {mode_name} samples ({len(samples)} shown; {what})"
    fig.suptitle("\n".join([title, *_add_notes(fig, [left_out])]), fontsize=10)
    return _finish(fig, path)


def _layer_label(name: str) -> str:
    return name


def _reduction_sources(run: Run, regex: str, reduction: str) -> dict[str, str | None]:
    """{tensor: stored reduction name or None} for the full tensors or stored reductions
    whose tensor matches ``regex``."""
    rx = re.compile(regex)
    out: dict[str, str | None] = {}
    for n in run.tensor_names():
        parsed = parse_reduction_name(n)
        if parsed is None:
            if rx.search(n):
                out.setdefault(n, None)
        elif parsed[1] == reduction and not parsed[2] and rx.search(parsed[0]):
            out[parsed[0]] = n
    for t in list(out):
        if out[t] is None and run.has_tensor(reduction_tensor_name(t, reduction)):
            out[t] = reduction_tensor_name(t, reduction)
    return dict(sorted(out.items()))


def dead_relu_percent(
    run: Any, mode: Any = "TRAIN", *, regex: str = r"relu_output", threshold_inactivity: float = 1.0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (steps, percent of dead units)}; a unit is dead when it is > 0 in fewer than
    ``threshold_inactivity`` percent of the batch (DeadRelu's definition). Reads the stored
    ``positive_fraction`` reduction when present, the full activations otherwise."""
    run = _open(run)
    m = _mode_with_data(run, mode)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer, stored in _reduction_sources(run, regex, "positive_fraction").items():
        s = run.tensor(stored or layer).series(m)
        if not len(s):
            continue
        if stored and s.uniform:  # one (steps, units) array: vectorised over steps
            fr = s.stack().reshape(len(s), -1).astype(np.float64)
            dead = 100.0 * np.mean(fr * 100.0 < threshold_inactivity, axis=1)
        else:
            fracs = (
                s.arrays
                if stored
                else [compute_reduction(a, "positive_fraction") for a in s.arrays]
            )
            dead = np.array(
                [
                    100.0 * float(np.mean(np.asarray(f) * 100.0 < threshold_inactivity))
                    for f in fracs
                ]
            )
        out[layer] = (s.steps, dead)
    return out


def plot_dead_relu(
    run: Any,
    *,
    mode: Any = "TRAIN",
    regex: str = r"relu_output",
    threshold_inactivity: float = 1.0,
    threshold_layer: float = 50.0,
    baseline: Any = None,
    results: Iterable[RuleResult] | None = None,
    max_points: int = MAX_LOSS_POINTS,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Percent of dead ReLU units per layer over steps, with DeadRelu's ``threshold_layer``
    as a dashed line (a baseline's layers dashed in the same colours) and the first trigger
    of DeadRelu in ``results`` marked; lines longer than ``max_points`` are thinned, keeping
    each layer's worst step."""
    run = _open(run)
    m = _mode_with_data(run, mode)
    data = dead_relu_percent(run, m, regex=regex, threshold_inactivity=threshold_inactivity)
    if not data:
        raise MissingTensorError(
            f"run {run.name!r} has no ReLU outputs (regex {regex!r}) nor their positive_fraction "
            f"reductions in {_step_label(m)}s"
        )
    base = (
        dead_relu_percent(baseline, m, regex=regex, threshold_inactivity=threshold_inactivity)
        if baseline is not None
        else {}
    )
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    many = len(data) > 12
    colors = _layer_colors(len(data))
    for k, (layer, (all_steps, all_dead)) in enumerate(data.items()):
        steps, dead = _thin(all_steps, all_dead, max_points)
        ax.plot(
            steps,
            dead,
            color=colors[k],
            lw=1.4,
            marker="o" if len(steps) < 40 else None,
            ms=3,
            label=None if many else _layer_label(layer),
        )
        if layer in base:
            ax.plot(*_thin(*base[layer], max_points), color=colors[k], lw=1, ls="--")
    ax.axhline(
        threshold_layer, color="C3", ls="--", lw=1, label=f"threshold_layer {threshold_layer:g}%"
    )
    _mark_first_triggers(ax, run, results, "dead_relu", m)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(_step_label(m))
    ax.set_ylabel("dead units (%)")
    mode_name = "all modes" if m is None else m.name
    ax.set_title(
        f"Dead ReLU units per layer ({mode_name}; "
        f"dead = positive in < {threshold_inactivity:g}% of the batch)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    if many:
        _depth_colorbar(fig, ax, list(data))
    ax.legend(fontsize=7, loc="best")
    return _finish(fig, path)


def _layer_colors(n: int) -> list[Any]:
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _depth_colorbar(fig: Figure, ax: Axes, layers: list[str]) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0, len(layers) - 1), cmap=colormaps["viridis"])
    cb = fig.colorbar(sm, ax=ax, shrink=0.9)
    cb.set_label(
        f"layer (0 = {_short(layers[0], 24)}, {len(layers) - 1} = {_short(layers[-1], 24)})",
        fontsize=7,
    )


def gradient_norms(
    run: Any, mode: Any = "TRAIN", *, regex: str = r"^gradient/"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{gradient tensor: (steps, L2 norm)}, from the stored ``l2`` reductions
    (``smdebug/reductions/l2/gradient/...``) when present, the full gradients otherwise."""
    run = _open(run)
    m = _mode_with_data(run, mode)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for grad, stored in _reduction_sources(run, regex, "l2").items():
        s = run.tensor(stored or grad).series(m)
        if not len(s):
            continue
        if stored and s.uniform and s.arrays[0].size == 1:
            vals = s.stack().reshape(len(s)).astype(np.float64)
        elif stored:
            vals = np.array(
                [float(np.asarray(a).reshape(-1)[0]) if np.size(a) else np.nan for a in s.arrays]
            )
        else:
            vals = np.array([float(compute_reduction(a, "l2")) for a in s.arrays])
        out[grad] = (s.steps, vals)
    return out


def plot_gradient_norms(
    run: Any,
    *,
    mode: Any = "TRAIN",
    regex: str = r"^gradient/",
    baseline: Any = None,
    results: Iterable[RuleResult] | None = None,
    max_points: int = MAX_LOSS_POINTS,
    path: str | os.PathLike | None = None,
) -> Figure:
    """L2 norm of each gradient over steps on a log scale (vanishing and exploding gradients
    show as lines falling to the floor or shooting up), the first trigger of each gradient
    rule in ``results`` marked; layers coloured by depth when many; lines longer than
    ``max_points`` are thinned, keeping each one's extremes."""
    run = _open(run)
    m = _mode_with_data(run, mode)
    data = gradient_norms(run, m, regex=regex)
    if not data:
        raise MissingTensorError(
            f"run {run.name!r} has no gradients (regex {regex!r}) nor their l2 reductions in "
            f"{_step_label(m)}s"
        )
    base = gradient_norms(baseline, m, regex=regex) if baseline is not None else {}
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    many = len(data) > 12
    colors = _layer_colors(len(data))
    floor = 1e-30
    for k, (grad, series) in enumerate(data.items()):
        steps, vals = _thin(*series, max_points)
        ax.plot(
            steps, np.maximum(vals, floor), color=colors[k], lw=1.2, label=None if many else grad
        )
        if grad in base:
            bs, bv = _thin(*base[grad], max_points)
            ax.plot(bs, np.maximum(bv, floor), color=colors[k], lw=1, ls="--")
    _mark_first_triggers(ax, run, results, "gradient_norms", m)
    ax.set_yscale("log")
    ax.set_xlabel(_step_label(m))
    ax.set_ylabel("gradient L2 norm")
    mode_name = "all modes" if m is None else m.name
    ax.set_title(f"Gradient norms per layer ({mode_name}, {len(data)} tensors)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if many:
        _depth_colorbar(fig, ax, list(data))
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7, loc="best")
    return _finish(fig, path)
