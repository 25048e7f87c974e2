"""editors/key_cache.py: ROME's subject keys reused within a run, recomputed as soon as a parameter
feeding them was written — whoever wrote it, with nothing to call. Each cached key is checked
against a fresh computation on the model as it is (fp32 tolerance)."""
import dataclasses

import pytest
import torch

pytest.importorskip("transformers")

from prune_fast.editors import ROMEHyperParams, compute_rome, resolve_site  # noqa: E402
from prune_fast.editors.key_cache import KeyCache, feeds_key  # noqa: E402
from prune_fast.editors.rome import subject_keys  # noqa: E402
from prune_fast.updates import TrackerSet  # noqa: E402
from testbed_models import fresh_testbed, shared_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_close(got, ref, what, rtol=2e-5):
    err = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def test_cached_keys_survive_edits_of_their_own_weight_and_give_the_same_update():
    bed = fresh_testbed()
    model, tok = bed.model, bed.tokenizer
    hp = dataclasses.replace(ROMEHyperParams.preset("testbed"), context_templates=("{}", "the {}", "x {}"))
    store = shared_store()
    first, other = bed.world.edit_requests(2, seed=7)
    again = dataclasses.replace(first, target_new=other.target_new)    # the same subject and prompt later in a run
    cache = KeyCache(model)
    res = compute_rome(model, tok, first, hp, store, key_cache=cache)
    assert len(cache) == 1 and cache.hits == 0
    TrackerSet(model, restrain_every=None).apply_(res.updates)         # writes the module's own weight only

    cached = compute_rome(model, tok, again, hp, store, key_cache=cache)
    assert cache.hits == 1 and cache.stale == 0
    fresh = compute_rome(model, tok, again, hp, store)                   # recomputed on the edited model
    _assert_close(cached.key, fresh.key, "cached k vs recomputed")
    for a, b in zip(cached.updates, fresh.updates):
        _assert_close(a.u @ a.v.T, b.u @ b.v.T, "ΔW with cached keys vs recomputed", rtol=1e-5)


def _feeding_cases(model, site):
    names = [n for n, _ in model.named_parameters()]
    same_layer = next(n for n in names if n.startswith(site.layer_name + ".") and n != site.param_name
                      and n.endswith("weight"))
    below = resolve_site(model, site.layer - 1).param_name
    above_any = [n for n in names if n.startswith(resolve_site(model, site.layer + 1).layer_name + ".")]
    embedding = next(n for n in names if "wte" in n or "embed" in n)
    # parameter -> does a write to it make the key stale?
    return {site.param_name: False, above_any[0]: False, above_any[-1]: False,
            below: True, same_layer: True, embedding: True}


@pytest.mark.parametrize("how", ["in place under no_grad", "optimiser step", "load_state_dict", "replaced tensor"])
def test_any_write_to_a_parameter_feeding_the_key_is_seen(how):
    """No caller cooperation: writes that never went through a tracker still make the entry stale,
    and the recomputed key equals a fresh one; writes to parameters that do not feed it keep it."""
    bed = fresh_testbed()
    model, tok = bed.model, bed.tokenizer
    hp = dataclasses.replace(ROMEHyperParams.preset("testbed"), layer=1)
    site = resolve_site(model, 1)
    req = bed.world.edit_requests(1, seed=2)[0]
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(5)
    for name, stale in _feeding_cases(model, site).items():
        cache = KeyCache(model)
        subject_keys(model, tok, site, req, hp, hp.context_templates, cache)
        p = params[name]
        bump = 1e-2 * torch.randn(p.shape, generator=g)
        if how == "in place under no_grad":
            with torch.no_grad():
                p.add_(bump)
        elif how == "optimiser step":
            p.grad = bump.clone()
            torch.optim.SGD([p], lr=1.0).step()
            p.grad = None
        elif how == "load_state_dict":
            state = {k: v.clone() for k, v in model.state_dict().items()}
            state[name] += bump
            model.load_state_dict(state)
            stale = True                                                # it copies into every parameter
        else:
            p.data = p.data + bump                                      # a new storage behind the same Parameter
        hits, misses = cache.hits, cache.stale
        got = subject_keys(model, tok, site, req, hp, hp.context_templates, cache)
        assert (cache.stale - misses, cache.hits - hits) == ((1, 0) if stale else (0, 1)), f"{how}: {name}"
        want = subject_keys(model, tok, site, req, hp, hp.context_templates)
        for g_, w_, what in zip(got, want, ("k̄", "k")):
            _assert_close(g_, w_, f"{how}, {name}: {what}")


def test_which_parameters_feed_a_key():
    bed = fresh_testbed()
    site = resolve_site(bed.model, 1)
    for name, feeds in _feeding_cases(bed.model, site).items():
        assert feeds_key(name, site) is feeds, name
    # layer names that do not end in the index: every other parameter is taken to feed the key (safe)
    odd = dataclasses.replace(site, layer_name=site.layer_name + ".block")
    assert feeds_key(resolve_site(bed.model, 2).param_name, odd)
    assert not feeds_key(site.param_name, odd)
    # "h.1" is not a prefix match for layer 10: the index is compared whole
    ten = dataclasses.replace(site, layer=10, layer_name=site.layer_name[:-1] + "10", param_name="x")
    assert feeds_key(site.layer_name + ".mlp.c_fc.weight", ten)
