"""The value search as it was before the prefix replay and the gathered LM head: every step runs the
whole model over every position.  Kept verbatim as the test oracle of
:func:`prune_fast.editors.values.optimize_value` (same update to fp32 tolerance)."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from prune_fast.editors.hparams import ValueHyperParams
from prune_fast.lm.probes import AddAtOutput, encode, frozen, make_batch, site_index
from prune_fast.lm.requests import EditRequest
from prune_fast.editors.values import ValueResult

__all__ = ["optimize_value_reference"]

logger = logging.getLogger(__name__)


def optimize_value_reference(model: nn.Module, tokenizer: Any, request: EditRequest, module: nn.Module,
                   hp: ValueHyperParams) -> ValueResult:
    """Find ``v*`` for ``request`` at ``module``'s output (see the module docstring).

    The model's weights are not changed; their ``requires_grad`` flags are restored on return.
    """
    target_ids = encode(tokenizer, " " + request.target_new, add_special_tokens=False)
    if not target_ids:
        raise ValueError(f"request {request.case_id!r}: target {request.target_new!r} encodes to no tokens")
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

    # labels: the target tokens at their positions, as (row, position, token) index arrays
    r_idx, p_idx, t_idx = [], [], []
    for i, start in enumerate(answer_spans):
        for j, tid in enumerate(target_ids):
            r_idx.append(i)
            p_idx.append(start + j)
            t_idx.append(tid)

    param = next(module.parameters(), None)
    dev = param.device if param is not None else batch.input_ids.device
    with frozen(model), torch.no_grad(), AddAtOutput(module, batch.sites, None) as probe:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    v0 = probe.before[0].to(dev)
    kl_pos = torch.tensor(kl_sites)
    kl_ref = torch.log_softmax(logits[torch.arange(n_rw, n_rw + len(kl_rows)), kl_pos.to(logits.device)].float(), -1)

    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    max_norm = hp.clamp_norm_factor * v0.norm()
    n_tok = len(target_ids)
    nll_start = nll_value = float("nan")
    steps = 0
    with frozen(model):
        for steps in range(1, hp.v_steps + 1):
            with AddAtOutput(module, batch.sites, delta):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logp = torch.log_softmax(logits.float(), -1)
            dev_l = logp.device
            tok_lp = logp[torch.tensor(r_idx, device=dev_l), torch.tensor(p_idx, device=dev_l),
                          torch.tensor(t_idx, device=dev_l)]
            nll = -tok_lp.sum() / (n_rw * n_tok)
            kl_new = logp[torch.arange(n_rw, n_rw + len(kl_rows), device=dev_l), kl_pos.to(dev_l)]
            kl = torch.nn.functional.kl_div(kl_new, kl_ref.to(dev_l), log_target=True, reduction="batchmean")
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
