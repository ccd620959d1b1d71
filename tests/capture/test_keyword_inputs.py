"""Tensors passed to the model or the loss by keyword are recorded, under the position their
parameter has in ``forward`` (``model(x=t)`` as ``model(t)``: ``<Model>_input_0``), or under
their keyword where the parameter has no position (keyword-only, or taken by ``**kwargs``).
Hugging Face models are called so (``model(pixel_values=..., labels=...)``); they used to
leave no input recorded."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
from capture_helpers import TinyNet, assert_same_values, batches, run_values

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.capture.recorder import _argument_tensors, _parameter_positions

torch = pytest.importorskip("torch")
nn = torch.nn


class KeywordNet(nn.Module):
    """Called as Hugging Face's models are: tensors by keyword, the loss computed inside when
    labels are given, flags that are not tensors."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.net = TinyNet(classes)

    def forward(self, pixel_values=None, labels=None, *, mask=None, return_dict=True, **extra):
        logits = self.net(pixel_values if mask is None else pixel_values * mask)
        for value in extra.values():
            logits = logits + value.float().mean()
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits} if return_dict else (loss, logits)


def _train(path, call, steps: int = 4, loss_fn=None):
    torch.manual_seed(0)
    model = KeywordNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Recorder says nothing
        with Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1):
            for x, y in batches(steps):
                loss = call(model, x, y)
                loss.backward()
                opt.step()
                opt.zero_grad()
    return open_run(path)


def test_keyword_tensors_are_named_by_their_parameters_position(tmp_path):
    def by_keyword(model, x, y):
        return model(pixel_values=x, labels=y, return_dict=True)["loss"]

    run = _train(tmp_path / "kw", by_keyword)
    data = batches(4)
    labels = run.tensor("KeywordNet_input_1")
    assert labels.steps() == [0, 1, 2, 3]
    for step, (_, y) in enumerate(data):
        np.testing.assert_array_equal(labels.value(step), y.numpy())
    means = run.tensor("modelrules/reductions/sample_channel_mean/KeywordNet_input_0")
    np.testing.assert_allclose(means.value(0), data[0][0].mean((2, 3)).numpy(), rtol=1e-6)
    names = run.tensor_names()
    assert not [n for n in names if "return_dict" in n]  # a flag, not a tensor
    assert "KeywordNet_input_0" in run.collection("inputs").tensor_names
    assert "KeywordNet_input_1" in run.collection("inputs").tensor_names


def test_a_keyword_call_records_what_the_positional_call_does(tmp_path):
    positional = _train(tmp_path / "pos", lambda m, x, y: m(x, y)["loss"])
    keyword = _train(tmp_path / "kw", lambda m, x, y: m(labels=y, pixel_values=x)["loss"])
    mixed = _train(tmp_path / "mixed", lambda m, x, y: m(x, labels=y)["loss"])
    assert positional.tensor_names() == keyword.tensor_names() == mixed.tensor_names()
    expected = run_values(tmp_path / "pos")
    assert_same_values(run_values(tmp_path / "kw"), expected)
    assert_same_values(run_values(tmp_path / "mixed"), expected)


def test_keyword_only_and_extra_keywords_keep_their_names(tmp_path):
    def call(model, x, y):
        mask = torch.ones_like(x)
        return model(x, y, mask=mask, token_ids=torch.arange(3))["loss"]

    run = _train(tmp_path / "run", call)
    names = set(run.tensor_names())
    assert "modelrules/reductions/sample_channel_mean/KeywordNet_input_mask" in names
    np.testing.assert_array_equal(run.tensor("KeywordNet_input_token_ids").value(2), [0, 1, 2])
    assert {"KeywordNet_input_1", "KeywordNet_input_token_ids"} <= names


def test_a_loss_module_called_with_keywords_records_its_inputs(tmp_path):
    """``loss_fn(input=logits, target=labels)`` gives SageMaker Debugger's names, which the
    classification rules read."""
    loss_fn = nn.CrossEntropyLoss()

    def call(model, x, y):
        return loss_fn(input=model(pixel_values=x)["logits"], target=y)

    run = _train(tmp_path / "run", call, loss_fn=loss_fn)
    data = batches(4)
    labels = run.tensor("CrossEntropyLoss_input_1")
    for step, (_, y) in enumerate(data):
        np.testing.assert_array_equal(labels.value(step), y.numpy())
    assert run.tensor("CrossEntropyLoss_input_0").value(0).shape == (8, 5)
    assert run.tensor("CrossEntropyLoss_output_0").steps() == [0, 1, 2, 3]
    assert "CrossEntropyLoss_input_1" in run.collection("loss_inputs").tensor_names


def test_keyword_inputs_under_torch_compile_and_data_parallel(tmp_path):
    """The wrappers pass the keywords on; the positions come from the wrapped model."""
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    try:
        torch.manual_seed(0)
        model = KeywordNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        compiled = torch.compile(model, backend="aot_eager")
        with Recorder(tmp_path / "compiled", compiled, optimizer=opt, save_interval=1):
            for x, y in batches(3):
                compiled(pixel_values=x, labels=y)["loss"].backward()
                opt.step()
                opt.zero_grad()
    finally:
        dynamo.reset()
    run = open_run(tmp_path / "compiled")
    np.testing.assert_array_equal(run.tensor("KeywordNet_input_1").value(1), batches(3)[1][1])

    torch.manual_seed(0)
    model = KeywordNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = nn.DataParallel(model)  # on the CPU: calls the module with the keywords
    with Recorder(tmp_path / "dp", wrapped, optimizer=opt, save_interval=1):
        for x, y in batches(2):
            wrapped(pixel_values=x, labels=y)["loss"].backward()
            opt.step()
            opt.zero_grad()
    run = open_run(tmp_path / "dp")
    assert run.tensor("KeywordNet_input_1").steps() == [0, 1]
    assert "modelrules/reductions/sample_channel_mean/KeywordNet_input_0" in run.tensor_names()


def test_eval_steps_record_keyword_inputs_too(tmp_path):
    torch.manual_seed(0)
    model = KeywordNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(tmp_path / "run", model, optimizer=opt, save_interval=1) as rec:
        for x, y in batches(2):
            model(pixel_values=x, labels=y)["loss"].backward()
            opt.step()
            opt.zero_grad()
        rec.set_mode(modes.EVAL)
        with torch.no_grad():
            for x, y in batches(2, seed=1):
                model(pixel_values=x, labels=y)
    labels = open_run(tmp_path / "run").tensor("KeywordNet_input_1")
    assert labels.steps(mode=modes.TRAIN) == [0, 1]
    assert labels.steps(mode=modes.EVAL) == [0, 1]
    np.testing.assert_array_equal(labels.value(1, mode=modes.EVAL), batches(2, seed=1)[1][1])


def test_parameter_positions_read_forward_signature():
    assert _parameter_positions(KeywordNet()) == {"pixel_values": 0, "labels": 1}
    assert _parameter_positions(nn.CrossEntropyLoss()) == {"input": 0, "target": 1}

    class Star(nn.Module):
        def forward(self, *xs, scale=None):
            return xs

    assert _parameter_positions(Star()) == {}
    t, u = torch.zeros(1), torch.ones(1)
    found = _argument_tensors((t,), {"scale": u, "flag": True}, {})
    assert [(key, value is t or value is u) for key, value in found] == [(0, True), ("scale", True)]


def test_an_unreadable_signature_names_keywords_by_keyword():
    class Opaque(nn.Module):
        pass

    module = Opaque()
    module.forward = max  # a builtin whose signature inspect cannot read
    with pytest.raises(ValueError):
        inspect.signature(module.forward)
    assert _parameter_positions(module) == {}
    t = torch.zeros(1)
    assert _argument_tensors((), {"x": t}, {}) == [("x", t)]


def test_scalar_and_1d_float_inputs_are_stored_in_full_not_as_channel_means(tmp_path):
    """The Hugging Face Trainer passes ``num_items_in_batch`` (a 0-d tensor) to a model whose
    forward takes ``**kwargs``: a number, not an image batch, stored as it is."""

    def call(model, x, y):
        count = torch.tensor(float(len(y)))
        scale = torch.linspace(0, 1, len(y))  # (not "weights": the weights collection matches it)
        return model(pixel_values=x, labels=y, num_items_in_batch=count, scale=scale)["loss"]

    run = _train(tmp_path / "run", call)
    names = set(run.tensor_names())
    assert not [n for n in names if "sample_channel_mean" in n and "input_0" not in n]
    count = run.tensor("KeywordNet_input_num_items_in_batch").value(1)
    assert count.shape == () and count == 8.0
    np.testing.assert_array_equal(
        run.tensor("KeywordNet_input_scale").value(0), torch.linspace(0, 1, 8).numpy()
    )
    # the image batch keeps its channel means
    assert "modelrules/reductions/sample_channel_mean/KeywordNet_input_0" in names
