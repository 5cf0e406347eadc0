"""Lab 07 exercises: the reference solutions pass every checker, wrong answers (NaN, a wrong type, an
input changed in place) fail, the TODO stubs are "not attempted", and every TODO function of the notebook
has a reference solution its cell checks."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import torch
from wrong_answers import WRONG_TYPES, with_nan

from approxdrop.course.checks import describe
from approxdrop.course.exercises import lab07
from approxdrop.models.lstm import ApproxDropoutLSTM, lstm_recurrence_reference

LABS = Path(__file__).resolve().parents[1] / "labs"
NOTEBOOK = LABS / "07_lstm_language_model.ipynb"


def solutions():
    spec = importlib.util.spec_from_file_location("solutions_lab07", LABS / "solutions" / "lab07.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOL = solutions()


def todo(*args):
    raise NotImplementedError


def unscaled(u, weight, bias, pattern):  # forgets the dp / keep scale
    return torch.nn.functional.linear(u * pattern.keep_mask(u.shape[-1]).to(u.dtype), weight, bias)


def per_time_step(u, weight, bias, pattern):  # masks the time axis instead of the units
    mask = pattern.keep_mask(u.shape[0]).to(u.dtype)[:, None, None]  # [T, 1, 1]
    return torch.nn.functional.linear(u * mask * pattern.scale, weight, bias)


def always_float64(u, weight, bias, pattern):  # right in float64, but turns a float32 u into float64
    mask = pattern.keep_mask(u.shape[-1]).to(torch.float64) * pattern.scale  # [n]
    return torch.nn.functional.linear(u.double() * mask, weight.double(), bias.double())


def everything_shrinks(hidden, layers, vocab, p):  # as if the recurrent GEMMs read a dropout site too
    return 1 - p


CHECKS = [
    (lab07.check_masked_projection, SOL.masked_projection, unscaled),
    (lab07.check_masked_projection, SOL.masked_projection, per_time_step),
    (lab07.check_masked_projection, SOL.masked_projection, always_float64),
    (lab07.check_gemm_work_left, SOL.gemm_work_left, everything_shrinks),
]


@pytest.mark.parametrize("checker, solution, wrong", CHECKS, ids=lambda f: getattr(f, "__name__", ""))
def test_solution_passes_wrong_answer_fails_todo_is_not_attempted(checker, solution, wrong, capsys):
    assert checker(solution).status == "pass"
    result = checker(wrong)
    assert result.status == "fail" and (result.max_diff is None or result.max_diff > 0)
    assert checker(todo).status == "not attempted"
    out = capsys.readouterr().out
    assert "[PASS]" in out and "[FAIL]" in out and "[TODO]" in out


def test_the_projection_reference_is_the_model_own_site_computation():
    """``model_projection`` is what ApproxDropoutLSTM computes: with its first layer's weights and the
    pattern it drew, the layer's gate pre-activations are the same."""
    model = ApproxDropoutLSTM(30, hidden=8, layers=1, p=0.5, method="row", generator=torch.Generator().manual_seed(2))
    x = torch.randint(30, (5, 3), generator=torch.Generator().manual_seed(0))  # [T, B]
    logits, _ = model(x)
    layer, (site0, site1) = model.lstm[0], model.last_patterns
    zeros = torch.zeros(3, 8)
    xproj = lab07.model_projection(model.embedding(x), layer.weight_ih, layer.bias, site0)  # [T, B, 4H]
    u, _, _ = lstm_recurrence_reference(xproj, zeros, zeros, layer.weight_hh)  # [T, B, H]
    expected = lab07.model_projection(u, model.decoder.weight, model.decoder.bias, site1)  # [T, B, V]
    assert torch.allclose(logits, expected, atol=1e-6)


def test_every_todo_cell_has_a_reference_solution():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    todo_cells = [c.source for c in nb.cells if c.cell_type == "code" and "raise NotImplementedError" in c.source]
    assert len(todo_cells) == 2
    for source in todo_cells:
        name = source.split("def ", 1)[1].split("(", 1)[0]
        assert callable(getattr(SOL, name)), name
        assert re.search(rf"lab07\.check_\w+\({name}\)", source), source  # the cell checks it


def masks_in_place(u, weight, bias, pattern):  # the right values, but u is changed in place
    u.mul_(pattern.keep_mask(u.shape[-1]).to(u.dtype) * pattern.scale)
    return torch.nn.functional.linear(u, weight, bias)


SOLVED = [(lab07.check_masked_projection, SOL.masked_projection), (lab07.check_gemm_work_left, SOL.gemm_work_left)]


@pytest.mark.parametrize("checker, solution", SOLVED, ids=lambda f: getattr(f, "__name__", ""))
def test_nan_answer_fails_naming_case_and_element(checker, solution, capsys):
    assert checker(with_nan(solution)).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and "(case 1 of " in out and " nan, expected " in out


@pytest.mark.parametrize("answer", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("checker, solution", SOLVED, ids=lambda f: getattr(f, "__name__", ""))
def test_wrong_type_fails_saying_what_was_expected(checker, solution, answer, capsys):
    assert checker(lambda *args: answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and f"it returned {describe(answer)}, expected a " in out


def test_a_projection_that_changes_its_input_fails_naming_it(capsys):
    assert lab07.check_masked_projection(masks_in_place).status == "fail"
    assert re.search(r"\(case 1 of \d+\) it changed u in place", capsys.readouterr().out)
