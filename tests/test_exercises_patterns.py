"""Exercises of labs 01, 02, 03 and 06: reference solutions pass, the TODO stub is "not attempted",
and a plausible wrong answer, NaN, a wrong type or an answer that changes its input fails."""

import importlib.util
from pathlib import Path

import pytest
import torch
from wrong_answers import WRONG_TYPES, with_nan

from approxdrop.course.checks import describe
from approxdrop.course.exercises import lab01, lab02, lab03, lab06

SOLUTIONS = Path(__file__).resolve().parents[1] / "labs" / "solutions"


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
