"""The synthetic GTSRB generator: determinism, proportions, mirror pairs, the official layout."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.datasets import (
    CLASS_NAMES,
    MIRROR_PAIRS,
    NUM_CLASSES,
    TRAIN_COUNTS,
    SignsConfig,
    class_counts,
    generate_split,
    gtsrb_dataset,
    split_labels,
    templates,
    write_gtsrb,
)

SMALL = SignsConfig(train_images=200, test_per_class=2, size=16, seed=3)


def test_facts_match_gtsrb_md():
    assert NUM_CLASSES == 43 and len(CLASS_NAMES) == 43
    assert sum(TRAIN_COUNTS) == 39209
    assert CLASS_NAMES[19] == "Dangerous curve to the left"
    assert CLASS_NAMES[20] == "Dangerous curve to the right"
    assert max(TRAIN_COUNTS) / min(TRAIN_COUNTS) == pytest.approx(2250 / 210)
    assert MIRROR_PAIRS == ((19, 20), (33, 34), (36, 37), (38, 39))


@pytest.mark.parametrize("total", [43, 500, 6000, 39209])
def test_class_counts_follow_gtsrb_proportions(total):
    counts = class_counts(total)
    assert counts.sum() == total and counts.min() >= 1
    exact = total * np.asarray(TRAIN_COUNTS) / sum(TRAIN_COUNTS)
    assert np.all(np.abs(counts - exact) <= 2)
    if total == 39209:
        assert counts.tolist() == list(TRAIN_COUNTS)


def test_split_labels_balanced_and_proportional_test_sets():
    assert np.bincount(split_labels(SignsConfig(test_per_class=5), "test")).tolist() == [5] * 43
    cfg = SignsConfig(test_distribution="gtsrb", test_images=1000)
    assert np.bincount(split_labels(cfg, "test")).tolist() == class_counts(1000).tolist()


def test_deterministic_by_seed():
    a_img, a_lab, a_roi = generate_split(SMALL, "train")
    b_img, b_lab, b_roi = generate_split(SMALL, "train")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert np.array_equal(a_roi, b_roi)
    other, _, _ = generate_split(
        SignsConfig(train_images=200, test_per_class=2, size=16, seed=4), "train"
    )
    assert not np.array_equal(a_img, other)
    assert a_img.shape == (200, 16, 16, 3) and a_img.dtype == np.uint8
    # the test split is shuffled, not sorted by class
    _, t_lab, _ = generate_split(SMALL, "test")
    assert sorted(t_lab.tolist()) == sorted(np.repeat(np.arange(43), 2).tolist())
    assert t_lab.tolist() != sorted(t_lab.tolist())


def test_images_vary_within_a_class():
    img, lab, _ = generate_split(SignsConfig(train_images=2000, size=32, seed=0), "train")
    cls2 = img[lab == 2].astype(np.float32)
    # no two images of a class are the same, and they differ a lot (position, light, clutter)
    diffs = np.abs(cls2[:-1] - cls2[1:]).mean(axis=(1, 2, 3))
    assert diffs.min() > 5.0


@pytest.mark.parametrize("size", [32, 64])
def test_mirror_pair_templates_are_exact_mirrors(size):
    tpl = templates(size)
    for a, b in MIRROR_PAIRS:
        assert np.array_equal(tpl[a][:, ::-1], tpl[b]), (a, b)
        assert not np.array_equal(tpl[a], tpl[b]), f"{a} is flip-symmetric"
    # no two classes share a template
    flat = tpl.reshape(NUM_CLASSES, -1)
    for i in range(NUM_CLASSES):
        for j in range(i + 1, NUM_CLASSES):
            assert not np.array_equal(flat[i], flat[j]), (i, j)


def test_flip_invariant_signs_stay_themselves():
    """Yield, ahead only, no entry, priority road: a flip gives the same class (GTSRB.md)."""
    tpl = templates(64)
    for c in (12, 13, 17, 35):
        assert np.abs(tpl[c][:, ::-1] - tpl[c]).mean() < 0.01, c


def test_written_layout_loads_with_torchvision(tmp_path: Path):
    from torchvision.datasets import GTSRB, ImageFolder

    root = write_gtsrb(tmp_path / "signs", SMALL)
    base = root / "gtsrb"
    train_dir = base / "GTSRB" / "Training"
    assert sorted(p.name for p in train_dir.iterdir()) == [f"{c:05d}" for c in range(43)]
    assert (train_dir / "00019" / "GT-00019.csv").read_text().splitlines()[0] == (
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
    )
    assert (base / "GT-final_test.csv").is_file()
    assert (base / "GTSRB" / "Final_Test" / "Images" / "00000.ppm").is_file()

    images, labels, _ = generate_split(SMALL, "train")
    train = GTSRB(root, split="train", download=False)
    assert len(train) == 200
    assert [t for _, t in train._samples] == labels.tolist()
    img0, lab0 = train[0]
    assert lab0 == labels[0] and np.array_equal(np.asarray(img0), images[0])

    t_images, t_labels, _ = generate_split(SMALL, "test")
    test = GTSRB(root, split="test", download=False)
    assert [t for _, t in test._samples] == t_labels.tolist()
    assert np.array_equal(np.asarray(test[5][0]), t_images[5])

    folder = ImageFolder(train_dir)
    assert folder.class_to_idx == {f"{c:05d}": c for c in range(43)}
    assert folder.targets == labels.tolist()

    # the project's own loaders take the same paths
    assert len(gtsrb_dataset(root, "train", loader="imagefolder")) == 200
    assert len(gtsrb_dataset(base, "test")) == 86
    # a second write of the same config is a no-op; another config rewrites
    mtime = (train_dir / "00000" / "00000_00000.ppm").stat().st_mtime_ns
    write_gtsrb(root, SMALL)
    assert (train_dir / "00000" / "00000_00000.ppm").stat().st_mtime_ns == mtime


def test_missing_folder_says_what_to_do(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="modelrules generate"):
        gtsrb_dataset(tmp_path, "train")


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="test_distribution"):
        SignsConfig(test_distribution="uniform")
    with pytest.raises(ValueError, match="size"):
        SignsConfig(size=4)


def test_ten_thousand_images_take_seconds(capsys):
    cfg = SignsConfig(train_images=10_000, size=32, seed=0)
    templates(64)  # drawn once per resolution; not part of the per-image cost
    t0 = time.perf_counter()
    img, lab, _ = generate_split(cfg, "train")
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[generator] 10,000 images of 32 px in {dt:.1f} s ({10_000 / dt:.0f} img/s)")
    assert img.shape == (10_000, 32, 32, 3)
    assert np.bincount(lab, minlength=43).tolist() == class_counts(10_000).tolist()
