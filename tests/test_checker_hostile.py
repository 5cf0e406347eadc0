"""Hostile answers to the exercise checkers (issue #28 items 1, 3, 11, 13; #27's wrong types): correct
numbers in float64 pass and near misses fail, nothing the answer catches holds the deadline off, odd
tensors and sys.exit give a FAIL, wrong dtypes and kinds fail, the kept-size GEMM is enforced, the
chain matcher's look-alikes fail, the notebook's random streams survive a check, and a lookup table of
the fixed cases fails."""

import ast
import importlib.util
import inspect
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from wrong_answers import chains_where

from approxdrop.course import check
from approxdrop.course.exercises import lab01, lab02, lab03, lab04, lab05, lab06, lab07, lab08
from approxdrop.models.sites import is_elementwise

SOLUTIONS = Path(__file__).resolve().parents[1] / "labs" / "solutions"


def solutions(lab: str):
    spec = importlib.util.spec_from_file_location(f"hostile_{lab}", SOLUTIONS / f"{lab}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOL = {lab: solutions(lab) for lab in ("lab01", "lab02", "lab03", "lab04", "lab06", "lab08")}

# (checker, reference) of the exercises whose answer is a float
NUMBER_CHECKS = [
    (lab01.check_gemm_work, lab01.reference_gemm_work),
    (lab04.check_expected_rate, lab04.reference_expected_rate),
    (lab05.check_gemm_share, lab05.reference_gemm_share),
    (lab07.check_gemm_work_left, lab07.reference_gemm_work_left),
]
NUMBER_IDS = ["lab01-gemm_work", "lab04-expected_rate", "lab05-gemm_share", "lab07-gemm_work_left"]


# --------------------------------------------------------------------------- item 1: numbers in float64


@pytest.mark.parametrize(
    "wrap",
    [np.float64, lambda v: torch.tensor(v, dtype=torch.float64), float],
    ids=["numpy-float64", "float64-tensor", "python-float"],
)
@pytest.mark.parametrize("checker, reference", NUMBER_CHECKS, ids=NUMBER_IDS)
def test_a_correct_float64_answer_passes(checker, reference, wrap, capsys):
    assert checker(lambda *args: wrap(reference(*args))).passed, capsys.readouterr().out


@pytest.mark.parametrize("checker, reference", NUMBER_CHECKS, ids=NUMBER_IDS)
def test_an_answer_5e_9_off_fails_at_atol_1e_9(checker, reference, capsys):
    assert checker(lambda *args: reference(*args) + 5e-9).status == "fail"
    out = capsys.readouterr().out
    assert "(max difference 5e-09)" in out and "differs on input" in out, out


@pytest.mark.parametrize("checker, reference", NUMBER_CHECKS, ids=NUMBER_IDS)
def test_an_answer_rounded_to_float32_fails_with_a_note_to_compute_in_float64(checker, reference, capsys):
    def in_float32(*args):
        return float(torch.tensor(reference(*args), dtype=torch.float32))  # the learner's float32 arithmetic

    def far_off(*args):
        return float(torch.tensor(reference(*args) + 0.01, dtype=torch.float32))

    note = "(float32 rounding: compute in float64"
    result = checker(in_float32)
    out = capsys.readouterr().out
    if result.passed:  # every case happened to be a float32 number: nothing to note
        assert note not in out
        return
    assert note in out, out
    assert checker(far_off).status == "fail" and note not in capsys.readouterr().out  # a slip: no such note
    checker(lambda *args: reference(*args) + 5e-9)  # float64 values off by 5e-9: not float32's rounding
    assert note not in capsys.readouterr().out


def test_a_near_miss_is_printed_with_the_digits_that_differ(capsys):
    check("rate", lambda: 0.45 + 5e-9, lambda: 0.45, [()], atol=1e-9)
    assert "it returned 0.45000000500000004, expected 0.45" in capsys.readouterr().out


# --------------------------------------------------------------------------- item 3: the deadline holds


def retry_forever(end):
    """A learner's retry loop with a bare ``except:`` that swallows everything, until ``end``."""

    def answer(*args):
        while time.perf_counter() < end:
            try:
                time.sleep(0.01)
            except:  # noqa: E722
                pass

    return answer


def test_a_bare_except_retry_loop_cannot_hold_the_deadline_off(capsys):
    start = time.perf_counter()
    result = check("double", retry_forever(start + 20), lambda x: x + x, [(torch.ones(3),)], timeout_s=0.3)
    assert result.status == "fail" and time.perf_counter() - start < 5
    out = capsys.readouterr().out
    assert "it took longer than 0.3 s" in out and "background" not in out, out  # stopped, not left running


def test_a_loop_with_no_new_line_is_stopped_at_the_deadline(capsys):
    """``while True: pass`` never starts a new line, so line tracing cannot reach it; the stop lands at
    its jump back, and no thread is left spinning."""

    def spin(x):
        while True:
            pass

    start, earlier = time.perf_counter(), set(threading.enumerate())  # e.g. a sleeping answer of another test
    result = check("double", spin, lambda x: x + x, [(torch.ones(3),)], timeout_s=0.3)
    assert result.status == "fail" and time.perf_counter() - start < 5
    out = capsys.readouterr().out
    assert "it took longer than 0.3 s" in out and "background" not in out, out
    assert not [t for t in threading.enumerate() if t.name == "approxdrop-check" and t not in earlier]
    assert check("double", lambda x: x + x, lambda x: x + x, [(torch.ones(3),)], timeout_s=0.3).passed


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt here, as in a Jupyter kernel. A process that a non-interactive shell
    starts in the background inherits SIGINT ignored, and Python then installs no handler for it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_kernel_interrupt_stops_a_check_whose_answer_catches_everything(capsys, sigint_raises):
    start = time.perf_counter()
    main = threading.main_thread().ident
    interrupt = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
    interrupt.start()
    with pytest.raises(KeyboardInterrupt):
        check("double", retry_forever(start + 20), lambda x: x + x, [(torch.ones(3),)], timeout_s=30)
    assert time.perf_counter() - start < 5


def test_a_tracer_already_set_is_left_alone_and_the_deadline_still_holds(capsys):
    """Under a debugger or coverage (a trace function on new threads) the checker does not trace: the
    deadline holds all the same, and the answer is left to end by itself."""
    events = []

    def tracer(frame, event, arg):
        events.append(event)

    threading.settrace(tracer)
    try:
        start = time.perf_counter()
        result = check("double", retry_forever(start + 3), lambda x: x + x, [(torch.ones(3),)], timeout_s=0.3)
    finally:
        threading.settrace(None)
    out = capsys.readouterr().out
    assert result.status == "fail" and "took longer than 0.3 s (it is still running in the background" in out
    assert "call" in events  # the tracer saw the answer's calls: it was not replaced


# --------------------------------------------------------------------------- item 11: a verdict, always


@pytest.mark.parametrize(
    "convert, text",
    [
        (lambda t: t.to_sparse(), "layout torch.sparse_coo"),
        (lambda t: torch.nested.nested_tensor(list(t)), "it returned a nested tensor"),
    ],
    ids=["sparse-coo", "nested"],
)
def test_a_sparse_or_nested_answer_fails_saying_what_it_is(convert, text, capsys):
    answer = SOL["lab01"].inverted_dropout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype
        result = lab01.check_inverted_dropout(lambda x, m, p: convert(answer(x, m, p)))
    out = capsys.readouterr().out
    assert result.status == "fail" and text in out and "expected a tensor of shape (4, 6)" in out, out


@pytest.mark.parametrize("code", [0, 1, None])
def test_sys_exit_inside_an_answer_fails_instead_of_ending_the_process(code, capsys):
    def leave(*args):
        sys.exit(code)

    assert lab04.check_expected_rate(leave).status == "fail"
    assert f"it called sys.exit({code!r})" in capsys.readouterr().out


# --------------------------------------------------------------------------- item 13 and #27: the kind of answer


def as_float64(fn):
    return lambda *args: fn(*args).double()


def as_list(fn):
    return lambda *args: fn(*args).tolist()


WRONG_KINDS = [
    ("kept indices in float64", lab02.check_kept_indices, as_float64(SOL["lab02"].kept_indices), "(torch.int64)"),
    ("kept indices as a list", lab02.check_kept_indices, as_list(SOL["lab02"].kept_indices), "(torch.int64)"),
    ("kept indices in int32", lab02.check_kept_indices, lambda *a: SOL["lab02"].kept_indices(*a).int(), "int64"),
    ("tile mask as ints", lab03.check_tile_mask, lambda *a: SOL["lab03"].tile_mask(*a).long(), "(torch.bool)"),
    ("tile mask as floats", lab03.check_tile_mask, lambda *a: SOL["lab03"].tile_mask(*a).float(), "(torch.bool)"),
    ("weight mask as ints", lab03.check_weight_mask, lambda *a: SOL["lab03"].weight_mask(*a).int(), "(torch.bool)"),
    (
        "float32 output for float64 inputs",
        lab01.check_inverted_dropout,
        lambda x, m, p: SOL["lab01"].inverted_dropout(x, m, p).float(),
        "(torch.float64)",
    ),
    (
        "complex output",
        lab01.check_inverted_dropout,
        lambda x, m, p: SOL["lab01"].inverted_dropout(x, m, p).to(torch.complex128),
        "(torch.float64)",
    ),
    ("counts in numpy", lab04.check_dropped_counts, lambda *a: SOL["lab04"].dropped_counts(*a).numpy(), "int64"),
    ("residues in float64", lab06.check_kept_residues, as_float64(SOL["lab06"].kept_residues), "(torch.int64)"),
    ("a float where an int is asked", lab06.check_kept_index, lambda *a: float(SOL["lab06"].kept_index(*a)), "an int"),
    ("a complex rate", lab04.check_expected_rate, lambda *a: complex(SOL["lab04"].expected_rate(*a)), "a float"),
    ("float indices", lab08.check_find_chains, lambda s: [float(i) for i in SOL["lab08"].find_chains(s)], "an int"),
]  # fmt: skip


@pytest.mark.parametrize("what, checker, answer, text", WRONG_KINDS, ids=[w[0] for w in WRONG_KINDS])
def test_an_answer_of_the_wrong_kind_fails_saying_what_was_asked(what, checker, answer, text, capsys):
    assert checker(answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and text in out and "expected" in out, out


def test_the_values_are_named_before_the_kind(capsys):
    kept = SOL["lab02"].kept_indices
    lab02.check_kept_indices(lambda n, dp, offset, keep: kept(n, dp, offset, keep).double() + 1)
    assert "element [0] is 2, expected 1" in capsys.readouterr().out  # wrong values: the values are named
    lab02.check_kept_indices(lambda n, dp, offset, keep: kept(n, dp, offset, keep).double())
    out = capsys.readouterr().out
    assert "it returned a tensor of shape (4,) (torch.float64), expected a tensor of shape (4,) (torch.int64)" in out


def full_masked_forward(x_kept, weight, bias, in_pattern, out_pattern):
    """The right values from the full GEMM: scatter the kept inputs, multiply by all of W, keep rows."""
    n_out, n_in = weight.shape
    x = torch.zeros(x_kept.shape[0], n_in, dtype=x_kept.dtype)  # [B, n_in]
    x[:, in_pattern.kept_indices(n_in)] = x_kept
    return (in_pattern.scale * x @ weight.T + bias)[:, out_pattern.kept_indices(n_out)]  # [B, k_out]


def test_compact_forward_with_the_full_gemm_fails(capsys):
    assert lab02.check_compact_forward(SOL["lab02"].compact_forward).passed
    assert lab02.check_compact_forward(full_masked_forward).status == "fail"
    out = capsys.readouterr().out.splitlines()[-1]
    assert "where the kept-size GEMM needs" in out and "take the kept rows and columns" in out, out


def full_width_x(x_kept, weight, in_pattern):
    """Float[B, n_in]: the kept inputs scattered back to the full width, scaled (zeros at the dropped ones)."""
    x = torch.zeros(x_kept.shape[0], weight.shape[1], dtype=x_kept.dtype)  # [B, n_in]
    x[:, in_pattern.kept_indices(weight.shape[1])] = x_kept
    return in_pattern.scale * x


def per_sample_mv(x_kept, weight, bias, in_pattern, out_pattern):  # W @ x_row: one aten.mv per sample
    x = full_width_x(x_kept, weight, in_pattern)
    return torch.stack([weight @ row + bias for row in x])[:, out_pattern.kept_indices(weight.shape[0])]


def torch_mv(x_kept, weight, bias, in_pattern, out_pattern):
    rows = out_pattern.kept_indices(weight.shape[0])
    return (
        torch.stack([torch.mv(weight, row) for row in full_width_x(x_kept, weight, in_pattern)])[:, rows] + bias[rows]
    )


def broadcast_multiply(x_kept, weight, bias, in_pattern, out_pattern):  # an elementwise product, then a sum
    rows = out_pattern.kept_indices(weight.shape[0])
    x = full_width_x(x_kept, weight, in_pattern)
    return (x[:, None, :] * weight[None]).sum(-1)[:, rows] + bias[rows]


def all_rows_then_slice(x_kept, weight, bias, in_pattern, out_pattern):  # kept columns, every row
    cols = in_pattern.kept_indices(weight.shape[1])
    return (in_pattern.scale * x_kept @ weight[:, cols].T + bias)[:, out_pattern.kept_indices(weight.shape[0])]


@pytest.mark.parametrize(
    "answer, op",
    [
        (per_sample_mv, "one matrix product (aten.mv)"),
        (torch_mv, "one matrix product (aten.mv)"),
        (broadcast_multiply, "one elementwise multiply (aten.mul)"),
        (all_rows_then_slice, "one matrix product (aten.mm)"),
    ],
    ids=["per-sample-matmul", "torch-mv", "broadcast-multiply", "all-rows-then-slice"],
)
def test_compact_forward_with_full_size_work_of_any_kind_fails_naming_the_op(answer, op, capsys):
    assert lab02.check_compact_forward(answer).status == "fail"
    out = capsys.readouterr().out
    assert f"(case 1 of 7) {op} did " in out and "where the kept-size GEMM needs 80 in all" in out, out


def kept_weight(weight, in_pattern, out_pattern):
    rows, cols = out_pattern.kept_indices(weight.shape[0]), in_pattern.kept_indices(weight.shape[1])
    return weight[rows][:, cols], rows  # [k_out, k_in], [k_out]


def debug_product(x_kept, weight, bias, in_pattern, out_pattern):  # the kept-size GEMM run twice
    w_kept, rows = kept_weight(weight, in_pattern, out_pattern)
    print("shape check:", (x_kept @ w_kept.T).shape)
    return in_pattern.scale * x_kept @ w_kept.T + bias[rows]


def kept_broadcast(x_kept, weight, bias, in_pattern, out_pattern):  # the kept-size product, elementwise
    w_kept, rows = kept_weight(weight, in_pattern, out_pattern)
    return (x_kept[:, None, :] * w_kept[None]).sum(-1) * in_pattern.scale + bias[rows]


def per_sample_kept_mv(x_kept, weight, bias, in_pattern, out_pattern):
    w_kept, rows = kept_weight(weight, in_pattern, out_pattern)
    return torch.stack([torch.mv(w_kept, row) for row in in_pattern.scale * x_kept]) + bias[rows]


@pytest.mark.parametrize("answer", [debug_product, kept_broadcast, per_sample_kept_mv], ids=lambda f: f.__name__)
def test_compact_forward_of_the_kept_size_passes_however_often_and_however_multiplied(answer, capsys):
    assert lab02.check_compact_forward(answer).passed, capsys.readouterr().out


@pytest.mark.parametrize(
    "checker, answer",
    [
        (lab01.check_inverted_dropout, lambda x, m, p: x.double() * m / (1 - p)),
        (
            lab02.check_compact_forward,
            lambda x, w, b, i, o: SOL["lab02"].compact_forward(x.double(), w.double(), b, i, o),
        ),
    ],
    ids=["inverted-dropout", "compact-forward"],
)
def test_an_answer_that_always_returns_float64_fails_on_float32_inputs(checker, answer, capsys):
    assert checker(answer).status == "fail"
    out = capsys.readouterr().out
    assert "(torch.float64), expected a tensor of shape" in out and "(torch.float32)" in out, out


@pytest.mark.parametrize(
    "checker, solution",
    [
        (lab01.check_inverted_dropout, SOL["lab01"].inverted_dropout),
        (lab02.check_compact_forward, SOL["lab02"].compact_forward),
    ],
    ids=["inverted-dropout", "compact-forward"],
)
def test_the_float32_cases_compare_to_float32_precision_and_a_slip_fails(checker, solution, capsys):
    def off_in_float32(*args):
        out = solution(*args)
        return out + 1e-3 if out.dtype == torch.float32 else out

    assert checker(solution).passed
    assert checker(off_in_float32).status == "fail"
    out = capsys.readouterr().out
    assert "(torch.float32)>" in out and "differs on input" in out and "float32 rounding" not in out, out


HARD_CODED = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh)


def find_chains_with(act_ok, drop_ok):
    def accept(a, b, c, d):
        linears = type(a) is nn.Linear and type(d) is nn.Linear and a.out_features == d.in_features
        return linears and act_ok(b) and drop_ok(c)

    return lambda seq: chains_where(seq, accept)


@pytest.mark.parametrize(
    "answer",
    [
        find_chains_with(lambda b: type(b) in HARD_CODED, lambda c: type(c) is nn.Dropout),
        find_chains_with(is_elementwise, lambda c: isinstance(c, nn.Dropout)),
    ],
    ids=["hard-coded-activations", "isinstance-dropout"],
)
def test_find_chains_look_alikes_fail(answer, capsys):
    assert lab08.check_find_chains(answer).status == "fail", capsys.readouterr().out


# --------------------------------------------------------------------------- item 13: random streams, lookup tables


def test_an_answer_that_reseeds_the_global_streams_leaves_the_notebook_stream_alone(capsys):
    def reseeding(sizes, p):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        return SOL["lab01"].gemm_work(sizes, p)

    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    assert lab01.check_gemm_work(reseeding).passed
    assert lab05.check_gemm_share(lambda m, i: (torch.manual_seed(1), (1 - 1 / m) / (1 - 1 / i))[1]).passed
    got = torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def lookup_table(reference, cases):
    table = {repr(case): reference(*case) for case in cases}
    return lambda *args: table[repr(args)]


LOOKUPS = [
    (lab02.check_kept_indices, lab02.reference_kept_indices, lab02.ROW_CASES),
    (lab03.check_tile_mask, lab03.reference_tile_mask, lab03.TILE_CASES),
    (lab03.check_weight_mask, lab03.reference_weight_mask, lab03.TILE_CASES),
    (lab04.check_expected_rate, lab04.reference_expected_rate, lab04.DISTRIBUTIONS),
    (lab06.check_kept_residues, lab06.reference_kept_residues, lab06.PATTERNS),
]


@pytest.mark.parametrize("checker, reference, cases", LOOKUPS, ids=lambda v: getattr(v, "__name__", ""))
def test_a_lookup_table_of_the_fixed_cases_fails(checker, reference, cases, capsys):
    assert checker(lookup_table(reference, cases)).status == "fail"
    assert "it raised KeyError" in capsys.readouterr().out


def test_find_chains_lookup_table_of_the_fixed_cases_fails(capsys):
    table = {lab08.layers_text(seq): lab08.reference_find_chains(seq) for _, seq in lab08.CASES}
    assert lab08.check_find_chains(lambda seq: table[lab08.layers_text(seq)]).status == "fail"
    assert "KeyError" in capsys.readouterr().out


def test_a_float32_drop_probability_passes_where_the_spec_asks_for_a_float_tensor(capsys):
    sol = solutions("lab04")
    assert lab04.check_drop_probability(lambda *a: sol.drop_probability(*a).float()).passed
    assert lab04.check_drop_probability(lambda *a: sol.drop_probability(*a).half()).status == "fail"  # too coarse
    assert lab04.check_drop_probability(lambda *a: (sol.drop_probability(*a) > 2).long()).status == "fail"
    capsys.readouterr()


class Hostile:
    """An answer whose repr, len and conversion all raise."""

    def __repr__(self):
        raise RuntimeError("no repr")

    def __len__(self):
        raise KeyError("no len")

    def __array__(self, *args, **kwargs):
        raise KeyError("no array")


def test_an_answer_object_that_raises_everywhere_gets_a_fail(capsys):
    assert lab04.check_expected_rate(lambda *a: Hostile()).status == "fail"
    assert "it returned a Hostile, expected a float" in capsys.readouterr().out


def test_the_grouped_offsets_check_draws_other_seeds_at_every_call(capsys):
    seen: list[set[int]] = []

    def recording(dp, groups, generator):
        seen[-1].add(generator.initial_seed())
        return lab02.reference_grouped_offsets(dp, groups, generator)

    for _ in range(2):
        seen.append(set())
        assert lab02.check_grouped_offsets(recording).passed, capsys.readouterr().out
    assert seen[0] and not seen[0] & seen[1]  # a table of the draws of one call is useless at the next


# --------------------------------------------------------------------------- what a FAIL or PASS line says


def test_a_torch_named_tuple_is_named_as_such_and_articles_follow_the_first_letter(capsys):
    residues = SOL["lab06"].kept_residues
    assert lab06.check_kept_residues(lambda *a: torch.sort(residues(*a))).status == "fail"
    out = capsys.readouterr().out
    assert "it returned a torch.return_types.sort (a named tuple: take its .values or .indices), expected" in out
    assert lab06.check_kept_residues(lambda *a: residues(*a).numpy()).status == "fail"
    assert "it returned an ndarray (array(" in capsys.readouterr().out


LEARNER_CELL = """
import torch
from approxdrop.course.exercises.lab04 import reference_drop_probability


def asserting(pairs, probs, n, uniform_offset=True):
    out = reference_drop_probability(pairs, probs, n, uniform_offset)
    assert out.max() < 1
    return out


def calls_torch_wrongly(pairs, probs, n, uniform_offset=True):
    return torch.einsum("ij,jk->ik", torch.ones(n), torch.ones(n))  # raises inside torch's own Python code
"""


@pytest.mark.parametrize(
    "name, text, line",
    [
        ("asserting", "(case 11 of 20) it raised AssertionError (no message), at line 8 of ", "assert out.max() < 1"),
        ("calls_torch_wrongly", "(case 1 of 20) it raised RuntimeError: einsum(): ", "return torch.einsum("),
    ],
    ids=["bare-assert", "inside-torch"],
)
def test_an_exception_is_reported_at_the_learners_line(name, text, line, tmp_path, capsys):
    """The learner's code in a file of its own, as a notebook cell is (pytest would rewrite an assert here)."""
    cell = tmp_path / "cell.py"
    cell.write_text(LEARNER_CELL)
    spec = importlib.util.spec_from_file_location("learner_cell", cell)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert lab04.check_drop_probability(getattr(module, name)).status == "fail"
    out = capsys.readouterr().out
    assert text in out and f"of {cell}: {line}" in out, out


def test_a_not_implemented_error_after_cases_that_passed_is_a_fail_on_that_case(capsys):
    def half_done(pairs, probs, n, uniform_offset=True):
        if not uniform_offset:
            raise NotImplementedError("the fixed offset")
        return SOL["lab04"].drop_probability(pairs, probs, n)

    def not_started(pairs, probs, n, uniform_offset=True):
        raise NotImplementedError("the fixed offset")

    assert lab04.check_drop_probability(half_done).status == "fail"
    out = capsys.readouterr().out
    assert "uniform_offset=False) (case 11 of 20) it raised NotImplementedError: the fixed offset, at line" in out
    assert lab04.check_drop_probability(not_started).status == "not attempted"
    assert "[TODO] per-unit drop probability: replace the NotImplementedError" in capsys.readouterr().out


def test_where_any_float_dtype_passes_a_wrong_kind_is_told_to_return_a_floating_tensor(capsys):
    assert lab04.check_drop_probability(lambda *a: SOL["lab04"].drop_probability(*a).tolist()).status == "fail"
    out = capsys.readouterr().out
    assert "it returned a list of length 7, expected a floating tensor of shape (7,)" in out and "float64" not in out


def test_a_pass_line_counts_the_cases_and_a_statistical_one_says_what_decided(capsys):
    assert check("double", lambda x: x + x, lambda x: 2 * x, [(torch.ones(3),), (torch.zeros(2),)]).passed
    assert capsys.readouterr().out == "[PASS] double (max difference 0): 2 cases\n"
    assert lab02.check_grouped_offsets(lab02.reference_grouped_offsets).passed
    out = capsys.readouterr().out
    assert (
        out.startswith("[PASS] grouped offsets (max difference ") and "): 5 cases; decided by chi-square tests" in out
    )


def test_an_answer_that_changes_a_module_input_fails_naming_what_it_changed(capsys):
    def norm(layer, x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], layer.weight, layer.bias)

    def zeroes_bias(layer, x):
        out = norm(layer, x)
        with torch.no_grad():
            layer.bias.zero_()
        return out

    case = (nn.LayerNorm(3), torch.randn(2, 3))
    with torch.no_grad():
        case[0].bias.fill_(0.5)
    assert check("norm", norm, norm, [case]).passed
    assert check("norm", zeroes_bias, norm, [case]).status == "fail"
    assert "it changed layer.bias in place" in capsys.readouterr().out


def test_a_training_step_may_change_the_model_its_optimizer_trains_and_no_other_module(capsys):
    def step(model, optimizer, frozen, x):
        optimizer.zero_grad()
        model(frozen(x)).sum().backward()
        optimizer.step()
        return model(x).detach()

    def step_and_scale_frozen(model, optimizer, frozen, x):
        with torch.no_grad():
            frozen.weight.mul_(2)
        return step(model, optimizer, frozen, x)

    model = nn.Linear(3, 2)
    case = (model, torch.optim.SGD(model.parameters(), lr=0.5), nn.Linear(3, 3), torch.ones(4, 3))
    assert check("step", step, step, [case]).passed
    assert check("step", step_and_scale_frozen, step, [case]).status == "fail"
    assert "it changed frozen.weight in place" in capsys.readouterr().out


def test_an_answer_on_another_device_fails_naming_both_devices(capsys):
    """A meta answer got "it returned a tensor of shape (4, 6) (torch.float64), expected a tensor of shape (4, 6)
    (torch.float64)"; on a GPU a CUDA answer to CPU inputs was moved back and passed."""
    inverted = SOL["lab01"].inverted_dropout
    assert lab01.check_inverted_dropout(lambda x, m, p: inverted(x, m, p).to("meta")).status == "fail"
    out = capsys.readouterr().out
    assert "it returned a tensor of shape (4, 6) (torch.float64, on meta), expected a tensor on cpu" in out, out
    assert lab01.check_inverted_dropout(inverted).passed  # the reference solution's answer is on the inputs' device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cuda_answer_to_cpu_inputs_fails(capsys):
    inverted = SOL["lab01"].inverted_dropout
    assert lab01.check_inverted_dropout(lambda x, m, p: inverted(x, m, p).cuda()).status == "fail"
    assert "on cuda:0), expected a tensor on cpu, the device of the inputs" in capsys.readouterr().out


def test_a_bool_where_a_float_is_asked_is_told_a_float_was_expected(capsys):
    """It got "1 of 1 entries differ; it returned True, expected 0.54867"."""
    assert lab01.check_gemm_work(lambda s, p: True).status == "fail"
    out = capsys.readouterr().out
    assert "it returned a bool (True), expected a float" in out and "entries differ" not in out, out
    tile_mask = SOL["lab03"].tile_mask
    assert lab04.check_drop_probability(lambda *a: SOL["lab04"].drop_probability(*a) > 0.4).status == "fail"
    assert "(torch.bool), expected a floating tensor of shape" in capsys.readouterr().out
    assert lab03.check_tile_mask(tile_mask).passed  # a bool answer where a bool is asked still passes
    capsys.readouterr()


@pytest.mark.parametrize("dtype, digits", [(torch.float16, 3), (torch.bfloat16, 2)])
def test_a_half_precision_near_miss_is_told_that_the_dtype_is_the_cause(dtype, digits, capsys):
    """A float16 drop_probability failed with only "element [0] is 0.449951, expected 0.45"."""
    answer = SOL["lab04"].drop_probability
    assert lab04.check_drop_probability(lambda *a: answer(*a).to(dtype)).status == "fail"
    name = str(dtype).removeprefix("torch.")
    assert f"({name} rounding: {name} keeps about {digits} significant digits" in capsys.readouterr().out
    assert lab04.check_drop_probability(lambda *a: answer(*a).to(dtype) + 0.1).status == "fail"
    assert "rounding" not in capsys.readouterr().out  # a real slip gets no such note


def test_a_train_step_that_changes_its_batch_in_place_fails_naming_it(capsys):
    """x and y are made inside after_three_steps, so the checker's copy-and-compare never saw them: a step that
    zeroed y after using it passed."""
    train_step = solutions("lab05").train_step

    def zeroes(name):
        def step(model, optimizer, x, y):
            loss = train_step(model, optimizer, x, y)
            {"x": x, "y": y}[name].zero_()
            return loss

        return step

    for name, ordinal in (("x", "third"), ("y", "fourth")):
        assert lab05.check_train_step(zeroes(name)).status == "fail"
        out = capsys.readouterr().out
        assert f"step 1 changed {name} (the {ordinal} argument) in place: leave the inputs as they are" in out, out
    assert lab05.check_train_step(train_step).passed
    capsys.readouterr()


def test_the_lab06_reference_keeps_the_exercises_no_loop_constraint():
    """Lab 06's exercise 1 says "no loop", and its reference solution used a generator over range(keep)."""
    tree = ast.parse(inspect.getsource(SOL["lab06"].kept_residues))
    loops = (ast.For, ast.While, ast.comprehension)
    assert not [type(node).__name__ for node in ast.walk(tree) if isinstance(node, loops)]
    assert lab06.check_kept_residues(SOL["lab06"].kept_residues).passed


@pytest.mark.parametrize(
    "change, path",
    [
        (lambda seq: setattr(seq[1], "p", 0.0), "seq.1.p"),
        (lambda seq: seq.eval(), "seq.training"),
        (lambda seq: setattr(seq[0], "eps", 1e-3), "seq.0.eps"),
        (lambda seq: setattr(seq[0], "normalized_shape", (4,)), "seq.0.normalized_shape"),
    ],
    ids=["dropout-p", "eval-mode", "norm-eps", "norm-shape"],
)
def test_an_answer_that_changes_a_module_setting_fails_naming_it(change, path, capsys):
    """The docstring promises that changing an input module in place fails, but only tensors were compared:
    an answer that set a Dropout's p (a plain attribute) passed."""

    def width(seq):
        return seq[0].normalized_shape[0]

    def changes(seq):
        out = width(seq)
        change(seq)
        return out

    case = (nn.Sequential(nn.LayerNorm(3), nn.Dropout(0.1)),)
    assert check("width", width, width, [case]).passed
    assert check("width", changes, width, [case]).status == "fail"
    assert f"it changed {path} in place" in capsys.readouterr().out
