"""PatternDistribution: a probability law over (dp, keep) with a uniform offset (METHOD.md §3-4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._env import check_int, check_rate
from .patterns import RowPattern, TilePattern

KINDS = ("row", "tile")


@dataclass(frozen=True)
class PatternDistribution:
    """Patterns ``(dp, keep)`` with probabilities; the offset is drawn uniformly in [0, dp).

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
        check_int("tile", self.tile, 1)
        pairs = tuple((int(dp), int(keep)) for dp, keep in self.pairs)
        probs = tuple(float(q) for q in self.probs)
        if not pairs or len(pairs) != len(probs):
            raise ValueError(f"need as many probabilities as patterns, got {len(pairs)} and {len(probs)}")
        for dp, keep in pairs:
            RowPattern(dp, 0, keep)  # validates dp >= 1 and 1 <= keep <= dp
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"patterns must be distinct, got {pairs}")
        if any(not q >= 0.0 for q in probs) or abs(sum(probs) - 1.0) > 1e-9:
            raise ValueError(f"probabilities must be >= 0 and sum to 1, got {probs}")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "loss_history", tuple(float(v) for v in self.loss_history))

    @property
    def expected_rate(self) -> float:
        """``sum q(dp, keep) * (1 - keep/dp)``: each unit's drop probability (METHOD.md §4a)."""
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

    def sample(self, generator: torch.Generator | None = None) -> RowPattern | TilePattern:
        """Draw ``(dp, keep) ~ q``, then ``offset ~ Uniform{0..dp-1}``, on the CPU generator."""
        probs = torch.tensor(self.probs, dtype=torch.float64)
        index = int(torch.multinomial(probs, 1, generator=generator))
        dp, keep = self.pairs[index]
        offset = int(torch.randint(dp, (1,), generator=generator))
        return self.make(dp, offset, keep)

    def enumerate(self):
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
            pairs=tuple(tuple(pair) for pair in data["pairs"]),
            probs=tuple(data["probs"]),
            kind=data.get("kind", "row"),
            tile=data.get("tile", 32),
            n=data.get("n"),
            target_p=data.get("target_p"),
            distance=data.get("distance"),
            loss_history=tuple(data.get("loss_history", ())),
        )


def bracket_distribution(p: float, kind: str = "row", tile: int = 32) -> PatternDistribution:
    """Closed-form default: mix the two paper-family patterns (keep = 1) whose rates
    ``1 - 1/d`` bracket ``p`` so that the expected rate is exactly ``p``."""
    p = check_rate(p)
    low = math.floor(1.0 / (1.0 - p) + 1e-12)  # largest d with 1 - 1/d <= p
    rate_low, rate_high = 1.0 - 1.0 / low, 1.0 - 1.0 / (low + 1)
    w_high = (p - rate_low) / (rate_high - rate_low)
    if w_high <= 1e-12:
        return PatternDistribution(((low, 1),), (1.0,), kind=kind, tile=tile, target_p=p)
    return PatternDistribution(((low, 1), (low + 1, 1)), (1.0 - w_high, w_high), kind=kind, tile=tile, target_p=p)
