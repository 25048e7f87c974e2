"""Errors raised by the editors, always before any weight is written."""
from __future__ import annotations

from ..errors import PruneFastError

__all__ = ["EditorError", "UnsupportedArchitectureError", "InvalidLayerError", "MalformedRequestError",
           "EditorCheckpointError", "HyperParamsError"]


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
