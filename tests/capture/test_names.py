"""Tensor names and collections match SageMaker Debugger's for a torchvision ResNet-18 run."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.capture import CollectionConfig
from pytest_modelrules.store.names import reduction_tensor_name

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=43)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path_factory.mktemp("resnet") / "run"
    seed_cfg = CollectionConfig(
        name="custom_collection",
        parameters={"include_regex": "*ResNet_input|*CrossEntropyLoss", "save_interval": "500"},
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    y = torch.randint(0, 43, (4,), generator=gen)
    with Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1,
                  collections=[seed_cfg]) as rec:  # fmt: skip
        for _ in range(2):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        rec.set_mode(modes.EVAL)
        with torch.no_grad():
            loss_fn(model(x), y)
    return open_run(path), x, y


def test_resnet18_tensor_names_are_smdebugs(resnet_run):
    run, x, y = resnet_run
    full = [n for n in run.tensor_names() if not n.startswith(("smdebug/", "modelrules/"))]
    assert full == [
        "CrossEntropyLoss_input_0",
        "CrossEntropyLoss_input_1",
        "CrossEntropyLoss_output_0",
        "ResNet_input_0",
    ]
    assert run.steps() == [0, 1, 2]
    assert run.steps(modes.TRAIN) == [0, 1] and run.steps(modes.EVAL) == [0]
    np.testing.assert_array_equal(run.tensor("ResNet_input_0").value(0, modes.TRAIN), x.numpy())
    np.testing.assert_array_equal(run.tensor("CrossEntropyLoss_input_1").value(0, modes.EVAL), y)
    assert run.tensor("CrossEntropyLoss_input_0").value(0, modes.TRAIN).shape == (4, 43)
    assert run.tensor("CrossEntropyLoss_output_0").value(1, modes.TRAIN).shape == ()


def test_resnet18_relu_outputs_two_per_basic_block(resnet_run):
    run, _, _ = resnet_run
    relu = run.tensor_names(regex="relu_output")
    bases = sorted({re.sub(r"^modelrules/reductions/[a-z_]+/", "", n) for n in relu})
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    expected = ["relu_output_0"] + [f"{b}.relu_output_{k}" for b in blocks for k in (0, 1)]
    assert bases == sorted(expected)
    # stored as the per-unit positive fraction only (what DeadRelu reads)
    pf = run.tensor(reduction_tensor_name("layer1.0.relu_output_1", "positive_fraction"))
    assert pf.value(0, modes.TRAIN).shape == (64 * 8 * 8,)
    assert pf.value(0, modes.TRAIN).dtype == np.float32
    assert set(relu) == {reduction_tensor_name(n, "positive_fraction") for n in expected}
    # relu_input is defined but saves nothing by default
    assert run.tensor_names(regex="relu_input") == []
    assert run.collections()["relu_input"].tensor_names == []


def test_seed_regexes_select_the_same_tensors(resnet_run):
    run, _, _ = resnet_run
    assert run.tensor_names(regex="CrossEntropyLoss_input_1") == ["CrossEntropyLoss_input_1"]
    assert run.tensor_names(regex="CrossEntropyLoss_output_0") == ["CrossEntropyLoss_output_0"]
    custom = run.collection("custom_collection")
    assert custom.include_regex == [".*ResNet_input|.*CrossEntropyLoss"]
    assert sorted(custom.tensor_names) == [
        "CrossEntropyLoss_input_0",
        "CrossEntropyLoss_input_1",
        "CrossEntropyLoss_output_0",
        "ResNet_input_0",
    ]
    assert run.tensor_names(collection="losses") == ["CrossEntropyLoss_output_0"]


def test_resnet18_collections_weights_biases_gradients(resnet_run):
    run, _, _ = resnet_run
    cols = run.collections()
    for name in ("losses", "weights", "biases", "gradients", "relu_output", "inputs"):
        assert name in cols
    assert "conv1.weight" in cols["weights"].tensor_names
    assert "fc.bias" in cols["biases"].tensor_names
    assert "gradient/fc.weight" in cols["gradients"].tensor_names
    assert "gradient/layer4.1.bn2.bias" in cols["gradients"].tensor_names
    assert not any(n.startswith("module.") for n in cols["weights"].tensor_names)
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2"))
    assert l2.steps(modes.TRAIN) == [0, 1]
    assert l2.steps(modes.EVAL) == []  # no backward in EVAL
    w = run.tensor(reduction_tensor_name("conv1.weight", "l2")).values(modes.TRAIN)
    assert w[0] != w[1]  # the weights moved
