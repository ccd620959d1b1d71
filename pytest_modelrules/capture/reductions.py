"""Reductions computed on the tensor's own device, matching ``store.names.compute_reduction``.

Every function returns a small tensor on the input's device and never synchronises with it
(no ``.item()``, no boolean indexing), so the Recorder can gather a step's reductions and move
them to the CPU in one transfer.
"""

from __future__ import annotations

from typing import Any

import torch

from ..store.names import HISTOGRAM_BINS
from .host import STORED_DTYPE  # noqa: F401 (the stored dtypes, re-exported for the Recorder)

# how a reduction's value is stored (numpy dtype name), as compute_reduction returns it

_QUANTILE_LIMIT = 16_000_000  # torch.quantile refuses larger inputs


_FLOATS = (torch.float32, torch.float64)


def _float(x: torch.Tensor) -> torch.Tensor:
    """``x`` dense, as float32 or float64; a complex tensor as its magnitudes (see _real)."""
    x = _real(x)
    if x.dtype in _FLOATS:
        return x
    return x.float()


def _real(x: torch.Tensor) -> torch.Tensor:
    """The values a reduction reads, as a dense tensor of real numbers: a sparse tensor (the
    gradient of an ``Embedding(sparse=True)``) densified, a complex tensor's magnitudes
    ``|z|`` (float32 for complex64, float64 for complex128), so that its norms are the true
    ones (casting to a real dtype would keep the real parts only, with a warning in the
    user's training), any other tensor itself. compute_reduction does the same on the host."""
    if x.layout != torch.strided:
        x = x.to_dense()
    return x.abs() if x.is_complex() else x


def _percentiles(xf: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Linear-interpolation percentiles (numpy's default) of a flat float tensor."""
    flat = xf.reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.full((len(qs),), float("nan"), dtype=torch.float64, device=xf.device)
    q = torch.tensor(qs, dtype=flat.dtype, device=flat.device)
    if n <= _QUANTILE_LIMIT:
        return torch.quantile(flat, q).double()
    ordered = torch.sort(flat).values.double()
    pos = q.double() * (n - 1)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=n - 1)
    frac = pos - lo.double()
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def _histogram(xf: torch.Tensor) -> torch.Tensor:
    """HISTOGRAM_BINS counts between the finite min and max, then min and max (float64)."""
    flat = xf.reshape(-1).double()
    finite = torch.isfinite(flat)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=flat.device)
    lo = torch.where(finite, flat, inf).amin() if flat.numel() else inf
    hi = torch.where(finite, flat, -inf).amax() if flat.numel() else -inf
    any_finite = finite.any() if flat.numel() else torch.tensor(False, device=flat.device)
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    idx = torch.floor((flat - lo) / width * HISTOGRAM_BINS)
    idx = torch.clamp(torch.nan_to_num(idx, nan=0.0, posinf=0.0, neginf=0.0), 0, HISTOGRAM_BINS - 1)
    idx = torch.where(finite, idx.long(), torch.full_like(idx, HISTOGRAM_BINS).long())
    counts = torch.zeros(HISTOGRAM_BINS + 1, dtype=torch.float64, device=flat.device)
    counts.index_add_(0, idx, torch.ones_like(flat))
    zero = torch.zeros((), dtype=torch.float64, device=flat.device)
    edges = torch.stack([torch.where(any_finite, lo, zero), torch.where(any_finite, hi, zero)])
    return torch.cat([counts[:HISTOGRAM_BINS], edges])


_EXACT_LIMIT = 1 << 16  # up to this size std/variance use the exact two-pass formula
#: tensors of up to this many elements are "small" for compute_batch (pass them first)
EXACT_LIMIT = _EXACT_LIMIT


#: floating dtypes whose "> 0" mask positive_counts writes in the input's own dtype
_MASK_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def positive_counts(x: torch.Tensor) -> torch.Tensor:
    """For each unit of a batch (dimension 0), in how many samples it is > 0: float32 counts
    (exact up to 2**24 samples), a comparison and a sum. Divided by the batch size they are
    ``positive_fraction``; the Recorder divides on the host, ``compute_many`` on the device.

    A floating input's mask (1.0 where > 0; NaN is not > 0) is written in the input's dtype,
    in its memory layout: the sum then reads it as it is (for float16 and bfloat16 a GPU sums
    them into float32 directly), where a boolean mask would first be copied to float32 (on a
    GPU a third kernel and four bytes written and read per element)."""
    if x.dtype in _MASK_DTYPES:
        mask = torch.gt(x, 0, out=torch.empty_like(x))
    else:
        mask = x.gt(0)
    return mask.sum(0, dtype=torch.float32)


def compute_many(x: torch.Tensor, wanted: tuple[tuple[str, bool], ...]) -> list[torch.Tensor]:
    """The reductions ``wanted`` ((name, abs) pairs) of ``x``, each a tensor on x's device.

    Passes over the data are shared between reductions: mean, l2 and (for large tensors) std
    come from one ``mean`` and one ``vector_norm`` (variance = E[x^2] - mean^2 in float64,
    which loses precision only when |mean| >> std; tensors up to 65,536 elements use the exact
    two-pass formula); min and max from one ``aminmax``. Results are float64 (positive_fraction
    float32, counts int64), as ``compute_reduction`` returns them.
    """
    x = _real(x)
    out: list[torch.Tensor] = []
    cache: dict[Any, torch.Tensor] = {}
    numel = x.numel()
    dev = x.device

    def base(absolute: bool) -> torch.Tensor:
        t = cache.get(("x", absolute))
        if t is None:
            t = _float(x).abs() if absolute else _float(x)
            cache[("x", absolute)] = t
        return t

    def mean(absolute: bool) -> torch.Tensor:
        t = cache.get(("mean", absolute))
        if t is None:
            t = base(absolute).mean().double()
            cache[("mean", absolute)] = t
        return t

    def l2(absolute: bool) -> torch.Tensor:
        t = cache.get(("l2", absolute))
        if t is None:
            t = torch.linalg.vector_norm(base(absolute)).double()
            cache[("l2", absolute)] = t
        return t

    def variance(absolute: bool) -> torch.Tensor:
        t = cache.get(("var", absolute))
        if t is None:
            xf = base(absolute)
            if numel <= _EXACT_LIMIT:
                xd = xf.double()
                t = (xd - xd.mean()).pow(2).mean()
            else:
                norm = l2(absolute)
                t = torch.clamp(norm * norm / numel - mean(absolute) ** 2, min=0.0)
            cache[("var", absolute)] = t
        return t

    def minmax(absolute: bool) -> torch.Tensor:
        t = cache.get(("mm", absolute))
        if t is None:
            lo, hi = torch.aminmax(base(absolute))
            t = torch.stack([lo.double(), hi.double()])
            cache[("mm", absolute)] = t
        return t

    for name, absolute in wanted:
        if name == "positive_fraction":
            if x.ndim == 0:
                out.append((x > 0).float())
            else:
                # one comparison, one sum over the batch axis (float32 counts are exact up to
                # 2**24 samples), one true division: k / N correctly rounded to float32, the
                # value compute_reduction gives
                counts = positive_counts(x)
                out.append(counts.div_(batch_divisor(x.shape[0], dev)).reshape(-1))
        elif name == "sample_channel_mean":
            if x.ndim == 0:
                out.append(x.reshape(1, 1).to(torch.float64, copy=True))
            else:
                c = x.shape[1] if x.ndim >= 2 else 1
                if x.ndim >= 3 and numel:  # any memory layout (channels_last: no copy)
                    out.append(x.mean(dim=tuple(range(2, x.ndim)), dtype=torch.float64))
                elif x.ndim >= 3 or numel == 0:
                    out.append(torch.full((x.shape[0], c), float("nan"), dtype=torch.float64,
                                          device=dev))  # fmt: skip
                else:
                    out.append(x.reshape(x.shape[0], c).to(torch.float64, copy=True))
        elif name == "numel":
            out.append(torch.tensor(numel, dtype=torch.int64, device=dev))
        elif name in ("nan_count", "inf_count"):
            if x.is_floating_point():
                fn = torch.isnan if name == "nan_count" else torch.isinf
                out.append(fn(x).sum())
            else:
                out.append(torch.zeros((), dtype=torch.int64, device=dev))
        elif numel == 0 and name in ("min", "max", "mean", "std", "variance", "zero_fraction"):
            out.append(torch.tensor(float("nan"), dtype=torch.float64, device=dev))
        elif name == "zero_fraction":
            out.append((x == 0).sum().double() / numel)
        elif name == "mean":
            out.append(mean(absolute))
        elif name == "l2":
            out.append(l2(absolute))
        elif name == "variance":
            out.append(variance(absolute))
        elif name == "std":
            out.append(variance(absolute).sqrt())
        elif name in ("min", "max"):
            mm = minmax(absolute)
            out.append(mm[0] if name == "min" else mm[1])
        elif name == "sum":
            out.append(base(absolute).sum(dtype=torch.float64) if numel <= _EXACT_LIMIT
                       else mean(absolute) * numel)  # fmt: skip
        elif name == "prod":
            out.append(base(absolute).double().prod())
        elif name == "l1":
            out.append(base(True).sum().double())
        elif name in ("p05", "p95"):
            pct = cache.get(("pct", absolute))
            if pct is None:
                pct = _percentiles(base(absolute), (0.05, 0.95))
                cache[("pct", absolute)] = pct
            out.append(pct[0] if name == "p05" else pct[1])
        elif name == "histogram":
            out.append(_histogram(base(absolute)))
        else:  # pragma: no cover - parse_reductions rejects unknown names
            raise ValueError(f"unknown reduction {name!r}")
    return out


# reductions that compute_batch handles for many tensors at once: name -> abs allowed
BATCHABLE = {
    ("l2", False), ("mean", False), ("std", False), ("variance", False), ("sum", False),
    ("l1", False), ("min", False), ("max", False), ("zero_fraction", False), ("mean", True),
    ("l2", True), ("l1", True), ("sum", True),
}  # fmt: skip

# constant index/count tensors of a step's batches, made once per layout and device: building
# them from Python lists at every step would be a host-to-device copy (a synchronisation on a
# GPU) each time
_CONSTANTS: dict[tuple[Any, ...], torch.Tensor] = {}


def _constant(key: tuple[Any, ...], make: Any) -> torch.Tensor:
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) > 256:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = make()
    return t


def _segment_ids(numels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    def make() -> torch.Tensor:
        counts = torch.tensor(numels, dtype=torch.long)
        return torch.repeat_interleave(torch.arange(len(numels)), counts).to(device)

    return _constant(("seg", numels, str(device)), make)


def _counts(numels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return _constant(
        ("n", numels, str(device)),
        lambda: torch.tensor(numels, dtype=torch.float64, device=device),
    )


def batch_divisor(n: int, device: torch.device) -> torch.Tensor:
    """``n`` as a 0-d float32 tensor on ``device`` (cached): dividing by it is a true division
    on every device (a CUDA kernel multiplies by the reciprocal of a Python scalar instead,
    which can differ in the last bit)."""
    return _constant(("div", n, str(device)), lambda: torch.tensor(float(n), device=device))


_NORM_KEYS = frozenset({"l2", "l1", "abs_mean"})


#: device types on which the default weight and gradient norms are multi-tensor kernels
#: (``compute_batch``'s ``fused_norms`` default). The host-cost proxy of
#: benchmarks/bench_capture.py adds "cpu" to time the GPU path's host work on a CPU.
FUSED_NORM_DEVICES = {"cuda"}


def compute_batch(
    xs: list[torch.Tensor],
    wanted: tuple[tuple[str, bool], ...],
    *,
    fused_norms: bool | None = None,
) -> torch.Tensor:
    """Scalar reductions of many non-empty tensors on one device, as a float64 tensor of shape
    (len(wanted), len(xs)), with a few operations instead of several per tensor.

    ``fused_norms`` (default: on CUDA devices): when only l2, l1 and abs_mean are wanted (the
    default weight and gradient reductions), each is one multi-tensor ``_foreach_norm`` over
    all tensors (a kernel or two on a GPU, float32 accumulation in a tree: relative error
    about 1e-7). Otherwise small tensors (up to 65,536 elements) are concatenated and reduced
    by segment in float64, exactly (two-pass variance); large ones use ``_foreach_norm`` for
    l2, ``abs().sum()`` for l1 and one ``mean`` each only where a mean, sum, std or variance
    is wanted (variance = E[x^2] - mean^2 as in :func:`compute_many`). Only ``BATCHABLE``
    reductions. Passing the small tensors first saves a final reordering.
    """
    rows = compute_batch_rows(xs, wanted, fused_norms=fused_norms)
    return torch.stack([row.double() for row in rows])


def fused_norm_path(device: torch.device, wanted: tuple[tuple[str, bool], ...]) -> bool:
    """Whether :func:`compute_batch_rows` reduces ``wanted`` on ``device`` with multi-tensor
    norms by default (only l2, l1 and abs_mean, on a device of FUSED_NORM_DEVICES)."""
    return device.type in FUSED_NORM_DEVICES and _norms_only(wanted)


def _norms_only(wanted: tuple[tuple[str, bool], ...]) -> bool:
    """Whether every one of ``wanted`` is a norm ``_batch_norms`` computes."""
    return all(_batch_key(n, a) in _NORM_KEYS for n, a in wanted)


def compute_batch_rows(
    xs: list[torch.Tensor],
    wanted: tuple[tuple[str, bool], ...],
    *,
    fused_norms: bool | None = None,
    sums_for_means: bool = False,
    norms: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """:func:`compute_batch` as one 1-D row per wanted reduction, each in the dtype it was
    computed in (the fused norms stay float32: the Recorder widens them on the host, which
    saves a kernel per row on a GPU). ``sums_for_means``: on the fused path an abs_mean row
    is left as the float32 1-norms, for the caller to divide by each tensor's numel in
    float64 (the Recorder does it on the host: two kernels fewer a step, the same values).
    ``norms``: on the fused path, the 2-norms and 1-norms of ``xs`` already computed, as
    rows of a (2, len(xs)) tensor (:func:`~pytest_modelrules.capture.kernels.multi_norms`)."""
    dev = xs[0].device
    if fused_norms is None:
        fused_norms = dev.type in FUSED_NORM_DEVICES
    if fused_norms and _norms_only(wanted):
        return _batch_norms(xs, wanted, dev, sums_for_means, norms)
    small = [i for i, x in enumerate(xs) if x.numel() <= _EXACT_LIMIT]
    large = [i for i, x in enumerate(xs) if x.numel() > _EXACT_LIMIT]
    parts = []
    if small:
        parts.append(_batch_small([xs[i] for i in small], wanted, dev))
    if large:
        parts.append(_batch_large([xs[i] for i in large], wanted, dev, fused_norms))
    rows = parts[0] if len(parts) == 1 else [torch.cat(pair) for pair in zip(*parts)]
    if small and large and small[-1] > large[0]:  # back to the order of xs
        order = tuple(small + large)
        inverse = _constant(
            ("perm", order, str(dev)),
            lambda: torch.argsort(torch.tensor(order, dtype=torch.long)).to(dev),
        )
        rows = [row.index_select(0, inverse) for row in rows]
    return rows


def _batch_norms(
    xs: list[torch.Tensor],
    wanted: tuple[tuple[str, bool], ...],
    dev: torch.device,
    sums_for_means: bool = False,
    norms: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """compute_batch of l2 / l1 / abs_mean only: one multi-tensor norm per statistic (l2 and
    l1 rows float32, abs_mean float64: l1 / numel divided in float64; with
    ``sums_for_means`` the l1 row, left for the caller to divide), or the rows of ``norms``
    (2-norms, 1-norms) where given."""
    cache: dict[str, torch.Tensor] = {}
    if norms is not None:
        cache["l2"], cache["l1"] = norms[0], norms[1]
        floats = xs  # only counted (abs_mean); the norms are there
    else:
        floats = (
            xs
            if all(x.dtype in _FLOATS and x.layout == torch.strided for x in xs)
            else [_float(x) for x in xs]
        )

    def stat(key: str) -> torch.Tensor:
        t = cache.get(key)
        if t is None:
            if key == "abs_mean" and sums_for_means:
                t = stat("l1")
            elif key == "abs_mean":
                numels = tuple(x.numel() for x in floats)
                t = stat("l1").double() / _counts(numels, dev)
            else:
                each = torch._foreach_norm(floats, 2 if key == "l2" else 1)
                t = torch.stack(each)  # separate 0-d tensors (CPU; CUDA, torch 2.11)
            cache[key] = t
        return t

    return _rows(stat, wanted)


def _rows(stats: Any, wanted: tuple[tuple[str, bool], ...]) -> list[torch.Tensor]:
    return [stats(_batch_key(name, absolute)) for name, absolute in wanted]


def _batch_small(
    xs: list[torch.Tensor], wanted: tuple[tuple[str, bool], ...], dev: torch.device
) -> list[torch.Tensor]:
    """compute_batch for tensors of up to 65,536 elements: one float64 vector, reduced by
    segment; each statistic computed only when asked for."""
    numels = tuple(x.numel() for x in xs)
    flat = torch.cat([x if x.ndim == 1 else x.reshape(-1) for x in map(_real, xs)])
    if flat.dtype != torch.float64:
        flat = flat.double()
    seg = _segment_ids(numels, dev)
    n = _counts(numels, dev)
    zeros = _constant(
        ("zeros", len(xs), str(dev)),
        lambda: torch.zeros(len(xs), dtype=torch.float64, device=dev),
    )  # only ever the `self` of out-of-place index_add / scatter_reduce: never written
    cache: dict[str, torch.Tensor] = {}

    def stat(key: str) -> torch.Tensor:
        t = cache.get(key)
        if t is not None:
            return t
        if key == "sum":
            t = zeros.index_add(0, seg, flat)
        elif key == "mean":
            t = stat("sum") / n
        elif key == "variance":
            centred = flat - stat("mean")[seg]
            t = zeros.index_add(0, seg, centred * centred) / n
        elif key == "std":
            t = stat("variance").sqrt()
        elif key == "l2":
            t = zeros.index_add(0, seg, flat * flat).sqrt()
        elif key == "l1":
            t = zeros.index_add(0, seg, flat.abs())
        elif key == "abs_mean":
            t = stat("l1") / n
        elif key in ("min", "max"):
            t = zeros.scatter_reduce(0, seg, flat, "a" + key, include_self=False)
        elif key == "zero_fraction":
            t = zeros.index_add(0, seg, (flat == 0).double()) / n
        else:  # pragma: no cover - BATCHABLE bounds the keys
            raise ValueError(f"not a batched reduction: {key!r}")
        cache[key] = t
        return t

    return _rows(stat, wanted)


def _batch_large(
    xs: list[torch.Tensor], wanted: tuple[tuple[str, bool], ...], dev: torch.device, fused: bool
) -> list[torch.Tensor]:
    """compute_batch for tensors of more than 65,536 elements: multi-tensor norms, per-tensor
    passes only for the statistics that need them."""
    big = [_float(x) for x in xs]
    numels = tuple(x.numel() for x in big)
    cache: dict[str, torch.Tensor] = {}

    def stat(key: str) -> torch.Tensor:
        t = cache.get(key)
        if t is not None:
            return t
        if key == "mean":
            t = torch.stack([x.mean() for x in big]).double()
        elif key == "sum":
            t = stat("mean") * _counts(numels, dev)
        elif key == "l2":
            t = torch.stack(torch._foreach_norm(big, 2)).double()
        elif key == "variance":
            norm = stat("l2")
            t = torch.clamp(norm * norm / _counts(numels, dev) - stat("mean") ** 2, min=0.0)
        elif key == "std":
            t = stat("variance").sqrt()
        elif key == "l1":
            # a CPU float32 1-norm sums sequentially (relative error 1e-4 at millions of
            # elements); sum() sums in a cascade
            t = torch.stack(
                torch._foreach_norm(big, 1) if fused else [x.abs().sum() for x in big]
            ).double()
        elif key == "abs_mean":
            t = stat("l1") / _counts(numels, dev)
        elif key in ("min", "max"):
            mm = [torch.aminmax(x) for x in big]
            cache["min"] = torch.stack([m[0] for m in mm]).double()
            cache["max"] = torch.stack([m[1] for m in mm]).double()
            t = cache[key]
        elif key == "zero_fraction":
            t = torch.stack([(x == 0).sum() for x in big]).double() / _counts(numels, dev)
        else:  # pragma: no cover - BATCHABLE bounds the keys
            raise ValueError(f"not a batched reduction: {key!r}")
        cache[key] = t
        return t

    return _rows(stat, wanted)


def _batch_key(name: str, absolute: bool) -> str:
    if not absolute:
        return name
    return {"mean": "abs_mean", "l2": "l2", "l1": "l1", "sum": "l1"}[name]
