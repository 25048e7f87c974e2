"""The editors by name and by hyper-parameter class: the one table the CLI and the runner look in.

Adding an editor is one file (its :class:`~prune_fast.editors.base.Editor` subclass) plus one row here.

Example::

    EDITORS["memit"](model, tok, hp, store)            # an editor from its name
    editor_for(model, tok, hp, store)                  # an editor from its hyper-parameters' class
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import InvalidTypeError
from .alphaedit import AlphaEdit
from .base import Editor
from .memit import MEMIT
from .mend import MEND
from .rome import ROME

__all__ = ["EDITORS", "editor_for"]

EDITORS: dict[str, type[Editor]] = {cls.name: cls for cls in (ROME, MEMIT, AlphaEdit, MEND)}

# editors built from (model, tokenizer, hparams, covariance); MEND is built from a trained checkpoint
_BY_HPARAMS: dict[type, type[Editor]] = {cls.hparams_class: cls for cls in EDITORS.values() if cls.hparams_class}


def editor_for(model: nn.Module, tokenizer: Any, hparams: Any, covariance: Any) -> Editor:
    """The editor whose hyper-parameters ``hparams`` are (by exact class), built on ``model``."""
    cls = _BY_HPARAMS.get(type(hparams))
    if cls is None:
        names = ", ".join(h.__name__ for h in _BY_HPARAMS)
        raise InvalidTypeError(f"hparams must be one of {names} (or pass editor=MEND(...)), "
                               f"got {type(hparams).__name__}")
    return cls(model, tokenizer, hparams, covariance)
