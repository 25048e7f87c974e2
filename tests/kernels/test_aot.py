"""prune_fast.kernels.aot: every kernel compiled for sm_80 and sm_90 without a GPU, within the limits.

The full check (``test_every_kernel_compiles_within_limits``) runs the CLI exactly as CI users
would; compile results and cubins are cached (``~/.cache/prune_fast/aot``, keyed by Triton's
compile key), so only the first run on a machine pays for the 360 compiles (about 70 s per target
with 2 processes here).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings as hyp_settings, strategies as st

from prune_fast.kernels import settings
from prune_fast.kernels.dispatch import recording_launches
from prune_fast.kernels.settings import launch_config, launch_space

triton = pytest.importorskip("triton")
from prune_fast.kernels import aot  # noqa: E402 - needs triton
from prune_fast.kernels.aot import launches as aot_launches  # noqa: E402
from prune_fast.kernels.skinny_matmul import _skinny_matmul_kernel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AOT_TIMEOUT_S = 900


# ---- the enumeration ----------------------------------------------------------------------------
SIZES = {
    "low_rank_update": st.fixed_dictionaries({"m": st.integers(1, 1 << 16), "n": st.integers(1, 1 << 16),
                                              "k": st.integers(1, 512)}),
    "skinny_matmul": st.fixed_dictionaries({"m": st.integers(1, 1 << 17), "n": st.integers(1, 1 << 17),
                                            "b": st.integers(1, 512)}),
}


@pytest.mark.parametrize("op", settings.OPERATIONS)
def test_launch_space_representatives_reproduce_their_configs(op):
    space = launch_space(op)
    assert space and len({cfg for _, cfg in space}) == len(space)
    for sizes, cfg in space:
        assert launch_config(op, **sizes) == cfg


_SPACES: dict[str, set] = {}


@pytest.mark.parametrize("op", settings.OPERATIONS)
@hyp_settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_launch_space_holds_every_config_launch_config_returns(op, data):
    sizes = data.draw(SIZES[op])
    if op not in _SPACES:
        _SPACES[op] = {cfg for _, cfg in launch_space(op)}
    configs = _SPACES[op]
    assert launch_config(op, **sizes) in configs, f"{op} {sizes} gives a configuration launch_space misses"


def test_skinny_split_is_a_runtime_argument():
    # Every split (1..32) shares one binary: the traced jobs must not multiply with the split.
    splits = {cfg.split for _, cfg in launch_space("skinny_matmul")}
    assert splits == set(range(1, 33))
    with recording_launches() as launches:
        for sizes, cfg in launch_space("skinny_matmul"):
            if cfg.block_b == 16 and sizes["m"] == 4096:
                aot_launches._drive_skinny_matmul(sizes, "row")
    assert {launch.args[7] for launch in launches} == {1, 2, 3, 4}  # SPLIT, positional
    jobs = aot.jobs_for_launches((("row", launch) for launch in launches), [90])
    # 8 dtype combinations; SPLIT never enters the key.
    assert len(jobs) == 8, [j.config for j in jobs]


# ---- launches come from the launchers -----------------------------------------------------------
def test_recording_runs_nothing_and_sees_the_launch_config():
    from prune_fast.kernels.skinny_matmul import skinny_matmul_triton

    a = torch.empty(300, 5000, dtype=torch.bfloat16, device="meta")
    x = torch.empty(5000, 20, device="meta")
    with recording_launches() as launches:
        out = skinny_matmul_triton(a, x)
    assert out.device.type == "meta" and out.shape == (300, 20)
    cfg = launch_config("skinny_matmul", m=300, n=5000, b=20)
    (launch,) = launches
    assert launch.grid == (5, 1, cfg.split)
    assert launch.kwargs["BLOCK_B"] == cfg.block_b == 32 and launch.kwargs["num_warps"] == cfg.num_warps


def test_a_kernel_no_launcher_reaches_fails_the_check(monkeypatch):
    from prune_fast.kernels.dispatch import triton_kernel

    def _orphan_kernel(x_ptr):  # pragma: no cover - never launched
        pass

    real = aot.package_kernels()
    monkeypatch.setattr(aot_launches, "package_kernels",
                        lambda: {**real, "tests:_orphan_kernel": triton_kernel(_orphan_kernel)})
    jobs, uncovered = aot.compile_jobs([90])
    assert uncovered == ["tests:_orphan_kernel"] and jobs
    report = aot.AotReport([], uncovered, 0.0)
    assert not report.ok and "never launched" in report.problems()[0]


def test_every_package_kernel_is_traced():
    traced = {aot.kernel_name(launch.kernel) for _, _, launch in aot.trace_launches()}
    assert traced == set(aot.package_kernels()) and len(traced) >= 2


# ---- limits -------------------------------------------------------------------------------------
def test_checker_reports_a_shared_memory_breach():
    # A configuration that is fine under the interpreter but cannot launch on an H100: 128-wide
    # skinny-product tiles with 3 pipeline stages stage 256 KB through shared memory (sm_90's
    # limit: 227 KB). The checker must see it (compiled for real, sm_90 only: ~8 s).
    m = n = b = 512
    out, a, x = (torch.empty(1, m, b, device="meta"), torch.empty(m, n, device="meta"),
                 torch.empty(n, b, device="meta"))
    with recording_launches() as launches:
        _skinny_matmul_kernel[(1, 1, 1)](out, a, a, x, m, n, b, 1, *out.stride(), *a.stride(), *a.stride(),
                                         *x.stride(), SUBTRACT=False, BLOCK_M=128, BLOCK_N=128, BLOCK_B=128,
                                         INPUT_PRECISION="ieee", num_warps=8, num_stages=3)
    (job,) = aot.jobs_for_launches([("row", launches[0])], [90])
    (result,), cubins = aot.run_triton_jobs([job], workers=1, cache=None)
    assert result.error is None, result.error
    assert result.shared > settings.SHARED_MEMORY_LIMIT[90] and not result.ok
    assert any("shared memory" in b for b in result.breaches)
    assert cubins[job.key][:4] == b"\x7fELF"  # the binary is kept (a breach is a finding, not a crash)


def test_register_file_check():
    res = aot.check_limits(aot.CompileResult("k", "c", 90, shared=0, registers=255, threads=512))
    assert res.breaches and "register file" in res.breaches[0]
    assert aot.check_limits(aot.CompileResult("k", "c", 90, shared=232448, registers=255, threads=256)).ok
    assert not aot.check_limits(aot.CompileResult("k", "c", 80, shared=232448, registers=32, threads=128)).ok


def test_ptxas_log_parser():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_skinny_matmul_kernel' for 'sm_80'
ptxas info    : Function properties for _skinny_matmul_kernel
    4288 bytes stack frame, 5060 bytes spill stores, 6512 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4288 bytes cumulative stack size, 424 bytes cmem[0]
ptxas-blackwell info    : Compiling entry function '_Z3fooPf' for 'sm_90a'
ptxas-blackwell info    : Function properties for _Z3fooPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas-blackwell info    : Used 47 registers, used 1 barriers, 35072 bytes smem, 380 bytes cmem[0]
"""
    got = aot.parse_ptxas_log(log)
    assert got["_skinny_matmul_kernel"] == {"stack": 4288, "spill_stores": 5060, "spill_loads": 6512, "registers": 40}
    assert got["_Z3fooPf"] == {"stack": 0, "spill_stores": 0, "spill_loads": 0, "registers": 47, "smem": 35072}


# ---- the whole check, as CI runs it -------------------------------------------------------------
@pytest.fixture(scope="module")
def aot_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the check compiles real kernels; the interpreter is irrelevant
    proc = subprocess.run([sys.executable, "-m", "prune_fast.kernels.aot", "--targets", "sm_80,sm_90",
                           "--jobs", str(min(2, os.cpu_count() or 1)), "--json", str(out)],
                          capture_output=True, text=True, timeout=AOT_TIMEOUT_S, cwd=ROOT, env=env)
    return proc, json.loads(out.read_text()) if out.is_file() else None


def test_every_kernel_compiles_within_limits(aot_run):
    proc, report = aot_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert report is not None and not report["uncovered"]
    results = [aot.CompileResult(**r) for r in report["triton"]]
    assert all(r.ok for r in results)
    kernels = {name.split(":")[1] for name in aot.package_kernels()}
    for arch in (80, 90):
        seen = {r.kernel.split(":")[1] for r in results if r.target == arch}
        assert seen == kernels, f"sm_{arch}: {kernels - seen} not compiled"
        for r in results:
            assert r.shared is not None and r.registers is not None and r.spill_stores is not None, r
            assert r.shared <= settings.SHARED_MEMORY_LIMIT[r.target]
    # Every constexpr configuration launch_space lists was compiled (BLOCK_* and warps in the label).
    for op, kernel in (("low_rank_update", "_low_rank_update_kernel"), ("skinny_matmul", "_skinny_matmul_kernel")):
        labels = [r.config for r in results if r.kernel.endswith(kernel)]
        for _, cfg in launch_space(op):
            block = {"low_rank_update": f"BLOCK_K={cfg.block_k}", "skinny_matmul": f"BLOCK_B={cfg.block_b}"}[op]
            assert any(block in c and f"w{cfg.num_warps}s{cfg.num_stages}" in c for c in labels), (op, cfg)
    assert "sm_80" in proc.stdout and "shared" in proc.stdout



# ---- the CLI's targets and the build folder -----------------------------------------------------
def test_targets_parse_names_numbers_and_cmake_lists():
    assert aot.parse_targets("sm_80,sm_90") == aot.parse_targets("80;90") == aot.parse_targets("90, 80, 90")[::-1]
    assert set(aot.TARGETS.values()) == set(settings.SHARED_MEMORY_LIMIT)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown target '75'"):
        aot.parse_targets("80,75")


def test_build_folder_holds_this_run_only(tmp_path):
    ok = aot.CompileResult("m:_a_kernel", "cfg a", 90, shared=1024, registers=32, threads=128, key="a" * 64)
    bad = aot.CompileResult("m:_b_kernel", "cfg b", 80, error="boom", key="b" * 64)
    stale = tmp_path / "sm_80" / "_old_kernel-0000000000000000.cubin"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    report = aot.AotReport([ok, bad], [], 1.0, {ok.key: b"\x7fELFcubin"})
    path = aot.write_build(report, tmp_path, (80, 90))
    assert not stale.exists()
    assert (tmp_path / aot.cubin_name(ok)).read_bytes() == b"\x7fELFcubin"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("sm_*/*.cubin")) == [aot.cubin_name(ok)]
    text = path.read_text()
    assert "_a_kernel" in text and "_b_kernel" in text and "PROBLEM m:_b_kernel [cfg b] sm_80: boom" in text
    doc = json.loads((tmp_path / "aot.json").read_text())
    assert doc["cubins"] == {ok.key: aot.cubin_name(ok)} and doc["targets"] == [80, 90]
    assert [aot.CompileResult(**r) for r in doc["triton"]] == [ok, bad]
