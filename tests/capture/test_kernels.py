"""The optional Triton kernel for ReLU positive counts (capture/kernels.py), run by Triton's
interpreter on the CPU: it must count exactly what the torch operations count, in C order,
for the layouts it reads, decline the others, and never stop a recording when it fails."""

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


def _expected(x: torch.Tensor) -> np.ndarray:
    return (x.double().numpy() > 0).sum(axis=0).reshape(-1).astype(np.float32)


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str
)
@pytest.mark.parametrize(
    "shape,layout",
    [
        ((5, 3000), torch.contiguous_format),  # more units than one program's block
        ((5, 7, 9, 11), torch.contiguous_format),
        ((5, 70, 9, 11), torch.channels_last),  # channels over two blocks, odd spatial size
        ((3, 130, 2, 3, 4), torch.channels_last_3d),
        ((2, 3, 1, 1), torch.channels_last),
        ((1, 1, 5, 5), torch.channels_last),
        ((4, 8, 40, 40), torch.channels_last),  # spatial over several blocks
        ((2, 64, 48, 48), torch.channels_last),  # a larger layer: larger tiles
        ((2, 300_000), torch.contiguous_format),
    ],
    ids=str,
)
def test_counts_equal_numpy_in_c_order(interpreted, dtype, shape, layout):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen)
    specials = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf")])
    k = min(specials.numel(), x.numel())
    x.view(-1)[:k] = specials[:k]
    x = x.to(dtype).contiguous(memory_format=layout)
    got = kernels.positive_counts_c_order(x)
    assert got is not None and got.dtype == torch.float32 and got.shape == (x[0].numel(),)
    np.testing.assert_array_equal(got.numpy(), _expected(x))


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
        assert kernels.positive_counts_c_order(declined) is None


def _record(tmp_path, name, channels_last=True):
    torch.manual_seed(0)
    model = TinyNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    with Recorder(tmp_path / name, model, loss=loss_fn, optimizer=opt, save_interval=1):
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


@pytest.mark.parametrize("channels_last", [True, False])
def test_recorder_with_the_kernel_stores_what_the_torch_operations_store(
    interpreted, tmp_path, monkeypatch, channels_last
):
    reference = _record(tmp_path, "torch", channels_last)
    calls = []
    real = kernels.positive_counts_c_order

    def counted(x):
        out = real(x)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(kernels, "positive_counts_c_order", counted)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    got = _record(tmp_path, "kernel", channels_last)
    assert calls and all(calls)  # every ReLU call of both steps went through the kernel
    for key, value in reference.items():
        assert got[key].dtype == value.dtype == np.float32
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_a_failing_kernel_is_switched_off_and_recording_goes_on(tmp_path, monkeypatch):
    """A kernel that cannot compile or launch: one warning, switched off, and the same values
    from the torch operations."""
    reference = _record(tmp_path, "torch")

    def broken(x):
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
    monkeypatch.setattr(kernels, "positive_counts_c_order", lambda x: 1 / 0)
    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _record(tmp_path, "strict")
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


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
    got = kernels.positive_counts_c_order(x)
    assert got is not None
    assert torch.equal(got, positive_counts(x).reshape(-1))
