"""ROME's subject keys, kept across the requests of a run for as long as nothing they depend on changed.

A key is the input of the edited down projection at the subject's token: it depends on every
parameter that runs before that projection — the embeddings, the layers below and the same
layer's attention, norms and up projections — and on nothing else. In particular it does not
depend on the edited matrix itself, so a run of ROME edits at one layer never changes it, and a
subject met again costs no forward pass.

Staleness is detected by the cache itself, not by callers: each entry keeps a stamp of the
parameters its key depends on — each one's storage address and autograd version counter, which
every in-place write under ``no_grad`` (a :class:`~prune_fast.SpectralTracker` step, an optimiser
step, ``load_state_dict``) advances — and a lookup whose stamp differs is a miss. A parameter
replaced by another tensor changes its address. Writes through ``.data`` advance neither; code
that edits weights that way must build a new cache. Buffers (e.g. rotary frequencies) are not
stamped: editing never writes them.

Example::

    cache = KeyCache(model)
    compute_rome(model, tok, request, hp, store, key_cache=cache)   # fills it; later requests reuse it
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .architectures import EditSite

__all__ = ["KeyCache"]


class KeyCache:
    """ROME's keys (k̄, k) per (module, templates, prompt, subject, site) for one model, each valid
    while the parameters feeding it are unchanged (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._entries: dict[tuple[Any, ...], tuple[EditSite, tuple[tuple[int, int], ...], torch.Tensor, torch.Tensor]] = {}
        self.hits = 0
        self.stale = 0  # lookups that found an entry whose inputs had changed since

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        site, stamp, key_mean, key_plain = entry
        if stamp != self._stamp(site):
            del self._entries[key]
            self.stale += 1
            return None
        self.hits += 1
        return key_mean, key_plain

    def put(self, key: tuple[Any, ...], site: EditSite, key_mean: torch.Tensor, key_plain: torch.Tensor) -> None:
        self._entries[key] = (site, self._stamp(site), key_mean, key_plain)

    def _stamp(self, site: EditSite) -> tuple[tuple[int, int], ...]:
        return tuple((p.data_ptr(), p._version) for name, p in self.model.named_parameters()
                     if feeds_key(name, site))


def feeds_key(param_name: str, site: EditSite) -> bool:
    """Whether the parameter ``param_name`` runs before ``site``'s down projection: everything but
    that projection's own weight and the parameters of later layers (a layer is recognised by the
    site's layer name with another index; a model whose layer names do not end in the index is
    treated as if every other parameter fed the key, which is safe)."""
    if param_name == site.param_name:
        return False
    index = str(site.layer)
    if not site.layer_name.endswith(index):
        return True
    prefix = site.layer_name[: -len(index)]
    if not param_name.startswith(prefix):
        return True
    other = param_name[len(prefix):].split(".", 1)[0]
    return not (other.isdigit() and int(other) > site.layer)
