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
    "loss_not_decreasing": {"compare": "passes", "min_decrease_percent": 1.0},
    "overfit": {"ratio_threshold": 0.5, "patience": 2},
    "overtraining": {"patience_train": 60, "patience_validation": 2, "delta": 0.01},
    "class_imbalance": {
        "mode": "TRAIN",
        "threshold_imbalance": 5.0,
        "threshold_misprediction": 1.0,
        "samples": 2000,
    },
    "direction_confusion": {
        "mode": "EVAL",
        "phases": "last",
        "limit": None,
        "max_rate": 0.35,
        "rate_of": "twins",
        "min_samples": 40,
    },
    "noisy_labels": {},
    "dead_relu": {},
    "saturated_activation": {"threshold_inactivity": 10.0},
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
    "recall_floor": (
        "a recall floor is a product requirement, set per model (assert_recall_above): any "
        "fixed floor either trips the zoo's healthy runs (~55 % accurate, some classes at 0 % "
        "recall) or says nothing about well-trained ones"
    ),
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

#: the profile's loss rules: a run holding no loss tensor (``loss.named_losses``) is not judged
#: by a check of the default profile as a whole (``registry.default_profile_gap``)
LOSS_RULES: tuple[str, ...] = ("loss_not_decreasing", "overfit", "overtraining")

#: rules of the profile that judge any run with steps (NaN/inf in any tensor, the time between
#: steps): a run only they could judge was checked for nothing its training is about
ANY_RUN: frozenset[str] = frozenset({"exploding_tensor", "stalled_training_rule"})

#: one line each: why these values (figures in docs/zoo.md)
REASONS: dict[str, str] = {
    "loss_not_decreasing": (
        "mean loss per evaluation pass, at least 1 % lower than the pass before: single EVAL "
        "batches of the class-sorted test set 10 steps apart (the class default) tripped half "
        "the healthy runs; on seeds 0-2 healthy passes fell by far more than 1 %, the "
        "too-low learning rate's by less"
    ),
    "overfit": (
        "two evaluation passes in a row 50 % over the train loss: at 0.1 / one pass 2 of 3 "
        "healthy seed-0 runs tripped; one healthy pass reached 0.59, never two in a row"
    ),
    "overtraining": (
        "patience_train 60 steps (the default 5 counts batch losses: every run trips), "
        "patience_validation 2 passes (the default 10 never fires on a 3-pass run)"
    ),
    "class_imbalance": (
        "training labels only, counts only, judged from 2,000 labels: the default adds test "
        "labels and mispredictions counted from step 0, which trips every run trained from "
        "scratch; from 1,000 labels healthy runs tripped at 3:1; healthy runs end near "
        "1.4:1, the imbalance fault far above 10:1"
    ),
    "direction_confusion": (
        "the last evaluation pass, as the share of a pair's samples predicted as either twin "
        "that went to the wrong one: a flip-blind model splits them ~50 % (seeds 0-2: "
        "0.51-0.59), healthy runs at most 0.17; 0.35 lies between. Training batches of a flip "
        "run are confused by construction, and counts from step 0 trip every run"
    ),
    "noisy_labels": (
        "class defaults (TRAIN / EVAL accuracy >= 0.85 on the last pass, the last quarter of "
        "the TRAIN steps before it): on seeds 0-2 the label-noise runs reached 0.67-0.78, "
        "healthy runs 0.92-1.19; 0.85 is the midpoint"
    ),
    "dead_relu": "class defaults: healthy runs' worst layer at most 26 % dead, the fault 100 %",
    "saturated_activation": (
        "a unit counts as saturated when in range for < 10 % of the batch (default 1 %: of 64 "
        "samples, none): the fault's head 77 % saturated, the healthy sigmoid head 0 %"
    ),
    "vanishing_gradient": "class default (mean abs(g) < 1e-7): no healthy run came near it",
    "exploding_tensor": "class default (any NaN/inf): no healthy run has one",
    "check_input_images": (
        "absolute channel mean <= 1 over 200 images: ImageNet statistics leave these signs at "
        "channel means up to 0.45 in absolute value when normalised correctly (the default "
        "0.2 trips every healthy run); 0..255 pixels give ~100"
    ),
    "transfer_learning": "class defaults plus the frozen/trained layers a job declares",
    "weight_update_ratio": "class defaults (update ratio within 1e-8 .. 10 of the head)",
    "unchanged_tensor": (
        "the head's weights only: by default every full tensor, including ones that rightly "
        "stay the same (frozen layers, labels)"
    ),
    "stalled_training_rule": "class default (no step for 30 minutes); never fires offline",
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
    "ANY_RUN",
    "DEFAULT_PROFILE",
    "LOSS_RULES",
    "OPT_IN",
    "REASONS",
    "WHEN_RECORDED",
    "default_profile",
    "profile_rules",
]
