"""The reference job's recipes: the seed's (``seed``) and its fix (``fixed``), as data.

A :class:`TrainConfig` holds every knob. The recipe fixes what the story is about (flip or
not, plain shuffling or a weighted sampler, number of epochs); the scale defaults depend on
the device: on a GPU the seed's own values (224 px, the real GTSRB sizes, SGD lr 0.001, no
momentum); on a CPU smaller ones that train ResNet-18 from scratch in about a minute on two
cores (32 px, ~6,000 images, momentum 0.9, lr 0.03, cosine schedule, a fixed number of steps
spread over the recipe's epochs). Measurements behind these numbers: docs/reference_job.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # the blog post's job: RandomHorizontalFlip, plain shuffling, 10 epochs
    "seed": {"flip": True, "sampler": "shuffle", "epochs": 10},
    # its fix: no flip, WeightedRandomSampler, 3 epochs
    "fixed": {"flip": False, "sampler": "weighted", "epochs": 3},
}

#: Defaults on a GPU: the seed's scale and optimiser.
GPU_DEFAULTS: dict[str, Any] = {
    "image_size": 224,
    "train_images": 39209,
    "test_per_class": 0,  # 0 = a GTSRB-proportioned test set of test_images
    "test_images": 12630,
    "steps": None,  # whole epochs
    "crop_scale": (0.08, 1.0),  # RandomResizedCrop's default, as the seed
    "lr": 0.001,
    "momentum": 0.0,
    "schedule": "none",
    "save_interval": 500,
    "workers": 8,
    "amp": True,
    "channels_last": True,
}

#: Defaults on a CPU: about a minute per recipe on 2 cores (see docs/reference_job.md).
CPU_DEFAULTS: dict[str, Any] = {
    "image_size": 32,
    "train_images": 6000,
    "test_per_class": 50,
    "test_images": 0,
    "steps": 600,
    "crop_scale": (0.5, 1.0),  # an 8 % crop of a 32 px sign is 9 x 9 pixels
    "lr": 0.03,
    "momentum": 0.9,
    "schedule": "cosine",
    "save_interval": 25,
    "workers": 0,
    "amp": False,
    "channels_last": False,
}


@dataclass
class TrainConfig:
    """Every knob of the reference job (each one is a ``modelrules train`` flag)."""

    recipe: str = "seed"
    flip: bool = True
    sampler: str = "shuffle"  # "shuffle" | "weighted"
    epochs: int = 10
    steps: int | None = None  # total optimiser steps, spread over the epochs; None = full passes
    image_size: int = 32
    batch_size: int = 64
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "none" | "cosine"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's default
    seed: int = 0
    data: str | None = None  # a folder holding gtsrb/; None = generate synthetic signs
    data_seed: int = 0
    train_images: int = 6000
    test_per_class: int = 50
    test_images: int = 0
    device: str = "auto"
    save_interval: int = 25
    workers: int = 0
    amp: bool = False
    channels_last: bool = False
    weights: str | None = None  # ImageNet weights file; None = torchvision's cache if present
    pretrained: bool = True  # look for ImageNet weights at all
    threads: int | None = None  # torch.set_num_threads on CPU
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def key_dict(self) -> dict[str, Any]:
        """The parameters that change the result (not where or how loudly it runs)."""
        d = dataclasses.asdict(self)
        for k in ("progress", "workers", "threads"):
            d.pop(k)
        d["crop_scale"] = list(d["crop_scale"])
        return d

    def key(self) -> str:
        blob = json.dumps(self.key_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is required to train
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_config(recipe: str = "seed", device: str = "auto", **overrides: Any) -> TrainConfig:
    """The config of a recipe on a device, with ``overrides`` (None values are ignored)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}")
    dev = resolve_device(device)
    base = GPU_DEFAULTS if dev.startswith("cuda") else CPU_DEFAULTS
    values: dict[str, Any] = {**base, **RECIPES[recipe], "recipe": recipe, "device": dev}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for k, v in overrides.items():
        if k not in known:
            raise ValueError(f"unknown training parameter {k!r}; known: {sorted(known)}")
        if v is not None:
            values[k] = v
    if isinstance(values.get("crop_scale"), list):
        values["crop_scale"] = tuple(values["crop_scale"])
    cfg = TrainConfig(**values)
    if cfg.sampler not in ("shuffle", "weighted"):
        raise ValueError(f"sampler must be 'shuffle' or 'weighted', got {cfg.sampler!r}")
    if cfg.schedule not in ("none", "cosine"):
        raise ValueError(f"schedule must be 'none' or 'cosine', got {cfg.schedule!r}")
    if cfg.epochs < 1 or (cfg.steps is not None and cfg.steps < cfg.epochs):
        raise ValueError(f"need epochs >= 1 and steps >= epochs, got {cfg.epochs}, {cfg.steps}")
    return cfg
