"""LSTM language models with Approximate Random Dropout on the non-recurrent connections.

``ApproxDropoutLSTM``: embedding -> ``layers`` LSTM layers -> decoder (Zaremba et al.'s medium
model at the paper-like size 2 x 650). The dropout sites sit where Zaremba's dropout sits: on the
embedding output, between LSTM layers and before the decoder; the recurrent connections h -> h
are never dropped. Site ``i`` feeds LSTM layer ``i`` (``i < layers``) or the decoder.

Methods come from the table ``models.methods.DROPOUT_METHODS`` (one pattern or mask per site per
training step, shared by the whole batch AND all time steps of the step; eval runs the full network):
- row patterns (``row``, ``row-extended``): a RowPattern per site. The input projections of all
  time steps run as one GEMM over the site's kept columns only (``approxdrop::row_linear``), and so
  does the decoder.
- per element (``bernoulli``): per-element dropout (``nn.functional.dropout``), full-size GEMMs: the
  standard-dropout twin, same LSTM code.
- batch-shared random units (``shared``): batch- and time-shared Bernoulli(p) over units, kept units gathered.
- nothing (``none``): no dropout.

``TorchLSTM`` is the baseline users actually write: ``nn.LSTM(dropout=p)`` with ``nn.Dropout`` on
the embedding and before the decoder (the table's ``torch`` row). ``language_model(method=...)``
builds either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._env import check_int, check_rate
from ..distribution import PatternDistribution
from ..ops import FULL, row_pattern_linear
from ..patterns import RowPattern
from ..search import FAMILIES
from .methods import ELEMENT, NOTHING, ROW, SHARED_UNITS, get_method, methods_for
from .sites import draw_sites, gathered_linear, site_distributions

LM_METHODS = methods_for("lstm")  # what language_model builds
LSTM_METHODS = tuple(m for m in LM_METHODS if not get_method(m).torch_modules)  # ApproxDropoutLSTM's
INIT_RANGE = 0.05  # uniform(-0.05, 0.05) for every weight (Zaremba's medium model)

State = tuple[torch.Tensor, torch.Tensor]  # (h Float[layers, B, H], c Float[layers, B, H])


def lstm_recurrence_reference(xproj: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_hh: torch.Tensor):
    """One LSTM layer over time given its input projections (bias included), differentiated by
    autograd step by step: the readable reference of ``lstm_recurrence``.

    xproj (Float[T, B, 4H], gate order i, f, g, o as in nn.LSTM), h, c (Float[B, H]),
    weight_hh (Float[4H, H]) -> (out Float[T, B, H], h Float[B, H], c Float[B, H]).
    """
    outs = []
    for t in range(xproj.shape[0]):
        gates = xproj[t] + h @ weight_hh.T  # [B, 4H]
        i, f, g, o = gates.chunk(4, dim=-1)  # each [B, H]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


class _Recurrence(torch.autograd.Function):
    """``lstm_recurrence_reference`` with a hand-written backward through time: the forward runs
    without autograd bookkeeping, and the backward forms the weight gradient as ONE GEMM over all
    time steps (``dG^T @ H_prev``) instead of T thin ones, as cuDNN does."""

    @staticmethod
    def forward(ctx, xproj, h, c, weight_hh):
        steps, hidden = xproj.shape[0], h.shape[-1]
        acts = torch.empty_like(xproj)  # [T, B, 4H]: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
        cells = xproj.new_empty((steps + 1, *c.shape))  # [T+1, B, H]: c_0 .. c_T
        outs = xproj.new_empty((steps + 1, *h.shape))  # [T+1, B, H]: h_0 .. h_T
        cells[0], outs[0] = c, h
        for t in range(steps):
            gates = torch.addmm(xproj[t], outs[t], weight_hh.T)  # [B, 4H]
            torch.sigmoid(gates, out=acts[t])
            torch.tanh(gates[:, 2 * hidden : 3 * hidden], out=acts[t, :, 2 * hidden : 3 * hidden])
            i, f, g, o = acts[t].chunk(4, dim=-1)  # each [B, H]
            torch.addcmul(f * cells[t], i, g, out=cells[t + 1])
            torch.mul(o, torch.tanh(cells[t + 1]), out=outs[t + 1])
        ctx.save_for_backward(acts, cells, outs, weight_hh)
        return outs[1:], outs[-1], cells[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h, grad_c):
        acts, cells, outs, weight_hh = ctx.saved_tensors
        steps = acts.shape[0]
        grad_out = torch.zeros_like(outs[1:]) if grad_out is None else grad_out  # [T, B, H]
        dh = torch.zeros_like(outs[0]) if grad_h is None else grad_h.clone()  # [B, H]
        dc = torch.zeros_like(cells[0]) if grad_c is None else grad_c.clone()  # [B, H]
        dgates = torch.empty_like(acts)  # [T, B, 4H]
        for t in reversed(range(steps)):
            i, f, g, o = acts[t].chunk(4, dim=-1)  # each [B, H]
            dh = dh + grad_out[t]
            tanh_c = torch.tanh(cells[t + 1])
            dc = dc + dh * o * (1 - tanh_c * tanh_c)
            di, df, dg, do = dgates[t].chunk(4, dim=-1)
            torch.mul(dc * g, i * (1 - i), out=di)
            torch.mul(dc * cells[t], f * (1 - f), out=df)
            torch.mul(dc * i, 1 - g * g, out=dg)
            torch.mul(dh * tanh_c, o * (1 - o), out=do)
            dc = dc * f
            dh = dgates[t] @ weight_hh  # [B, H]
        grad_w = None
        if ctx.needs_input_grad[3]:
            flat = dgates.reshape(-1, dgates.shape[-1])  # [T*B, 4H]
            grad_w = flat.T @ outs[:-1].reshape(-1, outs.shape[-1])  # [4H, H]: one GEMM over all steps
        return dgates, dh, dc, grad_w


def lstm_recurrence(xproj: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_hh: torch.Tensor):
    """One LSTM layer over time (same contract as ``lstm_recurrence_reference``), with a fused
    backward through time. First-order gradients only."""
    return _Recurrence.apply(xproj, h, c, weight_hh)


def row_projection(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pattern: RowPattern) -> torch.Tensor:
    """The linear map reading a row-pattern dropout site: only the kept units of u (Float[T, B, n]) and
    W's kept columns (Float[m, n]) enter one compact GEMM, scaled by dp/keep -> Float[T, B, m]."""
    kept = u[..., pattern.selector(u.shape[-1], u.device)]  # [T, B, k]
    return row_pattern_linear(kept, weight, bias, pattern, FULL)


class LSTMLayer(nn.Module):
    """The parameters of one LSTM layer (nn.LSTM's layout, one bias)."""

    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, n_in))  # [4H, n_in]
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden))  # [4H, H]
        self.bias = nn.Parameter(torch.empty(4 * hidden))  # [4H]


def _init_uniform(module: nn.Module) -> None:
    for param in module.parameters():
        nn.init.uniform_(param, -INIT_RANGE, INIT_RANGE)


def _check_tokens(x: torch.Tensor, vocab: int) -> None:
    if x.dim() != 2 or x.dtype != torch.long:
        raise ValueError(f"tokens must be a Long tensor [T, B], got {x.dtype} of shape {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}), got [{int(x.min())}, {int(x.max())}]")


class ApproxDropoutLSTM(nn.Module):
    """Word-level LSTM language model with dropout rate ``p`` on its non-recurrent connections.

    Args:
        vocab: vocabulary size V.
        hidden: LSTM width H (also the embedding width unless ``embedding`` is given).
        layers: number of LSTM layers.
        p: dropout rate in [0, 1).
        method: a name from ``LSTM_METHODS`` (the LSTM rows of the methods table).
        embedding: embedding width E (default H).
        distributions: one row PatternDistribution per site (``layers + 1``); by default
            ``distribution_for(p, width, family=family)`` of each site.
        family: the searched pattern family of the default distributions, "paper" (keep = 1:
            strided views) or "extended" (keep >= 1: more varied sub-networks; it trains better
            here, see benchmarks/lstm_step.md); default: the method's own (``row-extended`` is
            ``row`` with ``family="extended"``).
        generator: CPU generator for pattern and mask draws (default: torch's global RNG).

    ``forward(x Long[T, B], state)`` -> (logits Float[T, B, V], state). After a training forward,
    ``last_patterns`` holds what each site drew (a RowPattern, a Long index tensor of kept units
    for ``shared``, or None).
    """

    def __init__(
        self,
        vocab: int,
        hidden: int = 650,
        layers: int = 2,
        p: float = 0.5,
        method: str = "row",
        *,
        embedding: int | None = None,
        distributions: Sequence[PatternDistribution] | None = None,
        family: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = get_method(method, "lstm")
        if self.spec.torch_modules:
            raise ValueError(f"method {method!r} is nn.LSTM + nn.Dropout: build it with TorchLSTM or language_model")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        self.family = family or self.spec.family
        self.vocab, self.hidden = check_int("vocab", vocab, 1), check_int("hidden", hidden, 1)
        self.layers = check_int("layers", layers, 1)
        self.emb_size = hidden if embedding is None else check_int("embedding", embedding, 1)
        self.p, self.method, self.generator = check_rate(p), method, generator
        self.embedding = nn.Embedding(vocab, self.emb_size)
        self.lstm = nn.ModuleList(LSTMLayer(self.emb_size if i == 0 else hidden, hidden) for i in range(layers))
        self.decoder = nn.Linear(hidden, vocab)
        _init_uniform(self)
        self.site_widths = [self.emb_size] + [hidden] * layers
        self.distributions = site_distributions(self.spec, self.p, self.site_widths, distributions, family=family)
        self.last_patterns: list = [None] * len(self.site_widths)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """Zero (h, c), each Float[layers, batch, H]."""
        weight = self.decoder.weight
        shape = (self.layers, batch, self.hidden)
        zeros = torch.zeros(shape, device=device or weight.device, dtype=dtype or weight.dtype)
        return zeros, zeros.clone()

    def draw(self) -> list:
        """This step's pattern (row) or kept units (shared) for every site; None for the others."""
        return draw_sites(self.spec, self.p, self.site_widths, self.distributions, self.generator)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (Long[T, B]), state (h, c) or None for zeros -> (logits Float[T, B, V], new state)."""
        _check_tokens(x, self.vocab)
        if state is None:
            state = self.init_state(x.shape[1], x.device)
        dropping = self.training and self.spec.drops != NOTHING and self.p > 0.0
        draws = self.draw() if dropping else [None] * len(self.site_widths)
        self.last_patterns = draws
        project = self._projection(draws, dropping)
        u = self.embedding(x)  # [T, B, E]
        hs, cs = [], []
        for i, layer in enumerate(self.lstm):
            xproj = project(i, u, layer.weight_ih, layer.bias)  # [T, B, 4H]: one GEMM for all time steps
            u, h, c = lstm_recurrence(xproj, state[0][i], state[1][i], layer.weight_hh)  # u [T, B, H]
            hs.append(h)
            cs.append(c)
        logits = project(self.layers, u, self.decoder.weight, self.decoder.bias)  # [T, B, V]
        return logits, (torch.stack(hs), torch.stack(cs))

    def _projection(self, draws, dropping: bool):
        """``project(site, u Float[T, B, n], W Float[m, n], b Float[m]) -> Float[T, B, m]``: the
        linear map reading dropout site ``site``, with this step's dropout applied."""
        drops = self.spec.drops if dropping else NOTHING
        if drops == ROW:

            def project(site, u, weight, bias):
                return row_projection(u, weight, bias, draws[site])

        elif drops == SHARED_UNITS:
            scale = 1.0 / (1.0 - self.p)

            def project(site, u, weight, bias):
                index = draws[site].to(u.device)
                return gathered_linear(u.index_select(-1, index), weight, bias, index, None, scale)

        else:
            drop = self.p if drops == ELEMENT else 0.0

            def project(site, u, weight, bias):
                return nn.functional.linear(nn.functional.dropout(u, drop, training=drop > 0), weight, bias)

        return project

    def extra_repr(self) -> str:
        return f"vocab={self.vocab}, hidden={self.hidden}, layers={self.layers}, p={self.p}, method={self.method!r}"


class TorchLSTM(nn.Module):
    """The usual PyTorch model: nn.Embedding, nn.Dropout, nn.LSTM(dropout=p), nn.Dropout, nn.Linear;
    same sizes, initialisation and interface as ApproxDropoutLSTM."""

    method = "torch"

    def __init__(self, vocab: int, hidden: int = 650, layers: int = 2, p: float = 0.5, *, embedding=None) -> None:
        super().__init__()
        self.vocab, self.hidden = check_int("vocab", vocab, 1), check_int("hidden", hidden, 1)
        self.layers, self.p = check_int("layers", layers, 1), check_rate(p)
        emb = hidden if embedding is None else check_int("embedding", embedding, 1)
        self.embedding = nn.Embedding(vocab, emb)
        self.dropout = nn.Dropout(self.p)
        self.lstm = nn.LSTM(emb, hidden, layers, dropout=self.p if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab)
        _init_uniform(self)

    init_state = ApproxDropoutLSTM.init_state

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (Long[T, B]), state or None -> (logits Float[T, B, V], new state)."""
        _check_tokens(x, self.vocab)
        if state is None:
            state = self.init_state(x.shape[1], x.device)
        out, state = self.lstm(self.dropout(self.embedding(x)), state)  # [T, B, H]
        return self.decoder(self.dropout(out)), state


def language_model(vocab: int, method: str, hidden: int = 650, layers: int = 2, p: float = 0.5, **kwargs) -> nn.Module:
    """The language model of a method of the table: ``TorchLSTM`` for the row built from PyTorch's
    own modules (``torch``), else ``ApproxDropoutLSTM`` with that method."""
    if get_method(method, "lstm").torch_modules:
        return TorchLSTM(vocab, hidden, layers, p, **kwargs)
    return ApproxDropoutLSTM(vocab, hidden, layers, p, method, **kwargs)
