"""PatternDistribution: exact rates by enumeration, sampling, serialisation, the closed-form default."""

import json
import math

import numpy as np
import pytest
import torch

from approxdrop import PatternDistribution, RowPattern, TilePattern, bracket_distribution
from approxdrop.distribution import MAX_LAW_PERIOD, MAX_PERIOD, MAX_RATE

MIXED = PatternDistribution(((1, 1), (3, 1), (5, 2), (4, 3)), (0.1, 0.4, 0.3, 0.2))


@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 0.5, 0.6, 2 / 3, 0.7, 0.9, 0.99])
def test_bracket_default_has_exactly_rate_p_for_every_unit(p):
    dist = bracket_distribution(p)
    assert dist.expected_rate == pytest.approx(p, abs=1e-12)
    assert all(keep == 1 for _, keep in dist.pairs) and len(dist.pairs) <= 2
    dps = [dp for dp, _ in dist.pairs]
    assert max(dps) - min(dps) <= 1  # the two neighbouring paper patterns
    for n in (1, 7, 64, 101):  # divisible or not by the periods
        probs = dist.drop_probability(n)
        assert torch.allclose(probs, torch.full((n,), p, dtype=torch.float64), atol=1e-12)


def test_drop_probability_is_exact_by_enumeration_for_any_mixture():
    rate = 0.1 * 0 + 0.4 * (2 / 3) + 0.3 * (3 / 5) + 0.2 * (1 / 4)
    assert MIXED.expected_rate == pytest.approx(rate)
    assert MIXED.expected_keep == pytest.approx(1 - rate)
    probs = MIXED.drop_probability(37)
    assert torch.allclose(probs, torch.full((37,), rate, dtype=torch.float64), atol=1e-12)
    assert sum(w for _, w in MIXED.enumerate()) == pytest.approx(1.0)


def test_tile_drop_probability_covers_partial_tiles():
    dist = PatternDistribution(((2, 1), (3, 2)), (0.5, 0.5), kind="tile", tile=4)
    probs = dist.drop_probability((10, 13))  # partial last tile row and column
    assert probs.shape == (10, 13)
    assert torch.allclose(probs, torch.full_like(probs, dist.expected_rate), atol=1e-12)


def test_samples_follow_the_probabilities_and_uniform_offsets():
    gen = torch.Generator().manual_seed(0)
    draws = [MIXED.sample(gen) for _ in range(20000)]
    for (dp, keep), q in zip(MIXED.pairs, MIXED.probs):
        picked = [d for d in draws if (d.dp, d.keep) == (dp, keep)]
        # 5 standard errors: fails for a wrong law, passes by chance with probability ~ 1e-6
        assert abs(len(picked) / len(draws) - q) < 5 * math.sqrt(q * (1 - q) / len(draws))
        counts = torch.bincount(torch.tensor([d.offset for d in picked]), minlength=dp)
        assert len(counts) == dp and counts.min() > 0.8 * len(picked) / dp


def test_a_pattern_of_probability_zero_is_not_in_the_law():
    law = PatternDistribution(((2, 1), (4, 1)), (1.0, 0.0))
    assert [(q.dp, w) for q, w in law.enumerate()] == [(2, 0.5), (2, 0.5)]
    with pytest.raises(ValueError, match="first must be a pattern this law draws"):
        law.complete_groups(RowPattern(4, 0, 1), 2)  # no draw gives (4, 1)


def test_same_generator_seed_gives_the_same_patterns():
    a = [MIXED.sample(torch.Generator().manual_seed(7)) for _ in range(3)]
    gen1, gen2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [MIXED.sample(gen1) for _ in range(50)] == [MIXED.sample(gen2) for _ in range(50)]
    assert a[0] == a[1] == a[2]


def test_sample_makes_patterns_of_its_kind():
    tile = PatternDistribution(((2, 1),), (1.0,), kind="tile", tile=16)
    pattern = tile.sample(torch.Generator().manual_seed(0))
    assert isinstance(pattern, TilePattern) and pattern.tile == 16
    assert isinstance(MIXED.sample(), RowPattern)


def test_to_dict_is_json_safe_and_round_trips():
    dist = PatternDistribution(
        ((2, 1), (3, 1)), (0.25, 0.75), kind="tile", tile=8, n=64, target_p=0.625, distance=0.5, loss_history=(3, 2, 1)
    )
    again = PatternDistribution.from_dict(json.loads(json.dumps(dist.to_dict())))
    assert again == dist and again.loss_history == (3.0, 2.0, 1.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PatternDistribution(((2, 1),), (0.5,)), "sum to 1"),
        (lambda: PatternDistribution(((2, 1), (3, 1)), (1.2, -0.2)), "must be >= 0"),
        (lambda: PatternDistribution(((2, 1),), (0.5, 0.5)), "as many probabilities"),
        (lambda: PatternDistribution((), ()), "as many probabilities"),
        (lambda: PatternDistribution(((2, 3),), (1.0,)), "keep must be in \\[1, 2\\], got 3"),
        (lambda: PatternDistribution(((0, 1),), (1.0,)), "dp must be in"),
        (lambda: PatternDistribution(((2, 1), (2, 1)), (0.5, 0.5)), "distinct"),
        (lambda: PatternDistribution(((2, 1),), (1.0,), kind="diag"), "kind must be one of"),
        (lambda: PatternDistribution(((2, 1),), (1.0,)).drop_probability((3, 4)), "int unit count"),
        (lambda: PatternDistribution(((2, 1),), (1.0,), kind="tile").drop_probability(5), "weight shape"),
        (lambda: PatternDistribution.from_dict({"probs": [1.0]}), "not a PatternDistribution dict"),
        (lambda: bracket_distribution(1.0), "p must be a number in \\[0, 1\\), got 1.0"),
        (lambda: bracket_distribution(-0.1), "got -0.1"),
        (lambda: bracket_distribution("0.5"), "got '0.5'"),
    ],
)
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "pairs, probs, kwargs, message",
    [
        (((2.7, 1.9),), (1.0,), {}, r"pairs\[0\] dp must be an int, got 2.7"),  # was silently (2, 1)
        (((2, 1.0),), (1.0,), {}, r"pairs\[0\] keep must be an int, got 1.0"),
        ((("2", "1"),), (1.0,), {}, r"pairs\[0\] dp must be an int, got '2'"),
        (("21",), (1.0,), {}, r"pairs\[0\] must be a \(dp, keep\) pair of ints, got '21'"),
        (((2, 1, 1),), (1.0,), {}, r"pairs\[0\] must be a \(dp, keep\) pair of ints, got \(2, 1, 1\)"),
        ((7,), (1.0,), {}, r"pairs\[0\] must be a \(dp, keep\) pair of ints, got 7"),
        (((np.bool_(True), 1),), (1.0,), {}, r"pairs\[0\] dp must be an int"),
        ("21", (0.5, 0.5), {}, "pairs must be a sequence, got '21'"),
        (((2, 1),), ("1.0",), {}, r"probs\[0\] must be a finite number, got '1.0'"),
        (((2, 1),), (True,), {}, r"probs\[0\] must be a finite number, got True"),
        (((2, 1), (3, 1)), (float("nan"), 1.0), {}, r"probs\[0\] must be a finite number, got nan"),
        (((2, 1),), (1.0,), {"tile": 8.0}, "tile must be an int, got 8.0"),
        (((2, 1),), (1.0,), {"n": 12.0}, "n must be an int, got 12.0"),
        (((2, 1),), (1.0,), {"n": 0}, "n must be in"),
        (((2, 1),), (1.0,), {"target_p": 1.5}, r"target_p must be a number in \[0, 1\), got 1.5"),
        (((2, 1),), (1.0,), {"distance": -0.1}, "distance must be in"),
        (((2, 1),), (1.0,), {"loss_history": ("a",)}, r"loss_history\[0\] must be a finite number, got 'a'"),
    ],
)
def test_non_numbers_are_refused_naming_the_value(pairs, probs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PatternDistribution(pairs, probs, **kwargs)


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    dist = PatternDistribution(
        np.array([[2, 1], [3, 1]]),
        np.array([0.25, 0.75], dtype=np.float32),
        kind="tile",
        tile=np.int64(8),
        n=np.int32(12),
        target_p=np.float32(0.625),
        distance=np.float64(0.5),
        loss_history=np.array([2.0, 1.0]),
    )
    plain = PatternDistribution(((2, 1), (3, 1)), (0.25, 0.75), "tile", 8, 12, 0.625, 0.5, (2.0, 1.0))
    assert dist == plain and dist.loss_history == plain.loss_history
    numbers = [*sum(dist.pairs, ()), dist.tile, dist.n]
    assert all(type(v) is int for v in numbers) and all(type(q) is float for q in (*dist.probs, dist.target_p))
    assert PatternDistribution.from_dict(json.loads(json.dumps(dist.to_dict()))) == plain


def test_bracket_default_stops_at_the_longest_period():
    assert bracket_distribution(MAX_RATE).pairs == ((MAX_PERIOD, 1),)
    assert bracket_distribution(np.float32(0.5)) == bracket_distribution(0.5)
    for p in (1 - 1e-15, 0.9999):  # was a ZeroDivisionError / a law of period 10^15
        with pytest.raises(ValueError, match=rf"p={p} is above 0.9990234 = 1 - 1/1024"):
            bracket_distribution(p)


def test_bad_shapes_generators_and_first_patterns_are_refused_by_name():
    tile_law = PatternDistribution(((2, 1),), (1.0,), kind="tile", tile=2)
    for shape, name in (((-1, 4), "n_out"), ((2.5, 4), "n_out"), ((3, "4"), "n_in")):
        with pytest.raises(ValueError, match=f"{name} must be"):
            tile_law.drop_probability(shape)
    law = PatternDistribution(((2, 1), (4, 1)), (0.5, 0.5))
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator or None, got int"):
        law.sample(0)
    with pytest.raises(ValueError, match="got str"):
        law.sample_groups(2, "seed")
    with pytest.raises(ValueError, match="groups must be"):
        law.complete_groups(RowPattern(2, 0), 0)
    for foreign in (RowPattern(3, 0), TilePattern(2, 0, tile=32)):  # not a pattern this law draws
        with pytest.raises(ValueError, match="first must be a pattern this law draws"):
            law.complete_groups(foreign, 2)
    assert law.complete_groups(RowPattern(2, 1), 2, torch.Generator().manual_seed(0)) == (
        RowPattern(2, 1),
        RowPattern(2, 0),
    )


def test_periods_are_capped_at_construction():
    # a first draw tabulated every offset: dp = 10**6 took 5 s and 600 MB, 10**9 never returned
    for dp in (MAX_LAW_PERIOD + 1, 10**9):
        with pytest.raises(ValueError, match=rf"pairs\[1\] dp must be at most MAX_LAW_PERIOD = 65536 .*got {dp}"):
            PatternDistribution(((2, 1), (dp, 1)), (0.5, 0.5))
    law = PatternDistribution(((MAX_LAW_PERIOD, 1),), (1.0,))
    assert law.pattern_at(0.5) == RowPattern(MAX_LAW_PERIOD, MAX_LAW_PERIOD // 2)


@pytest.mark.parametrize("u", [float("nan"), -3.0, -1e-300, 1.0, 2.0, float("inf"), True, "0.5", None])
def test_pattern_at_refuses_a_number_outside_the_unit_interval(u):
    with pytest.raises(ValueError, match=r"u must be a number in \[0, 1\), got "):
        MIXED.pattern_at(u)  # nan and negatives returned a pattern


def test_pattern_at_covers_the_unit_interval():
    assert MIXED.pattern_at(0.0) == RowPattern(1, 0)
    assert MIXED.pattern_at(np.float64(0.1 - 1e-12)) == RowPattern(1, 0)
    assert MIXED.pattern_at(1.0 - 2**-53) == RowPattern(4, 3, keep=3)
