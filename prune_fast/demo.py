"""``python -m prune_fast demo``: sequential ROME on the test-bed model, with and without PRUNE.

Loads (or, the first time, trains) the package's small GPT-2, then runs the same ``n`` ROME edits
from the same start in three arms — ``none``, ``online`` (restrain after every edit) and
``at_end`` (the paper's protocol) — with the restraint function :data:`DEFAULT_FN`; ``sweep=True``
runs ``online`` and ``at_end`` for every F in :data:`SWEEP_FNS`.  Writes ``results.json`` (schema
``prune_fast.sequential/1``, see :mod:`prune_fast.run_results`) and PNG plots to ``out_dir``.

Why :data:`DEFAULT_FN` is ``linear``: on this model one ROME update already has a top singular
value of about 1.9 × σ* (median), so every log base shrinks each edit as it arrives; the measured
200-edit sweep (README.md (Sequential runs)) gave efficacy ≤ 0.05 for ln, log2, log1.5 and log1.2, and 0.36
(online) for linear while recall of unedited facts stayed at 0.86 instead of 0.63 without PRUNE.

Example::

    doc = run_demo("prune_fast_demo", n=200)
    print(format_table(doc))
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from . import _validate
from .run_results import results_document, write_results

__all__ = ["run_demo", "DEFAULT_FN", "SWEEP_FNS"]

logger = logging.getLogger(__name__)

DEFAULT_FN = "linear"
SWEEP_FNS = ("ln", "log2", "log1.5", "log1.2", "linear")


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: host, CPU count, torch threads and version, git commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": commit}


def run_demo(out_dir: str | Path, *, n: int = 200, fn: str = DEFAULT_FN, sweep: bool = False,
             eval_every: int = 25, n_recall: int = 1500, threads: int = 1, progress: bool = True,
             plots: bool = True) -> dict[str, Any]:
    """Run the demo arms and write ``results.json`` (+ plots) to ``out_dir``; returns the document."""
    from .editors import CovarianceStore, ROMEHyperParams
    from .evaluation import Evaluator, world_abilities
    from .runner import RunConfig, SequentialEditor
    from .testbed import default_cache_dir, load_testbed, shipped_corpus

    _validate.check_count("--n", n, minimum=1)
    _validate.check_count("--threads", threads, minimum=1)
    _validate.check_count("--eval-every", eval_every)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        bed = load_testbed(progress=progress)
        store = CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=progress)
        abilities, info = world_abilities(bed.world, bed.model, bed.tokenizer, n_recall=n_recall)
        dropped = [k for k, v in info.items() if not v["kept"]]
        if dropped:
            logger.warning("left out abilities that did not train above chance: %s", dropped)
        hp = ROMEHyperParams.preset("testbed")
        requests = bed.world.edit_requests(n)
        configs = [RunConfig(protocol="none", fn=fn, eval_every=eval_every)]
        for f in (SWEEP_FNS if sweep else (fn,)):
            configs += [RunConfig(protocol="online", fn=f, eval_every=eval_every),
                        RunConfig(protocol="at_end", fn=f, eval_every=eval_every)]
        arms = {}
        for cfg in configs:
            model = copy.deepcopy(bed.model)
            ev = Evaluator(model, bed.tokenizer, abilities=abilities)
            runner = SequentialEditor(model, bed.tokenizer, hparams=hp, covariance=store, config=cfg, evaluator=ev,
                                      progress=progress)
            arms[cfg.name] = runner.run(requests)
            logger.info("arm %s done in %.1f s", cfg.name, arms[cfg.name].wall_s)
        config = {"command": "demo" + (" --sweep" if sweep else ""), "model": "prune_fast test bed",
                  "model_path": str(bed.path), "train_report": bed.report.__dict__, "editor": "rome",
                  "hparams": hp.to_dict(), "n": n, "eval_every": eval_every, "fn": fn, "sweep": sweep,
                  "world": bed.world.to_dict(), "machine": machine_info(),
                  "wall_s": time.perf_counter() - start}
        doc = results_document(config, arms, info)
        out = Path(out_dir)
        write_results(out / "results.json", doc)
        if plots:
            from .plots import plot_results

            plot_results(doc, out, tradeoff=sweep)
        return doc
    finally:
        torch.set_num_threads(old_threads)
