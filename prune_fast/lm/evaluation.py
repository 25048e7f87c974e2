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
import logging
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError
from .head import linear_head
from .prefix_tree import pack_prefix_trees, takes_custom_mask
from .probes import input_device, pack_batches, pad_rows
from .requests import EditRequest

__all__ = ["Evaluator", "answer_logprob", "perplexity", "load_task_jsonl", "EDIT_METRICS",
           "encode_pairs", "answer_correct", "top1_all"]

logger = logging.getLogger(__name__)

EDIT_METRICS = ("efficacy", "efficacy_prob", "generalization", "generalization_prob", "locality",
                "locality_prob")


def _encode_rows(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each ``prompt + " " + answer`` and its labels (answer ids, ``-100`` on the prompt)."""
    seqs, label_rows = [], []
    for prompt, answer in pairs:
        p = list(tokenizer.encode(prompt))
        a = list(tokenizer.encode(" " + answer, add_special_tokens=False))
        if not a:
            raise InvalidInputError(f"answer {answer!r} encodes to no tokens")
        seqs.append(p + a)
        label_rows.append([-100] * len(p) + a)
    return seqs, label_rows


def _pad_labels(rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, lab in enumerate(rows):
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return labels


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids of ``prompt + answer`` (right-padded), attention mask, and labels.

    Returns ``(input_ids, attention_mask, labels)``, each ``(B, T)``; ``labels`` hold the answer
    tokens at their positions and ``-100`` elsewhere (the Hugging Face convention: the model
    shifts them by one itself).
    """
    seqs, label_rows = _encode_rows(tokenizer, pairs)
    ids, mask = pad_rows(seqs, getattr(tokenizer, "pad_token_id", None) or 0)
    return ids.to(device), mask.to(device), _pad_labels(label_rows, ids.shape[1]).to(device)


def top1_all(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The package's one top-1 rule: per row, is every target token the arg-max of its (aligned) logits?

    ``logits`` ``(B, T, V)`` and ``targets`` ``(B, T)`` aligned position by position; ``-100`` marks a
    position that is not scored (the Hugging Face label convention).  Returns a bool ``(B,)``.
    """
    return ((logits.argmax(-1) == targets) | (targets == -100)).all(1)


def _next_token_scores(head: torch.nn.Linear, h: torch.Tensor, target: torch.Tensor, vocab_chunk: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll, top1)`` per row of ``h``: ``logsumexp(head(h)) − head(h)[target]`` (fp32) and whether
    ``target`` is the arg-max (the first maximal entry, as ``argmax``), over vocabulary chunks."""
    w, b = head.weight, head.bias
    lse = torch.full((h.shape[0],), -math.inf, dtype=torch.float32, device=h.device)
    best = torch.full((h.shape[0],), -math.inf, dtype=torch.float32, device=h.device)
    best_at = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
    for v in range(0, w.shape[0], vocab_chunk):
        z = torch.nn.functional.linear(h, w[v:v + vocab_chunk], None if b is None else b[v:v + vocab_chunk]).float()
        lse = torch.logaddexp(lse, torch.logsumexp(z, -1))
        top, at = z.max(-1)
        better = top > best  # strictly: an equal value in a later chunk is not the first maximum
        best, best_at = torch.where(better, top, best), torch.where(better, at + v, best_at)
    picked = (h.float() * w[target].float()).sum(-1)
    if b is not None:
        picked = picked + b[target].float()
    return lse - picked, best_at == target


def _scores_at(model: torch.nn.Module, head: torch.nn.Linear | None, inputs: dict[str, torch.Tensor],
               flat: torch.Tensor, target: torch.Tensor, vocab_chunk: int, position_chunk: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll, top1)`` of ``target`` as the next token after each ``flat`` position (an index into the
    batch's ``B·T`` positions, row-major), for the forward ``inputs`` (``input_ids``, ``attention_mask``
    and, for packed tries, ``position_ids``).

    With a plain linear head (:func:`~prune_fast.lm.head.linear_head`) the body runs once and the
    head only at those positions, ``position_chunk`` rows and ``vocab_chunk`` entries at a time;
    otherwise the model's own logits are taken there.
    """
    if head is None:
        logits = model(**inputs).logits
        flat, target = flat.to(logits.device), target.to(logits.device)  # under device_map: the last device
        logits = logits.reshape(-1, logits.shape[-1])[flat].float()
        return torch.logsumexp(logits, -1) - logits.gather(-1, target[:, None])[:, 0], logits.argmax(-1) == target
    hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
    h = hidden.reshape(-1, hidden.shape[-1])[flat.to(hidden.device)].to(head.weight.device)   # (N, d)
    target = target.to(head.weight.device)
    parts = [_next_token_scores(head, h[c:c + position_chunk], target[c:c + position_chunk], vocab_chunk)
             for c in range(0, h.shape[0], position_chunk)]
    if not parts:
        return h.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool, device=h.device)
    return torch.cat([nll for nll, _ in parts]), torch.cat([top1 for _, top1 in parts])


def _padded_reads(ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Flat ``B·T`` indices of the ``(B, T-1)`` bool ``scored`` positions of a padded batch, row-major."""
    rows, cols = scored.nonzero(as_tuple=True)
    return rows * ids.shape[1] + cols


# Per model: does the packed-trie route reproduce its padded batch? (checked on first use).
_TREE_ROUTE_OK: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()
_TREE_ROUTE_LOCK = threading.Lock()  # the demo scores two models from two threads
_TREE_CHECK_ROWS = 8


def _padded_scores(model, head, seqs, label_rows, batch_size, token_budget, vocab_chunk, device, pad):
    """``(log-prob, all-top-1)`` per sequence from right-padded, length-packed batches."""
    lps = torch.zeros(len(seqs), dtype=torch.float32)
    oks = torch.zeros(len(seqs), dtype=torch.bool)
    for batch in pack_batches([len(s) for s in seqs], token_budget, batch_size):
        ids, mask = pad_rows([seqs[i] for i in batch], pad)
        target = _pad_labels([label_rows[i] for i in batch], ids.shape[1])[:, 1:].to(device)
        ids, mask = ids.to(device), mask.to(device)
        scored = target != -100
        nll, top1 = _scores_at(model, head, {"input_ids": ids, "attention_mask": mask}, _padded_reads(ids, scored),
                               target[scored], vocab_chunk, position_chunk=ids.numel())
        row = torch.arange(len(batch), device=device)[:, None].expand_as(scored)[scored]
        _accumulate(lps, oks, torch.tensor(batch, dtype=torch.long), row, nll, top1, len(batch))
    return lps, oks


def _tree_scores(model, head, seqs, label_rows, batch_size, token_budget, vocab_chunk, device):
    """The same from packed tries (``prefix_tree.py``): each shared prefix runs once."""
    lps = torch.zeros(len(seqs), dtype=torch.float32)
    oks = torch.zeros(len(seqs), dtype=torch.bool)
    dtype = next(model.parameters()).dtype
    for tb in pack_prefix_trees(seqs, token_budget, batch_size):
        flat, target, owner = [], [], []
        for k, (i, nodes) in enumerate(zip(tb.members, tb.node_of)):
            lab = label_rows[i]
            reads = [j for j in range(1, len(lab)) if lab[j] != -100]
            flat.append(nodes[[j - 1 for j in reads]])
            target += [lab[j] for j in reads]
            owner += [k] * len(reads)
        inputs = {"input_ids": tb.ids.to(device), "attention_mask": tb.additive_mask(dtype).to(device),
                  "position_ids": tb.positions.to(device)}
        nll, top1 = _scores_at(model, head, inputs, torch.cat(flat).to(device),
                               torch.tensor(target, dtype=torch.long, device=device), vocab_chunk,
                               position_chunk=tb.ids.numel())
        _accumulate(lps, oks, torch.tensor(tb.members, dtype=torch.long),
                    torch.tensor(owner, dtype=torch.long, device=device), nll, top1, len(tb.members))
    return lps, oks


def _accumulate(lps, oks, index, row, nll, top1, n):
    """Sum each sequence's answer-token log-probs and count its non-top-1 tokens into ``lps``/``oks``."""
    lp = torch.zeros(n, dtype=torch.float32, device=nll.device).index_add_(0, row.to(nll.device), -nll)
    wrong = torch.zeros(n, dtype=torch.long, device=nll.device).index_add_(0, row.to(nll.device), (~top1).long())
    lps[index] = lp.cpu()
    oks[index] = (wrong == 0).cpu()


def _tree_route_ok(model, head, seqs, label_rows, vocab_chunk, device, pad) -> bool:
    """Whether this model takes the packed-trie route: it accepts explicit positions and a 4-D mask,
    and its trie scores of a few of these rows match its padded ones (to 1e-4 in log-probability),
    checked once per model."""
    with _TREE_ROUTE_LOCK:
        known = _TREE_ROUTE_OK.get(model)
    if known is not None:
        return known
    ok = takes_custom_mask(model) and _tree_matches_padded(model, head, seqs, label_rows, vocab_chunk, device, pad)
    with _TREE_ROUTE_LOCK:
        _TREE_ROUTE_OK[model] = ok
    return ok


def _tree_matches_padded(model, head, seqs, label_rows, vocab_chunk, device, pad) -> bool:
    """The once-per-model check of :func:`_tree_route_ok` on the first few rows."""
    sample = list(range(min(_TREE_CHECK_ROWS, len(seqs))))
    few, labs = [seqs[i] for i in sample], [label_rows[i] for i in sample]
    try:
        tree = _tree_scores(model, head, few, labs, len(few), 1 << 20, vocab_chunk, device)
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        logger.info("packed scoring unavailable for %s (%s): padded batches", type(model).__name__, exc)
        return False
    plain = _padded_scores(model, head, few, labs, len(few), 1 << 20, vocab_chunk, device, pad)
    ok = bool((tree[0] - plain[0]).abs().max() <= 1e-4 * max(1.0, float(plain[0].abs().max())))
    if not ok:
        logger.info("packed scoring disagrees with the padded batch for %s: padded batches", type(model).__name__)
    return ok


@torch.no_grad()
def answer_logprob(model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 256, token_budget: int = 8192, vocab_chunk: int = 16384
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced ``(log-prob, all-top-1)`` of each answer after its prompt (``prompt + " " + answer``).

    Where the model takes explicit positions and a 4-D mask (checked once per model against its
    padded batch), the sequences are packed as token tries (:mod:`~prune_fast.lm.prefix_tree`): a
    prompt scored against both answers of a contest, or few-shot items behind the same examples, run
    their shared prefix once. Otherwise pairs are packed by length into right-padded batches of at
    most ``batch_size`` rows and ``token_budget`` padded tokens. Either way, where the logits are the
    LM head of the last hidden state (:func:`~prune_fast.lm.head.linear_head`), the head runs only at
    the answer positions, ``vocab_chunk`` vocabulary entries at a time. Results are in the order of
    ``pairs``: Σ log P(answer tokens), and whether every answer token is the arg-max.

    Example::

        lp, ok = answer_logprob(model, tok, [("7 plus 5 is", "12")])
    """
    seqs, label_rows = _encode_rows(tokenizer, pairs)
    if not seqs:
        return torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool)
    device = input_device(model)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    head = linear_head(model)
    if _tree_route_ok(model, head, seqs, label_rows, vocab_chunk, device, pad):
        return _tree_scores(model, head, seqs, label_rows, batch_size, token_budget, vocab_chunk, device)
    return _padded_scores(model, head, seqs, label_rows, batch_size, token_budget, vocab_chunk, device, pad)


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
    head = linear_head(model)
    for batch in pack_batches([len(s) for s in seqs], token_budget, batch_size):
        ids, mask = pad_rows([seqs[i] for i in batch], pad)
        ids, mask = ids.to(device), mask.to(device)
        scored = mask[:, 1:].bool()
        nll, _ = _scores_at(model, head, {"input_ids": ids, "attention_mask": mask}, _padded_reads(ids, scored),
                            ids[:, 1:][scored], vocab_chunk, position_chunk)
        total += float(nll.sum(dtype=torch.float64))
        count += int(scored.sum())
    return math.exp(total / count) if count else float("nan")


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
        """Mean of each :data:`EDIT_METRICS` over ``requests`` (NaN where a request set has no prompts).

        Every (prompt, answer) pair of the three metrics, both sides of each contest, is scored in one
        :func:`answer_logprob` call, so a single request's dozen pairs share one batch.
        """
        groups: dict[str, list[tuple[str, str, str | None]]] = {"efficacy": [], "generalization": [], "locality": []}
        for r in requests:
            groups["efficacy"].append((r.text, r.target_new, r.target_true))
            groups["generalization"] += [(p, r.target_new, r.target_true) for p in r.paraphrase_prompts]
            groups["locality"] += [(p, a, r.target_new) for p, a in r.neighborhood()]
        pairs = [(p, a) for items in groups.values() for p, a, _ in items]
        pairs += [(p, b) for items in groups.values() for p, _, b in items if b is not None]
        lp, ok = answer_logprob(self.model, self.tokenizer, pairs)
        first, second = 0, sum(len(items) for items in groups.values())
        out: dict[str, float] = {}
        for name, items in groups.items():
            n, with_b = len(items), [i for i, (_, _, b) in enumerate(items) if b is not None]
            lp_a, ok_a = lp[first:first + n], ok[first:first + n]
            lp_b = lp[second:second + len(with_b)]
            first, second = first + n, second + len(with_b)
            out[name] = float(ok_a.float().mean()) if n else float("nan")
            out[name + "_prob"] = float((lp_a[with_b] > lp_b).float().mean()) if with_b else float("nan")
        return out

    def general(self, edited: Sequence[EditRequest] = (), known: Mapping[str, float] | None = None
                ) -> dict[str, float]:
        """Accuracy per ability (and ``perplexity`` if held-out text was given).

        ``known``: accuracies already measured on this model as it is now, with ``edited`` the same
        (the abilities' selection scores the unedited model once, see
        :func:`~prune_fast.lm.real_abilities.real_abilities`): taken as they are, not re-scored.
        """
        known = known or {}
        out = {}
        for name, task in self.abilities.items():
            if name in known:
                out[name] = float(known[name])
                continue
            pairs = task(edited) if callable(task) else task
            _, ok = answer_logprob(self.model, self.tokenizer, list(pairs))
            out[name] = float(ok.float().mean()) if len(ok) else float("nan")
        if self.heldout:
            out["perplexity"] = perplexity(self.model, self.tokenizer, list(self.heldout))
        return out
