"""The frontier's refinement: points where the curve moves, not only on the fixed grid of mus
(at p = 0.6, n = 256 the whole trade lies between mu = 3 and 4, which the grid stepped over)."""

import math

import pytest

import approxdrop as ad
from approxdrop.search import search_frontier
from approxdrop.search.frontier import MIN_MU_GAP_SHARE

GRID = (0.0, 1.0, 2.5, 4.0, 10.0)


def _mus(points):
    return [pt.mu for pt in points]


def test_refinement_puts_points_between_the_two_ends():
    plain = search_frontier(0.6, 256, mus=GRID, exact=True)
    # the grid alone: every point at one end or the other
    assert all(pt.distance < 0.002 or pt.distance > 0.4 for pt in plain)
    refined = search_frontier(0.6, 256, mus=GRID, exact=True, refine=6)
    assert len(refined) == len(GRID) + 6
    assert _mus(refined) == sorted(_mus(refined)) and set(GRID) <= set(_mus(refined))
    between = [pt for pt in refined if 0.005 < pt.distance < 0.3]
    assert len(between) >= 3, [(pt.mu, pt.distance) for pt in refined]
    for a, b in zip(refined, refined[1:]):  # the exact frontier stays monotone
        assert a.distance <= b.distance + 1e-9 and a.expected_work >= b.expected_work - 1e-9
    # each added mu halves a gap of its neighbours at the time: a dyadic point between grid mus
    for mu in set(_mus(refined)) - set(GRID):
        assert (mu * 2**10).is_integer()
    # deterministic
    assert _mus(search_frontier(0.6, 256, mus=GRID, exact=True, refine=6)) == _mus(refined)


def test_refinement_stops_when_no_neighbours_are_far_apart():
    points = search_frontier(0.6, 256, mus=GRID, exact=True, refine=100)
    assert len(points) < len(GRID) + 100  # stopped before the budget
    min_gap = MIN_MU_GAP_SHARE * (GRID[-1] - GRID[0])
    for a, b in zip(points, points[1:]):
        ratio = (b.distance + 1e-9) / (a.distance + 1e-9)
        assert abs(math.log(ratio)) <= math.log(2.0) or b.mu - a.mu <= min_gap, (a.mu, b.mu, ratio)
    # a looser ratio adds fewer points
    assert len(search_frontier(0.6, 256, mus=GRID, exact=True, refine=100, refine_ratio=4.0)) < len(points)


def test_the_search_frontier_refines_too():
    points = search_frontier(0.6, 256, mus=GRID, refine=4, steps=100)
    assert len(points) == len(GRID) + 4 and _mus(points) == sorted(_mus(points))
    assert all(abs(pt.distribution.expected_rate - 0.6) <= 1e-9 for pt in points)
    assert any(0.005 < pt.distance < 0.3 for pt in points)


def test_without_refinement_the_points_follow_the_mus_given():
    mus = (4.0, 0.0, 2.5)
    assert _mus(search_frontier(0.6, 64, mus=mus, exact=True)) == list(mus)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"refine": -1}, r"refine must be in \[0, inf\), got -1"),
        ({"refine": 2.0}, "refine must be an int, got 2.0"),
        ({"refine": 2, "refine_ratio": 0.5}, r"refine_ratio must be in \[1.0, inf\], got 0.5"),
        ({"refine": 2, "refine_ratio": "2"}, "refine_ratio must be a finite number, got '2'"),
    ],
)
def test_refinement_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ad.search_frontier(0.6, 64, mus=GRID, exact=True, **kwargs)


# Guards against this change: (search/frontier.py: the MIN_MU_GAP_SHARE guard dropped from the refinement). At a jump
# of the exact optimum (a breakpoint of the LP) halving the gap again only finds one end or the other, so
# without the guard every refinement is spent bisecting the same breakpoint down to mus 1e-9 apart. No pair
# closer than MIN_MU_GAP_SHARE of the mu range may be split: every gap stays >= half of it.
def test_refinement_never_bisects_below_the_minimum_gap():
    mus = (0.0, 20.0)
    points = search_frontier(0.6, 256, mus=mus, exact=True, refine=25, refine_ratio=1.01)
    gaps = [b.mu - a.mu for a, b in zip(points, points[1:])]
    assert min(gaps) >= MIN_MU_GAP_SHARE * (mus[1] - mus[0]) / 2, sorted(gaps)[:3]
