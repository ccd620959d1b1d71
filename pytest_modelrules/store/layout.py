"""Names of the files and folders of a native run (docs/format.md describes them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from urllib.parse import quote

RUN_FILE = "run.json"
WORKERS_DIR = "workers"
WORKER_FILE = "worker.json"
STEPS_FILE = "steps.mrt"
TENSORS_DIR = "tensors"
ROWS_DIR = "rows"
END_FILE = "END"
TENSOR_SUFFIX = ".mrt"
MAX_FILENAME = 200


def tensor_filename(name: str) -> str:
    """A file name for a tensor name: percent-quoted, or hashed when too long.

    The tensor's real name is always in the file's header; the file name is only unique.
    """
    quoted = quote(name, safe="-_.")
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]
    if len(quoted) > MAX_FILENAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        quoted = quoted[:100] + "~" + digest
    return quoted + TENSOR_SUFFIX


def rows_filename(names: Sequence[str]) -> str:
    """The file of a row of scalars, one per tensor of ``names`` (format version 2): named by
    a digest of the list, so the same list finds the same file at every step."""
    digest = hashlib.sha256(json.dumps(list(names)).encode()).hexdigest()[:32]
    return f"r-{digest}{TENSOR_SUFFIX}"


def valid_worker_name(worker: str) -> bool:
    """Worker names become folder names: letters, digits, '-', '_' and '.' only."""
    return bool(worker) and all(c.isalnum() or c in "-_." for c in worker) and worker[0] != "."
