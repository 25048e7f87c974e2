"""``python -m prune_fast demo`` end to end (short), and ``--help``."""
from __future__ import annotations

import json

import torch

from cli_cases import run_cli
from prune_fast.runs.results import validate_results

def test_demo_help_documents_options():
    out = run_cli("demo", "--help")
    assert out.returncode == 0
    for opt in ("--model", "--out", "--n", "--fn", "--sweep", "--eval-every", "--parallel", "smollm2", "testbed"):
        assert opt in out.stdout


def test_demo_short_run_writes_results_and_plots(tmp_path):
    out = run_cli("demo", "--model", "testbed", "--n", "10", "--eval-every", "5", "--out", str(tmp_path / "demo"), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "demo" / "results.json").read_text())
    validate_results(doc)
    assert list(doc["arms"]) == ["none", "online-ln", "at_end-ln"]
    # at_end reuses the none run's edits (branch_at_end) and restrains them once
    at_end, none = doc["arms"]["at_end-ln"], doc["arms"]["none"]
    assert at_end["config"]["edits_from"] == "none" and "edits_from" not in none["config"]
    assert at_end["steps"] == none["steps"] and at_end["evals"][:-1] == none["evals"][:-1]
    # online starts from the same unedited model: its evaluation at 0 edits is none's (eval_s included)
    assert doc["arms"]["online-ln"]["evals"][0] == none["evals"][0] and none["evals"][0]["edits"] == 0
    # the start evaluation took the abilities' selection scores: they equal a fresh scoring of the unedited model
    from prune_fast.lm.evaluation import Evaluator
    from prune_fast.testbed import load_testbed, world_abilities
    bed = load_testbed(progress=False)
    abilities, _ = world_abilities(bed.world, bed.model, bed.tokenizer, n_recall=1500)
    assert none["evals"][0]["general"] == Evaluator(bed.model, bed.tokenizer, abilities=abilities).general()
    (param,) = at_end["spectrum"]
    assert at_end["spectrum"][param]["at_end_restraint"]["n_restrained"] >= 1
    for name in doc["arms"]:
        assert name in out.stdout
    assert "σmax(W)/σ*" in out.stdout
    for png in ("sigma_ratio.png", "metrics.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 1000


def _without_timings(x):
    """The document with every measured time (``*_s``, ``*_s_*``, ``timing``) and the machine left out."""
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items()
                if not (k.endswith("_s") or "_s_" in k or k in ("timing", "machine"))}
    if isinstance(x, list):
        return [_without_timings(v) for v in x]
    return x


def test_arms_in_parallel_give_the_one_at_a_time_results(tmp_path):
    """Six editing arms (--sweep) two at a time in threads: every step, score, evaluation and spectrum
    equals the one-at-a-time run's; the arms keep their order; the store computed nothing twice."""
    from prune_fast.commands.demo import run_demo

    kw = dict(model="testbed", n=8, eval_every=4, sweep=True, progress=False, plots=False)
    before = torch.get_num_threads()
    one = run_demo(tmp_path / "one", threads=1, parallel=1, **kw)
    two = run_demo(tmp_path / "two", threads=1, parallel=2, **kw)   # one torch thread everywhere in both
    assert torch.get_num_threads() == before   # the caller's thread count is restored
    assert list(two["arms"]) == list(one["arms"]) and len(one["arms"]) == 11
    assert two["config"]["machine"]["parallel_arms"] == 2 and one["config"]["machine"]["parallel_arms"] == 1
    for name in one["arms"]:
        assert _without_timings(two["arms"][name]) == _without_timings(one["arms"][name]), name
    assert _without_timings(two["config"]["summary"]) == _without_timings(one["config"]["summary"])
