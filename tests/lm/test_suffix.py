"""``SuffixForward`` (``lm/suffix.py``): the logits at the read positions equal a float64 forward of
each row alone, for a small Llama (rotary positions, grouped-query attention) and a GPT-2 (learned
positions), whatever the cuts: empty prefixes, every row cut at 0, one row, reads at the cut and at
the row's end; repeated calls do not leak a step's keys into the next; models or reads it cannot
serve are refused with ``None``."""
import copy
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prune_fast.lm.suffix import SuffixForward  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 97


def _llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


MODELS = {"llama": _llama, "gpt2": _gpt2}


def _reference(model, rows, read_rows, read_pos) -> torch.Tensor:
    """float64, each row alone (no padding, no mask, no cache): logits at the reads."""
    m64 = copy.deepcopy(model).double()
    out = []
    with torch.no_grad():
        for r, p in zip(read_rows, read_pos):
            logits = m64(input_ids=torch.tensor([rows[r]])).logits[0]
            out.append(logits[p])
    return torch.stack(out)


def _case(rng: random.Random, n_rows: int, zero_cuts: bool = False):
    rows = [[rng.randrange(2, VOCAB) for _ in range(rng.randint(1, 14))] for _ in range(n_rows)]
    cuts = [0 if zero_cuts else rng.randrange(len(row)) for row in rows]
    read_rows, read_pos = [], []
    for r, (row, c) in enumerate(zip(rows, cuts)):
        for p in sorted({c, len(row) - 1, rng.randrange(c, len(row))}):   # at the cut, at the end, between
            read_rows.append(r)
            read_pos.append(p)
    return rows, cuts, read_rows, read_pos


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("n_rows, zero_cuts", [(1, False), (3, False), (5, False), (3, True)])
def test_logits_equal_a_float64_forward_of_each_row(arch, n_rows, zero_cuts):
    model = MODELS[arch]()
    rng = random.Random(f"{arch}{n_rows}{zero_cuts}")
    for _ in range(3):
        rows, cuts, read_rows, read_pos = _case(rng, n_rows, zero_cuts)
        with torch.no_grad():
            route = SuffixForward.build(model, rows, cuts, read_rows, read_pos)
            assert route is not None
            assert (route.prefix_kv is None) == (sum(cuts) == 0)
            assert route.suffix_ids.shape[1] == sum(len(row) - c for row, c in zip(rows, cuts))
            got = route.logits()
            again = route.logits()
        ref = _reference(model, rows, read_rows, read_pos)
        assert got.shape == ref.shape and bool(torch.isfinite(got).all())
        scale = ref.abs().max().item()
        assert (got.double() - ref).abs().max().item() <= 1e-5 * max(1.0, scale)
        assert torch.equal(got, again)   # the prefix cache is copied per call: nothing leaks between steps
        assert SuffixForward.agrees_with(got, ref.float())


def test_sites_and_reads_index_the_packed_suffix():
    model = _llama()
    rows = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    cuts = [2, 0, 3]
    with torch.no_grad():
        route = SuffixForward.build(model, rows, cuts, [0, 1, 2, 2], [4, 0, 3, 3])
    assert route.suffix_ids.tolist() == [[7, 8, 9, 10, 11, 12, 16]]
    assert route.suffix_pos.tolist() == [[2, 3, 4, 0, 1, 2, 3]]
    assert route.sites.tolist() == [0, 3, 6]
    assert route.reads.tolist() == [2, 3, 6, 6]
    allowed = route.suffix_mask[0, 0] == 0
    # prefix keys first (row 0: 5 6; row 2: 13 14 15), then the suffix tokens
    assert allowed.shape == (7, 5 + 7)
    assert allowed[0].tolist() == [True, True, False, False, False, True] + [False] * 6
    assert allowed[6].tolist() == [False, False, True, True, True] + [False] * 6 + [True]


def test_refuses_what_it_cannot_serve():
    model = _llama()
    rows = [[5, 6, 7, 8], [9, 10]]
    assert SuffixForward.build(model, rows, [2, 1], [0], [1]) is None          # a read before its row's cut
    assert SuffixForward.build(model, rows, [2, 1], [1], [2]) is None          # a read past the row's end
    assert SuffixForward.build(model, rows, [4, 1], [1], [1]) is None          # a cut past the row
    assert SuffixForward.build(model, rows, [2], [0], [3]) is None             # a cut per row
    model.config._attn_implementation = "flash_attention_2"                   # ignores a custom mask
    assert SuffixForward.build(model, rows, [2, 1], [0], [3]) is None


def test_agrees_with_detects_a_wrong_forward():
    ref = torch.randn(4, VOCAB)
    assert SuffixForward.agrees_with(ref + 1e-6, ref)
    assert not SuffixForward.agrees_with(ref + 1e-2 * torch.randn_like(ref), ref)
    assert not SuffixForward.agrees_with(ref[:3], ref)
    bad = ref.clone()
    bad[0, 0] = float("nan")
    assert not SuffixForward.agrees_with(bad, ref)
