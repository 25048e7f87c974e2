"""CMakeLists.txt: configure and build into a temporary folder, as a user would (no GPU, no nvcc).

The build runs ``python -m prune_fast.kernels.aot`` for one target (sm_90) and must leave a cubin
for every compiled variant and a report naming every kernel of the package. Compile results are
shared with test_aot.py through the AOT cache, so after that test this build takes seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_cases import requires_triton

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 900
CMAKE = shutil.which("cmake")


def _cmake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the build compiles real kernels
    return subprocess.run([CMAKE, *args], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=cwd, env=env)


def _configure(build: Path, archs: str) -> subprocess.CompletedProcess:
    return _cmake("-S", str(ROOT), "-B", str(build), f"-DPRUNE_FAST_CUDA_ARCHITECTURES={archs}",
                  f"-DPython3_EXECUTABLE={sys.executable}", f"-DPRUNE_FAST_AOT_JOBS={min(2, os.cpu_count() or 1)}",
                  cwd=ROOT)


@requires_triton
@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH (pip install cmake, in the test extra)")
def test_cmake_builds_every_kernel(tmp_path):
    from prune_fast.kernels import aot

    build = tmp_path / "build"
    proc = _configure(build, "90")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = _cmake("--build", str(build), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    out = build / "kernels"
    report = (out / "aot_report.txt").read_text()
    assert "within limits, 0 not" in report and "PROBLEM" not in report
    doc = json.loads((out / "aot.json").read_text())
    assert doc["targets"] == [90] and not doc["uncovered"]
    results = [aot.CompileResult(**r) for r in doc["triton"]]
    kernels = {name.split(":")[1] for name in aot.package_kernels()}
    assert {r.kernel.split(":")[1] for r in results} == kernels
    for kernel in kernels:  # every kernel in the summary, with its sm_90 row
        assert any(line.startswith(kernel) and "sm_90" in line for line in report.splitlines()), kernel
    # One cubin per variant, each an ELF file where aot.json says.
    assert len(doc["cubins"]) == len(results) == len(list(out.glob("sm_90/*.cubin")))
    assert all(r.ok and (out / doc["cubins"][r.key]).read_bytes()[:4] == b"\x7fELF" for r in results)
    # Up to date: a second build does nothing.
    again = _cmake("--build", str(build), cwd=ROOT)
    assert again.returncode == 0 and "Compiling prune_fast" not in again.stdout


@requires_triton
@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH (pip install cmake, in the test extra)")
def test_cmake_build_fails_on_an_unknown_architecture(tmp_path):
    build = tmp_path / "build"
    assert _configure(build, "75").returncode == 0  # the target list is checked by the build step
    proc = _cmake("--build", str(build), cwd=ROOT)
    assert proc.returncode != 0 and "unknown target '75'" in proc.stdout + proc.stderr
    assert not (build / "kernels" / "aot.stamp").exists()  # so the next build tries again


@requires_triton
@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH (pip install cmake, in the test extra)")
def test_cmake_build_fails_when_a_kernel_breaks_the_shared_memory_limit(tmp_path):
    # A copy of the tree whose sm_90 limit is 1 KB: every kernel now breaks it (the cached compile
    # results are re-checked against the limits, so this costs no compile after the test above).
    tree = tmp_path / "src"
    shutil.copytree(ROOT / "prune_fast", tree / "prune_fast", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "CMakeLists.txt", tree)
    settings = tree / "prune_fast" / "kernels" / "settings.py"
    text = settings.read_text()
    assert text.count("90: 227 * 1024") == 1
    settings.write_text(text.replace("90: 227 * 1024", "90: 1024"))
    build = tmp_path / "build"
    proc = _cmake("-S", str(tree), "-B", str(build), "-DPRUNE_FAST_CUDA_ARCHITECTURES=90",
                  f"-DPython3_EXECUTABLE={sys.executable}", f"-DPRUNE_FAST_AOT_JOBS={min(2, os.cpu_count() or 1)}",
                  cwd=tree)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = _cmake("--build", str(build), cwd=tree)
    assert proc.returncode != 0
    assert "shared memory" in proc.stdout and "> 1024 B (sm_90)" in proc.stdout, proc.stdout[-3000:]
    report = (build / "kernels" / "aot_report.txt").read_text()  # written even when the check fails
    assert "PROBLEM" in report and "within limits, 0 not" not in report
    assert not (build / "kernels" / "aot.stamp").exists()
