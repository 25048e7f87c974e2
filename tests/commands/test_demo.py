"""``python -m prune_fast demo`` end to end (short), and ``--help``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prune_fast.runs.results import validate_results

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "prune_fast", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_demo_help_documents_options():
    out = _cli("demo", "--help")
    assert out.returncode == 0
    for opt in ("--model", "--out", "--n", "--fn", "--sweep", "--eval-every", "smollm2", "testbed"):
        assert opt in out.stdout


def test_demo_short_run_writes_results_and_plots(tmp_path):
    out = _cli("demo", "--model", "testbed", "--n", "10", "--eval-every", "5", "--out", str(tmp_path / "demo"), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "demo" / "results.json").read_text())
    validate_results(doc)
    assert list(doc["arms"]) == ["none", "online-ln", "at_end-ln"]
    for name in doc["arms"]:
        assert name in out.stdout
    assert "σmax(W)/σ*" in out.stdout
    for png in ("sigma_ratio.png", "metrics.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 1000
