"""Benchmark ``restrain_checkpoint`` against the paper's procedure and ``torch.linalg.svd``.

Two synthetic safetensors checkpoint pairs (BASE, EDITED), written to a temporary folder:

- ``gpt2xl-memit``: five edited 1600×6400 fp32 matrices (the MEMIT layers of GPT-2 XL) plus three
  unedited 1600×6400 matrices and some 1-D tensors that are copied;
- ``llama7b-down``: one edited 4096×11008 fp16 matrix (a Llama-2-7B ``down_proj``'s size) plus an
  unedited one.

W0 has a trained-like spectrum (a noise bulk plus a few separated top directions; a pure Gaussian
W0, whose top singular values cluster, is the worst case for σ* and is timed separately with
``--gaussian``). Each Δ is MEMIT-like: rank 16, singular values from 6σ* down to 0.1σ*.

Measured, in the same run: wall time of ``restrain_checkpoint`` (whole pair: compare, restrain,
write; OUT is deleted before each run, untimed, as a user's OUT does not exist yet); the paper's
per-matrix procedure (``prune_fast.spectral.reference.paper_procedure``: four float64 NumPy SVDs with full U
and V + ``matrix_rank``, as its code does) on ONE matrix, and its thin variant (thin SVD of Δ,
values only for the rest: the stricter yardstick); one thin ``torch.linalg.svd`` of Δ plus
``svdvals(W0)`` in fp32 (a full-SVD torch implementation of PRUNE). For 4096×11008 the paper's
procedure takes many minutes on 2 cores: it runs only with ``--paper-large``; otherwise its time is
extrapolated from the 1600×6400 measurement by the SVD flop count (m·n·min(m,n)) and labelled so.

Usage::

    python bench/bench_checkpoint.py [--repeats 3] [--paper-large] [--gaussian] [--markdown]
    python -m pytest bench/bench_checkpoint.py --benchmark-only     # the same through pytest-benchmark
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import prune_fast  # noqa: E402
from prune_fast.spectral.reference import paper_procedure, restrain_reference  # noqa: E402
from prune_fast.restrain import sigma_max  # noqa: E402

RANK = 16
# name: (shape, edited matrices, unedited matrices, dtype)
CASES = {
    "gpt2xl-memit": ((1600, 6400), 5, 3, torch.float32),
    "llama7b-down": ((4096, 11008), 1, 1, torch.float16),
}


@dataclass
class Row:
    case: str
    key: str  # restrain_file | restrain_matrix | torch_svd | paper | sigma_star_gaussian
    method: str
    shape: str
    seconds: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def trained_like(m: int, n: int, g: torch.Generator) -> torch.Tensor:
    """0.02·Gaussian bulk plus 16 separated directions (top = 3 × the bulk edge)."""
    w = 0.02 * torch.randn(m, n, generator=g)
    edge = 0.02 * (m ** 0.5 + n ** 0.5)
    u, _ = torch.linalg.qr(torch.randn(m, 16, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, 16, generator=g))
    return w + (u * (3 * edge * 0.85 ** torch.arange(16.0))) @ v.T


def memit_like_delta(w0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    m, n = w0.shape
    sigma_star, _ = sigma_max(w0.float())
    u, _ = torch.linalg.qr(torch.randn(m, RANK, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, RANK, generator=g))
    s = sigma_star * torch.logspace(torch.log10(torch.tensor(6.0)), -1, RANK)
    return (u * s) @ v.T


def write_pair(folder: Path, shape: tuple[int, int], n_edited: int, n_plain: int, dtype: torch.dtype,
               g: torch.Generator) -> tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    base, edited = {}, {}
    for i in range(n_edited + n_plain):
        name = f"layers.{i}.mlp.weight"
        w0 = trained_like(*shape, g)
        base[name] = w0.to(dtype)
        edited[name] = (w0 + memit_like_delta(w0, g)).to(dtype) if i < n_edited else w0.to(dtype)
        base[f"layers.{i}.mlp.bias"] = edited[f"layers.{i}.mlp.bias"] = torch.randn(shape[1], generator=g).to(dtype)
    folder.mkdir(parents=True)
    save_file(base, folder / "base.safetensors", metadata={"format": "pt"})
    save_file(edited, folder / "edited.safetensors", metadata={"format": "pt"})
    return folder / "base.safetensors", folder / "edited.safetensors", base, edited


def remove_out(out: Path) -> None:
    """Before a timed run, untimed: a user's OUT does not exist yet, and the previous run's dirty
    pages must not throttle this one's writes."""
    out.unlink(missing_ok=True)
    os.sync()


def progress(row: "Row") -> "Row":
    """Log a row to stderr as soon as it is measured (long runs are not lost to an interruption)."""
    print(f"[{time.strftime('%H:%M:%S')}] {row.case} | {row.method} | {row.shape} | "
          f"{', '.join(f'{s:.3f}' for s in row.seconds)} s | {row.note}", file=sys.stderr, flush=True)
    return row


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_case(name: str, shape: tuple[int, int], n_edited: int, n_plain: int, dtype: torch.dtype, root: Path,
               repeats: int, paper: bool, g: torch.Generator, paper_per_flop: list[float]) -> list[Row]:
    rows: list[Row] = []
    base, edited, b, e = write_pair(root / name, shape, n_edited, n_plain, dtype, g)
    out = root / f"{name}-out.safetensors"
    reports = []

    def run() -> None:
        reports.append(prune_fast.restrain_checkpoint(base, edited, out, progress=False))

    secs = []
    for _ in range(repeats):
        remove_out(out)
        secs += timed(run, 1)
    rep = reports[-1]
    per = [t.seconds for t in rep.restrained]
    rows.append(progress(Row(
        name, "restrain_file", f"restrain_checkpoint, whole file ({n_edited} edited + {n_plain} unedited matrices)",
        f"{shape[0]}×{shape[1]} {str(dtype)[6:]}", secs,
        f"{len(rep.restrained)} restrained, {sum(t.n_restrained for t in rep.restrained)} σ's")))
    # accuracy of what was written against the float64 reference, one matrix
    from safetensors import safe_open

    first = rep.restrained[0].name
    with safe_open(str(out), "pt") as f:
        got = f.get_tensor(first)
    ref, _ = restrain_reference(b[first], e[first].double() - b[first].double())
    err = float(torch.linalg.norm(got.double() - ref) / torch.linalg.norm(ref))
    rows.append(progress(Row(name, "restrain_matrix", "restrain, per edited matrix (σ* + top-k of Δ + update)",
                             f"{shape[0]}×{shape[1]}", per,
                             f"rel. Frobenius error vs float64 reference {err:.1e} ({str(dtype)[6:]} output)")))

    w0, wn = b[first].float(), e[first].float()

    def torch_full() -> None:
        torch.linalg.svdvals(w0)
        torch.linalg.svd(wn - w0, full_matrices=False)

    rows.append(progress(Row(name, "torch_svd", "torch.linalg.svd(Δ) + svdvals(W0), fp32, one matrix",
                             f"{shape[0]}×{shape[1]}", timed(torch_full, 1))))
    flops = shape[0] * shape[1] * min(shape)
    variants = (("paper", True, "paper procedure as its code (4 fp64 SVDs, full U and V, + matrix_rank), one matrix"),
                ("paper_thin", False, "paper procedure, thin variant (thin SVD of Δ, values of 3, + matrix_rank), one matrix"))
    for i, (key, full, label) in enumerate(variants):
        if paper:
            secs = timed(lambda: paper_procedure(w0.double().numpy(), wn.double().numpy(), full_matrices=full), 1)
            paper_per_flop.append(secs[0] / flops)
            rows.append(progress(Row(name, key, label, f"{shape[0]}×{shape[1]}", secs, "measured")))
        elif len(paper_per_flop) > i:
            est = paper_per_flop[i] * flops
            rows.append(progress(Row(name, key, label, f"{shape[0]}×{shape[1]}", [est],
                                     "EXTRAPOLATED from the 1600×6400 measurement by m·n·min(m,n), not measured")))
    for p in (base, edited, out):
        p.unlink(missing_ok=True)
    return rows


def gaussian_sigma_star(shape: tuple[int, int], g: torch.Generator) -> Row:
    w0 = torch.randn(*shape, generator=g) / shape[1] ** 0.5
    t = time.perf_counter()
    sigma_max(w0)
    return Row("worst case", "sigma_star_gaussian", "σ* of a pure Gaussian W0 (clustered top σ's), block Krylov", f"{shape[0]}×{shape[1]}",
               [time.perf_counter() - t])


def machine() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, commit {commit}, "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of restrain_checkpoint per case (median reported)")
    ap.add_argument("--paper-large", action="store_true", help="also run the paper procedure on 4096×11008 (minutes)")
    ap.add_argument("--gaussian", action="store_true", help="also time σ* of a pure Gaussian 1600×6400 W0")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--only-small", action="store_true", help="skip the 4096×11008 case")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    paper_per_flop: list[float] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint-") as tmp:
        root = Path(tmp)
        rows += bench_case("gpt2xl-memit", *CASES["gpt2xl-memit"], root, args.repeats, True, g, paper_per_flop)
        if not args.only_small:
            rows += bench_case("llama7b-down", *CASES["llama7b-down"], root, args.repeats, args.paper_large, g,
                               paper_per_flop)
    if args.gaussian:
        rows.append(progress(gaussian_sigma_star((1600, 6400), g)))
    print(machine())
    sep = " | " if args.markdown else "  "
    head = ["case", "method", "shape", "median s", "runs", "note"]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(sep.join(head))
    for r in rows:
        cells = [r.case, r.method, r.shape, f"{r.median:.3f}", ", ".join(f"{s:.2f}" for s in r.seconds), r.note]
        print(("| " + sep.join(cells) + " |") if args.markdown else sep.join(cells))
    by_case: dict[str, dict[str, float]] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.key] = r.median
    n_edited = {name: spec[1] for name, spec in CASES.items()}
    for case, d in by_case.items():
        per = d.get("restrain_matrix")
        for key, label in (("paper", "paper procedure"), ("paper_thin", "paper procedure, thin variant"),
                           ("torch_svd", "torch.linalg.svd")):
            if per and key in d:
                whole = f"; × {n_edited[case]} matrices / whole file = {n_edited[case] * d[key] / d['restrain_file']:.0f}×"
                print(f"{case}: {label} / restrain, per matrix = {d[key] / per:.0f}×" + (whole if key != "torch_svd" else ""))
    return 0


# -- pytest-benchmark ------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("case", list(CASES))
    def test_bench_restrain_checkpoint(benchmark, case, tmp_path):
        """Whole ``restrain_checkpoint`` call on a synthetic pair; OUT removed before each round."""
        base, edited, _, _ = write_pair(tmp_path / case, *CASES[case], torch.Generator().manual_seed(0))
        out = tmp_path / "out.safetensors"

        def fresh_out():
            remove_out(out)
            return (), {}

        benchmark.pedantic(lambda: prune_fast.restrain_checkpoint(base, edited, out, progress=False),
                           setup=fresh_out, rounds=5, iterations=1, warmup_rounds=1)

    @pytest.mark.parametrize("full_matrices", [True, False], ids=["as-paper-code", "thin-variant"])
    def test_bench_paper_procedure_gpt2xl_matrix(benchmark, full_matrices):
        """The yardstick on one 1600×6400 matrix (~30 s as the paper's code runs it)."""
        g = torch.Generator().manual_seed(0)
        w0 = trained_like(1600, 6400, g)
        wn = w0 + memit_like_delta(w0, g)
        benchmark.pedantic(lambda: paper_procedure(w0.double().numpy(), wn.double().numpy(),
                                                   full_matrices=full_matrices), rounds=1, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
