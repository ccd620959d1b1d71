"""Fixtures of the Recorder's tests."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from capture_helpers import TinyNet  # noqa: E402


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyNet()
    return model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box OpenMP
    threads spinning against other processes make steps 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def norm_calls(monkeypatch) -> list[int]:
    """The Triton norms kernel switched on for CPU tensors (Triton's interpreter: the suite's
    TRITON_INTERPRET=1) and spied on: the number of tensors of each of its calls."""
    from pytest_modelrules.capture import kernels

    seen: list[int] = []
    real = kernels.multi_norms

    def counted(xs, **kwargs):
        seen.append(len(xs))
        return real(xs, **kwargs)

    monkeypatch.setattr(kernels, "multi_norms", counted)
    monkeypatch.setattr(kernels, "NORM_KERNEL_DEVICES", {"cpu"})
    return seen
