"""The value search (``editors/values.py``) gives the same target as the straightforward search
(``tests/value_reference.py``: whole model, every position, every step) to fp32 tolerance, on the
trained test bed (GPT-2 layout) and on a small Llama, for ROME's site and MEMIT's block site, while
the layers below the edited one run once per request instead of once per step."""
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prune_fast.editors import MEMITHyperParams, ROMEHyperParams, resolve_site  # noqa: E402
from prune_fast.editors.values import optimize_value  # noqa: E402
from prune_fast.lm.probes import encode, site_index  # noqa: E402
from prune_fast.lm.suffix import SuffixForward  # noqa: E402
from testbed_models import fresh_testbed  # noqa: E402
from value_reference import optimize_value_reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _compare(model, tok, req, module, hp):
    ref = optimize_value_reference(model, tok, req, module, hp)
    got = optimize_value(model, tok, req, module, hp)
    assert got.steps == ref.steps, (got.steps, ref.steps)
    assert abs(got.nll_start - ref.nll_start) <= 1e-5 * max(1.0, abs(ref.nll_start))
    assert torch.allclose(got.v0, ref.v0, rtol=1e-5, atol=1e-6)
    err = ((got.target.double() - ref.target.double()).norm() / ref.target.double().norm()).item()
    assert err <= 1e-5, f"target differs by {err:.2e} (relative) after {ref.steps} steps"
    return got


@pytest.mark.parametrize("where", ["rome", "memit"])
def test_testbed_value_search_matches_reference(where):
    bed = fresh_testbed()
    if where == "rome":
        hp = ROMEHyperParams.preset("testbed")
        module = bed.model.get_submodule(resolve_site(bed.model, hp.layer).module_name)
    else:
        hp = MEMITHyperParams.preset("testbed")
        module = bed.model.get_submodule(resolve_site(bed.model, hp.layers[-1]).layer_name)
    for req in bed.world.edit_requests(3, seed=5):
        _compare(bed.model, bed.tokenizer, req, module, hp)


def test_llama_value_search_matches_reference_and_skips_the_prefix():
    bed = fresh_testbed()  # its word tokenizer serves the small Llama too
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(bed.tokenizer), hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    hp = ROMEHyperParams(layer=2, context_templates=("{}", "the {}", "a b c {}"), v_steps=6, nll_stop=1e-9)
    module = model.get_submodule(resolve_site(model, 2).module_name)
    calls, tokens = [], []
    h0 = model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    h2 = model.model.layers[2].register_forward_pre_hook(lambda _m, a: tokens.append(a[0].shape[:2]))
    req = bed.world.edit_requests(1, seed=1)[0]
    got = optimize_value(model, bed.tokenizer, req, module, hp)
    h0.remove()
    h2.remove()
    # layer 0 runs on the plain batch, the packed prefix and the packed suffix's first pass: never per step
    assert got.steps == 6 and len(calls) == 3, f"layer 0 ran {len(calls)} times for {got.steps} steps"
    assert [type(m).__name__ for m in model.model.layers] == ["LlamaDecoderLayer"] * 4   # restored
    # every step runs only the positions from each row's site on, packed in one unpadded row
    rows = [len(encode(bed.tokenizer, ctx.format(req.text))) + len(encode(bed.tokenizer, " " + req.target_new,
            add_special_tokens=False)) - 1 for ctx in hp.context_templates]
    sites = [site_index(bed.tokenizer, ctx, req.prompt, req.subject, hp.site) for ctx in hp.context_templates]
    kl = encode(bed.tokenizer, hp.kl_template.format(req.subject))
    kl_site = site_index(bed.tokenizer, "{}", hp.kl_template, req.subject, hp.site)
    suffix = sum(n - c for n, c in zip(rows, sites)) + len(kl) - kl_site
    assert tokens[0] == (len(rows) + 1, max(rows + [len(kl)]))             # the plain, padded batch
    assert all(t == (1, suffix) for t in tokens[-got.steps:]), (tokens, suffix)
    assert suffix < 0.75 * tokens[0][0] * tokens[0][1]
    _compare(model, bed.tokenizer, req, module, hp)


@pytest.mark.parametrize("why", ["refused", "disagrees"])
def test_padded_route_where_the_packed_one_is_unavailable(monkeypatch, caplog, why):
    """A model the packed route cannot serve, or whose packed first pass does not reproduce the plain
    forward: every step runs the padded batch, with the same result as the reference, and the
    fallback is said once at INFO (later requests only at DEBUG)."""
    import prune_fast.editors.values as values_mod

    monkeypatch.setattr(values_mod, "_fallbacks_reported", set())
    caplog.set_level(logging.DEBUG, logger=values_mod.__name__)
    bed = fresh_testbed()
    hp = ROMEHyperParams.preset("testbed")
    module = bed.model.get_submodule(resolve_site(bed.model, hp.layer).module_name)
    if why == "refused":
        monkeypatch.setattr(SuffixForward, "build", classmethod(lambda *_a, **_k: None))
    else:
        monkeypatch.setattr(SuffixForward, "agrees_with", staticmethod(lambda *_a, **_k: False))
    shapes = []
    h = module.register_forward_hook(lambda _m, _a, out: shapes.append(out.shape[:2]))
    req = bed.world.edit_requests(1, seed=5)[0]
    got = optimize_value(bed.model, bed.tokenizer, req, module, hp)
    h.remove()
    assert len(shapes) == got.steps + (1 if why == "refused" else 3)   # + the packed prefix and first pass
    assert shapes[0][0] == 2 and all(sh == shapes[0] for sh in shapes[-got.steps:])   # the padded batch
    said = [r for r in caplog.records if "padded batch" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]
    optimize_value(bed.model, bed.tokenizer, bed.world.edit_requests(1, seed=6)[0], module, hp)
    said = [r for r in caplog.records if "padded batch" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO, logging.DEBUG]
    _compare(bed.model, bed.tokenizer, req, module, hp)
