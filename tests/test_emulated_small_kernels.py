"""The cuBLAS path's small kernels run in CI without a GPU: kernels/scatter.cu (the scatter and scatter-add
of a weight-gradient block) and kernels/column_sum.cu (row splits, workspace and finishing pass), unmodified,
through the CUDA-on-CPU emulation of tests/test_emulated_kernels.py (same build, same driver).

Each runs in float32, float64, float16 and bfloat16 on random odd shapes and patterns against its PyTorch
definition (``approxdrop.ops.cuda_cublas.TORCH_BLOCK_KERNELS``), outputs prefilled with NaN so that every
element the scatter must write is seen to be written. The scatter is a copy and the scatter-add one rounded
addition per element, so both must match bit for bit; grouped gradients chain one scatter and several adds
into one buffer, as ``approxdrop.ops.cuda_grouped`` does. One case of each runs under AddressSanitizer +
UndefinedBehaviorSanitizer, and planted bugs (an off-by-one in the inverse index, a missing zero, a dropped
split) must fail.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from test_emulated_kernels import (
    DTYPE_NAMES,
    KERNELS,
    _assert_none,
    _compare,
    _nan,
    _odd,
    _random,
    _row_pattern,
    _schedule,
    build,
    run_driver,
)

from approxdrop.ops.cuda_cublas import TORCH_BLOCK_KERNELS
from approxdrop.patterns import RowPattern

pytestmark = pytest.mark.emulated

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ACC = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}


@pytest.fixture(scope="module")
def plain() -> Path:
    return build("plain")


def _ints(out: RowPattern, inp: RowPattern) -> tuple[int, ...]:
    return out.dp, out.offset, out.keep, inp.dp, inp.offset, inp.keep


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _differs(label: str, got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None when got and want are the same bits (so +0 vs -0, or a NaN left unwritten, differ)."""
    if torch.equal(_bits(got), _bits(want)):
        return None
    wrong = (_bits(got) != _bits(want)).nonzero()
    at = tuple(wrong[0].tolist())
    return (
        f"{label}: {len(wrong)} of {got.numel()} elements differ, first at {at}: {got[at].item()} vs {want[at].item()}"
    )


def scatter(exe: Path, block, full, n_out, n_in, out, inp, add: bool, schedule="parallel"):
    """Runs the scatter (add=False) or scatter-add kernel; returns (full after the run, failure or None)."""
    dtype = block.dtype
    run = run_driver(
        exe,
        "scatter_block",
        dtype,
        (n_out, n_in, *_ints(out, inp), int(add)),
        {"block": block, "full": full},
        schedule=schedule,
    )
    return run.buffers["full"], run.failure(f"scatter_block add={add} {out} {inp} {DTYPE_NAMES[dtype]}")


def _added(full: torch.Tensor, block: torch.Tensor, out: RowPattern, inp: RowPattern) -> torch.Tensor:
    """full with block added at the kept pairs, one rounding per element (the kernel's arithmetic)."""
    acc = ACC[full.dtype]
    kept = out.keep_mask(full.shape[0])[:, None] & inp.keep_mask(full.shape[1])[None, :]
    spread = TORCH_BLOCK_KERNELS.scatter(block.to(acc), tuple(full.shape), out, inp)
    return torch.where(kept, (full.to(acc) + spread).to(full.dtype), full)


def check_scatter(exe: Path, n_out, n_in, out, inp, dtype, seed: int, schedule="parallel") -> list[str]:
    """The scatter writes every element (block at the kept pairs, +0 elsewhere); the scatter-add adds at the
    kept pairs only."""
    gen = torch.Generator().manual_seed(seed)
    block = _random(gen, dtype, out.kept_count(n_out), inp.kept_count(n_in))
    label = f"{(n_out, n_in)} out {out} in {inp} {DTYPE_NAMES[dtype]} {schedule}"
    got, failure = scatter(exe, block, _nan(dtype, n_out, n_in), n_out, n_in, out, inp, False, schedule)
    if failure:
        return [failure]
    failures = [_differs(f"{label} scatter", got, TORCH_BLOCK_KERNELS.scatter(block, (n_out, n_in), out, inp))]
    base = _random(gen, dtype, n_out, n_in)
    got, failure = scatter(exe, block, base, n_out, n_in, out, inp, True, schedule)
    failures += [failure or _differs(f"{label} scatter-add", got, _added(base, block, out, inp))]
    return [f for f in failures if f is not None]


def check_grouped(exe: Path, n_out, n_in, dp_keep, groups: int, dtype, seed: int) -> list[str]:
    """A grouped op's weight gradient: the first pair's block scattered into a NaN-filled buffer, every other
    pair's added, in pair order (``cuda_grouped.GradSum``)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    (in_dp, in_keep), (out_dp, out_keep) = dp_keep
    pairs = list(dict.fromkeys((rng.randrange(out_dp), rng.randrange(in_dp)) for _ in range(groups)))
    full, want = _nan(dtype, n_out, n_in), None
    for o_out, o_in in pairs:
        out, inp = RowPattern(out_dp, o_out, out_keep), RowPattern(in_dp, o_in, in_keep)
        block = _random(gen, dtype, out.kept_count(n_out), inp.kept_count(n_in))
        first = want is None
        full, failure = scatter(exe, block, full, n_out, n_in, out, inp, not first)
        if failure:
            return [failure]
        if first:
            want = TORCH_BLOCK_KERNELS.scatter(block, (n_out, n_in), out, inp)
        else:
            want = _added(want, block, out, inp)
    label = f"grouped {(n_out, n_in)} {dp_keep} pairs {pairs} {DTYPE_NAMES[dtype]}"
    return [f for f in [_differs(label, full, want)] if f is not None]


def check_column_sum(exe: Path, rows, n, pattern, splits, dtype, seed: int, schedule="parallel") -> list[str]:
    """out[kept_index(map, j)] = sum_i g[i, j], split over row ranges; out's other entries untouched."""
    gen = torch.Generator().manual_seed(seed)
    kept = pattern.keep_mask(n)
    g = _random(gen, dtype, rows, int(kept.sum()))
    exact, magnitude = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    exact[kept], magnitude[kept] = g.double().sum(0), g.double().abs().sum(0)
    ints = (rows, g.shape[1], pattern.dp, pattern.offset, pattern.keep, n, splits)
    run = run_driver(exe, "column_sum_split", dtype, ints, {"g": g, "out": _nan(dtype, n)}, schedule=schedule)
    label = f"column_sum rows={rows} n={n} {pattern} splits={splits} {DTYPE_NAMES[dtype]} {schedule}"
    if (failure := run.failure(label)) is not None:
        return [failure]
    failure = _compare(label, run.buffers["out"], exact, magnitude, rows, kept)
    torch_sum = TORCH_BLOCK_KERNELS.column_sum(g.double(), n, pattern)  # the PyTorch definition agrees with exact
    assert torch.allclose(torch_sum[kept], exact[kept])
    return [failure] if failure else []


def scatter_cases(count: int, seed: int):
    rng = random.Random(seed)
    return [(_odd(rng, 149), _odd(rng, 299), _row_pattern(rng), _row_pattern(rng)) for _ in range(count)]


EDGE_SCATTER = [
    (9, 7, RowPattern(1, 0, 1), RowPattern(1, 0, 1)),  # dp = 1: a plain copy
    (13, 5, RowPattern(4, 3, 1), RowPattern(9, 8, 1)),  # no kept column (n_in < dp): all zero
    (2, 11, RowPattern(10, 2, 1), RowPattern(3, 1, 3)),  # no kept row; keep = dp columns
    (67, 257, RowPattern(7, 6, 3), RowPattern(6, 5, 2)),  # wrapping runs; a second column block
]
GROUPED = [((2, 1), (3, 1)), ((3, 2), (2, 1)), ((4, 3), (5, 2))]  # ((in dp, keep), (out dp, keep))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scatter_kernels_match_pytorch(plain, dtype):
    failures = []
    for i, case in enumerate(scatter_cases(5, seed=50) + EDGE_SCATTER):
        failures += check_scatter(plain, *case, dtype, seed=i, schedule=_schedule(i))
    for i, dp_keep in enumerate(GROUPED):
        failures += check_grouped(plain, 37, 53, dp_keep, groups=6, dtype=dtype, seed=60 + i)
    _assert_none(failures)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_column_sum_with_row_splits_matches_pytorch(plain, dtype):
    rng = random.Random(70)
    failures = []
    for i, splits in enumerate([1, 2, 3, 7, 40]):  # 40 splits of fewer rows: some splits are empty
        rows, n = _odd(rng, 199), _odd(rng, 99)
        failures += check_column_sum(plain, rows, n, _row_pattern(rng), splits, dtype, seed=i, schedule=_schedule(i))
    _assert_none(failures)


def test_column_sum_splits_give_the_same_bits_every_run(plain):
    """No atomics: the partial sums are added in split order, whatever the schedule."""
    gen = torch.Generator().manual_seed(80)
    g = _random(gen, torch.float32, 101, 37)
    outs = [
        run_driver(
            plain,
            "column_sum_split",
            torch.float32,
            (101, 37, 1, 0, 1, 37, 5),
            {"g": g, "out": _nan(torch.float32, 37)},
            schedule=s,
        ).buffers["out"]
        for s in ("parallel", "serial", "parallel")
    ]
    assert all(torch.equal(_bits(o), _bits(outs[0])) for o in outs)


def test_sanitizers():
    """Each small kernel once under ASan + UBSan: the workspace and the buffers are exactly sized."""
    exe = build("asan")
    failures = check_scatter(exe, 45, 77, RowPattern(3, 2, 2), RowPattern(5, 4, 1), torch.float32, seed=0)
    failures += check_scatter(exe, *EDGE_SCATTER[1], torch.bfloat16, seed=1)
    failures += check_grouped(exe, 21, 33, GROUPED[1], groups=4, dtype=torch.float16, seed=2)
    failures += check_column_sum(exe, 93, 41, RowPattern(4, 1, 3), 6, torch.float64, seed=3)
    _assert_none(failures)


# A planted bug: file, the exact text, its replacement, build flavour, and what the failure must say.
PLANTED_BUGS = {
    "inverse index off by one": (
        "block_ops.h",
        "return kept_count(p, i);",
        "return kept_count(p, i + 1);",
        "plain",
        "elements differ",  # each kept element takes its right neighbour's value
    ),
    "missing zero": (
        "scatter.cu",
        "full[r * n_in + c] = kept && col_kept ? block[rc * k_in + cc] : zero;",
        "if (kept && col_kept) full[r * n_in + c] = block[rc * k_in + cc];\n    (void)zero;",
        "plain",
        "elements differ",  # the NaN prefill survives where a zero belongs
    ),
    "dropped split": (
        "column_sum.cu",
        "for (long long s = 0; s < splits; ++s)",
        "for (long long s = 1; s < splits; ++s)",
        "plain",
        "entries off",
    ),
}


@pytest.mark.parametrize("bug", PLANTED_BUGS)
def test_planted_bug_fails(bug, tmp_path):
    name, old, new, flavour, evidence = PLANTED_BUGS[bug]
    kernels = tmp_path / "kernels"
    shutil.copytree(KERNELS, kernels)
    text = (kernels / name).read_text()
    assert text.count(old) == 1, f"the text to patch is no longer in kernels/{name}: update PLANTED_BUGS"
    (kernels / name).write_text(text.replace(old, new))
    exe = build(flavour, kernels)
    failures = check_scatter(exe, *EDGE_SCATTER[3], torch.float32, seed=0)
    failures += check_column_sum(exe, 91, 45, RowPattern(3, 1, 2), 4, torch.float32, seed=1)
    assert failures, f"the planted bug '{bug}' went unnoticed"
    assert evidence in failures[0], failures[0]
