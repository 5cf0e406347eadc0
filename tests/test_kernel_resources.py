"""Static resource check of the CUDA kernels, no GPU needed: ``nvcc --resource-usage`` (ptxas -v) for sm_90
on every kernel of kernels/*.cu. No kernel spills or uses a stack frame, and each stays within the
register budget stated below; a kernel without a budget fails too, so a new kernel gets one.

The machine code (SASS, ``cuobjdump -sass`` of the sm_90 cubins, and of sm_75 ones for GPUs without
cp.async) is checked for what the pattern-GEMM kernels promise: no calls to ptxas's 64-bit integer
division routines (32-bit index arithmetic), cp.async copies (LDGSTS) with 128-bit ones on sm_90, and
128-bit global loads (LDG.E.128) on the synchronous sm_75 path. cuobjdump and nvdisasm come with the CUDA
toolkit or the pip packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm. Without nvcc, a demangler or
cuobjdump these tests skip, except when the environment variable CI is set, where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest
from toolchain import find_nvcc, find_tool
from torch.utils import cpp_extension

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
ARCH = "90"
SASS_ARCHS = (ARCH, "75")  # sm_75: the synchronous path of GPUs without cp.async

# Registers per thread on sm_90 (65536 per SM, blocks of 256 threads unless noted), and what the budget buys.
# The GEMM kernels are gemm_simt / gemm_wmma<T, BM, BN>: 64 x 64 blocks, or 128 x 64 for large problems.
REGISTER_BUDGET = {
    "gemm_simt<float, 64, 64>": 80,  # 3 blocks per SM (37.5% occupancy; 128 registers and 25% before issue 14)
    "gemm_simt<float, 128, 64>": 80,  # 3 blocks per SM, 32 accumulators per thread
    "gemm_simt<double, 64, 64>": 128,  # 2 blocks per SM
    "gemm_simt<double, 128, 64>": 168,  # 1 block per SM, the price of 32 fp64 accumulators without spills
    "gemm_simt<__half, 64, 64>": 80,  # 3 blocks per SM (fallback below sm_70)
    "gemm_simt<__half, 128, 64>": 128,  # 2 blocks per SM
    "gemm_simt<__nv_bfloat16, 64, 64>": 80,  # 3 blocks per SM (fallback below sm_80)
    "gemm_simt<__nv_bfloat16, 128, 64>": 128,  # 2 blocks per SM
    "gemm_wmma<__half, 64, 64>": 80,  # 3 blocks per SM
    "gemm_wmma<__half, 128, 64>": 128,  # 2 blocks per SM
    "gemm_wmma<__nv_bfloat16, 64, 64>": 80,  # 3 blocks per SM
    "gemm_wmma<__nv_bfloat16, 128, 64>": 128,  # 2 blocks per SM
    "column_sum<float>": 32,  # 32 x 8 threads: full occupancy (2048 threads per SM)
    "column_sum<double>": 32,
    "column_sum<__half>": 32,
    "column_sum<__nv_bfloat16>": 32,
    # memory-bound kernels of the cuBLAS path, 256 threads: 32 registers keep full occupancy
    "column_sum_finish<float>": 32,
    "column_sum_finish<double>": 32,
    "column_sum_finish<__half>": 32,
    "column_sum_finish<__nv_bfloat16>": 32,
    "scatter_block<float>": 32,
    "scatter_block<double>": 32,
    "scatter_block<__half>": 32,
    "scatter_block<__nv_bfloat16>": 32,
    "scatter_block_add<float>": 32,
    "scatter_block_add<double>": 32,
    "scatter_block_add<__half>": 32,
    "scatter_block_add<__nv_bfloat16>": 32,
}

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_PROPERTIES = re.compile(r"Function properties for (\w+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
# SASS: a subroutine call, cp.async copies, 128-bit ones, 128-bit global loads
_CALL = re.compile(r"\bCALL\.")
_LDGSTS = re.compile(r"\bLDGSTS\.")
_LDGSTS_128 = re.compile(r"\bLDGSTS\.[\w.]*\b128\b")
_LDG_128 = re.compile(r"\bLDG\.E\.128\b")


def _tool(name: str, *candidates: str | None) -> str:
    return find_tool(name, *candidates, check="the kernels' resource check")


def _nvcc() -> str:
    return find_nvcc(check="the kernels' resource check")


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """Mangled entry name -> registers, stack frame, spill stores and loads, from ptxas -v output."""
    kernels: dict[str, dict[str, int]] = {}
    entry = properties = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            entry = m.group(1)
            kernels[entry] = {}
        elif m := _PROPERTIES.search(line):
            properties = m.group(1)
        elif (m := _FRAME.search(line)) and entry is not None and properties == entry:
            kernels[entry].update(zip(("stack", "spill_stores", "spill_loads"), map(int, m.groups())))
        elif (m := _USED.search(line)) and entry is not None:
            kernels[entry]["registers"] = int(m.group(1))
    return kernels


def short_name(demangled: str) -> str:
    """``void approxdrop::(anonymous namespace)::gemm_simt<float>(approxdrop::PatternGemm)`` -> ``gemm_simt<float>``."""
    head = demangled.replace("(anonymous namespace)::", "").split("(", 1)[0].strip()
    m = re.search(r"(\w+(?:<.*>)?)$", head)
    return m.group(1) if m else demangled


def _compile(nvcc: str, source: Path, arch: str, out: Path) -> tuple[Path, str]:
    """``source`` compiled for sm_``arch`` into a cubin, and ptxas's resource report."""
    flags = [*cpp_extension.COMMON_NVCC_FLAGS, "-std=c++20", "-O3", f"-I{KERNELS}"]
    cubin = out / f"{source.stem}.sm_{arch}.cubin"
    cmd = [nvcc, *flags, f"-gencode=arch=compute_{arch},code=sm_{arch}", "--resource-usage", "-cubin", str(source)]
    done = subprocess.run([*cmd, "-o", str(cubin)], capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return cubin, done.stdout + done.stderr


def _demangle(mangled: list[str]) -> list[str]:
    demangler = _tool("a C++ demangler", "c++filt", "cu++filt")
    names = subprocess.run([demangler], input="\n".join(mangled), capture_output=True, text=True, check=True)
    return [short_name(d) for d in names.stdout.splitlines()]


@pytest.fixture(scope="module")
def cubins(tmp_path_factory) -> dict[str, list[tuple[Path, str]]]:
    """Architecture -> (cubin, ptxas report) of every kernels/*.cu: sm_90, and sm_75 (no cp.async)."""
    nvcc, out = _nvcc(), tmp_path_factory.mktemp("resources")
    return {arch: [_compile(nvcc, source, arch, out) for source in sorted(KERNELS.glob("*.cu"))] for arch in SASS_ARCHS}


@pytest.fixture(scope="module")
def usage(cubins) -> dict[str, dict[str, int]]:
    """Short kernel name -> its ptxas resource usage for sm_90, over every kernels/*.cu."""
    found: dict[str, dict[str, int]] = {}
    for _, report in cubins[ARCH]:
        found.update(parse_ptxas(report))
    return dict(zip(_demangle(list(found)), found.values()))


def _cuobjdump() -> str:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    wheels = sorted(Path(sysconfig.get_paths()["purelib"]).glob("nvidia/cu*/bin/cuobjdump"))  # pip packages
    candidates = [
        "cuobjdump",
        cuda_home and str(Path(cuda_home) / "bin" / "cuobjdump"),
        "/usr/local/cuda/bin/cuobjdump",
    ]
    return _tool("cuobjdump", *candidates, *map(str, wheels))


def split_sass(listing: str) -> dict[str, str]:
    """Mangled kernel name -> its instructions, from ``cuobjdump -sass`` output."""
    kernels: dict[str, list[str]] = {}
    lines: list[str] | None = None
    for line in listing.splitlines():
        if m := re.match(r"\s*Function : (\S+)", line):
            lines = kernels.setdefault(m.group(1), [])
        elif lines is not None:
            lines.append(line)
    return {name: "\n".join(body) for name, body in kernels.items()}


@pytest.fixture(scope="module")
def sass(cubins) -> dict[str, dict[str, str]]:
    """Architecture -> short name -> SASS of each GEMM kernel (gemm_*)."""
    cuobjdump = _cuobjdump()
    tools = Path(cuobjdump).parent  # cuobjdump -sass runs nvdisasm, which sits beside it
    _tool("nvdisasm (cuobjdump -sass runs it)", "nvdisasm", str(tools / "nvdisasm"))
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}
    found: dict[str, dict[str, str]] = {}
    for arch, compiled in cubins.items():
        kernels: dict[str, str] = {}
        for cubin, _ in compiled:
            done = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, env=env)
            assert done.returncode == 0, f"cuobjdump -sass {cubin}\n{done.stderr}"
            kernels.update(split_sass(done.stdout))
        named = dict(zip(_demangle(list(kernels)), kernels.values()))
        found[arch] = {name: text for name, text in named.items() if name.startswith("gemm_")}
        assert found[arch], f"no GEMM kernel in the sm_{arch} SASS"
    return found


def _table(usage: dict[str, dict[str, int]]) -> str:
    rows = [f"{'kernel':36} {'registers':>9} {'budget':>6} {'stack':>5} {'spill st':>8} {'spill ld':>8}"]
    for name, u in sorted(usage.items()):
        rows.append(
            f"{name:36} {u.get('registers', 0):>9} {REGISTER_BUDGET.get(name, '-'):>6} {u.get('stack', 0):>5} "
            f"{u.get('spill_stores', 0):>8} {u.get('spill_loads', 0):>8}"
        )
    return "\n".join(rows)


def test_parse_ptxas_reads_each_entry():
    log = """ptxas info    : Compiling entry function '_Z1kIfEvv' for 'sm_90'
ptxas info    : Function properties for _Z1kIfEvv
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 9024 bytes smem
ptxas info    : Compiling entry function '_Z1gv' for 'sm_90'
ptxas info    : Function properties for _Z1gv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers"""
    assert parse_ptxas(log) == {
        "_Z1kIfEvv": {"stack": 8, "spill_stores": 4, "spill_loads": 12, "registers": 40},
        "_Z1gv": {"stack": 0, "spill_stores": 0, "spill_loads": 0, "registers": 12},
    }
    assert short_name("void approxdrop::(anonymous namespace)::gemm_simt<float>(approxdrop::PatternGemm)") == (
        "gemm_simt<float>"
    )
    assert short_name("void ns::column_sum<__half>(__half const*, long long, __half*)") == "column_sum<__half>"


def test_every_kernel_has_a_budget(usage):
    assert set(usage) == set(REGISTER_BUDGET), f"kernels and REGISTER_BUDGET differ:\n{_table(usage)}"


def test_no_kernel_spills_or_uses_a_stack_frame(usage):
    bad = [n for n, u in usage.items() if u.get("stack", 0) or u.get("spill_stores", 0) or u.get("spill_loads", 0)]
    assert not bad, f"{bad} use local memory on sm_{ARCH}:\n{_table(usage)}"


def test_registers_within_budget(usage):
    over = [n for n, u in usage.items() if n in REGISTER_BUDGET and u["registers"] > REGISTER_BUDGET[n]]
    assert not over, f"{over} exceed their register budget on sm_{ARCH}:\n{_table(usage)}"


def test_split_sass_reads_each_function():
    listing = """
\tcode for sm_90
\t\tFunction : _Z1kv
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   CALL.REL.NOINC 0x100 ;
\t\tFunction : _Z1gv
        /*0000*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR8][R4.64] ;
"""
    kernels = split_sass(listing)
    assert list(kernels) == ["_Z1kv", "_Z1gv"]
    assert len(_CALL.findall(kernels["_Z1kv"])) == 1 and not _CALL.findall(kernels["_Z1gv"])
    assert _LDGSTS_128.search(kernels["_Z1gv"]) and not _LDG_128.search(kernels["_Z1gv"])


def test_gemm_kernels_make_no_64_bit_division_calls(sass):
    """The GEMM kernels inline every device function, so a CALL in their SASS is a call to ptxas's 64-bit
    integer division / remainder routines (__cuda_sm20_div_s64, __cuda_sm20_rem_s64; 40 per kernel with the
    long long index arithmetic before issue 14). Bound: none."""
    calls = {
        f"{name} sm_{arch}": len(_CALL.findall(text))
        for arch, kernels in sass.items()
        for name, text in kernels.items()
    }
    assert not any(calls.values()), f"CALLs (64-bit division) in the GEMM kernels: {calls}"


def test_gemm_kernels_copy_with_cp_async_on_sm90(sass):
    """sm_90: tiles are copied with cp.async (LDGSTS), aligned contiguous runs 128 bits at a time."""
    missing = [name for name, text in sass[ARCH].items() if not _LDGSTS.search(text)]
    assert not missing, f"no cp.async (LDGSTS) in {missing} on sm_{ARCH}"
    missing = [name for name, text in sass[ARCH].items() if not _LDGSTS_128.search(text)]
    assert not missing, f"no 128-bit cp.async (LDGSTS.*.128) in {missing} on sm_{ARCH}"
    assert set(sass[ARCH]) == {n for n in REGISTER_BUDGET if n.startswith("gemm_")}, "not every GEMM kernel checked"


def test_gemm_kernels_load_128_bits_without_cp_async(sass):
    """sm_75 (no cp.async): tiles load synchronously, aligned contiguous runs through 128-bit global loads
    (LDG.E.128). The bfloat16 WMMA kernel is a stub there (its tensor cores need sm_80)."""
    kernels = {name: text for name, text in sass["75"].items() if not name.startswith("gemm_wmma<__nv_bfloat16")}
    assert kernels, "no GEMM kernel for sm_75"
    async_copies = [name for name, text in kernels.items() if _LDGSTS.search(text)]
    assert not async_copies, f"cp.async (LDGSTS) in {async_copies} on sm_75, which has none"
    missing = [name for name, text in kernels.items() if not _LDG_128.search(text)]
    assert not missing, f"no 128-bit global load (LDG.E.128) in {missing} on sm_75"
