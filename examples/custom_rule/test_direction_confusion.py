"""Property tests of the direction-confusion rule (run: ``pytest examples/custom_rule``).

Each property is built by a factory that takes "how to run the rule" (a function
``first_trigger(run, class_a, class_b, limit) -> global step or None``), so the same
properties check the step-wise custom rule, the vectorised one, and - in the project's own
tests - deliberately broken versions that they must catch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelrules import RuleEvaluationConditionMet, invoke_rule
from pytest_modelrules import strategies as mst

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # pytest puts it there; importing this file from elsewhere may not
    sys.path.insert(0, HERE)
from direction_confusion import MyCustomRule, VectorisedDirectionConfusion  # noqa: E402

FirstTrigger = Callable[[Any, int, int, int], "int | None"]
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def stepwise(rule_cls: type) -> FirstTrigger:
    """Run a custom rule (SageMaker API) with invoke_rule; the step where it first fires."""

    def first_trigger(run: Any, a: int, b: int, limit: int) -> int | None:
        try:
            invoke_rule(rule_cls(run, class_a=a, class_b=b, limit=limit), raise_eval_cond=True)
        except RuleEvaluationConditionMet as met:
            return met.step
        return None

    return first_trigger


def vectorised(rule_cls: type) -> FirstTrigger:
    """Evaluate a built-in-style rule over the whole run; its first trigger step."""

    def first_trigger(run: Any, a: int, b: int, limit: int) -> int | None:
        return rule_cls(class_a=a, class_b=b, limit=limit).evaluate(run).first_step

    return first_trigger


def runs(**overrides: Any) -> st.SearchStrategy[mst.GeneratedRun]:
    """Small classification runs where classes 0 and 1 are confused at drawn rates, with
    TRAIN and EVAL steps, missing steps, and a second worker whose incomplete steps a
    correct rule never reads."""
    kwargs: dict[str, Any] = dict(
        modes=st.sampled_from([("TRAIN",), ("TRAIN", "EVAL")]),
        steps_per_epoch=(1, 6),
        workers=(1, 2),
        incomplete_steps=(0, 1),
        missing_steps=(0, 1),
        num_classes=(2, 4),
        min_count=(1, 12),
        confused=st.fixed_dictionaries(
            {(0, 1): st.sampled_from([0.0, 0.2, 0.5, 1.0]), (1, 0): st.sampled_from([0.0, 0.3])}
        ),
        tensors=("classification",),
    )
    kwargs.update(overrides)
    return mst.training_runs(**kwargs)


LIMITS = st.integers(0, 6)


def expected_first_trigger(gen: mst.GeneratedRun, a: int, b: int, limit: int) -> int | None:
    """The truth: the first global step where worker 0's a<->b confusions so far pass limit."""
    for step, total in gen.truth.cumulative_pair_counts(a, b):
        if total > limit:
            return step
    return None


def never_triggers_without_confusion(
    first_trigger: FirstTrigger, record: list | None = None, config: settings = SETTINGS
):
    @config
    @given(runs(confused={}, never_confuse=[(0, 1)], accuracy=(0.0, 0.6)), LIMITS)
    def prop(gen: mst.GeneratedRun, limit: int) -> None:
        if record is not None:
            record.append((gen, limit))
        assert gen.truth.pair_count(0, 1, mode=None) == 0
        assert first_trigger(gen.run, 0, 1, limit) is None

    return prop


def triggers_once_more_than_limit(
    first_trigger: FirstTrigger, record: list | None = None, config: settings = SETTINGS
):
    @config
    @given(runs(), LIMITS)
    def prop(gen: mst.GeneratedRun, limit: int) -> None:
        if record is not None:
            record.append((gen, limit))
        assert first_trigger(gen.run, 0, 1, limit) == expected_first_trigger(gen, 0, 1, limit)

    return prop


def symmetric_in_the_pair(
    first_trigger: FirstTrigger, record: list | None = None, config: settings = SETTINGS
):
    @config
    @given(runs(), LIMITS)
    def prop(gen: mst.GeneratedRun, limit: int) -> None:
        if record is not None:
            record.append((gen, limit))
        assert first_trigger(gen.run, 0, 1, limit) == first_trigger(gen.run, 1, 0, limit)

    return prop


RULES = {"stepwise": stepwise(MyCustomRule), "vectorised": vectorised(VectorisedDirectionConfusion)}

test_stepwise_never_triggers_without_confusion = never_triggers_without_confusion(RULES["stepwise"])
test_stepwise_triggers_once_more_than_limit = triggers_once_more_than_limit(RULES["stepwise"])
test_stepwise_is_symmetric = symmetric_in_the_pair(RULES["stepwise"])
test_vectorised_never_triggers_without_confusion = never_triggers_without_confusion(
    RULES["vectorised"]
)
test_vectorised_triggers_once_more_than_limit = triggers_once_more_than_limit(RULES["vectorised"])
test_vectorised_is_symmetric = symmetric_in_the_pair(RULES["vectorised"])


@settings(SETTINGS, max_examples=15)
@given(
    mst.training_runs(
        num_classes=(21, 24),
        steps_per_epoch=(1, 4),
        min_count=(6, 30),
        confused=st.fixed_dictionaries(
            {(19, 20): st.floats(0.0, 0.9), (20, 19): st.floats(0.0, 0.5)}
        ),
        tensors=("classification",),
    )
)
def test_the_seeds_rule_19_20_more_than_10(gen: mst.GeneratedRun) -> None:
    """The seed's own numbers: classes 19 and 20, more than 10 confusions."""
    want = expected_first_trigger(gen, 19, 20, 10)
    assert stepwise(MyCustomRule)(gen.run, 19, 20, 10) == want
    assert vectorised(VectorisedDirectionConfusion)(gen.run, 19, 20, 10) == want
