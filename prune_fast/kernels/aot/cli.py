"""``python -m prune_fast.kernels.aot``: compile every kernel for GPU targets without a GPU.

Exit status 1 on any compile error, limit breach or kernel no launcher reaches; 0 otherwise.
``--out`` writes the cubins and the report into a build folder (what ``CMakeLists.txt`` runs)::

    python -m prune_fast.kernels.aot --targets sm_80,sm_90 --summary
    python -m prune_fast.kernels.aot --targets 90 --out build/kernels --jobs 2
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..._atomic import write_text
from .compiler import default_cache_dir
from .report import TARGETS, format_summary, format_table, report_json, run_aot, write_build

__all__ = ["main", "parse_targets"]


def parse_targets(text: str) -> tuple[int, ...]:
    """``"sm_80,sm_90"``, ``"80,90"`` or ``"80;90"`` (a CMake list) → ``(80, 90)``; unknown targets refused."""
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        name = part if part.startswith("sm_") else f"sm_{part}"
        if name not in TARGETS:
            raise argparse.ArgumentTypeError(f"unknown target {part!r}; choose from {', '.join(TARGETS)} "
                                             "(the targets whose per-block limits settings.py knows)")
        out.append(TARGETS[name])
    return tuple(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_fast.kernels.aot",
                                description="Compile every prune_fast kernel for GPU targets without a GPU "
                                            "and check each against the per-block limits.")
    p.add_argument("--targets", type=parse_targets, default=tuple(TARGETS.values()),
                   help=f"comma-separated, e.g. {','.join(TARGETS)} (or 80,90)")
    p.add_argument("--jobs", type=int, default=None, help="compile processes (default: CPU count)")
    p.add_argument("--cache", default=None, help=f"result cache folder (default: {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="compile everything again")
    p.add_argument("--summary", action="store_true", help="print the per-kernel summary, not every variant")
    p.add_argument("--json", default=None, help="write every result to this JSON file")
    p.add_argument("--out", default=None, help="build folder: cubins (sm_XX/*.cubin), aot_report.txt, aot.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()
    report = run_aot(args.targets, workers=args.jobs, cache=cache)
    out = sys.stdout
    out.write((format_summary(report.triton) if args.summary else format_table(report.triton)) + "\n")
    out.write(report.headline(args.targets) + "\n")
    for line in report.problems():
        out.write(f"PROBLEM {line}\n")
    if args.out:
        out.write(f"report: {write_build(report, Path(args.out), args.targets)}\n")
    if args.json:
        write_text(args.json, report_json(report, args.targets))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
