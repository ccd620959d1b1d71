"""Step counting (optimizer steps, accumulation, forward passes, modes) and save schedules."""

from __future__ import annotations

import numpy as np
import pytest
from capture_helpers import TinyNet, assert_same_values, batches, run_values, train

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.capture import CollectionConfig, SaveConfig, SaveConfigMode
from pytest_modelrules.store.names import reduction_tensor_name

torch = pytest.importorskip("torch")


def test_a_step_is_an_optimizer_step_with_gradient_accumulation(tmp_path, tiny):
    model, loss_fn, opt = tiny
    data = batches(12)
    grads = []

    def keep_grad(optimizer, args, kwargs):
        grads.append(model.fc.weight.grad.detach().clone())

    opt.register_step_pre_hook(keep_grad)
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        losses = train(model, loss_fn, opt, data, accumulate=3)
        assert rec.global_step == 4
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2, 3]
    assert run.steps(modes.TRAIN) == [0, 1, 2, 3]
    loss = run.tensor("CrossEntropyLoss_output_0").values(modes.TRAIN)
    # forward-pass tensors come from the step's first micro-batch
    np.testing.assert_allclose([loss[s] for s in range(4)], losses[::3], rtol=1e-6)
    labels = run.tensor("CrossEntropyLoss_input_1").value(2, modes.TRAIN)
    np.testing.assert_array_equal(labels, data[6][1].numpy())
    # the gradient is the accumulated one the optimizer used
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2")).values(modes.TRAIN)
    for s in range(4):
        np.testing.assert_allclose(l2[s], float(grads[s].norm()), rtol=1e-5)


def test_an_optimizer_step_a_grad_scaler_skips_is_no_step(tmp_path, tiny):
    """A GradScaler skips ``optimizer.step()`` when the gradients are not finite: no step
    ended, so the next iteration is another micro-batch of the same step (its forward-pass
    tensors stay the first iteration's) and the gradients recorded are the ones the
    optimizer used when it did step."""
    model, loss_fn, opt = tiny
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    data = batches(4)
    losses, grads = [], []
    opt.register_step_pre_hook(lambda o, a, k: grads.append(model.fc.weight.grad.norm().item()))
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for i, (x, y) in enumerate(data):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            losses.append(loss.item())
            scaler.scale(loss * (float("inf") if i == 1 else 1.0)).backward()
            scaler.step(opt)  # skipped at i == 1
            scaler.update()
        assert rec.global_step == 3 and not rec.dead
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2]
    loss = run.tensor("CrossEntropyLoss_output_0").values()
    np.testing.assert_allclose([loss[s] for s in range(3)], [losses[0], losses[1], losses[3]])
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2")).values()
    assert len(grads) == 3  # the optimizer stepped three times
    np.testing.assert_allclose([l2[s] for s in range(3)], grads, rtol=1e-5)


@pytest.mark.parametrize("by_name", [False, True], ids=["step(closure)", "step(closure=...)"])
def test_a_closure_step_records_its_first_evaluation(tmp_path, tiny, by_name):
    """LBFGS evaluates the model itself, several times a step, through a closure. Each step
    is recorded as a step whose forward pass and gradients are the closure's first
    evaluation (at the step's starting weights, as a plain step's are); the line search's
    later evaluations are not recorded. Before, such a run held no loss, no input and no
    ReLU output at all, and each step's gradients were the previous step's."""
    model, loss_fn, _ = tiny
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    data = batches(3)
    first_losses, first_grads, calls = [], [], []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for x, y in data:
            evaluations = 0

            def closure(x=x, y=y):
                nonlocal evaluations
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                if evaluations == 0:
                    first_losses.append(loss.item())
                    first_grads.append(model.fc.weight.grad.norm().item())
                evaluations += 1
                return loss

            if by_name:
                opt.step(closure=closure)
            else:
                opt.step(closure)
            calls.append(evaluations)
        assert rec.global_step == 3 and not rec.dead
    assert min(calls) > 1  # the line search evaluated the model again
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2]
    loss = run.tensor("CrossEntropyLoss_output_0").values()
    np.testing.assert_allclose([loss[s] for s in range(3)], first_losses, rtol=1e-6)
    for s, (_, y) in enumerate(data):
        np.testing.assert_array_equal(run.tensor("CrossEntropyLoss_input_1").value(s), y.numpy())
    relu = reduction_tensor_name("relu_output_0", "positive_fraction")
    assert run.tensor(relu).steps() == [0, 1, 2]
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2")).values()
    np.testing.assert_allclose([l2[s] for s in range(3)], first_grads, rtol=1e-5)


def test_a_closure_after_a_forward_pass_is_another_micro_batch(tmp_path, tiny):
    """A step that ran the model before ``optimizer.step(closure)`` (sharpness-aware
    minimisation's pattern: the closure re-evaluates at perturbed weights) keeps the first
    pass's tensors and the gradients present when the optimizer steps, as any step."""
    model, loss_fn, opt = tiny
    data = batches(2)
    losses, grads = [], []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        for x, y in data:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            losses.append(loss.item())

            def closure(x=x, y=y):
                return loss_fn(model(x * 0.5), y)

            grads.append(model.fc.weight.grad.norm().item())
            opt.step(closure)
    run = open_run(tmp_path / "run")
    loss = run.tensor("CrossEntropyLoss_output_0").values()
    np.testing.assert_allclose([loss[0], loss[1]], losses, rtol=1e-6)
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2")).values()
    np.testing.assert_allclose([l2[0], l2[1]], grads, rtol=1e-5)


class _Checkpointed(torch.nn.Module):
    """TinyNet's layers with the ReLU blocks under activation checkpointing (``reentrant``:
    the older implementation, which runs a block's module hooks again in backward), or
    without checkpointing (``None``)."""

    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyNet()
        self.reentrant = reentrant

    def _block(self, x):
        net = self.net
        return net.relu(net.conv2(net.relu(net.conv(x))))

    def forward(self, x):
        if self.reentrant is None:
            x = self._block(x)
        else:
            from torch.utils.checkpoint import checkpoint

            x = checkpoint(self._block, x, use_reentrant=self.reentrant)
        return self.net.fc(self.net.pool(x).flatten(1))


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("optimizer", [True, False], ids=["optimizer", "no optimizer"])
def test_activation_checkpointing_records_the_run_of_the_plain_model(
    tmp_path, reentrant, optimizer
):
    """A checkpointed segment recomputed in backward is no forward pass: the run equals the
    same training's without checkpointing, bit for bit. Before, reentrant checkpointing
    recorded each ReLU call twice (``relu_output_2`` and ``_3`` beside ``_0`` and ``_1``)."""

    def record(path, reentrant):
        model = _Checkpointed(reentrant)
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with Recorder(path, model, loss=loss_fn, optimizer=opt if optimizer else None,
                      save_interval=1):  # fmt: skip
            for x, y in batches(3):
                opt.zero_grad()
                loss_fn(model(x.requires_grad_(bool(reentrant))), y).backward()
                opt.step()
        return run_values(path)

    expected = record(tmp_path / "plain", None)
    got = record(tmp_path / "checkpointed", reentrant)
    assert {name for name, _ in got if "relu_output" in name} == {
        reduction_tensor_name(f"net.relu_output_{k}", "positive_fraction") for k in (0, 1)
    }
    assert_same_values(got, expected)


def test_a_whole_model_recomputed_in_backward_is_no_step(tmp_path):
    """Without an optimizer a step is a forward pass of the model; checkpointing the whole
    model (reentrant) runs it again in backward, which before opened a step of its own."""
    from torch.utils.checkpoint import checkpoint

    def record(path, checkpointed):
        torch.manual_seed(0)
        model = TinyNet()
        loss_fn = torch.nn.CrossEntropyLoss()
        with Recorder(path, model, loss=loss_fn, save_interval=1) as rec:
            for x, y in batches(3):
                x = x.requires_grad_()
                out = checkpoint(model, x, use_reentrant=True) if checkpointed else model(x)
                loss_fn(out, y).backward()
        assert rec.global_step == 3
        return run_values(path)

    expected = record(tmp_path / "plain", False)
    got = record(tmp_path / "checkpointed", True)
    assert {step for _, step in got} == {0, 1, 2}
    assert_same_values(got, expected)


def test_without_optimizer_a_step_is_a_forward_pass(tmp_path, tiny):
    model, loss_fn, opt = tiny
    data = batches(5)
    grad_l2 = []
    with Recorder(tmp_path / "run", model, loss=loss_fn, save_interval=2) as rec:
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            grad_l2.append(float(model.conv.weight.grad.norm()))
            opt.step()
        assert rec.global_step == 4  # the fifth step is still open
    assert rec.global_step == 5
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 2, 4]
    got = run.tensor(reduction_tensor_name("gradient/conv.weight", "l2")).values()
    np.testing.assert_allclose([got[s] for s in (0, 2, 4)], [grad_l2[s] for s in (0, 2, 4)],
                               rtol=1e-5)  # fmt: skip


def test_train_and_eval_modes_count_their_own_steps(tmp_path, tiny):
    model, loss_fn, opt = tiny
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        train(model, loss_fn, opt, batches(3))
        rec.set_mode(modes.EVAL)
        with torch.no_grad():
            for x, y in batches(2, seed=5):
                loss_fn(model(x), y)
        rec.set_mode("TRAIN")
        train(model, loss_fn, opt, batches(2, seed=6))
    run = open_run(tmp_path / "run")
    assert run.steps() == list(range(7))
    assert run.steps(modes.TRAIN) == [0, 1, 2, 3, 4]
    assert run.steps(modes.EVAL) == [0, 1]
    assert [run.mode(g) for g in range(7)] == [modes.TRAIN] * 3 + [modes.EVAL] * 2 + [
        modes.TRAIN
    ] * 2
    assert run.global_step(modes.EVAL, 1) == 4 and run.global_step(modes.TRAIN, 3) == 5
    assert run.tensor("CrossEntropyLoss_input_0").steps(modes.EVAL) == [0, 1]


def test_save_interval_and_save_steps_per_collection_and_mode(tmp_path, tiny):
    model, loss_fn, opt = tiny
    cols = [
        CollectionConfig("losses", save_interval=2, parameters={"eval.save_steps": "1"}),
        CollectionConfig("loss_inputs", save_steps=[1, 4]),
        CollectionConfig("inputs", save_interval=0),  # a built-in switched off
        CollectionConfig(
            "custom",
            include_regex="*TinyNet_input",
            save_config=SaveConfig({modes.EVAL: SaveConfigMode(save_interval=0)}, save_interval=3),
        ),
    ]
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=100,
                  collections=cols) as rec:  # fmt: skip
        train(model, loss_fn, opt, batches(6))
        rec.set_mode(modes.EVAL)
        with torch.no_grad():
            for x, y in batches(3, seed=3):
                loss_fn(model(x), y)
    run = open_run(tmp_path / "run")
    assert run.tensor("CrossEntropyLoss_output_0").steps(modes.TRAIN) == [0, 2, 4]
    assert run.tensor("CrossEntropyLoss_output_0").steps(modes.EVAL) == [1]
    assert run.tensor("CrossEntropyLoss_input_1").steps(modes.TRAIN) == [1, 4]
    assert run.tensor("CrossEntropyLoss_input_1").steps(modes.EVAL) == [1]
    assert run.tensor("TinyNet_input_0").steps(modes.TRAIN) == [0, 3]
    assert run.tensor("TinyNet_input_0").steps(modes.EVAL) == []
    # the defaults follow the Recorder's save_interval (100): only step 0
    assert run.tensor(reduction_tensor_name("conv.weight", "l2")).steps(modes.TRAIN) == [0]
    assert run.tensor(reduction_tensor_name("conv.weight", "l2")).steps(modes.EVAL) == [0]


def test_include_regex_adds_full_tensors(tmp_path, tiny):
    model, loss_fn, opt = tiny
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  include_regex=[r"relu_output_1$", r"^fc\.weight$"]):  # fmt: skip
        train(model, loss_fn, opt, batches(2))
    run = open_run(tmp_path / "run")
    names = run.tensor_names(collection="default")
    assert "fc.weight" in names and "relu_output_1" in names
    assert run.tensor("relu_output_1").value(0).shape == (8, 4, 8, 8)


def test_non_saved_steps_install_no_hooks(tmp_path):
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.relu = torch.nn.ReLU()

        def forward(self, x):
            seen.append(len(self.relu._forward_hooks) + len(self.relu._forward_pre_hooks))
            return self.relu(self.lin(x))

    model = Probe()
    with Recorder(tmp_path / "run", model, save_interval=3):
        for _ in range(6):
            model(torch.randn(2, 4))
    assert seen[0] > 0 and seen[3] > 0
    assert seen[1] == seen[2] == seen[4] == seen[5] == 0
    assert open_run(tmp_path / "run").steps() == [0, 3]
