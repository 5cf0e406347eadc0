"""What the exercise checker says about an answer that raises or returns something it cannot compare: a
NotImplementedError is "not attempted" only when the learner's own ``raise`` (the TODO stub's) raised it,
never when torch raised it inside a real attempt; an answer of a dtype torch cannot compare or promote
(uint16/32/64, float8, quantized) and a Fraction or Decimal where a number is asked FAIL, saying what was
expected."""

import warnings
from decimal import Decimal
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from approxdrop.course import check
from approxdrop.course.exercises import lab03, lab04, lab06


def reference(x):
    return x * 2


def todo(x):
    raise NotImplementedError  # TODO: your code


def todo_with_a_message(x):
    raise NotImplementedError("not yet")


def unfinished_helper(x):
    raise NotImplementedError


def calls_an_unfinished_helper(x):
    return unfinished_helper(x) * 2


@pytest.mark.parametrize("candidate", [todo, todo_with_a_message, calls_an_unfinished_helper])
def test_the_learners_own_raise_is_not_attempted(candidate, capsys):
    result = check("double", candidate, reference, [(torch.arange(3.0),)])
    assert result.status == "not attempted"
    assert capsys.readouterr().out == "[TODO] double: replace the NotImplementedError with your code\n"


def bool_matmul(x):
    mask = x > 0  # [3]
    return (mask[:, None] @ mask[None, :]).sum(1)  # torch: "addmm_impl_cpu_" not implemented for 'Bool'


def bool_upsample(x):
    return F.interpolate((x > 0)[None, None], scale_factor=2)[0, 0]  # not implemented for 'Bool'


def module_without_forward(x):
    return nn.Module()(x)  # torch's own Python ``raise NotImplementedError`` (Module has no forward)


@pytest.mark.parametrize(
    "candidate, line",
    [
        (bool_matmul, "return (mask[:, None] @ mask[None, :]).sum(1)"),
        (bool_upsample, "return F.interpolate((x > 0)[None, None], scale_factor=2)[0, 0]"),
        (module_without_forward, "return nn.Module()(x)"),
    ],
    ids=["bool-matmul", "bool-interpolate", "torch-python-raise"],
)
def test_a_not_implemented_error_from_torch_in_an_attempt_fails_naming_it(candidate, line, capsys):
    result = check("double", candidate, reference, [(torch.arange(3.0),)])
    assert result.status == "fail" and result.max_diff is None
    out = capsys.readouterr().out
    assert out.startswith(
        "[FAIL] double: on input (x=tensor([0.0, 1.0, 2.0])) (case 1 of 1) it raised NotImplementedError"
    )
    assert f"of {__file__}: {line}" in out, out


def test_a_bool_attempt_at_a_lab_exercise_is_a_fail_not_a_todo(capsys):
    def weight_mask(n_out, n_in, dp, offset, tile, keep):
        tiles = lab03.reference_tile_mask(n_out, n_in, dp, offset, tile, keep)  # Bool[tr, tc]
        rows = torch.arange(n_out)[:, None] // tile == torch.arange(tiles.shape[0])[None]  # [n_out, tr]
        cols = torch.arange(tiles.shape[1])[:, None] == torch.arange(n_in)[None] // tile  # [tc, n_in]
        return rows @ tiles @ cols

    assert lab03.check_weight_mask(weight_mask).status == "fail"
    out = capsys.readouterr().out
    assert "(case 1 of " in out and "it raised NotImplementedError: " in out and "not implemented for 'Bool'" in out


def _quantized(t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated: an answer may still hold one
        return torch.quantize_per_tensor(t.float(), 1.0, 0, torch.qint8)


UNCOMPARABLE = {  # dtype name -> how an answer turns into it
    "uint16": lambda t: t.to(torch.uint16),
    "uint32": lambda t: t.to(torch.uint32),
    "uint64": lambda t: t.to(torch.uint64),
    "float8_e4m3fn": lambda t: t.to(torch.float8_e4m3fn),
    "float8_e5m2": lambda t: t.to(torch.float8_e5m2),
    "qint8": _quantized,
}


@pytest.mark.parametrize("dtype", list(UNCOMPARABLE))
@pytest.mark.parametrize(
    "want",
    [torch.tensor([True, False, True]), torch.tensor([1, 0, 2]), torch.tensor([1.0, 0.0, 2.0])],
    ids=["bool", "int64", "float32"],
)
def test_an_answer_of_a_dtype_torch_cannot_compare_fails_naming_the_dtype_expected(dtype, want, capsys):
    answer = UNCOMPARABLE[dtype](want)
    result = check("kind", lambda x: answer, lambda x: want.clone(), [(0,)])
    assert result.status == "fail"
    out = capsys.readouterr().out
    assert f"({want.dtype})" in out and f"(torch.{dtype})" in out and "expected a " in out, out


@pytest.mark.parametrize(
    "checker, answer",
    [
        (lab03.check_tile_mask, lambda *a: lab03.reference_tile_mask(*a).to(torch.uint32)),
        (lab03.check_weight_mask, lambda *a: lab03.reference_weight_mask(*a).to(torch.uint16)),
        (lab06.check_kept_residues, lambda *a: _quantized(lab06.reference_kept_residues(*a))),
    ],
    ids=["tile-mask-uint32", "weight-mask-uint16", "kept-residues-quantized"],
)
def test_the_lab_checkers_fail_such_a_dtype_instead_of_crashing(checker, answer, capsys):
    assert checker(answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and "(case 1 of " in out and ", expected a " in out, out


@pytest.mark.parametrize(
    "number, shown",
    [(Fraction(1, 2), "a Fraction (Fraction(1, 2))"), (Decimal("0.5"), "a Decimal (Decimal('0.5'))")],
    ids=["fraction", "decimal"],
)
def test_an_exact_number_where_a_float_is_asked_fails_saying_a_float_is_expected(number, shown, capsys):
    assert check("half", lambda x: number, lambda x: x / 2, [(1.0,)]).status == "fail"
    out = capsys.readouterr().out
    assert f"it returned {shown}, expected a float: convert it with float()" in out, out
    assert check("count", lambda x: Fraction(2), lambda x: 2, [(1,)]).status == "fail"
    assert "it returned a Fraction (Fraction(2, 1)), expected a whole number (an int): convert it with int()" in (
        capsys.readouterr().out
    )


def test_an_exact_expected_rate_fails_saying_a_float_is_expected(capsys):
    def expected_rate(pairs, probs):
        return sum(Fraction(q) * (1 - Fraction(keep, dp)) for (dp, keep), q in zip(pairs, probs))

    assert lab04.check_expected_rate(expected_rate).status == "fail"
    out = capsys.readouterr().out
    assert "it returned a Fraction (Fraction(1, 2)), expected a float: convert it with float()" in out, out
