"""Teacher-forced accuracy of a causal LM on (prompt, answer) items, and next-word predictions.

An item counts as correct when, fed ``prompt + answer``, the model's arg-max at every answer
position is the next answer token (for a one-token answer: the top-1 next token after the prompt).
Batches are right-padded, so absolute position embeddings see the same positions as unpadded.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidInputError

__all__ = ["encode_pairs", "answer_correct", "top1_next", "task_accuracies"]


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids of ``prompt + answer`` (right-padded), attention mask, and labels.

    Returns ``(input_ids, attention_mask, labels)``, each ``(B, T)``; ``labels`` hold the answer
    tokens at their positions and ``-100`` elsewhere (the Hugging Face convention: the model
    shifts them by one itself).
    """
    seqs, label_rows = [], []
    for prompt, answer in pairs:
        p = list(tokenizer.encode(prompt))
        a = list(tokenizer.encode(" " + answer, add_special_tokens=False))
        if not a:
            raise InvalidInputError(f"answer {answer!r} encodes to no tokens")
        seqs.append(p + a)
        label_rows.append([-100] * len(p) + a)
    width = max(len(s) for s in seqs)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, label_rows)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(s)] = torch.tensor(lab)
    return ids.to(device), mask.to(device), labels.to(device)


def _input_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def answer_correct(model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 256) -> torch.Tensor:
    """Bool tensor ``(len(pairs),)``: is every answer token the model's arg-max (teacher forced)?"""
    out = []
    device = _input_device(model)
    for start in range(0, len(pairs), batch_size):
        ids, mask, labels = encode_pairs(tokenizer, pairs[start:start + batch_size], device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        pred = logits[:, :-1].argmax(-1).to(labels.device)
        target = labels[:, 1:]
        ok = (pred == target) | (target == -100)
        out.append(ok.all(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def top1_next(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int = 256) -> list[str]:
    """The decoded arg-max next token after each prompt."""
    device = _input_device(model)
    words: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        seqs = [list(tokenizer.encode(p)) for p in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = torch.tensor([len(s) - 1 for s in seqs], device=logits.device)
        best = logits[torch.arange(len(seqs), device=logits.device), last].argmax(-1).tolist()
        words += [tokenizer.decode([b]).strip() for b in best]
    return words


def task_accuracies(model: torch.nn.Module, tokenizer: Any, world: Any, subjects: Sequence[str] | None = None,
                    n_copy: int = 300) -> dict[str, float]:
    """Accuracy per task family of :mod:`prune_fast.testbed.world` (``recall`` on ``subjects``)."""
    recall = answer_correct(model, tokenizer, world.fact_prompts(subjects))
    add = answer_correct(model, tokenizer, [(e.prompt, e.answer) for e in world.addition_examples()])
    copy = answer_correct(model, tokenizer, [(e.prompt, e.answer) for e in world.copy_examples(n_copy, seed=12345)])
    return {"recall": recall.float().mean().item(), "addition": add.float().mean().item(),
            "copy": copy.float().mean().item()}
