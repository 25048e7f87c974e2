"""Late steps of a long online run, replayed: per-step cost of add_ + restraint on its saved dense Δ.

Reads a run's checkpoint (``OUT/run/checkpoint.safetensors`` of ``python -m prune_fast edit``), builds a
tracker on W0 and the saved Δ of one weight, then adds ``--steps`` random rank-1 updates whose size is
``--ratio`` σ* (a long run's typical update) and restrains each online (ln), timing every ``add_``.

``--rank R`` starts from Δ's top R singular triplets instead (a factored Δ while R·(m+n) + R² < m·n:
the r×r core's solve of the middle of a long run).

Usage: ``python bench/bench_late_steps.py OUT/run/checkpoint.safetensors [--param NAME] [--steps 12]
[--ratio 0.68] [--rank R] [--threads 1]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_fast import SpectralTracker  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--param", default="model.layers.5.mlp.down_proj.weight")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--ratio", type=float, default=0.68)
    p.add_argument("--rank", type=int, default=None, help="start from Δ's top RANK triplets (default: all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    saved = load_file(args.checkpoint)
    w0, delta = saved[f"{args.param}::w0"], saved[f"{args.param}::delta"]
    tracker = SpectralTracker(w0.clone(), fn="log")
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    u, s, vh = u[:, :args.rank], s[:args.rank], vh[:args.rank]
    tracker.add_((u * s).float(), vh.T.float().contiguous())  # Δ as it was; this step is not timed
    gen = torch.Generator().manual_seed(0)
    m, n = w0.shape
    times, counts = [], []
    for _ in range(args.steps):
        a, b = torch.randn(m, 1, generator=gen), torch.randn(n, 1, generator=gen)
        a *= args.ratio * tracker.sigma_star / (a.norm() * b.norm())
        start = time.perf_counter()
        res = tracker.add_(a, b)
        times.append(time.perf_counter() - start)
        counts.append(res.n_restrained)
    print(f"{args.param} {m}x{n}, Δ {'dense' if tracker.rank is None else f'rank {tracker.rank}'}, "
          f"restrained {counts[0]} .. {counts[-1]} values; per step after the first: median "
          f"{statistics.median(times[1:]) * 1e3:.1f} ms, min {min(times[1:]) * 1e3:.1f} ms (first {times[0] * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
