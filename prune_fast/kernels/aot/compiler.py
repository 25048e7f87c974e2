"""Compiling the jobs and checking each binary against the target's per-block limits.

Each :class:`~prune_fast.kernels.aot.launches.CompileJob` is compiled for its target with
``triton.compile(ASTSource(...), target=GPUTarget(...))`` and Triton's bundled ``ptxas``, in a pool
of fresh processes; shared memory comes from the compiled kernel's metadata, registers, spills and
stack from the ``ptxas -v`` report. Results (and the cubins) are cached on disk under the job's key
(Triton's own compile key: source, dependencies, compiler and ``ptxas`` versions, options, target),
so a second run only re-checks the limits.

Example::

    results, cubins = run_triton_jobs(jobs, workers=2, cache=default_cache_dir())
    assert all(r.ok for r in results)
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..._atomic import atomic_write, write_text
from .. import settings
from .launches import CompileJob, jit_function

__all__ = ["CompileResult", "parse_ptxas_log", "check_limits", "compile_triton", "default_cache_dir",
           "run_triton_jobs"]


@dataclass
class CompileResult:
    """What compiling one variant gave, and whether it fits the target's per-block limits."""

    kernel: str
    config: str
    target: int
    shared: int | None = None  # bytes of shared memory per block
    registers: int | None = None  # per thread
    spill_stores: int | None = None  # bytes per thread
    spill_loads: int | None = None
    stack: int | None = None  # bytes of stack frame per thread
    threads: int | None = None
    seconds: float = 0.0
    error: str | None = None
    breaches: list[str] = field(default_factory=list)
    key: str | None = None  # the job's key (names its cubin)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.breaches


_PTXAS_FUNCTION = re.compile(r"Compiling entry function '([^']+)'")
_PTXAS_FIELDS = {
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "registers": re.compile(r"Used (\d+) registers"),
    "smem": re.compile(r"(\d+) bytes smem"),
}


def parse_ptxas_log(text: str) -> dict[str, dict[str, int]]:
    """``{function: {registers, stack, spill_stores, spill_loads, smem}}`` from a ``ptxas -v`` log."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = _PTXAS_FUNCTION.search(line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        for name, rx in _PTXAS_FIELDS.items():
            hit = rx.search(line)
            if hit:
                current[name] = int(hit.group(1))
    return out


def check_limits(result: CompileResult) -> CompileResult:
    """Fill ``result.breaches`` from the target's per-block limits."""
    limit = settings.SHARED_MEMORY_LIMIT.get(result.target)
    if limit is None:
        result.breaches.append(f"no shared-memory limit known for sm_{result.target}")
    elif result.shared is not None and result.shared > limit:
        result.breaches.append(f"shared memory {result.shared} B > {limit} B (sm_{result.target})")
    if result.registers is not None and result.threads is not None \
            and result.registers * result.threads > settings.REGISTERS_PER_BLOCK:
        result.breaches.append(f"{result.registers} registers × {result.threads} threads > "
                               f"{settings.REGISTERS_PER_BLOCK} (register file)")
    return result


def compile_triton(job: CompileJob) -> tuple[CompileResult, bytes | None]:
    """Compile one job (in this process): its result, with shared memory and the ``ptxas -v`` report,
    and its cubin (None when compiling failed)."""
    import triton  # noqa: PLC0415 - optional heavy dependency
    from triton import knobs  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    module, name = job.kernel.split(":")
    kernel = getattr(importlib.import_module(module), name)
    result = CompileResult(job.kernel, job.config, job.target, threads=32 * job.options["num_warps"], key=job.key)
    cubin = None
    start = time.perf_counter()
    buf = io.StringIO()
    if knobs.runtime.interpret:
        # triton.language's own @jit helpers (tl.sum, ...) were built for the interpreter when
        # Triton was imported with TRITON_INTERPRET=1; run_triton_jobs uses a clean process.
        raise RuntimeError("compile_triton needs a process that imported Triton without TRITON_INTERPRET=1")
    old = knobs.cache.dir, knobs.nvidia.dump_ptxas_log
    # A fresh Triton cache, so ptxas really runs and its -v report (printed by Triton) is seen.
    with tempfile.TemporaryDirectory(prefix="prune_fast_aot_") as cache_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        knobs.cache.dir, knobs.nvidia.dump_ptxas_log = cache_dir, True
        try:
            src = ASTSource(jit_function(kernel), job.signature, job.constexprs, job.attrs)
            with contextlib.redirect_stdout(buf):
                compiled = triton.compile(src, target=GPUTarget("cuda", job.target, 32), options=job.options)
            result.shared = int(compiled.metadata.shared)
            cubin = bytes(compiled.asm["cubin"])
        except Exception as exc:  # noqa: BLE001 - any compiler failure is the finding to report
            result.error = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
        finally:
            knobs.cache.dir, knobs.nvidia.dump_ptxas_log = old
    report = parse_ptxas_log(buf.getvalue())
    if report:
        fields = next(iter(report.values()))
        for attr in ("registers", "stack", "spill_stores", "spill_loads"):
            setattr(result, attr, fields.get(attr))
    elif result.error is None:
        result.error = "ptxas printed no resource report"
    result.seconds = time.perf_counter() - start
    return check_limits(result), cubin


def default_cache_dir() -> Path:
    """``$PRUNE_FAST_AOT_CACHE``, else ``~/.cache/prune_fast/aot``."""
    env = os.environ.get("PRUNE_FAST_AOT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prune_fast" / "aot"


def _cached(cache: Path | None, job: CompileJob) -> tuple[CompileResult, bytes | None] | None:
    """A stored result (and cubin) for ``job``; a successful one counts only with its cubin."""
    if cache is None or not (cache / f"{job.key}.json").is_file():
        return None
    try:
        data = json.loads((cache / f"{job.key}.json").read_text())
        data.pop("breaches", None)
        data.update(kernel=job.kernel, config=job.config, target=job.target, key=job.key)
        result = check_limits(CompileResult(**data))  # limits re-checked: they may have changed
        binary = cache / f"{job.key}.cubin"
        cubin = binary.read_bytes() if binary.is_file() else None
    except (OSError, ValueError, TypeError):
        return None
    if result.error is None and cubin is None:  # stored before cubins were kept: compile again
        return None
    return result, cubin


def _store(cache: Path | None, job: CompileJob, result: CompileResult, cubin: bytes | None) -> None:
    if cache is None:
        return
    if cubin is not None:  # the cubin first: a result on disk always has its binary beside it
        atomic_write(cache / f"{job.key}.cubin", lambda tmp: tmp.write_bytes(cubin))
    write_text(cache / f"{job.key}.json", json.dumps(asdict(result)))


@contextlib.contextmanager
def _without_env(name: str):
    """Unset an environment variable for the block (child processes started inside inherit that)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def run_triton_jobs(jobs: list[CompileJob], workers: int, cache: Path | None,
                    progress: Callable[[CompileResult], None] | None = None
                    ) -> tuple[list[CompileResult], dict[str, bytes]]:
    """Compile every job (cache first, then a pool of ``workers`` processes): the results in job
    order, and the cubin of each job that compiled, by job key."""
    results: dict[str, CompileResult] = {}
    cubins: dict[str, bytes] = {}
    todo = []
    for job in jobs:
        hit = _cached(cache, job)
        if hit is None:
            todo.append(job)
            continue
        results[job.key] = hit[0]
        if hit[1] is not None:
            cubins[job.key] = hit[1]
    # Widest tiles (most warps) first, so the pool ends together.
    todo.sort(key=lambda j: -j.options["num_warps"])
    if todo:
        # Always in fresh processes: spawn, not fork (the parent holds torch's thread pools), and
        # without TRITON_INTERPRET (a process that imported Triton under it cannot compile for a GPU).
        ctx = multiprocessing.get_context("spawn")
        with _without_env("TRITON_INTERPRET"), \
                concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=ctx) as pool:
            futures = {pool.submit(compile_triton, job): job for job in todo}
            for fut in concurrent.futures.as_completed(futures):
                job = futures[fut]
                try:
                    res, cubin = fut.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker is a failed compile
                    res, cubin = CompileResult(job.kernel, job.config, job.target, key=job.key,
                                               error=f"worker failed: {exc!r}"), None
                else:
                    _store(cache, job, res, cubin)
                results[job.key] = res
                if cubin is not None:
                    cubins[job.key] = cubin
                if progress:
                    progress(res)
    return [results[job.key] for job in jobs], cubins
