"""``python -m prune_fast mend-train``: train a MEND editor for a local model folder.

For the package's test-bed folder nothing else is needed: the training requests, the locality
texts and the held-out requests come from its world, split by subject
(:func:`prune_fast.testbed.mend_editor.mend_training_data`).  For any other model, pass a
CounterFact/ZsRE file of training requests and text files for the locality loss.

Example::

    doc = run_mend_train(MENDTrainJob(model="models/gpt2-xl", out="gpt2-xl-mend.safetensors",
                                      requests="counterfact_train.json", locality=["wiki_lines.txt"]))
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import _validate
from .errors import InvalidInputError

__all__ = ["MENDTrainJob", "run_mend_train"]


@dataclass
class MENDTrainJob:
    """Settings of one ``mend-train`` run (the CLI's options, one to one)."""

    model: str
    out: str
    requests: str | None = None
    format: str = "auto"
    locality: list[str] = field(default_factory=list)
    eval_requests: str | None = None
    hparams: str | None = None
    preset: str | None = None
    steps: int | None = None
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    threads: int | None = 1
    progress: bool = True


def run_mend_train(job: MENDTrainJob) -> Any:
    """Train (or resume) and write ``job.out``; returns the :class:`~prune_fast.editors.mend.TrainReport`."""
    from .edit_run import load_local_model, load_requests
    from .editors import MENDHyperParams, read_corpus
    from .editors.mend import train

    if job.steps is not None:
        _validate.check_count("--steps", job.steps, minimum=1)
    for option, value in (("--requests", job.requests), ("--eval-requests", job.eval_requests),
                          ("--hparams", job.hparams), *(("--locality", f) for f in job.locality)):
        if value:  # before the model loads
            _validate.check_input_file(option, value)
    if job.threads:
        torch.set_num_threads(job.threads)
    model, tok, testbed = load_local_model(job.model, job.device)
    hp = MENDHyperParams.resolve(model, yaml_path=job.hparams, preset=job.preset, testbed=testbed)
    if job.steps is not None:
        hp = dataclasses.replace(hp, steps=job.steps)
        hp.validate()
    evaluation: list[Any] = load_requests(job.eval_requests, job.format) if job.eval_requests else []
    if testbed and not (job.requests and job.locality):
        from .testbed import World, WorldSpec
        from .testbed.mend_editor import mend_training_data

        spec_file = Path(job.model) / "spec.json"
        world = World.generate(WorldSpec(**json.loads(spec_file.read_text())["world"])) if spec_file.exists() \
            else World.generate()
        requests, locality, held, _, _ = mend_training_data(world)
        evaluation = evaluation or held
    else:
        requests, locality = [], []
    if job.requests:
        requests = load_requests(job.requests, job.format)
    if job.locality:
        locality = read_corpus(job.locality)
    if not requests:
        raise InvalidInputError("--requests is required: MEND learns from edit examples")
    if not locality:
        raise InvalidInputError("--locality is required: text lines whose predictions the edits must keep")
    return train(model, tok, requests, hp, out=job.out, locality=locality, eval_requests=evaluation,
                 resume=job.resume, overwrite=job.overwrite, progress=job.progress)
