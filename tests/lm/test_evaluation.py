"""Perplexity on held-out text against a float64 per-sequence reference on a tiny random GPT-2."""
import math

import pytest
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


# -- answer_logprob: the scorer of every edit metric and ability --------------------------------------

def _reference_answer_scores(model, tok, pairs):
    """Σ log P(answer) from whole-sequence float64 log-softmax and all-tokens-argmax, one pair at a time."""
    lps, oks = [], []
    with torch.no_grad():
        for prompt, answer in pairs:
            p, a = tok.encode(prompt), tok.encode(" " + answer, add_special_tokens=False)
            logits = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1].double()
            logp = torch.log_softmax(logits, -1)
            lps.append(float(logp.gather(1, torch.tensor(a)[:, None]).sum()))
            oks.append(bool((logits.argmax(-1) == torch.tensor(a)).all()))
    return torch.tensor(lps, dtype=torch.float64), torch.tensor(oks)


def _tiny_llama(words, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(words) + 3, hidden_size=32, intermediate_size=48,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, tie_word_embeddings=True)).eval()


def _random_pairs(words, rng, n):
    pick = lambda k: " ".join(words[int(j)] for j in torch.randint(0, len(words), (k,), generator=rng))  # noqa: E731
    return [(pick(int(torch.randint(1, 14, (1,), generator=rng))), pick(int(torch.randint(1, 4, (1,), generator=rng))))
            for _ in range(n)]


def test_answer_logprob_matches_float64_reference_in_the_callers_order(rng):
    """Prompts of 1–13 words, answers of 1–3 tokens, packed into small batches of mixed lengths and
    scored with the head at the answer positions over vocabulary chunks of 7: every pair's log-prob
    and top-1 equal the whole-logits float64 computation, in the order the pairs were given."""
    from prune_fast.lm.evaluation import answer_logprob

    words = [f"w{i}" for i in range(50)]
    tok = WordTokenizer(words)
    model = _tiny_llama(words, int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    pairs = _random_pairs(words, rng, 37)
    lp, ok = answer_logprob(model, tok, pairs, batch_size=5, token_budget=40, vocab_chunk=7)
    want_lp, want_ok = _reference_answer_scores(model, tok, pairs)
    assert lp.shape == (37,) and ok.shape == (37,) and torch.isfinite(lp).all()
    torch.testing.assert_close(lp.double(), want_lp, rtol=1e-5, atol=1e-5)
    assert torch.equal(ok, want_ok)
    # The default batching gives the same numbers.
    lp2, ok2 = answer_logprob(model, tok, pairs)
    torch.testing.assert_close(lp2.double(), want_lp, rtol=1e-5, atol=1e-5)
    assert torch.equal(ok2, want_ok)


def test_answer_logprob_top1_ties_go_to_the_first_entry_across_vocabulary_chunks():
    """Two head rows in different vocabulary chunks are set equal and made the largest logit: the
    earlier token is the arg-max (torch's rule) and the later one is not, as in the whole-logits
    reference; a row-wise max per chunk that let the later chunk win would fail."""
    from prune_fast.lm.evaluation import answer_logprob

    words = [f"w{i}" for i in range(30)]  # word w{i} is token i + 3
    tok = WordTokenizer(words)
    model = _tiny_llama(words, 0)
    prompt = "w10 w11 w12"
    first, second = 7, 20  # w4 and w17: chunks 0 and 2 at vocab_chunk=8, neither in the prompt
    with torch.no_grad():
        ids = torch.tensor([tok.encode(prompt)])
        h = model.base_model(input_ids=ids).last_hidden_state[0, -1]
        top = float(model(input_ids=ids).logits[0, -1].abs().max())
        w = model.get_output_embeddings().weight
        w[first] = w[second] = h * (2 * top / float(h @ h) + 1.0)
        logits = model(input_ids=ids).logits[0, -1]
        assert logits[first] == logits[second] == logits.max()
    pairs = [(prompt, "w4"), (prompt, "w17")]
    _, ok = answer_logprob(model, tok, pairs, vocab_chunk=8)
    _, want = _reference_answer_scores(model, tok, pairs)
    assert want.tolist() == [True, False]
    assert ok.tolist() == [True, False]


def test_answer_logprob_whole_logits_route_for_heads_with_a_logit_transform(rng):
    """A config that declares a logit transform sends the scorer through the model's own logits;
    the numbers still match the reference (this GPT-2 ignores the field, so both must agree)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from prune_fast.lm.evaluation import answer_logprob, perplexity
    from prune_fast.lm.head import linear_head

    words = [f"w{i}" for i in range(40)]
    tok = WordTokenizer(words)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words) + 3, n_positions=32, n_embd=32, n_layer=2,
                                       n_head=2)).eval()
    assert linear_head(model) is model.lm_head
    pairs = _random_pairs(words, rng, 11)
    fast = answer_logprob(model, tok, pairs, batch_size=4)
    model.config.final_logit_softcapping = 30.0
    assert linear_head(model) is None
    lp, ok = answer_logprob(model, tok, pairs, batch_size=4)
    want_lp, want_ok = _reference_answer_scores(model, tok, pairs)
    torch.testing.assert_close(lp.double(), want_lp, rtol=1e-5, atol=1e-5)
    assert torch.equal(ok, want_ok) and torch.equal(fast[1], want_ok)
    texts = [p + " " + a for p, a in pairs]
    assert abs(perplexity(model, tok, texts, batch_size=3) - _reference_perplexity(model, tok, texts)) <= \
        1e-4 * _reference_perplexity(model, tok, texts)


def test_answer_logprob_of_no_pairs_is_empty():
    from prune_fast.lm.evaluation import answer_logprob

    words = [f"w{i}" for i in range(10)]
    lp, ok = answer_logprob(_tiny_llama(words, 0), WordTokenizer(words), [])
    assert lp.shape == (0,) and ok.shape == (0,) and ok.dtype == torch.bool


def test_edit_scores_match_per_pair_float64_scoring(rng):
    """Efficacy, generalisation and locality (top-1 and the probability contest) of random requests,
    some without a true target or paraphrases, equal the float64 reference scored pair by pair."""
    from prune_fast.lm.evaluation import Evaluator
    from prune_fast.lm.requests import EditRequest

    words = [f"w{i}" for i in range(12)]  # a small vocabulary: many answers are the model's top-1
    tok = WordTokenizer(words)
    model = _tiny_llama(words, int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    w = lambda: words[int(torch.randint(0, len(words), (1,), generator=rng))]  # noqa: E731
    reqs = []
    for i in range(9):
        reqs.append(EditRequest(prompt=f"{w()} {{}} {w()}", subject=w(), target_new=w(),
                                target_true=None if i % 4 == 3 else w(),
                                paraphrase_prompts=tuple(f"{w()} {w()}" for _ in range(i % 3)),
                                neighborhood_prompts=tuple(f"{w()} {w()} {w()}" for _ in range(1 + i % 2)),
                                neighborhood_answers=tuple(w() for _ in range(1 + i % 2)), case_id=i))
    got = Evaluator(model, tok).edit_scores(reqs)

    def contest(items):
        lp_a, ok = _reference_answer_scores(model, tok, [(p, a) for p, a, _ in items])
        with_b = [i for i, (_, _, b) in enumerate(items) if b is not None]
        lp_b, _ = _reference_answer_scores(model, tok, [(items[i][0], items[i][2]) for i in with_b])
        return float(ok.double().mean()), float((lp_a[with_b] > lp_b).double().mean())

    eff = [(r.text, r.target_new, r.target_true) for r in reqs]
    gen = [(p, r.target_new, r.target_true) for r in reqs for p in r.paraphrase_prompts]
    loc = [(p, a, r.target_new) for r in reqs for p, a in r.neighborhood()]
    for name, items in (("efficacy", eff), ("generalization", gen), ("locality", loc)):
        top1, prob = contest(items)
        assert got[name] == pytest.approx(top1, abs=1e-6), name  # fp32 means
        assert got[name + "_prob"] == pytest.approx(prob, abs=1e-6), name
    none = Evaluator(model, tok).edit_scores([EditRequest(prompt="{} w1", subject="w2", target_new="w3")])
    assert none["efficacy"] in (0.0, 1.0) and math.isnan(none["efficacy_prob"])
    assert math.isnan(none["generalization"]) and math.isnan(none["locality_prob"])


def test_general_takes_known_scores_and_scores_the_rest(rng):
    """``known`` accuracies are reported as given and their tasks never called; every other ability is
    scored as without ``known`` (equal to the float64 per-pair reference's top-1 mean)."""
    from prune_fast.lm.evaluation import Evaluator

    words = [f"w{i}" for i in range(12)]
    tok = WordTokenizer(words)
    model = _tiny_llama(words, int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    w = lambda: words[int(torch.randint(0, len(words), (1,), generator=rng))]  # noqa: E731
    pairs = [(f"{w()} {w()}", w()) for _ in range(20)]
    calls = []

    def skipped(edited):
        calls.append(edited)
        return pairs

    ev = Evaluator(model, tok, abilities={"given": skipped, "scored": pairs})
    got = ev.general(known={"given": 0.125})
    assert calls == [] and got["given"] == 0.125
    _, ok = _reference_answer_scores(model, tok, pairs)
    assert got["scored"] == pytest.approx(float(ok.double().mean()), abs=1e-6)
    assert ev.general()["scored"] == got["scored"] and len(calls) == 1
