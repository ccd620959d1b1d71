"""CheckInputImages: normalised vs raw model input, the default input regex, sample counting."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from rule_runs import write_run

from pytest_modelrules.exceptions import MissingTensorError, RuleParameterError
from pytest_modelrules.rules.base import registry
from pytest_modelrules.rules.inputs import DEFAULT_INPUT_REGEX, CheckInputImages


def images(
    rng: np.random.Generator, batch: int, mean: tuple[float, float, float], std: float = 1.0
) -> np.ndarray:
    x = rng.normal(0, std, (batch, 3, 8, 8)) + np.asarray(mean)[None, :, None, None]
    return x.astype(np.float32)


def test_raw_images_trigger_once_enough_samples_were_seen(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # ToTensor() without Normalize: values in [0, 1], channel means ~0.45
    steps = {
        g: {
            "ResNet_input_0": rng.uniform(0, 0.9, (64, 3, 8, 8)).astype(np.float32),
            "CrossEntropyLoss_input_0": rng.normal(size=(64, 43)).astype(np.float32),
        }
        for g in range(10)
    }
    result = CheckInputImages().evaluate(write_run(tmp_path / "run", steps))
    assert result.triggered
    assert result.first_step == 7  # 8 batches of 64 = 512 >= 500 samples
    assert [t.step for t in result.triggers] == [7, 8, 9]
    assert result.evidence["tensors"] == ["ResNet_input_0"]  # not the loss's input
    assert (
        "over the first 512 samples at global step 7 (TRAIN step 7); limit |mean| <= 0.2"
        in result.explanation
    )
    assert result.figure == pytest.approx(0.45, abs=0.01) and result.limit == 0.2


def test_normalised_images_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    steps = {g: {"ResNet_input_0": images(rng, 64, (0.05, -0.1, 0.0))} for g in range(10)}
    result = CheckInputImages().evaluate(write_run(tmp_path / "run", steps))
    assert not result.triggered and not result.skipped
    assert result.explanation.startswith("Input looks normalised")
    # one channel off by 0.3 is enough, parameters as strings
    off = {g: {"ResNet_input_0": images(rng, 64, (0.0, 0.3, 0.0))} for g in range(3)}
    result = CheckInputImages(threshold_samples="100", threshold_mean="0.2").evaluate(
        write_run(tmp_path / "off", off)
    )
    assert result.triggered and result.first_step == 1
    assert re.search(r"channel 1 mean 0\.(2[5-9]|3)", result.explanation)


def test_too_few_samples_is_reported_as_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    run = write_run(tmp_path / "run", {0: {"ResNet_input_0": images(rng, 16, (3.0, 3.0, 3.0))}})
    result = CheckInputImages().evaluate(run)
    assert result.skipped and not result.triggered
    assert "Only 16 input samples" in result.explanation


def test_channel_axis_and_smaller_last_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    nhwc = {
        g: {"Net_input_0": np.moveaxis(images(rng, 50 if g < 2 else 10, (0.0, 0.0, 1.0)), 1, 3)}
        for g in range(3)
    }
    run = write_run(tmp_path / "run", nhwc)
    result = CheckInputImages(channel="3", threshold_samples="100").evaluate(run)
    assert result.triggered and result.first_step == 1
    means = result.evidence["Net_input_0"]["channel_mean"]
    assert means.shape == (3, 3)
    assert result.evidence["Net_input_0"]["samples_seen"].tolist() == [50, 100, 110]


def test_default_regex_picks_the_root_model_input() -> None:
    pattern = re.compile(DEFAULT_INPUT_REGEX)
    assert pattern.search("ResNet_input_0")
    for name in (
        "CrossEntropyLoss_input_0",
        "layer1.0.relu_input_0",
        "ResNet_input_1",
        "NLLLoss_input_0",
    ):
        assert not pattern.search(name), name


def test_integer_input_is_not_judged(tmp_path: Path) -> None:
    """Token ids (an embedding model's int64 input, recorded in full) are indices, not values
    to normalise: not judged (it used to trigger, "channel 2 mean 515: the input does not look
    normalised"); a float input beside them is still judged."""
    rng = np.random.default_rng(5)
    ids = {g: {"TextClf_input_0": rng.integers(1, 1000, (64, 12))} for g in range(10)}
    with pytest.raises(MissingTensorError, match=r"TextClf_input_0 holds integers \(int64\)"):
        CheckInputImages().evaluate(write_run(tmp_path / "ids", ids))
    both = {
        g: {
            "TextClf_input_0": rng.integers(1, 1000, (64, 12)),
            "Net_input_0": images(rng, 64, (0, 0, 0)),
        }
        for g in range(10)
    }
    result = CheckInputImages().evaluate(write_run(tmp_path / "both", both))
    assert result.evidence["tensors"] == ["Net_input_0"] and not result.triggered
    assert "TextClf_input_0 not judged: it holds integers (int64)" in result.explanation


def test_missing_input_and_bad_parameters(tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "run", {0: {"CrossEntropyLoss_input_0": np.zeros((4, 3), np.float32)}}
    )
    with pytest.raises(MissingTensorError, match=r"the model input.*CrossEntropyLoss_input_0"):
        CheckInputImages().evaluate(run)
    flat = write_run(tmp_path / "flat", {0: {"Net_input_0": np.zeros(4, np.float32)}})
    with pytest.raises(MissingTensorError, match="no channel axis"):
        CheckInputImages().evaluate(flat)
    with pytest.raises(RuleParameterError, match="channel"):
        CheckInputImages(channel=0)
    assert registry()["check_input_images"] is CheckInputImages
    assert CheckInputImages().parameters["threshold_mean"] == 0.2
    assert CheckInputImages().parameters["threshold_samples"] == 500
