"""Benchmark sequential runs: PRUNE's share of the edit time, and whether it stays flat as edits pile up.

(a) ``tracker``: ``--steps`` ROME-sized rank-1 updates (``prune_fast.spectral.synthetic_edits``) streamed into
    one ``SpectralTracker`` on an M×N weight (default 1600×6400, GPT-2 XL's MLP), restrained after
    every edit: edits per second, and the per-step time at the start, middle and end; against
    the paper's procedure (four full float64 SVDs + matrix_rank per restraint), timed once.
(b) ``testbed``: ``--edits`` sequential ROME edits on the package's small model with ``online``
    restraint through ``SequentialEditor`` (no evaluation): median restraint time per edit in
    windows ending at 100, 1,000 and 10,000 edits (those reached), and PRUNE's share of the edit
    time. Requests cycle through ``World.edit_requests`` with new seeds past 200 (subjects repeat).

Targets (issue 9): restraint time flat (≤ 1.5× from 100 to 10,000 edits), PRUNE ≤ 5 % of the edit.

    python bench/bench_sequential.py testbed --edits 1000
    python bench/bench_sequential.py tracker --steps 1000 [--rows 1600 --cols 6400] [--skip-paper]

Every table is printed with the machine, thread count and commit.
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

from prune_fast import SpectralTracker  # noqa: E402
from prune_fast.spectral.reference import paper_procedure  # noqa: E402
from prune_fast.restrain import sigma_max  # noqa: E402
from prune_fast.spectral.synthetic_edits import rome_like_updates  # noqa: E402


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} thread(s), commit {commit}"


def _q(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{statistics.median(xs) * 1e3:.2f} ms (p10 {xs[len(xs) // 10] * 1e3:.2f}, p90 {xs[9 * len(xs) // 10] * 1e3:.2f})"


def bench_tracker(rows: int, cols: int, steps: int, skip_paper: bool) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g) / math.sqrt(cols)
    s_star = sigma_max(w)[0]
    tr = SpectralTracker(w, fn="linear", sigma_star=s_star)
    times, restrained = [], []
    for u, v in rome_like_updates(rows, cols, steps, s_star, scale=2.0):
        t0 = time.perf_counter()
        res = tr.add_(u, v)
        times.append(time.perf_counter() - t0)
        restrained.append(res.n_restrained)
    k = max(1, min(100, steps // 10))
    print(f"(a) {steps} rank-1 steps on {rows}×{cols}, restrained after every edit — {machine()}")
    print(f"    edits/s: {steps / sum(times):.1f}")
    print(f"    steps 1–{k}: {_q(times[:k])};  last {k}: {_q(times[-k:])}")
    print(f"    singular values restrained per step: {restrained[k - 1]} at step {k}, {restrained[-1]} at step "
          f"{steps}; Δ rank {tr.rank if tr.rank is not None else 'dense'}")
    if not skip_paper:
        w0 = tr.w0.double().numpy()
        wn = w0 + tr.delta().double().numpy()
        t0 = time.perf_counter()
        paper_procedure(w0, wn, fn="linear")
        paper = time.perf_counter() - t0
        print(f"    paper's procedure (full SVDs, as its code), one restraint: {paper:.2f} s → {1 / paper:.3f} edits/s online "
              f"({paper / statistics.median(times[-k:]):.0f}× one tracker step)")


def bench_testbed(edits: int, threads: int) -> None:
    from prune_fast.editors import CovarianceStore, ROMEHyperParams
    from prune_fast.runs.runner import RunConfig, SequentialEditor
    from prune_fast.cache import default_cache_dir
    from prune_fast.testbed import load_testbed, shipped_corpus

    torch.set_num_threads(threads)
    bed = load_testbed()
    store = CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=False)
    requests, seed = [], 0
    while len(requests) < edits:
        requests += bed.world.edit_requests(min(200, edits - len(requests)), seed=seed)
        seed += 1
    cfg = RunConfig(protocol="online", fn="linear", eval_every=0, spectrum_every=max(1, edits // 20),
                    score_immediate=False)
    runner = SequentialEditor(bed.model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"), covariance=store,
                              config=cfg)
    arm = runner.run(requests)
    restrain = [s.restrain_s for s in arm.steps]
    apply = [s.apply_s for s in arm.steps]
    editor = [s.editor_s for s in arm.steps]
    print(f"(b) {edits} sequential ROME edits, online linear, test-bed model — {machine()}")
    for end in (100, 1000, 10_000):
        if end <= edits:
            lo = max(0, end - max(10, end // 10))
            print(f"    edits {lo + 1}–{end}: restrain {_q(restrain[lo:end])}; tracker add+restrain {_q(apply[lo:end])}")
    share = sum(apply) / (sum(apply) + sum(editor))
    print(f"    ROME editor median {statistics.median(editor) * 1e3:.1f} ms; PRUNE (tracker add + restrain) share of "
          f"edit time {share * 100:.2f} %; final σmax(W)/σ* "
          f"{max(sp['final']['ratio'] for sp in arm.to_dict()['spectrum'].values()):.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="which", required=True)
    a = sub.add_parser("tracker")
    a.add_argument("--rows", type=int, default=1600)
    a.add_argument("--cols", type=int, default=6400)
    a.add_argument("--steps", type=int, default=1000)
    a.add_argument("--skip-paper", action="store_true")
    b = sub.add_parser("testbed")
    b.add_argument("--edits", type=int, default=10_000)
    b.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.which == "tracker":
        bench_tracker(args.rows, args.cols, args.steps, args.skip_paper)
    else:
        bench_testbed(args.edits, args.threads)


if __name__ == "__main__":
    main()
