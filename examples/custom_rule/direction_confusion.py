"""The seed's custom rule, as a pytest-modelrules custom rule.

The blog post behind this project trained a ResNet-18 on GTSRB and wrote a SageMaker Debugger
custom rule that fires once classes 19 and 20 (the two "dangerous curve" signs, left and
right) were confused with each other more than 10 times. :class:`MyCustomRule` is that rule,
unchanged except that the run comes from ``self.base_trial`` (the post read a notebook global)
and that the pair and the limit are parameters. :class:`VectorisedDirectionConfusion` is the
same check written as a built-in-style rule that reads the whole run at once.

Run it as the post did::

    from pytest_modelrules import create_trial, invoke_rule, RuleEvaluationConditionMet
    rule = MyCustomRule(create_trial("path/to/run"))
    try:
        invoke_rule(rule, raise_eval_cond=True)
    except RuleEvaluationConditionMet as e:
        print(e)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pytest_modelrules import Rule
from pytest_modelrules.rules.base import BuiltinRule, Param
from pytest_modelrules.rules.result import RuleResult

LOGITS = "CrossEntropyLoss_input_0"
LABELS = "CrossEntropyLoss_input_1"


class MyCustomRule(Rule):
    """Fires once classes ``class_a`` and ``class_b`` were confused more than ``limit`` times
    (either direction, counted over the steps in order)."""

    def __init__(
        self, base_trial: Any, class_a: int = 19, class_b: int = 20, limit: int = 10
    ) -> None:
        super().__init__(base_trial)
        self.class_a, self.class_b, self.limit = int(class_a), int(class_b), int(limit)
        self.counter = 0

    def invoke_at_step(self, step: int) -> bool:
        trial = self.base_trial
        predictions = np.argmax(trial.tensor(LOGITS).value(step), axis=1)
        labels = trial.tensor(LABELS).value(step)
        a, b = self.class_a, self.class_b
        for prediction, label in zip(predictions, labels):
            if (prediction == a and label == b) or (prediction == b and label == a):
                self.counter += 1
                if self.counter > self.limit:
                    self.logger.info(
                        f"Found {self.counter} cases where class {a} was mistaken as class {b} "
                        "and vice versa"
                    )
                    return True
        return False


class VectorisedDirectionConfusion(BuiltinRule):
    """The same check over the whole run at once: counts per step with NumPy, cumulates, and
    triggers at the first global step where the count passes ``limit``."""

    name = "example_direction_confusion"
    params: ClassVar[dict[str, Param]] = {
        "class_a": Param(19, "int"),
        "class_b": Param(20, "int"),
        "limit": Param(10, "int"),
        "mode": Param(None, "mode", "only steps of this mode (default: every step, as the seed)"),
    }

    def _evaluate(self, run: Any) -> RuleResult:
        labels = run.tensor(LABELS).series(self.mode)
        logits = run.tensor(LOGITS).series(self.mode)
        common = np.intersect1d(labels.global_steps, logits.global_steps)
        lab = dict(zip(labels.global_steps.tolist(), labels.arrays))
        pred = dict(zip(logits.global_steps.tolist(), logits.arrays))
        a, b = self.class_a, self.class_b
        per_step = np.array(
            [
                np.count_nonzero(
                    ((lab[s] == a) & (np.argmax(pred[s], axis=1) == b))
                    | ((lab[s] == b) & (np.argmax(pred[s], axis=1) == a))
                )
                for s in common.tolist()
            ],
            dtype=np.int64,
        )
        total = np.cumsum(per_step)
        over = np.nonzero(total > self.limit)[0]
        count = int(total[-1]) if len(total) else 0
        if len(over):
            step = int(common[over[0]])
            return self.make_result(
                True,
                f"Classes {a} and {b} were confused {int(total[over[0]])} times by global step "
                f"{step} (limit {self.limit}); {count} times in all.",
                first_trigger=self.trigger_step(run, step),
                triggers=[self.trigger_step(run, int(common[i])) for i in over],
                figure=float(count),
                figure_name=f"confusions {a}<->{b}",
                limit=float(self.limit),
                steps_evaluated=len(common),
            )
        return self.make_result(
            False,
            f"Classes {a} and {b} were confused {count} times over {len(common)} steps "
            f"(limit {self.limit}).",
            figure=float(count),
            figure_name=f"confusions {a}<->{b}",
            limit=float(self.limit),
            steps_evaluated=len(common),
        )
