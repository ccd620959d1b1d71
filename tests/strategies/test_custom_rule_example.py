"""The custom-rule example's property tests: they pass on the example's rules and catch
deliberately broken versions with a small shrunk counterexample."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

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


class AllWorkers(rules.VectorisedDirectionConfusion):
    """Broken: counts the batches of every worker, including steps some never finished."""

    def _evaluate(self, run):
        from pytest_modelrules.strategies import LABELS, LOGITS

        lab = run.tensor(LABELS).series(all_workers=True)
        logit = run.tensor(LOGITS).series(all_workers=True)
        a, b = self.class_a, self.class_b
        total = 0
        for step, y, z in zip(lab.global_steps.tolist(), lab.arrays, logit.arrays):
            p = np.argmax(z, axis=1)
            total += int(np.count_nonzero(((y == a) & (p == b)) | ((y == b) & (p == a))))
            if total > self.limit:
                return self.make_result(True, "", first_trigger=self.trigger_step(run, step))
        return self.make_result(False, "")


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
    with pytest.raises(AssertionError):
        prop_factory(first_trigger, record=seen)()
    return seen[-1]  # Hypothesis replays the minimal failing example last


def test_one_direction_rule_is_caught_with_a_small_counterexample() -> None:
    broken = props.stepwise(OneDirection)
    gen, limit = _shrunk_failure(props.triggers_once_more_than_limit, broken)
    assert broken(gen.run, 0, 1, limit) != props.expected_first_trigger(gen, 0, 1, limit)
    # the shrunk run: the way back (1 predicted as 0) is what the rule missed
    assert gen.truth.pair_count(1, 0, mode=None, directed=True, worker="worker_0") >= 1
    assert limit == 0 and gen.num_classes == 2 and len(gen.run.steps()) == 1
    assert gen.truth.label_counts["TRAIN"].sum() <= 4
    gen, limit = _shrunk_failure(props.symmetric_in_the_pair, broken)
    assert limit == 0 and gen.num_classes == 2 and len(gen.run.steps()) == 1


def test_off_by_one_rule_is_caught_with_a_small_counterexample() -> None:
    broken = props.stepwise(OffByOne)
    gen, limit = _shrunk_failure(props.never_triggers_without_confusion, broken)
    # smallest run of all: no confusion, limit 0, and the rule fires anyway
    assert limit == 0 and gen.truth.pair_count(0, 1, mode=None) == 0
    assert len(gen.run.steps()) == 1 and gen.num_classes == 2
    assert gen.truth.label_counts["TRAIN"].sum() <= 2
    gen, limit = _shrunk_failure(props.triggers_once_more_than_limit, broken)
    counts = gen.truth.cumulative_pair_counts(0, 1)
    assert counts[-1][1] == limit  # exactly at the boundary
    assert len(gen.run.steps()) <= 2


def test_rule_reading_incomplete_steps_is_caught() -> None:
    broken = props.vectorised(AllWorkers)
    gen, _limit = _shrunk_failure(props.triggers_once_more_than_limit, broken)
    assert gen.workers == ["worker_0", "worker_1"]
    assert gen.truth.pair_count(0, 1, mode=None) > gen.truth.pair_count(
        0, 1, mode=None, worker="worker_0"
    )
