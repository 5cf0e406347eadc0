"""Which row-pattern executor a training forward runs: ``compact`` or ``masked`` (``sites.GROUPED_EXECUTORS``),
by a rule or by measuring both on the model's own device.

The rule of ``executor="auto"`` (``sites.grouped_executor``) was measured on a CPU. On a GPU a GEMM is a
hundred to a thousand times faster while each op's host cost stays about the same, so where the compact
GEMMs pay for their extra ops is not known in advance (docs/design.md, "Host cost"). There ``auto``
measures instead, as the GPU dispatch of the ops does (``ops.dispatch``): on the first training forward
of each key (the probe's shape and pattern class, the rows, the groups, p and the dtype) it times one
forward and backward of a probe block both ways, checks that both give the same numbers, keeps
``compact`` only when it is 5% faster, and says which runs and why in one line. Rows are measured in
powers of two (``row_bucket``). ``executor="measured"`` does the same on any device (a CPU other than the
one the rule was measured on). The probe draws nothing from the global or the model's random state.

A probe (``ExecutorProbe``) is a small block of the model run at the law's most probable ``(dp, keep)`` with
complementary group offsets. The MLP's and the FFN's (``Probe``) is their widest dropout site with the linear
layers around it: Linear(n_in -> n_site), ReLU, the site, Linear(n_site -> n_out) (without the first layer
when the site is the model's input). The LSTM's (``models.lstm.LSTMProbe``) is its last LSTM layer reading a
site and the decoder reading the next one, over the step's time steps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.nn import functional as F

from ..distribution import PatternDistribution
from ..ops import FULL, Candidate, Choice, Dispatcher, cuda, grouped_row_pattern_linear_compact, outputs_agree
from ..patterns import RowPattern
from .sites import group_mask, grouped_executor

MEASURED = "measured"  # the executor option that always measures (``sites.GROUPED_EXECUTORS``)
MASKED, COMPACT = "masked", "compact"  # the candidates; masked is the reference: fewer ops, never slower by much


class ExecutorProbe(Protocol):
    """What a model times for its measured executor: a block with dropout sites of law ``law`` at rate ``p``,
    run one forward and backward with each executor on tensors it makes (``tensors``); both runs return the
    output and every parameter's gradient, which must agree."""

    law: PatternDistribution
    p: float

    def shape_name(self) -> str:
        """The block's sizes, for the key and the line said (e.g. "784x2048x10")."""
        ...

    def tensors(self, rows: int, groups: int, dtype: torch.dtype, device: torch.device) -> tuple:
        """The block's input and parameters (requiring grad) for ``rows`` rows in ``groups`` groups, drawn from
        a generator of its own, and one pattern per group (``probe_patterns``)."""
        ...

    def masked(self, tensors: tuple) -> tuple[torch.Tensor, ...]:
        """The masked executor's (output, *gradients)."""
        ...

    def compact(self, tensors: tuple) -> tuple[torch.Tensor, ...]:
        """The compact executor's (output, *gradients)."""
        ...


@dataclass(frozen=True)
class Probe:
    """The MLP's and the FFN's probe: their widest dropout site (``n_site`` units, law ``law``, rate ``p``)
    between Linear(n_in -> n_site) and Linear(n_site -> n_out); ``n_in`` None: the site is the model's input,
    no first layer."""

    n_in: int | None
    n_site: int
    n_out: int
    law: PatternDistribution
    p: float

    def shape_name(self) -> str:
        return f"{'-' if self.n_in is None else self.n_in}x{self.n_site}x{self.n_out}"

    def tensors(self, rows: int, groups: int, dtype: torch.dtype, device: torch.device) -> tuple:
        """(x Tensor[rows, n_in or n_site], w1, b1, w2, b2, patterns); w1 and b1 None without a first layer."""
        gen = torch.Generator().manual_seed(0)  # its own: the training's random state is left alone
        x = torch.randn(rows, self.n_site if self.n_in is None else self.n_in, generator=gen)
        first = (None, None) if self.n_in is None else probe_linear(self.n_site, self.n_in, gen, dtype, device)
        second = probe_linear(self.n_out, self.n_site, gen, dtype, device)
        return (x.to(device, dtype), *first, *second, probe_patterns(self.law, groups))

    def masked(self, tensors: tuple) -> tuple[torch.Tensor, ...]:
        """Dense GEMMs, the site times its groups' scaled keep masks."""
        x, w1, b1, w2, b2, patterns = tensors
        h = x if w1 is None else F.relu(F.linear(x, w1, b1))  # [rows, n_site]
        mask = group_mask(patterns, x.shape[0], h.shape[-1], x.dtype, x.device)  # [rows, n_site]
        y = F.linear(h * mask, w2, b2)  # [rows, n_out]
        return output_and_grads(y, [w1, b1, w2, b2])

    def compact(self, tensors: tuple) -> tuple[torch.Tensor, ...]:
        """Each group's kept units only."""
        x, w1, b1, w2, b2, patterns = tensors
        whole = (FULL,) * len(patterns)
        parts = x.tensor_split(len(patterns))  # [B_g, n]
        if w1 is None:
            hs = [part[:, q.selector(part.shape[-1], part.device)] for part, q in zip(parts, patterns)]  # [B_g, k(g)]
        else:
            hs = grouped_row_pattern_linear_compact(parts, w1, b1, whole, patterns, check=False)  # [B_g, k(g)]
            hs = [F.relu(h) for h in hs]
        ys = grouped_row_pattern_linear_compact(hs, w2, b2, patterns, whole, check=False)  # [B_g, n_out]
        y = torch.cat(ys)  # [rows, n_out]
        return output_and_grads(y, [w1, b1, w2, b2])


def uses_measurement(executor: str, device: torch.device) -> bool:
    """Whether ``executor`` is chosen by measuring on ``device``: ``measured`` anywhere, ``auto`` on CUDA."""
    return executor == MEASURED or (executor == "auto" and device.type == "cuda")


def choose_executor(
    executor: str,
    device: torch.device,
    dtype: torch.dtype,
    rows: int,
    groups: int,
    largest_layer: int,
    probe: Callable[[], ExecutorProbe | None],
) -> str:
    """ "compact" or "masked" for a training forward over ``rows`` rows of ``dtype`` on ``device``, split into
    ``groups`` batch groups: ``executor`` itself when it names one, a measured choice where
    ``uses_measurement`` (``probe()``: the model's probe; None, a model without one: the rule), else the
    rule of ``sites.grouped_executor`` for a largest layer of ``largest_layer`` weights. While torch.compile
    traces, nothing is timed: the rule decides."""
    if executor in (COMPACT, MASKED):
        return executor
    measure = uses_measurement(executor, device) and not torch.compiler.is_compiling()
    block = probe() if measure else None
    if block is None:
        return grouped_executor("auto", rows, groups, largest_layer)
    return measured_executor(block, row_bucket(rows), groups, dtype, device)


def row_bucket(rows: int) -> int:
    """The row count a measurement stands for: ``rows`` rounded up to a power of two, so that inputs of many
    lengths (padded batches of text) are measured about log2(rows) times, not once per length."""
    return 1 << max(rows - 1, 0).bit_length()


def measured_executor(probe: ExecutorProbe, rows: int, groups: int, dtype: torch.dtype, device: torch.device) -> str:
    """The executor that measured faster for ``probe`` on ``rows`` rows in ``groups`` groups (measured on the
    first call of each key, then remembered; on CUDA also on disk, with the GPU dispatch's choices)."""
    candidates = [Candidate(MASKED, _masked_step), Candidate(COMPACT, _compact_step)]
    args = _ProbeArgs(probe, rows, groups, dtype, device)
    with torch.inference_mode(False), torch.enable_grad():  # a training forward under no_grad still probes
        return _dispatcher(device).choose(_key(probe, rows, groups, dtype), candidates, args)


def measured_choice(
    probe: ExecutorProbe, rows: int, groups: int, dtype: torch.dtype, device: torch.device
) -> Choice | None:
    """``measured_executor``'s decision with its reason and times (None: nothing could be measured, during a
    CUDA graph capture)."""
    measured_executor(probe, rows, groups, dtype, device)
    key = _key(probe, rows, groups, dtype)
    return next((c for c in _dispatcher(device).choices() if c.key == key), None)


def _key(probe: ExecutorProbe, rows: int, groups: int, dtype: torch.dtype) -> str:
    """What a measurement stands for: the probe's sizes and pattern class, the rows, the groups, p, the dtype."""
    dp, keep = probe_class(probe.law)
    return (
        f"executor {probe.shape_name()} dp={dp} keep={keep} rows={rows} groups={groups} "
        f"p={probe.p:g} {str(dtype).removeprefix('torch.')}"
    )


class _ProbeArgs:
    """The probe's tensors, made on first use (a decision already made never builds them)."""

    def __init__(self, probe: ExecutorProbe, rows: int, groups: int, dtype: torch.dtype, device: torch.device):
        self.probe, self.rows, self.groups, self.dtype, self.device = probe, rows, groups, dtype, device
        self._tensors: tuple | None = None

    def tensors(self) -> tuple:
        """``probe.tensors(...)``, made once."""
        if self._tensors is None:
            self._tensors = self.probe.tensors(self.rows, self.groups, self.dtype, self.device)
        return self._tensors


def probe_linear(
    n_out: int, n_in: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A probe's Linear(n_in -> n_out): (weight Tensor[n_out, n_in], bias Tensor[n_out]), requiring grad,
    drawn from ``gen`` with std 1/sqrt(n_in) (the weight) and 1 (the bias)."""

    def param(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) / shape[-1] ** 0.5
        return t.to(device, dtype).requires_grad_()

    return param(n_out, n_in), param(n_out)


def probe_class(law: PatternDistribution) -> tuple[int, int]:
    """The law's most probable ``(dp, keep)``: the class the probe runs."""
    return law.pairs[max(range(len(law.probs)), key=law.probs.__getitem__)]


def probe_patterns(law: PatternDistribution, groups: int) -> tuple[RowPattern, ...]:
    """One pattern per group: the law's ``probe_class``, group g at offset g mod dp (complementary)."""
    dp, keep = probe_class(law)
    return tuple(RowPattern(dp, g % dp, keep) for g in range(groups))


def output_and_grads(y: torch.Tensor, params: list[torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
    """(y, the gradients of y.sum() for the given parameters, None left out): what both executors must agree
    on."""
    present = [t for t in params if t is not None]
    return (y.detach(), *torch.autograd.grad(y.sum(), present))


def _masked_step(args: _ProbeArgs) -> tuple[torch.Tensor, ...]:
    """The probe's forward and backward as the masked executor runs it."""
    return args.probe.masked(args.tensors())


def _compact_step(args: _ProbeArgs) -> tuple[torch.Tensor, ...]:
    """The probe's forward and backward as the compact executor runs it."""
    return args.probe.compact(args.tensors())


def host_timer(fn: Callable[[], object], warmup: int = 1, iters: int = 5) -> float:
    """Milliseconds per call of ``fn`` on the host: the median of ``iters`` calls after ``warmup``. The median,
    not the fastest: a call that reuses freshly freed memory can run far faster than the steady state (a
    2048-wide masked probe: 63 ms against a median of 76-83 ms), and one or two calls that stall on a busy CPU
    do not decide either. On a CPU busy past its cores every call stalls and no timing helps: there the
    default ``auto`` keeps the rule, and ``measured`` is as noisy as the machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


_HOST = Dispatcher(None, timer=host_timer, check=outputs_agree)  # the CPU's choices, kept in memory


def _dispatcher(device: torch.device) -> Dispatcher:
    """The dispatcher that measures and remembers choices on ``device``: the GPU dispatch's on CUDA."""
    return cuda.dispatcher(device) if device.type == "cuda" else _HOST
