"""What every model with dropout sites shares: the pattern law of each site, this step's draws (drawn
in the forward, or ahead of it by ``draw_patterns`` for compiled and graphed training), the gathered
linear map of batch-shared random units, and the check that an activation between sites acts on each
unit alone."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn

from .._env import check_rate, outside_fake_mode, tensor_cache
from ..distribution import RATE_TOL, PatternDistribution, sample_sites
from ..ops import StaticSide, group_bounds, static_side
from ..patterns import RowPattern
from ..search import distribution_for
from .methods import ROW, SHARED_UNITS, TILE, Method

# nn module types that act on each unit alone. nn.PReLU counts with one shared parameter only (with
# one per channel it would pair the kept units with the wrong channels' parameters).
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Tanhshrink,
    nn.Softplus,
    nn.Softsign,
    nn.Threshold,
)
# Elementwise activation classes of optional packages, by "module.QualName" (nothing is imported).
# Never a softmax-like or normalising one, nor one with a parameter per unit.
ELEMENTWISE_NAMES: frozenset[str] = frozenset(
    [
        f"transformers.activations.{name}"
        for name in (
            "GELUActivation",
            "NewGELUActivation",
            "FastGELUActivation",
            "QuickGELUActivation",
            "AccurateGELUActivation",
            "GELUTanh",
            "PytorchGELUTanh",
            "ClippedGELUActivation",
            "SiLUActivation",
            "MishActivation",
            "LaplaceActivation",
            "ReLUSquaredActivation",
            "LinearActivation",
        )
    ]
    + [
        f"timm.layers.{module}.{name}"
        for module in ("activations", "activations_me")
        for name in (
            "Swish",
            "Mish",
            "Sigmoid",
            "Tanh",
            "HardSwish",
            "HardSigmoid",
            "HardMish",
            "GELU",
            "GELUTanh",
            "QuickGELU",
            "SwishMe",
            "MishMe",
            "HardSwishMe",
            "HardSigmoidMe",
            "HardMishMe",
        )
    ]
    + ["timm.models.metaformer.StarReLU", "timm.models.metaformer.SquaredReLU"]  # scale * relu(x)**2 + bias
)
# nn.PReLU subclasses of optional packages that keep its one-slope-per-channel forward (timm's adds an unused
# ``inplace``): elementwise with one parameter, as nn.PReLU itself
PRELU_NAMES: frozenset[str] = frozenset(["timm.layers.activations.PReLU"])


def is_elementwise(module: nn.Module) -> bool:
    """True when ``module`` is known to act on each unit alone: its type is one of ``ELEMENTWISE``
    (exactly, not a subclass) or its "module.QualName" is in ``ELEMENTWISE_NAMES`` (transformers and
    timm activations), an ``nn.PReLU`` (or one of ``PRELU_NAMES``) with one parameter, an ``nn.Sequential``
    of such modules, or a module that declares itself with the attribute ``elementwise = True``."""
    if getattr(module, "elementwise", False) is True:
        return True
    cls = type(module)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls is nn.PReLU or name in PRELU_NAMES:
        return module.num_parameters == 1
    if cls is nn.Sequential:
        return all(is_elementwise(child) for child in module)
    return cls in ELEMENTWISE or name in ELEMENTWISE_NAMES


def type_name(module: nn.Module, qualified: bool = False) -> str:
    """``nn.LayerNorm`` for torch.nn's classes, the bare class name for others, or with ``qualified`` its
    "module.QualName" (peft's LoRA class is called Linear too)."""
    cls = type(module)
    if cls.__module__.startswith("torch.nn."):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}" if qualified else cls.__name__


def slope_problem(activation: nn.Module) -> str | None:
    """Why a PReLU with a slope per unit cannot run on the kept units only, or None for any other module."""
    cls = type(activation)
    if (cls is nn.PReLU or f"{cls.__module__}.{cls.__qualname__}" in PRELU_NAMES) and activation.num_parameters > 1:
        return (
            f"{type_name(activation)} has {activation.num_parameters} slopes, one per unit: run on the kept units "
            "only, they would not line up with their slopes (a PReLU with one parameter is elementwise)"
        )
    return None


def check_elementwise(activation: object, name: str = "activation") -> nn.Module:
    """``activation`` if it is an nn.Module that acts on each unit alone (``is_elementwise``), else
    a ValueError saying why: a row pattern (or batch-shared units) computes only the kept units, so
    a module that mixes units, such as nn.Softmax or nn.LayerNorm, would see only those."""
    if not isinstance(activation, nn.Module):
        raise ValueError(f"{name} must be an nn.Module acting on each unit alone (e.g. nn.ReLU()), got {activation!r}")
    if slope_problem(activation) is not None:
        raise ValueError(f"{name}: {slope_problem(activation)}")
    if not is_elementwise(activation):
        raise ValueError(
            f"{name} {type_name(activation)} is not a known elementwise module: it may mix units, and with row "
            f"patterns (or batch-shared units) it would see only the kept units. Use one of "
            f"{', '.join(t.__name__ for t in ELEMENTWISE)} (or PReLU with one parameter), or set "
            f"`elementwise = True` on a module of your own that acts on each unit alone"
        )
    return activation


def activate(activation: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``activation(h)`` on a pattern op's output. An in-place activation (``inplace=True``, e.g.
    ``nn.ReLU(inplace=True)``) acts on a copy: the op's output may be a view of the op's own buffer,
    which autograd does not let a later in-place op modify. The copy is the memory traffic an
    out-of-place activation makes anyway."""
    return activation(h.clone() if getattr(activation, "inplace", False) else h)


# How a layer with row patterns runs (``executor=``): "compact" runs one GEMM per distinct (out offset,
# in offset) pair on the kept units only (one pair with one group); "masked" runs the layer's dense GEMM
# once and multiplies each group's rows by its scaled keep mask (the same numbers: the same units are
# dropped, with the same law); "auto" takes "compact" only where it measured faster (benchmarks/overhead.md,
# this project's 2-core CPU, one thread, p = 0.5, MLP [w, w, w, 10]): with groups, from
# MASKED_BELOW_MACS = 2**25 multiply-adds in the model's largest layer per step (G = 4) AND at least
# MIN_GROUP_ROWS = 16 rows per group (at 8 rows per group, batch 32, masked was 0.84-0.98x nn.Dropout's
# step and compact 1.00-1.17x; at 16 rows compact 0.70-0.75x and masked 0.88-0.95x, w = 1024-2048); with
# one group, from MASKED_BELOW_MACS_ONE_GROUP = 2**22 and MIN_ROWS_ONE_GROUP = 8 rows (compact was
# 1.1-1.5x the masked step up to 2**21, 0.80-0.89x at 2**23 and 0.54-0.75x above, at batch 8, 32 and
# 128). Below, the compact GEMMs cost more host time and gathers than they save. That rule is for CPUs: on
# CUDA "auto" measures both executors on the model's own shapes instead, and "measured" does so on any
# device (``models.executor_choice``).
GROUPED_EXECUTORS = ("auto", "compact", "masked", "measured")
MASKED_BELOW_MACS = 2**25
MASKED_BELOW_MACS_ONE_GROUP = 2**22
MIN_GROUP_ROWS = 16
MIN_ROWS_ONE_GROUP = 8


def check_executor(executor: str) -> str:
    """``executor`` if it is one of ``GROUPED_EXECUTORS``, else a ValueError naming the choices."""
    if executor not in GROUPED_EXECUTORS:
        raise ValueError(f"executor must be one of {GROUPED_EXECUTORS}, got {executor!r}")
    return executor


def grouped_executor(executor: str, rows: int, groups: int, largest_layer: int) -> str:
    """ "compact" or "masked": what a row-pattern forward over ``rows`` rows (all groups together) runs, for
    a model whose largest layer has ``largest_layer`` weights by the CPU-measured rule (see
    ``GROUPED_EXECUTORS``)."""
    if executor != "auto":
        return executor
    if groups > 1:
        least, fewest = MASKED_BELOW_MACS, MIN_GROUP_ROWS * groups
    else:
        least, fewest = MASKED_BELOW_MACS_ONE_GROUP, MIN_ROWS_ONE_GROUP
    compact = rows * largest_layer >= least and rows >= fewest
    return "compact" if compact else "masked"


@tensor_cache(maxsize=1024)
def group_mask(
    patterns: tuple[RowPattern, ...], batch: int, n: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Tensor[batch, n]: row b holds ``scale * keep_mask(n)`` of the pattern of b's group (the batch split into
    ``len(patterns)`` groups as torch.tensor_split splits it). Made once per draw and shape, then reused:
    read it, never write to it."""
    rows = [
        (q.keep_mask(n, device).to(dtype) * q.scale).expand(stop - start, n)
        for (start, stop), q in zip(group_bounds(batch, len(patterns)), patterns)
    ]
    return torch.cat(rows)  # [batch, n]


def sample_groups(
    x: torch.Tensor, patterns: tuple[RowPattern, ...]
) -> tuple[list[torch.Tensor], tuple[RowPattern, ...]]:
    """x (Tensor[B, *, d]) split into its batch groups along the LEADING axis as torch.tensor_split does (views
    [B_g, *, d]; trailing groups empty when B < G), with each group's pattern; a 1-D x is one sample, group 0's."""
    if x.dim() == 1:
        return [x], patterns[:1]
    return list(x.tensor_split(len(patterns), 0)), patterns


def sample_mask(patterns: tuple[RowPattern, ...], x: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The scaled keep masks of ``patterns`` for an activation Tensor[*, n] computed from x (Tensor[*, d]), the
    groups splitting x's leading axis (a 1-D x is one sample, group 0's): broadcastable to [*, n]."""
    mask = group_mask(patterns, x.shape[0] if x.dim() > 1 else 1, n, dtype, x.device)  # [B, n]
    return mask[0] if x.dim() == 1 else mask.view(mask.shape[0], *(1,) * (x.dim() - 2), n)


def shared_keep_indices(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Long[k]: units kept by one batch-shared Bernoulli(p) draw over ``n`` units."""
    return (torch.rand(n, generator=generator) >= p).nonzero().flatten()


def gathered_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_index: torch.Tensor | None,
    out_index: torch.Tensor | None,
    in_scale: float,
) -> torch.Tensor:
    """``in_scale * x @ W[out_index][:, in_index].T + b[out_index]`` with gathers (autograd
    scatters the gradient back). ``None`` for an index means every unit of that side."""
    if out_index is not None:
        weight = weight.index_select(0, out_index)
        bias = None if bias is None else bias.index_select(0, out_index)
    if in_index is not None:
        weight = weight.index_select(1, in_index)
    y = nn.functional.linear(x, weight)
    if in_scale != 1.0:
        y = y * in_scale
    return y if bias is None else y + bias.to(y.dtype)  # y's dtype under autocast too, as nn.Linear's


class RateInDropout:
    """A model's dropout rate ``p``, kept in the model's ``dropout`` (an nn.Dropout child), so a schedule that
    sets the ``p`` of every nn.Dropout of a model, as training scripts do, changes this model's rate too;
    setting ``model.p`` sets it there."""

    dropout: nn.Dropout

    @property
    def p(self) -> float:
        """The dropout rate, in [0, 1): the ``p`` of ``dropout``; 0 where ``dropout`` was replaced by an
        nn.Identity (the usual way to switch a dropout off); a TypeError for another module without ``p``
        (not an AttributeError, which nn.Module's attribute lookup would swallow into a misleading one)."""
        dropout = self.dropout
        if isinstance(dropout, nn.Identity):
            return 0.0
        try:
            return dropout.p
        except AttributeError:
            raise TypeError(_not_a_dropout(self, dropout)) from None

    @p.setter
    def p(self, value: float) -> None:
        dropout = self.dropout
        if not hasattr(dropout, "p"):
            raise TypeError(_not_a_dropout(self, dropout) + "; put an nn.Dropout back to set a rate")
        dropout.p = check_rate(value)


def _not_a_dropout(model: nn.Module, dropout: object) -> str:
    """The message for a model whose ``dropout`` holds something without a rate."""
    return (
        f"{type(model).__name__}.dropout is {type(dropout).__name__}, which has no p: the block reads its "
        "dropout rate from that module; put an nn.Dropout there (set its p = 0 to switch dropout off), "
        "or an nn.Identity (no dropout)"
    )


class ModeInDropout:
    """A block whose dropout runs as its ``dropout`` child's mode says (ApproxDropoutFFN, OutputRowDropout:
    the blocks ``convert`` makes around a model's own nn.Dropout)."""

    dropout: nn.Module

    @property
    def dropout_training(self) -> bool:
        """Whether a forward drops: the train / eval mode of ``dropout`` (the nn.Dropout that holds ``p``), as
        for nn.Dropout itself, whatever the block's own mode: ``model.eval()`` then ``.train()`` on every
        nn.Dropout (Monte Carlo dropout) drops, ``.eval()`` on every nn.Dropout of a model in training mode
        does not. ``model.train()`` / ``model.eval()`` set both."""
        return self.dropout.training


class DropoutRate(RateInDropout):
    """A model's dropout rate ``p`` and its sites' pattern laws, kept in step. ``p`` lives in the model's
    ``dropout`` (``RateInDropout``): a rate schedule or ``model.p = ...`` sets it. The laws are
    searched again at the next draw after ``p`` changes (``site_laws``; each new rate runs the search once,
    then it is cached). Laws given at construction hold for their own rate only. A model calls
    ``init_laws`` once its sites exist, and its ``_site_laws(p, given)`` makes the laws of a rate
    (``site_distributions`` with its sites' sizes)."""

    distributions: list[PatternDistribution] | None

    def init_laws(self, given: Sequence[PatternDistribution] | None) -> None:
        """The sites' laws for the rate p: ``given`` after checks, else searched."""
        self.distributions = self._site_laws(self.p, given)
        self._laws_rate, self._laws_given = self.p, given is not None

    def site_laws(self) -> list[PatternDistribution] | None:
        """``distributions`` for the current ``p``: searched again if ``p`` changed since they were made;
        a ValueError if they were given at construction for another rate."""
        p = self.p
        if p != self._laws_rate:
            check_rate(p)  # nn.Dropout takes any p it is given
            if self._laws_given:
                raise ValueError(
                    f"p is now {p}, but this model's pattern laws were given for p = {self._laws_rate} "
                    "(distributions=...): build it again with laws for the new rate"
                )
            return _laws_for_new_rate(self, p)
        return self.distributions


_NEW_RATE_ADVICE = (
    "a new dropout rate's pattern laws are searched in Python, which a compiled graph cannot hold: under "
    "torch.compile(fullgraph=True), set p, then call approxdrop.draw_patterns(model) before the forward (it "
    "searches and draws outside the graph)"
)


def _search_laws(model: DropoutRate, p: float) -> list[PatternDistribution] | None:
    """``model``'s sites' laws for the new rate ``p``, kept on it."""
    model.distributions, model._laws_rate = model._site_laws(p, None), p
    return model.distributions


# Under torch.compile the search runs outside the graph (a graph break; fullgraph=True: an error saying what to do)
_laws_for_new_rate = torch.compiler.disable(_search_laws, reason=_NEW_RATE_ADVICE)


def site_distributions(
    m: Method,
    p: float,
    law_sizes: Sequence[int],
    given: Sequence[PatternDistribution] | None,
    tile: int = 32,
    family: str | None = None,
) -> list[PatternDistribution] | None:
    """One pattern law per site for a pattern method (None for the others): ``given`` after checks
    (kind and tile; expected rate ``p`` to ``RATE_TOL``; the site's size when the law records its
    ``n``), else the searched default of each site. ``law_sizes`` is what each site's law is built
    for (unit count for rows, tile count of the reading weight for tiles); ``family`` overrides the
    method's own."""
    kind = m.pattern_kind
    if kind is None:
        if given is not None:
            raise ValueError(f"distributions are for pattern methods, not {m.name!r}")
        return None
    if given is None:
        family = family or m.family
        return [distribution_for(p, n, kind=kind, tile=tile, family=family) for n in law_sizes]
    given = list(given)
    if len(given) != len(law_sizes):
        raise ValueError(f"need one distribution per dropout site ({len(law_sizes)}), got {len(given)}")
    units = "units" if kind == "row" else f"tiles ({tile} x {tile}) in the weight reading it"
    for i, (d, size) in enumerate(zip(given, law_sizes)):
        if not isinstance(d, PatternDistribution) or d.kind != kind:
            raise ValueError(f"method {m.name!r} needs {kind} PatternDistributions, got {d!r}")
        if m.drops == TILE and d.tile != tile:
            raise ValueError(f"distribution tile {d.tile} differs from the model's tile {tile}")
        if not abs(d.expected_rate - p) <= RATE_TOL:
            raise ValueError(
                f"distributions[{i}] has expected rate {d.expected_rate:.9g}, not the model's p={p} "
                f"(tolerance {RATE_TOL:g}): build the model with p={d.expected_rate:.9g} or give a law of rate p"
            )
        if d.n is not None and d.n != size:
            raise ValueError(f"distributions[{i}] was built for n={d.n}, but its site has {size} {units}")
    return given


# Where ``draw_patterns`` leaves a module's draws for its next training forward.
PENDING = "_pending_draws"
PENDING_RATE = "_pending_rate"  # the p a pending draw was made at
REPLAY = "_replay_draws"  # the Replays of the calls since pending draws were taken, for their recomputation in backward
DRAWN = (ROW, TILE, SHARED_UNITS)  # the kinds of method that draw something each step
_COMPILE_ADVICE = (
    "a training forward under torch.compile(fullgraph=True) cannot draw its dropout pattern inside the "
    "graph (the draw is Python choices that set the GEMM shapes): call approxdrop.draw_patterns(model) "
    "before each compiled step, outside the compiled function. A module called several times in one forward (a "
    "block shared by layers) gets one draw there, for its first call: give each place its own block, or compile "
    "without fullgraph=True"
)


# Why the grouped paths of the models are left out of torch.compile graphs (torch.compiler.disable).
GROUPED_COMPILE_REASON = (
    "grouped row and tile patterns run eagerly under torch.compile (the GEMMs they run depend on the drawn "
    "offsets); for a fullgraph=True model build grouped row patterns with static_shapes=True, or use one "
    'pattern per batch (method="row" or "tile")'
)


def check_drawable(generator: torch.Generator | None) -> None:
    """Raise a RuntimeError where a draw made now would be frozen into a recording: under
    ``torch.jit.trace`` (the trace would replay this one pattern at every call) and during CUDA graph
    capture (every replay would reuse it); or where it would differ from the draw it must repeat: from a
    module's own ``generator`` inside a backward pass (activation checkpointing recomputing the forward)."""
    if generator is not None and torch._C._current_graph_task_id() != -1:
        raise RuntimeError(
            "this training forward runs inside a backward pass (activation checkpointing recomputes it): a "
            "pattern drawn now from the module's own generator would not be the one the first forward drew, and "
            "the gradients would be wrong. Build the module with generator=None, or convert with "
            "ad.convert(model, generator=None): the global random state, which checkpointing saves and restores, "
            "so the recomputed forward draws the same pattern"
        )
    if torch.jit.is_tracing():
        raise RuntimeError(
            "torch.jit.trace would freeze this training step's dropout pattern into the trace (every call would "
            "reuse it): trace the model in eval mode (model.eval(), no dropout), or train under torch.compile "
            "with approxdrop.draw_patterns(model) before each step"
        )
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "a dropout pattern drawn during CUDA graph capture would be replayed at every replay: call "
            "approxdrop.draw_patterns(model) before capturing, and capture one graph per pattern_key(model) "
            "(README, 'Compiled and graphed training')"
        )


VMAP_ADVICE = (
    "torch.func.vmap(..., randomness='different') would give every sample its own pattern, but ARD draws one "
    "pattern per step for the whole batch: use randomness='same' (per-sample gradients then see the step's "
    "pattern, as the samples of a batch do)"
)


GROUPS_VMAP_ADVICE = (
    "torch.func.vmap over a model with batch groups (groups > 1, e.g. the MLP's default row-g4): a vmapped "
    "function sees one sample, which cannot know its batch group, so every sample would get group 0's pattern "
    "and the per-sample gradients would not add up to the batch step's: build the model with groups=1 (method "
    "'row') for per-sample gradients"
)


def _in_vmap() -> bool:
    """Whether this runs inside a torch.func.vmap (one C call when no torch.func transform is active)."""
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    from torch._functorch.pyfunctorch import coerce_cinterpreter

    interpreters = map(coerce_cinterpreter, torch._C._functorch.get_interpreter_stack() or [])
    return any(i.key() == torch._C._functorch.TransformType.Vmap for i in interpreters)


def _vmap_with_different_randomness() -> bool:
    """Whether this runs inside a torch.func.vmap with ``randomness="different"`` (a random op there draws per
    sample, and a draw's ``tolist`` fails)."""
    if torch._C._functorch.maybe_current_level() is None:  # no torch.func transform
        return False
    from torch._functorch.pyfunctorch import coerce_cinterpreter

    interpreters = map(coerce_cinterpreter, torch._C._functorch.get_interpreter_stack() or [])
    return any(getattr(i, "randomness", lambda: None)() == "different" for i in interpreters)


def draw_sites(
    m: Method,
    p: float,
    widths: Sequence[int],
    distributions: Sequence[PatternDistribution] | None,
    generator: torch.Generator | None,
    groups: int = 1,
) -> list:
    """This step's draw for every site: a pattern (pattern methods; a tuple of one pattern per batch
    group when ``groups > 1``), a Long index tensor of kept units (batch-shared random units), or
    None (nothing is drawn). Pattern draws take one call of the generator for all sites
    (``distribution.sample_sites``). A real draw is never traced by torch.compile (a graph break; an
    error that says what to do under ``fullgraph=True``), and raises a RuntimeError under
    ``torch.jit.trace`` or CUDA graph capture (``check_drawable``)."""
    if distributions is None and m.drops != SHARED_UNITS:
        return [None] * len(widths)
    if torch.compiler.is_compiling():
        return _draw_outside_graph(m, p, widths, distributions, generator, groups)
    return _draw(m, p, widths, distributions, generator, groups)


def _draw(m: Method, p: float, widths, distributions, generator, groups: int) -> list:
    """``draw_sites`` for a method that draws something (real draws under a FakeTensorMode too)."""
    check_drawable(generator)
    try:
        if distributions is not None:
            return outside_fake_mode(sample_sites, distributions, groups, generator)
        return [outside_fake_mode(shared_keep_indices, w, p, generator) for w in widths]
    except RuntimeError as error:  # asked about only on failure: the question costs a step 1% of its host time
        if _vmap_with_different_randomness():
            raise RuntimeError(VMAP_ADVICE) from error
        raise


_draw_outside_graph = torch.compiler.disable(_draw, reason=_COMPILE_ADVICE)


def run_eagerly(fn):
    """``fn`` as it is, except that under torch.compile it runs outside the graph (a graph break; under
    ``fullgraph=True`` an error giving ``GROUPED_COMPILE_REASON``): the grouped paths, whose GEMMs depend on
    the drawn offsets. Only a training forward runs them, so under torch.export they raise ``step_draws``'
    advice (some take the step's draws themselves, and the graph break would come first). Eager calls pay
    nothing for the wrapper but one check."""
    outside = torch.compiler.disable(fn, reason=GROUPED_COMPILE_REASON)

    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            if torch.compiler.is_exporting():
                raise ValueError(EXPORT_ADVICE)
            return outside(*args, **kwargs)
        return fn(*args, **kwargs)

    return functools.wraps(fn)(call)


def drops_now(module: nn.Module) -> bool:
    """Whether ``module``'s training forward drops: the mode of its nn.Dropout for a block whose mode
    follows it (``dropout_training``: ApproxDropoutFFN, OutputRowDropout), else ``module.training``."""
    return module.dropout_training if isinstance(module, ModeInDropout) else module.training


def draws_each_step(module: nn.Module) -> bool:
    """True for a module of this package (it has a methods-table ``spec`` and a ``draw()``) that draws a
    pattern or mask at each training forward: in training mode, with ``p > 0`` and a drawing method. Not
    the wrapper ``torch.compile(module)`` makes, which only passes attributes through to the module it holds."""
    spec = getattr(module, "spec", None)
    return (
        isinstance(spec, Method)
        and not compile_wrapper(module)
        and callable(getattr(module, "draw", None))
        and drops_now(module)
        and getattr(module, "p", 0.0) > 0.0
        and spec.drops in DRAWN
    )


def compile_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is the OptimizedModule of ``torch.compile(model)``: it holds the model as its child
    ``_orig_mod`` and passes attribute lookups through to it, so it looks like the model but is not a second
    one."""
    return isinstance(module, torch._dynamo.eval_frame.OptimizedModule)


def draw_patterns(model: nn.Module) -> int:
    """Draw the next training step's patterns of every dropout module in ``model`` (itself included) now,
    outside any compiled region: each module's next training forward uses them, once, and draws anew
    after that. Call it before each step of a model compiled with ``fullgraph=True`` (or captured in a
    CUDA graph). The draws are the ones the forward would make (same generator, same order), so a
    compiled run matches an eager one from the same generator state. Returns how many modules drew.

    When ``model`` holds a module that draws, it turns on ``torch._dynamo.config.allow_unspec_int_on_nn_module``
    for the rest of the process (a model without one leaves Dynamo's settings alone): the pattern integers
    are read from the modules, and Dynamo would otherwise burn each pattern into its own graph (a
    recompile per pattern, and a hard failure at the recompile limit under ``fullgraph=True``); with it,
    an integer that changes becomes symbolic, so a compiled forward recompiles a few times in all
    (README). The compiled steps that follow need it on, so it is not restored; to scope it, run the
    training loop inside ``torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True)``."""
    count = 0
    for module in model.modules():
        if draws_each_step(module):
            setattr(module, PENDING, module.draw())
            setattr(module, PENDING_RATE, module.p)
            count += 1
    if count:
        torch._dynamo.config.allow_unspec_int_on_nn_module = True
    return count


EXPORT_ADVICE = (
    "torch.export of a training-mode ARD model: its forward draws a new pattern on the host every step, and an "
    "exported program would replay one draw forever; export it in eval mode (model.eval()), or export the ops "
    "(ad.row_pattern_linear, ...) with fixed patterns"
)


def step_draws(module: nn.Module) -> list:
    """The draws of ``module``'s training forward: those ``draw_patterns`` left on it (taken, so each is
    used once), else ``module.draw()`` now; also now when ``p`` changed since that draw (a schedule between
    ``draw_patterns`` and the forward: the old draw's patterns and scale belong to the old rate).

    A forward that activation checkpointing recomputes inside the backward pass gets the pending draw its
    first run took again (a draw made now would be another pattern than the output's); a first run that
    drew for itself is repeated by checkpointing's restored random state, as any other random op is. A
    module called several times in one forward (a block shared by layers), or in several forwards before one
    backward, keeps a record of its calls since it took each pending draw (``Replays``): each recomputed
    call is matched to the call it repeats."""
    if torch.compiler.is_exporting():
        raise ValueError(EXPORT_ADVICE)
    eager = not torch.compiler.is_compiling()
    if getattr(module, "groups", 1) > 1 and eager and _in_vmap():  # Dynamo cannot trace the functorch stack
        raise RuntimeError(GROUPS_VMAP_ADVICE)
    record = module.__dict__.get(REPLAY) if eager else None
    in_backward = eager and torch._C._current_graph_task_id() != -1
    if record is not None and in_backward:
        draws = record.take(module)
        if draws is None:
            return module.draw()  # drew for itself: again, from the restored state (a static module stores it)
        store_static(module, [d for d in draws if d is not None])  # where a static-shape forward reads it too
        return draws
    pending = getattr(module, PENDING, None)
    if pending is not None:
        setattr(module, PENDING, None)
        if getattr(module, PENDING_RATE, module.p) != module.p:
            pending = None
        elif eager and getattr(module, "static_shapes", False) and torch._C._functorch.peek_interpreter_stack() is None:
            store_static(module, [d for d in pending if d is not None])  # a buffer sync (DDP's) may have written others
    if eager and not in_backward:  # plain attributes, without Module.__setattr__
        if pending is not None:
            module.__dict__.setdefault(REPLAY, Replays()).start(module, pending)
        elif record is not None:
            record.add(module)
    return module.draw() if pending is None else pending


class Replay:
    """The calls of a module's forward since it took one pending draw of ``draw_patterns``, in call order: for
    each, the state of the random generator it draws from (the global one, which checkpointing restores
    before it recomputes a forward; none for a module's own generator, which it does not restore) and the
    draw it took (the pending one), or None where it drew for itself. A recomputed call gets the call with
    its generator state (the first not yet replayed, in call order), or, without one, the first call not
    yet replayed: so a block called twice in one checkpointed forward, or once in each of several
    checkpointed layers, gets the pending draw at the call that took it, and draws again (the same draw,
    from the restored state) at the others. At most ``LIMIT`` calls: a record that would hold more is ``full``,
    and ``Replays`` drops it (its pending draw is that many calls old). Not told apart: calls in different
    checkpointed segments with the same generator state (no random op between them, the first taking the
    pending draw), which backward recomputes in reverse order."""

    LIMIT = 256

    def __init__(self, module: nn.Module, pending: list) -> None:
        self.calls: list[tuple[torch.Tensor | None, list | None]] = [(_generator_state(module), pending)]
        self.replayed: set[int] = set()

    def add(self, module: nn.Module) -> None:
        """Record a call that drew for itself."""
        self.calls.append((_generator_state(module), None))

    def full(self) -> bool:
        """Whether the record holds ``LIMIT`` calls."""
        return len(self.calls) >= self.LIMIT

    def holds(self, state: torch.Tensor) -> bool:
        """Whether a call of this record ran from generator state ``state``."""
        return any(s is not None and torch.equal(s, state) for s, _ in self.calls)

    def done(self) -> bool:
        """Whether every call was replayed."""
        return len(self.replayed) == len(self.calls)

    def take(self, module: nn.Module) -> list | None:
        """The draws of the recorded call a recomputed call repeats: the pending draw, or None where that call
        drew for itself (the record holds one call at least, the one that took the pending draw)."""
        state = _generator_state(module)
        same = [i for i, (s, _) in enumerate(self.calls) if s is None or state is None or torch.equal(s, state)]
        if not same:  # the state was not restored (checkpoint(..., preserve_rng_state=False)): call order
            same = list(range(len(self.calls)))
        left = [i for i in same if i not in self.replayed]
        if not left:  # every such call was replayed: a new recomputation (another backward)
            self.replayed.difference_update(same)
            left = same
        self.replayed.add(left[0])
        return self.calls[left[0]][1]


class Replays:
    """A module's ``Replay`` records of its last ``LIMIT`` pending draws, newest last: several forwards may
    each take a draw before one backward recomputes them all (two forwards of one batch compared, as R-Drop
    does; gradient accumulation over checkpointed forwards). A recomputed call goes to the newest record
    holding its restored generator state; without one (a module's own generator, or the state not restored),
    to the newest record with a call not yet replayed, as backward recomputes the later forward first."""

    LIMIT = 16

    def __init__(self) -> None:
        self.records: list[Replay] = []

    def start(self, module: nn.Module, pending: list) -> None:
        """Record a call that took a pending draw."""
        self.records = [*self.records[1 - self.LIMIT :], Replay(module, pending)]

    def add(self, module: nn.Module) -> None:
        """Record a call that drew for itself (it belongs to the newest pending draw). Once the newest record is
        full, every record is dropped: each pending draw is ``Replay.LIMIT`` calls old or older, its backward
        long done (one ``draw_patterns`` and then plain training, each call drawing for itself)."""
        if not self.records:
            return
        self.records[-1].add(module)
        if self.records[-1].full():
            self.records = []

    def take(self, module: nn.Module) -> list | None:
        """``Replay.take`` on the record the recomputed call repeats a call of; None (the call drew for
        itself) when no record is left."""
        if not self.records:
            return None
        state = _generator_state(module)
        held = [r for r in self.records if state is not None and r.holds(state)]
        if not held:
            held = [r for r in self.records if not r.done()] or self.records
        return held[-1].take(module)


def _generator_state(module: nn.Module) -> torch.Tensor | None:
    """The state of the global random generator, which ``module`` draws from (None: it has its own)."""
    return torch.default_generator.get_state() if getattr(module, "generator", None) is None else None


def stored_draws(draws: list) -> list:
    """``draws`` as a module keeps them after its forward (``last_patterns``): a kept-unit index drawn inside a
    torch.func transform is a functorch wrapper, kept as the plain tensor inside it, so that the module still
    copies and saves."""
    if torch.compiler.is_compiling():
        return draws
    return [_unwrapped(d) if isinstance(d, torch.Tensor) else d for d in draws]


def _unwrapped(t: torch.Tensor) -> torch.Tensor:
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def pattern_key(model: nn.Module) -> tuple:
    """A hashable key of the draws ``draw_patterns`` left on ``model``'s modules (in module order), for
    one CUDA graph per key: equal keys mean the same captured kernels and shapes. A module built with
    ``static_shapes=True`` is keyed by each site's ``(dp, keep)`` (its offsets are read from a buffer),
    any other by its patterns. A ValueError when a drawing module has no pending draw (call
    ``draw_patterns`` first) or draws batch-shared units (an index tensor, not a few integers: no finite
    set of graphs)."""
    key = []
    for name, module in model.named_modules():
        if not draws_each_step(module):
            continue
        pending = getattr(module, PENDING, None)
        if pending is None:
            raise ValueError(f"module {name or type(module).__name__!r} has no pending draw: call draw_patterns first")
        if module.spec.drops == SHARED_UNITS:
            raise ValueError(
                f"module {name or type(module).__name__!r} draws batch-shared units ({module.spec.name!r}): an "
                "index tensor of random length, which no finite set of graphs covers"
            )
        if getattr(module, "static_shapes", False):  # shapes set by (dp, keep): the offsets live in a buffer
            key.append(tuple(static_class(q) for q in pending))
        else:
            key.append(tuple(pending))
    return tuple(key)


# ----------------------------------------------------------------------------- static shapes
# A row-pattern module may run at shapes set by each site's (dp, keep) alone (ops.static): its draws store
# the classes as plain ints (a compiled graph guards on them) and the offsets, one per batch group, in a
# buffer (a graph reads it), so one graph serves every offset of a class.


def setup_static(module: nn.Module, static_shapes: bool, sites: int) -> None:
    """Set ``module.static_shapes``; when True, also the ``static_classes`` each draw sets and the
    non-persistent ``static_offsets`` buffer (Long[sites, groups]) it fills. A ValueError for a module that
    does not draw row patterns. An eager forward that takes a draw of ``draw_patterns`` writes it again (a
    buffer sync may have come between); a compiled or graphed one reads the buffer as it is, so under
    DistributedDataParallel use ``forward_sync_buffers=False`` there (``broadcast_buffers=False`` before torch
    2.13): each rank reads its own offsets."""
    module.static_shapes = bool(static_shapes)
    if not module.static_shapes:
        return
    if module.spec.drops != ROW:
        raise ValueError(f"static_shapes is for row patterns, not method={module.method!r}")
    module.static_classes = ()
    module.register_buffer("static_offsets", torch.zeros(sites, module.groups, dtype=torch.long), persistent=False)


def groups_of(draw: RowPattern | tuple[RowPattern, ...]) -> tuple[RowPattern, ...]:
    """A site's draw as one pattern per group (a one-group module draws a bare pattern)."""
    return draw if isinstance(draw, tuple) else (draw,)


def store_static(module: nn.Module, drawn: Sequence) -> None:
    """Put a draw of row patterns (one per site, or one tuple of one per group) where a static-shape
    forward reads it (one small host-to-device copy); nothing for another module or a step that drew
    nothing. The groups of a site share ``(dp, keep)``: only their offsets differ."""
    if module.static_shapes and drawn and None not in drawn:
        if torch._C._functorch.peek_interpreter_stack() is not None:  # inside torch.func.grad, vmap, ...
            raise ValueError(
                "a static_shapes model writes each draw into its static_offsets buffer, which a torch.func "
                "transform may not write: call ad.draw_patterns(model) before the transform (its forward then "
                "runs that draw)"
            )
        module.static_classes = tuple(static_class(q) for q in drawn)
        module.static_offsets.copy_(torch.tensor([[q.offset for q in groups_of(site)] for site in drawn]))


def static_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` built with ``static_shapes=True`` (not torch.compile's wrapper, which only
    passes the attribute through from the module it holds)."""
    return [m for m in model.modules() if getattr(m, "static_shapes", False) and not compile_wrapper(m)]


def static_graph_bound(model: nn.Module) -> int:
    """Most graphs a compiled forward of ``model`` needs for its static-shape modules: the product over
    their sites of each law's ``(dp, keep)`` classes (1 for a model without one)."""
    bound = 1
    for module in static_modules(model):
        bound *= math.prod(len(law_classes(law)) for law in module.site_laws())
    return bound


def law_classes(law: PatternDistribution) -> tuple[tuple[int, int], ...]:
    """The ``(dp, keep)`` classes a law draws (probability > 0): what sets a static site's shapes."""
    return tuple(pair for pair, q in zip(law.pairs, law.probs) if q > 0)


def static_class(draw: RowPattern | tuple[RowPattern, ...] | None) -> tuple[int, int] | None:
    """A site's ``(dp, keep)``, which sets a static-shape module's shapes (None where it drew nothing)."""
    if draw is None:
        return None
    first = groups_of(draw)[0]
    return first.dp, first.keep


def static_sides(module: nn.Module, widths: Sequence[int | None]) -> list[tuple[StaticSide, ...] | None]:
    """The slots of each site of a static-shape module, one StaticSide per batch group (None where
    ``widths`` has no site), from the stored classes and the offsets' buffer, never from pattern objects."""
    classes, offsets = iter(module.static_classes), iter(module.static_offsets)
    sides: list[tuple[StaticSide, ...] | None] = []
    for n in widths:
        if n is None:
            sides.append(None)
            continue
        (dp, keep), group_offsets = next(classes), next(offsets)  # group_offsets: Long[groups]
        sides.append(tuple(static_side(n, dp, keep, offset, check=False) for offset in group_offsets))
    return sides
