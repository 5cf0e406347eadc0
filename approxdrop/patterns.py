"""Row and tile dropout patterns (docs/method.md §3): a few integers that say which units or tiles stay.

A ``RowPattern(dp, offset, keep)`` keeps unit ``i`` iff ``(i - offset) mod dp < keep``.
A ``TilePattern(dp, offset, tile, keep)`` keeps tile ``(a, b)`` of a weight's T x T tile grid iff
``(b - a - offset) mod dp < keep``. Kept values are scaled by ``dp / keep`` (inverted dropout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._env import check_int, tensor_cache


def periodic_count(n: int, dp: int, offset: int, keep: int) -> int:
    """Number of ``i`` in ``[0, n)`` with ``(i - offset) mod dp < keep``, in closed form (no loop over keep):
    ``keep`` per whole period, plus the kept residues below ``n mod dp``. ``n`` and ``offset`` may be SymInts
    (fake tensors under torch.compile): no branch on them."""
    rem = n % dp

    def below_rem(x):  # i in [0, x), x < 2 dp, with i mod dp < rem
        return torch.sym_min(x, rem) + torch.sym_max(0, torch.sym_min(x - dp, rem))

    return (n // dp) * keep + below_rem(offset + keep) - below_rem(offset)


def periodic_mask(n: int, dp: int, offset: int, keep: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool[n]: ``(i - offset) mod dp < keep`` for ``i`` in ``[0, n)``."""
    i = torch.arange(n, device=device)
    return torch.remainder(i - offset, dp) < keep


def _kept_index(n: int, dp: int, offset: int, keep: int, device: torch.device | str | None) -> torch.Tensor:
    """Long[k]: the kept units of a pattern, with a length known from the integers (``periodic_count``), not
    nonzero's data-dependent one, which a compiled graph cannot guard on, and no values read (a meta device
    works): the kept residues of each period in increasing order (the ``wrapped`` ones past dp, ``0 .. wrapped -
    1``, then ``offset ..``; no sort, offset may be symbolic), cut at the kept count."""
    # [keep]; past the first n residues none is a unit (only dp > n leaves keep > n, a single period)
    t = torch.arange(min(keep, n) if isinstance(n, int) else keep, device=device)
    wrapped = torch.sym_max(0, offset + keep - dp)
    residues = torch.where(t < wrapped, t, t + (offset - wrapped))  # increasing
    starts = torch.arange(0, n, dp, device=device)  # [ceil(n / dp)]: only the last period may run past n
    return (starts[:, None] + residues).flatten()[: periodic_count(n, dp, offset, keep)]  # [k]


# made once per (n, pattern, device) and reused by every step that draws the pattern again (the ops'
# selectors; callers never write to it)
_cached_kept_index = tensor_cache(maxsize=4096)(_kept_index)


def periodic_selector(
    n: int, dp: int, offset: int, keep: int, device: torch.device | str | None = None
) -> slice | torch.Tensor:
    """``RowPattern(dp, offset, keep).selector(n, device)`` from checked integers, with no pattern object."""
    if keep == dp:
        return slice(0, n)
    if keep == 1:
        return slice(offset, n, dp)
    if torch.compiler.is_compiling():  # n may be symbolic, and a traced tensor must not be cached
        return _kept_index(n, dp, offset, keep, device)  # the same index, uncached
    return _cached_kept_index(n, dp, offset, keep, device)


def _set(pattern: object, name: str, value: int) -> int:
    """Store a checked field of a frozen pattern as a Python int (numpy integers are accepted)."""
    object.__setattr__(pattern, name, value)
    return value


INT64_MAX = 2**63 - 1  # the ops take the pattern's integers as int64 (SymInt), the kernels' hosts as long long


@dataclass(frozen=True)
class RowPattern:
    """Keep unit ``i`` of ``n`` iff ``(i - offset) mod dp < keep``; nominal rate ``1 - keep/dp``."""

    dp: int
    offset: int
    keep: int = 1

    def __post_init__(self) -> None:
        dp = _set(self, "dp", check_int("dp", self.dp, 1, INT64_MAX))
        _set(self, "offset", check_int("offset", self.offset, 0, dp - 1))
        _set(self, "keep", check_int("keep", self.keep, 1, dp))

    @property
    def rate(self) -> float:
        """Nominal drop rate ``1 - keep/dp``."""
        return 1.0 - self.keep / self.dp

    @property
    def scale(self) -> float:
        """Factor ``dp/keep`` applied to kept activations."""
        return self.dp / self.keep

    def kept_count(self, n: int) -> int:
        """How many of ``n`` units are kept (exact, also when dp does not divide n)."""
        return periodic_count(check_int("n", n, 0), self.dp, self.offset, self.keep)

    def keep_mask(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool[n]: True for kept units."""
        return periodic_mask(check_int("n", n, 0), self.dp, self.offset, self.keep, device)

    def kept_indices(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Long[k]: the kept units in increasing order."""
        return self.keep_mask(n, device).nonzero().flatten()

    def selector(self, n: int, device: torch.device | str | None = None) -> slice | torch.Tensor:
        """Kept units as a slice when they form one strided run (keep == 1 or keep == dp),
        else as a Long index tensor, cached per (n, pattern, device): read it, never write to it.
        A slice lets a weight's kept rows be a view (no copy)."""
        if not isinstance(n, torch.SymInt):  # a traced width (torch.compile) is checked by the tracer
            n = check_int("n", n, 0)
        return periodic_selector(n, self.dp, self.offset, self.keep, device)


@dataclass(frozen=True)
class TilePattern:
    """Keep T x T tile ``(a, b)`` of a weight iff ``(b - a - offset) mod dp < keep``.

    Every tile row and tile column keeps ``keep`` of every ``dp`` consecutive tiles (equal counts where
    ``dp`` divides the grid's side, else differing by at most ``min(keep, dp - keep)``). The last tile
    row or column may be partial when ``tile`` does not divide the weight's shape.
    """

    dp: int
    offset: int
    tile: int = 32
    keep: int = 1

    def __post_init__(self) -> None:
        dp = _set(self, "dp", check_int("dp", self.dp, 1, INT64_MAX))
        _set(self, "offset", check_int("offset", self.offset, 0, dp - 1))
        _set(self, "tile", check_int("tile", self.tile, 1, INT64_MAX))
        _set(self, "keep", check_int("keep", self.keep, 1, dp))

    @property
    def rate(self) -> float:
        """Nominal drop rate ``1 - keep/dp``."""
        return 1.0 - self.keep / self.dp

    @property
    def scale(self) -> float:
        """Factor ``dp/keep`` applied to kept weights."""
        return self.dp / self.keep

    def grid(self, n_out: int, n_in: int) -> tuple[int, int]:
        """Tile-grid shape ``(ceil(n_out/T), ceil(n_in/T))``."""
        check_int("n_out", n_out, 0)
        check_int("n_in", n_in, 0)
        return -(-n_out // self.tile), -(-n_in // self.tile)

    def tile_mask(self, n_out: int, n_in: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool[ceil(n_out/T), ceil(n_in/T)]: True for kept tiles."""
        rows, cols = self.grid(n_out, n_in)
        a = torch.arange(rows, device=device)[:, None]
        b = torch.arange(cols, device=device)[None, :]
        return torch.remainder(b - a - self.offset, self.dp) < self.keep

    def keep_mask(self, n_out: int, n_in: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool[n_out, n_in]: True for weights in kept tiles (each weight's tile row and column compared: no
        tile-padded grid, so memory stays O(n_out * n_in) whatever T is)."""
        check_int("n_out", n_out, 0)
        check_int("n_in", n_in, 0)
        a = torch.arange(n_out, device=device)[:, None] // self.tile  # [n_out, 1]: tile row
        b = torch.arange(n_in, device=device)[None, :] // self.tile  # [1, n_in]: tile column
        return torch.remainder(b - a - self.offset, self.dp) < self.keep

    def kept_count(self, n_out: int, n_in: int) -> int:
        """How many weights lie in kept tiles."""
        return int(self.keep_mask(n_out, n_in).sum())

    def row_classes(self) -> list[tuple[RowPattern, RowPattern]]:
        """The kept work as ``dp`` dense blocks, one per class ``r`` of tile rows ``a = r mod dp``.

        Class ``r`` holds the output rows of tile rows ``a = r (mod dp)`` and needs exactly the
        input columns of tile columns ``b`` with ``(b - r - offset) mod dp < keep``. Both sets
        are periodic on elements with period ``dp * T``, returned as (rows, cols) row patterns.
        """
        period = self.dp * self.tile
        return [
            (
                RowPattern(period, r * self.tile, self.tile),
                RowPattern(period, ((r + self.offset) % self.dp) * self.tile, self.keep * self.tile),
            )
            for r in range(self.dp)
        ]
