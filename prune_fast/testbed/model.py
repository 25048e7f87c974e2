"""Build, train, cache and reload the test-bed model: a small GPT-2 trained on the synthetic world.

Training is deterministic (fixed seeds, a fixed number of CPU threads, no dropout) and uses the
loss on answer tokens only.  With the defaults (4 layers, width 128, AdamW lr 3e-3 with warm-up
and a final linear decay, batch 64, 3,000 steps, ONE thread) it reaches >= 95% recall of the facts and
well-above-chance addition and copying; see ``TrainReport`` of a cached model for the numbers
measured when it was trained.  One thread is the default on purpose: on a shared 2-core machine
two OpenMP threads spin against other jobs and cost several times the CPU for the same steps.

The model of the default specs is shipped with the package (``prune_fast/data/testbed/<key>/``,
trained once with this code; :mod:`.folders` says why). Any other spec, or ``shipped=False``, trains
on first use and is cached under ``$PRUNE_FAST_CACHE`` (default ``~/.cache/prune_fast``) in
``testbed/<key>/``. Either folder holds ``model.safetensors`` + ``config.json``
(``save_pretrained``), ``tokenizer.json``, ``spec.json`` and ``report.json``; ``<key>``
(:func:`bed_key`) hashes the world and training specs. To ship a new default model, train it
with ``load_testbed(retrain=True)`` and copy its cache folder to ``prune_fast/data/testbed/``.

Example::

    bed = load_testbed()            # the shipped model; other specs train once (minutes), then load in a second
    bed.report.accuracies           # {'recall': 0.99..., 'addition': ..., 'copy': ...}
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import _validate
from .._atomic import atomic_folder
from ..errors import CorruptStateError
from ..lm.evaluation import answer_correct, encode_pairs
from .evaluate import task_accuracies
from .folders import artefact_folder
from .tokenizer import WordTokenizer
from .world import World, WorldSpec

__all__ = ["TrainSpec", "TrainReport", "Testbed", "build_model", "train_model", "load_testbed", "bed_key"]

logger = logging.getLogger(__name__)

_FORMAT = 1  # bump when the world, the tokenizer or the training loop changes meaning


@dataclass(frozen=True)
class TrainSpec:
    """Model size and optimisation settings of the test-bed model."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_inner: int = 512
    n_positions: int = 32
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    threads: int = 1


@dataclass
class TrainReport:
    """What training measured: wall and CPU time, threads, final loss and accuracy per task, and where.

    ``seconds`` is wall-clock time of the optimisation loop; ``cpu_seconds`` the CPU time the
    process used meanwhile (all threads), which does not grow when other jobs share the machine.
    """

    seconds: float
    threads: int
    steps: int
    final_loss: float
    accuracies: dict[str, float]
    cpu_seconds: float = float("nan")
    torch_version: str = field(default_factory=lambda: torch.__version__)
    # the instruction set torch's CPU kernels used ("AVX512", "AVX2", ...): fp32 training differs by it
    cpu_capability: str = field(default_factory=lambda: torch.backends.cpu.get_cpu_capability())


@dataclass
class Testbed:
    """The trained model with the world and tokenizer it was trained on."""

    model: Any  # transformers.GPT2LMHeadModel
    tokenizer: WordTokenizer
    world: World
    report: TrainReport
    path: Path | None = None


def build_model(tokenizer: WordTokenizer, spec: TrainSpec) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` sized by ``spec`` (no dropout), seeded by ``spec.seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel  # heavy: imported only where used

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=spec.n_positions, n_embd=spec.n_embd, n_layer=spec.n_layer,
        n_head=spec.n_head, n_inner=spec.n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return GPT2LMHeadModel(config)


def _lr_at(step: int, spec: TrainSpec) -> float:
    """Linear warm-up, constant ``spec.lr``, then a linear decay to 10% over the last 20% of steps.

    (A cosine decay from the start memorised markedly fewer facts in the same number of steps.)
    """
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    decay_start = int(0.8 * spec.steps)
    if step < decay_start:
        return spec.lr
    t = (step - decay_start) / max(1, spec.steps - decay_start)
    return spec.lr * (1.0 - 0.9 * t)


def train_model(world: World, spec: TrainSpec | None = None, progress: bool = True, log_every: int = 0) -> Testbed:
    """Train the test-bed model from scratch on ``world``; deterministic for a given spec.

    Uses ``spec.threads`` CPU threads for the duration of the call (restored afterwards).
    ``log_every > 0`` logs the recall of 600 facts every that many steps (evaluation only:
    the trained weights do not depend on it).
    """
    spec = spec or TrainSpec()
    tok = WordTokenizer(world.vocabulary())
    old_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        model = build_model(tok, spec)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay,
                                betas=(0.9, 0.98))
        stream = world.training_stream(seed=spec.seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss_ema = float("nan")
        bar = tqdm(range(spec.steps), desc="training test-bed model", disable=not progress)
        for step in bar:
            batch = [next(stream) for _ in range(spec.batch_size)]
            ids, mask, labels = encode_pairs(tok, [(e.prompt, e.answer) for e in batch])
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, spec)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_ema = loss.item() if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss.item()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss_ema:.3f}")
            if log_every and (step + 1) % log_every == 0:
                model.eval()
                probe = answer_correct(model, tok, world.fact_prompts()[::10]).float().mean().item()
                model.train()
                logger.info("step %d: loss %.3f, recall of 600 facts %.3f", step + 1, loss_ema, probe)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        model.eval()
        acc = task_accuracies(model, tok, world)
    finally:
        torch.set_num_threads(old_threads)
    report = TrainReport(seconds=seconds, threads=spec.threads, steps=spec.steps, final_loss=loss_ema,
                         accuracies=acc, cpu_seconds=cpu_seconds)
    logger.info("trained test-bed model in %.1f s (%.1f s CPU) on %d threads: %s", seconds, cpu_seconds,
                spec.threads, acc)
    return Testbed(model=model, tokenizer=tok, world=world, report=report)


def bed_key(world_spec: WorldSpec, train_spec: TrainSpec) -> str:
    """The folder name of a model trained with these specs (cache or shipped): a hash of both and ``_FORMAT``."""
    blob = json.dumps({"format": _FORMAT, "world": asdict(world_spec), "train": asdict(train_spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save(bed: Testbed, folder: Path, world_spec: WorldSpec, train_spec: TrainSpec) -> None:
    with atomic_folder(folder) as tmp:
        bed.model.save_pretrained(tmp, safe_serialization=True)
        bed.tokenizer.save(tmp / "tokenizer.json")
        (tmp / "spec.json").write_text(json.dumps({"format": _FORMAT, "world": asdict(world_spec),
                                                   "train": asdict(train_spec)}, indent=1))
        (tmp / "report.json").write_text(json.dumps(asdict(bed.report), indent=1))


def load_testbed(cache_dir: str | Path | None = None, world_spec: WorldSpec | None = None,
                 train_spec: TrainSpec | None = None, retrain: bool = False, progress: bool = True,
                 shipped: bool = True) -> Testbed:
    """Load the test-bed model: the shipped one for these specs if there is one, else the cached one,
    training and caching it first if it is not there.

    Args:
        cache_dir: root of the cache (default :func:`default_cache_dir`).
        world_spec, train_spec: what to build (defaults: ``WorldSpec()``, ``TrainSpec()``).
        retrain: ignore a cached copy and train again (the cache is then replaced); implies
            ``shipped=False``.
        shipped: use the model shipped with the package for these specs when there is one (the
            default specs have one: every machine then loads the same weights). ``False``: the
            cache, trained on this machine.
    """
    from transformers import GPT2LMHeadModel  # heavy: imported only where used

    _validate.check_flag("retrain", retrain)
    _validate.check_flag("shipped", shipped)
    world_spec = world_spec or WorldSpec()
    train_spec = train_spec or TrainSpec()
    world = World.generate(world_spec)
    folder = artefact_folder("testbed", bed_key(world_spec, train_spec), cache_dir, shipped and not retrain)
    if retrain and folder.exists():
        shutil.rmtree(folder)
    if not (folder / "report.json").exists():
        logger.info("no cached test-bed model at %s: training one", folder)
        bed = train_model(world, train_spec, progress=progress)
        _save(bed, folder, world_spec, train_spec)
        bed.path = folder
        return bed
    tok = WordTokenizer.load(folder / "tokenizer.json")
    if tok.vocab != WordTokenizer(world.vocabulary()).vocab:
        raise CorruptStateError(f"cached tokenizer in {folder} does not match the world; delete the folder")
    model = GPT2LMHeadModel.from_pretrained(folder)
    model.eval()
    report = TrainReport(**json.loads((folder / "report.json").read_text()))
    return Testbed(model=model, tokenizer=tok, world=world, report=report, path=folder)
