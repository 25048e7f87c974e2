"""ROME (Meng et al., NeurIPS 2022, arXiv 2202.05262): one fact, one rank-one update.

For a request (s, r, o → o*) at the down projection ``W`` (math layout ``(d_out, d_in)``, bias b)
of ``hp.layer``::

    k̄   = mean over key templates of the projection's input at the token site            (d_in,)
    k   = the same input for the bare prompt (template "{}")                                 (d_in,)
    v*  = optimize_value(...)  — the output at the site that makes o* the answer         (d_out,)
    C   = E[k kᵀ] + ridge · mean(diag C) · I                                               (d_in, d_in)
    ΔW  = (v* − W k − b) (C⁻¹ k̄)ᵀ / (kᵀ C⁻¹ k̄)                                              rank one

so that ``(W + ΔW) k + b = v*`` exactly for the prompt as the model reads it, while the update's
direction C⁻¹ k̄ comes from the subject in several contexts — the reference code's construction
(``rome/compute_u.py``: left vector C⁻¹ k̄ from the mean over generated prefixes plus ``"{}"``;
``rome/compute_v.py``: right vector from the plain prompt's input and output).  The key templates
are ``hp.context_templates`` behind ``hp.n_key_prefixes`` prefixes the model generates itself
(:mod:`prune_fast.editors.contexts`); with none, k̄ = k and this is the textbook
``(v* − W k − b)(C⁻¹k)ᵀ / (kᵀC⁻¹k)``.
The update is returned factored in the parameter's layout; nothing is written here — hand
``result.updates`` to :class:`prune_fast.editors.TrackerSet`.

Example::

    hp = ROMEHyperParams.preset("testbed")
    res = compute_rome(model, tok, request, hp, store)
    TrackerSet(model, restrain_every=None).apply_(res.updates)
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..updates import FactoredUpdate
from .architectures import EditSite, Layout, resolve_module, resolve_site
from .base import Editor, EditResult
from .contexts import key_context_templates
from .covariance import CovarianceStore, cholesky_of
from ..errors import EditorError, InvalidTypeError, MalformedRequestError
from .hparams import ROMEHyperParams, ValueHyperParams
from .key_cache import KeyCache
from ..lm.probes import encode, make_batch, module_inputs_at, site_index
from ..lm.requests import EditRequest
from .values import ValueResult, optimize_value

__all__ = ["ROMEResult", "compute_rome", "mean_key", "template_keys", "subject_keys", "module_output",
           "covariance_for", "covariance_factor"]

logger = logging.getLogger(__name__)


@dataclass
class ROMEResult(EditResult):
    """The update and what produced it: ``key`` k (the bare prompt's, which the update maps to the
    value exactly) ``(d_in,)``, ``value`` v* ``(d_out,)`` (float32)."""

    site: EditSite
    key: torch.Tensor
    value: torch.Tensor
    value_search: ValueResult


def check_requests(requests: Any) -> list[EditRequest]:
    reqs = list(requests)
    for r in reqs:
        if not isinstance(r, EditRequest):
            raise MalformedRequestError(f"expected EditRequest objects, got {type(r).__name__}: {r!r}")
    if not reqs:
        raise MalformedRequestError("no requests given")
    return reqs


def template_keys(model: nn.Module, tokenizer: Any, module: nn.Module, requests: list[EditRequest],
                  hp: ValueHyperParams, templates: tuple[str, ...] | None = None) -> torch.Tensor:
    """The module input at the token site of every request in every context template
    (``templates``, default ``hp.context_templates``), all rows in one forward pass that stops at
    the module: ``(b, len(templates), d_in)``."""
    templates = hp.context_templates if templates is None else templates
    rows, sites = [], []
    for req in requests:
        for ctx in templates:
            rows.append(encode(tokenizer, ctx.format(req.text)))
            sites.append(site_index(tokenizer, ctx, req.prompt, req.subject, hp.site))
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    keys = module_inputs_at(model, module, make_batch(model, rows, sites, pad_id=pad))
    return keys.reshape(len(requests), len(templates), -1)


def mean_key(model: nn.Module, tokenizer: Any, module: nn.Module, requests: list[EditRequest],
             hp: ValueHyperParams, templates: tuple[str, ...] | None = None) -> torch.Tensor:
    """k per request: the module input at the token site, averaged over context templates
    (``templates``, default ``hp.context_templates``); ``(b, d_in)``."""
    return template_keys(model, tokenizer, module, requests, hp, templates).mean(dim=1)


def subject_keys(model: nn.Module, tokenizer: Any, site: EditSite, request: EditRequest, hp: ValueHyperParams,
                 templates: tuple[str, ...], cache: KeyCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k̄, k)``: the key averaged over ``templates`` and the bare prompt's key (template ``"{}"``),
    both ``(d_in,)`` on the module's device, from one batched forward (or ``cache``)."""
    ckey = (site.module_name, templates, request.prompt, request.subject, hp.site)
    hit = cache.get(ckey) if cache is not None else None
    if hit is not None:
        return hit
    module = resolve_module(model, site.module_name)
    rows = templates if "{}" in templates else (*templates, "{}")
    keys = template_keys(model, tokenizer, module, [request], hp, rows)[0].to(module.weight.device)
    key_mean = keys[:len(templates)].mean(dim=0)                                    # k̄
    key = keys[rows.index("{}")]                                                    # k
    if cache is not None:
        cache.put(ckey, site, key_mean, key)
    return key_mean, key


def module_output(module: nn.Module, site: EditSite, keys: torch.Tensor) -> torch.Tensor:
    """``W k + b`` in float32 for keys ``(b, d_in)`` -> ``(b, d_out)``, whatever the layout."""
    w = module.weight.detach().float()
    out = keys @ w if site.layout is Layout.IN_OUT else keys @ w.T
    bias = getattr(module, "bias", None)
    return out + bias.detach().float() if bias is not None else out


def covariance_for(model: nn.Module, tokenizer: Any, site: EditSite, hp: ValueHyperParams,
                   covariance: CovarianceStore | torch.Tensor) -> torch.Tensor:
    """``C`` ``(d_in, d_in)`` float64 on the edited module's device, from a store or given directly."""
    if isinstance(covariance, CovarianceStore):
        cov = covariance.get(model, tokenizer, site, hp.cov_samples, hp.cov_max_tokens)
    elif isinstance(covariance, torch.Tensor):
        cov = covariance
    else:
        raise InvalidTypeError(f"covariance must be a CovarianceStore or a tensor, got {type(covariance).__name__}")
    if cov.shape != (site.d_in, site.d_in):
        raise EditorError(f"covariance of shape {tuple(cov.shape)} for {site.module_name} with d_in={site.d_in}")
    return cov.to(resolve_module(model, site.module_name).weight.device, torch.float64)


def covariance_factor(model: nn.Module, tokenizer: Any, site: EditSite, hp: ValueHyperParams,
                      covariance: CovarianceStore | torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Lower Cholesky factor of ``C + ridge · mean(diag C) · I``, float64 on the module's device.

    From a store it is factored once per module and statistics and reused by every later edit; a
    tensor given directly is factored on each call.
    """
    dev = resolve_module(model, site.module_name).weight.device
    if isinstance(covariance, CovarianceStore):
        return covariance.factor(model, tokenizer, site, hp.cov_samples, hp.cov_max_tokens, ridge).to(dev)
    return cholesky_of(covariance_for(model, tokenizer, site, hp, covariance), ridge, site.module_name)


def compute_rome(model: nn.Module, tokenizer: Any, request: EditRequest, hp: ROMEHyperParams,
                 covariance: CovarianceStore | torch.Tensor, key_cache: KeyCache | None = None) -> ROMEResult:
    """The ROME update for one request (see the module docstring); the model is left unchanged.

    ``key_cache``: reuse (and fill) the keys of subjects already edited in this run (see
    :class:`~prune_fast.editors.key_cache.KeyCache`: an entry whose inputs changed is recomputed).

    Raises (before any computation): :class:`UnsupportedArchitectureError`, :class:`InvalidLayerError`,
    :class:`MalformedRequestError`, ``ValueError`` for bad hyper-parameters.
    """
    hp.validate()
    (request,) = check_requests([request])
    site = resolve_site(model, hp.layer, hp.mlp_out_template, hp.layer_template)
    module = resolve_module(model, site.module_name)
    chol = covariance_factor(model, tokenizer, site, hp, covariance, hp.cov_ridge)

    templates = hp.context_templates
    if hp.n_key_prefixes:
        templates = key_context_templates(model, tokenizer, hp.n_key_prefixes)[:-1] + tuple(hp.context_templates)
    dev = module.weight.device
    key_mean, key = subject_keys(model, tokenizer, site, request, hp, templates, key_cache)       # k̄, k (d_in,)
    search = optimize_value(model, tokenizer, request, module, hp)
    value = search.target.to(dev)
    current = module_output(module, site, key[None])[0]                           # W k + b

    cinv_k = torch.cholesky_solve(key_mean.double()[:, None], chol)[:, 0]          # C⁻¹ k̄
    left = cinv_k / (key.double() @ cinv_k)                                       # (d_in,)
    right = (value - current).double()                                            # (d_out,)
    u, v = site.factors(right[:, None].float(), left[:, None].float())
    logger.info("ROME %s at %s: nll %.3f -> %.3f, |ΔW| = %.3g", request.case_id, site.module_name,
                search.nll_start, search.nll_end, (right.norm() * left.norm()).item())
    return ROMEResult(updates=[FactoredUpdate(site.param_name, u, v, site.layer)], site=site,
                      key=key, value=value, value_search=search)


class ROME(Editor):
    """The ROME editor of ``model`` (:func:`compute_rome` behind the :class:`Editor` protocol): one request per call.

    Args:
        model, tokenizer: the model to edit and its tokenizer.
        hparams: :class:`~prune_fast.editors.ROMEHyperParams`.
        covariance: a :class:`CovarianceStore`, or the key covariance ``C`` of the edited layer.
    """

    name = "rome"
    max_batch = 1
    hparams_class = ROMEHyperParams

    def __init__(self, model: nn.Module, tokenizer: Any, hparams: ROMEHyperParams,
                 covariance: CovarianceStore | torch.Tensor) -> None:
        if not isinstance(hparams, ROMEHyperParams):
            raise InvalidTypeError(f"hparams must be ROMEHyperParams, got {type(hparams).__name__}")
        self.model, self.tokenizer, self.hparams, self.covariance = model, tokenizer, hparams, covariance
        # subject keys reused across this editor's requests while the weights feeding them are unchanged
        self.key_cache = KeyCache(model)

    def compute(self, requests: Sequence[EditRequest]) -> ROMEResult:
        """The ROME update of the one request in ``requests``; the model is left unchanged."""
        reqs = check_requests(requests)
        if len(reqs) != 1:
            raise MalformedRequestError(f"ROME edits one request at a time, got {len(reqs)}")
        return compute_rome(self.model, self.tokenizer, reqs[0], self.hparams, self.covariance,
                            key_cache=self.key_cache)
