"""Shared test setup: the tests mirror the package (tests/kernels/, tests/spectral/, ...).

Triton kernels run under the interpreter on CPU tensors when no GPU is present; this must be set
before triton is imported anywhere.  The helper modules at this folder's top (``kernel_cases``,
``spectral_cases``, ``testbed_models``, ``checkpoint_models``, ``value_reference``, ``cli_cases``)
are importable from every subfolder.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh random stream per test: new inputs every run, the seed printed on failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"[seed {seed}]")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def poison_empty(monkeypatch):
    """Fill every floating tensor from torch.empty / torch.empty_like with NaN during the test, so an
    output element a kernel never wrote fails the comparison."""
    real_empty, real_like = torch.empty, torch.empty_like

    def poisoned(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(real_like(*a, **k)))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one CPU thread, restored afterwards (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    The test-bed model is tiny; with two OpenMP threads on a shared 2-core machine each forward
    pass spins for tens of milliseconds, one thread is several times faster.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
