"""Check every kernel on the GPU against float64 references, then time restraint at LLM sizes.

One call does everything, in this order, writing its results after each part (so a run cut short
by the device's time limit still returns what it measured):

0. **Set-up**: measures the device's copy bandwidth (a 1 GiB device-to-device copy, bytes read +
   written, ``do_bench`` median) — the ceiling every floor below uses.

1. **Correctness**: every Triton kernel (low-rank update in place and the no-drift write, skinny
   products with an implicit Δ incl. the split reduction, CholeskyQR2 on them) on fresh random
   inputs in both stride orders and each dtype, outputs poisoned with NaN, compared elementwise with
   float64 references. Any failure makes the exit status 1.
2. **Timing** (``triton.testing.do_bench``: median over repetitions, inputs rotated between calls):
   ``restrain_`` (σ* cached, dense Δ with a few values above σ*) and one ``SpectralTracker.add_``
   step after a rank-1 edit, at GPT-2 XL 1600×6400, Llama-2-7B 4096×11008 and Llama-3-8B
   4096×14336, fp32 and bf16 weights; the same restraint done with ``torch.linalg.svd`` and with
   ``torch.svd_lowrank``. Each row prints the achieved GB/s and the ratio of the time to the memory
   floor: the bytes that must move (one read and one write of W, plus one read of Δ per product the
   Krylov solver needed for ``restrain_``) at the measured copy bandwidth.
3. **Targets** from the issue, judged in ``gpu_check.md``: dense ``restrain_`` at 4096×11008 fp32
   within 3× of its memory floor; tracker step ≤ 0.5 ms; ≥ 1000× faster than ``torch.linalg.svd``.
4. **CUDA graph** (last, as a failed capture can upset the context): whether
   ``SpectralTracker.add_`` can be captured in a ``torch.cuda.CUDAGraph``, recorded as found.

``--dry-run`` runs the same code path on tiny shapes on the CPU under Triton's interpreter
(timings there are meaningless; the point is that nothing can crash on first contact with a GPU).
Outputs (``gpu_check.log``, ``gpu_check.json``, ``gpu_check.md``) go to ``--out``, else ``$OUT``.
The whole GPU run is sized for a 15-minute device lease: ~1 minute of Triton JIT compiles, the
timings stop starting new shapes after ``--budget-s`` seconds (default 420).

Usage::

    python bench/gpu_check.py                  # on a CUDA machine
    python bench/gpu_check.py --dry-run        # anywhere (sets TRITON_INTERPRET=1 itself)

On a lent device machine (one call; the image's python3 has torch and Triton; the
outputs come back from $OUT, the table is the end of the printed output)::

    set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT 2>&1 | tee $OUT/stdout.txt

If that run is cut short, rerun only what is missing, e.g. ``--skip-timing`` or
``--shapes llama3-8b --budget-s 200``.
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
from prune_fast.kernels.apply_correction import apply_correction_, write_restrained_  # noqa: E402
from prune_fast.kernels.orthonormalize import cholesky_qr2  # noqa: E402
from prune_fast.kernels.skinny_matmul import difference_matmul, skinny_matmul  # noqa: E402
from prune_fast.spectral.krylov import topk_svd  # noqa: E402
from prune_fast.restrain import sigma_max  # noqa: E402
from prune_fast.spectral.restraint_fn import resolve_fn  # noqa: E402

GPU_SHAPES = {"gpt2xl": (1600, 6400), "llama2-7b": (4096, 11008), "llama3-8b": (4096, 14336)}
DRY_SHAPES = {"tiny": (48, 96)}
ROUNDING = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
ACCUMULATION = 64 * torch.finfo(torch.float32).eps
# Datasheet DRAM bandwidth by device name fragment (GB/s), reported beside the measured copy
# bandwidth, which is what the floors use (--peak-gbs overrides both).
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}
TARGETS = {"restrain_floor_ratio": 3.0, "tracker_step_ms": 0.5, "svd_speedup": 1000.0}


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
                rotate: int, reps: int, deadline: float = math.inf, skipped: list[str] | None = None,
                on_row: Callable[[], None] | None = None, rows: list[Timing] | None = None) -> list[Timing]:
    """Timings per shape (in order) and dtype, appended to ``rows`` (``on_row`` called after each);
    shapes not started before ``deadline`` are listed in ``skipped``."""
    rows = [] if rows is None else rows
    backend = "triton"
    f = resolve_fn("log")
    if on_gpu:  # cuSOLVER's handle and workspace set-up stay out of the first SVD timing
        torch.linalg.svd(torch.randn(64, 256, device=device), full_matrices=False)

    def row(what, name, dtype, method, ms, floor_bytes, **extra):
        gbs = floor_bytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")
        floor_ms = floor_bytes / (peak_gbs * 1e9) * 1e3
        rows.append(Timing(what, name, str(dtype)[6:], method, ms, floor_bytes, gbs, ms / floor_ms, extra))
        if on_row:
            on_row()

    for name, (m, n) in shapes.items():
        if time.perf_counter() > deadline:
            if skipped is not None:
                skipped.append(f"{name} {m}x{n}: time budget spent")
            continue
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


# ---- set-up: copy bandwidth -------------------------------------------------------------------
def copy_bandwidth(device: torch.device, on_gpu: bool) -> dict:
    """Device-to-device copy rate, counting bytes read plus bytes written (random data, never zeros)."""
    n = (1 << 30) // 4 if on_gpu else (1 << 24) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), on_gpu, reps=5)
    del src, dst
    return {"bytes": 2 * n * 4, "median_ms": ms, "gbs": 2 * n * 4 / (ms * 1e-3) / 1e9}


# ---- CUDA graph ----------------------------------------------------------------------------------
def tracker_capture_attempt(device: torch.device, g: torch.Generator) -> dict:
    """Whether ``SpectralTracker.add_`` itself can be captured in a CUDA graph (it reads values back)."""
    m, n = 1024, 4096
    w = (torch.randn(m, n, generator=g) / math.sqrt(n)).to(device)
    tracker = prune_fast.SpectralTracker(w, backend="triton")
    u, v = torch.randn(m, 1, generator=g).to(device), torch.randn(n, 1, generator=g).to(device)
    tracker.add_(u, v)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            tracker.add_(u, v)
        graph.replay()
        torch.cuda.synchronize(device)
        return {"capturable": True}
    except Exception as exc:  # noqa: BLE001 - the finding is the error itself
        return {"capturable": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


# ---- report ---------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import triton  # noqa: PLC0415

    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "commit": commit or "unknown",
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}


def target_verdicts(timings: list[Timing]) -> list[dict]:
    """The issue's three targets, judged from the timing rows (absent rows: not measured)."""
    def find(what, shape_part, dtype, method):
        return next((t for t in timings if t.what == what and shape_part in t.shape and t.dtype == dtype
                     and t.method == method), None)

    out = []
    r = find("restrain_", "4096x11008", "float32", "prune_fast")
    out.append({"target": f"restrain_ 4096x11008 fp32 within {TARGETS['restrain_floor_ratio']:g}x of its memory floor",
                "value": None if r is None else round(r.floor_ratio, 2),
                "met": None if r is None else r.floor_ratio <= TARGETS["restrain_floor_ratio"]})
    steps = [t for t in timings if t.what.startswith("tracker.add_")]
    worst = max(steps, key=lambda t: t.median_ms, default=None)
    out.append({"target": f"tracker step <= {TARGETS['tracker_step_ms']} ms (worst shape/dtype)",
                "value": None if worst is None else f"{worst.median_ms:.3f} ms ({worst.shape} {worst.dtype})",
                "met": None if worst is None else worst.median_ms <= TARGETS["tracker_step_ms"]})
    ratios = []
    for t in timings:
        if t.what == "restrain_" and t.method == "prune_fast":
            svd = find("restrain_", t.shape, t.dtype, "torch.linalg.svd")
            if svd is not None:
                ratios.append((svd.median_ms / t.median_ms, t))
    low = min(ratios, key=lambda x: x[0], default=None)
    out.append({"target": f">= {TARGETS['svd_speedup']:g}x faster than torch.linalg.svd (smallest ratio)",
                "value": None if low is None else f"{low[0]:.0f}x ({low[1].shape} {low[1].dtype})",
                "met": None if low is None else low[0] >= TARGETS["svd_speedup"]})
    return out


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [f"# gpu_check: {env['device']}, {env['date']}", "",
             f"commit {env['commit']}, torch {env['torch']}, triton {env['triton']}, "
             f"dry run: {result['dry_run']}, elapsed {result.get('elapsed_s', 0):.0f} s", ""]
    bw = result.get("bandwidth")
    if bw:
        lines += [f"Copy bandwidth (device-to-device, read + write): **{bw['gbs']:.0f} GB/s** measured "
                  f"(datasheet {result['datasheet_gbs']:.0f} GB/s); floors below use {result['floor_gbs']:.0f} GB/s.", ""]
    checks = result.get("checks", [])
    failed = [c for c in checks if not c["ok"]]
    lines += [f"## Kernel checks against float64: {len(checks) - len(failed)} passed, {len(failed)} failed", ""]
    if failed:
        lines += ["| kernel | case | err/bound |", "|---|---|---|"]
        lines += [f"| {c['kernel']} | {c['case']} | {c['worst']:.3g} |" for c in failed]
        lines.append("")
    timings = result.get("timings", [])
    if timings:
        lines += ["## Timings (median ms)", "", "| step | shape | dtype | method | ms | GB/s | x floor | extra |",
                  "|---|---|---|---|---:|---:|---:|---|"]
        lines += [f"| {t['what']} | {t['shape']} | {t['dtype']} | {t['method']} | {t['median_ms']:.3f} | "
                  f"{t['gbs']:.0f} | {t['floor_ratio']:.2f} | {json.dumps(t['extra']) if t['extra'] else ''} |"
                  for t in timings]
        lines.append("")
    if result.get("skipped"):
        lines += ["Skipped: " + "; ".join(result["skipped"]), ""]
    if result.get("targets"):
        lines += ["## Targets", "", "| target | value | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {t['met']} |" for t in result["targets"]]
        lines.append("")
    if result.get("tracker_capture"):
        lines += [f"SpectralTracker.add_ in a CUDA graph: {result['tracker_capture']}", ""]
    return "\n".join(lines)


def text_log(result: dict) -> str:
    env = result["env"]
    lines = [f"# gpu_check  device={env['device']}  torch={env['torch']}  commit={env['commit']}  "
             f"floor={result.get('floor_gbs', 0):.0f} GB/s  "
             f"dry_run={result['dry_run']}"]
    checks = result.get("checks", [])
    lines.append(f"{'kernel':34s} {'case':24s} {'err/bound':>10s}  ok")
    lines += [f"{c['kernel']:34s} {c['case']:24s} {c['worst']:10.3g}  {'PASS' if c['ok'] else 'FAIL'}" for c in checks]
    lines.append(f"checks: {sum(c['ok'] for c in checks)} ok, {sum(not c['ok'] for c in checks)} not ok")
    if result.get("timings"):
        lines.append(f"{'step':28s} {'shape':22s} {'dtype':9s} {'method':32s} {'median ms':>10s} {'GB/s':>8s} "
                     f"{'x floor':>8s}")
        lines += [f"{t['what']:28s} {t['shape']:22s} {t['dtype']:9s} {t['method']:32s} {t['median_ms']:10.3f} "
                  f"{t['gbs']:8.1f} {t['floor_ratio']:8.2f}  {json.dumps(t['extra']) if t['extra'] else ''}"
                  for t in result["timings"]]
    for t in result.get("targets", []):
        lines.append(f"target: {t['target']}: {t['value']} -> {t['met']}")
    return "\n".join(lines)


class Output:
    """The result dict, written to the out folder (JSON, markdown, log) after every part."""

    def __init__(self, folder: str | None, result: dict):
        self.folder = Path(folder) if folder else None
        self.result = result

    def flush(self) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        Path(self.folder, "gpu_check.json").write_text(json.dumps(self.result, indent=1, default=str))
        Path(self.folder, "gpu_check.md").write_text(markdown(self.result))
        Path(self.folder, "gpu_check.log").write_text(text_log(self.result) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU under Triton's interpreter")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else no files)")
    p.add_argument("--peak-gbs", type=float, default=None, help="bandwidth for the floors instead of the measured one")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no new timing shape after this many seconds")
    p.add_argument("--shapes", default=None, help=f"comma-separated subset of {', '.join(GPU_SHAPES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    on_gpu = torch.cuda.is_available() and not args.dry_run
    if not on_gpu and not args.dry_run:
        print("no CUDA device: run with --dry-run to exercise the code path on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if on_gpu else "cpu")
    env = environment(device)
    g = torch.Generator().manual_seed(args.seed)
    result: dict = {"env": env, "dry_run": args.dry_run}
    out = Output(args.out or os.environ.get("OUT"), result)

    def part(name: str) -> None:
        result["elapsed_s"] = time.perf_counter() - t0
        out.flush()
        print(f"[{result['elapsed_s']:6.1f} s] {name}", flush=True)

    result["bandwidth"] = copy_bandwidth(device, on_gpu)
    result["datasheet_gbs"] = next((v for k, v in PEAK_GBS.items() if k in env["device"]), float("nan"))
    floor_gbs = args.peak_gbs or result["bandwidth"]["gbs"]
    result["floor_gbs"] = floor_gbs
    part("set-up")

    check_shapes = [(1, 1), (17, 33), (130, 70)] + ([(1600, 6400)] if on_gpu else [])
    checks = check_kernels(device, check_shapes, g)
    result["checks"] = [asdict(c) for c in checks]
    part("kernel checks")

    timings: list[Timing] = []
    skipped: list[str] = []
    result["timings"], result["skipped"] = [], skipped
    if not args.skip_timing:
        def on_row():
            result["timings"] = [asdict(t) for t in timings]
            out.flush()

        shapes = GPU_SHAPES if on_gpu else DRY_SHAPES
        if args.shapes:
            shapes = {k: shapes[k] for k in args.shapes.split(",")}
        timing_rows(device, shapes, on_gpu, floor_gbs, g, rotate=3 if on_gpu else 2, reps=5 if on_gpu else 1,
                    deadline=t0 + args.budget_s, skipped=skipped, on_row=on_row, rows=timings)
        result["timings"] = [asdict(t) for t in timings]
        result["targets"] = target_verdicts(timings)
    part("timings")

    if on_gpu:  # last: a failed capture may leave the context unusable
        result["tracker_capture"] = tracker_capture_attempt(device, g)
        part("SpectralTracker.add_ capture attempt")
    print(text_log(result))
    failed = [c for c in result["checks"] if not c["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
