"""Shared test setup.

Triton kernels run under the interpreter on CPU tensors when no GPU is present; this must be set
before triton is imported anywhere.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh random stream per test: new inputs every run, the seed printed on failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"[seed {seed}]")
    return torch.Generator().manual_seed(seed)
