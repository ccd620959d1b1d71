"""Recording a model under torch.compile: the same run as without it, whichever way the model
is compiled; no recompilation as steps go by; and with ``fullgraph=True``, where the model's
hooks cannot leave the graph, training goes on and the loss, weights and gradients are kept."""

from __future__ import annotations

import errno
import os
import shutil
import warnings

import pytest
from capture_helpers import TinyNet, assert_same_values, batches, run_values, train

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.capture import CollectionConfig
from pytest_modelrules.store import writer as writer_module
from pytest_modelrules.store.format import RECORD_HEADER

torch = pytest.importorskip("torch")
dynamo = pytest.importorskip("torch._dynamo")

# the ReLU outputs saved at steps of their own, so that the hooks a step needs change
# between steps (the case Dynamo does not see unless the hooks stay)
COLLECTIONS = [CollectionConfig("relu_output", save_steps=[3, 7])]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from nothing, and counts only its own graphs."""
    dynamo.reset()
    dynamo.utils.counters.clear()
    yield
    dynamo.reset()


def _record(path, how: str | None, steps: int = 10, backend: str = "aot_eager", **compile_kw):
    """Train TinyNet for ``steps`` steps with a Recorder (save_interval 2, COLLECTIONS), the
    model compiled as ``how`` says: after the Recorder is attached, given to it compiled
    (torch.compile's wrapper), compiled in place (model.compile()), only a part of it
    compiled ("part-before" / "part-after" attaching: its conv2 and its ReLU) or not at all
    (None). Returns the losses and the Recorder."""
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = {"loss": loss_fn, "optimizer": opt, "save_interval": 2, "collections": COLLECTIONS}
    if how == "wrapper":
        compiled = torch.compile(model, backend=backend, **compile_kw)
        rec = Recorder(path, compiled, **kw)
    elif how == "in-place":
        model.compile(backend=backend, **compile_kw)
        rec = Recorder(path, model, **kw)
        compiled = model
    elif how in ("part-before", "part-after"):
        if how == "part-after":
            rec = Recorder(path, model, **kw)
        model.conv2 = torch.compile(model.conv2, backend=backend, **compile_kw)
        model.relu = torch.compile(model.relu, backend=backend, **compile_kw)
        if how == "part-before":
            rec = Recorder(path, model, **kw)
        compiled = model
    else:
        rec = Recorder(path, model, **kw)
        compiled = torch.compile(model, backend=backend, **compile_kw) if how else model
    losses = train(compiled, loss_fn, opt, batches(steps))
    rec.close()
    return losses, rec


@pytest.mark.parametrize("how", ["after", "wrapper", "in-place"])
def test_a_compiled_model_records_the_run_it_records_uncompiled(tmp_path, how):
    """Every tensor at every step, bit for bit, including the ReLU outputs of steps whose
    hooks the steps before did not need (Dynamo does not see a hook added after it traced a
    module: they were lost before the hooks of a compiled model stayed)."""
    eager_losses, _ = _record(tmp_path / "eager", None)
    losses, rec = _record(tmp_path / "compiled", how)
    assert not rec.dead, rec.error
    assert losses == eager_losses
    expected = run_values(tmp_path / "eager")
    assert {s for (n, s) in expected if "relu_output" in n} == {3, 7}
    assert_same_values(run_values(tmp_path / "compiled"), expected)


def test_steps_going_by_compile_nothing_new(tmp_path):
    """Dynamo never traces the Recorder's own code: no guard on its state, so steps that save
    and steps that do not run graphs compiled once (before, each step's counters forced a
    recompilation until Dynamo's limit, and the model then ran uncompiled)."""
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    compiled = torch.compile(model, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=3):
            train(compiled, loss_fn, opt, batches(6))
            graphs = dynamo.utils.counters["stats"]["unique_graphs"]
            train(compiled, loss_fn, opt, batches(15, seed=1))
    assert graphs > 0
    assert dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert not [w for w in caught if "recompile" in str(w.message)]
    assert open_run(tmp_path / "run").steps() == list(range(0, 21, 3))


def test_fullgraph_training_goes_on_and_keeps_loss_weights_and_gradients(tmp_path):
    """With fullgraph=True a graph break is an error, so the hooks inside the model do nothing
    there (before, they broke the first step): the loss module and the optimizer keep the
    steps, in training and in evaluation, and one warning says what is not recorded."""
    eager_losses, _ = _record(tmp_path / "eager", None)
    with pytest.warns(RuntimeWarning, match="fullgraph=True") as caught:
        losses, rec = _record(tmp_path / "compiled", "after", fullgraph=True)
    assert len([w for w in caught if "fullgraph" in str(w.message)]) == 1
    assert not rec.dead, rec.error
    assert losses == eager_losses
    expected = {
        key: value
        for key, value in run_values(tmp_path / "eager").items()
        if "relu_output" not in key[0] and "TinyNet_" not in key[0]
    }
    got = run_values(tmp_path / "compiled")
    assert not [n for n, _ in got if "relu_output" in n or "TinyNet_" in n]
    assert_same_values(got, expected)
    assert open_run(tmp_path / "compiled").steps() == [0, 2, 4, 6, 8]


def test_fullgraph_evaluation_steps_are_kept_by_the_loss(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    data = batches(3)
    with (
        pytest.warns(RuntimeWarning, match="fullgraph=True"),
        Recorder(tmp_path / "run", model, loss=loss_fn, save_interval=1) as rec,
        torch.no_grad(),
    ):
        rec.set_mode(modes.EVAL)
        losses = [loss_fn(compiled(x), y).item() for x, y in data]
    run = open_run(tmp_path / "run")
    assert run.steps(modes.EVAL) == [0, 1, 2]
    got = run.tensor("CrossEntropyLoss_output_0").values(modes.EVAL)
    assert [float(got[s]) for s in range(3)] == pytest.approx(losses, rel=1e-6)


@pytest.mark.skipif(not hasattr(os, "writev"), reason="simulates the failure in os.writev")
def test_a_disk_failure_under_compile_stops_recording_and_training_goes_on(tmp_path, monkeypatch):
    """The disk fills up in step 4 of a compiled model's run: one warning, training as
    without a Recorder, the steps before kept, nothing left queued."""
    eager_losses, _ = _record(tmp_path / "eager", None)
    real_writev = os.writev

    def failing_writev(fd, parts):  # the system call that appends a record
        step = RECORD_HEADER.unpack_from(b"".join(bytes(p) for p in parts)[:48])[2]
        if step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, parts)

    monkeypatch.setattr(writer_module, "_WRITEV", failing_writev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, rec = _record(tmp_path / "compiled", "after")
    assert losses == eager_losses
    ours = [str(w.message) for w in caught if "Recorder" in str(w.message)]
    assert len(ours) == 1 and "No space left on device" in ours[0], ours
    assert rec.dead and not rec._graph_counts and rec._graph_relu is None
    assert open_run(tmp_path / "compiled").steps() == [0, 2, 3]  # 3: the ReLU outputs


@pytest.mark.skipif(shutil.which("cc") is None, reason="Inductor needs a C compiler")
def test_inductor_compiled_model_records_the_same_tensors(tmp_path):
    """With the default backend (Inductor, generated kernels: float sums in another order)
    the same tensors at the same steps, equal to float precision."""
    _record(tmp_path / "eager", None, steps=8)
    _, rec = _record(tmp_path / "compiled", "after", steps=8, backend="inductor")
    assert not rec.dead, rec.error
    assert_same_values(
        run_values(tmp_path / "compiled"), run_values(tmp_path / "eager"), rtol=1e-4, atol=1e-6
    )


def test_a_compiled_optimizer_step_or_training_step_records_without_recompiling(tmp_path):
    """The optimizer's hooks too run outside the graph when Dynamo traces them (a compiled
    ``opt.step`` or a whole compiled training step): collections on schedules of their own
    used to force a recompilation per step until Dynamo's limit."""
    collections = [
        CollectionConfig("weights", save_interval=3),
        CollectionConfig("gradients", save_interval=5),
        CollectionConfig("losses", save_interval=2),
    ]

    def run(path, compiled_step: bool):
        torch.manual_seed(0)
        model = TinyNet()
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = Recorder(path, model, loss=loss_fn, optimizer=opt, collections=collections)

        def train_step(x, y):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = torch.compile(train_step, backend="aot_eager") if compiled_step else train_step
        losses, graphs = [], []
        for i, (x, y) in enumerate(batches(24)):
            losses.append(step(x, y).item())
            if i in (11, 23):
                graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
        rec.close()
        return losses, graphs, rec

    eager_losses, _, _ = run(tmp_path / "eager", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, graphs, rec = run(tmp_path / "compiled", True)
    assert not rec.dead, rec.error
    assert losses == eager_losses
    assert graphs[0] == graphs[1]  # nothing compiled in the second half
    assert not [w for w in caught if "recompile" in str(w.message)]
    assert_same_values(run_values(tmp_path / "compiled"), run_values(tmp_path / "eager"))


def test_fullgraph_gradient_accumulation_keeps_the_first_micro_batch(tmp_path):
    """As uncompiled: the step's forward-pass tensors come from its first micro-batch."""
    runs = {}
    for how, kw in (("eager", {}), ("compiled", {"fullgraph": True})):
        torch.manual_seed(0)
        model = TinyNet()
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with (
            warnings.catch_warnings(),
            Recorder(tmp_path / how, model, loss=loss_fn, optimizer=opt, save_interval=1),
        ):
            warnings.simplefilter("ignore")
            net = torch.compile(model, backend="aot_eager", **kw) if kw else model
            runs[how] = train(net, loss_fn, opt, batches(6), accumulate=3)
    assert runs["compiled"] == runs["eager"]
    loss = open_run(tmp_path / "compiled").tensor("CrossEntropyLoss_output_0").values()
    assert [float(loss[s]) for s in (0, 1)] == pytest.approx(runs["eager"][::3], rel=1e-6)
    eager = {k: v for k, v in run_values(tmp_path / "eager").items() if "CrossEntropy" in k[0]}
    got = {k: v for k, v in run_values(tmp_path / "compiled").items() if "CrossEntropy" in k[0]}
    assert_same_values(got, eager)


def test_fullgraph_without_loss_or_optimizer_says_nothing_is_recorded(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    warned = pytest.warns(RuntimeWarning, match=r"seen at close.*given neither records none")
    with warned, Recorder(tmp_path / "run", model, save_interval=1):
        for x, _ in batches(3):
            compiled(x)
    assert open_run(tmp_path / "run").steps() == []


@pytest.mark.parametrize("how", ["part-after", "part-before"])
def test_a_compiled_part_of_the_model_records_its_relu_outputs_under_plain_names(tmp_path, how):
    """Only a part compiled (``model.body = torch.compile(model.body)``), before or after
    the Recorder is attached: its ReLU outputs as uncompiled, named without ``_orig_mod``."""
    eager_losses, _ = _record(tmp_path / "eager", None)
    losses, rec = _record(tmp_path / "compiled", how)
    assert not rec.dead, rec.error
    assert losses == eager_losses
    assert_same_values(run_values(tmp_path / "compiled"), run_values(tmp_path / "eager"))
