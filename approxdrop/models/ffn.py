"""ApproxDropoutFFN: a transformer's MLP block, Linear -> activation -> dropout -> Linear, as a drop-in
module whose dropout is a row pattern (docs/method.md): only the kept hidden units are computed, so the
first GEMM computes only the kept output rows and the second reads only the kept input columns.

Its parameters are named as in ``nn.Sequential(Linear, activation, Dropout, Linear)`` (``0.weight``,
``0.bias``, ``3.weight``, ``3.bias``), so a state_dict loads from that block and into it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._env import check_generator, check_int, check_rate
from ..distribution import MAX_GROUPS, PatternDistribution
from ..ops import FULL, grouped_row_pattern_linear_compact, row_pattern_linear, static_grouped_linear
from ..ops.static import static_groups
from ..patterns import RowPattern
from .executor_choice import Probe, choose_executor
from .methods import DROPOUT_METHODS, ELEMENT, NOTHING, ROW, Method
from .parts import must_call, warn_calls_parts
from .sites import (
    DropoutRate,
    ModeInDropout,
    activate,
    check_elementwise,
    check_executor,
    draw_sites,
    run_eagerly,
    sample_groups,
    sample_mask,
    setup_static,
    site_distributions,
    static_sides,
    step_draws,
    store_static,
)

# The methods an FFN offers: the MLP's row-pattern methods and the two baselines (nn.Dropout, none).
FFN_METHODS = tuple(
    name for name, m in DROPOUT_METHODS.items() if "mlp" in m.models and m.drops in (ROW, ELEMENT, NOTHING)
)
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def ffn_method(method: str, groups: int | None, block: str = "ApproxDropoutFFN") -> tuple[Method, int]:
    """The table row of ``method`` and the batch group count (``groups``, or the method's own), else a
    ValueError naming the choices (for ``block``, the class asking)."""
    if method not in FFN_METHODS:
        raise ValueError(f"method must be one of {FFN_METHODS} for {block}, got {method!r}")
    spec = DROPOUT_METHODS[method]
    groups = spec.groups if groups is None else check_int("groups", groups, 1, MAX_GROUPS)
    if groups > 1 and spec.drops != ROW:
        raise ValueError(f"groups={groups}: batch groups are for row-pattern methods, not {method!r}")
    return spec, groups


def make_activation(activation: str | nn.Module) -> nn.Module:
    """A fresh module for a name of ``ACTIVATIONS``, or ``activation`` itself if it acts on each unit
    alone (``sites.check_elementwise``); else a ValueError saying why."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)} or an nn.Module, got {activation!r}")
        return ACTIVATIONS[activation]()
    return check_elementwise(activation)


class ApproxDropoutFFN(ModeInDropout, DropoutRate, nn.Module):
    """``Linear(d_model, d_hidden) -> activation -> dropout(p) -> Linear(d_hidden, d_out)`` on x (Tensor[*, d_model]).

    Args:
        d_model: input width (and output width unless ``d_out`` is given).
        d_hidden: hidden width, where the dropout site is.
        p: dropout rate in [0, 1).
        activation: "gelu", "relu", "silu", "tanh", or an nn.Module acting on each unit alone
            (``sites.is_elementwise``): a row pattern computes only the kept units, and a module that
            mixes units (nn.Softmax, nn.LayerNorm) would see only those, so it is refused.
        method: one of ``FFN_METHODS``: a row-pattern method of the methods table (``row``,
            ``row-extended``, ``row-g4``, ``row-g16``, ``row-extended-g4``), ``bernoulli`` (nn.Dropout) or ``none``.
        groups: batch groups with complementary offsets (row patterns only; docs/method.md §9); default:
            the method's. The groups split the LEADING axis of x as ``torch.tensor_split`` does: the
            samples B of a transformer's [B, T, d_model] (every token of a sample shares its group's
            pattern), the rows N of [N, d_model]; a 1-D x is one sample.
        bias: whether both Linears have a bias.
        distributions: one row PatternDistribution (a sequence of one) for the site; by default
            ``distribution_for(p, d_hidden)`` of the method's family.
        generator: CPU generator for the pattern draws (default: torch's global RNG). Seed it by rank
            under DistributedDataParallel, so each process draws its own patterns. Its state is not in
            ``state_dict()``: checkpoint ``generator.get_state()`` to resume the same pattern stream.
        d_out: output width (default ``d_model``).
        executor: how row patterns run in eager training, "auto" (default), "compact", "masked" or
            "measured", as in ApproxDropoutMLP (``sites.GROUPED_EXECUTORS``); ``executor_for(x)`` says which.
        static_shapes: (row patterns, any groups) run at the shapes the draw's ``(dp, keep)`` sets, the
            offsets read from a buffer, as ApproxDropoutMLP's ``static_shapes``: one compiled or CUDA graph
            per ``(dp, keep)``, not per offset.

    Dropout runs as its nn.Dropout (``dropout``, entry ``2``, which holds ``p``) is set, as nn.Dropout does:
    in its training mode (``model.train()`` / ``model.eval()`` set it with the block's; setting only the
    nn.Dropout's mode, as Monte Carlo dropout does, decides too), and not at ``p = 0`` or with an
    nn.Identity in its place. Eval runs the whole block without dropout. After a training forward,
    ``last_pattern`` holds the step's draw: a RowPattern, a tuple of one per group with ``groups > 1``, or None.
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        p: float,
        activation: str | nn.Module = "gelu",
        method: str = "row",
        groups: int | None = None,
        bias: bool = True,
        distributions: Sequence[PatternDistribution] | None = None,
        generator: torch.Generator | None = None,
        *,
        d_out: int | None = None,
        executor: str = "auto",
        static_shapes: bool = False,
    ) -> None:
        super().__init__()
        d_model, d_hidden = check_int("d_model", d_model, 1), check_int("d_hidden", d_hidden, 1)
        d_out = d_model if d_out is None else check_int("d_out", d_out, 1)
        act = make_activation(activation)
        fc1, fc2 = nn.Linear(d_model, d_hidden, bias), nn.Linear(d_hidden, d_out, bias)
        self._setup(fc1, act, fc2, p, method, groups, executor)
        self._setup_site(distributions, generator, static_shapes)

    @classmethod
    def from_modules(
        cls,
        fc1: nn.Linear,
        activation: str | nn.Module,
        fc2: nn.Linear,
        p: float,
        method: str = "row",
        groups: int | None = None,
        distributions: Sequence[PatternDistribution] | None = None,
        generator: torch.Generator | None = None,
        *,
        executor: str = "auto",
        static_shapes: bool = False,
    ) -> ApproxDropoutFFN:
        """The block built around existing Linears and activation: their Parameter objects are shared,
        not copied, so an optimizer that holds them keeps working (what ``convert`` uses)."""
        for name, linear in (("fc1", fc1), ("fc2", fc2)):
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"{name} must be an nn.Linear, got {type(linear).__name__}")
        if fc1.out_features != fc2.in_features:
            raise ValueError(
                f"Linear sizes do not chain: fc1 gives {fc1.out_features} units, fc2 reads {fc2.in_features}"
            )
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block._setup(fc1, make_activation(activation), fc2, p, method, groups, executor)
        block._setup_site(distributions, generator, static_shapes)
        return block

    def _setup(
        self, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, p, method: str, groups: int | None, executor: str
    ) -> None:
        self.executor = check_executor(executor)
        self.spec, self.groups = ffn_method(method, groups)
        self.method = method
        # the names nn.Sequential(Linear, activation, Dropout, Linear) gives its entries; entry 2 holds p
        self.add_module("0", fc1)
        self.add_module("1", act)
        self.add_module("2", nn.Dropout(check_rate(p)))
        self.add_module("3", fc2)
        self.d_model, self.d_hidden, self.d_out = fc1.in_features, fc1.out_features, fc2.out_features

    def _setup_site(self, distributions: Sequence[PatternDistribution] | None, generator, static_shapes: bool) -> None:
        self.init_laws(distributions)
        self.generator = check_generator(generator)
        self.last_pattern: RowPattern | tuple[RowPattern, ...] | None = None
        setup_static(self, static_shapes, 1)

    def _site_laws(self, p: float, given: Sequence[PatternDistribution] | None) -> list[PatternDistribution] | None:
        return site_distributions(self.spec, p, [self.d_hidden], given)

    @property
    def fc1(self) -> nn.Linear:
        """The first Linear (entry ``0``)."""
        return self._modules["0"]

    @property
    def activation(self) -> nn.Module:
        """The activation (entry ``1``)."""
        return self._modules["1"]

    @property
    def dropout(self) -> nn.Dropout:
        """The nn.Dropout of the ``bernoulli`` method (entry ``2``)."""
        return self._modules["2"]

    @property
    def fc2(self) -> nn.Linear:
        """The second Linear (entry ``3``)."""
        return self._modules["3"]

    def draw(self) -> list:
        """This step's draw for the one site, as a list of one: a RowPattern, or a tuple of one per group."""
        drawn = draw_sites(self.spec, self.p, [self.d_hidden], self.site_laws(), self.generator, self.groups)
        store_static(self, drawn)
        return drawn

    def forward(self, x: torch.Tensor, gate: nn.Linear | None = None) -> torch.Tensor:
        """x (Tensor[*, d_model]) -> Tensor[*, d_out]. ``gate``: a gated block's second input Linear
        (``GatedApproxDropoutFFN``), ``fc2(dropout(act(fc1(x)) * gate(x)))``: its hidden units are dropped
        with fc1's, and every path computes only what fc1 computes."""
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"input must have last dimension {self.d_model}, got shape {tuple(x.shape)}")
        self.last_pattern = None
        drops = self.spec.drops
        if not self.dropout_training or self.p == 0.0 or drops == NOTHING:  # the nn.Dropout's mode
            return self.fc2(self._dense_hidden(x, gate))
        if drops == ELEMENT:
            return self.fc2(self.dropout(self._dense_hidden(x, gate)))
        if self.groups > 1 and not self.static_shapes:
            return self._grouped_step(x, gate)  # eager: Dynamo would guard on the groups' pattern objects
        (draw,) = step_draws(self)  # drawn now, or ahead by draw_patterns (compiled training)
        self.last_pattern = draw
        if self.static_shapes:
            return self._static(x, gate)
        return self._row(x, draw, gate)

    def _calls_parts(self, gate: nn.Linear | None) -> bool:
        """Whether a Linear was wrapped (LoRA), patched or hooked since the block was built, or the activation
        patched or hooked (it would see only the kept units) (``parts.must_call``), so the paths that read the
        weights must call the parts on every unit instead (with a warning). The masked path does anyway: only the
        others ask."""
        act = self.activation
        parts = [(name, part, nn.Linear) for name, part in self._gemm_parts(gate)]
        for name, part, cls in (*parts, ("activation", act, type(act))):
            if (why := must_call(part, cls)) is not None:
                warn_calls_parts(self, name, why)
                return True
        return False

    def _gemm_parts(self, gate: nn.Linear | None) -> tuple[tuple[str, nn.Module | None], ...]:
        """The Linears whose weights the paths that compute only the kept units read, by name (a part None: no
        gate)."""
        return (("fc1", self.fc1), ("fc2", self.fc2), ("gate", gate))

    def _input_weights(self, gate: nn.Linear | None) -> tuple[tuple, tuple | None]:
        """``(weight, bias)`` of fc1 and of the gate (None without one): what those paths read of the input side."""
        fc1 = self.fc1
        return (fc1.weight, fc1.bias), None if gate is None else (gate.weight, gate.bias)

    def _dense_inputs(self, x: torch.Tensor, gate: nn.Linear | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``fc1(x)`` and ``gate(x)`` (None without a gate), Tensor[*, d_hidden] each: every unit, the parts called."""
        return self.fc1(x), None if gate is None else gate(x)

    def _dense_hidden(self, x: torch.Tensor, gate: nn.Linear | None) -> torch.Tensor:
        """Every hidden unit before dropout (Tensor[*, d_hidden]): ``act(fc1(x))``, times ``gate(x)`` if gated."""
        h, gated = self._dense_inputs(x, gate)
        h = activate(self.activation, h)
        return h if gated is None else h * gated

    def _static(self, x: torch.Tensor, gate: nn.Linear | None) -> torch.Tensor:
        if self._calls_parts(gate):
            return self._grouped_masked(x, self.last_pattern if self.groups > 1 else (self.last_pattern,), gate)
        # hidden units in slots, [*, K] whatever the offsets (ops.static); with groups, each group's samples
        # (the leading axis, as the grouped path splits it) read their own group's slots
        (sides,) = static_sides(self, [self.d_hidden])  # one StaticSide per group
        parts = [x] if x.dim() == 1 else static_groups(x, len(sides), 0)  # [B_g, *, d_model], groups with samples
        (w1, b1), gating = self._input_weights(gate)
        sides = sides[: len(parts)]  # a single sample (x 1-D) is group 0's; empty groups get nothing
        whole = (None,) * len(parts)
        hs = static_grouped_linear(parts, w1, b1, whole, sides)  # [B_g, *, K]
        hs = [activate(self.activation, h) for h in hs]
        if gating is not None:
            hs = [h * g for h, g in zip(hs, static_grouped_linear(parts, *gating, whole, sides))]
        fc2 = self.fc2
        ys = static_grouped_linear(hs, fc2.weight, fc2.bias, sides, whole)  # [B_g, *, d_out]
        return ys[0] if len(ys) == 1 else torch.cat(ys, 0)  # [*, d_out]

    def _row(self, x: torch.Tensor, pattern: RowPattern, gate: nn.Linear | None) -> torch.Tensor:
        masked = not torch.compiler.is_compiling() and self.executor_for(x) == "masked"  # GEMMs too small to shrink
        if masked or self._calls_parts(gate):
            return self._grouped_masked(x, (pattern,), gate)  # dense, times the mask
        (w1, b1), gating = self._input_weights(gate)
        h = row_pattern_linear(x, w1, b1, FULL, pattern, check=False)  # [*, k]: the kept units only
        h = activate(self.activation, h)
        if gating is not None:
            h = h * row_pattern_linear(x, *gating, FULL, pattern, check=False)  # [*, k]
        fc2 = self.fc2
        return row_pattern_linear(h, fc2.weight, fc2.bias, pattern, FULL, check=False)  # [*, d_out]

    def executor_for(self, x: torch.Tensor) -> str:
        """How an eager training forward on x runs row patterns: "compact" or "masked" (``executor``), or
        "static" for a ``static_shapes`` model, whatever ``executor``."""
        if self.static_shapes:
            return "static"
        largest = self.d_hidden * max(self.d_model, self.d_out)
        return choose_executor(
            self.executor, x.device, x.dtype, math.prod(x.shape[:-1]), self.groups, largest, self.executor_probe
        )

    def executor_probe(self) -> Probe:
        """The block itself (``executor_choice.Probe``)."""
        return Probe(self.d_model, self.d_hidden, self.d_out, self.site_laws()[0], self.p)

    @run_eagerly
    def _grouped_step(self, x: torch.Tensor, gate: nn.Linear | None) -> torch.Tensor:
        """Row patterns with groups: the draw taken (``step_draws``) and run, all eagerly under torch.compile, so
        Dynamo never reads the patterns (groups of one offset share a pattern object, and a guard on which groups
        share one recompiled the caller at every new sharing until the recompile limit), as the MLP's."""
        (draw,) = step_draws(self)
        self.last_pattern = draw
        return self._grouped(x, draw, gate)

    @run_eagerly
    def _grouped(self, x: torch.Tensor, patterns: tuple[RowPattern, ...], gate: nn.Linear | None) -> torch.Tensor:
        if self.executor_for(x) == "masked" or self._calls_parts(gate):
            return self._grouped_masked(x, patterns, gate)
        parts, patterns = sample_groups(x, patterns)  # [B_g, *, d_model] each, G of them: one GEMM per pair
        whole = (FULL,) * len(parts)
        (w1, b1), gating = self._input_weights(gate)
        hs = grouped_row_pattern_linear_compact(parts, w1, b1, whole, patterns, check=False)  # [B_g, *, k]: kept units
        hs = [activate(self.activation, h) for h in hs]
        if gating is not None:
            gated = grouped_row_pattern_linear_compact(parts, *gating, whole, patterns, check=False)  # [B_g, *, k]
            hs = [h * g for h, g in zip(hs, gated)]
        fc2 = self.fc2
        ys = grouped_row_pattern_linear_compact(hs, fc2.weight, fc2.bias, patterns, whole, check=False)
        return ys[0] if len(ys) == 1 else torch.cat(ys, 0)  # [*, d_out]

    def _grouped_masked(
        self, x: torch.Tensor, patterns: tuple[RowPattern, ...], gate: nn.Linear | None
    ) -> torch.Tensor:
        # dense GEMMs; the hidden units of each sample (the leading axis) multiplied by its group's scaled mask
        h = self._dense_hidden(x, gate)  # [B, *, d_hidden]
        return self.fc2(h * sample_mask(patterns, x, self.d_hidden, h.dtype))  # [*, d_out]

    def extra_repr(self) -> str:
        out = f", d_out={self.d_out}" if self.d_out != self.d_model else ""
        groups = f", groups={self.groups}" if self.groups != self.spec.groups else ""
        static = ", static_shapes=True" if self.static_shapes else ""
        return (
            f"d_model={self.d_model}, d_hidden={self.d_hidden}{out}, p={self.p}, method={self.method!r}{groups}{static}"
        )


class PartsOf(ApproxDropoutFFN):
    """An ApproxDropoutFFN whose Linears (and, where ``DROPOUT`` names one, dropout) are the attributes ``FC1``,
    ``FC2`` and ``DROPOUT`` of the module that holds it (``owner``, a plain attribute, not a child), read at each
    use: a module put in the owner's place later (peft's LoRA Linear, a hook's wrapper, an nn.Identity for the
    dropout) is the one the block runs, each Linear has one name (``torch.func.functional_call`` swaps a module held
    twice twice, and leaves a plain tensor in it), and an identity test of two names does not fail under
    torch.export, which copies modules. Subclasses name the attributes."""

    FC1, FC2, DROPOUT = "fc1", "fc2", ""

    @classmethod
    def of(cls, block: ApproxDropoutFFN, owner: nn.Module) -> PartsOf:
        """``block`` (built around ``owner``'s parts) as the owner's: its own entries for them dropped."""
        for key in ("0", "3", "2") if cls.DROPOUT else ("0", "3"):
            del block._modules[key]
        block.__class__ = cls
        object.__setattr__(block, "owner", owner)  # not a child: the owner holds the block
        return block

    @property
    def fc1(self) -> nn.Linear:
        """The owner's first Linear."""
        return getattr(self.owner, self.FC1)

    @property
    def fc2(self) -> nn.Linear:
        """The owner's second Linear."""
        return getattr(self.owner, self.FC2)

    @property
    def dropout(self) -> nn.Module:
        """The owner's dropout (an nn.Dropout, which holds ``p``, or an nn.Identity: no dropout), or the block's."""
        return getattr(self.owner, self.DROPOUT) if self.DROPOUT else self._modules["2"]
