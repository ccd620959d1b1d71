"""The training job records what the seed's rules need (a tiny CPU run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pytest_modelrules import modes, open_run
from pytest_modelrules.datasets import CLASS_NAMES
from pytest_modelrules.training.job import METRICS_FILE


def test_recorded_run_holds_the_seed_collections(tiny_reference_run: Path):
    run = open_run(tiny_reference_run)
    assert run.class_names == list(CLASS_NAMES)
    assert set(run.modes()) == {modes.TRAIN, modes.EVAL}
    names = run.tensor_names()
    for name in ("CrossEntropyLoss_output_0", "CrossEntropyLoss_input_0",
                 "CrossEntropyLoss_input_1", "ResNet_input_0"):  # fmt: skip
        assert name in names
    assert any("relu_output" in n for n in names)
    # labels of every TRAIN step (4 steps over 2 epochs)
    labels = run.tensor("CrossEntropyLoss_input_1")
    assert labels.steps(mode=modes.TRAIN) == [0, 1, 2, 3]
    # every step of the final evaluation pass (43 test images, batch 16: 3 steps a pass)
    meta = run.metadata
    per_pass = meta["eval_steps_per_pass"]
    assert per_pass == 3
    eval_steps = labels.steps(mode=modes.EVAL)
    assert eval_steps[-per_pass:] == [3, 4, 5]
    final = np.concatenate([labels.value(s, mode=modes.EVAL) for s in eval_steps[-per_pass:]])
    assert sorted(final.tolist()) == list(range(43))
    logits = run.tensor("CrossEntropyLoss_input_0").value(eval_steps[-1], mode=modes.EVAL)
    assert logits.shape[1] == 43
    # and its images, which the misclassified-images gallery draws (they are small here)
    images = run.tensor("ResNet_input_0")
    assert set(eval_steps[-per_pass:]) <= set(images.steps(mode=modes.EVAL))
    shown = images.value(eval_steps[-1], mode=modes.EVAL)
    assert shown.ndim == 4 and len(shown) == len(labels.value(eval_steps[-1], mode=modes.EVAL))
    # the test loss of every EVAL step
    assert run.tensor("CrossEntropyLoss_output_0").steps(mode=modes.EVAL) == list(range(6))
    assert meta["recipe"] == "seed" and meta["config"]["flip"] is True
    results = meta["results"]
    assert 0.0 <= results["accuracy"] <= 1.0 and set(results["mirror_confusions"]) == {
        "19-20", "33-34", "36-37", "38-39",
    }  # fmt: skip
    metrics = json.loads((tiny_reference_run / METRICS_FILE).read_text())
    assert metrics["train_steps"] == 4 and len(metrics["epoch_accuracy"]) == 2


def test_training_on_a_given_folder_uses_the_real_loading_path(tiny, tmp_path: Path, capsys):
    """--data: a GTSRB folder read with torchvision's GTSRB reader; weighted sampler."""
    from pytest_modelrules.datasets import SignsConfig, write_gtsrb
    from pytest_modelrules.training.job import train
    from pytest_modelrules.training.recipes import make_config

    root = write_gtsrb(tmp_path / "gtsrb-copy", SignsConfig(train_images=60, test_per_class=1,
                                                            size=24, seed=5))  # fmt: skip
    settings = {**tiny, "image_size": 24, "data": str(root), "steps": 2, "epochs": 1}
    cfg = make_config("fixed", **settings)
    r = train(cfg, tmp_path / "run", record=False)
    assert r.train_steps == 2 and len(r.recall) == 43
    assert not (tmp_path / "run.data").exists()  # nothing generated: the folder was used
    assert "starting from random weights" in capsys.readouterr().err


def test_weights_path_is_loaded(tmp_path: Path):
    import torch
    from torchvision import models

    from pytest_modelrules.training.job import build_model
    from pytest_modelrules.training.recipes import make_config

    ref = models.resnet18(weights=None)
    path = tmp_path / "imagenet.pth"
    torch.save(ref.state_dict(), path)
    model, source = build_model(make_config("seed", device="cpu", weights=str(path)))
    assert source == str(path)
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert model.fc.out_features == 43


def test_final_pass_images_are_recorded_only_where_they_are_small():
    """2,150 test images of 32 px (26 MB) are kept; the seed's 12,630 of 224 px (7.6 GB) are
    not: that pass's images then follow the every-save_interval schedule alone."""
    from pytest_modelrules.training.job import _collections
    from pytest_modelrules.training.recipes import TrainConfig

    def inputs_schedule(config: TrainConfig, final: list[int]) -> list[int]:
        (inputs,) = [c for c in _collections(config, final) if c.name == "inputs"]
        schedule = inputs.resolve_save_config(config.save_interval).modes[modes.EVAL]
        return [s for s in range(final[-1] + 1) if schedule.should_save(s)]

    cpu = TrainConfig(image_size=32, save_interval=25)
    cpu_final = list(range(340, 374))  # 2,150 images at batch 64: 34 steps
    assert set(cpu_final) <= set(inputs_schedule(cpu, cpu_final))
    gpu = TrainConfig(image_size=224, save_interval=500)
    gpu_final = list(range(1780, 1978))  # 12,630 images: 198 steps
    assert inputs_schedule(gpu, gpu_final) == [0, 500, 1000, 1500]
