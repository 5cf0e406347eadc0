"""Course statistics: exact laws by enumeration, Monte Carlo from .sample, the binomial test."""

import numpy as np
import pytest
import torch
from scipy import stats as sps

from approxdrop import PatternDistribution, RowPattern, TilePattern
from approxdrop.search.stats import (
    binomial_pmf,
    binomial_test,
    candidate_dropped_counts,
    co_drop_matrix,
    distance_to_binomial,
    drop_probability,
    dropped_count_histogram,
    dropped_count_pmf,
    monte_carlo,
)

MIXED = PatternDistribution(((1, 1), (3, 1), (5, 2), (7, 4)), (0.1, 0.4, 0.3, 0.2))
TILE = PatternDistribution(((2, 1), (3, 1)), (0.5, 0.5), kind="tile", tile=4)


def test_candidate_dropped_counts_match_periodic_count():
    pairs = [(dp, keep) for dp in range(1, 9) for keep in range(1, dp + 1)]
    for n in (1, 5, 13, 64, 101):
        index, count, weight = candidate_dropped_counts(pairs, n)
        expected = [n - RowPattern(dp, o, keep).kept_count(n) for dp, keep in pairs for o in range(dp)]
        assert count.tolist() == expected
        assert np.allclose(np.bincount(index, weights=weight), 1.0)


def test_a_pattern_drops_as_few_distinct_counts_as_docs_method_says():
    """docs/method.md §4c: one count when dp divides n, else at most min(keep, dp - keep) + 1 (two for keep 1),
    and that many are reached."""
    most = {}
    for dp in range(1, 13):
        for keep in range(1, dp + 1):
            for n in range(1, 4 * dp):
                index, count, _ = candidate_dropped_counts([(dp, keep)], n)
                distinct = len(set(count.tolist()))
                assert distinct == 1 if n % dp == 0 else distinct <= min(keep, dp - keep) + 1, (dp, keep, n)
                most[dp, keep] = max(most.get((dp, keep), 0), distinct)
    assert all(m == min(keep, dp - keep) + 1 for (dp, keep), m in most.items() if dp > 1), most


@pytest.mark.parametrize("n, p", [(1, 0.3), (10, 0.5), (200, 0.05), (4096, 0.7), (50, 0.0)])
def test_binomial_pmf_matches_scipy(n, p):
    assert np.allclose(binomial_pmf(n, p), sps.binom.pmf(np.arange(n + 1), n, p), atol=1e-13)


@pytest.mark.parametrize("k, trials, p", [(0, 10, 0.3), (3, 10, 0.3), (5020, 10_000, 0.5), (2900, 10_000, 0.3)])
def test_binomial_test_matches_scipy(k, trials, p):
    assert binomial_test(k, trials, p) == pytest.approx(sps.binomtest(k, trials, p).pvalue, rel=1e-9, abs=1e-15)


def test_dropped_count_pmf_by_direct_enumeration():
    n = 23
    expected = np.zeros(n + 1)
    for pattern, weight in MIXED.enumerate():
        expected[n - pattern.kept_count(n)] += weight
    assert np.allclose(dropped_count_pmf(MIXED, n), expected)
    index, count, weight = candidate_dropped_counts(MIXED.pairs, n)
    via_candidates = np.bincount(count, weights=np.asarray(MIXED.probs)[index] * weight, minlength=n + 1)
    assert np.allclose(dropped_count_pmf(MIXED, n), via_candidates)


def test_tile_counts_on_a_weight_grid():
    dist = PatternDistribution(((2, 1), (3, 2)), (0.5, 0.5), kind="tile", tile=4)
    shape = (10, 13)  # a 3 x 4 tile grid with partial last tiles
    expected = np.zeros(13)
    for pattern, weight in dist.enumerate():
        expected[int((~pattern.tile_mask(*shape)).sum())] += weight
    assert np.allclose(dropped_count_pmf(dist, shape), expected)
    assert np.allclose(drop_probability(dist, shape), dist.expected_rate)
    assert drop_probability(dist, shape).shape == (3, 4)
    with pytest.raises(ValueError, match="tile distribution"):
        dropped_count_pmf(MIXED, shape)


def test_exact_drop_probability_is_the_rate_for_every_unit():
    for n in (1, 7, 36, 101):
        assert np.allclose(drop_probability(MIXED, n), MIXED.expected_rate, atol=1e-12)


def test_co_drop_matrix_by_hand_and_structure():
    co = co_drop_matrix(PatternDistribution(((2, 1),), (1.0,)), 4)
    # units 0 and 2 are dropped together (offset 1), units 1 and 3 together (offset 0)
    assert np.allclose(co, 0.5 * np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]))
    co = co_drop_matrix(MIXED, 30)
    assert np.allclose(co, co.T)
    assert np.allclose(np.diag(co), drop_probability(MIXED, 30))
    assert co.min() >= 0.0 and not np.allclose(co, MIXED.expected_rate**2)  # not Bernoulli's p^2


def test_histogram_and_distance_against_scipy_wasserstein():
    n, p = 40, 0.45
    hist = dropped_count_histogram(MIXED, n, p)
    assert np.allclose(hist.binomial, sps.binom.pmf(np.arange(n + 1), n, p))
    assert hist.pattern.sum() == pytest.approx(1.0)
    frac = np.arange(n + 1) / n
    expected = sps.wasserstein_distance(frac, frac, hist.pattern, hist.binomial)
    assert distance_to_binomial(MIXED, n, p) == pytest.approx(expected, rel=1e-9)


def test_monte_carlo_agrees_with_exact():
    n, samples = 30, 10_000
    mc = monte_carlo(MIXED, n, samples, torch.Generator().manual_seed(0), co_drop=True)
    sigma = np.sqrt(0.25 / samples)
    assert np.abs(mc.drop_probability - drop_probability(MIXED, n)).max() < 5 * sigma
    assert np.abs(mc.co_drop - co_drop_matrix(MIXED, n)).max() < 5 * sigma
    assert 0.5 * np.abs(mc.count_pmf - dropped_count_pmf(MIXED, n)).sum() < 0.03
    assert mc.drop_counts.sum() == pytest.approx(mc.count_pmf @ np.arange(n + 1) * samples)


def test_binomial_test_accepts_the_true_rate_and_rejects_a_wrong_one():
    n, samples, p = 50, 10_000, MIXED.expected_rate
    mc = monte_carlo(MIXED, n, samples, torch.Generator().manual_seed(1))
    assert min(binomial_test(int(mc.drop_counts[u]), samples, p) for u in (0, 17, 49)) > 1e-4
    wrong = PatternDistribution(((1, 1), (3, 1), (5, 2), (7, 4)), (0.025, 0.475, 0.3, 0.2))
    assert wrong.expected_rate == pytest.approx(p + 0.05)
    mc = monte_carlo(wrong, n, samples, torch.Generator().manual_seed(1))
    assert max(binomial_test(int(mc.drop_counts[u]), samples, p) for u in (0, 17, 49)) < 1e-4


def test_sampled_patterns_come_from_sample(monkeypatch):
    drawn = []
    original = PatternDistribution.sample

    def spy(self, generator=None):
        drawn.append(original(self, generator))
        return drawn[-1]

    monkeypatch.setattr(PatternDistribution, "sample", spy)
    dist = PatternDistribution(((4, 1), (2, 1)), (0.5, 0.5), kind="tile", tile=2)
    mc = monte_carlo(dist, (6, 8), 20, torch.Generator().manual_seed(2))
    assert len(drawn) == 20 and all(isinstance(t, TilePattern) for t in drawn)
    dropped = sum((~t.tile_mask(6, 8)).flatten().numpy().astype(int) for t in drawn)
    assert mc.drop_counts.tolist() == dropped.tolist()


def test_numpy_scalars_are_accepted_like_python_numbers():
    assert np.array_equal(binomial_pmf(np.int64(10), np.float32(0.25)), binomial_pmf(10, 0.25))
    hist = dropped_count_histogram(MIXED, np.int64(23), p=np.float32(0.5))
    assert np.array_equal(hist.binomial, dropped_count_histogram(MIXED, 23, p=0.5).binomial)
    gen = torch.Generator().manual_seed(0)
    assert monte_carlo(MIXED, np.int64(9), samples=np.int64(20), generator=gen).drop_counts.shape == (9,)
    with pytest.raises(ValueError, match="n must be an int, got 9.0"):
        drop_probability(MIXED, 9.0)


@pytest.mark.parametrize(
    "call, message",
    [  # each was a TypeError from inside, or an answer
        (lambda: binomial_pmf(5, None), "p must be a finite number, got None"),
        (lambda: binomial_pmf(5, True), "p must be a finite number, got True"),
        (lambda: binomial_pmf(5, "0.5"), "p must be a finite number, got '0.5'"),
        (lambda: binomial_pmf(5, 1.5), r"p must be in \[0.0, 1.0\], got 1.5"),
        (lambda: binomial_pmf(-1, 0.5), r"n must be in \[0, inf\), got -1"),
        (lambda: distance_to_binomial(TILE, (0, 8)), r"n_out must be in \[1, inf\), got 0"),  # was nan
        (lambda: dropped_count_pmf(TILE, (0, 8)), r"n_out must be in \[1, inf\), got 0"),  # was [1.]
        (lambda: dropped_count_pmf(TILE, (8, -2)), r"n_in must be in \[1, inf\), got -2"),
        (lambda: drop_probability(TILE, (8, 2.5)), "n_in must be an int, got 2.5"),
    ],
)
def test_bad_arguments_are_refused_at_the_entry(call, message):
    with pytest.raises(ValueError, match=message):
        call()
