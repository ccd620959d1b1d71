"""TFRecord framing, CRC32C and a small strict protobuf decoder for SageMaker Debugger's
event files (Event -> Summary -> Value -> TensorProto), and the matching encoder.

Why not the ``protobuf`` package: the messages needed are five, with a dozen fields; the
package would add a compiled dependency plus generated TensorFlow classes, and a generic
parser accepts what a strict one should refuse (see docs/format.md). Every length is checked
against the bytes that hold it before anything is allocated, and nothing is evaluated.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# -- CRC32C (Castagnoli), as TFRecord uses it ---------------------------------------------------


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_table()


def _crc32c_py(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC32C in pure Python (the fallback: about 10 MB/s)."""
    table = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _fast_crc32c():
    """A compiled CRC32C when one happens to be installed (optional, never required)."""
    try:
        import google_crc32c  # type: ignore[import-not-found]

        return lambda data: int(google_crc32c.value(bytes(data)))
    except Exception:
        pass
    try:
        import crc32c  # type: ignore[import-not-found]

        return lambda data: int(crc32c.crc32c(bytes(data)))
    except Exception:
        return None


_compiled = _fast_crc32c()


def crc32c(data: bytes | memoryview) -> int:
    """CRC32C of ``data``."""
    if _compiled is not None and len(data) > 64:
        return _compiled(data)
    return _crc32c_py(data)


def masked_crc(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


#: the footer smdebug writes instead of the payload's CRC (unless write_checksum was on)
SMDEBUG_FOOTER = masked_crc(b"0x12345678")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_len_crc_cache: dict[bytes, int] = {}


def length_crc(header8: bytes) -> int:
    """The masked CRC of a record's 8 length bytes (memoised: lengths repeat step after step)."""
    c = _len_crc_cache.get(header8)
    if c is None:
        c = masked_crc(header8)
        if len(_len_crc_cache) < 65536:
            _len_crc_cache[header8] = c
    return c


def frame_record(payload: bytes, *, checksum: bool = False) -> bytes:
    """One TFRecord: length, masked CRC of the length, payload, footer.

    smdebug's writer puts the masked CRC of ``b"0x12345678"`` as footer; ``checksum=True``
    writes the real CRC of the payload (what TensorFlow writes)."""
    head = _U64.pack(len(payload))
    footer = masked_crc(payload) if checksum else SMDEBUG_FOOTER
    return head + _U32.pack(length_crc(head)) + payload + _U32.pack(footer)


class FramingError(ValueError):
    """A TFRecord or protobuf problem; the caller turns it into CorruptRunError with a path."""

    def __init__(self, problem: str, offset: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.offset = offset


def unframe_record(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Check the record at ``buf[pos:end]``; (payload start, payload end). Raises FramingError."""
    if end - pos < 16:
        raise FramingError(f"record of {end - pos} bytes is shorter than its framing", pos)
    head = bytes(buf[pos : pos + 8])
    (length,) = _U64.unpack(head)
    if length != end - pos - 16:
        raise FramingError(
            f"record claims {length} payload bytes where {end - pos - 16} are indexed", pos
        )
    (hcrc,) = _U32.unpack_from(buf, pos + 8)
    if hcrc != length_crc(head):
        raise FramingError("checksum mismatch of the record length", pos)
    start = pos + 12
    stop = start + length
    (footer,) = _U32.unpack_from(buf, stop)
    if footer != SMDEBUG_FOOTER and footer != masked_crc(memoryview(buf)[start:stop]):
        raise FramingError("checksum mismatch of the record payload", stop)
    return start, stop


def iter_records(buf: bytes) -> list[tuple[int, int]]:
    """(start, end) of every complete record of a whole event file, in order; a short tail
    (a file being written) ends the list. Raises FramingError on damage."""
    out = []
    pos = 0
    n = len(buf)
    while n - pos >= 12:
        (length,) = _U64.unpack_from(buf, pos)
        if length > n:  # also catches absurd lengths before any arithmetic on them
            break
        end = pos + 16 + length
        if end > n:
            break
        unframe_record(buf, pos, end)
        out.append((pos, end))
        pos = end
    return out


# -- protobuf wire format --------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint; at most 10 bytes."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise FramingError("truncated varint", pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >= 1 << 64:
                raise FramingError("varint larger than 64 bits", pos)
            return result, pos
        shift += 7
        if shift >= 70:
            raise FramingError("varint longer than 10 bytes", pos)


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """The fields of a message, one at a time, as (number, wire type, a, b): for varints and
    fixed-size fields ``a`` is the value, for length-delimited ones ``buf[a:b]`` is the
    payload. Groups and field number 0 are refused; every length is checked against ``end``.
    A generator, not a list: a hostile message of a million two-byte fields would otherwise
    cost a tuple (some 80 bytes) per two bytes of file."""
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        num = key >> 3
        wt = key & 7
        if num == 0:
            raise FramingError("protobuf field number 0", pos)
        if wt == 2:
            if pos >= end:
                raise FramingError("truncated length", pos)
            ln = buf[pos]
            if ln < 0x80:
                pos += 1
            else:
                ln, pos = _varint(buf, pos, end)
            if ln > end - pos:
                raise FramingError(f"field {num} claims {ln} bytes past its message", pos)
            yield num, 2, pos, pos + ln
            pos += ln
        elif wt == 0:
            if pos >= end:
                raise FramingError("truncated varint", pos)
            val = buf[pos]
            if val < 0x80:
                pos += 1
            else:
                val, pos = _varint(buf, pos, end)
            yield num, 0, val, 0
        elif wt == 1:
            if end - pos < 8:
                raise FramingError("truncated fixed64", pos)
            yield num, 1, int.from_bytes(buf[pos : pos + 8], "little"), 0
            pos += 8
        elif wt == 5:
            if end - pos < 4:
                raise FramingError("truncated fixed32", pos)
            yield num, 5, int.from_bytes(buf[pos : pos + 4], "little"), 0
            pos += 4
        else:
            raise FramingError(f"unsupported protobuf wire type {wt} (field {num})", pos)


# TensorFlow's DataType enum -> numpy (every one that numpy has; quantised types as their ints)
TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8 (smdebug reads it back as uint8: a known fault, not copied)
    8: np.dtype("<c8"),  # DT_COMPLEX64
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    11: np.dtype("i1"),  # DT_QINT8
    12: np.dtype("u1"),  # DT_QUINT8
    13: np.dtype("<i4"),  # DT_QINT32
    15: np.dtype("<i2"),  # DT_QINT16
    16: np.dtype("<u2"),  # DT_QUINT16
    17: np.dtype("<u2"),  # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
DT_STRING = 7
DT_BFLOAT16 = 14  # numpy has no bfloat16: read as float32 (exact: its upper 16 bits)
TF_CODE_OF_DTYPE: dict[np.dtype, int] = {
    np.dtype("<f4"): 1, np.dtype("<f8"): 2, np.dtype("<i4"): 3, np.dtype("u1"): 4,
    np.dtype("<i2"): 5, np.dtype("i1"): 6, np.dtype("<c8"): 8, np.dtype("<i8"): 9,
    np.dtype("?"): 10, np.dtype("<u2"): 17, np.dtype("<c16"): 18, np.dtype("<f2"): 19,
    np.dtype("<u4"): 22, np.dtype("<u8"): 23,
}  # fmt: skip
MAX_DIMS = 64
#: elements a tensor may span (a dimension of 0 counted as 1): past it, a hostile shape
MAX_ELEMENTS = 1 << 40
MAX_STRING_ARRAY_BYTES = 256 << 20

_MODE_CODES = {b"1": 1, b"2": 2, b"3": 3, b"4": 4}


@dataclass
class DecodedEvent:
    """What one event record holds about one tensor."""

    tag: str
    step: int
    wall_time: float
    mode: int | None
    mode_step: int | None
    value: np.ndarray


def decode_event(
    buf: bytes,
    start: int,
    end: int,
    want_tag: str | None = None,
    expect: tuple[int, int] | None = None,
) -> DecodedEvent:
    """Decode an Event payload ``buf[start:end]``: its step, wall time and the tensor of the
    Summary value tagged ``want_tag`` (the first value when None). ``expect`` (mode, mode
    step) lets metadata that is exactly smdebug's encoding of them skip the generic parse.
    Raises FramingError."""
    if want_tag is not None and expect is not None:
        try:
            fast = _fast_event(buf, start, end, want_tag.encode(), expect)
        except (IndexError, struct.error, FramingError):
            fast = None
        if fast is not None:
            return fast
    step = 0
    wall = 0.0
    summary = None
    for num, wt, a, b in fields(buf, start, end):
        if num == 1 and wt == 1:
            wall = _F64.unpack(a.to_bytes(8, "little"))[0]
        elif num == 2 and wt == 0:
            step = _signed64(a)
        elif num == 5 and wt == 2:
            summary = (a, b)
        elif num in (1, 2, 5):
            raise FramingError(f"Event field {num} has wire type {wt}", start)
    if summary is None:
        raise FramingError("event holds no summary", start)
    if step < 0:
        raise FramingError(f"negative step {step}", start)
    want = want_tag.encode() if want_tag is not None else None
    found = None
    svalues = fields(buf, *summary)
    for num, wt, a, b in svalues:
        if num != 1:
            continue
        if wt != 2:
            raise FramingError("Summary.value is not a message", summary[0])
        vfields = fields(buf, a, b)
        tag = None
        for vnum, vwt, va, vb in vfields:
            if vnum == 1 and vwt == 2:
                tag = buf[va:vb]
                break
        if tag is None:
            raise FramingError("summary value without a tag", a)
        if want is None or tag == want:
            found = (tag, a, b)
            break
        for _ in vfields:  # the rest of a value passed over is checked all the same
            pass
    if found is None:
        what = "no value" if want_tag is None else f"no value tagged {want_tag!r}"
        raise FramingError(f"event holds {what}", summary[0])
    for _ in svalues:  # as is the rest of the summary
        pass
    raw_tag, vs, ve = found
    try:
        tag = want_tag if want_tag is not None else raw_tag.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError("tag is not UTF-8", vs) from None
    mode = mode_step = None
    tensor = None
    simple = None
    for num, wt, a, b in fields(buf, vs, ve):
        if num == 8 and wt == 2:
            tensor = (a, b)
        elif num == 9 and wt == 2:
            if expect is not None and buf[a:b] == _plugin_bytes(*expect):
                mode, mode_step = expect  # the exact bytes smdebug writes for these values
            else:
                mode, mode_step = _plugin_data(buf, a, b)
        elif num == 2 and wt == 5:
            simple = a
        elif num in (8, 9):
            raise FramingError(f"Value field {num} has wire type {wt}", vs)
    if tensor is not None:
        arr = decode_tensor(buf, *tensor)
    elif simple is not None:
        arr = np.array(struct.unpack("<f", simple.to_bytes(4, "little"))[0], dtype=np.float32)
    else:
        raise FramingError(f"value {tag!r} holds no tensor", vs)
    return DecodedEvent(tag, step, wall, mode, mode_step, arr)


_F64 = struct.Struct("<d")


def _v(buf, pos: int, end: int) -> tuple[int, int]:
    """A varint at ``pos`` (inline fast path for one byte)."""
    if pos < end:
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
    return _varint(buf, pos, end)


def _fast_event(
    buf, start: int, end: int, want: bytes, expect: tuple[int, int]
) -> DecodedEvent | None:
    """smdebug's exact encoding of an event (fields in its order, nothing else), or None.

    Only byte strings that the generic parser decodes to the same result are accepted: every
    nested length must end exactly where its parent ends; anything unexpected falls back.
    """
    pos = start
    if end - pos < 9 or buf[pos] != 0x09:
        return None
    wall = _F64.unpack_from(buf, pos + 1)[0]
    pos += 9
    step = 0
    if pos < end and buf[pos] == 0x10:
        step, pos = _v(buf, pos + 1, end)
        if step >= 1 << 63:
            return None
    if pos >= end or buf[pos] != 0x2A:
        return None
    ln, pos = _v(buf, pos + 1, end)
    if pos + ln != end or pos >= end or buf[pos] != 0x0A:
        return None
    ln, pos = _v(buf, pos + 1, end)
    if pos + ln != end or pos >= end or buf[pos] != 0x0A:
        return None
    ln, pos = _v(buf, pos + 1, end)
    if buf[pos : pos + ln] != want:
        return None
    pos += ln
    if pos >= end or buf[pos] != 0x42:
        return None
    tlen, pos = _v(buf, pos + 1, end)
    tend = pos + tlen
    if tend > end:
        return None
    tensor = (pos, tend)
    pos = tend
    if pos >= end or buf[pos] != 0x4A:
        return None
    mlen, pos = _v(buf, pos + 1, end)
    if pos + mlen != end or buf[pos:end] != _plugin_bytes(*expect):
        return None
    return DecodedEvent(
        want.decode(), step, wall, expect[0], expect[1], decode_tensor(buf, *tensor)
    )


#: TensorShapeProto bytes -> dims: shapes repeat step after step (only strict parses are kept)
_dims_cache: dict[bytes, tuple[int, ...]] = {}


def _plugin_bytes(mode: int, mode_step: int) -> bytes:
    """smdebug's SummaryMetadata bytes for a mode and mode step."""
    ms = str(mode_step).encode()
    first = b"\x0a\x09mode_step\x12" + bytes([len(ms)]) + ms
    return b"\x0a" + bytes([len(first)]) + first + b"\x0a\x09\x0a\x04mode\x12\x01" + b"%d" % mode


def _plugin_data(buf: bytes, start: int, end: int) -> tuple[int | None, int | None]:
    """smdebug's SummaryMetadata: plugin_data entries ("mode", k) and ("mode_step", n)."""
    mode = mode_step = None
    for num, wt, a, b in fields(buf, start, end):
        if num != 1 or wt != 2:
            continue
        name = content = None
        for pnum, pwt, pa, pb in fields(buf, a, b):
            if pwt == 2 and pnum == 1:
                name = bytes(buf[pa:pb])
            elif pwt == 2 and pnum == 2:
                content = bytes(buf[pa:pb])
        if name == b"mode":
            if content not in _MODE_CODES:
                raise FramingError(f"unknown mode {content!r}", a)
            mode = _MODE_CODES[content]
        elif name == b"mode_step":
            if content is None or not content.isdigit() or len(content) > 19:
                raise FramingError(f"bad mode step {content!r}", a)
            mode_step = int(content)
    return mode, mode_step


def _fast_tensor(buf, start: int, end: int) -> np.ndarray | None:
    """dtype, shape (already seen), content, in that order and nothing else; else None."""
    pos = start
    if end - pos < 4 or buf[pos] != 0x08:
        return None
    code, pos = _v(buf, pos + 1, end)
    dtype = TF_DTYPES.get(code)
    if dtype is None or pos >= end or buf[pos] != 0x12:
        return None
    slen, pos = _v(buf, pos + 1, end)
    dims = _dims_cache.get(bytes(buf[pos : pos + slen]))
    if dims is None:
        return None
    pos += slen
    if pos >= end or buf[pos] != 0x22:
        return None
    clen, pos = _v(buf, pos + 1, end)
    if pos + clen != end:
        return None
    count = 1
    for d in dims:
        count *= d
    if count * dtype.itemsize != clen:
        return None
    return np.frombuffer(buf, dtype, count=count, offset=pos).reshape(dims)


def decode_tensor(buf: bytes, start: int, end: int) -> np.ndarray:
    """A TensorProto as a numpy array (a view of ``buf`` for tensor_content)."""
    fast = _fast_tensor(buf, start, end)
    if fast is not None:
        return fast
    dtype_code = 0
    dims: list[int] = []
    shaped = False
    content = None
    n_strings = longest = 0
    typed: set[int] = set()  # typed value fields seen: read in a second pass
    for num, wt, a, b in fields(buf, start, end):
        if num == 1 and wt == 0:
            dtype_code = a
        elif num == 2 and wt == 2:
            if shaped:  # one TensorShapeProto per tensor (a second would add its dimensions)
                raise FramingError("tensor with two shapes", a)
            shaped = True
            key = bytes(buf[a:b])
            cached = _dims_cache.get(key)
            if cached is not None:
                dims = list(cached)
                continue
            for snum, swt, sa, sb in fields(buf, a, b):
                if snum == 2 and swt == 2:
                    size = 0
                    for dnum, dwt, da, _db in fields(buf, sa, sb):
                        if dnum == 1 and dwt == 0:
                            size = _signed64(da)
                    if size < 0:
                        raise FramingError(f"negative dimension {size}", sa)
                    dims.append(size)
                    if len(dims) > MAX_DIMS:
                        raise FramingError(f"more than {MAX_DIMS} dimensions", sa)
                elif snum == 3 and swt == 0 and sa:
                    raise FramingError("tensor of unknown rank", a)
            extent = 1
            for d in dims:
                extent *= max(d, 1)  # a zero beside huge dimensions: no values, yet no array
            if extent > MAX_ELEMENTS:
                raise FramingError(f"tensor of shape {tuple(dims)} is larger than allowed", a)
            if len(_dims_cache) < 4096:  # only a whole, checked shape (shared by every run)
                _dims_cache[key] = tuple(dims)
        elif num == 4 and wt == 2:
            content = (a, b)
        elif num == 8 and wt == 2:
            n_strings += 1
            longest = max(longest, b - a)
        elif num in _TYPED_FIELDS:
            typed.add(num)
    count = 1
    for d in dims:
        count *= d
    if dtype_code in (0, DT_STRING) and (n_strings or content is None):
        return _strings(buf, start, end, n_strings, longest, dims, count)
    if dtype_code == DT_BFLOAT16:
        if content is None and not count:
            return np.zeros(dims, np.float32)
        if content is None or content[1] - content[0] != 2 * count:
            raise FramingError(f"bfloat16 tensor of shape {dims} holds the wrong byte count", start)
        raw = np.frombuffer(buf, "<u2", count=count, offset=content[0]).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(dims)
    dtype = TF_DTYPES.get(dtype_code)
    if dtype is None:
        raise FramingError(f"unknown or unsupported TensorFlow dtype {dtype_code}", start)
    nbytes = count * dtype.itemsize
    if content is not None:
        if content[1] - content[0] != nbytes:
            raise FramingError(
                f"tensor of shape {tuple(dims)} and dtype {dtype} holds "
                f"{content[1] - content[0]} bytes, not {nbytes}",
                content[0],
            )
        return np.frombuffer(buf, dtype, count=count, offset=content[0]).reshape(dims)
    if not typed:
        if count:
            raise FramingError(f"tensor of shape {tuple(dims)} holds no values", start)
        return np.zeros(dims, dtype)
    return _typed_values(buf, start, end, typed, dtype, dims, count)


#: TensorProto's typed value fields: float_val, double_val, int_val, int64_val, bool_val,
#: half_val, uint32_val, uint64_val
_TYPED_FIELDS = frozenset((5, 6, 7, 10, 11, 13, 16, 17))
_FIXED_FIELDS = {5: np.dtype("<f4"), 6: np.dtype("<f8")}
_FIELD_NAMES = {5: "float_val", 6: "double_val", 13: "half_val"}


def _typed_values(
    buf, start: int, end: int, nums: set[int], dtype: np.dtype, dims, count: int
) -> np.ndarray:
    """TensorFlow's typed value fields (float_val, int_val, ...) of the TensorProto at
    ``buf[start:end]``: exact element count only. A second pass over the message reads them
    straight into one array of ``count`` elements, which the message must have room for (a
    value takes a byte at least): memory in proportion to the values, never a Python object
    per value or per field (a hostile tensor of a million one-byte values cost ~80 MB)."""
    if len(nums) != 1:
        raise FramingError("tensor mixes several value fields", start)
    (num,) = nums
    if count > end - start:
        raise FramingError(
            f"tensor of shape {tuple(dims)} cannot hold {count} values in {end - start} bytes",
            start,
        )
    fixed = _FIXED_FIELDS.get(num)
    vals = np.empty(count, np.float64 if fixed is not None else np.uint64)
    n = 0
    for fnum, wt, a, b in fields(buf, start, end):
        if fnum != num:
            continue
        if fixed is not None:
            if wt != 2:
                raise FramingError("unpacked float values are not supported", start)
            if (b - a) % fixed.itemsize:
                raise FramingError("packed values of a partial width", a)
            k = (b - a) // fixed.itemsize
            if n + k > count:
                n += k
                break
            vals[n : n + k] = np.frombuffer(buf, fixed, count=k, offset=a)
            n += k
        elif wt == 0:
            if n == count:
                n += 1
                break
            vals[n] = a
            n += 1
        elif wt == 2:  # packed varints (other wire types hold no value here, as before)
            pos = a
            while pos < b and n < count:
                vals[n], pos = _varint(buf, pos, b)
                n += 1
            if pos < b:
                n += 1
                break
    if n != count:
        held = f"more than {count}" if n > count else str(n)
        raise FramingError(f"tensor of shape {tuple(dims)} holds {held} values", start)
    if num in (7, 10):  # int32 / int64 are two's complement varints
        vals = vals.view(np.int64)
    elif num == 13:  # half_val holds float16 bit patterns
        if count and int(vals.max()) > 0xFFFF:
            raise FramingError("half_val entry wider than 16 bits", start)
        vals = vals.astype(np.uint16).view(np.float16)
    if vals.dtype.kind == "f" and dtype.kind in "iub" and count:
        # float_val / double_val / half_val in an integer or bool tensor: a NaN, an infinity
        # or a value past the type's range has no value there (numpy's cast would warn, and
        # make one up). The bounds are float64 powers of two, exact: 2.0**63 is past int64's
        # range, though float(2**63 - 1) rounds up to it
        info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        f = vals.astype(np.float64, copy=False)
        lo, hi = float(info.min), float(info.max + 1)
        if not (np.isfinite(f).all() and f.min() >= lo and f.max() < hi):
            raise FramingError(
                f"{_FIELD_NAMES[num]} values that a tensor of dtype {dtype} cannot hold", start
            )
    return vals.astype(dtype).reshape(dims)


def _strings(buf, start: int, end: int, n: int, longest: int, dims, count: int) -> np.ndarray:
    """A string tensor: str when every value is UTF-8, else bytes (never object dtype). Its
    ``n`` string_val fields (at most ``longest`` bytes each) are read in a second pass over
    the TensorProto at ``buf[start:end]`` straight into one fixed-width array: no Python
    object per value (a hostile tensor of a million empty strings cost ~70 MB)."""
    if not dims:
        dims = [n]
    if count != n:
        raise FramingError(f"string tensor of shape {dims} holds {n} values", start)
    width = max(longest, 1)
    if 4 * longest * n > MAX_STRING_ARRAY_BYTES:
        raise FramingError("string tensor too large to hold as a fixed-width array", start)
    raw = np.zeros(n, f"S{width}")
    i = 0
    for num, wt, a, b in fields(buf, start, end):
        if num == 8 and wt == 2:
            raw[i] = bytes(buf[a:b])
            i += 1
    try:
        return np.char.decode(raw, "utf-8").astype(f"<U{width}").reshape(dims)
    except UnicodeDecodeError:
        return raw.reshape(dims)


# -- encoding (used by SMDebugWriter) ------------------------------------------------------------


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def _field_varint(num: int, v: int) -> bytes:
    return _enc_varint(num << 3) + _enc_varint(v)


def encode_tensor(array: np.ndarray, tag: str) -> bytes:
    """A TensorProto as smdebug's writer makes it (dims named ``<tag>_<size>``)."""
    arr = np.asarray(array)
    if arr.dtype.kind in "US":
        flat = arr.reshape(-1)
        vals = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in flat.tolist()]
        shape = _field(2, _field_varint(1, len(vals)))
        return _field(2, shape) + b"".join(_field(8, v) for v in vals)
    code = TF_CODE_OF_DTYPE.get(arr.dtype.newbyteorder("<"))
    if code is None:
        raise TypeError(f"dtype {arr.dtype} cannot be written in the SageMaker Debugger layout")
    arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"))  # tobytes() is C order
    dims = b"".join(
        _field(2, _field_varint(1, d) + _field(2, f"{tag}_{d}".encode())) for d in arr.shape
    )
    return _field_varint(1, code) + _field(2, dims) + _field(4, arr.tobytes())


def encode_event(
    tag: str, array: np.ndarray, *, step: int, wall_time: float, mode: int, mode_step: int
) -> bytes:
    """An Event with one Summary value, field for field as smdebug 1.0 writes it."""
    meta = _field(1, _field(1, b"mode_step") + _field(2, str(mode_step).encode())) + _field(
        1, _field(1, b"mode") + _field(2, str(mode).encode())
    )
    value = _field(1, tag.encode()) + _field(8, encode_tensor(array, tag)) + _field(9, meta)
    out = _enc_varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step:
        out += _field_varint(2, step)
    return out + _field(5, _field(1, value))
