"""OutputRowDropout: ``dropout_p(linear(x))`` where the dropout drops whole output features with a row
pattern (one per batch, or one per batch group with complementary offsets), so the GEMM computes only the kept
output rows; they are scaled and put back into a zero ``[*, d_out]`` tensor. What
``convert(model, output_side=True)`` builds around a Linear (or HF's Conv1D, whose weight is ``[d_in, d_out]``)
followed by a Dropout. With ``static_shapes`` the kept features sit in the slots of ``ops.static`` (shapes set by
the draw's ``(dp, keep)``, not its offsets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._env import check_generator, check_rate
from ..distribution import PatternDistribution
from ..ops import FULL, grouped_row_pattern_linear_compact, row_pattern_linear, static_grouped_linear
from ..ops.static import static_groups
from ..patterns import RowPattern
from .executor_choice import COMPACT, MASKED
from .ffn import ffn_method
from .methods import ELEMENT, NOTHING
from .parts import must_call, warn_calls_parts
from .sites import (
    DropoutRate,
    ModeInDropout,
    draw_sites,
    grouped_executor,
    groups_of,
    run_eagerly,
    sample_groups,
    sample_mask,
    setup_static,
    site_distributions,
    static_sides,
    step_draws,
    store_static,
)

OUTPUT_EXECUTORS = ("auto", COMPACT, MASKED)


class OutputRowDropout(ModeInDropout, DropoutRate, nn.Module):
    """``dropout_p(linear(x))`` on x (Tensor[*, d_in]) -> Tensor[*, d_out], around an existing ``linear``.

    Dropout runs as its nn.Dropout (``dropout``, which holds ``p``) is set: in its training mode, as
    ApproxDropoutFFN's.

    Args:
        linear: an nn.Linear, or a module with ``weight`` [d_in, d_out] and ``bias`` [d_out] computing
            ``x @ weight + bias`` when ``transposed`` (HF Conv1D). Its Parameters are shared.
        p: dropout rate in [0, 1).
        method: a row-pattern method (``row``, ``row-extended``; ``row-g4`` and the other grouped ones: one
            pattern per batch group, complementary offsets), or ``bernoulli`` (nn.Dropout) or ``none``.
        groups: batch groups (row patterns only); default: the method's. As ApproxDropoutFFN's, the groups
            split the LEADING axis of x: the samples B of a transformer's [B, T, d_in].
        distributions, generator: as ApproxDropoutFFN's.
        transposed: the weight is ``[d_in, d_out]``.
        static_shapes: run at the shapes the draw's ``(dp, keep)`` sets, the offsets read from a buffer, as
            ApproxDropoutFFN's ``static_shapes``: one compiled or CUDA graph per pattern class.
        executor: how row patterns run in eager training: "compact" (only the kept output rows computed),
            "masked" (the dense GEMM times the scaled mask: fewer ops, so faster where the GEMM is small) or
            "auto" (default; ``executor_for`` says which it runs).

    After a training forward, ``last_pattern`` holds the step's draw: a RowPattern, a tuple of one per group with
    ``groups > 1``, or None.
    """

    def __init__(
        self,
        linear: nn.Module,
        p: float,
        method: str = "row",
        distributions: Sequence[PatternDistribution] | None = None,
        generator: torch.Generator | None = None,
        transposed: bool = False,
        static_shapes: bool = False,
        groups: int | None = None,
        executor: str = "auto",
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(check_rate(p))  # holds p (sites.DropoutRate)
        self.spec, self.groups = ffn_method(method, groups, type(self).__name__)
        self.method, self.transposed = method, transposed
        if executor not in OUTPUT_EXECUTORS:
            raise ValueError(f"executor must be one of {OUTPUT_EXECUTORS}, got {executor!r}")
        self.executor = executor
        self.linear = linear
        self.gemm_class = type(linear)  # a linear of another class later (a LoRA wrapper) is called (parts.must_call)
        self.d_out, self.d_in = linear.weight.shape[::-1] if transposed else linear.weight.shape  # ints
        self.init_laws(distributions)
        self.generator = check_generator(generator)
        self.last_pattern: RowPattern | tuple[RowPattern, ...] | None = None
        setup_static(self, static_shapes, 1)

    def _site_laws(self, p: float, given: Sequence[PatternDistribution] | None) -> list[PatternDistribution] | None:
        return site_distributions(self.spec, p, [self.d_out], given)

    def draw(self) -> list:
        """This step's draw for the one site, as a list of one: a RowPattern, or a tuple of one per group."""
        drawn = draw_sites(self.spec, self.p, [self.d_out], self.site_laws(), self.generator, self.groups)
        store_static(self, drawn)
        return drawn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[*, d_in]) -> Tensor[*, d_out]; the dropped features are 0."""
        self.last_pattern = None
        if not self.dropout_training or self.p == 0.0 or self.spec.drops == NOTHING:  # the nn.Dropout's mode
            return self.linear(x)
        if self.spec.drops == ELEMENT:
            return self.dropout(self.linear(x))
        if self.groups > 1 and not self.static_shapes:
            return self._grouped_step(x)  # eager: Dynamo would guard on the groups' pattern objects (as the FFN's)
        (draw,) = step_draws(self)
        self.last_pattern = draw
        return self._kept(x, draw)

    @run_eagerly
    def _grouped_step(self, x: torch.Tensor) -> torch.Tensor:
        (draw,) = step_draws(self)
        self.last_pattern = draw
        return self._kept(x, draw)

    def _kept(self, x: torch.Tensor, draw: RowPattern | tuple[RowPattern, ...]) -> torch.Tensor:
        """The step on x with its draw (a pattern, or one per group): only the kept output rows computed, unless
        the Linear must be called."""
        if x.dim() < 1 or x.shape[-1] != self.d_in:
            raise ValueError(f"input must have last dimension {self.d_in}, got shape {tuple(x.shape)}")
        masked = not torch.compiler.is_compiling() and self.executor_for(x) == MASKED  # a GEMM too small to shrink
        if masked or (why := must_call(self.linear, self.gemm_class)) is not None:  # wrapped (LoRA) or hooked
            if not masked:
                warn_calls_parts(self, "linear", why)
            y = self.linear(x)  # [*, d_out]
            return y * sample_mask(groups_of(draw), x, self.d_out, y.dtype)  # [*, d_out]
        weight = self.linear.weight.t() if self.transposed else self.linear.weight  # [d_out, d_in]
        if self.static_shapes:
            return self._static(x, weight)
        # no Python dtype check (check=False, as the FFN blocks): under torch.autocast the op's autocast rule
        # casts x, weight and bias to the autocast dtype, as nn.Linear's does
        if not isinstance(draw, tuple):
            kept = row_pattern_linear(x, weight, self.linear.bias, FULL, draw, check=False)  # [*, k]
            return self._widen(kept, draw)
        parts, patterns = sample_groups(x, draw)  # [B_g, *, d_in] each: one GEMM per distinct offset
        whole = (FULL,) * len(parts)
        kept = grouped_row_pattern_linear_compact(parts, weight, self.linear.bias, whole, patterns, check=False)
        ys = [self._widen(k, q) for k, q in zip(kept, patterns)]  # [B_g, *, d_out]
        return ys[0] if len(ys) == 1 else torch.cat(ys, 0)  # [*, d_out]

    def executor_for(self, x: torch.Tensor) -> str:
        """How an eager training forward on x runs row patterns: "compact" or "masked" (``executor``), or "static"
        for a ``static_shapes`` block. "auto": with batch groups, masked (measured on a CPU from 16 x 32 to 4096 x 1
        rows of a 512 -> 128 Linear, benchmarks/convert_step.md: compact saves on one GEMM only and pays each
        group's scatter); with one pattern, the FFN's rule (``sites.grouped_executor``) on the rows and weights."""
        if self.static_shapes:
            return "static"
        if self.executor == "auto" and self.groups > 1:
            return MASKED
        return grouped_executor(self.executor, math.prod(x.shape[:-1]), self.groups, self.d_in * self.d_out)

    def _widen(self, kept: torch.Tensor, pattern: RowPattern) -> torch.Tensor:
        """The kept features (Tensor[*, k]) scaled, at their places in a zero Tensor[*, d_out]."""
        index = pattern.kept_indices(self.d_out, kept.device)  # Long[k]
        return kept.new_zeros(*kept.shape[:-1], self.d_out).index_copy(-1, index, kept * pattern.scale)

    def _static(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # the kept features in slots, [*, K] whatever the offsets; a padding slot (index 0) adds an exact zero;
        # with groups, each group's samples (the leading axis) read their own group's slots
        ((*sides,),) = static_sides(self, [self.d_out])  # one StaticSide per group
        parts = [x] if x.dim() == 1 else static_groups(x, len(sides), 0)  # [B_g, *, d_in], groups with samples
        sides = sides[: len(parts)]
        kept = static_grouped_linear(parts, weight, self.linear.bias, (None,) * len(parts), sides)  # [B_g, *, K]
        ys = []
        for part, side in zip(kept, sides):
            part = part * side.scale if side.valid is None else part * side.scale * side.valid
            ys.append(part.new_zeros(*part.shape[:-1], self.d_out).index_add(-1, side.index, part))  # [B_g, *, d_out]
        return ys[0] if len(ys) == 1 else torch.cat(ys, 0)  # [*, d_out]

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != self.spec.groups else ""
        static = ", static_shapes=True" if self.static_shapes else ""
        return f"d_out={self.d_out}, p={self.p}, method={self.method!r}{groups}{static}"
