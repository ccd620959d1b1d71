"""The native on-disk format: framing of records in append-only tensor files.

Spec for implementers in other languages: docs/format.md. In short, every file starts with a
file header (magic, JSON length, CRC32 of the JSON, JSON) and continues with records, each a
fixed 48-byte little-endian header, ``ndim`` uint64 dimensions and the raw C-order payload. A
CRC32 (zlib's) covers everything in a record after its CRC field. Nothing here unpickles or
evaluates: dtypes come from a fixed table, lengths are checked against the file before any
array is made, and arrays are numpy views of the bytes read.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..exceptions import CorruptRunError

FORMAT_NAME = "pytest-modelrules"
FORMAT_VERSION = 1

FILE_MAGIC = b"MRTFILE1"
RECORD_MAGIC = b"MRR\x01"
# magic, crc, step, mode_step, wall_time, nbytes, mode, dtype, ndim, flags, 4 pad bytes
RECORD_HEADER = struct.Struct("<4sIqqdQBBBB4x")
FILE_HEADER = struct.Struct("<8sII")  # magic, json length, crc32(json)
MAX_NDIM = 32
MAX_FILE_HEADER_JSON = 1 << 20  # 1 MiB: a file header is a name and a few fields

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
}
CODE_OF_DTYPE: dict[np.dtype, int] = {dt.newbyteorder("<"): code for code, dt in DTYPE_CODES.items()}


def dtype_code(dtype: np.dtype) -> int:
    """The format's code for a numpy dtype; raises TypeError for one the format cannot hold."""
    dt = np.dtype(dtype)
    code = CODE_OF_DTYPE.get(dt.newbyteorder("<"))
    if code is None:
        raise TypeError(
            f"dtype {dt} cannot be stored: use one of "
            + ", ".join(sorted(str(d) for d in DTYPE_CODES.values()))
        )
    return code


def encode_file_header(fields: dict) -> bytes:
    """The bytes that open every file of the format."""
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return FILE_HEADER.pack(FILE_MAGIC, len(payload), zlib.crc32(payload)) + payload


def encode_record(
    array: np.ndarray, *, step: int, mode: int, mode_step: int, wall_time: float
) -> bytes:
    """One record: header, shape and the array's little-endian C-order bytes."""
    arr = np.asarray(array)
    code = dtype_code(arr.dtype)
    arr = np.asarray(arr, dtype=DTYPE_CODES[code])
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"arrays of more than {MAX_NDIM} dimensions cannot be stored")
    payload = arr.tobytes()
    shape = struct.pack(f"<{arr.ndim}Q", *arr.shape)
    rest = RECORD_HEADER.pack(
        RECORD_MAGIC, 0, step, mode_step, wall_time, len(payload), mode, code, arr.ndim, 0
    )[8:]
    crc = zlib.crc32(payload, zlib.crc32(shape, zlib.crc32(rest)))
    return RECORD_MAGIC + struct.pack("<I", crc) + rest + shape + payload


@dataclass
class FileHeader:
    """The JSON fields of a file's header and where its records start."""

    fields: dict
    data_offset: int


def parse_file_header(buf: bytes | memoryview, path: str) -> FileHeader | None:
    """Validate and decode a file header; None when the file is too short to hold one yet
    (a file being created), CorruptRunError when it is wrong."""
    if len(buf) < FILE_HEADER.size:
        return None
    magic, length, crc = FILE_HEADER.unpack_from(buf, 0)
    if magic != FILE_MAGIC:
        raise CorruptRunError(path, f"not a pytest-modelrules file (magic {bytes(magic)!r})", 0)
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunError(path, f"file header is not valid JSON ({exc})", FILE_HEADER.size)
    if not isinstance(fields, dict):
        raise CorruptRunError(path, "file header JSON is not an object", FILE_HEADER.size)
    return FileHeader(fields, end)


@dataclass
class RecordIndex:
    """Where the records of one file lie, as parallel numpy arrays (one entry per record)."""

    steps: np.ndarray  # int64 global steps
    modes: np.ndarray  # uint8
    mode_steps: np.ndarray  # int64
    wall_times: np.ndarray  # float64
    offsets: np.ndarray  # int64 payload offsets into the buffer
    dtypes: list[np.dtype]
    shapes: list[tuple[int, ...]]
    end: int  # offset just past the last complete record

    def __len__(self) -> int:
        return len(self.steps)


def parse_records(
    buf: bytes | memoryview,
    path: str,
    start: int,
    *,
    verify_crc: bool = True,
    commit_limit: int | None = None,
) -> RecordIndex:
    """Walk the records from ``start``; stop at an incomplete record at the end of the file.

    An incomplete tail is a write in flight (or cut by a crash) and is left for a later
    refresh. A complete record that fails validation raises CorruptRunError with its offset.
    ``commit_limit`` (a global step) is the newest committed step: an incomplete tail that
    belongs to a committed step means the file was cut after the fact, which is corruption.
    """
    size = len(buf)
    hsize = RECORD_HEADER.size
    steps: list[int] = []
    modes: list[int] = []
    mode_steps: list[int] = []
    walls: list[float] = []
    offsets: list[int] = []
    dtypes: list[np.dtype] = []
    shapes: list[tuple[int, ...]] = []
    pos = start
    unpack = RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    while pos < size:
        if size - pos < hsize:
            _incomplete(buf, path, pos, commit_limit, None)
            break
        magic, crc, step, mode_step, wall, nbytes, mode, code, ndim, _flags = unpack(buf, pos)
        if magic != RECORD_MAGIC:
            raise CorruptRunError(path, f"bad record magic {bytes(magic)!r}", pos)
        if ndim > MAX_NDIM:
            raise CorruptRunError(path, f"record claims {ndim} dimensions (max {MAX_NDIM})", pos)
        dtype = DTYPE_CODES.get(code)
        if dtype is None:
            raise CorruptRunError(path, f"unknown dtype code {code}", pos)
        if mode not in (1, 2, 3, 4):
            raise CorruptRunError(path, f"unknown mode {mode}", pos)
        if size - pos - hsize < 8 * ndim:
            _incomplete(buf, path, pos, commit_limit, step)
            break
        shape = struct.unpack_from(f"<{ndim}Q", buf, pos + hsize)
        count = 1
        for dim in shape:
            count *= dim  # Python ints: no overflow on hostile sizes
        if count * dtype.itemsize != nbytes:
            raise CorruptRunError(
                path,
                f"record of shape {tuple(shape)} and dtype {dtype} claims {nbytes} bytes",
                pos,
            )
        data = pos + hsize + 8 * ndim
        if nbytes > size - data:
            if nbytes > (1 << 40):
                raise CorruptRunError(path, f"record claims {nbytes} bytes", pos)
            _incomplete(buf, path, pos, commit_limit, step)
            break
        if verify_crc and crc32(buf[data : data + nbytes], crc32(buf[pos + 8 : data])) != crc:
            raise CorruptRunError(path, f"checksum mismatch in the record of step {step}", pos)
        steps.append(step)
        modes.append(mode)
        mode_steps.append(mode_step)
        walls.append(wall)
        offsets.append(data)
        dtypes.append(dtype)
        shapes.append(tuple(shape))
        pos = data + nbytes
    return RecordIndex(
        np.asarray(steps, dtype=np.int64),
        np.asarray(modes, dtype=np.uint8),
        np.asarray(mode_steps, dtype=np.int64),
        np.asarray(walls, dtype=np.float64),
        np.asarray(offsets, dtype=np.int64),
        dtypes,
        shapes,
        pos,
    )


def _incomplete(buf, path: str, pos: int, commit_limit: int | None, step: int | None) -> None:
    """Decide whether a short tail is a write in flight (fine) or a truncated file (error)."""
    if commit_limit is not None and step is not None and step <= commit_limit:
        raise CorruptRunError(
            path, f"file is truncated inside the record of committed step {step}", pos
        )


def array_at(buf: bytes | memoryview, index: RecordIndex, i: int) -> np.ndarray:
    """The i-th record's array as a read-only view of ``buf`` (no copy)."""
    dtype = index.dtypes[i]
    shape = index.shapes[i]
    count = 1
    for dim in shape:
        count *= dim
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=int(index.offsets[i]))
    return arr.reshape(shape)
