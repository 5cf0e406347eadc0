"""GatedApproxDropoutFFN: a gated feed-forward, ``wo(dropout(act(wi_0 x) * wi_1 x))`` (HF
T5DenseGatedActDense, the GEGLU / SwiGLU MLPs), with a row pattern on the hidden units: both input GEMMs
compute only the kept rows and the output GEMM reads only the kept columns. What ``convert`` builds for
such a block; one pattern per batch (``groups == 1``).

The pattern, p, method and generator live in an ApproxDropoutFFN around (wi_0, act, wo) held as ``ffn``
(so ``draw_patterns`` finds it, and ``ffn.last_pattern`` holds the step's draw); ``wi_1`` is the gate's
second Linear. The block also holds the three Linears as ``wi_0``, ``wi_1``, ``wo``, ahead of ``ffn``, so
``parameters()`` and ``named_parameters()`` give them in T5DenseGatedActDense's order and names, and its
state_dict has T5's keys (``ffn``'s copies of wi_0 and wo are left out, and filled on load).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import FULL, row_pattern_linear, static_row_linear
from .ffn import ApproxDropoutFFN
from .methods import ELEMENT, NOTHING
from .sites import activate, static_sides, step_draws
from .state_keys import add_entries


class GatedApproxDropoutFFN(nn.Module):
    """``wo(dropout_p(act(wi_0(x)) * wi_1(x)))`` on x (Tensor[*, d_model]) around existing modules.

    Args:
        ffn: ApproxDropoutFFN built (``from_modules``) around wi_0, the activation and wo, with
            ``groups == 1``: its p, method, pattern law and generator are the block's.
        wi_1: the second input Linear, ``d_model -> d_hidden`` like wi_0.
    """

    def __init__(self, ffn: ApproxDropoutFFN, wi_1: nn.Linear) -> None:
        super().__init__()
        if ffn.groups != 1:
            raise ValueError(f"a gated block takes one pattern per batch (groups=1), got groups={ffn.groups}")
        if not isinstance(wi_1, nn.Linear) or (wi_1.in_features, wi_1.out_features) != (ffn.d_model, ffn.d_hidden):
            raise ValueError(f"wi_1 must be an nn.Linear({ffn.d_model}, {ffn.d_hidden}) like wi_0, got {wi_1!r}")
        self.wi_0, self.wi_1, self.wo = ffn.fc1, wi_1, ffn.fc2  # T5's order: an optimizer's state keeps its place
        self.ffn = ffn  # wi_0 and wo a second time: listed once, under the names above
        aliases = [("ffn.0.", "wi_0.", True), ("ffn.3.", "wo.", True)]
        add_entries(self, aliases, [key for key in self.state_dict(keep_vars=True) if not key.startswith("ffn.")])

    @property
    def dropout(self) -> nn.Dropout:
        """The nn.Dropout holding p (``ffn``'s), as T5DenseGatedActDense's ``dropout``."""
        return self.ffn.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[*, d_model]) -> Tensor[*, d_out]."""
        ffn = self.ffn
        if x.dim() < 1 or x.shape[-1] != ffn.d_model:
            raise ValueError(f"input must have last dimension {ffn.d_model}, got shape {tuple(x.shape)}")
        ffn.last_pattern = None
        if not ffn.training or ffn.p == 0.0 or ffn.spec.drops == NOTHING:
            return ffn.fc2(ffn.activation(ffn.fc1(x)) * self.wi_1(x))
        if ffn.spec.drops == ELEMENT:
            return ffn.fc2(ffn.dropout(ffn.activation(ffn.fc1(x)) * self.wi_1(x)))
        (pattern,) = step_draws(ffn)  # drawn now, or ahead by draw_patterns
        ffn.last_pattern = pattern
        wi_0, wi_1, wo = ffn.fc1, self.wi_1, ffn.fc2
        if ffn.static_shapes:  # [*, K] slots whatever the offset (ops.static); wo zeroes the padding
            ((side,),) = static_sides(ffn, [ffn.d_hidden])  # one site, one group
            gate = activate(ffn.activation, static_row_linear(x, wi_0.weight, wi_0.bias, None, side))  # [*, K]
            h = gate * static_row_linear(x, wi_1.weight, wi_1.bias, None, side)  # [*, K]
            return static_row_linear(h, wo.weight, wo.bias, side, None)  # [*, d_out]
        gate = activate(ffn.activation, row_pattern_linear(x, wi_0.weight, wi_0.bias, FULL, pattern))  # [*, k]
        h = gate * row_pattern_linear(x, wi_1.weight, wi_1.bias, FULL, pattern)  # [*, k]: the kept units only
        return row_pattern_linear(h, wo.weight, wo.bias, pattern, FULL)  # [*, d_out]
