"""bench/gpu_check.py --dry-run: its whole code path on tiny CPU shapes, so it cannot crash on a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kernel_cases import requires_triton

ROOT = Path(__file__).resolve().parents[2]


@requires_triton
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"] and all(c["ok"] for c in report["checks"])
    kernels = {c["kernel"] for c in report["checks"]}
    assert {"apply_correction_", "write_restrained_", "difference_matmul", "difference_matmul(T)",
            "skinny_matmul(gram)", "cholesky_qr2 (X = QR)", "cholesky_qr2 (QᵀQ = I)"} <= kernels
    methods = {(t["what"], t["method"], t["dtype"]) for t in report["timings"]}
    for dtype in ("float32", "bfloat16"):
        for what, method in (("restrain_", "prune_fast"), ("restrain_", "torch.linalg.svd"),
                             ("restrain_", "torch.svd_lowrank(q=16,niter=2)"),
                             ("tracker.add_ (rank-1 edit)", "prune_fast")):
            assert (what, method, dtype) in methods
    assert (tmp_path / "gpu_check.log").read_text().startswith("# gpu_check")
    # Measured copy bandwidth is the floor's ceiling.
    assert report["bandwidth"]["gbs"] > 0 and report["floor_gbs"] == report["bandwidth"]["gbs"]
    assert len(report["targets"]) == 3 and all("target" in t for t in report["targets"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# gpu_check") and "| restrain_ |" in md and "## Targets" in md
