"""Token tries: the packing keeps every sequence intact and shares exactly its common prefixes, and
scores through it equal a float64 one-pair-at-a-time forward (Llama and GPT-2), with the padded
batch as fallback where the check fails."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import prune_fast.lm.evaluation as evaluation
from prune_fast.lm.evaluation import answer_logprob
from prune_fast.lm.prefix_tree import pack_prefix_trees
from prune_fast.testbed.tokenizer import WordTokenizer

WORDS = [f"w{i}" for i in range(40)]


def _random_seqs(rng, n=60, vocab=4, max_len=9):
    """Short sequences over a tiny vocabulary: many share prefixes, some repeat, lengths 1..max_len."""
    lengths = torch.randint(1, max_len + 1, (n,), generator=rng).tolist()
    return [torch.randint(0, vocab, (k,), generator=rng).tolist() for k in lengths]


@pytest.mark.parametrize("budget,max_rows,row_nodes", [(10**6, 10**6, 256), (64, 3, 16), (9, 1, 4)])
def test_packing_keeps_every_sequence_and_shares_exactly_the_common_prefixes(budget, max_rows, row_nodes, rng):
    seqs = _random_seqs(rng)
    batches = pack_prefix_trees(seqs, budget, max_rows, row_nodes=row_nodes)
    seen = []
    for tb in batches:
        rows, width = tb.ids.shape
        assert rows <= max_rows and (rows == 1 or rows * width <= budget)
        flat_ids, flat_pos = tb.ids.reshape(-1), tb.positions.reshape(-1)
        vis = tb.visible.reshape(rows * width, width)
        for i, nodes in zip(tb.members, tb.node_of):
            seen.append(i)
            assert flat_ids[nodes].tolist() == seqs[i]                       # its tokens, in order
            assert flat_pos[nodes].tolist() == list(range(len(seqs[i])))     # at their positions
            for j, node in enumerate(nodes.tolist()):                        # sees its own prefix, nothing else
                want = torch.zeros(width, dtype=torch.bool)
                want[(nodes[: j + 1] % width)] = True
                assert torch.equal(vis[node], want)
        mask = tb.additive_mask(torch.float32)
        assert mask.shape == (rows, 1, width, width)
        assert bool((mask[:, 0] == 0).eq(tb.visible).all())
        assert bool(tb.visible.diagonal(dim1=1, dim2=2).all())              # padding sees itself: no empty row
    assert sorted(seen) == list(range(len(seqs)))
    if row_nodes >= 256:  # one trie: as many nodes as distinct prefixes
        distinct = {tuple(s[:k]) for s in seqs for k in range(1, len(s) + 1)}
        assert sum(len(set(torch.cat(tb.node_of).tolist())) for tb in batches) == len(distinct)


def test_packing_is_deterministic_and_refuses_an_empty_sequence(rng):
    seqs = _random_seqs(rng)
    a, b = pack_prefix_trees(seqs, 100, 4), pack_prefix_trees(seqs, 100, 4)
    assert all(torch.equal(x.ids, y.ids) and x.members == y.members for x, y in zip(a, b))
    with pytest.raises(ValueError, match="empty"):
        pack_prefix_trees([[1], []], 100, 4)


def _model(kind, rng):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 3, n_positions=64, n_embd=32, n_layer=2,
                                          n_head=2)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS) + 3, hidden_size=32, intermediate_size=48,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


def _contest_pairs(rng, n_prompts=7):
    """Each prompt against two answers (an edit contest), plus few-shot items behind one shared head."""
    def words(k):
        return " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=rng))
    pairs = []
    for _ in range(n_prompts):
        prompt = words(int(torch.randint(2, 9, (1,), generator=rng)))
        pairs += [(prompt, words(int(torch.randint(1, 3, (1,), generator=rng)))) for _ in range(2)]
    head = words(10)
    pairs += [(head + " " + words(2), words(1)) for _ in range(5)]
    return pairs


def _reference(model, tok, pairs):
    """Float64 log-softmax of a float64 copy of the model, one pair at a time."""
    m64 = copy.deepcopy(model).double()
    lps, oks = [], []
    with torch.no_grad():
        for prompt, answer in pairs:
            p, a = tok.encode(prompt), tok.encode(" " + answer, add_special_tokens=False)
            logits = m64(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1]
            lps.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(a)[:, None]).sum()))
            oks.append(bool((logits.argmax(-1) == torch.tensor(a)).all()))
    return torch.tensor(lps, dtype=torch.float64), torch.tensor(oks)


def _forward_tokens(model):
    """Count the tokens the body runs (input_ids numel per call)."""
    seen = []
    h = model.base_model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
    return seen, h


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_packed_scores_match_float64_and_run_fewer_tokens(kind, rng, monkeypatch):
    monkeypatch.setattr(evaluation, "_TREE_ROUTE_OK", evaluation.weakref.WeakKeyDictionary())
    model, tok = _model(kind, rng), WordTokenizer(WORDS)
    pairs = _contest_pairs(rng)
    want_lp, want_ok = _reference(model, tok, pairs)
    answer_logprob(model, tok, pairs[:2])                   # the once-per-model check
    assert evaluation._TREE_ROUTE_OK[model] is True
    seen, h = _forward_tokens(model)
    lp, ok = answer_logprob(model, tok, pairs, batch_size=4, token_budget=40)   # several tries, several batches
    h.remove()
    assert lp.shape == (len(pairs),) and bool(torch.isfinite(lp).all())
    torch.testing.assert_close(lp.double(), want_lp, rtol=1e-5, atol=2e-5)
    assert torch.equal(ok, want_ok)
    plain_tokens = sum(len(tok.encode(p)) + len(tok.encode(" " + a, add_special_tokens=False)) for p, a in pairs)
    assert 0 < sum(seen) < 0.8 * plain_tokens                # shared prefixes ran once (padding included)


@pytest.mark.parametrize("why", ["no-custom-mask", "disagrees"])
def test_padded_fallback_when_the_packed_route_fails_its_check(why, rng, monkeypatch, caplog):
    monkeypatch.setattr(evaluation, "_TREE_ROUTE_OK", evaluation.weakref.WeakKeyDictionary())
    caplog.set_level(logging.INFO, logger=evaluation.__name__)
    model, tok = _model("llama", rng), WordTokenizer(WORDS)
    pairs = _contest_pairs(rng)
    real = evaluation._tree_scores
    if why == "no-custom-mask":
        monkeypatch.setattr(evaluation, "takes_custom_mask", lambda _m: False)
    else:
        def off(*args, **kwargs):
            lps, oks = real(*args, **kwargs)
            return lps + 1.0, oks
        monkeypatch.setattr(evaluation, "_tree_scores", off)
    lp, ok = answer_logprob(model, tok, pairs, batch_size=4, token_budget=40)
    assert evaluation._TREE_ROUTE_OK[model] is False
    want_lp, want_ok = _reference(model, tok, pairs)
    torch.testing.assert_close(lp.double(), want_lp, rtol=1e-5, atol=2e-5)
    assert torch.equal(ok, want_ok)
    if why == "disagrees":
        assert any("disagrees" in r.getMessage() for r in caplog.records)
