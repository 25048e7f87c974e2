"""Result dataclasses returned by the public API."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RestrainResult:
    """What one restraint did.

    ``sigma_before``/``sigma_after``: the restrained singular values of Δ before and after F
    (descending; empty when nothing crossed σ*). ``residual``: max ‖Δᵀu_i − σ_i v_i‖/σ_1 of the
    restrained triplets, measured. ``elapsed_s`` covers the whole call, σ* included when computed.
    ``sigma_next``: the largest singular value of Δ below σ* that the solve saw (0 when none), so
    ``sigma_before[0]`` or ``sigma_next`` is σ_max(Δ) without a second spectral solve.
    ``sigma_max_weight``: σ_max of the restrained live weight, when the caller asked for it
    (``SpectralTracker.add_(..., with_sigma_max_weight=True)``), else ``None``; not in ``elapsed_s``.
    """

    n_restrained: int
    sigma_star: float
    sigma_before: list[float] = field(default_factory=list)
    sigma_after: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    backend: str = "torch"
    fn: str = "ln"
    residual: float = 0.0
    sigma_next: float = 0.0
    sigma_max_weight: float | None = None

    def __str__(self) -> str:
        head = f"RestrainResult({self.fn}, σ*={self.sigma_star:.4g}: "
        if not self.n_restrained:
            body = "nothing ≥ σ*"
        else:
            body = (f"{self.n_restrained} restrained, top σ {self.sigma_before[0]:.4g} → "
                    f"{self.sigma_after[0]:.4g}")
        return f"{head}{body}; {self.elapsed_s * 1e3:.2f} ms, {self.backend})"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SpectrumReport:
    """The tracker's view of its weight.

    ``sigma_delta``: top singular values of the raw accumulated Δ (every value ≥ σ*, then the
    largest one below it, descending). ``sigma_max_weight``: σ_max of the live weight.
    ``rank``: rank of the stored Δ (``None`` once Δ is stored dense). ``cond_weight``: cond(W) =
    σ_max/σ_min of the live weight where that is cheap (small weights, see
    :meth:`SpectralTracker.spectrum`), else ``None``.
    """

    sigma_delta: list[float]
    sigma_star: float
    sigma_max_weight: float
    n_above: int
    n_edits: int
    rank: int | None
    cond_weight: float | None = None

    @property
    def ratio(self) -> float:
        """σ_max(W)/σ*: the monotone signal of how far editing has pushed the weight."""
        return self.sigma_max_weight / self.sigma_star

    def to_dict(self) -> dict:
        return asdict(self) | {"ratio": self.ratio}
