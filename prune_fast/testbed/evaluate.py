"""The test bed's task families scored: accuracy per family, chance levels, the abilities a run keeps.

Scoring itself is :func:`prune_fast.lm.evaluation.answer_correct` (teacher forced, every answer
token the arg-max), the package's one top-1 rule; this module knows the world's families.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from ..lm.evaluation import Evaluator, answer_correct
from ..lm.probes import input_device
from ..lm.requests import EditRequest
from .world import World

__all__ = ["top1_next", "task_accuracies", "chance_levels", "world_abilities"]


@torch.no_grad()
def top1_next(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int = 256) -> list[str]:
    """The decoded arg-max next token after each prompt."""
    device = input_device(model)
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


def chance_levels(world: World) -> dict[str, float]:
    """Accuracy of uniform guessing among the plausible answers of each task."""
    n_obj = sum(len(r.objects) for r in world.relations) / len(world.relations)
    return {"recall": 1.0 / n_obj, "addition": 1.0 / 19, "copy": (1.0 / 20) ** 3}


def world_abilities(world: Any, model: torch.nn.Module, tokenizer: Any, *, n_recall: int = 1500,
                      margin: float = 2.0) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The test bed's task families that trained above chance, for :class:`Evaluator`.

    ``recall`` is scored on a fixed sample of ``n_recall`` fact prompts whose (subject, relation)
    was not edited.  A family is kept when the unedited model's accuracy is at least ``margin`` ×
    its chance level.  Returns ``(abilities, info)`` with info per family: accuracy, chance, kept.
    """
    rng = random.Random(7)
    facts = []  # (subject, relation, prompt, answer)
    for s in world.subjects:
        for r in world.relations:
            for t in r.templates:
                facts.append((s, r.name, t.format(s), world.facts[(s, r.name)]))
    rng.shuffle(facts)
    template_rel = {t: r.name for r in world.relations for t in r.templates}

    def recall(edited: Sequence[EditRequest]) -> list[tuple[str, str]]:
        touched = {(q.subject, template_rel.get(q.prompt)) for q in edited}
        return [(p, a) for s, rel, p, a in facts if (s, rel) not in touched][:n_recall]

    add = [(e.prompt, e.answer) for e in world.addition_examples()]
    copy = [(e.prompt, e.answer) for e in world.copy_examples(200, seed=4242)]
    candidates: dict[str, Any] = {"recall": recall, "addition": add, "copy": copy}
    chance = chance_levels(world)
    # scored by Evaluator.general itself (recall with nothing edited), so a start evaluation may take
    # these accuracies as its own
    accuracy = Evaluator(model, tokenizer, abilities=candidates).general()
    kept, info = {}, {}
    for name, task in candidates.items():
        acc = accuracy[name]
        keep = acc >= margin * chance[name]
        info[name] = {"accuracy": acc, "chance": chance[name], "kept": keep}
        if keep:
            kept[name] = task
    return kept, info
