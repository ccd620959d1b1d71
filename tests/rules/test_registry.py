"""evaluate() by name, the list of rules and the default set."""

from __future__ import annotations

import re

import numpy as np
import pytest

import pytest_modelrules
from pytest_modelrules import RuleParameterError, RunWriter
from pytest_modelrules.rules.base import BuiltinRule
from pytest_modelrules.rules.loss import LossNotDecreasing
from pytest_modelrules.rules.registry import (
    available_rules,
    default_rules,
    evaluate,
    make_rule,
    rule_class,
)

MINE = {
    "loss_not_decreasing",
    "overfit",
    "overtraining",
    "class_imbalance",
    "confusion",
    "direction_confusion",
    "recall_floor",
    "baseline_comparison",
}


@pytest.fixture
def flat_run(tmp_path):
    with RunWriter(tmp_path / "r") as w:
        for g in range(25):
            w.write("CrossEntropyLoss_output_0", np.float32(1.0), g)
    return str(tmp_path / "r")


def test_evaluate_by_snake_case_or_class_name(flat_run):
    a = evaluate(flat_run, "loss_not_decreasing", num_steps="10")
    b = evaluate(flat_run, "LossNotDecreasing", num_steps=10)
    c = pytest_modelrules.evaluate(flat_run, "lossnotdecreasing")
    assert a.triggered and [t.step for t in a.triggers] == [10, 20]
    assert a.triggers == b.triggers == c.triggers
    assert a.parameters["num_steps"] == 10 and a.run_path.endswith("r")
    assert evaluate(flat_run, LossNotDecreasing).triggers == a.triggers
    assert evaluate(flat_run, LossNotDecreasing(num_steps=20)).triggers[0].step == 20


def test_unknown_rule_lists_the_names(flat_run):
    with pytest.raises(RuleParameterError) as info:
        evaluate(flat_run, "loss_not_decreasin")
    text = str(info.value)
    assert "did you mean loss_not_decreasing" in text
    for name in MINE:
        assert name in text
    with pytest.raises(RuleParameterError, match="already configured"):
        make_rule(LossNotDecreasing(), num_steps=3)
    with pytest.raises(RuleParameterError, match="must be a string"):
        rule_class(42)


def test_available_and_default_rules():
    names = available_rules()
    assert set(names) >= MINE
    assert names == sorted(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    defaults = default_rules()
    assert set(defaults) <= set(names)
    assert MINE - {"baseline_comparison"} <= set(defaults)
    assert "baseline_comparison" not in defaults  # needs a baseline
    for name in defaults:  # each default rule builds without any parameter
        assert isinstance(rule_class(name)(), BuiltinRule)


def test_required_parameter_is_reported():
    with pytest.raises(RuleParameterError, match=r"required parameter.*baseline"):
        rule_class("baseline_comparison")()


def test_tuple_spec():
    rule = make_rule(("loss_not_decreasing", {"num_steps": "7"}))
    assert isinstance(rule, LossNotDecreasing) and rule.num_steps == 7


def test_benchmark_quick_runs_every_default_rule(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_rules.py"
    spec = importlib.util.spec_from_file_location("bench_rules", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--quick", "--json", str(tmp_path / "bench.json")])
    assert out["steps"] == 200
    assert set(out["rules"]) == set(default_rules())
    for name in MINE - {"baseline_comparison"}:  # mine all run on the benchmark's run
        assert name not in out["errors"], out["errors"].get(name)
    assert "total (open + all rules)" in capsys.readouterr().out
    assert (tmp_path / "bench.json").exists()


def test_evaluate_defaults_runs_the_profile_and_marks_what_it_cannot_judge(flat_run):
    from pytest_modelrules.rules.profiles import WHEN_RECORDED, default_profile
    from pytest_modelrules.rules.registry import evaluate_defaults

    results = evaluate_defaults(flat_run)
    assert [r.name for r in results] == list(default_profile())
    by_name = {r.name: r for r in results}
    # the flat run holds only a loss: a rule needing sigmoid inputs is not judged, not failed
    saturated = by_name["saturated_activation"]
    assert "saturated_activation" in WHEN_RECORDED
    assert saturated.skipped and not saturated.triggered
    assert saturated.explanation.startswith("not judged: ")
    # the loss rule did judge the run, with the profile's parameters
    assert not by_name["loss_not_decreasing"].skipped


def test_default_profile_gap_names_a_run_without_loss_or_judged_only_by_any_run_rules(
    flat_run, tmp_path
):
    """A run of an unrelated tensor ("foo", a vector or a scalar the loss rules fall back on)
    has no loss: the profile's check of it has a gap. A run with a loss has none, unless only
    the rules that judge any run with steps (exploding_tensor, stalled_training_rule) did."""
    from pytest_modelrules.rules.profiles import ANY_RUN
    from pytest_modelrules.rules.registry import default_profile_gap, evaluate_defaults

    for name, value in (("vector", np.ones(3)), ("scalar", np.float32(2.0))):
        with RunWriter(tmp_path / name) as w:
            for g in range(5):
                w.write("foo", value * g, g)
        gap = default_profile_gap(tmp_path / name, evaluate_defaults(tmp_path / name))
        assert gap == (
            f"the run {name!r} holds no loss tensor (no losses collection, no scalar named "
            "*loss*): the loss rules (loss_not_decreasing, overfit, overtraining) judged no "
            "loss; the run holds foo"
        )
    results = evaluate_defaults(flat_run)
    assert default_profile_gap(flat_run, results) is None
    generic = [r for r in results if r.name in ANY_RUN or r.skipped]
    assert default_profile_gap(flat_run, generic) == (
        "no rule that reads what a training records could judge the run 'r', only ones that "
        "judge any run with steps (exploding_tensor, stalled_training_rule); the run holds "
        "CrossEntropyLoss_output_0"
    )


def test_regex_lists_as_sagemaker_documents_them(tmp_path):
    """SageMaker documents tensor_regex / collection_names / activation_inputs_regex as "a list
    of strings or a comma-separated string" (its SaturatedActivation default is
    ".*tanh_input, .*sigmoid_input"): commas outside brackets and braces split, a list is taken
    by the rules that read one regex too, and a regex's own commas stay whole."""
    from pytest_modelrules.rules.activations import DeadRelu, SaturatedActivation
    from pytest_modelrules.rules.base import split_regexes
    from pytest_modelrules.rules.tensors import ExplodingTensor, PoorWeightInitialization

    assert split_regexes(".*tanh_input, .*sigmoid_input") == [".*tanh_input", ".*sigmoid_input"]
    assert split_regexes(r"a{1,3},b[,;]c,(x|y,z)\,w") == ["a{1,3}", "b[,;]c", "(x|y,z)\\,w"]
    assert split_regexes("[],]x,y") == ["[],]x", "y"]

    with RunWriter(tmp_path / "r") as w:
        for g in range(3):
            relu = np.zeros((4, 8), np.float32)
            w.write("layer1.relu_output_0", relu + 1, g)
            w.write("layer2.relu_output_0", relu, g)
            w.write("CrossEntropyLoss_output_0", np.float32(np.nan), g)
    run = str(tmp_path / "r")
    for given in ("layer1.relu_output,layer2.relu_output", ["layer1.relu", "layer2.relu"]):
        result = evaluate(run, "dead_relu", tensor_regex=given)
        assert result.triggered and result.evidence["layers"] == [
            "layer1.relu_output_0",
            "layer2.relu_output_0",
        ]
    assert DeadRelu(tensor_regex="layer2.relu").parameters["tensor_regex"] == "layer2.relu"
    assert SaturatedActivation(tensor_regex=".*tanh_input, .*sigmoid_input").tensor_regex == (
        "(?:.*tanh_input)|(?:.*sigmoid_input)"
    )
    assert PoorWeightInitialization(activation_inputs_regex=["a", "b"]).activation_inputs_regex
    found = evaluate(run, "exploding_tensor", tensor_regex="CrossEntropyLoss_output_0, layer1")
    assert found.triggered
    assert ExplodingTensor(tensor_regex="a{1,3}").tensor_regex == ["a{1,3}"]
    assert ExplodingTensor(collection_names="losses; weights").collection_names == [
        "losses",
        "weights",
    ]
    with pytest.raises(RuleParameterError, match=r"tensor_regex.*not a regex string"):
        DeadRelu(tensor_regex=[1, 2])


def test_pairs_and_lists_separated_by_semicolons():
    from pytest_modelrules.rules.classification import DirectionConfusion, RecallFloor

    assert DirectionConfusion(pairs="19-20;33-34").pairs == [(19, 20), (33, 34)]
    assert RecallFloor(classes="19; 20").classes == [19, 20]
    with pytest.raises(RuleParameterError, match=r"pairs.*'19-20-21' is not a pair"):
        DirectionConfusion(pairs="19-20-21")


def test_sagemaker_rule_to_invoke_parameter_is_accepted_for_the_same_rule(flat_run):
    """SageMaker's RuleParameters always hold "rule_to_invoke" (the base config's name):
    parameters copied from a training job's DebugRuleConfigurations work as they are."""
    params = {"rule_to_invoke": "LossNotDecreasing", "num_steps": "10"}
    result = evaluate(flat_run, "loss_not_decreasing", **params)
    assert result.triggered and "rule_to_invoke" not in result.parameters
    assert make_rule(("LossNotDecreasing", params)).num_steps == 10
    assert evaluate(flat_run, "loss_not_decreasing", rule_to_invoke="loss_not_decreasing")
    with pytest.raises(RuleParameterError, match="'rule_to_invoke' = 'DeadRelu' names another"):
        evaluate(flat_run, "loss_not_decreasing", rule_to_invoke="DeadRelu")
