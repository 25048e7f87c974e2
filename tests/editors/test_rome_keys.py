"""ROME's keys at real-model cost: the key forward stops at the edited module, the context
templates and the bare prompt go through in one batch (the cache that reuses keys within a run:
test_key_cache.py) — each giving the same keys and the same update as the straightforward
computation (float64 reference, fp32 tolerance)."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prune_fast.editors import ROMEHyperParams, resolve_site  # noqa: E402
from prune_fast.editors.memit import _block_outputs  # noqa: E402
from prune_fast.editors.rome import subject_keys, template_keys  # noqa: E402
from prune_fast.lm.probes import encode, site_index  # noqa: E402
from testbed_models import fresh_testbed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATES = ("{}", "the {}", "a b c {}", "x {}")


def _small_llama(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=0, bos_token_id=2, eos_token_id=2)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _models():
    bed = fresh_testbed()
    return {"gpt2-testbed": (bed.model, bed.tokenizer, bed), "llama": (_small_llama(len(bed.tokenizer)), bed.tokenizer, bed)}


def _reference_key(model, tok, module_name, text_ctx, req, site):
    """The module input at the site of one row, alone, on a float64 copy of the whole model."""
    ref = copy.deepcopy(model).double()
    got = []
    h = ref.get_submodule(module_name).register_forward_pre_hook(lambda _m, a: got.append(a[0]))
    ids = torch.tensor([encode(tok, text_ctx.format(req.text))])
    with torch.no_grad():
        ref(input_ids=ids, attention_mask=torch.ones_like(ids))
    h.remove()
    return got[0][0, site_index(tok, text_ctx, req.prompt, req.subject, site)]


def _assert_close(got, ref, what, rtol=2e-5):
    err = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("arch", ["gpt2-testbed", "llama"])
def test_keys_stop_at_the_module_and_match_the_full_float64_forward(arch):
    model, tok, bed = _models()[arch]
    site = resolve_site(model, 1)
    module = model.get_submodule(site.module_name)
    hp = ROMEHyperParams(layer=1, context_templates=TEMPLATES)
    reqs = bed.world.edit_requests(3, seed=11)
    above = []
    handles = [m.register_forward_pre_hook(lambda *_: above.append(1))
               for m in (model.get_submodule(resolve_site(model, 2).layer_name), model.get_output_embeddings())]
    keys = template_keys(model, tok, module, reqs, hp, TEMPLATES).clone()
    for h in handles:
        h.remove()
    assert not above, "layers above the edited module (or the LM head) ran for the keys"
    assert keys.shape == (3, len(TEMPLATES), site.d_in) and torch.isfinite(keys).all()
    for i, req in enumerate(reqs):
        for j, ctx in enumerate(TEMPLATES):
            _assert_close(keys[i, j], _reference_key(model, tok, site.module_name, ctx, req, hp.site),
                          f"{arch} request {i} template {ctx!r}")


@pytest.mark.parametrize("templates", [TEMPLATES, ("the {}", "x {}")], ids=["with-bare", "without-bare"])
def test_subject_keys_one_batch_equal_separate_passes(templates):
    bed = fresh_testbed()
    model, tok = bed.model, bed.tokenizer
    site = resolve_site(model, 1)
    hp = ROMEHyperParams(layer=1, context_templates=templates)
    req = bed.world.edit_requests(1, seed=3)[0]
    key_mean, key = subject_keys(model, tok, site, req, hp, templates)
    ref_rows = torch.stack([_reference_key(model, tok, site.module_name, c, req, hp.site) for c in templates])
    _assert_close(key_mean, ref_rows.mean(0), "k̄ (mean over templates)")
    _assert_close(key, _reference_key(model, tok, site.module_name, "{}", req, hp.site), "k (bare prompt)")


def test_memit_block_outputs_stop_at_the_block():
    bed = fresh_testbed()
    model, tok = bed.model, bed.tokenizer
    site = resolve_site(model, 1)
    block = model.get_submodule(site.layer_name)
    reqs = bed.world.edit_requests(3, seed=4)
    above = []
    h = model.get_output_embeddings().register_forward_pre_hook(lambda *_: above.append(1))
    got = _block_outputs(model, tok, block, reqs, "subject_last")
    h.remove()
    assert not above, "the LM head ran for MEMIT's block outputs"
    ref_model = copy.deepcopy(model).double()
    for i, req in enumerate(reqs):
        outs = []
        hh = ref_model.get_submodule(site.layer_name).register_forward_hook(lambda _m, _a, o: outs.append(o[0] if isinstance(o, tuple) else o))
        ids = torch.tensor([encode(tok, req.text)])
        with torch.no_grad():
            ref_model(input_ids=ids, attention_mask=torch.ones_like(ids))
        hh.remove()
        _assert_close(got[i], outs[0][0, site_index(tok, "{}", req.prompt, req.subject, "subject_last")],
                      f"block output of request {i}")
