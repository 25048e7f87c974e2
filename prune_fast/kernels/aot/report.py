"""One AOT run end to end (:func:`run_aot`), its tables, and the build folder it writes.

:func:`write_build` lays out what ``cmake --build`` (or ``python -m prune_fast.kernels.aot --out``)
leaves behind::

    <out>/sm_80/<kernel>-<key16>.cubin ...   one cubin per compiled variant and target
    <out>/aot_report.txt                     per-kernel summary, every variant, every problem
    <out>/aot.json                           every result, and which cubin holds which variant

Example::

    report = run_aot(targets=(80, 90))
    write_build(report, Path("build/kernels"))
    assert report.ok, report.problems()
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..._atomic import atomic_write, write_text
from .. import settings
from .compiler import CompileResult, run_triton_jobs
from .launches import compile_jobs

__all__ = ["TARGETS", "AotReport", "run_aot", "format_table", "format_summary", "cubin_name", "write_build"]

log = logging.getLogger(__name__)

# The targets the kernels are compiled for are those whose per-block limits are known.
TARGETS = {f"sm_{cc}": cc for cc in settings.SHARED_MEMORY_LIMIT}


@dataclass
class AotReport:
    """Everything one AOT run found (``cubins``: each compiled variant's binary, by job key)."""

    triton: list[CompileResult]
    uncovered: list[str]
    seconds: float
    cubins: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.uncovered and all(r.ok for r in self.triton)

    def problems(self) -> list[str]:
        out = [f"kernel {k} is never launched by any traced launcher (add a driver in aot.launches.DRIVERS, "
               "or delete the kernel)" for k in self.uncovered]
        for r in self.triton:
            if r.error:
                out.append(f"{r.kernel} [{r.config}] sm_{r.target}: {r.error}")
            out += [f"{r.kernel} [{r.config}] sm_{r.target}: {b}" for b in r.breaches]
        return out

    def headline(self, targets: Iterable[int]) -> str:
        bad = sum(not r.ok for r in self.triton)
        return (f"{len(self.triton)} Triton variants compiled for {', '.join(f'sm_{t}' for t in targets)} in "
                f"{self.seconds:.1f} s: {len(self.triton) - bad} within limits, {bad} not")


def run_aot(targets: Iterable[int] = tuple(TARGETS.values()), *, workers: int | None = None,
            cache: Path | None = None, progress: Callable[[CompileResult], None] | None = None) -> AotReport:
    """Trace, compile and check every Triton kernel the launchers reach, for each target.

    ``cache``: a folder for per-variant results and cubins (None: compile everything here).
    """
    targets = tuple(targets)
    start = time.perf_counter()
    jobs, uncovered = compile_jobs(targets)
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    log.info("aot: %d Triton variants for %s with %d workers", len(jobs), targets, workers)
    results, cubins = run_triton_jobs(jobs, workers, cache, progress)
    return AotReport(results, uncovered, time.perf_counter() - start, cubins)


def _fmt(x: int | None) -> str:
    return "-" if x is None else str(x)


def format_table(results: list[CompileResult]) -> str:
    """Fixed-width table: kernel, config, target, shared bytes, registers, spills, stack, status."""
    head = f"{'kernel':26s} {'config':82s} {'target':6s} {'shared':>7s} {'regs':>4s} {'spill st/ld':>12s} " \
           f"{'stack':>6s} {'s':>5s}  status"
    lines = [head, "-" * len(head)]
    for r in sorted(results, key=lambda r: (r.kernel, r.config, r.target)):
        spills = "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}"
        status = "ok" if r.ok else ("ERROR " + (r.error or "").splitlines()[0][:60] if r.error else
                                    "OVER " + "; ".join(r.breaches))
        lines.append(f"{r.kernel.split(':')[-1]:26s} {r.config[:82]:82s} sm_{r.target:<3d} {_fmt(r.shared):>7s} "
                     f"{_fmt(r.registers):>4s} {spills:>12s} {_fmt(r.stack):>6s} {r.seconds:5.1f}  {status}")
    return "\n".join(lines)


def format_summary(results: list[CompileResult]) -> str:
    """Per kernel and target: variants, max shared / registers / spill stores, limit, failures."""
    groups: dict[tuple[str, int], list[CompileResult]] = {}
    for r in results:
        groups.setdefault((r.kernel.split(":")[-1], r.target), []).append(r)
    head = f"{'kernel':26s} {'target':6s} {'variants':>8s} {'max shared':>10s} {'limit':>7s} {'max regs':>8s} " \
           f"{'max spill st':>12s} {'failed':>6s}"
    lines = [head, "-" * len(head)]
    for (kernel, arch), rs in sorted(groups.items()):
        def top(attr):
            vals = [getattr(r, attr) for r in rs if getattr(r, attr) is not None]
            return _fmt(max(vals) if vals else None)
        lines.append(f"{kernel:26s} sm_{arch:<3d} {len(rs):8d} {top('shared'):>10s} "
                     f"{settings.SHARED_MEMORY_LIMIT.get(arch, 0):7d} {top('registers'):>8s} "
                     f"{top('spill_stores'):>12s} {sum(not r.ok for r in rs):6d}")
    return "\n".join(lines)


def cubin_name(result: CompileResult) -> str:
    """Where a variant's cubin goes inside the build folder: ``sm_<target>/<kernel>-<key16>.cubin``."""
    return f"sm_{result.target}/{result.kernel.split(':')[-1]}-{(result.key or 'nokey')[:16]}.cubin"


def report_json(report: AotReport, targets: Iterable[int], cubins: dict[str, str] | None = None) -> str:
    """Every result (``CompileResult`` fields), the uncovered kernels, and cubin files by job key."""
    return json.dumps({"targets": list(targets), "triton": [asdict(r) for r in report.triton],
                       "uncovered": report.uncovered, "seconds": report.seconds, "cubins": cubins or {}}, indent=1)


def write_build(report: AotReport, out: Path, targets: Iterable[int]) -> Path:
    """Write the cubins, ``aot_report.txt`` and ``aot.json`` into ``out`` (see the module doc); the
    cubins of an earlier run in the same folder are removed first, so the folder holds this run only.
    Returns the report's path."""
    targets = tuple(targets)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("sm_*/*.cubin"):
        stale.unlink()
    files = {}
    for r in report.triton:
        cubin = report.cubins.get(r.key or "")
        if cubin is not None:
            name = cubin_name(r)
            atomic_write(out / name, lambda tmp, blob=cubin: tmp.write_bytes(blob))
            files[r.key] = name
    write_text(out / "aot.json", report_json(report, targets, files))
    text = [report.headline(targets), "", format_summary(report.triton), "", format_table(report.triton), ""]
    text += [f"PROBLEM {line}" for line in report.problems()]
    return write_text(out / "aot_report.txt", "\n".join(text) + "\n")
