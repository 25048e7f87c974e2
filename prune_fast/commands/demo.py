"""``python -m prune_fast demo``: sequential ROME on a real LLM (SmolLM2-135M), with and without PRUNE.

Loads SmolLM2-135M-Instruct from the installed wheel (:mod:`prune_fast.models`; converted once,
then cached), then runs the same ``n`` ROME edits of the shipped edit set
(:mod:`prune_fast.edit_set`: facts this model knows, counterfactual targets) from the same start in
three arms — ``none``, ``online`` (restrain after every edit) and ``at_end`` (the paper's
protocol) — with the paper's restraint function ln (:data:`DEFAULT_FN`); ``sweep=True`` runs
``online`` and ``at_end`` for every F in :data:`SWEEP_FNS`.  General abilities: never-edited facts,
few-shot tasks above chance and held-out perplexity (:mod:`prune_fast.real_abilities`).  Writes
``results.json`` (schema ``prune_fast.sequential/1``, see :mod:`prune_fast.run_results`; its
``config.summary`` holds the paper's summary figure per PRUNE arm) and PNG plots to ``out_dir``.

``model="testbed"`` runs the package's seconds-fast synthetic GPT-2 instead (its own world's
edits and abilities).  On that toy one ROME update already has a top singular value of about
1.9 σ*, so ln erases every edit there; on the real model one update is a median 0.53 σ* and the
restraint acts on the accumulated Δ, as in the paper — hence one default, ln, for both.

Example::

    doc = run_demo("prune_fast_demo", n=60)
    print(format_table(doc))
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import _validate
from .restraint_fn import DEFAULT_FN
from .run_results import results_document, write_results

__all__ = ["run_demo", "DEFAULT_FN", "SWEEP_FNS", "DEMO_MODELS", "REAL_COV_SAMPLES"]

logger = logging.getLogger(__name__)

SWEEP_FNS = ("ln", "log2", "log1.5", "log1.2", "linear")
DEMO_MODELS = ("smollm2", "testbed")
# Key-covariance samples of the real demo: paragraphs of real_abilities.covariance_corpus().
REAL_COV_SAMPLES = 400
_DEFAULT_N = {"smollm2": 60, "testbed": 200}
_DEFAULT_EVAL_EVERY = {"smollm2": 20, "testbed": 25}


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: host, CPU count, torch threads and version, git commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": commit}


@dataclass
class _Setup:
    """What every arm starts from: the unedited model and everything that scores or edits it."""

    model: Any
    tokenizer: Any
    hparams: Any
    store: Any
    requests: list[Any]
    abilities: dict[str, Any]
    info: dict[str, Any]
    heldout: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def _testbed_setup(n: int, n_recall: int, progress: bool) -> _Setup:
    from .editors import CovarianceStore, ROMEHyperParams
    from .evaluation import world_abilities
    from .testbed import default_cache_dir, load_testbed, shipped_corpus

    bed = load_testbed(progress=progress)
    store = CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=progress)
    abilities, info = world_abilities(bed.world, bed.model, bed.tokenizer, n_recall=n_recall)
    return _Setup(bed.model, bed.tokenizer, ROMEHyperParams.preset("testbed"), store, bed.world.edit_requests(n),
                  abilities, info, config={"model": "prune_fast test bed", "model_path": str(bed.path),
                                           "train_report": bed.report.__dict__, "world": bed.world.to_dict()})


def _smollm2_setup(n: int, seed: int, cov_samples: int, progress: bool) -> _Setup:
    from .edit_set import shipped_requests
    from .editors import CovarianceStore, ROMEHyperParams
    from .models import load_smollm2
    from .real_abilities import covariance_corpus, heldout_text, real_abilities
    from .testbed import default_cache_dir

    model, tok, folder = load_smollm2()
    hp = ROMEHyperParams.for_model(model)
    hp.cov_samples = cov_samples
    store = CovarianceStore(covariance_corpus(), cache_dir=default_cache_dir(), model_id=f"smollm2-{folder.name}",
                            progress=progress)
    requests = shipped_requests()
    if seed:
        random.Random(seed).shuffle(requests)
    if n > len(requests):
        from .errors import InvalidInputError

        raise InvalidInputError(f"--n {n}: the shipped edit set has {len(requests)} records")
    abilities, info = real_abilities(model, tok)
    return _Setup(model, tok, hp, store, requests[:n], abilities, info, heldout=heldout_text(),
                  config={"model": "SmolLM2-135M-Instruct", "model_path": str(folder), "seed": seed,
                          "requests": "prune_fast/data/smollm2_counterfact.json"})


def run_demo(out_dir: str | Path, *, model: str = "smollm2", n: int | None = None, fn: str = DEFAULT_FN,
             sweep: bool = False, eval_every: int | None = None, seed: int = 0, n_recall: int = 1500,
             cov_samples: int = REAL_COV_SAMPLES, threads: int | None = None, progress: bool = True,
             plots: bool = True) -> dict[str, Any]:
    """Run the demo arms and write ``results.json`` (+ plots) to ``out_dir``; returns the document.

    ``seed`` (real model): 0 keeps the shipped order of the edit set, another value shuffles it.
    ``threads``: torch CPU threads (default: 2 on the real model, 1 on the test bed).
    """
    from .evaluation import Evaluator
    from .real_abilities import loss_reduction
    from .runner import RunConfig, SequentialEditor

    if model not in DEMO_MODELS:
        from .errors import InvalidInputError

        raise InvalidInputError(f"demo --model must be one of {DEMO_MODELS}, got {model!r}")
    n = _DEFAULT_N[model] if n is None else n
    eval_every = _DEFAULT_EVAL_EVERY[model] if eval_every is None else eval_every
    threads = (2 if model == "smollm2" else 1) if threads is None else threads
    _validate.check_count("--n", n, minimum=1)
    _validate.check_count("--threads", threads, minimum=1)
    _validate.check_count("--eval-every", eval_every)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        setup = _smollm2_setup(n, seed, cov_samples, progress) if model == "smollm2" else \
            _testbed_setup(n, n_recall, progress)
        dropped = [k for k, v in setup.info.items() if not v["kept"]]
        if dropped:
            logger.warning("left out abilities that are not well above chance on the unedited model: %s", dropped)
        configs = [RunConfig(protocol="none", fn=fn, eval_every=eval_every)]
        for f in (SWEEP_FNS if sweep else (fn,)):
            configs += [RunConfig(protocol="online", fn=f, eval_every=eval_every),
                        RunConfig(protocol="at_end", fn=f, eval_every=eval_every)]
        arms = {}
        for cfg in configs:
            edited = copy.deepcopy(setup.model)
            ev = Evaluator(edited, setup.tokenizer, abilities=setup.abilities, heldout=setup.heldout)
            runner = SequentialEditor(edited, setup.tokenizer, hparams=setup.hparams, covariance=setup.store,
                                      config=cfg, evaluator=ev, progress=progress)
            arms[cfg.name] = runner.run(setup.requests)
            logger.info("arm %s done in %.1f s", cfg.name, arms[cfg.name].wall_s)
            del edited, ev, runner
        summary = {}
        if "none" in arms:
            none_final = arms["none"].final
            for name, arm in arms.items():
                if name != "none":
                    summary[name] = loss_reduction(none_final["baseline_general"], none_final["general"],
                                                   arm.final["general"])
        config = {"command": f"demo --model {model}" + (" --sweep" if sweep else ""), **setup.config,
                  "editor": "rome", "hparams": setup.hparams.to_dict(), "n": n, "eval_every": eval_every, "fn": fn,
                  "sweep": sweep, "machine": machine_info(), "summary": summary,
                  "wall_s": time.perf_counter() - start}
        doc = results_document(config, arms, setup.info)
        out = Path(out_dir)
        write_results(out / "results.json", doc)
        if plots:
            from .plots import plot_results

            plot_results(doc, out, tradeoff=sweep)
        return doc
    finally:
        torch.set_num_threads(old_threads)
