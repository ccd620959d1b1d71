"""Text plots for CI logs: sparklines (▁▂▃▄▅▆▇█) and horizontal bars.

A failing rule's message must show its evidence where only text reaches the reader (a CI log,
a JUnit viewer), so these helpers draw numbers with block characters. Pure Python: importing
this module costs nothing (numpy arrays are accepted, never required).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

SPARK_CHARS = "▁▂▃▄▅▆▇█"
_BAR_FULL = "█"
_BAR_PARTS = " ▏▎▍▌▋▊▉"


def _floats(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _resample(values: list[float], width: int) -> list[float]:
    """At most ``width`` values: the mean of equal slices (NaNs ignored)."""
    if width <= 0 or len(values) <= width:
        return values
    out = []
    n = len(values)
    for i in range(width):
        lo, hi = i * n // width, max((i + 1) * n // width, i * n // width + 1)
        chunk = [v for v in values[lo:hi] if math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def sparkline(
    values: Iterable[Any],
    *,
    width: int = 60,
    lo: float | None = None,
    hi: float | None = None,
) -> str:
    """One character per value (resampled to at most ``width``), low to high as ▁ to █.

    NaN and infinite values show as ``!`` so that an exploding series is visible; a constant
    series draws as a flat line of ▄.
    """
    vals = _resample(_floats(values), width)
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return "!" * len(vals)
    low = min(finite) if lo is None else lo
    high = max(finite) if hi is None else hi
    span = high - low
    chars = []
    for v in vals:
        if not math.isfinite(v):
            chars.append("!")
        elif span <= 0:
            chars.append(SPARK_CHARS[3])
        else:
            frac = min(max((v - low) / span, 0.0), 1.0)
            chars.append(SPARK_CHARS[min(int(frac * len(SPARK_CHARS)), len(SPARK_CHARS) - 1)])
    return "".join(chars)


def bar(value: float, maximum: float, width: int = 30) -> str:
    """A horizontal bar of ``value / maximum`` of ``width`` cells, with eighth-cell precision."""
    if not maximum or not math.isfinite(value) or value <= 0:
        return ""
    cells = min(max(value / maximum, 0.0), 1.0) * width
    full = int(cells)
    part = int((cells - full) * 8)
    return _BAR_FULL * full + (_BAR_PARTS[part] if part else "")


def bar_chart(
    rows: Sequence[tuple[str, float]],
    *,
    width: int = 30,
    maximum: float | None = None,
    fmt: str = "{:g}",
    limit: float | None = None,
) -> list[str]:
    """Lines ``label  value  ███▌`` for each (label, value), labels aligned.

    With ``limit``, values above it are marked ``<- over`` so that the offending rows stand out
    in a long log.
    """
    if not rows:
        return []
    top = maximum if maximum is not None else max((abs(float(v)) for _, v in rows), default=0.0)
    if limit is not None:
        top = max(top, float(limit))
    label_w = max(len(str(label)) for label, _ in rows)
    texts = [_fmt_value(v, fmt) for _, v in rows]
    value_w = max(len(t) for t in texts)
    lines = []
    for (label, value), text in zip(rows, texts):
        mark = "  <- over" if limit is not None and float(value) > float(limit) else ""
        lines.append(
            f"{str(label).ljust(label_w)}  {text.rjust(value_w)}  {bar(float(value), top, width)}"
            f"{mark}".rstrip()
        )
    return lines


def _fmt_value(v: Any, fmt: str) -> str:
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def fmt_number(x: Any) -> str:
    """A short, readable number: integers as such, others with 4 significant digits."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isfinite(f) and f.is_integer() and abs(f) < 1e12:
        return str(int(f))
    return f"{f:.4g}"


def series_window(
    steps: Sequence[Any],
    values: Sequence[Any],
    center: Any | None = None,
    *,
    before: int = 4,
    after: int = 4,
) -> list[tuple[Any, Any]]:
    """The (step, value) pairs around ``center`` (a step; the end of the series when None)."""
    pairs = list(zip(list(steps), list(values)))
    if not pairs:
        return []
    if center is None:
        idx = len(pairs) - 1
    else:
        idx = min(range(len(pairs)), key=lambda i: abs(float(pairs[i][0]) - float(center)))
    lo = max(0, idx - before)
    return pairs[lo : idx + after + 1]


__all__ = ["SPARK_CHARS", "bar", "bar_chart", "fmt_number", "series_window", "sparkline"]
