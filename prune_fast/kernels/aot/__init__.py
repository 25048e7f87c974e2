"""Ahead-of-time compilation of every kernel for sm_80 and sm_90, on a machine without a GPU.

Under ``TRITON_INTERPRET=1`` the Triton kernels prove their arithmetic, not that they compile, fit
in a block's shared memory and registers, or launch. This package compiles each of them the way
the JIT would on an A100 (sm_80) or H100/H200 (sm_90), with Triton's own bundled ``ptxas``:

1. ``launches``: **what to compile comes from the launchers**, called on ``meta`` tensors for
   every configuration ``settings.launch_space`` lists, every dtype combination the library passes
   and three operand layouts; a package kernel no launcher reaches fails the check.
2. ``compiler``: **compile** each distinct variant per target in a process pool (cached on disk by
   Triton's own compile key) and **check** shared memory against ``settings.SHARED_MEMORY_LIMIT``
   and registers × threads against the register file; ``ptxas -v`` gives registers, spills, stack.
3. ``report``: the run end to end, its tables, and the build folder (cubins + report).
4. ``cli``: ``python -m prune_fast.kernels.aot``, which the top-level ``CMakeLists.txt`` runs as
   its build (``cmake -S . -B build && cmake --build build`` → ``build/kernels/``).

Example::

    report = run_aot(targets=(80, 90))
    assert report.ok, report.problems()
"""
from __future__ import annotations

from .cli import main, parse_targets
from .compiler import CompileResult, check_limits, compile_triton, default_cache_dir, parse_ptxas_log, run_triton_jobs
from .launches import (DRIVERS, CompileJob, compile_jobs, jobs_for_launches, kernel_name, package_kernels,
                       trace_launches)
from .report import TARGETS, AotReport, cubin_name, format_summary, format_table, run_aot, write_build

__all__ = ["TARGETS", "DRIVERS", "CompileJob", "CompileResult", "AotReport", "trace_launches", "package_kernels",
           "jobs_for_launches", "compile_jobs", "kernel_name", "compile_triton", "check_limits", "parse_ptxas_log",
           "default_cache_dir", "run_triton_jobs", "run_aot", "format_table", "format_summary", "cubin_name",
           "write_build", "main", "parse_targets"]
