"""Where runs live: local folders or any fsspec URL (s3://, gs://, memory://, ...).

Local paths go through the operating system directly (fast path); everything else through
fsspec, imported only when a URL is used. Remote reads of many files or byte ranges go out
concurrently (fsspec's ``cat`` / ``cat_ranges``, which s3fs runs as parallel requests).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..exceptions import CorruptRunError


def is_url(path: str | os.PathLike) -> bool:
    """True for ``proto://...`` other than ``file://``."""
    text = os.fspath(path)
    if "://" not in text:
        return False
    return not text.startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return text


#: reads up to this size go without a size check (the allocation is harmless)
_SMALL_READ = 1 << 20
# non-blocking: opening a FIFO for reading waits for a writer, forever; a regular file ignores it
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
_NOT_REGULAR = "not a regular file (a folder, a FIFO or a device): a run holds only files"


@contextmanager
def _local(path: str) -> Iterator[None]:
    """Local file errors as the readers expect them: a path with a file where a folder should
    be is one that does not exist (FileNotFoundError: a stray file in ``workers/`` is not a
    worker); any other failure (a symbolic link loop, no permission, an I/O error of a link to
    ``/proc``) is one CorruptRunError naming the path."""
    try:
        yield
    except FileNotFoundError:
        raise
    except NotADirectoryError as exc:
        raise FileNotFoundError(
            errno.ENOENT, "no such file (a file is where a folder should be)", path
        ) from exc
    except OSError as exc:
        raise CorruptRunError(path, f"cannot be read ({exc.strerror or exc})") from None


def open_regular(path: str) -> tuple[int, int]:
    """Open a local file of a run for reading: (descriptor, size). Anything but a regular
    file (a folder, a FIFO, a device; also behind a symbolic link) is refused, at once: a run
    comes from a pull request, and reading ``/dev/stdin`` or a FIFO would hang CI."""
    with _local(path):
        fd = os.open(path, _OPEN_FLAGS)
    try:
        with _local(path):
            info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptRunError(path, _NOT_REGULAR)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


class Storage:
    """Minimal file access used by the readers: list, read whole files, read from an offset."""

    def __init__(self, root: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        self.url = os.fspath(root)
        self.remote = is_url(self.url)
        if self.remote:
            import fsspec  # imported here: local runs never pay for it

            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
            self.root = self.root.rstrip("/")
        else:
            self.fs = None
            self.root = str(Path(local_path(self.url)))

    @property
    def sep(self) -> str:
        """The separator :meth:`join` puts between parts."""
        return "/" if self.remote else os.sep

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if self.remote else os.path.join(self.root, *parts)

    def invalidate(self) -> None:
        """Forget cached listings (s3fs caches them), so that a refresh sees new files."""
        if self.remote:
            self.fs.invalidate_cache()

    def exists(self, path: str) -> bool:
        return self.fs.exists(path) if self.remote else os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(path) if self.remote else os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) in a folder; empty when it does not exist."""
        if self.remote:
            try:
                entries = self.fs.ls(path, detail=False)
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:  # a link loop, no permission
            raise CorruptRunError(path, f"cannot be listed ({exc.strerror or exc})") from None

    def list_sizes(self, path: str) -> dict[str, int | None]:
        """Names in a folder (sorted) with their sizes: None for what is not a regular file
        or cannot be looked at (reading it says why); empty when the folder does not exist.
        Remote: the one listing request ``listdir`` makes (object stores list sizes with
        names); local: a stat per entry."""
        if self.remote:
            try:
                entries = self.fs.ls(path, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return {}
            found = {}
            for e in entries:
                size = e.get("size")
                regular = e.get("type") == "file" and isinstance(size, int) and size >= 0
                found[e["name"].rstrip("/").rsplit("/", 1)[-1]] = size if regular else None
            return dict(sorted(found.items()))
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:  # a link loop, no permission
            raise CorruptRunError(path, f"cannot be listed ({exc.strerror or exc})") from None
        out: dict[str, int | None] = {}
        for entry in entries:
            try:
                info = entry.stat()  # through a link, as a read would go
            except OSError:
                out[entry.name] = None
                continue
            out[entry.name] = info.st_size if stat.S_ISREG(info.st_mode) else None
        return out

    def size(self, path: str) -> int:
        if self.remote:
            return int(self.fs.size(path))
        with _local(path):
            info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # see open_regular
            raise CorruptRunError(path, _NOT_REGULAR)
        return info.st_size

    def read(self, path: str, start: int = 0, length: int | None = None) -> bytes:
        """The file's bytes from ``start`` to its current end (one read), or at most
        ``length`` of them."""
        if self.remote:
            end = None if length is None else start + length
            return self.fs.cat_file(path, start=start or None, end=end)
        fd, _size = open_regular(path)
        with os.fdopen(fd, "rb") as fh, _local(path):
            if start:
                fh.seek(start)
            data = fh.read() if length is None else fh.read(length)
        if data is None:  # opened non-blocking: a file of /proc with nothing to read yet
            raise CorruptRunError(path, "cannot be read without waiting")
        return data

    def read_many(self, paths: list[str], max_size: int | None = None) -> list[bytes | None]:
        """Whole files, in the order asked (remote: concurrent requests). A file larger than
        ``max_size`` comes back as None, and no more than ``max_size + 1`` of its bytes are
        ever read or allocated."""
        if not paths:
            return []
        if self.remote:
            if max_size is not None:
                got = self.fs.cat_ranges(list(paths), [0] * len(paths), [max_size + 1] * len(paths))
                return [None if len(b) > max_size else b for b in got]
            got = self.fs.cat(list(paths), on_error="raise")
            if isinstance(got, bytes):  # a single path
                return [got]
            return [got[p] if p in got else got[self.fs._strip_protocol(p)] for p in paths]
        out: list[bytes | None] = []
        for p in paths:
            fd, size = open_regular(p)
            try:
                if max_size is not None and size > max_size:
                    out.append(None)
                    continue
                with _local(p):
                    data = os.read(fd, size) if size else b""
                    while len(data) < size:  # a short read: keep going
                        more = os.read(fd, size - len(data))
                        if not more:
                            break
                        data += more
            finally:
                os.close(fd)
            out.append(data)
        return out

    def read_ranges(
        self, paths: list[str], starts: list[int], lengths: list[int], writable: bool = False
    ) -> list[bytes] | list[bytearray]:
        """Byte ranges of files; a range past the end of its file comes back short (the
        caller checks), and nothing larger than the file is ever allocated. ``writable``
        gives bytearrays (arrays made on them are writable)."""
        if not paths:
            return []
        if self.remote:
            ends = [s + n for s, n in zip(starts, lengths)]
            got = self.fs.cat_ranges(list(paths), list(starts), ends)
            return [bytearray(b) for b in got] if writable else list(got)
        out = []
        for p, s, n in zip(paths, starts, lengths):
            fd, size = open_regular(p)
            try:
                if n > _SMALL_READ:  # never allocate past the file's end
                    n = max(0, min(n, size - s))
                with _local(p):
                    if writable:
                        buf = bytearray(n)
                        got = os.preadv(fd, [buf], s) if n else 0
                        out.append(buf if got == n else buf[:got])
                    else:
                        out.append(os.pread(fd, n, s) if n else b"")
            finally:
                os.close(fd)
        return out

    def walk_files(self, path: str) -> list[str]:
        """Every file below a folder, as paths relative to it."""
        if self.remote:
            try:
                found = self.fs.find(path)
            except FileNotFoundError:
                return []
            prefix = self.fs._strip_protocol(path).rstrip("/") + "/"
            return sorted(f[len(prefix) :] for f in found if f.startswith(prefix))
        out = []
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                out.append(os.path.relpath(os.path.join(dirpath, name), path).replace(os.sep, "/"))
        return sorted(out)
