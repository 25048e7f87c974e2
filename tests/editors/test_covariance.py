"""Key statistics (``prune_fast.editors.covariance``): the truncated, length-packed, multi-layer pass
equals the straightforward float64 computation; it resumes from a killed pass; the cache is keyed by
content (not by how the model folder was spelled), shared, written once when two runs fill it at
once; and the Cholesky factor of C is computed once per module and reused by every edit."""
import threading
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prune_fast.editors import CovarianceStore, ROMEHyperParams, compute_rome, resolve_site  # noqa: E402
from prune_fast.editors import covariance as cov_mod  # noqa: E402
from prune_fast.cache import default_cache_dir  # noqa: E402
from prune_fast.editors.covariance import model_key  # noqa: E402
from prune_fast.lm.probes import pack_batches  # noqa: E402
from prune_fast.testbed import World, WorldSpec, WordTokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = World.generate(WorldSpec(n_subjects=20, n_relations=3, seed=3))
TOK = WordTokenizer(WORLD.vocabulary())


def _llama(n_layers=4, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(TOK), hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=2)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=len(TOK), n_positions=64, n_embd=32, n_layer=3, n_head=2,
                                  n_inner=64, pad_token_id=0, bos_token_id=2, eos_token_id=2)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _texts(rng, n):
    """Corpus lines of random lengths (1 to 40 words), so batches mix very different lengths."""
    words = WORLD.vocabulary()
    lens = torch.randint(1, 41, (n,), generator=rng).tolist()
    return [" ".join(words[int(i)] for i in torch.randint(5, len(words), (k,), generator=rng)) for k in lens]


def _reference(model, sites, texts, max_tokens):
    """Float64 mean outer products, one text at a time (no padding, no truncation, whole model)."""
    keys = {s.module_name: [] for s in sites}
    handles = [model.get_submodule(s.module_name).register_forward_pre_hook(
        lambda _m, args, name=s.module_name: keys[name].append(args[0][0].double())) for s in sites]
    with torch.no_grad():
        for t in texts:
            model(input_ids=torch.tensor([TOK.encode(t)[:max_tokens]]))
    for h in handles:
        h.remove()
    out = {}
    for name, ks in keys.items():
        k = torch.cat(ks)
        out[name] = k.T @ k / k.shape[0]
    return out


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_one_truncated_pass_equals_the_straightforward_computation(family, rng):
    model = _llama() if family == "llama" else _gpt2()
    sites = [resolve_site(model, layer) for layer in (0, 1)]          # the top layer(s) never run
    texts = _texts(rng, 37)
    ran = []
    top = model.get_submodule("model.layers.2" if family == "llama" else "transformer.h.2")
    h = top.register_forward_pre_hook(lambda *_: ran.append(1))
    store = CovarianceStore(texts, cache_dir=None, batch_size=5, token_budget=60, progress=False)
    got = store.get_many(model, TOK, sites, n_samples=37, max_tokens=24)
    h.remove()
    assert not ran, "layers above the highest needed module ran"
    ref = _reference(model, sites, texts, 24)
    for s in sites:
        c = got[s.module_name]
        assert c.shape == (s.d_in, s.d_in) and torch.isfinite(c).all()
        err = _rel(c, ref[s.module_name])
        assert err <= 1e-6, f"{s.module_name}: relative error {err:.2e}"


def test_packing_groups_by_length_without_losing_texts(rng):
    lengths = torch.randint(0, 50, (200,), generator=rng).tolist()
    batches = pack_batches(lengths, token_budget=128, max_rows=16)
    flat = sorted(i for b in batches for i in b)
    assert flat == [i for i, n in enumerate(lengths) if n > 0]             # every non-empty text once
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 16 and (len(b) == 1 or len(b) * longest <= 128)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded <= 1.1 * sum(lengths)                                   # sorted: little padding


def test_a_killed_pass_resumes_from_its_last_saved_chunk(tmp_path, rng):
    model = _llama()
    site = resolve_site(model, 1)
    texts = _texts(rng, 40)
    module = model.get_submodule(site.module_name)
    calls = []

    def killer(_m, _args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("killed")

    h = module.register_forward_pre_hook(killer)
    store = CovarianceStore(texts, cache_dir=tmp_path, batch_size=4, token_budget=10_000, progress=False,
                            checkpoint_s=0.0)
    with pytest.raises(KeyboardInterrupt):
        store.get(model, TOK, site, 40, 32)
    h.remove()
    partial = list((tmp_path / "covariance").rglob("partial-*.safetensors"))
    assert len(partial) == 1
    calls.clear()
    h = module.register_forward_pre_hook(lambda *_: calls.append(1))
    fresh = CovarianceStore(texts, cache_dir=tmp_path, batch_size=4, token_budget=10_000, progress=False)
    c = fresh.get(model, TOK, site, 40, 32)
    h.remove()
    assert len(calls) == 10 - 5, f"resumed pass ran {len(calls)} batches, expected the 5 not yet saved"
    assert not list((tmp_path / "covariance").rglob("partial-*.safetensors"))
    err = _rel(c, _reference(model, [site], texts, 32)[site.module_name])
    assert err <= 1e-6, f"relative error {err:.2e} after resuming"


def test_model_key_is_content_not_path(tmp_path, monkeypatch):
    model = _llama()
    model.save_pretrained(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    a = transformers.AutoModelForCausalLM.from_pretrained("m")
    b = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    monkeypatch.chdir(tmp_path / "m")
    c = transformers.AutoModelForCausalLM.from_pretrained(".")
    assert a.config._name_or_path != b.config._name_or_path
    assert model_key(a) == model_key(b) == model_key(c) == model_key(model)
    # an edit of an MLP weight keeps the key; another model's weights change it
    with torch.no_grad():
        a.model.layers[1].mlp.down_proj.weight.add_(1.0)
    assert model_key(a) == model_key(b)
    with torch.no_grad():
        b.model.layers[1].self_attn.q_proj.weight[0, 0] += 1.0             # a sampled non-MLP element
    assert model_key(b) != model_key(c)
    assert model_key(_llama(seed=1)) != model_key(c)


def test_two_runs_filling_the_cache_at_once_compute_it_once(tmp_path, rng):
    model = _llama()
    site = resolve_site(model, 2)
    texts = _texts(rng, 30)
    module = model.get_submodule(site.module_name)
    calls = []
    h = module.register_forward_pre_hook(lambda *_: calls.append(1))
    results = [None, None]
    barrier = threading.Barrier(2)

    def run(i):
        store = CovarianceStore(texts, cache_dir=tmp_path, batch_size=8, progress=False)
        barrier.wait()
        results[i] = store.get(model, TOK, site, 30, 32)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.remove()
    n_batches = len(pack_batches([len(TOK.encode(t)[:32]) for t in texts], 8192, 8))
    assert len(calls) == n_batches, "the statistics were computed twice"
    assert torch.equal(results[0], results[1])
    files = list((tmp_path / "covariance").rglob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "covariance").rglob("*.tmp"))


def test_cholesky_factor_is_computed_once_and_reused(tmp_path, rng, monkeypatch):
    model = _gpt2()
    hp = ROMEHyperParams(layer=1, cov_samples=40, context_templates=("{}",), v_steps=3, cov_ridge=0.5)
    texts = _texts(rng, 40)
    store = CovarianceStore(texts, cache_dir=tmp_path, progress=False)
    n_factor = []
    real = cov_mod.cholesky_of
    monkeypatch.setattr(cov_mod, "cholesky_of", lambda *a, **k: n_factor.append(1) or real(*a, **k))
    from prune_fast.lm.requests import EditRequest

    words = WORLD.vocabulary()
    reqs = [EditRequest(prompt="{} " + words[10], subject=words[5 + i], target_new=words[20 + i]) for i in range(3)]
    site = resolve_site(model, 1)
    res = [compute_rome(model, TOK, r, hp, store) for r in reqs]
    assert len(n_factor) == 1
    # the update it gives is the float64 solve with C + ridge
    c = store.get(model, TOK, site, 40, hp.cov_max_tokens).double()
    c = c + 0.5 * c.diagonal().mean() * torch.eye(c.shape[0], dtype=torch.float64)
    k = res[0].key.double()
    left = torch.linalg.solve(c, k) / (k @ torch.linalg.solve(c, k))
    got_left = res[0].updates[0].u[:, 0].double()                           # Conv1D: u is the key side
    err = ((got_left - left).norm() / left.norm()).item()
    assert err < 1e-5, f"key side differs from the float64 solve by {err:.2e}"


def test_cache_lives_under_prune_fast_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_FAST_CACHE", str(tmp_path / "shared"))
    assert default_cache_dir() == tmp_path / "shared"
    monkeypatch.delenv("PRUNE_FAST_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "prune_fast"
