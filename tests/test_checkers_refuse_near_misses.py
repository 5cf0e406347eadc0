"""The labs' checkers refuse near misses: answers a little off in float32 or float64, a mask case or a partial tile
case left out, a slightly different training step or conversion, chains in the wrong order, infinities of the
wrong sign and complex answers. Each wrong answer here passed when its checker was loosened by one step."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_exercises_lab08 import converted_model

from approxdrop.course.checks import check
from approxdrop.course.exercises import lab01, lab02, lab03, lab05, lab07, lab08
from approxdrop.models import convert
from approxdrop.models.lstm import row_projection
from approxdrop.ops import row_pattern_linear
from approxdrop.patterns import TilePattern

# Guards against this change: (checks.py: the float32 tolerance applied to every tensor reference, float64 ones too).
#
# A learner who computes in float32 and casts back to the input's dtype (float64) returns an answer off by
# ~1e-6: far above the 1e-10 / 1e-9 tolerance of the float64 cases, below FLOAT32_ATOL (1e-4). The real
# checker fails it (and says "compute in float64"); the changed one passes it.


def projection_in_float32(u, weight, bias, pattern):  # WRONG: float32 arithmetic, float64 dtype returned
    return row_projection(u.float(), weight.float(), bias.float(), pattern).to(u.dtype)


def compact_forward_in_float32(x, w, b, in_p, out_p):  # WRONG: float32 arithmetic, float64 dtype returned
    return row_pattern_linear(x.float(), w.float(), b.float(), in_p, out_p).to(x.dtype)


def test_lab07_projection_computed_in_float32_fails_the_float64_cases():
    result = lab07.check_masked_projection(projection_in_float32)
    assert result.status == "fail", str(result)


def test_lab02_compact_forward_computed_in_float32_fails_the_float64_cases():
    result = lab02.check_compact_forward(compact_forward_in_float32)
    assert result.status == "fail", str(result)


# Guards against this change: (checks.py _compare_values: unequal infinities counted as equal) and C22 (checks.py
# _compare: a complex answer no longer refused where the reference is real). No lab's reference has an inf
# or returns a list of floats today, so the course's own checkers are unaffected; ``check`` is the public
# API the labs (and any new exercise) build on, and its docstring promises both.


def test_minus_inf_where_the_reference_has_plus_inf_fails():
    result = check(
        "inf sign",
        lambda x: torch.tensor([1.0, -math.inf], dtype=torch.float64),
        lambda x: torch.tensor([1.0, math.inf], dtype=torch.float64),
        [(0,)],
    )
    assert result.status == "fail", str(result)


def test_a_complex_answer_with_the_right_real_part_fails_against_a_list_of_floats():
    result = check("complex", lambda x: [0.5 + 2j, 1.0 + 0j], lambda x: [0.5, 1.0], [(0,)])
    assert result.status == "fail" and "holds complex numbers, expected real ones" in result.detail, str(result)


def test_a_complex_tensor_answer_is_told_it_is_complex():
    result = check(
        "complex tensor",
        lambda x: torch.tensor([0.5 + 3j, 1.0], dtype=torch.complex128),
        lambda x: torch.tensor([0.5, 1.0], dtype=torch.float64),
        [(0,)],
    )
    assert result.status == "fail" and "complex" in result.detail, str(result)


# Guards against this change: (lab01.FLOAT32_ATOL loosened 1e-5 -> 1e-3). Low severity: every error that does not depend
# on the dtype is already bounded at 1e-6 by the float64 cases, so only an answer that loses precision on
# float32 inputs alone gets through (below: one whose float32 result is off by 1e-4, as a scale stored in
# a 13-bit mantissa would be). The real checker fails it on the float32 cases; the changed one passes it.


def dropout_sloppy_in_float32(x, keep_mask, p):  # WRONG on float32 inputs only: 1e-4 off
    out = x * keep_mask / (1 - p)
    return out + 1e-4 * keep_mask if x.dtype == torch.float32 else out


def test_a_float32_answer_1e_4_off_fails():
    result = lab01.check_inverted_dropout(dropout_sloppy_in_float32)
    assert result.status == "fail", str(result)


# Guards against this change: (lab01.check_inverted_dropout without the case whose keep_mask is one row shared by the
# batch). The spec says keep_mask is "same shape or broadcastable"; an answer that indexes with the mask
# only works when the mask has x's shape, and only that case catches it.


def inverted_dropout_by_indexing(x, keep_mask, p):  # WRONG: breaks for a broadcast mask (IndexError)
    out = torch.zeros_like(x)
    out[keep_mask] = x[keep_mask] / (1 - p)
    return out


def test_an_answer_that_only_handles_a_same_shape_mask_fails():
    result = lab01.check_inverted_dropout(inverted_dropout_by_indexing)
    assert result.status == "fail", str(result)


# Guards against this change: (lab03: the fixed case with partial tiles on both sides, (10, 7, dp 4, offset 3, tile 3,
# keep 2), removed). The only other fixed case with partial tiles has dp = 1 (every tile kept), so among the
# fixed cases only this one tells a weight mask that gets the partial tiles wrong. The drawn cases catch it
# only by chance; draw_int is pinned to its lower bound so that the fixed cases alone are judged.


def weight_mask_by_nearest_resize(n_out, n_in, dp, offset, tile, keep):
    # WRONG: nearest-neighbour resizing maps row i to tile floor(i * rows / n_out), which is i // tile only
    # when tile divides n_out (and likewise for columns)
    tiles = TilePattern(dp, offset, tile, keep).tile_mask(n_out, n_in)
    return F.interpolate(tiles[None, None].float(), size=(n_out, n_in), mode="nearest")[0, 0].bool()


def test_a_weight_mask_wrong_on_partial_tiles_fails_on_the_fixed_cases(monkeypatch):
    monkeypatch.setattr(lab03, "draw_int", lambda generator, low, high: low)
    result = lab03.check_weight_mask(weight_mask_by_nearest_resize)
    assert result.status == "fail", str(result)


# Guards against this change: (lab05.check_train_step's atol loosened 1e-5 -> 1e-3). Two plausible wrong steps leave
# the losses and parameters after three steps 0.6e-4 to 3e-4 off (measured on every method): an L2 penalty
# the spec does not ask for (1e-5 * sum of squared parameters; ~1.3e-4) and label smoothing 1e-3 (~1.4e-4
# on bernoulli). The real checker fails both; the changed one passes both.


def step_with_l2_penalty(model, optimizer, x, y):  # WRONG: adds weight decay through the loss
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y) + 1e-5 * sum((p**2).sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    return float(loss)


def step_with_label_smoothing(model, optimizer, x, y):  # WRONG: a different loss
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y, label_smoothing=1e-3)
    loss.backward()
    optimizer.step()
    return float(loss)


@pytest.mark.parametrize("step", [step_with_l2_penalty, step_with_label_smoothing], ids=lambda f: f.__name__)
def test_a_slightly_different_training_step_fails(step):
    result = lab05.check_train_step(step)
    assert result.status == "fail", str(result)


# Guards against this change: (lab08.check_conversion's 1e-6 on the eval output loosened to 1e-4). A conversion that
# keeps the Parameter objects but changes the function a little (here one fc1 weight scaled by 1.001, as a
# block that re-scaled its weight by a rounded keep factor would) moves the eval logits by ~1e-5..1e-4:
# the real check fails it, the changed one passes it.


def test_a_conversion_that_moves_the_logits_slightly_fails():
    model, params, x, before = converted_model()
    convert(model.train(), method="row", groups=2)
    with torch.no_grad():
        model.blocks[1].mlp[0].fc1.weight.mul_(1.001)  # the same objects, a slightly different function
    result = lab08.check_conversion(model, params, x, before)
    assert 1e-6 < result.max_diff < 1e-4  # the window a 1e-4 tolerance would let through
    assert result.status == "fail", str(result)


# Guards against this change: (lab08.check_find_chains comparing sorted(got) with the reference: the order no longer
# checked). The spec asks for the start indices "in increasing order"; a matcher that scans seq from the
# end returns the right indices in decreasing order: the real checker fails it ("in the wrong order"),
# the changed one passes it.


def find_chains_from_the_end(seq):  # WRONG: the right indices, in decreasing order
    return list(reversed(lab08.reference_find_chains(seq)))


def test_chains_listed_in_decreasing_order_fail():
    result = lab08.check_find_chains(find_chains_from_the_end)
    assert result.status == "fail", str(result)
    assert "wrong order" in result.detail
