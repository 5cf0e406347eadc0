"""ApproxDropoutMLP: Linear layers with an activation between them and a dropout site after each
hidden activation, where the dropout is a row pattern, a tile pattern, or a baseline.

Methods come from the table ``models.methods.DROPOUT_METHODS`` (one pattern or mask per dropout
site per training step; eval runs the full network):
- row patterns (``row``, ``row-extended``): a RowPattern per site; every layer computes only its
  kept outputs from its kept inputs (``approxdrop::row_linear``), so hidden-to-hidden GEMMs shrink
  on both sides. Where the GEMMs are too small to pay for that (``executor="auto"``), the dense GEMMs
  run with the pattern's scaled keep mask instead: the same numbers, fewer host operations.
- tile patterns (``tile``): DropConnect on T x T tiles of the weight that reads each site (the next
  layer's weight), so the site's randomness enters where dropout's does
  (``approxdrop::tile_linear``). This placement is this project's choice (docs/method.md §8).
  ``tile-g4`` gives 4 batch groups complementary tile offsets (one tile op per distinct pattern, on
  its groups' samples); measured in benchmarks/tile_groups.md.
- per element (``bernoulli``): ``nn.Dropout``, full-size GEMMs.
- batch-shared random units (``shared``): batch-shared Bernoulli(p) over units, kept units gathered.
- nothing (``none``): no dropout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._env import check_generator, check_int, check_rate
from ..distribution import MAX_GROUPS, PatternDistribution
from ..ops import (
    FULL,
    group_bounds,
    grouped_row_pattern_linear_compact,
    grouped_tile_pattern_linear,
    row_pattern_linear,
    static_grouped_linear,
    static_site,
    tile_pattern_linear,
)
from ..ops.static import static_groups
from ..patterns import RowPattern, TilePattern
from .executor_choice import Probe, choose_executor
from .methods import ELEMENT, NOTHING, ROW, TILE, get_method, methods_for
from .parts import must_call, warn_calls_parts
from .sites import (
    DropoutRate,
    activate,
    check_elementwise,
    check_executor,
    draw_sites,
    gathered_linear,
    group_mask,
    run_eagerly,
    setup_static,
    site_distributions,
    static_sides,
    step_draws,
    store_static,
    stored_draws,
)

METHODS = methods_for("mlp")
# The default: row patterns with 4 batch groups. In the accuracy study (benchmarks/study: 3 seeds, a
# learning rate per method) it is within 0.15 points of nn.Dropout at p = 0.3 / 0.5 / 0.7, where the
# paper's one pattern per batch ("row") trails by 1.3 points; it still takes 0.5-0.8x of dropout's CPU step.
DEFAULT_METHOD = "row-g4"


class ApproxDropoutMLP(DropoutRate, nn.Module):
    """MLP ``sizes[0] -> ... -> sizes[-1]`` with dropout rate ``p`` after each hidden activation.

    Args:
        sizes: layer widths, at least two.
        p: dropout rate in [0, 1).
        method: a name from ``METHODS`` (the MLP rows of the methods table). Default ``row-g4``: row
            patterns with 4 batch groups of complementary offsets, chosen from the accuracy study
            (README); ``row`` is the paper's method, one pattern for the whole batch.
        tile: tile size T for ``method="tile"``.
        input_dropout: also put a dropout site on the input.
        activation: module applied after every hidden Linear (default ReLU). It must act on each
            unit alone (``sites.is_elementwise``: ReLU, GELU, SiLU, Tanh, ... or a module with
            ``elementwise = True``), for every method, so that one model is the same network under
            each: a row pattern computes only the kept units, and nn.Softmax would see only those.
        distributions: one PatternDistribution per site (row / tile); by default the searched law of
            each site, ``distribution_for(p, n, kind, family=...)`` in the method's family, n the site's
            width (row) or the tile count of the weight reading it (tile).
        groups: batch groups with complementary offsets (row or tile patterns; docs/method.md §9): the
            batch (second-to-last axis of x) splits as ``torch.tensor_split`` does and each group
            gets its own offset of the step's ``(dp, keep)``. Default: the method's (4 for ``row-g4``
            and ``tile-g4``, 1 for ``row``). Grouped patterns run eagerly under torch.compile (a
            graph break) unless ``static_shapes``.
        executor: how a layer with row patterns runs in eager training (``sites.GROUPED_EXECUTORS``):
            "compact" (one GEMM per distinct offset pair, on the kept units only), "masked" (the dense GEMM,
            each group's dropped units zeroed by a scaled mask: the same numbers, fewer host operations) or
            "auto" (default: on a CPU, "compact" only where it measured faster on this project's CPU, from
            ``sites.MASKED_BELOW_MACS`` multiply-adds in the largest layer with groups,
            ``sites.MASKED_BELOW_MACS_ONE_GROUP`` with one, and ``sites.MIN_GROUP_ROWS`` rows per group,
            ``sites.MIN_ROWS_ONE_GROUP`` with one; on CUDA, as "measured") or "measured" (both timed once
            per shape on this device, on the widest site and its two linears: ``models.executor_choice``).
            ``executor_for(x)`` says which. Under torch.compile ``row`` always runs compact.
        static_shapes: (row patterns, any groups) run each layer at the shape its site's ``(dp, keep)``
            sets, whatever the offsets (``ops.static``): offsets are read from the ``static_offsets`` buffer,
            which every draw fills, so a graph compiled or captured after ``draw_patterns`` serves every
            offset of its ``(dp, keep)`` classes (``pattern_key`` keys by them). Same outputs as the
            compact path, at ``keep * ceil(n / dp)`` slots per site (with groups, one GEMM per group and
            layer). Compiled or graphed under DistributedDataParallel, pass ``forward_sync_buffers=False``
            (``broadcast_buffers=False`` before torch 2.13; each rank reads its own offsets).
        generator: CPU generator for pattern and mask draws (default: torch's global RNG);
            ``bernoulli`` drops per element from the global RNG, as nn.Dropout does. Its state is not in
            ``state_dict()``: checkpoint ``generator.get_state()`` to resume the same pattern stream.

    After a training forward, ``last_patterns`` holds what each site drew (a pattern, a tuple of
    one pattern per group with ``groups > 1``, a Long index tensor of kept units for ``shared``,
    or None where nothing was drawn).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        p: float,
        method: str = DEFAULT_METHOD,
        *,
        tile: int = 32,
        input_dropout: bool = False,
        activation: nn.Module | None = None,
        distributions: Sequence[PatternDistribution] | None = None,
        groups: int | None = None,
        executor: str = "auto",
        static_shapes: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = [check_int(f"sizes[{i}]", s, 1) for i, s in enumerate(sizes)]
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output width, got {sizes}")
        self.spec = get_method(method, "mlp")
        self.groups = self.spec.groups if groups is None else check_int("groups", groups, 1, MAX_GROUPS)
        if self.groups > 1 and self.spec.drops not in (ROW, TILE):
            raise ValueError(
                f"groups={self.groups}: batch groups are for row- and tile-pattern methods, not {method!r}"
            )
        self.sizes, self.method, self.tile = sizes, method, check_int("tile", tile, 1)
        rate = check_rate(p)
        self.input_dropout = bool(input_dropout)
        self.executor = check_executor(executor)
        self.generator = check_generator(generator)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = check_elementwise(activation) if activation is not None else nn.ReLU()
        self.dropout = nn.Dropout(rate)  # holds p (sites.DropoutRate)
        # site k sits on the input of linear k; site 0 exists only with input_dropout
        self.site_widths = [sizes[i] if (i > 0 or self.input_dropout) else None for i in range(len(self.linears))]
        self.init_laws(distributions)
        self.last_patterns: list = [None] * len(self.linears)
        setup_static(self, static_shapes, sum(w is not None for w in self.site_widths))

    def _site_laws(self, p: float, given: Sequence[PatternDistribution] | None) -> list[PatternDistribution] | None:
        return site_distributions(self.spec, p, self._law_sizes(), given, self.tile)

    def _law_sizes(self) -> list[int]:
        """What each site's law is built for: its unit count (row), or the tile count of the weight
        that reads it (tile)."""
        sizes = []
        for i, width in enumerate(self.site_widths):
            if width is None:
                continue
            n_out, n_in = self.linears[i].weight.shape
            sizes.append(-(-n_out // self.tile) * -(-n_in // self.tile) if self.spec.drops == TILE else width)
        return sizes

    def draw(self) -> list:
        """Draw this step's pattern (or shared mask) for every site; None where there is no site."""
        widths = [w for w in self.site_widths if w is not None]
        drawn = draw_sites(self.spec, self.p, widths, self.site_laws(), self.generator, self.groups)
        store_static(self, drawn)
        draws = iter(drawn)
        return [next(draws) if w is not None else None for w in self.site_widths]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[*, sizes[0]]) -> Tensor[*, sizes[-1]]."""
        if x.dim() == 0 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"input must have last dimension {self.sizes[0]}, got shape {tuple(x.shape)}")
        self.last_patterns = [None] * len(self.linears)
        drops = self.spec.drops
        if not self.training or self.p == 0.0 or drops == NOTHING:
            return self._dense(x, dropout=False)
        if drops == ELEMENT:
            return self._dense(x, dropout=True)
        if drops in (ROW, TILE) and self.groups > 1 and not self.static_shapes:
            return self._grouped_step(x)  # eager: Dynamo would guard on the groups' pattern objects
        draws = step_draws(self)  # drawn now, or ahead by draw_patterns (compiled training)
        self.last_patterns = stored_draws(draws)
        if drops != ROW and (called := self._called_part(drops != TILE)) is not None:  # they read every weight
            return self._calling_parts(x, draws, *called)
        if drops == ROW and self.static_shapes:
            return self._static(x)
        if drops == ROW:
            return self._row(x, draws)
        if drops == TILE:
            return self._tile(x, draws)
        return self._shared(x, draws)

    def _called_part(self, activation: bool = True) -> tuple[str, str] | None:
        """The name of the first Linear to call rather than read, and why (``parts.must_call``); with
        ``activation``, also the activation if it was patched or hooked since the model was built (on kept
        units only it would see other units than it was written for); or None."""
        for i, linear in enumerate(self.linears):
            if (why := must_call(linear)) is not None:
                return f"linears[{i}]", why
        act = self.activation
        if activation and isinstance(act, nn.Module) and (why := must_call(act, type(act))) is not None:
            return "activation", why
        return None

    def _calling_parts(self, x, draws: list, name: str, why: str):
        """For a Linear wrapped, patched or hooked, or the activation patched or hooked, since the model was built
        (``_called_part``, checked on the paths that read the weights or gather units, not the masked one, which
        calls every part on every unit): the masked executor for row
        patterns (with a warning); a RuntimeError for tile and shared patterns, whose pattern is on the weight."""
        if self.spec.drops != ROW:
            raise RuntimeError(
                f"ApproxDropoutMLP: its {name} was wrapped, patched or hooked since the model was built, and a "
                f"{self.method!r} step reads the weights without calling the Linears, so it would skip that: remove "
                "the wrapper or hook, or train with a row-pattern method"
            )
        warn_calls_parts(self, name, why)
        return self._grouped_masked(x, draws if self.groups > 1 else [None if q is None else (q,) for q in draws])

    def _stack(self, x, layer):
        """Apply ``layer(i, linear, x)`` for every layer, the activation between them."""
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            x = layer(i, linear, x)
            if i < last:
                x = activate(self.activation, x)
        return x

    def _dense(self, x, dropout: bool):
        def layer(i, linear, x):
            return linear(self.dropout(x) if dropout and self.site_widths[i] is not None else x)

        return self._stack(x, layer)

    def _row(self, x, patterns: list[RowPattern | None]):
        if not torch.compiler.is_compiling() and self.executor_for(x) == "masked":  # GEMMs too small to shrink
            return self._grouped_masked(x, [None if q is None else (q,) for q in patterns])
        if (called := self._called_part()) is not None:
            return self._calling_parts(x, patterns, *called)
        # x stays compact: [*, kept units of the current site]
        outs = patterns[1:] + [None]
        if patterns[0] is not None:
            x = x[..., patterns[0].selector(x.shape[-1], x.device)]  # [*, k_0]

        def layer(i, linear, x):
            ins, out = patterns[i] or FULL, outs[i] or FULL
            return row_pattern_linear(x, linear.weight, linear.bias, ins, out, check=False)

        return self._stack(x, layer)

    def _static(self, x):
        if (called := self._called_part()) is not None:
            return self._calling_parts(x, self.last_patterns, *called)
        # each group's rows in slots: xs[g] is [*, B_g, keep * ceil(n / dp) of the current site], shapes free
        # of the offsets (groups split the batch axis, the second-to-last)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x  # [*, B, n]
        xs = static_groups(x, self.groups, -2)  # [*, B_g, n]: the groups with samples
        # per site: one StaticSide per group with samples, or None
        sides = [None if s is None else s[: len(xs)] for s in static_sides(self, self.site_widths)]
        whole = (None,) * len(xs)
        ins = [s or whole for s in sides]
        outs = ins[1:] + [whole]
        if sides[0] is not None:
            xs = [static_site(t, side) for t, side in zip(xs, sides[0])]  # [*, B_g, K_0]
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            xs = static_grouped_linear(xs, linear.weight, linear.bias, ins[i], outs[i])
            if i < last:
                xs = [activate(self.activation, t) for t in xs]
        y = xs[0] if len(xs) == 1 else torch.cat(xs, -2)  # [*, B, sizes[-1]]
        return y.squeeze(0) if single else y

    def executor_for(self, x: torch.Tensor) -> str:
        """How an eager training forward on x runs row patterns: "compact" or "masked" (``executor``), or
        "static" for a ``static_shapes`` model, whatever ``executor``."""
        if self.static_shapes:
            return "static"
        largest = max(linear.in_features * linear.out_features for linear in self.linears)
        return choose_executor(
            self.executor, x.device, x.dtype, math.prod(x.shape[:-1]), self.groups, largest, self.executor_probe
        )

    def executor_probe(self) -> Probe:
        """The widest site with the linears around it (``executor_choice.Probe``)."""
        laws = iter(self.site_laws())
        probes = [
            Probe(self.sizes[i - 1] if i > 0 else None, width, self.sizes[i + 1], next(laws), self.p)
            for i, width in enumerate(self.site_widths)
            if width is not None
        ]
        return max(probes, key=lambda q: ((q.n_in or 0) + q.n_out) * q.n_site)

    @run_eagerly
    def _grouped_step(self, x):
        """Row or tile patterns with groups: the draws taken (``step_draws``) and run, all eagerly under
        torch.compile, so Dynamo never reads the patterns (groups of one offset share a pattern object, and a guard
        on which groups share one recompiled the forward at every new sharing until the recompile limit)."""
        draws = step_draws(self)
        self.last_patterns = stored_draws(draws)
        if self.spec.drops == ROW:
            return self._grouped(x, draws)
        if (called := self._called_part(False)) is not None:  # a tile layer reads every weight
            return self._calling_parts(x, draws, *called)
        return self._grouped_tile(x, draws)

    @run_eagerly
    def _grouped(self, x, patterns: list[tuple[RowPattern, ...] | None]):
        if self.executor_for(x) == "masked":
            return self._grouped_masked(x, patterns)
        if (called := self._called_part()) is not None:
            return self._calling_parts(x, patterns, *called)
        # activations stay compact per group: xs[g] is [*, B_g, kept units of group g at the current site]
        # (groups split the batch axis, the second-to-last, as torch.tensor_split does)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x  # [*, B, n]
        whole = (FULL,) * self.groups
        ins = [q or whole for q in patterns]
        outs = ins[1:] + [whole]
        xs = [
            x[..., start:stop, q.selector(x.shape[-1], x.device)]
            for (start, stop), q in zip(group_bounds(x.shape[-2], self.groups), ins[0])
        ]  # [*, B_g, k_0(g)]
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            xs = grouped_row_pattern_linear_compact(xs, linear.weight, linear.bias, ins[i], outs[i], check=False)
            if i < last:
                xs = [activate(self.activation, t) for t in xs]
        y = torch.cat(xs, -2)  # [*, B, sizes[-1]]
        return y.squeeze(0) if single else y

    def _grouped_masked(self, x, patterns: list[tuple[RowPattern, ...] | None]):
        # every GEMM dense; each site's input multiplied by its groups' scaled keep masks, Tensor[B, width]
        batch = 1 if x.dim() == 1 else x.shape[-2]

        def layer(i, linear, x):
            if patterns[i] is None:
                return linear(x)
            mask = group_mask(patterns[i], batch, x.shape[-1], x.dtype, x.device)  # [B, n]
            return linear(x * (mask[0] if x.dim() == 1 else mask))

        return self._stack(x, layer)

    def _tile(self, x, patterns: list[TilePattern | None]):
        def layer(i, linear, x):
            if patterns[i] is None:
                return linear(x)
            return tile_pattern_linear(x, linear.weight, linear.bias, patterns[i], check=False)

        return self._stack(x, layer)

    @run_eagerly
    def _grouped_tile(self, x, patterns: list[tuple[TilePattern, ...] | None]):
        # groups split the batch axis (the second-to-last) as torch.tensor_split does
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x  # [*, B, n]

        def layer(i, linear, x):
            if patterns[i] is None:
                return linear(x)
            return grouped_tile_pattern_linear(x, linear.weight, linear.bias, patterns[i], check=False)

        y = self._stack(x, layer)
        return y.squeeze(0) if single else y

    def _shared(self, x, kept: list[torch.Tensor | None]):
        # x stays compact: [*, kept units of the current site]
        kept = [None if k is None else k.to(x.device) for k in kept]
        outs = kept[1:] + [None]
        scale = 1.0 / (1.0 - self.p)
        if kept[0] is not None:
            x = x.index_select(-1, kept[0])  # [*, k_0]

        def layer(i, linear, x):
            in_scale = 1.0 if kept[i] is None else scale
            return gathered_linear(x, linear.weight, linear.bias, kept[i], outs[i], in_scale)

        return self._stack(x, layer)

    def extra_repr(self) -> str:
        return (
            f"sizes={self.sizes}, p={self.p}, method={self.method!r}"
            + (f", tile={self.tile}" if self.spec.drops == TILE else "")
            + (", static_shapes=True" if self.static_shapes else "")
        )
