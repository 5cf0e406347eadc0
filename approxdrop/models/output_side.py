"""OutputRowDropout: ``dropout_p(linear(x))`` where the dropout drops whole output features with a row
pattern (one per batch), so the GEMM computes only the kept output rows; they are scaled and put back
into a zero ``[*, d_out]`` tensor. What ``convert(model, output_side=True)`` builds around a Linear (or
HF's Conv1D, whose weight is ``[d_in, d_out]``) followed by a Dropout. With ``static_shapes`` the kept
features sit in the slots of ``ops.static`` (shapes set by the draw's ``(dp, keep)``, not its offset).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._env import check_generator, check_rate
from ..distribution import PatternDistribution
from ..ops import FULL, row_pattern_linear, static_row_linear
from .ffn import ffn_method
from .methods import ELEMENT, NOTHING
from .parts import must_call, warn_calls_parts
from .sites import (
    DropoutRate,
    ModeInDropout,
    draw_sites,
    setup_static,
    site_distributions,
    static_sides,
    step_draws,
    store_static,
)


class OutputRowDropout(ModeInDropout, DropoutRate, nn.Module):
    """``dropout_p(linear(x))`` on x (Tensor[*, d_in]) -> Tensor[*, d_out], around an existing ``linear``.

    Dropout runs as its nn.Dropout (``dropout``, which holds ``p``) is set: in its training mode, as
    ApproxDropoutFFN's.

    Args:
        linear: an nn.Linear, or a module with ``weight`` [d_in, d_out] and ``bias`` [d_out] computing
            ``x @ weight + bias`` when ``transposed`` (HF Conv1D). Its Parameters are shared.
        p: dropout rate in [0, 1).
        method: a row-pattern method with one pattern per batch (``row``, ``row-extended``), or
            ``bernoulli`` (nn.Dropout) or ``none``.
        distributions, generator: as ApproxDropoutFFN's.
        transposed: the weight is ``[d_in, d_out]``.
        static_shapes: run at the shapes the draw's ``(dp, keep)`` sets, the offset read from a buffer, as
            ApproxDropoutFFN's ``static_shapes``: one compiled or CUDA graph per pattern class.
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
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(check_rate(p))  # holds p (sites.DropoutRate)
        self.spec, self.groups = ffn_method(method, None)
        if self.groups != 1:
            raise ValueError(f"output-side dropout takes one pattern per batch, not {method!r} ({self.groups} groups)")
        self.method, self.transposed = method, transposed
        self.linear = linear
        self.gemm_class = type(linear)  # a linear of another class later (a LoRA wrapper) is called (parts.must_call)
        self.d_out = linear.weight.shape[1 if transposed else 0]
        self.init_laws(distributions)
        self.generator = check_generator(generator)
        self.last_pattern = None
        setup_static(self, static_shapes, 1)

    def _site_laws(self, p: float, given: Sequence[PatternDistribution] | None) -> list[PatternDistribution] | None:
        return site_distributions(self.spec, p, [self.d_out], given)

    def draw(self) -> list:
        """This step's draw for the one site, as a list of one RowPattern."""
        drawn = draw_sites(self.spec, self.p, [self.d_out], self.site_laws(), self.generator)
        store_static(self, drawn)
        return drawn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[*, d_in]) -> Tensor[*, d_out]; the dropped features are 0."""
        self.last_pattern = None
        if not self.dropout_training or self.p == 0.0 or self.spec.drops == NOTHING:  # the nn.Dropout's mode
            return self.linear(x)
        if self.spec.drops == ELEMENT:
            return self.dropout(self.linear(x))
        if (why := must_call(self.linear, self.gemm_class)) is not None:  # wrapped (LoRA) or hooked since built
            warn_calls_parts(self, "linear", why)
            y = self.linear(x)  # [*, d_out]
            (pattern,) = step_draws(self)
            self.last_pattern = pattern
            return y * (pattern.keep_mask(self.d_out, y.device).to(y.dtype) * pattern.scale)  # [*, d_out]
        weight = self.linear.weight.t() if self.transposed else self.linear.weight  # [d_out, d_in]
        if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"input must have last dimension {weight.shape[1]}, got shape {tuple(x.shape)}")
        (pattern,) = step_draws(self)
        self.last_pattern = pattern
        if self.static_shapes:
            return self._static(x, weight)
        # no Python dtype check (check=False, as the FFN blocks): under torch.autocast the op's autocast rule
        # casts x, weight and bias to the autocast dtype, as nn.Linear's does
        kept = row_pattern_linear(x, weight, self.linear.bias, FULL, pattern, check=False) * pattern.scale  # [*, k]
        index = pattern.kept_indices(self.d_out, kept.device)  # Long[k]
        return kept.new_zeros(*kept.shape[:-1], self.d_out).index_copy(-1, index, kept)  # [*, d_out]

    def _static(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # the kept features in slots, [*, K] whatever the offset; a padding slot (index 0) adds an exact zero
        ((side,),) = static_sides(self, [self.d_out])
        kept = static_row_linear(x, weight, self.linear.bias, None, side) * side.scale  # [*, K]
        if side.valid is not None:
            kept = kept * side.valid
        return kept.new_zeros(*kept.shape[:-1], self.d_out).index_add(-1, side.index, kept)  # [*, d_out]

    def extra_repr(self) -> str:
        static = ", static_shapes=True" if self.static_shapes else ""
        return f"d_out={self.d_out}, p={self.p}, method={self.method!r}{static}"
