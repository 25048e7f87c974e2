"""Running ``python -m prune_fast`` from the tests, and CounterFact records for its input files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: its prune_fast is the one under test


def run_cli(*args: str, timeout: float = 600, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``python -m prune_fast ARGS`` in a subprocess (in ``cwd``), with this checkout first on ``PYTHONPATH``."""
    env = os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "prune_fast", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def counterfact_records(requests) -> list[dict]:
    """``requests`` (``EditRequest``) as CounterFact JSON records, ``case_id`` = position."""
    return [{"case_id": i, "requested_rewrite": {"prompt": r.prompt, "subject": r.subject,
                                                 "target_new": {"str": r.target_new}, "target_true": {"str": r.target_true}},
             "paraphrase_prompts": list(r.paraphrase_prompts), "neighborhood_prompts": list(r.neighborhood_prompts)}
            for i, r in enumerate(requests)]
