"""Logits at chosen positions: the head at those positions only where that is exact, the model's own
logits otherwise (a config with a logit transform), against a float64 forward of the whole model."""
from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel

from prune_fast.lm.head import head_at, linear_head, logits_at
from prune_fast.lm.suffix import SuffixForward


def _gpt2(rng) -> GPT2LMHeadModel:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()


def _gemma2(rng, softcap: float | None) -> Gemma2ForCausalLM:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    cfg = Gemma2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                       final_logit_softcapping=softcap, attn_implementation="eager")
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():  # logits large enough that a softcap of 2 changes them visibly
        model.lm_head.weight.mul_(20.0)
    return model


def _batch(rng, rows: int = 3, length: int = 9):
    ids = torch.randint(0, 50, (rows, length), generator=rng)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, -3:] = 0  # a padded row
    picks = [(r, p) for r in range(rows) for p in range(length) if mask[r, p]]
    chosen = torch.randperm(len(picks), generator=rng)[:7]
    rows_t = torch.tensor([picks[i][0] for i in chosen])
    pos_t = torch.tensor([picks[i][1] for i in chosen])
    return ids, mask, rows_t, pos_t


@pytest.mark.parametrize("kind", ["gpt2", "gemma2-plain", "gemma2-softcap"])
def test_logits_at_matches_the_float64_full_forward(kind, rng):
    model = _gpt2(rng) if kind == "gpt2" else _gemma2(rng, 2.0 if kind == "gemma2-softcap" else None)
    ids, mask, rows, pos = _batch(rng)
    got = logits_at(model, ids, mask, rows, pos)
    ref = model.double()(input_ids=ids, attention_mask=mask).logits[rows, pos]
    assert got.shape == (rows.numel(), 50)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_linear_head_refuses_a_logit_transform_that_matters(rng):
    """With a softcap, head(hidden) differs from the logits: the head route must not be taken."""
    model = _gemma2(rng, 2.0)
    assert linear_head(model) is None
    ids, mask, rows, pos = _batch(rng)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[rows, pos]
        gap = model.lm_head(hidden) - model(input_ids=ids, attention_mask=mask).logits[rows, pos]
    assert float(gap.abs().max()) > 1.0
    with pytest.raises(ValueError, match="plain linear head"):
        head_at(model, hidden)
    plain = _gemma2(rng, None)
    assert linear_head(plain) is plain.lm_head


def test_suffix_route_is_unavailable_for_a_logit_transform(rng):
    model = _gemma2(rng, 2.0)
    assert SuffixForward.build(model, [[1, 2, 3, 4]], [2], [0], [3]) is None
