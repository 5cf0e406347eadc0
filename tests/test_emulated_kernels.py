"""The CUDA kernels run in CI without a GPU: kernels/*.cu, unmodified, compile with g++ against the
project's CUDA-on-CPU header (tests/emulation/cuda_emulation.h) and run through tests/emulation/driver.cpp,
which calls their launchers as kernels/binding.cpp does.

Every GEMM description (row / tile x forward / grad-input / grad-weight) and the column sum run in float32,
float64, float16 and bfloat16 (the half types through the WMMA kernel and the shared-memory fallback of
older GPUs) on random odd shapes and patterns, against the PyTorch implementations of approxdrop.ops on the
same (rounded) inputs. Outputs are prefilled with NaN: every entry an op returns must be written, and
entries outside the kept ones must stay untouched. The emulator's report (launch grids, cp.async copies,
128-bit loads) shows which paths ran: the big block of large problems, 128-bit copies of aligned contiguous
runs, the synchronous path of GPUs before sm_80 (a build with __CUDA_ARCH__ = 750). A subset runs under
AddressSanitizer + UndefinedBehaviorSanitizer, one case under ThreadSanitizer, and planted bugs (a removed
__syncthreads or cp.async wait, a broken bound, an off-by-one in the kept index, a 128-bit load on a
misaligned or non-consecutive run) must make the suite fail. Builds are cached per compiler, flags and
source hash in the temporary directory. Speed, warp scheduling, real cp.async timing and real tensor cores
still need a GPU (tests/test_kernels.py).
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from approxdrop.patterns import RowPattern, TilePattern

OPS = torch.ops.approxdrop  # the registered ops: on CPU tensors, their PyTorch implementations


def row_linear_one(x, w, b, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    """The row op's y on one group, from one pair's integers (the kernel's arguments)."""
    return OPS.row_linear([x], w, b, in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])[0][0]


def row_linear_backward_one(gy, x, w, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    """The row backward op's (grad_x, grad_w, grad_b) on one group, from the blocks forward returns."""
    ints = (in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
    blocks = OPS.row_linear([x], w, None, *ints)[1]
    grad_xs, grad_w, grad_b = OPS.row_linear_backward([gy], [x], w, blocks, *ints)
    return grad_xs[0], grad_w, grad_b


def tile_linear_one(x, w, b, dp, offset, keep, tile):
    return OPS.tile_linear(x, w, b, dp, keep, tile, [offset])


def tile_linear_backward_one(gy, x, w, dp, offset, keep, tile):
    return tuple(OPS.tile_linear_backward(gy, x, w, dp, keep, tile, [offset]))


pytestmark = pytest.mark.emulated

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
EMULATION = ROOT / "tests" / "emulation"
COMMON_FLAGS = ("-std=c++20", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", "-pthread")
FLAVOURS = {
    "plain": ("-O1",),
    "asan": ("-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"),
    "tsan": ("-O1", "-g", "-fsanitize=thread"),
    "sm75": ("-O1", "-D__CUDA_ARCH__=750"),  # device code as for a GPU without cp.async: the synchronous path
}
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1",
    "UBSAN_OPTIONS": "print_stacktrace=1",
    "TSAN_OPTIONS": "halt_on_error=1",
}
RUN_TIMEOUT_S = 300  # a deadlocked barrier fails the test instead of stalling CI

# (dtype, emulated GPU architecture): which kernel runs. fp16 needs sm_70 and bf16 sm_80 for WMMA.
PATHS = {
    "float32": (torch.float32, 900),
    "float64": (torch.float64, 900),
    "float16-wmma": (torch.float16, 900),
    "float16-simt": (torch.float16, 600),
    "bfloat16-wmma": (torch.bfloat16, 900),
    "bfloat16-simt": (torch.bfloat16, 750),
}
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}
OUTPUT_UNIT = {torch.float32: 2.0**-24, torch.float64: 2.0**-53, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


# ------------------------------------------------------------------ build and run the driver
def _cxx() -> str:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no C++ compiler (g++ or $CXX) was found: the emulated kernels cannot run")
        pytest.skip("no C++ compiler (g++ or $CXX) found")
    return cxx


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update((part.encode() if isinstance(part, str) else part) + b"\0")
    return h.hexdigest()[:24]


def _run_all(jobs: list[tuple[list[str], Path]]) -> None:
    """Runs the compiler commands in parallel; each writes its output through a temporary name, moved into
    place atomically (concurrent sessions never use a half-written file)."""
    running = []
    for cmd, target in jobs:
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        proc = subprocess.Popen([*cmd, "-o", str(partial)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running.append((proc, partial, target))
    for proc, partial, target in running:
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{' '.join(proc.args)}\n{err}"
        os.replace(partial, target)


def build(flavour: str, kernels: Path = KERNELS) -> Path:
    """The driver built from ``kernels``/*.cu with FLAVOURS[flavour]. Objects and the executable are cached
    in the temporary directory per compiler, flags and sources; translation units compile in parallel."""
    cxx = _cxx()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    flags = [*COMMON_FLAGS, *FLAVOURS[flavour]]
    headers = sorted([*kernels.glob("*.h"), *kernels.glob("*.cuh")]) + sorted(EMULATION.rglob("*.h"))
    common = _digest(cxx, version, *flags, *(p.name.encode() + b"\0" + p.read_bytes() for p in headers))
    includes = [f"-I{EMULATION / 'include'}", f"-I{EMULATION}", f"-I{kernels}"]
    cache = Path(tempfile.gettempdir()) / f"approxdrop-emulation-{os.getuid()}"
    cache.mkdir(parents=True, exist_ok=True)
    objects, jobs = [], []
    for unit in [*sorted(kernels.glob("*.cu")), EMULATION / "driver.cpp"]:
        obj = cache / f"{unit.stem}-{flavour}-{_digest(common, unit.read_bytes())}.o"
        objects.append(obj)
        if not obj.exists():
            jobs.append(([cxx, *flags, *includes, "-x", "c++", "-c", str(unit)], obj))
    _run_all(jobs)
    exe = cache / f"driver-{flavour}-{_digest(*(o.name for o in objects))}"
    if not exe.exists():
        _run_all([([cxx, *flags, *(str(o) for o in objects)], exe)])
    return exe


@pytest.fixture(scope="module")
def plain() -> Path:
    return build("plain")


def _to_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _from_bytes(data: bytes, like: torch.Tensor) -> torch.Tensor:
    if not like.numel():
        return like.clone()
    return torch.frombuffer(bytearray(data), dtype=like.dtype).reshape(like.shape)


@dataclass
class Run:
    """One driver run: its buffers after the run (outputs filled in) and the process result."""

    buffers: dict[str, torch.Tensor]
    done: subprocess.CompletedProcess

    def failure(self, label: str) -> str | None:
        if self.done.returncode == 0:
            return None
        return f"{label}: driver exited with {self.done.returncode}\n{self.done.stderr[:4000]}"  # report's head

    @property
    def grids(self) -> list[tuple[int, ...]]:
        """The launch grid of each kernel launch, in order (the emulator's report on stdout)."""
        found = re.findall(r"^launch grid \((\d+), (\d+), (\d+)\)", self.done.stdout, re.MULTILINE)
        return [tuple(map(int, g)) for g in found]

    @property
    def copies(self) -> dict[str, int]:
        """``async`` (cp.async copies), ``async16`` (of them 16-byte ones) and ``load128`` (128-bit loads)."""
        m = re.search(r"^copies async (\d+) async16 (\d+) load128 (\d+)$", self.done.stdout, re.MULTILINE)
        assert m is not None, f"no emulator report in the driver's output:\n{self.done.stdout}"
        return dict(zip(("async", "async16", "load128"), map(int, m.groups())))


def run_driver(
    exe: Path,
    op: str,
    dtype: torch.dtype,
    ints,
    buffers: dict[str, torch.Tensor],
    arch: int = 900,
    schedule: str = "parallel",
) -> Run:
    """Runs ``driver DIR op dtype arch schedule ints...`` on ``buffers`` (see tests/emulation/driver.cpp)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, t in buffers.items():
            Path(tmp, f"{name}.bin").write_bytes(_to_bytes(t))
        cmd = [str(exe), tmp, op, DTYPE_NAMES[dtype], str(arch), schedule, *(str(int(i)) for i in ints)]
        env = {**os.environ, **SANITIZER_ENV}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
            if "unexpected memory mapping" in done.stderr and shutil.which("setarch"):  # TSan vs. high ASLR entropy
                cmd = ["setarch", platform.machine(), "-R", *cmd]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(cmd)} did not finish in {RUN_TIMEOUT_S} s (a deadlocked barrier?)")
        after = {n: _from_bytes(Path(tmp, f"{n}.bin").read_bytes(), t) for n, t in buffers.items()}
    return Run(after, done)


# ------------------------------------------------------------------ cases
@dataclass(frozen=True)
class RowCase:
    rows: int
    n_out: int
    n_in: int
    inp: RowPattern
    out: RowPattern
    bias: bool

    @property
    def ints(self) -> tuple[int, ...]:
        return (self.inp.dp, self.inp.offset, self.inp.keep, self.out.dp, self.out.offset, self.out.keep)


@dataclass(frozen=True)
class TileCase:
    rows: int
    n_out: int
    n_in: int
    pattern: TilePattern
    bias: bool

    @property
    def ints(self) -> tuple[int, ...]:
        p = self.pattern
        return (p.dp, p.offset, p.keep, p.tile)


@dataclass(frozen=True)
class ColumnSumCase:
    rows: int
    n: int  # length of out; cols = kept count of the map on n
    map: RowPattern


def _odd(rng: random.Random, hi: int) -> int:
    return rng.randrange(1, hi + 1, 2)


def _row_pattern(rng: random.Random) -> RowPattern:
    dp = rng.choice([1, 2, 3, 4, 5, 7, 10])
    return RowPattern(dp, rng.randrange(dp), rng.randint(1, dp))


def row_cases(count: int, seed: int) -> list[RowCase]:
    rng = random.Random(seed)
    return [
        RowCase(_odd(rng, 99), _odd(rng, 149), _odd(rng, 149), _row_pattern(rng), _row_pattern(rng), rng.random() < 0.7)
        for _ in range(count)
    ]


def tile_cases(count: int, seed: int) -> list[TileCase]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        dp = rng.randint(1, 5)
        pattern = TilePattern(dp, rng.randrange(dp), rng.randint(1, 24), rng.randint(1, dp))
        cases.append(TileCase(_odd(rng, 99), _odd(rng, 129), _odd(rng, 129), pattern, rng.random() < 0.7))
    return cases


def column_sum_cases(count: int, seed: int) -> list[ColumnSumCase]:
    rng = random.Random(seed)
    return [ColumnSumCase(_odd(rng, 299), _odd(rng, 199), _row_pattern(rng)) for _ in range(count)]


EDGE_ROW_CASES = [
    RowCase(0, 9, 7, RowPattern(2, 1, 1), RowPattern(3, 0, 2), True),  # no rows: nothing to launch
    RowCase(5, 13, 5, RowPattern(9, 8, 1), RowPattern(4, 3, 1), True),  # no kept input (K = 0): y = bias
    RowCase(6, 2, 11, RowPattern(1, 0, 1), RowPattern(10, 2, 1), False),  # no kept output
    RowCase(70, 67, 97, RowPattern(6, 5, 2), RowPattern(7, 6, 3), True),  # wrapping runs, 2 x 1 x 3 blocks
    RowCase(65, 65, 65, RowPattern(5, 0, 5), RowPattern(1, 0, 1), True),  # keep = dp, dp = 1, one past a block
]
EDGE_TILE_CASES = [
    TileCase(3, 20, 30, TilePattern(2, 1, 40, 1), True),  # one tile, dropped: y = bias, grad_w untouched
    TileCase(6, 21, 9, TilePattern(4, 3, 5, 1), False),  # offset at the end of the period
    TileCase(6, 20, 33, TilePattern(7, 6, 16, 2), True),  # fewer tile rows than dp
    TileCase(67, 65, 97, TilePattern(3, 2, 8, 3), True),  # keep = dp
    TileCase(5, 70, 69, TilePattern(3, 1, 1, 2), True),  # 1 x 1 tiles
]
HUGE_PERIOD_TILE_CASE = TileCase(3, 5, 7, TilePattern(3, 1, 715827882, 2), True)  # dp * tile = 2^31 - 2
# Large enough for the 128 x 64 block (the emulated GPU has 2 SMs): row ops with kept runs, tile ops with
# every GEMM over more than one big block.
LARGE_ROW_CASE = RowCase(200, 130, 72, RowPattern(8, 2, 6), RowPattern(1, 0, 1), True)
LARGE_TILE_CASE = TileCase(150, 136, 200, TilePattern(2, 1, 8, 1), True)
# Kept runs for 128-bit loads: aligned (ld a multiple of 16 bytes, runs at multiples of 8 elements), and
# contiguous but partly misaligned (runs at multiples of 6), which must take the element-wise path.
ALIGNED_TILE_CASE = TileCase(37, 64, 96, TilePattern(3, 1, 8, 2), True)
MISALIGNED_TILE_CASES = [
    TileCase(29, 66, 96, TilePattern(3, 2, 6, 2), False),
    TileCase(21, 40, 48, TilePattern(2, 1, 6, 1), True),
]


# ------------------------------------------------------------------ checks against approxdrop.ops
def _compare(label: str, got: torch.Tensor, ref: torch.Tensor, mag: torch.Tensor, k: int, written=None) -> str | None:
    """None if ``got`` (kernel output) is within rounding of ``ref`` (float64 on the same inputs), else why.

    Bound per entry: one rounding of the output, plus (k + 3) roundings of the fp32 (fp64) accumulator on
    ``mag``, the same op on absolute values. ``written``: Bool mask of the entries the kernel must write;
    the others must still hold their NaN prefill."""
    dtype = got.dtype
    got = got.double()
    if written is not None:
        if not torch.isnan(got[~written]).all():
            return f"{label}: wrote {int((~torch.isnan(got[~written])).sum())} entries outside the kept ones"
        got, ref, mag = got[written], ref[written], mag[written]
    acc_unit = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    tol = OUTPUT_UNIT[dtype] * ref.abs() + (k + 3) * acc_unit * mag + torch.finfo(dtype).tiny
    bad = ~((got - ref).abs() <= tol)  # NaN (never written) is bad too
    if not bad.any():
        return None
    i = bad.flatten().nonzero()[0].item()
    return (
        f"{label}: {int(bad.sum())} of {bad.numel()} entries off, first at flat index {i}: "
        f"{got.flatten()[i].item()} vs {ref.flatten()[i].item()} (tolerance {tol.flatten()[i].item():.3g})"
    )


def _random(gen: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _nan(dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype)


def _exact_and_magnitude(fn: Callable, *tensors) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(exact, magnitude) of each output of ``fn``: on the float64 tensors, and on their absolute values."""
    exact = fn(*(None if t is None else t.double() for t in tensors))
    magnitude = fn(*(None if t is None else t.double().abs() for t in tensors))
    if isinstance(exact, torch.Tensor):
        return [(exact, magnitude)]
    return list(zip(exact, magnitude))


def _check_op(exe: Path, label: str, op: str, ints, inputs: dict, outputs: dict, k: int, arch: int, schedule: str):
    """Runs ``op`` on ``inputs`` with NaN-prefilled outputs; ``outputs``: name -> (exact, magnitude, written
    mask or None). Returns the failures."""
    dtype = next(iter(inputs.values())).dtype
    buffers = {**inputs, **{name: _nan(dtype, *exact.shape) for name, (exact, _, _) in outputs.items()}}
    run = run_driver(exe, op, dtype, ints, buffers, arch, schedule)
    if (failure := run.failure(f"{label} {op}")) is not None:
        return [failure]
    checks = (_compare(f"{label} {op} {n}", run.buffers[n], *want[:2], k, want[2]) for n, want in outputs.items())
    return [failure for failure in checks if failure is not None]


def check_row(exe: Path, case: RowCase, dtype: torch.dtype, arch: int, schedule: str, seed: int) -> list[str]:
    """Runs row_linear and row_linear_backward of ``case`` on the emulated kernels; returns the failures."""
    gen = torch.Generator().manual_seed(seed)
    k_in, k_out = case.inp.kept_count(case.n_in), case.out.kept_count(case.n_out)
    x, w = _random(gen, dtype, case.rows, k_in), _random(gen, dtype, case.n_out, case.n_in)
    gy = _random(gen, dtype, case.rows, k_out)
    b = _random(gen, dtype, case.n_out) if case.bias else None
    y = _exact_and_magnitude(lambda x, w, b: row_linear_one(x, w, b, *case.ints), x, w, b)
    gx, gw, gb = _exact_and_magnitude(lambda gy, x, w: row_linear_backward_one(gy, x, w, *case.ints), gy, x, w)
    out_kept, in_kept = case.out.keep_mask(case.n_out), case.inp.keep_mask(case.n_in)
    sizes, label = (case.rows, case.n_out, case.n_in), f"{case} {DTYPE_NAMES[dtype]} sm_{arch} {schedule}"
    inputs = {"x": x, "w": w, **({"b": b} if case.bias else {})}
    ints = (*sizes, *case.ints, case.bias)
    failures = _check_op(exe, label, "row_linear", ints, inputs, {"y": (*y[0], None)}, max(sizes), arch, schedule)
    outputs = {"gx": (*gx, None), "gw": (*gw, out_kept[:, None] & in_kept[None, :]), "gb": (*gb, out_kept)}
    inputs = {"gy": gy, "x": x, "w": w}
    return failures + _check_op(
        exe, label, "row_linear_backward", (*sizes, *case.ints), inputs, outputs, max(sizes), arch, schedule
    )


def check_tile(exe: Path, case: TileCase, dtype: torch.dtype, arch: int, schedule: str, seed: int) -> list[str]:
    """Runs tile_linear and tile_linear_backward of ``case`` on the emulated kernels; returns the failures."""
    gen = torch.Generator().manual_seed(seed)
    x, w = _random(gen, dtype, case.rows, case.n_in), _random(gen, dtype, case.n_out, case.n_in)
    gy = _random(gen, dtype, case.rows, case.n_out)
    b = _random(gen, dtype, case.n_out) if case.bias else None
    y = _exact_and_magnitude(lambda x, w, b: tile_linear_one(x, w, b, *case.ints), x, w, b)
    gx, gw, gb = _exact_and_magnitude(lambda gy, x, w: tile_linear_backward_one(gy, x, w, *case.ints), gy, x, w)
    sizes, label = (case.rows, case.n_out, case.n_in), f"{case} {DTYPE_NAMES[dtype]} sm_{arch} {schedule}"
    inputs = {"x": x, "w": w, **({"b": b} if case.bias else {})}
    ints = (*sizes, *case.ints, case.bias)
    failures = _check_op(exe, label, "tile_linear", ints, inputs, {"y": (*y[0], None)}, max(sizes), arch, schedule)
    outputs = {"gx": (*gx, None), "gw": (*gw, case.pattern.keep_mask(case.n_out, case.n_in)), "gb": (*gb, None)}
    inputs = {"gy": gy, "x": x, "w": w}
    return failures + _check_op(
        exe, label, "tile_linear_backward", (*sizes, *case.ints), inputs, outputs, max(sizes), arch, schedule
    )


def check_column_sum(exe: Path, case: ColumnSumCase, dtype: torch.dtype, schedule: str, seed: int) -> list[str]:
    """out[kept_index(map, j)] = sum_i g[i, j]; the other entries of out stay untouched."""
    gen = torch.Generator().manual_seed(seed)
    kept = case.map.keep_mask(case.n)
    g = _random(gen, dtype, case.rows, int(kept.sum()))
    exact, magnitude = torch.zeros(case.n, dtype=torch.float64), torch.zeros(case.n, dtype=torch.float64)
    exact[kept], magnitude[kept] = g.double().sum(0), g.double().abs().sum(0)
    ints = (case.rows, g.shape[1], case.map.dp, case.map.offset, case.map.keep, case.n)
    label = f"{case} {DTYPE_NAMES[dtype]} {schedule}"
    return _check_op(
        exe, label, "column_sum", ints, {"g": g}, {"out": (exact, magnitude, kept)}, case.rows, 900, schedule
    )


def _schedule(i: int) -> str:
    """Half the cases run serially (a missing barrier then reads stale data), half freely in parallel."""
    return "serial" if i % 2 == 0 else "parallel"


def _assert_none(failures: list[str]) -> None:
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


# ------------------------------------------------------------------ tests
def test_half_conversions_round_to_nearest_even(plain):
    """The emulated __half / __nv_bfloat16 conversions agree bit for bit with torch's (NaN: only NaN-ness)."""
    every_half = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    finite = every_half[torch.isfinite(every_half)].unique()  # sorted
    midpoints = ((finite[1:].double() + finite[:-1].double()) / 2).float()  # ties, exact in float32
    gen = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31, (1 << 18,), generator=gen, dtype=torch.int64).to(torch.int32)
    bf16_ties = (torch.randint(-(2**15), 2**15, (4096,), generator=gen, dtype=torch.int32) << 16) | 0x8000
    specials = torch.tensor(
        [
            0.0,
            -0.0,
            float("inf"),
            -float("inf"),
            float("nan"),
            65504.0,
            65519.99,
            65520.0,
            2**-25,
            2**-25 * 1.0001,
            3 * 2**-26,
            2**-14,
            2**-24,
            3.4e38,
            -3.4e38,
            1e-45,
        ],
        dtype=torch.float32,
    )
    f = torch.cat([every_half, midpoints, random_bits.view(torch.float32), bf16_ties.view(torch.float32), specials])
    n = f.numel()
    bufs = {
        "f": f,
        "h": torch.zeros(n, dtype=torch.float16),
        "b": torch.zeros(n, dtype=torch.bfloat16),
        "hf": torch.zeros(n),
        "bf": torch.zeros(n),
    }
    run = run_driver(plain, "convert", torch.float32, [n], bufs)
    assert run.done.returncode == 0, run.done.stderr
    for got, want in ((run.buffers["h"], f.half()), (run.buffers["b"], f.bfloat16())):
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(got), nan)
        bits, want_bits = got.view(torch.int16)[~nan], want.view(torch.int16)[~nan]
        wrong = (bits != want_bits).nonzero().flatten()
        assert wrong.numel() == 0, f"{want.dtype}: {wrong.numel()} conversions differ, e.g. {f[~nan][wrong[:5]]}"
        back = run.buffers["hf" if want.dtype == torch.float16 else "bf"]
        assert torch.equal(back[~nan], want[~nan].float())


@pytest.mark.parametrize("schedule", ["parallel", "serial"])
@pytest.mark.parametrize(
    "name, expected",
    [
        ("block_sum", None),  # shared memory per block, 3-D thread and block indices
        ("divergent_sync", "divergent __syncthreads"),
        ("wmma_misaligned", "not 256-bit aligned"),
        ("wmma_bad_ldm", "not a multiple of 16 bytes"),
        ("trap", "__trap() was called"),
        ("bad_config", "invalid launch configuration"),
        ("async_groups", None),  # cp.async lands at the wait that retires its group, not before
        ("async_misaligned", "not 16-byte aligned"),
        ("ldg_misaligned", "not 16-byte aligned"),
        ("index_range", "does not fit 32-bit indices"),  # the launcher refuses, nothing runs
    ],
)
def test_emulator_checks(plain, name, expected, schedule):
    """The emulator's own kernels (tests/emulation/driver.cpp): what CUDA forbids fails the launch, loudly."""
    done = subprocess.run(
        [str(plain), ".", "selftest", "float32", "900", schedule, name],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if expected is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 2 and expected in done.stderr, done.stderr


@pytest.mark.parametrize("path", PATHS)
def test_kernels_match_ops(plain, path):
    """Every GEMM description and the column sum, random odd shapes and patterns plus edge cases."""
    dtype, arch = PATHS[path]
    failures = []
    for i, case in enumerate(row_cases(6, seed=10) + EDGE_ROW_CASES):
        failures += check_row(plain, case, dtype, arch, _schedule(i), seed=i)
    for i, case in enumerate(tile_cases(6, seed=11) + EDGE_TILE_CASES):
        failures += check_tile(plain, case, dtype, arch, _schedule(i), seed=100 + i)
    for i, case in enumerate(column_sum_cases(3, seed=12)):
        failures += check_column_sum(plain, case, dtype, _schedule(i), seed=200 + i)
    _assert_none(failures)


def test_address_and_undefined_behaviour_sanitizers():
    """A subset under ASan + UBSan: every kernel and dtype, out-of-bounds or undefined behaviour aborts."""
    exe = build("asan")
    failures = []
    for i, (dtype, arch) in enumerate(PATHS.values()):
        failures += check_row(exe, row_cases(1, seed=20 + i)[0], dtype, arch, "parallel", seed=i)
        failures += check_tile(exe, tile_cases(1, seed=30 + i)[0], dtype, arch, "parallel", seed=i)
        failures += check_column_sum(exe, column_sum_cases(1, seed=40 + i)[0], dtype, "parallel", seed=i)
    for i, case in enumerate(EDGE_ROW_CASES[:3]):
        failures += check_row(exe, case, torch.float32, 900, "parallel", seed=i)
    failures += check_tile(exe, EDGE_TILE_CASES[0], torch.float32, 900, "parallel", seed=0)
    # offset + keep of the element pattern past 2^31 - 1 (dp * tile just below it): the index arithmetic must
    # not form that sum (UBSan's signed-overflow abort before pattern_index.h computed it without the sum)
    failures += check_tile(exe, HUGE_PERIOD_TILE_CASE, torch.float32, 900, "parallel", seed=0)
    _assert_none(failures)


def test_thread_sanitizer():
    """One tile case (WMMA GEMMs with 128-bit cp.async copies, and the column sum) and one float32 row case
    (4-byte cp.async copies) under TSan, the threads of each block running freely: a race on shared memory
    (a missing barrier or cp.async wait) is reported."""
    exe = build("tsan")
    case = TileCase(37, 48, 40, TilePattern(2, 1, 8, 1), True)  # rows of 80 bytes, runs of 8 halves
    failures = check_tile(exe, case, torch.bfloat16, 900, "parallel", seed=0)
    failures += check_row(
        exe, RowCase(21, 35, 53, RowPattern(3, 2, 2), RowPattern(2, 0, 1), True), torch.float32, 900, "parallel", seed=1
    )
    _assert_none(failures)


def _forward_run(exe: Path, case: RowCase | TileCase, dtype: torch.dtype, arch: int = 900) -> Run:
    """The forward op of ``case`` once (its GEMM is the first launch), for the emulator's report."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(case, RowCase):
        op, n_x, n_y = "row_linear", case.inp.kept_count(case.n_in), case.out.kept_count(case.n_out)
    else:
        op, n_x, n_y = "tile_linear", case.n_in, case.n_out
    buffers = {"x": _random(gen, dtype, case.rows, n_x), "w": _random(gen, dtype, case.n_out, case.n_in)}
    if case.bias:
        buffers["b"] = _random(gen, dtype, case.n_out)
    buffers["y"] = _nan(dtype, case.rows, n_y)
    run = run_driver(exe, op, dtype, (case.rows, case.n_out, case.n_in, *case.ints, case.bias), buffers, arch)
    assert run.failure(op) is None, run.failure(op)
    return run


def test_large_problems_take_the_big_block(plain):
    """The launcher picks 128 x 64 blocks when they still give every SM (2 emulated) a block, else 64 x 64;
    the big block computes every GEMM right in every dtype and kernel."""
    all_kept = RowPattern(1, 0, 1)
    grids = {
        (200, 130): (2, 3, 1),  # 2 x 3 big blocks
        (60, 130): (1, 3, 1),  # M fits one small block
        (100, 50): (2, 1, 1),  # one big block would leave an SM idle
    }
    for (rows, n_out), grid in grids.items():
        run = _forward_run(plain, RowCase(rows, n_out, 9, all_kept, all_kept, False), torch.float32)
        assert run.grids[0] == grid, (rows, n_out, run.grids)
    failures = []
    for i, (dtype, arch) in enumerate(PATHS.values()):
        failures += check_row(plain, LARGE_ROW_CASE, dtype, arch, _schedule(i), seed=i)
        failures += check_tile(plain, LARGE_TILE_CASE, dtype, arch, _schedule(i + 1), seed=i)
    _assert_none(failures)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_128_bit_loads_only_on_aligned_contiguous_runs(plain, dtype):
    """Kept runs that are consecutive and 16-byte aligned are copied 128 bits at a time (cp.async on sm_90);
    operands whose rows are not 16-byte aligned never are, and partly misaligned runs (which the emulator
    would fault on) take the element-wise path. Every case still matches the ops."""
    assert _forward_run(plain, ALIGNED_TILE_CASE, dtype).copies["async16"] > 0
    odd_ld = TileCase(37, 63, 95, TilePattern(3, 1, 8, 2), True)  # rows of x and W not 16-byte aligned
    copies = _forward_run(plain, odd_ld, dtype).copies
    assert copies["async16"] == 0, copies
    failures = []
    for i, case in enumerate([ALIGNED_TILE_CASE, odd_ld, *MISALIGNED_TILE_CASES]):
        failures += check_tile(plain, case, dtype, 900, _schedule(i), seed=i)
    _assert_none(failures)


@pytest.mark.parametrize("path", ["float32", "float64", "float16-wmma", "bfloat16-simt"])
def test_synchronous_path_before_sm80(path):
    """Device code built as for sm_75 (no cp.async): the tiles load synchronously, aligned runs through
    128-bit loads (__ldg of a uint4), and every op matches."""
    exe = build("sm75")
    dtype = PATHS[path][0]
    copies = _forward_run(exe, ALIGNED_TILE_CASE, dtype, arch=750).copies
    assert copies["async"] == 0 and copies["load128"] > 0, copies
    failures = []
    for i, case in enumerate([ALIGNED_TILE_CASE, MISALIGNED_TILE_CASES[0], *tile_cases(2, seed=50)]):
        failures += check_tile(exe, case, dtype, 750, _schedule(i), seed=i)
    for i, case in enumerate([LARGE_ROW_CASE, *row_cases(2, seed=51)]):
        failures += check_row(exe, case, dtype, 750, _schedule(i), seed=i)
    _assert_none(failures)


# A planted bug: file, the exact text, its replacement, build flavour, and what the failure must say.
PLANTED_BUGS = {
    "removed __syncthreads": (
        "pattern_gemm.cu",
        "    __syncthreads();  // everyone's;",
        "    // everyone's;",
        "plain",
        "entries off",  # the serial schedule reads tiles other threads have not copied yet
    ),
    "removed cp.async wait": (
        "pattern_gemm.cu",
        "    wait_copies();    // this thread's",
        "    (void)wait_copies;  // this thread's",
        "plain",
        "entries off",  # the copies never land: the K loop reads stale shared memory
    ),
    "broken bound": (
        "pattern_gemm.cu",
        "if (i0 + i + v < ext_i)",
        "if (i0 + i + v <= ext_i)",
        "asan",
        "ERROR: AddressSanitizer: heap-buffer-overflow",  # reads one kept K index past the end
    ),
    "kept-index off by one": (
        "pattern_index.h",
        "return t < w ? t : p.offset + (t - w);",
        "return t <= w ? t : p.offset + (t - w);",
        "plain",
        "entries",  # wrong entries written, or right ones off
    ),
    "128-bit load on a misaligned run": (
        "pattern_gemm.cu",
        "first % kVec == 0 && ",
        "",
        "plain",
        "not 16-byte aligned",  # the emulated cp.async checks its addresses
    ),
    "128-bit load on a non-consecutive run": (
        "pattern_gemm.cu",
        "last - first == kVec - 1",
        "last >= first",
        "plain",
        "entries off",  # reads physical neighbours of kept indices
    ),
    "removed WMMA staging barrier": (
        "pattern_gemm.cu",
        "      __syncthreads();  // the warp's lanes read each other's entries",
        "      // the warp's lanes read each other's entries",
        "plain",
        "entries off",  # a lane reads staged entries that other lanes of its warp have not stored yet
    ),
}
PLANTED_DTYPES = {"removed WMMA staging barrier": torch.float16}  # the half types run the WMMA kernel


@pytest.mark.parametrize("bug", PLANTED_BUGS)
def test_planted_bug_fails(bug, tmp_path):
    """The kernels with one planted bug, built from a patched copy: the float32 cases (float16 for the WMMA
    kernel) must catch it, with a wrong result or a sanitizer report."""
    name, old, new, flavour, evidence = PLANTED_BUGS[bug]
    dtype = PLANTED_DTYPES.get(bug, torch.float32)
    kernels = tmp_path / "kernels"
    shutil.copytree(KERNELS, kernels)
    text = (kernels / name).read_text()
    assert text.count(old) == 1, f"the text to patch is no longer in kernels/{name}: update PLANTED_BUGS"
    (kernels / name).write_text(text.replace(old, new))
    exe = build(flavour, kernels)
    failures = []
    for i, case in enumerate(EDGE_ROW_CASES + row_cases(3, seed=10)):
        failures += check_row(exe, case, dtype, 900, "serial", seed=i)
        if failures:
            break
    for i, case in enumerate([ALIGNED_TILE_CASE, *MISALIGNED_TILE_CASES, *EDGE_TILE_CASES, *tile_cases(3, seed=11)]):
        if failures:
            break
        failures += check_tile(exe, case, dtype, 900, "serial", seed=i)
    assert failures, f"the planted bug '{bug}' went unnoticed"
    assert evidence in failures[0], failures[0]
