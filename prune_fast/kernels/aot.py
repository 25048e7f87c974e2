"""Ahead-of-time compilation of every kernel for sm_80 and sm_90, on a machine without a GPU.

Under ``TRITON_INTERPRET=1`` the Triton kernels prove their arithmetic, not that they compile, fit
in a block's shared memory and registers, or launch. This module compiles each of them the way the
JIT would on an A100 (sm_80) or H100/H200 (sm_90), with Triton's own bundled ``ptxas``:

1. **What to compile comes from the launchers.** For every operation of ``settings.OPERATIONS`` and
   every configuration :func:`~prune_fast.kernels.settings.launch_space` lists, the operation's
   launcher is *called* on ``meta`` tensors (no memory, no GPU) under
   :func:`~prune_fast.kernels.dispatch.recording_launches`, for each dtype combination the library
   passes (weights fp32/fp16/bf16, snapshots and Δ as below) and three operand layouts (row-major,
   column-major i.e. transposed views, and unaligned strided views, which change the JIT's
   specialisation). Each recorded call goes through the JIT's own binder, so the signature,
   constexprs and specialisation attributes are exactly those a GPU run would compile.
2. **Compile** each distinct (kernel, signature, constexprs, attributes, ``num_warps``,
   ``num_stages``) for each target with ``triton.compile(ASTSource(...), target=GPUTarget(...))``
   in a process pool; results are cached on disk keyed by Triton's own cache key (source,
   dependencies, compiler and ``ptxas`` versions, options, target).
3. **Check** shared memory against ``settings.SHARED_MEMORY_LIMIT`` and registers × threads against
   the register file; report registers, spills and stack from ``ptxas -v``.
4. **CUDA** (``csrc/``): compiled with ``nvcc -cubin -Xptxas -v`` for the same targets when ``nvcc``
   is found (``PATH``, ``$CUDA_HOME/bin``), with the same report and limits.

Command line (exit status 1 on any compile error, limit breach or uncovered kernel)::

    python -m prune_fast.kernels.aot --targets sm_80,sm_90
    python -m prune_fast.kernels.aot --jobs 2 --json aot.json --summary

Example::

    report = run_aot(targets=(80, 90))
    assert report.ok, report.problems()
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .._atomic import write_text
from . import settings
from .apply_correction import apply_correction_triton_, write_restrained_triton_
from .dispatch import RecordedLaunch, _LazyKernel, recording_launches
from .skinny_matmul import skinny_matmul_triton
from .small_eigh import small_eigh_triton

__all__ = ["TARGETS", "CompileJob", "CompileResult", "AotReport", "trace_launches", "jobs_for_launches", "compile_jobs",
           "compile_triton", "compile_cuda", "run_aot", "format_table", "main"]

log = logging.getLogger(__name__)

TARGETS = {"sm_80": 80, "sm_90": 90}
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("row", "col", "strided")
CSRC = Path(__file__).resolve().parent / "csrc"
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ---- what the launchers launch ------------------------------------------------------------------
def _meta(rows: int, cols: int, dtype: torch.dtype, layout: str = "row") -> torch.Tensor:
    """A rows×cols meta tensor: row-major, column-major (a transposed view), or an unaligned strided view."""
    if layout == "row":
        return torch.empty(rows, cols, dtype=dtype, device="meta")
    if layout == "col":
        return torch.empty(cols, rows, dtype=dtype, device="meta").mT
    # A window of a wider buffer starting one element in: misaligned pointer, odd leading stride.
    flat = torch.empty(rows * (cols + 3) + 1, dtype=dtype, device="meta")
    return flat[1:].view(rows, cols + 3)[:, :cols]


def _drive_low_rank_update(sizes: dict[str, int], layout: str) -> None:
    # The callers: restrain_ / tracker.add_ (apply_correction_, W in place) and the tracker's
    # refresh (write_restrained_: W0 is the weight's own snapshot, the dense Δ fp32 or absent).
    m, n, k = sizes["m"], sizes["n"], sizes["k"]
    left, right = _meta(m, k, torch.float32), _meta(n, k, torch.float32)
    for dtype in WEIGHT_DTYPES:
        w = _meta(m, n, dtype, layout)
        apply_correction_triton_(w, left, right)
        for dense in (None, _meta(m, n, torch.float32, layout)):
            write_restrained_triton_(w, _meta(m, n, dtype, layout), left, right, dense)


def _drive_skinny_matmul(sizes: dict[str, int], layout: str) -> None:
    # The callers: (W − W0) X and (W − W0)ᵀ Y (W any weight dtype; W0 its snapshot, or the fp32 Δ
    # in restrain_'s σ* of W − Δ), plain A X (W or an fp32 basis/factor); X is always an fp32 block.
    m, n, b = sizes["m"], sizes["n"], sizes["b"]
    x = _meta(n, b, torch.float32)
    for dtype in WEIGHT_DTYPES:
        a = _meta(m, n, dtype, layout)
        for a0_dtype in dict.fromkeys((None, dtype, torch.float32)):
            skinny_matmul_triton(a, x, None if a0_dtype is None else _meta(m, n, a0_dtype, layout))


def _drive_jacobi_eigh(sizes: dict[str, int], layout: str) -> None:
    # Gram matrices (fp32 from the skinny products; any float dtype through the public small_eigh),
    # batched and contiguous: one layout only.
    if layout != "row":
        return
    k = sizes["m"]
    for dtype in WEIGHT_DTYPES:
        small_eigh_triton(torch.empty(3, k, k, dtype=dtype, device="meta"))


DRIVERS: dict[str, Callable[[dict[str, int], str], None]] = {
    "low_rank_update": _drive_low_rank_update,
    "skinny_matmul": _drive_skinny_matmul,
    "jacobi_eigh": _drive_jacobi_eigh,
}


def trace_launches() -> list[tuple[str, str, RecordedLaunch]]:
    """``(operation, layout, launch)`` for every launch of every configuration ``launch_space`` lists."""
    missing = [op for op in settings.OPERATIONS if op not in DRIVERS]
    if missing:
        raise RuntimeError(f"aot has no launcher driver for operations {missing}")
    out = []
    for op in settings.OPERATIONS:
        for sizes, cfg in settings.launch_space(op):
            for layout in LAYOUTS:
                with recording_launches() as launches:
                    DRIVERS[op](sizes, layout)
                out += [(op, layout, launch) for launch in launches]
    return out


def package_kernels() -> dict[str, _LazyKernel]:
    """Every Triton kernel defined in ``prune_fast.kernels`` (by ``module:name``)."""
    package = importlib.import_module(__package__)
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, _LazyKernel) and obj.fn.__module__ == module.__name__:
                found[f"{module.__name__}:{name}"] = obj
    return found


# ---- compile jobs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompileJob:
    """One kernel variant for one target, in the form ``triton.compile(ASTSource(...))`` takes."""

    kernel: str  # "module:name" of the @triton_kernel
    config: str  # readable: constexprs, operand dtypes, layout, warps/stages
    target: int  # compute capability (80, 90)
    signature: dict[str, str]
    constexprs: dict[tuple[int, ...], Any]
    attrs: dict[tuple[int, ...], list]
    options: dict[str, int]
    key: str  # cache key: Triton's compile key + target


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

    @property
    def ok(self) -> bool:
        return self.error is None and not self.breaches


def _kernel_name(kernel: _LazyKernel) -> str:
    return f"{kernel.fn.__module__}:{kernel.fn.__name__}"


def _jit_function(kernel: _LazyKernel):
    """A real ``JITFunction`` (never the interpreter's stand-in, whatever ``TRITON_INTERPRET`` says)."""
    from triton.runtime.jit import JITFunction  # noqa: PLC0415 - optional heavy dependency

    return JITFunction(kernel.fn, **kernel.jit_options)


def _describe(jit, launch: RecordedLaunch, signature: dict[str, str], layout: str) -> str:
    declared = [p.name for p in jit.params if p.is_constexpr]
    consts = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in launch.kwargs.items()
                      if k in declared and k != "INPUT_PRECISION")
    prec = launch.kwargs.get("INPUT_PRECISION")
    ptrs = " ".join(f"{k.removesuffix('_ptr')}:{t[1:]}" for k, t in signature.items() if t.startswith("*"))
    return (f"{consts} {prec} | {ptrs} | {layout} | w{launch.kwargs.get('num_warps')}"
            f"s{launch.kwargs.get('num_stages')}")


def jobs_for_launches(launches: Iterable[tuple[str, RecordedLaunch]], targets: Iterable[int]) -> list[CompileJob]:
    """Distinct compile jobs for ``(layout label, launch)`` pairs, through the JIT's own binder."""
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415 - optional heavy dependency
    from triton.compiler import ASTSource, make_backend  # noqa: PLC0415
    from triton.runtime.cache import triton_key  # noqa: PLC0415
    from triton.runtime.jit import create_function_from_signature  # noqa: PLC0415

    launches = list(launches)
    jits: dict[str, Any] = {}
    jobs: dict[str, CompileJob] = {}
    for arch in targets:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        backend_hash = backend.hash()
        binders: dict[str, Callable] = {}
        for layout, launch in launches:
            name = _kernel_name(launch.kernel)
            if name not in jits:
                jits[name] = _jit_function(launch.kernel)
            jit = jits[name]
            if name not in binders:
                binders[name] = create_function_from_signature(jit.signature, jit.params, backend)
            binder = binders[name]
            bound, specialization, kw = binder(*launch.args, **launch.kwargs)
            _, signature, constexprs, attrs = jit._pack_args(backend, kw, bound, specialization, kw)
            options = {"num_warps": launch.kwargs.get("num_warps", 4), "num_stages": launch.kwargs.get("num_stages", 3)}
            src = ASTSource(jit, signature, constexprs, attrs)
            key = hashlib.sha256(f"{triton_key()}-{src.hash()}-{backend_hash}-{sorted(options.items())}-{arch}"
                                 .encode()).hexdigest()
            if key not in jobs:
                jobs[key] = CompileJob(name, _describe(jit, launch, signature, layout), arch, dict(signature),
                                       dict(constexprs), {k: list(v) for k, v in attrs.items()}, options, key)
    return list(jobs.values())


def compile_jobs(targets: Iterable[int]) -> tuple[list[CompileJob], list[str]]:
    """Distinct compile jobs for every launch :func:`trace_launches` records, and the package's kernels
    that no launch reached (each must be covered: a kernel without a driver is a failure)."""
    jobs = jobs_for_launches(((layout, launch) for _op, layout, launch in trace_launches()), targets)
    uncovered = sorted(set(package_kernels()) - {job.kernel for job in jobs})
    return jobs, uncovered


# ---- compiling ----------------------------------------------------------------------------------
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


def compile_triton(job: CompileJob) -> CompileResult:
    """Compile one job (in this process) and read its shared memory and ``ptxas -v`` report."""
    import triton  # noqa: PLC0415 - optional heavy dependency
    from triton import knobs  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    module, name = job.kernel.split(":")
    kernel = getattr(importlib.import_module(module), name)
    result = CompileResult(job.kernel, job.config, job.target, threads=32 * job.options["num_warps"])
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
            src = ASTSource(_jit_function(kernel), job.signature, job.constexprs, job.attrs)
            with contextlib.redirect_stdout(buf):
                compiled = triton.compile(src, target=GPUTarget("cuda", job.target, 32), options=job.options)
            result.shared = int(compiled.metadata.shared)
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
    return check_limits(result)


def default_cache_dir() -> Path:
    """``$PRUNE_FAST_AOT_CACHE``, else ``~/.cache/prune_fast/aot``."""
    env = os.environ.get("PRUNE_FAST_AOT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prune_fast" / "aot"


def _cached(cache: Path | None, job: CompileJob) -> CompileResult | None:
    if cache is None or not (cache / f"{job.key}.json").is_file():
        return None
    try:
        data = json.loads((cache / f"{job.key}.json").read_text())
        data.pop("breaches", None)
        data.update(kernel=job.kernel, config=job.config, target=job.target)
        return check_limits(CompileResult(**data))  # limits re-checked: they may have changed
    except (OSError, ValueError, TypeError):
        return None


def _store(cache: Path | None, job: CompileJob, result: CompileResult) -> None:
    if cache is None:
        return
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
                    progress: Callable[[CompileResult], None] | None = None) -> list[CompileResult]:
    """Compile every job (cache first, then a pool of ``workers`` processes), in job order."""
    results: dict[str, CompileResult] = {}
    todo = []
    for job in jobs:
        hit = _cached(cache, job)
        if hit is not None:
            results[job.key] = hit
        else:
            todo.append(job)
    # Longest first (Jacobi, then the widest tiles), so the pool ends together.
    todo.sort(key=lambda j: ("jacobi" not in j.kernel, -j.options["num_warps"]))
    if not todo:
        return [results[job.key] for job in jobs]
    # Always in fresh processes: spawn, not fork (the parent holds torch's thread pools), and without
    # TRITON_INTERPRET (a process that imported Triton under it cannot compile for a GPU).
    ctx = multiprocessing.get_context("spawn")
    with _without_env("TRITON_INTERPRET"), \
            concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=ctx) as pool:
        futures = {pool.submit(compile_triton, job): job for job in todo}
        for fut in concurrent.futures.as_completed(futures):
            job = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - a crashed worker is a failed compile
                res = CompileResult(job.kernel, job.config, job.target, error=f"worker failed: {exc!r}")
            else:
                _store(cache, job, res)
            results[job.key] = res
            if progress:
                progress(res)
    return [results[job.key] for job in jobs]


# ---- CUDA C++ -----------------------------------------------------------------------------------
def find_nvcc() -> str | None:
    """``nvcc`` on PATH, in ``$CUDA_HOME/bin`` / ``$CUDA_PATH/bin``, or from NVIDIA's pip wheels, else None.

    The wheels (``nvidia-cuda-nvcc`` with ``nvidia-nvvm``, ``nvidia-cuda-crt``,
    ``nvidia-cuda-runtime``, ``nvidia-cuda-cccl``) install a working toolchain under
    ``site-packages/nvidia/cu13`` (CUDA 13) or ``nvidia/cuda_nvcc`` (CUDA 12).
    """
    found = shutil.which("nvcc")
    if found:
        return found
    homes = [os.environ.get(var) for var in ("CUDA_HOME", "CUDA_PATH")]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        homes += [str(Path(root, "cu13")), str(Path(root, "cuda_nvcc"))]
    for home in homes:
        if home and Path(home, "bin", "nvcc").is_file():
            return str(Path(home, "bin", "nvcc"))
    return None


def _demangle(symbol: str) -> str:
    """``c++filt``'s reading of a mangled CUDA symbol, when binutils is there."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if tool is None:
        return symbol
    try:
        out = subprocess.run([tool, symbol], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return symbol
    return out.replace("(anonymous namespace)::", "") or symbol


def compile_cuda(targets: Iterable[int], nvcc: str | None = None) -> tuple[list[CompileResult], str | None]:
    """Compile every ``csrc/*.cu`` for each target with ``nvcc -cubin -Xptxas -v``.

    Returns ``(results, None)``, or ``([], reason)`` when no nvcc is found. Threads per block come
    from the ``__launch_bounds__`` of each kernel (the register-file check needs them).
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        return [], ("nvcc not found (PATH, $CUDA_HOME/bin): the CUDA toolkit's compiler is missing; the "
                    "CUDA library is optional and was not compiled")
    results = []
    for source in sorted(CSRC.glob("*.cu")):
        text = source.read_text()
        bounds = re.search(r"#define\s+PRUNE_FAST_\w*THREADS\s+(\d+)", text)
        threads = int(bounds.group(1)) if bounds else None
        for arch in targets:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="prune_fast_nvcc_") as tmp:
                cmd = [nvcc, "-cubin", "-O3", "-std=c++17", f"-arch=sm_{arch}", "-Xptxas", "-v",
                       str(source), "-o", str(Path(tmp, "out.cubin"))]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                results.append(CompileResult(f"csrc/{source.name}", "nvcc -O3", arch, seconds=seconds,
                                             error=f"nvcc exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"))
                continue
            for function, fields in parse_ptxas_log(proc.stderr + proc.stdout).items():
                res = CompileResult(f"csrc/{source.name}", _demangle(function), arch, shared=fields.get("smem", 0),
                                    registers=fields.get("registers"), spill_stores=fields.get("spill_stores"),
                                    spill_loads=fields.get("spill_loads"), stack=fields.get("stack"),
                                    threads=threads, seconds=seconds)
                results.append(check_limits(res))
    return results, None


# ---- report -------------------------------------------------------------------------------------
@dataclass
class AotReport:
    """Everything one AOT run found."""

    triton: list[CompileResult]
    cuda: list[CompileResult]
    cuda_skipped: str | None
    uncovered: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.uncovered and all(r.ok for r in self.triton + self.cuda)

    def problems(self) -> list[str]:
        out = [f"kernel {k} is never launched by any traced launcher (add a driver in aot.DRIVERS)"
               for k in self.uncovered]
        for r in self.triton + self.cuda:
            if r.error:
                out.append(f"{r.kernel} [{r.config}] sm_{r.target}: {r.error}")
            out += [f"{r.kernel} [{r.config}] sm_{r.target}: {b}" for b in r.breaches]
        return out


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


def run_aot(targets: Iterable[int] = (80, 90), *, workers: int | None = None, cache: Path | None = None,
            cuda: str = "auto", progress: Callable[[CompileResult], None] | None = None) -> AotReport:
    """Trace, compile and check every Triton kernel (and ``csrc`` when ``cuda`` is not ``"skip"``).

    ``cuda``: ``"auto"`` compiles csrc when nvcc is found, ``"require"`` reports a missing nvcc as a
    problem, ``"skip"`` never compiles it. ``cache``: a folder for per-variant results (None: none).
    """
    targets = tuple(targets)
    start = time.perf_counter()
    jobs, uncovered = compile_jobs(targets)
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    log.info("aot: %d Triton variants for %s with %d workers", len(jobs), targets, workers)
    triton_results = run_triton_jobs(jobs, workers, cache, progress)
    cuda_results, skipped = ([], "skipped (--cuda skip)") if cuda == "skip" else compile_cuda(targets)
    if skipped and cuda == "require":
        cuda_results = [CompileResult("csrc", "nvcc", t, error=skipped) for t in targets]
    return AotReport(triton_results, cuda_results, skipped, uncovered, time.perf_counter() - start)


def _parse_targets(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part not in TARGETS:
            raise argparse.ArgumentTypeError(f"unknown target {part!r}; choose from {', '.join(TARGETS)}")
        out.append(TARGETS[part])
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_fast.kernels.aot",
                                description="Compile every prune_fast kernel for GPU targets without a GPU "
                                            "and check each against the per-block limits.")
    p.add_argument("--targets", type=_parse_targets, default=(80, 90), help="comma-separated, e.g. sm_80,sm_90")
    p.add_argument("--jobs", type=int, default=None, help="compile processes (default: CPU count)")
    p.add_argument("--cache", default=None, help=f"result cache folder (default: {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="compile everything again")
    p.add_argument("--cuda", choices=("auto", "require", "skip"), default="auto",
                   help="csrc via nvcc: when found (auto), or fail without it (require), or never")
    p.add_argument("--summary", action="store_true", help="print the per-kernel summary, not every variant")
    p.add_argument("--json", default=None, help="write every result to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()
    report = run_aot(args.targets, workers=args.jobs, cache=cache, cuda=args.cuda)
    out = sys.stdout
    results = report.triton + report.cuda
    out.write((format_summary(results) if args.summary else format_table(results)) + "\n")
    if report.cuda_skipped:
        out.write(f"CUDA csrc: {report.cuda_skipped}\n")
    problems = report.problems()
    out.write(f"{len(report.triton)} Triton variants, {len(report.cuda)} CUDA kernels compiled for "
              f"{', '.join(f'sm_{t}' for t in args.targets)} in {report.seconds:.1f} s: "
              f"{len(results) - sum(not r.ok for r in results)} within limits, {sum(not r.ok for r in results)} not\n")
    for line in problems:
        out.write(f"PROBLEM {line}\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"triton": [asdict(r) for r in report.triton],
                                               "cuda": [asdict(r) for r in report.cuda],
                                               "cuda_skipped": report.cuda_skipped, "uncovered": report.uncovered,
                                               "seconds": report.seconds}, indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
