"""``python -m prune_fast example``: PRUNE on one GPT-2-XL-sized weight, before and after.

A random W0 (1600×6400, the shape of a GPT-2 XL MLP projection) receives a stream of ROME-like
rank-1 updates (:mod:`prune_fast.spectral.synthetic_edits`: keys that share a few directions, so Δ grows a
few large singular values). Two copies are edited side by side through :class:`SpectralTracker`: one
unrestrained (``restrain_every=None``), one restrained after every edit. At a few checkpoints the
table shows σ_max(W)/σ* of both and the median time of one restrained step; at the end the
drop-in ``restrain_`` is applied once to the unrestrained copy and must land on the same weight
(no compounding).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import _validate
from ..restrain import restrain_
from ..spectral.restraint_fn import DEFAULT_FN, FN_CHOICES
from ..spectral.synthetic_edits import rome_like_updates
from ..tracker import SpectralTracker


@dataclass
class ExampleRow:
    edits: int
    ratio_unrestrained: float
    ratio_restrained: float
    n_restrained: int
    median_step_ms: float


def run_example(m: int = 1600, n: int = 6400, n_edits: int = 200, checkpoints: tuple[int, ...] = (1, 10, 50, 100, 200),
                fn: str = "log", edit_scale: float = 0.3, seed: int = 0) -> tuple[list[ExampleRow], dict]:
    """Run the side-by-side comparison; returns the table rows and a summary dict."""
    for name, value in (("rows", m), ("cols", n), ("edits", n_edits)):
        _validate.check_count(f"--{name}", value, minimum=1)
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=g) / math.sqrt(n)
    plain, restrained = w0.clone(), w0.clone()
    tr_plain = SpectralTracker(plain, fn=fn, restrain_every=None)
    tr = SpectralTracker(restrained, fn=fn, sigma_star=tr_plain.sigma_star)
    sigma_star = tr.sigma_star
    rows, step_s = [], []
    updates = rome_like_updates(m, n, n_edits, sigma_star, scale=edit_scale, seed=seed + 1)
    for i, (u, v) in enumerate(updates, start=1):
        tr_plain.add_(u, v)
        t0 = time.perf_counter()
        res = tr.add_(u, v)
        step_s.append(time.perf_counter() - t0)
        if i in checkpoints:
            rows.append(ExampleRow(i, tr_plain.spectrum().ratio, tr.spectrum().ratio, res.n_restrained,
                                   1e3 * statistics.median(step_s)))
    once = restrain_(plain, tr_plain.delta(), fn=fn, sigma_star=sigma_star)
    gap = float((plain - restrained).norm() / restrained.norm())
    return rows, {"sigma_star": sigma_star, "restrain_once": once, "online_vs_once_rel_diff": gap, "fn": fn,
                  "shape": (m, n)}


def format_example(rows: list[ExampleRow], summary: dict) -> str:
    m, n = summary["shape"]
    lines = [f"PRUNE ({summary['fn']}) on a {m}×{n} weight, σ* = σ_max(W0) = {summary['sigma_star']:.4f}",
             f"{'edits':>6} | {'σmax(W)/σ* none':>16} | {'σmax(W)/σ* PRUNE':>17} | {'#σ≥σ* restrained':>16} | "
             f"{'median step':>11}",
             "-" * 80]
    for r in rows:
        lines.append(f"{r.edits:>6} | {r.ratio_unrestrained:>16.3f} | {r.ratio_restrained:>17.3f} | "
                     f"{r.n_restrained:>16d} | {r.median_step_ms:>8.2f} ms")
    once = summary["restrain_once"]
    lines += ["-" * 80,
              f"restrain_ once on the unrestrained copy: {once}",
              f"relative difference to the online-restrained weight: {summary['online_vs_once_rel_diff']:.2e} "
              "(no compounding: same raw Δ, same weight)"]
    return "\n".join(lines)


# -- the subcommand (listed by prune_fast.cli) -------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "example", help="PRUNE on one GPT-2-XL-sized weight: σ_max(W)/σ* with and without restraint",
        description="Stream rank-1 edits into a random 1600×6400 weight, with and without PRUNE after "
                    "every edit, and print σ_max(W)/σ* and the time of one restrained step.")
    p.add_argument("--edits", type=int, default=200, help="number of rank-1 edits (default 200)")
    p.add_argument("--fn", default=DEFAULT_FN, choices=list(FN_CHOICES),
                   help=f"restraint function (default {DEFAULT_FN}, the paper's)")
    p.add_argument("--rows", type=int, default=1600)
    p.add_argument("--cols", type=int, default=6400)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    marks = tuple(sorted({1, 10, 50, 100, args.edits} & set(range(1, args.edits + 1))))
    rows, summary = run_example(args.rows, args.cols, args.edits, marks, fn=args.fn)
    print(format_example(rows, summary))
    return 0
