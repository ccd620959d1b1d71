"""The report's plots: each renders for the fixture run, shows the run's numbers, and reads
reductions / only the steps it needs on large runs."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from report_synthetic import GTSRB_NAMES, MEAN, STD, sign_image, write_out_of_range_run

from pytest_modelrules import MissingTensorError, open_run
from pytest_modelrules.report import plots
from pytest_modelrules.rules.result import RuleResult, TriggerStep
from pytest_modelrules.store.names import compute_reduction, reduction_tensor_name
from pytest_modelrules.store.writer import RunWriter

LOSS, LOGITS, LABELS = (
    "CrossEntropyLoss_output_0",
    "CrossEntropyLoss_input_0",
    "CrossEntropyLoss_input_1",
)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails unless it is one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_sane_png(path: Path, min_side: int = 300) -> None:
    w, h = png_size(path)
    assert min_side <= w <= 4000 and min_side <= h <= 4000, (w, h)
    assert path.stat().st_size > 5_000


def truth_series(truth: dict, name: str, mode: int) -> tuple[list[int], list[np.ndarray]]:
    """(mode steps, values) of a tensor in a mode, straight from the fixture's truth file."""
    steps, values = [], []
    for g, m, ms, saved in truth["__steps__"].tolist():
        if m == mode and saved and f"{g}/{name}" in truth:
            steps.append(ms)
            values.append(truth[f"{g}/{name}"])
    return steps, values


# -- the fixture run ----------------------------------------------------------------------------


def test_loss_plot_of_fixture_run(fixture_run, smdebug_truth, tmp_path):
    trig = RuleResult(
        "LossNotDecreasing", "loss_not_decreasing", True,
        first_trigger=TriggerStep(13, "TRAIN", 9), triggers=[TriggerStep(13, "TRAIN", 9)],
    )  # fmt: skip
    fig = plots.plot_loss(fixture_run, results=[trig], path=tmp_path / "loss.png")
    assert_sane_png(tmp_path / "loss.png")
    train, evl = fig.axes
    assert train.get_title() == f"TRAIN loss ({LOSS})" and evl.get_title() == f"EVAL loss ({LOSS})"
    assert train.get_xlabel() == "TRAIN step" and train.get_ylabel() == "loss"
    for ax, mode in ((train, 1), (evl, 2)):
        steps, values = truth_series(smdebug_truth, LOSS, mode)
        line = ax.get_lines()[0]
        assert list(line.get_xdata()) == steps
        np.testing.assert_allclose(line.get_ydata(), [float(v) for v in values], rtol=1e-6)
    # the trigger is marked on the TRAIN panel only, at its mode step
    marks = [ln for ln in train.get_lines() if ln.get_label() == "loss_not_decreasing triggered"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [9]
    assert not [ln for ln in evl.get_lines() if "triggered" in str(ln.get_label())]


def test_label_counts_of_fixture_run(fixture_run, smdebug_truth, tmp_path):
    fig = plots.plot_label_counts(fixture_run, path=tmp_path / "labels.png")
    assert_sane_png(tmp_path / "labels.png")
    ax = fig.axes[0]
    bars = ax.containers[0]
    _, labels = truth_series(smdebug_truth, LABELS, 1)
    expected = np.bincount(np.concatenate(labels), minlength=43)
    assert len(bars) == 43
    assert [p.get_height() for p in bars] == expected.tolist()
    assert ax.get_xlabel() == "class" and ax.get_ylabel() == "samples"
    assert ax.get_title().startswith(f"Label counts per class (TRAIN, {LABELS})")
    ratio = expected.max() / expected.min()
    assert f"max/min {ratio:.1f}" in ax.get_title()


def test_label_counts_side_by_side_with_class_names(demo_run_dir, baseline_run_dir, tmp_path):
    fig = plots.plot_label_counts(demo_run_dir, baseline=baseline_run_dir, path=tmp_path / "l.png")
    ax = fig.axes[0]
    assert [len(c) for c in ax.containers] == [43, 43]
    run_bars, base_bars = ax.containers
    # the two runs' bars stand side by side around each class's tick
    assert run_bars[19].get_x() < 19 < base_bars[19].get_x() + base_bars[19].get_width()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[19] == "19 Dangerous curve to the left" and ticks[14] == "14 Stop"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "demo_run",
        "fixed_run (baseline)",
    ]
    assert_sane_png(tmp_path / "l.png")


def test_confusion_matrix_of_fixture_run(fixture_run, smdebug_truth, tmp_path):
    fig = plots.plot_confusion_matrix(fixture_run, path=tmp_path / "cm.png")
    assert_sane_png(tmp_path / "cm.png")
    ax = fig.axes[0]
    heat = ax.get_images()[0].get_array()
    assert heat.shape == (43, 43)
    _, logits = truth_series(smdebug_truth, LOGITS, 2)
    _, labels = truth_series(smdebug_truth, LABELS, 2)
    y, p = np.concatenate(labels), np.concatenate([lg.argmax(1) for lg in logits])
    cm = np.zeros((43, 43))
    np.add.at(cm, (y, p), 1)
    rows = cm.sum(1, keepdims=True)
    np.testing.assert_allclose(heat, np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0))
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert ax.get_title().startswith(f"Confusion matrix (EVAL, {len(y)} samples")
    # the fixture confuses 19 and 20: both cells are among the outlined ones
    outlined = {(round(r.get_y() + 0.5), round(r.get_x() + 0.5)) for r in ax.patches}
    assert {(19, 20), (20, 19)} <= outlined


def _gallery_panels(fig) -> list[tuple[str, str]]:
    return [
        (" ".join(ax.get_title().split()), ax.get_xlabel()) for ax in fig.axes if ax.get_title()
    ]


def test_gallery_titles_match_the_fixture_data(fixture_run, smdebug_truth, tmp_path):
    fig = plots.plot_misclassified(fixture_run, max_images=8, path=tmp_path / "gallery.png")
    assert_sane_png(tmp_path / "gallery.png")
    panels = _gallery_panels(fig)
    assert len(panels) == 8
    steps, logits = truth_series(smdebug_truth, LOGITS, 2)
    _, labels = truth_series(smdebug_truth, LABELS, 2)
    by_step = {s: (lg.argmax(1), lb) for s, lg, lb in zip(steps, logits, labels)}
    for title, where in panels:
        _, _, step, _, index = where.replace(",", "").split()  # "EVAL step 15, sample 3"
        pred, truth = by_step[int(step)][0][int(index)], by_step[int(step)][1][int(index)]
        assert pred != truth
        assert title == f"predicted {pred}, truth {truth}"
    # the newest mistakes are shown: the last EVAL step is among them
    assert any(w.startswith(f"EVAL step {steps[-1]},") for _, w in panels)
    assert "model input not saved" in fig.get_suptitle()


def test_dead_relu_of_fixture_run(fixture_run, smdebug_truth, tmp_path):
    fig = plots.plot_dead_relu(fixture_run, path=tmp_path / "relu.png")
    assert_sane_png(tmp_path / "relu.png")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "dead units (%)" and ax.get_xlabel() == "TRAIN step"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for layer in ("layer1.relu_output_0", "layer2.relu_output_0"):
        steps, values = truth_series(smdebug_truth, layer, 1)
        expected = [100 * np.mean((v > 0).mean(0) * 100 < 1.0) for v in values]
        assert list(lines[layer].get_xdata()) == steps
        np.testing.assert_allclose(lines[layer].get_ydata(), expected)
    assert lines["threshold_layer 50%"].get_ydata()[0] == 50


def test_gradient_plot_says_what_is_missing(fixture_run):
    with pytest.raises(MissingTensorError, match="no gradients"):
        plots.plot_gradient_norms(fixture_run)


# -- what the fixture lacks: images, gradients, stored reductions --------------------------------


def test_gallery_unnormalises_images_with_the_runs_mean_and_std(demo_run_dir, tmp_path):
    fig = plots.plot_misclassified(demo_run_dir, max_images=6, path=tmp_path / "g.png")
    assert_sane_png(tmp_path / "g.png")
    run = open_run(demo_run_dir)
    shown = 0
    for ax in fig.axes:
        if not ax.get_images():
            continue
        _, _, step, _, index = ax.get_xlabel().replace(",", "").split()
        labels = run.tensor(LABELS).value(int(step), "EVAL")
        pred = run.tensor(LOGITS).value(int(step), "EVAL").argmax(1)
        truth, guess = int(labels[int(index)]), int(pred[int(index)])
        assert " ".join(ax.get_title().split()) == (
            f"predicted {GTSRB_NAMES[guess]}, truth {GTSRB_NAMES[truth]}"
        )
        # the pixels are the sign the run normalised, back in [0, 1]
        np.testing.assert_allclose(ax.get_images()[0].get_array(), sign_image(truth), atol=1e-6)
        shown += 1
    assert shown == 6
    assert run.metadata["normalize"] == {"mean": list(MEAN), "std": list(STD)}


def test_gallery_can_keep_only_mirror_pairs(demo_run_dir):
    fig = plots.plot_misclassified(demo_run_dir, max_images=4, pairs=[(19, 20)])
    titles = [t for t, _ in _gallery_panels(fig)]
    assert len(titles) == 4
    assert set(titles) <= {
        f"predicted {GTSRB_NAMES[20]}, truth {GTSRB_NAMES[19]}",
        f"predicted {GTSRB_NAMES[19]}, truth {GTSRB_NAMES[20]}",
    }


def test_to_pixels_layouts():
    chw = np.zeros((3, 2, 2), np.float32)
    px = plots.to_pixels(chw, plots.IMAGENET_MEAN, plots.IMAGENET_STD)
    assert px.shape == (2, 2, 3)
    np.testing.assert_allclose(px[0, 0], plots.IMAGENET_MEAN)
    gray = plots.to_pixels(np.full((1, 2, 2), 2.0), [0.5], [0.1])
    assert gray.shape == (2, 2) and np.allclose(gray, 0.7)
    u8 = plots.to_pixels(np.full((2, 2, 3), 255, np.uint8), [9], [9])
    assert np.allclose(u8, 1.0)
    assert plots.to_pixels(np.full((3, 2, 2), 50.0), [0, 0, 0], [1, 1, 1]).max() == 1.0


def test_gradient_norms_from_full_tensors_and_stored_l2(demo_run_dir, tmp_path):
    fig = plots.plot_gradient_norms(demo_run_dir, path=tmp_path / "grad.png")
    assert_sane_png(tmp_path / "grad.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "gradient L2 norm"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    run = open_run(demo_run_dir)
    full = run.tensor("gradient/conv1.weight").values("TRAIN")
    np.testing.assert_allclose(
        lines["gradient/conv1.weight"].get_ydata(),
        [np.linalg.norm(v) for v in full.values()],
        rtol=1e-6,
    )
    stored = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2")).values("TRAIN")
    np.testing.assert_allclose(
        lines["gradient/fc.weight"].get_ydata(), [float(v) for v in stored.values()]
    )


def _write_disagreeing_run(path: Path) -> Path:
    """Full tensors that say one thing and stored reductions that say another: a plot that
    follows the reduction proves it read the reduction."""
    with RunWriter(path) as w:
        for s in range(4):
            act = np.ones((8, 10), np.float32)  # every unit alive
            w.write("block.relu_output_0", act, s, "TRAIN")
            pf = np.zeros(10, np.float32)  # the stored reduction says every unit is dead
            w.write(
                reduction_tensor_name("block.relu_output_0", "positive_fraction"), pf, s, "TRAIN"
            )
            w.write("gradient/w", np.ones(4, np.float32), s, "TRAIN")
            w.write(reduction_tensor_name("gradient/w", "l2"), np.float32(123.0), s, "TRAIN")
    return path


def test_plots_read_stored_reductions_not_full_tensors(tmp_path):
    run = open_run(_write_disagreeing_run(tmp_path / "run"))
    relu = plots.dead_relu_percent(run)
    assert relu["block.relu_output_0"][1].tolist() == [100.0] * 4
    grads = plots.gradient_norms(run)
    assert grads["gradient/w"][1].tolist() == [123.0] * 4
    # without the reductions, the same numbers come from the full tensors
    assert compute_reduction(np.ones((8, 10)), "positive_fraction").min() == 1.0


def test_loss_line_is_subsampled_on_long_runs(tmp_path):
    n = 12_000
    with RunWriter(tmp_path / "long") as w:
        for s in range(n):
            w.write(LOSS, np.float32(1.0 / (1 + s)), s, "TRAIN")
    trig = RuleResult(
        "LossNotDecreasing", "loss_not_decreasing", True, triggers=[TriggerStep(7777)]
    )
    started = time.perf_counter()
    fig = plots.plot_loss(tmp_path / "long", results=[trig], path=tmp_path / "loss.png")
    elapsed = time.perf_counter() - started
    line = fig.axes[0].get_lines()[0]
    xs = np.asarray(line.get_xdata())
    assert 4_000 <= len(xs) <= plots.MAX_LOSS_POINTS + 1
    assert xs[0] == 0 and xs[-1] == n - 1 and 7777 in xs
    assert any(f"{len(xs)} of {n} steps shown" in t.get_text() for t in fig.axes[0].texts)
    assert elapsed < 10, f"plot_loss took {elapsed:.1f} s on {n} steps"


def test_gallery_reads_only_the_input_steps_it_shows(demo_run_dir, monkeypatch):
    from pytest_modelrules.store import run as run_mod

    reads: list[tuple[str, int]] = []
    original = run_mod.Tensor.value

    def spy(self, step_num, mode=None, worker=None):
        reads.append((self.name, int(step_num)))
        return original(self, step_num, mode, worker)

    def no_series(self, *a, **k):
        raise AssertionError(f"the gallery read every step of {self.name}")

    monkeypatch.setattr(run_mod.Tensor, "value", spy)
    original_series = run_mod.Tensor.series
    monkeypatch.setattr(
        run_mod.Tensor,
        "series",
        lambda self, *a, **k: (
            no_series(self) if self.name == "ResNet_input_0" else original_series(self, *a, **k)
        ),
    )
    fig = plots.plot_misclassified(demo_run_dir, max_images=3)
    shown = {int(ax.get_xlabel().split()[2].rstrip(",")) for ax in fig.axes if ax.get_images()}
    input_reads = [s for name, s in reads if name == "ResNet_input_0"]
    assert sorted(set(input_reads)) == sorted(shown) and len(input_reads) == len(shown)


def test_plots_do_not_import_matplotlib_at_package_import():
    code = (
        "import sys, pytest_modelrules, pytest_modelrules.report, pytest_modelrules.report.mapping;"
        "pytest_modelrules.report.evidence_anchor('dead_relu');"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_without_modes_is_drawn_over_global_steps(tmp_path):
    """A SageMaker Debugger job that never set a mode saves GLOBAL steps only."""
    rng = np.random.default_rng(0)
    with RunWriter(tmp_path / "run") as w:
        for s in range(5):
            w.write(LOSS, np.float32(1 / (s + 1)), s, "GLOBAL")
            w.write(LABELS, rng.integers(0, 5, 16), s, "GLOBAL")
            w.write("net.relu_output_0", rng.normal(size=(16, 8)).clip(0), s, "GLOBAL")
    run = open_run(tmp_path / "run")
    loss = plots.plot_loss(run).axes
    assert len(loss) == 1 and loss[0].get_xlabel() == "global step"
    assert len(loss[0].get_lines()[0].get_xdata()) == 5
    counts = plots.plot_label_counts(run).axes[0]
    assert sum(p.get_height() for p in counts.containers[0]) == 80
    assert "all modes" in counts.get_title()
    relu = plots.plot_dead_relu(run).axes[0]
    assert relu.get_xlabel() == "global step" and len(relu.get_lines()[0].get_xdata()) == 5


def test_first_triggers_are_marked_on_dead_relu_and_gradient_plots(demo_run_dir):
    run = open_run(demo_run_dir)
    dead = RuleResult("DeadRelu", "dead_relu", True, triggers=[TriggerStep(22, "TRAIN", 16)])
    grad = RuleResult("VanishingGradient", "vanishing_gradient", True, triggers=[TriggerStep(3)])
    other = RuleResult("Confusion", "confusion", True, triggers=[TriggerStep(5)])
    relu_ax = plots.plot_dead_relu(run, results=[dead, grad, other]).axes[0]
    marks = {ln.get_label(): list(ln.get_xdata()) for ln in relu_ax.get_lines()}
    assert marks["dead_relu first triggered"] == [16, 16]
    assert not [k for k in marks if k.startswith(("vanishing", "confusion"))]
    grad_ax = plots.plot_gradient_norms(run, results=[dead, grad]).axes[0]
    marks = {ln.get_label(): list(ln.get_xdata()) for ln in grad_ax.get_lines()}
    assert marks["vanishing_gradient first triggered"] == [run.mode_step(3)] * 2
    assert "dead_relu first triggered" not in marks


def test_many_classes_keep_figures_bounded(tmp_path):
    n = 120
    rng = np.random.default_rng(0)
    with RunWriter(tmp_path / "run") as w:
        for s in range(2):
            labels = rng.integers(0, n, 512)
            w.write(LABELS, labels, s, "EVAL")
            w.write(LOGITS, np.eye(n, dtype=np.float32)[labels[::-1]], s, "EVAL")
    counts = plots.plot_label_counts(
        tmp_path / "run", mode="EVAL", num_classes=n, path=tmp_path / "c.png"
    )
    stairs = counts.axes[0].patches[0]
    assert len(stairs.get_data().values) == n
    assert png_size(tmp_path / "c.png")[0] <= 3000
    cm = plots.plot_confusion_matrix(tmp_path / "run", num_classes=n, path=tmp_path / "cm.png")
    assert cm.axes[0].get_images()[0].get_array().shape == (n, n)
    assert len(cm.axes[0].get_xticks()) < 20
    assert max(png_size(tmp_path / "cm.png")) <= 2000


def test_loss_plot_shows_nan_and_inf_steps_and_every_finite_value(tmp_path):
    """NaN / inf cannot be drawn: they are marked along the panel's bottom and counted, a
    finite value between two of them still shows (a marker), a trigger at a NaN step sits at
    the panel's top, and a panel of nothing but NaN says so."""
    values = [1.0, np.nan, 0.8, np.nan, 0.6, np.inf, 0.5]
    with RunWriter(tmp_path / "some") as w:
        for s, v in enumerate(values):
            w.write(LOSS, np.float32(v), s, "TRAIN")
    trig = RuleResult("LossNotDecreasing", "loss_not_decreasing", True, triggers=[TriggerStep(3)])
    fig = plots.plot_loss(tmp_path / "some", results=[trig], path=tmp_path / "some.png")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    main = lines["some"]
    assert list(main.get_xdata()) == [0, 2, 4, 6] and main.get_marker() == "."
    assert list(lines["NaN / inf (3 steps)"].get_xdata()) == [1, 3, 5]
    assert list(lines["loss_not_decreasing triggered"].get_ydata()) == [0.97]  # axes height
    with RunWriter(tmp_path / "nan") as w:
        for s in range(4):
            w.write(LOSS, np.float32(np.nan), s, "TRAIN")
    fig = plots.plot_loss(tmp_path / "nan", path=tmp_path / "nan.png")
    assert any("all 4 loss values shown are NaN or inf" in t.get_text() for t in fig.axes[0].texts)


def test_label_counts_with_a_baseline_without_labels_keep_the_runs_bars(tmp_path):
    with RunWriter(tmp_path / "run") as w:
        w.write(LABELS, np.array([0, 1, 1, 2]), 0, "TRAIN")
    with RunWriter(tmp_path / "base") as w:
        w.write(LOSS, np.float32(1), 0, "TRAIN")
    fig = plots.plot_label_counts(tmp_path / "run", baseline=tmp_path / "base")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [1, 2, 1]
    assert any("baseline base holds no" in t.get_text() for t in fig.axes[0].texts)


# -- labels outside the classes -----------------------------------------------------------------

LEFT_OUT = "6 labels outside classes 0-4 left out: -100 ×2, -1 ×2, 7 ×2"


def test_labels_outside_the_logits_are_left_out_and_named(tmp_path):
    """-100 (PyTorch's ignore_index), -1 and 7 with 5 logits are no class: every plot leaves
    them out and says how many and which, in its title and its notes (the HTML prints those).
    Before, the confusion matrix and the bars grew to class 7, the negatives vanished without
    a word, and the gallery took ignored samples for mistakes and failed on -100."""
    run = open_run(write_out_of_range_run(tmp_path / "run", steps=2))
    counts = plots.plot_label_counts(run, path=tmp_path / "counts.png")
    ax = counts.axes[0]
    assert [p.get_height() for p in ax.containers[0]] == [2, 4, 2, 2, 4]
    assert ax.get_title().endswith("\n" + LEFT_OUT)
    assert plots.figure_notes(counts) == [LEFT_OUT]
    assert plots.label_counts(run).tolist() == [2, 4, 2, 2, 4]

    cm = plots.plot_confusion_matrix(run, normalize=False, path=tmp_path / "cm.png")
    heat = cm.axes[0].get_images()[0].get_array()
    assert heat.shape == (5, 5) and heat.sum() == 14 and np.trace(heat) == 10
    assert cm.axes[0].get_title() == (
        f"Confusion matrix (EVAL, 14 samples, accuracy {10 / 14:.1%})\n{LEFT_OUT}"
    )
    assert plots.figure_notes(cm) == [LEFT_OUT]
    matrix, mode = plots.confusion_matrix(run)
    assert matrix.shape == (5, 5) and mode.name == "EVAL"

    gallery = plots.plot_misclassified(run, path=tmp_path / "gallery.png")
    titles = sorted(title for title, _ in _gallery_panels(gallery))
    assert titles == ["predicted 2, truth 1"] * 2 + ["predicted 3, truth 4"] * 2
    note = (
        "6 labels outside classes 0-4 left out in the 2 EVAL steps searched: -100 ×2, -1 ×2, 7 ×2"
    )
    assert plots.figure_notes(gallery) == [note]
    assert gallery.get_suptitle().endswith("\n" + note)
    found, _ = plots.misclassified_samples(run)
    assert sorted({truth for *_, truth in found}) == [1, 4]
    for name in ("counts", "cm", "gallery"):
        assert_sane_png(tmp_path / f"{name}.png")


def test_the_class_count_comes_from_num_classes_logits_or_class_names(tmp_path):
    """num_classes, else the logits' width, else the class names; with none of them only
    negative labels are no class. A baseline's labels left out are named as the baseline's."""
    run = open_run(write_out_of_range_run(tmp_path / "run", steps=1))
    assert plots.label_counts(run, num_classes=8).tolist() == [1, 2, 1, 1, 2, 0, 0, 1]
    with RunWriter(tmp_path / "labels_only") as w:
        w.write(LABELS, np.array([0, 2, -100, 9, 9]), 0, "TRAIN")
    only = plots.plot_label_counts(tmp_path / "labels_only", baseline=run)
    assert plots.figure_notes(only) == [
        "1 label below 0 left out: -100 ×1",
        "baseline run: 3 labels outside classes 0-4 left out: -100 ×1, -1 ×1, 7 ×1",
    ]
    run_bars, base_bars = only.axes[0].containers
    assert [p.get_height() for p in run_bars] == [1, 0, 1, 0, 0, 0, 0, 0, 0, 2]
    assert [p.get_height() for p in base_bars] == [1, 2, 1, 1, 2, 0, 0, 0, 0, 0]
    with RunWriter(tmp_path / "named", metadata={"class_names": ["a", "b", "c"]}) as w:
        w.write(LABELS, np.array([0, 2, 3, 9]), 0, "TRAIN")
    named = plots.plot_label_counts(tmp_path / "named")
    assert plots.figure_notes(named) == ["2 labels outside classes 0-2 left out: 3 ×1, 9 ×1"]
    assert plots.figure_notes(plots.plot_label_counts(tmp_path / "named", num_classes=10)) == []


def test_loss_plot_of_a_model_that_returns_its_own_loss(tmp_path):
    """A model computing its loss (HuggingFace's ``outputs.loss``) is recorded as
    ``<Model>_output_0`` in the ``losses`` collection: the loss rules judge it and the plot
    draws it (it used to say "no loss tensor")."""
    with RunWriter(tmp_path / "hf") as w:
        w.set_collections({"losses": {"tensor_names": ["TinyLM_output_0"]}})
        for s in range(5):
            w.write("TinyLM_output_0", np.float32(1.0 / (s + 1)), s, "TRAIN")
            w.write("TinyLM_output_1", np.zeros((2, 3), np.float32), s, "TRAIN")
    fig = plots.plot_loss(tmp_path / "hf", path=tmp_path / "hf.png")
    assert fig.axes[0].get_title() == "TRAIN loss (TinyLM_output_0)"
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == pytest.approx(
        [1.0 / (s + 1) for s in range(5)]
    )
