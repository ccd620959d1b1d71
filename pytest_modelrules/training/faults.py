"""Planted training bugs: a catalogue of mistakes a real user could make in the reference job.

Each :class:`Fault` is one change to the ``fixed`` recipe (weighted sampler, no flip): a
knob of :class:`~pytest_modelrules.training.recipes.TrainConfig` (``overrides``) and/or a
hook at one of four places of the job - the data set (``dataset``), the transforms
(``transforms``), the model once built (``model``) and the parameters handed to the
optimiser (``optimizer_params``). Each names the rule(s) meant to catch it (``meant``) and
may declare what its user *intended* (``intent``: rule parameters a user states in their
test, e.g. which layers were meant to be frozen), which healthy runs with the same intent
declare too. ``healthy`` entries are the clean baselines.

:func:`train_with_faults` trains one fault with the reference job's parts (ResNet-18, the
seed's transforms, the synthetic signs) and records what the rules need
(:func:`zoo_collections`): loss and loss inputs at every step, model input, ReLU output
reductions, weight/bias/gradient reductions, the head's weights in full, sigmoid inputs.
It is used by ``benchmarks/zoo.py`` (the bug benchmark, docs/zoo.md).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: what the intended-frozen transfer-learning variants declare (conv1 .. layer3 frozen,
#: layer4 and the head trained)
FINETUNE_INTENT: dict[str, dict[str, Any]] = {
    "transfer_learning": {
        "frozen_regex": r"^(conv1|bn1|layer[123])\.",
        "head_regex": r"^(layer4|fc)\.",
    }
}
_FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")

#: the zoo's training scale: CPU-sized (32 px, batch 64, 6,000 images, 240 steps, crops of at
#: least half the image, 50 test images a class). The smallest scale at which a healthy run
#: learns enough (~55 % test accuracy) for the faults whose signal lies in what the model
#: learned (flip, label noise) to show; see docs/zoo.md for the time it takes
ZOO_SCALE: dict[str, Any] = {
    "image_size": 32,
    "batch_size": 64,
    "train_images": 6000,
    "test_per_class": 50,
    "steps": 240,
    "epochs": 3,
    "lr": 0.05,
    "momentum": 0.9,
    "schedule": "cosine",
    "crop_scale": (0.5, 1.0),
    "device": "cpu",
    "pretrained": False,
    "progress": False,
}
#: the recording interval of the zoo's runs (TRAIN and EVAL mode steps)
SAVE_INTERVAL = 10


@dataclass(frozen=True)
class Fault:
    """One planted bug (or a healthy baseline) over the ``fixed`` recipe."""

    name: str
    summary: str  # the mistake, in a user's words
    meant: tuple[str, ...] = ()  # rules meant to catch it (empty for healthy runs)
    healthy: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields
    intent: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dataset: str | None = None  # name of a hook in DATASET_HOOKS
    transforms: str | None = None  # TRANSFORM_HOOKS
    model: str | None = None  # MODEL_HOOKS
    optimizer_params: str | None = None  # PARAM_HOOKS
    steps_factor: float = 1.0  # relative to the zoo's steps (overtraining trains longer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "meant": list(self.meant),
            "healthy": self.healthy,
            "overrides": dict(self.overrides),
            "intent": {k: dict(v) for k, v in self.intent.items()},
            "hooks": {
                k: v
                for k, v in (
                    ("dataset", self.dataset),
                    ("transforms", self.transforms),
                    ("model", self.model),
                    ("optimizer_params", self.optimizer_params),
                )
                if v
            },
            "steps_factor": self.steps_factor,
        }


# -- hooks ------------------------------------------------------------------------------------
# dataset hooks: (targets, rng) -> (indices kept, targets used for training)


def _heavy_imbalance(
    targets: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Keep a fifth of the images of the classes below the median count: ratio ~50:1."""
    counts = np.bincount(targets, minlength=43)
    small = counts < np.median(counts)
    keep = np.ones(len(targets), bool)
    for c in np.nonzero(small)[0]:
        idx = np.nonzero(targets == c)[0]
        n = max(1, round(len(idx) * 0.2))
        drop = rng.permutation(idx)[n:]
        keep[drop] = False
    idx = np.nonzero(keep)[0]
    return idx, targets[idx]


def _label_noise(targets: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """40 % of the training images get a uniformly random label (a broken annotation merge)."""
    noisy = targets.copy()
    pick = rng.random(len(targets)) < 0.4
    noisy[pick] = rng.integers(0, 43, int(pick.sum()))
    return np.arange(len(targets)), noisy


def _small_subset(targets: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Keep 10 % of the images (at least 2 a class): what "far past convergence" overfits."""
    keep: list[int] = []
    for c in range(43):
        idx = np.nonzero(targets == c)[0]
        n = max(2, round(len(idx) * 0.1))
        keep.extend(rng.permutation(idx)[:n].tolist())
    idx = np.sort(np.asarray(keep, dtype=np.int64))
    return idx, targets[idx]


DATASET_HOOKS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "heavy_imbalance": _heavy_imbalance,
    "label_noise": _label_noise,
    "small_subset": _small_subset,
}


def _no_normalize(train: Any, evaluate: Any) -> tuple[Any, Any]:
    """Drop ``Normalize`` from both pipelines: pixels reach the model in [0, 1]."""
    from torchvision import transforms as T

    def strip(c: Any) -> Any:
        return T.Compose([t for t in c.transforms if not isinstance(t, T.Normalize)])

    return strip(train), strip(evaluate)


class _AsFloat:
    """uint8 tensor -> float tensor, values unchanged (0..255)."""

    def __call__(self, x: Any) -> Any:
        return x.float()


def _raw_pixels(train: Any, evaluate: Any) -> tuple[Any, Any]:
    """``PILToTensor().float()`` in place of ``ToTensor()`` + ``Normalize``: pixels reach the
    model as 0..255."""
    from torchvision import transforms as T

    def swap(c: Any) -> Any:
        out = []
        for t in c.transforms:
            if isinstance(t, T.ToTensor):
                out += [T.PILToTensor(), _AsFloat()]
            elif not isinstance(t, T.Normalize):
                out.append(t)
        return T.Compose(out)

    return swap(train), swap(evaluate)


TRANSFORM_HOOKS: dict[str, Callable[[Any, Any], tuple[Any, Any]]] = {
    "no_normalize": _no_normalize,
    "raw_pixels": _raw_pixels,
}


def _dead_bias(model: Any, seed: int) -> None:
    """BatchNorm biases initialised to -4 (meant: a small negative bias): every ReLU starts
    dead and, with no gradient through it, stays dead."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.fill_(-4.0)


def _sigmoid_head(model: Any, seed: int, std: float | None = None) -> None:
    """The head as Linear(512, 256) -> Sigmoid -> Linear(256, 43); with ``std`` its first
    layer is initialised N(0, std^2) instead of PyTorch's default."""
    import torch

    hidden = torch.nn.Linear(model.fc.in_features, 256)
    if std is not None:
        with torch.no_grad():
            hidden.weight.normal_(0.0, std)
    model.fc = torch.nn.Sequential(hidden, torch.nn.Sigmoid(), torch.nn.Linear(256, 43))


def _saturating_head(model: Any, seed: int) -> None:
    """The sigmoid head initialised with std 5 (meant 0.05): inputs of +-80, saturated."""
    _sigmoid_head(model, seed, std=5.0)


def _freeze(model: Any, seed: int) -> None:
    """Correct freezing of conv1 .. layer3 (requires_grad False)."""
    for name, p in model.named_parameters():
        if name.startswith(_FROZEN_PREFIXES):
            p.requires_grad = False


def _freeze_typo(model: Any, seed: int) -> None:
    """The freezing loop with a typo (``require_grad``): nothing is frozen, no error."""
    for name, p in model.named_parameters():
        if name.startswith(_FROZEN_PREFIXES):
            p.require_grad = False  # the bug: a new attribute, requires_grad stays True


def _freeze_too_much(model: Any, seed: int) -> None:
    """Freezing "everything but the head" where layer4 was meant to be fine-tuned too."""
    for name, p in model.named_parameters():
        if not name.startswith("fc."):
            p.requires_grad = False


MODEL_HOOKS: dict[str, Callable[[Any, int], None]] = {
    "dead_bias": _dead_bias,
    "sigmoid_head": _sigmoid_head,
    "saturating_head": _saturating_head,
    "freeze": _freeze,
    "freeze_typo": _freeze_typo,
    "freeze_too_much": _freeze_too_much,
}


def _backbone_only(model: Any) -> list[Any]:
    """The optimiser built over the backbone only (the head left out)."""
    return [p for n, p in model.named_parameters() if not n.startswith("fc.")]


PARAM_HOOKS: dict[str, Callable[[Any], list[Any]]] = {"backbone_only": _backbone_only}


# -- the catalogue ----------------------------------------------------------------------------

FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("healthy", "the fixed recipe: weighted sampler, no flip", healthy=True),
        Fault(
            "healthy_finetune",
            "conv1..layer3 frozen as intended, layer4 and the head trained",
            healthy=True,
            intent=FINETUNE_INTENT,
            model="freeze",
        ),
        Fault(
            "healthy_sigmoid",
            "a Linear-Sigmoid-Linear head with PyTorch's default initialisation",
            healthy=True,
            model="sigmoid_head",
        ),
        Fault(
            "flip",
            "RandomHorizontalFlip on a label set with mirror-pair classes (the seed's bug)",
            meant=("direction_confusion",),
            overrides={"flip": True},
        ),
        Fault(
            "imbalance",
            "heavily imbalanced data (~50:1) trained with plain shuffling",
            meant=("class_imbalance",),
            overrides={"sampler": "shuffle"},
            dataset="heavy_imbalance",
        ),
        Fault(
            "label_noise",
            "40 % of the training labels replaced by random classes",
            meant=("noisy_labels",),
            dataset="label_noise",
        ),
        Fault(
            "lr_high",
            "learning rate 200x too high (10, typed for 0.05): the loss goes NaN",
            meant=("exploding_tensor", "loss_not_decreasing"),
            overrides={"lr": 10.0},
        ),
        Fault(
            "lr_low",
            "learning rate ~17,000x too low (3e-6): the loss does not move",
            meant=("loss_not_decreasing",),
            overrides={"lr": 3e-6},
        ),
        Fault(
            "dead_relu",
            "BatchNorm biases initialised to -4: every ReLU dead from the start",
            meant=("dead_relu",),
            model="dead_bias",
        ),
        Fault(
            "not_normalised",
            "PILToTensor().float() for ToTensor() + Normalize: inputs in 0..255",
            meant=("check_input_images",),
            transforms="raw_pixels",
        ),
        Fault(
            "head_not_in_optimizer",
            "the optimiser built over the backbone only: the new head never changes",
            meant=("transfer_learning", "weight_update_ratio", "unchanged_tensor"),
            optimizer_params="backbone_only",
        ),
        Fault(
            "frozen_updated",
            "backbone meant frozen, but the loop sets p.require_grad (typo): it trains",
            meant=("transfer_learning",),
            intent=FINETUNE_INTENT,
            model="freeze_typo",
        ),
        Fault(
            "frozen_reverse",
            "layer4 meant to be fine-tuned, but everything but the head was frozen",
            meant=("transfer_learning",),
            intent=FINETUNE_INTENT,
            model="freeze_too_much",
        ),
        Fault(
            "overtraining",
            "a tenth of the data, 1.5x the steps, little augmentation: far past convergence",
            meant=("overtraining", "overfit"),
            overrides={"epochs": 6, "crop_scale": (0.9, 1.0)},
            dataset="small_subset",
            steps_factor=1.5,
        ),
        Fault(
            "sigmoid_saturated",
            "the sigmoid head initialised with std 5: its units saturate",
            meant=("saturated_activation",),
            model="saturating_head",
        ),
    )
}


def fault(name: str) -> Fault:
    """The catalogue entry ``name`` (ValueError listing the names otherwise)."""
    try:
        return FAULTS[name]
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None


def zoo_config(f: Fault, seed: int = 0, **scale: Any) -> Any:
    """The TrainConfig of fault ``f`` at ``seed``: the fixed recipe at the zoo's scale
    (``scale`` overrides it), then the fault's overrides."""
    from .recipes import make_config

    values = {**ZOO_SCALE, **scale}
    if values.get("steps"):
        values["steps"] = round(values["steps"] * f.steps_factor)
    values.update(f.overrides)
    values["seed"] = seed
    return make_config("fixed", **values)


def zoo_collections(save_interval: int = SAVE_INTERVAL) -> list[Any]:
    """What the zoo records, chosen by what each rule needs.

    loss (every step, TRAIN and EVAL: LossNotDecreasing, Overfit, Overtraining); loss inputs
    = labels and logits (every step: the classification rules); the model input every 20 TRAIN
    steps, as each sample's channel means (CheckInputImages); ReLU outputs as positive fractions
    (DeadRelu); weights, biases and gradients as the default reductions (ExplodingTensor,
    VanishingGradient, TransferLearning judges frozen layers by their l2 norm); the head's
    parameters in full (TransferLearning, WeightUpdateRatio, UnchangedTensor); sigmoid inputs
    in full (SaturatedActivation).
    """
    from ..capture.config import CollectionConfig

    every = {"save_interval": save_interval}
    return [
        CollectionConfig("losses", parameters={"save_interval": 1}),
        CollectionConfig("loss_inputs", parameters={"save_interval": 1}),
        CollectionConfig("inputs", parameters={"save_interval": 20, "eval.save_interval": 0}),
        CollectionConfig("relu_output", parameters=every),
        CollectionConfig("relu_input", parameters={"save_interval": 0}),
        CollectionConfig("weights", parameters={**every, "eval.save_interval": 0}),
        CollectionConfig("biases", parameters={**every, "eval.save_interval": 0}),
        CollectionConfig("gradients", parameters=every),
        CollectionConfig(
            "head",
            include_regex=[r"^fc\..*(weight|bias)$"],
            save_raw_tensor=True,
            parameters={**every, "eval.save_interval": 0},
        ),
        CollectionConfig("sigmoid_inputs", include_regex=[r".*sigmoid_input"], parameters=every),
    ]


def train_with_faults(
    f: Fault | str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    data_dir: str | Path,
    threads: int | None = 1,
    record: bool = True,
    save_interval: int = SAVE_INTERVAL,
    log: Callable[[str], None] | None = None,
    **scale: Any,
) -> dict[str, Any]:
    """Train fault ``f`` (a name or a Fault) at ``seed`` into ``out_dir`` (recorded).

    Returns the run's figures: test accuracy, balanced accuracy, per-class recall, train
    seconds, final train loss, whether the loss went NaN, and the fault's description. The
    synthetic signs are generated once in ``data_dir`` (shared by every run of one scale).
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler, Subset, WeightedRandomSampler

    from ..datasets.gtsrb_meta import CLASS_NAMES, MIRROR_PAIRS, NUM_CLASSES
    from ..datasets.loading import Preloaded, dataset_targets, gtsrb_dataset
    from .job import build_model, prepare_data, seed_everything, transforms_for

    f = fault(f) if isinstance(f, str) else f
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    config = zoo_config(f, seed, **scale)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    out = Path(out_dir)
    root = prepare_data(config, Path(data_dir), log)
    train_tf, eval_tf = transforms_for(config)
    if f.transforms:
        train_tf, eval_tf = TRANSFORM_HOOKS[f.transforms](train_tf, eval_tf)
    train_src, test_src = gtsrb_dataset(root, "train"), gtsrb_dataset(root, "test")
    train_full = Preloaded(train_src, train_tf)
    test_ds = Preloaded(test_src, eval_tf)
    targets = dataset_targets(train_src)
    rng = np.random.default_rng(10_000 + seed)
    if f.dataset:
        keep, used = DATASET_HOOKS[f.dataset](targets, rng)
        train_full.targets = [int(t) for t in np.asarray(train_full.targets)]
        for i, t in zip(keep.tolist(), used.tolist()):
            train_full.targets[i] = int(t)
        train_ds: Any = Subset(train_full, keep.tolist())
        targets = used
    else:
        train_ds = train_full

    per_epoch = math.ceil(config.steps / config.epochs)
    n_samples = per_epoch * config.batch_size
    gen = torch.Generator().manual_seed(seed)
    if config.sampler == "weighted":
        counts = np.bincount(targets, minlength=NUM_CLASSES).astype(np.float64)
        w = torch.as_tensor(1.0 / np.maximum(counts, 1)[targets], dtype=torch.double)
        sampler: Any = WeightedRandomSampler(w, n_samples, replacement=True, generator=gen)
    else:
        sampler = RandomSampler(train_ds, num_samples=n_samples, generator=gen)
    train_loader = DataLoader(train_ds, sampler=sampler, batch_size=config.batch_size)
    test_loader = DataLoader(test_ds, shuffle=False, batch_size=config.batch_size)

    model, _ = build_model(config, log)
    if f.model:
        MODEL_HOOKS[f.model](model, seed)
    params = PARAM_HOOKS[f.optimizer_params](model) if f.optimizer_params else None
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)  # fmt: skip
    total = per_epoch * config.epochs
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
        if config.schedule == "cosine"
        else None
    )
    eval_steps = len(test_loader)
    metadata = {
        "class_names": list(CLASS_NAMES),
        "mirror_pairs": [list(p) for p in MIRROR_PAIRS],
        "recipe": "fixed",
        "fault": f.to_dict(),
        "seed": seed,
        "config": config.key_dict(),
        "eval_steps_per_pass": eval_steps,
        "train_steps_per_epoch": per_epoch,
    }
    from .. import modes

    recorder = None
    if record:
        from ..capture.recorder import Recorder

        recorder = Recorder(out, model, loss=loss_fn, optimizer=optimizer,
                            save_interval=save_interval, collections=zoo_collections(save_interval),
                            metadata=metadata)  # fmt: skip
    t0 = time.perf_counter()
    last_loss = float("nan")
    nan_loss = False
    labels_all = preds_all = np.zeros(0, np.int64)
    epoch_acc: list[float] = []
    try:
        if recorder is not None:
            recorder.__enter__()
        for _epoch in range(config.epochs):
            model.train()
            if recorder is not None:
                recorder.set_mode(modes.TRAIN)
            for inputs, labels in train_loader:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs), labels)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                last_loss = float(loss.detach())
                nan_loss = nan_loss or not math.isfinite(last_loss)
            model.eval()
            if recorder is not None:
                recorder.set_mode(modes.EVAL)
            labs, preds = [], []
            with torch.no_grad():
                for inputs, labels in test_loader:
                    out_ = model(inputs)
                    loss_fn(out_, labels)
                    labs.append(labels.numpy())
                    preds.append(out_.argmax(1).numpy())
            labels_all, preds_all = np.concatenate(labs), np.concatenate(preds)
            epoch_acc.append(float((labels_all == preds_all).mean()))
    finally:
        if recorder is not None:
            recorder.__exit__(*sys.exc_info())
    seconds = time.perf_counter() - t0
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(cm, (labels_all, preds_all), 1)
    support = cm.sum(axis=1)
    recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    result = {
        "fault": f.name,
        "seed": seed,
        "healthy": f.healthy,
        "accuracy": float((labels_all == preds_all).mean()),
        "balanced_accuracy": float(np.nanmean(recall)),
        "min_recall": float(np.nanmin(recall)),
        "epoch_accuracy": epoch_acc,
        "mirror_confusions": {f"{a}-{b}": int(cm[a, b] + cm[b, a]) for a, b in MIRROR_PAIRS},
        "final_train_loss": last_loss,
        "nan_loss": nan_loss,
        "train_seconds": seconds,
        "steps": total,
        "run_dir": str(out),
    }
    if record:
        (out / "zoo-run.json").write_text(json.dumps(result, indent=2))
    return result


def train_zoo_run(name: str, seed: int, runs: str, scale: dict[str, Any]) -> dict[str, Any]:
    """One zoo run, ``<runs>/<name>-s<seed>``, trained afresh (a folder left by an
    interrupted run is removed); data in ``<runs>/data``. A module-level function, so that
    worker processes can run it."""
    import shutil

    out = Path(runs) / f"{name}-s{seed}"
    if out.exists():
        shutil.rmtree(out)
    return train_with_faults(
        name, out, seed=seed, data_dir=Path(runs) / "data", threads=1, log=lambda m: None, **scale
    )
