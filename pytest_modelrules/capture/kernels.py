"""Optional Triton kernels for the Recorder's two per-step reductions on a GPU that cost the
most host time: the per-ReLU positive counts (one launch for all the ReLU calls of a step) and
the weight and gradient norms (two launches per group of parameters).

The torch operations stay the reference, and the default on CPUs and where Triton is missing.

**Counts.** :func:`~pytest_modelrules.capture.reductions.positive_counts` (a comparison and a
sum over the batch) costs ResNet-18 68 operations on the training thread at a saving step (17
ReLU calls, four each), most of the Recorder's launches in a step that is bound by the host
launching kernels; and on a GPU the sum over the batch of a channels_last tensor writes C order
while it reads memory order, at about a tenth of memory bandwidth (H100, bfloat16: 1.4 ms a
step for the 17 calls). :func:`positive_counts_c_order` counts a whole list of batches in one
launch: each program reads a tile of one batch's units in memory order across the batch and
writes the tile's counts in C order (a channels_last tile scattered to (channel, spatial)
positions). A table of the batches' addresses and shapes travels to the device with the
first launch on them (later steps' outputs, at the same places, reuse it); the counts come
back in the narrowest integer dtype that holds the batch size (uint8 up to 255 samples: a
quarter of float32's bytes to move to the host).

**Norms.** A multi-tensor ``torch._foreach_norm`` is one or two kernels, but it returns one
0-d tensor per parameter and ``torch.stack`` makes them a row again: in an H100 profile of a
bfloat16 ResNet-18 step the three such pairs of a saving step took more host time than any
other operation the Recorder adds. :func:`multi_norms` gives both norms of a list of tensors as
one (2, n) tensor: a program per chunk of 8,192 elements writes float32 partial sums, a
program per tensor adds its chunks' in float64, in order; its launch table is kept while the
tensors stay where they are (parameters do).

Each is used where a Recorder is made with ``triton=True`` or on the devices in
:data:`COUNT_KERNEL_DEVICES` / :data:`NORM_KERNEL_DEVICES` (CUDA by default where Triton is
installed: docs/performance.md says what was measured), reads contiguous and channels_last
tensors (others go to the torch operations), and the Recorder switches a kernel off (for
itself, or in that set), with one warning, if it fails to compile or launch: recording goes
on.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import torch

from .reductions import _MASK_DTYPES

#: device types on which Recorders made with ``triton=None`` (the default) count ReLU
#: outputs with the Triton kernel: CUDA where Triton is installed (on an H100 it cut the saving
#: step's added time about in half in fp32 and lowered it in bf16; docs/performance.md)
COUNT_KERNEL_DEVICES: set[str] = {"cuda"} if importlib.util.find_spec("triton") else set()
#: device types on which Recorders made with ``triton=None`` (the default) compute the default
#: weight and gradient norms with :func:`multi_norms`: CUDA where Triton is installed (two
#: launches a group instead of a multi-tensor norm and a stack per norm, whose host time goes
#: mostly to one 0-d tensor per parameter)
NORM_KERNEL_DEVICES: set[str] = set(COUNT_KERNEL_DEVICES)

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
_INT32 = 2**31
#: batches one launch counts at most (each program searches the table's start indices)
MAX_BATCHES = 256
# units a program counts: 1024, fewer when a launch has few units in all
_MAX_TILE, _MIN_TILE = 1024, 128
_NO_BATCH = 2**62  # start index of the table's padding rows: no program reaches it
# Triton's interpreter keeps the launch's state in globals: interpreted launches (the tests,
# on CPU tensors) from the training thread and a Recorder's thread take turns
_INTERPRETER_LOCK = threading.Lock()
#: launch tables on the device, by kernel, device, CUDA stream and content (addresses and
#: sizes): the same tensors at the same places at every step (parameters; a step's ReLU
#: outputs, which the caching allocator puts where it put the last step's) need no new table
#: and no host-to-device copy. Per stream: a table is copied, read and, once dropped, freed in
#: one stream's order, never read by another stream's kernel (the training thread's and a
#: Recorder's thread's). A few kept, the least recently used dropped first.
_TABLES: OrderedDict[tuple[Any, ...], tuple[Any, ...]] = OrderedDict()
_TABLES_KEPT = 16
_TABLES_LOCK = threading.Lock()


def _kept_table(
    key: tuple[Any, ...], build: Callable[[], tuple[list[int], Any]], x: torch.Tensor
) -> tuple[Any, ...]:
    """(a launch's device table, what else its launch needs) for launches on ``x``'s device
    from the current stream: those kept under ``key`` plus that device and stream, or, built
    only then, ``build()``'s int64 values copied now (from pageable memory: staged at once)
    and the rest of what it returned, kept."""
    stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
    key = (x.device, stream, *key)
    with _TABLES_LOCK:
        entry = _TABLES.get(key)
        if entry is not None:
            _TABLES.move_to_end(key)
            return entry
    values, *info = build()
    table = torch.tensor(values, dtype=torch.int64)
    if x.is_cuda:
        table = table.to(x.device, non_blocking=True)
    entry = (table, *info)
    with _TABLES_LOCK:
        _TABLES[key] = entry
        if len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    return entry


def _launching() -> Any:
    """A context for a launch: the interpreter's lock where kernels are interpreted (as
    ``TRITON_INTERPRET`` says, read when Triton builds them), else nothing to wait for."""
    if os.environ.get("TRITON_INTERPRET", "") in ("", "0"):
        return nullcontext()
    return _INTERPRETER_LOCK


def readable(x: torch.Tensor) -> bool:
    """Whether the kernel counts batch ``x``: a floating dtype, at least 2 dimensions, not
    empty, contiguous or channels_last (2-d or 3-d), fewer than 2**31 elements per sample."""
    if x.dtype not in _MASK_DTYPES or x.ndim < 2 or x.numel() == 0:
        return False
    if x.numel() // x.shape[0] >= _INT32:
        return False
    return _dense(x)


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill ``x.numel()`` consecutive elements of memory (contiguous
    or channels_last): the range the kernels read."""
    return x.is_contiguous() or (
        x.ndim in _CHANNELS_LAST and x.is_contiguous(memory_format=_CHANNELS_LAST[x.ndim])
    )


def count_dtype(batch: int) -> torch.dtype:
    """The narrowest dtype that holds counts of up to ``batch`` samples."""
    if batch <= 255:
        return torch.uint8
    if batch <= 32767:
        return torch.int16
    return torch.int32


@lru_cache(maxsize=1)
def _kernel() -> tuple[Any, Any]:
    """(triton, the kernel), built on first use: importing Triton costs a second, and a
    Recorder that never uses the kernel never pays it. (Under ``TRITON_INTERPRET=1``, set
    before Triton is imported, it runs on CPU tensors: the tests.)"""
    import triton
    import triton.language as tl

    @triton.jit
    def counts_kernel(
        table_ptr, x0_ptr, out_ptr, N_BATCHES: tl.constexpr, TILE: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        # table: N_BATCHES start indices (each batch's first program, padded with _NO_BATCH),
        # then per batch 5 int64: address, batch size, units per sample, channels (1: C order
        # already), offset of its counts in out. x0_ptr gives the batches' element type.
        p = tl.program_id(0)
        starts = tl.load(table_ptr + tl.arange(0, N_BATCHES))
        b = tl.sum((starts <= p).to(tl.int32), axis=0) - 1
        row = table_ptr + N_BATCHES + b * 5
        base = tl.load(row).to(x0_ptr.dtype, bitcast=True)
        n_rows = tl.load(row + 1)
        units = tl.load(row + 2)
        channels = tl.load(row + 3)
        out_offset = tl.load(row + 4)
        if ALIGNED:  # every sample starts on 16 bytes: 16-byte loads (the host checked)
            base = tl.multiple_of(base, 16)
            units = tl.multiple_of(units, 16)
        # the tile's units in memory order: (spatial, channel) for channels_last
        m = (p - tl.load(table_ptr + b)) * TILE + tl.arange(0, TILE)
        keep = m < units
        acc = tl.zeros((TILE,), dtype=tl.int32)
        for i in range(n_rows):
            sample = tl.load(base + i * units + m, mask=keep, other=0)
            acc += (sample > 0).to(tl.int32)  # NaN is not > 0
        # C order: (channel, spatial); channels == 1 leaves m as it is
        spatial = units // channels
        dest = (m % channels) * spatial + m // channels
        tl.store(out_ptr + out_offset + dest, acc, mask=keep)

    return triton, counts_kernel


def positive_counts_c_order(xs: Sequence[torch.Tensor], *, checked: bool = False) -> torch.Tensor:
    """For each unit of each batch in ``xs`` (dimension 0 the samples), in how many samples it
    is > 0: the counts of every batch one after another, each flat in C order, as
    ``torch.cat([positive_counts(x).reshape(-1) for x in xs])`` gives them (NaN is not > 0),
    in :func:`count_dtype` of the largest batch. Every batch must be :func:`readable`, and all
    share one device and dtype (``checked``: the caller made sure; the Recorder does, per
    ReLU call)."""
    if not xs:
        raise ValueError("positive_counts_c_order needs at least one batch")
    first = xs[0]
    for x in () if checked else xs:
        if not readable(x):
            raise ValueError(
                f"a batch of shape {tuple(x.shape)}, strides {x.stride()}, {x.dtype}: not one "
                "the kernel reads (see readable)"
            )
        if x.device != first.device or x.dtype != first.dtype:
            raise ValueError(
                f"batches on {first.device} ({first.dtype}) and {x.device} ({x.dtype}): "
                "one launch counts one device and dtype"
            )
    triton, counts_kernel = _kernel()
    sizes = [(x.shape[0], x.numel() // x.shape[0]) for x in xs]  # (batch, units per sample)
    total = sum(units for _, units in sizes)
    out = torch.empty(total, dtype=count_dtype(max(n for n, _ in sizes)), device=first.device)
    tile = max(_MIN_TILE, min(_MAX_TILE, triton.next_power_of_2(total // 512)))
    # Triton launches on the current device: make it the batches' (a model on cuda:1, say)
    with torch.cuda.device(first.device) if first.is_cuda else _launching():
        offset = 0
        for lo in range(0, len(xs), MAX_BATCHES):
            chunk = xs[lo : lo + MAX_BATCHES]
            chunk_sizes = sizes[lo : lo + MAX_BATCHES]
            table, programs, n_batches, aligned = _table(chunk, chunk_sizes, tile, offset)
            offset += sum(units for _, units in chunk_sizes)
            counts_kernel[(programs,)](
                table, chunk[0], out, N_BATCHES=n_batches, TILE=tile, ALIGNED=aligned
            )
    return out


def _table(
    xs: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], tile: int, offset: int
) -> tuple[torch.Tensor, int, int, bool]:
    """The launch's table on the batches' device (:func:`_kept_table`), its number of programs
    and of batches (a power of two, as ``tl.arange`` needs), and whether every batch and every
    sample in it starts on 16 bytes (a caching allocator's tensors with a multiple of 16
    units per sample, ResNet's)."""
    rows: list[int] = []
    for x, (n, units) in zip(xs, sizes):
        channels = 1 if x.is_contiguous() else x.shape[1]
        rows += [x.data_ptr(), n, units, channels, offset]
        offset += units

    def build() -> tuple[list[int], int, int, bool]:
        starts: list[int] = []
        programs = 0
        for units in rows[2::5]:
            starts.append(programs)
            programs += -(-units // tile)
        n_batches = max(2, 1 << (len(xs) - 1).bit_length())
        starts += [_NO_BATCH] * (n_batches - len(xs))
        aligned = all(a % 16 == 0 and u % 16 == 0 for a, u in zip(rows[::5], rows[2::5]))
        return starts + rows, programs, n_batches, aligned

    # the rest of the table follows from the rows and the tile
    return _kept_table(("counts", tile, *rows), build, xs[0])  # type: ignore[return-value]


# -- multi-tensor norms ------------------------------------------------------------------------

#: tensors one launch of the norms kernel reduces at most (more: several launches)
MAX_NORM_TENSORS = 256
_NORM_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_NORM_TILE = 1024  # elements a program loads at a time
_NORM_TILES = 8  # tiles a program reduces into one partial sum: 8,192 elements
_NORM_CHUNK = _NORM_TILE * _NORM_TILES
_FINISH_TILE = 128  # partial sums the second kernel loads at a time


def norms_readable(xs: Sequence[torch.Tensor]) -> bool:
    """Whether :func:`multi_norms` reduces ``xs``: at least one tensor, all of one device and
    one dtype (float32, float16 or bfloat16), each a plain tensor or parameter (not a
    subclass such as a sharded DTensor, whose memory is not its values) and dense (contiguous
    or channels_last; a sparse tensor is neither)."""
    if not xs:
        return False
    first = xs[0]
    dtype, device = first.dtype, first.get_device()  # an index: no device object per tensor
    return dtype in _NORM_DTYPES and all(
        type(x) in _PLAIN and x.dtype is dtype and x.get_device() == device and _dense(x)
        for x in xs
    )


@lru_cache(maxsize=1)
def _norm_kernels() -> tuple[Any, Any]:
    """(the partial-sums kernel, the kernel that adds them up per tensor), built on first use
    (see :func:`_kernel`)."""
    import triton.language as tl
    from triton import jit

    @jit
    def partial_norms_kernel(
        table_ptr, x0_ptr, partial_ptr, N_TENSORS: tl.constexpr, TILE: tl.constexpr,
        TILES: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        # table: N_TENSORS program starts (each tensor's first program; then the number of
        # programs, then padding), then per tensor 2 int64: address, number of elements.
        # Program p writes the sum of squares and the sum of absolute values of its chunk
        # (TILE * TILES elements of one tensor) to partial[2p], partial[2p + 1], in float32.
        p = tl.program_id(0)
        starts = tl.load(table_ptr + tl.arange(0, N_TENSORS))
        b = tl.sum((starts <= p).to(tl.int32), axis=0) - 1
        row = table_ptr + N_TENSORS + b * 2
        base = tl.load(row).to(x0_ptr.dtype, bitcast=True)
        n = tl.load(row + 1)
        if ALIGNED:  # every tensor starts on 16 bytes (the host checked)
            base = tl.multiple_of(base, 16)
        first = (p - tl.load(table_ptr + b)) * (TILE * TILES)
        squares = tl.zeros((TILE,), dtype=tl.float32)
        absolutes = tl.zeros((TILE,), dtype=tl.float32)
        if first + TILE * TILES <= n:  # a whole chunk: loads without a mask (vectors)
            for t in range(TILES):
                x = tl.load(base + first + t * TILE + tl.arange(0, TILE)).to(tl.float32)
                squares += x * x
                absolutes += tl.abs(x)
        else:  # the tensor's last chunk
            for t in range(TILES):
                i = first + t * TILE + tl.arange(0, TILE)
                x = tl.load(base + i, mask=i < n, other=0).to(tl.float32)
                squares += x * x
                absolutes += tl.abs(x)
        tl.store(partial_ptr + 2 * p, tl.sum(squares, axis=0))
        tl.store(partial_ptr + 2 * p + 1, tl.sum(absolutes, axis=0))

    @jit
    def finish_norms_kernel(table_ptr, partial_ptr, out_ptr, n_tensors, TILE: tl.constexpr):
        # program b: tensor b's partial sums (programs starts[b] to starts[b + 1]) added in
        # float64, in order (the same result at every launch): out[b] the 2-norm, out[n + b]
        # the 1-norm, in float32 as torch's norms of float tensors
        b = tl.program_id(0)
        lo = tl.load(table_ptr + b)
        hi = tl.load(table_ptr + b + 1)
        squares = tl.zeros((TILE,), dtype=tl.float64)
        absolutes = tl.zeros((TILE,), dtype=tl.float64)
        for k in range(lo, hi, TILE):
            j = k + tl.arange(0, TILE)
            keep = j < hi
            squares += tl.load(partial_ptr + 2 * j, mask=keep, other=0).to(tl.float64)
            absolutes += tl.load(partial_ptr + 2 * j + 1, mask=keep, other=0).to(tl.float64)
        tl.store(out_ptr + b, tl.sqrt(tl.sum(squares, axis=0).to(tl.float32)))
        tl.store(out_ptr + n_tensors + b, tl.sum(absolutes, axis=0).to(tl.float32))

    return partial_norms_kernel, finish_norms_kernel


def multi_norms(xs: Sequence[torch.Tensor], *, checked: bool = False) -> torch.Tensor:
    """The 2-norm and the 1-norm of each tensor of ``xs``: a float32 tensor of shape
    (2, len(xs)), what ``torch.stack(torch._foreach_norm(xs, 2))`` and ``(xs, 1)`` give
    (float32 sums in a tree within chunks of 8,192 elements, the chunks added in float64:
    relative error about 1e-7), in two launches (a program per chunk, then a program per
    tensor) instead of a multi-tensor norm and a stack of 0-d tensors per norm, most of
    whose host time goes to one tensor per parameter. ``xs`` must be :func:`norms_readable`
    (``checked``: the caller made sure)."""
    if not checked and not norms_readable(xs):
        raise ValueError(
            "multi_norms reads dense float32, float16 or bfloat16 tensors of one device and "
            "dtype (see norms_readable)"
        )
    partial_kernel, finish_kernel = _norm_kernels()
    first = xs[0]
    out = torch.empty((2, len(xs)), dtype=torch.float32, device=first.device)
    with torch.cuda.device(first.device) if first.is_cuda else _launching():
        for lo in range(0, len(xs), MAX_NORM_TENSORS):
            chunk = xs[lo : lo + MAX_NORM_TENSORS]
            table, programs, n_tensors, aligned = _norm_table(chunk)
            partial = torch.empty(2 * max(programs, 1), dtype=torch.float32, device=first.device)
            if programs:
                partial_kernel[(programs,)](
                    table, chunk[0], partial, N_TENSORS=n_tensors, TILE=_NORM_TILE,
                    TILES=_NORM_TILES, ALIGNED=aligned,
                )  # fmt: skip
            row = out[:, lo : lo + len(chunk)]
            if row.is_contiguous():  # one launch: out itself
                finish_kernel[(len(chunk),)](table, partial, out, len(chunk), TILE=_FINISH_TILE)
            else:
                part = torch.empty((2, len(chunk)), dtype=torch.float32, device=first.device)
                finish_kernel[(len(chunk),)](table, partial, part, len(chunk), TILE=_FINISH_TILE)
                row.copy_(part)
    return out


def _norm_table(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int, int, bool]:
    """The norms launch's table on ``xs``' device (:func:`_kept_table`: parameters in place
    reuse theirs), its number of programs and of table starts (a power of two above the number
    of tensors, as ``tl.arange`` needs), and whether every tensor starts on 16 bytes."""
    first = xs[0]
    addresses = tuple(map(torch.Tensor.data_ptr, xs))
    numels = tuple(map(torch.Tensor.numel, xs))

    def build() -> tuple[list[int], int, int, bool]:
        starts: list[int] = []
        programs = 0
        for numel in numels:
            starts.append(programs)
            programs += -(-numel // _NORM_CHUNK)
        n_tensors = max(2, 1 << len(xs).bit_length())  # > len(xs): room for the end
        starts += [programs] + [_NO_BATCH] * (n_tensors - len(xs) - 1)
        aligned = all(address % 16 == 0 for address in addresses)
        rows = [v for pair in zip(addresses, numels) for v in pair]
        return starts + rows, programs, n_tensors, aligned

    key = ("norms", first.dtype, addresses, numels)
    return _kept_table(key, build, first)  # type: ignore[return-value]


__all__ = [
    "COUNT_KERNEL_DEVICES",
    "MAX_BATCHES",
    "MAX_NORM_TENSORS",
    "NORM_KERNEL_DEVICES",
    "count_dtype",
    "multi_norms",
    "norms_readable",
    "positive_counts_c_order",
    "readable",
]
