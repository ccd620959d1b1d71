"""The Recorder: hooks on a PyTorch model (and its loss module and optimizer) that record a run.

Names, collections and step counting follow SageMaker Debugger's PyTorch hook, so rules and
notebooks written against smdebug read a recorded run unchanged. See docs/recording.md.

Cost model: a step that saves nothing runs two Python counter checks (the model's forward
pre-hook and the optimizer's step hooks); every other hook is installed only for steps that
save something (kept while the following steps save the same collections, removed before one
that does not). At a saved step, reductions are computed on the tensor's device and the step's
values - reductions and full tensors of every dtype - move to the CPU as one byte buffer per
device, which the writer thread splits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import logging
import os
import queue
import re
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import modes as _modes
from ..exceptions import RecorderError
from ..modes import ModeKeys, parse_mode
from ..store.fs import is_url
from ..store.names import activation_tensor_base, reduction_tensor_name, relu_tensor_base
from ..store.writer import RunWriter, check_end_reason
from . import kernels, offload
from .config import CollectionConfig, SaveConfig, default_collections, merge_collections
from .host import BFLOAT16, write_blobs
from .host import Counts as _Counts
from .host import Full as _Full
from .host import Red as _Red
from .host import Scalars as _Scalars
from .reductions import (
    BATCHABLE,
    EXACT_LIMIT,
    STORED_DTYPE,
    compute_batch_rows,
    compute_many,
    fused_norm_path,
    positive_counts,
)
from .writer_process import ProcessWriter, WriterProcessError

logger = logging.getLogger("pytest_modelrules.capture")


def _report(message: str) -> None:
    """Log and warn; a warning turned into an error (``-W error``) must not reach training."""
    logger.warning(message)
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    except Exception:
        logger.debug("the warning above could not be issued as a warning", exc_info=True)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    inner = model
    for _ in range(4):
        if isinstance(inner, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            inner = inner.module
        elif hasattr(inner, "_orig_mod") and isinstance(inner._orig_mod, torch.nn.Module):
            inner = inner._orig_mod
        else:
            break
    return inner


def _plain_path(path: str) -> str:
    """A parameter's or module's path without the ``_orig_mod`` of a part compiled before
    the Recorder was attached (``model.body = torch.compile(model.body)``): the names of
    the uncompiled model."""
    if "_orig_mod" not in path:
        return path
    return ".".join(part for part in path.split(".") if part != "_orig_mod")


#: activation modules besides ``nn.ReLU`` whose calls the Recorder can record, by the kind
#: that names their tensors (``<path>.tanh_input_<k>``, ``<path>.sigmoid_output_<k>``):
#: SaturatedActivation reads the tanh and sigmoid inputs. No collection selects them by
#: default, so no hook is installed unless one does (``include_regex=".*tanh_input"``).
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}


def _flatten_tensors(value: Any) -> list[tuple[int, torch.Tensor]]:
    """(position, tensor) for a tensor, or the tensors of a tuple/list/dict or of a
    dataclass instance's fields, in their order (one level)."""
    if isinstance(value, torch.Tensor):
        return [(0, value)]
    if isinstance(value, Mapping):
        items: Iterable[Any] = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, field.name) for field in dataclasses.fields(value)]
    else:
        return []
    return [(i, v) for i, v in enumerate(items) if isinstance(v, torch.Tensor)]


def _parameter_positions(module: torch.nn.Module) -> dict[str, int]:
    """The parameters of ``module.forward`` that a caller may pass by position, name ->
    position: a tensor passed by keyword is recorded under its position (``model(x=t)`` as
    ``model(t)``: ``<Model>_input_0``). Empty where the signature cannot be read."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    positions: dict[str, int] = {}
    for i, parameter in enumerate(parameters):
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            break
        positions[parameter.name] = i
    return positions


def _argument_tensors(
    args: tuple[Any, ...], kwargs: Mapping[str, Any] | None, positions: Mapping[str, int]
) -> list[tuple[int | str, torch.Tensor]]:
    """(key, tensor) of a call's tensor arguments: positional ones by position, keyword ones
    by their parameter's position, or by keyword where the parameter has none (keyword-only,
    or taken by ``**kwargs``)."""
    found: list[tuple[int | str, torch.Tensor]] = [
        (i, value) for i, value in enumerate(args) if isinstance(value, torch.Tensor)
    ]
    if kwargs:
        found += [
            (positions.get(key, key), value)
            for key, value in kwargs.items()
            if isinstance(value, torch.Tensor)
        ]
    return found


class _Collection:
    """A resolved collection: matcher, schedule, what to store, the names seen so far."""

    def __init__(self, config: CollectionConfig, default_interval: int) -> None:
        self.config = config
        self.name = config.name
        self.save_config: SaveConfig = config.resolve_save_config(default_interval)
        regexes = list(config.include_regex or [])
        self.regex = re.compile("|".join(f"(?:{r})" for r in regexes)) if regexes else None
        self.names: set[str] = set(config.tensor_names or [])
        self.reductions = config.reduction_list
        self.full = config.full
        self.seen: set[str] = set()

    def matches(self, name: str) -> bool:
        return name in self.names or (
            self.regex is not None and self.regex.search(name) is not None
        )

    def to_json(self) -> dict[str, Any]:
        stored = set(self.seen)
        for tensor in self.seen:
            stored.update(reduction_tensor_name(tensor, r, a) for r, a in self.reductions)
        return {
            "name": self.name,
            "tensor_names": sorted(stored),
            "include_regex": list(self.config.include_regex or []),
            "save_config": self.save_config.to_json(),
            "reductions": [("abs_" if a else "") + r for r, a in self.reductions],
            "save_raw_tensor": self.full,
        }


_BATCHABLE_CACHE: dict[tuple[tuple[str, bool], ...], bool] = {}


def _batchable(reductions: tuple[tuple[str, bool], ...]) -> bool:
    """Whether compute_batch handles every one of ``reductions`` (cached per tuple)."""
    ok = _BATCHABLE_CACHE.get(reductions)
    if ok is None:
        ok = _BATCHABLE_CACHE[reductions] = set(reductions) <= BATCHABLE
    return ok


class _NoAutocast:
    """Autocast off for the reductions (restored after): the two C calls of it, not
    ``torch.autocast``'s Python, which costs tens of microseconds per ReLU call."""

    __slots__ = ("device_type", "prev")

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.prev = False

    def __enter__(self) -> None:
        self.prev = torch.is_autocast_enabled(self.device_type)
        if self.prev:
            torch.set_autocast_enabled(self.device_type, False)

    def __exit__(self, *exc: Any) -> None:
        if self.prev:
            torch.set_autocast_enabled(self.device_type, True)


def _no_autocast(device_type: str) -> Any:
    """A context that disables autocast for the reductions; nothing to do when it is off."""
    try:
        torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know: let torch.autocast decide
        return torch.autocast(device_type, enabled=False)
    return _NoAutocast(device_type)


#: bytes of ReLU outputs the Recorder holds for the Triton kernel's one launch at the end of the
#: forward pass before it counts them anyway. In training autograd keeps most outputs alive
#: until backward; under no_grad, with a frozen backbone or activation checkpointing nothing
#: would: this bounds what recording holds.
RELU_QUEUE_BYTES = 512 * 2**20

#: the autograd engine's current graph task (-1 outside a backward pass)
_GRAPH_TASK_ID = getattr(torch._C, "_current_graph_task_id", lambda: -1)


_UNINITIALIZED = torch.nn.parameter.UninitializedParameter

#: whether a torch.func transform (vmap, grad, jacrev) is running
_TRANSFORMING = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _recomputing() -> bool:
    """Whether a forward call is not one of the step's own: inside a backward pass
    (activation checkpointing recomputing a segment: reentrant checkpointing runs the
    segment's module hooks again), or inside a torch.func transform (per-sample gradients by
    ``vmap(grad(...))``, DP-SGD's recipe: its tensors are batched stand-ins that most
    operations of a capture cannot take). It is recorded as no forward pass."""
    return _GRAPH_TASK_ID() != -1 or _TRANSFORMING()


_compiler = getattr(torch, "compiler", None)
#: whether torch.compile (Dynamo) is tracing the code that calls it: True only while a
#: compiled model's hooks are traced, never when they run
_tracing: Callable[[], bool] = getattr(_compiler, "is_compiling", lambda: False)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``: what :data:`_eager` runs with Dynamo switched off."""
    return fn(*args)


#: calls the Recorder's own code from a hook that torch.compile traces, as a graph break: the
#: code runs as it does without compilation, and Dynamo never traces it (no guards on the
#: Recorder's state, so no recompilation as steps go by)
_eager: Callable[..., Any] = _compiler.disable(_call) if _compiler else _call


def _breaks_allowed() -> bool:
    """Whether the frame torch.compile is tracing may break its graph: not under
    ``fullgraph=True``, where a break is an error (a compiled model's hooks then record
    nothing inside its forward pass, rather than fail training). Called while tracing only:
    Dynamo runs it once per trace and keeps the answer as a constant."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        return not (tx.one_graph or getattr(tx, "error_on_graph_break", False))
    except Exception:  # another PyTorch's internals: no break is the safe answer
        return False


if _compiler is not None and hasattr(_compiler, "assume_constant_result"):
    _breaks_allowed = _compiler.assume_constant_result(_breaks_allowed)  # type: ignore[assignment]


def _guarded(fn: Callable[..., Any], rec: Any = None, when: str = "") -> Callable[..., Any]:
    """A hook that Dynamo may trace (its traced path: ``fn`` checks ``_tracing()`` first)
    and that otherwise runs ``fn`` outside Dynamo: called from code that Dynamo runs
    without a graph (a frame it skipped, inside a compiled function), the Recorder's own
    calls would each be compiled as frames of their own, guarded on its state. ``when``
    ("saving", "opt_pre") returns at once, from attribute reads of Recorder ``rec`` alone,
    where ``fn`` has nothing to do: a step that saves nothing pays no call into it."""
    if when == "saving":  # the ReLUs', the root's forward hook, the loss's

        def hook(*args: Any) -> Any:
            if _tracing():
                return fn(*args)
            if not (rec._saving or rec._hidden_forward):
                return None
            return _eager(fn, *args)

    elif when == "opt_pre":  # it opens a step no forward pass opened, or takes gradients

        def hook(*args: Any) -> Any:
            if _tracing():
                return fn(*args)
            if not (rec._saving or rec._hidden_forward) and rec._open:
                return None
            return _eager(fn, *args)

    else:

        def hook(*args: Any) -> Any:
            if _tracing():
                return fn(*args)
            return _eager(fn, *args)

    return hook


#: the writer thread waits for a step's copy to the host asleep (a blocking CUDA event), not
#: spinning on a core as CUDA's default wait does for most of each step beside the thread that
#: launches training's kernels; False spins (``bench_capture.py --spin-wait`` compares the two)
BLOCKING_WAIT = True

#: reductions whose result autocast cannot change (a comparison, then sums with an explicit
#: dtype): computed without touching the autocast state
_AUTOCAST_FREE = frozenset({("positive_fraction", False)})


#: reductions that describe floating-point images; an integer tensor, or one of fewer than two
#: dimensions, asked only these is stored in full instead
_IMAGE_ONLY = frozenset({("sample_channel_mean", False), ("sample_channel_mean", True)})


#: the spec of a tensor that saves only its positive fraction (the default for ReLU outputs)
_POSITIVE_FRACTION_ONLY = (("positive_fraction", False),)

#: dtypes a step's transfer carries, and how the host reads their bytes (bfloat16 as its 16
#: bits, which are the upper half of a float32)
_NUMPY_DTYPE: dict[torch.dtype, np.dtype] = {
    torch.float64: np.dtype(np.float64), torch.float32: np.dtype(np.float32),
    torch.float16: np.dtype(np.float16), torch.bfloat16: np.dtype(np.uint16),
    torch.int64: np.dtype(np.int64), torch.int32: np.dtype(np.int32),
    torch.int16: np.dtype(np.int16), torch.int8: np.dtype(np.int8),
    torch.uint8: np.dtype(np.uint8), torch.bool: np.dtype(np.bool_),
    torch.complex64: np.dtype(np.complex64), torch.complex128: np.dtype(np.complex128),
}  # fmt: skip
for _name, _np in (("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64)):
    if hasattr(torch, _name):
        _NUMPY_DTYPE[getattr(torch, _name)] = np.dtype(_np)


#: each transferred dtype's key in a step's segments (capture/host.py)
_DTYPE_KEY: dict[torch.dtype, str] = {
    dtype: BFLOAT16 if dtype == torch.bfloat16 else np_dtype.str
    for dtype, np_dtype in _NUMPY_DTYPE.items()
}


def _itemsize(dtype: torch.dtype) -> int:
    return _NUMPY_DTYPE[dtype].itemsize


_Spec = tuple[tuple[str, bool], ...]  # reductions: (name, absolute) pairs


class _ParamPlan(NamedTuple):
    """What a saving step does with a list of parameters or gradients: groups reduced together
    by ``compute_batch_rows`` (reductions, indices or None for all in order, whether by
    multi-tensor norms, the layout of each reduction's row), indices stored in full, indices
    that take the general path (:meth:`Recorder._capture`)."""

    groups: list[tuple[_Spec, list[int] | None, bool, list[_Scalars]]]
    full: list[int]
    other: list[int]


def _unit_counts(x: torch.Tensor, name: str) -> tuple[torch.Tensor, _Counts]:
    """How many samples of batch ``x`` are > 0 in each unit, flat in C order (the sum over
    the batch writes C order from any layout, channels_last included; other orders are copied
    on the device), and its layout. Measured on an H100 (bfloat16, channels_last), this beat
    reducing the batch as an (N, units) matrix in memory order: that sum ran faster, but
    putting its counts back in C order, on the device or on the writer thread, cost more. On
    the devices where its ``triton`` kernels are on the Recorder counts with a Triton kernel
    instead (:meth:`Recorder._count_relu_batch`)."""
    return _counts_entry(positive_counts(x).reshape(-1), name, x.shape[0])


def _counts_entry(flat: torch.Tensor, name: str, batch: int) -> tuple[torch.Tensor, _Counts]:
    """A pending entry for the flat per-unit positive counts of a batch of ``batch``
    samples, stored as ``name``."""
    return flat, _Counts(((name, batch, flat.numel()),))


def _kernel_failed(
    devices: set[str] | frozenset[str], device: torch.device, kernel: str, exc: Exception
) -> None:
    """A Triton kernel failed on ``device``: torch operations do its work on that device
    type from now on (it leaves ``devices``, the Recorder's or the module's set), said once."""
    devices.discard(device.type)  # type: ignore[union-attr]
    _report(
        f"pytest-modelrules: the Triton {kernel} kernel failed on {device.type} "
        f"({type(exc).__name__}: {exc}); torch operations do its work from now on"
    )


#: dtypes the transfer does not carry, and what they travel as
_TRANSFER_AS = {torch.complex32: torch.complex64}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _TRANSFER_AS[getattr(torch, _name)] = torch.float32


def _full_copy(name: str, x: torch.Tensor) -> tuple[torch.Tensor, _Full]:
    """A flat C-order copy of ``x`` taken now (an in-place op later in the step cannot change
    what is stored), in a dtype the transfer carries (float8 as float32)."""
    dtype = _TRANSFER_AS.get(x.dtype, x.dtype)
    if dtype not in _NUMPY_DTYPE:
        raise TypeError(f"tensor {name!r} has dtype {x.dtype}, which cannot be recorded")
    copy = x.to(dtype, memory_format=torch.contiguous_format, copy=True)
    return copy.view(-1), _Full(name, tuple(x.shape))


def _hooked_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer whose step hooks run at each real step. A wrapper that subclasses
    ``torch.optim.Optimizer`` without running its ``__init__`` and keeps the optimizer it
    wraps as ``.optimizer`` (Hugging Face Accelerate's ``AcceleratedOptimizer``, whose
    ``step()`` calls the wrapped one's only where gradients are synchronised, i.e. once per
    accumulation cycle) holds no step hooks: the wrapped optimizer's are used. PyTorch
    Lightning's ``LightningOptimizer`` shares the wrapped optimizer's hooks: kept as it is."""
    seen = set()
    while "_optimizer_step_pre_hooks" not in vars(optimizer) and id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            raise RecorderError(
                f"optimizer {type(optimizer).__name__} is a torch.optim.Optimizer that never "
                "ran Optimizer.__init__ (a wrapper?), so it has no step hooks; give the "
                "Recorder the optimizer it wraps"
            )
        optimizer = inner
    return optimizer


def _closure_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any] | None:
    """The closure of an ``optimizer.step(closure)`` call, passed by name or positionally, as
    a step pre-hook sees the call's arguments (``args[0]`` is the optimizer itself)."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    return closure if callable(closure) else None


def _with_closure(
    args: tuple[Any, ...], kwargs: dict[str, Any], closure: Callable[..., Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A step pre-hook's ``args`` and ``kwargs`` with the call's closure replaced."""
    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs


def _wait_launched(works: list[offload.Work]) -> None:
    """Wait until the Recorder's thread has launched each hand-off's device work, and make
    training's stream wait for its reads: training may change or free what was handed off."""
    for work in works:
        work.launched.wait()
        for device, done in work.done.items():
            torch.cuda.current_stream(device).wait_event(done)


class _Hook(functools.partial):
    """A module hook of the Recorder: called as the function it wraps (a C-level call). A
    deepcopy of the model (an EMA or teacher copy) keeps it as it is, bound to this Recorder,
    whose hooks ignore modules other than the model's own; pickling the model while it is
    recorded (``torch.save(model)``) is refused with what to do instead."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Hook:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(
            "this model has a pytest-modelrules Recorder's hooks attached: save "
            "model.state_dict() (what PyTorch recommends). The recorded model itself pickles "
            "once its Recorder is closed; a copy.deepcopy of it (an EMA, a teacher) keeps "
            "the hooks for good, so save the copy's state_dict()"
        )


class _AllDevices:
    """Every device type (``Recorder(offload=True)``): contains any, and is true."""

    def __contains__(self, device_type: object) -> bool:
        return True

    def __bool__(self) -> bool:
        return True


#: the module, where the Recorder's ``offload`` argument hides its name
_offload_module = offload


class Recorder:
    """Record a PyTorch training run in SageMaker Debugger's terms (see docs/recording.md).

    ``with Recorder(out_dir, model, loss=loss_fn, optimizer=opt) as rec:`` then train as usual;
    call ``rec.set_mode(modes.EVAL)`` around validation. A step is one optimizer step in TRAIN
    mode when an optimizer is given, else one forward pass of ``model``. Recording never makes a
    training step fail: the first error inside recording is reported once and recording stops.
    ``offload=True`` has the Recorder's thread (and, on a GPU, its own CUDA stream) compute the
    step's reductions and copies, ``False`` keeps them on the training thread, ``None`` hands
    off on the device types in ``capture.offload.DEFER_DEVICES`` (none by default).
    ``writer_process=True`` writes from a process of its own instead of the writer thread
    (capture/writer_process.py: no GIL shared with a launch-bound training loop; local runs).
    ``triton=True`` runs the Triton kernels of capture/kernels.py on CUDA devices: the ReLU
    outputs' positive counts in one launch a step, and the weight and gradient norms in two
    launches per group; ``False`` uses torch operations; ``None`` each kernel on the device
    types in ``capture.kernels.COUNT_KERNEL_DEVICES`` and ``NORM_KERNEL_DEVICES`` (CUDA where
    Triton is installed).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        model: torch.nn.Module,
        loss: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        save_interval: int = 500,
        collections: Iterable[CollectionConfig | str] | None = None,
        include_regex: str | Iterable[str] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        monitor: Any = None,
        default_collections_enabled: bool = True,
        sync_interval_s: float = 60.0,
        storage_options: Mapping[str, Any] | None = None,
        mode: ModeKeys | str = ModeKeys.TRAIN,
        async_write: bool = True,
        offload: bool | None = None,
        triton: bool | None = None,
        writer_process: bool = False,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise RecorderError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss is not None and not isinstance(loss, torch.nn.Module):
            raise RecorderError(
                f"loss must be a torch.nn.Module (e.g. nn.CrossEntropyLoss()), got "
                f"{type(loss).__name__}; for a functional loss leave loss=None"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise RecorderError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if optimizer is not None:
            optimizer = _hooked_optimizer(optimizer)
        if int(save_interval) < 0:
            raise RecorderError(f"save_interval must be >= 0, got {save_interval}")
        if writer_process and is_url(out_dir):
            raise RecorderError(
                f"writer_process=True writes a local run; {os.fspath(out_dir)!r} is a URL "
                "(its uploads stay on the Recorder's writer thread: leave writer_process off)"
            )
        if writer_process and not async_write:
            raise RecorderError(
                "writer_process=True leaves the Recorder's writer thread only the waits and "
                "the hand-over; async_write=False removes that thread: pass one or the other"
            )
        if offload and not async_write:
            raise RecorderError(
                "offload=True hands device work to the Recorder's thread, which "
                "async_write=False turns off; pass one or the other"
            )
        # device types whose ReLU counts and parameter norms the Triton kernels make: the
        # module's sets by default (switching one on reaches Recorders already made); a
        # failing kernel is taken out of the set it was found in, with one warning
        self._kernel_devices: set[str] | frozenset[str]
        self._norm_kernel_devices: set[str] | frozenset[str]
        if triton is None:
            self._kernel_devices = kernels.COUNT_KERNEL_DEVICES
            self._norm_kernel_devices = kernels.NORM_KERNEL_DEVICES
        elif triton:
            if importlib.util.find_spec("triton") is None:
                raise RecorderError(
                    "triton=True runs Triton kernels (ReLU counts, parameter norms), and Triton "
                    "is not installed (pip install triton; it comes with CUDA builds of PyTorch)"
                )
            # on the CPU only under Triton's interpreter (set before Triton is imported)
            interpret = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")
            self._kernel_devices = {"cuda", "cpu"} if interpret else {"cuda"}
            self._norm_kernel_devices = set(self._kernel_devices)
        else:
            self._kernel_devices = self._norm_kernel_devices = frozenset()
        self.out_dir = os.fspath(out_dir)
        self.root = model
        self.model = unwrap_model(model)
        self.loss_module = loss
        self.optimizer = optimizer
        self.save_interval = int(save_interval)
        self.root_name = type(self.model).__name__
        self.loss_name = type(loss).__name__ if loss is not None else None
        # keyword arguments are named by their parameter's position (_argument_tensors)
        self._root_positions = _parameter_positions(self.model)
        self._loss_positions = _parameter_positions(loss) if loss is not None else {}
        self.monitor = monitor
        self.sync_interval_s = float(sync_interval_s)

        # collections
        try:
            defaults = (
                default_collections(self.root_name, self.loss_name, record_outputs=loss is None)
                if default_collections_enabled
                else []
            )
            given = list(collections or [])
            if include_regex is not None:
                given.append(CollectionConfig("default", include_regex=include_regex))
            configs = merge_collections(defaults, given)
            self._collections = [_Collection(c, self.save_interval) for c in configs]
        except (ValueError, TypeError) as exc:
            raise RecorderError(f"Recorder collections: {exc}") from exc
        self._losses_idx = next(
            (i for i, c in enumerate(self._collections) if c.name == "losses"), None
        )
        self._weights_idx = next(
            (i for i, c in enumerate(self._collections) if c.name == "weights"), None
        )
        self._params = [(_plain_path(n), p) for n, p in self.model.named_parameters()]
        self._grad_names = [(f"gradient/{n}", p) for n, p in self._params]
        self._param_names = [n for n, _ in self._params]
        self._param_tensors = [p for _, p in self._params]
        self._grad_tensor_names = [g for g, _ in self._grad_names]
        # a lazy module's parameters before its first forward pass: no value, no gradient hook
        self._lazy = [p for p in self._param_tensors if isinstance(p, _UNINITIALIZED)]
        if self._weights_idx is not None:  # params called neither *weight nor *bias: weights
            wcoll = self._collections[self._weights_idx]
            # (whatever else selects them: an include_regex or a collection of the user's
            # adds to what is recorded, it takes nothing from the default weights)
            kinds = [c for c in self._collections if c.name in ("weights", "biases")]
            for pname, _ in self._params:
                if not any(c.matches(pname) for c in kinds):
                    wcoll.names.add(pname)
        self._relus = [
            (relu_tensor_base(_plain_path(path)), m)
            for path, m in self.model.named_modules()
            if isinstance(m, torch.nn.ReLU)
        ]
        self._acts = [
            (activation_tensor_base(_plain_path(path), kind), m)
            for path, m in self.model.named_modules()
            for kind, cls in ACTIVATIONS.items()
            if isinstance(m, cls)
        ]
        self._membership: dict[str, tuple[int, ...]] = {}

        # step state
        self.mode: ModeKeys = parse_mode(mode, allow_none=False)  # type: ignore[assignment]
        self.global_step = 0
        self._mode_steps: dict[ModeKeys, int] = {}
        self._open = False
        self._forward_index = 0
        # whether the step's first forward pass returned (a pass that raised did not), and
        # how far the step's captures had come before it began (_restart_forward)
        self._first_done = False
        # a step(closure) whose gradients are read after the closure's first evaluation
        # (or, where the optimizer never calls it, at the step's end)
        self._grads_pending = False
        self._marks: tuple[int, int, int, int, frozenset[str]] = (0, 0, 0, 0, frozenset())
        self._saving: frozenset[int] = frozenset()
        # per tensor name, valid for the collections saving in _spec_saving: what to store
        # (_spec), which collections still have to list the name (_to_mark), how to lay out
        # the reductions (_layouts)
        self._spec_saving: frozenset[int] = frozenset()
        self._spec_graph_relu: str | None = None  # _graph_plan() for _spec_saving
        self._spec_graph_acts = False  # _saves_activations() for _spec_saving
        self._spec_cache: dict[str, tuple[bool, tuple[tuple[str, bool], ...]] | None] = {}
        self._marked: set[str] = set()
        self._layouts: dict[tuple[str, tuple[tuple[str, bool], ...]], Any] = {}
        self._captured: set[str] = set()
        # values waiting for the step's transfer: (1-D contiguous tensor, how the host reads
        # it back: a _Red, _Counts or _Full layout); see _flush
        self._pending: list[tuple[torch.Tensor, Any]] = []
        # ReLU outputs waiting for the Triton kernel: (output, its version, stored name)
        self._relu_batch: list[tuple[torch.Tensor, int, str]] = []
        self._relu_batch_bytes = 0
        # stored names of ReLU outputs seen changed in place before the queue was counted:
        # counted at their call from then on
        self._count_at_call: set[str] = set()
        # per (ReLU module, call index) and per parameter list: what a saving step does with
        # it, worked out once while the same collections save (cleared with _spec_cache)
        self._relu_plan: dict[tuple[int, int], Any] = {}
        self._relu_bases: dict[int, str] = {}  # a hooked ReLU module's tensor name base
        self._param_plans: dict[Any, _ParamPlan] = {}
        self._plans_done: set[Any] = set()
        self._grad_acc: dict[str, torch.Tensor] = {}
        # work for the Recorder's thread (capture/offload.py): items and their version checks
        # gathered since the last hand-off, the devices they are on, the step's hand-offs, and
        # tensor names seen changed in place after a hand-off (captured at their call since)
        self._items: list[tuple[Any, ...]] = []
        self._checks: list[Any] = []
        # per parameter group handed off: (kind, its tensors, their versions, the kind's
        # names, the group's indices in them or None for all, the layouts of its rows)
        self._param_checks: list[tuple[Any, ...]] = []
        self._item_devices: set[torch.device] = set()
        self._works: list[offload.Work] = []
        self._at_call: set[str] = set()
        # hand-offs of this step already waited for (before the optimizer step changes the
        # weights), the stored names they lost to an in-place change, and the parameter kinds
        # ("weights", "gradients") seen changed after a hand-off: reduced at their call since
        self._settled: list[offload.Work] = []
        self._dropped: set[str] = set()
        self._params_at_call: set[str] = set()
        self._relu_calls: dict[int, int] = {}
        self._relu_in_calls: dict[int, int] = {}
        self._act_calls: dict[tuple[Any, bool], int] = {}  # (module key, input?) -> calls
        self._dyn_handles: list[Any] = []
        self._loss_hooked = False  # the loss module's hook is installed (from the start)
        # the (collections saving, steps by optimizer) the dynamic hooks were installed for:
        # steps that save the same things keep them
        self._dyn_key: tuple[frozenset[int], bool] | None = None
        # torch.compile: a compiled forward pass's traced hooks read _graph_saving (a guard:
        # two compiled variants, saving or not) and set _hidden_forward where they cannot
        # leave the graph (fullgraph=True)
        self._graph_saving = False
        # what a compiled forward pass does at the ReLU calls of this step: None, "counts"
        # (their positive counts, computed in the graph, kept in _graph_counts for the root's
        # hook) or "eager" (the hooks run outside the graph); a guard, like _graph_saving
        self._graph_relu: str | None = None
        # whether a compiled forward pass's Tanh / Sigmoid hooks run outside the graph (this
        # step saves some of their tensors); a guard, like _graph_saving
        self._graph_acts = False
        self._graph_counts: list[tuple[int, int, torch.Tensor]] = []
        self._hidden_forward = False
        self._hidden_said = False
        self._no_grad_said = False  # a no_grad forward pass in an optimizer's TRAIN step
        self._no_forward_said = False  # an optimizer step with no forward pass of the model
        self._handles: list[Any] = []
        self._collections_dirty = False
        self._last_sync = time.monotonic()
        self.dead = False
        self._disk_failed = False  # the writer thread's own error: nothing more is written
        self.closed = False
        self._async = bool(async_write)
        # device types whose work the thread does (none without the thread); the module's
        # set by default, so that switching it on reaches Recorders already made
        self._defer: set[str] | frozenset[str] | _AllDevices
        if offload is None:
            self._defer = _offload_module.DEFER_DEVICES if self._async else frozenset()
        else:
            self._defer = _AllDevices() if offload else frozenset()
        # the thread's jobs, in order; at most 2 steps' writes queued (a training loop that
        # outruns the disk waits rather than holding more steps' values in memory). SimpleQueue:
        # its put wakes a waiting thread in C, half the training thread's CPU of Queue's
        # Python-level condition (about 4 against 8 us a hand-off on the 2-core VM)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._write_slots = threading.BoundedSemaphore(2)
        self._thread: threading.Thread | None = None
        # the launcher thread (offload.py): hand-offs and their transfers, never the disk
        self._launch_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._launcher: threading.Thread | None = None
        # DataParallel's replicas call the ReLU hooks from their threads: the queue's lock
        self._replica_lock = threading.Lock()
        self.error: BaseException | None = None

        # distributed: one shard per rank
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank, self.num_workers = rank, world
        self.worker = f"worker_{rank}"
        meta = {"recorder": {"model": self.root_name, "loss": self.loss_name,
                             "save_interval": self.save_interval}}  # fmt: skip
        meta.update(dict(metadata or {}))
        self.writer: RunWriter | ProcessWriter | None = None
        try:
            if writer_process:
                self.writer = ProcessWriter(
                    self.out_dir, self.worker, rank=rank, num_workers=world, metadata=meta
                )
            else:
                self.writer = RunWriter(
                    self.out_dir, self.worker, rank=rank, num_workers=world, metadata=meta,
                    storage_options=dict(storage_options or {}),
                )  # fmt: skip
            self.writer.set_collections(self._collections_json())
        except FileExistsError as exc:
            raise RecorderError(str(exc)) from exc
        except (OSError, WriterProcessError) as exc:  # the disk (the process's, with it)
            self._fail(exc, "opening the run")
        self._install_static_hooks()
        if self.monitor is not None and not self.dead:
            try:
                self.monitor.attach(self.out_dir)
            except Exception as exc:
                self._monitor_failed(exc)

    # -- public API ----------------------------------------------------------------------------

    @property
    def mode_step(self) -> int:
        """The current step within the current mode."""
        return self._mode_steps.get(self.mode, 0)

    @property
    def run_path(self) -> str:
        return self.out_dir

    @property
    def should_stop(self) -> bool:
        """True when the RuleMonitor asked to stop training (``if rec.should_stop: break``)."""
        monitor = self.monitor
        if monitor is None:
            return False
        try:
            return bool(monitor.stop_requested)
        except Exception as exc:
            self._monitor_failed(exc)
            return False

    def set_mode(self, mode: ModeKeys | str) -> None:
        """Switch to TRAIN, EVAL or PREDICT; the open step of the previous mode ends here."""
        new = parse_mode(mode, allow_none=False)
        if new is ModeKeys.GLOBAL:
            raise ValueError("set_mode takes TRAIN, EVAL or PREDICT (GLOBAL is not a phase)")
        if new == self.mode:
            return
        if self._hidden_forward:  # compiled forward passes no loss or optimizer hook saw
            self._forward_was_hidden("at set_mode")
        if not self.dead:
            try:
                if self._open and self._steps_by_optimizer():
                    self._discard_step()  # no optimizer step yet: the step is not over
                else:
                    self._finalize_step()
            except Exception as exc:
                self._fail(exc, "ending a step")
        self.mode = new  # type: ignore[assignment]

    def update_metadata(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Store JSON metadata with the run (``class_names=[...]``, the recipe, ...)."""
        if self.dead or self.writer is None:
            return
        self._submit(self.writer.update_metadata, {**dict(values or {}), **more})

    def close(self, reason: str | None = None) -> None:
        """End the last step, close the monitor, mark the run ended (with a stop reason)."""
        if self.closed:
            return
        check_end_reason(reason)  # before anything changes
        self.closed = True
        if self._hidden_forward:  # compiled forward passes no loss or optimizer hook saw
            self._forward_was_hidden("at close")
        if not self.dead:
            try:
                self._finalize_step()
            except Exception as exc:
                self._fail(exc, "ending the last step")
        self._drain()
        if self.monitor is not None:
            try:
                self.monitor.close()
                if reason is None:
                    reason = getattr(self.monitor, "stop_reason", None)
            except Exception as exc:
                self._monitor_failed(exc)
        if not self.dead and self.writer is not None:
            try:
                self.writer.close(reason=reason)
            except Exception as exc:
                self._fail(exc, "closing the run")
        self._remove_hooks(static=True)
        self._clear_graph_state()  # a compiled model keeps calling the hooks it traced

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        reason = None
        if exc_type is not None and not (self.monitor is not None and self.should_stop):
            reason = f"error: {exc_type.__name__}: {exc}"
        self.close(reason=reason)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("stopped" if self.dead else "recording")
        return f"Recorder({self.out_dir!r}, {self.root_name}, step={self.global_step}, {state})"

    # -- failure handling ----------------------------------------------------------------------

    def _fail(self, exc: BaseException, where: str, at_step: bool = False) -> None:
        """Report the first recording error once, stop recording, keep training going. The
        steps already handed to the writer thread are still written, unless the writer itself
        failed (the disk): nothing recorded before the error is lost. ``at_step``: ``where``
        names its step already (a job's; ``async_write=False`` runs it here)."""
        if self.dead:
            return
        self.dead = True
        self.error = exc
        here = threading.current_thread()
        if here not in (self._thread, self._launcher) and not at_step:
            step = f"global step {self.global_step} ({self.mode.name} step {self.mode_step})"
            where = f"{where} at {step}"
        message = (
            f"pytest-modelrules Recorder: recording stopped while {where} "
            f"({type(exc).__name__}: {exc}); training continues unrecorded"
        )
        _report(message)
        self._drop_captured()
        if self.writer is None:
            return
        if here is self._thread:  # the writer's own failure (the disk): stop writing now
            self._disk_failed = True
            self._abort_writer()
        elif self._launcher is not None:  # after the writes it has yet to pass on
            self._submit_launch(self._submit, self._abort_writer)
        elif self._thread is not None:  # after the writes queued
            self._submit(self._abort_writer)
        else:
            self._abort_writer()

    def _drop_captured(self) -> None:
        """Forget what the open step captured and has not handed on for writing (after a
        failure, or a step given up): its values, queued ReLU outputs, accumulated gradients,
        hand-off items and their checks, a compiled pass's counts."""
        self._pending.clear()
        self._clear_graph_state()
        self._relu_batch, self._relu_batch_bytes = [], 0
        self._grad_acc.clear()
        self._items, self._checks, self._item_devices = [], [], set()
        self._param_checks = []

    def _abort_writer(self) -> None:
        """Close the run's files without marking it ended (after an error)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):  # the disk may already fail: nothing to add
                self.writer.abort()

    def _monitor_failed(self, exc: BaseException) -> None:
        message = (
            f"pytest-modelrules Recorder: the rule monitor failed ({type(exc).__name__}: {exc}); "
            "it is detached, recording goes on"
        )
        _report(message)
        self.monitor = None

    # -- hooks ---------------------------------------------------------------------------------

    def _install_static_hooks(self) -> None:
        self._handles.append(
            self.root.register_forward_pre_hook(
                _Hook(_guarded(self._root_pre_hook)), with_kwargs=True
            )
        )
        self._handles.append(
            self.root.register_forward_hook(_Hook(_guarded(self._root_hook, self, "saving")))
        )
        if self.loss_module is not None and self._could_ever_save(
            f"{self.loss_name}_input_0", f"{self.loss_name}_output_0"
        ):
            # kept at every step (it returns at once on a step that saves nothing): it also
            # keeps the steps of a model whose compiled forward pass cannot call its hooks
            self._handles.append(
                self.loss_module.register_forward_hook(
                    _Hook(_guarded(self._loss_hook, self, "saving")), with_kwargs=True
                )
            )
            self._loss_hooked = True
        # the ReLUs' too, for every ReLU call some collection saves at some step: Dynamo does
        # not see a hook added to a module it has already traced (a compiled model, or a
        # compiled part of one), so hooks that followed the steps lost the ReLU outputs of
        # steps the first traced step did not save. Each returns at once on a step that saves
        # nothing (1.5 microseconds a ReLU call on a 2-core VM: docs/performance.md).
        for base, module in self._relus:
            want_in = self._could_ever_save(f"{base}_input_0")
            want_out = self._could_ever_save(f"{base}_output_0")
            if want_in or want_out:
                self._make_relu_hooks(base, module, want_in, want_out)
        for base, module in self._acts:  # Tanh, Sigmoid: only where a collection wants them
            want_in = self._could_ever_save(f"{base}_input_0")
            want_out = self._could_ever_save(f"{base}_output_0")
            if want_in or want_out:
                self._make_activation_hooks(base, module, want_in, want_out)
        if self.optimizer is not None:
            self._handles.append(
                self.optimizer.register_step_pre_hook(_guarded(self._opt_pre_hook, self, "opt_pre"))
            )
            self._handles.append(
                self.optimizer.register_step_post_hook(_guarded(self._opt_post_hook))
            )

    def _remove_hooks(self, static: bool = False) -> None:
        for handle in self._dyn_handles:
            handle.remove()
        self._dyn_handles.clear()
        self._dyn_key = None
        if static:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._loss_hooked = False

    def _steps_by_optimizer(self) -> bool:
        return self.optimizer is not None and self.mode == ModeKeys.TRAIN

    def _root_pre_hook(
        self,
        module: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        if _tracing():  # torch.compile traces the model: run this hook outside its graph
            if _breaks_allowed():
                _eager(self._root_pre_hook, module, args, kwargs)
            else:  # fullgraph=True: only a note that a forward pass ran (an attribute store)
                self._hidden_forward = True
            return
        if module is not self.root or _recomputing():  # a copy (copy.deepcopy) shares its hooks
            return
        if self.dead:
            if self._handles:  # safe here: not inside the optimizer's hook loop
                self._remove_hooks(static=True)
            return
        try:
            if (
                not self._no_grad_said
                and self._steps_by_optimizer()
                and not torch.is_grad_enabled()
            ):
                self._said_no_grad()
            if self._steps_by_optimizer() and self._open:
                if self._forward_index == 0 and not self._first_done and self._restart_forward():
                    pass  # the step's first forward pass raised: this one is its first
                else:
                    self._forward_index += 1
                    if self._forward_index:  # another micro-batch (or closure call)
                        return
                    # else the first forward pass of a step its optimizer opened (a closure's)
            else:
                if self._open:
                    self._finalize_step()
                self._open_step()
            if self._saving:
                with torch.no_grad():
                    for key, value in _argument_tensors(args, kwargs, self._root_positions):
                        self._capture(f"{self.root_name}_input_{key}", value, defer=True)
        except Exception as exc:
            self._fail(exc, "recording the model input")

    def _said_no_grad(self) -> None:
        """A forward pass under no_grad in TRAIN mode with an optimizer: most likely
        validation without ``set_mode(EVAL)``, which would be recorded as training (once)."""
        self._no_grad_said = True
        _report(
            "pytest-modelrules Recorder: the model ran under torch.no_grad() (or "
            "inference_mode) in TRAIN mode: if this is validation, call "
            "rec.set_mode(modes.EVAL) before it (and rec.set_mode(modes.TRAIN) after): in "
            "TRAIN mode its batches belong to the next optimizer step, and their loss is "
            "recorded as that step's training loss (docs/recording.md#steps)"
        )

    def _no_forward_seen(self) -> None:
        """A saving TRAIN step ended at ``optimizer.step()`` with no forward pass of the
        recorded model: its training step calls another module (a LightningModule's
        ``self.net``, say). Steps then hold the weights and gradients alone, which is said
        once, instead of a run that silently lacks its loss, inputs and activations."""
        if self._no_forward_said:
            return
        self._no_forward_said = True
        _report(
            "pytest-modelrules Recorder: optimizer.step() ended a step in which the recorded "
            f"model ({type(self.root).__name__}) ran no forward pass of its own: a step records "
            "the loss, the inputs and the activations of that model's forward pass, so this "
            "run holds its weights and gradients only. If your training step calls another "
            "module, give the Recorder that one (with PyTorch Lightning, pl_module.net where "
            "training_step calls self.net(x)); calls under torch.func transforms (vmap, grad) "
            "are no forward pass (docs/recording.md)"
        )

    def _forward_was_hidden(self, where: str) -> None:
        """A forward pass ran compiled with ``fullgraph=True``, where the model's hooks cannot
        leave the graph: steps are kept by the loss and the optimizer's hooks, and what only
        the model's hooks see is not recorded (said once)."""
        self._hidden_forward = False
        if not self._hidden_said:
            self._hidden_said = True
            _report(
                "pytest-modelrules Recorder: the model runs under torch.compile with "
                f"fullgraph=True (seen {where}), where its hooks cannot leave the compiled "
                "graph: steps are kept by the hooks of the loss module and the optimizer (a "
                "Recorder given neither records none), and the model's input and outputs, "
                "its ReLU outputs and a loss computed inside the compiled function are not "
                "recorded. Compile without fullgraph=True to record them (docs/recording.md)"
            )

    def _root_hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if _tracing():  # torch.compile: outside its graph, on steps that save only
            if self._graph_saving and _breaks_allowed():
                _eager(self._root_hook, module, args, output)
            return
        if self._graph_counts:  # the ReLU counts of a compiled forward pass
            taken = list(self._graph_counts)
            self._graph_counts.clear()  # in place: the compiled code appends to this list
            if not (self.dead or self._forward_index or module is not self.root):
                self._take_graph_counts(taken)
        # a step that saves nothing returns at once (its forward passes need no restart:
        # _restart_forward has nothing to drop there)
        if self.dead or not self._saving or self._forward_index or module is not self.root:
            return
        if _recomputing():
            return
        self._first_done = True
        try:
            if self._relu_batch:
                self._count_relu_batch(handoff=False)
            with torch.no_grad():
                for i, value in _flatten_tensors(output):
                    name = f"{self.root_name}_output_{i}"
                    if (
                        self.loss_module is None
                        and self._losses_idx is not None
                        and value.ndim == 0
                        and value.is_floating_point()
                    ):
                        losses = self._collections[self._losses_idx]
                        if name not in losses.names:  # the model computes its own loss
                            losses.names.add(name)
                            self._membership.pop(name, None)
                            self._spec_cache.clear()
                            self._relu_plan.clear()
                            self._param_plans.clear()
                            self._marked.discard(name)
                    self._capture(name, value, defer=True)
            if not (self._loss_hooked and self.mode == ModeKeys.TRAIN):
                self._handoff()
            # else with the loss's, right after: one wake of the thread less a step (in
            # training autograd keeps the ReLU outputs alive until backward anyway)
        except Exception as exc:
            self._fail(exc, "recording the model output")

    def _loss_hook(
        self,
        module: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        # the step's first loss call, whichever forward pass it follows: with gradient
        # accumulation the first micro-batch's; with two passes before the loss (R-Drop, two
        # views of a batch) the first pass's output's (later calls: already in _captured)
        if _tracing():  # a loss inside a compiled function: outside its graph, when saving
            if self._graph_saving and _breaks_allowed():
                _eager(self._loss_hook, module, args, kwargs, output)
            return
        if self._hidden_forward:
            # the model's forward pass ran compiled without its hooks: its step begins here
            if self.dead or module is not self.loss_module:
                return
            self._forward_was_hidden("at the loss")
            self._root_pre_hook(self.root, ())
            self._first_done = True  # the pass returned: a next one is a micro-batch
        if self.dead or self._forward_index < 0 or not self._saving:
            return
        if module is not self.loss_module:
            return
        if _recomputing():
            return
        try:
            with torch.no_grad():
                for key, value in _argument_tensors(args, kwargs, self._loss_positions):
                    self._capture(f"{self.loss_name}_input_{key}", value, defer=True)
                for i, value in _flatten_tensors(output):
                    self._capture(f"{self.loss_name}_output_{i}", value, defer=True)
            self._handoff()
        except Exception as exc:
            self._fail(exc, "recording the loss")

    def _make_relu_hooks(self, base: str, module: torch.nn.Module, inputs: bool, outputs: bool):
        key = id(module)

        def copy_key(mod: torch.nn.Module) -> Any:
            """The call counter's key of a copy of ``module`` that calls its hooks, or None.
            DataParallel's replicas (copies of the module, one a GPU, run in threads) share its
            hooks: each counts its own calls, and the positive counts of the replicas' call k
            add up on the host (host.unpack) into one tensor over the whole batch; the general
            path (_capture) keeps the first replica's. A copy made otherwise (copy.deepcopy:
            an EMA or teacher model) shares them too, and is not the model: None, ignored."""
            return (key, id(mod)) if getattr(mod, "_is_replica", False) else None

        def pre_hook(mod: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if _tracing():  # torch.compile: outside its graph, where the step saves inputs
                if self._graph_relu == "eager" and _breaks_allowed():
                    _eager(pre_hook_ref(), mod, args)
                return
            if self.dead or self._forward_index or not self._saving or _recomputing():
                return
            try:
                calls_key = key if mod is module else copy_key(mod)
                if calls_key is None:
                    return
                k = self._relu_in_calls.get(calls_key, 0)
                self._relu_in_calls[calls_key] = k + 1
                if args and isinstance(args[0], torch.Tensor):
                    with torch.no_grad():
                        self._capture(f"{base}_input_{k}", args[0])
            except Exception as exc:
                self._fail(exc, "recording a ReLU input")

        def hook(mod: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            # every ReLU call of a saving step runs this: it is kept to a dictionary lookup and,
            # for the default positive_fraction, two kernels or a place in the step's Triton
            # launch (no autograd, autocast or no_grad state to touch: a comparison's result
            # never requires grad); a segment recomputed in backward (checkpointing) is skipped
            if _tracing():  # torch.compile: the counts in its graph, or the hook outside it
                relu = self._graph_relu
                if relu == "counts":
                    if mod is module and isinstance(output, torch.Tensor) and output.ndim:
                        # a list append: Dynamo replays it after the graph, with its output
                        counts = output.gt(0).sum(0, dtype=torch.float32)
                        self._graph_counts.append((key, output.shape[0], counts))
                elif relu == "eager" and _breaks_allowed():
                    _eager(hook_ref(), mod, args, output)
                return
            if self.dead or self._forward_index or not self._saving or _recomputing():
                return
            try:
                calls_key = key if mod is module else copy_key(mod)
                if calls_key is None:
                    return
                replica = calls_key is not key
                k, plan = self._relu_call(calls_key, key, base)
                if plan is False or not isinstance(output, torch.Tensor):
                    return
                if plan is True or output.ndim == 0:
                    with torch.no_grad():
                        self._capture(f"{base}_output_{k}", output)
                    return
                name, stored = plan
                seen = (name, id(mod)) if replica else name
                if seen in self._captured:
                    return
                self._captured.add(seen)
                # queued for one launch of the Triton kernel at the end of the forward pass
                # (_count_relu_batch), or for the Recorder's thread (offload.py); where both
                # sets are empty (a CPU machine without Triton) no device is looked up
                on, defer = self._kernel_devices, self._defer
                if on or defer:
                    dev = "cuda" if output.is_cuda else output.device.type  # no device object
                    if dev in defer or (dev in on and kernels.readable(output)):
                        if output.is_inference() or stored in self._count_at_call:
                            # no version counter to check, or changed in place before: now
                            now = self._count_group(output.device, [(output, stored)])
                            self._pending.extend(now)
                        elif replica:  # the replicas' threads queue one at a time
                            with self._replica_lock:
                                self._queue_relu(output, stored)
                        else:
                            self._queue_relu(output, stored)
                        return
                self._pending.append(_unit_counts(output, stored))
            except Exception as exc:
                self._fail(exc, "recording a ReLU output")

        # the hooks call themselves through weak references: a closure that held itself would
        # be a reference cycle, which keeps the Recorder (and the model, a DDP model's process
        # group with it) alive until a garbage collection - at exit, too late for gloo's threads
        pre_hook_ref, hook_ref = weakref.ref(pre_hook), weakref.ref(hook)
        self._relu_bases[key] = base
        self._hook_module(module, pre_hook if inputs else None, hook if outputs else None)

    def _make_activation_hooks(
        self, base: str, module: torch.nn.Module, inputs: bool, outputs: bool
    ) -> None:
        """Hooks recording a Tanh's or Sigmoid's calls (:data:`ACTIVATIONS`) through the
        general path (:meth:`_capture`: full tensors and / or reductions, as the collections
        that select ``<base>_input_<k>`` / ``<base>_output_<k>`` say), numbered by call
        within the step as the ReLUs' are. A DataParallel replica counts its own calls (the
        first replica's value of a call is kept); another copy of the module (an EMA or
        teacher model made with copy.deepcopy) is not the model and is ignored."""
        key = id(module)

        def record(mod: torch.nn.Module, is_input: bool, value: Any) -> None:
            if self.dead or self._forward_index or not self._saving or _recomputing():
                return
            try:
                if mod is module:
                    calls_key: Any = key
                elif getattr(mod, "_is_replica", False):
                    calls_key = (key, id(mod))
                else:
                    return
                k = self._act_calls.get((calls_key, is_input), 0)
                self._act_calls[(calls_key, is_input)] = k + 1
                if isinstance(value, torch.Tensor):
                    with torch.no_grad():
                        self._capture(f"{base}_{'input' if is_input else 'output'}_{k}", value)
            except Exception as exc:
                self._fail(exc, f"recording {base}'s {'input' if is_input else 'output'}")

        def pre_hook(mod: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if _tracing():  # torch.compile: outside its graph, on steps that save these
                if self._graph_acts and _breaks_allowed():
                    _eager(pre_hook_ref(), mod, args)
                return
            record(mod, True, args[0] if args else None)

        def hook(mod: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if _tracing():
                if self._graph_acts and _breaks_allowed():
                    _eager(hook_ref(), mod, args, output)
                return
            record(mod, False, output)

        pre_hook_ref, hook_ref = weakref.ref(pre_hook), weakref.ref(hook)  # no cycle: above
        self._hook_module(module, pre_hook if inputs else None, hook if outputs else None)

    def _hook_module(
        self,
        module: torch.nn.Module,
        pre_hook: Callable[..., Any] | None,
        hook: Callable[..., Any] | None,
    ) -> None:
        """Install an activation module's forward pre-hook and / or forward hook for the run
        (guarded: a step that saves nothing returns before calling them)."""
        if pre_hook is not None:
            self._handles.append(
                module.register_forward_pre_hook(_Hook(_guarded(pre_hook, self, "saving")))
            )
        if hook is not None:
            self._handles.append(
                module.register_forward_hook(_Hook(_guarded(hook, self, "saving")))
            )

    def _saves_activations(self) -> bool:
        """Whether the collections saving now take a Tanh's or Sigmoid's tensor."""
        return any(
            self._spec(f"{base}_{which}_0") is not None
            for base, _module in self._acts
            for which in ("input", "output")
        )

    def _queue_relu(self, output: torch.Tensor, stored: str) -> None:
        """Queue a ReLU output for the end of the forward pass (:meth:`_count_relu_batch`),
        or count the queue now past RELU_QUEUE_BYTES."""
        self._relu_batch.append((output, output._version, stored))
        self._relu_batch_bytes += output.numel() * output.element_size()
        if self._relu_batch_bytes > RELU_QUEUE_BYTES:
            self._count_relu_batch()

    def _clear_graph_state(self) -> None:
        """No step open for a compiled forward pass: its traced hooks do nothing (the flags
        their guards read), and no counts wait."""
        self._graph_saving, self._graph_relu, self._graph_acts = False, None, False
        self._graph_counts.clear()

    def _take_graph_counts(self, taken: list[tuple[int, int, torch.Tensor]]) -> None:
        """The positive counts a compiled forward pass computed at its ReLU calls, in call
        order: each call numbered and named as the eager hook does it, then queued as its
        counts (the eager path's float32 sums, bit for bit)."""
        try:
            for key, batch, counts in taken:
                _k, plan = self._relu_call(key, key, self._relu_bases[key])
                if not isinstance(plan, tuple):  # not saved, or not counts alone (_graph_plan)
                    continue
                name, stored = plan
                if name in self._captured:
                    continue
                self._captured.add(name)
                self._pending.append(_counts_entry(counts.reshape(-1), stored, batch))
        except Exception as exc:
            self._fail(exc, "recording the ReLU outputs of a compiled model")

    def _graph_plan(self) -> str | None:
        """What a compiled forward pass of this step does at its ReLU calls: None (nothing
        saved), "counts" (each wanted output saves its positive fraction alone, no input is
        wanted: counted in the graph) or "eager" (the hooks run outside the graph)."""
        plan = None
        for base, _module in self._relus:
            if self._spec(f"{base}_input_0") is not None:
                return "eager"
            spec = self._spec(f"{base}_output_0")
            if spec is not None:
                if spec != (False, _POSITIVE_FRACTION_ONLY):
                    return "eager"
                plan = "counts"
        return plan

    def _relu_call(self, calls_key: Any, key: int, base: str) -> tuple[int, Any]:
        """Number a call of the ReLU module ``key`` (its copy's: ``calls_key``) in this step
        and give its plan (:meth:`_relu_output_plan`, kept per call index)."""
        calls = self._relu_calls
        k = calls.get(calls_key, 0)
        calls[calls_key] = k + 1
        plan = self._relu_plan.get((key, k))
        if plan is None:
            plan = self._relu_output_plan(base, key, k)
        return k, plan

    def _relu_output_plan(self, base: str, key: int, k: int) -> Any:
        """What call ``k`` of a ReLU module saves while the current collections save: False
        (nothing), True (the general path, :meth:`_capture`) or, for positive_fraction alone,
        (tensor name, layout of its counts)."""
        name = f"{base}_output_{k}"
        spec = self._spec(name)
        plan: Any
        if spec is None:
            plan = False
        elif spec == (False, _POSITIVE_FRACTION_ONLY):
            plan = (name, reduction_tensor_name(name, "positive_fraction", False))
            if name not in self._marked:
                self._mark_seen(name)
        else:
            plan = True
        self._relu_plan[(key, k)] = plan
        return plan

    def _count_relu_batch(self, handoff: bool = True) -> None:
        """Count the queued ReLU outputs: with the Triton kernel, one launch per device and
        dtype (:meth:`_count_group`), or hand them to the Recorder's thread on the devices in
        ``offload.DEFER_DEVICES`` (at once with ``handoff``, else with the caller's next
        :meth:`_handoff`). An output changed in place since its ReLU call (in training
        autograd would refuse it in backward anyway) is not recorded at this step, with one
        warning, and is counted at its call from then on."""
        batch, self._relu_batch, self._relu_batch_bytes = self._relu_batch, [], 0
        groups: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, int, str]]] = {}
        for x, version, name in batch:
            if x._version != version:
                self._count_at_call.add(name)
                _report(
                    f"pytest-modelrules Recorder: {name} was changed in place after its ReLU "
                    f"call, before the end of the forward pass; not recorded at global step "
                    f"{self.global_step}, counted at its call from now on"
                )
                continue
            groups.setdefault((x.device, x.dtype), []).append((x, version, name))
        deferred = False
        with torch.no_grad():
            for (device, _dtype), entries in groups.items():
                if device.type in self._defer:
                    self._items.append(("counts", device, [(x, name) for x, _, name in entries]))
                    self._checks.extend(
                        (weakref.ref(x), version, (name,), ("count", name))
                        for x, version, name in entries
                    )
                    self._item_devices.add(device)
                    deferred = True
                else:  # queued by the hook only where the kernel reads them
                    pairs = [(x, name) for x, _, name in entries]
                    self._pending.extend(self._count_group(device, pairs, known_readable=True))
        if deferred and handoff:
            self._handoff()

    def _count_group(
        self,
        device: torch.device,
        entries: list[tuple[torch.Tensor, str]],
        known_readable: bool = False,
    ) -> list[tuple[torch.Tensor, Any]]:
        """The pending counts of ReLU outputs of one device and dtype: one Triton launch for
        those the kernel reads where it is on (``triton``), the torch
        operations for the rest. If the kernel fails, the torch operations count these and
        every later batch on that device type, with one warning."""
        out: list[tuple[torch.Tensor, Any]] = []
        rest = entries
        if device.type in self._kernel_devices:
            if known_readable:
                ours, rest = entries, []
            else:  # one readability check per output
                ours, rest = [], []
                for entry in entries:
                    (ours if kernels.readable(entry[0]) else rest).append(entry)
            if ours:
                try:
                    counts = kernels.positive_counts_c_order([x for x, _ in ours], checked=True)
                except Exception as exc:  # Triton missing or failing: torch from now on
                    _kernel_failed(self._kernel_devices, device, "positive-count", exc)
                    rest = entries
                else:
                    items = []
                    for x, name in ours:
                        n = x.shape[0]
                        items.append((name, n, x.numel() // n))
                    out.append((counts, _Counts(tuple(items))))
        out.extend(_unit_counts(x, name) for x, name in rest)
        return out

    def _handoff(self) -> None:
        """Hand the items gathered since the last hand-off to the Recorder's thread, with an
        event per CUDA device marking where the training's queue stands (offload.py)."""
        if not self._items:
            return
        items, checks, devices = self._items, self._checks, self._item_devices
        self._items, self._checks, self._item_devices = [], [], set()
        work = offload.Work(items, checks, offload.mark_point(devices))
        if self._param_checks:
            work.param_checks, self._param_checks = self._param_checks, []
        self._works.append(work)
        self._submit_launch(self._launch, work)

    def _launch(self, work: offload.Work) -> None:
        """On the Recorder's thread: compute (launch, on a GPU's side stream, after the
        training stream's hand-off point) the reductions, copies and counts of ``work``."""
        try:
            if self.dead:
                return
            by_device: dict[torch.device, list[tuple[Any, ...]]] = {}
            for item in work.items:
                device = item[2].device if item[0] == "capture" else item[1]
                by_device.setdefault(device, []).append(item)
            with torch.no_grad():
                for device, items in by_device.items():
                    with offload.on_side_stream(device):
                        stream = None
                        if device.type == "cuda":
                            stream = torch.cuda.current_stream(device)
                            ready = work.ready.get(device)
                            if ready is not None:
                                stream.wait_event(ready)
                        for item in items:
                            if item[0] == "counts":
                                work.out.extend(self._count_group(device, item[2]))
                                read = [x for x, _ in item[2]]
                            elif item[0] == "params":
                                # held by work.param_checks until _settle makes training's
                                # stream wait for these reads: no record_stream needed
                                _, _, members, reductions, fused, layouts = item
                                self._param_rows(members, reductions, fused, layouts, work.out)
                                continue
                            else:
                                _, name, x, full, reductions, names = item
                                self._compute(name, x, full, reductions, names, work.out)
                                read = [x]
                            if stream is not None:  # not reused by training before it is read
                                for x in read:
                                    x.record_stream(stream)
                        if stream is not None:
                            done = torch.cuda.Event()
                            done.record(stream)
                            work.done[device] = done
        finally:
            work.items = []  # the thread holds no tensor of training's beyond this point
            work.launched.set()

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            if _tracing():  # a compiled backward pass: outside its graph
                if self._graph_saving and _breaks_allowed():
                    _eager(hook_ref(), grad)
                return
            if self.dead or not self._saving:
                return
            try:
                with torch.no_grad():
                    prev = self._grad_acc.get(name)
                    self._grad_acc[name] = grad.detach().clone() if prev is None else prev + grad
            except Exception as exc:
                self._fail(exc, "recording a gradient")

        hook_ref = weakref.ref(hook)  # no cycle (see _make_relu_hooks)
        return hook

    def _opt_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        """Before ``optimizer.step()``: the step's gradients. A step called with a closure gets
        its closure wrapped, and the gradients are read once its first evaluation has run
        (the optimizer reads them then): with no forward pass before it (LBFGS; the optimizer
        evaluates the model itself) that evaluation is the step's forward pass, recorded as
        any; after one (PyTorch Lightning's last micro-batch of gradient accumulation, whose
        backward adds to the gradients inside the closure) it is another micro-batch. Later
        evaluations (a line search) are not recorded. Returns the new (args, kwargs) then, as
        optimizer step pre-hooks may."""
        if _tracing():  # a compiled optimizer step (or training step): outside its graph
            if _breaks_allowed():
                return _eager(self._opt_pre_hook, optimizer, args, kwargs)
            return None
        if self.dead or self.mode != ModeKeys.TRAIN:
            return None
        try:
            closure = _closure_of(args, kwargs)
            if not self._open:
                if self._hidden_forward:  # a compiled forward pass that kept out its hooks
                    self._forward_was_hidden("at the optimizer's step")
                self._open_step()
                if closure is not None:
                    self._forward_index = -1  # the closure's first forward pass makes it 0
                    self._grads_pending = bool(self._saving)
                    return _with_closure(args, kwargs, self._first_evaluation(closure))
            if self._saving and closure is not None:
                # what was handed off (the weights) is read before the optimizer changes
                # them, even by an optimizer that never calls the closure
                self._handoff()
                if self._works:
                    self._settle()
                self._grads_pending = True
                return _with_closure(args, kwargs, self._first_evaluation(closure))
            if self._saving:
                self._capture_gradients()
        except Exception as exc:
            self._fail(exc, "recording gradients")
        return None

    def _capture_gradients(self) -> None:
        # the optimizer is about to change the weights in place: what was handed off is read
        # first (on a GPU: its stream waits for the side stream's reads)
        self._handoff()
        if self._works:
            self._settle()
        with torch.no_grad():
            self._capture_params(
                "gradients",
                self._grad_tensor_names,
                [p.grad for p in self._param_tensors],
                defer=True,
            )
        self._handoff()  # the thread reduces them while the optimizer steps

    def _first_evaluation(self, closure: Callable[..., Any]) -> Callable[..., Any]:
        """``closure``, recording the gradients once its first call has computed them."""
        first = True

        def evaluate(*args: Any, **kwargs: Any) -> Any:
            nonlocal first
            result = closure(*args, **kwargs)
            if first:
                first = False
                if self._grads_pending and not self.dead and self.mode == ModeKeys.TRAIN:
                    self._grads_pending = False
                    try:
                        self._capture_gradients()
                    except Exception as exc:
                        self._fail(exc, "recording gradients")
            return result

        return evaluate

    def _opt_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _tracing():  # a compiled optimizer step (or training step): outside its graph
            if _breaks_allowed():
                _eager(self._opt_post_hook, optimizer, args, kwargs)
            return
        if self.dead or self.mode != ModeKeys.TRAIN:
            return
        try:
            if self._grads_pending:  # an optimizer that took a closure and never called it
                self._grads_pending = False
                if self._saving:
                    self._capture_gradients()
            if self._saving and not self._first_done and not self._hidden_said:
                self._no_forward_seen()
            self._finalize_step()
        except Exception as exc:
            self._fail(exc, "writing a step")

    # -- steps ---------------------------------------------------------------------------------

    def _open_step(self) -> None:
        self._open = True
        self._forward_index = 0
        self._first_done = False
        self._grads_pending = False
        mode_step = self._mode_steps.get(self.mode, 0)
        mode = self.mode
        saving = frozenset(
            i for i, c in enumerate(self._collections) if c.save_config.should_save(mode, mode_step)
        )
        changed = saving != self._spec_saving
        if changed:
            self._spec_cache.clear()
            self._marked.clear()
            self._relu_plan.clear()
            self._param_plans.clear()
            self._spec_saving = saving
        self._saving = saving
        if changed:  # (_spec reads _saving)
            self._spec_graph_relu = self._graph_plan() if saving else None
            self._spec_graph_acts = bool(saving) and self._saves_activations()
        self._graph_saving = bool(saving)
        self._graph_counts.clear()
        self._graph_relu = self._spec_graph_relu
        self._graph_acts = self._spec_graph_acts
        key = (saving, self._steps_by_optimizer())
        if self._dyn_key is not None and self._dyn_key != key:
            self._remove_hooks()
        if self._lazy and not any(isinstance(p, _UNINITIALIZED) for p in self._lazy):
            # a lazy module's first forward pass gave its parameters values (in place): the
            # steps from now on see them, and the gradient hooks are installed for them too
            self._lazy = []
            self._param_plans.clear()
            if self._dyn_key is not None:
                self._remove_hooks()
        if not saving:
            return
        self._captured.clear()
        self._plans_done.clear()
        self._relu_calls.clear()
        self._relu_in_calls.clear()
        self._act_calls.clear()
        if self._dyn_key is None:
            self._install_step_hooks()
            self._dyn_key = key
        with torch.no_grad():
            # handed off only where an optimizer step ends the step: its pre-hook is the last
            # moment before they change, and waits for the thread's reads
            tensors = self._param_tensors
            if self._lazy:  # not yet initialized: like a missing gradient, not recorded
                tensors = [None if isinstance(p, _UNINITIALIZED) else p for p in tensors]
            self._capture_params(
                "weights", self._param_names, tensors, defer=self._steps_by_optimizer()
            )
        self._marks = (
            len(self._pending), len(self._items), len(self._checks), len(self._works),
            frozenset(self._captured),
        )  # fmt: skip

    def _restart_forward(self) -> bool:
        """The step's first forward pass raised (a batch skipped after an out-of-memory error,
        say) and another begins: drop what the failed pass captured, so that the new one is
        the step's first (its input, ReLU outputs and loss recorded together). False where
        part of it was already handed to the Recorder's thread: the new pass is then a later
        micro-batch, as in a step whose first pass returned."""
        if not self._saving:
            return True
        pending, items, checks, works, captured = self._marks
        if len(self._works) != works:
            return False
        del self._pending[pending:]
        del self._items[items:]
        del self._checks[checks:]
        self._relu_batch, self._relu_batch_bytes = [], 0
        self._captured = set(captured)
        self._relu_calls.clear()
        self._relu_in_calls.clear()
        self._act_calls.clear()
        return True

    def _install_step_hooks(self) -> None:
        """The hooks of a step that saves something, without an optimizer: the gradient hooks
        of the parameters some saving collection wants (a collection that saves nothing costs
        nothing). The ReLUs' and the loss's stay installed (:meth:`_install_static_hooks`)."""
        if not self._steps_by_optimizer():
            for gname, p in self._grad_names:
                if isinstance(p, _UNINITIALIZED):  # hooked once it has a value (_open_step)
                    continue
                if p.requires_grad and self._could_save(gname):
                    self._dyn_handles.append(p.register_hook(_guarded(self._grad_hook(gname))))

    def _could_save(self, *names: str) -> bool:
        return any(self._spec(n) is not None for n in names)

    def _could_ever_save(self, *names: str) -> bool:
        """Whether some collection takes one of ``names`` at some step (the hooks installed
        for the whole run)."""
        collections = self._collections
        return any(collections[i].save_config.saves_any() for n in names for i in self._members(n))

    def _finalize_step(self) -> None:
        if not self._open:
            return
        try:
            if self._saving:
                # the step's hooks stay installed for a next step that saves the same things
                # (_open_step removes them otherwise); they do nothing between steps
                if self._grad_acc:
                    with torch.no_grad():
                        names = tuple(self._grad_acc)
                        self._capture_params(names, list(names), list(self._grad_acc.values()))
                    self._grad_acc.clear()
                if self._relu_batch:  # ReLUs called outside the model's forward, or it raised
                    self._count_relu_batch(handoff=False)
                self._handoff()
                self._flush()
        finally:
            self._open = False
            self._saving = frozenset()
            self._clear_graph_state()
            self._mode_steps[self.mode] = self._mode_steps.get(self.mode, 0) + 1
            self.global_step += 1

    def _discard_step(self) -> None:
        """Leave TRAIN inside an optimizer's step (validation in the middle of gradient
        accumulation, or after micro-batches the loop never steps): what the step captured is
        dropped and no step is counted. The optimizer step that follows (back in TRAIN) ends
        the step, opened again by its next forward pass; without one, none is recorded."""
        try:
            # wait for what went to the Recorder's thread, as at a step's end: training may
            # change or free it from here on (the settled hand-offs were waited for already)
            _wait_launched(self._works)
            for work in self._works:  # its gradients are not held past the step
                work.param_checks = []
        finally:
            self._works, self._settled, self._dropped = [], [], set()
            self._drop_captured()
            self._open = False
            self._saving = frozenset()

    # -- capture -------------------------------------------------------------------------------

    def _members(self, name: str) -> tuple[int, ...]:
        found = self._membership.get(name)
        if found is None:
            found = tuple(i for i, c in enumerate(self._collections) if c.matches(name))
            self._membership[name] = found
        return found

    def _spec(self, name: str) -> tuple[bool, tuple[tuple[str, bool], ...]] | None:
        """(store the full tensor?, reductions) for ``name`` at this step; None: skip it."""
        if name in self._spec_cache:
            return self._spec_cache[name]
        full = False
        reductions: list[tuple[str, bool]] = []
        for i in self._members(name):
            if i in self._saving:
                coll = self._collections[i]
                full = full or coll.full
                reductions.extend(r for r in coll.reductions if r not in reductions)
        spec = (full, tuple(reductions)) if (full or reductions) else None
        self._spec_cache[name] = spec
        return spec

    def _capture(self, name: str, tensor: torch.Tensor, defer: bool = False) -> None:
        """Queue the full value and/or the reductions of a tensor for this step (called under
        ``torch.no_grad()``: what it computes never joins the autograd graph). With ``defer``
        (a tensor training does not change after its hook) on a device in
        ``offload.DEFER_DEVICES``, the Recorder's thread computes them."""
        if name in self._captured:
            return
        spec = self._spec(name)
        if spec is None:
            return
        self._captured.add(name)
        full, reductions = spec
        x = tensor
        if (
            reductions
            and (x.ndim < 2 or not x.is_floating_point())
            and set(reductions) <= _IMAGE_ONLY
        ):
            # labels or token ids passed to the model (a model that computes its own loss),
            # a scalar (the Hugging Face Trainer's num_items_in_batch): channel means mean
            # nothing there, and the class rules need the exact values
            full, reductions = True, ()
        if name not in self._marked:
            self._mark_seen(name)
        names = self._reduction_names(name, reductions) if reductions else []
        if (
            defer
            and self._defer
            and x.device.type in self._defer
            and name not in self._at_call
            and not x.is_inference()
        ):
            stored = (*names, name) if full else tuple(names)
            self._items.append(("capture", name, x, full, reductions, names))
            self._checks.append((weakref.ref(x), x._version, stored, ("capture", name)))
            self._item_devices.add(x.device)
            return
        self._compute(name, x, full, reductions, names, self._pending)

    @staticmethod
    def _compute(
        name: str,
        x: torch.Tensor,
        full: bool,
        reductions: tuple[tuple[str, bool], ...],
        names: list[str],
        pending: list[tuple[torch.Tensor, Any]],
    ) -> None:
        """Append to ``pending`` the reductions (stored as ``names``) and/or the full copy of
        ``x`` (on the training thread or the Recorder's)."""
        if reductions:
            if len(reductions) == 1 and reductions[0] in _AUTOCAST_FREE:
                values = compute_many(x, reductions)
            else:
                with _no_autocast(x.device.type):
                    values = compute_many(x, reductions)
            for (red, _absolute), tname, value in zip(reductions, names, values):
                # each in its own dtype: the host casts it to the stored one (host.unpack)
                pending.append((value.reshape(-1), _Red([(tname, red, tuple(value.shape))])))
        if full:
            pending.append(_full_copy(name, x))

    def _reduction_names(self, name: str, reductions: tuple[tuple[str, bool], ...]) -> list[str]:
        """The stored names of ``name``'s reductions (cached: the same every step)."""
        key = (name, reductions)
        names = self._layouts.get(key)
        if names is None:
            names = [reduction_tensor_name(name, red, absolute) for red, absolute in reductions]
            self._layouts[key] = names
        return names

    def _capture_params(
        self,
        kind: Any,
        names: list[str],
        tensors: list[torch.Tensor | None],
        defer: bool = False,
    ) -> None:
        """Like :meth:`_capture` for a list of parameters (or gradients; None: no gradient):
        tensors that need the same batchable reductions are reduced together by
        ``compute_batch`` (small tensors first, the order it computes them in). What to do
        with each tensor is worked out once (a :class:`_ParamPlan`) while the same collections
        save and the same tensors are present. With ``defer``, on a device in
        ``offload.DEFER_DEVICES``, the Recorder's thread reduces the groups (the caller waits
        for it before the tensors change: :meth:`_settle`). Called under ``torch.no_grad()``."""
        missing = any(t is None for t in tensors)
        key = (kind, tuple(t is None for t in tensors)) if missing else kind
        if key in self._plans_done:
            return
        self._plans_done.add(key)
        plan = self._param_plans.get(key)
        if plan is None:
            plan = self._param_plans[key] = self._plan_params(names, tensors)
        pending = self._pending
        defer = defer and bool(self._defer) and kind not in self._params_at_call
        for reductions, idxs, fused, row_layouts in plan.groups:
            members = tensors if idxs is None else [tensors[i] for i in idxs]
            device = members[0].device  # type: ignore[union-attr]
            if defer and device.type in self._defer:
                try:  # the parameters' versions, one list (an inference tensor has none)
                    versions = [t._version for t in members]  # type: ignore[union-attr]
                except RuntimeError:
                    pass
                else:
                    self._items.append(("params", device, members, reductions, fused, row_layouts))
                    self._param_checks.append((kind, members, versions, names, idxs, row_layouts))
                    self._item_devices.add(device)
                    continue
            self._param_rows(members, reductions, fused, row_layouts, pending)  # type: ignore[arg-type]
        for i in plan.full:
            pending.append(_full_copy(names[i], tensors[i]))  # type: ignore[arg-type]
        for i in plan.other:
            self._capture(names[i], tensors[i])  # type: ignore[arg-type]

    def _param_rows(
        self,
        members: list[torch.Tensor],
        reductions: tuple[tuple[str, bool], ...],
        fused: bool,
        row_layouts: list[_Scalars],
        pending: list[tuple[torch.Tensor, Any]],
    ) -> None:
        """Append to ``pending`` the rows of one parameter group (on the training thread or
        the Recorder's): one per reduction, laid out as ``row_layouts``. Norms only (the
        default weights and gradients) come from the Triton norms kernel where it is on and
        reads the group; if it fails, from torch operations, on that device type from then
        on, with one warning."""
        device = members[0].device
        norms = None
        if fused and device.type in self._norm_kernel_devices and kernels.norms_readable(members):
            try:
                norms = kernels.multi_norms(members, checked=True)
            except Exception as exc:  # Triton missing or failing: torch from now on
                _kernel_failed(self._norm_kernel_devices, device, "norms", exc)
        with _no_autocast(device.type):
            rows = compute_batch_rows(
                members, reductions, fused_norms=fused, sums_for_means=True, norms=norms
            )
        pending.extend(zip(rows, row_layouts))

    def _plan_params(self, names: list[str], tensors: list[torch.Tensor | None]) -> _ParamPlan:
        groups: dict[tuple[Any, ...], tuple[list[int], list[int]]] = {}
        numel_of: dict[int, int] = {}
        full: list[int] = []
        other: list[int] = []
        for i, (name, tensor) in enumerate(zip(names, tensors)):
            spec = self._spec(name) if tensor is not None else None
            if spec is None:
                continue
            assert tensor is not None
            wants_full, reductions = spec
            numel = numel_of[i] = tensor.numel()
            if not reductions or numel == 0 or not _batchable(reductions):
                other.append(i)
                continue
            if wants_full:
                full.append(i)
            if name not in self._marked:
                self._mark_seen(name)
            group = groups.setdefault((reductions, tensor.device), ([], []))
            group[0 if numel <= EXACT_LIMIT else 1].append(i)
        plan_groups = []
        for (reductions, device), (small, large) in groups.items():
            order = small + large
            # None: every tensor, in the given order (no list to build at each step)
            idxs = None if order == list(range(len(names))) else order
            fused = fused_norm_path(device, reductions)
            # each tensor's numel: an abs_mean of the multi-tensor norms is divided on the host
            numels = np.array([numel_of[i] for i in order], dtype=np.float64) if fused else None
            row_layouts = [
                _Scalars(
                    [reduction_tensor_name(names[i], red, absolute) for i in order],
                    STORED_DTYPE.get(red, "float64"),
                    numels if (red, absolute) == ("mean", True) else None,
                )
                for red, absolute in reductions
            ]
            plan_groups.append((reductions, idxs, fused, row_layouts))
        return _ParamPlan(plan_groups, full, other)

    def _mark_seen(self, name: str) -> None:
        for i in self._members(name):
            if i in self._saving:
                coll = self._collections[i]
                if name not in coll.seen:
                    coll.seen.add(name)
                    self._collections_dirty = True
        self._marked.add(name)

    def _flush(self) -> None:
        """Start moving the step's values to the CPU - one transfer per device: the values of
        each dtype concatenated, the dtypes' bytes concatenated (widest first, so each part
        stays aligned) - and hand them to the writer thread, which waits for the copies,
        splits them into arrays, writes, commits and tells the monitor.

        On a GPU the copy is asynchronous (pinned host memory) and followed by a CUDA event:
        the training thread never waits for the device here, so recording at every step does
        not stall the kernel queue; the writer thread waits on the event instead. A step with
        work handed to the Recorder's thread (offload.py) is transferred by that thread.
        """
        if self._works or self._settled:
            self._flush_handed_off()
            return
        writer = self.writer
        pending = self._pending
        if writer is None or not pending:
            return
        step, mode = self.global_step, self.mode
        mode_step = self._mode_steps.get(mode, 0)
        host: list[tuple[list[Any], torch.Tensor]] = []
        events: list[Any] = []
        with torch.no_grad():  # nothing pending requires grad; the concatenations never will
            self._transfer(pending, host, events)
        pending.clear()
        if not self._async:
            for event in events:
                event.synchronize()
            events = []
        job = (self._write_step, step, mode, mode_step, (events, host), self._collections_update())
        if self._launcher is not None:  # behind the steps it has yet to pass on: in order
            self._submit_launch(self._submit, *job)
        else:
            self._submit(*job)

    def _collections_update(self) -> dict[str, Any] | None:
        """The collections' JSON when a collection listed new names since the last step."""
        if not self._collections_dirty:
            return None
        self._collections_dirty = False
        return self._collections_json()

    def _settle(self) -> None:
        """Wait until the Recorder's thread is through with the step's hand-offs so far (on a
        GPU: has launched them, which it does while training computes), drop what was changed
        in place since its hand-off, and make training's stream wait for the side stream's
        reads: from here on training may change or free what was handed off. At the optimizer
        step (before it changes the weights) and at the end of the step."""
        works, self._works = self._works, []
        _wait_launched(works)  # also after a failure: the parameters are released past these reads
        self._settled.extend(works)
        if self.dead:
            for work in works:
                work.param_checks = []
            return
        changed_params: dict[str, list[str]] = {}
        for work in works:
            for ref, version, stored, (kind, name) in work.checks:
                x = ref()
                if x is None or x._version == version:  # a freed tensor was not changed
                    continue
                self._dropped.update(stored)
                (self._count_at_call if kind == "count" else self._at_call).add(name)
                _report(
                    f"pytest-modelrules Recorder: {name} was changed in place after its "
                    f"hook, before the end of the step; not recorded at global step "
                    f"{self.global_step}, recorded at its call from now on"
                )
            for kind, members, versions, names, idxs, row_layouts in work.param_checks:
                now = [t._version for t in members]
                if now == versions:
                    continue
                for j, (before, after) in enumerate(zip(versions, now)):
                    if before != after:
                        self._dropped.update(r.names[j] for r in row_layouts)
                        changed_params.setdefault(kind, []).append(
                            names[j if idxs is None else idxs[j]]
                        )
            work.param_checks = []  # the step's gradients are not held past it
        for kind, names in changed_params.items():
            self._params_at_call.add(kind)
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            _report(
                f"pytest-modelrules Recorder: {kind} changed in place after the step handed "
                f"them to the Recorder's thread ({shown}); their reductions are not recorded "
                f"at global step {self.global_step}, and the {kind} are reduced on the "
                "training thread from now on"
            )

    def _flush_handed_off(self) -> None:
        """End a step whose work went to the Recorder's thread: settle its hand-offs
        (:meth:`_settle`) and hand over the transfer and the write."""
        self._settle()
        works, self._settled = self._settled, []
        dropped, self._dropped = self._dropped, set()
        if self.dead or self.writer is None:
            self._pending.clear()
            return
        pending, self._pending = self._pending, []
        ready = offload.mark_point({flat.device for flat, _ in pending})
        step, mode = self.global_step, self.mode
        self._submit_launch(
            self._transfer_handed_off, step, mode, self._mode_steps.get(mode, 0),
            pending, works, ready, dropped, self._collections_update(),
        )  # fmt: skip

    def _transfer_handed_off(
        self,
        step: int,
        mode: ModeKeys,
        mode_step: int,
        pending: list[tuple[torch.Tensor, Any]],
        works: list[offload.Work],
        ready: dict[torch.device, Any],
        dropped: set[str],
        collections: dict[str, Any] | None,
    ) -> None:
        """On the launcher thread: the transfer of a step whose work it did (on a GPU's side
        stream, after training's position at the end of the step); then the writer thread
        writes it (this thread waits while 2 steps' writes are queued)."""
        for work in works:
            pending.extend(work.out)
        host: list[tuple[list[Any], torch.Tensor]] = []
        events: list[Any] = []
        if pending:
            with torch.no_grad():
                self._transfer(pending, host, events, ready)
        pending.clear()
        self._submit(self._write_step, step, mode, mode_step, (events, host), collections, dropped)

    def _transfer(
        self,
        pending: list[tuple[torch.Tensor, Any]],
        host: list[tuple[list[Any], torch.Tensor]],
        events: list[Any],
        ready: dict[torch.device, Any] | None = None,
    ) -> None:
        """Per device: concatenate the pending values of each dtype, their bytes into one
        buffer, and start its copy to the CPU (see :meth:`_flush`). With ``ready`` (the
        Recorder's thread), on the device's side stream once training's stream has passed
        ``ready``."""
        by_device: dict[torch.device, dict[torch.dtype, list[int]]] = {}
        for idx, (flat, _) in enumerate(pending):
            by_device.setdefault(flat.device, {}).setdefault(flat.dtype, []).append(idx)
        for device, by_dtype in by_device.items():
            side = ready is not None and device.type == "cuda"
            with offload.on_side_stream(device) if side else contextlib.nullcontext():
                if side:
                    stream = torch.cuda.current_stream(device)
                    event = ready.get(device)  # type: ignore[union-attr]
                    if event is not None:
                        stream.wait_event(event)
                    for idxs in by_dtype.values():  # training's tensors: kept until read
                        for i in idxs:
                            pending[i][0].record_stream(stream)
                segments = []
                blobs = []
                for dtype in sorted(by_dtype, key=_itemsize, reverse=True):
                    idxs = by_dtype[dtype]
                    parts = [pending[i][0] for i in idxs]
                    flat = torch.cat(parts) if len(parts) > 1 else parts[0]
                    blobs.append(flat.view(torch.uint8) if dtype != torch.uint8 else flat)
                    entries = [(pending[i][0].numel(), pending[i][1]) for i in idxs]
                    segments.append((_DTYPE_KEY[dtype], entries))
                blob = torch.cat(blobs) if len(blobs) > 1 else blobs[0]
                if device.type == "cuda":  # asynchronous, into pinned memory; waited for later
                    blob = blob.to("cpu", non_blocking=True)
                    # the writer thread waits on it (BLOCKING_WAIT)
                    event = torch.cuda.Event(blocking=self._async and BLOCKING_WAIT)
                    event.record(torch.cuda.current_stream(device))
                    events.append(event)
                else:
                    blob = blob.cpu()
                host.append((segments, blob))

    @staticmethod
    def _host_blobs(
        events: list[Any], host: list[tuple[list[Any], torch.Tensor]]
    ) -> list[tuple[list[Any], np.ndarray]]:
        """Wait for the step's device-to-host copies: each transferred buffer's segments
        and its bytes as a numpy view (no copy)."""
        for event in events:
            event.synchronize()
        return [(segments, blob.numpy()) for segments, blob in host]

    # -- the writer thread: disk (and upload) work overlaps training ---------------------------

    def _submit(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the writer thread (in order); blocks while 2 steps' writes
        are queued."""
        if self._async:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._worker_loop, args=(self._queue,), name="modelrules-recorder",
                    daemon=True,
                )  # fmt: skip
                self._thread.start()
            write = fn == self._write_step
            if write:
                self._write_slots.acquire()
            self._queue.put((fn, args, write))
        else:
            self._run_job(fn, args)

    def _submit_launch(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the launcher thread (in order): a step's device work and its
        transfer (offload.py). It never waits for the disk, so a slow write does not hold
        back the next step's work; it waits for a write slot like the training thread would."""
        if self._launcher is None:
            self._launcher = threading.Thread(
                target=self._worker_loop, args=(self._launch_queue,),
                name="modelrules-recorder-launch", daemon=True,
            )  # fmt: skip
            self._launcher.start()
        self._launch_queue.put((fn, args, False))

    def _worker_loop(self, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args, write = job
            try:
                self._run_job(fn, args)
            except BaseException:  # never let the thread die: the training loop would block
                self.dead = True
            finally:
                if write:
                    self._write_slots.release()

    def _run_job(self, fn: Any, args: tuple[Any, ...]) -> None:
        """Run a job of a Recorder thread. After an error only these still run: the writes of
        steps completed before it (unless the disk failed), the abort that follows them, and
        ``_launch``, which tells the training thread it is through."""
        if self.dead:
            if fn == self._submit:  # a write passed on by the launcher: the writer decides
                fn, args = args[0], args[1:]
                if fn == self._abort_writer or not self._disk_failed:
                    self._submit(fn, *args)
                return
            if fn == self._write_step and self._disk_failed:
                return
            if fn not in (self._write_step, self._abort_writer, self._launch):
                return
        try:
            fn(*args)
        except Exception as exc:
            name = getattr(fn, "__name__", "job")
            if name == "_submit":
                name, args = getattr(args[0], "__name__", "job"), args[1:]
            what = {"_launch": "computing a step's values on the Recorder's thread",
                    "_write_step": "writing step {}", "_transfer_handed_off": "moving step {} "
                    "to the host"}.get(name, name)  # fmt: skip
            at_step = "{}" in what
            if at_step:
                what = what.format(f"{args[0]} ({ModeKeys(args[1]).name} step {args[2]})")
            self._fail(exc, what, at_step)

    def _drain(self) -> None:
        """Wait until the threads have done everything submitted so far (the launcher first:
        it hands the writer its last writes)."""
        if self._launcher is not None:
            self._launch_queue.put(None)
            self._launcher.join()
            self._launcher = None
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _write_step(
        self,
        step: int,
        mode: ModeKeys,
        mode_step: int,
        copies: tuple[list[Any], list[Any]],
        collections: dict[str, Any] | None,
        dropped: set[str] | None = None,
    ) -> None:
        writer = self.writer
        assert writer is not None
        blobs = self._host_blobs(*copies)
        if isinstance(writer, ProcessWriter):  # the process splits and writes (GIL of its own)
            writer.write_blobs(step, mode, mode_step, blobs, collections, dropped)
        else:  # the same split and write, here (capture/host.py)
            write_blobs(writer, step, mode, mode_step, blobs, collections, dropped)
        if writer.remote and time.monotonic() - self._last_sync >= self.sync_interval_s:
            writer.sync()
            self._last_sync = time.monotonic()
        monitor = self.monitor
        if monitor is not None:
            try:
                monitor.on_step_committed(step)
            except Exception as exc:
                self._monitor_failed(exc)

    def _collections_json(self) -> dict[str, Any]:
        return {c.name: c.to_json() for c in self._collections}


__all__ = ["Recorder", "relu_tensor_base", "unwrap_model"]

# keep the modes module reachable as ``Recorder``'s users expect (rec.set_mode(modes.EVAL))
modes = _modes
