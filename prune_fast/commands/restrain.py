"""``python -m prune_fast restrain``: restrain a saved edited model against its base (PRUNE).

The work is :func:`prune_fast.checkpoint.restrain_checkpoint`; this module only declares the
arguments and prints the report.

Example::

    python -m prune_fast restrain --base gpt2-xl --edited gpt2-xl-memit --out gpt2-xl-prune --fn log
"""
from __future__ import annotations

import argparse
import math
from typing import Any

from ..checkpoint import restrain_checkpoint
from ..spectral.restraint_fn import DEFAULT_FN, FN_CHOICES

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "restrain", help="restrain an edited checkpoint against its base (PRUNE)",
        description="Restrain every edited 2-D weight of EDITED against BASE (σ* = σ_max(W0), "
                    "Δ = EDITED − BASE, Ŵ = W0 + F(Δ)) and write the model to OUT. Other tensors and "
                    "files are copied unchanged.")
    p.add_argument("--base", required=True, help="original model: HF folder (safetensors, sharded or not) or .safetensors file")
    p.add_argument("--edited", required=True, help="edited model, same layout as BASE")
    p.add_argument("--out", help="output folder (or .safetensors file); required unless --dry-run")
    p.add_argument("--fn", default="log", choices=list(FN_CHOICES),
                   help=f"restraint function (default: log with --alpha e, i.e. {DEFAULT_FN}, the paper's)")
    p.add_argument("--alpha", type=float, default=None, help="log base for --fn log (default e)")
    p.add_argument("--modules", nargs="+", metavar="REGEX", help="restrain only tensors whose name matches one")
    p.add_argument("--dry-run", action="store_true", help="compute and print the table, write nothing")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read .bin/.pt checkpoints with torch.load(weights_only=True) (output is safetensors)")
    p.add_argument("--allow-extra-files", action="store_true",
                   help="a folder with model.safetensors and other .safetensors files but no index: use "
                        "model.safetensors, leave the others out (refused otherwise as ambiguous)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.out is None and not args.dry_run:
        raise SystemExit("prune_fast restrain: error: --out is required unless --dry-run")
    report = restrain_checkpoint(
        args.base, args.edited, args.out, fn=args.fn, alpha=math.e if args.alpha is None else args.alpha,
        modules=args.modules, dry_run=args.dry_run, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
        backend=args.backend, progress=not args.no_progress, allow_extra_files=args.allow_extra_files)
    print(report.format_table())
    if args.report:
        report.save_json(args.report)
    return 0
