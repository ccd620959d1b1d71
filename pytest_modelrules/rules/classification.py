"""Classification rules: ClassImbalance and Confusion (SageMaker Debugger's), DirectionConfusion,
RecallFloor and NoisyLabels (this project's).

They read labels and predictions. SageMaker's regex defaults (``.*labels``,
``.*predictions``) match nothing in a PyTorch run, so when a default regex matches nothing
the rules fall back to the inputs of the loss: ``CrossEntropyLoss_input_1`` (labels) and
``CrossEntropyLoss_input_0`` (logits, reduced by argmax over the class axis 1, PyTorch's:
(N, C, H, W) logits against (N, H, W) labels are judged pixel by pixel). Each step's arrays
are decoded once per run and shared between the rules (``run_cache``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..exceptions import MissingTensorError, RuleError
from ..modes import ModeKeys
from ._labels import (
    are_probabilities,
    class_mask,
    decode_classes,
    decode_labels,
    left_out_note,
    value_counts,
    with_note,
)
from .base import BuiltinRule, Param, register
from .loss import fmt, phases, run_cache, where
from .result import RuleResult

PYTORCH_LABELS = "CrossEntropyLoss_input_1"
PYTORCH_PREDICTIONS = "CrossEntropyLoss_input_0"
_FALLBACK_LABELS = (rf"^{PYTORCH_LABELS}$", r"Loss_input_1$")
_FALLBACK_PREDICTIONS = (rf"^{PYTORCH_PREDICTIONS}$", r"Loss_input_0$")
# SageMaker's defaults: when one of them matches nothing, the PyTorch loss inputs are used
_DEFAULT_REGEXES = (".*labels", ".*predictions", "labels", "predictions")
# torch.nn's losses whose target is no class index (regression, multi-label, ranking,
# distributions, sequences): the fallback never reads their inputs as labels / class scores
NOT_CLASS_LOSSES = frozenset(
    {
        "L1Loss", "MSELoss", "SmoothL1Loss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss",
        "KLDivLoss", "PoissonNLLLoss", "GaussianNLLLoss", "CosineEmbeddingLoss",
        "MarginRankingLoss", "HingeEmbeddingLoss", "SoftMarginLoss",
        "MultiLabelSoftMarginLoss", "MultiLabelMarginLoss", "TripletMarginLoss",
        "TripletMarginWithDistanceLoss", "CTCLoss",
    }
)  # fmt: skip


def _class_loss_input(name: str) -> bool:
    """Whether a ``<Loss>_input_<i>`` tensor may hold class labels / scores (its loss is not
    one of torch.nn's regression or multi-label losses)."""
    return name.rpartition("_input_")[0] not in NOT_CLASS_LOSSES


def _find(run: Any, regex: str | None, collection: str | None, fallbacks: tuple[str, ...]):
    """(tensor name or None, how it was found)."""
    if collection:
        names = run.tensor_names(collection=collection)
        if names:
            return names[0], f"collection {collection!r}"
        return None, f"collection {collection!r}"
    if regex:
        names = run.tensor_names(regex=regex)
        if names:
            return names[0], f"regex {regex!r}"
        if regex not in _DEFAULT_REGEXES:  # the user's own regex: no silent fallback
            return None, f"regex {regex!r}"
    passed: list[str] = []
    for fb in fallbacks:
        names = run.tensor_names(regex=fb)
        passed += [n for n in names if not _class_loss_input(n) and n not in passed]
        names = [n for n in names if _class_loss_input(n)]
        if names:
            return names[0], f"PyTorch loss input ({regex!r} matched nothing)"
    how = f"regex {regex!r}, nor the PyTorch loss input {fallbacks[0][1:-1]!r}"
    if passed:
        losses = sorted({n.rpartition("_input_")[0] for n in passed})
        how += (
            f"; {', '.join(passed)} not read: {', '.join(losses)} takes no class labels "
            "(name them with labels_regex / predictions_regex)"
        )
    return None, how


def resolve_labels_predictions(
    rule: BuiltinRule,
    run: Any,
    labels_regex: str | None,
    predictions_regex: str | None,
    *,
    labels_collection: str | None = None,
    predictions_collection: str | None = None,
    need_predictions: bool = True,
) -> tuple[str, str | None]:
    """The labels tensor and the predictions tensor a rule reads; MissingTensorError naming
    what was looked for when the labels (or required predictions) are absent."""
    labels, how_l = _find(run, labels_regex, labels_collection, _FALLBACK_LABELS)
    preds, how_p = _find(run, predictions_regex, predictions_collection, _FALLBACK_PREDICTIONS)
    if labels is None:
        raise rule.missing_tensor(run, f"labels tensor ({how_l})")
    if preds is None and need_predictions:
        raise rule.missing_tensor(run, f"predictions tensor ({how_p})")
    return labels, preds


@dataclass
class LabelData:
    """Labels and predicted classes of every saved step, flattened over samples; the labels
    that are no class (negative, or at or past the logits' width) are kept apart."""

    global_steps: np.ndarray  # (n_steps,) the steps holding labels (and predictions)
    modes: np.ndarray  # (n_steps,)
    sample_step: np.ndarray  # (N,) index into global_steps of each sample
    labels: np.ndarray  # (N,) int64
    predictions: np.ndarray | None  # (N,) int64 predicted class, or None
    width: int | None = None  # classes the logits score; None for class ids / no predictions
    dropped_step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # labels left out

    @property
    def num_classes(self) -> int:
        top = int(self.labels.max()) + 1 if len(self.labels) else 0
        if self.predictions is not None and len(self.predictions):
            top = max(top, int(self.predictions.max()) + 1)
        return top

    def samples_at(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``global_steps`` of the given global steps that hold data, mask of
        the samples saved at them)."""
        idx = np.flatnonzero(np.isin(self.global_steps, steps))
        return idx, np.isin(self.sample_step, idx)

    def left_out(self, steps: np.ndarray | None = None) -> dict[int, int]:
        """{label left out: count} over every step, or over the given global steps."""
        values = self.dropped
        if steps is not None:
            idx = np.flatnonzero(np.isin(self.global_steps, steps))
            values = values[np.isin(self.dropped_step, idx)]
        return value_counts(values)

    def left_out_note(self, steps: np.ndarray | None = None, where: str = "") -> str:
        """The report's line on the labels left out (see :meth:`left_out`); "" if none."""
        return left_out_note(self.left_out(steps), self.width, where=where)


def read_label_data(
    run: Any,
    labels_name: str,
    preds_name: str | None,
    mode: ModeKeys | None,
    argmax: bool = True,
) -> LabelData:
    """Decode labels and predictions at every step holding both, every worker's shard, once
    per run, with :func:`~pytest_modelrules.rules._labels.decode_classes`: class scores
    (predictions with one more axis than the labels, or, with ``argmax``, more values) give
    their argmax over the class axis 1, PyTorch's, and a segmentation model's (N, C, H, W)
    logits against (N, H, W) labels give one sample per pixel; shapes that do not fit raise
    ClassAxisError naming the step. Labels below 0 (ignore_index), and with class scores
    labels at or past their width, are no class: kept apart, not counted."""
    mode_arg = None if mode in (None, ModeKeys.GLOBAL) else mode
    key = ("labels", labels_name, preds_name, int(mode_arg or 0), bool(argmax))
    cache = run_cache(run)
    if key in cache:
        return cache[key]
    # every worker's shard counts (data parallel: each worker sees its own batches); values
    # are matched by (global step, worker)
    lab = run.tensor(labels_name).series(mode_arg, all_workers=True)
    workers = run.workers()
    width = max(len(workers), 1)
    lab_keys = lab.global_steps * width + lab.workers
    lab_idx = np.arange(len(lab_keys))
    pred_classes, n_scores = None, None
    if preds_name is not None:
        pred = run.tensor(preds_name).series(mode_arg, all_workers=True)
        pred_keys = pred.global_steps * width + pred.workers
        _, lab_idx, pred_idx = np.intersect1d(lab_keys, pred_keys, return_indices=True)
    lab_arrays = [lab.arrays[i] for i in lab_idx]
    pred_arrays = [pred.arrays[i] for i in pred_idx] if preds_name is not None else []
    _class_ids_or_missing(lab_arrays, pred_arrays, labels_name)
    if preds_name is not None:

        def place(k: int) -> str:  # where step k is, for an error message only
            i = int(lab_idx[k])
            on = f" (worker {workers[int(lab.workers[i])]})" if len(workers) > 1 else ""
            return f"at global step {int(lab.global_steps[i])}{on}"

        lab_arrays, pred_classes, n_scores = _predicted_classes(
            pred_arrays, lab_arrays, argmax, preds_name, labels_name, place
        )
    else:
        lab_arrays = [decode_labels(a) for a in lab_arrays]
    steps, first, which = np.unique(
        lab.global_steps[lab_idx], return_index=True, return_inverse=True
    )
    lengths = np.array([a.size for a in lab_arrays], dtype=np.int64)
    labels = np.concatenate(lab_arrays) if lab_arrays else np.zeros(0, np.int64)
    labels = labels.astype(np.int64)
    if pred_classes is not None and len(pred_classes) != len(labels):
        raise RuleError(
            f"{preds_name} and {labels_name} hold different numbers of samples "
            f"({len(pred_classes)} vs {len(labels)}); pass argmax=True for class scores"
        )
    sample_step = np.repeat(np.asarray(which).reshape(-1), lengths)
    # PyTorch's ignore_index (-100) marks samples the loss ignores; a label past the logits is
    # no class the model can predict (255 in a mask, a bad id): both are left out, and named
    keep = class_mask(labels, n_scores)
    dropped_step, dropped = sample_step[~keep], labels[~keep]
    if not keep.all():
        labels, sample_step = labels[keep], sample_step[keep]
        pred_classes = pred_classes[keep] if pred_classes is not None else None
    if pred_classes is not None and len(pred_classes) and pred_classes.min() < 0:
        raise RuleError(f"{preds_name} holds negative predicted classes ({pred_classes.min()})")
    data = LabelData(
        steps.astype(np.int64),
        np.asarray(lab.modes[lab_idx][first]),
        sample_step,
        labels,
        pred_classes,
        n_scores,
        dropped_step,
        dropped,
    )
    cache[key] = data
    return data


def _class_ids_or_missing(lab_arrays: list[Any], pred_arrays: list[Any], labels_name: str) -> None:
    """Float labels that hold no class ids are a MissingTensorError: the run holds no labels
    these rules read (a "not judged" row), not a verdict on nonsense. That is labels of the
    class scores' shape that are no class probabilities (multi-hot targets of a multi-label
    loss) and non-integer values (a custom regression loss's targets). Class probabilities
    (one-hot labels, mixup's or cutmix's soft targets) are read: their argmax over the class
    axis is the class (``_labels.decode_classes``)."""
    if not lab_arrays or np.asarray(lab_arrays[0]).dtype.kind != "f":
        return
    first = np.asarray(lab_arrays[0])
    scores = pred_arrays[0] if pred_arrays else None
    if are_probabilities(first, scores):
        return
    if (
        scores is not None
        and first.ndim >= 2
        and first.shape[1] > 1
        and first.shape == np.shape(scores)
    ):
        raise MissingTensorError(
            f"{labels_name} holds one value per class (shape {first.shape}) that are no class "
            "probabilities (multi-label targets?), not class ids: the classification rules "
            "read class ids or one-hot labels (name them with labels_regex)"
        )
    if not all(np.all(a == np.round(a)) for a in map(np.asarray, lab_arrays)):
        raise MissingTensorError(
            f"{labels_name} holds non-integer values, not class ids (a regression target?): "
            "the classification rules read class ids or one-hot labels (name them with "
            "labels_regex)"
        )


def _predicted_classes(
    pred_arrays: list[np.ndarray],
    lab_arrays: list[np.ndarray],
    argmax: bool,
    name: str,
    labels_name: str,
    place: Callable[[int], str],
) -> tuple[list[np.ndarray], np.ndarray, int | None]:
    """(each step's labels flattened, predicted class per sample, the class scores' width
    (the first step's) or None for class ids); every step decoded on its own, argmax taken
    over the views of the file bytes (no copy of all the logits). ``place(k)`` says where
    step k is, for an error message."""
    if not pred_arrays:
        return [], np.zeros(0, np.int64), None
    labels: list[np.ndarray] = []
    per_step: list[np.ndarray] = []
    width: int | None = None
    for k, (p, lab_a) in enumerate(zip(pred_arrays, lab_arrays)):
        lab_flat, classes, w = decode_classes(
            lab_a,
            p,
            labels_name=labels_name,
            predictions_name=name,
            where=lambda k=k: place(k),
            argmax=argmax,
        )
        labels.append(lab_flat)
        per_step.append(classes)
        width = w if k == 0 else width
    return labels, np.concatenate(per_step), width


def per_step_counts(data: LabelData, mask: np.ndarray | None, num_classes: int) -> np.ndarray:
    """(n_steps, num_classes): how many samples of each label class per step (masked)."""
    n = len(data.global_steps)
    sel_step = data.sample_step if mask is None else data.sample_step[mask]
    sel_lab = data.labels if mask is None else data.labels[mask]
    flat = np.bincount(sel_step * num_classes + sel_lab, minlength=n * num_classes)
    return flat.reshape(n, num_classes)


def _note_evidence(
    evidence: dict[str, Any], data: LabelData, steps: np.ndarray | None = None
) -> None:
    """Put ``labels_left_out`` ({label: count}) into the evidence when labels were left out."""
    left = data.left_out(steps)
    if left:
        evidence["labels_left_out"] = left


def class_label(run: Any, cls: int) -> str:
    """ "19 (Dangerous curve to the left)" when the run knows class names, else "19"."""
    names = run.class_names
    if names and 0 <= cls < len(names):
        return f"{cls} ({names[cls]})"
    return str(cls)


# -- ClassImbalance ----------------------------------------------------------------------------


@register
class ClassImbalance(BuiltinRule):
    """Too few samples of some classes, or some class mostly mispredicted (SageMaker's rule).

    Counts labels (and mispredictions) cumulatively over the steps so far; once ``samples``
    labels were seen it triggers at a step iff max count / min count (over the classes seen so
    far) > threshold_imbalance, or some class's mispredicted fraction > threshold_misprediction.
    """

    name = "class_imbalance"
    params: ClassVar[dict[str, Param]] = {
        "threshold_imbalance": Param(10.0, "float", "largest / smallest class count"),
        "threshold_misprediction": Param(0.7, "float", "mispredicted fraction of a class"),
        "samples": Param(500, "int", "labels seen before the rule judges"),
        "argmax": Param(False, "bool", "argmax over the class axis of predictions"),
        "labels_regex": Param(".*labels", "regex", "labels tensor (fallback: PyTorch's)"),
        "predictions_regex": Param(".*predictions", "regex", "predictions (fallback: logits)"),
        "mode": Param(None, "mode", "only steps of this mode (default: all steps)"),
    }

    def _validate(self) -> None:
        if self.threshold_imbalance is None or self.threshold_imbalance < 1:
            raise self.param_error(
                "threshold_imbalance", f"must be >= 1, got {self.threshold_imbalance}"
            )
        if self.samples is None or self.samples < 1:
            raise self.param_error("samples", f"must be >= 1, got {self.samples}")
        t = self.threshold_misprediction
        if t is not None and not 0 <= t <= 1:  # a fraction: 70 for 70 % would turn it off
            raise self.param_error("threshold_misprediction", f"must lie in [0, 1], got {t}")

    def _evaluate(self, run: Any) -> RuleResult:
        lname, pname = resolve_labels_predictions(
            self, run, self.labels_regex, self.predictions_regex, need_predictions=False
        )
        data = read_label_data(run, lname, pname, self.mode, bool(self.argmax))
        n = len(data.global_steps)
        note = data.left_out_note()
        if n == 0 or len(data.labels) == 0:
            return self.make_result(
                False, with_note(f"{lname} holds no labels.", note), skipped=True
            )
        k = data.num_classes
        counts = np.cumsum(per_step_counts(data, None, k), axis=0)
        total = counts.sum(axis=1)
        seen = counts > 0
        big = counts.max(axis=1)
        small = np.where(seen, counts, np.iinfo(np.int64).max).min(axis=1)
        ratio = big / np.maximum(small, 1)
        judged = total >= self.samples
        cond = judged & (ratio > self.threshold_imbalance)
        mis_frac = None
        if data.predictions is not None and self.threshold_misprediction is not None:
            wrong = np.cumsum(per_step_counts(data, data.labels != data.predictions, k), axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                mis_frac = np.where(seen, wrong / np.maximum(counts, 1), 0.0)
            cond |= judged & (mis_frac.max(axis=1) > self.threshold_misprediction)
        hits = np.flatnonzero(cond)
        triggers = self.trigger_steps(run, data.global_steps[hits])
        last = counts[-1]
        final_ratio = float(ratio[-1])
        evidence: dict[str, Any] = {
            "labels_tensor": lname,
            "predictions_tensor": pname,
            "class_counts": last,
        }
        _note_evidence(evidence, data)
        if not judged.any():
            text = (
                f"only {int(total[-1])} labels in {lname}, fewer than samples={self.samples}; "
                "not judged"
            )
            return self.make_result(
                False, with_note(text, note), evidence=evidence, steps_evaluated=n, skipped=True
            )
        if len(hits):
            j = int(hits[0])
            c = counts[j]
            cmax = int(np.argmax(c))
            cmin = int(np.argmin(np.where(c > 0, c, np.iinfo(np.int64).max)))
            parts = []
            if ratio[j] > self.threshold_imbalance:
                parts.append(
                    f"class {class_label(run, cmax)} had {int(c[cmax])} samples and class "
                    f"{class_label(run, cmin)} {int(c[cmin])}, a ratio of {fmt(ratio[j])} "
                    f"(limit {fmt(self.threshold_imbalance)})"
                )
            if mis_frac is not None and mis_frac[j].max() > self.threshold_misprediction:
                worst = int(np.argmax(mis_frac[j]))
                parts.append(
                    f"class {class_label(run, worst)} was mispredicted in "
                    f"{fmt(100 * mis_frac[j][worst])}% of its {int(c[worst])} samples "
                    f"(limit {fmt(100 * self.threshold_misprediction)}%)"
                )
            text = (
                f"By {where(run, int(data.global_steps[j]))}, after {int(total[j])} labels of "
                f"{lname}: " + " and ".join(parts) + f"; it held at {len(hits)} of {n} steps. "
                f"At the end: ratio {fmt(final_ratio)}."
            )
        else:
            text = (
                f"{int(total[-1])} labels of {lname} over {n} steps: largest / smallest class "
                f"count {fmt(final_ratio)} (limit {fmt(self.threshold_imbalance)})"
            )
            if mis_frac is not None:
                text += (
                    f"; worst mispredicted fraction of a class "
                    f"{fmt(100 * mis_frac[-1].max())}% (limit "
                    f"{fmt(100 * self.threshold_misprediction)}%)"
                )
            text += "."
        return self.make_result(
            bool(triggers),
            with_note(text, note),
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=final_ratio,
            figure_name="largest / smallest class count",
            limit=self.threshold_imbalance,
            evidence=evidence,
            steps_evaluated=n,
        )


# -- Confusion ---------------------------------------------------------------------------------


@register
class Confusion(BuiltinRule):
    """A predicted class is often wrong, per step (SageMaker Debugger's rule).

    Builds each step's confusion matrix C[label][prediction]; triggers at a step iff for some
    predicted class (a column with predictions) the diagonal share is < min_diag or an
    off-diagonal share is > max_off_diag.
    """

    name = "confusion"
    params: ClassVar[dict[str, Param]] = {
        "category_no": Param(None, "int", "number of classes (default: largest label + 1)"),
        "labels": Param("labels", "regex", "labels tensor (fallback: PyTorch's)"),
        "predictions": Param("predictions", "regex", "predictions (fallback: logits)"),
        "labels_collection": Param(None, "str", "collection holding the labels"),
        "predictions_collection": Param(None, "str", "collection holding the predictions"),
        "min_diag": Param(0.9, "float", "least share of a column on the diagonal"),
        "max_off_diag": Param(0.1, "float", "largest share of one wrong class in a column"),
        "mode": Param(None, "mode", "only steps of this mode (default: all steps)"),
    }

    def _validate(self) -> None:
        if self.category_no is not None and self.category_no < 2:
            raise self.param_error("category_no", f"must be >= 2, got {self.category_no}")
        for p in ("min_diag", "max_off_diag"):
            v = getattr(self, p)
            if v is None or not 0 <= v <= 1:
                raise self.param_error(p, f"must lie in [0, 1], got {v}")

    def _evaluate(self, run: Any) -> RuleResult:
        lname, pname = resolve_labels_predictions(
            self,
            run,
            self.labels,
            self.predictions,
            labels_collection=self.labels_collection,
            predictions_collection=self.predictions_collection,
        )
        data = read_label_data(run, lname, pname, self.mode, False)
        assert data.predictions is not None
        n = len(data.global_steps)
        note = data.left_out_note()
        if self.category_no is not None:
            _check_classes(
                self,
                run,
                "category_no",
                [self.category_no - 1],
                data,
                pname,
                given=f"is {self.category_no}",
            )
        if n == 0 or len(data.labels) == 0:
            return self.make_result(
                False, with_note(f"{lname} holds no labels.", note), skipped=True
            )
        k = data.num_classes
        if self.category_no is not None:
            if k > self.category_no:
                raise self.param_error(
                    "category_no",
                    f"is {self.category_no} but {lname}/{pname} hold class {k - 1}",
                )
            k = self.category_no
        step, lab, pred = data.sample_step, data.labels, data.predictions
        col = np.bincount(step * k + pred, minlength=n * k).reshape(n, k)
        ok = lab == pred
        diag = np.bincount(step[ok] * k + pred[ok], minlength=n * k).reshape(n, k)
        # the largest single wrong class per (step, predicted column)
        cell = (step[~ok] * k + pred[~ok]) * k + lab[~ok]
        cells, cell_counts = np.unique(cell, return_counts=True)
        max_off = np.zeros(n * k, np.int64)
        np.maximum.at(max_off, cells // k, cell_counts)
        max_off = max_off.reshape(n, k)
        used = col > 0
        denom = np.maximum(col, 1)
        diag_share = np.where(used, diag / denom, 1.0)
        off_share = np.where(used, max_off / denom, 0.0)
        bad = (diag_share < self.min_diag) | (off_share > self.max_off_diag)
        step_bad = bad.any(axis=1)
        hits = np.flatnonzero(step_bad)
        triggers = self.trigger_steps(run, data.global_steps[hits])
        evidence: dict[str, Any] = {
            "labels_tensor": lname,
            "predictions_tensor": pname,
            "bad_steps": data.global_steps[hits],
        }
        _note_evidence(evidence, data)
        if len(hits):
            j = int(hits[0])
            c = int(np.flatnonzero(bad[j])[0])
            wrong_cls = _worst_wrong(data, j, c)
            text = (
                f"At {where(run, int(data.global_steps[j]))} predicted class "
                f"{class_label(run, c)} was right for {int(diag[j, c])} of {int(col[j, c])} "
                f"samples ({fmt(100 * diag_share[j, c])}%, limit {fmt(100 * self.min_diag)}%)"
            )
            if wrong_cls is not None:
                text += (
                    f"; {int(max_off[j, c])} were class {class_label(run, wrong_cls)} "
                    f"({fmt(100 * off_share[j, c])}%, limit {fmt(100 * self.max_off_diag)}%)"
                )
            text += f". The confusion condition held at {len(hits)} of {n} steps."
        else:
            text = (
                f"Every predicted class stayed at least {fmt(100 * self.min_diag)}% right and no "
                f"wrong class passed {fmt(100 * self.max_off_diag)}% at any of {n} steps."
            )
        return self.make_result(
            bool(triggers),
            with_note(text, note),
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=100.0 * len(hits) / n,
            figure_name="percent of steps with a confused predicted class",
            limit=0.0,
            evidence=evidence,
            steps_evaluated=n,
        )


def _worst_wrong(data: LabelData, j: int, c: int) -> int | None:
    assert data.predictions is not None
    sel = (data.sample_step == j) & (data.predictions == c) & (data.labels != c)
    if not sel.any():
        return None
    return int(np.bincount(data.labels[sel]).argmax())


# -- DirectionConfusion ------------------------------------------------------------------------

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _check_classes(
    rule: Any,
    run: Any,
    param: str,
    classes: list[int],
    data: LabelData | None = None,
    scores: str | None = None,
    given: str | None = None,
) -> None:
    """A class a parameter names that the run's class names (its metadata's, if stored) or,
    given ``data`` read from class scores, the logits ``scores`` do not have is a typo, not a
    class without samples: refused, naming the parameter (``given``: its value shown) and the
    number of classes. Used for ``pairs``, ``classes`` and ``category_no`` (its last class,
    ``category_no - 1``)."""
    limits: list[tuple[int, str]] = []
    names = run.class_names
    if names:
        limits.append((len(names), f"the run's {len(names)} classes are 0 to {len(names) - 1}"))
    width = data.width if data is not None else None
    if width:
        logits = f"the logits {scores}" if scores else "the logits"
        limits.append((width, f"{logits} score {width} classes, 0 to {width - 1}"))
    for n, there in limits:
        outside = sorted({c for c in classes if c >= n})
        if outside:
            shown = given or f"names class {', '.join(map(str, outside))}"
            raise rule.param_error(param, f"{shown}; {there}")


def mirror_pairs(class_names: list[str] | None) -> list[tuple[int, int]]:
    """Pairs of classes whose names differ only by "left" <-> "right" (e.g. GTSRB's
    "Keep right" / "Keep left" -> (38, 39)); a name without a twin gives no pair."""
    if not class_names:
        return []
    index = {n.strip().lower(): i for i, n in enumerate(class_names)}
    pairs: set[tuple[int, int]] = set()
    for i, name in enumerate(class_names):
        if not _SIDE.search(name):
            continue
        twin = _SIDE.sub(lambda m: "right" if m.group(1).lower() == "left" else "left", name)
        j = index.get(twin.strip().lower())
        if j is not None and j != i:
            pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def _last_phase(run: Any, data: LabelData, mode: ModeKeys | None) -> LabelData:
    """``data`` restricted to the run's last stretch of ``mode`` steps."""
    stretches = phases(run, mode) if mode is not None else []
    if not stretches:
        return data
    keep, sel = data.samples_at(stretches[-1])
    remap = np.full(len(data.global_steps), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    out = np.isin(data.dropped_step, keep)
    return LabelData(
        data.global_steps[keep],
        data.modes[keep],
        remap[data.sample_step[sel]],
        data.labels[sel],
        None if data.predictions is None else data.predictions[sel],
        data.width,
        remap[data.dropped_step[out]],
        data.dropped[out],
    )


@register
class DirectionConfusion(BuiltinRule):
    """Mirror-image classes predicted as each other (the seed's custom rule, built in).

    For each pair (a, b) counts, cumulatively over the steps, samples of a predicted as b and of
    b predicted as a; triggers at the first step where a pair's count exceeds ``limit`` or (with
    ``max_rate``, once ``min_samples`` samples of the pair were seen) its share of the pair's
    samples exceeds ``max_rate``. Pairs default to the left/right twins among the run's class
    names. mode None counts every step, TRAIN and EVAL, as the seed's custom rule did.

    ``rate_of="twins"`` divides by the pair's samples predicted as either twin instead of all
    its samples: a model blind to direction splits those about evenly (rate ~0.5) however well
    it recognises the pair, while a weak healthy model mostly errs outside the pair.
    ``phases="last"`` judges only the last stretch of ``mode`` steps (the last evaluation pass:
    the model as trained) instead of counting from the first step.
    """

    name = "direction_confusion"
    params: ClassVar[dict[str, Param]] = {
        "pairs": Param(None, "pairs", "class pairs, e.g. '19-20,33-34' (default: mirror names)"),
        "limit": Param(10, "int", "confusions of a pair, both ways together, allowed"),
        "max_rate": Param(None, "float", "allowed confusions / samples of the pair"),
        "min_samples": Param(50, "int", "samples of a pair before max_rate is judged"),
        "rate_of": Param("samples", "str", "max_rate's denominator: samples | twins"),
        "phases": Param("run", "str", "run (every step) | last (last stretch of mode)"),
        "mode": Param(None, "mode", "only steps of this mode (default: all steps)"),
        "labels_regex": Param(".*labels", "regex", "labels tensor (fallback: PyTorch's)"),
        "predictions_regex": Param(".*predictions", "regex", "predictions (fallback: logits)"),
    }

    def _validate(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise self.param_error("limit", f"must be >= 0, got {self.limit}")
        if self.max_rate is not None and not 0 <= self.max_rate <= 1:
            raise self.param_error("max_rate", f"must lie in [0, 1], got {self.max_rate}")
        if self.limit is None and self.max_rate is None:
            raise self.param_error("limit", "and max_rate are both None: nothing to check")
        if self.rate_of not in ("samples", "twins"):
            raise self.param_error("rate_of", f"must be 'samples' or 'twins', got {self.rate_of!r}")
        if self.phases not in ("run", "last"):
            raise self.param_error("phases", f"must be 'run' or 'last', got {self.phases!r}")
        if self.phases == "last" and self.mode in (None, ModeKeys.GLOBAL):
            raise self.param_error("phases", "'last' needs a mode (e.g. mode='EVAL')")
        for a, b in self.pairs or []:
            if a == b or a < 0 or b < 0:
                raise self.param_error("pairs", f"holds ({a}, {b}): two different classes >= 0")

    def _evaluate(self, run: Any) -> RuleResult:
        pairs = sorted({(min(a, b), max(a, b)) for a, b in (self.pairs or [])})
        _check_classes(self, run, "pairs", [c for pair in pairs for c in pair])
        source = "given"
        if not pairs:
            pairs = mirror_pairs(run.class_names)
            source = "from the run's class names"
            if not pairs:
                why = (
                    "its class names have no left/right twins"
                    if run.class_names
                    else "it stores no class_names"
                )
                return self.make_result(
                    False,
                    f"No class pairs to check: none given and {why}; pass pairs=[(a, b), ...].",
                    skipped=True,
                )
        lname, pname = resolve_labels_predictions(
            self, run, self.labels_regex, self.predictions_regex
        )
        data = read_label_data(run, lname, pname, self.mode, False)
        assert data.predictions is not None
        if source == "given":
            _check_classes(self, run, "pairs", [c for pair in pairs for c in pair], data, pname)
        if self.phases == "last":
            data = _last_phase(run, data, self.mode)
        n = len(data.global_steps)
        lab, pred, step = data.labels, data.predictions, data.sample_step
        trig: set[int] = set()
        lines: list[str] = []
        worst = 0
        worst_rate = 0.0
        evidence: dict[str, Any] = {"pairs": pairs, "pairs_source": source}
        _note_evidence(evidence, data)
        for a, b in pairs:
            ab = (lab == a) & (pred == b)
            ba = (lab == b) & (pred == a)
            per_step = np.bincount(step[ab | ba], minlength=n)
            cum = np.cumsum(per_step)
            cond = np.zeros(n, bool)
            if self.limit is not None:
                cond |= cum > self.limit
            of_pair = (lab == a) | (lab == b)
            if self.rate_of == "twins":
                of_pair &= (pred == a) | (pred == b)
            samples = np.cumsum(np.bincount(step[of_pair], minlength=n))
            if self.max_rate is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    rate = np.where(samples > 0, cum / np.maximum(samples, 1), 0.0)
                cond |= (samples >= max(self.min_samples or 0, 1)) & (rate > self.max_rate)
            n_ab, n_ba = int(ab.sum()), int(ba.sum())
            total = n_ab + n_ba
            worst = max(worst, total)
            if self.max_rate is not None and n and samples[-1] >= max(self.min_samples or 0, 1):
                worst_rate = max(worst_rate, float(cum[-1] / samples[-1]))
            evidence[f"{a}-{b}/cumulative"] = cum
            hits = np.flatnonzero(cond)
            last_step = int(data.global_steps[-1]) if n else -1
            if len(hits):
                j = int(hits[0])
                trig.update(data.global_steps[hits].tolist())
                limit_text = f"limit {self.limit}" if self.limit is not None else ""
                if self.max_rate is not None:
                    share = 100 * cum[j] / max(int(samples[j]), 1)
                    of_what = (
                        "samples of the pair predicted as either"
                        if self.rate_of == "twins"
                        else "samples of the pair"
                    )
                    limit_text += (", " if limit_text else "") + (
                        f"{fmt(share)}% of {int(samples[j])} {of_what}, "
                        f"rate limit {fmt(100 * self.max_rate)}%"
                    )
                lines.append(
                    f"class {class_label(run, a)} was predicted as {class_label(run, b)} and back "
                    f"{int(cum[j])} times by global step {int(data.global_steps[j])}; {limit_text} "
                    f"({total} times in all by global step {last_step}: {n_ab} as {b}, {n_ba} "
                    f"as {a})"
                )
            else:
                lines.append(
                    f"classes {a} and {b}: {total} confusions over {n} steps "
                    f"({n_ab} as {b}, {n_ba} as {a}, {int(samples[-1]) if n else 0} samples)"
                )
        triggers = self.trigger_steps(run, sorted(trig))
        head = f"Pairs {source}: {', '.join(f'{a}/{b}' for a, b in pairs)}"
        if self.mode is not None:
            head += f" ({self.mode.name} steps only" + (
                ", the last pass)" if self.phases == "last" else ")"
            )
        return self.make_result(
            bool(triggers),
            with_note(head + ". " + "; ".join(lines) + ".", data.left_out_note()),
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            # judged by rate alone: the figure is the highest final rate of a judged pair
            figure=float(worst) if self.limit is not None else worst_rate,
            figure_name="most confusions of one pair"
            if self.limit is not None
            else "highest confusion rate of a pair",
            limit=float(self.limit) if self.limit is not None else self.max_rate,
            evidence=evidence,
            steps_evaluated=n,
        )


# -- RecallFloor -------------------------------------------------------------------------------


def recall_by_phase(
    run: Any, data: LabelData, mode: ModeKeys, which: str
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(last global step, correct per class, samples per class)] for each stretch of ``mode``
    steps ("all"), the last stretch ("last"), or every ``mode`` step pooled ("run")."""
    assert data.predictions is not None
    k = data.num_classes
    if which == "run":
        groups = [data.global_steps]
    else:
        groups = phases(run, mode)
        if which == "last":
            groups = groups[-1:]
    out = []
    for g in groups:
        idx, sel = data.samples_at(g)
        if len(idx) == 0:
            continue
        lab, pred = data.labels[sel], data.predictions[sel]
        samples = np.bincount(lab, minlength=k)
        correct = np.bincount(lab[lab == pred], minlength=k)
        out.append((int(data.global_steps[idx[-1]]), correct, samples))
    return out


@register
class RecallFloor(BuiltinRule):
    """Some class's recall is below a floor (this project's rule, for gating models).

    Recall of class c = samples of c predicted as c / samples of c, over the ``mode`` steps of
    the last evaluation pass (``phases="last"``), each pass (``"all"``), or all of them pooled
    (``"run"``). Classes with fewer than ``min_samples`` samples there are not judged.
    """

    name = "recall_floor"
    higher_is_worse = False
    params: ClassVar[dict[str, Param]] = {
        "min_recall": Param(0.5, "float", "least recall of every judged class"),
        "min_samples": Param(20, "int", "samples a class needs to be judged"),
        "classes": Param(None, "int_list", "only these classes (default: all)"),
        "mode": Param(ModeKeys.EVAL, "mode", "steps whose predictions count"),
        "phases": Param("last", "str", "last | all | run"),
        "labels_regex": Param(".*labels", "regex", "labels tensor (fallback: PyTorch's)"),
        "predictions_regex": Param(".*predictions", "regex", "predictions (fallback: logits)"),
    }

    def _validate(self) -> None:
        if self.min_recall is None or not 0 <= self.min_recall <= 1:
            raise self.param_error("min_recall", f"must lie in [0, 1], got {self.min_recall}")
        if self.phases not in ("last", "all", "run"):
            raise self.param_error("phases", f"must be 'last', 'all' or 'run', got {self.phases!r}")
        if self.min_samples is None or self.min_samples < 1:
            raise self.param_error("min_samples", f"must be >= 1, got {self.min_samples}")

    def _evaluate(self, run: Any) -> RuleResult:
        mode = self.mode or ModeKeys.EVAL
        lname, pname = resolve_labels_predictions(
            self, run, self.labels_regex, self.predictions_regex
        )
        data = read_label_data(run, lname, pname, mode, False)
        if len(data.global_steps) == 0:
            return self.make_result(
                False,
                f"The run has no {mode.name} steps with {lname}; nothing judged.",
                skipped=True,
            )
        if self.classes is not None:
            _check_classes(self, run, "classes", list(self.classes), data, pname)
        groups = recall_by_phase(run, data, mode, self.phases)
        trig: list[int] = []
        lines: list[str] = []
        lowest = 1.0
        judged_any = False
        evidence: dict[str, Any] = {"labels_tensor": lname, "predictions_tensor": pname}
        passes = phases(run, mode)[-1:] if self.phases == "last" else []
        judged_steps = passes[0] if passes else None  # None: every step of the mode
        _note_evidence(evidence, data, judged_steps)
        where_ = f" in the last {mode.name} pass" if passes else ""
        note = data.left_out_note(judged_steps, where_)
        for end, correct, samples in groups:
            judged = samples >= self.min_samples
            if self.classes is not None:
                keep = np.zeros_like(judged)
                keep[[c for c in self.classes if c < len(keep)]] = True
                judged &= keep
            with np.errstate(divide="ignore", invalid="ignore"):
                recall = np.where(samples > 0, correct / np.maximum(samples, 1), np.nan)
            evidence[f"recall@{end}"] = recall
            if not judged.any():
                continue
            judged_any = True
            lowest = min(lowest, float(np.nanmin(recall[judged])))
            low = np.flatnonzero(judged & (recall < self.min_recall))
            if len(low):
                trig.append(end)
                worst = sorted(low.tolist(), key=lambda c: recall[c])
                shown = ", ".join(
                    f"class {class_label(run, c)} {fmt(100 * recall[c])}% of {int(samples[c])}"
                    for c in worst[:5]
                )
                more = f" and {len(worst) - 5} more" if len(worst) > 5 else ""
                lines.append(
                    f"in the {mode.name} steps up to global step {end}: recall below "
                    f"{fmt(100 * self.min_recall)}% for {shown}{more}"
                )
        if not judged_any:
            return self.make_result(
                False,
                with_note(
                    f"No class had {self.min_samples} {mode.name} samples; nothing judged.", note
                ),
                evidence=evidence,
                skipped=True,
                steps_evaluated=len(data.global_steps),
            )
        if not lines:
            lines.append(
                f"every judged class had recall >= {fmt(100 * self.min_recall)}% "
                f"(lowest {fmt(100 * lowest)}%) over {mode.name} steps ({self.phases} pass)"
            )
        triggers = self.trigger_steps(run, trig)
        return self.make_result(
            bool(triggers),
            with_note(
                ("Recall " if not triggers else "Recall floor broken ") + "; ".join(lines) + ".",
                note,
            ),
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=lowest,
            figure_name="lowest recall of a judged class",
            limit=self.min_recall,
            evidence=evidence,
            steps_evaluated=len(data.global_steps),
        )


# -- NoisyLabels -------------------------------------------------------------------------------


def _accuracy(data: LabelData, steps: np.ndarray) -> tuple[float, int]:
    """(accuracy, samples) of the predictions at the given global steps."""
    assert data.predictions is not None
    _, sel = data.samples_at(steps)
    n = int(sel.sum())
    if n == 0:
        return float("nan"), 0
    return float((data.labels[sel] == data.predictions[sel]).mean()), n


def _left_out_of(
    train: LabelData, evals: LabelData, compared: list[tuple[np.ndarray, np.ndarray]] | None
) -> dict[int, int]:
    """{label left out: count} over the compared TRAIN and EVAL steps (None: all of them)."""
    t_steps = np.concatenate([t for t, _ in compared]) if compared else None
    e_steps = np.concatenate([e for _, e in compared]) if compared else None
    left = train.left_out(t_steps)
    for v, c in evals.left_out(e_steps).items():
        left[v] = left.get(v, 0) + c
    return left


@register
class NoisyLabels(BuiltinRule):
    """The model agrees with the evaluation labels far more than with its own training labels:
    the training labels are noisy (a broken annotation merge, shuffled labels). This project's
    rule.

    For each evaluation pass (a stretch of EVAL steps) it compares the model's accuracy on the
    pass with its accuracy on the training labels just before it: the TRAIN predictions (the
    forward pass of training) of the last ``train_window`` fraction of the TRAIN stretch that
    precedes the pass, against the labels the model was trained with. A model fits clean
    training labels about as well as held-out ones (ratio near 1); with a fraction p of the K
    classes' training labels replaced at random, training accuracy is about
    (1 - p) a + p / K for an evaluation accuracy a, a ratio near 1 - p (0.6 for 40 %) whatever
    a is. Triggers when TRAIN / EVAL accuracy falls below ``min_ratio`` (judged on the last
    pass by default, ``phases="all"`` judges every pass); a pass with fewer than
    ``min_samples`` samples on either side is not judged.

    Strong augmentation (small random crops, mixup) lowers training accuracy too: lower
    ``min_ratio`` for such recipes. Evaluation labels as noisy as the training labels show no
    gap, and noise under about a quarter of the labels hides in the spread of healthy runs.
    """

    name = "noisy_labels"
    higher_is_worse = False
    params: ClassVar[dict[str, Param]] = {
        "min_ratio": Param(0.85, "float", "least allowed TRAIN / EVAL accuracy"),
        "train_window": Param(0.25, "float", "last fraction of the TRAIN stretch compared"),
        "min_samples": Param(200, "int", "samples each side needs to be judged"),
        "phases": Param("last", "str", "last | all"),
        "labels_regex": Param(".*labels", "regex", "labels tensor (fallback: PyTorch's)"),
        "predictions_regex": Param(".*predictions", "regex", "predictions (fallback: logits)"),
    }

    def _validate(self) -> None:
        if self.min_ratio is None or self.min_ratio < 0:
            raise self.param_error("min_ratio", f"must be >= 0, got {self.min_ratio}")
        if self.train_window is None or not 0 < self.train_window <= 1:
            raise self.param_error("train_window", f"must lie in (0, 1], got {self.train_window}")
        if self.phases not in ("last", "all"):
            raise self.param_error("phases", f"must be 'last' or 'all', got {self.phases!r}")
        if self.min_samples is None or self.min_samples < 1:
            raise self.param_error("min_samples", f"must be >= 1, got {self.min_samples}")

    def _evaluate(self, run: Any) -> RuleResult:
        lname, pname = resolve_labels_predictions(
            self, run, self.labels_regex, self.predictions_regex
        )
        train = read_label_data(run, lname, pname, ModeKeys.TRAIN, False)
        evals = read_label_data(run, lname, pname, ModeKeys.EVAL, False)
        passes = phases(run, ModeKeys.EVAL)
        train_stretches = phases(run, ModeKeys.TRAIN)
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for p in passes:
            before = [t for t in train_stretches if len(t) and t[-1] < p[0]]
            if before:
                # the TRAIN steps holding labels, last train_window of them
                held = before[-1][np.isin(before[-1], train.global_steps)]
                k = int(np.ceil(len(held) * self.train_window))
                pairs.append((held[len(held) - k :], p))
        if self.phases == "last":
            pairs = pairs[-1:]
        rows: list[tuple[int, float, int, float, int]] = []  # end, train acc, n, eval acc, n
        compared: list[tuple[np.ndarray, np.ndarray]] = []
        for t_steps, e_steps in pairs:
            acc_t, n_t = _accuracy(train, t_steps)
            acc_e, n_e = _accuracy(evals, e_steps)
            if n_t >= self.min_samples and n_e >= self.min_samples:
                rows.append((int(e_steps[-1]), acc_t, n_t, acc_e, n_e))
                compared.append((t_steps, e_steps))
        left = _left_out_of(train, evals, compared or None)
        evidence: dict[str, Any] = {
            "labels_tensor": lname,
            "predictions_tensor": pname,
            "passes": [
                {"eval_end": r[0], "train_accuracy": r[1], "train_samples": r[2],
                 "eval_accuracy": r[3], "eval_samples": r[4]}
                for r in rows
            ],
        }  # fmt: skip
        if left:
            evidence["labels_left_out"] = left
        where_ = " in the steps compared" if rows else ""
        note = left_out_note(left, train.width or evals.width, where=where_)
        if not rows:
            text = (
                f"No evaluation pass with {self.min_samples} samples of predictions and labels "
                f"after TRAIN steps with as many (EVAL passes: {len(passes)}); nothing judged."
            )
            return self.make_result(False, with_note(text, note), evidence=evidence, skipped=True)
        ratios = [r[1] / r[3] if r[3] > 0 else 1.0 for r in rows]
        trig = [r[0] for r, q in zip(rows, ratios) if q < self.min_ratio]
        worst = int(np.argmin(ratios))
        end, acc_t, n_t, acc_e, n_e = rows[worst]
        text = (
            f"at {where(run, end)} the model predicted {fmt(100 * acc_e)}% of {n_e} EVAL labels "
            f"and {fmt(100 * acc_t)}% of the {n_t} TRAIN labels just before: ratio "
            f"{ratios[worst]:.2f}, limit {fmt(self.min_ratio)}"
        )
        triggers = self.trigger_steps(run, trig)
        if triggers:
            text = (
                "Training labels look noisy: " + text + ". A model fits clean training labels "
                "about as well as held-out ones; with a fraction p of them wrong the ratio falls "
                "to about 1 - p (check the labelling / the data merge)."
            )
        else:
            text = "Training and evaluation accuracy agree: " + text + "."
        return self.make_result(
            bool(triggers),
            with_note(text, note),
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=float(ratios[worst]),
            figure_name="TRAIN / EVAL accuracy",
            limit=self.min_ratio,
            evidence=evidence,
            steps_evaluated=len(train.global_steps) + len(evals.global_steps),
        )
