"""Reference runs trained once and cached between sessions (what ``trained_run`` uses).

The cache key is the recipe's full config (recipe + every parameter, device included) plus a
hash of the code that makes the run (datasets/ and training/ sources and the package
version), so a change to either trains anew. Concurrency: a file lock per key serialises the
processes that want the same run; the run is trained into a temporary folder and renamed
into place when finished, so a reader never sees half a run, and a crashed trainer leaves
only a temporary folder that the next one removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

DONE_MARKER = "modelrules-reference.json"
_CODE_DIRS = ("datasets", "training")


def default_cache_dir() -> Path:
    """``$MODELRULES_CACHE_DIR`` or ``~/.cache/pytest-modelrules``."""
    env = os.environ.get("MODELRULES_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pytest-modelrules"


def code_version() -> str:
    """A hash of the sources that make a reference run (generator, recipes, loop, recorder)."""
    pkg = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    from .. import __version__

    h.update(__version__.encode())
    files = [p for d in _CODE_DIRS for p in sorted((pkg / d).rglob("*.py"))]
    files += [p for p in sorted((pkg / "capture").glob("*.py"))]
    for p in files:
        h.update(p.relative_to(pkg).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def run_key(recipe: str, **overrides: Any) -> tuple[str, Any]:
    """(cache key, TrainConfig) of a recipe with overrides on this machine's device."""
    from .recipes import make_config

    overrides.setdefault("progress", False)
    config = make_config(recipe, **overrides)
    blob = json.dumps(
        {"config": config.key_dict(), "code": code_version()}, sort_keys=True, default=str
    )
    return f"{recipe}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}", config


def reference_run(recipe: str = "seed", cache_dir: str | os.PathLike[str] | None = None,
                  **overrides: Any) -> Path:  # fmt: skip
    """The folder of a recorded reference run of ``recipe``: trained on first use, then cached.

    ``overrides`` are :class:`~pytest_modelrules.training.recipes.TrainConfig` fields (e.g.
    ``steps=300, seed=1``). Safe against several processes asking at once: one trains, the
    others wait on the lock and get the same folder.
    """
    from filelock import FileLock

    from .job import train

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key, config = run_key(recipe, **overrides)
    final = cache / key
    if (final / DONE_MARKER).is_file():
        return final
    with FileLock(str(cache / f"{key}.lock")):
        if (final / DONE_MARKER).is_file():  # another process finished while we waited
            return final
        tmp = cache / f".{key}.tmp-{os.getpid()}"
        for stale in cache.glob(f".{key}.tmp-*"):  # left by a crashed trainer (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # unfinished remains without a marker
            shutil.rmtree(final)
        data_dir = cache / f"data-{_data_key(config)}"
        if not config.data:  # the seed and fixed runs share their data set: lock it apart
            from .job import prepare_data

            with FileLock(str(data_dir) + ".lock"):
                prepare_data(config, data_dir)
        print(f"modelrules: training reference run {key!r} into {cache}", file=sys.stderr)
        try:
            result = train(config, tmp, data_dir=data_dir)
            (tmp / DONE_MARKER).write_text(json.dumps(result.to_dict(), indent=2, default=str))
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _data_key(config: Any) -> str:
    """Synthetic data sets are shared by runs that differ only in training knobs."""
    keep = ("image_size", "train_images", "test_per_class", "test_images", "data_seed")
    blob = json.dumps({k: getattr(config, k) for k in keep}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
