"""Second moment of edited modules' inputs, ``C = E[k kᵀ]``, from a corpus the user gives.

Keys ``k`` are the inputs of a down projection at every non-padding token of the corpus texts;
``C`` is their mean outer product ``(1/N) Σ k kᵀ``.  One pass serves every requested module:

* the forward stops right after the highest requested module has seen its input (a pre-hook
  raises), so the layers above it and the LM head never run — for ROME at layer 5 of a 30-layer
  model that is most of the work;
* texts are tokenized once, sorted by length and packed into batches under a token budget, so
  almost nothing is computed on padding (padded tokens are masked out of the sums anyway);
* everything runs under ``torch.inference_mode``; each batch's ``Kᵀ K`` is an fp32 product added
  into a float64 sum (the sum over many batches is where fp32 would lose digits);
* a tqdm bar shows tokens/s; with a cache folder the partial sums are saved every
  ``checkpoint_s`` seconds, so a killed pass restarts from its last saved chunk;
* optionally sharded over ``torch.distributed`` ranks (each takes every ``world``-th batch, the
  sums are all-reduced; see :mod:`prune_fast.commands.stats`).

Results are cached in memory (per :class:`CovarianceStore`, never module-global) and on disk as
safetensors under ``<cache_dir>/covariance/<model key>/<module>-n<samples>-t<max tokens>-<corpus>.safetensors``,
keyed by content: :func:`model_key` (config without its path, plus a fingerprint of weights
editing never touches), module, samples used, token cap and a hash of the texts.  Files are written
atomically (a unique temporary file, then ``os.replace``), and a lock file makes a second run that
needs the same statistics wait for the first and read its result instead of computing them again.
:meth:`CovarianceStore.factor` returns the Cholesky factor of ``C + ridge`` once per module, for
every edit to reuse.

Example::

    store = CovarianceStore(corpus=read_corpus("wiki.txt"), cache_dir=default_cache_dir())
    C = store.get(model, tokenizer, site, n_samples=1000)                  # (d_in, d_in) float32, CPU
    Cs = store.get_many(model, tokenizer, sites, n_samples=1000)           # one pass, every layer
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import save_safetensors
from .architectures import EditSite, resolve_module
from ..errors import EditorError
from ..lm.probes import StopForward, encode, input_device, pack_batches, pad_rows

__all__ = ["CovarianceStore", "read_corpus", "model_key", "second_moments", "MomentSums", "cholesky_of"]

logger = logging.getLogger(__name__)

# Config fields that say where or with what a model was saved, not what it computes.
_VOLATILE_CONFIG = ("_name_or_path", "_commit_hash", "transformers_version", "_model_name_or_path")
_FINGERPRINT_ELEMENTS = 4096


def read_corpus(sources: str | Path | Iterable[str | Path]) -> list[str]:
    """Non-empty lines of one or more text files (a ``Path`` or a path string that exists)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    texts: list[str] = []
    for src in sources:
        texts += [line.strip() for line in Path(src).read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts


def _config_json(cfg: Any) -> str:
    if cfg is None:
        return ""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    for k in _VOLATILE_CONFIG:
        d.pop(k, None)
    return json.dumps(d, sort_keys=True, default=str)


def _edit_stable_params(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters no editor writes: embeddings and everything outside the MLPs (ROME, MEMIT,
    AlphaEdit and MEND edit MLP matrices), so the key of a model survives its own edits."""
    emb = model.get_input_embeddings()
    if emb is not None:
        yield "input_embeddings", emb.weight
    for name, p in model.named_parameters():
        if "mlp" not in name and p is not getattr(emb, "weight", None):
            yield name, p


def model_key(model: nn.Module) -> str:
    """A short, edit-stable content fingerprint of ``model``: ``<model_type>-<hash>``.

    The hash covers the config (without ``_name_or_path`` and other save-location fields, so the
    key does not depend on how the folder was spelled) and, for every parameter outside the MLPs,
    its name, shape, dtype and ``4096`` elements sampled across the whole tensor.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(_config_json(cfg).encode())
    with torch.no_grad():
        for name, p in _edit_stable_params(model):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // _FINGERPRINT_ELEMENTS)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(flat[::step][:_FINGERPRINT_ELEMENTS].float().cpu().numpy().tobytes())
    kind = str(getattr(cfg, "model_type", "") or type(model).__name__)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", kind)[:40] or "model"
    return f"{slug}-{h.hexdigest()[:16]}"


# -- the pass ------------------------------------------------------------------------------------

@dataclass
class MomentSums:
    """Float64 sums ``Σ k kᵀ`` per module name, the token count, and the next batch to process."""

    sums: dict[str, torch.Tensor]
    count: int
    next_batch: int = 0

    def means(self) -> dict[str, torch.Tensor]:
        """``C = Σ k kᵀ / N`` per module, float32 on the CPU."""
        if self.count == 0:
            raise EditorError("the covariance corpus produced no tokens")
        return {name: (s / self.count).float().cpu() for name, s in self.sums.items()}


def second_moments(model: nn.Module, tokenizer: Any, sites: Sequence[EditSite], texts: Sequence[str], *, max_tokens: int = 128, token_budget: int = 8192, max_rows: int = 64,
                   progress: bool = True, checkpoint: Path | None = None, checkpoint_s: float = 60.0,
                   rank: int = 0, world: int = 1, process_group: Any = None) -> MomentSums:
    """``Σ k kᵀ`` (float64) of each module's input over the non-padding tokens of ``texts``.

    Args:
        sites: the modules whose inputs are the keys; the forward stops at the highest layer's.
        texts: the corpus; each is cut to ``max_tokens`` tokens.
        token_budget, max_rows: batch packing (see :func:`pack_batches`).
        checkpoint: file for partial sums (resumed from when it exists and matches this pass).
        rank, world: this process's shard: batches ``rank, rank + world, ...``; with ``world > 1``
            the sums are all-reduced over ``process_group`` (``torch.distributed``) at the end.
    """
    from tqdm.auto import tqdm

    if not sites:
        raise EditorError("no modules to compute key statistics for")
    modules = {s.module_name: resolve_module(model, s.module_name) for s in sites}
    rows_all = [encode(tokenizer, t)[:max_tokens] for t in texts]
    batches = pack_batches([len(r) for r in rows_all], token_budget, max_rows)[rank::world]
    top = max(sites, key=lambda s: s.layer)
    last = top.module_name
    sums = {s.module_name: torch.zeros((s.d_in, s.d_in), dtype=torch.float64, device=modules[s.module_name].weight.device)
            for s in sites}
    state = MomentSums(sums=sums, count=0)
    tag = _checkpoint_tag(list(modules), texts, max_tokens, token_budget, max_rows, rank, world)
    if checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, tag, state)
    mask_holder: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def fn(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            k = x[mask_holder["mask"].to(x.device)].float()          # (tokens, d_in), padding dropped
            state.sums[name].add_((k.T @ k).to(torch.float64))       # fp32 product, float64 sum
            if name == last:
                raise StopForward  # nothing above the highest needed module has to run
        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    dev_in = input_device(model)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    total_tokens = sum(len(rows_all[i]) for b in batches for i in b)
    done_tokens = sum(len(rows_all[i]) for b in batches[:state.next_batch] for i in b)
    bar = tqdm(total=total_tokens, initial=done_tokens, unit="tok", unit_scale=True, disable=not progress,
               desc=f"key statistics {len(modules)} module(s), layers ≤ {top.layer}")
    saved_at = time.monotonic()
    try:
        with torch.inference_mode():
            for b in range(state.next_batch, len(batches)):
                rows = [rows_all[i] for i in batches[b]]
                ids, mask = pad_rows(rows, pad)
                mask_holder["mask"] = mask.bool()
                try:
                    model(input_ids=ids.to(dev_in), attention_mask=mask.to(dev_in))
                except StopForward:
                    pass
                n_tok = int(mask.sum())
                state.count += n_tok
                state.next_batch = b + 1
                bar.update(n_tok)
                if checkpoint is not None and time.monotonic() - saved_at >= checkpoint_s and b + 1 < len(batches):
                    _save_checkpoint(checkpoint, tag, state)
                    saved_at = time.monotonic()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        bar.close()
    if world > 1:
        import torch.distributed as dist  # optional: only sharded passes need it

        count = torch.tensor([float(state.count)], dtype=torch.float64, device=modules[last].weight.device)
        dist.all_reduce(count, group=process_group)
        for s in state.sums.values():
            dist.all_reduce(s, group=process_group)
        state.count = int(count.item())
    return state


def _checkpoint_tag(names: list[str], texts: Sequence[str], *settings: Any) -> str:
    h = hashlib.sha256(json.dumps([sorted(names), list(settings)]).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _save_checkpoint(path: Path, tag: str, state: MomentSums) -> None:
    meta = {"tag": tag, "count": str(state.count), "next_batch": str(state.next_batch)}
    save_safetensors(path, {f"sum.{k}": v for k, v in state.sums.items()}, meta)
    logger.info("saved partial key statistics after batch %d to %s", state.next_batch, path)


def _load_checkpoint(path: Path, tag: str, fresh: MomentSums) -> MomentSums:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("tag") != tag:
                logger.warning("ignoring %s: it is the partial pass of other settings", path)
                return fresh
            sums = {k: f.get_tensor(f"sum.{k}").to(v.device) for k, v in fresh.sums.items()}
    except (OSError, KeyError, ValueError, RuntimeError) as exc:  # unreadable: start over
        logger.warning("ignoring unreadable partial statistics %s: %s", path, exc)
        return fresh
    state = MomentSums(sums=sums, count=int(meta["count"]), next_batch=int(meta["next_batch"]))
    logger.info("resuming key statistics from batch %d (%d tokens) of %s", state.next_batch, state.count, path)
    return state


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (POSIX); elsewhere no lock (writes stay atomic anyway)."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- the store -----------------------------------------------------------------------------------

class CovarianceStore:
    """Computes and caches ``C = E[k kᵀ]`` per (model, module, sample count, token cap, corpus).

    Args:
        corpus: texts (strings) the statistics are computed on; see :func:`read_corpus` for files.
        cache_dir: root folder of the on-disk cache (:func:`default_cache_dir` shares it between
            runs); ``None`` keeps results in memory only.
        model_id: overrides the automatic model fingerprint (e.g. a hub name plus revision).
        batch_size: most texts per forward pass.
        token_budget: most ``rows × longest`` tokens per forward pass.
        progress: show a tqdm bar (tokens/s) while computing.
        checkpoint_s: save partial sums this often (seconds) while computing, with a cache folder.
    """

    def __init__(self, corpus: Sequence[str], cache_dir: str | Path | None = None, model_id: str | None = None,
                 batch_size: int = 64, progress: bool = True, token_budget: int = 8192,
                 checkpoint_s: float = 60.0) -> None:
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
        if not texts:
            raise EditorError("the covariance corpus is empty")
        for name, value in (("batch_size", batch_size), ("token_budget", token_budget)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EditorError(f"{name} must be a positive int, got {value!r}")
        self.corpus = texts
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.model_id = model_id
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.progress = progress
        self.checkpoint_s = checkpoint_s
        # one store may serve editors running in several threads (the demo's arms): one computes, the others wait
        self._lock = threading.RLock()
        self._memory: dict[tuple[str, str, int, int, str], torch.Tensor] = {}
        self._factors: dict[tuple[Any, ...], torch.Tensor] = {}
        self._model_keys: dict[int, tuple[Any, str]] = {}

    def _corpus_hash(self, n: int) -> str:
        h = hashlib.sha256()
        for t in self.corpus[:n]:
            h.update(t.encode())
            h.update(b"\0")
        return h.hexdigest()[:12]

    def _model_key(self, model: nn.Module) -> str:
        if self.model_id:
            return self.model_id
        # one fingerprint per model object and run: the fingerprint ignores MLP weights, which are
        # what edits change, so it cannot go stale while this store lives
        hit = self._model_keys.get(id(model))
        if hit is None or hit[0]() is not model:
            import weakref

            hit = (weakref.ref(model), model_key(model))
            self._model_keys[id(model)] = hit
        return hit[1]

    def key(self, model: nn.Module, site: EditSite, n_samples: int, max_tokens: int = 128
            ) -> tuple[str, str, int, int, str]:
        """What ``C`` of ``site`` is cached under: (model key, module, samples used, token cap, corpus hash)."""
        n = min(n_samples, len(self.corpus))
        return (self._model_key(model), site.module_name, n, max_tokens, self._corpus_hash(n))

    def path(self, key: tuple[str, str, int, int, str]) -> Path | None:
        """The cache file of ``key`` (``None`` without a cache folder)."""
        if self.cache_dir is None:
            return None
        mkey, module, n, max_tokens, chash = key
        return self.cache_dir / "covariance" / mkey / f"{module}-n{n}-t{max_tokens}-{chash}.safetensors"

    def get(self, model: nn.Module, tokenizer: Any, site: EditSite, n_samples: int, max_tokens: int = 128) -> torch.Tensor:
        """``C`` for ``site.module_name``: ``(d_in, d_in)`` float32 on the CPU.

        ``n_samples`` texts are used (all of the corpus if it is shorter; the key records the
        number actually used).
        """
        return self.get_many(model, tokenizer, [site], n_samples, max_tokens)[site.module_name]

    def get_many(self, model: nn.Module, tokenizer: Any, sites: Sequence[EditSite], n_samples: int,
                 max_tokens: int = 128, *, distributed: Any = None) -> dict[str, torch.Tensor]:
        """``C`` for every site (by module name); those not cached come from one pass over the corpus.

        ``distributed``: a ``torch.distributed`` process group (or ``True`` for the default one) to
        shard the pass over: every rank calls this, takes every ``world``-th batch, the sums are
        all-reduced and rank 0 writes the cache (what is missing is decided by rank 0).
        """
        with self._lock:
            keys = {s.module_name: self.key(model, s, n_samples, max_tokens) for s in sites}
            if distributed is not None and distributed is not False:
                return self._get_sharded(model, tokenizer, sites, keys, max_tokens,
                                         None if distributed is True else distributed)
            return self._get_local(model, tokenizer, sites, keys, max_tokens)

    def _get_local(self, model: nn.Module, tokenizer: Any, sites: Sequence[EditSite],
                   keys: dict[str, tuple[str, str, int, int, str]], max_tokens: int) -> dict[str, torch.Tensor]:
        out = {name: self._memory[k] for name, k in keys.items() if k in self._memory}
        missing = [s for s in sites if s.module_name not in out]
        if missing:
            lock = None if self.cache_dir is None else \
                self.cache_dir / "covariance" / keys[missing[0].module_name][0] / ".lock"
            with _file_lock(lock) if lock is not None else contextlib.nullcontext():
                todo = []
                for s in missing:
                    cov = self._load(keys[s.module_name])
                    if cov is None:
                        todo.append(s)
                    else:
                        out[s.module_name] = cov
                if todo:
                    out.update(self._compute(model, tokenizer, todo, keys, max_tokens))
        for s in sites:
            cov = out[s.module_name]
            if cov.shape != (s.d_in, s.d_in):
                raise EditorError(f"covariance for {s.module_name} has shape {tuple(cov.shape)}, expected "
                                  f"({s.d_in}, {s.d_in}); delete {self.path(keys[s.module_name])}")
            self._memory[keys[s.module_name]] = cov
        return {s.module_name: out[s.module_name] for s in sites}

    def _get_sharded(self, model: nn.Module, tokenizer: Any, sites: Sequence[EditSite],
                     keys: dict[str, tuple[str, str, int, int, str]], max_tokens: int, group: Any
                     ) -> dict[str, torch.Tensor]:
        import torch.distributed as dist  # optional: only sharded passes need it

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        decision: list[Any] = [None]
        if rank == 0:
            decision[0] = [s.module_name for s in sites if self._load(keys[s.module_name]) is None]
        dist.broadcast_object_list(decision, src=0, group=group)
        todo = [s for s in sites if s.module_name in decision[0]]
        out: dict[str, torch.Tensor] = {}
        if todo:
            out.update(self._compute(model, tokenizer, todo, keys, max_tokens, rank=rank, world=world, group=group))
        dist.barrier(group=group)  # rank 0 has written the files every rank may now read
        for s in sites:
            if s.module_name not in out:
                cov = self._load(keys[s.module_name])
                if cov is None:
                    raise EditorError(f"covariance of {s.module_name} missing from {self.path(keys[s.module_name])} "
                                      "after the sharded pass: is the cache folder shared by every rank?")
                out[s.module_name] = cov
            self._memory[keys[s.module_name]] = out[s.module_name]
        return {s.module_name: out[s.module_name] for s in sites}

    def factor(self, model: nn.Module, tokenizer: Any, site: EditSite, n_samples: int, max_tokens: int = 128,
               ridge: float = 0.0) -> torch.Tensor:
        """Lower Cholesky factor ``L`` of ``C + ridge · mean(diag C) · I`` (float64, CPU), computed once
        per (module, statistics, ridge) and reused by every edit: ``C⁻¹ k = cholesky_solve(k, L)``."""
        with self._lock:
            key = (*self.key(model, site, n_samples, max_tokens), float(ridge))
            hit = self._factors.get(key)
            if hit is None:
                cov = self.get(model, tokenizer, site, n_samples, max_tokens).double()
                hit = cholesky_of(cov, ridge, site.module_name)
                self._factors[key] = hit
            return hit

    def _load(self, key: tuple[str, str, int, int, str]) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self.path(key)
        if path is None or not path.exists():
            return None
        cov = load_file(str(path))["mom2"]
        logger.info("loaded key covariance of %s from %s", key[1], path)
        return cov

    def _compute(self, model: nn.Module, tokenizer: Any, sites: Sequence[EditSite],
                 keys: dict[str, tuple[str, str, int, int, str]], max_tokens: int, *, rank: int = 0, world: int = 1,
                 group: Any = None) -> dict[str, torch.Tensor]:
        n = keys[sites[0].module_name][2]
        modules = [s.module_name for s in sites]
        partial = None
        if self.cache_dir is not None:
            k0 = keys[sites[0].module_name]
            names = hashlib.sha256("|".join(sorted(modules)).encode()).hexdigest()[:8]
            shard = f"-r{rank}of{world}" if world > 1 else ""
            partial = self.cache_dir / "covariance" / k0[0] / \
                f"partial-{names}-n{n}-t{max_tokens}-{k0[4]}{shard}.safetensors"
        start = time.perf_counter()
        state = second_moments(model, tokenizer, sites, self.corpus[:n], max_tokens=max_tokens,
                               token_budget=self.token_budget, max_rows=self.batch_size, progress=self.progress,
                               checkpoint=partial, checkpoint_s=self.checkpoint_s, rank=rank, world=world,
                               process_group=group)
        covs = state.means()
        elapsed = time.perf_counter() - start
        logger.info("key covariance of %s from %d tokens of %d texts in %.1f s (%.0f tokens/s)",
                    ", ".join(modules), state.count, n, elapsed, state.count / max(elapsed, 1e-9))
        for s in sites:
            path = self.path(keys[s.module_name])
            if path is not None and rank == 0:
                save_safetensors(path, {"mom2": covs[s.module_name]},
                             {"module": s.module_name, "n": str(n), "tokens": str(state.count)})
        if partial is not None:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return covs


def cholesky_of(cov: torch.Tensor, ridge: float, name: str = "C") -> torch.Tensor:
    """Lower Cholesky factor of ``cov + ridge · mean(diag cov) · I`` in float64.

    A singular ``C`` (fewer tokens than dimensions, dead units) gets the smallest diagonal shift
    that makes it positive definite, logged, instead of an error deep inside a solve.
    """
    c = cov.double()
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    if ridge > 0:
        c = c + ridge * c.diagonal().mean() * eye
    factor, info = torch.linalg.cholesky_ex(c)
    shift = float(c.diagonal().mean()) * 1e-10
    while int(info) != 0:
        logger.warning("%s is not positive definite; adding %.3g to its diagonal", name, shift)
        factor, info = torch.linalg.cholesky_ex(c + shift * eye)
        shift *= 10.0
    return factor
