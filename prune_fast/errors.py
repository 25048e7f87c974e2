"""Exceptions raised by prune_fast.

Every check runs before anything is written, so when one of these is raised the weight (or model)
is bit-identical to what it was before the call.
"""
from __future__ import annotations

__all__ = ["PruneFastError", "InvalidInputError", "InvalidTypeError", "UnknownNameError", "CorruptStateError"]


class PruneFastError(Exception):
    """Base class of every error prune_fast raises on purpose."""


class InvalidInputError(PruneFastError, ValueError):
    """An argument is malformed: wrong rank, shape, device, dtype, non-finite values, bad option."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument of the wrong kind (a string where a tensor belongs, …); still a ``TypeError`` for
    code that catches that."""


class UnknownNameError(InvalidInputError, KeyError):
    """A name (a word, a relation, a preset) that is not in its table; still a ``KeyError``."""

    def __str__(self) -> str:  # KeyError's own __str__ would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class CorruptStateError(PruneFastError, RuntimeError):
    """Files the library wrote itself (a cache folder) that no longer fit what they belong to."""
