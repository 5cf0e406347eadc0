"""Exercises of labs 01, 02, 03 and 06: reference solutions pass, the TODO stub is "not attempted",
and a plausible wrong answer, NaN, a wrong type or an answer that changes its input fails. The grouped
offset draw of lab 02 (a random function) is checked statistically: every wrong draw in
wrong_answers.GROUPED_OFFSETS fails with its own reason, and the library's sampler passes."""

import importlib.util
import math
import re
from fractions import Fraction
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from wrong_answers import GROUPED_OFFSETS, WRONG_TYPES, with_nan

from approxdrop import RowPattern, TilePattern
from approxdrop.course.checks import describe
from approxdrop.course.exercises import lab01, lab02, lab03, lab06

LABS = Path(__file__).resolve().parents[1] / "labs"
SOLUTIONS = LABS / "solutions"


def solutions(lab: str):
    spec = importlib.util.spec_from_file_location(f"solutions_{lab}", SOLUTIONS / f"{lab}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def todo(*args):
    raise NotImplementedError


def unscaled_forward(x, w, b, in_p, out_p):  # forgets the dp/keep scale of the kept inputs
    rows, cols = out_p.kept_indices(w.shape[0]), in_p.kept_indices(w.shape[1])
    return x @ w[rows][:, cols].T + b[rows]


def mirrored_tile_mask(n_out, n_in, dp, offset, tile, keep):  # (b - a + offset) instead of (b - a - offset)
    a, b = torch.arange(-(-n_out // tile))[:, None], torch.arange(-(-n_in // tile))[None]
    return (b - a + offset) % dp < keep


# (lab module, solution module name, exercise name, a wrong answer)
EXERCISES = [
    (lab01, "lab01", "inverted_dropout", lambda x, m, p: x * m * (1 - p)),
    (lab01, "lab01", "gemm_work", lambda sizes, p: 1 - p),
    (lab02, "lab02", "kept_indices", lambda n, dp, offset, keep: torch.arange(offset, n, dp)),
    (lab02, "lab02", "compact_forward", unscaled_forward),
    (lab02, "lab02", "grouped_offsets", GROUPED_OFFSETS["independent with replacement"][0]),
    (lab03, "lab03", "tile_mask", mirrored_tile_mask),
    (lab03, "lab03", "weight_mask", lambda n_out, n_in, *_: torch.ones(n_out, n_in, dtype=torch.bool)),
    (lab06, "lab06", "kept_residues", lambda dp, offset, keep: torch.tensor([(offset + t) % dp for t in range(keep)])),
    (lab06, "lab06", "kept_index", lambda j, dp, offset, keep: j * dp + offset),
]
IDS = [name for _, _, name, _ in EXERCISES]


@pytest.mark.parametrize("lab, solution, name, wrong", EXERCISES, ids=IDS)
def test_reference_solution_passes(lab, solution, name, wrong, capsys):
    result = getattr(lab, f"check_{name}")(getattr(solutions(solution), name))
    assert result.passed, str(result)
    assert capsys.readouterr().out.startswith("[PASS]")


@pytest.mark.parametrize("lab, solution, name, wrong", EXERCISES, ids=IDS)
def test_todo_stub_is_not_attempted(lab, solution, name, wrong, capsys):
    assert getattr(lab, f"check_{name}")(todo).status == "not attempted"
    assert capsys.readouterr().out.startswith("[TODO]")


@pytest.mark.parametrize("lab, solution, name, wrong", EXERCISES, ids=IDS)
def test_wrong_answer_fails(lab, solution, name, wrong, capsys):
    assert getattr(lab, f"check_{name}")(wrong).status == "fail"
    assert capsys.readouterr().out.startswith("[FAIL]")


@pytest.mark.parametrize("lab, solution, name, wrong", EXERCISES, ids=IDS)
def test_nan_in_a_right_answer_fails_naming_case_and_element(lab, solution, name, wrong, capsys):
    assert getattr(lab, f"check_{name}")(with_nan(getattr(solutions(solution), name))).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and "(case 1 of " in out and " nan, expected " in out


@pytest.mark.parametrize("answer", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("lab, solution, name, wrong", EXERCISES, ids=IDS)
def test_wrong_type_fails_saying_what_was_expected(lab, solution, name, wrong, answer, capsys):
    assert getattr(lab, f"check_{name}")(lambda *args: answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and f"it returned {describe(answer)}, expected a " in out


@pytest.mark.parametrize(
    "answer",
    [lambda x, keep_mask, p: x.mul_(0), lambda x, keep_mask, p: x.mul_(keep_mask).div_(1 - p)],
    ids=["zeroes-x", "right-values-in-place"],
)
def test_an_answer_that_changes_its_input_fails_naming_it(answer, capsys):
    assert lab01.check_inverted_dropout(answer).status == "fail"
    assert "it changed x in place" in capsys.readouterr().out


def mask_kept_index(j, dp, offset, keep):  # the review's answer: a mask over all units up to the j-th kept one
    return int(RowPattern(dp, offset, keep).kept_indices((j // keep + 2) * dp)[j])


def numpy_mask_kept_index(j, dp, offset, keep):
    return int(np.flatnonzero((np.arange((j // keep + 2) * dp) - offset) % dp < keep)[j])


def counting_kept_index(j, dp, offset, keep):  # walks the units one by one: no allocation, no end
    seen, unit = -1, -1
    while seen < j:
        unit += 1
        seen += (unit - offset) % dp < keep
    return unit


@pytest.mark.parametrize("answer", [mask_kept_index, numpy_mask_kept_index], ids=["torch-mask", "numpy-mask"])
def test_a_kept_index_that_builds_a_mask_fails_saying_why(answer, capsys):
    """Exercise 2 of lab 06 forbids a mask over all units: the huge j cases make one impossible to allocate,
    and the FAIL says so instead of a bare allocator error."""
    assert lab06.check_kept_index(answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL] j-th kept index: on input (j=1000000000000000, dp=8") and "ran out of memory" in out
    assert "integer arithmetic" in out


def test_a_kept_index_that_walks_the_units_fails_on_time(monkeypatch, capsys):
    monkeypatch.setattr(lab06, "HUGE_TIMEOUT_S", 0.3)
    assert lab06.check_kept_index(counting_kept_index).status == "fail"
    out = capsys.readouterr().out
    assert "(j=1000000000000000, dp=8" in out and "it took longer than 0.3 s" in out


def table_free_kept_index(j, dp, offset, keep):  # hint 2's table-free form: the wrapped residues come first
    wrapped, r = max(0, offset + keep - dp), j % keep
    return (j // keep) * dp + (r if r < wrapped else offset + r - wrapped)


@pytest.mark.parametrize(
    "answer",
    [
        table_free_kept_index,
        lambda j, dp, offset, keep: (j // keep) * dp + int(RowPattern(dp, offset, keep).kept_indices(dp)[j % keep]),
        lambda j, dp, offset, keep: np.int64(
            divmod(j, keep)[0] * dp + sorted((offset + t) % dp for t in range(keep))[j % keep]
        ),
    ],
    ids=["table-free", "one-period-of-kept-indices", "numpy-int"],
)
def test_right_kept_indices_pass_the_huge_cases(answer):
    assert lab06.check_kept_index(answer).passed  # within the checker's own time limit, HUGE_TIMEOUT_S


def test_the_huge_kept_index_cases_need_more_memory_than_any_machine_has():
    for j, dp, offset, keep in lab06.HUGE_CASES:
        assert j >= lab06.HUGE_J and (j // keep) * dp >= 2 * 10**14 > 2**47  # bytes of a bool mask up to unit j
        assert lab06.reference_kept_index(j, dp, offset, keep) < 2**53  # exact in the float64 comparison
        assert lab06.reference_kept_index(j, dp, offset, keep) == table_free_kept_index(j, dp, offset, keep)


@pytest.mark.parametrize("name", list(GROUPED_OFFSETS))
def test_each_wrong_grouped_offset_draw_fails_saying_why(name, capsys):
    answer, reason = GROUPED_OFFSETS[name]
    assert lab02.check_grouped_offsets(answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL] grouped offsets: on input (dp=") and reason in out, out


def test_the_librarys_grouped_sampler_passes_the_grouped_offsets_check(capsys):
    assert lab02.check_grouped_offsets(lab02.reference_grouped_offsets).passed
    assert capsys.readouterr().out.startswith("[PASS] grouped offsets (max difference ")


@pytest.mark.parametrize("seed", range(3))
def test_right_grouped_offsets_drawn_in_another_order_pass(seed, monkeypatch):
    """A right answer that consumes the generator differently sees other samples: it still passes."""
    monkeypatch.setattr(
        lab02, "GROUPED_CASES", [(dp, g, n, s + 100 * (seed + 1)) for dp, g, n, s in lab02.GROUPED_CASES]
    )

    def reversed_runs(dp, groups, generator):
        runs = [torch.randperm(dp, generator=generator).flip(0) for _ in range(-(-groups // dp))]
        return torch.cat(runs)[:groups]

    assert lab02.check_grouped_offsets(reversed_runs).passed


@pytest.mark.parametrize("draws, cells", [(300, 4), (500, 36), (120, 6)])
def test_the_fresh_run_bounds_fail_a_right_answer_at_most_as_often_as_stated(draws, cells):
    """binomial_bounds' range against exact binomial tails (integer arithmetic): its stated bound is the true
    chance that one of ``cells`` Binomial(draws, 1 / cells) counts falls outside (union bound), it is at most
    alpha, and the range is the narrowest with that property on each side."""
    alpha = 1e-3
    low, high, bound = lab02.binomial_bounds(draws, cells, alpha)
    pmf = [Fraction(math.comb(draws, k) * (cells - 1) ** (draws - k), cells**draws) for k in range(draws + 1)]
    below, above = sum(pmf[:low]), sum(pmf[high + 1 :])
    assert math.isclose(bound, float(cells * (below + above)), rel_tol=1e-9) and bound <= alpha
    side = Fraction(alpha) / (2 * cells)
    assert below <= side < below + pmf[low] and above <= side < above + pmf[high]


def test_the_fresh_run_tests_of_the_cases_stay_within_their_budget():
    """The false-failure budget of the grouped-offsets check (see lab02.ALPHA): every fresh-run test of the
    cases fails a right answer with probability at most RUNS_ALPHA, and all tests together below 1e-6."""
    tests = []
    for dp, groups, draws, _ in lab02.GROUPED_CASES:
        for start in range(dp, groups, dp):
            cells = math.factorial(dp) * math.perm(dp, min(dp, groups - start))
            if dp > 1 and cells <= draws * lab02.RUN_CELLS_PER_DRAW:
                tests.append(lab02.binomial_bounds(draws, cells, lab02.RUNS_ALPHA)[2])
    assert len(tests) == 4 and max(tests) <= lab02.RUNS_ALPHA
    chi_square_tests = sum(groups + (groups - 1) for dp, groups, _, _ in lab02.GROUPED_CASES if dp > 1)
    assert chi_square_tests == 36 and chi_square_tests * lab02.ALPHA + sum(tests) < 1e-6


def test_lab03_states_the_tile_count_spread_that_holds():
    """Lab 03's text: tile rows (columns) keep equal counts when dp divides the tile columns (rows), else
    counts that differ by at most min(keep, dp - keep), a bound reached with dp or more tile rows."""
    text = "".join(c.source for c in nbformat.read(LABS / "03_tile_patterns.ipynb", as_version=4).cells)
    assert "differ by at most one" not in text and text.count("min(keep, dp - keep)") == 2
    for dp in range(1, 9):
        for keep in range(1, dp + 1):
            for offset in range(dp):
                for rows, cols in [(3, 2), (8, 8), (15, 24), (9, 13), (16, 7)]:
                    tiles = TilePattern(dp, offset, 1, keep).tile_mask(rows, cols)
                    for counts, across in ((tiles.sum(1), cols), (tiles.sum(0), rows)):  # per row, per column
                        spread = int(counts.max() - counts.min())
                        bound = min(keep, dp - keep, across % dp, dp - across % dp)  # 0 when dp divides across
                        assert spread <= bound <= min(keep, dp - keep)
                        assert spread == bound or counts.numel() < dp  # reached when dp lines or more are counted


NOTEBOOKS = {
    "01_why_dropout_saves_no_time.ipynb": "lab01",
    "02_row_patterns.ipynb": "lab02",
    "03_tile_patterns.ipynb": "lab03",
    "06_inside_the_kernels.ipynb": "lab06",
}


@pytest.mark.parametrize("notebook, lab", NOTEBOOKS.items())
def test_every_todo_cell_has_a_reference_solution_and_checks_it(notebook, lab):
    nb = nbformat.read(LABS / notebook, as_version=4)
    todo_cells = [c.source for c in nb.cells if c.cell_type == "code" and "raise NotImplementedError" in c.source]
    assert todo_cells
    for source in todo_cells:
        name = source.split("def ", 1)[1].split("(", 1)[0]
        assert callable(getattr(solutions(lab), name)), name
        assert re.search(rf"check_\w+\({name}\)", source), source  # the cell checks it
