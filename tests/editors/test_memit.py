"""MEMIT on the trained test-bed model: a batch of 20 edits lands (≥ 90% efficacy) through the
tracker, spread over its layers, without disturbing unrelated facts much."""
import pytest
import torch

pytest.importorskip("transformers")

from prune_fast.editors import MEMITHyperParams, compute_memit  # noqa: E402
from prune_fast.updates import TrackerSet  # noqa: E402
from prune_fast.testbed import top1_next  # noqa: E402
from testbed_models import fresh_testbed, shared_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HP = MEMITHyperParams.preset("testbed")


@pytest.fixture
def bed():
    return fresh_testbed()


def test_batch_of_twenty_edits(bed):
    reqs = bed.world.edit_requests(20, seed=4)
    edited = {r.subject for r in reqs}
    others = [p for p, _ in bed.world.fact_prompts(templates=(0,)) if not set(p.split()) & edited][:400]
    before = top1_next(bed.model, bed.tokenizer, others)
    snap = {k: v.clone() for k, v in bed.model.state_dict().items()}

    res = compute_memit(bed.model, bed.tokenizer, reqs, HP, shared_store())
    assert all(torch.equal(v, snap[k]) for k, v in bed.model.state_dict().items()), "compute wrote weights"
    assert [u.layer for u in res.updates] == list(HP.layers)
    assert all(u.rank == len(reqs) for u in res.updates)
    TrackerSet(bed.model, restrain_every=None).apply_(res.updates)

    got = top1_next(bed.model, bed.tokenizer, [r.text for r in reqs])
    efficacy = sum(g == r.target_new for g, r in zip(got, reqs)) / len(reqs)
    para_prompts = [(p, r.target_new) for r in reqs for p in r.paraphrase_prompts]
    para = top1_next(bed.model, bed.tokenizer, [p for p, _ in para_prompts])
    generalisation = sum(g == t for g, (_, t) in zip(para, para_prompts)) / len(para_prompts)
    after = top1_next(bed.model, bed.tokenizer, others)
    kept = sum(a == b for a, b in zip(before, after)) / len(others)
    print(f"MEMIT batch of 20: efficacy {efficacy:.2f}, paraphrase {generalisation:.2f}, unrelated kept {kept:.3f}")
    assert efficacy >= 0.9
    # the shipped bed keeps 0.900 of these 400 unrelated facts (360); a batch whose updates leaked into
    # other subjects keeps far less. The margin allows a few near-ties to fall the other way on another CPU.
    assert kept >= 0.88


def test_layers_share_the_residual(bed):
    """Each layer's update carries part of the residual: removing the last layer's update loses edits."""
    reqs = bed.world.edit_requests(20, seed=5)
    res = compute_memit(bed.model, bed.tokenizer, reqs, HP, shared_store())
    norms = [torch.linalg.matrix_norm(u.dense()).item() for u in res.updates]
    assert all(n > 0 for n in norms)
    TrackerSet(bed.model, restrain_every=None).apply_(res.updates[:-1])
    got = top1_next(bed.model, bed.tokenizer, [r.text for r in reqs])
    partial = sum(g == r.target_new for g, r in zip(got, reqs)) / len(reqs)
    full_bed = fresh_testbed()
    TrackerSet(full_bed.model, restrain_every=None).apply_(res.updates)
    got = top1_next(full_bed.model, full_bed.tokenizer, [r.text for r in reqs])
    full = sum(g == r.target_new for g, r in zip(got, reqs)) / len(reqs)
    assert full > partial
