"""MEMIT (Meng et al., ICLR 2023, arXiv 2210.07229): a batch of facts spread over several layers.

For requests i = 1..b and edited layers l_1 < ... < l_L (down projections, math layout
``(d_out, d_in)``)::

    z*_i  = optimize_value(...) at the output of block l_L (the residual stream)     (d,)
    for j, l in enumerate(layers):
        K   = keys of layer l at the token site, averaged over contexts              (d_in, b)
        R   = (z* − z_current) / (L − j)        z_current with layers < l updated     (d, b)
        ΔW_l = R Kᵀ (λ C_l + K Kᵀ)⁻¹            λ = mom2_update_weight                  rank ≤ b

``ΔW_l`` is returned factored as ``R`` and ``(λ C_l + K Kᵀ)⁻¹ K`` (in the parameter's layout).
The effect of the earlier layers' updates on later keys and residuals is obtained with forward
hooks that add ``(x Vᵀ...)`` to those modules' outputs — no weight is written here; hand
``result.updates`` to :class:`prune_fast.editors.TrackerSet`.

Example::

    hp = MEMITHyperParams.preset("testbed")
    res = compute_memit(model, tok, requests, hp, store)
    TrackerSet(model, restrain_every=None).apply_(res.updates)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InvalidTypeError
from ..updates import FactoredUpdate
from .architectures import EditSite, resolve_module, resolve_site
from .base import Editor, EditResult
from .covariance import CovarianceStore
from .hparams import MEMITHyperParams, ValueHyperParams
from ..lm.probes import AddAtOutput, encode, make_batch, site_index, stop_after
from ..lm.requests import EditRequest
from .rome import check_requests, covariance_factor, mean_key
from .values import ValueResult, optimize_value

__all__ = ["MEMITResult", "compute_memit", "spread_over_layers", "PendingUpdates", "RightFactor"]

logger = logging.getLogger(__name__)


@dataclass
class MEMITResult(EditResult):
    """One update per edited layer, the targets ``z*`` ``(b, d)`` and the per-request searches."""

    sites: list[EditSite]
    targets: torch.Tensor
    value_searches: list[ValueResult]


class PendingUpdates:
    """Forward hooks adding ``(x @ Kv) @ Rᵀ`` to each module's output (ΔW = R Kvᵀ, math layout)."""

    def __init__(self) -> None:
        self.items: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def add(self, module: nn.Module, r: torch.Tensor, kv: torch.Tensor) -> None:
        self.items.append((module, r, kv))

    def hooks(self, stack: ExitStack) -> None:
        for module, r, kv in self.items:
            def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor, r=r, kv=kv) -> torch.Tensor:
                x = args[0]
                return out + ((x.float() @ kv.to(x.device)) @ r.T.to(x.device)).to(out.dtype)
            stack.callback(module.register_forward_hook(hook).remove)


@torch.no_grad()
def _block_outputs(model: nn.Module, tokenizer: Any, block: nn.Module, requests: Sequence[EditRequest],
                   site: str) -> torch.Tensor:
    """Residual stream at the output of ``block`` at each request's site (plain prompt): ``(b, d)``."""
    rows = [encode(tokenizer, r.text) for r in requests]
    sites = [site_index(tokenizer, "{}", r.prompt, r.subject, site) for r in requests]
    batch = make_batch(model, rows, sites, pad_id=getattr(tokenizer, "pad_token_id", None) or 0)
    with AddAtOutput(block, batch.sites, None) as probe, stop_after(block):  # the layers above never run
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return probe.before


def _memit_key_side(chol: torch.Tensor, keys: torch.Tensor, lam: float) -> torch.Tensor:
    """``(λC + K Kᵀ)⁻¹ K`` from the cached Cholesky factor of ``C``: with ``X = C⁻¹ K`` it equals
    ``X (λI + Kᵀ X)⁻¹`` (push-through identity), a ``b × b`` solve instead of a ``d_in × d_in`` one."""
    x = torch.cholesky_solve(keys, chol)                                                 # (d_in, b)
    small = lam * torch.eye(keys.shape[1], dtype=keys.dtype, device=keys.device) + keys.T @ x
    return torch.linalg.solve(small, x.T).T                                              # small is symmetric


RightFactor = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(j, K, R) -> F``: the key side of the update of the ``j``-th site, ``ΔW = R Fᵀ`` (math layout), from
its keys ``K: (d_in, b)`` and residuals ``R: (d_out, b)``; float64 on the module's device."""


def spread_over_layers(model: nn.Module, tokenizer: Any, reqs: list[EditRequest], hp: ValueHyperParams,
                       sites: list[EditSite], right_factor: RightFactor, name: str = "MEMIT"
                       ) -> tuple[MEMITResult, PendingUpdates]:
    """MEMIT's spreading of a batch's targets over ``sites``, with the per-layer solve a parameter.

    The targets ``z*`` are searched at the output of the last site's block; then, layer by layer
    (ascending), the keys and the residual still missing are measured with the updates of the
    earlier layers in place (as hooks) and ``right_factor`` turns them into the update.  MEMIT and
    AlphaEdit differ only in ``right_factor``.  Returns the result and the pending updates of every
    layer (hooks that reproduce the edited model without writing a weight).
    """
    z_block = resolve_module(model, sites[-1].layer_name)
    searches = [optimize_value(model, tokenizer, r, z_block, hp) for r in reqs]
    dev_z = searches[0].target.device
    targets = torch.stack([s.target.to(dev_z) for s in searches])                    # (b, d)

    pending = PendingUpdates()
    updates: list[FactoredUpdate] = []
    n_layers = len(sites)
    for j, site in enumerate(sites):
        module = resolve_module(model, site.module_name)
        dev = module.weight.device
        with ExitStack() as stack:
            pending.hooks(stack)
            keys = mean_key(model, tokenizer, module, reqs, hp).to(dev).double().T     # (d_in, b)
            current = _block_outputs(model, tokenizer, z_block, reqs, hp.site)          # (b, d)
        resid = ((targets - current.to(dev_z)) / (n_layers - j)).to(dev).double().T  # (d, b)
        kv = right_factor(j, keys, resid)                                             # (d_in, b)
        u, v = site.factors(resid.float(), kv.float())
        updates.append(FactoredUpdate(site.param_name, u, v, site.layer))
        pending.add(module, resid.float(), kv.float())
        logger.info("%s layer %d: |resid| %.3g, |ΔW| %.3g", name, site.layer, resid.norm().item(),
                    (resid.float() @ kv.float().T).norm().item())
    return MEMITResult(updates=updates, sites=sites, targets=targets, value_searches=searches), pending


def compute_memit(model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], hp: MEMITHyperParams,
                  covariance: CovarianceStore | torch.Tensor | dict[int, torch.Tensor]) -> MEMITResult:
    """The MEMIT updates for a batch of requests; the model is left unchanged.

    ``covariance``: a store, or one ``(d_in, d_in)`` tensor per layer as ``{layer: C}``.
    Raises before any computation on an unsupported architecture, a bad layer, a malformed request.
    """
    hp.validate()
    reqs = check_requests(requests)
    sites = [resolve_site(model, layer, hp.mlp_out_template, hp.layer_template) for layer in hp.layers]
    # all before any update exists: statistics of the unedited model, every layer from one pass
    if isinstance(covariance, CovarianceStore):
        covariance.get_many(model, tokenizer, sites, hp.cov_samples, hp.cov_max_tokens)
    chols = [covariance_factor(model, tokenizer, s, hp, covariance[s.layer] if isinstance(covariance, dict)
                               else covariance) for s in sites]

    def memit_factor(j: int, keys: torch.Tensor, _resid: torch.Tensor) -> torch.Tensor:
        return _memit_key_side(chols[j], keys, hp.mom2_update_weight)                # (λC + KKᵀ)⁻¹ K

    return spread_over_layers(model, tokenizer, reqs, hp, sites, memit_factor)[0]


class MEMIT(Editor):
    """The MEMIT editor of ``model`` (:func:`compute_memit` behind the :class:`Editor` protocol): a batch per call.

    Args:
        model, tokenizer: the model to edit and its tokenizer.
        hparams: :class:`~prune_fast.editors.MEMITHyperParams`.
        covariance: a :class:`CovarianceStore`, one tensor ``C`` for every layer, or ``{layer: C}``.
    """

    name = "memit"
    hparams_class = MEMITHyperParams

    def __init__(self, model: nn.Module, tokenizer: Any, hparams: MEMITHyperParams,
                 covariance: CovarianceStore | torch.Tensor | dict[int, torch.Tensor]) -> None:
        if not isinstance(hparams, MEMITHyperParams):
            raise InvalidTypeError(f"hparams must be MEMITHyperParams, got {type(hparams).__name__}")
        self.model, self.tokenizer, self.hparams, self.covariance = model, tokenizer, hparams, covariance

    def compute(self, requests: Sequence[EditRequest]) -> MEMITResult:
        """The MEMIT updates of ``requests`` (one per edited layer); the model is left unchanged."""
        return compute_memit(self.model, self.tokenizer, requests, self.hparams, self.covariance)
