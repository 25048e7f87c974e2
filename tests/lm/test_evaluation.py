"""Perplexity on held-out text against a float64 per-sequence reference on a tiny random GPT-2."""
import math

import torch

from prune_fast.lm.evaluation import perplexity
from prune_fast.testbed.tokenizer import WordTokenizer



def _reference_perplexity(model, tok, texts) -> float:
    """Perplexity from whole-sequence float64 log-softmax, one text at a time (1-token texts skipped)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok.encode(t)])
            if ids.shape[1] < 2:
                continue
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            total -= float(logp.gather(1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    return math.exp(total / count)

def test_perplexity_matches_float64_reference(rng):
    from transformers import GPT2Config, GPT2LMHeadModel

    words = [f"w{i}" for i in range(40)]
    tok = WordTokenizer(words)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words) + 3, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    texts = [" ".join(words[int(j)] for j in torch.randint(0, 40, (int(n),), generator=rng))
             for n in torch.randint(1, 12, (9,), generator=rng)]  # lengths 1..11: the 1-token ones are skipped
    got = perplexity(model, tok, texts, batch_size=4)  # several batches with padding
    want = _reference_perplexity(model, tok, texts)
    assert abs(got - want) <= 1e-4 * want, (got, want)


def test_chunked_perplexity_matches_float64_reference_at_tiny_chunks(rng):
    """Position chunks of 3, vocabulary chunks of 7 (not dividing the vocabulary), batches of a few
    tokens, a Llama with a tied head: the same value as the whole-logits float64 computation."""
    from transformers import LlamaConfig, LlamaForCausalLM

    words = [f"w{i}" for i in range(50)]
    tok = WordTokenizer(words)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(words) + 3, hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, tie_word_embeddings=True)).eval()
    texts = [" ".join(words[int(j)] for j in torch.randint(0, 50, (int(n),), generator=rng))
             for n in torch.randint(1, 30, (13,), generator=rng)]
    got = perplexity(model, tok, texts, batch_size=3, token_budget=40, position_chunk=3, vocab_chunk=7)
    want = _reference_perplexity(model, tok, texts)
    assert abs(got - want) <= 1e-5 * want, (got, want)
