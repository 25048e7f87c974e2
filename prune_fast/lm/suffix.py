"""Forward passes over only the positions an edit can change, with everything before them computed once.

An optimisation that adds a vector at position ``c_r`` of row ``r`` (the token site) cannot change
anything the model computes at positions before ``c_r``: attention is causal, so their hidden
states, and the keys and values they offer to later positions, are the same at every step.
:class:`SuffixForward` lays the rows end to end in one sequence and cuts each at its ``c_r``:

- the *prefix* (every row's positions ``< c_r``) runs once, with the model's own key/value cache
  kept;
- each later call runs the *suffix* (every row's positions ``≥ c_r``) against that cache, with an
  explicit position per token and a 4-D mask that lets a token see only its own row's earlier
  tokens.

Packing also drops the padding a rectangular batch carries (a short KL row beside a long prompt
row).  A step then costs the suffix's tokens instead of ``rows × longest row``.

Only models whose forward takes explicit ``position_ids``, a 4-D additive mask and a
transformers ``Cache`` can run it: :meth:`SuffixForward.build` returns ``None`` otherwise, and the
caller checks the first suffix pass against its plain forward before relying on it
(:meth:`SuffixForward.agrees_with`).

Example::

    route = SuffixForward.build(model, rows, cuts, read_rows, read_pos)
    logits = route.logits()          # (n_reads, vocab), same as the plain forward's at those positions
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .head import head_at, linear_head
from .prefix_tree import takes_custom_mask
from .probes import input_device

__all__ = ["SuffixForward"]



def _cache_argument(body: nn.Module) -> str | None:
    """The name the body's forward gives its key/value cache (``cache`` in transformers 5,
    ``past_key_values`` before), or ``None`` if it takes none."""
    params = inspect.signature(body.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _long(xs: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(xs), dtype=torch.long)


def _additive_mask(q_row: torch.Tensor, q_pos: torch.Tensor, k_row: torch.Tensor, k_pos: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """``(1, 1, q, k)``: 0 where key ``j`` is in query ``i``'s row at a position ≤ its own, dtype-min elsewhere."""
    allowed = (q_row[:, None] == k_row[None, :]) & (k_pos[None, :] <= q_pos[:, None])
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@dataclass
class SuffixForward:
    """Rows laid end to end and cut at ``cuts`` (see the module docstring).

    ``sites`` ``(n_rows,)``: where each row's cut position lies in the suffix (row 0 of a batch of
    one), for :class:`~prune_fast.lm.probes.AddAtOutput`; ``reads`` ``(n_reads,)``: the suffix
    positions whose next-token logits :meth:`logits` returns, in the order they were asked for.
    """

    model: nn.Module
    suffix_ids: torch.Tensor
    suffix_pos: torch.Tensor
    suffix_mask: torch.Tensor
    sites: torch.Tensor
    reads: torch.Tensor
    cache_arg: str
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    cache_class: type | None = None

    @classmethod
    def build(cls, model: nn.Module, rows: Sequence[Sequence[int]], cuts: Sequence[int],
              read_rows: Sequence[int], read_pos: Sequence[int]) -> "SuffixForward | None":
        """Pack ``rows`` cut at ``cuts`` and run the prefix once; ``None`` where this model or these
        reads cannot take the route (a read before its row's cut, no cache argument, an attention
        implementation that ignores a custom mask, logits that are not a plain linear head)."""
        if linear_head(model) is None:
            return None
        body = model.base_model
        cache_arg = _cache_argument(body)
        if cache_arg is None or not takes_custom_mask(model) or len(rows) != len(cuts):
            return None
        if any(not 0 <= c < len(row) for row, c in zip(rows, cuts)):
            return None
        if any(p < cuts[r] or p >= len(rows[r]) for r, p in zip(read_rows, read_pos)):
            return None
        pre_ids, pre_pos, pre_row, suf_ids, suf_pos, suf_row, offsets = [], [], [], [], [], [], []
        for r, (row, c) in enumerate(zip(rows, cuts)):
            pre_ids += row[:c]
            pre_pos += range(c)
            pre_row += [r] * c
            offsets.append(len(suf_ids))
            suf_ids += row[c:]
            suf_pos += range(c, len(row))
            suf_row += [r] * (len(row) - c)
        dtype = next(model.parameters()).dtype
        dev = input_device(model)
        k_row, k_pos = _long(pre_row + suf_row), _long(pre_pos + suf_pos)
        route = cls(
            model=model,
            suffix_ids=_long(suf_ids)[None].to(dev),
            suffix_pos=_long(suf_pos)[None].to(dev),
            suffix_mask=_additive_mask(_long(suf_row), _long(suf_pos), k_row, k_pos, dtype).to(dev),
            sites=_long(offsets),
            reads=_long([offsets[r] + p - cuts[r] for r, p in zip(read_rows, read_pos)]),
            cache_arg=cache_arg,
        )
        if pre_ids:
            mask = _additive_mask(_long(pre_row), _long(pre_pos), _long(pre_row), _long(pre_pos), dtype)
            with torch.no_grad():
                out = body(input_ids=_long(pre_ids)[None].to(dev), attention_mask=mask.to(dev),
                           position_ids=_long(pre_pos)[None].to(dev), use_cache=True)
            cache = getattr(out, cache_arg, None)
            if cache is None or not hasattr(cache, "layers"):
                return None
            route.cache_class = type(cache)
            route.prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return route

    def logits(self) -> torch.Tensor:
        """Next-token logits at the read positions, ``(n_reads, vocab)``: the suffix runs against a
        fresh copy of the prefix's cache (a step's keys and values never leak into the next)."""
        kwargs: dict[str, Any] = {}
        if self.prefix_kv is not None:
            kwargs[self.cache_arg] = self.cache_class(ddp_cache_data=self.prefix_kv, config=self.model.config)
        hidden = self.model.base_model(input_ids=self.suffix_ids, attention_mask=self.suffix_mask,
                                       position_ids=self.suffix_pos, use_cache=self.prefix_kv is not None,
                                       **kwargs).last_hidden_state
        return head_at(self.model, hidden[0, self.reads.to(hidden.device)])

    @staticmethod
    def agrees_with(logits: torch.Tensor, reference: torch.Tensor, tol: float = 1e-4) -> bool:
        """Whether ``logits`` give the same log-probabilities as ``reference`` (the plain forward's)
        to ``tol``: fp32 sums in another order differ by ~1e-6; a model that ignored the mask or the
        positions differs by orders more."""
        a = torch.log_softmax(logits.double(), -1)
        b = torch.log_softmax(reference.double(), -1)
        return a.shape == b.shape and bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= tol
