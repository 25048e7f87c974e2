"""``python -m prune_fast edit``: sequential edits of a user's local model from a CounterFact/ZsRE file.

Loads a model folder (``from_pretrained`` on a local path, nothing downloaded; the package's own
test-bed folders with their word tokenizer work too), reads the first ``n`` requests, and runs one
arm (``none``, ``online`` or ``at_end`` with F) under a crash-safe journal in ``out``.  Writes
``out/results.json`` (schema ``prune_fast.sequential/1``) and, with ``save_model``, the edited
model to ``out/model``.  ``resume=True`` continues an interrupted run in ``out``.

Example::

    job = EditJob(model="models/gpt2-xl", requests="counterfact.json", out="run1", n=1000,
                  protocol="online", fn="ln", corpus="wiki_lines.txt")
    doc = run_edit(job)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import _validate
from ..editors import EDITORS, CovarianceStore, read_corpus
from ..cache import default_cache_dir
from ..editors.covariance import model_key
from ..errors import InvalidInputError
from ..lm.evaluation import Evaluator, load_task_jsonl
from ..testbed import world_abilities
from ..lm.models import load_model_folder, resolve_model
from ..lm.real_abilities import covariance_corpus
from ..lm.requests import load_counterfact, load_zsre, read_records
from ..runs.journal import Journal
from ..runs.results import PROTOCOLS, format_table, results_document, write_results
from ..runs.runner import RunConfig, SequentialEditor
from ..spectral.restraint_fn import DEFAULT_FN, FN_CHOICES
from ..testbed import WordTokenizer, World, WorldSpec, shipped_corpus

__all__ = ["add_parser", "run", "EditJob", "run_edit", "load_local_model", "load_requests"]

logger = logging.getLogger(__name__)


@dataclass
class EditJob:
    """Settings of one ``edit`` run (the CLI's options, one to one)."""

    model: str
    requests: str
    out: str
    n: int | None = None
    editor: str = "rome"
    mend_checkpoint: str | None = None
    protocol: str = "online"
    fn: str = DEFAULT_FN
    restrain_every: int = 1
    tracker_dtype: str = "float32"
    batch_size: int = 1
    format: str = "auto"
    hparams: str | None = None
    preset: str | None = None
    corpus: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    heldout: str | None = None
    eval_every: int = 50
    checkpoint_every: int = 50
    spectrum_every: int = 1
    score_immediate: bool = True
    resume: bool = False
    save_model: bool = False
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True


def _is_testbed(folder: Path) -> bool:
    tok = folder / "tokenizer.json"
    if not tok.exists():
        return False
    try:
        return json.loads(tok.read_text()).get("format") == "prune_fast.word_tokenizer/1"
    except (ValueError, AttributeError):
        return False


def load_local_model(path: str | Path, device: str = "cpu") -> tuple[Any, Any, bool]:
    """``(model, tokenizer, is_testbed)`` from a local folder or a known model name (``smollm2``,
    see :mod:`prune_fast.lm.models`); never downloads (``local_files_only``)."""
    folder = resolve_model(path)
    if not folder.is_dir():
        raise InvalidInputError(f"--model {path}: not a local folder (nothing is downloaded here)")
    _check_model_folder(folder)
    if _is_testbed(folder):
        from transformers import AutoModelForCausalLM  # heavy: imported only where used

        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).to(device)
        model.eval()
        return model, WordTokenizer.load(folder / "tokenizer.json"), True
    model, tok = load_model_folder(folder, device)
    return model, tok, False


def _check_model_folder(folder: Path) -> None:
    """A folder ``from_pretrained`` can read: a config.json beside the weights (a folder holding only
    a GGUF file makes transformers raise a bare ``ValueError`` deep inside)."""
    if (folder / "config.json").is_file():
        return
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    what = f"holds {', '.join(ggufs)} but no config.json: a GGUF file is not a Hugging Face model folder; " \
           "convert it (transformers' from_pretrained(..., gguf_file=...) then save_pretrained) and pass that folder" \
        if ggufs else "has no config.json: not a Hugging Face model folder"
    raise InvalidInputError(f"--model {folder} {what}")


def _check_job(job: EditJob) -> None:
    """The options that need no model: counts and every input file, before anything is loaded."""
    if job.n is not None:
        _validate.check_count("--n", job.n, minimum=1)
    _validate.check_count("--spectrum-every", job.spectrum_every, minimum=1)
    files = [("--requests", job.requests), *(("--corpus", c) for c in job.corpus),
             *(("--tasks", t.rpartition("=")[2]) for t in job.tasks), ("--heldout", job.heldout),
             ("--hparams", job.hparams), ("--mend-checkpoint", job.mend_checkpoint)]
    for option, value in files:
        if value:
            _validate.check_input_file(option, value)


def load_requests(path: str | Path, fmt: str = "auto", limit: int | None = None) -> list[Any]:
    """CounterFact or ZsRE requests; ``fmt="auto"`` looks at the first record's fields."""
    if fmt == "auto":
        first = read_records(path)[0]  # missing, empty or malformed files raise naming the file
        fmt = "" if not isinstance(first, dict) else \
            "counterfact" if "requested_rewrite" in first else "zsre" if "src" in first else ""
        if not fmt:
            raise InvalidInputError(f"{path}: cannot tell CounterFact from ZsRE; pass --format")
    if fmt not in ("counterfact", "zsre"):
        raise InvalidInputError(f"--format must be auto, counterfact or zsre, got {fmt!r}")
    return (load_counterfact if fmt == "counterfact" else load_zsre)(path, limit=limit)


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _run_config(job: EditJob) -> Any:
    return RunConfig(protocol=job.protocol, fn=job.fn, restrain_every=job.restrain_every, eval_every=job.eval_every,
                     batch_size=job.batch_size, tracker_dtype=job.tracker_dtype, spectrum_every=job.spectrum_every,
                     score_immediate=job.score_immediate)


def _header(job: EditJob, model: Any, n: int) -> dict[str, Any]:

    return {"model": str(resolve_model(job.model).resolve()), "model_key": model_key(model),
            "requests_file": str(Path(job.requests).resolve()), "requests_sha256": _sha256(job.requests), "n": n}


def _check_editor_options(job: EditJob) -> None:
    """Refuse editor options that do not fit together, before the model is loaded."""
    if job.editor not in EDITORS:
        raise InvalidInputError(f"--editor must be one of {', '.join(EDITORS)}, got {job.editor!r}")
    if job.editor == "mend":
        if not job.mend_checkpoint:
            raise InvalidInputError("--editor mend needs --mend-checkpoint PATH (a trained editor: see "
                                    "`python -m prune_fast mend-train`)")
        if job.hparams or job.preset:
            raise InvalidInputError("--hparams/--preset do not apply to --editor mend: its settings are in the "
                                    "checkpoint")
    elif job.mend_checkpoint:
        raise InvalidInputError(f"--mend-checkpoint is only used with --editor mend, not {job.editor}")


def run_edit(job: EditJob) -> dict[str, Any]:
    """Run (or resume) the job; returns the results document written to ``job.out/results.json``."""
    if job.threads:
        torch.set_num_threads(job.threads)
    _check_editor_options(job)
    _check_job(job)
    requests = load_requests(job.requests, job.format, job.n)  # malformed requests refused before the model loads
    model, tok, testbed = load_local_model(job.model, job.device)
    if job.n is not None and len(requests) < job.n:
        raise InvalidInputError(f"--n {job.n} but {job.requests} holds only {len(requests)} requests")
    out = Path(job.out)
    editor_cls = EDITORS[job.editor]
    if editor_cls.hparams_class is None:  # MEND: built from its trained checkpoint, checked before any write
        editor = editor_cls(model, tok, job.mend_checkpoint)
    else:
        hp = editor_cls.hparams_class.resolve(model, yaml_path=job.hparams, preset=job.preset, testbed=testbed)
        if job.corpus:
            texts = read_corpus(job.corpus)
        elif testbed:
            texts = shipped_corpus()
        elif job.model == "smollm2":  # the named real model: CPython's own documentation prose
            texts = covariance_corpus()
        else:
            raise InvalidInputError("--corpus is required: ROME/MEMIT/AlphaEdit need key statistics from text the "
                                    "model reads")
        # the store is shared by every run (keyed by model content, layer, corpus and samples); nothing is
        # computed or written until the editor first uses it
        store = CovarianceStore(texts, cache_dir=default_cache_dir(), progress=job.progress)
        editor = editor_cls(model, tok, hp, store)
    if job.resume:  # refuse a mismatched resume before any expensive work
        probe = SequentialEditor(model, tok, config=_run_config(job), progress=False, editor=editor)
        Journal.resume(out / "run", probe.journal_header(_header(job, model, len(requests)), len(requests)))

    abilities: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for spec in job.tasks:
        name, _, file = spec.rpartition("=")
        abilities[name or Path(file).stem] = load_task_jsonl(file)
    if testbed and not job.tasks:
        spec_file = Path(job.model) / "spec.json"
        world = World.generate(WorldSpec(**json.loads(spec_file.read_text())["world"])) if spec_file.exists() \
            else World.generate()
        abilities, info = world_abilities(world, model, tok)
    heldout = read_corpus(job.heldout) if job.heldout else ()
    evaluator = Evaluator(model, tok, abilities=abilities, heldout=heldout)

    runner = SequentialEditor(model, tok, config=_run_config(job), evaluator=evaluator, progress=job.progress,
                              editor=editor)
    arm = runner.run_journaled(requests, out / "run", _header(job, model, len(requests)), resume=job.resume,
                               checkpoint_every=job.checkpoint_every)
    run_config = {"command": "edit", **{k: v for k, v in job.__dict__.items() if k != "progress"},
                  "hparams_used": runner.editor_settings(), "n": len(requests)}
    doc = results_document(run_config, {arm.name: arm}, info)
    write_results(out / "results.json", doc)
    if job.save_model:
        with torch.no_grad():
            model.save_pretrained(out / "model", safe_serialization=True)
        if hasattr(tok, "save_pretrained"):
            tok.save_pretrained(out / "model")
        else:
            tok.save(out / "model" / "tokenizer.json")
    return doc


# -- the subcommand (listed by prune_fast.cli) -------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "edit", help="sequential ROME/MEMIT/AlphaEdit/MEND edits of a local model from a CounterFact/ZsRE file, "
                     "with PRUNE",
        description="Apply the first N requests of a CounterFact or ZsRE file to a local model one after another "
                    "(MEMIT, AlphaEdit: in batches), with restraint none, online (after every K edits) or at_end "
                    "(the paper's protocol), under a crash-safe journal in OUT. Writes OUT/results.json; --resume continues an "
                    "interrupted run in OUT (same model, requests, editor and F, or it refuses).")
    p.add_argument("--model", required=True,
                   help="local model folder (from_pretrained; nothing is downloaded), or smollm2 (the installed wheel's model)")
    p.add_argument("--requests", required=True, help="CounterFact or ZsRE records: .json list or .jsonl")
    p.add_argument("--format", default="auto", choices=["auto", "counterfact", "zsre"], help="request format")
    p.add_argument("--editor", default="rome", choices=list(EDITORS),
                   help="alphaedit: MEMIT projected onto the null space of the preserved keys, with its edit-key "
                        "cache journaled (default rome)")
    p.add_argument("--mend-checkpoint", metavar="FILE.safetensors",
                   help="--editor mend: the trained editor (see the mend-train command)")
    p.add_argument("--restrain", default="online", choices=list(PROTOCOLS), help="protocol (default online)")
    p.add_argument("--fn", default=DEFAULT_FN, choices=list(FN_CHOICES),
                   help=f"restraint function (default {DEFAULT_FN}, the paper's)")
    p.add_argument("--restrain-every", type=int, default=1, metavar="K", help="online: restrain every K edit steps")
    p.add_argument("--tracker-dtype", default="float32", choices=["float32", "float64"],
                   help="state dtype of the trackers: float64 keeps runs whose raw update grows far past σ* exact")
    p.add_argument("--n", type=int, default=None, help="number of requests (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="MEMIT, AlphaEdit: requests per edit step")
    p.add_argument("--out", required=True, help="run folder: journal, checkpoints, results.json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT")
    p.add_argument("--hparams", metavar="FILE.yaml", help="editor hyper-parameters (default: preset of the architecture)")
    p.add_argument("--preset", help="named preset (gpt2, llama, testbed; AlphaEdit also mistral, qwen2) instead of "
                                    "the architecture's")
    p.add_argument("--corpus", nargs="+", default=[], metavar="FILE.txt",
                   help="text lines for the key covariance (required except for the test-bed model and smollm2)")
    p.add_argument("--tasks", nargs="+", default=[], metavar="NAME=FILE.jsonl",
                   help="general-ability tasks: JSONL lines {\"prompt\": ..., \"answer\": ...}")
    p.add_argument("--heldout", metavar="FILE.txt", help="held-out text lines for perplexity")
    p.add_argument("--eval-every", type=int, default=50, help="re-score all edits and tasks every E edits")
    p.add_argument("--checkpoint-every", type=int, default=50, help="tracker checkpoint every C steps")
    p.add_argument("--spectrum-every", type=int, default=1, metavar="S",
                   help="record each weight's spectrum (σ_max of the live weight: one Krylov solve) every S steps")
    p.add_argument("--no-immediate-scores", action="store_true",
                   help="do not score each edit right after it (long runs: the re-scoring every E edits stays)")
    p.add_argument("--save-model", action="store_true", help="also save the edited model to OUT/model")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    job = EditJob(model=args.model, requests=args.requests, out=args.out, n=args.n, editor=args.editor,
                  mend_checkpoint=args.mend_checkpoint, protocol=args.restrain, fn=args.fn, restrain_every=args.restrain_every,
                  tracker_dtype=args.tracker_dtype, batch_size=args.batch_size,
                  format=args.format, hparams=args.hparams, preset=args.preset, corpus=args.corpus, tasks=args.tasks,
                  heldout=args.heldout, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                  spectrum_every=args.spectrum_every, score_immediate=not args.no_immediate_scores,
                  resume=args.resume, save_model=args.save_model, device=args.device, threads=args.threads,
                  progress=not args.no_progress)
    print(format_table(run_edit(job)))
    print(f"\nresults in {args.out}/results.json")
    return 0
