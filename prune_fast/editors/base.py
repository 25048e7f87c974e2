"""The one editor protocol: ``Editor(model, tokenizer, ...)`` then ``.compute(requests) -> EditResult``.

Every editor (ROME, MEMIT, AlphaEdit, MEND) is a class built on a model and computes factored
updates for a batch of requests on the model as it is now, writing nothing: the caller hands
``result.updates`` to a :class:`~prune_fast.updates.TrackerSet`.  The sequential runner treats every
editor alike through this class; a new editor is one file with one subclass.

What differs between editors is declared, not tested for by type:

- ``name``: the editor's name in journals and results (``"rome"``, ...);
- ``max_batch``: the most requests one ``compute`` takes (ROME: 1; ``None``: any);
- ``hparams_class``: what ``Editor(model, tokenizer, hparams, covariance)`` takes (``None``: MEND, built
  from a trained checkpoint);
- ``describe()``: the settings a resumed run must match (default: the hyper-parameters);
- ``state_dict()`` / ``load_state_dict()`` / ``replay(state_update)``: the state a stateful editor
  carries from batch to batch (AlphaEdit's edit-key cache); stateless editors keep the defaults,
  an empty state, and ``EditResult.state_update`` is empty;
- ``prepare()``: work to do while the model is still unedited (AlphaEdit's projectors).

An editor that caches what depends on the weights checks that itself (ROME's subject keys carry the
version counters of the parameters that feed them), so whoever writes the updates owes it nothing.

Example::

    editor = ROME(model, tok, ROMEHyperParams.for_model(model), store)
    res = editor.compute([request])          # nothing written
    trackers.apply_(res.updates)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import EditorCheckpointError
from ..lm.requests import EditRequest
from ..updates import FactoredUpdate

__all__ = ["Editor", "EditResult"]


@dataclass
class EditResult:
    """What every ``compute`` returns: one factored update per edited weight (nothing written).

    Editors return subclasses that add their own diagnostics (ROME: the key and value; MEMIT:
    the targets; AlphaEdit: the projector's reach; MEND: the loss before the edit).
    """

    updates: list[FactoredUpdate]

    @property
    def state_update(self) -> dict[str, torch.Tensor]:
        """What this batch added to a stateful editor's state (for :meth:`Editor.replay`); empty here."""
        return {}


class Editor:
    """Base class of the editors; see the module docstring for the protocol."""

    name: ClassVar[str] = "editor"
    max_batch: ClassVar[int | None] = None
    # the hyper-parameter class the editor is built from with (model, tokenizer, hparams, covariance);
    # None for an editor built otherwise (MEND: from its trained checkpoint)
    hparams_class: ClassVar[type | None] = None
    model: nn.Module
    tokenizer: Any
    hparams: Any

    def compute(self, requests: Sequence[EditRequest]) -> EditResult:
        """The updates for ``requests`` on the current model; nothing is written."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The settings a journal header records (what a resume must match)."""
        return self.hparams.to_dict()

    def prepare(self) -> None:
        """Work that must see the unedited model (called before the first edit of a resumed run)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The editor's state between batches (a stateless editor has none)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`; a stateless editor accepts only an empty state."""
        if state:
            raise EditorCheckpointError(f"the {self.name} editor keeps no state, but a state with "
                                        f"{sorted(state)[:3]} was given")

    def replay(self, state_update: dict[str, torch.Tensor]) -> None:
        """Advance the state as a computed batch did (``EditResult.state_update``); nothing to do here."""
