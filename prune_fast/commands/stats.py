"""``python -m prune_fast stats``: the key statistics ROME/MEMIT need, computed ahead of the edits.

One pass over the corpus gives ``C = E[k kᵀ]`` of the down projection of every ``--layers`` entry
(stopping the forward after the highest one) and writes each into the shared cache
(``$PRUNE_FAST_CACHE``, or ``--cache-dir``), where ``edit`` finds it.  Under ``torchrun`` the pass
is sharded: each rank reads every ``world``-th batch, the float64 sums are all-reduced (gloo on
CPU, NCCL on GPU) and rank 0 writes the cache::

    python -m prune_fast stats --model models/smollm2 --corpus wiki.txt --layers 5 --samples 100000
    torchrun --nproc_per_node=4 -m prune_fast stats --model models/llama --corpus wiki.txt --layers 4 5 6 7 8 --device cuda
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import _validate
from ..editors import CovarianceStore, read_corpus, resolve_site
from ..cache import default_cache_dir
from ..errors import InvalidInputError
from .edit import load_local_model

__all__ = ["add_parser", "run", "StatsJob", "run_stats"]

logger = logging.getLogger(__name__)


@dataclass
class StatsJob:
    """Settings of one ``stats`` run (the CLI's options, one to one)."""

    model: str
    corpus: list[str]
    layers: list[int]
    samples: int = 100_000
    max_tokens: int = 128
    token_budget: int = 8192
    batch_size: int = 64
    cache_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    hparams: dict[str, Any] = field(default_factory=dict)


def _init_distributed(device: str) -> tuple[Any, int, int, str]:
    """(group or None, rank, world, device) from torchrun's environment; gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, 1, device
    import torch.distributed as dist  # optional: only sharded runs need it

    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True, dist.get_rank(), dist.get_world_size(), device


def run_stats(job: StatsJob) -> dict[str, dict[str, Any]]:
    """Compute (or find cached) the statistics; per module: cache path, tokens/s and seconds (rank 0)."""
    if not job.layers:
        raise InvalidInputError("--layers needs at least one layer index")
    _validate.check_count("--samples", job.samples, minimum=1)
    if job.threads:
        torch.set_num_threads(job.threads)
    group, rank, world, device = _init_distributed(job.device)
    try:
        texts = read_corpus(job.corpus)
        model, tok, _ = load_local_model(job.model, device)
        sites = [resolve_site(model, layer, job.hparams.get("mlp_out_template"), job.hparams.get("layer_template"))
                 for layer in sorted(set(job.layers))]
        store = CovarianceStore(texts, cache_dir=Path(job.cache_dir) if job.cache_dir else default_cache_dir(),
                                batch_size=job.batch_size, token_budget=job.token_budget,
                                progress=job.progress and rank == 0)
        start = time.perf_counter()
        store.get_many(model, tok, sites, job.samples, job.max_tokens, distributed=group)
        elapsed = time.perf_counter() - start
        return {s.module_name: {"path": str(store.path(store.key(model, s, job.samples, job.max_tokens))),
                                "seconds": elapsed, "rank": rank, "world": world} for s in sites}
    finally:
        if group is not None:
            import torch.distributed as dist  # optional, as above

            dist.destroy_process_group()


# -- the subcommand (listed by prune_fast.cli) -------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "stats", help="key statistics (covariance) for ROME/MEMIT, into the shared cache; torchrun shards it",
        description="One pass over the corpus computes C = E[k kᵀ] of the down projection of every --layers entry "
                    "(the forward stops after the highest one) and writes it to the shared cache "
                    "($PRUNE_FAST_CACHE or --cache-dir), where `edit` finds it. Under torchrun --nproc_per_node=N "
                    "each rank reads its shard and the sums are all-reduced (gloo on CPU, NCCL on GPU).")
    p.add_argument("--model", required=True, help="local model folder (from_pretrained; nothing is downloaded)")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE.txt", help="text lines")
    p.add_argument("--layers", required=True, nargs="+", type=int, help="layer indices (e.g. 5, or 4 5 6 7 8)")
    p.add_argument("--samples", type=int, default=100_000, help="corpus lines used (default 100000)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per line (default 128)")
    p.add_argument("--token-budget", type=int, default=8192, help="padded tokens per forward pass")
    p.add_argument("--cache-dir", help="cache root (default $PRUNE_FAST_CACHE or ~/.cache/prune_fast)")
    p.add_argument("--device", default="cpu", help="torch device (cuda: one GPU per rank)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = run_stats(StatsJob(model=args.model, corpus=args.corpus, layers=args.layers, samples=args.samples,
                             max_tokens=args.max_tokens, token_budget=args.token_budget, cache_dir=args.cache_dir,
                             device=args.device, threads=args.threads, progress=not args.no_progress))
    for name, info in out.items():
        if info["rank"] == 0:
            print(f"{name}: {info['path']} ({info['seconds']:.1f} s, {info['world']} process(es))")
    return 0
