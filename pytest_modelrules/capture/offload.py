"""Device work of a saving step done by the Recorder's thread instead of the training thread.

A ResNet-18 step at batch 64 in bfloat16 on a GPU is bound by the host launching kernels: every
operation the Recorder launches from the training thread lengthens the step. On the devices in
:data:`DEFER_DEVICES` the ReLU counts, the model input's reductions, the loss's copies and, in
steps that an optimizer step ends, the weight and gradient norms are launched instead by the
Recorder's launcher thread, on a CUDA stream of its own, while the training thread runs the
loss, backward and the optimizer (autograd's engine launches backward's kernels without
holding Python's interpreter lock). The training thread keeps the hooks' bookkeeping, one CUDA
event per hand-off (two a training step), and two waits of its stream on the side stream: before
the optimizer step, which changes the weights in place, and at the end of the step, so that
nothing the step recorded is overwritten before it is read.

The handed-off tensors are ones training does not change until the Recorder has waited for
their reads: the ReLU outputs (backward needs them unchanged), the model's input, outputs and
the loss's inputs and outputs (until the end of the step), the weights (until the optimizer's
pre-hook) and the gradients (the optimizer reads them). Each is handed off with its version
counter; one changed in place before its wait is left out of that step, with one warning, and
recorded at its call from then on (for the weights or gradients: all of that kind). A
side-stream read is announced to the caching allocator (``record_stream``), so the memory of a
tensor that training frees is not reused before the read is done.

Empty by default: see docs/performance.md for what is measured and what is still to measure on
a GPU. On a CPU (``DEFER_DEVICES.add("cpu")``, what the tests and the host-cost proxy use) the
thread computes the values itself and the training thread waits at the end of the step until it
is done.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any

import torch

#: device types ("cuda", "cpu") whose recording work the Recorder hands to its thread
DEFER_DEVICES: set[str] = set()

_SIDE_STREAMS: dict[torch.device, Any] = {}
_LOCK = threading.Lock()


def side_stream(device: torch.device) -> Any:
    """The Recorder's stream on CUDA ``device`` (one per device for the process: streams are
    few and never freed)."""
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        with _LOCK:
            stream = _SIDE_STREAMS.get(device)
            if stream is None:
                stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device=device)
    return stream


def on_side_stream(device: torch.device) -> Any:
    """A context that makes ``device``'s side stream current (nothing to do off CUDA)."""
    if device.type != "cuda":
        return nullcontext()
    return torch.cuda.stream(side_stream(device))


def mark_point(devices: set[torch.device]) -> dict[torch.device, Any]:
    """A CUDA event on each device's current stream, recorded now: where the work handed off
    so far sits in the training's kernel queue (CPU devices need none)."""
    events = {}
    for device in devices:
        if device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events[device] = event
    return events


class Work:
    """One hand-off: tensors to reduce or copy on the Recorder's thread, and what came of it.

    ``items``: ("capture", name, tensor, full, reductions, stored names) or
    ``("counts", device, [(ReLU output, stored name), ...])``; ``checks``: (weak reference to
    the tensor, its version at the hook, stored names, (kind, name to record at its call from
    then on)) for the end-of-step version check (a tensor freed since was not changed);
    ``ready``: the training stream's position per CUDA device when it was handed off;
    ``out``: the pending values (1-D tensor, layout) the thread computed; ``done``: per CUDA
    device, an event on the side stream after the last read; ``launched``: set once the thread
    is through with it (launched on a GPU, computed on a CPU), also when it failed;
    ``param_checks``: per group of parameters or gradients, (kind, the tensors, their versions,
    the kind's names, the group's indices in them or None, its rows' layouts). These tensors are
    held until the wait that orders training's stream after the side stream's reads (the
    Recorder's ``_settle``), so their memory cannot be reused before it: they need no
    ``record_stream``.
    """

    __slots__ = ("checks", "done", "items", "launched", "out", "param_checks", "ready")

    def __init__(
        self,
        items: list[tuple[Any, ...]],
        checks: list[tuple[Any, int, tuple[str, ...], tuple[str, str]]],
        ready: dict[torch.device, Any],
    ) -> None:
        self.items = items
        self.checks = checks
        self.param_checks: list[tuple[Any, ...]] = []
        self.ready = ready
        self.out: list[tuple[torch.Tensor, Any]] = []
        self.done: dict[torch.device, Any] = {}
        self.launched = threading.Event()


__all__ = ["DEFER_DEVICES", "Work", "mark_point", "on_side_stream", "side_stream"]
