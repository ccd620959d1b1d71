"""ClassImbalance, Confusion, DirectionConfusion, RecallFloor, NoisyLabels on runs written
with RunWriter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelrules import MissingTensorError, RuleParameterError, RunWriter, open_run
from pytest_modelrules.datasets.gtsrb_meta import CLASS_NAMES
from pytest_modelrules.rules.classification import (
    ClassImbalance,
    Confusion,
    DirectionConfusion,
    NoisyLabels,
    RecallFloor,
    mirror_pairs,
)
from pytest_modelrules.store.memory import MemoryRunBuilder

LABELS, LOGITS = "CrossEntropyLoss_input_1", "CrossEntropyLoss_input_0"


def logits_for(pred: np.ndarray, k: int = 43) -> np.ndarray:
    """Logits whose argmax is ``pred``."""
    out = np.zeros((len(pred), k), np.float32)
    out[np.arange(len(pred)), pred] = 5.0
    return out


def write_steps(path, steps, metadata=None, names=(LABELS, LOGITS), k=43):
    """steps: list of (mode, labels, predicted classes); predictions stored as logits."""
    with RunWriter(path, metadata=metadata) as w:
        for g, (mode, lab, pred) in enumerate(steps):
            w.write(names[0], np.asarray(lab, np.int64), g, mode)
            w.write(names[1], logits_for(np.asarray(pred), k), g, mode)
    return open_run(path)


# -- ClassImbalance -----------------------------------------------------------------------------


def test_class_imbalance_old_case_triggers_at_the_step(tmp_path):
    lab = np.array([0] * 990 + [1] * 10)
    with RunWriter(tmp_path / "r") as w:
        for g in range(3):  # 30 balanced labels first: fewer than samples=500
            w.write("labels", np.array([0, 1] * 5), g)
            w.write("predictions", np.array([0, 1] * 5), g)
        w.write("labels", lab, 3)
        w.write("predictions", lab, 3)
    result = ClassImbalance().evaluate(tmp_path / "r")
    assert result.triggered and result.first_step == 3
    assert "class 0 had 1005 samples and class 1 25" in result.explanation
    assert result.figure == pytest.approx(1005 / 25)
    assert not ClassImbalance(threshold_imbalance="50").evaluate(tmp_path / "r").triggered


def test_class_imbalance_balanced_run_passes(tmp_path):
    rng = np.random.default_rng(0)
    steps = [
        ("TRAIN", lab, lab) for lab in (rng.permutation(np.arange(64) % 43) for _ in range(20))
    ]
    run = write_steps(tmp_path / "r", steps)
    result = ClassImbalance().evaluate(run)
    assert not result.triggered
    assert result.evidence["labels_tensor"] == LABELS  # PyTorch fallback
    assert result.evidence["predictions_tensor"] == LOGITS


def test_class_imbalance_misprediction(tmp_path):
    rng = np.random.default_rng(1)
    steps = []
    for _ in range(12):
        lab = rng.permutation(np.arange(64) % 8)
        pred = lab.copy()
        pred[lab == 2] = 3  # class 2 always wrong
        steps.append(("TRAIN", lab, pred))
    run = write_steps(tmp_path / "r", steps)
    result = ClassImbalance().evaluate(run)
    assert result.triggered
    assert result.first_step == 7  # 8 x 64 = 512 labels >= samples 500
    assert "class 2 was mispredicted in 100% of its 64 samples" in result.explanation
    assert not ClassImbalance(threshold_misprediction="1.0").evaluate(run).triggered


def test_class_imbalance_too_few_samples_is_not_judged(tmp_path):
    run = write_steps(tmp_path / "r", [("TRAIN", [0] * 99 + [1], [0] * 100)])
    result = ClassImbalance().evaluate(run)
    assert not result.triggered and result.skipped
    assert "fewer than samples=500" in result.explanation
    assert ClassImbalance(samples="100").evaluate(run).triggered


def test_class_imbalance_missing_labels(tmp_path):
    with RunWriter(tmp_path / "r") as w:
        w.write("CrossEntropyLoss_output_0", np.float32(1.0), 0)
    with pytest.raises(MissingTensorError) as info:
        ClassImbalance().evaluate(tmp_path / "r")
    text = str(info.value)
    assert "labels tensor" in text and "CrossEntropyLoss_input_1" in text
    assert "CrossEntropyLoss_output_0" in text  # what the run has


def test_own_regex_does_not_fall_back(tmp_path):
    run = write_steps(tmp_path / "r", [("TRAIN", [0, 1], [0, 1])])
    with pytest.raises(MissingTensorError, match="my_labels"):
        ClassImbalance(labels_regex="my_labels").evaluate(run)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"threshold_imbalance": "0.5"}, "threshold_imbalance"),
        ({"samples": "0"}, "samples"),
        ({"argmax": "perhaps"}, "argmax"),
        ({"labels_regex": "(["}, "labels_regex"),
    ],
)
def test_class_imbalance_bad_parameters(params, match):
    with pytest.raises(RuleParameterError, match=match):
        ClassImbalance(**params)


def _memory_steps(steps):
    builder = MemoryRunBuilder()
    for g, (lab, pred) in enumerate(steps):
        builder.write(LABELS, np.asarray(lab, np.int64), g)
        builder.write(LOGITS, logits_for(np.asarray(pred), 6), g)
    builder.close()
    return builder.run()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=40),
        min_size=1,
        max_size=8,
    ),
    seed=st.integers(0, 2**16),
)
def test_shuffling_inside_a_step_changes_nothing(data, seed):
    rng = np.random.default_rng(seed)
    steps = [(np.array([a for a, _ in s]), np.array([b for _, b in s])) for s in data]
    shuffled = []
    for lab, pred in steps:
        order = rng.permutation(len(lab))
        shuffled.append((lab[order], pred[order]))
    rule = ClassImbalance(samples=10, threshold_imbalance=3)
    a, b = rule.evaluate(_memory_steps(steps)), rule.evaluate(_memory_steps(shuffled))
    assert a.triggered == b.triggered
    assert [t.step for t in a.triggers] == [t.step for t in b.triggers]
    assert np.array_equal(a.evidence["class_counts"], b.evidence["class_counts"])


# -- Confusion ----------------------------------------------------------------------------------


def test_confusion_identity_passes_one_mistake_triggers(tmp_path):
    lab = np.arange(10)
    with RunWriter(tmp_path / "ok") as w:
        for g in range(3):
            w.write("labels", lab, g)
            w.write("predictions", lab, g)
    assert not Confusion().evaluate(tmp_path / "ok").triggered
    wrong = lab.copy()
    wrong[4] = 7
    with RunWriter(tmp_path / "bad") as w:
        for g, pred in enumerate([lab, wrong, lab]):
            w.write("labels", lab, g)
            w.write("predictions", pred, g)
    result = Confusion().evaluate(tmp_path / "bad")
    assert [t.step for t in result.triggers] == [1]
    assert "predicted class 7 was right for 1 of 2 samples" in result.explanation
    assert "1 were class 4" in result.explanation


def test_confusion_category_no_and_thresholds(tmp_path):
    lab = np.arange(10)
    wrong = lab.copy()
    wrong[4] = 7
    with RunWriter(tmp_path / "r") as w:
        w.write("labels", lab, 0)
        w.write("predictions", wrong, 0)
    run = open_run(tmp_path / "r")
    assert not Confusion(min_diag="0.5", max_off_diag="0.5").evaluate(run).triggered
    with pytest.raises(RuleParameterError, match="category_no"):
        Confusion(category_no=5).evaluate(run)
    with pytest.raises(RuleParameterError, match="min_diag"):
        Confusion(min_diag="1.5")


def test_confusion_on_pytorch_logits(tmp_path):
    run = write_steps(tmp_path / "r", [("TRAIN", [1, 2, 3], [1, 2, 3]), ("EVAL", [1, 2], [2, 2])])
    result = Confusion().evaluate(run)
    assert [t.step for t in result.triggers] == [1]
    assert not Confusion(mode="TRAIN").evaluate(run).triggered


# -- DirectionConfusion -------------------------------------------------------------------------


def test_mirror_pairs_of_gtsrb():
    assert mirror_pairs(list(CLASS_NAMES)) == [(19, 20), (33, 34), (36, 37), (38, 39)]
    assert mirror_pairs(["Road narrows on the right", "Stop"]) == []
    assert mirror_pairs(None) == []


def confusion_run(path, per_step, mode_of=lambda g: "TRAIN"):
    """per_step[g] = (19 -> 20 confusions, 20 -> 19 confusions) among 64 samples of class 5."""
    steps = []
    for g, (ab, ba) in enumerate(per_step):
        lab = np.full(64, 5)
        pred = np.full(64, 5)
        lab[:ab], pred[:ab] = 19, 20
        lab[ab : ab + ba], pred[ab : ab + ba] = 20, 19
        lab[60:], pred[60:] = 19, 19  # some right answers of the pair
        steps.append((mode_of(g), lab, pred))
    return write_steps(path, steps, metadata={"class_names": list(CLASS_NAMES)})


def test_direction_confusion_triggers_at_the_step_the_count_passes_10(tmp_path):
    run = confusion_run(tmp_path / "r", [(0, 0), (3, 1), (0, 0), (2, 3), (1, 1), (0, 2), (4, 0)])
    # cumulative 0, 4, 4, 9, 11, 13, 17: more than 10 first at step 4
    result = DirectionConfusion().evaluate(run)
    assert result.triggered and result.first_step == 4
    assert [t.step for t in result.triggers] == [4, 5, 6]
    assert (
        "class 19 (Dangerous curve to the left) was predicted as 20 (Dangerous curve to the "
        "right) and back 11 times by global step 4; limit 10" in result.explanation
    )
    assert "17 times in all by global step 6: 10 as 20, 7 as 19" in result.explanation
    assert result.figure == 17
    assert result.evidence["pairs"] == [(19, 20), (33, 34), (36, 37), (38, 39)]
    assert not DirectionConfusion(limit="17").evaluate(run).triggered


def test_direction_confusion_rate_and_mode(tmp_path):
    run = confusion_run(
        tmp_path / "r", [(2, 0)] * 6, mode_of=lambda g: "EVAL" if g >= 3 else "TRAIN"
    )
    # per step: 2 confusions among 2 + 4 samples of the pair
    assert DirectionConfusion().evaluate(run).first_step == 5  # 12 confusions > 10
    result = DirectionConfusion(limit=100, max_rate="0.3", min_samples=12).evaluate(run)
    assert result.first_step == 1  # 4 of 12 samples = 33% once 12 samples were seen
    assert "rate limit 30%" in result.explanation
    eval_only = DirectionConfusion(limit=5, mode="EVAL").evaluate(run)
    assert eval_only.first_step == 5  # EVAL steps 3, 4, 5: 2, 4, 6 confusions
    assert "EVAL steps only" in eval_only.explanation


def test_direction_confusion_twin_rate_on_the_last_pass(tmp_path):
    # pass 1: an untrained model confuses the pair half the time; pass 2 (the trained model):
    # 100 samples of 19/20, 40 predicted outside the pair, 50 right, 10 as the twin
    lab = np.repeat([19, 20], 50)
    early = np.where(lab == 19, 20, 19)
    late = lab.copy()
    late[:20], late[50:70] = 0, 0  # outside the pair
    late[20:25], late[70:75] = 20, 19  # the twin: 10 of the 60 predicted as 19 or 20
    run = write_steps(
        tmp_path / "r", [("EVAL", lab, early), ("TRAIN", lab, lab), ("EVAL", lab, late)],
        metadata={"class_names": list(CLASS_NAMES)},
    )  # fmt: skip
    kw = {"pairs": [(19, 20)], "mode": "EVAL", "limit": None, "max_rate": 0.3}
    assert DirectionConfusion(**kw).evaluate(run).triggered  # counted from the first pass
    last = DirectionConfusion(**kw, phases="last").evaluate(run)
    assert not last.triggered and last.figure == pytest.approx(0.1)  # 10 of 100 samples
    twins = DirectionConfusion(**kw, phases="last", rate_of="twins").evaluate(run)
    assert not twins.triggered and twins.figure == pytest.approx(10 / 60)
    strict = DirectionConfusion(**{**kw, "max_rate": 0.15}, phases="last", rate_of="twins")
    result = strict.evaluate(run)
    assert result.triggered and result.first_step == 2
    assert "16.67% of 60 samples of the pair predicted as either" in result.explanation
    assert "the last pass" in result.explanation
    with pytest.raises(RuleParameterError, match="needs a mode"):
        DirectionConfusion(phases="last")
    with pytest.raises(RuleParameterError, match="rate_of"):
        DirectionConfusion(rate_of="pairs")


def test_direction_confusion_pairs_given_and_skipped_without_names(tmp_path):
    steps = [("TRAIN", [1, 2] * 8, [2, 1] * 8)]
    run = write_steps(tmp_path / "r", steps)
    skipped = DirectionConfusion().evaluate(run)
    assert skipped.skipped and not skipped.triggered
    assert "stores no class_names" in skipped.explanation
    assert DirectionConfusion(pairs="2-1").evaluate(run).first_step == 0
    assert DirectionConfusion(pairs=[[1, 2]], limit=16).evaluate(run).triggered is False
    with pytest.raises(RuleParameterError, match="pairs"):
        DirectionConfusion(pairs="3-3")
    with pytest.raises(RuleParameterError, match="max_rate"):
        DirectionConfusion(max_rate="2")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=30),
        min_size=1,
        max_size=6,
    ),
    pair=st.tuples(st.integers(0, 5), st.integers(0, 5)).filter(lambda p: p[0] != p[1]),
    limit=st.integers(0, 6),
)
def test_direction_confusion_symmetric_in_pair_order(data, pair, limit):
    steps = [(np.array([a for a, _ in s]), np.array([b for _, b in s])) for s in data]
    run = _memory_steps(steps)
    a = DirectionConfusion(pairs=[pair], limit=limit).evaluate(run)
    b = DirectionConfusion(pairs=[pair[::-1]], limit=limit).evaluate(run)
    assert a.triggered == b.triggered and a.figure == b.figure
    assert [t.step for t in a.triggers] == [t.step for t in b.triggers]


# -- RecallFloor --------------------------------------------------------------------------------


def recall_run(path, eval_passes):
    """Each pass: 2 TRAIN steps, then 2 EVAL steps whose class-3 recall is given."""
    steps = []
    for recall3 in eval_passes:
        lab = np.arange(64) % 4
        steps += [("TRAIN", lab, lab)] * 2
        pred = lab.copy()
        threes = np.flatnonzero(lab == 3)
        pred[threes[: round(len(threes) * (1 - recall3))]] = 0
        steps += [("EVAL", lab, pred)] * 2
    return write_steps(path, steps)


def test_recall_floor_last_pass(tmp_path):
    run = recall_run(tmp_path / "r", [0.25, 0.75])
    assert not RecallFloor().evaluate(run).triggered  # last pass: class 3 at 75%
    result = RecallFloor(phases="all").evaluate(run)
    assert [t.step for t in result.triggers] == [3]
    assert "class 3 25% of 32" in result.explanation
    worse = recall_run(tmp_path / "w", [0.75, 0.25])
    low = RecallFloor(min_recall="0.5").evaluate(worse)
    assert low.first_step == 7 and low.figure == pytest.approx(0.25)
    assert not RecallFloor(min_samples=33).evaluate(worse).triggered  # 32 samples of class 3
    assert not RecallFloor(classes="0,1,2").evaluate(worse).triggered


def test_recall_floor_without_eval_is_skipped(tmp_path):
    run = write_steps(tmp_path / "r", [("TRAIN", [0, 1], [1, 0])])
    result = RecallFloor().evaluate(run)
    assert result.skipped and not result.triggered
    with pytest.raises(RuleParameterError, match="phases"):
        RecallFloor(phases="first")


# -- NoisyLabels ---------------------------------------------------------------------------------


def noisy_run(path, train_acc: list[float], eval_acc: list[float], n: int = 200, seed: int = 0):
    """Passes of 4 TRAIN steps then 2 EVAL steps of ``n`` samples; in pass i the predictions
    match the labels for a fraction train_acc[i] (TRAIN) and eval_acc[i] (EVAL)."""
    rng = np.random.default_rng(seed)
    steps = []
    for a_t, a_e in zip(train_acc, eval_acc):
        for mode, acc, k in (("TRAIN", a_t, 4), ("EVAL", a_e, 2)):
            for _ in range(k):
                lab = rng.integers(0, 43, n)
                pred = lab.copy()
                wrong = rng.permutation(n)[: round(n * (1 - acc))]
                pred[wrong] = (lab[wrong] + 1) % 43
                steps.append((mode, lab, pred))
    return write_steps(path, steps)


def test_noisy_labels_ratio_on_the_last_pass(tmp_path):
    # the model fits its training labels far less than the test labels: noisy training labels
    noisy = noisy_run(tmp_path / "noisy", [0.3, 0.5], [0.5, 0.8])
    result = NoisyLabels().evaluate(noisy)
    assert result.triggered
    assert result.figure == pytest.approx(0.5 / 0.8)
    assert result.first_step == 11  # the last step of the last EVAL pass
    assert "80% of 400 EVAL labels and 50% of the 200 TRAIN labels" in result.explanation
    assert "noisy" in result.explanation
    assert not NoisyLabels(min_ratio=0.6).evaluate(noisy).triggered
    # train_window 1: all 4 TRAIN steps of the stretch count
    assert "of the 800 TRAIN labels" in NoisyLabels(train_window=1).evaluate(noisy).explanation
    # clean labels: training accuracy at or above evaluation accuracy
    clean = noisy_run(tmp_path / "clean", [0.5, 0.9], [0.45, 0.85])
    ok = NoisyLabels().evaluate(clean)
    assert not ok.triggered and ok.figure == pytest.approx(0.9 / 0.85)
    assert "agree" in ok.explanation


def test_noisy_labels_phases_and_min_samples(tmp_path):
    # the gap was there in the first pass only (the model later memorised the noisy labels)
    run = noisy_run(tmp_path / "r", [0.4, 0.9], [0.8, 0.9])
    assert not NoisyLabels().evaluate(run).triggered
    every = NoisyLabels(phases="all").evaluate(run)
    assert [t.step for t in every.triggers] == [5]
    skipped = NoisyLabels(min_samples=201).evaluate(run)
    assert skipped.skipped and not skipped.triggered
    train_only = write_steps(tmp_path / "t", [("TRAIN", [0, 1], [1, 0])])
    assert NoisyLabels().evaluate(train_only).skipped
    for bad in ({"min_ratio": -1}, {"phases": "first"}, {"min_samples": 0}, {"train_window": 0}):
        with pytest.raises(RuleParameterError):
            NoisyLabels(**bad)


# -- the real SageMaker Debugger fixture run, against plain loops over its truth ---------------


def _truth_steps(truth):
    rows = truth["__steps__"]
    return [(int(g), int(m)) for g, m, _ms, saved in rows.tolist() if saved]


def test_fixture_run_matches_plain_loops(smdebug_fixture_dir, smdebug_truth):
    run = open_run(smdebug_fixture_dir)
    steps = _truth_steps(smdebug_truth)
    labels = {g: smdebug_truth[f"{g}/{LABELS}"].astype(int) for g, _ in steps}
    preds = {g: smdebug_truth[f"{g}/{LOGITS}"].argmax(axis=1) for g, _ in steps}

    # DirectionConfusion, as the seed's MyCustomRule counts
    counter, first = 0, None
    for g, _ in steps:
        for p, lab in zip(preds[g], labels[g]):
            if (p, lab) in ((19, 20), (20, 19)):
                counter += 1
                if counter > 10 and first is None:
                    first = g
    result = DirectionConfusion(pairs="19-20").evaluate(run)
    assert result.first_step == first and result.figure == counter

    # ClassImbalance: cumulative counts and mispredictions
    counts, wrong, first = {}, {}, None
    for g, _ in steps:
        for p, lab in zip(preds[g], labels[g]):
            counts[lab] = counts.get(lab, 0) + 1
            wrong[lab] = wrong.get(lab, 0) + int(p != lab)
        if sum(counts.values()) >= 500 and first is None:
            ratio = max(counts.values()) / min(counts.values())
            mis = max(wrong[c] / counts[c] for c in counts)
            if ratio > 10 or mis > 0.7:
                first = g
    result = ClassImbalance().evaluate(run)
    assert result.first_step == first
    assert result.figure == pytest.approx(max(counts.values()) / min(counts.values()))

    # Confusion: per step, per predicted column
    bad = []
    for g, _ in steps:
        cols = {}
        for p, lab in zip(preds[g], labels[g]):
            cols.setdefault(p, []).append(lab)
        for p, labs in cols.items():
            diag = labs.count(p) / len(labs)
            off = max([labs.count(x) / len(labs) for x in set(labs) if x != p], default=0)
            if diag < 0.9 or off > 0.1:
                bad.append(g)
                break
    assert [t.step for t in Confusion().evaluate(run).triggers] == bad

    # RecallFloor over each EVAL pass
    passes, current, last_mode = [], [], None
    for g, m in steps:
        if m == 2:
            if last_mode != 2:
                current = []
                passes.append(current)
            current.append(g)
        last_mode = m
    failing = []
    for p in passes:
        lab = np.concatenate([labels[g] for g in p])
        pr = np.concatenate([preds[g] for g in p])
        for c in set(lab.tolist()):
            n = int((lab == c).sum())
            if n >= 4 and (pr[lab == c] == c).sum() / n < 0.5:
                failing.append(p[-1])
                break
    assert failing  # the fixture's accuracy ramps: some early pass fails
    found = RecallFloor(phases="all", min_samples=4).evaluate(run)
    assert [t.step for t in found.triggers] == failing


def test_every_worker_shard_counts(tmp_path):
    """Data parallel: each worker saw its own half of the batch; both halves are counted."""
    path = tmp_path / "r"
    writers = [
        RunWriter(path, f"worker_{r}", rank=r, num_workers=2, metadata={"class_names": ["a"] * 3})
        for r in range(2)
    ]
    for g in range(4):
        for r, w in enumerate(writers):
            lab = np.full(8, r)  # worker 0: class 0, worker 1: class 1
            pred = lab.copy()
            if r == 1 and g == 2:
                lab[:6], pred[:6] = 2, 1  # 6 confusions of 2 as 1, all on worker 1
            w.write(LABELS, lab, g)
            w.write(LOGITS, logits_for(pred, 3), g)
    for w in writers:
        w.close()
    run = open_run(path)
    assert run.num_workers == 2
    counts = ClassImbalance(samples=1).evaluate(run).evidence["class_counts"]
    assert counts.tolist() == [32, 26, 6]
    result = DirectionConfusion(pairs="1-2", limit=5).evaluate(run)
    assert result.first_step == 2 and result.figure == 6


def test_ignored_labels_are_left_out(tmp_path):
    lab = np.array([0, 1, -100, -100, 1, 0])
    pred = np.array([0, 1, 1, 1, 1, 0])
    run = write_steps(tmp_path / "r", [("TRAIN", lab, pred)], k=2)
    counts = ClassImbalance(samples=1).evaluate(run).evidence["class_counts"]
    assert counts.tolist() == [2, 2]
    assert not Confusion().evaluate(run).triggered


@pytest.mark.parametrize("value", [-1, 1.5, 70])
def test_threshold_misprediction_is_a_fraction(value):
    """70 meant as 70 % would switch the misprediction check off: refused, named."""
    from pytest_modelrules import RuleParameterError

    with pytest.raises(RuleParameterError, match=r"threshold_misprediction.*\[0, 1\]"):
        ClassImbalance(threshold_misprediction=value)
    ClassImbalance(threshold_misprediction=None)  # off, as documented
    ClassImbalance(threshold_misprediction=1)


def test_classes_the_run_does_not_have_are_refused_not_passed(tmp_path):
    """With class names stored, a pair or a class past them is a typo: an error naming it,
    where it used to pass as "0 confusions" or be skipped."""
    names = ["a", "b", "c", "d", "e"]
    steps = [("EVAL", [1, 2] * 20, [2, 1] * 20)]
    run = write_steps(tmp_path / "r", steps, metadata={"class_names": names}, k=5)
    with pytest.raises(RuleParameterError, match=r"pairs.*names class 99; the run's 5 classes"):
        DirectionConfusion(pairs=[(1, 99)]).evaluate(run)
    with pytest.raises(RuleParameterError, match=r"classes.*names class 77"):
        RecallFloor(min_recall=0.1, classes=[77]).evaluate(run)
    assert DirectionConfusion(pairs=[(1, 2)], limit=100).evaluate(run).triggered is False


def test_category_no_past_the_run_s_class_names_is_refused(tmp_path):
    """category_no above the run's class names is a typo as a pair past them is: an error naming
    the parameter, its value and the number of classes, where it passed when the logits were
    wider than the names (43 here) or the predictions were class ids (no width)."""
    names = ["a", "b", "c", "d", "e"]
    steps = [("EVAL", [1, 2] * 20, [1, 2] * 20)]
    run = write_steps(tmp_path / "r", steps, metadata={"class_names": names})
    refused = r"'category_no' is 6; the run's 5 classes are 0 to 4"
    with pytest.raises(RuleParameterError, match=refused):
        Confusion(category_no=6).evaluate(run)
    assert not Confusion(category_no=5).evaluate(run).triggered
    with RunWriter(tmp_path / "ids", metadata={"class_names": names}) as w:
        w.write("labels", np.array([0, 1, 2]), 0)
        w.write("predictions", np.array([0, 1, 2]), 0)
    with pytest.raises(RuleParameterError, match=refused):
        Confusion(category_no=6).evaluate(tmp_path / "ids")
    assert not Confusion(category_no=5).evaluate(tmp_path / "ids").triggered


# -- labels that are no class ---------------------------------------------------------------------

NO_CLASS = np.array([-100, -1, 7, 7, 7])  # ignore_index, "unknown", an id past 5 logits
LEFT_OUT = "20 labels outside classes 0-4 left out: -100 ×4, -1 ×4, 7 ×12"


def no_class_run(path):
    """5 logits; TRAIN steps 0-1, EVAL steps 2-3 of 100 right predictions (20 per class) and
    NO_CLASS labels (the 7s predicted as 3); at step 3, 5 samples of class 1 predicted as 2."""
    steps = []
    for g, mode in enumerate(["TRAIN", "TRAIN", "EVAL", "EVAL"]):
        lab = np.arange(100) % 5
        pred = lab.copy()
        if g == 3:
            pred[np.flatnonzero(lab == 1)[:5]] = 2
        steps.append(
            (mode, np.concatenate([lab, NO_CLASS]), np.concatenate([pred, [0, 0, 3, 3, 3]]))
        )
    return write_steps(path, steps, k=5)


def test_labels_past_the_logits_are_left_out_and_named(tmp_path):
    """A label at or past the logits' width (7 with 5 logits) is no class, as a negative one is:
    every rule leaves both out and says how many and which, as the report's plots do. Before,
    class 7 was counted: class_imbalance saw a ratio of 6.7 and class 7 100% mispredicted,
    confusion found column 3 confused at every step, recall_floor judged class 7 at 0%."""
    run = no_class_run(tmp_path / "r")
    imbalance = ClassImbalance(samples=1).evaluate(run)
    assert not imbalance.triggered
    assert imbalance.evidence["class_counts"].tolist() == [80] * 5
    assert imbalance.evidence["labels_left_out"] == {-100: 4, -1: 4, 7: 12}
    assert imbalance.explanation.endswith(f". {LEFT_OUT}.")
    confusion = Confusion().evaluate(run)
    assert [t.step for t in confusion.triggers] == [3]
    assert "predicted class 2 was right for 20 of 25 samples" in confusion.explanation
    assert LEFT_OUT in confusion.explanation
    assert [t.step for t in Confusion(category_no=5).evaluate(run).triggers] == [3]
    pair = DirectionConfusion(pairs="1-2", limit=4).evaluate(run)
    assert pair.first_step == 3 and pair.figure == 5 and LEFT_OUT in pair.explanation
    recall = RecallFloor(min_samples=5).evaluate(run)
    assert not recall.triggered and recall.figure == pytest.approx(35 / 40)
    assert recall.explanation.endswith(
        ". 10 labels outside classes 0-4 left out in the last EVAL pass: -100 ×2, -1 ×2, 7 ×6."
    )
    noisy = NoisyLabels(min_samples=50).evaluate(run)
    assert noisy.evidence["passes"][0]["train_accuracy"] == 1.0
    assert "15 labels outside classes 0-4 left out in the steps compared" in noisy.explanation


def test_parameters_past_the_logits_are_refused(tmp_path):
    """A class past the logits' width in a parameter is a typo: RuleParameterError naming the
    parameter and the width (run without class names), where pairs=3-7 used to count the
    label-7 samples and category_no=6 passed."""
    run = no_class_run(tmp_path / "r")
    width = "the logits CrossEntropyLoss_input_0 score 5 classes, 0 to 4"
    with pytest.raises(RuleParameterError, match=f"'pairs' names class 7; {width}"):
        DirectionConfusion(pairs="3-7").evaluate(run)
    with pytest.raises(RuleParameterError, match=f"'category_no' is 6; {width}"):
        Confusion(category_no=6).evaluate(run)
    with pytest.raises(RuleParameterError, match=f"'classes' names class 5, 7; {width}"):
        RecallFloor(classes=[0, 5, 7]).evaluate(run)
    with pytest.raises(RuleParameterError, match=r"category_no.*hold class 4"):
        Confusion(category_no=4).evaluate(run)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (ClassImbalance(samples=1), []),
        (Confusion(), [3]),
        (Confusion(category_no=5), [3]),
        (DirectionConfusion(pairs="1-2", limit=4), [3]),
        (RecallFloor(min_samples=5), []),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_labels_past_the_logits_step_by_step_as_over_the_run(tmp_path, rule, expected):
    """invoke_rule (the SageMaker custom-rule path) triggers where evaluate() does."""
    from pytest_modelrules.rules.custom import invoke_rule

    run = no_class_run(tmp_path / "r")
    whole = rule.evaluate(run)
    walked = invoke_rule(rule, trial=run)
    assert [t.step for t in walked.triggers] == [t.step for t in whole.triggers] == expected


def test_a_run_of_only_ignored_labels_says_so(tmp_path):
    """Nothing left to judge is no silent pass: the skipped result names the labels left out;
    class ids as predictions give no width, so only negative labels are no class there."""
    lab = np.array([-100] * 6)
    run = write_steps(tmp_path / "r", [("EVAL", lab, np.zeros(6, int))], k=5)
    for rule in (ClassImbalance(samples=1), Confusion()):
        result = rule.evaluate(run)
        assert result.skipped and not result.triggered
        assert result.explanation == (
            f"{LABELS} holds no labels. 6 labels outside classes 0-4 left out: -100 ×6."
        )
    floor = RecallFloor(min_samples=1).evaluate(run)
    assert floor.skipped and "left out in the last EVAL pass: -100 ×6" in floor.explanation
    with RunWriter(tmp_path / "ids") as w:
        w.write("labels", np.array([0, 1, -1, 9]), 0)
        w.write("predictions", np.array([0, 1, 1, 1]), 0)
    counts = ClassImbalance(samples=1).evaluate(tmp_path / "ids")
    assert counts.evidence["class_counts"].tolist() == [1, 1] + [0] * 7 + [1]
    assert counts.explanation.endswith(" 1 label below 0 left out: -1 ×1.")


def test_helpers_and_baseline_name_the_labels_left_out(tmp_path):
    """The assertion message's why: line carries the note; the baseline comparison names the
    labels left out of each run's last pass."""
    from pytest_modelrules import assert_no_confusion
    from pytest_modelrules.assertions import ModelRuleFailure
    from pytest_modelrules.rules.baseline import BaselineComparison

    run = no_class_run(tmp_path / "r")
    with pytest.raises(ModelRuleFailure, match=f"why: .*{LEFT_OUT}"):
        assert_no_confusion(run)
    base = BaselineComparison(baseline=run, rules=["class_imbalance"]).evaluate(run)
    note = "10 labels outside classes 0-4 left out in the last EVAL pass: -100 ×2, -1 ×2, 7 ×6"
    assert not base.triggered
    assert base.explanation.endswith(f" {note}; baseline 'r': {note}.")


@pytest.mark.parametrize("loss", ["MSELoss", "BCEWithLogitsLoss", "L1Loss", "HuberLoss"])
def test_no_fallback_to_the_inputs_of_a_loss_without_class_labels(tmp_path, loss):
    """A regression or multi-label loss's target is no class label: the classification rules
    are not judged on it (they used to read MSELoss_input_1 as labels and fail with "holds
    fractional values", which stopped `modelrules check` of a regression run)."""
    rng = np.random.default_rng(0)
    with RunWriter(tmp_path / "r") as w:
        for g in range(20):
            w.write(f"{loss}_input_0", rng.normal(size=(32, 3)).astype(np.float32), g, "TRAIN")
            target = (rng.random((32, 3)) > 0.5).astype(np.float32)  # integer-valued, too
            w.write(f"{loss}_input_1", target, g, "TRAIN")
            w.write(f"{loss}_output_0", np.float32(1.0), g, "TRAIN")
    for rule in (ClassImbalance(), NoisyLabels(), RecallFloor(mode="TRAIN")):
        with pytest.raises(MissingTensorError) as info:
            rule.evaluate(tmp_path / "r")
        assert f"{loss} takes no class labels" in str(info.value)
    # labels named by the user are read (here the 0/1 targets, as classes 0 and 1)
    named = ClassImbalance(labels_regex=f"{loss}_input_1", predictions_regex="^none$")
    result = named.evaluate(tmp_path / "r")
    assert result.evidence["labels_tensor"] == f"{loss}_input_1" and not result.skipped


def test_fallback_to_a_custom_loss_still_reads_its_labels(tmp_path):
    run = write_steps(
        tmp_path / "r",
        [("TRAIN", np.arange(64) % 4, np.arange(64) % 4)] * 10,
        names=("FocalLoss_input_1", "FocalLoss_input_0"),
        k=4,
    )
    result = ClassImbalance().evaluate(run)
    assert result.evidence["labels_tensor"] == "FocalLoss_input_1"
    assert not result.triggered


def test_float_labels_that_hold_no_class_ids_are_not_judged(tmp_path):
    """A custom regression loss's float targets and a multi-label loss's multi-hot targets
    hold no class ids: the rules are not judged (MissingTensorError, a "not judged" row of
    `modelrules check`), where they raised "holds fractional values" / "holds non-integer
    class labels" and stopped the check. Mixup's soft targets are class probabilities: read,
    their class the one of largest weight."""
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, (20, 64))
    with RunWriter(tmp_path / "mixup") as w:
        for g in range(20):
            onehot = np.eye(5, dtype=np.float32)[classes[g]]
            w.write(LOGITS, rng.normal(size=(64, 5)).astype(np.float32), g, "TRAIN")
            w.write(LABELS, 0.7 * onehot + 0.3 * onehot[::-1], g, "TRAIN")
    with RunWriter(tmp_path / "rmse") as w:
        for g in range(20):
            w.write("RMSELoss_input_0", rng.normal(size=(64, 1)).astype(np.float32), g, "TRAIN")
            w.write("RMSELoss_input_1", rng.normal(size=(64, 1)).astype(np.float32), g, "TRAIN")
    with RunWriter(tmp_path / "multihot") as w:
        for g in range(20):
            hot = (rng.random((64, 5)) < 0.4).astype(np.float32)
            w.write("AsymmetricLoss_input_0", rng.normal(size=(64, 5)).astype(np.float32), g)
            w.write("AsymmetricLoss_input_1", hot, g)
    for run, match in (
        ("rmse", r"RMSELoss_input_1 holds non-integer values"),
        ("multihot", r"AsymmetricLoss_input_1 holds one value per class \(shape \(64, 5\)\)"),
    ):
        for rule in (ClassImbalance(), NoisyLabels(), RecallFloor(mode="TRAIN"), Confusion()):
            with pytest.raises(MissingTensorError, match=match):
                rule.evaluate(tmp_path / run)
    counts = ClassImbalance().evaluate(tmp_path / "mixup").evidence["class_counts"]
    assert counts.tolist() == np.bincount(classes.reshape(-1), minlength=5).tolist()
