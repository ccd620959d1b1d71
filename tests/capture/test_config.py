"""CollectionConfig / SaveConfig: SageMaker's spellings, schedules, glob-ish regexes."""

from __future__ import annotations

import re

import pytest

from pytest_modelrules import modes
from pytest_modelrules.capture import CollectionConfig, SaveConfig, SaveConfigMode
from pytest_modelrules.capture.config import default_collections, glob_regex, merge_collections


def test_seed_collection_config_spelling():
    cfg = CollectionConfig(
        name="custom_collection",
        parameters={"include_regex": "*ResNet_input|*CrossEntropyLoss", "save_interval": "500"},
    )
    assert cfg.include_regex == [".*ResNet_input|.*CrossEntropyLoss"]
    pattern = re.compile(cfg.include_regex[0])
    assert pattern.search("ResNet_input_0") and pattern.search("CrossEntropyLoss_output_0")
    assert not pattern.search("layer1.0.relu_output_0")
    sc = cfg.resolve_save_config(default_interval=7)
    assert [s for s in range(1200) if sc.should_save(modes.TRAIN, s)] == [0, 500, 1000]
    assert cfg.full and cfg.reduction_list == ()


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("*relu", ".*relu"), ("a|*b", "a|.*b"), ("(*x)", "(.*x)"), ("a*", "a*"), (".*y", ".*y")],
)
def test_glob_regex(pattern, expected):
    assert glob_regex(pattern) == expected


def test_bad_regex_is_reported():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        CollectionConfig("x", include_regex="relu(")


def test_save_config_mode_rules():
    m = SaveConfigMode(save_interval=3, save_steps=[4], start_step=2, end_step=10)
    assert [s for s in range(15) if m.should_save(s)] == [2, 4, 5, 8]
    assert not any(SaveConfigMode(save_interval=0).should_save(s) for s in range(5))
    assert [s for s in range(9) if SaveConfigMode(save_steps="1, 7").should_save(s)] == [1, 7]


def test_save_config_per_mode():
    sc = SaveConfig({"EVAL": {"save_interval": 1}, modes.PREDICT: None}, save_interval=4)
    assert [s for s in range(9) if sc.should_save(modes.TRAIN, s)] == [0, 4, 8]
    assert all(sc.should_save(modes.EVAL, s) for s in range(9))
    assert not any(sc.should_save(modes.PREDICT, s) for s in range(9))
    assert sc.to_json()["TRAIN"]["save_interval"] == 4
    only = SaveConfig(save_steps=[2, 3])
    assert [s for s in range(9) if only.should_save(modes.TRAIN, s)] == [2, 3]
    # an interval given with the steps saves both, even the default's value (500)
    both = SaveConfig(save_interval=500, save_steps=[3])
    assert [s for s in range(1001) if both.should_save(modes.TRAIN, s)] == [0, 3, 500, 1000]
    assert [s for s in range(1001) if SaveConfig().should_save(modes.TRAIN, s)] == [0, 500, 1000]


def test_mode_prefixed_parameters_and_string_values():
    cfg = CollectionConfig(
        "c",
        parameters={
            "include_regex": "x",
            "save_interval": "10",
            "eval.save_interval": "1",
            "train.save_steps": "3,5",
            "reductions": "l2,abs_mean",
            "save_raw_tensor": "true",
        },
    )
    sc = cfg.resolve_save_config(default_interval=500)
    assert [s for s in range(12) if sc.should_save(modes.TRAIN, s)] == [3, 5]
    assert all(sc.should_save(modes.EVAL, s) for s in range(12))
    assert [s for s in range(12) if sc.should_save(modes.PREDICT, s)] == [0, 10]
    assert cfg.reduction_list == (("l2", False), ("mean", True)) and cfg.full
    with pytest.raises(ValueError, match="unknown parameter"):
        CollectionConfig("c", parameters={"save_intervall": 3})
    with pytest.raises(ValueError, match="only"):
        CollectionConfig("c", reductions=["abs_positive_fraction"])


def test_a_user_config_with_a_builtin_name_keeps_its_selection():
    merged = merge_collections(
        default_collections("ResNet", "CrossEntropyLoss"),
        [
            CollectionConfig("weights", save_interval=100),
            CollectionConfig("mine", include_regex="q"),
        ],
    )
    by_name = {c.name: c for c in merged}
    assert by_name["weights"].include_regex == [r"^(?!gradient).*weight"]
    assert by_name["weights"].reduction_list[0] == ("l2", False) and not by_name["weights"].full
    assert by_name["weights"].resolve_save_config(500).modes[modes.TRAIN].save_interval == 100
    assert list(by_name)[-1] == "mine"
    assert re.search(by_name["loss_inputs"].include_regex[0], "CrossEntropyLoss_input_1")


@pytest.mark.parametrize(
    ("given", "reductions", "full"),
    [
        ({"save_raw_tensor": True}, [("l2", False)], True),  # the full tensor too
        ({"save_raw_tensor": False}, [("l2", False)], False),
        ({"reductions": ["l1"]}, [("l1", False)], False),  # replaced
        ({"reductions": ["l1"], "save_raw_tensor": True}, [("l1", False)], True),
        ({"save_interval": 7}, [("l2", False)], False),  # only the schedule changes
    ],
)
def test_overriding_a_builtin_keeps_what_the_override_does_not_set(given, reductions, full):
    builtins = default_collections("ResNet", "CrossEntropyLoss")
    merged = merge_collections(builtins, [CollectionConfig("weights", **given)])
    (weights,) = [c for c in merged if c.name == "weights"]
    assert list(weights.reduction_list) == reductions and weights.full is full


@pytest.mark.parametrize(
    ("config", "saves"),
    [
        (SaveConfig(save_interval=0), False),
        (SaveConfig(save_interval=5), True),
        (SaveConfig(save_interval=0, save_steps=[7]), True),
        (SaveConfig(save_interval=5, start_step=10, end_step=10), False),
        (SaveConfig({modes.EVAL: SaveConfigMode(save_interval=1)}, save_interval=0), True),
    ],
)
def test_a_save_config_says_whether_it_saves_any_step(config, saves):
    """What decides whether a compiled model gets a collection's hooks at all (they stay
    installed at every step there): a schedule that saves no step needs none."""
    assert config.saves_any() is saves
