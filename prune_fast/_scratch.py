"""A reusable CPU buffer for weight-sized temporaries (W0 = W − Δ inside ``restrain_``, the float64
copy of Δ in the exact solve).

A fresh 41 MB tensor (one 1600×6400 fp32 matrix) costs 17 ms on first touch on the 2-core CPU
machine, because the allocator returns large blocks to the OS on free and takes them back page by
page; writing W − Δ into a buffer that already exists costs 3 ms (the float64 copy of such a Δ:
18.5 against 3.1 ms with two threads, 55 against 7.8 ms with one). So each thread keeps one buffer
of raw bytes and lends it, viewed as the dtype asked for, to the next call of the same or a smaller
size in bytes. CUDA tensors never come here: the CUDA caching allocator already does this.

The buffer is held until :func:`release` (or the thread ends); buffers above ``MAX_BYTES`` are
never kept.

Example::

    with borrow((1600, 6400), torch.float32) as w0:
        torch.sub(weight, delta, out=w0)
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["borrow", "release", "MAX_BYTES"]

MAX_BYTES = 512 * 2**20

_local = threading.local()


@contextmanager
def borrow(shape: tuple[int, int], dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """A contiguous CPU tensor of ``shape``/``dtype`` with arbitrary content, valid inside the block."""
    numel = shape[0] * shape[1]
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    # Too large to keep, or re-entrant use (the held buffer is taken): a plain new tensor.
    if nbytes > MAX_BYTES or getattr(_local, "busy", False):
        yield torch.empty(shape, dtype=dtype)
        return
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.numel() < nbytes:
        _local.buffer = None  # free the old one before allocating the new one
        buf = _local.buffer = torch.empty(nbytes, dtype=torch.uint8)
    _local.busy = True
    try:
        # the allocation's start is aligned for every dtype, and the view starts there
        yield buf[:nbytes].view(dtype).view(shape)
    finally:
        _local.busy = False


def release() -> None:
    """Free this thread's buffer."""
    _local.buffer = None
