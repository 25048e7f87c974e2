"""The language-model head applied only where logits are read.

A causal LM's logits are, for most architectures, ``lm_head(base_model(...).last_hidden_state)``.
Then a scorer or an optimisation that reads a few positions can run the body once and the head at
those positions only: over a 49k-token vocabulary the head at every position is a fifth of a small
model's compute and its largest tensor. :func:`linear_head` says when that identity holds (a plain
``nn.Linear`` head and no logit transform in the config); everything that reads logits at chosen
positions goes through it, and falls back to the model's own logits when it does not hold.

Example::

    logits = logits_at(model, ids, mask, rows, positions)    # (len(rows), vocab)
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["linear_head", "logits_at", "head_at"]

# Config fields of architectures whose logits are not exactly lm_head(last hidden state).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The LM head when ``logits = head(base_model(...).last_hidden_state)`` exactly, else ``None``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    if not isinstance(head, nn.Linear) or not hasattr(model, "base_model") or model.base_model is model:
        return None
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return head


def head_at(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from last hidden states the caller already picked; only for a :func:`linear_head` model."""
    head = linear_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__}: logits are not a plain linear head of the last hidden state")
    return head(hidden)


def logits_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
              positions: torch.Tensor) -> torch.Tensor:
    """Next-token logits at ``(rows[j], positions[j])`` only: ``(len(rows), vocab)``.

    With a :func:`linear_head` the body's last hidden state (final norm included) is gathered first
    and the head applied to those vectors alone; otherwise the model's full logits are indexed.
    """
    head = linear_head(model)
    if head is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[rows.to(logits.device), positions.to(logits.device)]
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return head(hidden[rows.to(hidden.device), positions.to(hidden.device)])
