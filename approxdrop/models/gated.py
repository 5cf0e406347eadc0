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

PackedGatedApproxDropoutFFN is the same block where the two input Linears are one packed Linear whose output
splits in halves (Hugging Face Phi-3, GLM, ModernBERT): its ``ffn`` reads the halves of the packed weight as
views of one split (``PackedGatedParts``), so backward writes the packed weight's gradient in one piece.
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


class HoldsFFN(nn.Module):
    """A block whose pattern, rate, method and dropout live in the ApproxDropoutFFN it holds as ``ffn``."""

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


class GatedApproxDropoutFFN(HoldsFFN):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[*, d_model]) -> Tensor[*, d_out]: ``ffn`` with wi_1 as its gate, on every path it has
        (one pattern or one per batch group, compact, masked or static)."""
        return self.ffn(x, gate=self.gate)


class PackedGatedParts(PartsOf):
    """The ApproxDropoutFFN of a PackedGatedApproxDropoutFFN: its input side is the two halves of the block's
    packed Linear (rows ``[0, d_hidden)`` and ``[d_hidden, 2 d_hidden)``), read at each use; ``fc1`` is that
    packed Linear, ``fc2`` the block's output Linear."""

    @property
    def fc1(self) -> nn.Linear:
        return getattr(self.owner, self.owner.names[0])

    @property
    def fc2(self) -> nn.Linear:
        return getattr(self.owner, self.owner.names[1])

    @property
    def dropout(self) -> nn.Module:
        """The owner's dropout where it holds one under the module's name (``names[2]``), else the block's."""
        names = self.owner.names
        return getattr(self.owner, names[2]) if len(names) == 3 else self._modules["2"]

    def _gemm_parts(self, gate: nn.Linear | None) -> tuple[tuple[str, nn.Module | None], ...]:
        return (("packed input Linear", self.fc1), ("fc2", self.fc2))

    def _halves(self, pair: tuple) -> tuple:
        """The (activated, gate) halves of a pair split along the packed rows, in the owner's order."""
        return pair if self.owner.act_half == 0 else pair[::-1]

    def _input_weights(self, gate: nn.Linear | None) -> tuple[tuple, tuple]:
        packed = self.fc1
        weights = packed.weight.chunk(2)  # [d_hidden, d_model] views, one split: its backward is one cat
        biases = (None, None) if packed.bias is None else packed.bias.chunk(2)
        (w_act, w_gate), (b_act, b_gate) = self._halves(weights), self._halves(biases)
        return (w_act, b_act), (w_gate, b_gate)

    def _dense_inputs(self, x: torch.Tensor, gate: nn.Linear | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._halves(self.fc1(x).chunk(2, dim=-1))  # [*, d_hidden] each, as the module's forward splits


class PackedGatedApproxDropoutFFN(HoldsFFN):
    """A gated feed-forward whose two input Linears are one, ``wo(dropout(act(a) * b))`` with ``a, b =
    wi(x).chunk(2, -1)`` (``act_half=1``: ``b, a``, the activation on the second half) on x (Tensor[*, d_model]):
    Hugging Face Phi-3's, GLM's and ModernBERT's MLPs. A row pattern on the d_hidden hidden units keeps the
    same rows of both halves of ``wi`` and the same columns of ``wo``, so only those are computed.

    Args:
        ffn: ApproxDropoutFFN built (``from_modules``) around a stand-in for one half of ``wi`` (any nn.Linear
            ``d_model -> d_hidden``, which is dropped), the activation and wo: its p, method, groups, executor,
            pattern law and generator are the block's.
        wi: the packed input Linear, ``d_model -> 2 d_hidden``.
        act_half: which half of ``wi``'s output the activation takes (0: the first, as Phi-3 and ModernBERT).
        names: the names the block holds wi and wo under (the module's own: Phi-3's ``gate_up_proj``,
            ``down_proj``), so its state_dict has the module's keys and name-based tools (peft) find them; a third
            holds ffn's dropout under the module's name too (ModernBERT's ``drop``), so setting its ``p`` there
            still sets the rate.
    """

    def __init__(
        self, ffn: ApproxDropoutFFN, wi: nn.Linear, act_half: int = 0, names: tuple[str, ...] = ("wi", "wo")
    ) -> None:
        super().__init__()
        if not isinstance(wi, nn.Linear) or (wi.in_features, wi.out_features) != (ffn.d_model, 2 * ffn.d_hidden):
            want = f"nn.Linear({ffn.d_model}, {2 * ffn.d_hidden})"
            raise ValueError(f"wi must be an {want}: both halves of d_hidden {ffn.d_hidden}, got {wi!r}")
        if act_half not in (0, 1):
            raise ValueError(f"act_half must be 0 or 1 (the half the activation takes), got {act_half!r}")
        names = tuple(names)
        if len(names) not in (2, 3) or len(set(names)) != len(names):
            raise ValueError(f"names must be two or three different identifiers (wi, wo[, dropout]), got {names!r}")
        if not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ValueError(f"names must be identifiers, got {names!r}")
        if "ffn" in names or any(hasattr(type(self), n) for n in names):
            raise ValueError(f"names {names!r} would hide the block's own attribute of that name")
        self.names, self.act_half = names, act_half
        for name, part in zip(names, (wi, ffn.fc2, ffn.dropout)):  # the module's order: Wi, Wo (and its dropout)
            self.add_module(name, part)
        self.ffn = PackedGatedParts.of(ffn, self)
        if len(names) == 3:  # the dropout has one place: the block's, under the module's name
            del self.ffn._modules["2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[*, d_model]) -> Tensor[*, d_out]: ``ffn`` with both halves of wi as its input side, on every
        path it has (one pattern or one per batch group, compact, masked or static)."""
        return self.ffn(x)
