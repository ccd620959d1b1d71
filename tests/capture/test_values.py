"""What is stored: reductions equal compute_reduction of the full tensor; frozen parameters;
wrappers; models returning their own loss; mixed precision; metadata."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from capture_helpers import (
    SelfLossNet,
    ThreadedDataParallel,
    TinyNet,
    assert_same_values,
    batches,
    run_values,
    train,
)

from pytest_modelrules import Recorder, modes, open_run
from pytest_modelrules.capture import CollectionConfig
from pytest_modelrules.store.names import compute_reduction, reduction_tensor_name

torch = pytest.importorskip("torch")

ALL = ["min", "max", "mean", "std", "variance", "sum", "l1", "l2", "abs_mean", "abs_max",
       "positive_fraction", "zero_fraction", "histogram", "nan_count", "inf_count", "p05",
       "p95", "numel"]  # fmt: skip


def _check_reductions(run, name, reductions, step, mode=None, rtol=2e-6):
    full = run.tensor(name).value(step, mode)
    for spec in reductions:
        absolute = spec.startswith("abs_")
        red = spec[4:] if absolute else spec
        stored = run.tensor(reduction_tensor_name(name, red, absolute)).value(step, mode)
        expected = compute_reduction(full, red, absolute)
        assert stored.shape == expected.shape, (name, spec)
        assert stored.dtype == expected.dtype, (name, spec, stored.dtype, expected.dtype)
        if red == "histogram":  # bin edges may differ by one ulp at a boundary
            np.testing.assert_allclose(stored[-2:], expected[-2:], rtol=1e-12)
            assert stored[:-2].sum() == expected[:-2].sum()
            assert np.abs(stored[:-2] - expected[:-2]).sum() <= 2, (name, stored, expected)
        else:
            np.testing.assert_allclose(
                stored, expected, rtol=rtol, atol=1e-7, err_msg=f"{name} {spec}"
            )


def test_reductions_equal_compute_reduction_of_the_full_tensor(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        model.conv.bias[0] = 0.0  # a zero to count
    both = CollectionConfig(
        "both",
        include_regex=[r"relu_output", r"^conv\.weight$", r"^gradient/fc\.weight$", r"^fc\.bias$"],
        reductions=ALL,
        save_raw_tensor=True,
    )
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  collections=[both], default_collections_enabled=False):  # fmt: skip
        train(model, loss_fn, opt, batches(2, batch=16, size=12))
    run = open_run(tmp_path / "run")
    for name in ("relu_output_0", "relu_output_1", "conv.weight", "gradient/fc.weight", "fc.bias"):
        for step in (0, 1):
            _check_reductions(run, name, ALL, step)
    pf = run.tensor(reduction_tensor_name("relu_output_1", "positive_fraction")).value(1)
    assert pf.shape == (4 * 12 * 12,) and 0 < pf.mean() < 1


def test_default_reductions_match_too(tmp_path, tiny):
    model, loss_fn, opt = tiny
    raw = CollectionConfig("raw", include_regex=[r"relu_", r"weight", r"^gradient/"])
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  collections=[raw, CollectionConfig("relu_input")]):  # fmt: skip
        train(model, loss_fn, opt, batches(1))
    run = open_run(tmp_path / "run")
    _check_reductions(run, "relu_output_0", ["positive_fraction"], 0)
    _check_reductions(run, "relu_input_1", ["variance"], 0)
    _check_reductions(run, "conv2.weight", ["l2"], 0)
    _check_reductions(run, "gradient/conv2.weight", ["l2", "abs_mean"], 0)
    assert not run.has_tensor(reduction_tensor_name("relu_output_0", "zero_fraction"))


def test_positive_fractions_are_stored_as_uint8_counts_over_the_batch(tmp_path, tiny):
    """On disk a ReLU's positive fractions are fraction records: uint8 counts (a quarter of
    float32's bytes) with the batch size as their denominator, also for the smaller last
    batch; they read back as the float32 fractions of the full tensor, which a second
    recording of the same training saves."""

    from pytest_modelrules.store import layout
    from pytest_modelrules.store.format import parse_file_header, parse_records

    model, loss_fn, _ = tiny
    twin = copy.deepcopy(model)
    data = [*batches(2), *batches(1, batch=3, seed=1)]
    raw = CollectionConfig("raw", include_regex=[r"relu_output"])
    for net, out, extra in ((model, "run", []), (twin, "full", [raw])):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        with Recorder(tmp_path / out, net, loss=loss_fn, optimizer=opt, save_interval=1,
                      collections=extra or None):  # fmt: skip
            train(net, loss_fn, opt, data)
    run, full = open_run(tmp_path / "run"), open_run(tmp_path / "full")
    name = reduction_tensor_name("relu_output_0", "positive_fraction")
    assert not run.has_tensor("relu_output_0")
    for step in range(3):
        got = run.tensor(name).value(step)
        expected = compute_reduction(full.tensor("relu_output_0").value(step), "positive_fraction")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    path = next((tmp_path / "run" / layout.WORKERS_DIR / "worker_0" / "tensors").glob(
        "*positive_fraction*relu_output_0*"
    ))  # fmt: skip
    data = path.read_bytes()
    index = parse_records(data, str(path), parse_file_header(data, str(path)).data_offset)
    assert sorted(den for _, _, den in index.layouts) == [3, 8]
    assert {dtype for dtype, _, _ in index.layouts} == {np.dtype(np.uint8)}


def test_default_recording_saves_only_what_the_default_rules_read(tmp_path, tiny):
    """relu_output: positive_fraction only; relu_input: nothing, and no hook runs for it;
    the documented CollectionConfigs bring zero_fraction and relu_input variance back."""
    model, loss_fn, opt = tiny
    pre_hooks_seen = []
    real_register = torch.nn.Module.register_forward_pre_hook

    def spy(self, *args, **kwargs):
        if isinstance(self, torch.nn.ReLU):
            pre_hooks_seen.append(self)
        return real_register(self, *args, **kwargs)

    torch.nn.Module.register_forward_pre_hook = spy
    try:
        with Recorder(tmp_path / "default", model, loss=loss_fn, optimizer=opt,
                      save_interval=1):  # fmt: skip
            train(model, loss_fn, opt, batches(2))
    finally:
        torch.nn.Module.register_forward_pre_hook = real_register
    assert pre_hooks_seen == []  # relu_input saves nothing: no pre-hook on any ReLU
    run = open_run(tmp_path / "default")
    assert run.tensor_names(regex="relu_input") == []
    assert sorted(run.tensor_names(regex="relu_output")) == [
        reduction_tensor_name(f"relu_output_{k}", "positive_fraction") for k in (0, 1)
    ]
    asked = [
        CollectionConfig("relu_output", reductions=["positive_fraction", "zero_fraction"]),
        CollectionConfig("relu_input", save_interval=1),
    ]
    with Recorder(tmp_path / "asked", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  collections=asked):  # fmt: skip
        train(model, loss_fn, opt, batches(2))
    run = open_run(tmp_path / "asked")
    for k in (0, 1):
        assert run.tensor(reduction_tensor_name(f"relu_output_{k}", "zero_fraction")).steps() == [
            0,
            1,
        ]
        assert run.tensor(reduction_tensor_name(f"relu_input_{k}", "variance")).steps() == [0, 1]


def test_large_tensors_use_the_one_pass_variance(tmp_path):
    """Above 65,536 elements std/variance come from mean and l2 (no extra pass): exact to
    float32 summation when |mean| is not much larger than std, documented to degrade as
    (mean/std)^2 otherwise."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(400, 400), torch.nn.Linear(400, 400))
    with torch.no_grad():
        model[1].weight.add_(3.0)  # mean / std = 100
    raw = CollectionConfig("raw", include_regex=[r"weight$"], reductions=["std", "variance", "sum"],
                           save_raw_tensor=True)  # fmt: skip
    with Recorder(tmp_path / "run", model, save_interval=1, collections=[raw],
                  default_collections_enabled=False):  # fmt: skip
        model(torch.randn(2, 400))
    run = open_run(tmp_path / "run")
    _check_reductions(run, "0.weight", ["std", "variance", "sum"], 0, rtol=1e-5)
    _check_reductions(run, "1.weight", ["std"], 0, rtol=2e-2)


def test_frozen_backbone_transfer_learning(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("fc.")
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.5)
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=2):
        train(model, loss_fn, opt, batches(5))
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 2, 4]
    grads = run.collection("gradients").tensor_names
    assert {n for n in grads if not n.startswith(("smdebug/", "modelrules/"))} == {
        "gradient/fc.weight",
        "gradient/fc.bias",
    }
    assert not any("conv" in n for n in run.tensor_names(regex="gradient/"))
    for frozen in ("conv.weight", "conv.bias", "conv2.weight"):
        for red in ("l2",):
            values = run.tensor(reduction_tensor_name(frozen, red)).values()
            assert values[0] == values[2] == values[4], (frozen, red)
    head = run.tensor(reduction_tensor_name("fc.weight", "l2")).values()
    assert head[0] != head[2] != head[4]


def test_dataparallel_on_cpu_names_without_module_prefix(tmp_path):
    torch.manual_seed(0)
    inner = TinyNet()
    model = torch.nn.DataParallel(inner)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        train(model, loss_fn, opt, batches(2))
    run = open_run(tmp_path / "run")
    names = run.tensor_names()
    assert not any("module." in n for n in names)
    assert reduction_tensor_name("TinyNet_input_0", "sample_channel_mean") in names
    assert run.has_tensor(reduction_tensor_name("gradient/fc.weight", "l2"))
    assert run.has_tensor(reduction_tensor_name("relu_output_1", "positive_fraction"))
    assert run.steps() == [0, 1]


@pytest.mark.parametrize("path", ["inline", "offload", "offload, counted early", "kernel"])
def test_dataparallel_replicas_count_as_one_batch(tmp_path, monkeypatch, path):
    """DataParallel on several GPUs runs replicas of the model in threads, sharing its hooks:
    each ReLU call's positive fraction is still one tensor, over the whole batch, as without
    DataParallel (here replicas in threads on the CPU, ThreadedDataParallel), on the training
    thread, handed off (also with the queue counted at every ReLU call from the replicas'
    threads, past a 1-byte bound), and with the Triton kernel."""
    kwargs: dict = {}
    if path.startswith("offload"):
        kwargs["offload"] = True
        if "early" in path:
            from pytest_modelrules.capture import recorder as recorder_module

            monkeypatch.setattr(recorder_module, "RELU_QUEUE_BYTES", 1)
    elif path == "kernel":
        pytest.importorskip("triton")
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("the kernel runs on CPU tensors under Triton's interpreter only")
        kwargs["triton"] = True
    data = batches(3, batch=7)  # chunks of 4 and 3
    runs = {}
    for name, wrap in (("plain", lambda m: m), ("replicas", ThreadedDataParallel)):
        torch.manual_seed(0)
        model = wrap(TinyNet())
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = Recorder(
            tmp_path / name, model, loss=loss_fn, optimizer=opt, save_interval=1, **kwargs
        )
        with rec:
            train(model, loss_fn, opt, data)
        assert not rec.dead, rec.error
        runs[name] = open_run(tmp_path / name)
    plain, replicas = runs["plain"], runs["replicas"]
    relu = [n for n in replicas.tensor_names() if "relu_output" in n]
    assert relu == [n for n in plain.tensor_names() if "relu_output" in n]
    assert relu == [reduction_tensor_name(f"relu_output_{k}", "positive_fraction") for k in (0, 1)]
    for name in relu:
        assert replicas.tensor(name).steps() == [0, 1, 2]
        # step 0: the same weights; later steps' weights may differ in the last bits (the
        # replicas' gradients are summed in another order)
        np.testing.assert_array_equal(replicas.tensor(name).value(0), plain.tensor(name).value(0))
        for step in (1, 2):
            np.testing.assert_allclose(
                replicas.tensor(name).value(step), plain.tensor(name).value(step), atol=1 / 7
            )


def test_dataparallel_replicas_other_reductions_come_from_one_replica(tmp_path):
    """Reductions other than the positive fraction (here relu_input's variance) cannot be
    added up over replicas: each ReLU call keeps one tensor, from the first replica to make
    it, never a further call's name."""
    torch.manual_seed(0)
    model = ThreadedDataParallel(TinyNet())
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    collections = [CollectionConfig("relu_input")]
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  collections=collections) as rec:  # fmt: skip
        train(model, loss_fn, opt, batches(2, batch=6))
    assert not rec.dead, rec.error
    run = open_run(tmp_path / "run")
    inputs = [n for n in run.tensor_names() if "relu_input" in n]
    assert inputs == [reduction_tensor_name(f"relu_input_{k}", "variance") for k in (0, 1)]
    assert all(run.tensor(n).steps() == [0, 1] for n in inputs)


def test_a_copy_of_the_model_made_while_recording_is_not_recorded(tmp_path):
    """``copy.deepcopy`` of a hooked model (an EMA or teacher copy) copies the Recorder's
    hooks with it; its forward passes, before a step's or after it, are not the model's: the
    run is the one recorded without the copy, bit for bit."""

    runs = {}
    for name, use_copy in (("plain", False), ("with copy", True)):
        torch.manual_seed(0)
        model = TinyNet()
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with Recorder(tmp_path / name, model, loss=loss_fn, optimizer=opt, save_interval=1):
            teacher = copy.deepcopy(model) if use_copy else None
            for x, y in batches(3):
                if teacher is not None:
                    with torch.no_grad():
                        teacher(x)  # before the step's forward pass: it would open the step
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
                if teacher is not None:
                    with torch.no_grad():
                        loss_fn(teacher(x), y)
        runs[name] = run_values(tmp_path / name)
    assert {step for _, step in runs["plain"]} == {0, 1, 2}
    assert_same_values(runs["with copy"], runs["plain"])


@pytest.mark.parametrize("wrapped", [False, True], ids=["compile after", "record compiled"])
def test_a_compiled_model_records_what_the_eager_model_does(tmp_path, wrapped):
    """``torch.compile`` (the aot_eager backend: no C compiler needed), whether the Recorder
    gets the model and training calls the compiled one, or the Recorder gets the compiled
    wrapper: the same tensors at the same steps as without compiling, the same values to
    float32 rounding."""
    runs = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = TinyNet()
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        net = torch.compile(model, backend="aot_eager") if name == "compiled" else model
        recorded = net if wrapped else model
        with Recorder(
            tmp_path / name, recorded, loss=loss_fn, optimizer=opt, save_interval=1
        ) as rec:
            train(net, loss_fn, opt, batches(3))
        assert not rec.dead, rec.error
        runs[name] = run_values(tmp_path / name)
    assert {step for _, step in runs["eager"]} == {0, 1, 2}
    assert_same_values(runs["compiled"], runs["eager"], rtol=1e-5, atol=1e-6)


def test_saving_the_whole_model_while_recording_says_what_to_do(tmp_path):
    """``torch.save(model)`` pickles the model's hooks: while a Recorder's are attached it is
    one TypeError saying to save the state_dict (or close first), not "Can't pickle local
    object"; the state_dict saves, and after close the whole model does."""
    import io

    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1)
    train(model, loss_fn, opt, batches(1))  # the step's hooks are installed too
    with pytest.raises(TypeError, match=r"Recorder's hooks attached: save model.state_dict\(\)"):
        torch.save(model, io.BytesIO())
    torch.save(model.state_dict(), io.BytesIO())
    twin = copy.deepcopy(model)  # an EMA copy: it keeps the hooks, even after close
    rec.close()
    torch.save(model, io.BytesIO())
    with pytest.raises(TypeError, match=r"a copy.deepcopy of it .* keeps the hooks for good"):
        torch.save(twin, io.BytesIO())
    torch.save(twin.state_dict(), io.BytesIO())  # what the message says to do
    assert not rec.dead


@dataclasses.dataclass
class _LossAndLogits:
    loss: torch.Tensor
    logits: torch.Tensor
    note: str = "not a tensor"


class _DataclassLossNet(SelfLossNet):
    """SelfLossNet returning a dataclass, as many model libraries do."""

    def forward(self, x, y):
        return _LossAndLogits(*super().forward(x, y))


@pytest.mark.parametrize("returns", [SelfLossNet, _DataclassLossNet], ids=["tuple", "dataclass"])
def test_model_that_returns_its_own_loss(tmp_path, returns):
    """A model returning (loss, logits), as a tuple or a dataclass's fields in order: the
    0-d float output is the loss."""
    torch.manual_seed(0)
    model = returns()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    losses = []
    with Recorder(tmp_path / "run", model, optimizer=opt, save_interval=1):
        for _ in range(3):
            opt.zero_grad()
            out = model(x, y)
            loss = out[0] if isinstance(out, tuple) else out.loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    run = open_run(tmp_path / "run")
    name = returns.__name__
    assert run.tensor_names(collection="losses") == [f"{name}_output_0"]
    got = run.tensor(f"{name}_output_0").values(modes.TRAIN)
    np.testing.assert_allclose([got[s] for s in range(3)], losses, rtol=1e-6)
    assert run.tensor(f"{name}_output_1").value(0).shape == (8, 3)  # logits, in "outputs"
    np.testing.assert_array_equal(run.tensor(f"{name}_input_1").value(2), y.numpy())
    # a ReLU inside a Sequential is still found by smdebug's regex
    assert run.has_tensor(reduction_tensor_name("body.1.relu_output_0", "positive_fraction"))


def test_bf16_autocast_and_channels_last(tmp_path):
    torch.manual_seed(0)
    model = TinyNet().to(memory_format=torch.channels_last)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    full_relu = CollectionConfig(
        "relu_full", include_regex=["relu_output"], reductions=["positive_fraction"],
        save_raw_tensor=True,
    )  # fmt: skip
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  collections=[full_relu]):  # fmt: skip
        for x, y in batches(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x.contiguous(memory_format=torch.channels_last))
                loss = loss_fn(out, y)
            loss.backward()
            opt.step()
    run = open_run(tmp_path / "run")
    logits = run.tensor("CrossEntropyLoss_input_0").value(1)
    assert logits.dtype == np.float32 and logits.shape == (8, 5)  # bf16 stored as float32
    relu = run.tensor("relu_output_0").value(0)
    assert relu.dtype == np.float32 and relu.shape == (8, 4, 8, 8)
    _check_reductions(run, "relu_output_0", ["positive_fraction"], 0)
    assert np.isfinite(run.tensor(reduction_tensor_name("gradient/conv.weight", "l2")).value(1))


def test_metadata_and_collections_are_stored(tmp_path, tiny):
    model, loss_fn, opt = tiny
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt,
                  metadata={"recipe": {"lr": 0.1}}) as rec:  # fmt: skip
        rec.update_metadata(class_names=["a", "b", "c", "d", "e"])
        train(model, loss_fn, opt, batches(1))
    run = open_run(tmp_path / "run")
    assert run.class_names == ["a", "b", "c", "d", "e"]
    assert run.metadata["recipe"] == {"lr": 0.1}
    assert run.has_ended
    assert run.collection("losses").info["save_config"]["TRAIN"]["save_interval"] == 500


def test_compute_batch_equals_compute_reduction():
    from pytest_modelrules.capture.reductions import BATCHABLE, compute_batch

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 7, generator=gen), torch.zeros(3), torch.randn(300, 300, generator=gen),
          torch.randn(70_000, generator=gen).relu(), torch.full((4,), 2.5)]  # fmt: skip
    wanted = tuple(sorted(BATCHABLE))
    table = compute_batch(xs, wanted).numpy()
    assert table.shape == (len(wanted), len(xs))
    for r, (red, absolute) in enumerate(wanted):
        for k, x in enumerate(xs):
            expected = compute_reduction(x.numpy(), red, absolute)
            np.testing.assert_allclose(table[r, k], expected, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{red} abs={absolute} tensor {k}")  # fmt: skip


@pytest.mark.parametrize("fused", [False, True])
def test_compute_batch_default_reductions_in_any_order(fused):
    """The weight/gradient defaults (l2, abs_mean), small and large tensors in any order, on
    the segment path (CPU default) and the multi-tensor-norm path (CUDA default)."""
    from pytest_modelrules.capture.reductions import compute_batch

    gen = torch.Generator().manual_seed(1)
    xs = [
        torch.randn(300, 300, generator=gen),
        torch.randn(64, generator=gen) * 1e-3,
        torch.randn(80_000, generator=gen).relu(),
        torch.randn(3, 5, 7, generator=gen),
    ]
    for wanted in ((("l2", False),), (("l2", False), ("mean", True)), (("mean", True),)):
        table = compute_batch(xs, wanted, fused_norms=fused).numpy()
        assert table.shape == (len(wanted), len(xs)) and table.dtype == np.float64
        for r, (red, absolute) in enumerate(wanted):
            for k, x in enumerate(xs):
                expected = compute_reduction(x.numpy(), red, absolute)
                # a CPU float32 norm sums sequentially: ~1e-5 relative at 10^5 elements
                np.testing.assert_allclose(table[r, k], expected, rtol=1e-4 if fused else 1e-5,
                                           err_msg=f"{red} abs={absolute} tensor {k}")  # fmt: skip


def test_positive_fraction_is_k_over_n_rounded_to_float32():
    from pytest_modelrules.capture.reductions import compute_many

    gen = torch.Generator().manual_seed(2)
    for n in (1, 3, 7, 64, 100, 257):
        x = torch.randn(n, 4, 5, generator=gen)
        (got,) = compute_many(x, (("positive_fraction", False),))
        k = (x.numpy() > 0).sum(axis=0).reshape(-1)
        assert got.dtype == torch.float32 and got.shape == (20,)
        np.testing.assert_array_equal(got.numpy(), (k / n).astype(np.float32))
    (scalar,) = compute_many(torch.tensor(2.0), (("positive_fraction", False),))
    assert scalar.dtype == torch.float32 and float(scalar) == 1.0


@pytest.mark.parametrize(
    "dtype",
    [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.bool],
    ids=str,
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_positive_counts_count_values_above_zero_in_every_dtype_and_layout(dtype, layout):
    """The mask is written in the input's own dtype for floating inputs: the counts stay
    exactly numpy's (x > 0).sum(0) - NaN, -0.0 and 0 are not positive - as float32, laid out
    as the input is (the Recorder sends them in memory order)."""
    from pytest_modelrules.capture.reductions import positive_counts

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, 3, 5, generator=gen)
    if dtype.is_floating_point:
        x[0, 0, 0, :4] = torch.tensor([float("nan"), -0.0, 0.0, float("inf")])
        x = x.to(dtype)
    else:
        x = (x * 3).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    counts = positive_counts(x)
    expected = (x.double().numpy() > 0).sum(axis=0).astype(np.float32)
    assert counts.dtype == torch.float32 and counts.shape == (4, 3, 5)
    assert counts.stride() == x.gt(0).sum(0).stride()
    np.testing.assert_array_equal(counts.numpy(), expected)


def test_reductions_under_autocast_leave_it_as_it_was(tmp_path, tiny):
    model, loss_fn, opt = tiny
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1,
                  collections=[CollectionConfig("relu_input")]):  # fmt: skip
        for x, y in batches(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                assert torch.is_autocast_enabled("cpu")  # the hooks restored it
                assert out.dtype == torch.bfloat16
                loss = loss_fn(out, y)
            loss.backward()
            opt.step()
    assert not torch.is_autocast_enabled("cpu")
    run = open_run(tmp_path / "run")
    pf = run.tensor(reduction_tensor_name("relu_output_0", "positive_fraction")).value(1)
    assert pf.dtype == np.float32 and 0 < pf.mean() < 1
    var = run.tensor(reduction_tensor_name("relu_input_0", "variance")).value(1)
    assert var.dtype == np.float64 and var > 0


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_default_recording_stores_exactly_what_the_model_computed(tmp_path, channels_last):
    """The default path (a ReLU's positive fraction sent as counts and divided on the host, a
    channels_last batch's counts sent in memory order, bfloat16 logits sent as their bits,
    parameter norms as rows of scalars): every stored value equals the reference of the
    tensor the model produced, bit for bit where the reference is exact."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = TinyNet().to(memory_format=fmt)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {"relu": [], "logits": [], "labels": [], "loss": []}

    def keep_relu(module, args, out):
        seen["relu"].append(out.detach().clone())

    def keep_loss(module, args, out):
        seen["logits"].append(args[0].detach().clone())
        seen["labels"].append(args[1].clone())
        seen["loss"].append(out.detach().clone())

    model.relu.register_forward_hook(keep_relu)
    loss_fn.register_forward_hook(keep_loss)
    grads = []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        for x, y in batches(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x.contiguous(memory_format=fmt))
                assert out.dtype == torch.bfloat16
                loss = loss_fn(out, y)
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
    run = open_run(tmp_path / "run")
    for step in (0, 1):
        for k in (0, 1):  # the ReLU module is called twice a step
            relu = seen["relu"][2 * step + k]
            assert relu.is_contiguous(memory_format=fmt)
            stored = run.tensor(reduction_tensor_name(f"relu_output_{k}", "positive_fraction"))
            expected = compute_reduction(relu.float().numpy(), "positive_fraction")
            got = stored.value(step)
            assert got.dtype == np.float32 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
        logits = run.tensor("CrossEntropyLoss_input_0").value(step)
        assert logits.dtype == np.float32
        np.testing.assert_array_equal(logits, seen["logits"][step].float().numpy())
        labels = run.tensor("CrossEntropyLoss_input_1").value(step)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, seen["labels"][step].numpy())
        np.testing.assert_array_equal(
            run.tensor("CrossEntropyLoss_output_0").value(step), seen["loss"][step].numpy()
        )
        for pname, grad in grads[step].items():
            for red, absolute in (("l2", False), ("mean", True)):
                tname = reduction_tensor_name(f"gradient/{pname}", red, absolute)
                stored = run.tensor(tname).value(step)
                assert stored.dtype == np.float64 and stored.shape == ()
                expected = compute_reduction(grad.numpy(), red, absolute)
                np.testing.assert_allclose(stored, expected, rtol=1e-5)


def test_a_reductions_only_step_makes_one_transfer_per_device(tmp_path, tiny, monkeypatch):
    """Every value of a step - reductions of each dtype and full tensors - leaves the device
    in one buffer: one host copy a step (here: one .cpu() of a uint8 buffer)."""
    model, loss_fn, opt = tiny
    copies = []
    real_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(self.dtype)
        return real_cpu(self, *args, **kwargs)

    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
        train(model, loss_fn, opt, batches(3))
        monkeypatch.undo()
    assert copies == [torch.uint8] * 3
    run = open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2]
    assert run.tensor("CrossEntropyLoss_input_1").value(2).dtype == np.int64


def test_unit_counts_come_back_in_c_order_from_any_layout():
    """Whatever the batch's memory layout (contiguous, channels_last, another dense order,
    batch not outermost, strided, empty), the counts travel flat in C order and the stored
    value is counts / n: numpy's (x > 0).mean(0), NaN for an empty batch. They are stored as
    uint8 counts over n (a fraction record), which a reader divides."""
    from pytest_modelrules.capture.host import add_fractions as _add_fractions
    from pytest_modelrules.capture.host import unpack as _unpack
    from pytest_modelrules.capture.recorder import _unit_counts
    from pytest_modelrules.store.format import Fraction, fraction_values

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, 6, 4, 5, generator=gen)
    cases = [
        x,
        x.contiguous(memory_format=torch.channels_last),
        x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),
        x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
        x[:, ::2],
        torch.randn(9, 3, generator=gen),
        torch.randn(9, generator=gen),
        torch.randn(0, 3, 2),
        torch.randn(9, 0, 2),
    ]
    for batch in cases:
        flat, layout = _unit_counts(batch, "t")
        assert flat.ndim == 1 and flat.dtype == torch.float32 and flat.is_contiguous()
        arrays: list = []
        counts: dict = {}
        _unpack(layout, flat.numpy(), arrays, [], counts)
        _add_fractions(arrays, counts)
        ((name, stored),) = arrays
        assert isinstance(stored, Fraction) and stored.counts.dtype == np.uint8
        assert stored.denominator == batch.shape[0]
        got = fraction_values(stored.counts, stored.denominator)
        n = np.float32(batch.shape[0])
        k = (batch.numpy() > 0).sum(axis=0).reshape(-1).astype(np.float32)
        with np.errstate(invalid="ignore"):
            expected = (k / n).astype(np.float32)
        assert name == "t" and got.dtype == np.float32, batch.shape
        np.testing.assert_array_equal(got, expected, err_msg=str(batch.shape))


def test_sample_channel_mean_equals_the_reference_in_any_layout():
    from pytest_modelrules.capture.reductions import compute_many

    gen = torch.Generator().manual_seed(3)
    cases = [
        torch.randn(4, 3, 5, 6, generator=gen),
        torch.randn(4, 3, 5, 6, generator=gen).contiguous(memory_format=torch.channels_last),
        torch.randn(2, 3, 4, 5, 6, generator=gen),
        torch.randn(4, 7, generator=gen),
        torch.randn(5, generator=gen),
        torch.randn(4, 3, 0, 2),
        torch.randn(0, 3),
        torch.randn(4, 3, 5, 6, generator=gen).to(torch.bfloat16),
    ]
    for x in cases:
        (got,) = compute_many(x, (("sample_channel_mean", False),))
        expected = compute_reduction(x.float().numpy(), "sample_channel_mean")
        assert got.dtype == torch.float64 and tuple(got.shape) == expected.shape, x.shape
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, err_msg=str(x.shape))


class _BigFirst(torch.nn.Module):
    """A large weight (over 65,536 elements: reduced apart from the small ones) before small
    ones, and a frozen layer in the middle."""

    def __init__(self) -> None:
        super().__init__()
        self.big = torch.nn.Linear(300, 300)
        self.frozen = torch.nn.Linear(300, 20)
        self.head = torch.nn.Linear(20, 5)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.relu(self.frozen(torch.relu(self.big(x)))))


@pytest.mark.parametrize(
    "fused,kernel", [(False, False), (True, False), (True, True)],
    ids=["cpu-path", "gpu-path", "gpu-path-triton-norms"],
)  # fmt: skip
def test_parameter_norms_are_stored_under_their_own_names(
    tmp_path, monkeypatch, request, fused, kernel
):
    from pytest_modelrules.capture import reductions

    if fused:
        monkeypatch.setattr(reductions, "FUSED_NORM_DEVICES", {"cuda", "cpu"})
    launched = []
    if kernel:  # the Triton norms kernel, interpreted on the CPU (tests/conftest.py)
        pytest.importorskip("triton")
        launched = request.getfixturevalue("norm_calls")
    torch.manual_seed(0)
    model = _BigFirst()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    gen = torch.Generator().manual_seed(1)
    weights, grads = [], []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        for _ in range(2):
            weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
            opt.zero_grad()
            x, y = torch.randn(4, 300, generator=gen), torch.randint(0, 5, (4,), generator=gen)
            loss_fn(model(x), y).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})  # fmt: skip
            opt.step()
    run = open_run(tmp_path / "run")
    assert set(grads[0]) == {"big.weight", "big.bias", "head.weight", "head.bias"}
    for step in (0, 1):
        for name, value in weights[step].items():
            stored = run.tensor(reduction_tensor_name(name, "l2")).value(step)
            expected = compute_reduction(value.numpy(), "l2")
            np.testing.assert_allclose(stored, expected, rtol=1e-5, err_msg=name)
        for name, grad in grads[step].items():
            for red, absolute in (("l2", False), ("mean", True)):
                tname = reduction_tensor_name(f"gradient/{name}", red, absolute)
                expected = compute_reduction(grad.numpy(), red, absolute)
                np.testing.assert_allclose(run.tensor(tname).value(step), expected, rtol=1e-5,
                                           err_msg=tname)  # fmt: skip
    assert not run.has_tensor(reduction_tensor_name("gradient/frozen.weight", "l2"))
    # one call per step for the 6 weights and biases (the frozen layer's too), one for the 4
    # gradients: every norm of a group from one call
    assert launched == ([6, 4] * 2 if kernel else [])
    if fused and not kernel:  # the host's division of the 1-norms: the device's abs_mean
        from pytest_modelrules.capture.reductions import compute_batch

        for step in (0, 1):
            for name, grad in grads[step].items():
                tname = reduction_tensor_name(f"gradient/{name}", "mean", True)
                device = compute_batch([grad], (("mean", True),), fused_norms=True)
                assert run.tensor(tname).value(step) == device.item(), tname


class _ManyDtypes(torch.nn.Module):
    """Returns tensors of many dtypes (stored in full: a model without a loss module)."""

    def forward(self, x):
        outs = [
            x.to(torch.bfloat16), x.to(torch.float16), x > 0, (x * 10).to(torch.int8),
            (x * 1000).to(torch.int64), torch.complex(x, -x),
            x.contiguous(memory_format=torch.channels_last), x[:, :, ::2],
        ]  # fmt: skip
        if hasattr(torch, "float8_e4m3fn"):
            outs.append(x.to(torch.float8_e4m3fn))
        return tuple(outs)


def test_full_tensors_of_every_dtype_come_back_exactly(tmp_path):
    """One byte buffer carries every dtype; the host reads each back (bfloat16 and float8 as
    float32, exactly; channels_last and strided tensors in C order)."""
    model = _ManyDtypes()
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(2, 3, 4, 4, generator=gen) for _ in range(2)]
    expected = []
    with Recorder(tmp_path / "run", model, save_interval=1) as rec:
        for x in xs:
            expected.append(model(x))
    assert not rec.dead
    run = open_run(tmp_path / "run")
    for step, outs in enumerate(expected):
        for i, value in enumerate(outs):
            got = run.tensor(f"_ManyDtypes_output_{i}").value(step)
            if value.dtype in (torch.bfloat16,) or "float8" in str(value.dtype):
                want = value.float().numpy()
            else:
                want = value.contiguous().numpy()
            assert got.dtype == want.dtype and got.shape == want.shape, (i, value.dtype)
            np.testing.assert_array_equal(got, want, err_msg=str(value.dtype))


def test_a_complex_parameter_has_its_true_norms_and_no_warning(tmp_path, recwarn):
    """Reductions of a complex tensor read its magnitudes: the l2 of a complex weight and of
    its gradient are the true norms (a cast to a real dtype would keep the real parts, with
    torch's warning in the user's training)."""

    class Spectral(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc((x.to(torch.complex64) @ self.w.T.conj() @ self.w).abs())

    torch.manual_seed(0)
    model = Spectral()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights, grads = [], []
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        for _ in range(2):
            opt.zero_grad()
            weights.append(torch.linalg.vector_norm(model.w).item())
            loss_fn(model(torch.randn(5, 3)), torch.tensor([0, 1, 0, 1, 1])).backward()
            grads.append(torch.linalg.vector_norm(model.w.grad).item())
            opt.step()
    assert not [w for w in recwarn if "imaginary" in str(w.message)]
    run = open_run(tmp_path / "run")
    for step in range(2):
        got = run.tensor(reduction_tensor_name("w", "l2")).value(step)
        np.testing.assert_allclose(got, weights[step], rtol=1e-5)
        got = run.tensor(reduction_tensor_name("gradient/w", "l2")).value(step)
        np.testing.assert_allclose(got, grads[step], rtol=1e-5)
    # the host's reference reduction agrees: |3+4j| = 5
    assert float(compute_reduction(np.array([3 + 4j, 0j]), "l2")) == 5.0
    assert float(compute_reduction(np.array([3 + 4j, 0j]), "mean", abs=True)) == 2.5


@pytest.mark.parametrize(
    "fused,kernel", [(False, False), (True, False), (True, True)],
    ids=["cpu-path", "gpu-path", "gpu-path-triton-norms"],
)  # fmt: skip
def test_a_sparse_gradient_is_reduced_as_its_dense_value(
    tmp_path, monkeypatch, request, fused, kernel
):
    """Embedding(sparse=True) gives a sparse COO gradient: its l2 and abs_mean are those of
    the dense gradient it stands for (the norms kernel declines it), and recording goes on."""
    from pytest_modelrules.capture import reductions

    if fused:
        monkeypatch.setattr(reductions, "FUSED_NORM_DEVICES", {"cuda", "cpu"})
    if kernel:
        pytest.importorskip("triton")
        request.getfixturevalue("norm_calls")
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 4, sparse=True)
    fc = torch.nn.Linear(4, 3)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc = emb, fc

        def forward(self, ids):
            return self.fc(self.emb(ids).mean(1))

    net = Net()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    dense = []
    with Recorder(tmp_path / "run", net, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        for _ in range(2):
            opt.zero_grad()
            loss_fn(net(torch.randint(0, 50, (6, 5))), torch.randint(0, 3, (6,))).backward()
            assert emb.weight.grad.is_sparse
            dense.append(emb.weight.grad.to_dense())
            opt.step()
    assert not rec.dead, rec.error
    run = open_run(tmp_path / "run")
    for step in range(2):
        got = run.tensor(reduction_tensor_name("gradient/emb.weight", "l2")).value(step)
        np.testing.assert_allclose(got, float(dense[step].norm()), rtol=1e-5)
        got = run.tensor(reduction_tensor_name("gradient/emb.weight", "mean", True)).value(step)
        np.testing.assert_allclose(got, float(dense[step].abs().mean()), rtol=1e-5)
