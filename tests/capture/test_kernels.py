"""The optional Triton kernels (capture/kernels.py), run by Triton's interpreter on the CPU:
the ReLU positive counts must be exactly what the torch operations count, in C order, the
parameter norms the multi-tensor norms within float32 rounding, for the layouts they read;
they must decline the others, and never stop a recording when they fail."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from capture_helpers import TinyNet, batches
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelrules import Recorder, open_run
from pytest_modelrules.store.names import reduction_tensor_name

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from pytest_modelrules.capture import kernels  # noqa: E402


@pytest.fixture(scope="module")
def interpreted():
    """Triton's interpreter, on CPU tensors (tests/conftest.py chooses it for the session)."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 was overridden: these tests run the kernel on the CPU")


def _expected(xs: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([(x.double().numpy() > 0).sum(axis=0).reshape(-1) for x in xs]).astype(
        np.int64
    )


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    specials = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf")])
    k = min(specials.numel(), x.numel())
    x.view(-1)[:k] = specials[:k]
    return x


_CASES = [
    ((5, 3000), torch.contiguous_format),  # more units than one program's tile
    ((5, 7, 9, 11), torch.contiguous_format),
    ((5, 70, 9, 11), torch.channels_last),  # odd channel and spatial sizes
    ((3, 130, 2, 3, 4), torch.channels_last_3d),
    ((2, 3, 1, 1), torch.channels_last),
    ((1, 1, 5, 5), torch.channels_last),
    ((4, 8, 40, 40), torch.channels_last),  # spatial over several tiles
    ((2, 64, 48, 48), torch.channels_last),  # a larger layer
    ((2, 300_000), torch.contiguous_format),
]


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str
)
@pytest.mark.parametrize("shape,layout", _CASES, ids=str)
def test_counts_equal_numpy_in_c_order(interpreted, dtype, shape, layout):
    gen = torch.Generator().manual_seed(sum(shape))
    x = _with_specials(torch.randn(shape, generator=gen)).to(dtype).contiguous(memory_format=layout)
    assert kernels.readable(x)
    got = kernels.positive_counts_c_order([x])
    assert got.dtype == torch.uint8 and got.shape == (x[0].numel(),)
    np.testing.assert_array_equal(got.numpy(), _expected([x]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_one_launch_counts_every_batch_at_its_offset(interpreted, dtype):
    """All the cases above in one call (one launch): each batch's counts at its offset, in
    the order given, whatever the neighbours' layouts and sizes."""
    gen = torch.Generator().manual_seed(1)
    xs = [
        _with_specials(torch.randn((2, *shape[1:]), generator=gen))
        .to(dtype)
        .contiguous(memory_format=layout)
        for shape, layout in _CASES
    ]
    got = kernels.positive_counts_c_order(xs)
    np.testing.assert_array_equal(got.numpy(), _expected(xs))


def test_more_batches_than_one_launch_takes(interpreted, monkeypatch):
    monkeypatch.setattr(kernels, "MAX_BATCHES", 2)
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(3, k + 1, 4, 4, generator=gen) for k in range(5)]
    xs[1] = xs[1].contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(kernels.positive_counts_c_order(xs).numpy(), _expected(xs))


@pytest.mark.parametrize("batch,dtype", [(255, torch.uint8), (256, torch.int16)], ids=str)
def test_counts_come_in_the_narrowest_dtype_that_holds_the_batch(interpreted, batch, dtype):
    """uint8 up to 255 samples (a quarter of float32's bytes to move), then int16, int32; the
    count of a unit positive in every sample is the batch size itself."""
    x = torch.ones(batch, 2)
    x[0, 1] = -1.0
    got = kernels.positive_counts_c_order([x])
    assert got.dtype == dtype == kernels.count_dtype(batch)
    assert got.tolist() == [batch, batch - 1]
    assert kernels.count_dtype(32767) == torch.int16 and kernels.count_dtype(32768) == torch.int32


def test_counts_launch_table_is_kept_while_the_batches_stay_in_place(interpreted):
    """Batches at the same places (a caching allocator's next step) reuse the launch table
    (no new table, no copy to the device), and the counts follow their values; batches
    elsewhere get a table of their own."""
    gen = torch.Generator().manual_seed(8)
    xs = [torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 70, generator=gen)]
    kernels._TABLES.clear()
    first = kernels.positive_counts_c_order(xs)
    assert len(kernels._TABLES) == 1
    table = next(iter(kernels._TABLES.values()))[0]
    with torch.no_grad():
        for x in xs:
            x.neg_()
    second = kernels.positive_counts_c_order(xs)
    assert len(kernels._TABLES) == 1 and next(iter(kernels._TABLES.values()))[0] is table
    np.testing.assert_array_equal(second.numpy(), _expected(xs))
    assert not np.array_equal(second.numpy(), first.numpy())
    moved = [x.clone() for x in xs]
    np.testing.assert_array_equal(kernels.positive_counts_c_order(moved).numpy(), _expected(xs))
    assert len(kernels._TABLES) == 2


def test_layouts_and_dtypes_it_does_not_read_are_declined(interpreted):
    x = torch.randn(4, 6, 5, 3)
    for declined in (
        x[:, ::2],  # strided
        x.permute(1, 0, 2, 3),  # batch not outermost
        torch.ones(4, 3, dtype=torch.int32),
        torch.ones(4, 3, dtype=torch.bool),
        torch.randn(5),  # no unit dimension
        torch.randn(0, 3),
        torch.randn(4, 0, 2),
    ):
        assert not kernels.readable(declined)
        with pytest.raises(ValueError, match="not one the kernel reads"):
            kernels.positive_counts_c_order([x, declined])


def test_one_launch_takes_one_dtype_and_device(interpreted):
    with pytest.raises(ValueError, match="one device and dtype"):
        kernels.positive_counts_c_order([torch.randn(2, 3), torch.randn(2, 3).double()])
    with pytest.raises(ValueError, match="at least one batch"):
        kernels.positive_counts_c_order([])


# -- multi-tensor norms ------------------------------------------------------------------------


def _norms64(xs: list[torch.Tensor]) -> np.ndarray:
    """The 2-norms and 1-norms of ``xs`` in float64 (the reference)."""
    return np.array(
        [[x.double().norm(p).item() for x in xs] for p in (2, 1)], dtype=np.float64
    ).reshape(2, len(xs))


def _norm_shapes() -> list[tuple[int, ...]]:
    chunk = kernels._NORM_CHUNK  # elements a program reduces
    return [
        (3,),  # less than one tile
        (chunk,),  # exactly one chunk (its loads unmasked)
        (chunk + 1,),  # a chunk and one element
        (64, 3, 7, 7),
        (3, chunk - 5),  # several chunks and a partial one
        (0,),  # empty: both norms 0
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_norms_equal_float64_norms(interpreted, dtype):
    """One call gives both norms of every tensor, in order, in float32, within float32's
    rounding of the exact (float64) norms, whatever the sizes: under a tile, exactly a
    chunk, a chunk and an element, several chunks, empty, and a channels_last tensor."""
    gen = torch.Generator().manual_seed(3)
    shapes = _norm_shapes()
    xs = [torch.randn(shape, generator=gen).to(dtype) for shape in shapes]
    image = torch.randn(5, 6, 7, 8, generator=gen).to(dtype)
    xs.append(image.to(memory_format=torch.channels_last))
    assert kernels.norms_readable(xs)
    got = kernels.multi_norms(xs)
    assert got.dtype == torch.float32 and got.shape == (2, len(xs))
    np.testing.assert_allclose(got.double().numpy(), _norms64(xs), rtol=2e-6, atol=0)
    assert got[:, shapes.index((0,))].tolist() == [0.0, 0.0]


def test_norms_agree_with_the_multi_tensor_norms_they_replace(interpreted):
    """Within float32 rounding of ``torch.stack(torch._foreach_norm(xs, p))``, the rows the
    Recorder stored before, for a ResNet-like list of parameters, and no further from the
    exact norms than they are (the chunks' sums are added in float64); exact where the
    float32 sums are."""
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(s, generator=gen) for s in [(64, 3, 7, 7), (64,), (64,), (128, 64, 3, 3)]]
    xs.append(torch.tensor([3.0, 4.0]))
    got = kernels.multi_norms(xs).double().numpy()
    exact = _norms64(xs)
    for row, p in enumerate((2, 1)):
        before = torch.stack(torch._foreach_norm(xs, p)).double().numpy()
        np.testing.assert_allclose(got[row], before, rtol=1e-5, atol=0)
        assert (abs(got[row] - exact[row]) <= abs(before - exact[row]) + 1e-7 * exact[row]).all()
    assert got[:, -1].tolist() == [5.0, 7.0]


def test_batch_rows_take_the_kernels_norms(interpreted):
    """``compute_batch_rows(..., norms=multi_norms(xs))`` on the fused path: the l2 row is
    the kernel's, abs_mean its 1-norms over each tensor's size (in float64, or left as the
    1-norms with ``sums_for_means``), all within float32 rounding of the torch path."""
    from pytest_modelrules.capture.reductions import compute_batch_rows

    gen = torch.Generator().manual_seed(7)
    xs = [torch.randn(s, generator=gen) for s in [(64, 3, 7, 7), (64,), (300, 300)]]
    wanted = (("l2", False), ("mean", True))
    norms = kernels.multi_norms(xs)
    l2, abs_mean = compute_batch_rows(xs, wanted, fused_norms=True, norms=norms)
    assert torch.equal(l2, norms[0])
    numels = torch.tensor([x.numel() for x in xs], dtype=torch.float64)
    assert abs_mean.dtype == torch.float64
    torch.testing.assert_close(abs_mean, norms[1].double() / numels, rtol=0, atol=0)
    sums = compute_batch_rows(xs, wanted, fused_norms=True, sums_for_means=True, norms=norms)[1]
    assert torch.equal(sums, norms[1])
    for got, before in zip((l2, abs_mean), compute_batch_rows(xs, wanted, fused_norms=True)):
        torch.testing.assert_close(got.double(), before.double(), rtol=1e-5, atol=0)


def test_norms_of_more_tensors_than_one_launch_takes(interpreted, monkeypatch):
    """Past MAX_NORM_TENSORS the tensors go in several launches; each lands in its column."""
    monkeypatch.setattr(kernels, "MAX_NORM_TENSORS", 3)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(10 * (i + 1), generator=gen) for i in range(8)]
    got = kernels.multi_norms(xs)
    np.testing.assert_allclose(got.double().numpy(), _norms64(xs), rtol=2e-6)


def test_norms_launch_table_is_kept_while_the_tensors_stay_in_place(interpreted):
    """The launch table (addresses and sizes) is built once for tensors that stay where they
    are, as parameters do, and the norms follow their values changed in place; tensors
    elsewhere get a table of their own."""
    gen = torch.Generator().manual_seed(6)
    xs = [torch.randn(100, generator=gen), torch.randn(2 * kernels._NORM_CHUNK, generator=gen)]
    kernels._TABLES.clear()
    first = kernels.multi_norms(xs)
    table = next(iter(kernels._TABLES.values()))[0]
    with torch.no_grad():
        xs[1].mul_(2)
    second = kernels.multi_norms(xs)
    assert len(kernels._TABLES) == 1
    assert next(iter(kernels._TABLES.values()))[0] is table
    torch.testing.assert_close(second[:, 1], 2 * first[:, 1], rtol=1e-6, atol=0)
    moved = [x.clone() for x in xs]
    np.testing.assert_allclose(kernels.multi_norms(moved).numpy(), second.numpy(), rtol=1e-6)
    assert len(kernels._TABLES) == 2


def test_norms_decline_what_they_do_not_read(interpreted):
    """Strided and sparse tensors, tensor subclasses, float64 and integer dtypes, mixed
    dtypes and an empty list are not read (the Recorder uses torch operations for them);
    asked anyway, one ValueError. Parameters are read."""
    x = torch.randn(4, 6)

    class Sub(torch.Tensor):  # a subclass (a DTensor's memory is one shard, say)
        pass

    for declined in (
        [x[:, ::2]],
        [x.to_sparse()],
        [x.as_subclass(Sub)],
        [x.double()],
        [torch.ones(3, dtype=torch.int32)],
        [x, x.half()],
        [],
    ):
        assert not kernels.norms_readable(declined)
        with pytest.raises(ValueError, match="dense float32, float16 or bfloat16"):
            kernels.multi_norms(declined)
    image = torch.randn(2, 3, 4, 5)
    assert kernels.norms_readable([image, image.to(memory_format=torch.channels_last)])
    assert kernels.norms_readable([torch.nn.Parameter(x), x])


def _record(tmp_path, name, channels_last=True, **recorder_kwargs):
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    rec = Recorder(
        tmp_path / name, model, loss=loss_fn, optimizer=opt, save_interval=1, **recorder_kwargs
    )
    with rec:
        for x, y in batches(2):
            opt.zero_grad()
            loss_fn(model(x.contiguous(memory_format=fmt)), y).backward()
            opt.step()
    run = open_run(tmp_path / name)
    return {
        (k, step): run.tensor(reduction_tensor_name(f"relu_output_{k}", "positive_fraction")).value(
            step
        )
        for k in (0, 1)
        for step in (0, 1)
    }


@pytest.fixture
def launches(monkeypatch) -> list[list[tuple[int, ...]]]:
    """The kernel switched on for CPU tensors; its launches, each the shapes it counted."""
    seen: list[list[tuple[int, ...]]] = []
    real = kernels.positive_counts_c_order

    def counted(xs, **kwargs):
        seen.append([tuple(x.shape) for x in xs])
        return real(xs, **kwargs)

    monkeypatch.setattr(kernels, "positive_counts_c_order", counted)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    return seen


def _record_with_torch(tmp_path, name, channels_last=True):
    """:func:`_record` with the torch operations counting (the reference)."""
    on = set(kernels.COUNT_KERNEL_DEVICES)
    kernels.COUNT_KERNEL_DEVICES.clear()
    try:
        return _record(tmp_path, name, channels_last)
    finally:
        kernels.COUNT_KERNEL_DEVICES.update(on)


@pytest.mark.parametrize("channels_last", [True, False])
def test_recorder_with_the_kernel_stores_what_the_torch_operations_store(
    interpreted, tmp_path, launches, channels_last
):
    """Bit for bit the torch path's values, from one launch per step for all its ReLU calls
    (here two calls of one module per step, two steps)."""
    reference = _record_with_torch(tmp_path, "torch", channels_last)
    got = _record(tmp_path, "kernel", channels_last)
    assert launches == [[(8, 4, 8, 8), (8, 4, 8, 8)]] * 2
    for key, value in reference.items():
        assert got[key].dtype == value.dtype == np.float32
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_triton_argument_overrides_the_module_sets_for_one_recorder(
    interpreted, tmp_path, monkeypatch
):
    """``Recorder(triton=True)`` launches the kernel with the module's set empty,
    ``triton=False`` never does with it on; both store the torch path's values, and
    neither touches the module's set."""
    seen: list[int] = []
    real = kernels.positive_counts_c_order

    def counted(xs, **kwargs):
        seen.append(len(xs))
        return real(xs, **kwargs)

    monkeypatch.setattr(kernels, "positive_counts_c_order", counted)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", set())
    reference = _record(tmp_path, "torch")
    assert seen == []
    got = _record(tmp_path, "on", triton=True)
    assert seen == [2, 2]  # one launch a step for both ReLU calls
    assert not kernels.COUNT_KERNEL_DEVICES
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    off = _record(tmp_path, "off", triton=False)
    assert seen == [2, 2] and set(kernels.COUNT_KERNEL_DEVICES) == {"cpu"}
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))
        np.testing.assert_array_equal(off[key], value, err_msg=str(key))


def test_triton_true_on_a_cuda_only_setup_leaves_cpu_tensors_to_torch(tmp_path, monkeypatch):
    """Without Triton's interpreter the kernel runs on CUDA devices only: a CPU model with
    ``triton=True`` is counted by the torch operations, with no failed launch and no
    warning."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(kernels, "positive_counts_c_order", lambda xs, **kw: 1 / 0)
    reference = _record_with_torch(tmp_path, "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _record(tmp_path, "cuda-only", triton=True)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_triton_true_without_triton_is_refused(tmp_path, monkeypatch):
    import importlib.util

    from pytest_modelrules.exceptions import RecorderError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    with pytest.raises(RecorderError, match=r"triton=True .* Triton is not installed"):
        Recorder(tmp_path / "run", TinyNet(), triton=True)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_failing_kernel_of_one_recorder_is_switched_off_for_that_recorder(
    interpreted, tmp_path, monkeypatch
):
    """With ``triton=True`` a kernel that fails is switched off for that Recorder (one
    warning, the torch operations' values), not in the module's set."""
    reference = _record_with_torch(tmp_path, "torch")
    monkeypatch.setattr(kernels, "positive_counts_c_order", lambda xs, **kw: 1 / 0)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _record(tmp_path, "fallback", triton=True)
    messages = [str(w.message) for w in caught if "Triton positive-count kernel" in str(w.message)]
    assert len(messages) == 1 and "ZeroDivisionError" in messages[0]
    assert set(kernels.COUNT_KERNEL_DEVICES) == {"cpu"}
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_the_queue_is_counted_early_past_its_byte_limit(
    interpreted, tmp_path, monkeypatch, launches
):
    """Under activation checkpointing nothing else keeps a ReLU output alive: what the Recorder
    holds for the one launch is bounded (RELU_QUEUE_BYTES), past it the queue is counted at
    once, with the same values."""
    from pytest_modelrules.capture import recorder as recorder_module

    reference = _record_with_torch(tmp_path, "torch")
    one_output = 8 * 4 * 8 * 8 * 4  # bytes of one TinyNet ReLU output (float32)
    monkeypatch.setattr(recorder_module, "RELU_QUEUE_BYTES", one_output)
    got = _record(tmp_path, "bounded")
    # the second output passes the limit: counted at its call
    assert [len(shapes) for shapes in launches] == [2, 2]
    monkeypatch.setattr(recorder_module, "RELU_QUEUE_BYTES", one_output - 1)
    launches.clear()
    got_each = _record(tmp_path, "each")
    assert [len(shapes) for shapes in launches] == [1, 1, 1, 1]
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))
        np.testing.assert_array_equal(got_each[key], value, err_msg=str(key))


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_evaluation_outputs_are_counted_by_the_kernel_too(interpreted, tmp_path, launches, context):
    """Under no_grad (evaluation, a frozen backbone) the outputs are queued like any other
    (the queue is bounded, not autograd); inference-mode tensors have no version counter to
    check, so each is counted at its call. The values are the reference's either way."""
    model = TinyNet()
    ((x, _),) = batches(1)
    with Recorder(tmp_path / "eval", model, save_interval=1) as rec:
        rec.set_mode("EVAL")
        with getattr(torch, context)():
            model(x)
    assert [len(shapes) for shapes in launches] == ([2] if context == "no_grad" else [1, 1])
    run = open_run(tmp_path / "eval")
    with torch.no_grad():
        first = torch.relu(model.conv(x))
        second = torch.relu(model.conv2(first))
    for k, out in enumerate((first, second)):
        name = reduction_tensor_name(f"relu_output_{k}", "positive_fraction")
        expected = (out > 0).float().mean(0).reshape(-1).numpy()
        np.testing.assert_array_equal(run.tensor(name).value(0, mode="EVAL"), expected)


def test_an_output_changed_in_place_after_its_relu_is_counted_at_its_call_from_then_on(
    interpreted, tmp_path, monkeypatch
):
    """Counting at the end of the forward pass would read values changed since the ReLU: such
    an output is left out of that step, with one warning, and counted at its call from the
    next step on; the other ReLU calls are recorded at every step."""

    class Changes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.first = torch.nn.ReLU()
            self.second = torch.nn.ReLU()

        def forward(self, x):
            h = self.first(self.lin(x))
            h.sub_(1.0)  # after the ReLU (in training autograd would refuse backward)
            return self.second(h)

    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    model = Changes()
    x = torch.randn(6, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run", model, save_interval=1), torch.no_grad():
            for _ in range(3):
                model(x)
    messages = [str(w.message) for w in caught if "changed in place" in str(w.message)]
    assert len(messages) == 1 and "first.relu_output_0" in messages[0]
    assert "global step 0" in messages[0]
    run = open_run(tmp_path / "run")
    first = run.tensor(reduction_tensor_name("first.relu_output_0", "positive_fraction"))
    second = run.tensor(reduction_tensor_name("second.relu_output_0", "positive_fraction"))
    assert second.steps() == [0, 1, 2] and first.steps() == [1, 2]
    with torch.no_grad():
        expected = (torch.relu(model.lin(x)) > 0).float().mean(0).numpy()
    np.testing.assert_array_equal(first.value(1), expected)


def test_a_failing_kernel_is_switched_off_and_recording_goes_on(tmp_path, monkeypatch):
    """A kernel that cannot compile or launch: one warning, switched off, and the same values
    from the torch operations."""
    reference = _record(tmp_path, "torch")

    def broken(xs, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernels, "positive_counts_c_order", broken)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _record(tmp_path, "fallback")
    messages = [str(w.message) for w in caught if "Triton positive-count kernel" in str(w.message)]
    assert len(messages) == 1 and "no compiler here" in messages[0]
    assert not kernels.COUNT_KERNEL_DEVICES
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_a_failing_kernel_under_warnings_as_errors_still_records(tmp_path, monkeypatch):
    """Under -W error the warning cannot stop recording either."""
    reference = _record(tmp_path, "torch")
    monkeypatch.setattr(kernels, "positive_counts_c_order", lambda xs, **kw: 1 / 0)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _record(tmp_path, "strict")
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def _record_norms(tmp_path, name, monkeypatch, **recorder_kwargs):
    """Two steps of TinyNet (channels_last) on the GPU's code path for parameter norms (the
    multi-tensor norms): every stored weight and gradient reduction, by (name, step)."""
    from pytest_modelrules.capture import reductions

    monkeypatch.setattr(reductions, "FUSED_NORM_DEVICES", {"cuda", "cpu"})
    torch.manual_seed(0)
    model = TinyNet().to(memory_format=torch.channels_last)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(
        tmp_path / name, model, loss=loss_fn, optimizer=opt, save_interval=1, **recorder_kwargs
    ):
        for x, y in batches(2):
            opt.zero_grad()
            loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
            opt.step()
    run = open_run(tmp_path / name)
    names = run.tensor_names(regex=r"^smdebug/reductions/(l2|abs_mean)/")
    assert len(names) == 18  # 6 weights' and biases' l2, 6 gradients' l2 and abs_mean
    return {(n, step): run.tensor(n).value(step) for n in names for step in (0, 1)}


def test_recorder_with_the_norms_kernel_stores_the_multi_tensor_norms(
    interpreted, tmp_path, monkeypatch, norm_calls
):
    """By default (the module's set) each step's weights and gradients are reduced by one
    call each, and the stored norms are the torch path's within float32 rounding."""
    monkeypatch.setattr(kernels, "NORM_KERNEL_DEVICES", set())
    reference = _record_norms(tmp_path, "torch", monkeypatch)
    assert norm_calls == []
    monkeypatch.setattr(kernels, "NORM_KERNEL_DEVICES", {"cpu"})
    got = _record_norms(tmp_path, "kernel", monkeypatch)
    assert norm_calls == [6, 6] * 2  # weights and biases, then gradients, per step
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=0, err_msg=str(key))
    off = _record_norms(tmp_path, "off", monkeypatch, triton=False)
    assert len(norm_calls) == 4  # triton=False: never, with the module's set on
    for key, value in reference.items():
        np.testing.assert_array_equal(off[key], value, err_msg=str(key))


def test_a_failing_norms_kernel_is_switched_off_and_recording_goes_on(
    interpreted, tmp_path, monkeypatch
):
    """A norms kernel that fails gives one warning and the torch operations' norms, bit for
    bit, from that step on: on the module's set by default, on the Recorder's own with
    ``triton=True``."""
    monkeypatch.setattr(kernels, "NORM_KERNEL_DEVICES", set())
    reference = _record_norms(tmp_path, "torch", monkeypatch)

    def failing(xs, **kw):
        raise RuntimeError("no launch")

    monkeypatch.setattr(kernels, "multi_norms", failing)
    for name, kwargs in (("default", {}), ("own", {"triton": True})):
        monkeypatch.setattr(kernels, "NORM_KERNEL_DEVICES", {"cpu"})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = _record_norms(tmp_path, name, monkeypatch, **kwargs)
        messages = [str(w.message) for w in caught if "Triton norms kernel" in str(w.message)]
        assert len(messages) == 1 and "RuntimeError: no launch" in messages[0], name
        left_on = set() if name == "default" else {"cpu"}  # the module's set, emptied or not
        assert left_on == kernels.NORM_KERNEL_DEVICES
        for key, value in reference.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{name} {key}")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    channels=st.integers(1, 70),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    layout=st.sampled_from([torch.channels_last, torch.contiguous_format]),
    seed=st.integers(0, 2**16),
)
def test_counts_equal_the_torch_operations_for_any_shape(
    interpreted, n, channels, height, width, dtype, layout, seed
):
    """Any batch size, channel count and spatial size (block edges anywhere): the kernel's
    counts equal ``positive_counts(x).reshape(-1)``, the reference the Recorder uses."""
    from pytest_modelrules.capture.reductions import positive_counts

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, height, width, generator=gen)
    x[x.abs() < 0.3] = 0.0  # zeros are not positive
    x = x.to(dtype).contiguous(memory_format=layout)
    got = kernels.positive_counts_c_order([x])
    assert torch.equal(got.float(), positive_counts(x).reshape(-1))


_COMPILE = """
import json, os
os.environ.pop("TRITON_INTERPRET", None)
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from pytest_modelrules.capture import kernels
_, kernel = kernels._kernel()
loads = {}
for arch in (80, 90):
    for dtype in ("bf16", "fp16", "fp32", "fp64"):
        for aligned in (True, False):
            source = ASTSource(
                fn=kernel,
                signature={"table_ptr": "*i64", "x0_ptr": "*" + dtype, "out_ptr": "*u8",
                           "N_BATCHES": "constexpr", "TILE": "constexpr",
                           "ALIGNED": "constexpr"},
                constexprs={"N_BATCHES": 32, "TILE": 1024, "ALIGNED": aligned},
            )
            ptx = compile(source, target=GPUTarget("cuda", arch, 32)).asm["ptx"]
            # the loads of the batch: the last global loads of the kernel (after the table's)
            ops = [w for w in ptx.split() if w.startswith("ld.global")]
            loads[f"sm_{arch} {dtype} aligned={aligned}"] = ops[-1]
partial, finish = kernels._norm_kernels()
norm_loads = {}
for arch in (80, 90):
    for dtype in ("bf16", "fp16", "fp32"):
        for aligned in (True, False):
            source = ASTSource(
                fn=partial,
                signature={"table_ptr": "*i64", "x0_ptr": "*" + dtype, "partial_ptr": "*fp32",
                           "N_TENSORS": "constexpr", "TILE": "constexpr",
                           "TILES": "constexpr", "ALIGNED": "constexpr"},
                constexprs={"N_TENSORS": 64, "TILE": 1024, "TILES": 8, "ALIGNED": aligned},
            )
            ptx = compile(source, target=GPUTarget("cuda", arch, 32)).asm["ptx"]
            # the whole chunks' loads (the first after the table's; the last chunk's after)
            ops = [w for w in ptx.split() if w.startswith("ld.global")]
            norm_loads[f"sm_{arch} {dtype} aligned={aligned}"] = sorted(set(ops))
    source = ASTSource(
        fn=finish,
        signature={"table_ptr": "*i64", "partial_ptr": "*fp32", "out_ptr": "*fp32",
                   "n_tensors": "i32", "TILE": "constexpr"},
        constexprs={"TILE": 128},
    )
    norm_loads[f"sm_{arch} finish"] = bool(compile(source, target=GPUTarget("cuda", arch, 32)))
print(json.dumps({"counts": loads, "norms": norm_loads}))
"""


def test_the_kernels_compile_for_nvidia_gpus_with_16_byte_loads():
    """Compiled (not interpreted) for Ampere and Hopper, without a GPU (Triton's own ptxas):
    every dtype compiles, and where the host found every sample (every tensor) on 16 bytes
    the batch (a whole chunk of a tensor) is read with 16-byte vector loads (a scalar load
    per element issues eight times the instructions for bfloat16)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])  # the checkout, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=300
    )
    if done.returncode and "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("Triton's ptxas is not installed here")
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = json.loads(done.stdout.strip().splitlines()[-1])
    loads, norm_loads = compiled["counts"], compiled["norms"]
    assert len(loads) == 16
    for variant, op in loads.items():
        if "aligned=True" in variant:
            wide = "ld.global.v2.b64" if "fp64" in variant else "ld.global.v4.b32"
            assert op == wide, variant
        else:
            assert op.startswith("ld.global.b"), variant
    assert len(norm_loads) == 14 and norm_loads["sm_80 finish"] and norm_loads["sm_90 finish"]
    for variant, ops in norm_loads.items():
        if "finish" in variant:
            continue
        element = "ld.global.b32" if "fp32" in variant else "ld.global.b16"
        if "aligned=True" in variant:  # whole chunks in vectors, the last chunk by element
            assert "ld.global.v4.b32" in ops and element in ops, variant
        else:
            assert "ld.global.v4.b32" not in ops and element in ops, variant


def test_the_kernels_are_the_cuda_default_where_triton_is_installed():
    """Recorders made with triton=None use both kernels on CUDA devices when Triton can be
    imported, never on the CPU by default."""
    import importlib.util

    from pytest_modelrules.capture import kernels

    expected = {"cuda"} if importlib.util.find_spec("triton") else set()
    assert set(kernels.COUNT_KERNEL_DEVICES) == set(kernels.NORM_KERNEL_DEVICES) == expected
    assert kernels.NORM_KERNEL_DEVICES is not kernels.COUNT_KERNEL_DEVICES  # switched apart
