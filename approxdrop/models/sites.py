"""What every model with dropout sites shares: the pattern law of each site, this step's draws,
and the gathered linear map of batch-shared random units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..distribution import PatternDistribution
from ..search import distribution_for
from .methods import SHARED_UNITS, TILE, Method


def shared_keep_indices(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Long[k]: units kept by one batch-shared Bernoulli(p) draw over ``n`` units."""
    return (torch.rand(n, generator=generator) >= p).nonzero().flatten()


def gathered_linear(x, weight, bias, in_index, out_index, in_scale: float):
    """``in_scale * x @ W[out_index][:, in_index].T + b[out_index]`` with gathers (autograd
    scatters the gradient back). ``None`` for an index means every unit of that side."""
    if out_index is not None:
        weight = weight.index_select(0, out_index)
        bias = None if bias is None else bias.index_select(0, out_index)
    if in_index is not None:
        weight = weight.index_select(1, in_index)
    y = nn.functional.linear(x, weight)
    if in_scale != 1.0:
        y = y * in_scale
    return y if bias is None else y + bias


def site_distributions(
    m: Method,
    p: float,
    law_sizes: Sequence[int],
    given: Sequence[PatternDistribution] | None,
    tile: int = 32,
    family: str | None = None,
) -> list[PatternDistribution] | None:
    """One pattern law per site for a pattern method (None for the others): ``given`` after checks,
    else the searched default of each site. ``law_sizes`` is what each site's law is built for
    (unit count for rows, tile count of the reading weight for tiles); ``family`` overrides the
    method's own."""
    kind = m.pattern_kind
    if kind is None:
        if given is not None:
            raise ValueError(f"distributions are for pattern methods, not {m.name!r}")
        return None
    if given is None:
        family = family or m.family
        return [distribution_for(p, n, kind=kind, tile=tile, family=family) for n in law_sizes]
    given = list(given)
    if len(given) != len(law_sizes):
        raise ValueError(f"need one distribution per dropout site ({len(law_sizes)}), got {len(given)}")
    for d in given:
        if not isinstance(d, PatternDistribution) or d.kind != kind:
            raise ValueError(f"method {m.name!r} needs {kind} PatternDistributions, got {d!r}")
        if m.drops == TILE and d.tile != tile:
            raise ValueError(f"distribution tile {d.tile} differs from the model's tile {tile}")
    return given


def draw_sites(
    m: Method,
    p: float,
    widths: Sequence[int],
    distributions: Sequence[PatternDistribution] | None,
    generator: torch.Generator | None,
) -> list:
    """This step's draw for every site: a pattern (pattern methods), a Long index tensor of kept
    units (batch-shared random units), or None (nothing is drawn)."""
    if distributions is not None:
        return [d.sample(generator) for d in distributions]
    if m.drops == SHARED_UNITS:
        return [shared_keep_indices(w, p, generator) for w in widths]
    return [None] * len(widths)
