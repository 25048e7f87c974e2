"""Check every kernel on the GPU against float64 references, then time restraint at LLM sizes.

One call does both:

1. **Correctness**: every Triton kernel (low-rank update in place and the no-drift write, skinny
   products with an implicit Δ incl. the split reduction, CholeskyQR2, the Jacobi eigensolver — and
   the CUDA library's Jacobi when it is built — and the synchronisation-free σ_max) on fresh random
   inputs in both stride orders and each dtype, outputs poisoned with NaN, compared elementwise with
   float64 references. Any failure makes the exit status 1.
2. **Timing** (``triton.testing.do_bench``: median over repetitions, inputs rotated between calls):
   ``restrain_`` (σ* cached, dense Δ with a few values above σ*) and one ``SpectralTracker.add_``
   step after a rank-1 edit, at GPT-2 XL 1600×6400, Llama-2-7B 4096×11008 and Llama-3-8B
   4096×14336, fp32 and bf16 weights; the same restraint done with ``torch.linalg.svd`` and with
   ``torch.svd_lowrank``. Each row prints the achieved GB/s and the ratio of the time to the memory
   floor: the bytes that must move (one read and one write of W, plus one read of Δ per product the
   Krylov solver needed for ``restrain_``) at the device's peak bandwidth.

``--dry-run`` runs the same code path on tiny shapes on the CPU under Triton's interpreter
(timings there are meaningless; the point is that nothing can crash on first contact with a GPU).
Logs (``gpu_check.log``, ``gpu_check.json``) go to ``$OUT`` when it is set, else ``--out``.

Usage::

    python bench/gpu_check.py                  # on a CUDA machine
    python bench/gpu_check.py --dry-run        # anywhere (sets TRITON_INTERPRET=1 itself)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

if "--dry-run" in sys.argv and os.environ.get("TRITON_INTERPRET") is None:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

import prune_fast  # noqa: E402
from prune_fast.kernels import cuda_library  # noqa: E402
from prune_fast.kernels.apply_correction import apply_correction_, write_restrained_  # noqa: E402
from prune_fast.kernels.orthonormalize import cholesky_qr2  # noqa: E402
from prune_fast.kernels.settings import launch_config  # noqa: E402
from prune_fast.kernels.sigma_power import sigma_max_power  # noqa: E402
from prune_fast.kernels.skinny_matmul import difference_matmul, skinny_matmul  # noqa: E402
from prune_fast.kernels.small_eigh import small_eigh_triton  # noqa: E402
from prune_fast.krylov import topk_svd  # noqa: E402
from prune_fast.operators import ImplicitDifferenceOperator  # noqa: E402
from prune_fast.restrain import sigma_max  # noqa: E402
from prune_fast.restraint_fn import resolve_fn  # noqa: E402

GPU_SHAPES = {"gpt2xl": (1600, 6400), "llama2-7b": (4096, 11008), "llama3-8b": (4096, 14336)}
DRY_SHAPES = {"tiny": (48, 96)}
ROUNDING = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
ACCUMULATION = 64 * torch.finfo(torch.float32).eps
# Peak DRAM bandwidth by device name fragment (GB/s), for the floor; unknown devices use --peak-gbs.
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}


@dataclass
class Check:
    kernel: str
    case: str
    worst: float  # max |error| / bound (≤ 1 passes; NaN fails)
    ok: bool


@dataclass
class Timing:
    what: str
    shape: str
    dtype: str
    method: str
    median_ms: float
    bytes_floor: int
    gbs: float
    floor_ratio: float
    extra: dict = field(default_factory=dict)


# ---- correctness ----------------------------------------------------------------------------------
@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """Every floating torch.empty / empty_like inside the block comes back NaN-filled."""
    real_empty, real_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = lambda *a, **k: poison(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(real_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_like


def _ratio(got: torch.Tensor, want: torch.Tensor, bound) -> float:
    err = (got.double().cpu() - want.double().cpu()).abs()
    bound = torch.as_tensor(bound, dtype=torch.float64).cpu().expand_as(err).clamp_min(1e-300)
    r = err / bound
    return float("nan") if bool(torch.isnan(r).any()) else float(r.max()) if r.numel() else 0.0


def _layout(t: torch.Tensor, order: str) -> torch.Tensor:
    return t.contiguous() if order == "row" else t.T.contiguous().T


def check_kernels(device: torch.device, shapes: list[tuple[int, int]], g: torch.Generator) -> list[Check]:
    out: list[Check] = []

    def rnd(*s, dtype=torch.float32, order="row"):
        return _layout(torch.randn(*s, generator=g, dtype=torch.float64), order).to(dtype).to(device)

    def record(kernel, case, worst):
        out.append(Check(kernel, case, worst, worst <= 1.0))

    with poisoned_allocations():
        for (m, n) in shapes:
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for order in ("row", "col"):
                    case = f"{m}x{n} {str(dtype)[6:]} {order}"
                    k = 5
                    w, left, right = rnd(m, n, dtype=dtype, order=order), rnd(m, k), rnd(n, k)
                    want = w.double() + left.double() @ right.double().T
                    terms = w.double().abs() + left.double().abs() @ right.double().abs().T
                    apply_correction_(w, left, right, backend="triton")
                    record("apply_correction_", case, _ratio(w, want, ROUNDING[dtype] * want.abs() + ACCUMULATION * terms))
                    w0, d = rnd(m, n, dtype=dtype), rnd(m, n, order=order)
                    w = torch.full_like(w, float("nan"))
                    want = w0.double() + d.double() + left.double() @ right.double().T
                    terms = w0.double().abs() + d.double().abs() + left.double().abs() @ right.double().abs().T
                    write_restrained_(w, w0, left, right, d, backend="triton")
                    record("write_restrained_", case, _ratio(w, want, ROUNDING[dtype] * want.abs() + ACCUMULATION * terms))
                    w0 = rnd(m, n, order="col" if order == "row" else "row")
                    omega, q = rnd(n, 8, dtype=dtype), rnd(m, 8)
                    diff = w.double() - w0.double()
                    got = difference_matmul(w, w0, omega, backend="triton")
                    record("difference_matmul", case, _ratio(got, diff @ omega.double(), ACCUMULATION * (diff.abs() @ omega.double().abs())))
                    got = difference_matmul(w.mT, w0.mT, q, backend="triton")
                    record("difference_matmul(T)", case, _ratio(got, diff.T @ q.double(), ACCUMULATION * (diff.abs().T @ q.double().abs())))
            x = rnd(m, 3, order="col")
            got = skinny_matmul(x.mT, x, backend="triton")
            record("skinny_matmul(gram)", f"{m}x3", _ratio(got, x.double().T @ x.double(), ACCUMULATION * (x.double().abs().T @ x.double().abs())))
            basis, _ = torch.linalg.qr(rnd(m, min(4, m)))
            x = rnd(m, min(6, m))
            q, r, c = cholesky_qr2(x, basis if m > 10 else None, backend="triton")
            recon = q.double() @ r.double() + (0 if c is None else basis.double() @ c.double())
            eps = torch.finfo(torch.float32).eps
            scale = float(torch.linalg.matrix_norm(x.double(), 2))
            record("cholesky_qr2 (X = QR)", f"{m}x{x.shape[1]}", _ratio(recon, x, 64 * eps * scale))
            eye = torch.eye(q.shape[1], dtype=torch.float64)
            record("cholesky_qr2 (QᵀQ = I)", f"{m}x{x.shape[1]}", _ratio(q.double().T @ q.double(), eye, 64 * eps * max(m, 16) ** 0.5))
        for k in (1, 5, 17, 33, 64):
            a = rnd(3, k, k)
            a = a + a.mT
            norm = float(torch.linalg.matrix_norm(a.double(), 2).max())
            want = torch.linalg.eigvalsh(a.double().cpu()).flip(-1)
            # Rounding grows with the padded size: ~BLOCK rounds per sweep, each two BLOCK-wide dots.
            tol = 32 * eps * launch_config("jacobi_eigh", m=k, n=k).block_m * norm
            w, v = small_eigh_triton(a)
            record("jacobi_eigh (Triton)", f"k={k}", _ratio(w, want, tol))
            record("jacobi_eigh (Triton) recon", f"k={k}",
                   _ratio(v.double() @ torch.diag_embed(w.double()) @ v.double().mT, a, tol))
            if cuda_library.available():
                w, v = cuda_library.jacobi_eigh(a)
                w = torch.sort(w, dim=-1, descending=True).values
                record("jacobi_eigh (CUDA lib)", f"k={k}", _ratio(w, want, tol))
        m, n = 130, 70
        w0 = rnd(m, n)
        u, _ = torch.linalg.qr(rnd(m, min(m, n)))
        v, _ = torch.linalg.qr(rnd(n, min(m, n)))
        s = torch.logspace(1, -2, min(m, n), device=device)
        w = (w0 + (u * s) @ v.T).to(torch.bfloat16)
        res = sigma_max_power(ImplicitDifferenceOperator(w, w0, backend="triton"), block=4, iters=15, backend="triton")
        want = float(torch.linalg.svdvals((w.double() - w0.double()).cpu())[0])
        record("sigma_max_power", f"{m}x{n} bf16", abs(float(res.sigma) - want) / (1e-4 * want))
    return out


# ---- timing ---------------------------------------------------------------------------------------
def _timed(fn: Callable[[], object], on_gpu: bool) -> float:
    if on_gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if on_gpu:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def bench(fn: Callable[[], object], on_gpu: bool, reps: int) -> float:
    """Median milliseconds of fn().

    On the GPU: ``triton.testing.do_bench`` (median), unless one call takes over a second (a full
    SVD at 4096×14336), where do_bench's fixed estimation loop would cost minutes: then the median
    of ``reps`` synchronised calls. On the CPU (dry run): the median of ``reps`` calls.
    """
    first = _timed(fn, on_gpu)
    if on_gpu and first < 1000.0:
        import triton.testing  # noqa: PLC0415

        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    return statistics.median([first] + [_timed(fn, on_gpu) for _ in range(reps - 1)])


class Rotation:
    """Cycle through prepared input sets so consecutive calls do not reuse one set's caches."""

    def __init__(self, sets: list):
        self.sets, self.i = sets, 0

    def next(self):
        item = self.sets[self.i % len(self.sets)]
        self.i += 1
        return item


def make_restraint_case(m: int, n: int, dtype: torch.dtype, device, g: torch.Generator, n_above: int = 3):
    """(weight, delta, σ*) with W0 Gaussian/√n and a rank-16 Δ whose top n_above values exceed σ*."""
    w0 = torch.randn(m, n, generator=g).to(device) / math.sqrt(n)
    sigma_star, _ = sigma_max(w0)
    rank = min(16, m, n)
    a = torch.linalg.qr(torch.randn(m, rank, generator=g).to(device))[0]
    b = torch.linalg.qr(torch.randn(n, rank, generator=g).to(device))[0]
    s = torch.cat([torch.linspace(4.0, 1.5, n_above), torch.linspace(0.6, 0.1, rank - n_above)]).to(device) * sigma_star
    delta = (a * s) @ b.T
    weight = (w0 + delta).to(dtype)
    return weight, delta, sigma_star


def timing_rows(device: torch.device, shapes: dict, on_gpu: bool, peak_gbs: float, g: torch.Generator,
                rotate: int, reps: int) -> list[Timing]:
    rows: list[Timing] = []
    backend = "triton"
    f = resolve_fn("log")

    def row(what, name, dtype, method, ms, floor_bytes, **extra):
        gbs = floor_bytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")
        floor_ms = floor_bytes / (peak_gbs * 1e9) * 1e3
        rows.append(Timing(what, name, str(dtype)[6:], method, ms, floor_bytes, gbs, ms / floor_ms, extra))

    for name, (m, n) in shapes.items():
        for dtype in (torch.float32, torch.bfloat16):
            cases = [make_restraint_case(m, n, dtype, device, g) for _ in range(rotate)]
            esize = torch.tensor([], dtype=dtype).element_size()
            w_bytes, d_bytes = m * n * esize, m * n * 4
            sigma_star = cases[0][2]
            trip = topk_svd(cases[0][1], threshold=sigma_star, backend=backend)
            floor = 2 * w_bytes + trip.products * d_bytes
            rot = Rotation(cases)

            def run_restrain():
                w, d, s_star = rot.next()
                prune_fast.restrain_(w, d, sigma_star=s_star, backend=backend)

            row("restrain_", f"{name} {m}x{n}", dtype, "prune_fast", bench(run_restrain, on_gpu, reps), floor,
                products=trip.products, k=int(trip.s.numel()))

            def correction_from(u, s, vh, w, s_star):
                keep = s >= s_star
                c = (s - f(s.double(), s_star).to(s.dtype)) * keep
                apply_correction_(w, -(u * c), vh.mT, backend="torch")

            def run_svd():
                w, d, s_star = rot.next()
                u, s, vh = torch.linalg.svd(d, full_matrices=False)
                correction_from(u, s, vh, w, s_star)

            row("restrain_", f"{name} {m}x{n}", dtype, "torch.linalg.svd", bench(run_svd, on_gpu, max(1, reps // 3)),
                2 * w_bytes + d_bytes)

            def run_lowrank():
                w, d, s_star = rot.next()
                u, s, v = torch.svd_lowrank(d, q=min(16, m, n), niter=2)
                correction_from(u, s, v.mT, w, s_star)

            row("restrain_", f"{name} {m}x{n}", dtype, "torch.svd_lowrank(q=16,niter=2)", bench(run_lowrank, on_gpu, reps),
                2 * w_bytes + 6 * d_bytes)

            w = cases[0][0].clone()
            tracker = prune_fast.SpectralTracker(w, sigma_star=sigma_star, backend=backend)
            for _ in range(4):
                tracker.add_(torch.randn(m, generator=g).to(device), torch.randn(n, generator=g).to(device))
            edits = Rotation([(2 * sigma_star * torch.randn(m, generator=g).to(device) / math.sqrt(m),
                               torch.randn(n, generator=g).to(device) / math.sqrt(n)) for _ in range(rotate)])
            rank_before = tracker.rank

            def run_step():
                tracker.add_(*edits.next())

            ms = bench(run_step, on_gpu, reps)
            row("tracker.add_ (rank-1 edit)", f"{name} {m}x{n}", dtype, "prune_fast", ms, 2 * w_bytes,
                rank_before=rank_before, rank_after=tracker.rank)
            del cases, tracker, w
            if on_gpu:
                torch.cuda.empty_cache()
    return rows


# ---- report ---------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "commit": commit, "python": platform.python_version(),
            "cuda_library": cuda_library.available(), "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU under Triton's interpreter")
    p.add_argument("--out", default=None, help="log folder (default: $OUT, else no files)")
    p.add_argument("--peak-gbs", type=float, default=None, help="device DRAM bandwidth for the floor (GB/s)")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    on_gpu = torch.cuda.is_available() and not args.dry_run
    if not on_gpu and not args.dry_run:
        print("no CUDA device: run with --dry-run to exercise the code path on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if on_gpu else "cpu")
    env = environment(device)
    peak = args.peak_gbs or next((v for k, v in PEAK_GBS.items() if k in env["device"]), 1000.0)
    g = torch.Generator().manual_seed(args.seed)
    lines = [f"# gpu_check  device={env['device']}  torch={env['torch']}  commit={env['commit']}  "
             f"peak={peak:.0f} GB/s  cuda_library={env['cuda_library']}  dry_run={args.dry_run}"]

    check_shapes = [(1, 1), (17, 33), (130, 70)] + ([(1600, 6400)] if on_gpu else [])
    checks = check_kernels(device, check_shapes, g)
    lines.append(f"{'kernel':34s} {'case':24s} {'err/bound':>10s}  ok")
    lines += [f"{c.kernel:34s} {c.case:24s} {c.worst:10.3g}  {'PASS' if c.ok else 'FAIL'}" for c in checks]
    failed = [c for c in checks if not c.ok]
    lines.append(f"checks: {len(checks) - len(failed)} passed, {len(failed)} failed")

    timings: list[Timing] = []
    if not args.skip_timing:
        shapes = GPU_SHAPES if on_gpu else DRY_SHAPES
        timings = timing_rows(device, shapes, on_gpu, peak, g, rotate=3 if on_gpu else 2, reps=5 if on_gpu else 1)
        lines.append(f"{'step':28s} {'shape':22s} {'dtype':9s} {'method':32s} {'median ms':>10s} {'GB/s':>8s} {'x floor':>8s}")
        lines += [f"{t.what:28s} {t.shape:22s} {t.dtype:9s} {t.method:32s} {t.median_ms:10.3f} {t.gbs:8.1f} "
                  f"{t.floor_ratio:8.2f}  {json.dumps(t.extra) if t.extra else ''}" for t in timings]
    text = "\n".join(lines)
    print(text)
    out = args.out or os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_check.log").write_text(text + "\n")
        Path(out, "gpu_check.json").write_text(json.dumps(
            {"env": env, "peak_gbs": peak, "checks": [asdict(c) for c in checks],
             "timings": [asdict(t) for t in timings]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
