"""Finding the compilers the kernel tests need: a missing tool skips the test with its name, and
fails it under CI (CI=true), where the check must run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def find_tool(name: str, *candidates: str | None, check: str = "the kernels' checks") -> str:
    """Path of the first candidate on PATH, else skip (or fail under CI) naming what is missing."""
    for candidate in candidates:
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    message = f"{name} not found (looked for {', '.join(c for c in candidates if c)})"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}: {check} cannot run")
    pytest.skip(message)


def find_nvcc(check: str = "the kernels' checks") -> str:
    """nvcc from PATH, $CUDA_HOME / $CUDA_PATH or /usr/local/cuda."""
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc_home = cuda_home and str(Path(cuda_home) / "bin" / "nvcc")
    return find_tool("nvcc", "nvcc", nvcc_home, "/usr/local/cuda/bin/nvcc", check=check)
