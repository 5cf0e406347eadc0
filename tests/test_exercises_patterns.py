"""Exercises of labs 01, 02, 03 and 06: reference solutions pass, the TODO stub is "not attempted",
and a plausible wrong answer, NaN, a wrong type or an answer that changes its input fails. The grouped
offset draw of lab 02 (a random function) is checked statistically: every wrong draw in
wrong_answers.GROUPED_OFFSETS fails with its own reason, and the library's sampler passes."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import torch
from wrong_answers import GROUPED_OFFSETS, WRONG_TYPES, with_nan

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
