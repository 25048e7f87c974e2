"""Exceptions raised by prune_fast.

Every check runs before anything is written, so when one of these is raised the weight (or model)
is bit-identical to what it was before the call.
"""
from __future__ import annotations

__all__ = ["PruneFastError", "InvalidInputError", "InvalidTypeError", "UnknownNameError", "CorruptStateError",
           "EditorError", "UnsupportedArchitectureError", "InvalidLayerError", "MalformedRequestError",
           "EditorCheckpointError", "HyperParamsError"]


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


# Editors: every one of these is raised before any weight is written.

class EditorError(PruneFastError, ValueError):
    """Base class: an edit was refused before anything was applied."""


class UnsupportedArchitectureError(EditorError):
    """The model's architecture is not in the table of ``prune_fast.editors.architectures``."""


class InvalidLayerError(EditorError):
    """A layer index outside ``[0, num_layers)`` or a module that is not where the table says."""


class MalformedRequestError(EditorError):
    """An edit request (or a CounterFact / ZsRE record) that cannot be edited as given."""


class HyperParamsError(EditorError):
    """Editor settings (a YAML file, a preset name, a field) that cannot be used as given."""


class EditorCheckpointError(EditorError):
    """A learned editor's checkpoint (MEND) that cannot be used with this model: unreadable or
    corrupted, missing or misshapen tensors, or written for another model or other weights."""
