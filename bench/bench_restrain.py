"""Benchmark ``restrain_`` and a ``SpectralTracker`` step at GPT-2 XL's MLP shape (1600×6400).

Compared in the same run on the same machine:

- ``restrain_`` on W0 + Δ with Δ of rank 1, 16, 256 and 1600 (5 singular values above σ*, the rest
  below; σ* computed inside the call, as a drop-in user would);
- the same restraint through ``torch.svd_lowrank`` (q = min(rank, 64) + 10, niter = 4) and σ* from
  ``torch.linalg.matrix_norm(W0, 2)``: what a user might write with stock torch;
- the paper's per-matrix procedure (``prune_fast.spectral.reference.paper_procedure``: four float64 NumPy
  SVDs with full U and V + ``matrix_rank``, as its code does), once, and its thin variant (a thin
  SVD of Δ, singular values only for the other three) as the stricter yardstick;
- many values above σ* (issue 15), W0 Gaussian: a rank-200 Δ whose 200 values all lie in
  [1.2σ*, 4σ*], and a dense full-rank Δ with 700 values in [1.05σ*, 3σ*] and 900 in [0, 0.95σ*],
  with the certificate each call used;
- 1000 sequential rank-1 tracker steps (``prune_fast.spectral.synthetic_edits.rome_like_updates``), the
  median and quantiles of one step at edits 1–100, 401–500 and 901–1000.

Run as a script for the table (``python bench/bench_restrain.py [--quick]``) or through
pytest-benchmark (``python -m pytest bench/bench_restrain.py --benchmark-only``).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import prune_fast  # noqa: E402
import prune_fast.restrain  # noqa: E402
import prune_fast.spectral.restraint_fn  # noqa: E402
from prune_fast.spectral.reference import paper_procedure  # noqa: E402
from prune_fast.spectral.synthetic_edits import rome_like_updates  # noqa: E402
from bench_checkpoint import trained_like  # noqa: E402

M, N = 1600, 6400
RANKS = (1, 16, 256, 1600)


def make_case(rank: int, seed: int = 0, w0_kind: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor, float]:
    """W0 and a Δ of the given rank: min(5, rank) values in [1.5σ*, 6σ*], the rest in (0, 0.8σ*).

    ``w0_kind``: ``"gaussian"`` (clustered top singular values: the hard case for σ*) or
    ``"trained"`` (a bulk plus separated top directions, like trained weights).
    """
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(M, N, generator=g) / math.sqrt(N) if w0_kind == "gaussian" else trained_like(M, N, g)
    sigma_star = prune_fast.restrain.sigma_max(w0)[0]
    above = min(5, rank)
    s = torch.cat([torch.linspace(6.0, 1.5, above), 0.8 * torch.rand(rank - above, generator=g)]) * sigma_star
    u = torch.linalg.qr(torch.randn(M, rank, generator=g))[0]
    v = torch.linalg.qr(torch.randn(N, rank, generator=g))[0]
    return w0, (u * s) @ v.T, sigma_star


MANY = {"rank200_all_above": (200, False), "dense_700_above": (700, True)}


def make_many_case(name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """W0 Gaussian/√N and a Δ with many values above σ* (see the module docstring)."""
    count, dense = MANY[name]
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(M, N, generator=g) / math.sqrt(N)
    sigma_star = prune_fast.restrain.sigma_max(w0)[0]
    if dense:
        s = torch.cat([torch.linspace(3.0, 1.05, count, dtype=torch.float64),
                       torch.linspace(0.95, 0.0, M - count, dtype=torch.float64)])
    else:
        s = torch.linspace(4.0, 1.2, count, dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(M, s.numel(), generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(N, s.numel(), generator=g, dtype=torch.float64))[0]
    return w0, ((u * (s * sigma_star)) @ v.T).float(), sigma_star


def timed_inplace(w_edited: torch.Tensor, run, repeats: int) -> list[float]:
    """Time ``run(w)`` on a fresh copy of the edited weight each time (the copy is not timed)."""
    w = w_edited.clone()
    out = []
    for _ in range(repeats):
        w.copy_(w_edited)
        t0 = time.perf_counter()
        run(w)
        out.append(time.perf_counter() - t0)
    return out


def restrain_fast(delta, sigma_star=None):
    return lambda w: prune_fast.restrain_(w, delta, sigma_star=sigma_star)


def restrain_svd_lowrank(delta, rank):
    f = prune_fast.spectral.restraint_fn.resolve_fn("log")

    def run(w):
        sigma_star = float(torch.linalg.matrix_norm(w - delta, 2))
        u, s, v = torch.svd_lowrank(delta, q=min(rank, 64) + 10, niter=4)
        keep = s >= sigma_star
        c = (s - f(s.double(), sigma_star).float())[keep]
        w.addmm_(-(u[:, keep] * c), v[:, keep].T)
    return run


def tracker_steps(count: int = 1000, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(M, N, generator=g) / math.sqrt(N)
    tr = prune_fast.SpectralTracker(w)
    steps = []
    for u, v in rome_like_updates(M, N, count, tr.sigma_star, seed=seed + 1):
        t0 = time.perf_counter()
        tr.add_(u, v)
        steps.append(time.perf_counter() - t0)
    return steps


def _q(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=20)[int(q * 20) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the paper procedure and shorten the tracker run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d')} · commit {commit} · {platform.processor() or platform.machine()} · "
          f"torch {torch.__version__} · {torch.get_num_threads()} threads · shape {M}×{N} fp32")
    print("| W0 | Δ rank | restrain_ median (s) | restrain_ with σ* given (s) | svd_lowrank version (s) | n restrained |")
    print("|---|---|---|---|---|---|")
    paper_case = None
    for kind in ("gaussian", "trained"):
        for rank in RANKS:
            w0, delta, sigma_star = make_case(rank, w0_kind=kind)
            w_edited = w0 + delta
            fast = timed_inplace(w_edited, restrain_fast(delta), args.repeats)
            given = timed_inplace(w_edited, restrain_fast(delta, sigma_star), args.repeats)
            low = timed_inplace(w_edited, restrain_svd_lowrank(delta, rank), args.repeats)
            n = prune_fast.restrain_(w0 + delta, delta).n_restrained
            print(f"| {kind} | {rank} | {statistics.median(fast):.3f} | {statistics.median(given):.3f} | "
                  f"{statistics.median(low):.3f} | {n} |", flush=True)
            if rank == 16 and kind == "trained":
                paper_case = (w0, delta)
    print("\n| many values above σ* (W0 gaussian) | restrain_ median (s) | restrain_ with σ* given (s) | n restrained | certificate |")
    print("|---|---|---|---|---|")
    for name in MANY:
        w0, delta, sigma_star = make_many_case(name)
        w_edited = w0 + delta
        fast = timed_inplace(w_edited, restrain_fast(delta), args.repeats)
        given = timed_inplace(w_edited, restrain_fast(delta, sigma_star), args.repeats)
        n = prune_fast.restrain_(w0 + delta, delta).n_restrained
        cert = prune_fast.restrain.triplets_at_or_above(delta, sigma_star, "torch").certificate
        print(f"| {name} | {statistics.median(fast):.3f} | {statistics.median(given):.3f} | {n} | {cert} |", flush=True)
    if not args.quick:
        w0, delta = paper_case
        for full, label in ((True, "as in the paper's code: 4 float64 SVDs with full U and V + matrix_rank"),
                            (False, "thin variant: thin SVD of Δ, values only for the other 3, + matrix_rank")):
            t0 = time.perf_counter()
            paper_procedure(w0.numpy(), (w0 + delta).numpy(), full_matrices=full)
            print(f"\npaper procedure ({label}), rank 16: {time.perf_counter() - t0:.1f} s")
    steps = tracker_steps(200 if args.quick else 1000)
    print(f"tracker step, all {len(steps)} edits: median {1e3 * statistics.median(steps):.2f} ms, "
          f"p90 {1e3 * _q(steps, 0.9):.2f} ms")
    windows = ((0, 100), (len(steps) - 200, len(steps) - 100), (len(steps) - 100, len(steps)))
    for lo, hi in dict.fromkeys(w for w in windows if w[0] >= 0):  # --quick: 200 steps, two windows
        part = steps[lo:hi]
        print(f"tracker step, edits {lo + 1}-{hi}: median {1e3 * statistics.median(part):.2f} ms, "
              f"p90 {1e3 * _q(part, 0.9):.2f} ms, max {1e3 * max(part):.2f} ms")


# -- pytest-benchmark ------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("rank", RANKS)
    def test_bench_restrain(benchmark, rank):
        w0, delta, _ = make_case(rank)
        w_edited = w0 + delta
        benchmark.pedantic(restrain_fast(delta), setup=lambda: ((w_edited.clone(),), {}), rounds=3, iterations=1)

    @pytest.mark.parametrize("name", list(MANY))
    def test_bench_restrain_many(benchmark, name):
        w0, delta, _ = make_many_case(name)
        w_edited = w0 + delta
        benchmark.pedantic(restrain_fast(delta), setup=lambda: ((w_edited.clone(),), {}), rounds=3, iterations=1)

    @pytest.mark.parametrize("rank", RANKS)
    def test_bench_svd_lowrank(benchmark, rank):
        w0, delta, _ = make_case(rank)
        w_edited = w0 + delta
        benchmark.pedantic(restrain_svd_lowrank(delta, rank), setup=lambda: ((w_edited.clone(),), {}), rounds=3,
                           iterations=1)

    def test_bench_paper_procedure(benchmark):
        w0, delta, _ = make_case(16)
        benchmark.pedantic(lambda: paper_procedure(w0.numpy(), (w0 + delta).numpy()), rounds=1, iterations=1)

    def test_bench_tracker_step(benchmark):
        steps = benchmark.pedantic(lambda: tracker_steps(1000), rounds=1, iterations=1)
        benchmark.extra_info["median_step_ms_last_100"] = 1e3 * statistics.median(steps[-100:])


if __name__ == "__main__":
    main()
