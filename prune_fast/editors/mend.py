"""MEND (Mitchell et al., *Fast Model Editing at Scale*, ICLR 2022): edits by a learned gradient map.

For a request (prompt → ``target_new``) and each edited weight ``W`` (math layout ``(d_out, d_in)``),
the fine-tuning gradient of the NLL of the target is a sum over the example's tokens,
``∇W L = Σ_t δ_t u_tᵀ`` (``u_t``: the layer's input at token t, ``δ_t``: ∂L/∂ of its output).  The
trained network of :mod:`~prune_fast.editors.mend_network` maps every ``(u_t, δ_t)`` to
``(ũ_t, δ̃_t)`` and the edit is

    ΔW = −η Σ_t δ̃_t ũ_tᵀ        rank ≤ T (the tokens of the prompt and target, but the last)

returned factored (``u``, ``v`` in the parameter's stored layout, float32), so it goes to
:class:`~prune_fast.editors.TrackerSet` like ROME's and MEMIT's updates.  Nothing is written here.

Training (:func:`train`) follows the paper: the base model is frozen; for each training request
the update is computed from its gradient and applied *functionally* (forward hooks add
``ΔW x`` to the edited modules' outputs, so the gradient of the loss reaches the network through
``ΔW``), and the loss is

    c_edit · NLL(target_new | edit prompt and paraphrases, after the edit)
  + c_loc  · KL(p_before ‖ p_after) over every token of unrelated texts (the request's
             neighbourhood prompts and ``n_loc`` lines of a locality pool)

Example::

    hp = MENDHyperParams.preset("testbed")
    train(model, tok, train_requests, hp, out="editor.safetensors", locality=texts)
    mend = MEND(model, tok, "editor.safetensors")
    TrackerSet(model, restrain_every=None).apply_(mend.compute(request).updates)
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import EditorCheckpointError, MalformedRequestError
from ..lm.evaluation import EDIT_METRICS, Evaluator, top1_all
from ..lm.probes import encode, frozen, input_device, pad_rows
from ..lm.requests import EditRequest
from ..updates import FactoredUpdate
from .architectures import EditSite, resolve_module
from .base import Editor, EditResult
from .hparams import MENDHyperParams
from .mend_checkpoint import (build_network, edited_sites, fingerprint, load_editor, load_training_state,
                              save_editor, save_training_state)
from .mend_network import MENDNetwork
from .rome import check_requests

__all__ = ["MEND", "MENDResult", "MENDTrainReport", "train", "token_factors", "EditedForward"]

logger = logging.getLogger(__name__)


@dataclass
class MENDResult(EditResult):
    """One factored update per edited weight; ``n_tokens``: their rank; ``nll``: the loss before the edit."""

    sites: list[EditSite]
    n_tokens: int
    nll: float


@dataclass
class _Rows:
    """Right-padded rows; ``targets[r, t]`` is the token the logits at ``t`` must predict (-100: none)."""

    ids: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor  # (R,) which edit a row belongs to


_MAX_TEXT_TOKENS = 128  # locality texts are cut here (as the covariance pass cuts its corpus)


def _encode(tokenizer: Any, items: Sequence[tuple[str, str | None]], groups: Sequence[int],
            device: torch.device) -> _Rows:
    """Rows ``prompt + answer[:-1]`` with the answer as targets, or plain texts (answer ``None``)."""
    rows, targets = [], []
    for text, answer in items:
        ids = encode(tokenizer, text)
        if answer is None:
            ids = ids[:_MAX_TEXT_TOKENS]
            rows.append(ids)
            targets.append([-100] * len(ids))
            continue
        ans = encode(tokenizer, " " + answer, add_special_tokens=False)
        if not ans or not ids:
            raise MalformedRequestError(f"{text!r} -> {answer!r} encodes to no tokens")
        rows.append(ids + ans[:-1])
        targets.append([-100] * (len(ids) - 1) + ans)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    ids, mask = pad_rows(rows, pad)
    tgt = torch.full_like(ids, -100)
    for i, t in enumerate(targets):
        tgt[i, : len(t)] = torch.tensor(t)
    return _Rows(ids.to(device), mask.to(device), tgt.to(device), torch.tensor(list(groups), dtype=torch.long))


def _group_nll(logits: torch.Tensor, rows: _Rows, n_groups: int) -> torch.Tensor:
    """Mean NLL of the target tokens of each group: ``(n_groups,)``."""
    targets = rows.targets.to(logits.device)
    logp = torch.log_softmax(logits.float(), -1)
    valid = targets != -100
    tok = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0] * valid
    groups = rows.groups.to(logits.device)
    total = torch.zeros(n_groups, device=logits.device).index_add(0, groups, -tok.sum(1))
    count = torch.zeros(n_groups, device=logits.device).index_add(0, groups, valid.sum(1).float())
    return total / count.clamp_min(1)


class _CaptureFactors:
    """Hooks recording each module's input and adding a zero leaf at its output, whose gradient is δ."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.inputs: dict[str, torch.Tensor] = {}
        self.zeros: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "_CaptureFactors":
        for name, module in self.modules.items():
            def pre(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                self.inputs[name] = args[0].detach()

            def post(_m: nn.Module, _args: Any, out: torch.Tensor, name: str = name) -> torch.Tensor:
                zero = torch.zeros_like(out, requires_grad=True)
                self.zeros[name] = zero
                return out + zero
            self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


Factors = dict[str, list[tuple[torch.Tensor, torch.Tensor]]]  # weight name -> per group (T, ·) pairs


def token_factors(model: nn.Module, tokenizer: Any, sites: Sequence[EditSite], items: Sequence[tuple[str, str]],
                  groups: Sequence[int] | None = None) -> tuple[torch.Tensor, Factors]:
    """The per-token gradient factors of the fine-tuning loss of each group of (prompt, answer) items.

    The loss of group g is the mean NLL of its answers' tokens; for every site and group the
    result holds ``(u, δ)``: ``u (T_g, d_in)`` the inputs and ``δ (T_g, d_out)`` the output
    gradients at the tokens that influence the loss (every real token but each row's last), so
    that ``Σ_t δ_t u_tᵀ`` is the gradient of the group's loss with respect to ``W`` (math layout).
    Returns ``(nll (n_groups,), factors)``; the model's weights are not changed.
    """
    groups = list(groups) if groups is not None else [0] * len(items)
    n_groups = max(groups) + 1
    rows = _encode(tokenizer, items, groups, input_device(model))
    modules = {s.param_name: resolve_module(model, s.module_name) for s in sites}
    with frozen(model), torch.enable_grad(), _CaptureFactors(modules) as cap:
        logits = model(input_ids=rows.ids, attention_mask=rows.mask).logits
        nll = _group_nll(logits, rows, n_groups)
        names = list(modules)
        grads = torch.autograd.grad(nll.sum(), [cap.zeros[n] for n in names])
    # tokens up to each row's last target position carry gradient; later ones and padding do not
    last = torch.where(rows.targets != -100, torch.arange(rows.ids.shape[1], device=rows.ids.device), -1).amax(1)
    keep = (torch.arange(rows.ids.shape[1], device=rows.ids.device)[None] <= last[:, None]) & (rows.mask > 0)
    factors: Factors = {}
    for name, grad in zip(names, grads):
        x = cap.inputs[name]
        per_group = []
        for g in range(n_groups):
            sel = keep & (rows.groups.to(keep.device) == g)[:, None]
            sel_x = sel.to(x.device)
            per_group.append((x[sel_x].float(), grad[sel.to(grad.device)].float()))
        factors[name] = per_group
    return nll.detach(), factors


def _transform(net: MENDNetwork, factors: Factors) -> Factors:
    """``(keys ũ (T, d_in), values −η δ̃ (T, d_out))`` per weight and group: ΔW = valuesᵀ keys."""
    dev = net.log_lr.device
    out: Factors = {}
    for name, per_group in factors.items():
        counts = [u.shape[0] for u, _ in per_group]
        u = torch.cat([u for u, _ in per_group]).to(dev)
        d = torch.cat([d for _, d in per_group]).to(dev)
        keys, deltas = net.transform(name, u, d)
        values = -net.step_size(name) * deltas
        out[name] = list(zip(keys.split(counts), values.split(counts)))
    return out


class EditedForward:
    """Forward hooks that add each row's own ``ΔW x`` to the edited modules' outputs.

    ``deltas``: weight name → per group ``(keys (T, d_in), values (T, d_out))`` (``ΔW = valuesᵀ keys``);
    ``row_groups``: ``(R,)`` the group of each batch row, or ``None``: every row uses group 0 (any
    batch size, e.g. an evaluator's).  Gradients flow into the deltas; the weights are not touched.

    Example::

        with EditedForward(modules, {name: [(keys, values)]}):
            logits = model(ids).logits           # as if W += valuesᵀ keys
    """

    def __init__(self, modules: dict[str, nn.Module], deltas: Factors,
                 row_groups: torch.Tensor | None = None) -> None:
        self.modules, self.row_groups = modules, row_groups
        self.padded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, per_group in deltas.items():
            width = max(1, max(k.shape[0] for k, _ in per_group))
            keys = torch.stack([nn.functional.pad(k, (0, 0, 0, width - k.shape[0])) for k, _ in per_group])
            values = torch.stack([nn.functional.pad(v, (0, 0, 0, width - v.shape[0])) for _, v in per_group])
            self.padded[name] = (keys, values)
        self._handles: list[Any] = []

    def __enter__(self) -> "EditedForward":
        for name, module in self.modules.items():
            keys, values = self.padded[name]

            def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor, keys: torch.Tensor = keys,
                     values: torch.Tensor = values) -> torch.Tensor:
                x = args[0]
                k, v = keys.to(x.device), values.to(x.device)
                if self.row_groups is None:
                    k, v = k[:1].expand(x.shape[0], -1, -1), v[:1].expand(x.shape[0], -1, -1)
                else:
                    rg = self.row_groups.to(x.device)
                    k, v = k[rg], v[rg]
                return out + ((x.float() @ k.transpose(1, 2)) @ v).to(out.dtype)
            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class MEND(Editor):
    """A trained MEND editor for ``model``: ``compute(request)`` gives factored updates.

    Args:
        model, tokenizer: the model to edit (only read here) and its tokenizer.
        checkpoint: an editor checkpoint written by :func:`train`.  It is checked against the model
            (edited weights' names and shapes, embedding fingerprint) and for missing, misshapen or
            non-finite tensors: :class:`EditorCheckpointError`, before anything is computed.

    Example::

        mend = MEND(model, tok, "editor.safetensors")
        res = mend.compute(request)                      # nothing written
        trackers.apply_(res.updates)                      # rank = res.n_tokens per weight
    """

    name = "mend"

    def __init__(self, model: nn.Module, tokenizer: Any, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.net, self.hparams, meta = load_editor(self.checkpoint, model)
        self.report: dict[str, Any] = meta["report"]
        self.sha256 = _file_sha256(self.checkpoint)
        self.model, self.tokenizer = model, tokenizer
        self.sites = edited_sites(model, self.hparams)
        self.net.to(resolve_module(model, self.sites[0].module_name).weight.device)

    def describe(self) -> dict[str, Any]:
        """What a resumed run must match: the checkpoint's digest (not its path: it may move) and settings."""
        return {"checkpoint_sha256": self.sha256, **self.hparams.to_dict()}

    @torch.no_grad()
    def deltas(self, requests: EditRequest | Sequence[EditRequest]) -> tuple[torch.Tensor, Factors]:
        """``(nll, {weight: [(keys, values)]})``: the edit of ``requests`` (one group) before factoring."""
        reqs = check_requests([requests] if isinstance(requests, EditRequest) else requests)
        nll, factors = token_factors(self.model, self.tokenizer, self.sites, [(r.text, r.target_new) for r in reqs])
        return nll, _transform(self.net, factors)

    def compute(self, requests: EditRequest | Sequence[EditRequest]) -> MENDResult:
        """The MEND update of one request (or of several at once, from their summed gradient).

        The model is left unchanged.  Raises :class:`MalformedRequestError` before any computation.
        """
        nll, deltas = self.deltas(requests)
        updates = []
        n_tokens = 0
        for site in self.sites:
            ((keys, values),) = deltas[site.param_name]
            dev = resolve_module(self.model, site.module_name).weight.device
            u, v = site.factors(values.T.to(dev, torch.float32).contiguous(),
                                keys.T.to(dev, torch.float32).contiguous())
            updates.append(FactoredUpdate(site.param_name, u, v, site.layer))
            n_tokens = keys.shape[0]
        logger.info("MEND %s: nll %.3f, rank %d on %d weights", getattr(requests, "case_id", None), float(nll[0]),
                    n_tokens, len(updates))
        return MENDResult(updates=updates, sites=self.sites, n_tokens=n_tokens, nll=float(nll[0]))


# -- training -------------------------------------------------------------------------------------
@dataclass
class MENDTrainReport:
    """How a training run went: steps done here and in total, wall and CPU seconds, the last
    logged losses, and (if evaluation requests were given) the held-out edit scores."""

    steps: int
    resumed_from: int
    seconds: float
    cpu_seconds: float
    threads: int
    final: dict[str, float]
    heldout: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def _state_folder(out: Path) -> Path:
    return out.parent / (out.stem + ".training")


def _step_batch(hp: MENDHyperParams, step: int, requests: Sequence[EditRequest], locality: Sequence[str]
                ) -> tuple[list[EditRequest], list[list[str]]]:
    """The requests and locality texts of ``step``: a function of (seed, step) only, so a resumed
    run sees exactly the data an uninterrupted one would."""
    rng = random.Random(hp.seed * 1_000_003 + step)
    reqs = [requests[rng.randrange(len(requests))] for _ in range(hp.batch_size)]
    loc = [[locality[rng.randrange(len(locality))] for _ in range(hp.n_loc)] if locality else []
           for _ in reqs]
    return reqs, loc


def _episode_loss(model: nn.Module, tokenizer: Any, net: MENDNetwork, sites: Sequence[EditSite],
                  modules: dict[str, nn.Module], reqs: Sequence[EditRequest], loc: Sequence[Sequence[str]],
                  hp: MENDHyperParams) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch of independent single-request edits, and what to log."""
    n = len(reqs)
    _, factors = token_factors(model, tokenizer, sites, [(r.text, r.target_new) for r in reqs], range(n))
    deltas = _transform(net, factors)

    items: list[tuple[str, str | None]] = []
    groups: list[int] = []
    is_edit: list[bool] = []
    for g, (r, texts) in enumerate(zip(reqs, loc)):
        for p in (r.text, *r.paraphrase_prompts):
            items.append((p, r.target_new))
            groups.append(g)
            is_edit.append(True)
        for p in (*r.neighborhood_prompts, *texts):
            items.append((p, None))
            groups.append(g)
            is_edit.append(False)
    rows = _encode(tokenizer, items, groups, input_device(model))
    with torch.no_grad():
        before = model(input_ids=rows.ids, attention_mask=rows.mask).logits.float()
    with EditedForward(modules, deltas, rows.groups):
        after = model(input_ids=rows.ids, attention_mask=rows.mask).logits.float()
    edit_rows = torch.tensor(is_edit, device=after.device)
    edit_nll = _group_nll(after, rows, n).mean()
    loc_mask = (rows.mask.to(after.device) > 0) & ~edit_rows[:, None]
    kl_tok = (torch.softmax(before, -1) * (torch.log_softmax(before, -1) - torch.log_softmax(after, -1))).sum(-1)
    loc_kl = (kl_tok * loc_mask).sum() / loc_mask.sum().clamp_min(1)
    loss = hp.c_edit * edit_nll + hp.c_loc * loc_kl
    with torch.no_grad():
        first = torch.tensor([is_edit[i] and (i == 0 or groups[i - 1] != groups[i]) for i in range(len(items))],
                             device=after.device)  # each request's own edit prompt
        tgt = rows.targets.to(after.device)
        ok = top1_all(after, tgt)
        edit_acc = float(ok[first].float().mean())
    logs = {"loss": loss.item(), "edit_nll": edit_nll.item(), "loc_kl": loc_kl.item(), "edit_acc": edit_acc}
    return loss, logs


def evaluate_heldout(model: nn.Module, tokenizer: Any, net: MENDNetwork, sites: Sequence[EditSite],
                     requests: Sequence[EditRequest]) -> dict[str, float]:
    """Mean edit scores (:class:`prune_fast.lm.evaluation.Evaluator`'s definitions) of single edits,
    each applied alone through hooks (no weight is written), with the network in eval mode."""
    was_training = net.training
    net.eval()
    modules = {s.param_name: resolve_module(model, s.module_name) for s in sites}
    ev = Evaluator(model, tokenizer)
    sums = {m: 0.0 for m in EDIT_METRICS}
    counts = {m: 0 for m in EDIT_METRICS}
    try:
        for req in requests:
            with torch.no_grad():
                _, factors = token_factors(model, tokenizer, sites, [(req.text, req.target_new)])
                deltas = _transform(net, factors)
            with EditedForward(modules, deltas):
                scores = ev.edit_scores([req])
            for m, v in scores.items():
                if v == v:  # not NaN
                    sums[m] += v
                    counts[m] += 1
    finally:
        net.train(was_training)
    return {m: sums[m] / counts[m] if counts[m] else float("nan") for m in EDIT_METRICS}


def train(model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], hp: MENDHyperParams | None = None, *,
          out: str | Path, locality: Sequence[str] = (), eval_requests: Sequence[EditRequest] = (),
          resume: bool = False, overwrite: bool = False, progress: bool = True, log_every: int = 25) -> MENDTrainReport:
    """Train a MEND editor for ``model`` on ``requests`` and write it to ``out`` (safetensors).

    Args:
        requests: training edits (their paraphrases join the edit loss, their neighbourhood
            prompts the locality loss).
        hp: settings (default: the preset of the model's architecture).
        out: the editor checkpoint to write; the training state (for ``resume``) lives in the
            folder ``<out stem>.training`` beside it and is written every ``hp.checkpoint_every`` steps.
        locality: unrelated texts for the KL term (``hp.n_loc`` per edit).
        eval_requests: held-out edits scored once at the end (reported, stored in the checkpoint).
        resume: continue from the training state (same hyper-parameters but ``steps``, same model).
        overwrite: start afresh even if ``out`` or a training state exists.

    The model's weights are never changed (``requires_grad`` flags are restored).  Returns a
    :class:`MENDTrainReport`; it is also stored in the checkpoint's metadata.
    """
    hp = hp or MENDHyperParams.for_model(model)
    hp.validate()
    requests = check_requests(requests)
    out = Path(out)
    state_dir = _state_folder(out)
    if not resume and not overwrite and (out.exists() or (state_dir / "state.json").exists()):
        raise EditorCheckpointError(f"{out} or its training state {state_dir} exists: pass resume=True to continue "
                                    "or overwrite=True to start again")
    sites = edited_sites(model, hp)
    model_fp = fingerprint(model, sites)
    modules = {s.param_name: resolve_module(model, s.module_name) for s in sites}
    net = build_network(hp, sites, seed=hp.seed).to(resolve_module(model, sites[0].module_name).weight.device)
    net.train()
    opt = torch.optim.Adam([{"params": net.mapper_parameters(), "lr": hp.lr},
                            {"params": net.step_parameters(), "lr": hp.lr_lr}])
    start_step, history = 0, []
    if resume:
        start_step, history = load_training_state(state_dir, net, opt, hp, model)
        logger.info("resuming MEND training at step %d of %d from %s", start_step, hp.steps, state_dir)
    params = net.mapper_parameters() + net.step_parameters()
    t0, c0 = time.perf_counter(), time.process_time()
    running: dict[str, float] = {}
    bar = tqdm(range(start_step, hp.steps), initial=start_step, total=hp.steps, desc="training MEND",
               disable=not progress)
    with frozen(model):
        for step in bar:
            reqs, loc = _step_batch(hp, step, requests, locality)
            loss, logs = _episode_loss(model, tokenizer, net, sites, modules, reqs, loc, hp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
            opt.step()
            running = logs if not running else {k: 0.9 * running[k] + 0.1 * v for k, v in logs.items()}
            if (step + 1) % log_every == 0 or step + 1 == hp.steps:
                history.append({"step": step + 1, **running})
                bar.set_postfix(loss=f"{running['loss']:.3f}", acc=f"{running['edit_acc']:.2f}",
                                kl=f"{running['loc_kl']:.3f}")
                logger.debug("MEND step %d: %s", step + 1, running)
            if (step + 1) % hp.checkpoint_every == 0 and step + 1 < hp.steps:
                save_training_state(state_dir, net, opt, step + 1, hp, model_fp, history)
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    save_training_state(state_dir, net, opt, hp.steps, hp, model_fp, history)
    heldout = evaluate_heldout(model, tokenizer, net, sites, eval_requests) if eval_requests else {}
    report = MENDTrainReport(steps=hp.steps, resumed_from=start_step, seconds=seconds, cpu_seconds=cpu_seconds,
                         threads=torch.get_num_threads(), final=dict(running), heldout=heldout, history=history)
    net.eval()
    save_editor(out, net, hp, model_fp, {k: v for k, v in report.__dict__.items() if k != "history"})
    logger.info("MEND trained for %d steps in %.1f s (%.1f s CPU): %s; held out: %s", hp.steps - start_step,
                seconds, cpu_seconds, running, heldout)
    return report
