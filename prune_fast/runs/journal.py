"""Crash-safe sequential runs: an append-only journal, staged updates and tracker checkpoints.

A run folder holds::

    journal.jsonl               line 1: the header (what is being run); then one JSON line per
                                committed step ("step"), evaluation ("eval") and checkpoint
                                ("checkpoint"); each line is written with one write(), flushed and
                                fsynced before the next step starts
    updates/step-<i>.safetensors   the factored updates of step i, written (temp file, fsync,
                                rename) BEFORE they are applied; kept until a checkpoint covers them;
                                with a stateful editor (AlphaEdit) also what the step added to its
                                state (``@editor::<name>`` tensors)
    checkpoint.safetensors      every tracker's state_dict after step k (temp file, fsync, rename),
                                and the stateful editor's state_dict (``@editor::<name>``) in the
                                same file, so the two can never be of different steps

The "step" line is the commit point.  Resuming restores the last checkpoint, re-applies the staged
updates of the committed steps after it (no editor call: the very same factors; a stateful editor replays
its staged state updates), and continues
with the first uncommitted step — so no edit is lost or applied twice.  A staged update without its
"step" line (killed in between) is simply recomputed.

A line that is not valid JSON, or a last line without its newline (a torn write), raises
:class:`JournalError` naming the file and line; a resume whose header differs from the journal's
(model, editor, hyper-parameters, F, protocol, requests) raises :class:`JournalMismatchError`
naming each differing field.  Nothing is skipped silently.

Example::

    journal = Journal.create("run1", header)
    SequentialEditor(..., journal=journal).run(requests)
    # after a crash:
    journal, state = Journal.resume("run1", header)
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .._atomic import fsync_dir, save_safetensors
from ..errors import PruneFastError
from ..updates import FactoredUpdate

__all__ = ["Journal", "JournalError", "JournalMismatchError", "ResumeState", "JOURNAL_FORMAT"]

logger = logging.getLogger(__name__)

# The data format's tag, independent of where the code lives. Journals written while the tag briefly
# followed the module path ("prune_fast.runs.journal/1") hold the same format and resume as well.
JOURNAL_FORMAT = "prune_fast.journal/1"
_SAME_FORMAT = {JOURNAL_FORMAT, "prune_fast.runs.journal/1"}
_JOURNAL = "journal.jsonl"
_CHECKPOINT = "checkpoint.safetensors"
# Prefix of a stateful editor's tensors in staged updates and checkpoints; "@" is never part of a
# parameter name (dotted Python identifiers), so it cannot collide with a tracker's.
_EDITOR = "@editor::"


class JournalError(PruneFastError):
    """The journal cannot be read or continued (corrupt line, missing file, finished run...)."""


class JournalMismatchError(JournalError):
    """``--resume`` asked for a different model, editor, F, ... than the journal records."""


@dataclass
class ResumeState:
    """What a journal says about an interrupted run.

    ``steps``/``evals``: the committed records (as dicts); ``next_step``: the first step to run;
    ``checkpoint_step``: the last step covered by ``checkpoint.safetensors`` (-1: none);
    ``finished``: the final evaluation is already written.
    """

    header: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    next_step: int = 0
    checkpoint_step: int = -1
    finished: bool = False


class Journal:
    """The journal of one run folder; create with :meth:`create` or :meth:`resume`.

    Args (of both): ``folder``; ``header``: a JSON-able dict saying what is run (compared on
    resume); ``checkpoint_every``: write tracker checkpoints every this many steps.
    """

    def __init__(self, folder: Path, header: dict[str, Any], checkpoint_every: int) -> None:
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise JournalError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        self.folder, self.header, self.checkpoint_every = folder, header, checkpoint_every
        self.path = folder / _JOURNAL
        self.updates_dir = folder / "updates"

    # -- creating / resuming ---------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, header: dict[str, Any], checkpoint_every: int = 50) -> "Journal":
        """Start a new journal in ``folder``; refuses if one is already there (use :meth:`resume`)."""
        folder = Path(folder)
        j = cls(folder, dict(header), checkpoint_every)
        if j.path.exists():
            raise JournalError(f"{j.path} already exists: resume it (--resume) or choose another folder")
        folder.mkdir(parents=True, exist_ok=True)
        j.updates_dir.mkdir(exist_ok=True)
        j._append({"type": "header", "format": JOURNAL_FORMAT, **j.header})
        fsync_dir(folder)
        return j

    @classmethod
    def resume(cls, folder: str | Path, header: dict[str, Any], checkpoint_every: int = 50
               ) -> tuple["Journal", ResumeState]:
        """Open ``folder``'s journal for continuing; checks every line and the header."""
        folder = Path(folder)
        j = cls(folder, dict(header), checkpoint_every)
        state = read_journal(j.path)
        diffs = [f"{k}: journal has {state.header.get(k)!r}, this run has {v!r}"
                 for k, v in sorted(j.header.items()) if _canon(state.header.get(k)) != _canon(v)]
        diffs += [f"{k}: journal has {state.header[k]!r}, this run does not set it"
                  for k in sorted(set(state.header) - set(j.header) - {"type", "format"})]
        if diffs:
            raise JournalMismatchError(f"refusing to resume {j.path}: the run differs from the journal's — "
                                       + "; ".join(diffs))
        if state.finished:
            raise JournalError(f"{j.path}: this run already finished (its final evaluation is in the journal)")
        j.updates_dir.mkdir(exist_ok=True)
        return j, state

    # -- writing ---------------------------------------------------------------------------------
    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _update_path(self, step: int) -> Path:
        return self.updates_dir / f"step-{step:07d}.safetensors"

    def stage_updates(self, step: int, updates: list[Any], editor_state: dict[str, torch.Tensor] | None = None
                      ) -> None:
        """Write step ``step``'s factored updates (and what it adds to a stateful editor's state) before
        they are applied."""
        tensors, names = {}, []
        for k, upd in enumerate(updates):
            tensors[f"{k}.u"], tensors[f"{k}.v"] = upd.u, upd.v
            names.append({"param_name": upd.param_name, "layer": upd.layer})
        tensors |= {_EDITOR + name: t for name, t in (editor_state or {}).items()}
        save_safetensors(self._update_path(step), tensors, {"updates": json.dumps(names)})

    def load_editor_update(self, step: int) -> dict[str, torch.Tensor]:
        """What step ``step`` added to the stateful editor's state (empty if nothing was staged)."""
        path = self._update_path(step)
        if not path.exists():
            raise JournalError(f"{self.path}: step {step} is committed but its updates {path} are missing")
        return _editor_part(load_file(str(path)))

    def load_updates(self, step: int) -> list[Any]:
        """The staged updates of ``step`` (safetensors, no pickle)."""
        path = self._update_path(step)
        if not path.exists():
            raise JournalError(f"{self.path}: step {step} is committed but its updates {path} are missing")
        with safe_open(str(path), framework="pt") as f:
            names = json.loads(f.metadata()["updates"])
        tensors = load_file(str(path))
        return [FactoredUpdate(n["param_name"], tensors[f"{k}.u"], tensors[f"{k}.v"], n["layer"])
                for k, n in enumerate(names)]

    def commit_step(self, record: Any, point: Any, trackers: dict[str, Any], editor: Any = None) -> None:
        """Append the step line (the commit point), its evaluation, and a checkpoint when due
        (``editor``: a stateful editor, anything with ``state_dict()``, saved with the trackers)."""
        self._append({"type": "step", "record": asdict(record)})
        if point is not None:
            self.record_eval(point)
        if (record.step + 1) % self.checkpoint_every == 0:
            self.checkpoint(record.step, trackers, editor)

    def record_eval(self, point: Any, final: bool = False) -> None:
        self._append({"type": "eval", "final": final, "point": asdict(point)})

    def checkpoint(self, step: int, trackers: dict[str, Any], editor: Any = None) -> None:
        """Save every tracker's state (and the stateful editor's) after ``step``, then drop the staged
        updates it covers."""
        tensors, metas = {}, {}
        for name, tr in trackers.items():
            state = tr.state_dict()
            metas[name] = state.pop("meta")
            for key, t in state.items():
                tensors[f"{name}::{key}"] = t
        if editor is not None:
            tensors |= {_EDITOR + key: t for key, t in editor.state_dict().items()}
        save_safetensors(self.folder / _CHECKPOINT, tensors, {"step": str(step), "trackers": json.dumps(metas)})
        self._append({"type": "checkpoint", "step": step, "params": sorted(trackers)})
        for path in self.updates_dir.glob("step-*.safetensors"):
            if int(path.stem.split("-")[1]) <= step:
                path.unlink(missing_ok=True)

    def load_checkpoint(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """``(step, {param: state_dict})`` from ``checkpoint.safetensors`` (safetensors only)."""
        path = self.folder / _CHECKPOINT
        if not path.exists():
            raise JournalError(f"{self.path} records a checkpoint but {path} is missing")
        states: dict[str, dict[str, Any]] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            metas = json.loads(meta["trackers"])
            for key in f.keys():
                if key.startswith(_EDITOR):
                    continue
                name, tname = key.split("::", 1)
                states.setdefault(name, {})[tname] = f.get_tensor(key)
        for name, m in metas.items():
            states.setdefault(name, {})["meta"] = m
        return int(meta["step"]), states


    def load_editor_checkpoint(self) -> dict[str, torch.Tensor]:
        """The stateful editor's state from ``checkpoint.safetensors`` (empty if none was saved)."""
        path = self.folder / _CHECKPOINT
        if not path.exists():
            raise JournalError(f"{self.path} records a checkpoint but {path} is missing")
        return _editor_part(load_file(str(path)))


def _editor_part(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key[len(_EDITOR):]: t for key, t in tensors.items() if key.startswith(_EDITOR)}


def _canon(value: Any) -> Any:
    """Compare header values as JSON would store them (tuples are lists)."""
    return json.loads(json.dumps(value, sort_keys=True))


def read_journal(path: str | Path) -> ResumeState:
    """Parse and check a journal; :class:`JournalError` names the first bad line."""
    path = Path(path)
    if not path.exists():
        raise JournalError(f"no journal at {path}: nothing to resume")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        raise JournalError(f"{path}:{len(lines)}: the last line is truncated (no newline: the run was killed while "
                           "writing it); delete that line to resume from the step before it")
    state: ResumeState | None = None
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict) or "type" not in rec:
                raise ValueError("not an object with a 'type'")
        except (UnicodeDecodeError, ValueError) as e:
            raise JournalError(f"{path}:{i}: corrupt journal line ({e}): {line[:80]!r}") from e
        kind = rec["type"]
        if i == 1:
            if kind != "header" or rec.get("format") not in _SAME_FORMAT:
                raise JournalError(f"{path}:1: not a {JOURNAL_FORMAT} header")
            state = ResumeState(header={k: v for k, v in rec.items() if k not in ("type", "format")})
            continue
        assert state is not None
        if kind == "step":
            step = rec["record"]["step"]
            if step != state.next_step:
                raise JournalError(f"{path}:{i}: step {step} out of order (expected {state.next_step})")
            state.steps.append(rec["record"])
            state.next_step = step + 1
        elif kind == "eval":
            state.evals.append(rec["point"])
            state.finished = state.finished or bool(rec.get("final"))
        elif kind == "checkpoint":
            state.checkpoint_step = int(rec["step"])
        else:
            raise JournalError(f"{path}:{i}: unknown journal line type {kind!r}")
    if state is None:
        raise JournalError(f"{path}: empty journal")
    return state
