"""The reference training job: the seed's ResNet-18 on GTSRB, recorded by the Recorder.

ResNet-18 (torchvision), head replaced by Linear(512, 43), CrossEntropyLoss, SGD, batch 64;
the seed's transforms scaled to the image size; per-epoch evaluation on the test split. The
Recorder saves the seed's collections: loss, loss inputs and model input every
``save_interval`` steps, ReLU output reductions, class names in the metadata; the final
evaluation pass saves the loss inputs at every step (so rules over EVAL see every test
prediction), earlier passes at the save interval. On a GPU: bf16 autocast, channels_last,
pinned memory and worker processes.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.gtsrb_meta import CLASS_NAMES, MIRROR_PAIRS, NUM_CLASSES, TRAIN_COUNTS
from .recipes import TrainConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 checkpoint name
METRICS_FILE = "modelrules-metrics.json"


@dataclass
class TrainResult:
    """What a training run produced: the recorded run folder and the test figures."""

    run_dir: Path
    config: TrainConfig
    accuracy: float  # plain accuracy on the test split as written
    balanced_accuracy: float  # mean per-class recall (= accuracy on a balanced test set)
    gtsrb_accuracy: float  # per-class recalls weighted by GTSRB's class proportions
    recall: list[float]
    mirror_confusions: dict[str, int]  # "19-20": test images of the pair predicted as the twin
    epoch_accuracy: list[float] = field(default_factory=list)
    train_steps: int = 0
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    steady_images_per_second: float = 0.0  # after the first few steps (warm-up) of epoch 1
    pretrained: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("run_dir", "config")}
        d["run_dir"] = str(self.run_dir)
        d["config"] = self.config.key_dict()
        return d


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs (CPU and CUDA) from one seed."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_imagenet_weights(path: str | None = None) -> Path | None:
    """ImageNet ResNet-18 weights: ``path`` if given, else torchvision's cache, else None.

    Never downloads.
    """
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--weights {p}: no such file")
        return p
    import torch

    candidate = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    return candidate if candidate.is_file() else None


def build_model(config: TrainConfig, log=print) -> tuple[Any, str | None]:
    """ResNet-18 with a 43-way head; ImageNet weights when found (else said once)."""
    import torch
    from torchvision import models

    model = models.resnet18(weights=None)
    source = None
    weights = find_imagenet_weights(config.weights) if config.pretrained else None
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        source = str(weights)
    elif config.pretrained:
        log(
            "modelrules: no ImageNet ResNet-18 weights in torchvision's cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints' / RESNET18_FILE}) and no --weights: "
            "starting from random weights (nothing is downloaded)"
        )
    model.fc = torch.nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model, source


def transforms_for(config: TrainConfig) -> tuple[Any, Any]:
    """The seed's train and eval transforms at ``config.image_size``."""
    from torchvision import transforms as T

    size = config.image_size
    train = [T.RandomResizedCrop(size, scale=tuple(config.crop_scale), antialias=True)]
    if config.flip:
        train.append(T.RandomHorizontalFlip())
    train += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    evaluate = [
        T.Resize(round(size * 256 / 224), antialias=True),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return T.Compose(train), T.Compose(evaluate)


def prepare_data(config: TrainConfig, data_dir: Path | None = None, log=print) -> Path:
    """The folder holding gtsrb/: ``config.data`` or synthetic signs generated for it."""
    from ..datasets.synthetic import SignsConfig, write_gtsrb

    if config.data:
        return Path(config.data).expanduser()
    if data_dir is None:
        raise ValueError("no --data folder and nowhere to generate one")
    signs = SignsConfig(
        train_images=config.train_images,
        test_per_class=config.test_per_class,
        test_distribution="balanced" if config.test_per_class else "gtsrb",
        test_images=config.test_images,
        size=config.image_size,
        seed=config.data_seed,
    )
    return write_gtsrb(data_dir, signs, show_progress=config.progress)


#: the final evaluation pass's input images are recorded in full up to this many bytes
#: (float32): 26 MB on the CPU defaults (2,150 images of 32 px); the seed's scale (12,630
#: images of 224 px, 7.6 GB) keeps the every-``save_interval`` images only
FINAL_IMAGES_MAX_BYTES = 64 * 2**20


def _collections(config: TrainConfig, eval_final_steps: list[int]) -> list[Any]:
    """The seed's collections (loss, loss inputs, model input, ReLU output reductions).

    Beyond the seed's every-``save_interval`` schedule: the labels and logits of every TRAIN
    step (exact label counts for ClassImbalance; 64 x 44 numbers a step), the loss of every
    EVAL step (the same test batches compared across epochs), the loss inputs of every step
    of the final evaluation pass (every test prediction of the trained model) and, where they
    fit in FINAL_IMAGES_MAX_BYTES, that pass's images (the misclassified-images gallery shows
    the trained model's mistakes).
    """
    from ..capture.config import CollectionConfig

    every = {"save_interval": config.save_interval}
    final_eval = {"eval.save_interval": config.save_interval, "eval.save_steps": eval_final_steps}
    image_bytes = 3 * config.image_size**2 * 4
    final_images = len(eval_final_steps) * config.batch_size * image_bytes
    inputs = {**every, **final_eval} if final_images <= FINAL_IMAGES_MAX_BYTES else every
    return [
        CollectionConfig("losses", parameters={**every, "eval.save_interval": 1}),
        CollectionConfig(
            "loss_inputs", parameters={**every, "train.save_interval": 1, **final_eval}
        ),
        # full images: the report's misclassified-images gallery shows them
        CollectionConfig("inputs", parameters=inputs, save_raw_tensor=True),
        CollectionConfig("relu_output", parameters=every),
    ]


def _recall(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    support = cm.sum(axis=1)
    return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan), cm


def train(config: TrainConfig, out_dir: str | os.PathLike[str], *, data_dir: Path | None = None,
          record: bool = True, log=None) -> TrainResult:  # fmt: skip
    """Train one recipe, recording into ``out_dir``; returns the test figures.

    ``data_dir``: where to generate the synthetic signs when ``config.data`` is None
    (default: ``out_dir``'s sibling ``<out_dir>.data``).
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

    from ..datasets.loading import Preloaded, dataset_targets, gtsrb_dataset

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    device = torch.device(config.device)
    on_gpu = device.type == "cuda"
    if not on_gpu and config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)

    root = prepare_data(config, data_dir or out.with_name(out.name + ".data"), log)
    train_tf, eval_tf = transforms_for(config)
    train_src = gtsrb_dataset(root, "train")
    test_src = gtsrb_dataset(root, "test")
    if on_gpu:  # decode per sample in worker processes, as the seed did
        train_ds, test_ds = train_src, test_src
        train_src.transform, test_src.transform = train_tf, eval_tf
    else:  # small images: decode once, transform per sample
        train_ds, test_ds = Preloaded(train_src, train_tf), Preloaded(test_src, eval_tf)
    targets = dataset_targets(train_src)
    test_targets = dataset_targets(test_src)

    per_epoch = config.steps and math.ceil(config.steps / config.epochs)
    n_samples = per_epoch * config.batch_size if per_epoch else len(train_ds)
    gen = torch.Generator().manual_seed(config.seed)
    if config.sampler == "weighted":
        counts = np.bincount(targets, minlength=NUM_CLASSES).astype(np.float64)
        weights = torch.as_tensor(1.0 / counts[targets], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, n_samples, replacement=True, generator=gen)
    else:
        sampler = RandomSampler(train_ds, num_samples=n_samples, generator=gen)
    loader_kw: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.workers,
        "pin_memory": on_gpu,
    }
    if config.workers:
        loader_kw["persistent_workers"] = True
        loader_kw["worker_init_fn"] = _worker_init
    train_loader = DataLoader(train_ds, sampler=sampler, drop_last=False, **loader_kw)
    test_loader = DataLoader(test_ds, shuffle=False, **loader_kw)

    model, source = build_model(config, log)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    scheduler = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    amp = config.amp and on_gpu
    eval_steps = len(test_loader)
    final_eval = list(range((config.epochs - 1) * eval_steps, config.epochs * eval_steps))
    metadata = {
        "class_names": list(CLASS_NAMES),
        "mirror_pairs": [list(p) for p in MIRROR_PAIRS],
        "recipe": config.recipe,
        "config": config.key_dict(),
        "pretrained": source,
        "framework": f"torch {torch.__version__}",
        "eval_steps_per_pass": eval_steps,
        "train_steps_per_epoch": steps_per_epoch,
    }

    out.mkdir(parents=True, exist_ok=True)
    recorder = None
    if record:
        from ..capture.recorder import Recorder

        recorder = Recorder(
            out, model, loss=loss_fn, optimizer=optimizer, save_interval=config.save_interval,
            collections=_collections(config, final_eval), metadata=metadata,
        )  # fmt: skip

    from tqdm.auto import tqdm

    epoch_acc: list[float] = []
    warmup = min(10, max(1, steps_per_epoch // 5))
    t_steady: float | None = None
    n_steady = 0
    steady = 0.0
    seen = 0
    t_train = 0.0
    labels_all = preds_all = np.zeros(0, dtype=np.int64)
    try:
        if recorder is not None:
            recorder.__enter__()
        for epoch in range(config.epochs):
            model.train()
            if recorder is not None:
                recorder.set_mode(_modes().TRAIN)
            bar = tqdm(
                train_loader, desc=f"{config.recipe} epoch {epoch + 1}/{config.epochs}",
                unit="step", disable=not config.progress, leave=False, file=sys.stderr,
            )  # fmt: skip
            t0 = time.perf_counter()
            n_epoch = 0
            for i, (inputs, labels) in enumerate(bar):
                if epoch == 0 and i == warmup:
                    _sync(device)
                    t_steady, n_steady = time.perf_counter(), n_epoch
                inputs = inputs.to(device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    outputs = model(inputs)
                loss = loss_fn(outputs.float(), labels)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                n_epoch += len(labels)
                if config.progress:
                    rate = n_epoch / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}")
            _sync(device)
            t_train += time.perf_counter() - t0
            if epoch == 0 and t_steady is not None:
                steady = (n_epoch - n_steady) / max(time.perf_counter() - t_steady, 1e-9)
            seen += n_epoch
            labels_all, preds_all = _evaluate(model, test_loader, loss_fn, device, amp,
                                              memory_format, recorder)  # fmt: skip
            acc = float((labels_all == preds_all).mean())
            epoch_acc.append(acc)
            log(f"{config.recipe} epoch {epoch + 1}/{config.epochs}: test accuracy {acc:.3f} "
                f"({n_epoch / max(time.perf_counter() - t0, 1e-9):.0f} img/s)")  # fmt: skip
        recall, cm = _recall(labels_all, preds_all)
        confusions = {f"{a}-{b}": int(cm[a, b] + cm[b, a]) for a, b in MIRROR_PAIRS}
        weights_gtsrb = np.asarray(TRAIN_COUNTS, dtype=np.float64)
        present = ~np.isnan(recall)
        gtsrb_acc = float(
            np.sum(recall[present] * weights_gtsrb[present]) / weights_gtsrb[present].sum()
        )
        result = TrainResult(
            run_dir=out,
            config=config,
            accuracy=float((labels_all == preds_all).mean()),
            balanced_accuracy=float(np.nanmean(recall)),
            gtsrb_accuracy=gtsrb_acc,
            recall=[None if np.isnan(r) else round(float(r), 4) for r in recall],  # type: ignore[misc]
            mirror_confusions=confusions,
            epoch_accuracy=epoch_acc,
            train_steps=total_steps,
            train_seconds=t_train,
            images_per_second=seen / max(t_train, 1e-9),
            steady_images_per_second=steady,
            pretrained=source,
        )
        summary = {k: v for k, v in result.to_dict().items() if k not in ("run_dir", "config")}
        if recorder is not None:
            recorder.update_metadata({"results": summary, "test_labels": len(test_targets)})
    finally:
        if recorder is not None:
            recorder.__exit__(*sys.exc_info())
    (out / METRICS_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _modes():
    from .. import modes

    return modes


def _worker_init(worker_id: int) -> None:
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _evaluate(model, loader, loss_fn, device, amp, memory_format, recorder):
    """One pass over the test split in EVAL mode; returns (labels, predictions)."""
    import torch

    model.eval()
    if recorder is not None:
        recorder.set_mode(_modes().EVAL)
    labels_out, preds_out = [], []
    with torch.no_grad():
        for inputs, labels in loader:
            inputs = inputs.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = model(inputs)
            loss_fn(outputs.float(), labels)  # through the loss module: the Recorder sees it
            labels_out.append(labels.cpu().numpy())
            preds_out.append(outputs.argmax(1).cpu().numpy())
    return np.concatenate(labels_out), np.concatenate(preds_out)
