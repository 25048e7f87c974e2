"""Benchmark sequential runs: PRUNE's share of the edit time, and whether it stays flat as edits pile up.

(a) ``tracker``: ``--steps`` ROME-sized rank-1 updates (``prune_fast.spectral.synthetic_edits``) streamed into
    one ``SpectralTracker`` on an M×N weight (default 1600×6400, GPT-2 XL's MLP), restrained after
    every edit: edits per second, and the per-step time at the start, middle and end; against
    the paper's procedure (four full float64 SVDs + matrix_rank per restraint), timed once.
(r) ``record``: what a runner step's spectrum record costs on top of the tracker step, the same
    stream of rank-1 updates into two trackers on an M×N weight: today's record (the restraint's own
    singular values plus ``add_(..., with_sigma_max_weight=True)``: one warm σ_max(W) solve) against
    the earlier one (``spectrum()`` after the step: a second Krylov solve of Δ, then σ_max(W)).
(b) ``testbed``: ``--edits`` sequential ROME edits on the package's small model with ``online``
    restraint through ``SequentialEditor`` (no evaluation): median restraint time per edit in
    windows ending at 100, 1,000 and 10,000 edits (those reached), and PRUNE's share of the edit
    time. Requests cycle through ``World.edit_requests`` with new seeds past 200 (subjects repeat).

Targets (issue 9): restraint time flat (≤ 1.5× from 100 to 10,000 edits), PRUNE ≤ 5 % of the edit.

    python bench/bench_sequential.py testbed --edits 1000
    python bench/bench_sequential.py tracker --steps 1000 [--rows 1600 --cols 6400] [--skip-paper]
    python bench/bench_sequential.py record --steps 200 [--rows 1600 --cols 6400]

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


def bench_record(rows: int, cols: int, steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g) / math.sqrt(cols)
    s_star = sigma_max(w)[0]
    reuse, second_pass = (SpectralTracker(w.clone(), fn="linear", sigma_star=s_star) for _ in range(2))
    step_t, new_t, old_t, gap = [], [], [], 0.0
    for u, v in rome_like_updates(rows, cols, steps, s_star, scale=2.0):
        t0 = time.perf_counter()
        res = reuse.add_(u, v, with_sigma_max_weight=True)
        t1 = time.perf_counter()
        second_pass.add_(u, v)
        t2 = time.perf_counter()
        report = second_pass.spectrum()
        t3 = time.perf_counter()
        # the record's step cost beyond the bare tracker step, for each way
        step_t.append(t2 - t1)
        new_t.append(max(0.0, (t1 - t0) - (t2 - t1)))
        old_t.append(t3 - t2)
        gap = max(gap, abs(res.sigma_max_weight - report.sigma_max_weight) / report.sigma_max_weight)
    k = max(1, min(100, steps // 2))
    print(f"(r) step record on {rows}×{cols}, {steps} rank-1 steps of 2σ*, restrained after every edit — {machine()}")
    print(f"    tracker step alone, last {k}: {_q(step_t[-k:])}")
    print(f"    record by spectrum() (second Krylov solve of Δ + σ_max(W)), last {k}: {_q(old_t[-k:])}")
    print(f"    record from add_(with_sigma_max_weight=True) (σ_max(W) only), last {k}: {_q(new_t[-k:])}")
    saved = statistics.median(old_t[-k:]) - statistics.median(new_t[-k:])
    print(f"    saving per step: {saved * 1e3:.2f} ms ({saved / statistics.median(step_t[-k:]) * 100:.0f} % of a tracker "
          f"step); largest relative difference of the two σ_max(W): {gap:.1e}")


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
    r = sub.add_parser("record")
    r.add_argument("--rows", type=int, default=1600)
    r.add_argument("--cols", type=int, default=6400)
    r.add_argument("--steps", type=int, default=200)
    b = sub.add_parser("testbed")
    b.add_argument("--edits", type=int, default=10_000)
    b.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.which == "tracker":
        bench_tracker(args.rows, args.cols, args.steps, args.skip_paper)
    elif args.which == "record":
        bench_record(args.rows, args.cols, args.steps)
    else:
        bench_testbed(args.edits, args.threads)


if __name__ == "__main__":
    main()
