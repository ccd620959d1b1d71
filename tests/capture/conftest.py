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
