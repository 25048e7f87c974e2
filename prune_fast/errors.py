"""Exceptions raised by prune_fast.

Every check runs before anything is written, so when one of these is raised the weight (or model)
is bit-identical to what it was before the call.
"""
from __future__ import annotations

__all__ = ["PruneFastError", "InvalidInputError"]


class PruneFastError(Exception):
    """Base class of every error prune_fast raises on purpose."""


class InvalidInputError(PruneFastError, ValueError):
    """An argument is malformed: wrong rank, shape, device, dtype, non-finite values, bad option."""
