"""Statistics of a PatternDistribution for the course (docs/method.md §4): how close to Bernoulli(p) it is.

Exact quantities enumerate every (pattern, offset) with its probability; Monte Carlo ones draw
patterns with ``PatternDistribution.sample``, as training does.

Units: for a row distribution ``n`` is the unit count. A tile distribution takes either the
weight shape ``(n_out, n_in)`` (units are the tiles of its T x T grid, row-major) or an int
tile count ``n``, which is modelled as ``n`` units of a row pattern, as the search does
(see ``approxdrop.search``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .._env import check_int, check_number, check_rate
from ..distribution import PatternDistribution
from ..patterns import RowPattern


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """Float64[n+1]: P(K = k) for K ~ Binomial(n, p), without scipy."""
    n, p = check_int("n", n, 0), check_number("p", p, 0.0, 1.0)
    if p in (0.0, 1.0):
        pmf = np.zeros(n + 1)
        pmf[0 if p == 0.0 else n] = 1.0
        return pmf
    k = torch.arange(n + 1, dtype=torch.float64, device="cpu")  # read as numpy, whatever the default device
    log_choose = (
        torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64, device="cpu"))
        - torch.lgamma(k + 1)
        - torch.lgamma(n - k + 1)
    )
    return torch.exp(log_choose + k * math.log(p) + (n - k) * math.log1p(-p)).numpy()


def binomial_test(k: int, trials: int, p: float) -> float:
    """Exact two-sided binomial test p-value of ``k`` successes in ``trials`` at rate ``p``: the
    probability of every outcome no more likely than ``k`` (scipy.stats.binomtest's definition)."""
    pmf = binomial_pmf(trials, p)
    check_int("k", k, 0, trials)
    return float(min(1.0, pmf[pmf <= pmf[k] * (1.0 + 1e-7)].sum()))


def candidate_dropped_counts(pairs: Sequence[tuple[int, int]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dropped-count law of each row pattern ``(dp, keep)`` on ``n`` units over its uniform offset.

    Returns ``(index, count, weight)``, each of length ``sum(dp)``, one entry per (pattern, offset):
    candidate index, units dropped, and probability ``1/dp`` of that offset. By arithmetic:
    with ``n = m*dp + r``, offset ``o`` keeps ``m*keep + f(o+keep) - f(o)`` units, where
    ``f(x) = (x // dp)*r + min(x mod dp, r)`` counts ``j < x`` with ``j mod dp < r``.
    """
    n = check_int("n", n, 1)
    dp = np.array([d for d, _ in pairs for _ in range(d)], dtype=np.int64)  # [M]
    keep = np.array([k for d, k in pairs for _ in range(d)], dtype=np.int64)  # [M]
    offset = np.concatenate([np.arange(d) for d, _ in pairs])  # [M]
    index = np.repeat(np.arange(len(pairs)), [d for d, _ in pairs])  # [M]
    m, r = np.divmod(n, dp)

    def below_r(x):
        return (x // dp) * r + np.minimum(x % dp, r)

    kept = m * keep + below_r(offset + keep) - below_r(offset)
    return index, n - kept, 1.0 / dp


def _unit_drop_masks(
    dist: PatternDistribution, n: int | tuple[int, int]
) -> tuple[np.ndarray, list[tuple[int, int, int]], np.ndarray]:
    """Every (pattern, offset) with nonzero probability: weights Float64[M], keys (dp, offset, keep),
    and drop masks Bool[M, U] over the U units (see the module docstring)."""
    weights, keys, masks = [], [], []
    if isinstance(n, tuple):
        if dist.kind != "tile" or len(n) != 2:
            raise ValueError(f"a weight shape (n_out, n_in) needs a tile distribution, got {n!r} for {dist.kind!r}")
        n = (check_int("n_out", n[0], 1), check_int("n_in", n[1], 1))
    else:
        n = check_int("n", n, 1)
    for pattern, weight in dist.enumerate():
        if isinstance(n, tuple):
            kept = pattern.tile_mask(*n).flatten()  # [rows * cols]
        else:
            kept = RowPattern(pattern.dp, pattern.offset, pattern.keep).keep_mask(n)  # [n]
        weights.append(weight)
        keys.append((pattern.dp, pattern.offset, pattern.keep))
        masks.append(~kept.numpy())
    return np.array(weights), keys, np.stack(masks)


def dropped_count_pmf(dist: PatternDistribution, n: int | tuple[int, int]) -> np.ndarray:
    """Float64[U+1]: exact law of the number of dropped units (or tiles)."""
    weights, _, masks = _unit_drop_masks(dist, n)
    return np.bincount(masks.sum(1), weights=weights, minlength=masks.shape[1] + 1)


class CountHistogram(NamedTuple):
    """Dropped-count law of a distribution next to Binomial(units, p), for a bar chart."""

    count: np.ndarray  # Long[U+1]: 0..U
    pattern: np.ndarray  # Float64[U+1]
    binomial: np.ndarray  # Float64[U+1]


def dropped_count_histogram(
    dist: PatternDistribution, n: int | tuple[int, int], p: float | None = None
) -> CountHistogram:
    """Exact dropped-count law next to Binomial(U, p); ``p`` defaults to the expected rate."""
    pmf = dropped_count_pmf(dist, n)
    p = dist.expected_rate if p is None else check_rate(p)
    units = len(pmf) - 1
    return CountHistogram(np.arange(units + 1), pmf, binomial_pmf(units, p))


def distance_to_binomial(dist: PatternDistribution, n: int | tuple[int, int], p: float | None = None) -> float:
    """Wasserstein-1 distance between the dropped *fraction* (count / U) and Binomial(U, p) / U:
    ``sum_k |CDF_pattern(k) - CDF_binomial(k)| / U``, the distance the search minimises."""
    hist = dropped_count_histogram(dist, n, p)
    units = len(hist.count) - 1
    return float(np.abs(np.cumsum(hist.pattern) - np.cumsum(hist.binomial))[:units].sum() / units)


def drop_probability(dist: PatternDistribution, n: int | tuple[int, int]) -> np.ndarray:
    """Exact drop probability of every unit: Float64[n] (int ``n``) or Float64[rows, cols] of tiles
    (weight shape). For a row distribution this is ``PatternDistribution.drop_probability``."""
    if dist.kind == "row":
        return dist.drop_probability(n).numpy()
    weights, _, masks = _unit_drop_masks(dist, n)
    prob = weights @ masks  # [U]
    return prob.reshape(-(-n[0] // dist.tile), -(-n[1] // dist.tile)) if isinstance(n, tuple) else prob


def co_drop_matrix(dist: PatternDistribution, n: int | tuple[int, int]) -> np.ndarray:
    """Float64[U, U]: exact P(unit u and unit v both dropped), by enumeration (cost O(M U^2) for M
    patterns-with-offset; meant for the few hundred units a lab shows). The diagonal is the
    per-unit drop probability; Bernoulli(p) would give p^2 off the diagonal."""
    weights, _, masks = _unit_drop_masks(dist, n)
    d = masks.astype(np.float64)  # [M, U]
    return d.T @ (weights[:, None] * d)


def sample_drop_masks(
    dist: PatternDistribution, n: int | tuple[int, int], samples: int, generator: torch.Generator | None = None
) -> np.ndarray:
    """Bool[samples, U]: the units dropped by ``samples`` patterns drawn with ``dist.sample``."""
    check_int("samples", samples, 1)
    _, keys, masks = _unit_drop_masks(dist, n)
    row = {key: i for i, key in enumerate(keys)}
    drawn = [dist.sample(generator) for _ in range(samples)]
    return masks[[row[(pat.dp, pat.offset, pat.keep)] for pat in drawn]]


class MonteCarlo(NamedTuple):
    """Monte Carlo estimates from sampled drop masks (compare with the exact functions)."""

    drop_counts: np.ndarray  # Long[U]: in how many samples each unit was dropped
    drop_probability: np.ndarray  # Float64[U]
    co_drop: np.ndarray | None  # Float64[U, U], when asked for
    count_pmf: np.ndarray  # Float64[U+1]


def monte_carlo(
    dist: PatternDistribution,
    n: int | tuple[int, int],
    samples: int = 10_000,
    generator: torch.Generator | None = None,
    co_drop: bool = False,
) -> MonteCarlo:
    """Estimate per-unit drop probability, dropped-count law and (optionally) co-drop matrix from
    ``samples`` draws of ``dist.sample``. Units are flattened as in the module docstring."""
    masks = sample_drop_masks(dist, n, samples, generator)  # [S, U]
    counts = masks.sum(0)
    d = masks.astype(np.float64)
    return MonteCarlo(
        drop_counts=counts,
        drop_probability=counts / samples,
        co_drop=d.T @ d / samples if co_drop else None,
        count_pmf=np.bincount(masks.sum(1), minlength=masks.shape[1] + 1) / samples,
    )
