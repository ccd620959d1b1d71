"""Step counting (optimizer steps, accumulation, forward passes, modes) and save schedules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from capture_helpers import TinyNet, assert_same_values, batches, run_values, train

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.capture import CollectionConfig, SaveConfig, SaveConfigMode
from pytest_modelrules.exceptions import RecorderError
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


def test_two_forward_passes_before_the_loss_record_the_first_loss_call(tmp_path, tiny):
    """R-Drop, two augmented views, consistency training: the model runs twice, then the loss
    module twice. The step's first loss call is recorded (loss, logits, labels), with the
    first pass's input, as with gradient accumulation's first micro-batch."""
    model, loss_fn, opt = tiny
    data = batches(6)
    first_losses, first_logits = [], []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        for i in range(3):
            (x1, y), (x2, _) = data[2 * i], data[2 * i + 1]
            opt.zero_grad()
            a, b = model(x1), model(x2)
            first = loss_fn(a, y)
            (first + loss_fn(b, y)).backward()
            opt.step()
            first_losses.append(first.item())
            first_logits.append(a.detach().clone().numpy())
    run = open_run(tmp_path / "run")
    assert run.steps(modes.TRAIN) == [0, 1, 2]
    loss = run.tensor("CrossEntropyLoss_output_0")
    assert loss.steps(modes.TRAIN) == [0, 1, 2]
    for i in range(3):
        np.testing.assert_allclose(loss.value(i, modes.TRAIN), first_losses[i], rtol=1e-6)
        np.testing.assert_array_equal(
            run.tensor("CrossEntropyLoss_input_0").value(i, modes.TRAIN), first_logits[i]
        )
        np.testing.assert_array_equal(
            run.tensor("CrossEntropyLoss_input_1").value(i, modes.TRAIN), data[2 * i][1].numpy()
        )


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


def _assert_four_accumulated_steps(path, first_losses: list[float], used: list[float]) -> None:
    """A run of 4 TRAIN steps of 2 micro-batches each: each step's loss is its first
    micro-batch's, and its fc gradient norm the one the optimizer used."""
    run = open_run(path)
    assert run.steps(modes.TRAIN) == [0, 1, 2, 3]
    loss = run.tensor("CrossEntropyLoss_output_0").values(modes.TRAIN)
    np.testing.assert_allclose([loss[s] for s in range(4)], first_losses, rtol=1e-6)
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2")).values(modes.TRAIN)
    np.testing.assert_allclose([l2[s] for s in range(4)], used, rtol=1e-5)


def test_accumulation_whose_last_micro_batch_runs_in_the_closure(tmp_path, tiny):
    """PyTorch Lightning's loop with ``accumulate_grad_batches=2`` (and any precision but
    fp16's GradScaler): the first micro-batch runs as ``closure()`` outside the optimizer,
    the last one inside ``optimizer.step(closure)``, where its backward adds to the
    gradients before the optimizer reads them. The gradients recorded are the accumulated
    ones the optimizer used; before, they were the first micro-batch's alone."""
    model, loss_fn, opt = tiny
    data = batches(8)
    used, first_losses = [], []
    opt.register_step_post_hook(lambda o, a, k: used.append(model.fc.weight.grad.norm().item()))
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for i, (x, y) in enumerate(data):

            def closure(x=x, y=y):
                loss = loss_fn(model(x), y) / 2
                loss.backward()
                return loss

            if i % 2 == 0:
                first_losses.append(closure().item() * 2)
            else:
                opt.step(closure)
                opt.zero_grad()
        assert rec.global_step == 4 and not rec.dead
    _assert_four_accumulated_steps(tmp_path / "run", first_losses, used)


def test_a_closure_the_optimizer_never_calls_still_gives_the_gradients(tmp_path, tiny):
    """An optimizer that takes a closure and does not call it: the step's gradients are
    read after it stepped (weights are read before it changes them)."""
    model, loss_fn, _ = tiny

    class Ignores(torch.optim.SGD):
        def step(self, closure=None):
            return super().step()

    opt = Ignores(model.parameters(), lr=0.1)
    data = batches(2)
    grads, weights = [], []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            grads.append(model.fc.weight.grad.norm().item())
            weights.append(model.fc.weight.norm().item())
            opt.step(lambda: None)
    run = open_run(tmp_path / "run")
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2")).values()
    np.testing.assert_allclose([l2[0], l2[1]], grads, rtol=1e-5)
    w = run.tensor(reduction_tensor_name("fc.weight", "l2")).values()
    np.testing.assert_allclose([w[0], w[1]], weights, rtol=1e-5)


class _SkippingWrapper(torch.optim.Optimizer):
    """Accelerate's ``AcceleratedOptimizer`` in miniature: an Optimizer subclass that never
    runs ``Optimizer.__init__`` (so it has no step hooks of its own) and calls the wrapped
    optimizer's ``step()`` only on the last micro-batch of each accumulation cycle."""

    def __init__(self, optimizer, every):
        self.optimizer, self.every, self.calls = optimizer, every, 0

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, closure=None):
        self.calls += 1
        if self.calls % self.every == 0:
            self.optimizer.step(closure)

    def zero_grad(self, set_to_none=True):
        if self.calls % self.every == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)


def test_an_optimizer_wrapper_without_hooks_is_recorded_through_the_optimizer_it_wraps(
    tmp_path, tiny
):
    """The prepared optimizer of Hugging Face Accelerate, given to the Recorder, was an
    AttributeError (``_optimizer_step_pre_hooks``) at ``Recorder(...)``: the hooks go on
    the optimizer it wraps, which steps once per accumulation cycle."""
    model, loss_fn, inner = tiny
    opt = _SkippingWrapper(inner, every=2)
    data = batches(8)
    used, first_losses = [], []
    inner.register_step_pre_hook(lambda o, a, k: used.append(model.fc.weight.grad.norm().item()))
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        assert rec.optimizer is inner
        for i, (x, y) in enumerate(data):
            loss = loss_fn(model(x), y)
            if i % 2 == 0:
                first_losses.append(loss.item())
            (loss / 2).backward()
            opt.step()
            opt.zero_grad()
        assert rec.global_step == 4 and not rec.dead
    _assert_four_accumulated_steps(tmp_path / "run", first_losses, used)


def test_an_optimizer_without_hooks_or_a_wrapped_one_is_refused(tmp_path, tiny):
    model, loss_fn, _ = tiny

    class Hookless(torch.optim.Optimizer):
        def __init__(self):
            pass

    with pytest.raises(RecorderError, match=r"never ran Optimizer\.__init__"):
        Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=Hookless())
    assert not (tmp_path / "run").exists()


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


@pytest.mark.parametrize("offload", [False, True], ids=["training thread", "offload"])
def test_validation_inside_an_accumulation_window_is_no_train_step(tmp_path, tiny, offload):
    """Validation every 5 micro-batches, 2 micro-batches an optimizer step: set_mode(EVAL)
    comes between the halves of a step. Before, it ended the open TRAIN step there (the
    first half's loss, no gradients) and the second half made another: 5 TRAIN steps for 4
    optimizer steps, the later ones numbered one too high. Now the open step is dropped at
    set_mode, and the optimizer step after the validation ends the step its first
    micro-batch after it opened, with the gradients the optimizer used."""
    model, loss_fn, opt = tiny
    data, val = batches(8), batches(1, seed=9)[0]
    losses, grads = [], []
    opt.register_step_pre_hook(lambda o, a, k: grads.append(model.fc.weight.grad.norm().item()))
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  offload=offload) as rec:  # fmt: skip
        for i, (x, y) in enumerate(data):
            if i % 2 == 0:
                opt.zero_grad()
            loss = loss_fn(model(x), y)
            (loss / 2).backward()
            losses.append(loss.item())
            if i == 4:
                rec.set_mode(modes.EVAL)
                with torch.no_grad():
                    eval_loss = loss_fn(model(val[0]), val[1]).item()
                rec.set_mode(modes.TRAIN)
            if i % 2 == 1:
                opt.step()
        assert rec.global_step == 5 and rec.mode_step == 4
    run = open_run(tmp_path / "run")
    assert run.steps(modes.TRAIN) == [0, 1, 2, 3] and run.steps(modes.EVAL) == [0]
    assert [run.mode(g) for g in range(5)] == [modes.TRAIN] * 2 + [modes.EVAL] + [modes.TRAIN] * 2
    loss = run.tensor("CrossEntropyLoss_output_0")
    np.testing.assert_allclose(
        [loss.value(s, modes.TRAIN) for s in range(4)], [losses[i] for i in (0, 2, 5, 6)]
    )
    np.testing.assert_allclose(loss.value(0, modes.EVAL), eval_loss)
    np.testing.assert_array_equal(
        run.tensor("CrossEntropyLoss_input_1").value(2, modes.TRAIN), data[5][1].numpy()
    )
    l2 = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2"))
    assert l2.steps(modes.TRAIN) == [0, 1, 2, 3]
    np.testing.assert_allclose([l2.value(s, modes.TRAIN) for s in range(4)], grads, rtol=1e-5)


def test_micro_batches_no_optimizer_step_follows_are_no_step(tmp_path, tiny):
    """An epoch of 5 micro-batches, 2 an optimizer step, whose last one is never stepped
    (its gradients zeroed at the next epoch's start): set_mode(EVAL) drops it, so that each
    epoch holds 2 TRAIN steps, as the optimizer stepped. Before, it was a TRAIN step of its
    own, without gradients."""
    model, loss_fn, opt = tiny
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for epoch in range(2):
            rec.set_mode(modes.TRAIN)
            for i, (x, y) in enumerate(batches(5, seed=epoch)):
                if i % 2 == 0:
                    opt.zero_grad()
                loss_fn(model(x), y).backward()
                if i % 2 == 1:
                    opt.step()
            rec.set_mode(modes.EVAL)
            with torch.no_grad():
                x, y = batches(1, seed=9)[0]
                loss_fn(model(x), y)
    run = open_run(tmp_path / "run")
    assert run.steps(modes.TRAIN) == [0, 1, 2, 3] and run.steps(modes.EVAL) == [0, 1]
    gradient = run.tensor(reduction_tensor_name("gradient/fc.weight", "l2"))
    assert gradient.steps(modes.TRAIN) == [0, 1, 2, 3]


def test_validation_left_in_train_mode_is_said_once(tmp_path, tiny):
    """A loop that forgets rec.set_mode(modes.EVAL) records its validation batches as the
    next TRAIN step's first forward pass (their loss as a training loss): a forward pass
    under no_grad in a TRAIN step of the optimizer's gets one warning saying so. Evaluation
    in EVAL mode gets none."""
    model, loss_fn, opt = tiny
    forgot = Recorder(tmp_path / "forgot", model, loss=loss_fn, optimizer=opt, save_interval=1)
    with pytest.warns(RuntimeWarning, match=r"rec\.set_mode\(modes\.EVAL\)") as record, forgot:
        for _ in range(2):
            train(model, loss_fn, opt, batches(2))
            with torch.no_grad():
                for x, y in batches(2, seed=5):
                    loss_fn(model(x), y)
    assert sum("no_grad" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Recorder(tmp_path / "ok", model, loss=loss_fn, optimizer=opt, save_interval=1) as r:
            train(model, loss_fn, opt, batches(2))
            r.set_mode(modes.EVAL)
            with torch.no_grad():
                loss_fn(model(batches(1)[0][0]), batches(1)[0][1])


class _Module(torch.nn.Module):
    """A LightningModule's shape: the model is ``self.net``, its step calls ``self.net(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("closure", [False, True], ids=["plain step", "step(closure)"])
def test_a_model_whose_forward_never_runs_is_said_once(tmp_path, closure):
    """Given the outer module while the training step calls its submodule, the Recorder saw
    no forward pass: the run held weights and gradients alone, silently. One warning says
    so, with or without a closure step (Lightning's); given the submodule, none."""
    outer = _Module()
    opt = torch.optim.SGD(outer.parameters(), lr=0.1)

    def fit(rec_model, out):
        with Recorder(out, rec_model, loss=outer.loss_fn, optimizer=opt, save_interval=1):
            for x, y in batches(3):

                def step_closure(x=x, y=y):
                    opt.zero_grad()
                    loss = outer.loss_fn(outer.net(x), y)
                    loss.backward()
                    return loss

                if closure:
                    opt.step(step_closure)
                else:
                    step_closure()
                    opt.step()

    with pytest.warns(RuntimeWarning, match=r"recorded model \(_Module\) ran no forward") as rec:
        fit(outer, tmp_path / "outer")
    assert sum("ran no forward pass" in str(w.message) for w in rec) == 1  # once, 3 steps
    assert open_run(tmp_path / "outer").tensor_names(regex="CrossEntropyLoss") == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(outer.net, tmp_path / "net")
    assert not [w for w in caught if "ran no forward pass" in str(w.message)]
    assert open_run(tmp_path / "net").tensor("CrossEntropyLoss_output_0").steps() == [0, 1, 2]


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


def test_include_regex_takes_nothing_from_the_default_weights(tmp_path):
    """A parameter named neither *weight nor *bias (a position embedding) belongs to the
    default weights (its l2 recorded); selecting it with include_regex adds its full value
    and keeps that l2."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = torch.nn.Parameter(torch.randn(6))
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(x + self.pos_embed)

    l2 = reduction_tensor_name("pos_embed", "l2")
    for include in (None, "pos_embed"):
        torch.manual_seed(0)
        model, loss_fn = Net(), torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = tmp_path / f"run-{include}"
        with Recorder(out, model, loss=loss_fn, optimizer=opt, save_interval=1,
                      include_regex=include):  # fmt: skip
            train(model, loss_fn, opt, [(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))] * 2)
        run = open_run(out)
        assert l2 in run.tensor_names(collection="weights")
        assert run.tensor(l2).steps() == [0, 1]
        assert run.has_tensor("pos_embed") == (include is not None)


def test_relu_hooks_stay_for_the_run_and_save_on_saved_steps_only(tmp_path):
    """The ReLU's hook is installed once, for the whole run (a compiled model's traced code
    does not see a hook added later: tests/capture/test_compile.py), saves on the saved steps
    only, and leaves with the Recorder."""
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
    assert seen == [1] * 6  # its output's hook; no input hook (relu_input saves nothing)
    assert not model.relu._forward_hooks and not model.relu._forward_pre_hooks
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 3]
    relu = run.tensor_names(regex="relu_output")
    assert len(relu) == 1 and run.tensor(relu[0]).steps() == [0, 3]


def test_per_sample_gradients_by_torch_func_are_no_forward_pass(tmp_path):
    """DP-SGD's recipe: the model runs inside vmap(grad(...)) (batched stand-in tensors), then
    the averaged per-sample gradients are set and the optimizer steps. The transformed calls
    are not the step's forward pass: each optimizer step is recorded with its weights and the
    gradients it used, and recording goes on."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def loss_one(params, xi, yi):
        out = functional_call(model, params, (xi[None],))
        return torch.nn.functional.cross_entropy(out, yi[None])

    norms = []
    rec = Recorder(tmp_path / "run", model, optimizer=opt, save_interval=1)
    # the run holds no loss and no activations, which one warning says
    with pytest.warns(RuntimeWarning, match="torch.func transforms") as said, rec:
        for _ in range(3):
            params = {k: v.detach() for k, v in model.named_parameters()}
            per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
            for k, p in model.named_parameters():
                p.grad = per_sample[k].mean(0)
            norms.append(model[0].weight.grad.norm().item())
            opt.step()
    assert sum("ran no forward pass" in str(w.message) for w in said) == 1
    assert not rec.dead, rec.error
    run = open_run(tmp_path / "run")
    assert run.steps(modes.TRAIN) == [0, 1, 2]
    l2 = run.tensor(reduction_tensor_name("gradient/0.weight", "l2"))
    for step in range(3):
        np.testing.assert_allclose(l2.value(step, modes.TRAIN), norms[step], rtol=1e-5)
    assert not [n for n in run.tensor_names() if "relu" in n.lower()]  # no forward pass ran


@pytest.mark.parametrize("with_optimizer", [False, True], ids=["forward-steps", "optimizer"])
def test_a_lazy_module_is_recorded_from_its_first_forward_pass_on(tmp_path, with_optimizer):
    """A LazyLinear has no values before its first forward pass: that step records the other
    parameters; from the next step on the lazy one's weights and gradients are there too."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if with_optimizer else None
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for _ in range(3):
            if opt is not None:
                opt.zero_grad()
            loss_fn(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
            if opt is not None:
                opt.step()
    assert not rec.dead, rec.error
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2]
    assert run.tensor(reduction_tensor_name("2.weight", "l2")).steps() == [0, 1, 2]
    assert run.tensor(reduction_tensor_name("0.weight", "l2")).steps() == [1, 2]
    grads = run.tensor(reduction_tensor_name("gradient/0.weight", "l2")).steps()
    assert grads == ([0, 1, 2] if with_optimizer else [1, 2])


def test_a_forward_pass_that_raised_leaves_the_step_to_the_next_one(tmp_path, tiny):
    """A loop that skips a batch whose forward pass raised (an out-of-memory error, say)
    records the step with the batch it trained on: input, ReLU outputs, loss and labels of
    the pass that returned, none of the failed one's."""
    model, loss_fn, opt = tiny
    data = batches(4)
    fail = {"now": False}

    def maybe_fail(module, args):
        if fail["now"]:
            raise RuntimeError("CUDA out of memory (simulated)")

    model.conv2.register_forward_pre_hook(maybe_fail)  # after the first ReLU call
    trained = []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for i, (x, y) in enumerate(data):
            opt.zero_grad()
            fail["now"] = i == 1
            try:
                loss = loss_fn(model(x), y)
            except RuntimeError:
                continue  # the batch is skipped; the next one makes the step
            loss.backward()
            opt.step()
            trained.append((x, y, loss.item()))
    assert not rec.dead, rec.error
    run = open_run(tmp_path / "run")
    assert run.steps(modes.TRAIN) == [0, 1, 2]
    for step, (x, y, loss) in enumerate(trained):
        got = run.tensor("CrossEntropyLoss_output_0").value(step, modes.TRAIN)
        np.testing.assert_allclose(got, loss, rtol=1e-6)
        labels = run.tensor("CrossEntropyLoss_input_1").value(step, modes.TRAIN)
        np.testing.assert_array_equal(labels, y.numpy())
        means = run.tensor(reduction_tensor_name("TinyNet_input_0", "sample_channel_mean"))
        np.testing.assert_allclose(
            means.value(step, modes.TRAIN), x.double().mean(dim=(2, 3)).numpy(), rtol=1e-6
        )
    # the skipped batch's partial pass left nothing: one ReLU fraction per call of the step
    relu = run.tensor(reduction_tensor_name("relu_output_0", "positive_fraction"))
    assert relu.steps(modes.TRAIN) == [0, 1, 2]
