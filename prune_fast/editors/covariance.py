"""Second moment of an edited module's inputs, ``C = E[k kᵀ]``, from a corpus the user gives.

Keys ``k`` are the inputs of the down projection at every non-padding token of the corpus texts;
``C`` is their mean outer product ``(1/N) Σ k kᵀ``, accumulated in float64 in batches (with a
tqdm bar) on the module's own device.  Results are cached

* in memory, per :class:`CovarianceStore` instance (never module-global), and
* on disk as safetensors under ``<cache_dir>/covariance/<model key>/<module>-n<samples>-<corpus>.safetensors``

keyed by model, module (hence layer), number of samples and a hash of the corpus.  The model key
is ``model_id`` when given, else a hash of ``config`` and of the first elements of the input
embedding (editing never touches embeddings, so the key survives edits).  Nothing is downloaded.

Example::

    store = CovarianceStore(corpus=["some text", ...], cache_dir="~/.cache/prune_fast")
    C = store.get(model, tokenizer, site, n_samples=1000)     # (d_in, d_in) float32, CPU
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .architectures import EditSite, resolve_module
from .errors import EditorError
from .probes import encode, input_device, pad_rows

__all__ = ["CovarianceStore", "read_corpus", "model_key"]

logger = logging.getLogger(__name__)


def read_corpus(sources: str | Path | Iterable[str | Path]) -> list[str]:
    """Non-empty lines of one or more text files (a ``Path`` or a path string that exists)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    texts: list[str] = []
    for src in sources:
        texts += [line.strip() for line in Path(src).read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts


def model_key(model: nn.Module) -> str:
    """A short, edit-stable fingerprint: the config and the first 4096 embedding entries."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        h.update(cfg.to_json_string(use_diff=False).encode() if hasattr(cfg, "to_json_string") else repr(cfg).encode())
    emb = model.get_input_embeddings().weight.detach().reshape(-1)[:4096]
    h.update(emb.float().cpu().numpy().tobytes())
    name = str(getattr(cfg, "_name_or_path", "") or type(model).__name__)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/").split("/")[-1])[:40] or "model"
    return f"{slug}-{h.hexdigest()[:12]}"


class CovarianceStore:
    """Computes and caches ``C = E[k kᵀ]`` per (model, module, sample count, corpus).

    Args:
        corpus: texts (strings) the statistics are computed on; see :func:`read_corpus` for files.
        cache_dir: root folder of the on-disk cache; ``None`` keeps results in memory only.
        model_id: overrides the automatic model fingerprint (e.g. a hub name plus revision).
        batch_size: texts per forward pass.
        progress: show a tqdm bar while computing.
    """

    def __init__(self, corpus: Sequence[str], cache_dir: str | Path | None = None, model_id: str | None = None,
                 batch_size: int = 64, progress: bool = True) -> None:
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
        if not texts:
            raise EditorError("the covariance corpus is empty")
        self.corpus = texts
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.model_id = model_id
        self.batch_size = batch_size
        self.progress = progress
        self._memory: dict[tuple[str, str, int, str], torch.Tensor] = {}

    def _corpus_hash(self, n: int) -> str:
        h = hashlib.sha256()
        for t in self.corpus[:n]:
            h.update(t.encode())
            h.update(b"\0")
        return h.hexdigest()[:12]

    def _path(self, key: tuple[str, str, int, str]) -> Path | None:
        if self.cache_dir is None:
            return None
        mkey, module, n, chash = key
        return self.cache_dir / "covariance" / mkey / f"{module}-n{n}-{chash}.safetensors"

    def get(self, model: nn.Module, tokenizer: Any, site: EditSite, n_samples: int, max_tokens: int = 128) -> torch.Tensor:
        """``C`` for ``site.module_name``: ``(d_in, d_in)`` float32 on the CPU.

        ``n_samples`` texts are used (all of the corpus if it is shorter; the key records the
        number actually used).
        """
        from safetensors.torch import load_file, save_file

        n = min(n_samples, len(self.corpus))
        key = (self.model_id or model_key(model), site.module_name, n, self._corpus_hash(n))
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.exists():
            cov = load_file(str(path))["mom2"]
            logger.info("loaded key covariance of %s from %s", site.module_name, path)
        else:
            cov = self._compute(model, tokenizer, site, self.corpus[:n], max_tokens)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                save_file({"mom2": cov.contiguous()}, str(tmp), metadata={"module": site.module_name, "n": str(n)})
                tmp.replace(path)
        if cov.shape != (site.d_in, site.d_in):
            raise EditorError(f"covariance for {site.module_name} has shape {tuple(cov.shape)}, expected "
                             f"({site.d_in}, {site.d_in}); delete {path}")
        self._memory[key] = cov
        return cov

    @torch.no_grad()
    def _compute(self, model: nn.Module, tokenizer: Any, site: EditSite, texts: list[str], max_tokens: int) -> torch.Tensor:
        from tqdm.auto import tqdm

        module = resolve_module(model, site.module_name)
        dev = module.weight.device
        acc = torch.zeros((site.d_in, site.d_in), dtype=torch.float64, device=dev)
        count = 0
        mask_holder: dict[str, torch.Tensor] = {}

        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            nonlocal count
            x = args[0]
            m = mask_holder["mask"].to(x.device).bool()
            k = x[m].to(torch.float64)
            acc.add_(k.T @ k)
            count += k.shape[0]

        pad = getattr(tokenizer, "pad_token_id", None) or 0
        handle = module.register_forward_pre_hook(hook)
        was_training = model.training
        model.eval()
        try:
            for start in tqdm(range(0, len(texts), self.batch_size), desc=f"covariance {site.module_name}",
                              disable=not self.progress):
                rows = [encode(tokenizer, t)[:max_tokens] for t in texts[start:start + self.batch_size]]
                rows = [r for r in rows if r]
                if not rows:
                    continue
                ids, mask = pad_rows(rows, pad)
                mask_holder["mask"] = mask
                dev_in = input_device(model)
                model(input_ids=ids.to(dev_in), attention_mask=mask.to(dev_in))
        finally:
            handle.remove()
            model.train(was_training)
        if count == 0:
            raise EditorError("the covariance corpus produced no tokens")
        logger.info("key covariance of %s from %d tokens of %d texts", site.module_name, count, len(texts))
        return (acc / count).float().cpu()
