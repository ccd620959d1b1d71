"""The Recorder's thread doing a step's device work (capture/offload.py), tested on the CPU:
the same run bit for bit, the work really off the training thread, in-place changes after a
hand-off, failures and the switch."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from capture_helpers import (
    SelfLossNet,
    TinyNet,
    assert_same_values,
    batches,
    run_values,
    train,
)

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.store.names import reduction_tensor_name

torch = pytest.importorskip("torch")

from pytest_modelrules.capture import kernels, offload, recorder  # noqa: E402


@pytest.fixture
def deferred(monkeypatch):
    """The Recorder's thread does the device work of CPU tensors."""
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})


def _train(path, channels_last=False, evaluate=True, **recorder_kwargs):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = TinyNet().to(memory_format=fmt)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(
        path, model, loss=loss_fn, optimizer=opt, save_interval=1, **recorder_kwargs
    ) as rec:
        for x, y in batches(3):
            opt.zero_grad()
            loss_fn(model(x.contiguous(memory_format=fmt)), y).backward()
            opt.step()
        if evaluate:
            rec.set_mode(modes.EVAL)
            with torch.no_grad():
                for x, _ in batches(2, seed=1):
                    model(x.contiguous(memory_format=fmt))
    return run_values(path)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_run_is_the_same_bit_for_bit(tmp_path, monkeypatch, channels_last):
    """Every tensor at every step, TRAIN and EVAL: what the thread computes equals what the
    training thread computes."""
    expected = _train(tmp_path / "inline", channels_last)
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    got = _train(tmp_path / "deferred", channels_last)
    assert any("relu_output" in name for name, _ in got)
    assert any(name == "CrossEntropyLoss_input_0" for name, _ in got)
    assert_same_values(got, expected)


def test_the_same_with_a_queue_bound_that_hands_off_at_every_relu_call(tmp_path, monkeypatch):
    """Past ``RELU_QUEUE_BYTES`` the queue is handed to the thread in the middle of the forward
    pass: several hand-offs make one step, with the same values."""
    expected = _train(tmp_path / "inline")
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    monkeypatch.setattr(recorder, "RELU_QUEUE_BYTES", 0)
    assert_same_values(_train(tmp_path / "deferred"), expected)


def test_the_same_for_a_model_that_computes_its_own_loss(tmp_path, monkeypatch):
    def run(path):
        torch.manual_seed(0)
        model = SelfLossNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        with Recorder(path, model, optimizer=opt, save_interval=1):
            for _ in range(3):
                x, y = torch.randn(5, 6, generator=gen), torch.randint(0, 3, (5,), generator=gen)
                opt.zero_grad()
                loss, _ = model(x, y)
                loss.backward()
                opt.step()
        return run_values(path)

    expected = run(tmp_path / "inline")
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    got = run(tmp_path / "deferred")
    assert ("SelfLossNet_input_1", 0) in got and ("SelfLossNet_output_0", 2) in got
    assert_same_values(got, expected)


def test_the_same_with_the_triton_kernel_counting_on_the_thread(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 was overridden: the kernel runs on the CPU only so")
    expected = _train(tmp_path / "inline", channels_last=True)
    launches: list[str] = []
    real = kernels.positive_counts_c_order

    def counted(xs, **kwargs):
        launches.append(threading.current_thread().name)
        return real(xs, **kwargs)

    monkeypatch.setattr(kernels, "positive_counts_c_order", counted)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    assert_same_values(_train(tmp_path / "deferred", channels_last=True), expected)
    assert launches == ["modelrules-recorder-launch"] * 5  # one launch per step, on the thread


def _spy_threads(monkeypatch, *names: str) -> dict[str, set[str]]:
    """Which threads call each of the recorder module's functions ``names``."""
    seen: dict[str, set[str]] = {}
    for name in names:
        real = getattr(recorder, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            seen.setdefault(_name, set()).add(threading.current_thread().name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(recorder, name, wrapped)
    return seen


def test_the_work_runs_on_the_recorders_thread(tmp_path, deferred, monkeypatch):
    """In TRAIN steps the ReLU counts, the input's channel means, the loss's copies and the
    weight and gradient norms are all computed by the Recorder's thread."""
    seen = _spy_threads(
        monkeypatch, "_unit_counts", "compute_many", "_full_copy", "compute_batch_rows"
    )
    _train(tmp_path / "run", evaluate=False)
    assert len(seen) == 4
    assert all(threads == {"modelrules-recorder-launch"} for threads in seen.values()), seen


def test_weights_stay_on_the_training_thread_where_no_optimizer_step_ends_the_step(
    tmp_path, deferred, monkeypatch
):
    """Without an optimizer step to wait at, nothing tells the Recorder when the weights are
    about to change: an EVAL step (or a run without an optimizer) reduces them itself."""
    seen = _spy_threads(monkeypatch, "compute_batch_rows", "_unit_counts")
    torch.manual_seed(0)
    model = TinyNet()
    with Recorder(tmp_path / "run", model, save_interval=1, mode=modes.EVAL), torch.no_grad():
        for x, _ in batches(2):
            model(x)
    assert seen["compute_batch_rows"] == {threading.main_thread().name}
    assert seen["_unit_counts"] == {"modelrules-recorder-launch"}
    norm = open_run(tmp_path / "run").tensor(reduction_tensor_name("fc.weight", "l2"))
    assert norm.steps(modes.EVAL) == [0, 1]


def test_nothing_moves_to_a_thread_without_the_writer_thread(tmp_path, deferred, monkeypatch):
    """``async_write=False`` writes each step before the hook returns: no thread, no hand-off."""
    names: set[str] = set()
    real = recorder._unit_counts

    def spy(*args):
        names.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(recorder, "_unit_counts", spy)
    _train(tmp_path / "run", evaluate=False, async_write=False)
    assert names == {threading.main_thread().name}


class _ChangesLogits(torch.nn.Module):
    """Scales its logits in place after the loss has read them, at step 1 only."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.head(self.act(self.lin(x)))


def test_a_tensor_changed_in_place_after_its_hand_off_is_left_out_then_recorded_at_its_call(
    tmp_path, deferred
):
    """The thread may read a handed-off tensor after the training thread changed it: such a
    tensor is left out of that step (one warning) and recorded at its call from then on; the
    other tensors of the step are kept."""
    torch.manual_seed(0)
    model = _ChangesLogits()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(6, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen))
            for _ in range(4)]  # fmt: skip
    stored = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
            for step, (x, y) in enumerate(data):
                opt.zero_grad()
                logits = model(x)
                loss_fn(logits, y).backward()
                stored.append(logits.detach().clone())
                if step == 1:
                    with torch.no_grad():
                        logits.mul_(2.0)  # after the loss: what step 1 stores would change
                opt.step()
    messages = [str(w.message) for w in caught if "changed in place" in str(w.message)]
    assert len(messages) == 1, messages
    assert "CrossEntropyLoss_input_0" in messages[0] and "global step 1" in messages[0]
    run = open_run(tmp_path / "run")
    logits = run.tensor("CrossEntropyLoss_input_0")
    assert logits.steps() == [0, 2, 3]
    for step in (0, 2, 3):
        np.testing.assert_array_equal(logits.value(step), stored[step].numpy())
    assert run.tensor("CrossEntropyLoss_input_1").steps() == [0, 1, 2, 3]
    assert run.tensor(reduction_tensor_name("act.relu_output_0", "positive_fraction")).steps() == [
        0, 1, 2, 3]  # fmt: skip


def test_a_relu_output_changed_after_the_forward_pass_is_left_out_of_that_step(tmp_path, deferred):
    torch.manual_seed(0)
    model = _ChangesLogits()
    x = torch.randn(6, 4)
    outputs = []
    model.act.register_forward_hook(lambda mod, args, out: outputs.append(out))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run", model, save_interval=1), torch.no_grad():
            for step in range(3):
                model(x)
                if step == 0:
                    outputs[-1].sub_(10.0)  # between the end of the forward and the step's end
    messages = [str(w.message) for w in caught if "changed in place" in str(w.message)]
    assert len(messages) == 1 and "act.relu_output_0" in messages[0]
    run = open_run(tmp_path / "run")
    fraction = run.tensor(reduction_tensor_name("act.relu_output_0", "positive_fraction"))
    assert fraction.steps() == [1, 2]
    with torch.no_grad():
        expected = (torch.relu(model.lin(x)) > 0).float().mean(0).numpy()
    np.testing.assert_array_equal(fraction.value(2), expected)


@pytest.mark.parametrize(
    "broken", ["_unit_counts", "compute_batch_rows"], ids=["relu-counts", "parameter-norms"]
)
def test_a_failure_on_the_thread_stops_recording_and_training_goes_on(
    tmp_path, deferred, monkeypatch, broken
):
    """An error while the thread computes (the ReLU counts, or the weight and gradient norms
    that the optimizer step waits for): one warning naming it, recording stops, training
    finishes, the steps written before read back whole."""
    real = getattr(recorder, broken)
    calls = []

    def fails_at_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:  # twice a step (two ReLU calls; weights and gradients): steps 0, 1
            raise RuntimeError("device lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(recorder, broken, fails_at_step_2)
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
            losses = train(model, loss_fn, opt, batches(5))
    assert len(losses) == 5 and rec.dead
    messages = [str(w.message) for w in caught if "recording stopped" in str(w.message)]
    assert len(messages) == 1
    assert "Recorder's thread" in messages[0] and "device lost" in messages[0]
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 1]
    fraction = reduction_tensor_name("relu_output_0", "positive_fraction")
    for name in (fraction, reduction_tensor_name("gradient/fc.weight", "l2")):
        assert run.tensor(name).steps() == [0, 1], name


@pytest.mark.parametrize("defer", [False, True])
def test_a_slow_disk_holds_training_back_at_two_steps_queued(tmp_path, monkeypatch, defer):
    """A write that does not return (a stalled disk or upload): the training thread goes on
    until 2 steps' writes are queued and then waits, rather than holding every later step's
    values in memory; hand-offs go to another thread than the writes, so a slow write does
    not hold back the next step's device work."""
    from pytest_modelrules.store.writer import RunWriter

    if defer:
        monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    gate = threading.Event()
    real = RunWriter.write_step

    def stalled(self, *args, **kwargs):
        gate.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunWriter, "write_step", stalled)
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1)
    done = []

    def training():
        for x, y in batches(5):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            done.append(1)

    thread = threading.Thread(target=training)
    thread.start()
    thread.join(1.5)
    # step 0 is being written, step 1 queued; the end of step 2 waits for a slot (handed off:
    # the launcher waits for it with step 2's transfer, the end of step 3 for the launcher)
    held = 3 if defer else 2
    assert thread.is_alive() and len(done) == held and rec.global_step == held
    gate.set()
    thread.join(30)
    assert not thread.is_alive() and len(done) == 5
    rec.close()
    assert open_run(tmp_path / "run").steps() == [0, 1, 2, 3, 4]


def test_switching_the_hand_off_during_a_run_keeps_the_steps_in_order(tmp_path, monkeypatch):
    """Steps handed off pass through the launcher thread; a step recorded inline after them
    is written after them, not before."""
    monkeypatch.setattr(offload, "DEFER_DEVICES", set())
    real = recorder.Recorder._transfer

    def slow_on_the_launcher(self, *args, **kwargs):
        if threading.current_thread().name == "modelrules-recorder-launch":
            time.sleep(0.05)  # an inline step ends meanwhile
        return real(self, *args, **kwargs)

    monkeypatch.setattr(recorder.Recorder, "_transfer", slow_on_the_launcher)
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for step, (x, y) in enumerate(batches(8)):
            if step % 2 == 0:
                offload.DEFER_DEVICES.add("cpu")
            else:
                offload.DEFER_DEVICES.discard("cpu")
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    assert rec.error is None
    run = open_run(tmp_path / "run")
    assert run.steps() == list(range(8))
    assert run.tensor("CrossEntropyLoss_input_0").steps() == list(range(8))


class _HalvesGradients(torch.optim.SGD):
    """An optimizer that changes the gradients in place: after the Recorder's pre-hook."""

    def step(self, closure=None):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(0.5)
        return super().step(closure)


def _train_changing(path, optimizer_class=torch.optim.SGD, change_weight_at=None):
    """TinyNet trained 4 steps; with ``change_weight_at``, fc.weight is scaled in place
    between backward and the optimizer step of that step."""
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = optimizer_class(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1):
            for step, (x, y) in enumerate(batches(4)):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                if step == change_weight_at:
                    with torch.no_grad():
                        model.fc.weight.mul_(0.9)
                opt.step()
    messages = [str(w.message) for w in caught if "changed in place" in str(w.message)]
    return run_values(path), messages


def test_a_weight_changed_before_the_optimizer_step_is_left_out_then_reduced_inline(
    tmp_path, monkeypatch
):
    """The weights are handed off at the start of the forward pass and read before the
    optimizer step; one changed in between is left out of that step (its l2 only, with one
    warning) and the weights are reduced on the training thread from then on, with the values
    the training thread's path stores."""
    expected, none = _train_changing(tmp_path / "inline", change_weight_at=1)
    assert not none
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    got, messages = _train_changing(tmp_path / "deferred", change_weight_at=1)
    assert len(messages) == 1 and "weights" in messages[0] and "global step 1" in messages[0]
    lost = (reduction_tensor_name("fc.weight", "l2"), 1)
    assert lost in expected and lost not in got
    assert (reduction_tensor_name("conv.weight", "l2"), 1) in got
    del expected[lost]
    assert_same_values(got, expected)


def test_gradients_an_optimizer_changes_in_place_are_left_out_once_then_reduced_inline(
    tmp_path, monkeypatch
):
    """The gradients are handed off at the optimizer's pre-hook and read while it steps; an
    optimizer that changes them in place loses the first step's gradient norms (one warning),
    and from then on they are reduced before it steps, as on the training thread's path."""
    expected, _ = _train_changing(tmp_path / "inline", _HalvesGradients)
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    got, messages = _train_changing(tmp_path / "deferred", _HalvesGradients)
    assert len(messages) == 1 and "gradients" in messages[0] and "global step 0" in messages[0]
    lost = {key for key in expected if "/gradient/" in key[0] and key[1] == 0}
    assert len(lost) == 12 and lost.isdisjoint(got)  # 6 parameters: l2 and abs_mean
    assert (reduction_tensor_name("gradient/fc.weight", "l2"), 1) in got
    assert_same_values(got, {k: v for k, v in expected.items() if k not in lost})


def _recorded_twice(tmp_path, monkeypatch, make_optimizer, loop):
    """``loop(model, loss_fn, optimizer)`` recorded inline, then handed off: (handed-off
    values, inline values), once neither recording failed nor left a tensor out."""

    def run(path):
        torch.manual_seed(0)
        model = TinyNet()
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = make_optimizer(model.parameters())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Recorder(path, model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
                loop(model, loss_fn, opt)
        assert rec.error is None
        assert not [w for w in caught if "changed in place" in str(w.message)]
        return run_values(path)

    expected = run(tmp_path / "inline")
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    return run(tmp_path / "deferred"), expected


@pytest.mark.parametrize(
    "make_optimizer",
    [
        pytest.param(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), id="sgd-momentum"),
        pytest.param(lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=True), id="adam-foreach"),
        pytest.param(
            lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, maximize=True),
            id="adam-maximize-weight-decay",
        ),
        pytest.param(lambda ps: torch.optim.AdamW(ps, lr=0.01, fused=True), id="adamw-fused"),
    ],
)
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_same_with_other_optimizers_and_gradient_accumulation(
    tmp_path, monkeypatch, make_optimizer, accumulate
):
    """Optimizers read the gradients without writing them (weight decay and maximize work on
    copies), so nothing is left out; with gradient accumulation the weights handed off at the
    first micro-batch wait for the one optimizer step."""

    def loop(model, loss_fn, opt):
        for i, (x, y) in enumerate(batches(4 * accumulate)):
            loss_fn(model(x), y).backward()
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad(set_to_none=False)  # zeroed in place, after the step

    got, expected = _recorded_twice(tmp_path, monkeypatch, make_optimizer, loop)
    assert {step for _, step in got} == {0, 1, 2, 3}
    assert (reduction_tensor_name("gradient/fc.weight", "l2"), 3) in got
    assert_same_values(got, expected)


def test_the_same_for_lbfgs_closure_steps(tmp_path, monkeypatch):
    """LBFGS evaluates the model through a closure and changes the weights between
    evaluations: the weights handed off at the step's start are read before the first
    change, and the run equals the inline one bit for bit, with nothing left out."""

    def loop(model, loss_fn, opt):
        for x, y in batches(3):

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)

    def lbfgs(params):
        return torch.optim.LBFGS(params, lr=0.5, max_iter=3)

    got, expected = _recorded_twice(tmp_path, monkeypatch, lbfgs, loop)
    assert {step for _, step in got} == {0, 1, 2}
    assert (reduction_tensor_name("gradient/fc.weight", "l2"), 2) in got
    assert ("CrossEntropyLoss_output_0", 2) in got
    assert_same_values(got, expected)


def test_a_training_step_wakes_the_thread_twice(tmp_path, deferred, monkeypatch):
    """Each hand-off wakes the thread: a TRAIN step hands off after the loss (with the
    forward pass's work) and at the optimizer's pre-hook; an EVAL step without a loss at the
    end of the forward pass."""
    launched: list[int] = []
    real = recorder.Recorder._launch

    def counted(self, work):
        launched.append(len(work.items))
        return real(self, work)

    monkeypatch.setattr(recorder.Recorder, "_launch", counted)
    _train(tmp_path / "run", evaluate=False)
    assert len(launched) == 2 * 3 and all(launched)
    launched.clear()
    torch.manual_seed(0)
    model = TinyNet()
    with Recorder(tmp_path / "eval", model, save_interval=1, mode=modes.EVAL), torch.no_grad():
        for x, _ in batches(2):
            model(x)
    assert len(launched) == 2


def test_the_offload_argument_decides_for_its_recorder(tmp_path, monkeypatch):
    """``offload=True`` hands off on any device without the module's set, ``offload=False``
    keeps the work on the training thread with it, ``None`` follows it."""
    seen = _spy_threads(monkeypatch, "_unit_counts")
    launcher, main = {"modelrules-recorder-launch"}, {threading.main_thread().name}
    _train(tmp_path / "on", evaluate=False, offload=True)
    assert seen.pop("_unit_counts") == launcher
    monkeypatch.setattr(offload, "DEFER_DEVICES", {"cpu"})
    _train(tmp_path / "off", evaluate=False, offload=False)
    assert seen.pop("_unit_counts") == main
    _train(tmp_path / "default", evaluate=False)
    assert seen.pop("_unit_counts") == launcher


def test_offload_without_the_writer_thread_is_refused(tmp_path):
    from pytest_modelrules.exceptions import RecorderError

    with pytest.raises(RecorderError, match="async_write=False"):
        Recorder(tmp_path / "run", TinyNet(), offload=True, async_write=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
