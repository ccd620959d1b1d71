"""The rules: SageMaker Debugger's built-ins that fit PyTorch, this project's own, custom rules.

One module per family; each rule class registers itself under its snake_case name, which
``evaluate(run, "dead_relu", **params)`` and the pytest plugin use.
"""

from __future__ import annotations

import importlib

_RULE_MODULES = (
    "loss",
    "classification",
    "activations",
    "tensors",
    "inputs",
    "runs",
    "transfer",
    "baseline",
)


def _load_all() -> None:
    """Import every rule module so that their classes register."""
    for mod in _RULE_MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise


def __getattr__(name: str):
    # `from pytest_modelrules.rules import DeadRelu` works for every registered rule class
    from .base import _REGISTRY

    _load_all()
    for cls in _REGISTRY.values():
        if cls.__name__ == name:
            return cls
    if name in ("Rule", "invoke_rule"):
        return getattr(importlib.import_module(f"{__name__}.custom"), name)
    if name in ("evaluate", "available_rules", "default_rules"):
        return getattr(importlib.import_module(f"{__name__}.registry"), name)
    if name == "RuleMonitor":
        return importlib.import_module(f"{__name__}.monitor").RuleMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
