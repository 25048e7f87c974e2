"""Causal tracing on the test-bed model: at which token and layer do its facts live?

Following ROME's causal tracing (Meng et al. 2022, §2.1), restricted to MLP outputs (the modules
the editors rewrite): the subject's token embedding is corrupted with Gaussian noise, then the
down projection's output at one (layer, token) is restored to its clean value, and the
probability of the true answer is measured.  The indirect effect of (l, t) is

    IE(l, t) = mean over facts of  p(answer | corrupted, MLP_l(t) restored) − p(answer | corrupted)

Tokens compared: ``subject`` (the subject's last token) and ``last`` (the prompt's last token).
On the test-bed model the effect sits at the last token, which is why its edit site is
``prompt_last`` (ROME's subject site gave 0% efficacy in the prototype).

Example::

    tr = trace_fact_sites(bed.model, bed.tokenizer, bed.world)
    tr.best_site          # 'prompt_last'
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..editors.architectures import resolve_module, resolve_site
from ..lm.probes import encode, make_batch, site_index

__all__ = ["TraceResult", "trace_fact_sites"]

SITES: tuple[str, ...] = ("subject_last", "prompt_last")


@dataclass
class TraceResult:
    """``effect[l, j]``: mean indirect effect of restoring layer ``l``'s MLP output at ``SITES[j]``."""

    effect: torch.Tensor  # (n_layers, 2)
    clean_prob: float
    corrupted_prob: float
    n_facts: int

    @property
    def best_site(self) -> str:
        return SITES[int(self.effect.max(dim=0).values.argmax())]

    @property
    def best_layer(self) -> int:
        return int(self.effect.max(dim=1).values.argmax())

    def table(self) -> str:
        lines = [f"clean p = {self.clean_prob:.3f}, corrupted p = {self.corrupted_prob:.3f} ({self.n_facts} facts)",
                 "layer  " + "  ".join(f"{s:>12}" for s in SITES)]
        for layer, row in enumerate(self.effect.tolist()):
            lines.append(f"{layer:5d}  " + "  ".join(f"{x:12.3f}" for x in row))
        return "\n".join(lines)


@torch.no_grad()
def trace_fact_sites(model: nn.Module, tokenizer: Any, world: Any, n_facts: int = 200, noise: float = 3.0,
                     seed: int = 0) -> TraceResult:
    """Indirect effects of MLP outputs at the subject's and the prompt's last token, per layer.

    ``noise`` is the standard deviation of the corruption in units of the embedding's standard
    deviation; the same noise is used for every restoration run.
    """
    rng = random.Random(seed)
    facts = []
    for s in rng.sample(list(world.subjects), min(n_facts, len(world.subjects))):
        r = rng.choice(world.relations)
        facts.append((rng.choice(r.templates), s, world.facts[(s, r.name)]))
    rows = [encode(tokenizer, t.format(s)) for t, s, _ in facts]
    subj = [site_index(tokenizer, "{}", t, s, "subject_last") for t, s, _ in facts]
    last = [len(r) - 1 for r in rows]
    answers = torch.tensor([encode(tokenizer, " " + a, add_special_tokens=False)[0] for _, _, a in facts])
    batch = make_batch(model, rows, last, pad_id=getattr(tokenizer, "pad_token_id", None) or 0)
    n_layers = model.config.num_hidden_layers
    modules = [resolve_module(model, resolve_site(model, layer).module_name) for layer in range(n_layers)]
    emb = model.get_input_embeddings()
    gen = torch.Generator().manual_seed(seed)
    scale = noise * emb.weight.std().item()
    rows_idx = torch.arange(len(rows))
    subj_t = torch.tensor(subj)
    noise_vecs = torch.randn(len(rows), emb.weight.shape[1], generator=gen) * scale

    def answer_prob() -> torch.Tensor:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        p = torch.softmax(logits[rows_idx.to(logits.device), batch.sites.to(logits.device)].float(), -1)
        return p[rows_idx.to(p.device), answers.to(p.device)].cpu()

    clean_out: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: clean_out.append(out.detach().clone())) for m in modules]
    try:
        clean = answer_prob()
    finally:
        for h in handles:
            h.remove()

    def corrupt(_m: nn.Module, _a: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[rows_idx.to(out.device), subj_t.to(out.device)] += noise_vecs.to(out.device, out.dtype)
        return out

    effect = torch.zeros(n_layers, len(SITES))
    h_emb = emb.register_forward_hook(corrupt)
    try:
        corrupted = answer_prob()
        for layer, module in enumerate(modules):
            for j, pos in enumerate((subj_t, torch.tensor(last))):
                def restore(_m: nn.Module, _a: Any, out: torch.Tensor, layer: int = layer, pos: torch.Tensor = pos):
                    out = out.clone()
                    r, p = rows_idx.to(out.device), pos.to(out.device)
                    out[r, p] = clean_out[layer].to(out.device)[r, p]
                    return out
                h = module.register_forward_hook(restore)
                try:
                    effect[layer, j] = (answer_prob() - corrupted).mean()
                finally:
                    h.remove()
    finally:
        h_emb.remove()
    return TraceResult(effect=effect, clean_prob=clean.mean().item(), corrupted_prob=corrupted.mean().item(),
                       n_facts=len(facts))
