"""JSON that every parser reads: NaN and infinities written as null.

Python's ``json`` writes them as ``NaN``/``Infinity``, which jq, JavaScript's ``JSON.parse``
and GitHub Actions' ``fromJSON`` refuse - and a run whose loss went NaN is the one a CI gate
must report. Pure Python (the plugin writes verdicts.json with it without importing numpy).
"""

from __future__ import annotations

import json
import math
from typing import Any


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict_json` (``obj``), refusing NaN (``default=str``)."""
    kwargs.setdefault("default", str)
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)
