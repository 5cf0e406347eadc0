"""LSTM language models with Approximate Random Dropout on the non-recurrent connections.

``ApproxDropoutLSTM``: embedding -> ``layers`` LSTM layers -> decoder (Zaremba et al.'s medium
model at the paper-like size 2 x 650). The dropout sites sit where Zaremba's dropout sits: on the
embedding output, between LSTM layers and before the decoder; the recurrent connections h -> h
are never dropped. Site ``i`` feeds LSTM layer ``i`` (``i < layers``) or the decoder.

Methods come from the table ``models.methods.DROPOUT_METHODS`` (one pattern or mask per site per
training step, shared by the whole batch AND all time steps of the step; eval runs the full network):
- row patterns (``row``, ``row-extended``; ``row-g4``, ``row-g16`` with complementary offsets per
  batch group): a RowPattern per site (per group). Each LSTM layer runs on PyTorch's fused LSTM
  (oneDNN on a CPU, cuDNN on a GPU) given only the kept input columns and the matching gathered
  columns of W_ih, so its input GEMM shrinks; the decoder is a row-pattern GEMM
  (``approxdrop::row_linear``).
- per element (``bernoulli``): per-element dropout (``nn.functional.dropout``), full-size GEMMs: the
  standard-dropout twin, the same fused LSTM.
- batch-shared random units (``shared``): batch- and time-shared Bernoulli(p) over units, kept units gathered.
- nothing (``none``): no dropout.

``TorchLSTM`` is the baseline users actually write: ``nn.LSTM(dropout=p)`` with ``nn.Dropout`` on
the embedding and before the decoder (the table's ``torch`` row). ``language_model(method=...)``
builds either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .._env import check_generator, check_int, check_rate, check_token_ids
from ..distribution import MAX_GROUPS, PatternDistribution
from ..ops import (
    FULL,
    StaticSide,
    group_bounds,
    grouped_row_pattern_linear,
    row_pattern_linear,
    static_group_blocks,
    static_grouped_linear,
    static_site,
)
from ..patterns import RowPattern
from ..search import FAMILIES
from .executor_choice import choose_executor, output_and_grads, probe_linear, probe_patterns, row_bucket
from .methods import ELEMENT, NOTHING, ROW, SHARED_UNITS, get_method, methods_for
from .sites import (
    DropoutRate,
    RateInDropout,
    check_executor,
    draw_sites,
    group_mask,
    run_eagerly,
    setup_static,
    site_distributions,
    static_sides,
    step_draws,
    store_static,
    stored_draws,
)

LM_METHODS = methods_for("lstm")  # what language_model builds
LSTM_METHODS = tuple(m for m in LM_METHODS if not get_method(m).torch_modules)  # ApproxDropoutLSTM's
INIT_RANGE = 0.05  # uniform(-0.05, 0.05) for every weight (Zaremba's medium model)

State = tuple[torch.Tensor, torch.Tensor]  # (h Float[layers, B, H], c Float[layers, B, H])


def lstm_recurrence_reference(
    xproj: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer over time given its input projections (bias included), differentiated by
    autograd step by step: the readable reference of ``fused_lstm``.

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


def fused_lstm(
    inp: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer over time on PyTorch's fused LSTM (``torch.lstm``: oneDNN on a CPU, cuDNN on a
    GPU), differentiated by PyTorch. Same result as ``lstm_recurrence_reference`` on
    ``inp @ weight_ih.T + bias``.

    inp (Float[T, B, k]), h, c (Float[B, H]), weight_ih (Float[4H, k]), weight_hh (Float[4H, H]),
    bias (Float[4H]) -> (out Float[T, B, H], h Float[B, H], c Float[B, H]).
    """
    params = [weight_ih, weight_hh, bias, torch.zeros_like(bias)]  # nn.LSTM's b_ih, b_hh: one bias here
    out, h_n, c_n = torch.lstm(inp, (h[None], c[None]), params, True, 1, 0.0, torch.is_grad_enabled(), False, False)
    return out, h_n[0], c_n[0]


def row_site_input(pattern: RowPattern, u: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the GEMM reading a row-pattern site needs: the kept units of u (Float[T, B, n]), scaled by
    dp/keep (Float[T, B, k]), and the matching columns of the reading weight (Float[m, k], gathered once)."""
    sel = pattern.selector(u.shape[-1], u.device)
    cols = weight[:, sel] if isinstance(sel, slice) else weight.index_select(1, sel)
    return u[..., sel] * pattern.scale, cols.contiguous()


def grouped_site_lstm(
    u: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor,
    patterns: Sequence[RowPattern],
    masked: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer reading a site with one row pattern per batch group (u's axis 1 splits as
    ``torch.tensor_split`` does): "compact", each group's batch slice on the fused LSTM with its kept input
    columns and W_ih's matching columns; ``masked``, the whole batch at once, each group's dropped inputs
    zeroed by a scaled mask. Arguments and result as ``fused_lstm``'s."""
    if masked:
        mask = group_mask(patterns, u.shape[1], u.shape[-1], u.dtype, u.device)  # [B, n]
        return fused_lstm(u * mask, h, c, weight_ih, weight_hh, bias)
    parts = []
    for (start, stop), pattern in zip(group_bounds(u.shape[1], len(patterns)), patterns):
        if stop > start:
            inp, w_ih = row_site_input(pattern, u[:, start:stop], weight_ih)  # [T, B_g, k], [4H, k]
            parts.append(fused_lstm(inp, h[start:stop], c[start:stop], w_ih, weight_hh, bias))
    out, h_n, c_n = zip(*parts)
    return torch.cat(out, 1), torch.cat(h_n), torch.cat(c_n)


def grouped_site_decoder(
    u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, patterns: Sequence[RowPattern], masked: bool
) -> torch.Tensor:
    """The decoder reading a site with one row pattern per batch group: u (Float[T, B, H]) -> Float[T, B, V],
    one compact GEMM per distinct pattern, or (``masked``) the dense GEMM on u times the groups' scaled masks."""
    if masked:
        return F.linear(u * group_mask(patterns, u.shape[1], u.shape[-1], u.dtype, u.device), weight, bias)
    return grouped_row_pattern_linear(u, weight, bias, list(patterns), [FULL] * len(patterns), check=False)


@dataclass(frozen=True)
class LSTMProbe:
    """The LSTM's measured-executor probe (``executor_choice.ExecutorProbe``): its last LSTM layer (n_site ->
    hidden) reading a site, and the decoder (hidden -> n_out) reading the next, over ``steps`` time steps;
    both sites drop with law ``law`` at rate ``p``."""

    n_site: int
    hidden: int
    n_out: int
    steps: int
    law: PatternDistribution
    p: float

    def shape_name(self) -> str:
        return f"lstm {self.n_site}x{self.hidden}x{self.n_out} T={self.steps}"

    def tensors(self, rows: int, groups: int, dtype: torch.dtype, device: torch.device) -> tuple:
        """(u Tensor[steps, B, n_site], h, c zeros Tensor[B, hidden], w_ih, w_hh, bias, w_dec, b_dec, patterns)
        with B = rows / steps (at least 1)."""
        gen = torch.Generator().manual_seed(0)  # its own: the training's random state is left alone
        batch = max(1, rows // self.steps)
        u = torch.randn(self.steps, batch, self.n_site, generator=gen).to(device, dtype)
        h = torch.zeros(batch, self.hidden, dtype=dtype, device=device)
        w_ih, bias = probe_linear(4 * self.hidden, self.n_site, gen, dtype, device)
        w_hh = probe_linear(4 * self.hidden, self.hidden, gen, dtype, device)[0]
        w_dec, b_dec = probe_linear(self.n_out, self.hidden, gen, dtype, device)
        return u, h, h.clone(), w_ih, w_hh, bias, w_dec, b_dec, probe_patterns(self.law, groups)

    def masked(self, tensors: tuple) -> tuple[torch.Tensor, ...]:
        return self._run(tensors, masked=True)

    def compact(self, tensors: tuple) -> tuple[torch.Tensor, ...]:
        return self._run(tensors, masked=False)

    def _run(self, tensors: tuple, masked: bool) -> tuple[torch.Tensor, ...]:
        u, h, c, w_ih, w_hh, bias, w_dec, b_dec, patterns = tensors
        out = grouped_site_lstm(u, h, c, w_ih, w_hh, bias, patterns, masked)[0]  # [T, B, hidden]
        y = grouped_site_decoder(out, w_dec, b_dec, patterns, masked)  # [T, B, n_out]
        return output_and_grads(y, [w_ih, w_hh, bias, w_dec, b_dec])


def row_projection(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pattern: RowPattern) -> torch.Tensor:
    """The linear map reading a row-pattern dropout site: only the kept units of u (Float[T, B, n]) and
    W's kept columns (Float[m, n]) enter one compact GEMM, scaled by dp/keep -> Float[T, B, m]."""
    kept = u[..., pattern.selector(u.shape[-1], u.device)]  # [T, B, k]
    return row_pattern_linear(kept, weight, bias, pattern, FULL, check=False)


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
    """ValueError unless x is Long[T, B] with T >= 1 (the fused LSTM needs a time step; B may be 0) and ids in
    [0, vocab). Under torch.compile only the shape and dtype are checked (reading the ids would end the graph;
    the embedding rejects an id out of range), and on meta or fake tokens, which hold no ids."""
    if x.dim() != 2 or x.dtype != torch.long:
        raise ValueError(f"tokens must be a Long tensor [T, B], got {x.dtype} of shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"tokens must hold at least one time step: T must be >= 1, got shape {tuple(x.shape)}")
    check_token_ids(x, vocab)


def _check_state(state: object, shape: tuple[int, int, int], weight: torch.Tensor) -> None:
    """ValueError unless ``state`` is a pair (h, c) of tensors of ``shape`` ([layers, B, H]) on the weight's
    device, with its dtype (any float dtype in an autocast region, which casts): the fused LSTM itself checks
    none of it (a state of another batch can corrupt memory)."""
    if not isinstance(state, (tuple, list)) or len(state) != 2 or not all(isinstance(t, torch.Tensor) for t in state):
        raise ValueError(f"state must be a pair (h, c) of tensors [layers, B, H], got {type(state).__name__}")
    casts = torch.is_autocast_enabled(weight.device.type)
    for name, t in zip("hc", state):
        dtype_ok = t.dtype == weight.dtype or (casts and t.is_floating_point())
        if tuple(t.shape) != shape or not dtype_ok or t.device != weight.device:
            raise ValueError(
                f"state {name} must be {weight.dtype} of shape {list(shape)} ([layers, B, H]) on {weight.device}, "
                f"got {t.dtype} of shape {list(t.shape)} on {t.device}"
            )


# The grouped paths as the LSTM runs them: under torch.compile outside the graph (their GEMMs depend on the
# drawn offsets), as the MLP's and FFN's grouped layers run; static_shapes=True compiles them whole.
_grouped_layer = run_eagerly(grouped_site_lstm)
_grouped_decoder = run_eagerly(grouped_site_decoder)


class ApproxDropoutLSTM(DropoutRate, nn.Module):
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
        groups: batch groups with complementary offsets (row patterns only; docs/method.md §9): the
            batch splits as ``torch.tensor_split`` does, each group keeps its own pattern over all
            time steps. Default: the method's (1 for ``row``).
        executor: how grouped row patterns run, "auto" (default), "compact" (each group's batch slice on
            its kept input columns), "masked" (the whole batch at once, each group's dropped inputs zeroed by
            a scaled mask) or "measured", as in ApproxDropoutMLP (``sites.GROUPED_EXECUTORS``);
            ``executor_for(x)`` says which. "auto" follows the CPU-measured rule on a CPU and measures on
            CUDA, timing ``executor_probe``: the last LSTM layer and the decoder, both ways.
        static_shapes: (row patterns, any groups) each site's units in ``keep * ceil(n / dp)`` slots whatever
            the offsets, read from the ``static_offsets`` buffer each draw fills, as ApproxDropoutMLP's
            ``static_shapes``: one compiled or CUDA graph per ``(dp, keep)`` combination of the sites.
        generator: CPU generator for pattern and mask draws (default: torch's global RNG);
            ``bernoulli`` drops per element from the global RNG, as nn.Dropout does. Its state is not in
            ``state_dict()``: checkpoint ``generator.get_state()`` to resume the same pattern stream.

    ``forward(x Long[T, B], state)`` -> (logits Float[T, B, V], state). After a training forward,
    ``last_patterns`` holds what each site drew (a RowPattern, a tuple of one per group with
    ``groups > 1``, a Long index tensor of kept units for ``shared``, or None).
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
        groups: int | None = None,
        executor: str = "auto",
        static_shapes: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = get_method(method, "lstm")
        self.executor = check_executor(executor)
        self.groups = self.spec.groups if groups is None else check_int("groups", groups, 1, MAX_GROUPS)
        if self.groups > 1 and self.spec.drops != ROW:
            raise ValueError(f"groups={self.groups}: batch groups are for row-pattern methods, not {method!r}")
        if self.spec.torch_modules:
            raise ValueError(f"method {method!r} is nn.LSTM + nn.Dropout: build it with TorchLSTM or language_model")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        self.family = family or self.spec.family
        self.vocab, self.hidden = check_int("vocab", vocab, 1), check_int("hidden", hidden, 1)
        self.layers = check_int("layers", layers, 1)
        self.emb_size = hidden if embedding is None else check_int("embedding", embedding, 1)
        self.method, self.generator = method, check_generator(generator)
        rate = check_rate(p)
        self.embedding = nn.Embedding(vocab, self.emb_size)
        self.lstm = nn.ModuleList(LSTMLayer(self.emb_size if i == 0 else hidden, hidden) for i in range(layers))
        self.decoder = nn.Linear(hidden, vocab)
        self.dropout = nn.Dropout(rate)  # holds p (sites.DropoutRate)
        _init_uniform(self)
        self.site_widths = [self.emb_size] + [hidden] * layers
        self.init_laws(distributions)
        self.last_patterns: list = [None] * len(self.site_widths)
        setup_static(self, static_shapes, len(self.site_widths))

    def _site_laws(self, p: float, given: Sequence[PatternDistribution] | None) -> list[PatternDistribution] | None:
        return site_distributions(self.spec, p, self.site_widths, given, family=self.family)

    def init_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero (h, c), each Float[layers, batch, H]."""
        weight = self.decoder.weight
        shape = (self.layers, batch, self.hidden)
        zeros = torch.zeros(shape, device=device or weight.device, dtype=dtype or weight.dtype)
        return zeros, zeros.clone()

    def draw(self) -> list:
        """This step's pattern (row) or kept units (shared) for every site; None for the others."""
        drawn = draw_sites(self.spec, self.p, self.site_widths, self.site_laws(), self.generator, self.groups)
        store_static(self, drawn)
        return drawn

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (Long[T, B]), state (h, c) or None for zeros -> (logits Float[T, B, V], new state)."""
        _check_tokens(x, self.vocab)
        if state is None:
            state = self.init_state(x.shape[1], x.device)
        _check_state(state, (self.layers, x.shape[1], self.hidden), self.decoder.weight)
        dropping = self.training and self.spec.drops != NOTHING and check_rate(self.p) > 0.0  # a schedule's p
        draws = step_draws(self) if dropping else [None] * len(self.site_widths)
        self.last_patterns = stored_draws(draws)
        drops = self.spec.drops if dropping else NOTHING
        sides = static_sides(self, self.site_widths) if drops == ROW and self.static_shapes else None
        masked = drops == ROW and self.groups > 1 and sides is None and self.executor_for(x) == "masked"
        u = self.embedding(x)  # [T, B, E]
        hs, cs = [], []
        for i, layer in enumerate(self.lstm):
            h, c = state[0][i], state[1][i]
            if sides is None:
                u, h, c = self._layer(drops, draws[i], u, h, c, layer, masked)  # u [T, B, H]
            else:
                u, h, c = self._static_layer(sides[i], u, h, c, layer)
            hs.append(h)
            cs.append(c)
        logits = self._decode(drops, draws[-1], u, masked) if sides is None else self._static_decode(sides[-1], u)
        return logits, (torch.stack(hs), torch.stack(cs))  # logits [T, B, V]

    def _site_input(self, drops: str, draw, u: torch.Tensor, weight: torch.Tensor):
        """What the GEMM reading a dropout site needs: the site's units after this step's dropout
        (Float[T, B, k]: only the kept ones, scaled, for row patterns and shared units) and the
        matching columns of the reading weight (Float[m, k], gathered once per step)."""
        if drops == ROW:
            return row_site_input(draw, u, weight)
        if drops == SHARED_UNITS:
            index = draw.to(u.device)
            return u.index_select(-1, index) / (1.0 - self.p), weight.index_select(1, index)
        drop = self.p if drops == ELEMENT else 0.0
        return nn.functional.dropout(u, drop, training=drop > 0), weight

    def executor_for(self, x: torch.Tensor) -> str:
        """How a training forward on tokens x (Long[T, B]) runs grouped row patterns: "compact" or "masked"
        (``executor``), or "static" for a ``static_shapes`` model, whatever ``executor``."""
        if self.static_shapes:
            return "static"
        largest = max(4 * self.hidden * max(self.emb_size, self.hidden), self.vocab * self.hidden)
        weight = self.decoder.weight
        return choose_executor(
            self.executor, weight.device, weight.dtype, x.numel(), self.groups, largest,
            lambda: self.executor_probe(x.shape[0]),
        )  # fmt: skip

    def executor_probe(self, steps: int) -> LSTMProbe | None:
        """The last LSTM layer and the decoder over ``steps`` time steps (rounded up to a power of two), at the
        last site's law (``LSTMProbe``); None for a method without row patterns."""
        laws = self.site_laws()
        if laws is None:
            return None
        return LSTMProbe(self.site_widths[-2], self.hidden, self.vocab, row_bucket(steps), laws[-1], self.p)

    def _layer(self, drops: str, draw, u, h, c, layer: LSTMLayer, masked: bool):
        """One LSTM layer reading site ``draw`` on the fused LSTM; with batch groups, each group's
        batch slice runs with its own kept columns, or (``masked``) the whole batch with each group's
        dropped inputs zeroed (``grouped_site_lstm``)."""
        grouped = self.groups > 1 and drops == ROW
        if grouped and (masked or u.shape[1] > 0):  # an empty batch: no group holds a sample, one pattern serves
            return _grouped_layer(u, h, c, layer.weight_ih, layer.weight_hh, layer.bias, draw, masked)
        inp, w_ih = self._site_input(drops, draw[0] if grouped else draw, u, layer.weight_ih)
        return fused_lstm(inp, h, c, w_ih, layer.weight_hh, layer.bias)

    def _decode(self, drops: str, draw, u: torch.Tensor, masked: bool) -> torch.Tensor:
        """The decoder reading the last site: u (Float[T, B, H]) -> logits (Float[T, B, V])."""
        weight, bias = self.decoder.weight, self.decoder.bias
        if drops == ROW and self.groups > 1:
            return _grouped_decoder(u, weight, bias, draw, masked)
        if drops == ROW:
            return row_projection(u, weight, bias, draw)
        inp, w = self._site_input(drops, draw, u, weight)
        return nn.functional.linear(inp, w, bias)

    def _static_layer(self, sides: tuple[StaticSide, ...], u, h, c, layer: LSTMLayer):
        """One LSTM layer at shapes free of the offsets: each group's batch slice (u's axis 1, as
        ``torch.tensor_split`` splits it) reads its site's slots, [T, B_g, keep * ceil(n / dp)], and the
        matching columns of W_ih."""
        groups = len(sides)
        w_ihs = static_group_blocks(layer.weight_ih, sides, (None,) * groups)  # [4H, K] per group
        parts = []
        for ug, hg, cg, side, w_ih in zip(
            u.tensor_split(groups, 1), h.tensor_split(groups), c.tensor_split(groups), sides, w_ihs
        ):
            parts.append(fused_lstm(static_site(ug, side) * side.scale, hg, cg, w_ih, layer.weight_hh, layer.bias))
        out, h_n, c_n = zip(*parts)
        return torch.cat(out, 1), torch.cat(h_n), torch.cat(c_n)

    def _static_decode(self, sides: tuple[StaticSide, ...], u: torch.Tensor) -> torch.Tensor:
        """The decoder on each group's slots of the last site: u (Float[T, B, H]) -> logits (Float[T, B, V])."""
        weight, bias = self.decoder.weight, self.decoder.bias
        slots = [static_site(ug, side) for ug, side in zip(u.tensor_split(len(sides), 1), sides)]  # [T, B_g, K]
        parts = static_grouped_linear(slots, weight, bias, sides, (None,) * len(sides))  # [T, B_g, V]
        return torch.cat(parts, 1)

    def extra_repr(self) -> str:
        sizes = f"vocab={self.vocab}, hidden={self.hidden}, layers={self.layers}"
        static = ", static_shapes=True" if self.static_shapes else ""
        return f"{sizes}, p={self.p}, method={self.method!r}{static}"


class TorchLSTM(RateInDropout, nn.Module):
    """The usual PyTorch model: nn.Embedding, nn.Dropout, nn.LSTM(dropout=p), nn.Dropout, nn.Linear;
    same sizes, initialisation and interface as ApproxDropoutLSTM. Its rate ``p`` lives in ``dropout``, as
    the ARD models' does (``sites.RateInDropout``): setting ``model.p``, or the p of every nn.Dropout (a rate
    schedule), also sets nn.LSTM's float between its layers at the next forward."""

    method = "torch"

    def __init__(
        self, vocab: int, hidden: int = 650, layers: int = 2, p: float = 0.5, *, embedding: int | None = None
    ) -> None:
        super().__init__()
        self.vocab, self.hidden = check_int("vocab", vocab, 1), check_int("hidden", hidden, 1)
        self.layers, p = check_int("layers", layers, 1), check_rate(p)
        emb = hidden if embedding is None else check_int("embedding", embedding, 1)
        self.embedding = nn.Embedding(vocab, emb)
        self.dropout = nn.Dropout(p)
        self.lstm = nn.LSTM(emb, hidden, layers, dropout=p if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab)
        _init_uniform(self)

    init_state = ApproxDropoutLSTM.init_state

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (Long[T, B]), state or None -> (logits Float[T, B, V], new state)."""
        _check_tokens(x, self.vocab)
        if state is None:
            state = self.init_state(x.shape[1], x.device)
        if self.layers > 1:  # nn.LSTM reads this float at each call: keep it at the model's rate
            self.lstm.dropout = check_rate(self.p)  # nn.Dropout takes any p it is given
        out, state = self.lstm(self.dropout(self.embedding(x)), state)  # [T, B, H]
        return self.decoder(self.dropout(out)), state


def language_model(vocab: int, method: str, hidden: int = 650, layers: int = 2, p: float = 0.5, **kwargs) -> nn.Module:
    """The language model of a method of the table: ``TorchLSTM`` for the row built from PyTorch's
    own modules (``torch``), else ``ApproxDropoutLSTM`` with that method. ``generator=None`` is taken by
    both; a generator is refused (ValueError) for ``torch``, whose nn.Dropout and nn.LSTM draw from
    torch's global RNG (seed it with ``torch.manual_seed``)."""
    if get_method(method, "lstm").torch_modules:
        if kwargs.pop("generator", None) is not None:
            raise ValueError(
                "generator must be None for method 'torch': nn.Dropout and nn.LSTM draw from torch's global RNG "
                "(seed it with torch.manual_seed)"
            )
        return TorchLSTM(vocab, hidden, layers, p, **kwargs)
    return ApproxDropoutLSTM(vocab, hidden, layers, p, method, **kwargs)
