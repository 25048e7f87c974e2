"""The one atomic writer: temp file beside the target, fsync, rename, fsync the folder.

Every file the library writes that a crash must not leave half-written goes through here (the run
journal and its checkpoints, results.json, the covariance cache, MEND's editor checkpoint, cached
model folders).  A reader then sees the old content or the new, never a mix: ``os.replace`` is
atomic on POSIX within one folder, and the folder's own fsync makes the rename itself durable.

Example::

    write_json(path, {"steps": 3})
    save_safetensors(path, {"w": w}, {"format": "x/1"})
    with atomic_folder(cache / key) as tmp:   # build in tmp; renamed onto cache/key on success
        (tmp / "a.txt").write_text("...")
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["fsync_dir", "atomic_write", "write_text", "write_json", "save_safetensors", "atomic_folder"]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable; a file system that cannot fsync a folder is tolerated."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary path beside ``path``, then fsync it and rename it onto ``path``.

    The parent folder is created if needed; on any error the temporary file is removed and the
    target is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), all or nothing."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, doc: Any, *, indent: int | None = 1) -> Path:
    """``doc`` as strict JSON (NaN refused), all or nothing."""
    return write_text(path, json.dumps(doc, indent=indent, allow_nan=False))


def save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """``tensors`` (moved to the CPU, made contiguous) as a safetensors file, all or nothing."""
    data = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=dict(metadata)))


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; on success it is renamed to ``folder``.

    A crash leaves no half-built entry.  If another process published ``folder`` first, theirs is
    kept (a cache entry: same key, same content).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
    try:
        yield tmp
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
