"""Microbenchmarks of the kernel ops: one registry, one CLI, a speed-up table against another git ref.

Each benchmark is named after its op (the module in ``prune_fast/kernels/``) and times the op's
front-end on a few shapes, on the backend asked for (``torch`` on CPU; ``triton`` needs CUDA)::

    python bench/run.py list                                  # the registered ops and their shapes
    python bench/run.py run skinny_matmul                     # one op
    python bench/run.py run all --backend torch --repeat 30   # every op
    python bench/run.py run all --compare main                # this tree against git ref main

``--compare REF`` extracts REF's ``prune_fast/`` with ``git archive`` into a temporary folder and runs
the same benchmarks there in a subprocess (the benchmark code is this file in both runs; only the
library under test differs), then prints both and the speed-up ``ref / this``.  Times are
quantiles (median, 20 % and 80 %) of ``--repeat`` timed calls after ``--warmup`` untimed ones, on
fresh random inputs; the header names the machine, torch, threads and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (shapes, builder); builder(shape, backend, generator) returns the call to time
Builder = Callable[..., Callable[[], object]]
REGISTRY: dict[str, tuple[list[tuple[int, ...]], Builder]] = {}


def benchmark(name: str, shapes: list[tuple[int, ...]]) -> Callable[[Builder], Builder]:
    """Register ``builder`` as the benchmark of the kernel op ``name``, run on each of ``shapes``."""
    def register(builder: Builder) -> Builder:
        REGISTRY[name] = (shapes, builder)
        return builder
    return register


def _randn(*shape: int, g, device: str):
    import torch

    return torch.randn(*shape, generator=g).to(device)


# (rows, cols, rank): GPT-2-XL's MLP projection, Llama-7B's down projection, the test bed's
@benchmark("apply_correction", [(1600, 6400, 8), (4096, 11008, 8), (512, 128, 4)])
def _apply_correction(shape, backend, g, device):
    from prune_fast.kernels.apply_correction import apply_correction_

    m, n, k = shape
    w, left, right = _randn(m, n, g=g, device=device), _randn(m, k, g=g, device=device), _randn(n, k, g=g, device=device)
    return lambda: apply_correction_(w, left, right, backend=backend)


# (rows, cols, block): W − W0 times a block of vectors, as the Krylov passes do
@benchmark("skinny_matmul", [(1600, 6400, 16), (4096, 11008, 16), (512, 128, 8)])
def _skinny_matmul(shape, backend, g, device):
    from prune_fast.kernels.skinny_matmul import difference_matmul

    m, n, k = shape
    a, a0, x = _randn(m, n, g=g, device=device), _randn(m, n, g=g, device=device), _randn(n, k, g=g, device=device)
    return lambda: difference_matmul(a, a0, x, backend=backend)


@benchmark("cpu_matmul", [(1600, 6400, 16), (4096, 11008, 16)])
def _cpu_matmul(shape, backend, g, device):
    from prune_fast.kernels.cpu_matmul import skinny_matmul_cpu

    m, n, k = shape
    a, x = _randn(m, n, g=g, device="cpu"), _randn(n, k, g=g, device="cpu")
    return lambda: skinny_matmul_cpu(a, x)


# (rows, cols): a tall block to orthonormalize
@benchmark("orthonormalize", [(6400, 16), (11008, 32), (512, 8)])
def _orthonormalize(shape, backend, g, device):
    from prune_fast.kernels.orthonormalize import orthonormalize

    x = _randn(*shape, g=g, device=device)
    return lambda: orthonormalize(x, backend=backend)


@dataclass
class Timing:
    op: str
    shape: list[int]
    backend: str
    median_ms: float
    p20_ms: float
    p80_ms: float


def run(names: list[str], backend: str, repeat: int, warmup: int, device: str) -> list[Timing]:
    import torch

    out = []
    for name in names:
        shapes, build = REGISTRY[name]
        for shape in shapes:
            call = build(shape, backend, torch.Generator().manual_seed(0), device)
            for _ in range(warmup):
                call()
            times = []
            for _ in range(repeat):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                call()
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(1e3 * (time.perf_counter() - t0))
            q = statistics.quantiles(times, n=5) if len(times) > 1 else times * 4
            out.append(Timing(name, list(shape), backend, statistics.median(times), q[0], q[-1]))
    return out


def _header() -> str:
    import torch

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, commit {commit}")


def _table(rows: list[Timing], ref: list[Timing] | None) -> str:
    ref_by = {(r.op, tuple(r.shape)): r for r in ref or []}
    head = "| op | shape | backend | median ms (p20–p80) |" + (" ref median ms | speed-up |" if ref else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {r.op} | {'×'.join(map(str, r.shape))} | {r.backend} | {r.median_ms:.3f} ({r.p20_ms:.3f}–{r.p80_ms:.3f}) |"
        if ref:
            o = ref_by.get((r.op, tuple(r.shape)))
            line += f" {o.median_ms:.3f} | {o.median_ms / r.median_ms:.2f}× |" if o else " — | — |"
        lines.append(line)
    return "\n".join(lines)


def _run_elsewhere(library: Path, argv: list[str]) -> list[Timing]:
    """This file's ``run`` with ``library``'s prune_fast first on the path, in a subprocess."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = os.environ | {"PYTHONPATH": str(library)}
        subprocess.run([sys.executable, __file__, "run", *argv, "--json", f.name, "--library", str(library)],
                       check=True, env=env)
        return [Timing(**d) for d in json.load(open(f.name))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the registered ops and their shapes")
    r = sub.add_parser("run", help="time one op, several, or all")
    r.add_argument("ops", nargs="+", help=f"op names or 'all' ({', '.join(REGISTRY)})")
    r.add_argument("--backend", default="torch", choices=["torch", "triton"])
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda for triton, else cpu)")
    r.add_argument("--repeat", type=int, default=20)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--compare", metavar="GIT_REF", help="also run against this git ref and print the speed-up")
    r.add_argument("--json", metavar="FILE", help="write the timings as JSON")
    r.add_argument("--library", help=argparse.SUPPRESS)  # set by --compare: the ref's tree
    args = p.parse_args(argv)
    if args.cmd == "list":
        for name, (shapes, _) in REGISTRY.items():
            print(f"{name:18s} {', '.join('×'.join(map(str, s)) for s in shapes)}")
        return 0
    names = list(REGISTRY) if args.ops == ["all"] else args.ops
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        p.error(f"unknown op(s) {unknown}; registered: {', '.join(REGISTRY)}")
    if args.library is None:
        sys.path.insert(0, str(ROOT))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.backend == "triton" else "cpu")
    rows = run(names, args.backend, args.repeat, args.warmup, device)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(t) for t in rows]))
    if args.library is not None:
        return 0
    ref = None
    if args.compare:
        with tempfile.TemporaryDirectory(prefix="prune_fast_ref_") as tmp:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare, "prune_fast"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            passthrough = [*names, "--backend", args.backend, "--device", device, "--repeat", str(args.repeat),
                           "--warmup", str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
            ref = _run_elsewhere(Path(tmp), passthrough)
    print(_header() + (f"; ref {args.compare}" if args.compare else ""))
    print(_table(rows, ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
