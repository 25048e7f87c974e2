"""Many token sequences in a few rows, each shared prefix computed once (a token trie, tree attention).

Scoring runs the same prefixes again and again: each prompt of an edit request against both
answers of its contest, the few-shot examples in front of every item of a task. A token trie of the
sequences holds every distinct prefix once. Laid out as a row of nodes (each after its parent), a
node attends to its ancestors and itself only (a 4-D additive mask) at the position it has in every
sequence through it (its depth). A causal LM then computes at each node what it computes at that
position of those sequences: the same inputs in the same causal context, up to the summation order
of the products.

Only models whose forward takes explicit ``position_ids`` and an arbitrary 4-D additive mask can
run it; the scorer checks the route once per model against its plain padded batch
(``evaluation.py``) and falls back to padding otherwise.

Example::

    for batch in pack_prefix_trees(seqs, token_budget=8192, max_rows=256):
        out = body(input_ids=batch.ids, attention_mask=batch.additive_mask(torch.float32),
                   position_ids=batch.positions)
        # batch.node_of[i][j]: where token j of sequence batch.members[i] sits in the flattened (B·T) rows
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TrieBatch", "pack_prefix_trees", "takes_custom_mask"]

# Attention implementations that apply an arbitrary additive 4-D mask as given (flash attention
# and the like take only padding masks).
_MASKABLE = ("eager", "sdpa", None)


def takes_custom_mask(model: nn.Module) -> bool:
    """Whether ``model.base_model`` takes explicit ``position_ids`` and its attention implementation
    applies a 4-D additive mask as given (a precondition; callers still check the result once)."""
    body = getattr(model, "base_model", None)
    if body is None:
        return False
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    try:
        params = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):
        return False
    return attn in _MASKABLE and "position_ids" in params

# Nodes per row at most (unless one sequence is longer): attention over a row costs ~T per token,
# against ~7M multiply-adds per token and layer in a 135M model's linear layers, so 256 keeps the
# mask's share of the work at a few per cent.
ROW_NODES = 256


@dataclass
class TrieBatch:
    """Rows of trie nodes, right-padded to a common width T.

    ``ids``, ``positions``: ``(B, T)`` long (padding: token 0 at position 0, seeing only itself);
    ``visible``: ``(B, T, T)`` bool, key ``k`` visible to query ``q`` (an ancestor or itself);
    ``members``: indices (into the packed sequences) of the sequences in this batch;
    ``node_of``: for each member, the flat index ``row·T + node`` of each of its tokens.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    visible: torch.Tensor
    members: list[int]
    node_of: list[torch.Tensor]

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """``(B, 1, T, T)``: 0 where visible, the dtype's minimum elsewhere."""
        mask = torch.zeros(self.visible.shape, dtype=dtype)
        mask.masked_fill_(~self.visible, torch.finfo(dtype).min)
        return mask[:, None]


class _Row:
    """One trie: nodes in insertion order (a parent always before its children)."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.children: dict[tuple[int, int], int] = {}
        self.members: list[tuple[int, list[int]]] = []  # (sequence index, its node per token)

    def new_nodes(self, seq: Sequence[int]) -> int:
        """How many nodes inserting ``seq`` would add."""
        parent = -1
        for depth, tok in enumerate(seq):
            node = self.children.get((parent, tok))
            if node is None:
                return len(seq) - depth
            parent = node
        return 0

    def insert(self, index: int, seq: Sequence[int]) -> None:
        parent, path = -1, []
        for depth, tok in enumerate(seq):
            node = self.children.get((parent, tok))
            if node is None:
                node = len(self.tokens)
                self.tokens.append(int(tok))
                self.parents.append(parent)
                self.depths.append(depth)
                self.children[(parent, tok)] = node
            path.append(node)
            parent = node
        self.members.append((index, path))

    def visible(self, width: int) -> torch.Tensor:
        """``(width, width)`` bool: ancestors-or-self per node (padding nodes see only themselves)."""
        vis = torch.eye(width, dtype=torch.bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                vis[node] |= vis[parent]
        return vis


def pack_prefix_trees(seqs: Sequence[Sequence[int]], token_budget: int, max_rows: int,
                      row_nodes: int = ROW_NODES) -> list[TrieBatch]:
    """Tries of ``seqs`` (non-empty token id lists), at most ``row_nodes`` nodes per row (or one
    sequence's length), batched while ``rows × widest row ≤ token_budget`` and ``rows ≤ max_rows``.

    Sequences are taken in lexicographic order (stable, so the packing is deterministic), which
    puts the ones sharing a prefix next to each other, in the same row.
    """
    if any(len(s) == 0 for s in seqs):
        raise ValueError("pack_prefix_trees: empty sequence")
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    rows: list[_Row] = []
    for i in order:
        row = rows[-1] if rows else None
        if row is None or (row.tokens and len(row.tokens) + row.new_nodes(seqs[i]) > max(row_nodes, len(seqs[i]))):
            row = _Row()
            rows.append(row)
        row.insert(i, seqs[i])
    batches: list[list[_Row]] = []
    cur: list[_Row] = []
    widest = 0
    for row in rows:
        w = max(widest, len(row.tokens))
        if cur and ((len(cur) + 1) * w > token_budget or len(cur) >= max_rows):
            batches.append(cur)
            cur, w = [], len(row.tokens)
        cur.append(row)
        widest = w
    if cur:
        batches.append(cur)
    return [_as_batch(b) for b in batches]


def _as_batch(rows: list[_Row]) -> TrieBatch:
    width = max(len(r.tokens) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    visible = torch.zeros(len(rows), width, width, dtype=torch.bool)
    members, node_of = [], []
    for b, row in enumerate(rows):
        n = len(row.tokens)
        ids[b, :n] = torch.tensor(row.tokens, dtype=torch.long)
        positions[b, :n] = torch.tensor(row.depths, dtype=torch.long)
        visible[b] = row.visible(width)
        for index, path in row.members:
            members.append(index)
            node_of.append(torch.tensor(path, dtype=torch.long) + b * width)
    return TrieBatch(ids, positions, visible, members, node_of)
