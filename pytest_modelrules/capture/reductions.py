"""Reductions computed on the tensor's own device, matching ``store.names.compute_reduction``.

Every function returns a small tensor on the input's device and never synchronises with it
(no ``.item()``, no boolean indexing), so the Recorder can gather a step's reductions and move
them to the CPU in one transfer.
"""

from __future__ import annotations

from typing import Any

import torch

from ..store.names import HISTOGRAM_BINS

# how a reduction's value is stored (numpy dtype name), as compute_reduction returns it
STORED_DTYPE = {
    "positive_fraction": "float32",
    "nan_count": "int64",
    "inf_count": "int64",
    "numel": "int64",
}

_QUANTILE_LIMIT = 16_000_000  # torch.quantile refuses larger inputs


def _float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


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


def compute_many(x: torch.Tensor, wanted: tuple[tuple[str, bool], ...]) -> list[torch.Tensor]:
    """The reductions ``wanted`` ((name, abs) pairs) of ``x``, each a tensor on x's device.

    Passes over the data are shared between reductions: mean, l2 and (for large tensors) std
    come from one ``mean`` and one ``vector_norm`` (variance = E[x^2] - mean^2 in float64,
    which loses precision only when |mean| >> std; tensors up to 65,536 elements use the exact
    two-pass formula); min and max from one ``aminmax``. Results are float64 (positive_fraction
    float32, counts int64), as ``compute_reduction`` returns them.
    """
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
                counts = (x > 0).sum(0, dtype=torch.int32).reshape(-1)
                out.append((counts.double() / x.shape[0]).float())
        elif name == "sample_channel_mean":
            if x.ndim == 0:
                out.append(x.double().reshape(1, 1))
            else:
                c = x.shape[1] if x.ndim >= 2 else 1
                per = x.reshape(x.shape[0], c, -1)
                if per.shape[2] == 0:
                    out.append(torch.full((x.shape[0], c), float("nan"), dtype=torch.float64,
                                          device=dev))  # fmt: skip
                else:
                    out.append(per.mean(dim=2, dtype=torch.float64))
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

_SEGMENTS: dict[tuple[Any, ...], torch.Tensor] = {}


def _segment_ids(numels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    key = (numels, str(device))
    seg = _SEGMENTS.get(key)
    if seg is None:
        counts = torch.tensor(numels, dtype=torch.long)
        seg = torch.repeat_interleave(torch.arange(len(numels)), counts).to(device)
        if len(_SEGMENTS) > 64:
            _SEGMENTS.clear()
        _SEGMENTS[key] = seg
    return seg


def compute_batch(xs: list[torch.Tensor], wanted: tuple[tuple[str, bool], ...]) -> torch.Tensor:
    """Scalar reductions of many non-empty tensors on one device, as a float64 tensor of shape
    (len(wanted), len(xs)), with a few dozen operations instead of several per tensor.

    Small tensors (up to 65,536 elements) are concatenated and reduced by segment, exactly
    (two-pass variance); large ones use one ``mean`` and a multi-tensor ``_foreach_norm``
    each, variance = E[x^2] - mean^2 as in :func:`compute_many`. Only ``BATCHABLE``
    reductions.
    """
    dev = xs[0].device
    k = len(xs)
    names = {n for n, _ in wanted}
    out = torch.empty((len(wanted), k), dtype=torch.float64, device=dev)
    small = [i for i, x in enumerate(xs) if x.numel() <= _EXACT_LIMIT]
    large = [i for i, x in enumerate(xs) if x.numel() > _EXACT_LIMIT]
    if small:
        numels = tuple(xs[i].numel() for i in small)
        flat = torch.cat([xs[i].reshape(-1) for i in small]).double()
        seg = _segment_ids(numels, dev)
        n = torch.tensor(numels, dtype=torch.float64, device=dev)
        zeros = torch.zeros(len(small), dtype=torch.float64, device=dev)
        stats: dict[str, torch.Tensor] = {}
        total = zeros.index_add(0, seg, flat)
        stats["sum"] = total
        stats["mean"] = total / n
        if names & {"std", "variance"}:
            dev_ = flat - stats["mean"][seg]
            stats["variance"] = zeros.index_add(0, seg, dev_ * dev_) / n
            stats["std"] = stats["variance"].sqrt()
        if "l2" in names:
            stats["l2"] = zeros.index_add(0, seg, flat * flat).sqrt()
        if names & {"l1"} or ("mean", True) in wanted or ("sum", True) in wanted:
            stats["l1"] = zeros.index_add(0, seg, flat.abs())
            stats["abs_mean"] = stats["l1"] / n
        if "min" in names:
            stats["min"] = zeros.scatter_reduce(0, seg, flat, "amin", include_self=False)
        if "max" in names:
            stats["max"] = zeros.scatter_reduce(0, seg, flat, "amax", include_self=False)
        if "zero_fraction" in names:
            stats["zero_fraction"] = zeros.index_add(0, seg, (flat == 0).double()) / n
        idx = torch.tensor(small, dtype=torch.long, device=dev)
        for r, (name, absolute) in enumerate(wanted):
            out[r].index_copy_(0, idx, stats[_batch_key(name, absolute)])
    if large:
        big = [_float(xs[i]) for i in large]
        n = torch.tensor([x.numel() for x in big], dtype=torch.float64, device=dev)
        stats = {}
        stats["mean"] = torch.stack([x.mean() for x in big]).double()
        stats["sum"] = stats["mean"] * n
        if names & {"l2", "std", "variance"}:
            stats["l2"] = torch.stack(torch._foreach_norm(big, 2)).double()
            var = torch.clamp(stats["l2"] ** 2 / n - stats["mean"] ** 2, min=0.0)
            stats["variance"], stats["std"] = var, var.sqrt()
        if names & {"l1"} or ("mean", True) in wanted or ("sum", True) in wanted:
            stats["l1"] = torch.stack([x.abs().sum() for x in big]).double()
            stats["abs_mean"] = stats["l1"] / n
        if names & {"min", "max"}:
            mm = [torch.aminmax(x) for x in big]
            stats["min"] = torch.stack([m[0] for m in mm]).double()
            stats["max"] = torch.stack([m[1] for m in mm]).double()
        if "zero_fraction" in names:
            stats["zero_fraction"] = torch.stack([(x == 0).sum() for x in big]).double() / n
        idx = torch.tensor(large, dtype=torch.long, device=dev)
        for r, (name, absolute) in enumerate(wanted):
            out[r].index_copy_(0, idx, stats[_batch_key(name, absolute)])
    return out


def _batch_key(name: str, absolute: bool) -> str:
    if not absolute:
        return name
    return {"mean": "abs_mean", "l2": "l2", "l1": "l1", "sum": "l1"}[name]
