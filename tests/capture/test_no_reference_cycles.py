"""A closed Recorder is freed as soon as it is dropped, and so is the model it recorded: no
reference cycle keeps them for a garbage collection. Under DistributedDataParallel a model
kept until the interpreter's exit keeps its process group, whose gloo threads then destroy
their work while Python finalises, and the process aborts ("terminate called without an
active exception") after training and the run both ended."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from capture_helpers import TinyNet, batches, train

from pytest_modelrules import Recorder, RuleMonitor
from pytest_modelrules.capture import CollectionConfig


class TanhNet(TinyNet):
    """TinyNet with a Tanh after its head (recorded only when a collection asks)."""

    def __init__(self) -> None:
        super().__init__()
        self.tanh = torch.nn.Tanh()

    def forward(self, x):
        return self.tanh(super().forward(x))


CONFIGS = {
    "default": {},
    "no optimizer (gradient hooks)": {"optimizer": None},
    "synchronous writes": {"async_write": False},
    "writer process": {"writer_process": True},
    "hand-off thread": {"offload": True},
    "rule monitor": {"monitor": "loss_not_decreasing"},
    "relu inputs and tanh": {
        "collections": [
            CollectionConfig("relu_input", include_regex=r".*relu_input"),
            CollectionConfig("acts", include_regex=r".*tanh_(in|out)put"),
        ]
    },
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_a_closed_recorder_and_its_model_are_freed_without_a_collection(tmp_path, config):
    kwargs = dict(CONFIGS[config])
    model = TanhNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if "monitor" in kwargs:
        kwargs["monitor"] = RuleMonitor([kwargs["monitor"]], every_n_steps=1)
    kwargs.setdefault("optimizer", opt)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # only reference counting frees them from here
    try:
        rec = Recorder(tmp_path / "run", model, loss=loss_fn, save_interval=1, **kwargs)
        with rec:
            train(model, loss_fn, opt, batches(3), rec)
        refs = [weakref.ref(x) for x in (rec, model, opt, loss_fn)]
        del rec, model, opt, loss_fn, kwargs
        alive = [type(r()).__name__ for r in refs if r() is not None]
    finally:
        if enabled:
            gc.enable()
    assert alive == []


def test_a_recorder_whose_training_raised_is_freed_too(tmp_path):
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        rec = Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt)
        with pytest.raises(RuntimeError, match="stop"), rec:
            train(model, loss_fn, opt, batches(2), rec)
            raise RuntimeError("stop")
        refs = [weakref.ref(x) for x in (rec, model)]
        del rec, model, opt, loss_fn
        alive = [type(r()).__name__ for r in refs if r() is not None]
    finally:
        if enabled:
            gc.enable()
    assert alive == []
