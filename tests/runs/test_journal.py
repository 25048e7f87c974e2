"""Crash-safe runs: SIGKILL mid-way and resume equals an uninterrupted run; corrupt and mismatched journals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prune_fast.runs.journal import Journal, JournalError, JournalMismatchError, read_journal

WORKER = Path(__file__).with_name("journal_worker.py")
ROOT = Path(__file__).resolve().parents[2]
N = 14


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _worker(out: Path, protocol: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(N), protocol, *extra], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def _steps(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if '"type": "step"' in line)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("protocol", ["online", "at_end"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, protocol):
    straight = _worker(tmp_path / "straight", protocol)
    killed = _worker(tmp_path / "killed", protocol)
    journal = tmp_path / "killed" / "run" / "journal.jsonl"
    deadline = time.monotonic() + 240
    while _steps(journal) < 6 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "the run finished before it could be killed; " + killed.stderr.read()[-2000:]
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    done_before = _steps(journal)
    assert 6 <= done_before < N
    assert not (tmp_path / "killed" / "final.safetensors").exists()
    _finish(_worker(tmp_path / "killed", protocol, "--resume"))
    _finish(straight)

    state = read_journal(journal)
    assert [s["step"] for s in state.steps] == list(range(N)), "a step was lost or applied twice"
    assert state.finished and state.checkpoint_step >= 3
    a, b = load_file(str(tmp_path / "straight" / "final.safetensors")), load_file(str(tmp_path / "killed" / "final.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        err = float((a[name] - b[name]).abs().max() / a[name].abs().max())
        assert err < 1e-4, f"{name}: resumed run differs from the uninterrupted one by {err:.3g} (relative max)"


def _journal(tmp_path: Path) -> Path:
    j = Journal.create(tmp_path / "run", {"model": "m", "fn": "log1.2"})
    j._append({"type": "step", "record": {"step": 0}})
    j._append({"type": "step", "record": {"step": 1}})
    return j.path


def test_corrupt_line_is_named(tmp_path):
    path = _journal(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = '{"type": "step", "rec\n'
    path.write_text("".join(lines))
    with pytest.raises(JournalError, match=r"journal.jsonl:2: corrupt journal line"):
        Journal.resume(tmp_path / "run", {"model": "m", "fn": "log1.2"})


def test_truncated_last_line_is_named(tmp_path):
    path = _journal(tmp_path)
    with open(path, "a") as f:
        f.write('{"type": "step", "record": {"st')
    with pytest.raises(JournalError, match=r"journal.jsonl:4: the last line is truncated"):
        read_journal(path)


def test_resume_with_other_fn_or_model_is_refused(tmp_path):
    _journal(tmp_path)
    with pytest.raises(JournalMismatchError, match=r"fn: journal has 'log1.2', this run has 'ln'"):
        Journal.resume(tmp_path / "run", {"model": "m", "fn": "ln"})
    with pytest.raises(JournalMismatchError, match=r"model: journal has 'm', this run has 'other'"):
        Journal.resume(tmp_path / "run", {"model": "other", "fn": "log1.2"})
    journal, state = Journal.resume(tmp_path / "run", {"model": "m", "fn": "log1.2"})
    assert state.next_step == 2 and state.checkpoint_step == -1


@pytest.mark.parametrize("tag, ok", [("prune_fast.journal/1", True), ("prune_fast.runs.journal/1", True),
                                     ("prune_fast.journal/2", False), (None, False)], ids=str)
def test_header_format_tags(tmp_path, tag, ok):
    """The tag names the data format, not a module: journals written under either spelling of format 1
    resume (runs in flight across the layout change); any other tag is refused naming line 1."""
    path = _journal(tmp_path)
    assert '"format": "prune_fast.journal/1"' in path.read_text().splitlines()[0]
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"prune_fast.journal/1"', json.dumps(tag))
    path.write_text("".join(lines))
    if ok:
        assert Journal.resume(tmp_path / "run", {"model": "m", "fn": "log1.2"})[1].next_step == 2
    else:
        with pytest.raises(JournalError, match=r"journal.jsonl:1: not a prune_fast.journal/1 header"):
            Journal.resume(tmp_path / "run", {"model": "m", "fn": "log1.2"})


def test_create_refuses_an_existing_journal(tmp_path):
    _journal(tmp_path)
    with pytest.raises(JournalError, match="already exists"):
        Journal.create(tmp_path / "run", {"model": "m"})


@pytest.mark.parametrize("state_dtype", [None, torch.float64], ids=["default", "float64"])
def test_checkpoint_roundtrip_restores_tracker(tmp_path, rng, state_dtype):
    from prune_fast import SpectralTracker

    w = torch.randn(40, 24, generator=rng)
    tr = SpectralTracker(w, fn="log1.2", state_dtype=state_dtype)
    for _ in range(5):
        tr.add_(3 * torch.randn(40, 1, generator=rng), torch.randn(24, 1, generator=rng))
    j = Journal.create(tmp_path / "run", {"model": "m"})
    j.checkpoint(4, {"w": tr})
    step, states = j.load_checkpoint()
    w2 = torch.zeros_like(w)
    tr2 = SpectralTracker.from_state_dict(w2, states["w"])
    assert step == 4 and tr2.n_edits == 5 and tr2._acc == tr._acc
    # w took five incremental fp32 updates, w2 one from the saved state: they agree to rounding
    # (13 ulps of max|w| seen; a lost or doubled edit would be off by O(1)).
    tol = 64 * torch.finfo(w.dtype).eps * float(w.abs().max())
    assert torch.allclose(w2, w, atol=tol, rtol=0)
    assert not list((tmp_path / "run").glob("*.tmp"))
