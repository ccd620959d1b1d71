"""Optional Triton kernel for the Recorder's per-ReLU positive counts on a GPU: one launch for
all the ReLU calls of a step.

The torch operations (:func:`~pytest_modelrules.capture.reductions.positive_counts`: a
comparison and a sum over the batch) stay the reference, and the default on CPUs and where
Triton is missing. At a saving step they
cost ResNet-18 68 operations on the training thread (17 ReLU calls, four each), most of the
Recorder's launches in a step that is bound by the host launching kernels; and on a GPU the sum
over the batch of a channels_last tensor writes C order while it reads memory order, at about a
tenth of memory bandwidth (H100, bfloat16: 1.4 ms a step for the 17 calls).

This kernel counts a whole list of batches in one launch: each program reads a tile of one
batch's units in memory order across the batch and writes the tile's counts in C order (a
channels_last tile scattered to (channel, spatial) positions). A table of the batches'
addresses and shapes travels to the device with the launch; the counts come back in the
narrowest integer dtype that holds the batch size (uint8 up to 255 samples: a quarter of
float32's bytes to move to the host).

It is used where a Recorder is made with ``count_kernel=True`` or on the devices in
:data:`COUNT_KERNEL_DEVICES` (CUDA by default where Triton is installed: docs/recording.md says
what was measured), reads contiguous and channels_last batches (others are counted by
the torch operations), and the Recorder switches it off (for itself, or in that set), with one
warning, if it fails to compile or launch: recording goes on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import torch

from .reductions import _MASK_DTYPES

#: device types on which Recorders made with ``count_kernel=None`` (the default) count ReLU
#: outputs with the Triton kernel: CUDA where Triton is installed (on an H100 it cut the saving
#: step's added time about in half in fp32 and lowered it in bf16; docs/recording.md)
COUNT_KERNEL_DEVICES: set[str] = {"cuda"} if importlib.util.find_spec("triton") else set()

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
_INT32 = 2**31
#: batches one launch counts at most (each program searches the table's start indices)
MAX_BATCHES = 256
# units a program counts: 1024, fewer when a launch has few units in all
_MAX_TILE, _MIN_TILE = 1024, 128
_NO_BATCH = 2**62  # start index of the table's padding rows: no program reaches it


def readable(x: torch.Tensor) -> bool:
    """Whether the kernel counts batch ``x``: a floating dtype, at least 2 dimensions, not
    empty, contiguous or channels_last (2-d or 3-d), fewer than 2**31 elements per sample."""
    if x.dtype not in _MASK_DTYPES or x.ndim < 2 or x.numel() == 0:
        return False
    if x.numel() // x.shape[0] >= _INT32:
        return False
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
    with torch.cuda.device(first.device) if first.is_cuda else nullcontext():
        offset = 0
        for lo in range(0, len(xs), MAX_BATCHES):
            chunk = xs[lo : lo + MAX_BATCHES]
            chunk_sizes = sizes[lo : lo + MAX_BATCHES]
            table, programs, n_batches, aligned = _table(chunk, chunk_sizes, tile, offset)
            offset += sum(units for _, units in chunk_sizes)
            if first.is_cuda:  # from pageable memory: staged at once, no synchronisation
                table = table.to(first.device, non_blocking=True)
            counts_kernel[(programs,)](
                table, chunk[0], out, N_BATCHES=n_batches, TILE=tile, ALIGNED=aligned
            )
    return out


def _table(
    xs: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], tile: int, offset: int
) -> tuple[torch.Tensor, int, int, bool]:
    """The launch's table (on the CPU), its number of programs and of batches (a power of
    two, as ``tl.arange`` needs), and whether every batch and every sample in it starts on 16
    bytes (a caching allocator's tensors with a multiple of 16 units per sample, ResNet's)."""
    starts: list[int] = []
    rows: list[int] = []
    programs = 0
    aligned = True
    for x, (n, units) in zip(xs, sizes):
        address = x.data_ptr()
        channels = 1 if x.is_contiguous() else x.shape[1]
        starts.append(programs)
        rows += [address, n, units, channels, offset]
        programs += -(-units // tile)
        offset += units
        aligned = aligned and address % 16 == 0 and units % 16 == 0
    n_batches = max(2, 1 << (len(xs) - 1).bit_length())
    starts += [_NO_BATCH] * (n_batches - len(xs))
    return torch.tensor(starts + rows, dtype=torch.int64), programs, n_batches, aligned


__all__ = [
    "COUNT_KERNEL_DEVICES",
    "MAX_BATCHES",
    "count_dtype",
    "positive_counts_c_order",
    "readable",
]
