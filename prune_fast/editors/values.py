"""The target value ``v*`` of an edit, found by optimising a vector added at a module's output.

One function serves ROME (the vector is added at the output of the edited down projection) and
MEMIT (at the output of the last edited block, i.e. the residual stream); the module is a
parameter.  The objective (ROME, Meng et al. 2022, eq. 4; the KL "essence" term keeps what the
model says about the subject otherwise)::

    δ* = argmin_δ  −(1/P) Σ_p (1/|t|) Σ_j log p(t_j | x_p, t_<j ; h_site += δ)
                   + kl_factor · KL( p(· | "{s} is a") ‖ p(· | "{s} is a" ; h_site += δ) )
                   + v_weight_decay · ‖δ‖² / ‖v0‖²,         ‖δ‖ ≤ clamp_norm_factor · ‖v0‖

where ``x_p`` runs over the context templates wrapped around the request's prompt, ``t`` is the
new target's tokens and ``v0`` the module's output at the site of the first prompt.  The result
is ``v* = v0 + δ*``.

What each step costs is only what δ can change: the layers below the edited one are run once per
request (their output is recorded on the first pass and replayed at every step, see
:class:`PrefixReplay`); in the layers above, the positions before each row's site run once too
(their keys and values are cached, see :class:`~prune_fast.lm.suffix.SuffixForward`), so a step
runs only the positions from the site on, every context template and the KL prompt packed into
one unpadded sequence; and the LM head is applied only at the positions the loss reads (the
target tokens and the KL site), not at every position of every row.  The packed route is taken
only where its first pass gives the plain forward's log-probabilities (to 1e-4); otherwise every
step runs the rows as one padded batch.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import MalformedRequestError
from .hparams import ValueHyperParams
from ..lm.head import logits_at
from ..lm.probes import AddAtOutput, encode, frozen, make_batch, site_index
from ..lm.requests import EditRequest
from ..lm.suffix import SuffixForward

__all__ = ["ValueResult", "optimize_value", "PrefixReplay"]

logger = logging.getLogger(__name__)


@dataclass
class ValueResult:
    """``target = v0 + delta`` ``(d,)`` float32 on the module's device, and how the search went."""

    target: torch.Tensor
    v0: torch.Tensor
    delta: torch.Tensor
    nll_start: float
    nll_end: float
    steps: int


class _Replay(nn.Module):
    """Stands in for a layer below the edited one: returns the recorded output of the last of them."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__()
        self._holder = holder

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        return self._holder["out"]


def _layer_stack(model: nn.Module, module: nn.Module) -> tuple[nn.ModuleList, int] | None:
    """The module list of decoder layers holding ``module``, and the index of the layer that holds it."""
    for sub in model.modules():
        if isinstance(sub, nn.ModuleList):
            for i, layer in enumerate(sub):
                if any(m is module for m in layer.modules()):
                    return sub, i
    return None


class PrefixReplay:
    """Runs the layers below ``module``'s layer once and replays their output afterwards.

    δ is added at (or inside) layer ``i``; layers ``0 .. i-1`` see neither δ nor anything that
    depends on it, so for a fixed batch their output is a constant of the optimisation.  The first
    forward inside :meth:`recording` keeps layer ``i-1``'s output; inside :meth:`replaying` the
    layers ``0 .. i-1`` are swapped for stubs returning it (restored on exit).  A model whose
    layers are not in an ``nn.ModuleList`` simply runs in full.
    """

    def __init__(self, model: nn.Module, module: nn.Module) -> None:
        found = _layer_stack(model, module)
        self.layers, self.index = found if found is not None else (None, 0)
        self._holder: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self.layers is not None and self.index > 0 and "out" in self._holder

    @contextmanager
    def recording(self) -> Iterator[None]:
        if self.layers is None or self.index == 0:
            yield
            return

        def keep(_m: nn.Module, _args: Any, out: Any) -> None:
            self._holder["out"] = out.detach() if isinstance(out, torch.Tensor) else out

        handle = self.layers[self.index - 1].register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def replaying(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        saved = [self.layers[j] for j in range(self.index)]
        stub = _Replay(self._holder)
        try:
            for j in range(self.index):
                self.layers[j] = stub
            yield
        finally:
            for j, layer in enumerate(saved):
                self.layers[j] = layer


_fallbacks_reported: set[tuple[str, str]] = set()


def _report_fallback(model: nn.Module, why: str) -> None:
    """Say once per model class and reason (at INFO) that the value search runs the slower padded
    batch: a user timing edits should know which route ran, without a line per request."""
    key = (type(model).__name__, why.split(" (")[0])
    level = logging.INFO if key not in _fallbacks_reported else logging.DEBUG
    _fallbacks_reported.add(key)
    logger.log(level, "packed value search for %s: %s; using the padded batch", key[0], why)


def _packed_route(model: nn.Module, module: nn.Module, rows: list[list[int]], sites: list[int],
                  read_rows: torch.Tensor, read_pos: torch.Tensor, plain_logits: torch.Tensor):
    """``(step_logits, replay)`` running only the positions from each row's site on (see
    :class:`~prune_fast.lm.suffix.SuffixForward`), or ``None`` where the model cannot take that
    route or its first pass does not reproduce ``plain_logits``."""
    replay = PrefixReplay(model, module)
    try:
        with frozen(model), torch.no_grad():
            route = SuffixForward.build(model, rows, sites, read_rows.tolist(), read_pos.tolist())
            if route is None:
                _report_fallback(model, "not available for this model or these rows (SuffixForward.build)")
                return None
            site_rows = torch.zeros_like(route.sites)   # every site is in the one packed row
            with AddAtOutput(module, route.sites, None, rows=site_rows), replay.recording():
                logits = route.logits()
    except (TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        _report_fallback(model, f"unavailable ({type(exc).__name__}: {exc})")
        return None
    if not SuffixForward.agrees_with(logits, plain_logits):
        _report_fallback(model, "its first pass disagrees with the plain forward")
        return None

    def step_logits(delta: torch.Tensor) -> torch.Tensor:
        with AddAtOutput(module, route.sites, delta, rows=site_rows):
            return route.logits()

    return step_logits, replay


def optimize_value(model: nn.Module, tokenizer: Any, request: EditRequest, module: nn.Module,
                   hp: ValueHyperParams) -> ValueResult:
    """Find ``v*`` for ``request`` at ``module``'s output (see the module docstring).

    The model's weights are not changed; their ``requires_grad`` flags are restored on return.
    """
    target_ids = encode(tokenizer, " " + request.target_new, add_special_tokens=False)
    if not target_ids:
        raise MalformedRequestError(f"request {request.case_id!r}: target {request.target_new!r} encodes to no tokens")
    rows, sites, answer_spans = [], [], []
    for ctx in hp.context_templates:
        prompt_ids = encode(tokenizer, ctx.format(request.text))
        rows.append(prompt_ids + target_ids[:-1])
        sites.append(site_index(tokenizer, ctx, request.prompt, request.subject, hp.site))
        answer_spans.append(len(prompt_ids) - 1)  # logits here predict target_ids[0]
    kl_rows = [encode(tokenizer, hp.kl_template.format(request.subject))]
    kl_sites = [site_index(tokenizer, "{}", hp.kl_template, request.subject, hp.site)]
    n_rw = len(rows)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    batch = make_batch(model, rows + kl_rows, sites + kl_sites, pad_id=pad)

    # where the loss reads logits: each target token in each prompt row, then the KL rows' sites
    r_idx, p_idx, t_idx = [], [], []
    for i, start in enumerate(answer_spans):
        for j, tid in enumerate(target_ids):
            r_idx.append(i)
            p_idx.append(start + j)
            t_idx.append(tid)
    n_lab = len(r_idx)
    read_rows = torch.tensor(r_idx + list(range(n_rw, n_rw + len(kl_rows))))
    read_pos = torch.tensor(p_idx + kl_sites)

    param = next(module.parameters(), None)
    dev = param.device if param is not None else batch.input_ids.device
    replay = PrefixReplay(model, module)
    with frozen(model), torch.no_grad(), AddAtOutput(module, batch.sites, None) as probe, replay.recording():
        logits = logits_at(model, batch.input_ids, batch.attention_mask, read_rows, read_pos)
    v0 = probe.before[0].to(dev)
    kl_ref = torch.log_softmax(logits[n_lab:].float(), -1)

    def padded_step(delta: torch.Tensor) -> torch.Tensor:
        with AddAtOutput(module, batch.sites, delta):
            return logits_at(model, batch.input_ids, batch.attention_mask, read_rows, read_pos)

    step_logits, step_replay = padded_step, replay
    packed = _packed_route(model, module, rows + kl_rows, sites + kl_sites, read_rows, read_pos, logits)
    if packed is not None:
        step_logits, step_replay = packed

    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    max_norm = hp.clamp_norm_factor * v0.norm()
    n_tok = len(target_ids)
    nll_start = nll_value = float("nan")
    steps = 0
    with frozen(model), step_replay.replaying():
        for steps in range(1, hp.v_steps + 1):
            logits = step_logits(delta)
            logp = torch.log_softmax(logits.float(), -1)
            dev_l = logp.device
            tok_lp = logp[torch.arange(n_lab, device=dev_l), torch.tensor(t_idx, device=dev_l)]
            nll = -tok_lp.sum() / (n_rw * n_tok)
            kl = torch.nn.functional.kl_div(logp[n_lab:], kl_ref.to(dev_l), log_target=True, reduction="batchmean")
            decay = hp.v_weight_decay * delta.norm() ** 2 / v0.norm() ** 2
            loss = nll + hp.kl_factor * kl.to(nll.device) + decay.to(nll.device)
            nll_value = nll.item()
            if steps == 1:
                nll_start = nll_value
            if nll_value < hp.nll_stop:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                norm = delta.norm()
                if norm > max_norm:
                    delta.mul_(max_norm / norm)
    delta = delta.detach()
    logger.debug("value for %r: nll %.3f -> %.3f in %d steps, |delta|/|v0| = %.2f", request.case_id,
                 nll_start, nll_value, steps, (delta.norm() / v0.norm()).item())
    return ValueResult(target=v0 + delta, v0=v0, delta=delta, nll_start=nll_start, nll_end=nll_value, steps=steps)
