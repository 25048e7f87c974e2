"""ROME on the trained test-bed model, through the tracker: one edit flips the fact and its
paraphrases while unrelated facts stay; the update is exact at k*; and 50 sequential edits with
PRUNE keep the edited weight's top singular value where F says it must be."""
import math

import pytest
import torch

pytest.importorskip("transformers")

from prune_fast.editors import ROMEHyperParams, compute_rome  # noqa: E402
from prune_fast.updates import TrackerSet  # noqa: E402
from prune_fast.testbed import top1_next  # noqa: E402
from testbed_models import fresh_testbed, shared_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HP = ROMEHyperParams.preset("testbed")


@pytest.fixture
def bed():
    return fresh_testbed()


def _unrelated_prompts(bed, exclude, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [p for p, _ in bed.world.fact_prompts() if p.split()[0] not in exclude and
               not any(s in p.split() for s in exclude)]
    idx = torch.randperm(len(prompts), generator=g)[:n].tolist()
    return [prompts[i] for i in idx]


def test_one_edit_flips_the_fact_and_a_paraphrase(bed):
    req = bed.world.edit_requests(1, seed=0)[0]
    others = _unrelated_prompts(bed, {req.subject})
    before = top1_next(bed.model, bed.tokenizer, others)

    res = compute_rome(bed.model, bed.tokenizer, req, HP, shared_store())
    assert len(res.updates) == 1 and res.updates[0].rank == 1
    TrackerSet(bed.model, restrain_every=None).apply_(res.updates)

    assert top1_next(bed.model, bed.tokenizer, [req.text]) == [req.target_new]
    # on the shipped bed the first paraphrase prefers the new object by 0.155 nats (the second does not)
    para = top1_next(bed.model, bed.tokenizer, list(req.paraphrase_prompts))
    assert req.target_new in para, f"no paraphrase generalised: {para}"
    after = top1_next(bed.model, bed.tokenizer, others)
    kept = sum(a == b for a, b in zip(before, after)) / len(others)
    assert kept >= 0.9, f"only {kept:.1%} of unrelated facts kept"


def test_single_edits_generalise_to_paraphrases():
    """Ten requests, each edited alone into a fresh copy of the bed: every edit flips its fact, and
    most reach a paraphrase. On the shipped bed 6 of 10 do, the weakest of them by 0.155 nats and the
    nearest miss by 0.039 nats (log-probability of the new object over the best other token)."""
    reqs = fresh_testbed().world.edit_requests(10, seed=0)
    generalised = []
    for req in reqs:
        bed = fresh_testbed()
        res = compute_rome(bed.model, bed.tokenizer, req, HP, shared_store())
        TrackerSet(bed.model, restrain_every=None).apply_(res.updates)
        assert top1_next(bed.model, bed.tokenizer, [req.text]) == [req.target_new], req.case_id
        para = top1_next(bed.model, bed.tokenizer, list(req.paraphrase_prompts))
        generalised.append(req.target_new in para)
    assert sum(generalised) >= 5, f"only {sum(generalised)} of 10 edits reached a paraphrase"


def test_update_maps_key_to_value_exactly(bed):
    req = bed.world.edit_requests(1, seed=1)[0]
    res = compute_rome(bed.model, bed.tokenizer, req, HP, shared_store())
    TrackerSet(bed.model, restrain_every=None).apply_(res.updates)
    module = bed.model.get_submodule(res.site.module_name)
    with torch.no_grad():
        out = module(res.key[None])[0]
    rel = ((out - res.value).norm() / res.value.norm()).item()
    assert rel < 1e-4, f"|W_new k* + b - v*| / |v*| = {rel:.2e}"


def test_single_edit_efficacy_over_twenty_requests(bed):
    reqs = bed.world.edit_requests(20, seed=2)
    ok = para = 0
    for req in reqs:
        edited = fresh_testbed()
        res = compute_rome(edited.model, edited.tokenizer, req, HP, shared_store())
        TrackerSet(edited.model, restrain_every=None).apply_(res.updates)
        ok += top1_next(edited.model, edited.tokenizer, [req.text]) == [req.target_new]
        got = top1_next(edited.model, edited.tokenizer, list(req.paraphrase_prompts))
        para += sum(g == req.target_new for g in got) / len(got)
    print(f"single-edit efficacy {ok}/20, paraphrase {para / 20:.2f}")
    assert ok >= 18


def _sigma_max(m: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(m.double(), ord=2).item()


@pytest.mark.parametrize("fn, alpha", [("log", math.e), ("log1.2", 1.2)], ids=["ln", "log1.2"])
def test_sequential_edits_with_prune_stay_bounded(bed, fn, alpha):
    """Online PRUNE: after every edit W = W0 + F(Δ_raw), so σ_max(W) ≤ σ* + F(σ_max(Δ_raw)), and the
    restrained part's top singular value is exactly F(σ_max(Δ_raw))."""
    f = {"log": lambda s, ss: ss + math.log(s / ss), "log1.2": lambda s, ss: ss + math.log(s / ss, 1.2)}[fn]
    trackers = TrackerSet(bed.model, fn=fn, alpha=alpha, restrain_every=1)
    reqs = bed.world.edit_requests(50, seed=3)
    w0 = None
    raw = None
    ratios = []
    for i, req in enumerate(reqs):
        res = compute_rome(bed.model, bed.tokenizer, req, HP, shared_store())
        (upd,) = res.updates
        weight = bed.model.get_submodule(res.site.module_name).weight
        if w0 is None:
            w0 = weight.detach().double().clone()
            raw = torch.zeros_like(w0)
        raw += upd.dense().double()
        trackers.apply_(res.updates)
        sigma_star = trackers.tracker(upd.param_name).sigma_star
        s_raw = _sigma_max(raw)
        if i == 0:
            ratios.append(s_raw / sigma_star)
        if i % 10 == 9 or i == 0:
            w = weight.detach().double()
            expected_top = f(s_raw, sigma_star) if s_raw >= sigma_star else s_raw
            got_top = _sigma_max(w - w0)
            assert got_top == pytest.approx(expected_top, rel=1e-3), f"edit {i + 1}: top σ of F(Δ)"
            assert _sigma_max(w) <= sigma_star + expected_top + 1e-3 * sigma_star
    print(f"{fn}: first edit σ/σ* = {ratios[0]:.2f}; after 50 edits σ_max(Δ_raw)/σ* = {s_raw / sigma_star:.2f}, "
          f"σ_max(W)/σ* = {_sigma_max(weight.detach()) / sigma_star:.2f}")
    assert s_raw > sigma_star  # the raw update did outgrow σ*: the bound was exercised
