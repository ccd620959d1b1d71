"""Tiny models and a training loop shared by the Recorder's tests (imported by name)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pytest_modelrules import open_run

nn = torch.nn


def run_values(path) -> dict[tuple[str, int], np.ndarray]:
    """Every value of a run, by (tensor name, global step)."""
    run = open_run(path)
    return {
        (name, step): value
        for name in run.tensor_names()
        for step, value in run.tensor(name).values().items()
    }


def assert_same_values(got, expected, rtol: float = 0.0, atol: float = 0.0) -> None:
    """The same tensors at the same steps (:func:`run_values`), each value of the same dtype
    and equal: bit for bit, or within the tolerances given."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        if rtol or atol:
            np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=str(key))
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def assert_end_lists_every_file(path) -> None:
    """Each worker's END lists every file of its commit log, tensors/ and rows/ folders, with
    the length the file has (docs/format.md, "File lengths in END")."""
    workers = sorted((Path(path) / "workers").iterdir())
    assert workers
    for wdir in workers:
        on_disk = {
            p.relative_to(wdir).as_posix(): p.stat().st_size
            for p in [wdir / "steps.mrt", *wdir.glob("tensors/*.mrt"), *wdir.glob("rows/*.mrt")]
        }
        assert json.loads((wdir / "END").read_text())["files"] == on_disk, wdir.name


class TinyNet(nn.Module):
    """conv -> ReLU (called twice, like torchvision's BasicBlock) -> linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        x = self.relu(self.conv(x))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


class SelfLossNet(nn.Module):
    """A model that computes its own loss (no loss module)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x, y):
        logits = self.body(x)
        return nn.functional.cross_entropy(logits, y), logits


def batches(n: int, batch: int = 8, size: int = 8, classes: int = 5, seed: int = 0):
    """``n`` synthetic (image, label) batches, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 3, size, size, generator=gen),
            torch.randint(0, classes, (batch,), generator=gen),
        )
        for _ in range(n)
    ]


def train(model, loss_fn, opt, data, rec=None, accumulate: int = 1) -> list[float]:
    """A plain loop; returns the loss of every micro-batch."""
    losses = []
    for i, (x, y) in enumerate(data):
        if i % accumulate == 0:
            opt.zero_grad()
        loss = loss_fn(model(x), y)
        (loss / accumulate).backward()
        losses.append(loss.item())
        if (i + 1) % accumulate == 0:
            opt.step()
    return losses


class ThreadedDataParallel(nn.DataParallel):
    """What ``DataParallel`` does on several GPUs, on the CPU: at each forward pass, replicas
    of the module as ``torch.nn.parallel.replicate`` makes them (``_replicate_for_data_parallel``:
    new module objects sharing the module's hooks; here also its parameters), one chunk of the
    batch each, run in threads; the outputs concatenated."""

    def __init__(self, module: nn.Module, replicas: int = 2) -> None:
        super().__init__(module)  # no GPU: DataParallel keeps the module and no device ids
        self.replicas = replicas

    def forward(self, x):
        import threading

        chunks = x.chunk(self.replicas)
        outs: list = [None] * len(chunks)
        errors: list[BaseException] = []

        def run(i: int, replica: nn.Module) -> None:
            try:
                outs[i] = replica(chunks[i])
            except BaseException as exc:  # re-raised on the calling thread
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(i, _replica(self.module)))
            for i in range(len(chunks))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return torch.cat(outs)


def _replica(net: nn.Module) -> nn.Module:
    copies = {m: m._replicate_for_data_parallel() for m in net.modules()}
    for module, copy in copies.items():
        copy._modules = {k: None if c is None else copies[c] for k, c in module._modules.items()}
        copy._parameters = dict(module._parameters)
    return copies[net]
