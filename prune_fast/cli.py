"""``python -m prune_fast``: a small dispatcher over subcommands.

Each subcommand is one ``add_<name>_parser(subparsers)`` function listed in :data:`COMMANDS`; it
declares the arguments and sets ``run`` to a thin handler that calls the library (the work lives
in the subcommand's own module, imported only when that subcommand runs).

Example::

    python -m prune_fast restrain --base gpt2-xl --edited gpt2-xl-memit --out gpt2-xl-prune --fn log
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .errors import PruneFastError
from .restraint_fn import FN_NAMES

__all__ = ["main", "build_parser", "COMMANDS"]

_Sub = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_restrain_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "restrain", help="restrain an edited checkpoint against its base (PRUNE)",
        description="Restrain every edited 2-D weight of EDITED against BASE (σ* = σ_max(W0), "
                    "Δ = EDITED − BASE, Ŵ = W0 + F(Δ)) and write the model to OUT. Other tensors and "
                    "files are copied unchanged.")
    p.add_argument("--base", required=True, help="original model: HF folder (safetensors, sharded or not) or .safetensors file")
    p.add_argument("--edited", required=True, help="edited model, same layout as BASE")
    p.add_argument("--out", help="output folder (or .safetensors file); required unless --dry-run")
    p.add_argument("--fn", default="log", choices=[*FN_NAMES, "log1_5", "log1_2"], help="restraint function (default: log = ln)")
    p.add_argument("--alpha", type=float, default=None, help="log base for --fn log (default e)")
    p.add_argument("--modules", nargs="+", metavar="REGEX", help="restrain only tensors whose name matches one")
    p.add_argument("--dry-run", action="store_true", help="compute and print the table, write nothing")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read .bin/.pt checkpoints with torch.load(weights_only=True) (output is safetensors)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_restrain)


def _run_restrain(args: argparse.Namespace) -> int:
    import math

    from .checkpoint import restrain_checkpoint

    if args.out is None and not args.dry_run:
        raise SystemExit("prune_fast restrain: error: --out is required unless --dry-run")
    report = restrain_checkpoint(
        args.base, args.edited, args.out, fn=args.fn, alpha=math.e if args.alpha is None else args.alpha,
        modules=args.modules, dry_run=args.dry_run, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
        backend=args.backend, progress=not args.no_progress)
    print(report.format_table())
    if args.report:
        report.save_json(args.report)
    return 0


def add_example_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "example", help="PRUNE on one GPT-2-XL-sized weight: σ_max(W)/σ* with and without restraint",
        description="Stream rank-1 edits into a random 1600×6400 weight, with and without PRUNE after "
                    "every edit, and print σ_max(W)/σ* and the time of one restrained step.")
    p.add_argument("--edits", type=int, default=200, help="number of rank-1 edits (default 200)")
    p.add_argument("--fn", default="log", choices=[*FN_NAMES, "log1_5", "log1_2"], help="restraint function")
    p.add_argument("--rows", type=int, default=1600)
    p.add_argument("--cols", type=int, default=6400)
    p.set_defaults(run=_run_example)


def _run_example(args: argparse.Namespace) -> int:
    from .example import format_example, run_example

    marks = tuple(sorted({1, 10, 50, 100, args.edits} & set(range(1, args.edits + 1))))
    rows, summary = run_example(args.rows, args.cols, args.edits, marks, fn=args.fn)
    print(format_example(rows, summary))
    return 0


COMMANDS: list[Callable[[_Sub], None]] = [add_restrain_parser, add_example_parser]  # type: ignore[valid-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prune_fast", description="PRUNE restraint of knowledge edits")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status (2 for refused input)."""
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except PruneFastError as e:
        print(f"python -m prune_fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m prune_fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
