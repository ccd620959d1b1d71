"""TransferLearning: frozen parameters stay, the new head moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rule_runs import write_run

from pytest_modelrules.exceptions import MissingTensorError
from pytest_modelrules.rules.base import registry
from pytest_modelrules.rules.transfer import TransferLearning, parameter_names
from pytest_modelrules.store.names import reduction_tensor_name
from pytest_modelrules.store.run import open_run


def finetune_steps(
    n: int = 5, *, frozen_moves_at: int | None = None, head_moves: bool = True, grads: bool = True
) -> dict[int, dict[str, Any]]:
    """A ResNet-like fine-tuning run: conv1/layer1 frozen (no gradients), fc trained."""
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    layer1 = rng.normal(size=(4, 4)).astype(np.float32)
    fc_w = rng.normal(size=(43, 4)).astype(np.float32)
    fc_b = np.zeros(43, np.float32)
    steps = {}
    for g in range(n):
        conv_g = conv + (
            np.float32(1e-3) if frozen_moves_at is not None and g >= frozen_moves_at else 0
        )
        step = {
            "conv1.weight": conv_g,
            "layer1.0.conv1.weight": layer1,
            "fc.weight": fc_w + (np.float32(0.01 * g) if head_moves else 0),
            "fc.bias": fc_b + (np.float32(0.01 * g) if head_moves else 0),
        }
        if grads:
            step["gradient/fc.weight"] = rng.normal(size=fc_w.shape).astype(np.float32)
            step["gradient/fc.bias"] = rng.normal(size=fc_b.shape).astype(np.float32)
        steps[g] = step
    return steps


def test_healthy_fine_tuning_passes(tmp_path: Path) -> None:
    result = TransferLearning().evaluate(write_run(tmp_path / "run", finetune_steps()))
    assert not result.triggered
    assert result.evidence["frozen"] == ["conv1.weight", "layer1.0.conv1.weight"]
    assert result.evidence["head"] == ["fc.bias", "fc.weight"]
    assert result.evidence["frozen_rule"] == "recorded without a gradient"
    assert (
        "2 frozen parameter(s) (recorded without a gradient) kept their values"
        in result.explanation
    )


def test_a_frozen_parameter_that_moves_triggers_at_that_step(tmp_path: Path) -> None:
    result = TransferLearning().evaluate(
        write_run(tmp_path / "run", finetune_steps(frozen_moves_at=3))
    )
    assert result.triggered and result.first_step == 3
    assert (
        "frozen parameter conv1.weight changed by up to 0.001 at global step 3 (TRAIN step 3)"
        in result.explanation
    )
    assert result.evidence["frozen_changed"] == ["conv1.weight"]
    assert result.figure == 1.0
    # a tolerance above the change passes (given as a string)
    assert not TransferLearning(frozen_atol="0.01").evaluate(tmp_path / "run").triggered


def test_a_head_that_does_not_move_triggers(tmp_path: Path) -> None:
    result = TransferLearning().evaluate(
        write_run(tmp_path / "run", finetune_steps(head_moves=False))
    )
    assert result.triggered and result.first_step == 4
    assert (
        "head parameter(s) fc.bias (relative change 0), fc.weight (relative change 0) "
        "did not change" in result.explanation
    )
    assert result.evidence["head_unchanged"] == ["fc.bias", "fc.weight"]


def test_frozen_regex_names_the_frozen_set(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", finetune_steps(frozen_moves_at=2, grads=False))
    # without gradients no parameter is known to be frozen: only the head is checked
    plain = TransferLearning().evaluate(run)
    assert not plain.triggered and plain.evidence["frozen"] == []
    assert "no frozen parameters identified" in plain.explanation
    named = TransferLearning(frozen_regex="^conv1|^layer1").evaluate(run)
    assert named.triggered and named.first_step == 2
    assert named.evidence["frozen"] == ["conv1.weight", "layer1.0.conv1.weight"]
    only_layer1 = TransferLearning(frozen_regex="layer1").evaluate(run)
    assert not only_layer1.triggered


def test_l2_norms_only(tmp_path: Path) -> None:
    steps = {
        g: {
            reduction_tensor_name("conv1.weight", "l2"): np.float64(5.0),
            reduction_tensor_name("fc.weight", "l2"): np.float64(1.0 + 0.1 * g),
            "gradient/fc.weight": np.ones(2, np.float32),
        }
        for g in range(3)
    }
    result = TransferLearning().evaluate(write_run(tmp_path / "run", steps))
    assert not result.triggered
    assert result.evidence["frozen_source"] == {"conv1.weight": "l2 reduction (approximate)"}
    assert result.evidence["head_relative_update"]["fc.weight"] == pytest.approx(0.2)


def test_missing_head_or_frozen_match(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", finetune_steps(n=2))
    with pytest.raises(MissingTensorError, match=r"head_regex.*conv1.weight"):
        TransferLearning(head_regex="classifier\\.").evaluate(run)
    with pytest.raises(MissingTensorError, match="frozen_regex"):
        TransferLearning(frozen_regex="^backbone").evaluate(run)
    assert parameter_names(open_run(run)) == [
        "conv1.weight",
        "fc.bias",
        "fc.weight",
        "layer1.0.conv1.weight",
    ]
    assert registry()["transfer_learning"] is TransferLearning
    assert TransferLearning.default_enabled is False


def _record_tiny_finetune(path: Path, freeze: bool) -> Path:
    """A few SGD steps of a tiny conv net recorded by the Recorder (its default collections:
    reductions only for weights, gradients and ReLU outputs)."""
    import torch

    from pytest_modelrules.capture.recorder import Recorder

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.relu = torch.nn.ReLU()
            self.fc = torch.nn.Linear(4 * 6 * 6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.relu(self.conv(x)).flatten(1))

    model = Net()
    if freeze:
        for p in model.conv.parameters():
            p.requires_grad_(False)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    rec = Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1, async_write=False)
    for _ in range(4):
        x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    rec.close()
    return path


@pytest.mark.slow
def test_rules_read_what_the_recorder_writes(tmp_path: Path) -> None:
    from pytest_modelrules.rules.activations import DeadRelu
    from pytest_modelrules.rules.tensors import VanishingGradient

    frozen = _record_tiny_finetune(tmp_path / "frozen", freeze=True)
    result = TransferLearning(head_regex="fc").evaluate(frozen)
    assert not result.triggered
    assert result.evidence["frozen"] == ["conv.bias", "conv.weight"]  # no gradient recorded
    assert set(result.evidence["frozen_source"].values()) == {"l2 reduction (approximate)"}
    assert DeadRelu().evaluate(frozen).evidence["source"] == {
        "relu_output_0": "positive_fraction reduction"
    }
    assert set(VanishingGradient().evaluate(frozen).evidence["source"].values()) == {
        "abs_mean reduction"
    }
    # forgot to freeze: the backbone moves
    trained = _record_tiny_finetune(tmp_path / "trained", freeze=False)
    moved = TransferLearning(frozen_regex="^conv", head_regex="fc").evaluate(trained)
    assert moved.triggered and moved.first_step == 1
    assert "frozen parameter conv." in moved.explanation
