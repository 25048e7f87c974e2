"""Short context prefixes for ROME's key, generated greedily by the model itself (cached per model).

The reference ROME (Meng et al. 2022, ``rome/compute_u.py``) reads the key k* of a request not
from the prompt alone but as the mean over the prompt behind several short texts the model
generated (plus the bare prompt), so that k* describes the subject in context rather than at one
position.  It matters most where the subject opens the prompt and the tokenizer adds no BOS token
(SmolLM2's does not): the bare prompt's subject key then sits at position 0, where Llama-style
models park their attention, and is a fraction of a typical key's norm.  We follow each
tokenizer's own BOS behaviour (``encode`` with ``add_special_tokens=True``) and average instead.

The prefixes are deterministic (greedy decoding from fixed opening words, no sampling) and cached
per model fingerprint (:func:`prune_fast.editors.covariance.model_key`, which edits do not change),
so every arm of an experiment, and every edit of a run, sees the same ones.

Example::

    key_context_templates(model, tok, 10)   # ('The first time I saw the. {}', ..., '{}')
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .covariance import model_key
from ..lm.probes import input_device

__all__ = ["key_context_templates", "SEED_WORDS", "PREFIX_LENGTHS"]

SEED_WORDS: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You", "In", "When", "It", "She", "We")
PREFIX_LENGTHS: tuple[int, ...] = (5, 10)

_CACHE: dict[tuple[str, int], tuple[str, ...]] = {}


@torch.no_grad()
def _greedy(model: nn.Module, tokenizer: Any, text: str, n_new: int) -> str:
    ids = torch.tensor([list(tokenizer.encode(text))], device=input_device(model))
    for _ in range(n_new):   # plain greedy loop: no generation config, no sampling, any causal LM
        nxt = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)


def key_context_templates(model: nn.Module, tokenizer: Any, n_prefixes: int) -> tuple[str, ...]:
    """``n_prefixes`` generated templates ``"<prefix>. {}"`` followed by the bare ``"{}"``.

    Prefix ``i`` is the greedy continuation of ``SEED_WORDS[i // 2]`` to ``PREFIX_LENGTHS[i % 2]``
    new tokens, with braces and line breaks replaced by spaces.
    """
    if n_prefixes < 0 or n_prefixes > len(SEED_WORDS) * len(PREFIX_LENGTHS):
        raise ValueError(f"n_prefixes must be in [0, {len(SEED_WORDS) * len(PREFIX_LENGTHS)}], got {n_prefixes}")
    key = (model_key(model), n_prefixes)
    if key not in _CACHE:
        was_training = model.training
        model.eval()
        try:
            out = []
            for i in range(n_prefixes):
                text = _greedy(model, tokenizer, SEED_WORDS[i // len(PREFIX_LENGTHS)],
                               PREFIX_LENGTHS[i % len(PREFIX_LENGTHS)])
                clean = " ".join(text.replace("{", " ").replace("}", " ").split())
                out.append(clean + ". {}")
        finally:
            model.train(was_training)
        _CACHE[key] = (*out, "{}")
    return _CACHE[key]
