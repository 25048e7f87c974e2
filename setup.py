"""Install prune_fast.

The optional CUDA library (``prune_fast/kernels/csrc``) is built by CMakeLists.txt only when CUDA is
available or ``PRUNE_FAST_CUDA=1``; everything works without it.
"""
from setuptools import find_packages, setup

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
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "triton>=3.0", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["prune-fast=prune_fast.cli:main"]},
)
