"""The native on-disk format: framing of records in append-only tensor files.

Spec for implementers in other languages: docs/format.md. In short, every file starts with a
file header (magic, JSON length, CRC32 of the JSON, JSON) and continues with records, each a
fixed 48-byte little-endian header, ``ndim`` uint64 dimensions and the raw C-order payload. A
CRC32 (zlib's) covers everything in a record after its CRC field. Nothing here unpickles or
evaluates: dtypes come from a fixed table, lengths are checked against the file before any
array is made, and arrays are numpy views of the bytes read.

A record flagged as a fraction holds unsigned integer counts and a denominator in its header;
readers give its value as float32 ``counts / denominator`` (the Recorder's per-unit positive
fractions of ReLU outputs: a quarter of float32's bytes for batches of up to 255 samples).

Reading is vectorised where the file allows it: a run of records with one dtype, one shape
and one payload size (every step of a training loop) is validated through one structured
numpy view of all its headers, and its payloads can be handed out as one strided view.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..exceptions import CorruptRunError

FORMAT_NAME = "pytest-modelrules"
#: 2 added rows files (a row of scalars, one per tensor, per record), 3 fraction records
#: (integer counts over a denominator); a reader reads every version up to its own
FORMAT_VERSION = 3

FILE_MAGIC = b"MRTFILE1"
RECORD_MAGIC = b"MRR\x01"
# magic, crc, step, mode_step, wall_time, nbytes, mode, dtype, ndim, flags, denominator
RECORD_HEADER = struct.Struct("<4sIqqdQBBBBI")
FILE_HEADER = struct.Struct("<8sII")  # magic, json length, crc32(json)
_CRC = struct.Struct("<I")
MAX_NDIM = 32
MAX_FILE_HEADER_JSON = 1 << 20  # 1 MiB: a file header is a name and a few fields
#: tensors one rows file may name (writers split longer rows; the header stays under 1 MiB)
MAX_ROW_NAMES = 1 << 16
#: a complete record larger than this is hostile whatever the file size (1 TiB)
MAX_RECORD_BYTES = 1 << 40
#: shortest run of records worth the vectorised path
_MIN_UNIFORM_RUN = 4
#: record flag (version 3): the payload is unsigned integer counts, the header's last field
#: their denominator; the value is float32 counts / denominator
FLAG_FRACTION = 0x01
MAX_DENOMINATOR = 2**32 - 1


class Fraction(NamedTuple):
    """A value to store as counts over one denominator (a fraction record): unsigned integer
    ``counts`` (exact in float32: below 2**24) and ``denominator`` (0 to 2**32 - 1). Readers
    give ``float32(counts) / float32(denominator)``, NaN where both are 0 (an empty batch)."""

    counts: np.ndarray
    denominator: int

    def checked(self) -> tuple[np.ndarray, int]:
        """(counts as a numpy array, denominator as an int), or TypeError / ValueError saying
        what is wrong: counts that are not unsigned integers, a denominator out of range."""
        counts = np.asarray(self.counts)
        if counts.dtype.kind != "u":
            raise TypeError(f"a Fraction's counts must be unsigned integers, not {counts.dtype}")
        den = int(self.denominator)
        if not 0 <= den <= MAX_DENOMINATOR:
            raise ValueError(f"a Fraction's denominator must be in [0, 2**32), got {den}")
        return counts, den


def fraction_values(counts: np.ndarray, denominator: int | np.ndarray) -> np.ndarray:
    """float32 ``counts / denominator`` as a reader gives a fraction record (``denominator``
    may hold one per leading row of ``counts``): the same float32 division the Recorder's
    positive fractions always were, NaN for 0 / 0."""
    den = np.asarray(denominator, dtype=np.float32)
    if den.ndim:
        den = den.reshape(den.shape + (1,) * (counts.ndim - den.ndim))
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts.astype(np.float32) / den


# dtype codes: a closed table, so a file can never name an arbitrary (object) dtype
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<f2"),
    5: np.dtype("i1"),
    6: np.dtype("<i2"),
    7: np.dtype("<i4"),
    8: np.dtype("<i8"),
    9: np.dtype("u1"),
    10: np.dtype("<u2"),
    11: np.dtype("<u4"),
    12: np.dtype("<u8"),
    13: np.dtype("?"),
    14: np.dtype("<c8"),
    15: np.dtype("<c16"),
}
CODE_OF_DTYPE: dict[np.dtype, int] = {
    dt.newbyteorder("<"): code for code, dt in DTYPE_CODES.items()
}
_MAGIC_U32 = int.from_bytes(RECORD_MAGIC, "little")
_F32 = np.dtype("<f4")


def dtype_code(dtype: np.dtype) -> int:
    """The format's code for a numpy dtype; raises TypeError for one the format cannot hold."""
    dt = np.dtype(dtype)
    code = CODE_OF_DTYPE.get(dt.newbyteorder("<")) if dt.kind in "biufc" else None
    if code is None:
        raise TypeError(
            f"dtype {dt} cannot be stored: use one of "
            + ", ".join(sorted(str(d) for d in DTYPE_CODES.values()))
        )
    return code


def encode_file_header(fields: dict) -> bytes:
    """The bytes that open every file of the format.

    The JSON is padded with spaces to a multiple of 8 bytes so that records start 8-aligned
    (payloads then are aligned for their dtype; readers need not rely on it)."""
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    payload += b" " * (-(FILE_HEADER.size + len(payload)) % 8)
    return FILE_HEADER.pack(FILE_MAGIC, len(payload), zlib.crc32(payload)) + payload


def encode_record_parts(
    array: np.ndarray | Fraction, *, step: int, mode: int, mode_step: int, wall_time: float
) -> tuple[bytes, memoryview]:
    """One record as (header and shape bytes, payload) without copying the payload.

    The payload is a byte memoryview of the array itself when it is already C-contiguous and
    little-endian (else of a converted copy); the CRC is computed over those same bytes, so
    ``header + bytes(payload)`` is exactly :func:`encode_record`'s result. The caller must not
    change the array until the payload is written. A :class:`Fraction` is a fraction record.
    """
    flags = den = 0
    if isinstance(array, Fraction):
        array, den = array.checked()
        flags = FLAG_FRACTION
    arr = np.asarray(array)
    code = dtype_code(arr.dtype)
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"arrays of more than {MAX_NDIM} dimensions cannot be stored")
    shape = arr.shape
    arr = np.asarray(arr, dtype=DTYPE_CODES[code])  # no copy when already little-endian
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    payload = memoryview(arr.reshape(-1).view(np.uint8))
    ndim = len(shape)
    # bytes 8.. of the header, then the shape: what the CRC covers before the payload
    body = RECORD_HEADER.pack(
        RECORD_MAGIC, 0, step, mode_step, wall_time, payload.nbytes, mode, code, ndim, flags, den
    )[8:]
    if ndim:
        body += struct.pack(f"<{ndim}Q", *shape)
    crc = zlib.crc32(payload, zlib.crc32(body))
    return RECORD_MAGIC + _CRC.pack(crc) + body, payload


# native-order dtypes the fast encoder takes as they are (little-endian hosts)
_FAST_CODES: dict[np.dtype, int] = (
    {dt.newbyteorder("="): code for code, dt in DTYPE_CODES.items()} if np.little_endian else {}
)
_SHAPES: dict[tuple[int, ...], bytes] = {}


def encode_record_fast(
    array: np.ndarray | np.generic | Fraction,
    step: int,
    mode: int,
    mode_step: int,
    wall_time: float,
) -> tuple[bytes, bytes | memoryview]:
    """:func:`encode_record_parts` with less Python per record, for writers of many small
    records a step (the Recorder's ~200): a numpy array or scalar of a format dtype in native
    order, C-contiguous, is encoded directly (payloads of up to 64 bytes as bytes, larger
    ones as a view of the array); anything else (a :class:`Fraction` too) goes through
    encode_record_parts. Same bytes."""
    code = _FAST_CODES.get(getattr(array, "dtype", None))
    if code is None or not array.flags.c_contiguous:  # type: ignore[union-attr]
        if not isinstance(array, Fraction):
            array = np.asarray(array)
        return encode_record_parts(
            array, step=step, mode=mode, mode_step=mode_step, wall_time=wall_time
        )
    shape = array.shape
    nbytes = array.nbytes
    payload: bytes | memoryview = (
        array.tobytes() if nbytes <= 64 else memoryview(array.reshape(-1).view(np.uint8))
    )
    dims = _SHAPES.get(shape)
    if dims is None:
        if len(shape) > MAX_NDIM:
            raise ValueError(f"arrays of more than {MAX_NDIM} dimensions cannot be stored")
        dims = _SHAPES[shape] = struct.pack(f"<{len(shape)}Q", *shape) if shape else b""
        if len(_SHAPES) > 4096:
            _SHAPES.clear()
    body = (
        RECORD_HEADER.pack(
            RECORD_MAGIC, 0, step, mode_step, wall_time, nbytes, mode, code, len(shape), 0, 0
        )[8:]
        + dims
    )
    return RECORD_MAGIC + _CRC.pack(zlib.crc32(payload, zlib.crc32(body))) + body, payload


def encode_record(
    array: np.ndarray | Fraction, *, step: int, mode: int, mode_step: int, wall_time: float
) -> bytes:
    """One record: header, shape and the array's little-endian C-order bytes."""
    head, payload = encode_record_parts(
        array, step=step, mode=mode, mode_step=mode_step, wall_time=wall_time
    )
    return b"".join((head, payload))


@dataclass
class FileHeader:
    """The JSON fields of a file's header and where its records start."""

    fields: dict
    data_offset: int


def parse_file_header(buf: bytes | memoryview, path: str) -> FileHeader | None:
    """Validate and decode a file header; None when the file is too short to hold one yet
    (a file being created), CorruptRunError when it is wrong."""
    if len(buf) < FILE_HEADER.size:
        if bytes(buf[: len(FILE_MAGIC)]) != FILE_MAGIC[: len(buf)]:
            raise CorruptRunError(path, "not a pytest-modelrules file (bad magic)", 0)
        return None
    magic, length, crc = FILE_HEADER.unpack_from(buf, 0)
    if magic != FILE_MAGIC:
        # its bytes are not shown: a run from a pull request may link to any file of the host
        raise CorruptRunError(path, "not a pytest-modelrules file (no magic number)", 0)
    if length > MAX_FILE_HEADER_JSON:
        raise CorruptRunError(path, f"file header claims {length} bytes of JSON", 8)
    end = FILE_HEADER.size + length
    if len(buf) < end:
        return None
    raw = bytes(buf[FILE_HEADER.size : end])
    if zlib.crc32(raw) != crc:
        raise CorruptRunError(path, "file header checksum mismatch", FILE_HEADER.size)
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge integers, nesting
        raise CorruptRunError(
            path, f"file header is not valid JSON ({exc})", FILE_HEADER.size
        ) from None
    if not isinstance(fields, dict):
        raise CorruptRunError(path, "file header JSON is not an object", FILE_HEADER.size)
    return FileHeader(fields, end)


def row_names(fields: dict, path: str) -> list[str]:
    """The tensor names of a rows file's header: a non-empty list of distinct non-empty
    strings (at most MAX_ROW_NAMES); CorruptRunError naming the file otherwise."""
    names = fields.get("names")
    if not isinstance(names, list) or not names:
        raise CorruptRunError(path, "rows file header has no list of tensor names")
    if len(names) > MAX_ROW_NAMES:
        raise CorruptRunError(path, f"rows file header names {len(names)} tensors")
    if not all(type(name) is str and name for name in names):
        raise CorruptRunError(path, "a tensor name in the rows file header is not a string")
    if len(set(names)) != len(names):
        raise CorruptRunError(path, "the rows file header names a tensor twice")
    return names


@dataclass
class RecordIndex:
    """Where the records of one file lie, as parallel numpy arrays (one entry per record).

    ``layouts`` holds each distinct (dtype, shape, denominator) once (the denominator of a
    fraction record, None for the others); ``kinds[i]`` points into it, so a file of a
    million same-shaped records costs no per-record Python objects. ``chunks[i]``
    names the buffer (of the reader's list of buffers) that holds record ``i``, ``offsets[i]``
    its payload's offset in that buffer.
    """

    steps: np.ndarray  # int64 global steps
    modes: np.ndarray  # uint8
    mode_steps: np.ndarray  # int64
    wall_times: np.ndarray  # float64
    offsets: np.ndarray  # int64 payload offsets into the chunk
    kinds: np.ndarray  # int32 index into layouts
    chunks: np.ndarray  # int32 chunk number
    layouts: list[tuple[np.dtype, tuple[int, ...], int | None]] = field(default_factory=list)
    end: int = 0  # file offset just past the last complete record

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def dtypes(self) -> list[np.dtype]:
        """Each record's value dtype (float32 for a fraction record, whatever its counts')."""
        return [
            self.layouts[k][0] if self.layouts[k][2] is None else _F32 for k in self.kinds.tolist()
        ]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [self.layouts[k][1] for k in self.kinds.tolist()]

    @classmethod
    def empty(cls, end: int = 0) -> RecordIndex:
        i64 = np.zeros(0, np.int64)
        return cls(
            i64, np.zeros(0, np.uint8), i64, np.zeros(0, np.float64), i64,
            np.zeros(0, np.int32), np.zeros(0, np.int32), [], end,
        )  # fmt: skip

    def extend(self, new: RecordIndex) -> RecordIndex:
        """This index followed by ``new`` (whose layouts are merged into ours)."""
        if not len(new):
            return RecordIndex(
                self.steps, self.modes, self.mode_steps, self.wall_times, self.offsets,
                self.kinds, self.chunks, self.layouts, new.end,
            )  # fmt: skip
        layouts = list(self.layouts)
        remap = np.empty(len(new.layouts), np.int32)
        for j, lay in enumerate(new.layouts):
            if lay not in layouts:
                layouts.append(lay)
            remap[j] = layouts.index(lay)
        return RecordIndex(
            np.concatenate([self.steps, new.steps]),
            np.concatenate([self.modes, new.modes]),
            np.concatenate([self.mode_steps, new.mode_steps]),
            np.concatenate([self.wall_times, new.wall_times]),
            np.concatenate([self.offsets, new.offsets]),
            np.concatenate([self.kinds, remap[new.kinds]]),
            np.concatenate([self.chunks, new.chunks]),
            layouts,
            new.end,
        )


def _header_dtype(ndim: int, stride: int) -> np.dtype:
    """A structured dtype that reads a run of equal-size records as one array."""
    names = ["magic", "crc", "step", "mode_step", "wall", "nbytes", "mode", "code", "ndim"]
    formats: list = ["<u4", "<u4", "<i8", "<i8", "<f8", "<u8", "u1", "u1", "u1"]
    offsets = [0, 4, 8, 16, 24, 32, 40, 41, 42]
    names += ["flags", "denominator"]
    formats += ["u1", "<u4"]
    offsets += [43, 44]
    if ndim:
        names.append("shape")
        formats.append(("<u8", (ndim,)))
        offsets.append(RECORD_HEADER.size)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": stride})


class _Builder:
    """Collects parsed records in file order: single records and vectorised runs."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.single: list[tuple[int, int, int, float, int, int]] = []
        self.layouts: list[tuple[np.dtype, tuple[int, ...], int | None]] = []
        self._kind_of: dict[tuple[np.dtype, tuple[int, ...], int | None], int] = {}

    def kind(self, dtype: np.dtype, shape: tuple[int, ...], denominator: int | None) -> int:
        key = (dtype, shape, denominator)
        k = self._kind_of.get(key)
        if k is None:
            k = self._kind_of[key] = len(self.layouts)
            self.layouts.append(key)
        return k

    def _flush(self) -> None:
        if self.single:
            cols = list(zip(*self.single))
            self.parts.append(
                (
                    np.asarray(cols[0], np.int64),
                    np.asarray(cols[1], np.uint8),
                    np.asarray(cols[2], np.int64),
                    np.asarray(cols[3], np.float64),
                    np.asarray(cols[4], np.int64),
                    np.asarray(cols[5], np.int32),
                )
            )
            self.single = []

    def add_run(self, steps, modes, mode_steps, walls, offsets, kind: int) -> None:
        self._flush()
        n = len(steps)
        self.parts.append(
            (
                np.asarray(steps, np.int64),
                np.asarray(modes, np.uint8),
                np.asarray(mode_steps, np.int64),
                np.asarray(walls, np.float64),
                offsets,
                np.full(n, kind, np.int32),
            )
        )

    def build(self, end: int) -> RecordIndex:
        self._flush()
        if not self.parts:
            return RecordIndex.empty(end)
        cols = [np.concatenate([p[i] for p in self.parts]) for i in range(6)]
        chunks = np.full(len(cols[0]), self.chunk, np.int32)
        return RecordIndex(*cols, chunks, self.layouts, end)


def parse_records(
    buf: bytes | memoryview,
    path: str,
    start: int,
    *,
    verify_crc: bool = True,
    commit_limit: int | None = None,
    base: int = 0,
    chunk: int = 0,
) -> RecordIndex:
    """Walk the records from ``start``; stop at an incomplete record at the end of the file.

    An incomplete tail is a write in flight (or cut by a crash) and is left for a later
    refresh. A complete record that fails validation raises CorruptRunError with its offset.
    ``commit_limit`` (a global step) is the newest committed step: an incomplete tail that
    belongs to a committed step means the file was cut after the fact, which is corruption.
    ``base`` is the file offset of ``buf[0]`` (for messages and ``end``); ``chunk`` is stored
    in the index so that the caller knows which buffer holds the records.
    """
    mv = memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)
    size = len(mv)
    hsize = RECORD_HEADER.size
    out = _Builder(chunk)
    pos = start
    unpack = RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    while pos < size:
        if size - pos < hsize:
            _incomplete(mv, path, pos, base, commit_limit)
            break
        magic, crc, step, mode_step, wall, nbytes, mode, code, ndim, flags, den = unpack(mv, pos)
        where = base + pos
        if magic != RECORD_MAGIC:
            raise CorruptRunError(path, f"bad record magic {bytes(magic)!r}", where)
        if ndim > MAX_NDIM:
            raise CorruptRunError(path, f"record claims {ndim} dimensions (max {MAX_NDIM})", where)
        dtype = DTYPE_CODES.get(code)
        if dtype is None:
            raise CorruptRunError(path, f"unknown dtype code {code}", where)
        if mode not in (1, 2, 3, 4):
            raise CorruptRunError(path, f"unknown mode {mode}", where)
        if flags & ~FLAG_FRACTION:
            raise CorruptRunError(path, f"unknown record flags {flags:#x}", where)
        if not flags and den:
            raise CorruptRunError(path, "header bytes 44-47 of a plain record are not 0", where)
        if flags and dtype.kind != "u":
            raise CorruptRunError(
                path, f"fraction record of dtype {dtype}: its counts must be unsigned", where
            )
        denominator = den if flags else None
        if step < 0 or mode_step < 0:
            raise CorruptRunError(path, f"negative step {step} / mode step {mode_step}", where)
        if size - pos - hsize < 8 * ndim:
            _incomplete(mv, path, pos, base, commit_limit)
            break
        shape = struct.unpack_from(f"<{ndim}Q", mv, pos + hsize)
        count = extent = 1
        for dim in shape:
            count *= dim  # Python ints: no overflow on hostile sizes
            extent *= max(dim, 1)  # a zero beside huge dimensions: no bytes, yet no array
        if count * dtype.itemsize != nbytes:
            raise CorruptRunError(
                path,
                f"record of shape {tuple(shape)} and dtype {dtype} claims {nbytes} bytes",
                where,
            )
        if nbytes > MAX_RECORD_BYTES:
            raise CorruptRunError(path, f"record claims {nbytes} bytes", where)
        if extent * dtype.itemsize > MAX_RECORD_BYTES:
            raise CorruptRunError(
                path, f"record of shape {tuple(shape)} is larger than allowed", where
            )
        data = pos + hsize + 8 * ndim
        if nbytes > size - data:
            _incomplete(mv, path, pos, base, commit_limit)
            break
        stride = data + nbytes - pos
        # a run of records with this one layout: validate all headers at once
        n_fit = (size - pos) // stride
        if n_fit >= _MIN_UNIFORM_RUN:
            k = _uniform_run(
                mv, path, pos, n_fit, stride, ndim, shape, (code, flags, den), nbytes, base,
                verify_crc,
            )  # fmt: skip
            if k >= 2:
                view = np.frombuffer(mv, _header_dtype(ndim, stride), count=k, offset=pos)
                offsets = np.arange(k, dtype=np.int64) * stride + data
                out.add_run(
                    view["step"], view["mode"], view["mode_step"], view["wall"],
                    offsets, out.kind(dtype, tuple(shape), denominator),
                )  # fmt: skip
                pos += k * stride
                continue
        if verify_crc and crc32(mv[pos + 8 : data + nbytes]) != crc:
            raise CorruptRunError(path, f"checksum mismatch in the record of step {step}", where)
        kind = out.kind(dtype, tuple(shape), denominator)
        out.single.append((step, mode, mode_step, wall, data, kind))
        pos = data + nbytes
    index = out.build(base + pos)
    if len(index) > 1 and not bool(np.all(np.diff(index.steps) > 0)):
        bad = int(np.argmin(np.diff(index.steps) > 0)) + 1
        raise CorruptRunError(
            path,
            f"record of step {int(index.steps[bad])} follows step {int(index.steps[bad - 1])}: "
            "steps must increase within a file",
            base + int(index.offsets[bad]),
        )
    return index


def _uniform_run(
    mv: memoryview,
    path: str,
    pos: int,
    n_fit: int,
    stride: int,
    ndim: int,
    shape: tuple[int, ...],
    kind: tuple[int, int, int],
    nbytes: int,
    base: int,
    verify_crc: bool,
) -> int:
    """How many records from ``pos`` share the first one's layout (``kind``: its dtype code,
    flags and denominator), checksums verified."""
    code, flags, den = kind
    view = np.frombuffer(mv, _header_dtype(ndim, stride), count=n_fit, offset=pos)
    ok = (
        (view["magic"] == _MAGIC_U32)
        & (view["nbytes"] == nbytes)
        & (view["code"] == code)
        & (view["ndim"] == ndim)
        & (view["flags"] == flags)
        & (view["denominator"] == den)
        & (view["mode"] >= 1)
        & (view["mode"] <= 4)
        & (view["step"] >= 0)
        & (view["mode_step"] >= 0)
    )
    if ndim:
        ok &= (view["shape"] == np.asarray(shape, np.uint64)).all(axis=1)
    k = n_fit if bool(ok.all()) else int(np.argmin(ok))
    if k < 2:
        return k
    if verify_crc:
        crc32 = zlib.crc32
        got = np.fromiter(
            (crc32(mv[p + 8 : p + stride]) for p in range(pos, pos + k * stride, stride)),
            dtype=np.uint32,
            count=k,
        )
        bad = np.nonzero(got != view["crc"][:k])[0]
        if len(bad):
            i = int(bad[0])
            raise CorruptRunError(
                path,
                f"checksum mismatch in the record of step {int(view['step'][i])}",
                base + pos + i * stride,
            )
    return k


def _incomplete(mv: memoryview, path: str, pos: int, base: int, commit_limit: int | None) -> None:
    """Decide whether a short tail is a write in flight (fine) or a truncated file (error).

    A write in flight always belongs to a step newer than every committed one; the tail's
    step is readable once 16 bytes of its header are there.
    """
    avail = len(mv) - pos
    head = bytes(mv[pos : pos + min(avail, 4)])
    if head != RECORD_MAGIC[: len(head)]:
        raise CorruptRunError(path, f"bad record magic {head!r}", base + pos)
    if commit_limit is None or avail < 16:
        return
    step = struct.unpack_from("<q", mv, pos + 8)[0]
    if step <= commit_limit:
        raise CorruptRunError(
            path, f"file is truncated inside the record of committed step {step}", base + pos
        )


def strided_view(
    buf: bytes | memoryview,
    dtype: np.dtype,
    shape: tuple[int, ...],
    first: int,
    stride: int,
    n: int,
) -> np.ndarray:
    """``n`` same-layout payloads, ``stride`` bytes apart from offset ``first``, as one
    read-only (n, *shape) view of ``buf``: no copy."""
    count = 1
    for dim in shape:
        count *= dim
    if n == 0 or count == 0:
        return np.zeros((n, *shape), dtype=dtype)
    inner = np.frombuffer(buf, dtype=dtype, count=count, offset=first).reshape(shape)
    span = first + (n - 1) * stride + count * dtype.itemsize
    if span > len(buf) or stride < count * dtype.itemsize:
        raise ValueError("records do not fit the buffer")  # an internal error, never the file's
    return np.lib.stride_tricks.as_strided(
        inner, shape=(n, *shape), strides=(stride, *inner.strides), writeable=False
    )


def array_at(buf: bytes | memoryview, index: RecordIndex, i: int) -> np.ndarray:
    """The i-th record's value: a read-only view of ``buf`` (no copy), or for a fraction
    record its counts divided by its denominator (a new read-only float32 array)."""
    dtype, shape, denominator = index.layouts[int(index.kinds[i])]
    count = 1
    for dim in shape:
        count *= dim
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=int(index.offsets[i]))
    arr = arr.reshape(shape)
    if denominator is not None:
        arr = fraction_values(arr, denominator)
        arr.flags.writeable = False
    return arr
