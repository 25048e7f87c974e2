"""The value search (``editors/values.py``) gives the same target as the straightforward search
(``tests/value_reference.py``: whole model, every position, every step) to fp32 tolerance, on the
trained test bed (GPT-2 layout) and on a small Llama, for ROME's site and MEMIT's block site, while
the layers below the edited one run once per request instead of once per step."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from prune_fast.lm.requests import EditRequest  # noqa: E402
from prune_fast.editors import MEMITHyperParams, ROMEHyperParams, resolve_site  # noqa: E402
from prune_fast.editors.values import optimize_value  # noqa: E402
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
    calls = []
    h = model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    req = bed.world.edit_requests(1, seed=1)[0]
    got = optimize_value(model, bed.tokenizer, req, module, hp)
    h.remove()
    assert got.steps == 6 and len(calls) == 1, f"layer 0 ran {len(calls)} times for {got.steps} steps"
    assert [type(m).__name__ for m in model.model.layers] == ["LlamaDecoderLayer"] * 4   # restored
    _compare(model, bed.tokenizer, req, module, hp)
