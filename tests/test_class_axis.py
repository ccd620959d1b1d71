"""The class axis of the logits: axis 1 (PyTorch's CrossEntropyLoss convention), for the rules,
the assertion helpers, the plots and the HTML report alike.

A segmentation run saves logits (N, C, H, W) and labels (N, H, W): every pixel is a sample.
With W == C, argmax over the last axis (what the code did) returns as many "predictions" as
there are labels, so nothing failed: the counts, the confusion matrix and every rule's verdict
were silently those of the wrong pixels. Each test here compares with the per-pixel truth, or
with the same pixels written as an (N*H*W, C) classification run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules import RuleError, open_run
from pytest_modelrules.exceptions import ClassAxisError
from pytest_modelrules.report import html as report_html
from pytest_modelrules.report import plots
from pytest_modelrules.rules.classification import (
    ClassImbalance,
    Confusion,
    DirectionConfusion,
    NoisyLabels,
    RecallFloor,
)
from pytest_modelrules.store.writer import RunWriter

LABELS, LOGITS = "CrossEntropyLoss_input_1", "CrossEntropyLoss_input_0"
INPUTS = "UNet_input_0"
C, N, H, W = 3, 4, 2, 3  # W == C: argmax over the last axis gives as many values as labels
MODES = ("TRAIN", "TRAIN", "EVAL", "EVAL")


def _pixels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N, H, W), predicted classes (N, H, W)): class 0 common, class 2 rare; half of
    the class-1 pixels predicted as 2."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(C, size=(N, H, W), p=[0.6, 0.3, 0.1]).astype(np.int64)
    labels[0, 0, :C] = np.arange(C)  # every class at every step
    pred = labels.copy()
    ones = np.flatnonzero(labels == 1)
    pred.flat[ones[::2]] = 2
    return labels, pred


def _logits(pred: np.ndarray, seed: int) -> np.ndarray:
    """(N, C, H, W) float32 logits whose argmax over axis 1 is ``pred`` (no ties)."""
    rng = np.random.default_rng(seed + 100)
    onehot = np.moveaxis(np.eye(C, dtype=np.float32)[pred], -1, 1)
    return (4.0 * onehot + rng.uniform(0.0, 1.0, onehot.shape)).astype(np.float32)


def write_segmentation_run(path: Path, flat: bool = False) -> Path:
    """Four steps (TRAIN, TRAIN, EVAL, EVAL) of a 3-class segmentation model; ``flat``: the
    same pixels as a classification run, logits (N*H*W, C) and labels (N*H*W,)."""
    with RunWriter(path, metadata={"class_names": ["road", "left car", "right car"]}) as w:
        for g, mode in enumerate(MODES):
            labels, pred = _pixels(g)
            logits = _logits(pred, g)
            if flat:
                logits = np.moveaxis(logits, 1, -1).reshape(-1, C)
                labels = labels.reshape(-1)
            w.write(LOGITS, logits, g, mode)
            w.write(LABELS, labels, g, mode)
            w.write("CrossEntropyLoss_output_0", np.float32(1.0 / (g + 1)), g, mode)
            if not flat:
                w.write(INPUTS, np.full((N, 3, H, W), 0.5, np.float32), g, mode)
    return path


def truth(modes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel label counts, per-pixel confusion matrix) over the steps of ``modes``."""
    counts = np.zeros(C, np.int64)
    cm = np.zeros((C, C), np.int64)
    for g, mode in enumerate(MODES):
        if mode in modes:
            labels, pred = _pixels(g)
            counts += np.bincount(labels.ravel(), minlength=C)
            np.add.at(cm, (labels.ravel(), pred.ravel()), 1)
    return counts, cm


@pytest.fixture
def seg(tmp_path) -> Path:
    return write_segmentation_run(tmp_path / "seg")


def test_the_fixture_tells_the_axes_apart():
    """The run is built so that the last axis gives a different (and as long) answer."""
    labels, pred = _pixels(0)
    logits = _logits(pred, 0)
    assert logits.argmax(axis=-1).size == labels.size
    assert not np.array_equal(logits.argmax(axis=-1).ravel(), labels.ravel())
    assert np.array_equal(logits.argmax(axis=1), pred)


def test_plots_count_and_confuse_pixels_over_the_class_axis(seg):
    counts, _ = truth(("TRAIN",))
    assert plots.label_counts(seg, "TRAIN").tolist() == counts.tolist()
    _, cm_eval = truth(("EVAL",))
    matrix, mode = plots.confusion_matrix(seg)
    assert mode.name == "EVAL" and matrix.tolist() == cm_eval.tolist()
    fig = plots.plot_confusion_matrix(seg, normalize=False)
    assert fig.axes[0].get_images()[0].get_array().tolist() == cm_eval.tolist()
    bars = plots.plot_label_counts(seg)
    assert [p.get_height() for p in bars.axes[0].containers[0]] == counts.tolist()


def test_the_gallery_names_images_not_pixels(seg):
    """A pixel's mistake is shown on its image: the index is the image's place in the batch,
    one entry per (image, predicted, truth)."""
    found, _ = plots.misclassified_samples(seg, max_images=100)
    expected = set()
    for g, mode in enumerate(MODES):
        if mode == "EVAL":
            labels, pred = _pixels(g)
            wrong = labels != pred
            for i, t, p in zip(np.nonzero(wrong)[0], labels[wrong], pred[wrong]):
                expected.add((g - 2, int(i), int(p), int(t)))  # EVAL steps 2, 3: mode steps 0, 1
    assert found and set(found) == expected and len(found) == len(expected)
    fig = plots.plot_misclassified(seg)
    titles = {ax.get_title().replace("\n", " ") for ax in fig.axes if ax.get_title()}
    assert titles == {"predicted right car, truth left car"}


@pytest.mark.parametrize(
    "rule",
    [
        ClassImbalance(samples=1),
        ClassImbalance(samples=1, argmax=True),
        Confusion(),
        Confusion(min_diag=0.5),
        DirectionConfusion(pairs="1-2", limit=3),
        RecallFloor(min_samples=1, min_recall=0.6),
        NoisyLabels(min_samples=1),
    ],
    ids=lambda r: f"{r.name}{'-argmax' if getattr(r, 'argmax', False) else ''}",
)
def test_rules_judge_a_segmentation_run_as_its_pixels(tmp_path, rule):
    """Every classification rule reads (N, C, H, W) logits as the (N*H*W, C) run of the
    same pixels: same verdict, steps, figure and explanation."""
    seg = open_run(write_segmentation_run(tmp_path / "seg"))
    flat = open_run(write_segmentation_run(tmp_path / "flat", flat=True))
    got, want = rule.evaluate(seg), rule.evaluate(flat)
    assert got.triggered == want.triggered
    assert [t.step for t in got.triggers] == [t.step for t in want.triggers]
    assert got.figure == pytest.approx(want.figure, nan_ok=True)
    assert got.explanation.replace("seg", "flat") == want.explanation


def test_rule_counts_are_the_pixels(seg):
    counts, _ = truth(MODES)
    imbalance = ClassImbalance(samples=1).evaluate(seg)
    assert imbalance.evidence["class_counts"].tolist() == counts.tolist()
    first = Confusion().evaluate(seg)
    labels, pred = _pixels(0)
    col = int((pred == 2).sum())
    right = int(((pred == 2) & (labels == 2)).sum())
    assert first.first_step == 0
    assert f"class 2 (right car) was right for {right} of {col} samples" in first.explanation


def test_assertion_helpers_read_pixels(seg):
    from pytest_modelrules import assert_class_balance, assert_no_confusion
    from pytest_modelrules.assertions import ModelRuleFailure

    counts, _ = truth(MODES)
    result = assert_class_balance(seg, samples=1, threshold_imbalance=100)
    assert result.evidence["class_counts"].tolist() == counts.tolist()
    with pytest.raises(ModelRuleFailure, match=r"predicted class 2 \(right car\) was right"):
        assert_no_confusion(seg)


def test_the_html_report_draws_a_segmentation_run(seg, tmp_path):
    text = report_html.write_report(seg, tmp_path / "out", rules=["confusion"]).read_text(
        encoding="utf-8"
    )
    for key in ("label_counts", "confusion_matrix", "misclassified"):
        start = text.index(f"id='plot-{key}--seg'")
        block = text[start : text.index("</div>", start)]
        assert "Not drawn" not in block and "<img" in block, key
    assert "<td class='v-TRIGGERED'>TRIGGERED</td>" in text


# -- shapes that do not fit -------------------------------------------------------------------


def _write(path: Path, logits: np.ndarray, labels: np.ndarray, step: int = 5) -> Path:
    with RunWriter(path) as w:
        w.write(LOGITS, logits, step, "EVAL")
        w.write(LABELS, labels, step, "EVAL")
    return path


def test_channel_last_logits_are_refused_naming_tensor_step_and_shapes(tmp_path):
    """(N, H, W, C) logits against (N, H, W) labels: argmax over the last axis used to read
    them; the class axis is 1, so the shapes do not fit and the error says so."""
    labels, pred = _pixels(0)
    logits = np.moveaxis(_logits(pred, 0), 1, -1)  # (4, 2, 3, 3)
    run = _write(tmp_path / "r", logits, labels)
    shapes = (
        r"has shape \(4, 2, 3, 3\), whose class axis is 1 .*: it needs labels of shape "
        rf"\(4, 3, 3\), but {LABELS} has shape \(4, 2, 3\)"
    )
    message = rf"{LOGITS} at global step 5 {shapes}"
    with pytest.raises(ClassAxisError, match=message):
        Confusion().evaluate(run)
    with pytest.raises(RuleError, match=message):
        ClassImbalance(samples=1).evaluate(run)
    with pytest.raises(ValueError, match=message):
        plots.confusion_matrix(run)
    with pytest.raises(ValueError, match=rf"{LOGITS} at EVAL step 0 {shapes}"):
        plots.misclassified_samples(run)


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (np.array([[0.3], [-1.2]], np.float32), np.array([1, 0]), r"shape \(2, 1\).*binary"),
        (np.array([0.3, -1.2], np.float32), np.array([1, 0]), r"shape \(2,\).*binary"),
        (np.array([[0.3], [-1.2]], np.float32), np.array([[1.0], [0.0]]), r"binary"),
    ],
    ids=["N1-vs-N", "N-vs-N", "N1-vs-N1"],
)
def test_binary_logits_are_refused_not_read_as_class_0(tmp_path, logits, labels, match):
    """One score per sample (BCEWithLogitsLoss) has no class axis: an error naming the tensor,
    where (N, 1) logits used to predict class 0 for every sample."""
    run = _write(tmp_path / "r", logits, labels)
    with pytest.raises(ClassAxisError, match=rf"{LOGITS} at global step 5 .*{match}"):
        Confusion().evaluate(run)
    with pytest.raises(ValueError, match=match):
        plots.confusion_matrix(run)


def test_class_probabilities_as_labels_read_over_the_class_axis(tmp_path):
    """Labels of the logits' shape are class probabilities (CrossEntropyLoss's other target):
    their argmax over axis 1 is the class, for the plots and the rules alike."""
    labels, pred = _pixels(0)
    probs = np.moveaxis(np.eye(C, dtype=np.float32)[labels], -1, 1)  # (N, C, H, W)
    run = _write(tmp_path / "r", _logits(pred, 0), probs)
    cm = np.zeros((C, C), np.int64)
    np.add.at(cm, (labels.ravel(), pred.ravel()), 1)
    assert plots.confusion_matrix(run)[0].tolist() == cm.tolist()
    counts = ClassImbalance(samples=1).evaluate(run).evidence["class_counts"]
    assert counts.tolist() == np.bincount(labels.ravel(), minlength=C).tolist()
    assert plots.label_counts(run, "EVAL").tolist() == counts.tolist()
