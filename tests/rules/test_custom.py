"""The custom-rule API: the seed's MyCustomRule cell runs unchanged but for its imports."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules import (
    MissingTensorError,
    RuleEvaluationConditionMet,
    RuleParameterError,
    RunWriter,
    TensorUnavailable,
    create_trial,
)
from pytest_modelrules.datasets.gtsrb_meta import CLASS_NAMES
from pytest_modelrules.rules.base import BuiltinRule
from pytest_modelrules.rules.classification import DirectionConfusion
from pytest_modelrules.rules.custom import BuiltinAsCustomRule, Rule, as_custom_rule, invoke_rule
from pytest_modelrules.rules.loss import LossNotDecreasing

# The two notebook cells of the seed (shared/seed/sagemaker_debugger_transfer_learning.txt),
# verbatim but for their import lines (and trailing blanks on blank lines).
SEED_IMPORTS = "from smdebug.rules.rule import Rule\n"
SEED_RULE_CELL = """\
class MyCustomRule(Rule):
    def __init__(self, base_trial):
        super().__init__(base_trial)
        self.counter = 0

    def invoke_at_step(self, step):


        predictions = np.argmax(trial.tensor('CrossEntropyLoss_input_0').value(step),axis=1)
        labels = trial.tensor('CrossEntropyLoss_input_1').value(step)

        for prediction, label in zip(predictions, labels):

            if prediction == 19 and label == 20 or prediction == 20 and label == 19:
                self.counter += 1
                if self.counter > 10:
                    self.logger.info(f'Found {self.counter} cases where class 19 was mistaken as class 20 and vice versa')
                    return True

        return False"""  # noqa: E501
SEED_INVOKE_IMPORTS = "from smdebug.rules import invoke_rule\nfrom smdebug.exceptions import *\n\n"
SEED_INVOKE_CELL = """\
rule = MyCustomRule(trial)
try:
    invoke_rule(rule, raise_eval_cond=True)
except RuleEvaluationConditionMet as e:
    print(e)"""
OUR_IMPORTS = (
    "import numpy as np\n"
    "from pytest_modelrules import Rule, invoke_rule, RuleEvaluationConditionMet, create_trial\n"
)


def _seed_text() -> str:
    env = os.environ.get("MODELRULES_SHARED_DIR")
    root = Path(__file__).resolve().parents[2]
    candidates = [Path(env)] if env else [root / "shared", root.parent / "shared"]
    for c in candidates:
        path = c / "seed" / "sagemaker_debugger_transfer_learning.txt"
        if path.exists():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError("shared/seed not found beside the repository")


def _strip_blanks(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines())


def test_the_cells_here_are_the_seeds():
    seed = _strip_blanks(_seed_text())
    assert _strip_blanks(SEED_IMPORTS + "\n" + SEED_RULE_CELL) in seed
    assert _strip_blanks(SEED_INVOKE_IMPORTS + SEED_INVOKE_CELL) in seed


def write_confusions(path, per_step, missing_logits_at=()):
    """Steps alternate TRAIN x 3 / EVAL x 2; per_step[g] = 19<->20 confusions at step g."""
    with RunWriter(path, metadata={"class_names": list(CLASS_NAMES)}) as w:
        for g, n in enumerate(per_step):
            mode = "TRAIN" if g % 5 < 3 else "EVAL"
            lab = np.full(64, 7)
            pred = np.full(64, 7)
            lab[:n] = np.where(np.arange(n) % 2, 19, 20)
            pred[:n] = np.where(np.arange(n) % 2, 20, 19)
            logits = np.zeros((64, 43), np.float32)
            logits[np.arange(64), pred] = 3.0
            w.write("CrossEntropyLoss_input_1", lab, g, mode)
            if g not in missing_logits_at:
                w.write("CrossEntropyLoss_input_0", logits, g, mode)
    return create_trial(path)


# confusions per global step: cumulative 0, 3, 3, 3, 7, 7, 7, 7, 11 -> the 11th at step 8 (TRAIN)
PER_STEP = [0, 3, 0, 0, 4, 0, 0, 0, 4, 1, 0, 2]


def test_seed_cell_runs_unchanged(tmp_path, capsys, caplog):
    trial = write_confusions(tmp_path / "run", PER_STEP)
    namespace = {"trial": trial}
    exec(OUR_IMPORTS + SEED_RULE_CELL, namespace)
    with caplog.at_level(logging.INFO, logger="pytest_modelrules"):
        exec(SEED_INVOKE_CELL, namespace)
    printed = capsys.readouterr().out.strip()
    assert printed == (
        "Evaluation of the rule MyCustomRule at step 8 resulted in the condition being met"
    )
    assert "Found 11 cases where class 19 was mistaken as class 20" in caplog.text
    assert "Started execution of rule MyCustomRule at step 0" in caplog.text
    # the built-in rule agrees with the hand-written one (limit 10, every step counted)
    assert DirectionConfusion().evaluate(trial).first_step == 8


def test_invoke_rule_without_raising_lists_every_trigger(tmp_path):
    trial = write_confusions(tmp_path / "run", PER_STEP)
    namespace = {"trial": trial}
    exec(OUR_IMPORTS + SEED_RULE_CELL, namespace)
    result = invoke_rule(namespace["MyCustomRule"](trial))
    # after the 11th confusion every step holding one returns True
    assert [t.step for t in result.triggers] == [8, 9, 11]
    assert [t.mode for t in result.triggers] == ["EVAL", "EVAL", "TRAIN"]
    assert result.rule == "MyCustomRule" and result.name == "my_custom_rule"
    assert result.steps_evaluated == len(PER_STEP)
    windowed = invoke_rule(namespace["MyCustomRule"](trial), start_step=2, end_step=9)
    assert not windowed.triggered and windowed.steps_evaluated == 7  # 4 + 4 = 8 confusions


def test_steps_missing_a_tensor_are_skipped(tmp_path):
    trial = write_confusions(tmp_path / "run", PER_STEP, missing_logits_at={1})
    namespace = {"trial": trial}
    exec(OUR_IMPORTS + SEED_RULE_CELL, namespace)
    with pytest.raises(RuleEvaluationConditionMet) as info:
        invoke_rule(namespace["MyCustomRule"](trial), raise_eval_cond=True)
    # the 3 confusions of step 1 are never seen: 4 + 4 + 1 + 2 = 11 at step 11
    assert info.value.step == 11
    assert info.value.rule_name == "MyCustomRule"
    assert info.value.result.evidence["skipped_steps"] == [1]
    assert info.value.result.steps_evaluated == 11  # steps 0..11 but 1


def test_a_tensor_absent_from_the_run_is_an_error(tmp_path):
    trial = write_confusions(tmp_path / "run", [1, 2])

    class NeedsWeights(Rule):
        def invoke_at_step(self, step):
            return bool(self.base_trial.tensor("fc.weight").value(step).any())

    with pytest.raises(TensorUnavailable, match=r"fc\.weight"):
        invoke_rule(NeedsWeights(trial))


def test_rule_base_class():
    class Bare(Rule):
        pass

    with pytest.raises(FileNotFoundError):
        Bare("/nonexistent/run/folder")


def test_rule_invoke_raises_condition_met(tmp_path):
    trial = write_confusions(tmp_path / "run", [1])

    class Always(Rule):
        def invoke_at_step(self, step):
            return True

    rule = Always(trial, other_trials=[trial])
    assert rule.other_trials[0] is trial and rule.logger.name.endswith("Always")
    with pytest.raises(RuleEvaluationConditionMet, match=re.escape("rule Always at step 0")):
        rule.invoke(0)
    with pytest.raises(NotImplementedError):
        Rule(trial).invoke_at_step(0)


def test_smdebug_1_0_rule_constructor_and_required_tensors(tmp_path):
    """A rule written against smdebug 1.0 (its Rule(base_trial, action_str, other_trials) and
    its docs' set_required_tensors / req_tensors) runs as it is: a step where a declared
    tensor was not saved is skipped before invoke_at_step is called."""
    trial = write_confusions(tmp_path / "run", PER_STEP, missing_logits_at=(4, 8))

    class Declared(Rule):
        def __init__(self, base_trial, threshold="2", action_str=""):
            super().__init__(base_trial, action_str=action_str)
            self.threshold = int(threshold)
            self.seen = []

        def set_required_tensors(self, step):
            for name in self.base_trial.tensor_names(regex="CrossEntropyLoss_input"):
                self.req_tensors.add(name, steps=[step])

        def invoke_at_step(self, step):
            self.seen.append(step)
            assert sorted(t.name for t in self.req_tensors.get()) == [
                "CrossEntropyLoss_input_0",
                "CrossEntropyLoss_input_1",
            ]
            labels = self.base_trial.tensor("CrossEntropyLoss_input_1").value(step)
            return int(np.isin(labels, (19, 20)).sum()) > self.threshold

    rule = Declared(trial, threshold="3", action_str="stoptraining")
    assert rule.action_str == "stoptraining" and rule.trials == [trial]
    result = invoke_rule(rule, start_step=0, end_step=None)
    assert rule.seen == [0, 1, 2, 3, 5, 6, 7, 9, 10, 11]  # 4 and 8 lack the logits
    assert result.evidence["skipped_steps"] == [4, 8] and result.triggers == []
    with pytest.raises(RuleEvaluationConditionMet, match="rule Declared at step 1"):
        invoke_rule(Declared(trial, threshold="2"), raise_eval_cond=True)
    with pytest.raises(TensorUnavailable, match="did you mean"):
        rule.req_tensors.add("CrossEntropyLoss_input_2", steps=[0])

    class Positional(Rule):
        def invoke_at_step(self, step):
            return False

    assert Positional(trial, "", [trial]).other_trials == [trial]
    assert Positional(trial, [trial]).other_trials == [trial]  # (base_trial, other_trials)


def test_builtin_rules_step_by_step(tmp_path):
    trial = write_confusions(tmp_path / "run", PER_STEP)
    whole = DirectionConfusion().evaluate(trial)
    walked = invoke_rule(DirectionConfusion(), trial=trial)
    assert [t.step for t in walked.triggers] == [t.step for t in whole.triggers] == [8, 9, 10, 11]
    with pytest.raises(RuleEvaluationConditionMet, match="DirectionConfusion at step 8"):
        invoke_rule(as_custom_rule(DirectionConfusion(), trial), raise_eval_cond=True)
    with pytest.raises(TypeError, match="trial=run"):
        invoke_rule(LossNotDecreasing())
    with pytest.raises(TypeError, match="invoke_at_step"):
        invoke_rule(object())


def test_builtin_step_by_step_follows_a_run_being_written(tmp_path):
    path = tmp_path / "live"
    w = RunWriter(path, metadata={"class_names": list(CLASS_NAMES)})

    def write(g, n):
        lab, pred = np.full(8, 7), np.full(8, 7)
        lab[:n], pred[:n] = 19, 20
        logits = np.zeros((8, 43), np.float32)
        logits[np.arange(8), pred] = 1.0
        w.write("CrossEntropyLoss_input_1", lab, g)
        w.write("CrossEntropyLoss_input_0", logits, g)
        w.end_step()

    for g in range(3):
        write(g, 4)  # 4, 8, 12 confusions
    stepwise = as_custom_rule(DirectionConfusion(), create_trial(path))
    assert [stepwise.invoke_at_step(g) for g in range(3)] == [False, False, True]
    write(3, 0)
    write(4, 1)
    assert stepwise.invoke_at_step(4) is True  # refreshed: the step was written after opening
    w.close()


class _VerdictAtLastStep(BuiltinRule):
    """Judges the run as a whole and reports it at the run's last step (as rules that judge a
    whole run do): its trigger moves when steps are added."""

    name = "verdict_at_last_step"

    def _evaluate(self, run):
        triggers = self.trigger_steps(run, run.steps()[-1:])
        return self.make_result(bool(triggers), "at the last step.", triggers=triggers)


def test_a_wrapper_walked_again_forgets_the_verdicts_of_the_last_walk(tmp_path):
    """invoke_rule on one as_custom_rule wrapper of a rule without a per-step path, after more
    steps were written: the verdicts cached by the first walk are not reused."""
    path = tmp_path / "live"
    w = RunWriter(path)

    def write(steps):
        for g in steps:
            w.write("loss", np.float32(1.0), g)
            w.end_step()

    write(range(5))
    stepwise = as_custom_rule(_VerdictAtLastStep(), create_trial(path))
    assert [t.step for t in invoke_rule(stepwise).triggers] == [4]
    write(range(5, 10))
    assert [t.step for t in invoke_rule(stepwise).triggers] == [9]  # not [4, 9]
    w.close()


def test_as_custom_rule_takes_a_rule_name_with_parameters(tmp_path):
    trial = write_confusions(tmp_path / "run", PER_STEP)
    expected = [t.step for t in DirectionConfusion(limit=6).evaluate(trial).triggers]
    assert expected == [4, 5, 6, 7, 8, 9, 10, 11]  # the 7th confusion comes at step 4
    for spec, params in (
        ("direction_confusion", {"limit": 6}),
        ("DirectionConfusion", {"limit": "6"}),  # class name, parameter as a string
        (DirectionConfusion, {"limit": 6}),
        (("direction_confusion", {"limit": 6}), {}),
    ):
        stepwise = as_custom_rule(spec, trial, **params)
        assert isinstance(stepwise.rule, DirectionConfusion) and stepwise.rule.limit == 6
        assert [t.step for t in invoke_rule(stepwise).triggers] == expected
    walked = invoke_rule(("direction_confusion", {"limit": 6}), trial=trial)
    assert [t.step for t in walked.triggers] == expected
    assert walked.parameters["limit"] == 6
    assert [t.step for t in invoke_rule("direction_confusion", trial=trial).triggers] == [
        8,
        9,
        10,
        11,
    ]


def test_as_custom_rule_with_a_name_of_a_rule_whose_tensors_are_missing(tmp_path):
    # the name is resolved at once: the failure is the rule's own "the run has no ..." error
    trial = write_confusions(tmp_path / "run", [1, 2])
    with pytest.raises(MissingTensorError, match="DeadRelu: no tensor matches"):
        invoke_rule(as_custom_rule("dead_relu", trial, threshold_layer=60))


def test_as_custom_rule_rejects_what_is_no_builtin_rule(tmp_path):
    trial = write_confusions(tmp_path / "run", [1])
    with pytest.raises(
        RuleParameterError, match=r"unknown rule 'dead_reluu'.*did you mean dead_relu"
    ):
        as_custom_rule("dead_reluu", trial)
    with pytest.raises(RuleParameterError, match="unknown parameter"):
        as_custom_rule("dead_relu", trial, threshold=3)
    with pytest.raises(RuleParameterError, match="already configured"):
        as_custom_rule(DirectionConfusion(), trial, limit=3)

    class Mine(Rule):
        def invoke_at_step(self, step):
            return False

    for wrong in (Mine(trial), Mine, 42, ("dead_relu",), None):
        with pytest.raises(TypeError, match=r"as_custom_rule\(rule, trial, \*\*params\) takes"):
            as_custom_rule(wrong, trial)
    with pytest.raises(TypeError, match="built-in rule instance"):
        BuiltinAsCustomRule("dead_relu", trial)
    with pytest.raises(TypeError, match="trial=run"):
        invoke_rule("dead_relu")
