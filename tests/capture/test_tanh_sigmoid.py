"""Tanh and Sigmoid calls recorded for SaturatedActivation (``.*tanh_input`` /
``.*sigmoid_input``, as SageMaker Debugger names them), only when a collection selects them:
named by module path and call, values equal to the module's inputs, in eager mode and
compiled."""

from __future__ import annotations

import numpy as np
import pytest
from capture_helpers import assert_same_values, run_values

from pytest_modelrules import MissingTensorError, Recorder, modes, open_run
from pytest_modelrules.capture import CollectionConfig
from pytest_modelrules.rules.activations import SaturatedActivation

torch = pytest.importorskip("torch")
nn = torch.nn


class GatedNet(nn.Module):
    """A tanh called twice, a sigmoid gate whose path does not say "sigmoid", and a ReLU."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.fc1 = nn.Linear(6, 8)
        self.tanh = nn.Tanh()
        self.gate = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid())
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tanh(self.fc1(x) * self.scale)
        h = self.tanh(h * self.gate(h))
        return self.head(self.relu(h))


SATURATION = [".*tanh_input", ".*sigmoid_input"]


def _train(path, model, steps: int = 6, compile_backend: str | None = None, **kw):
    torch.manual_seed(1)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: dict[tuple[str, int], list[np.ndarray]] = {}
    now = {"step": 0}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Tanh, nn.Sigmoid)):

            def pre(m, args, name=name):
                value = args[0].detach().numpy().copy()
                seen.setdefault((name, now["step"]), []).append(value)

            handles.append(mod.register_forward_pre_hook(pre))
    rec = Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1, **kw)
    net = torch.compile(model, backend=compile_backend) if compile_backend else model
    for step in range(steps):
        now["step"] = step
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    rec.close()
    for h in handles:
        h.remove()
    return rec, seen


def test_tanh_and_sigmoid_inputs_are_recorded_when_selected(tmp_path):
    torch.manual_seed(0)
    rec, seen = _train(tmp_path / "r", GatedNet(), include_regex=SATURATION)
    assert not rec.dead, rec.error
    run = open_run(tmp_path / "r")
    names = run.tensor_names(regex=SATURATION)
    assert names == ["gate.1.sigmoid_input_0", "tanh_input_0", "tanh_input_1"]
    for step in run.steps(modes.TRAIN):
        for name, module, k in (("tanh_input_0", "tanh", 0), ("tanh_input_1", "tanh", 1),
                                ("gate.1.sigmoid_input_0", "gate.1", 0)):  # fmt: skip
            np.testing.assert_array_equal(run.tensor(name).value(step), seen[(module, step)][k])
    assert not run.tensor_names(regex="tanh_output")  # outputs only when selected


def test_no_hook_and_no_tensor_unless_a_collection_selects_them(tmp_path):
    model = GatedNet()
    hooked = []
    for kw in ({}, {"include_regex": SATURATION}):
        with Recorder(tmp_path / f"h{len(hooked)}", model, save_interval=1, **kw):
            hooked.append([bool(m._forward_pre_hooks) for m in (model.tanh, model.gate[1])])
    assert hooked == [[False, False], [True, True]]
    torch.manual_seed(0)
    _train(tmp_path / "r", GatedNet())
    assert not open_run(tmp_path / "r").tensor_names(regex="tanh|sigmoid")
    gates = CollectionConfig("gates", include_regex=[".*sigmoid_output"], reductions=["mean"])
    _train(tmp_path / "o", GatedNet(), collections=[gates])
    run = open_run(tmp_path / "o")
    assert run.tensor_names(regex="sigmoid|tanh") == [
        "smdebug/reductions/mean/gate.1.sigmoid_output_0"
    ]


def test_saturated_activation_judges_a_recorded_run(tmp_path):
    """SageMaker's SaturatedActivation on the Recorder's run: a tanh driven far past its
    thresholds triggers, a tame one does not."""
    torch.manual_seed(0)
    _train(tmp_path / "tame", GatedNet(), include_regex=SATURATION)
    torch.manual_seed(0)
    _train(tmp_path / "hot", GatedNet(scale=1000.0), include_regex=SATURATION)
    assert not SaturatedActivation().evaluate(tmp_path / "tame").triggered
    hot = SaturatedActivation().evaluate(tmp_path / "hot")
    assert hot.triggered and "tanh_input_0" in hot.explanation
    torch.manual_seed(0)
    _train(tmp_path / "plain", GatedNet())  # not asked for: the rule says how to ask
    with pytest.raises(MissingTensorError, match=r"include_regex=\['\.\*tanh_input'"):
        SaturatedActivation().evaluate(tmp_path / "plain")


def test_compiled_model_records_the_same_activations(tmp_path):
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    torch.manual_seed(0)
    _train(tmp_path / "eager", GatedNet(), include_regex=SATURATION)
    torch.manual_seed(0)
    rec, _ = _train(tmp_path / "compiled", GatedNet(), compile_backend="aot_eager",
                    include_regex=SATURATION)  # fmt: skip
    dynamo.reset()
    assert not rec.dead, rec.error
    expected = run_values(tmp_path / "eager")
    assert any("sigmoid_input" in n for n, _ in expected)
    assert_same_values(run_values(tmp_path / "compiled"), expected)
