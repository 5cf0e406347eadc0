"""Labs 04 and 05 exercises: the reference solutions pass every checker, wrong answers (NaN, a wrong type,
a step that never returns) fail, the TODO stubs are "not attempted", and every TODO function of the
notebooks has a reference solution."""

import importlib.util
import re
import time
from pathlib import Path

import nbformat
import pytest
import torch
from wrong_answers import WRONG_TYPES, with_nan

import approxdrop as ad
from approxdrop.course import checks
from approxdrop.course.checks import describe
from approxdrop.course.exercises import lab04, lab05
from approxdrop.models import methods_for

LABS = Path(__file__).resolve().parents[1] / "labs"


def solutions(lab: str):
    spec = importlib.util.spec_from_file_location(f"solutions_{lab}", LABS / "solutions" / f"{lab}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOL04, SOL05 = solutions("lab04"), solutions("lab05")


def todo(*args):
    raise NotImplementedError


def no_zero_grad(model, optimizer, x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def keep_rate(pairs, probs):  # the kept share, not the dropped one
    return sum(q * keep / dp for (dp, keep), q in zip(pairs, probs))


def drops_if_divides(dp, keep, n):  # ignores keep and the offset
    return torch.full((dp,), n - n // dp)


def half(pairs, probs, n):
    return torch.full((n,), 0.5, dtype=torch.float64)


def ratio(measured_speedup, ideal_speedup):  # not Amdahl's law
    return measured_speedup / ideal_speedup


CHECKS = [
    (lab04.check_expected_rate, SOL04.expected_rate, keep_rate),
    (lab04.check_dropped_counts, SOL04.dropped_counts, drops_if_divides),
    (lab04.check_drop_probability, SOL04.drop_probability, half),
    (lab05.check_gemm_share, SOL05.gemm_share, ratio),
    (lab05.check_train_step, SOL05.train_step, no_zero_grad),
]


@pytest.mark.parametrize("checker, solution, wrong", CHECKS, ids=lambda f: getattr(f, "__name__", ""))
def test_solution_passes_wrong_answer_fails_todo_is_not_attempted(checker, solution, wrong, capsys):
    assert checker(solution).status == "pass"
    result = checker(wrong)
    assert result.status == "fail" and (result.max_diff is None or result.max_diff > 0)
    assert checker(todo).status == "not attempted"
    out = capsys.readouterr().out
    assert "[PASS]" in out and "[FAIL]" in out and "[TODO]" in out


@pytest.mark.parametrize("notebook, module", [("04_the_search.ipynb", SOL04), ("05_training.ipynb", SOL05)])
def test_every_todo_cell_has_a_reference_solution(notebook, module):
    nb = nbformat.read(LABS / notebook, as_version=4)
    todo_cells = [c.source for c in nb.cells if c.cell_type == "code" and "raise NotImplementedError" in c.source]
    assert todo_cells
    for source in todo_cells:
        name = source.split("def ", 1)[1].split("(", 1)[0]
        assert callable(getattr(module, name)), name
        assert re.search(rf"lab0[45]\.check_\w+\({name}\)", source), source  # the cell checks it


NAN_ANSWERS = [
    (lab04.check_expected_rate, with_nan(SOL04.expected_rate), "it returned nan, expected 0.5"),
    (lab04.check_dropped_counts, with_nan(SOL04.dropped_counts), "element [1] is nan, expected 4"),
    (lab04.check_drop_probability, with_nan(SOL04.drop_probability), "element [6] is nan, expected 0.5"),
    (lab05.check_gemm_share, with_nan(SOL05.gemm_share), "it returned nan, expected 0.81927"),
    (lab05.check_train_step, lambda model, optimizer, x, y: float("nan"), "the loss of step 1 is nan, expected "),
]


@pytest.mark.parametrize("checker, answer, text", NAN_ANSWERS, ids=lambda f: getattr(f, "__name__", ""))
def test_nan_answer_fails_naming_case_and_element(checker, answer, text, capsys):
    assert checker(answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and "(case 1 of " in out and text in out


@pytest.mark.parametrize("answer", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("checker, solution, wrong", CHECKS, ids=lambda f: getattr(f, "__name__", ""))
def test_wrong_type_fails_saying_what_was_expected(checker, solution, wrong, answer, capsys):
    assert checker(lambda *args: answer).status == "fail"
    out = capsys.readouterr().out
    expected = "expected the loss as a float" if checker is lab05.check_train_step else "expected a "
    assert out.startswith("[FAIL]") and f"returned {describe(answer)}, {expected}" in out


def test_a_train_step_that_never_returns_fails_after_the_deadline(monkeypatch, capsys):
    monkeypatch.setattr(checks, "DEFAULT_TIMEOUT_S", 0.3)
    assert lab05.check_train_step(lambda model, optimizer, x, y: time.sleep(10)).status == "fail"
    assert f"(case 1 of {len(methods_for('mlp'))}) it took longer than 0.3 s" in capsys.readouterr().out


def no_backward(model, optimizer, x, y):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.step()
    return loss.item()


def returns_the_loss_tensor(model, optimizer, x, y):  # right step, but the loss still holds its graph
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def test_a_train_step_returning_the_loss_tensor_is_told_to_return_a_float(capsys):
    assert lab05.check_train_step(returns_the_loss_tensor).status == "fail"
    assert "expected the loss as a float (loss.item())" in capsys.readouterr().out


def right_step_returns_zero(model, optimizer, x, y):
    SOL05.train_step(model, optimizer, x, y)
    return 0.0


PARAMETER_ENTRY = r"parameter linears\.[0-2]\.(weight\[\d+, \d+\]|bias\[\d+\]) after the three steps"


@pytest.mark.parametrize(
    "answer, pattern",
    [
        (no_zero_grad, PARAMETER_ENTRY),
        (no_backward, PARAMETER_ENTRY),
        (right_step_returns_zero, r"the loss of step [1-3]"),
    ],
    ids=["no-zero-grad", "no-backward", "returns-zero"],
)
def test_a_wrong_train_step_is_told_which_loss_or_parameter_differs(answer, pattern, capsys):
    assert lab05.check_train_step(answer).status == "fail"
    out = capsys.readouterr().out
    assert re.search(r"\(case 1 of 10\): " + pattern + r" is -?[\d.e+-]+, expected -?[\d.e+-]+\n", out), out


def test_every_element_of_the_three_steps_vector_has_a_name():
    names = [
        lab05.train_step_element(flat, "row", 1)
        for flat in range(len(lab05.after_three_steps(SOL05.train_step, "row", 1)))
    ]
    assert names[:4] == [
        "the loss of step 1",
        "the loss of step 2",
        "the loss of step 3",
        "parameter linears.0.weight[0, 0] after the three steps",
    ]
    assert names[-1] == "parameter linears.2.bias[3] after the three steps" and len(set(names)) == len(names)


def test_the_training_step_check_runs_every_method_of_the_mlp(monkeypatch):
    """The exercise says "with every dropout method": the checker's cases are the methods table's MLP rows."""
    seen = []
    monkeypatch.setattr(lab05, "after_three_steps", lambda step, method, seed: seen.append(method) or torch.zeros(1))
    assert lab05.check_train_step(SOL05.train_step).passed
    assert sorted(set(seen)) == sorted(methods_for("mlp"))


def test_drop_probability_needs_the_enumeration_a_constant_answer_fails():
    """Under a uniform offset every unit's probability is the expected rate, so ``torch.full((n,), rate)`` passed
    without enumerating anything; the cases with the offset fixed at 0 give units different probabilities."""

    def shortcut(pairs, probs, n, uniform_offset=True):
        return torch.full((n,), float(SOL04.expected_rate(pairs, probs)), dtype=torch.float64)

    def three_arguments(pairs, probs, n):  # the exercise's old signature
        return torch.full((n,), float(SOL04.expected_rate(pairs, probs)), dtype=torch.float64)

    def hint_2(pairs, probs, n, uniform_offset=True):  # the notebook's hint 2, written out
        prob = torch.zeros(n, dtype=torch.float64)
        for (dp, keep), q in zip(pairs, probs):
            offsets = range(dp) if uniform_offset else [0]
            for offset in offsets:
                prob += q / len(offsets) * (~ad.RowPattern(dp, offset, keep).keep_mask(n)).double()
        return prob

    assert lab04.check_drop_probability(SOL04.drop_probability).passed
    assert lab04.check_drop_probability(hint_2).passed
    assert lab04.check_drop_probability(shortcut).status == "fail"
    assert lab04.check_drop_probability(three_arguments).status == "fail"
    fixed = lab04.reference_drop_probability(((2, 1),), (1.0,), 7, False)
    assert fixed.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # (2, 1) at offset 0 keeps the even units
    assert torch.allclose(
        lab04.reference_drop_probability(((2, 1),), (1.0,), 7), torch.full((7,), 0.5, dtype=torch.float64)
    )
