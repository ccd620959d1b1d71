"""Optional Triton kernel for the Recorder's per-ReLU positive counts on a GPU.

The torch operations (:func:`~pytest_modelrules.capture.reductions.positive_counts`: a
comparison and a sum over the batch) stay the reference and the default. On a GPU the sum over
the batch of a channels_last tensor writes C order while it reads memory order and ran at
about a tenth of memory bandwidth (H100, bfloat16: 1.4 ms a step for ResNet-18's 17 ReLU
calls); reducing the batch as an (N, units) matrix is fast but leaves the counts in memory
order, and putting them back in C order cost more than it saved. This kernel reads the batch
once in memory order and writes the counts in C order: one launch per ReLU call instead of
three operations. It is used only on the devices in :data:`COUNT_KERNEL_DEVICES` (empty by
default: see docs/recording.md for what was measured and what is still to measure), falls
back to the torch operations for layouts it does not read, and the Recorder switches it off
for the process, with one warning, if it fails to compile or launch: recording goes on.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import torch

from .reductions import _MASK_DTYPES

#: device types ("cuda") on which the Recorder counts ReLU outputs with the Triton kernel
COUNT_KERNEL_DEVICES: set[str] = set()

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
# elements a program accumulates at a time: up to 2048, fewer for a small layer so that it
# still spreads over a few hundred programs (each loops over the whole batch)
_MAX_TILE, _MIN_TILE, _PROGRAMS = 2048, 256, 256
_INT32 = 2**31


@lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any, Any]:
    """(triton, the contiguous kernel, the channels-last kernel), built on first use: importing
    Triton costs a second, and a Recorder that never uses the kernel never pays it. (Under
    ``TRITON_INTERPRET=1``, set before Triton is imported, they run on CPU tensors: the tests.)"""
    import triton
    import triton.language as tl

    @triton.jit
    def rows_kernel(x_ptr, out_ptr, n_rows, n_units, BLOCK: tl.constexpr):
        # counts[u] = #{n : x[n, u] > 0} for an (n_rows, n_units) C-order matrix
        u = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        keep = u < n_units
        ptrs = x_ptr + u
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for _ in range(n_rows):
            acc += (tl.load(ptrs, mask=keep, other=0) > 0).to(tl.float32)
            ptrs += n_units
        tl.store(out_ptr + u, acc, mask=keep)

    @triton.jit
    def channels_last_kernel(
        x_ptr, out_ptr, n_rows, n_spatial, n_channels, BLOCK_S: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # memory (n_rows, n_spatial, n_channels); counts written in C order (channel, spatial)
        s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        keep = (s[:, None] < n_spatial) & (c[None, :] < n_channels)
        ptrs = x_ptr + s[:, None] * n_channels + c[None, :]
        acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        for _ in range(n_rows):
            acc += (tl.load(ptrs, mask=keep, other=0) > 0).to(tl.float32)
            ptrs += n_spatial * n_channels
        tl.store(out_ptr + c[None, :] * n_spatial + s[:, None], acc, mask=keep)

    return triton, rows_kernel, channels_last_kernel


def positive_counts_c_order(x: torch.Tensor) -> torch.Tensor | None:
    """For each unit of batch ``x`` (dimension 0), in how many samples it is > 0: flat float32
    counts in C order, as ``positive_counts(x).reshape(-1)`` gives them (NaN is not > 0). None
    when ``x`` is not one the kernel reads: a floating dtype, at least 2 dimensions, not empty,
    contiguous or channels_last (2-d or 3-d), fewer than 2**31 elements per sample."""
    if x.dtype not in _MASK_DTYPES or x.ndim < 2 or x.numel() == 0:
        return None
    n = x.shape[0]
    units = x.numel() // n
    if units >= _INT32:
        return None
    if x.is_contiguous():
        channels = 1
    elif x.ndim in _CHANNELS_LAST and x.is_contiguous(memory_format=_CHANNELS_LAST[x.ndim]):
        channels = x.shape[1]
    else:
        return None
    triton, rows_kernel, channels_last_kernel = _kernels()
    out = torch.empty(units, dtype=torch.float32, device=x.device)
    # Triton launches on the current device: make it x's (a model on cuda:1, say)
    tile = max(_MIN_TILE, min(_MAX_TILE, triton.next_power_of_2(units // _PROGRAMS)))
    with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
        if channels == 1:
            rows_kernel[(triton.cdiv(units, tile),)](x, out, n, units, BLOCK=tile)
        else:
            block_c = min(64, triton.next_power_of_2(channels))
            block_s = tile // block_c
            spatial = units // channels
            grid = (triton.cdiv(spatial, block_s), triton.cdiv(channels, block_c))
            channels_last_kernel[grid](
                x, out, n, spatial, channels, BLOCK_S=block_s, BLOCK_C=block_c
            )
    return out


__all__ = ["COUNT_KERNEL_DEVICES", "positive_counts_c_order"]
