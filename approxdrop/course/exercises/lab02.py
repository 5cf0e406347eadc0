"""Lab 02 exercises: the kept units of a RowPattern, the compact forward of a layer, and the grouped
offset draw of grouped complementary patterns (docs/method.md §9)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ...distribution import PatternDistribution
from ...ops import row_pattern_linear
from ...patterns import RowPattern
from ..checks import CheckResult, WrongAnswer, check, describe, draw_int, fresh_generator

ROW_CASES = [(12, 3, 1, 1), (10, 4, 3, 1), (10, 4, 3, 2), (7, 5, 4, 3), (9, 1, 0, 1), (6, 6, 2, 6), (5, 8, 6, 1)]


def reference_kept_indices(n: int, dp: int, offset: int, keep: int) -> torch.Tensor:
    return RowPattern(dp, offset, keep).kept_indices(n)


def random_pattern(generator: torch.Generator, max_dp: int = 16) -> RowPattern:
    """A RowPattern drawn with ``generator``: dp in [1, max_dp], any offset, keep in [1, dp]."""
    dp = draw_int(generator, 1, max_dp)
    return RowPattern(dp, draw_int(generator, 0, dp - 1), draw_int(generator, 1, dp))


def row_cases() -> list[tuple[int, int, int, int]]:
    """ROW_CASES and three (n, dp, offset, keep) drawn anew at every call."""
    fresh = fresh_generator()
    drawn = [(draw_int(fresh, 1, 100), random_pattern(fresh)) for _ in range(3)]
    return ROW_CASES + [(n, p.dp, p.offset, p.keep) for n, p in drawn]


def check_kept_indices(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``kept_indices(n, dp, offset, keep)`` returns Long[k], the units i in [0, n) with
    ``(i - offset) mod dp < keep``, in increasing order."""
    return check("kept indices", fn, reference_kept_indices, row_cases())


def reference_compact_forward(
    x_kept: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_pattern: RowPattern,
    out_pattern: RowPattern,
) -> torch.Tensor:
    return row_pattern_linear(x_kept, weight, bias, in_pattern, out_pattern)


def check_compact_forward(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``compact_forward(x_kept, weight, bias, in_pattern, out_pattern)`` with x_kept
    (Tensor[B, k_in], only the kept inputs), weight (Tensor[n_out, n_in]) and bias (Tensor[n_out])
    returns Tensor[B, k_out], the kept outputs: ``in_pattern.scale * x_kept @ W[kept_out][:, kept_in].T
    + b[kept_out]``, with a GEMM of the kept size (never the full weight), in x_kept's dtype.

    Fixed cases in float64 (to 1e-9) and float32 (to FLOAT32_ATOL), and two drawn anew; every
    multiplication the answer runs is counted (``MultiplyCounter``), and one that does more than the
    kept-size GEMM needs fails."""
    gen, fresh = torch.Generator().manual_seed(2), fresh_generator()
    shapes = [
        (12, 10, RowPattern(2, 1), RowPattern(3, 0)),
        (9, 8, RowPattern(1, 0), RowPattern(4, 2, 3)),
        (7, 11, RowPattern(5, 3, 2), RowPattern(1, 0)),
    ]
    shapes += [(draw_int(fresh, 1, 40), draw_int(fresh, 1, 40), random_pattern(fresh), random_pattern(fresh))]
    shapes += [(draw_int(fresh, 1, 40), draw_int(fresh, 1, 40), random_pattern(fresh), random_pattern(fresh))]
    shapes += [(10, 12, RowPattern(3, 2), RowPattern(2, 0)), (16, 9, RowPattern(4, 1, 3), RowPattern(1, 0))]
    dtypes = [torch.float64] * 5 + [torch.float32] * 2
    cases = []
    for (n_out, n_in, in_p, out_p), dtype in zip(shapes, dtypes):
        g = fresh if len(cases) in (3, 4) else gen
        x = torch.randn(4, in_p.kept_count(n_in), generator=g, dtype=dtype)  # [B, k_in]
        weight = torch.randn(n_out, n_in, generator=g, dtype=dtype)  # [n_out, n_in]
        cases.append((x, weight, torch.randn(n_out, generator=g, dtype=dtype), in_p, out_p))

    def kept_size_only(x_kept, weight, bias, in_pattern, out_pattern):
        return kept_size_forward(fn, x_kept, weight, bias, in_pattern, out_pattern)

    return check(
        "compact forward",
        kept_size_only,
        reference_compact_forward,
        cases,
        atol=1e-9,
        atol_float32=FLOAT32_ATOL,
        pass_note="each multiplication at most the kept-size GEMM's work",
    )


FLOAT32_ATOL = 1e-4  # float32 keeps about 7 digits; the float32 cases' outputs stay below 20


def _matrix_work(packet: str, args: tuple) -> int:
    """Multiply-adds of one matrix product ``aten.<packet>(*args)``, 0 for any other op."""
    first = 1 if packet in ("addmm", "_addmm_activation", "baddbmm", "addbmm", "addmv", "addr") else 0
    a, b = (args[first : first + 2] + (None, None))[:2]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return 0
    if packet in ("mm", "bmm", "addmm", "_addmm_activation", "baddbmm", "addbmm"):  # a [..., n, k] @ b [..., k, m]
        return a.numel() * b.shape[-1]
    if packet in ("mv", "addmv", "dot", "vdot"):  # a [n, k] @ b [k], or a [k] . b [k]
        return a.numel()
    return a.numel() * b.numel() if packet == "addr" else 0  # the outer product a [n] b [m]^T


class MultiplyCounter(TorchDispatchMode):
    """Records every multiplication the code under it runs as (kind, aten op, multiplies): matrix
    products (mm, addmm, bmm, baddbmm, addbmm, mv, addmv, dot, vdot, addr: what ``@``, ``torch.matmul``,
    ``F.linear`` and ``torch.einsum`` run) and elementwise multiplies (mul, addcmul: their output's elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket.__name__
        if work := _matrix_work(packet, args):
            self.ops.append(("matrix product", f"aten.{packet}", work))
        elif packet.rstrip("_") in ("mul", "addcmul") and isinstance(out, torch.Tensor):
            self.ops.append(("elementwise multiply", f"aten.{packet}", out.numel()))
        return out


def kept_size_forward(
    fn: Callable[..., Any],
    x_kept: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_pattern: RowPattern,
    out_pattern: RowPattern,
) -> Any:
    """``fn``'s answer, after counting its multiplications: WrongAnswer when one op does more than the
    kept-size GEMM's B * k_out * k_in multiply-adds (e.g. the full weight, masked, sliced or multiplied a
    row at a time; an elementwise multiply may also scale all of x_kept or the output). Ops are judged
    one by one, so running the kept-size product twice passes."""
    with MultiplyCounter() as counter:
        out = fn(x_kept, weight, bias, in_pattern, out_pattern)
    batch = x_kept.shape[0]
    k_out, k_in = out_pattern.kept_count(weight.shape[0]), in_pattern.kept_count(weight.shape[1])
    kept = batch * k_out * k_in
    scaling = max(kept, batch * k_in, batch * k_out)  # an elementwise multiply may scale x_kept or the output
    over = [op for op in counter.ops if op[2] > (scaling if op[0] == "elementwise multiply" else kept)]
    if over:
        kind, name, work = max(over, key=lambda op: op[2])
        scaled = (
            f", or {scaling} to scale x_kept or the output" if kind == "elementwise multiply" and scaling > kept else ""
        )
        raise WrongAnswer(
            f"one {kind} ({name}) did {work} multiplies, where the kept-size GEMM needs {kept} in all "
            f"(B x k_out x k_in = {batch} x {k_out} x {k_in}){scaled}: take the kept rows and columns of the "
            "weight first, then multiply only those"
        )
    return out


# --------------------------------------------------------------------------- grouped offsets (docs/method.md §9)

# (dp, groups, draws, seed): fewer groups than dp, as many, more (not a multiple of dp), and dp = 1
GROUPED_CASES = [(5, 3, 2000, 0), (4, 4, 2000, 1), (3, 8, 3000, 2), (2, 5, 2000, 3), (1, 3, 50, 4)]
# Each chi-square test fails a right answer with probability ALPHA. The cases hold 20 tests of one
# group's offset and 16 of two neighbouring groups' offsets, and 4 tests (at most RUNS_ALPHA each, an
# exact binomial bound, see _fresh_runs) that a run of dp groups is a fresh permutation, independent of
# the run before, so a right answer (any way of drawing from the generator) fails the whole check with
# probability below 36 * ALPHA + 4 * RUNS_ALPHA < 3.7e-7 < 1e-6 (Bonferroni).
ALPHA = 1e-8
RUNS_ALPHA = 1e-9
RUN_CELLS_PER_DRAW = 1 / 20  # two runs are tested where there are at most draws / 20 ways to fill them
REPLAYED = 3  # draws repeated from a second generator with the same seed: the answer must draw from its generator


def reference_grouped_offsets(dp: int, groups: int, generator: torch.Generator) -> torch.Tensor:
    """Long[groups]: the offsets ``PatternDistribution.sample_groups`` gives the groups of one step."""
    patterns = PatternDistribution(((dp, 1),), (1.0,)).sample_groups(groups, generator)
    return torch.tensor([p.offset for p in patterns])


def _offsets(fn: Callable[..., Any], dp: int, groups: int, generator: torch.Generator) -> torch.Tensor:
    """``fn(dp, groups, generator)`` as Long[groups] after the checks every single draw must pass (type,
    shape, finite, integer dtype, range, distinct offsets in each run of ``dp`` groups); WrongAnswer if not."""
    got = fn(dp, groups, generator)
    if not isinstance(got, torch.Tensor):
        raise WrongAnswer(f"it returned {describe(got)}, expected a Long tensor of {groups} offsets")
    got = got.detach().cpu()
    if got.shape != (groups,):
        raise WrongAnswer(f"it returned shape {tuple(got.shape)}, expected ({groups},): one offset per group")
    if got.is_floating_point() or got.is_complex():
        bad = ~got.isfinite()  # [groups]
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise WrongAnswer(f"element [{i}] is {got[i].item():.6g}, expected an integer offset in [0, {dp - 1}]")
    if got.dtype != torch.long:
        raise WrongAnswer(f"it returned {describe(got)}, expected a Long tensor (torch.int64) of {groups} offsets")
    outside = (got < 0) | (got >= dp)  # [groups]
    if bool(outside.any()):
        i = int(outside.nonzero()[0])
        raise WrongAnswer(f"element [{i}] is {int(got[i])}, expected an offset in [0, {dp - 1}]")
    for start in range(0, groups, dp):
        run = got[start : start + dp]  # [<= dp]: one permutation, or the start of one
        if run.unique().numel() != run.numel():
            raise WrongAnswer(
                f"it returned {got.tolist()}: groups {start}..{start + run.numel() - 1} repeat an offset, expected "
                f"distinct offsets in every run of dp = {dp} groups (a permutation of 0..{dp - 1}), so that "
                "the groups keep different units"
            )
    return got


def _chi_square_p(counts: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of ``counts`` (Long[cells]) against equal probabilities."""
    expected = counts.sum().double() / counts.numel()
    stat = float(((counts.double() - expected) ** 2 / expected).sum())
    half_df, half_stat = torch.tensor([(counts.numel() - 1) / 2, stat / 2], dtype=torch.float64)
    return float(torch.special.gammaincc(half_df, half_stat))  # the chi-square survival function


def _uniformity(offsets: torch.Tensor, dp: int) -> None:
    """WrongAnswer unless each group's offset (column of Long[draws, groups]) passes a chi-square test of
    uniformity on 0..dp-1, and each two neighbouring groups' offset pairs are uniform: over the
    dp (dp - 1) pairs of distinct offsets inside a permutation, over all dp^2 pairs across two (fresh,
    independent) permutations."""
    draws, groups = offsets.shape
    if dp == 1:
        return
    for g in range(groups):
        counts = torch.bincount(offsets[:, g], minlength=dp)  # [dp]
        if (p := _chi_square_p(counts)) < ALPHA:
            raise WrongAnswer(
                f"group {g}'s offset is not uniform: over {draws} draws it took the values 0..{dp - 1} "
                f"{counts.tolist()} times, expected about {draws / dp:.0f} each (chi-square test, p-value {p:.2g})"
            )
    for g in range(groups - 1):
        pairs = torch.bincount(offsets[:, g] * dp + offsets[:, g + 1], minlength=dp * dp)  # [dp * dp]
        fresh = (g + 1) % dp == 0  # group g + 1 starts a new permutation
        cells = pairs if fresh else pairs[~torch.eye(dp, dtype=torch.bool).reshape(-1)]  # distinct pairs only
        if (p := _chi_square_p(cells)) < ALPHA:
            top = int(pairs.argmax())
            what = "two independent uniform offsets" if fresh else "a uniformly random pair of distinct offsets"
            why = f"group {g + 1} starts a fresh permutation" if fresh else "both are in one permutation"
            raise WrongAnswer(
                f"the offsets of groups {g} and {g + 1} are not {what} ({why}): over {draws} draws the pair "
                f"({top // dp}, {top % dp}) came {int(pairs[top])} times, expected about {draws / cells.numel():.0f} "
                f"(chi-square test, p-value {p:.2g})"
            )


def binomial_bounds(draws: int, cells: int, alpha: float) -> tuple[int, int, float]:
    """(low, high, bound): each of ``cells`` counts, each Binomial(draws, 1 / cells) when a right answer
    fills the cells, falls outside [low, high] with probability at most alpha / (2 cells) on each side, so
    one outside the range fails a right answer with probability at most ``bound`` <= alpha (the union
    bound: cells times the exact two tails, computed in float64 from the log-pmf, summed from each end)."""
    if cells == 1:  # one cell: it holds every draw
        return draws, draws, 0.0
    p = 1.0 / cells
    log_pmf = [
        math.lgamma(draws + 1) - math.lgamma(k + 1) - math.lgamma(draws - k + 1)
        + (k * math.log(p) if k else 0.0) + ((draws - k) * math.log1p(-p) if draws > k else 0.0)
        for k in range(draws + 1)
    ]  # fmt: skip
    pmf = [math.exp(v) for v in log_pmf]
    side = alpha / (2 * cells)
    low, below = 0, 0.0  # below: P(X < low)
    while below + pmf[low] <= side:
        below += pmf[low]
        low += 1
    high, above = draws, 0.0  # above: P(X > high)
    while above + pmf[high] <= side:
        above += pmf[high]
        high -= 1
    return low, high, cells * (below + above)


def _fresh_runs(offsets: torch.Tensor, dp: int) -> None:
    """WrongAnswer unless each run of dp groups is a fresh permutation, independent of the run before it:
    over the draws, every way of filling two consecutive runs (dp! permutations, then the next run's first
    m offsets: dp! / (dp - m)! ways) comes Binomial(draws, 1 / cells) times, within ``binomial_bounds`` at
    RUNS_ALPHA. Runs are tested where there are at most draws * RUN_CELLS_PER_DRAW ways to fill them, and
    dp > 1. A later run that is the first one shifted (mod dp) fails this with dp >= 3."""
    draws, groups = offsets.shape
    for start in range(dp, groups, dp):  # the run at start, and the run of dp before it
        m = min(dp, groups - start)
        cells = math.factorial(dp) * math.perm(dp, m)
        if dp < 2 or cells > draws * RUN_CELLS_PER_DRAW:
            continue
        low, high, _ = binomial_bounds(draws, cells, RUNS_ALPHA)
        counts = {a + b: 0 for a in itertools.permutations(range(dp)) for b in itertools.permutations(range(dp), m)}
        for pair in offsets[:, start - dp : start + m].tolist():
            counts[tuple(pair)] += 1
        outside = [cell for cell in counts if not low <= counts[cell] <= high]
        if outside:
            worst = max(outside, key=lambda cell: abs(counts[cell] - draws / cells))
            raise WrongAnswer(
                f"groups {start - dp}..{start + m - 1} are not two fresh, independent permutations: over {draws} "
                f"draws, offsets {list(worst[:dp])} then {list(worst[dp:])} came {counts[worst]} times, expected about "
                f"{draws / cells:.0f} (between {low} and {high}) for each of the {cells} ways to fill them: draw each "
                f"run of dp = {dp} groups anew (a new torch.randperm), not from the run before"
            )


def offset_frequencies(fn: Callable[..., Any], dp: int, groups: int, draws: int, seed: int) -> torch.Tensor:
    """Float64[groups, dp]: how often each group got each offset over ``draws`` calls of ``fn`` with one
    generator seeded ``seed``, after every test of ``check_grouped_offsets`` passed (WrongAnswer if one fails)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.stack([_offsets(fn, dp, groups, generator) for _ in range(draws)])  # [draws, groups]
    again = torch.Generator().manual_seed(seed)
    for i in range(min(REPLAYED, draws)):
        if not torch.equal(replay := _offsets(fn, dp, groups, again), offsets[i]):
            raise WrongAnswer(
                f"two generators with the same seed gave different offsets ({offsets[i].tolist()} and "
                f"{replay.tolist()}): draw only from `generator`, e.g. torch.randperm(dp, generator=generator)"
            )
    _uniformity(offsets, dp)
    _fresh_runs(offsets, dp)
    counts = torch.stack([torch.bincount(offsets[:, g], minlength=dp) for g in range(groups)])  # [groups, dp]
    return counts.double() / draws


def uniform_frequencies(dp: int, groups: int, draws: int, seed: int) -> torch.Tensor:
    """Float64[groups, dp]: every group takes every offset with probability 1 / dp."""
    return torch.full((groups, dp), 1.0 / dp, dtype=torch.float64)


def check_grouped_offsets(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``grouped_offsets(dp, groups, generator)`` returns Long[groups], the offsets of one step's
    groups: a uniformly random permutation of 0..dp-1, followed by fresh permutations when groups > dp,
    cut to ``groups`` entries, all drawn from ``generator``.

    Checked over 2000-3000 draws per case (50 for dp = 1): the type, shape, dtype and range of every draw; distinct
    offsets in every run of dp groups (so with groups >= dp every offset, and every unit, is covered);
    the same offsets from two generators with the same seed; chi-square tests (see ALPHA) that each
    group's offset is uniform and each two neighbouring groups' offsets are a uniform pair; and tests (see
    ``_fresh_runs``) that each run of dp groups is a fresh permutation, independent of the run before. The max
    difference printed is the largest gap between a group's observed offset frequency and 1 / dp: it
    is chance, and the tests above decide (hence the tolerance of 1, and the PASS line says so). The seeds
    are GROUPED_CASES' shifted by one drawn anew at every call, so no answer can know the draws in advance."""
    shift = draw_int(fresh_generator(), 0, 2**31)
    return check(
        "grouped offsets",
        lambda dp, groups, draws, seed: offset_frequencies(fn, dp, groups, draws, seed),
        uniform_frequencies,
        [(dp, groups, draws, seed + shift) for dp, groups, draws, seed in GROUPED_CASES],
        atol=1.0,
        pass_note=f"decided by chi-square tests of uniform offsets (each at p >= {ALPHA:g}) and tests of fresh "
        "permutations over every draw; the max difference is sampling noise",
    )
