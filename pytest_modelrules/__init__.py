"""pytest-modelrules: deep-learning training diagnostics as pytest tests.

Record a run with :class:`Recorder`, read it with :func:`open_run` (also SageMaker Debugger
runs), evaluate rules with :func:`evaluate` or the ``assert_*`` helpers, and let the pytest
plugin turn them into tests. Names are imported lazily (PEP 562), so ``import
pytest_modelrules`` - which pytest does for every project once the plugin is installed -
costs nothing: torch, matplotlib and friends load only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import modes  # noqa: F401 (re-exported)
from .exceptions import (  # noqa: F401 (re-exported)
    CorruptRunError,
    InvalidWorker,
    MissingTensorError,
    ModelRulesError,
    NoMoreData,
    RuleError,
    RuleEvaluationConditionMet,
    RuleParameterError,
    RunError,
    RunNotEndedWarning,
    RunNotFoundError,
    StepNotYetAvailable,
    StepUnavailable,
    TensorUnavailable,
    TensorUnavailableForStep,
)
from .modes import ModeKeys  # noqa: F401 (re-exported)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "open_run": "pytest_modelrules.store.run",
    "create_trial": "pytest_modelrules.store.run",
    "Run": "pytest_modelrules.store.run",
    "Tensor": "pytest_modelrules.store.run",
    "StepState": "pytest_modelrules.store.run",
    "RunWriter": "pytest_modelrules.store.writer",
    "Recorder": "pytest_modelrules.capture.recorder",
    "Rule": "pytest_modelrules.rules.custom",
    "RuleResult": "pytest_modelrules.rules.result",
    "invoke_rule": "pytest_modelrules.rules.custom",
    "evaluate": "pytest_modelrules.rules.registry",
    "available_rules": "pytest_modelrules.rules.registry",
    "default_rules": "pytest_modelrules.rules.registry",
    "as_custom_rule": "pytest_modelrules.rules.custom",
    "RuleMonitor": "pytest_modelrules.rules.monitor",
    "assert_rule": "pytest_modelrules.assertions",
    "ModelRuleFailure": "pytest_modelrules.assertions",
    "assert_no_regression": "pytest_modelrules.assertions",
    "assert_loss_decreasing": "pytest_modelrules.assertions",
    "assert_class_balance": "pytest_modelrules.assertions",
    "assert_no_direction_confusion": "pytest_modelrules.assertions",
    "assert_dead_relu_below": "pytest_modelrules.assertions",
    "assert_no_vanishing_gradient": "pytest_modelrules.assertions",
    "assert_no_exploding_tensor": "pytest_modelrules.assertions",
    "assert_good_weight_initialization": "pytest_modelrules.assertions",
    "assert_no_saturated_activation": "pytest_modelrules.assertions",
    "assert_weight_update_ratio": "pytest_modelrules.assertions",
    "assert_not_all_zero": "pytest_modelrules.assertions",
    "assert_no_overfit": "pytest_modelrules.assertions",
    "assert_no_overtraining": "pytest_modelrules.assertions",
    "assert_tensor_variance": "pytest_modelrules.assertions",
    "assert_tensors_change": "pytest_modelrules.assertions",
    "assert_inputs_normalized": "pytest_modelrules.assertions",
    "assert_no_confusion": "pytest_modelrules.assertions",
    "assert_not_stalled": "pytest_modelrules.assertions",
    "assert_similar_across_runs": "pytest_modelrules.assertions",
    "assert_recall_above": "pytest_modelrules.assertions",
    "assert_labels_not_noisy": "pytest_modelrules.assertions",
    "assert_transfer_learning": "pytest_modelrules.assertions",
}

_EAGER = [
    "CorruptRunError",
    "InvalidWorker",
    "MissingTensorError",
    "ModeKeys",
    "ModelRulesError",
    "NoMoreData",
    "RuleError",
    "RuleEvaluationConditionMet",
    "RuleParameterError",
    "RunError",
    "RunNotEndedWarning",
    "RunNotFoundError",
    "StepNotYetAvailable",
    "StepUnavailable",
    "TensorUnavailable",
    "TensorUnavailableForStep",
    "modes",
]
__all__ = sorted([*_LAZY, *_EAGER])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_modelrules' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from .store.run import Run, StepState, Tensor, create_trial, open_run  # noqa: F401
    from .store.writer import RunWriter  # noqa: F401
