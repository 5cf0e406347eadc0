"""CI compile check of kernels/: no GPU needed, only nvcc and a C++ compiler.

Every .cu file compiles for sm_80 and sm_90 with the flags torch's JIT build uses, and the torch
binding passes ``g++ -fsyntax-only`` against the installed torch's headers (the CPU wheel's are
enough: the binding includes only <torch/extension.h>). Without nvcc or g++ these tests skip, except
when the environment variable CI is set, where they fail: CUDA code that does not compile cannot land.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
from toolchain import find_nvcc, find_tool
from torch.utils import cpp_extension

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
CU_FILES = sorted(KERNELS.glob("*.cu"))
ARCHS = ("80", "90")


def _tool(name: str, *candidates: str | None) -> str:
    return find_tool(name, *candidates, check="the kernels' compile check")


def _nvcc() -> str:
    return find_nvcc(check="the kernels' compile check")


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"


def test_there_are_kernels_to_compile():
    assert {p.name for p in CU_FILES} >= {"pattern_gemm.cu", "column_sum.cu"}


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_kernels_launch_through_the_seam(source):
    """Launches go through APPROXDROP_LAUNCH (kernels/launch.cuh), never <<<>>> directly: g++ cannot parse the
    triple chevrons, and the CPU emulation of tests/test_emulated_kernels.py compiles these files with g++."""
    text = source.read_text()
    assert "<<<" not in text, f"{source.name}: launch kernels with APPROXDROP_LAUNCH(kernel, grid, block, smem, ...)"
    if "APPROXDROP_LAUNCH(" in text:
        assert '#include "launch.cuh"' in text, f"{source.name} uses APPROXDROP_LAUNCH without including launch.cuh"


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_sources_compile_for_sm80_and_sm90(source, tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    flags = [*cpp_extension.COMMON_NVCC_FLAGS, "-std=c++20", "-O3", f"-I{KERNELS}", *gencode]
    _run([_nvcc(), *flags, "-c", str(source), "-o", str(tmp_path / (source.stem + ".o"))])


def test_binding_compiles_against_torch_headers():
    cxx = _tool("C++ compiler", os.environ.get("CXX"), "g++", "c++")
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"], str(KERNELS)]
    defines = ["-DTORCH_EXTENSION_NAME=approxdrop_kernels", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    _run([cxx, "-std=c++20", "-fsyntax-only", *defines, *(f"-I{i}" for i in includes), str(KERNELS / "binding.cpp")])
