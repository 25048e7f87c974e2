"""The package's one on-disk cache root, shared by the test bed, the real model and the key statistics."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$PRUNE_FAST_CACHE`` if set, else ``~/.cache/prune_fast`` (read at each call, so tests can point it elsewhere)."""
    env = os.environ.get("PRUNE_FAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prune_fast"
