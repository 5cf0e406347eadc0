"""The pattern law a dropout site uses when none is given."""

from __future__ import annotations

from .._env import check_int, outside_fake_mode
from ..distribution import PatternDistribution
from .family import min_period
from .sgd import search_distribution


def distribution_for(p: float, n: int, kind: str = "row", tile: int = 32, family: str = "paper") -> PatternDistribution:
    """The distribution a dropout site uses by default: ``n`` is its unit count (row) or the
    number of T x T tiles of the weight it drops (tile).

    It is ``search_distribution(p, n, kind, family)`` with ``max_period`` 16 (more when p needs
    it, up to ``MAX_PERIODS[family]``: p <= 0.99902 for "paper", p <= 0.984375 for "extended"),
    cached in memory and on disk (``search.cache``). The paper family (keep = 1) is the
    default because its kept rows are strided views, the fastest executor. A model built under a
    FakeTensorMode (shape inference) still searches on real tensors."""
    check_int("n", n, 1)
    period = max(16, min_period(p))
    return outside_fake_mode(
        lambda: search_distribution(p, n, kind=kind, family=family, max_period=period, tile=tile, cache=True)
    )
