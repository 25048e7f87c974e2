"""100 sequential MEND edits through SequentialEditor (with and without PRUNE), the results schema,
and ``python -m prune_fast edit --editor mend`` / ``mend-train`` end to end on the test-bed folder.

Sequential MEND runs away on this model: each edit, computed on the already edited model, meets
larger gradients and makes a larger update (README.md (MEND)).  PRUNE with ln bounds σ_max(W)/σ*;
the tests check that bound, not the (poor) sequential efficacy."""
from __future__ import annotations

import copy
import functools
import json
import shutil

import pytest
import torch

pytest.importorskip("transformers")

from prune_fast.editors import MEND  # noqa: E402
from prune_fast.errors import InvalidInputError  # noqa: E402
from prune_fast.lm.evaluation import EDIT_METRICS, Evaluator  # noqa: E402
from prune_fast.testbed import world_abilities  # noqa: E402
from prune_fast.runs.results import results_document, validate_results  # noqa: E402
from prune_fast.runs.runner import RunConfig, SequentialEditor  # noqa: E402
from cli_cases import counterfact_records, run_cli  # noqa: E402
from testbed_models import fresh_testbed, shared_mend  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N = 100


@functools.lru_cache(maxsize=None)
def _run(protocol: str):
    bed = fresh_testbed()
    abilities, info = world_abilities(bed.world, bed.model, bed.tokenizer, n_recall=300)
    ev = Evaluator(bed.model, bed.tokenizer, abilities=abilities)
    runner = SequentialEditor(bed.model, bed.tokenizer, editor=MEND(bed.model, bed.tokenizer, shared_mend().path),
                              config=RunConfig(protocol=protocol, fn="ln", eval_every=50, spectrum_every=10),
                              evaluator=ev, progress=False)
    return runner, runner.run(bed.world.edit_requests(N, seed=11)), info


@pytest.mark.parametrize("protocol", ["none", "online"])
def test_hundred_sequential_mend_edits(protocol):
    runner, res, _ = _run(protocol)
    names = {s.param_name for s in runner.editor.sites}
    assert res.name == ("none" if protocol == "none" else "online-ln")
    assert res.config["editor"] == "mend"
    assert len(res.steps) == N and [s.edits for s in res.steps] == list(range(1, N + 1))
    assert [e.edits for e in res.evals] == [0, 50, N]
    assert set(res.final["after_sequence"]) == set(EDIT_METRICS) == set(res.final["immediate"])
    assert set(res.spectrum) == names
    for name, sp in res.spectrum.items():
        assert len(sp["ratio"]) == N // 10 and sp["sigma_star"] > 0
    restrained = sum(s.layers[n]["n_restrained"] for s in res.steps for n in s.layers)
    if protocol == "online":
        assert restrained > 0 and all(s.restrain_s > 0 for s in res.steps)
        none = _run("none")[1]
        worst = max(max(sp["ratio"]) for sp in res.spectrum.values())
        assert worst < max(max(sp["ratio"]) for sp in none.spectrum.values())
        # W = W0 + F(Δ) with F(σ) = σ* + ln(σ/σ*): even a Δ of 10⁶ σ* leaves σ_max(W) < σ* + σ* + 14
        assert all(sp["final"]["ratio"] < 2 + 14 / sp["sigma_star"] for sp in res.spectrum.values())
    else:
        assert restrained == 0
    print(f"{res.name}: immediate efficacy {res.final['immediate']['efficacy']:.2f}, after the sequence "
          f"{res.final['after_sequence']['efficacy']:.2f}, general {res.final['general']}")


def _shape(obj, depth=3):
    """The nested key structure of a JSON document (lists: the shape of their first element)."""
    if depth == 0:
        return None
    if isinstance(obj, dict):
        return {k: _shape(v, depth - 1) for k, v in obj.items()}
    if isinstance(obj, list) and obj:
        return [_shape(obj[0], depth - 1)]
    return None


def test_results_document_has_the_same_schema_as_rome():
    from prune_fast.editors import ROMEHyperParams
    from testbed_models import shared_store

    arms = {r.name: r for r in (_run(p)[1] for p in ("none", "online"))}
    doc = json.loads(json.dumps(results_document({"n": N, "editor": "mend"}, arms, _run("none")[2])))
    validate_results(doc)
    bed = fresh_testbed()
    abilities, info = world_abilities(bed.world, bed.model, bed.tokenizer, n_recall=50)
    rome = SequentialEditor(bed.model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"),
                            covariance=shared_store(), evaluator=Evaluator(bed.model, bed.tokenizer, abilities=abilities),
                            config=RunConfig(protocol="online", fn="ln", eval_every=1, spectrum_every=1),
                            progress=False).run(bed.world.edit_requests(2, seed=11))
    ref = json.loads(json.dumps(results_document({"n": 2}, {"rome": rome}, info)))
    want = _shape(ref["arms"]["rome"], depth=4)
    for name, arm in doc["arms"].items():
        got = _shape(arm, depth=4)
        assert got.keys() == want.keys()
        for key in ("final", "timing", "evals"):
            assert got[key] == want[key], f"{name}: {key}"
        assert got["steps"][0].keys() == want["steps"][0].keys()
        mend_layer = next(iter(arm["steps"][-1]["layers"].values()))
        assert mend_layer.keys() == next(iter(ref["arms"]["rome"]["steps"][-1]["layers"].values())).keys()


def test_runner_refuses_mixed_or_foreign_editors():
    bed = fresh_testbed()
    mend = MEND(bed.model, bed.tokenizer, shared_mend().path)
    from prune_fast.editors import ROMEHyperParams

    with pytest.raises(InvalidInputError, match="not both"):
        SequentialEditor(bed.model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"), editor=mend)
    other = copy.deepcopy(bed.model)
    with pytest.raises(InvalidInputError, match="another model object"):
        SequentialEditor(other, bed.tokenizer, editor=mend)
    with pytest.raises(InvalidInputError, match="MEND"):
        SequentialEditor(bed.model, bed.tokenizer, editor=object())


# -- CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def model_dir(tmp_path):
    bed = fresh_testbed()
    folder = tmp_path / "model"
    shutil.copytree(bed.path, folder)
    return folder


def test_cli_edit_with_mend_end_to_end(tmp_path, model_dir):
    bed = fresh_testbed()
    cf = tmp_path / "cf.json"
    cf.write_text(json.dumps(counterfact_records(bed.world.edit_requests(6, seed=2))))
    out = run_cli("edit", "--model", str(model_dir), "--requests", str(cf), "--editor", "mend", "--mend-checkpoint",
               str(shared_mend().path), "--restrain", "online", "--fn", "linear", "--n", "5", "--eval-every", "2",
               "--checkpoint-every", "2", "--out", str(tmp_path / "run"), "--threads", "1", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    validate_results(doc)
    (arm,) = doc["arms"].values()
    assert arm["name"] == "online-linear" and arm["n_requests"] == 5 and arm["config"]["editor"] == "mend"
    assert doc["config"]["hparams_used"]["checkpoint_sha256"] == MEND(bed.model, bed.tokenizer,
                                                                      shared_mend().path).sha256
    assert len(arm["spectrum"]) == len(MEND(bed.model, bed.tokenizer, shared_mend().path).sites)
    assert not (tmp_path / "run" / "covariance").exists()          # MEND needs no key statistics

    from prune_fast.editors.mend_checkpoint import fingerprint, save_editor

    mend = MEND(bed.model, bed.tokenizer, shared_mend().path)
    other = save_editor(tmp_path / "other.safetensors", mend.net, mend.hparams, fingerprint(bed.model, mend.sites),
                        {"note": "same network, other file"})
    again = run_cli("edit", "--model", str(model_dir), "--requests", str(cf), "--editor", "mend", "--mend-checkpoint",
                 str(other), "--restrain", "online", "--fn", "linear", "--n", "5", "--out", str(tmp_path / "run"),
                 "--resume", "--threads", "1", "--no-progress")
    assert again.returncode == 2 and "refusing to resume" in again.stderr and "checkpoint_sha256" in again.stderr


def test_cli_edit_mend_option_errors(tmp_path, model_dir):
    cf = tmp_path / "cf.json"
    cf.write_text(json.dumps(counterfact_records(fresh_testbed().world.edit_requests(2))))
    base = ("edit", "--model", str(model_dir), "--requests", str(cf), "--threads", "1", "--no-progress")
    no_ckpt = run_cli(*base, "--editor", "mend", "--out", str(tmp_path / "a"))
    assert no_ckpt.returncode == 2 and "--editor mend needs --mend-checkpoint" in no_ckpt.stderr
    stray = run_cli(*base, "--editor", "rome", "--mend-checkpoint", str(shared_mend().path), "--out", str(tmp_path / "b"))
    assert stray.returncode == 2 and "only used with --editor mend" in stray.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    refused = run_cli(*base, "--editor", "mend", "--mend-checkpoint", str(bad), "--out", str(tmp_path / "c"))
    assert refused.returncode == 2 and "not a readable safetensors" in refused.stderr
    for name in "abc":
        assert not (tmp_path / name).exists(), "an output folder was written for a refused run"


def test_cli_mend_train_short_run_and_resume(tmp_path, model_dir):
    out = tmp_path / "editor.safetensors"
    hp = tmp_path / "hp.yaml"
    from prune_fast.editors import MENDHyperParams
    import dataclasses

    tiny = dataclasses.replace(MENDHyperParams.preset("testbed"), batch_size=2, n_loc=1, rank=4, checkpoint_every=1)
    tiny.to_yaml(hp)
    first = run_cli("mend-train", "--model", str(model_dir), "--out", str(out), "--hparams", str(hp), "--steps", "2",
                 "--eval-requests", str(_held_out_file(tmp_path)), "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "held-out edits: efficacy" in first.stdout and out.exists()
    again = run_cli("mend-train", "--model", str(model_dir), "--out", str(out), "--hparams", str(hp), "--steps", "2",
                 "--no-progress")
    assert again.returncode == 2 and "resume=True" in again.stderr
    more = run_cli("mend-train", "--model", str(model_dir), "--out", str(out), "--hparams", str(hp), "--steps", "3",
                "--resume", "--no-progress")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "trained 1 steps" in more.stdout
    bed = fresh_testbed()
    res = MEND(bed.model, bed.tokenizer, out).compute(bed.world.edit_requests(1)[0])
    assert all(torch.isfinite(u.u).all() for u in res.updates)


def _held_out_file(tmp_path):
    path = tmp_path / "held.json"
    path.write_text(json.dumps(counterfact_records(fresh_testbed().world.edit_requests(2, seed=9))))
    return path
