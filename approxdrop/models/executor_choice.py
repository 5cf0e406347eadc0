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

The probe (``Probe``) is the model's widest dropout site with the linear layers around it, at the law's
most probable ``(dp, keep)`` with complementary group offsets: Linear(n_in -> n_site), ReLU, the site,
Linear(n_site -> n_out) (without the first layer when the site is the model's input).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..distribution import PatternDistribution
from ..ops import FULL, Candidate, Choice, Dispatcher, cuda, grouped_row_pattern_linear_compact, outputs_agree
from ..patterns import RowPattern
from .sites import group_mask, grouped_executor

MEASURED = "measured"  # the executor option that always measures (``sites.GROUPED_EXECUTORS``)
MASKED, COMPACT = "masked", "compact"  # the candidates; masked is the reference: fewer ops, never slower by much


@dataclass(frozen=True)
class Probe:
    """What a model times for its measured executor: its widest dropout site (``n_site`` units, law ``law``,
    rate ``p``) between Linear(n_in -> n_site) and Linear(n_site -> n_out); ``n_in`` None: the site is the
    model's input, no first layer."""

    n_in: int | None
    n_site: int
    n_out: int
    law: PatternDistribution
    p: float


def uses_measurement(executor: str, device: torch.device) -> bool:
    """Whether ``executor`` is chosen by measuring on ``device``: ``measured`` anywhere, ``auto`` on CUDA."""
    return executor == MEASURED or (executor == "auto" and device.type == "cuda")


def choose_executor(
    executor: str,
    x: torch.Tensor,
    rows: int,
    groups: int,
    largest_layer: int,
    probe: Callable[[], Probe | None],
) -> str:
    """ "compact" or "masked" for a training forward over ``rows`` rows of x's dtype and device, split into
    ``groups`` batch groups: ``executor`` itself when it names one, a measured choice where
    ``uses_measurement`` (``probe()``: the model's Probe; None, a model without one: the rule), else the
    rule of ``sites.grouped_executor`` for a largest layer of ``largest_layer`` weights."""
    if executor in (COMPACT, MASKED):
        return executor
    block = probe() if uses_measurement(executor, x.device) else None
    if block is None:
        return grouped_executor("auto", rows, groups, largest_layer)
    return measured_executor(block, row_bucket(rows), groups, x.dtype, x.device)


def row_bucket(rows: int) -> int:
    """The row count a measurement stands for: ``rows`` rounded up to a power of two, so that inputs of many
    lengths (padded batches of text) are measured about log2(rows) times, not once per length."""
    return 1 << max(rows - 1, 0).bit_length()


def measured_executor(probe: Probe, rows: int, groups: int, dtype: torch.dtype, device: torch.device) -> str:
    """The executor that measured faster for ``probe`` on ``rows`` rows in ``groups`` groups (measured on the
    first call of each key, then remembered; on CUDA also on disk, with the GPU dispatch's choices)."""
    candidates = [Candidate(MASKED, _masked_step), Candidate(COMPACT, _compact_step)]
    args = _ProbeArgs(probe, rows, groups, dtype, device)
    with torch.inference_mode(False), torch.enable_grad():  # a training forward under no_grad still probes
        return _dispatcher(device).choose(_key(probe, rows, groups, dtype), candidates, args)


def measured_choice(probe: Probe, rows: int, groups: int, dtype: torch.dtype, device: torch.device) -> Choice | None:
    """``measured_executor``'s decision with its reason and times (None: nothing could be measured, during a
    CUDA graph capture)."""
    measured_executor(probe, rows, groups, dtype, device)
    key = _key(probe, rows, groups, dtype)
    return next((c for c in _dispatcher(device).choices() if c.key == key), None)


def _key(probe: Probe, rows: int, groups: int, dtype: torch.dtype) -> str:
    """What a measurement stands for: the probe's widths and pattern class, the rows, the groups, p, the dtype."""
    first = "-" if probe.n_in is None else probe.n_in
    dp, keep = probe_class(probe.law)
    return (
        f"executor {first}x{probe.n_site}x{probe.n_out} dp={dp} keep={keep} rows={rows} groups={groups} "
        f"p={probe.p:g} {str(dtype).removeprefix('torch.')}"
    )


class _ProbeArgs:
    """The probe's tensors, made on first use (a decision already made never builds them): x (Tensor[rows,
    n_in or n_site]), the layers' weights and biases (requiring grad), one pattern per group."""

    def __init__(self, probe: Probe, rows: int, groups: int, dtype: torch.dtype, device: torch.device) -> None:
        self.probe, self.rows, self.groups, self.dtype, self.device = probe, rows, groups, dtype, device
        self._tensors: tuple | None = None

    def tensors(self) -> tuple:
        """(x, w1, b1, w2, b2, patterns); w1 and b1 None without a first layer."""
        if self._tensors is None:
            p = self.probe
            gen = torch.Generator().manual_seed(0)  # its own: the training's random state is left alone

            def param(*shape: int) -> torch.Tensor:
                t = torch.randn(*shape, generator=gen, dtype=torch.float64) / shape[-1] ** 0.5
                return t.to(self.device, self.dtype).requires_grad_()

            x = torch.randn(self.rows, p.n_site if p.n_in is None else p.n_in, generator=gen)
            first = (None, None) if p.n_in is None else (param(p.n_site, p.n_in), param(p.n_site))
            second = (param(p.n_out, p.n_site), param(p.n_out))
            self._tensors = (x.to(self.device, self.dtype), *first, *second, probe_patterns(p.law, self.groups))
        return self._tensors


def probe_class(law: PatternDistribution) -> tuple[int, int]:
    """The law's most probable ``(dp, keep)``: the class the probe runs."""
    return law.pairs[max(range(len(law.probs)), key=law.probs.__getitem__)]


def probe_patterns(law: PatternDistribution, groups: int) -> tuple[RowPattern, ...]:
    """One pattern per group: the law's ``probe_class``, group g at offset g mod dp (complementary)."""
    dp, keep = probe_class(law)
    return tuple(RowPattern(dp, g % dp, keep) for g in range(groups))


def _grads(y: torch.Tensor, params: list[torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
    """(y, the gradients of y.sum() for the given parameters): what both executors must agree on."""
    present = [t for t in params if t is not None]
    return (y.detach(), *torch.autograd.grad(y.sum(), present))


def _masked_step(args: _ProbeArgs) -> tuple[torch.Tensor, ...]:
    """The probe's forward and backward as the masked executor runs it: dense GEMMs, the site times its
    groups' scaled keep masks."""
    x, w1, b1, w2, b2, patterns = args.tensors()
    h = x if w1 is None else F.relu(F.linear(x, w1, b1))  # [rows, n_site]
    mask = group_mask(patterns, x.shape[0], h.shape[-1], x.dtype, x.device)  # [rows, n_site]
    y = F.linear(h * mask, w2, b2)  # [rows, n_out]
    return _grads(y, [w1, b1, w2, b2])


def _compact_step(args: _ProbeArgs) -> tuple[torch.Tensor, ...]:
    """The probe's forward and backward as the compact executor runs it: each group's kept units only."""
    x, w1, b1, w2, b2, patterns = args.tensors()
    whole = (FULL,) * len(patterns)
    parts = x.tensor_split(len(patterns))  # [B_g, n]
    if w1 is None:
        hs = [part[:, q.selector(part.shape[-1], part.device)] for part, q in zip(parts, patterns)]  # [B_g, k(g)]
    else:
        hs = grouped_row_pattern_linear_compact(parts, w1, b1, whole, patterns, check=False)  # [B_g, k(g)]
        hs = [F.relu(h) for h in hs]
    ys = grouped_row_pattern_linear_compact(hs, w2, b2, patterns, whole, check=False)  # [B_g, n_out]
    y = torch.cat(ys)  # [rows, n_out]
    return _grads(y, [w1, b1, w2, b2])


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
