"""SequentialEditor on the test-bed model: each protocol, the paper's at-end procedure, the JSON schema."""
from __future__ import annotations

import copy
import functools
import json

import pytest
import torch

from prune_fast.editors import CovarianceStore, ROMEHyperParams
from prune_fast.errors import InvalidInputError
from prune_fast.lm.evaluation import EDIT_METRICS, Evaluator
from prune_fast.testbed import world_abilities
from prune_fast.spectral.reference import paper_procedure, restrain_reference
from prune_fast.runs.results import format_table, results_document, validate_results, write_results
from prune_fast.runs.runner import RunConfig, SequentialEditor, update_sigma_max

N = 12


@functools.lru_cache(maxsize=1)
def _bed():
    from prune_fast.cache import default_cache_dir
    from prune_fast.testbed import load_testbed, shipped_corpus

    torch.set_num_threads(1)
    bed = load_testbed(progress=False)
    store = CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=False)
    abilities, info = world_abilities(bed.world, bed.model, bed.tokenizer, n_recall=300)
    return bed, store, abilities, info


@functools.lru_cache(maxsize=None)
def _run(protocol: str, fn: str = "log1.2"):
    bed, store, abilities, _ = _bed()
    model = copy.deepcopy(bed.model)
    ev = Evaluator(model, bed.tokenizer, abilities=abilities)
    runner = SequentialEditor(model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"), covariance=store,
                              config=RunConfig(protocol=protocol, fn=fn, eval_every=5), evaluator=ev,
                              progress=False)
    result = runner.run(bed.world.edit_requests(N))
    return runner, result


@pytest.mark.parametrize("protocol", ["none", "online", "at_end"])
def test_each_protocol_records_steps_evals_and_both_edit_protocols(protocol):
    runner, res = _run(protocol)
    assert res.name == ("none" if protocol == "none" else f"{protocol}-log1.2")
    assert len(res.steps) == N and [s.edits for s in res.steps] == list(range(1, N + 1))
    assert [e.edits for e in res.evals] == [0, 5, 10, N]
    assert set(res.final["after_sequence"]) == set(EDIT_METRICS)     # all edits re-scored at the end
    assert set(res.final["immediate"]) == set(EDIT_METRICS)          # each edit scored right after it
    assert set(res.final["general"]) == {"recall", "addition", "copy"}
    (param,) = res.spectrum
    sp = res.spectrum[param]
    assert len(sp["ratio"]) == N and sp["sigma_star"] > 0
    step = res.steps[-1].layers[param]
    assert step["n_restrained"] == (step["n_above"] if protocol == "online" else 0)
    # cond(W) per step (the test-bed weight is small enough to be cheap); the last step's is the
    # final weight's except for at_end, whose restraint comes after it.
    assert len(sp["cond"]) == N and all(c > 1 for c in sp["cond"])
    if protocol != "at_end":
        sv = torch.linalg.svdvals(runner.spectral_trackers()[param].weight.detach().double())
        assert step["cond"] == pytest.approx(float(sv[0] / sv[-1]), rel=1e-6)
    if protocol == "online":
        assert all(s.restrain_s > 0 for s in res.steps)
        assert max(sp["ratio"]) < _run("none")[1].spectrum[param]["ratio"][-1]


def test_none_grows_sigma_max_and_edits_land():
    _, res = _run("none")
    (sp,) = res.spectrum.values()
    assert sp["ratio"][-1] > 2.0, sp["ratio"]
    assert res.final["immediate"]["efficacy"] >= 0.8


def test_at_end_equals_the_papers_procedure():
    runner, res = _run("at_end")
    (name, tr), = runner.spectral_trackers().items()
    w0 = tr.w0.double()
    w_n = w0 + tr.delta().double()              # what the unrestrained run wrote
    want = torch.from_numpy(paper_procedure(w0.numpy(), w_n.numpy(), fn="log1.2"))
    got = tr.weight.detach().double()
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-5, f"at_end differs from the paper's procedure by {err:.3g} (relative max)"
    assert res.spectrum[name]["at_end_restraint"]["n_restrained"] >= 1


def test_online_weight_is_w0_plus_f_of_raw_delta():
    runner, _ = _run("online")
    (tr,) = runner.spectral_trackers().values()
    want, _ = restrain_reference(tr.w0, tr.delta(), fn="log1.2", sigma_star=tr.sigma_star)
    err = float((tr.weight.detach().double() - want).abs().max() / want.abs().max())
    assert err < 1e-5, err


@pytest.mark.parametrize("fn", ["log1.2", "linear"])
def test_at_end_branched_from_the_none_run_equals_a_full_at_end_run(fn):
    """branch_at_end: the none run's edits restrained once with F — the same weights as a whole at_end
    run (both against the paper's float64 procedure) and the same scores, with no edit recomputed."""
    bed, _, abilities, _ = _bed()
    none_runner, none = _run("none")
    whole_runner, whole = _run("at_end", fn)
    model = copy.deepcopy(bed.model)
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    branched = none_runner.branch_at_end(none, bed.world.edit_requests(N), RunConfig(protocol="at_end", fn=fn, eval_every=5),
                                         model, Evaluator(model, bed.tokenizer, abilities=abilities))
    (name, tr), = whole_runner.spectral_trackers().items()
    w0 = tr.w0.double()
    want = torch.from_numpy(paper_procedure(w0.numpy(), (w0 + tr.delta().double()).numpy(), fn=fn))
    got = dict(model.named_parameters())[name].detach().double()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert float((tr.weight.detach().double() - want).abs().max() / want.abs().max()) < 1e-5
    others = [k for k in untouched if k != name]
    assert all(torch.equal(model.state_dict()[k], untouched[k]) for k in others)
    assert branched.name == whole.name and branched.config["edits_from"] == "none"
    assert {k: v for k, v in branched.config.items() if k != "edits_from"} == whole.config
    assert [s.case_ids for s in branched.steps] == [s.case_ids for s in whole.steps]
    assert [e.edits for e in branched.evals] == [e.edits for e in whole.evals]
    assert branched.evals[:-1] == none.evals[:-1] and branched.evals[-1].restrained
    for part in ("after_sequence", "general"):
        for metric, value in whole.final[part].items():
            assert branched.final[part][metric] == pytest.approx(value, abs=1e-6), (part, metric)
    restraint = branched.spectrum[name]["at_end_restraint"]
    assert restraint["n_restrained"] == whole.spectrum[name]["at_end_restraint"]["n_restrained"] >= 1
    validate_results(json.loads(json.dumps(results_document({"n": N}, {"none": none, branched.name: branched}))))


def test_branch_at_end_refuses_what_does_not_fit_before_writing():
    bed, _, _, _ = _bed()
    none_runner, none = _run("none")
    online_runner, online = _run("online")
    requests = bed.world.edit_requests(N)
    model = copy.deepcopy(bed.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RunConfig(protocol="at_end", fn="ln", eval_every=5)
    cases = {
        "from an online run": lambda: online_runner.branch_at_end(online, requests, cfg, model),
        "to an online arm": lambda: none_runner.branch_at_end(none, requests, RunConfig(protocol="online", eval_every=5),
                                                              model),
        "other settings": lambda: none_runner.branch_at_end(none, requests, RunConfig(protocol="at_end", eval_every=3),
                                                            model),
        "another run's result": lambda: none_runner.branch_at_end(online, requests, cfg, model),
        "other requests": lambda: none_runner.branch_at_end(none, requests[::-1], cfg, model),
        "the run's own model": lambda: none_runner.branch_at_end(none, requests, cfg, none_runner.model),
        "a model without the weight": lambda: none_runner.branch_at_end(none, requests, cfg, torch.nn.Linear(2, 2)),
    }
    for what, call in cases.items():
        with pytest.raises(InvalidInputError):
            call()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items()), what


def test_results_json_schema(tmp_path):
    arms = {r.name: r for r in (_run(p)[1] for p in ("none", "online", "at_end"))}
    doc = results_document({"n": N}, arms, _bed()[3])
    path = write_results(tmp_path / "results.json", doc)
    loaded = json.loads(path.read_text())
    validate_results(loaded)
    table = format_table(loaded)
    for name in arms:
        assert name in table
    assert "σ* = σ_max(W0) per edited weight" in table and "RAISES" not in table
    low = json.loads(path.read_text())
    for arm in low["arms"].values():
        for sp in arm["spectrum"].values():
            sp["sigma_star"] = 2.0          # < 1/ln 1.2 = 5.48: log1.2 raises values just above σ*
    assert format_table(low).count("note: log1.2 RAISES") == 1
    broken = json.loads(path.read_text())
    del broken["arms"]["none"]["final"]["immediate"]
    with pytest.raises(InvalidInputError, match=r"arms\['none'\].final lacks \['immediate'\]"):
        validate_results(broken)


def test_update_sigma_max_matches_dense(rng):
    u, v = torch.randn(30, 3, generator=rng), torch.randn(20, 3, generator=rng)
    want = float(torch.linalg.svdvals(u.double() @ v.double().T)[0])
    assert abs(update_sigma_max(u, v) - want) <= 1e-9 * want


def test_bad_config_is_refused():
    with pytest.raises(InvalidInputError, match="protocol"):
        RunConfig(protocol="sometimes").validate()
    with pytest.raises(InvalidInputError, match="restrain_every"):
        RunConfig(restrain_every=0).validate()


def test_memit_batches_through_the_runner():
    from prune_fast.editors import MEMITHyperParams

    bed, store, abilities, _ = _bed()
    model = copy.deepcopy(bed.model)
    runner = SequentialEditor(model, bed.tokenizer, hparams=MEMITHyperParams.preset("testbed"), covariance=store,
                              config=RunConfig(protocol="online", fn="linear", batch_size=2, eval_every=0),
                              evaluator=Evaluator(model, bed.tokenizer, abilities={}), progress=False)
    res = runner.run(bed.world.edit_requests(4, seed=3))
    assert len(res.steps) == 2 and res.steps[-1].edits == 4
    assert len(res.steps[0].case_ids) == 2
    assert len(res.spectrum) == len(MEMITHyperParams.preset("testbed").layers)
    assert [e.edits for e in res.evals] == [0, 4]


def test_rome_refuses_batches():
    bed, store, _, _ = _bed()
    with pytest.raises(InvalidInputError, match="batch_size"):
        SequentialEditor(bed.model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"), covariance=store,
                         config=RunConfig(batch_size=2))


def test_float64_tracker_state_gives_the_same_run_to_fp32_rounding():
    """RunConfig(tracker_dtype="float64") reaches every tracker; on ordinary edits the weights
    agree with the default run to fp32 rounding, and the config records the choice."""
    bed, store, abilities, _ = _bed()
    runner32, _ = _run("online")
    model = copy.deepcopy(bed.model)
    cfg = RunConfig(protocol="online", fn="log1.2", eval_every=5, tracker_dtype="float64")
    runner = SequentialEditor(model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"), covariance=store,
                              config=cfg, evaluator=Evaluator(model, bed.tokenizer, abilities=abilities),
                              progress=False)
    runner.run(bed.world.edit_requests(N))
    assert cfg.to_dict()["tracker_dtype"] == "float64"
    (name, tr), = runner.spectral_trackers().items()
    (tr32,) = runner32.spectral_trackers().values()
    assert tr._acc == torch.float64 and tr32._acc == torch.float32
    assert tr.weight.dtype == torch.float32
    for t in (tr, tr32):  # each against its own raw Δ (the online runs differ by rounding)
        want, _ = restrain_reference(t.w0, t.delta(), fn="log1.2", sigma_star=t.sigma_star)
        err = float((t.weight.detach().double() - want).abs().max() / want.abs().max())
        assert err < 1e-5, err
    with pytest.raises(InvalidInputError, match="tracker_dtype"):
        RunConfig(tracker_dtype="float16").validate()
    # journals record the choice only when it is not the default, so pre-option journals resume
    assert runner.journal_header({}, N)["arm"]["tracker_dtype"] == "float64"
    assert "tracker_dtype" not in runner32.journal_header({}, N)["arm"]
