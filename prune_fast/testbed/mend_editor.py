"""The test bed's MEND editor: trained on three quarters of the subjects, cached like the model.

The world's subjects are split once (:meth:`World.split_subjects`, a quarter held out).  The
editor is trained on counterfactual edits of the *training* subjects only (every relation,
template and new object, :meth:`World.counterfactual_requests`), with a locality pool of the
training subjects' facts and the addition and copy tasks; its efficacy is measured on edits of
the *held-out* subjects, which it never saw.  Settings: ``MENDHyperParams.preset("testbed")``.

The editor of the shipped test-bed model at the preset is shipped too (``prune_fast/data/mend/<key>/``;
:mod:`.folders` says why). Any other is trained on first use and cached under ``$PRUNE_FAST_CACHE``
(default ``~/.cache/prune_fast``) as ``mend/<key>/editor.safetensors`` (+ ``report.json``);
``<key>`` hashes the model's content fingerprint (``model_key``), the hyper-parameters and the
training and evaluation data, so a changed model, setting or split never reuses a stale editor.  Training uses
one CPU thread (see :mod:`prune_fast.testbed.model` on why): about 200 s for the preset's 600 steps.

Example::

    bed = load_testbed()
    ed = load_testbed_mend(bed)                 # the shipped editor; others train once (minutes)
    mend = MEND(bed.model, bed.tokenizer, ed.path)
    ed.report["heldout"]["efficacy"]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import _validate
from .._atomic import atomic_folder
from ..editors.covariance import model_key
from ..editors.hparams import MENDHyperParams
from ..editors.mend import train
from ..lm.requests import EditRequest
from .folders import artefact_folder
from .model import Testbed, load_testbed
from .world import World

__all__ = ["TestbedMEND", "mend_training_data", "load_testbed_mend", "HELDOUT_FRACTION"]

logger = logging.getLogger(__name__)

_FORMAT = 1  # bump when the training data or loop changes meaning
HELDOUT_FRACTION = 0.25


@dataclass
class TestbedMEND:
    """Where the trained editor is, how training went, and the subject split it was trained on."""

    path: Path
    report: dict[str, Any]
    train_subjects: tuple[str, ...]
    heldout_subjects: tuple[str, ...]


def mend_training_data(world: World, heldout: float = HELDOUT_FRACTION, seed: int = 0
                       ) -> tuple[list[EditRequest], list[str], list[EditRequest], tuple[str, ...], tuple[str, ...]]:
    """``(train_requests, locality_texts, heldout_requests, train_subjects, heldout_subjects)``.

    ``heldout_requests``: one edit per held-out subject (``World.edit_requests`` on that side).
    """
    train_subj, held_subj = world.split_subjects(heldout, seed)
    requests = world.counterfactual_requests(train_subj, seed=seed)
    locality = [f"{p} {a}" for p, a in world.fact_prompts(train_subj)]
    locality += [f"{e.prompt} {e.answer}" for e in world.addition_examples()]
    locality += [f"{e.prompt} {e.answer}" for e in world.copy_examples(300, seed=seed + 11)]
    evaluation = world.edit_requests(len(held_subj), seed=seed + 1, subjects=held_subj)
    return requests, locality, evaluation, train_subj, held_subj


def _cache_key(bed: Testbed, hp: Any, data: tuple[list[EditRequest], list[str], list[EditRequest]]) -> str:
    """Hash of the model's content fingerprint (a bed trained on this machine is another model than the
    shipped one, whatever its folder is called), the settings and the training and evaluation data."""
    h = hashlib.sha256(json.dumps({"format": _FORMAT, "model": model_key(bed.model), "hparams": hp.to_dict()},
                                  sort_keys=True).encode())
    requests, locality, evaluation = data
    for r in (*requests, *evaluation):
        h.update(repr(dataclasses.astuple(r)).encode())
    h.update("\n".join(locality).encode())
    return h.hexdigest()[:16]


def load_testbed_mend(bed: Testbed | None = None, cache_dir: str | Path | None = None, hp: Any = None,
                      retrain: bool = False, progress: bool = True, shipped: bool = True) -> TestbedMEND:
    """The MEND editor of the test-bed model: the shipped one if it fits, else the cached one,
    training (one thread) and caching it first if needed.

    Args:
        bed: the test bed (default :func:`load_testbed` with the same ``cache_dir`` and ``shipped``).
        hp: :class:`~prune_fast.editors.MENDHyperParams` (default: the ``testbed`` preset).
        retrain: ignore a cached editor and train again; implies ``shipped=False``.
        shipped: use the editor shipped with the package when its key matches (``False``: the cache).
    """
    _validate.check_flag("retrain", retrain)
    _validate.check_flag("shipped", shipped)
    bed = bed or load_testbed(cache_dir, progress=progress, shipped=shipped)
    hp = hp or MENDHyperParams.preset("testbed", bed.model.config.num_hidden_layers)
    requests, locality, evaluation, train_subj, held_subj = mend_training_data(bed.world)
    folder = artefact_folder("mend", _cache_key(bed, hp, (requests, locality, evaluation)), cache_dir,
                             shipped and not retrain)
    if retrain and folder.exists():
        shutil.rmtree(folder)
    if not (folder / "report.json").exists():
        logger.info("no cached MEND editor at %s: training one", folder)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with atomic_folder(folder) as tmp:
                report = train(bed.model, bed.tokenizer, requests, hp, out=tmp / "editor.safetensors",
                               locality=locality, eval_requests=evaluation, progress=progress)
                shutil.rmtree(tmp / "editor.training", ignore_errors=True)
                doc = {k: v for k, v in asdict(report).items() if k != "history"}
                doc |= {"n_train_requests": len(requests), "n_heldout_requests": len(evaluation),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # training differs by it
                (tmp / "report.json").write_text(json.dumps(doc, indent=1))
        finally:
            torch.set_num_threads(old_threads)
    report = json.loads((folder / "report.json").read_text())
    return TestbedMEND(path=folder / "editor.safetensors", report=report, train_subjects=train_subj,
                       heldout_subjects=held_subj)
