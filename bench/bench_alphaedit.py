"""Benchmark AlphaEdit's null-space projector: dense float64 ``eigh`` against the block Krylov threshold solver.

``P`` is the projector onto the eigenvectors of the keys' second moment ``C (d × d)`` whose eigenvalue is
below a threshold τ; equivalently ``P = I − U Uᵀ`` with ``U`` every eigenvector at or above τ.  Compared in
the same run on the same matrices:

- ``eigh``: :func:`prune_fast.editors.alphaedit.null_space_projector` (one float64 ``torch.linalg.eigh``);
- ``krylov``: :func:`prune_fast.spectral.krylov.topk_svd` in threshold mode on the float64 ``C`` (for a symmetric
  positive semi-definite matrix its singular values are its eigenvalues), then ``P = I − U Uᵀ``.

Matrices: ``d`` = 512 (the test bed's key width) and 1536 (SmolLM2-135M's), with a fraction ``f`` of the
eigenvalues above τ (log-uniform spectra, 1e-6 … 1e2, τ = 2e-2): ``f`` = 0.05 (few values above: the
Krylov solver's home ground), 0.5 and 0.8 (the test bed has 27–55 % of its key eigenvalues above its
preset threshold).  Also reports ``‖P_krylov − P_eigh‖_max``.

Run as a script for the table (``python bench/bench_alphaedit.py``) or through pytest-benchmark
(``python -m pytest bench/bench_alphaedit.py --benchmark-only``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_fast.editors.alphaedit import null_space_projector  # noqa: E402
from prune_fast.spectral.krylov import topk_svd  # noqa: E402

TAU = 2e-2
CASES = [(512, 0.05), (512, 0.5), (512, 0.8), (1536, 0.05), (1536, 0.5), (1536, 0.8)]


def spectrum_case(d: int, above: float, seed: int = 0) -> torch.Tensor:
    """A float64 PSD ``C = Q diag(λ) Qᵀ``: ``round(above · d)`` eigenvalues in [1.5 τ, 1e2], the rest in
    [1e-6, τ / 1.5], log-uniform."""
    g = torch.Generator().manual_seed(seed)
    n_hi = round(above * d)
    lo = torch.exp(torch.empty(d - n_hi, dtype=torch.float64).uniform_(
        float(torch.log(torch.tensor(1e-6))), float(torch.log(torch.tensor(TAU / 1.5))), generator=g))
    hi = torch.exp(torch.empty(n_hi, dtype=torch.float64).uniform_(
        float(torch.log(torch.tensor(TAU * 1.5))), float(torch.log(torch.tensor(1e2))), generator=g))
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    return (q * torch.cat([lo, hi])) @ q.T


def projector_eigh(c: torch.Tensor) -> torch.Tensor:
    return null_space_projector(c, TAU)[0]


def projector_krylov(c: torch.Tensor) -> torch.Tensor:
    t = topk_svd(c, threshold=TAU)
    return torch.eye(c.shape[0], dtype=torch.float64) - t.u @ t.u.T


def _time(fn, arg, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help; no options
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, τ = {TAU:g}")
    print(f"{'d':>5} {'f above':>8} {'eigh median s':>14} {'krylov median s':>16} {'‖ΔP‖max':>10}")
    for d, above in CASES:
        c = spectrum_case(d, above)
        te = _time(projector_eigh, c, 5)
        tk = _time(projector_krylov, c, 3)
        diff = float((projector_eigh(c) - projector_krylov(c)).abs().max())
        print(f"{d:>5} {above:>8.2f} {statistics.median(te):>14.4f} {statistics.median(tk):>16.4f} {diff:>10.2e}")
    return 0


# -- pytest-benchmark ---------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # the script form needs no pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("route", ["eigh", "krylov"])
    @pytest.mark.parametrize("d,above", CASES, ids=[f"d{d}-f{a}" for d, a in CASES])
    def test_projector(benchmark, route, d, above):
        c = spectrum_case(d, above)
        fn = projector_eigh if route == "eigh" else projector_krylov
        p = benchmark(fn, c)
        assert float((p - projector_eigh(c)).abs().max()) < 1e-6


if __name__ == "__main__":
    sys.exit(main())
