"""Perplexity on held-out text against a float64 per-sequence reference on a tiny random GPT-2."""
import math

import torch

from prune_fast.evaluation import perplexity
from prune_fast.testbed.tokenizer import WordTokenizer


def test_perplexity_matches_float64_reference(rng):
    from transformers import GPT2Config, GPT2LMHeadModel

    words = [f"w{i}" for i in range(40)]
    tok = WordTokenizer(words)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words) + 3, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    texts = [" ".join(words[int(j)] for j in torch.randint(0, 40, (int(n),), generator=rng))
             for n in torch.randint(1, 12, (9,), generator=rng)]  # lengths 1..11: the 1-token ones are skipped
    got = perplexity(model, tok, texts, batch_size=4)  # several batches with padding
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok.encode(t)])
            if ids.shape[1] < 2:
                continue
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            total -= float(logp.gather(1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    want = math.exp(total / count)
    assert abs(got - want) <= 1e-4 * want, (got, want)
