"""Loading a GTSRB folder (real or synthetic) the way the seed did: torchvision readers.

``torchvision.datasets.GTSRB(root, split=..., download=False)`` reads the official layout;
``ImageFolder`` reads the Training folder (class = folder name). :class:`Preloaded` decodes
such a data set once and keeps the images in memory, so that small images are not re-read
from disk every epoch; the per-sample transform still runs on each access.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def gtsrb_root(path: str | os.PathLike[str]) -> Path:
    """The folder that holds ``gtsrb/`` (accepts that folder or ``gtsrb/`` itself)."""
    p = Path(path).expanduser()
    if (p / "gtsrb" / "GTSRB").is_dir():
        return p
    if p.name == "gtsrb" and (p / "GTSRB").is_dir():
        return p.parent
    raise FileNotFoundError(
        f"no GTSRB data under {p}: expected {p}/gtsrb/GTSRB/Training and "
        f"{p}/gtsrb/GTSRB/Final_Test (run `modelrules generate --out {p}` to make one)"
    )


def gtsrb_dataset(
    path: str | os.PathLike[str],
    split: str = "train",
    transform: Callable[[Any], Any] | None = None,
    loader: str = "gtsrb",
) -> Any:
    """A torchvision data set over a GTSRB folder.

    ``loader="gtsrb"``: ``torchvision.datasets.GTSRB`` (train and test);
    ``loader="imagefolder"``: ``ImageFolder`` on the Training folder (train only: the official
    test images lie in one folder, their labels in a CSV).
    """
    from torchvision import datasets

    root = gtsrb_root(path)
    if loader == "gtsrb":
        return datasets.GTSRB(root, split=split, transform=transform, download=False)
    if loader == "imagefolder":
        if split != "train":
            raise ValueError("ImageFolder reads only the Training folder; use loader='gtsrb'")
        return datasets.ImageFolder(root / "gtsrb" / "GTSRB" / "Training", transform=transform)
    raise ValueError(f"loader must be 'gtsrb' or 'imagefolder', got {loader!r}")


def dataset_targets(ds: Any) -> np.ndarray:
    """The label of every sample, without decoding images."""
    if hasattr(ds, "targets"):
        return np.asarray(ds.targets, dtype=np.int64)
    if hasattr(ds, "_samples"):
        return np.asarray([t for _, t in ds._samples], dtype=np.int64)
    return np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)


class Preloaded:
    """A map-style data set holding every decoded (RGB PIL) image of ``source`` in memory."""

    def __init__(self, source: Any, transform: Callable[[Any], Any] | None = None) -> None:
        saved = getattr(source, "transform", None)
        source.transform = None
        try:
            pairs = [source[i] for i in range(len(source))]
        finally:
            source.transform = saved
        self.images = [img.convert("RGB") for img, _ in pairs]
        self.targets = [int(t) for _, t in pairs]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]
