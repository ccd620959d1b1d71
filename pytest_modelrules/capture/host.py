"""What the host does with a step's transferred bytes: split them into the named arrays and
rows of scalars that ``RunWriter.write_step`` takes.

A saving step's values travel to the host as one buffer per device: the values of each dtype
concatenated, described by *segments* ``(dtype key, [(number of elements, layout), ...])``.
The layouts (:class:`Red`, :class:`Scalars`, :class:`Counts`, :class:`Full`) say what each
run of elements is. No torch here: the Recorder's writer thread and its writer process
(capture/writer_process.py, which never imports torch) unpack with the same code, and the
layouts travel to the process as JSON (:func:`layout_to_json`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..store.format import Fraction

#: the dtype each reduction is stored in (others: float64)
STORED_DTYPE = {
    "positive_fraction": "float32",
    "nan_count": "int64",
    "inf_count": "int64",
    "numel": "int64",
}

#: the dtype key of bfloat16 values: numpy has no bfloat16, they travel as their 16 bits,
#: the upper half of a float32's (other keys are numpy dtype strings, ``np.dtype(...).str``)
BFLOAT16 = "bfloat16"

Item = tuple[str, str, tuple[int, ...]]  # (stored name, reduction, shape)
Segments = list[tuple[str, list[tuple[int, Any]]]]


class Red(NamedTuple):
    """Reduction values laid out one after another: (stored name, reduction, shape); the host
    casts each to the reduction's stored dtype."""

    items: list[Item]


class Scalars(NamedTuple):
    """One scalar per name (a row of ``compute_batch_rows``), stored as ``dtype``; with a
    ``divisor`` (each tensor's numel, float64) the row holds sums and the host divides: an
    abs_mean from the 1-norms, as the device would (float32 widened, then a float64
    division)."""

    names: list[str]
    dtype: str
    divisor: np.ndarray | None = None


class Counts(NamedTuple):
    """positive_fractions sent as counts of positive values over the batch, one run of
    ``units`` counts per (stored name, batch size n, units), each flat in C order; the host
    divides by ``n`` (a float32 true division: k / n correctly rounded, as on the device)."""

    items: tuple[tuple[str, int, int], ...]


class Full(NamedTuple):
    """A full tensor, sent flat in C order."""

    name: str
    shape: tuple[int, ...]


def fractions(counts: np.ndarray, n: int) -> np.ndarray:
    """Counts of positive values over a batch of ``n`` -> float32 fractions."""
    if not n:  # an empty batch: 0 / 0, as the device would give it, without numpy's warning
        return np.full(counts.shape, np.nan, dtype=np.float32)
    return counts.astype(np.float32, copy=False) / np.float32(n)


def unpack(
    layout: Any,
    chunk: np.ndarray,
    arrays: list[tuple[str, np.ndarray | Fraction]],
    scalars: list[tuple[list[str], np.ndarray]],
    counts: dict[str, tuple[np.ndarray, int]],
) -> None:
    """Append the named arrays (or scalar rows) of one pending value (``chunk``: its
    transferred elements). Positive counts are gathered in ``counts`` instead, those of one
    name added up (DataParallel's replicas: one batch each), for :func:`add_fractions` once
    the step's values are all unpacked."""
    kind = type(layout)
    if kind is Scalars:
        if layout.divisor is not None:
            scalars.append((layout.names, chunk.astype(np.float64) / layout.divisor))
        else:
            scalars.append((layout.names, chunk.astype(layout.dtype, copy=False)))
    elif kind is Counts:
        offset = 0
        for name, n, units in layout.items:
            part = chunk[offset : offset + units]
            offset += units
            before = counts.get(name)
            if before is None:
                counts[name] = (part, n)
            elif before[0].shape == part.shape:  # exact sums: integers far below 2**53
                counts[name] = (np.add(before[0], part, dtype=np.float64), before[1] + n)
            else:
                raise ValueError(
                    f"{name}: {before[0].size} units in one call and {part.size} in another "
                    "of the same step (DataParallel replicas of different shapes)"
                )
    elif kind is Red:
        offset = 0
        for tname, red, shape in layout.items:
            n = int(np.prod(shape)) if shape else 1
            value = chunk[offset : offset + n].reshape(shape)
            offset += n
            arrays.append((tname, value.astype(STORED_DTYPE.get(red, "float64"), copy=False)))
    else:
        arrays.append((layout.name, chunk.reshape(layout.shape)))


def count_dtype(n: int) -> np.dtype | None:
    """The narrowest unsigned dtype that holds counts of up to ``n`` (None past 2**24: float32,
    the readers' division, is no longer exact there)."""
    for dtype in (np.uint8, np.uint16):
        if n <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint32) if n < 2**24 else None


def add_fractions(
    arrays: list[tuple[str, np.ndarray | Fraction]], counts: dict[str, tuple[np.ndarray, int]]
) -> None:
    """Append the positive fractions of the counts :func:`unpack` gathered, as fraction
    records (docs/format.md): the counts in the narrowest unsigned dtype over the batch size,
    which read back as the float32 ``counts / n`` they stood for: at the seed's scale 2.3 MB
    a step to write instead of 9.2 MB of float32 (the Triton kernel's uint8 counts are
    written as they came)."""
    for name, (part, n) in counts.items():
        dtype = count_dtype(n)
        if dtype is None:
            arrays.append((name, fractions(part, n)))
        else:
            arrays.append((name, Fraction(part.astype(dtype, copy=False), n)))


def unpack_step(
    blobs: list[tuple[Segments, np.ndarray]],
) -> tuple[list[tuple[str, np.ndarray | Fraction]], list[tuple[list[str], np.ndarray]]]:
    """Split each transferred buffer (bytes as a uint8 array, and its segments) into named
    arrays (views where the stored dtype is the transferred one) and rows of named scalars."""
    arrays: list[tuple[str, np.ndarray | Fraction]] = []
    scalars: list[tuple[list[str], np.ndarray]] = []
    counts: dict[str, tuple[np.ndarray, int]] = {}
    for segments, data in blobs:
        offset = 0
        for key, entries in segments:
            np_dtype = np.dtype(np.uint16 if key == BFLOAT16 else key)
            count = sum(n for n, _ in entries)
            end = offset + count * np_dtype.itemsize
            values = data[offset:end].view(np_dtype)
            offset = end
            if key == BFLOAT16:  # its 16 bits are a float32's upper half
                values = (values.astype(np.uint32) << 16).view(np.float32)
            pos = 0
            for n, layout in entries:
                chunk = values[pos : pos + n]
                pos += n
                unpack(layout, chunk, arrays, scalars, counts)
    add_fractions(arrays, counts)
    return arrays, scalars


def write_blobs(
    writer: Any,
    step: int,
    mode: Any,
    mode_step: int,
    blobs: list[tuple[Segments, np.ndarray]],
    collections: dict[str, Any] | None = None,
    dropped: set[str] | None = None,
) -> None:
    """Split a step's transferred buffers (:func:`unpack_step`), leave out the values in
    ``dropped`` (changed in place after their hand-off), write and commit the step with
    ``writer`` (a ``RunWriter``) and record new collections: the writer thread's and the
    writer process's work alike."""
    arrays, scalars = unpack_step(blobs)
    if dropped:
        arrays = [(name, value) for name, value in arrays if name not in dropped]
        scalars = [without(names, row, dropped) for names, row in scalars]
    writer.write_step(step, arrays, mode, mode_step, scalars=scalars)
    if collections is not None:
        writer.set_collections(collections)


def without(names: list[str], row: np.ndarray, dropped: set[str]) -> tuple[list[str], np.ndarray]:
    """A row of named scalars without the names in ``dropped``."""
    keep = [i for i, name in enumerate(names) if name not in dropped]
    if len(keep) == len(names):
        return names, row
    return [names[i] for i in keep], row[keep]


def layout_to_json(layout: Any) -> list[Any]:
    """A layout as JSON (what the writer process gets; :func:`layout_from_json` inverts it)."""
    kind = type(layout)
    if kind is Red:
        return ["red", [[name, red, list(shape)] for name, red, shape in layout.items]]
    if kind is Scalars:
        divisor = None if layout.divisor is None else layout.divisor.tolist()
        return ["scalars", list(layout.names), layout.dtype, divisor]
    if kind is Counts:
        return ["counts", [list(item) for item in layout.items]]
    if kind is Full:
        return ["full", layout.name, list(layout.shape)]
    raise TypeError(f"not a layout: {layout!r}")


def layout_from_json(value: list[Any]) -> Any:
    """The layout :func:`layout_to_json` gave ``value`` for."""
    kind = value[0]
    if kind == "red":
        return Red([(name, red, tuple(shape)) for name, red, shape in value[1]])
    if kind == "scalars":
        divisor = None if value[3] is None else np.asarray(value[3], dtype=np.float64)
        return Scalars(value[1], value[2], divisor)
    if kind == "counts":
        return Counts(tuple((name, int(n), int(units)) for name, n, units in value[1]))
    if kind == "full":
        return Full(value[1], tuple(value[2]))
    raise ValueError(f"unknown layout kind {kind!r}")
