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

The split count a GPU run uses is column_sum_splits (kernels/block_ops.h, called by kernels/binding.cpp): the
driver's ``column_sum_auto`` op lets that same function pick it, on shapes where it picks one pass, several
splits and the most it ever picks, and the launch grids show the launch used its choice. Its bounds are checked
directly (``column_sum_splits`` op), and a rule off by one split must fail.
"""

from __future__ import annotations

import random
import re
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


def _column_sum_grids(cols: int, splits: int) -> list[tuple[int, int, int]]:
    """The launches of a column sum: 32-column blocks by splits, then the finishing pass when split (none when
    there is no column)."""
    if cols == 0:
        return []
    return [((cols + 31) // 32, splits, 1)] + ([((cols + 255) // 256, 1, 1)] if splits > 1 else [])


def check_column_sum(
    exe: Path, rows, n, pattern, splits, dtype, seed: int, schedule="parallel", auto: bool = False
) -> list[str]:
    """out[kept_index(map, j)] = sum_i g[i, j], split over row ranges; out's other entries untouched; the
    launches have the grids of ``splits`` splits. auto: the launcher gets the split count from
    column_sum_splits, as the binding does (``splits`` is then the count it must pick)."""
    gen = torch.Generator().manual_seed(seed)
    kept = pattern.keep_mask(n)
    g = _random(gen, dtype, rows, int(kept.sum()))  # [rows, cols]
    exact, magnitude = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    exact[kept], magnitude[kept] = g.double().sum(0), g.double().abs().sum(0)
    ints = (rows, g.shape[1], pattern.dp, pattern.offset, pattern.keep, n)
    op, ints = ("column_sum_auto", ints) if auto else ("column_sum_split", (*ints, splits))
    run = run_driver(exe, op, dtype, ints, {"g": g, "out": _nan(dtype, n)}, schedule=schedule)
    label = f"{op} rows={rows} n={n} {pattern} splits={splits} {DTYPE_NAMES[dtype]} {schedule}"
    if (failure := run.failure(label)) is not None:
        return [failure]
    failure = _compare(label, run.buffers["out"], exact, magnitude, rows, kept)
    torch_sum = TORCH_BLOCK_KERNELS.column_sum(g.double(), n, pattern)  # the PyTorch definition agrees with exact
    assert torch.allclose(torch_sum[kept], exact[kept])
    if failure is None and run.grids != (want := _column_sum_grids(g.shape[1], splits)):
        failure = f"{label}: launch grids {run.grids}, expected {want}"
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


# Shapes on which column_sum_splits picks one pass, several splits and its most (kernels/block_ops.h: at least
# kColumnSumRows = 128 rows per split, splits until about kColumnSumBlocks = 1024 blocks of 32 columns):
# (rows, n, map, dtype, the split count it must pick); cols = map.kept_count(n).
AUTO_CASES = {
    "one pass at 128 rows": (128, 67, RowPattern(3, 2, 2), torch.float16, 1),  # 45 columns
    "no rows": (0, 37, RowPattern(1, 0, 1), torch.float32, 1),  # out = 0 at the kept entries
    "no kept column": (5, 3, RowPattern(4, 3, 1), torch.bfloat16, 1),  # nothing launched
    "two splits at 129 rows": (129, 45, RowPattern(5, 1, 4), torch.bfloat16, 2),  # 36 columns
    "tall": (1001, 101, RowPattern(4, 1, 3), torch.float32, 8),  # 75 columns: ceil(1001 / 128)
    "wide": (385, 2729, RowPattern(4, 3, 3), torch.float64, 4),  # 2047 columns (64 blocks, 16 splits would fill)
    # 31 columns (one block): 1024 splits of 129 rows, the last 3 empty; 1029 would have 128 rows each
    "most splits": (131597, 31, RowPattern(1, 0, 1), torch.float16, 1024),
}


@pytest.mark.parametrize("case", AUTO_CASES)
def test_column_sum_picks_its_splits_as_the_binding_does(plain, case):
    rows, n, pattern, dtype, splits = AUTO_CASES[case]
    schedule = _schedule(list(AUTO_CASES).index(case))
    _assert_none(check_column_sum(plain, rows, n, pattern, splits, dtype, seed=90, schedule=schedule, auto=True))


# column_sum_splits(rows, cols) on shapes worked out by hand from kernels/block_ops.h.
RULE_CASES = {
    (0, 0): 1,
    (1, 1): 1,
    (128, 45): 1,
    (129, 45): 2,
    (2001, 3001): 11,  # 94 column blocks: ceil(1024 / 94) = 11 splits fill the GPU, before ceil(2001 / 128) = 16
    (4097, 1025): 32,  # 33 column blocks: ceil(1024 / 33) = 32
    (129, 32769): 1,  # 1025 column blocks fill it without splitting
    (1 << 40, 1): 1024,  # the most it picks: kColumnSumBlocks splits of one column block
}
RULE_ROWS = [0, 1, 2, 127, 128, 129, 255, 257, 1001, 130944, 130945, 131597, 10**6, 2**31, 2**40, 2**62]
RULE_COLS = [0, 1, 31, 32, 33, 1023, 1025, 32736, 32737, 32769, 10**6, 2**31, 2**40]
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y, which holds the splits


def check_split_rule(exe: Path) -> list[str]:
    """column_sum_splits on RULE_CASES and on every pair of RULE_ROWS x RULE_COLS: never 0, never more splits
    than ceil(rows / 128) (so never more than rows), within gridDim.y, and about 1024 blocks at most."""
    pairs = list(RULE_CASES) + [(r, c) for r in RULE_ROWS for c in RULE_COLS]
    run = run_driver(exe, "column_sum_splits", torch.float32, [i for pair in pairs for i in pair], {})
    if (failure := run.failure("column_sum_splits")) is not None:
        return [failure]
    found = re.findall(r"^splits (\d+) (\d+) (\d+)$", run.done.stdout, re.MULTILINE)
    picked = {(int(r), int(c)): int(s) for r, c, s in found}
    assert list(picked) == list(dict.fromkeys(pairs)), f"the driver answered other pairs:\n{run.done.stdout}"
    failures = [
        f"column_sum_splits{pair} = {picked[pair]}, expected {want}"
        for pair, want in RULE_CASES.items()
        if picked[pair] != want
    ]
    for (rows, cols), splits in picked.items():
        col_blocks = (cols + 31) // 32
        if not 1 <= splits <= min(max(1, -(-rows // 128)), MAX_GRID_Y):
            failures.append(f"column_sum_splits({rows}, {cols}) = {splits}: outside [1, min(ceil(rows / 128), 65535)]")
        elif splits > 1 and splits * col_blocks >= 1024 + col_blocks:
            failures.append(f"column_sum_splits({rows}, {cols}) = {splits}: {splits * col_blocks} blocks, over 1024")
    return failures


def test_column_sum_split_rule_bounds(plain):
    _assert_none(check_split_rule(plain))


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


# Planted bugs in the split rule, which the checks with explicit split counts above never see.
PLANTED_RULE_BUGS = {
    "one split too many": (
        "block_ops.h",
        "return splits > 1 ? splits : 1;",
        "return (splits > 1 ? splits : 1) + 1;",
        "plain",
        "launch grids",  # the grids show 3 splits where the rule must pick 2 (sums still right)
    ),
    "blocks rounded down": (
        "block_ops.h",
        "(kColumnSumBlocks + col_blocks - 1) / col_blocks",
        "kColumnSumBlocks / col_blocks",
        "plain",
        "column_sum_splits(2001, 3001) = 10, expected 11",
    ),
}


def _build_patched(tmp_path: Path, bugs: dict, bug: str) -> tuple[Path, str]:
    """The driver built from a copy of kernels/ with ``bug`` planted; also what its failure must say."""
    name, old, new, flavour, evidence = bugs[bug]
    kernels = tmp_path / "kernels"
    shutil.copytree(KERNELS, kernels)
    text = (kernels / name).read_text()
    assert text.count(old) == 1, f"the text to patch is no longer in kernels/{name}: update the planted bugs"
    (kernels / name).write_text(text.replace(old, new))
    return build(flavour, kernels), evidence


@pytest.mark.parametrize("bug", PLANTED_BUGS)
def test_planted_bug_fails(bug, tmp_path):
    exe, evidence = _build_patched(tmp_path, PLANTED_BUGS, bug)
    failures = check_scatter(exe, *EDGE_SCATTER[3], torch.float32, seed=0)
    failures += check_column_sum(exe, 91, 45, RowPattern(3, 1, 2), 4, torch.float32, seed=1)
    assert failures, f"the planted bug '{bug}' went unnoticed"
    assert evidence in failures[0], failures[0]


@pytest.mark.parametrize("bug", PLANTED_RULE_BUGS)
def test_planted_split_rule_bug_fails(bug, tmp_path):
    exe, evidence = _build_patched(tmp_path, PLANTED_RULE_BUGS, bug)
    failures = []
    for case in ["two splits at 129 rows", "tall"]:  # the small ones
        rows, n, pattern, _, splits = AUTO_CASES[case]
        failures += check_column_sum(exe, rows, n, pattern, splits, torch.float32, seed=2, auto=True)
    failures += check_split_rule(exe)
    assert failures, f"the planted bug '{bug}' went unnoticed"
    assert evidence in failures[0], "\n".join(failures)
