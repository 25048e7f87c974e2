"""Token sites, right-padded batches, and forward hooks that read or change one module's activations.

Both editors need the same three things: the index of the token where a fact is read
(:func:`site_index`), the input of a module at that token (the key, :func:`module_inputs_at`),
and a way to add a vector to a module's output at that token during a forward pass
(:class:`AddAtOutput`).  Every tensor is created on the device of the module it belongs to; the
model is never assumed to sit on a single device.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import HyperParamsError, MalformedRequestError

__all__ = ["Batch", "site_index", "encode", "make_batch", "input_device", "module_inputs_at", "AddAtOutput", "frozen",
           "StopForward", "stop_after", "pack_batches"]


class StopForward(Exception):
    """Raised by a hook once a forward pass has produced everything its caller reads: the layers
    above and the LM head (``B × T × vocab`` logits) never run."""


@contextmanager
def stop_after(module: nn.Module) -> Iterator[None]:
    """Within the block, a forward pass ends (:class:`StopForward`, caught here) right after
    ``module`` has run; hooks registered on it before entering still see its output."""
    def hook(*_args: Any) -> None:
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()


def encode(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` (Hugging Face ``encode`` semantics)."""
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def site_index(tokenizer: Any, context: str, prompt: str, subject: str, site: str) -> int:
    """Index of the token site in the ids of ``context.format(prompt.format(subject))``.

    ``subject_last``: the subject's last token (the ids of the text up to the end of the subject,
    minus one).  ``prompt_last``: the prompt's last token.  ``context`` ends with ``{}``.
    """
    full = encode(tokenizer, context.format(prompt.format(subject)))
    if site == "prompt_last":
        return len(full) - 1
    if site == "subject_last":
        head = prompt[: prompt.index("{}")] + subject
        n = len(encode(tokenizer, context.format(head)))
        if not 0 < n <= len(full):
            raise MalformedRequestError(f"subject {subject!r} not found as a token span of {prompt!r}")
        return n - 1
    raise HyperParamsError(f"unknown token site {site!r}")


def input_device(model: nn.Module) -> torch.device:
    """Device of the input embeddings (where ``input_ids`` must go, also under ``device_map``)."""
    return model.get_input_embeddings().weight.device


@dataclass
class Batch:
    """Right-padded ids ``(B, T)`` and mask, with one site index per row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sites: torch.Tensor  # (B,) long, on CPU
    lengths: list[int]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id rows into ``(ids, attention_mask)``, both ``(B, T)`` long, on the CPU."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def make_batch(model: nn.Module, rows: Sequence[list[int]], sites: Sequence[int], pad_id: int = 0) -> Batch:
    ids, mask = pad_rows(rows, pad_id)
    dev = input_device(model)
    return Batch(ids.to(dev), mask.to(dev), torch.tensor(list(sites), dtype=torch.long), [len(r) for r in rows])


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def module_inputs_at(model: nn.Module, module: nn.Module, batch: Batch) -> torch.Tensor:
    """The input of ``module`` at each row's site: ``(B, d_in)`` float32 on the module's device."""
    captured: list[torch.Tensor] = []

    def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = _first(args)
        rows = torch.arange(x.shape[0], device=x.device)
        captured.append(x[rows, batch.sites.to(x.device)].float())
        raise StopForward  # nothing above the module changes its input

    handle = module.register_forward_pre_hook(hook)
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    except StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


class AddAtOutput:
    """Adds ``delta`` (``(d,)`` or one per site ``(n, d)``) to ``module``'s output at each row's site.

    ``rows``: the batch row of each site (default: site ``j`` is in row ``j``); several sites may
    share a row, as in a packed sequence.  Also records the output at the sites before the addition
    (``self.before``, ``(n, d)``).
    Use as a context manager around forward passes::

        with AddAtOutput(block, batch.sites, delta) as add:
            logits = model(...).logits
    """

    def __init__(self, module: nn.Module, sites: torch.Tensor, delta: torch.Tensor | None,
                 rows: torch.Tensor | None = None) -> None:
        self.module, self.sites, self.delta, self.rows = module, sites, delta, rows
        self.before: torch.Tensor | None = None
        self._handle: Any = None

    def _hook(self, _mod: nn.Module, _args: Any, output: Any) -> Any:
        h = _first(output)
        sites = self.sites.to(h.device)
        rows = torch.arange(h.shape[0], device=h.device) if self.rows is None else self.rows.to(h.device)
        self.before = h[rows, sites].detach().float()
        if self.delta is None:
            return output
        add = torch.zeros_like(h)
        add[rows, sites] = self.delta.to(h.device, h.dtype).expand(len(sites), -1)
        h = h + add
        if isinstance(output, tuple):
            return (h,) + tuple(output[1:])
        if isinstance(output, list):
            return [h] + list(output[1:])
        return h

    def __enter__(self) -> "AddAtOutput":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Temporarily turn off ``requires_grad`` on every parameter (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def pack_batches(lengths: Sequence[int], token_budget: int, max_rows: int) -> list[list[int]]:
    """Indices of texts grouped into batches of near-equal length.

    Texts are sorted by length (stable, so the grouping is deterministic); a batch grows while
    ``rows × longest ≤ token_budget`` and ``rows ≤ max_rows``.  Padding is then at most the length
    spread inside a batch, which sorting keeps small.
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and ((len(cur) + 1) * lengths[i] > token_budget or len(cur) >= max_rows):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches
