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

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import _validate
from ..editors import MENDHyperParams, read_corpus
from ..editors.mend import train
from ..errors import InvalidInputError
from ..testbed import World, WorldSpec
from ..testbed.mend_editor import mend_training_data
from .edit import load_local_model, load_requests

__all__ = ["add_parser", "run", "MENDTrainJob", "run_mend_train"]


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
    """Train (or resume) and write ``job.out``; returns the :class:`~prune_fast.editors.mend.MENDTrainReport`."""
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


# -- the subcommand (listed by prune_fast.cli) -------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "mend-train", help="train a MEND editor network for a local model (the test-bed folder needs no data)",
        description="Train MEND's editor network (the base model stays frozen) on edit requests and write it to OUT "
                    "(safetensors). On the package's test-bed model folder the requests and the locality texts "
                    "default to the world's training half of the subjects, and the other half is scored at the end. "
                    "The training state is saved every checkpoint_every steps beside OUT; --resume continues it.")
    p.add_argument("--model", required=True, help="local model folder (from_pretrained; nothing is downloaded)")
    p.add_argument("--out", required=True, help="the editor checkpoint to write (.safetensors)")
    p.add_argument("--requests", help="CounterFact or ZsRE training records (required except for the test bed)")
    p.add_argument("--format", default="auto", choices=["auto", "counterfact", "zsre"], help="request format")
    p.add_argument("--locality", nargs="+", default=[], metavar="FILE.txt",
                   help="unrelated text lines for the locality (KL) loss (required except for the test bed)")
    p.add_argument("--eval-requests", help="held-out records scored once at the end")
    p.add_argument("--hparams", metavar="FILE.yaml", help="MEND settings (default: preset of the architecture)")
    p.add_argument("--preset", help="named preset (gpt2, llama, testbed) instead of the architecture's")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--resume", action="store_true", help="continue the training state beside OUT")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT or a training state exists")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    job = MENDTrainJob(model=args.model, out=args.out, requests=args.requests, format=args.format,
                       locality=args.locality, eval_requests=args.eval_requests, hparams=args.hparams,
                       preset=args.preset, steps=args.steps, resume=args.resume, overwrite=args.overwrite,
                       device=args.device, threads=args.threads, progress=not args.no_progress)
    report = run_mend_train(job)
    print(f"trained {report.steps - report.resumed_from} steps in {report.seconds:.1f} s; last losses: "
          + ", ".join(f"{k} {v:.3f}" for k, v in report.final.items()))
    if report.heldout:
        print("held-out edits: " + ", ".join(f"{k} {v:.3f}" for k, v in report.heldout.items()))
    print(f"editor written to {args.out}")
    return 0
