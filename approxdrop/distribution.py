"""PatternDistribution: a probability law over (dp, keep) with a uniform offset (docs/method.md §3-4)."""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ._env import check_generator, check_int, check_number, check_rate
from .patterns import RowPattern, TilePattern

KINDS = ("row", "tile")
# The longest period dp of the default laws (bracket_distribution, the searched families): higher
# rates need periods (and memory) that grow as 1 / (1 - p). 1 - 1/1024 = 0.9990234375 is the top rate.
MAX_PERIOD = 1024
MAX_RATE = 1.0 - 1.0 / MAX_PERIOD
# The most batch groups a draw gives (grouped complementary patterns): a draw costs O(groups), and groups
# beyond the batch hold no sample. 1024 groups cover a batch of 1024 rows at one sample per group.
MAX_GROUPS = 1024
# The longest period a law may hold: its first draw builds a table of every (pattern, offset), O(sum of dp)
# time and memory (dp = 2**16: about 0.4 s and 20 MB; 10**6: 5 s and 300 MB; 10**9 does not return).
MAX_LAW_PERIOD = 2**16
RATE_TOL = 1e-6  # how far a law's expected_rate may be from the p it is used for (model sites, search cache)


@dataclass(frozen=True)
class PatternDistribution:
    """Patterns ``(dp, keep)`` with probabilities; the offset is drawn uniformly in [0, dp), with
    ``1 <= keep <= dp <= MAX_LAW_PERIOD`` (2**16: draws use a table of every pattern and offset).

    ``kind`` is "row" (RowPattern on units) or "tile" (TilePattern of size ``tile``).
    ``distance`` and ``loss_history`` are filled in by a search (None / empty otherwise);
    ``n`` and ``target_p`` record what the distribution was built for, when known.
    """

    pairs: tuple[tuple[int, int], ...]
    probs: tuple[float, ...]
    kind: str = "row"
    tile: int = 32
    n: int | None = None
    target_p: float | None = None
    distance: float | None = None
    loss_history: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "tile", check_int("tile", self.tile, 1))
        pairs, probs = check_sequence("pairs", self.pairs), check_sequence("probs", self.probs)
        if not pairs or len(pairs) != len(probs):
            raise ValueError(f"need as many probabilities as patterns, got {len(pairs)} and {len(probs)}")
        pairs = tuple(check_pair(i, pair) for i, pair in enumerate(pairs))
        probs = tuple(check_number(f"probs[{i}]", q) for i, q in enumerate(probs))
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"patterns must be distinct, got {pairs}")
        if any(not q >= 0.0 for q in probs) or abs(sum(probs) - 1.0) > 1e-9:
            raise ValueError(f"probabilities must be >= 0 and sum to 1, got {probs}")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "probs", probs)
        if self.n is not None:
            object.__setattr__(self, "n", check_int("n", self.n, 1))
        if self.target_p is not None:
            object.__setattr__(self, "target_p", check_rate(self.target_p, "target_p"))
        if self.distance is not None:
            object.__setattr__(self, "distance", check_number("distance", self.distance, 0.0))
        history = check_sequence("loss_history", self.loss_history)
        history = tuple(check_number(f"loss_history[{i}]", v) for i, v in enumerate(history))
        object.__setattr__(self, "loss_history", history)

    @property
    def expected_rate(self) -> float:
        """``sum q(dp, keep) * (1 - keep/dp)``: each unit's drop probability (docs/method.md §4a)."""
        return math.fsum(q * (1.0 - keep / dp) for (dp, keep), q in zip(self.pairs, self.probs))

    @property
    def expected_keep(self) -> float:
        """Expected kept fraction ``1 - expected_rate``."""
        return math.fsum(q * keep / dp for (dp, keep), q in zip(self.pairs, self.probs))

    def make(self, dp: int, offset: int, keep: int) -> RowPattern | TilePattern:
        """The pattern of this distribution's kind for given integers."""
        if self.kind == "row":
            return RowPattern(dp, offset, keep)
        return TilePattern(dp, offset, self.tile, keep)

    @functools.cached_property
    def _table(self) -> tuple[tuple[RowPattern | TilePattern, ...], tuple[float, ...]]:
        """Every pattern with its offset that has nonzero probability (``enumerate``'s order), built once,
        and the cumulative probabilities: a draw is one uniform number and a bisection, no new object."""
        patterns, probs = zip(*self.enumerate())
        return patterns, tuple(itertools.accumulate(probs))

    def pattern_at(self, u: float) -> RowPattern | TilePattern:
        """The pattern a uniform number ``u`` in [0, 1) selects: ``(dp, keep)`` with probability q and each
        offset with probability q / dp, the law of ``enumerate`` (a uniform ``u`` gives a draw of the law).
        ValueError unless ``u`` is a number in [0, 1)."""
        u = check_rate(u, "u")
        patterns, cumulative = self._table
        return patterns[min(bisect.bisect_right(cumulative, u * cumulative[-1]), len(patterns) - 1)]

    def sample(self, generator: torch.Generator | None = None) -> RowPattern | TilePattern:
        """Draw ``(dp, keep) ~ q`` and ``offset ~ Uniform{0..dp-1}`` (one uniform number of the CPU generator)."""
        return self.pattern_at(float(torch.rand(1, dtype=torch.float64, generator=check_generator(generator))))

    def sample_groups(
        self, groups: int, generator: torch.Generator | None = None
    ) -> tuple[RowPattern | TilePattern, ...]:
        """One pattern per batch group (grouped complementary patterns, docs/method.md §9): ``(dp, keep)`` is
        drawn once, and the groups' offsets run through a uniformly random permutation of 0..dp-1,
        followed by fresh permutations when ``groups > dp``. Group 0 gets exactly the draw of
        ``sample`` (so one group is the paper's method, bit for bit), and every group's offset is
        uniform, so each unit keeps its drop probability and the layer stays unbiased."""
        return self.complete_groups(self.sample(generator), check_int("groups", groups, 1, MAX_GROUPS), generator)

    def complete_groups(
        self,
        first: RowPattern | TilePattern,
        groups: int,
        generator: torch.Generator | None = None,
        uniforms: Sequence[float] | None = None,
    ) -> tuple[RowPattern | TilePattern, ...]:
        """``first`` (group 0's draw) and the other groups' patterns: the rest of a uniformly random
        permutation of the offsets 0..dp-1, then fresh permutations (see ``sample_groups``). Each
        permutation is the argsort of i.i.d. uniforms: ``uniforms`` (``permutation_uniforms(dp, groups)`` of
        them) when given (``sample_sites``, which checked its draws), else one call of the generator, after
        checking ``first`` and ``groups``."""
        if uniforms is None:
            groups = check_int("groups", groups, 1, MAX_GROUPS)
            if self._by_key.get((first.dp, first.keep, first.offset)) != first:
                raise ValueError(f"first must be a pattern this law draws, got {first!r}")
        if groups == 1:
            return (first,)
        dp = first.dp
        if uniforms is None:
            count = permutation_uniforms(dp, groups)
            uniforms = torch.rand(count, dtype=torch.float64, generator=check_generator(generator)).tolist()
        rest = [o for o in range(dp) if o != first.offset]  # the rest of the first permutation
        offsets = [first.offset] + [rest[i] for i in _argsort(uniforms[: dp - 1])]
        for start in range(dp - 1, len(uniforms), dp):  # the fresh permutations
            offsets += _argsort(uniforms[start : start + dp])
        return tuple(self._same_class(first, o) for o in offsets[:groups])

    def _same_class(self, first: RowPattern | TilePattern, offset: int) -> RowPattern | TilePattern:
        """``first``'s (dp, keep) with another offset, from the table (no new object, no checks)."""
        return self._by_key[first.dp, first.keep, offset]

    @functools.cached_property
    def _by_key(self) -> dict[tuple[int, int, int], RowPattern | TilePattern]:
        return {(q.dp, q.keep, q.offset): q for q in self._table[0]}

    def enumerate(self) -> Iterator[tuple[RowPattern | TilePattern, float]]:
        """Yield ``(pattern, probability)`` for every pattern and offset with nonzero probability."""
        for (dp, keep), q in zip(self.pairs, self.probs):
            if q > 0.0:
                for offset in range(dp):
                    yield self.make(dp, offset, keep), q / dp

    def drop_probability(self, n: int | tuple[int, int]) -> torch.Tensor:
        """Exact drop probability of every unit (row: Float64[n]) or weight (tile: Float64[n_out, n_in]),
        by enumerating every pattern and offset."""
        if self.kind == "row":
            if isinstance(n, tuple):
                raise ValueError(f"a row distribution takes an int unit count, got {n!r}")
            n = check_int("n", n, 1)
        elif not (isinstance(n, tuple) and len(n) == 2):
            raise ValueError(f"a tile distribution takes a weight shape (n_out, n_in), got {n!r}")
        else:
            n = (check_int("n_out", n[0], 1), check_int("n_in", n[1], 1))
        total = torch.zeros(n if isinstance(n, int) else tuple(n), dtype=torch.float64)
        for pattern, weight in self.enumerate():
            mask = pattern.keep_mask(n) if self.kind == "row" else pattern.keep_mask(*n)
            total += weight * (~mask).double()
        return total

    def to_dict(self) -> dict:
        """JSON-safe dict; ``from_dict`` inverts it."""
        return {
            "pairs": [list(pair) for pair in self.pairs],
            "probs": list(self.probs),
            "kind": self.kind,
            "tile": self.tile,
            "n": self.n,
            "target_p": self.target_p,
            "distance": self.distance,
            "loss_history": list(self.loss_history),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PatternDistribution:
        """Rebuild a distribution written by ``to_dict``."""
        if not isinstance(data, dict) or "pairs" not in data or "probs" not in data:
            raise ValueError(f"not a PatternDistribution dict: {data!r}")
        return cls(
            pairs=data["pairs"],
            probs=data["probs"],
            kind=data.get("kind", "row"),
            tile=data.get("tile", 32),
            n=data.get("n"),
            target_p=data.get("target_p"),
            distance=data.get("distance"),
            loss_history=data.get("loss_history", ()),
        )


def permutation_uniforms(dp: int, groups: int) -> int:
    """How many uniforms ``complete_groups`` turns into the offsets of ``groups`` groups: dp - 1 for the rest
    of the first permutation, dp for each fresh one (none for one group)."""
    if groups == 1:
        return 0
    return dp - 1 + dp * -(-max(groups - dp, 0) // dp)


def _argsort(values: Sequence[float]) -> list[int]:
    """The permutation that sorts ``values``: of i.i.d. uniforms, a uniformly random permutation."""
    return sorted(range(len(values)), key=values.__getitem__)


def sample_sites(
    distributions: Sequence[PatternDistribution], groups: int = 1, generator: torch.Generator | None = None
) -> list:
    """One training step's draws for sites with these laws, in one call of the generator (a second one for
    every site's group offsets with ``groups > 1``): each site's pattern, or its tuple of one pattern per
    group. Site ``i``'s (group 0) pattern is what ``distributions[i].sample`` would draw from the i-th
    uniform."""
    uniforms = torch.rand(len(distributions), dtype=torch.float64, generator=generator).tolist()
    firsts = [d.pattern_at(u) for d, u in zip(distributions, uniforms)]
    if groups == 1:
        return firsts
    counts = [permutation_uniforms(first.dp, groups) for first in firsts]
    pool = torch.rand(sum(counts), dtype=torch.float64, generator=generator).tolist()
    starts = [0, *itertools.accumulate(counts)]
    return [
        d.complete_groups(first, groups, uniforms=pool[start : start + count])
        for d, first, start, count in zip(distributions, firsts, starts, counts)
    ]


def check_sequence(name: str, value: object) -> tuple:
    """``value`` as a tuple if it is a sequence (not a string), else ValueError naming it."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a sequence, got {value!r}")
    return tuple(value)


def check_pair(i: int, pair: object) -> tuple[int, int]:
    """Pattern ``i`` as ``(dp, keep)`` ints with ``1 <= keep <= dp <= MAX_LAW_PERIOD``, else ValueError naming it."""
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable) or len(pair := tuple(pair)) != 2:
        raise ValueError(f"pairs[{i}] must be a (dp, keep) pair of ints, got {pair!r}")
    dp = check_int(f"pairs[{i}] dp", pair[0], 1)
    if dp > MAX_LAW_PERIOD:
        raise ValueError(
            f"pairs[{i}] dp must be at most MAX_LAW_PERIOD = {MAX_LAW_PERIOD} (a draw tabulates every offset), got {dp}"
        )
    return dp, check_int(f"pairs[{i}] keep", pair[1], 1, dp)


def bracket_distribution(p: float, kind: str = "row", tile: int = 32) -> PatternDistribution:
    """Closed-form default: mix the two paper-family patterns (keep = 1) whose rates
    ``1 - 1/d`` bracket ``p`` so that the expected rate is exactly ``p``. Periods stop at
    ``MAX_PERIOD``, so ``p`` must be at most ``1 - 1/MAX_PERIOD``."""
    p = check_rate(p)
    if p > MAX_RATE:
        raise ValueError(
            f"p={p} is above {MAX_RATE:.7g} = 1 - 1/{MAX_PERIOD}, the highest rate reached with periods dp <= "
            f"MAX_PERIOD={MAX_PERIOD}"
        )
    low = math.floor(1.0 / (1.0 - p) + 1e-12)  # largest d with 1 - 1/d <= p
    rate_low, rate_high = 1.0 - 1.0 / low, 1.0 - 1.0 / (low + 1)
    w_high = (p - rate_low) / (rate_high - rate_low)
    if w_high <= 1e-12:
        return PatternDistribution(((low, 1),), (1.0,), kind=kind, tile=tile, target_p=p)
    return PatternDistribution(((low, 1), (low + 1, 1)), (1.0 - w_high, w_high), kind=kind, tile=tile, target_p=p)
