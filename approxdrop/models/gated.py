"""GatedApproxDropoutFFN: a gated feed-forward, ``wo(dropout(act(wi_0 x) * wi_1 x))`` (HF
T5DenseGatedActDense, the GEGLU / SwiGLU MLPs), with a row pattern on the hidden units: both input GEMMs
compute only the kept rows and the output GEMM reads only the kept columns. What ``convert`` builds for
such a block, with any number of batch groups (the pattern is drawn per group, as ApproxDropoutFFN's).

The pattern, p, method and generator live in an ApproxDropoutFFN around (wi_0, act, wo) held as ``ffn``
(so ``draw_patterns`` finds it, and ``ffn.last_pattern`` holds the step's draw); ``wi_1`` is the gate's
second Linear. The block holds the three Linears ahead of ``ffn``, under the module's own names (``names``: T5's
``wi_0``, ``wi_1``, ``wo`` by default), so ``parameters()`` and ``named_parameters()`` give them in the module's
order and names, and its state_dict has its keys. ``ffn`` reads wi_0 and wo from the block at each use
(``GatedParts``): a module put in their place later (peft's LoRA Linear) is the one that runs.
"""

from __future__ import annotations

import torch
from torch import nn

from .ffn import ApproxDropoutFFN, PartsOf

WI_NAMES = ("wi_0", "wi_1", "wo")  # T5DenseGatedActDense's


class GatedParts(PartsOf):
    """The ApproxDropoutFFN of a GatedApproxDropoutFFN: its Linears are the block's first input Linear and its
    output Linear, under the names the block keeps (``names``)."""

    @property
    def fc1(self) -> nn.Linear:
        return getattr(self.owner, self.owner.names[0])

    @property
    def fc2(self) -> nn.Linear:
        return getattr(self.owner, self.owner.names[2])


class GatedApproxDropoutFFN(nn.Module):
    """``wo(dropout_p(act(wi_0(x)) * wi_1(x)))`` on x (Tensor[*, d_model]) around existing modules.

    Args:
        ffn: ApproxDropoutFFN built (``from_modules``) around wi_0, the activation and wo: its p, method,
            groups, executor, pattern law and generator are the block's.
        wi_1: the second input Linear, ``d_model -> d_hidden`` like wi_0.
        names: the names the block holds wi_0, wi_1 and wo under (``names``), in this order: the module's
            own, so ``named_modules()`` keeps them (T5's by default; timm SwiGLU's ``fc1_g``, ``fc1_x``, ``fc2``;
            Llama's ``gate_proj``, ``up_proj``, ``down_proj``), and what targets them by name (peft's LoRA)
            finds them after ``convert``.
    """

    def __init__(self, ffn: ApproxDropoutFFN, wi_1: nn.Linear, names: tuple[str, str, str] = WI_NAMES) -> None:
        super().__init__()
        if not isinstance(wi_1, nn.Linear) or (wi_1.in_features, wi_1.out_features) != (ffn.d_model, ffn.d_hidden):
            raise ValueError(f"wi_1 must be an nn.Linear({ffn.d_model}, {ffn.d_hidden}) like wi_0, got {wi_1!r}")
        names = tuple(names)
        if len(names) != 3 or len(set(names)) != 3 or not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ValueError(f"names must be three different identifiers (wi_0, wi_1, wo), got {names!r}")
        if "ffn" in names or any(hasattr(type(self), n) for n in names):
            raise ValueError(f"names {names!r} would hide the block's own attribute of that name")
        self.names = names
        for name, linear in zip(names, (ffn.fc1, wi_1, ffn.fc2)):  # T5's order: an optimizer's state keeps its place
            self.add_module(name, linear)
        self.ffn = GatedParts.of(ffn, self)  # reads wi_0 and wo from this block: each Linear has one name

    @property
    def gate(self) -> nn.Module:
        """The gate's Linear (wi_1), under its name."""
        return getattr(self, self.names[1])

    @property
    def p(self) -> float:
        """The dropout rate (``ffn``'s, kept in ``dropout``); setting it sets ``ffn.p``."""
        return self.ffn.p

    @p.setter
    def p(self, value: float) -> None:
        self.ffn.p = value

    @property
    def method(self) -> str:
        """``ffn``'s method."""
        return self.ffn.method

    @property
    def dropout(self) -> nn.Dropout:
        """The nn.Dropout holding p (``ffn``'s), as T5DenseGatedActDense's ``dropout``."""
        return self.ffn.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[*, d_model]) -> Tensor[*, d_out]: ``ffn`` with wi_1 as its gate, on every path it has
        (one pattern or one per batch group, compact, masked or static)."""
        return self.ffn(x, gate=self.gate)
