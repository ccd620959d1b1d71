"""The project's default rule set: which rules "check everything" runs, with which parameters.

The rule classes keep SageMaker Debugger's parameter defaults (old configs port unchanged);
the *default profile* is what ``modelrules check``, the plugin's "defaults" and the bug zoo
evaluate. Its thresholds were chosen on the bug zoo (``benchmarks/zoo.py``, docs/zoo.md):
every planted bug caught by the rule meant for it, no healthy run tripping any rule. Each
entry carries a one-line reason (the record of why; docs/zoo.md has the figures).
"""

from __future__ import annotations

import copy
from typing import Any

#: {rule name: parameters} of the default set (parameters not named keep the class default)
DEFAULT_PROFILE: dict[str, dict[str, Any]] = {
    "loss_not_decreasing": {"mode": "TRAIN", "num_steps": 50},
    "overfit": {"ratio_threshold": 0.5, "patience": 2},
    "overtraining": {"patience_train": 60, "patience_validation": 2, "delta": 0.01},
    "class_imbalance": {
        "mode": "TRAIN",
        "threshold_imbalance": 3.0,
        "threshold_misprediction": 1.0,
        "samples": 2000,
    },
    "direction_confusion": {"mode": "EVAL", "limit": None, "max_rate": 0.4, "min_samples": 50},
    "recall_floor": {},
    "dead_relu": {},
    "saturated_activation": {},
    "vanishing_gradient": {},
    "exploding_tensor": {},
    "check_input_images": {"threshold_mean": 1.0, "threshold_samples": 200},
    "transfer_learning": {},
    "weight_update_ratio": {},
    "unchanged_tensor": {"tensor_regex": r"^fc\..*weight$"},
    "stalled_training_rule": {},
}

#: rules left out of the default profile, and why (run them by name when they fit)
OPT_IN: dict[str, str] = {
    "confusion": (
        "judged per batch: on 43 classes one wrong prediction in a 64-sample batch breaks a "
        "column, so every healthy zoo run tripped it at every candidate threshold (docs/zoo.md)"
    ),
}

#: rules of the profile that judge tensors many runs do not record (sigmoid inputs, full head
#: weights, declared frozen layers): run when the run holds them; a run without them is "not
#: judged" (MissingTensorError), not a failure. Not in ``registry.default_rules()``.
WHEN_RECORDED: frozenset[str] = frozenset(
    {"saturated_activation", "transfer_learning", "weight_update_ratio", "unchanged_tensor"}
)

#: one line each: why these values (figures in docs/zoo.md)
REASONS: dict[str, str] = {
    "loss_not_decreasing": "TBD",
    "overfit": "TBD",
    "overtraining": "TBD",
    "class_imbalance": "TBD",
    "direction_confusion": "TBD",
    "recall_floor": "TBD",
    "dead_relu": "TBD",
    "saturated_activation": "TBD",
    "vanishing_gradient": "TBD",
    "exploding_tensor": "TBD",
    "check_input_images": "TBD",
    "transfer_learning": "TBD",
    "weight_update_ratio": "TBD",
    "unchanged_tensor": "TBD",
    "stalled_training_rule": "TBD",
}


def default_profile() -> dict[str, dict[str, Any]]:
    """A copy of the default profile: {rule name: parameters}."""
    return copy.deepcopy(DEFAULT_PROFILE)


def profile_rules(
    profile: dict[str, dict[str, Any]] | None = None,
    intent: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """{rule name: configured rule instance} for ``profile`` (default: the default profile),
    with ``intent`` (parameters a user declares for one job, e.g. transfer_learning's
    frozen_regex) laid over the profile's."""
    from .registry import make_rule

    prof = default_profile() if profile is None else profile
    out = {}
    for name, params in prof.items():
        merged = {**params, **((intent or {}).get(name, {}))}
        out[name] = make_rule(name, **merged)
    return out


__all__ = [
    "DEFAULT_PROFILE",
    "OPT_IN",
    "REASONS",
    "WHEN_RECORDED",
    "default_profile",
    "profile_rules",
]
