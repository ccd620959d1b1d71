"""The synthetic GTSRB: class counts in GTSRB's proportions, images, and the official layout.

``write_gtsrb(root, SignsConfig(...))`` writes
``root/gtsrb/GTSRB/Training/<class:05d>/<track:05d>_<img:05d>.ppm`` with ``GT-<class:05d>.csv``
per class folder, ``root/gtsrb/GTSRB/Final_Test/Images/<n:05d>.ppm`` and
``root/gtsrb/GT-final_test.csv`` - what ``torchvision.datasets.GTSRB(root, split=...,
download=False)`` reads; the Training folder alone is an ``ImageFolder``. A
``modelrules-signs.json`` beside ``gtsrb/`` records the parameters, so an identical second
call returns at once.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .gtsrb_meta import NUM_CLASSES, TRAIN_COUNTS
from .signs import Variation, render

MANIFEST = "modelrules-signs.json"
CSV_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
TRACK_LEN = 30  # GTSRB groups the images of one physical sign in tracks of 30
_SPLIT_ID = {"train": 1, "test": 2}


@dataclass(frozen=True)
class SignsConfig:
    """What to generate. Same config, same bytes (deterministic by ``seed``)."""

    train_images: int = 6000
    test_per_class: int = 20
    test_distribution: str = "balanced"  # "balanced" (test_per_class each) or "gtsrb"
    test_images: int = 0  # total for test_distribution="gtsrb"
    size: int = 32
    seed: int = 0
    variation: Variation = field(default_factory=Variation)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"SignsConfig.size must be >= 8 pixels, got {self.size}")
        if self.test_distribution not in ("balanced", "gtsrb"):
            raise ValueError(
                f"SignsConfig.test_distribution must be 'balanced' or 'gtsrb', "
                f"got {self.test_distribution!r}"
            )
        if self.train_images < NUM_CLASSES:
            raise ValueError(f"train_images must be >= {NUM_CLASSES}, got {self.train_images}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variation"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in d["variation"].items()
        }
        return d


def class_counts(total: int, weights: tuple[int, ...] | np.ndarray = TRAIN_COUNTS) -> np.ndarray:
    """Split ``total`` over the classes in proportion to ``weights`` (largest remainder, >= 1)."""
    w = np.asarray(weights, dtype=np.float64)
    k = len(w)
    if total < k:
        raise ValueError(f"need at least one image per class ({k}), got {total}")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = total - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    while counts.min() < 1:  # tiny totals: every class gets one, taken from the largest
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return counts


def split_labels(config: SignsConfig, split: str) -> np.ndarray:
    """Labels of a split, sorted by class (the test split is shuffled when written)."""
    if split == "train":
        counts = class_counts(config.train_images)
    elif config.test_distribution == "balanced":
        counts = np.full(NUM_CLASSES, config.test_per_class, dtype=np.int64)
    else:
        counts = class_counts(config.test_images or config.test_per_class * NUM_CLASSES)
    return np.repeat(np.arange(NUM_CLASSES), counts)


def generate_split(
    config: SignsConfig, split: str, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (uint8 n x H x W x 3), labels and sign boxes of a split, in memory.

    Each class of each split draws from its own random stream, so changing one class's
    count does not change the images of the others.
    """
    if split not in _SPLIT_ID:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    labels = split_labels(config, split)
    images = np.empty((len(labels), config.size, config.size, 3), dtype=np.uint8)
    rois = np.empty((len(labels), 4), dtype=np.int64)
    for c in range(NUM_CLASSES):
        idx = np.nonzero(labels == c)[0]
        if len(idx) == 0:
            continue
        rng = np.random.default_rng([config.seed, _SPLIT_ID[split], c])
        images[idx], rois[idx] = render(
            labels[idx], config.size, rng, config.variation, progress=progress
        )
    if split == "test":
        perm = np.random.default_rng([config.seed, 99]).permutation(len(labels))
        images, labels, rois = images[perm], labels[perm], rois[perm]
    return images, labels, rois


def _save_ppm(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PPM")


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=";", lineterminator="\n")
        w.writerow(CSV_HEADER)
        w.writerows(rows)


def is_generated(root: str | os.PathLike[str], config: SignsConfig) -> bool:
    """True when ``root`` already holds exactly this config's data set."""
    m = Path(root) / MANIFEST
    try:
        return json.loads(m.read_text())["config"] == config.to_dict()
    except (OSError, ValueError, KeyError):
        return False


def write_gtsrb(
    root: str | os.PathLike[str], config: SignsConfig | None = None, *, show_progress: bool = False
) -> Path:
    """Write the synthetic GTSRB under ``root`` in the official layout; returns ``root``.

    Written into a temporary folder beside ``root/gtsrb`` and renamed into place, so a reader
    never sees half a data set. Returns at once if ``root`` already holds this config.
    """
    config = config or SignsConfig()
    root = Path(root)
    if is_generated(root, config):
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gtsrb-", dir=root))
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        total = len(split_labels(config, "train")) + len(split_labels(config, "test"))
        bar = tqdm(total=total, unit="img", desc="generating signs")
    try:
        base = tmp / "gtsrb"
        images, labels, rois = generate_split(config, "train", bar.update if bar else None)
        for c in range(NUM_CLASSES):
            folder = base / "GTSRB" / "Training" / f"{c:05d}"
            folder.mkdir(parents=True)
            rows = []
            for k, i in enumerate(np.nonzero(labels == c)[0]):
                name = f"{k // TRACK_LEN:05d}_{k % TRACK_LEN:05d}.ppm"
                _save_ppm(folder / name, images[i])
                rows.append([name, config.size, config.size, *rois[i].tolist(), c])
            _write_csv(folder / f"GT-{c:05d}.csv", rows)
        images, labels, rois = generate_split(config, "test", bar.update if bar else None)
        folder = base / "GTSRB" / "Final_Test" / "Images"
        folder.mkdir(parents=True)
        rows = []
        for i in range(len(labels)):
            name = f"{i:05d}.ppm"
            _save_ppm(folder / name, images[i])
            rows.append([name, config.size, config.size, *rois[i].tolist(), int(labels[i])])
        _write_csv(base / "GT-final_test.csv", rows)
        if (root / "gtsrb").exists():
            shutil.rmtree(root / "gtsrb")
        os.replace(base, root / "gtsrb")
        manifest = {"generator": "pytest_modelrules.datasets", "config": config.to_dict()}
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return root
