"""The custom-rule example's property tests: they pass on the example's rules and catch
deliberately broken versions with a small shrunk counterexample."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_rule"


def _load(name: str):
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


props = _load("test_direction_confusion")
rules = sys.modules["direction_confusion"]


class OneDirection(rules.MyCustomRule):
    """Broken: counts only class_a predicted as class_b, not the way back."""

    def invoke_at_step(self, step: int) -> bool:
        trial = self.base_trial
        pred = np.argmax(trial.tensor(rules.LOGITS).value(step), axis=1)
        lab = trial.tensor(rules.LABELS).value(step)
        self.counter += int(np.count_nonzero((lab == self.class_a) & (pred == self.class_b)))
        return self.counter > self.limit


class OffByOne(rules.MyCustomRule):
    """Broken: fires at ``limit`` confusions instead of more than ``limit``."""

    def invoke_at_step(self, step: int) -> bool:
        trial = self.base_trial
        pred = np.argmax(trial.tensor(rules.LOGITS).value(step), axis=1)
        lab = trial.tensor(rules.LABELS).value(step)
        a, b = self.class_a, self.class_b
        self.counter += int(
            np.count_nonzero(((lab == a) & (pred == b)) | ((lab == b) & (pred == a)))
        )
        return self.counter >= self.limit


class TrainOnly(rules.VectorisedDirectionConfusion):
    """Broken: looks at TRAIN steps only, missing confusions in EVAL steps (the seed's rule
    counted every step)."""

    def __init__(self, **params) -> None:
        super().__init__(mode="TRAIN", **params)


@pytest.mark.parametrize(
    "prop",
    [
        props.never_triggers_without_confusion,
        props.triggers_once_more_than_limit,
        props.symmetric_in_the_pair,
    ],
)
@pytest.mark.parametrize("kind", ["stepwise", "vectorised"])
def test_the_example_rules_have_the_properties(prop, kind) -> None:
    prop(props.RULES[kind])()


def _shrunk_failure(prop_factory, first_trigger):
    """Run a property against a rule that should fail it; the shrunk (last) example."""
    seen: list = []
    config = settings(
        props.SETTINGS,
        derandomize=True,
        database=None,
        max_examples=100,
        phases=[Phase.generate, Phase.shrink],  # no "explain": it traces every shrink step
    )
    with pytest.raises(AssertionError):
        prop_factory(first_trigger, record=seen, config=config)()
    return seen[-1]  # Hypothesis replays the minimal failing example last


def test_one_direction_rule_is_caught_with_a_small_counterexample() -> None:
    broken = props.stepwise(OneDirection)
    gen, limit = _shrunk_failure(props.symmetric_in_the_pair, broken)
    assert broken(gen.run, 0, 1, limit) != broken(gen.run, 1, 0, limit)
    # one step, two classes, one confusion: counted one way round, not the other
    assert limit == 0 and gen.num_classes == 2 and len(gen.run.steps()) == 1
    assert gen.truth.pair_count(0, 1, mode=None) == 1
    assert gen.truth.label_counts["TRAIN"].sum() <= 4


def test_off_by_one_rule_is_caught_with_a_small_counterexample() -> None:
    broken = props.stepwise(OffByOne)
    gen, limit = _shrunk_failure(props.never_triggers_without_confusion, broken)
    # smallest run of all: no confusion, limit 0, and the rule fires anyway
    assert broken(gen.run, 0, 1, limit) is not None
    assert limit == 0 and gen.truth.pair_count(0, 1, mode=None) == 0
    assert len(gen.run.steps()) == 1 and gen.num_classes == 2
    assert gen.truth.label_counts["TRAIN"].sum() <= 2


def test_train_only_rule_is_caught_with_a_small_counterexample() -> None:
    broken = props.vectorised(TrainOnly)
    gen, limit = _shrunk_failure(props.triggers_once_more_than_limit, broken)
    assert broken(gen.run, 0, 1, limit) != props.expected_first_trigger(gen, 0, 1, limit)
    # the confusion that decides lies in an EVAL step
    assert gen.truth.pair_count(
        0, 1, mode="EVAL", worker="worker_0"
    ) > limit - gen.truth.pair_count(0, 1, mode="TRAIN", worker="worker_0")
    # small, though shrinking does not always reach the one-TRAIN-one-EVAL-step minimum
    assert limit == 0 and gen.num_classes == 2 and len(gen.run.steps()) <= 6
    assert sum(c.sum() for c in gen.truth.label_counts.values()) <= 12
