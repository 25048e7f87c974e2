"""Where a trained test-bed artefact lives: shipped with the package, or in the cache.

The test-bed model and its MEND editor of the default settings are trained once and shipped in
``prune_fast/data/<kind>/<key>/``: fp32 training differs by CPU (oneDNN and BLAS choose kernels by
instruction set), so artefacts trained on the machine that uses them differ between an AVX2 EPYC
and an AVX-512 Xeon, and behaviour measured on one need not hold on the other. Anything else is
trained on first use into ``<cache>/<kind>/<key>/``. ``<key>`` hashes everything the artefact was
built from, so a changed setting finds neither a stale shipped nor a stale cached copy.
"""
from __future__ import annotations

from pathlib import Path

from ..cache import default_cache_dir

__all__ = ["SHIPPED_DIR", "artefact_folder"]

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data"


def artefact_folder(kind: str, key: str, cache_dir: str | Path | None, shipped: bool) -> Path:
    """``SHIPPED_DIR/kind/key`` when ``shipped`` and it holds a finished artefact (its ``report.json``),
    else ``cache_dir/kind/key`` (default :func:`default_cache_dir`), which may not exist yet."""
    folder = SHIPPED_DIR / kind / key
    if shipped and (folder / "report.json").exists():
        return folder
    return Path(cache_dir or default_cache_dir()).expanduser() / kind / key
