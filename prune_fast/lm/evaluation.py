"""Evaluation of a sequentially edited model: editing metrics and general abilities.

Editing metrics of a request (each as top-1 accuracy and as the probability contest
P(new) > P(true), both on the whole answer, teacher forced):

    efficacy        the edit prompt answers ``target_new``
    generalization  the paraphrase prompts answer ``target_new``
    locality        the neighbourhood prompts keep their own answers (top-1), and
                    P(their answer) > P(target_new) (the contest form)

General abilities are (prompt, answer) task families scored by top-1 accuracy, plus the
perplexity of held-out text.  For the package's test-bed model they are the world's task
families (``recall`` of facts that were never edited, ``addition``, ``copy``); only families whose
unedited accuracy is clearly above chance are kept (see :func:`prune_fast.testbed.evaluate.world_abilities`).  For a user's
model, any JSONL file of ``{"prompt": ..., "answer": ...}`` lines is a task
(:func:`load_task_jsonl`).

Evaluation reads the model only; it never reaches into the trackers.

Example::

    ev = Evaluator(model, tok, abilities={"addition": pairs}, heldout=texts)
    ev.edit_scores([request])         # {'efficacy': 1.0, 'efficacy_prob': 1.0, ...}
    ev.general()                      # {'addition': 0.98, 'perplexity': 3.1}
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError
from .probes import input_device, pack_batches, pad_rows
from .requests import EditRequest

__all__ = ["Evaluator", "answer_logprob", "perplexity", "load_task_jsonl", "EDIT_METRICS",
           "encode_pairs", "answer_correct", "top1_all"]

EDIT_METRICS = ("efficacy", "efficacy_prob", "generalization", "generalization_prob", "locality",
                "locality_prob")


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


def top1_all(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The package's one top-1 rule: per row, is every target token the arg-max of its (aligned) logits?

    ``logits`` ``(B, T, V)`` and ``targets`` ``(B, T)`` aligned position by position; ``-100`` marks a
    position that is not scored (the Hugging Face label convention).  Returns a bool ``(B,)``.
    """
    return ((logits.argmax(-1) == targets) | (targets == -100)).all(1)


@torch.no_grad()
def answer_logprob(model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprob, correct)`` per (prompt, answer): Σ log P(answer tokens), and all-tokens-top-1.

    Example::

        lp, ok = answer_logprob(model, tok, [("7 plus 5 is", "12")])
    """
    lps, oks = [], []
    device = input_device(model)
    for start in range(0, len(pairs), batch_size):
        ids, mask, labels = encode_pairs(tokenizer, pairs[start:start + batch_size], device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        logp = torch.log_softmax(logits, -1)
        take = target.clamp_min(0)
        tok_lp = logp.gather(-1, take[..., None])[..., 0] * (target != -100)
        lps.append(tok_lp.sum(1).cpu())
        oks.append(top1_all(logits, target).cpu())
    if not lps:
        return torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool)
    return torch.cat(lps), torch.cat(oks)


def answer_correct(model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 256) -> torch.Tensor:
    """Bool tensor ``(len(pairs),)``: is every answer token the model's arg-max (teacher forced)?

    The one top-1 scoring rule of the package (the second output of :func:`answer_logprob`).
    """
    return answer_logprob(model, tokenizer, pairs, batch_size)[1]


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 64,
               token_budget: int = 4096, position_chunk: int = 1024, vocab_chunk: int = 8192) -> float:
    """exp(mean next-token NLL) over ``texts`` (each scored from its second token on).

    Memory stays bounded whatever the amount of text: texts are packed by length into batches of
    at most ``batch_size`` rows and ``token_budget`` padded tokens; the body's hidden states are
    taken at the scored positions only, and the LM head runs on ``position_chunk`` of them at a
    time, over ``vocab_chunk`` vocabulary entries at a time (a running log-sum-exp), so no
    ``B × T × vocab`` logits tensor (1.5 GiB for 64 rows × 128 tokens × 49k) is ever formed.
    """
    device = input_device(model)
    total, count = 0.0, 0
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    seqs = [s for s in (list(tokenizer.encode(t)) for t in texts) if len(s) >= 2]
    head = model.get_output_embeddings()
    for batch in pack_batches([len(s) for s in seqs], token_budget, batch_size):
        ids, mask = pad_rows([seqs[i] for i in batch], pad)
        ids, mask = ids.to(device), mask.to(device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        scored = mask[:, 1:].bool()
        h, target = hidden[:, :-1][scored], ids[:, 1:][scored]          # (N, d), (N,)
        for c in range(0, h.shape[0], position_chunk):
            total += float(_next_token_nll(head, h[c:c + position_chunk], target[c:c + position_chunk],
                                           vocab_chunk).sum(dtype=torch.float64))
        count += int(scored.sum())
    return math.exp(total / count) if count else float("nan")


def _next_token_nll(head: torch.nn.Module, h: torch.Tensor, target: torch.Tensor, vocab_chunk: int) -> torch.Tensor:
    """``logsumexp(head(h)) − head(h)[target]`` per row, fp32, over vocabulary chunks."""
    if not isinstance(head, torch.nn.Linear):  # an unusual head: whole rows at once (still position-chunked)
        logits = head(h).float()
        return torch.logsumexp(logits, -1) - logits.gather(-1, target[:, None])[:, 0]
    w, b = head.weight, head.bias
    lse = torch.full((h.shape[0],), -math.inf, dtype=torch.float32, device=h.device)
    for v in range(0, w.shape[0], vocab_chunk):
        z = torch.nn.functional.linear(h, w[v:v + vocab_chunk], None if b is None else b[v:v + vocab_chunk])
        lse = torch.logaddexp(lse, torch.logsumexp(z.float(), -1))
    picked = (h.float() * w[target].float()).sum(-1)
    if b is not None:
        picked = picked + b[target].float()
    return lse - picked


def load_task_jsonl(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a JSONL file of ``{"prompt": ..., "answer": ...}`` objects.

    A missing file or a malformed line raises :class:`InvalidInputError` naming the file (and line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"task file {path}: cannot be read ({e})") from None
    pairs = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            pairs.append((str(rec["prompt"]), str(rec["answer"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidInputError(f"{path}:{i}: expected a JSON object with 'prompt' and 'answer' ({e})") from e
    if not pairs:
        raise InvalidInputError(f"{path}: no tasks")
    return pairs


@dataclass
class Evaluator:
    """Scores edits and general abilities of ``model``.

    Args:
        abilities: task name → (prompt, answer) pairs, or a callable ``edited_requests → pairs``
            (for tasks that depend on which facts were edited, e.g. recall of unedited facts).
        heldout: texts for perplexity (none: perplexity not reported).
    """

    model: torch.nn.Module
    tokenizer: Any
    abilities: dict[str, Sequence[tuple[str, str]] | Callable[[Sequence[EditRequest]], Sequence[tuple[str, str]]]] = \
        field(default_factory=dict)
    heldout: Sequence[str] = ()

    def edit_scores(self, requests: Sequence[EditRequest]) -> dict[str, float]:
        """Mean of each :data:`EDIT_METRICS` over ``requests`` (NaN where a request set has no prompts)."""
        eff, gen, loc = [], [], []
        for r in requests:
            eff.append((r.text, r.target_new, r.target_true))
            gen += [(p, r.target_new, r.target_true) for p in r.paraphrase_prompts]
            loc += [(p, a, r.target_new) for p, a in r.neighborhood()]
        out: dict[str, float] = {}
        for name, items in (("efficacy", eff), ("generalization", gen), ("locality", loc)):
            out[name], out[name + "_prob"] = self._contest(items)
        return out

    def _contest(self, items: list[tuple[str, str, str | None]]) -> tuple[float, float]:
        """Top-1 accuracy of the first answer, and the share where P(first) > P(second)."""
        if not items:
            return float("nan"), float("nan")
        lp_a, ok = answer_logprob(self.model, self.tokenizer, [(p, a) for p, a, _ in items])
        with_b = [i for i, (_, _, b) in enumerate(items) if b is not None]
        prob = float("nan")
        if with_b:
            lp_b, _ = answer_logprob(self.model, self.tokenizer, [(items[i][0], items[i][2]) for i in with_b])
            prob = float((lp_a[with_b] > lp_b).float().mean())
        return float(ok.float().mean()), prob

    def general(self, edited: Sequence[EditRequest] = ()) -> dict[str, float]:
        """Accuracy per ability (and ``perplexity`` if held-out text was given)."""
        out = {}
        for name, task in self.abilities.items():
            pairs = task(edited) if callable(task) else task
            _, ok = answer_logprob(self.model, self.tokenizer, list(pairs))
            out[name] = float(ok.float().mean()) if len(ok) else float("nan")
        if self.heldout:
            out["perplexity"] = perplexity(self.model, self.tokenizer, list(self.heldout))
        return out
