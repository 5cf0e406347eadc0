"""DecoderLM: a small decoder-only language model in the GPT-2 layout (pre-LN blocks, causal
self-attention, an MLP with dropout after its activation), written with plain ``torch.nn`` modules.

Each block's MLP is ``nn.Sequential(nn.Linear, nn.GELU, nn.Dropout(p), nn.Linear)``: the chain
``convert`` looks for, so ``convert(model, method="row", groups=G)`` turns every block's MLP into an
ApproxDropoutFFN sharing its Parameters. The MLP dropout is the model's only dropout site (GPT-2's
embedding, attention and residual dropouts are left out, so a comparison changes exactly the sites
that ``convert`` changes).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._env import check_int, check_rate, check_token_ids


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one Linear for q, k, v, ``scaled_dot_product_attention``
    with ``is_causal=True``, then the output projection ``proj``."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[B, T, d_model]) -> Tensor[B, T, d_model]; position t sees positions <= t only."""
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads)  # [B, T, 3, H, d_head]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, d_head]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, d_head]
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # [B, T, d_model]


class DecoderBlock(nn.Module):
    """``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``; ``mlp`` is
    ``nn.Sequential(Linear(d_model, d_hidden), GELU, Dropout(p), Linear(d_hidden, d_model))``."""

    def __init__(self, d_model: int, heads: int, d_hidden: int, p: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_hidden), nn.GELU(approximate="tanh"), nn.Dropout(p), nn.Linear(d_hidden, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[B, T, d_model]) -> Tensor[B, T, d_model]."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DecoderLM(nn.Module):
    """A GPT-2-style decoder-only language model: token + learned position embeddings, ``layers``
    DecoderBlocks, a final LayerNorm and a linear head over the vocabulary.

    Args:
        vocab: vocabulary size (token ids in ``[0, vocab)``).
        d_model: width of the residual stream; a multiple of ``heads``.
        heads: attention heads.
        layers: decoder blocks.
        context: the longest sequence the model reads (positions ``0 .. context - 1``).
        p: dropout rate of every block's MLP, after the activation.
        d_hidden: MLP hidden width (default ``4 * d_model``, as in GPT-2).
        tie_weights: the head shares the token embedding's weight (GPT-2 does).

    GPT-2's initialisation: every Linear and Embedding weight from N(0, 0.02), biases zero, and the
    two projections back into the residual stream (``attn.proj``, ``mlp[3]``) from
    N(0, 0.02 / sqrt(2 * layers)).
    """

    def __init__(
        self,
        vocab: int,
        d_model: int = 128,
        heads: int = 4,
        layers: int = 4,
        context: int = 128,
        p: float = 0.1,
        d_hidden: int | None = None,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        self.vocab = check_int("vocab", vocab, 1)
        self.d_model = check_int("d_model", d_model, 1)
        self.heads = check_int("heads", heads, 1)
        if d_model % heads:
            raise ValueError(f"d_model must be a multiple of heads={heads}, got {d_model}")
        self.context = check_int("context", context, 1)
        self.p = check_rate(p)
        self.d_hidden = 4 * self.d_model if d_hidden is None else check_int("d_hidden", d_hidden, 1)
        check_int("layers", layers, 1)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, heads, self.d_hidden, self.p) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self._init_weights(layers)
        if tie_weights:
            self.head.weight = self.tok.weight

    def _init_weights(self, layers: int) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[-1]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (Long[B, T], T <= context) -> logits Tensor[B, T, vocab]; the logits at t depend on
        ``idx[:, :t + 1]`` only."""
        if idx.dim() != 2 or not 1 <= idx.shape[1] <= self.context:
            raise ValueError(f"idx must be [B, T] with 1 <= T <= context={self.context}, got shape {tuple(idx.shape)}")
        check_token_ids(idx, self.vocab)
        positions = torch.arange(idx.shape[1], device=idx.device)  # [T]
        x = self.tok(idx) + self.pos(positions)  # [B, T, d_model]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # [B, T, vocab]

    def extra_repr(self) -> str:
        return f"vocab={self.vocab}, context={self.context}, p={self.p}"
