"""Helpers shared by the rule tests: write small native runs to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_modelrules.store.writer import RunWriter


def write_run(
    path: Path,
    steps: dict[int, dict[str, Any]],
    modes: dict[int, str] | None = None,
    collections: dict[str, Any] | None = None,
) -> Path:
    """A closed native run from {global step: {tensor: array}} (TRAIN unless ``modes`` says
    otherwise), with ``collections`` recorded when given."""
    with RunWriter(path) as w:
        if collections:
            w.set_collections(collections)
        for g in sorted(steps):
            for name, value in steps[g].items():
                w.write(name, value, g, mode=(modes or {}).get(g, "TRAIN"))
    return path
