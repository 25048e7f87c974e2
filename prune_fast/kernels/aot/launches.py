"""What to compile: every kernel variant the library's launchers launch, found by calling them.

For every operation of ``settings.OPERATIONS`` and every configuration
:func:`~prune_fast.kernels.settings.launch_space` lists, the operation's launcher is *called* on
``meta`` tensors (no memory, no GPU) under :func:`~prune_fast.kernels.dispatch.recording_launches`,
for each dtype combination the library passes (weights fp32/fp16/bf16, snapshots and Δ as the
drivers below describe) and three operand layouts (row-major, column-major i.e. transposed views,
and unaligned strided views, which change the JIT's specialisation). Each recorded call then goes
through the JIT's own binder, so the signature, constexprs and specialisation attributes of a
:class:`CompileJob` are exactly those a GPU run would compile. A Triton kernel of the package that
no traced launch reaches is reported as uncovered (``compile_jobs``): every kernel is compiled from
a library path, or it fails the check.

Example::

    jobs, uncovered = compile_jobs(targets=(90,))
    assert not uncovered
"""
from __future__ import annotations

import hashlib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from .. import settings
from ..apply_correction import apply_correction_triton_, write_restrained_triton_
from ..dispatch import RecordedLaunch, _LazyKernel, recording_launches
from ..skinny_matmul import skinny_matmul_triton

__all__ = ["CompileJob", "DRIVERS", "LAYOUTS", "trace_launches", "package_kernels", "jobs_for_launches",
           "compile_jobs", "kernel_name", "jit_function"]

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("row", "col", "strided")
# The package whose modules hold the kernels (this subpackage's parent).
KERNELS_PACKAGE = __name__.rsplit(".", 2)[0]


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


# One driver per operation of settings.OPERATIONS: it calls the operation's launchers the way the
# library does, so the compiled set follows the launchers' own code.
DRIVERS: dict[str, Callable[[dict[str, int], str], None]] = {
    "low_rank_update": _drive_low_rank_update,
    "skinny_matmul": _drive_skinny_matmul,
}


def trace_launches() -> list[tuple[str, str, RecordedLaunch]]:
    """``(operation, layout, launch)`` for every launch of every configuration ``launch_space`` lists."""
    missing = [op for op in settings.OPERATIONS if op not in DRIVERS]
    if missing:
        raise RuntimeError(f"aot has no launcher driver for operations {missing}")
    out = []
    for op in settings.OPERATIONS:
        for sizes, _cfg in settings.launch_space(op):
            for layout in LAYOUTS:
                with recording_launches() as launches:
                    DRIVERS[op](sizes, layout)
                out += [(op, layout, launch) for launch in launches]
    return out


def package_kernels() -> dict[str, _LazyKernel]:
    """Every Triton kernel defined in a module of ``prune_fast.kernels`` (by ``module:name``)."""
    package = importlib.import_module(KERNELS_PACKAGE)
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{KERNELS_PACKAGE}.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, _LazyKernel) and obj.fn.__module__ == module.__name__:
                found[f"{module.__name__}:{name}"] = obj
    return found


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


def kernel_name(kernel: _LazyKernel) -> str:
    """``module:name`` of a kernel (the name jobs, results and reports use)."""
    return f"{kernel.fn.__module__}:{kernel.fn.__name__}"


def jit_function(kernel: _LazyKernel):
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
            name = kernel_name(launch.kernel)
            if name not in jits:
                jits[name] = jit_function(launch.kernel)
            jit = jits[name]
            if name not in binders:
                binders[name] = create_function_from_signature(jit.signature, jit.params, backend)
            bound, specialization, kw = binders[name](*launch.args, **launch.kwargs)
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
