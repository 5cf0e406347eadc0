"""Adapters: how ``convert`` finds the ``Linear -> activation -> dropout -> Linear`` feed-forward of one
kind of module and routes its forward through a block (an ApproxDropoutFFN; a GatedApproxDropoutFFN for
a gated one; an OutputRowDropout for ``Linear -> Dropout`` on request), keyed by module class.

An adapter's ``plan(module, build)`` returns a ``Plan``: the blocks it would make (``build`` makes one
from a ``Chain``, or says why not), the dropouts it leaves alone with the reason, and an ``apply`` that
changes the module. Nothing changes before ``apply``, so a failed check leaves the model as it was. An
adapter with ``replaces = True`` plans on a child: its ``apply`` returns the module that takes the
child's place in its parent.

Register one for a class of your own with ``register_adapter(MyLayer, adapter)`` (README, convert). A module of
a class with none registered is read by its layout: BART's (``FunctionalDropoutAdapter.fits``), Llama's gated MLP
with no dropout (``GatedAdapter.fits``: given a rate, convert adds one), and with ``output_side`` a ``Linear ->
Dropout`` pair its forward shows (``found_output_side``).
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from .ffn import ApproxDropoutFFN, PartsOf
from .gated import GatedApproxDropoutFFN, HoldsFFN, PackedGatedApproxDropoutFFN
from .output_side import OutputRowDropout
from .parts import activation_problem, gemm_problem, hook_problem, type_name
from .state_keys import Entry

# what a second convert does to a block already there (convert's report says it for every kind of block)
KEPT_AS_IS = "left as it is, whatever p, method and groups convert is given (set its p to change the rate)"


@dataclass
class Chain:
    """One feed-forward found in a module: ``fc2(dropout_p(activation(fc1(x))))``. ``activation`` is a
    module or a function such as ``F.relu``; ``dropout`` the dropout module (None where the forward
    calls ``F.dropout``); ``members`` the names of the parts in the module, for the reasons."""

    fc1: nn.Module
    activation: nn.Module | Callable
    fc2: nn.Module
    p: float
    dropout: nn.Module | None
    members: tuple[str, ...]


class Build(Protocol):
    """What ``convert`` gives an adapter: ``build(chain)`` makes the block of a feed-forward, or says why
    not; ``build.output(linear, dropout, members)`` makes the OutputRowDropout of a ``linear -> dropout``
    pair (output side), or says why not (also when ``convert`` was not asked for output-side dropout)."""

    p: float | None  # the rate given to convert, if any

    def __call__(self, chain: Chain) -> ApproxDropoutFFN | str: ...

    def output(self, linear: nn.Module, dropout: nn.Module, members: tuple[str, str]) -> OutputRowDropout | str: ...


@dataclass
class Plan:
    """What an adapter would do to one module: blocks by the key they get (relative to the module),
    dropouts left alone ``(key, reason)``, the dropouts the plan speaks for, the key moves for its
    state_dict (``state_keys``), and the change itself."""

    converted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # keys (as they are now) of the dropouts it speaks for
    moved: list[Entry] = field(default_factory=list)
    apply: Callable[[], nn.Module | None] | None = None
    no_dropout: str | None = None  # for a feed-forward with no dropout: what a rate given to convert does with it


class Adapter:
    """Base class: ``name`` (shown in the report), ``plan``. ``replaces``: the module is swapped in its
    parent for what ``apply`` returns."""

    name = "adapter"
    replaces = False

    def plan(self, module: nn.Module, build: Build) -> Plan:
        raise NotImplementedError


class SequentialAdapter(Adapter):
    """nn.Sequential, and every subclass that keeps Sequential's forward (torchvision.ops.MLP): runs of
    four entries ``Linear, activation, nn.Dropout, Linear`` collapse into one block at the first Linear's
    key, and with ``output_side`` pairs ``Linear, nn.Dropout`` into one OutputRowDropout; default keys
    "0", "1", ... are renumbered (as ``del seq[i]`` does), named keys are kept."""

    name = "sequential"

    def plan(self, module: nn.Module, build: Build) -> Plan:
        keys, mods = list(module._modules), list(module._modules.values())
        dropouts = [key for key, m in zip(keys, mods) if isinstance(m, DROPOUT_TYPES)]  # each converted or skipped
        blocks: dict[int, tuple[nn.Module, tuple[str, ...]]] = {}  # first position -> (block, its entries' keys)
        skipped: list[tuple[int, str]] = []
        end = -1  # the last entry of the last run converted
        for j, dropout in enumerate(mods):
            if not isinstance(dropout, DROPOUT_TYPES):
                continue
            why, start, inner = _sequence_problem(mods, j), j - 2, ("0", "1", "2", "3")
            if why == OUTPUT_SIDE:
                why, start, inner = None, j - 1, ("linear", "dropout")
            if why is None and start <= end:
                why = (
                    "its first Linear is the last one of the chain converted just before it: consecutive chains "
                    "share a Linear, and one block holds one chain (ApproxDropoutMLP covers such stacks)"
                )
            if why is None:
                members = tuple(f"entry {key}" for key in keys[start : j + 2 if len(inner) == 4 else j + 1])
                if len(inner) == 4:
                    block = build(Chain(mods[j - 2], mods[j - 1], mods[j + 1], dropout.p, dropout, members))
                else:
                    block = build.output(mods[j - 1], dropout, members)
                if isinstance(block, str):
                    why = block
                else:
                    blocks[start], end = (block, inner), start + len(inner) - 1
            if why is not None:
                skipped.append((j, why))
        if not blocks:
            return Plan(skipped=[(keys[j], why) for j, why in skipped], used=dropouts)
        inside = {i for start, (_, inner) in blocks.items() for i in range(start + 1, start + len(inner))}
        kept = [i for i in range(len(mods)) if i not in inside]
        numbered = keys == [str(i) for i in range(len(keys))]
        new_key = {i: str(n) if numbered else keys[i] for n, i in enumerate(kept)}
        moved = [(f"{new_key[i]}.", f"{keys[i]}.", False) for i in kept if i not in blocks and new_key[i] != keys[i]]
        for start, (_, inner) in blocks.items():
            moved += [(f"{new_key[start]}.{name}.", f"{keys[start + n]}.", False) for n, name in enumerate(inner)]

        def apply() -> None:
            entries = OrderedDict((new_key[i], blocks[i][0] if i in blocks else module._modules[keys[i]]) for i in kept)
            module._modules = entries

        renamed = {
            j: f" (entry {keys[j]} before convert renumbered the Sequential)" for j in new_key if new_key[j] != keys[j]
        }
        return Plan(
            converted=[new_key[i] for i in blocks],
            skipped=[(new_key.get(j, keys[j]), why + renamed.get(j, "")) for j, why in skipped],
            used=dropouts,
            moved=moved,
            apply=apply,
        )


OUTPUT_SIDE = "output side"  # what _sequence_problem says of a Linear -> nn.Dropout pair


def _sequence_problem(mods: list[nn.Module], j: int) -> str | None:
    """Why the dropout at ``mods[j]`` is not in a ``Linear, activation, Dropout, Linear`` run (None if
    it is; ``OUTPUT_SIDE`` when it follows a Linear: an output-side pair)."""
    if type(mods[j]) is not nn.Dropout:
        return f"{type_name(mods[j])} is not nn.Dropout: only per-element dropout becomes a row pattern"
    if j >= 1 and is_linear(mods[j - 1]):
        return OUTPUT_SIDE
    if j >= 1 and isinstance(mods[j - 1], (ApproxDropoutFFN, HoldsFFN)):
        return AFTER_BLOCK  # what the first convert said of it (an adapter's drop2 after its block)
    if j < 2 or j + 1 >= len(mods) or not isinstance(mods[j - 2], nn.Linear) or not isinstance(mods[j + 1], nn.Linear):
        found = " -> ".join(type(m).__name__ for m in mods[max(j - 2, 0) : j + 2])
        return f"Dropout not between two Linears: needs Linear -> activation -> Dropout -> Linear, found {found}"
    return None


CONV1D = "transformers.pytorch_utils.Conv1D"  # HF's Linear with a [d_in, d_out] weight (GPT-2)


def is_linear(module: nn.Module) -> bool:
    """An nn.Linear or HF's Conv1D (what output-side dropout can follow)."""
    return isinstance(module, nn.Linear) or class_name(type(module)) == CONV1D


class TorchLayerAdapter(Adapter):
    """nn.TransformerEncoderLayer / nn.TransformerDecoderLayer: ``_ff_block`` is linear1 -> activation
    (a module or a function such as F.relu) -> dropout -> linear2. The layer keeps its Linears (its eval
    fast path reads them) and gets the block as ``ard_ffn``, a ``LayerFFN`` that reads them from the layer;
    its class becomes a subclass whose ``_ff_block`` runs the block."""

    name = "torch-transformer-layer"

    def __init__(self, converted_class: type[nn.Module]) -> None:
        self.converted_class = converted_class

    def plan(self, module: nn.Module, build: Build) -> Plan:
        act = module.activation
        chain = Chain(module.linear1, act, module.linear2, module.dropout.p, module.dropout, _MEMBERS_TORCH)
        block = build(chain) if type(module.dropout) is nn.Dropout else "its dropout is not nn.Dropout"
        if isinstance(block, str):
            return Plan(skipped=[("dropout", block)], used=["dropout"])
        moved = [(f"{BLOCK_KEY}.1.", "activation.", True)] if isinstance(act, nn.Module) else []

        def apply() -> None:
            module.add_module(BLOCK_KEY, LayerFFN.of(block, module))
            module.__class__ = self.converted_class

        return Plan(converted=[BLOCK_KEY], used=["dropout"], moved=moved, apply=apply)


BLOCK_KEY = "ard_ffn"  # where a layer that keeps its Linears holds its block
_MEMBERS_TORCH = ("linear1", "activation", "dropout", "linear2")


class ConvertedLayerAdapter(Adapter):
    """A layer ``TorchLayerAdapter`` converted before: its feed-forward already runs its block."""

    name = "torch-transformer-layer"

    def plan(self, module: nn.Module, build: Build) -> Plan:
        why = f"already converted: the feed-forward runs {BLOCK_KEY}, {KEPT_AS_IS}"
        return Plan(skipped=[("dropout", why)], used=["dropout"])


class LayerFFN(PartsOf):
    """The block of a converted torch Transformer layer: its Linears and its dropout are the layer's ``linear1``,
    ``linear2`` and ``dropout``, read from the layer (``owner``) at each use (``PartsOf``)."""

    FC1, FC2, DROPOUT = "linear1", "linear2", "dropout"


class ConvertedEncoderLayer(nn.TransformerEncoderLayer):
    """An nn.TransformerEncoderLayer whose feed-forward runs its LayerFFN ``ard_ffn`` (torch's own, once the
    layer's ``dropout`` is replaced by a module other than an nn.Dropout or an nn.Identity)."""

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.dropout) not in RATE_MODULES:
            return super()._ff_block(x)
        return self.dropout2(_batch_leading(self.ard_ffn, x, self.self_attn.batch_first))


class ConvertedDecoderLayer(nn.TransformerDecoderLayer):
    """An nn.TransformerDecoderLayer whose feed-forward runs its LayerFFN ``ard_ffn`` (torch's own, once the
    layer's ``dropout`` is replaced by a module other than an nn.Dropout or an nn.Identity)."""

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.dropout) not in RATE_MODULES:
            return super()._ff_block(x)
        return self.dropout3(_batch_leading(self.ard_ffn, x, self.self_attn.batch_first))


RATE_MODULES = (nn.Dropout, nn.Identity)  # a converted layer's dropout the block runs as (Identity: p = 0)


def _batch_leading(ffn: ApproxDropoutFFN, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """``ffn(x)`` for a torch layer's x ([B, T, d] batch first, else [T, B, d]; [T, d] unbatched) with the
    batch on the leading axis, the one ``ffn``'s groups split: each sample keeps one pattern at every
    position."""
    if ffn.groups == 1 or not ffn.dropout_training:
        return ffn(x)
    if x.dim() == 2:  # one unbatched sequence [T, d]: one sample
        return ffn(x.unsqueeze(0)).squeeze(0)
    if batch_first:
        return ffn(x)
    return ffn(x.transpose(0, 1)).transpose(0, 1)  # [T, B, d] -> [B, T, d] -> [T, B, d]


class AttributeAdapter(Adapter):
    """A feed-forward module whose forward is ``fc2(drop(act(fc1(x))))`` on attributes named by
    ``members`` = (fc1, activation, dropout, fc2) (HF T5DenseActDense: wi, act, dropout, wo): replaced in
    its parent by the block, or by ``nn.Sequential(block, rest...)`` where ``rest`` names output-side
    modules that follow (timm Mlp: drop2). ``identity`` names modules that must be nn.Identity (timm
    Mlp's norm)."""

    replaces = True

    def __init__(
        self, name: str, members: tuple[str, str, str, str], rest: tuple[str, ...] = (), identity: tuple[str, ...] = ()
    ) -> None:
        self.name, self.members, self.rest, self.identity = name, members, rest, identity

    def plan(self, module: nn.Module, build: Build) -> Plan:
        fc1, act, drop, fc2 = (getattr(module, m) for m in self.members)
        why = _not_identity(module, self.identity)
        if why is None and type(drop) is not nn.Dropout:
            why = f"its {self.members[2]} is not nn.Dropout"
        block = build(Chain(fc1, act, fc2, drop.p, drop, self.members)) if why is None else why
        if isinstance(block, str):
            return Plan(skipped=[(self.members[2], block), *_left_after(module, self.rest, converted=False)])
        if not self.rest:
            moved = [(f"{n}.", f"{m}.", False) for n, m in enumerate(self.members)]
            return Plan(converted=[""], moved=moved, apply=lambda: block)
        return _with_rest(module, block, "", [(str(n), m) for n, m in enumerate(self.members)], self.rest)


def _not_identity(module: nn.Module, names: tuple[str, ...]) -> str | None:
    """Why the first of ``module``'s ``names`` that is not nn.Identity stops a conversion (None if all are)."""
    for name in names:
        if type(getattr(module, name)) is not nn.Identity:
            kind = type(getattr(module, name)).__name__
            return f"its {name} is {kind}, not Identity: it would sit between the GEMMs"
    return None


AFTER_BLOCK = "output-side dropout after the converted block: left as it is"


def _left_after(module: nn.Module, rest: tuple[str, ...], converted: bool) -> list[tuple[str, str]]:
    """The dropouts among ``module``'s output-side ``rest`` modules, each with why it is left alone."""
    why = AFTER_BLOCK if converted else "output-side dropout after the feed-forward (not converted): left as it is"
    return [(m, why) for m in rest if isinstance(getattr(module, m), DROPOUT_TYPES)]


def _with_rest(
    module: nn.Module, block: nn.Module, converted: str, members: list[tuple[str, str]], rest: tuple[str, ...]
) -> Plan:
    """``module`` replaced by ``nn.Sequential(ffn=block, *rest)`` (``rest``: its output-side modules, timm
    Mlp's drop2); ``members``: (the block's key, the module's) of each moved part; ``converted``: the key
    of the block ``convert`` reports inside ``block`` ("" for ``block`` itself)."""
    moved = [(f"ffn.{inner}.", f"{m}.", False) for inner, m in members] + [(f"{m}.", f"{m}.", False) for m in rest]
    wrapped = nn.Sequential(OrderedDict([("ffn", block)] + [(m, getattr(module, m)) for m in rest]))
    return Plan(
        converted=[_join_key("ffn", converted)],
        skipped=_left_after(module, rest, converted=True),
        moved=moved,
        apply=lambda: wrapped,
    )


def _join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if key else prefix


class GatedAdapter(Adapter):
    """A gated feed-forward ``wo(dropout(act(wi_0(x)) * wi_1(x)))`` on attributes named by ``members`` =
    (wi_0, activation, dropout, wo) and ``gate`` = wi_1 (HF T5DenseGatedActDense): replaced in its
    parent by a GatedApproxDropoutFFN (any batch groups), which holds the Linears under the module's names.
    ``rest`` and ``identity`` as AttributeAdapter's (timm SwiGLU: drop2 after, norm between dropout and wo).
    With no dropout member (``""``: Llama's ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, found by ``fits``,
    which checks the forward for ``line``), the block's dropout is new, at the rate given to ``convert``; with
    none given the module is left as it is, and the report lists it."""

    replaces = True

    def __init__(
        self,
        name: str,
        members: tuple[str, str, str, str],
        gate: str,
        rest: tuple[str, ...] = (),
        identity: tuple[str, ...] = (),
        line: str = "",
    ) -> None:
        self.name, self.members, self.gate, self.rest, self.identity = name, members, gate, rest, identity
        self.line = line

    def fits(self, module: nn.Module) -> bool:
        """Whether ``module`` holds this adapter's parts and its forward has ``line`` (an adapter with one): its
        layout, whatever its class is called (Hugging Face repeats Llama's MLP in many models)."""
        names = [m for m in (*self.members, self.gate) if m]
        return (
            bool(self.line)
            and all(isinstance(module._modules.get(n), nn.Module) for n in names)
            and any(self.line in text for text in forward_lines(module))
        )

    def plan(self, module: nn.Module, build: Build) -> Plan:
        wi_0, act, wo, wi_1 = (getattr(module, m) for m in (*self.members[:2], self.members[3], self.gate))
        drop = getattr(module, self.members[2]) if self.members[2] else None
        if drop is None and (why := self._parts_problem(module)) is not None:
            return Plan(no_dropout=f"not convertible: {why}")
        if drop is None and not build.p:
            return Plan(no_dropout=NO_DROPOUT)
        why = _not_identity(module, self.identity)
        if why is None and drop is not None and type(drop) is not nn.Dropout:
            why = f"its {self.members[2]} is not nn.Dropout"
        rate = build.p if drop is None else drop.p
        block = build(Chain(wi_0, act, wo, rate, drop, self.members)) if why is None else why
        if not isinstance(block, str):
            gate_chain = Chain(wi_1, nn.Identity(), wo, rate, None, (self.gate, "", "", self.members[3]))
            problem = build(gate_chain)  # the same checks for wi_1 (type, sizes, hooks)
            names = (self.members[0], self.gate, self.members[3])
            try:
                block = problem if isinstance(problem, str) else GatedApproxDropoutFFN(block, wi_1, names)
            except ValueError as error:
                block = f"cannot build the block: {error}"
        if isinstance(block, str) and drop is None:
            return Plan(no_dropout=f"not convertible: {block}")
        if isinstance(block, str):
            return Plan(skipped=[(self.members[2], block), *_left_after(module, self.rest, converted=False)])
        parts = [("ffn.1", self.members[1])] + ([("ffn.2", self.members[2])] if drop is not None else [])
        parts += [(m, m) for m in (self.members[0], self.members[3], self.gate)]  # the Linears keep their names
        if self.rest:
            return _with_rest(module, block, "", parts, self.rest)
        moved = [(f"{n}.", f"{m}.", False) for n, m in parts if n != m]
        return Plan(converted=[""], moved=moved, apply=lambda: block)  # the gated block, named as the module was

    def _parts_problem(self, module: nn.Module) -> str | None:
        """Why the Linears of ``module`` could not be read by a block (``parts_problem``), or None."""
        return parts_problem(module, (self.members[0], self.gate, self.members[3]), self.members[1])


def parts_problem(module: nn.Module, linears: tuple[str, ...], activation: str) -> str | None:
    """Why ``module``'s Linears named ``linears`` could not be read by a block (a LoRA wrapper put on first, hooks),
    or its activation applied to the kept units only, found without building one (no rate given, no law
    searched), or None."""
    for name in linears:
        part = getattr(module, name)
        if (why := gemm_problem(name, part)) is not None:
            peft = type(part).__module__.startswith("peft.")  # a LoRA put on before convert
            return why + ("; convert before wrapping it (peft: before get_peft_model)" if peft else "")
        if (why := hook_problem(part)) is not None:
            return f"{name} {why}"
    act = getattr(module, activation)
    return activation_problem(act) if isinstance(act, nn.Module) else None


class PackedGatedAdapter(Adapter):
    """A gated feed-forward whose two input Linears are one, ``wo(dropout(act(a) * b))`` with ``a, b =
    wi(x).chunk(2, -1)``, on attributes named by ``members`` = (wi, activation, dropout, wo) (Hugging Face
    ModernBERT's MLP): replaced in its parent by a PackedGatedApproxDropoutFFN, which holds wi, wo and the dropout
    under the module's names. Its forward must have every line of ``lines``, and its children must be exactly the
    members, ``rest`` and ``identity`` (a norm or a residual would be lost); ``rest`` and ``identity`` as
    AttributeAdapter's. With no dropout member (``""``: Phi-3's and GLM's MLPs, found by ``fits``) the block's
    dropout is new, at the rate given to ``convert``; with none given the module is left as it is, and the report
    lists it."""

    replaces = True

    def __init__(
        self,
        name: str,
        members: tuple[str, str, str, str],
        lines: tuple[str, ...],
        rest: tuple[str, ...] = (),
        identity: tuple[str, ...] = (),
    ) -> None:
        self.name, self.members, self.lines, self.rest, self.identity = name, members, lines, rest, identity

    def fits(self, module: nn.Module) -> bool:
        """Whether ``module``'s children are its parts and its forward has ``lines``: its layout, whatever its class
        is called (Hugging Face repeats Phi-3's MLP in GLM, Dia and others)."""
        names = {m for m in (*self.members, *self.rest, *self.identity) if m}
        forward = forward_lines(module)
        return (
            set(module._modules) == names
            and all(isinstance(module._modules[n], nn.Module) for n in names)
            and all(line in forward for line in self.lines)
        )

    def act_half(self, module: nn.Module) -> int:
        """Which half of wi's output the activation takes in ``module``: the first."""
        return 0

    def plan(self, module: nn.Module, build: Build) -> Plan:
        wi_name, act_name, drop_name, wo_name = self.members
        drop = getattr(module, drop_name) if drop_name else None
        if not self.fits(module):
            why = f"not the layout expected: children {', '.join(self.members)} and a forward with {self.lines[0]!r}"
        else:
            why = parts_problem(module, (wi_name, wo_name), act_name) or _not_identity(module, self.identity)
        if why is None and drop is None and not build.p:
            return Plan(no_dropout=NO_DROPOUT)
        block = why if why is not None else self._block(module, build, drop)
        if isinstance(block, str) and drop is None:
            return Plan(no_dropout=f"not convertible: {block}")
        if isinstance(block, str):
            return Plan(skipped=[(drop_name, block), *_left_after(module, self.rest, converted=False)])
        if self.rest:  # the block's parts keep their names in it: only the activation moves
            parts = [("ffn.1", act_name)] + [(m, m) for m in (wi_name, wo_name, drop_name) if m]
            return _with_rest(module, block, "", parts, self.rest)
        moved = [("ffn.1.", f"{act_name}.", False)]  # the Linears and the dropout keep their names in the block
        return Plan(converted=[""], moved=moved, apply=lambda: block)  # the block, named as the module was

    def _block(self, module: nn.Module, build: Build, drop: nn.Module | None) -> nn.Module | str:
        """The PackedGatedApproxDropoutFFN of ``module``, or why not: ``build`` checks the chain with a stand-in for
        one half of wi (on the meta device: no memory)."""
        wi_name, act_name, drop_name, wo_name = self.members
        wi, act, wo = getattr(module, wi_name), getattr(module, act_name), getattr(module, wo_name)
        if wi.out_features % 2:
            return f"{wi_name} gives {wi.out_features} units, an odd number: not two halves"
        if drop is not None and type(drop) is not nn.Dropout:
            return f"its {drop_name} is not nn.Dropout"
        d_hidden, dtype = wi.out_features // 2, wi.weight.dtype
        half = nn.Linear(wi.in_features, d_hidden, wi.bias is not None, device="meta", dtype=dtype)
        half.train(wi.training)
        block = build(Chain(half, act, wo, build.p if drop is None else drop.p, drop, self.members))
        if isinstance(block, str):
            return block
        names = (wi_name, wo_name, drop_name) if drop is not None else (wi_name, wo_name)
        try:
            return PackedGatedApproxDropoutFFN(block, wi, self.act_half(module), names)
        except ValueError as error:
            return f"cannot build the block: {error}"


class TimmGluAdapter(PackedGatedAdapter):
    """timm's GluMlp (and SwiGLUPacked, the same class): ``fc2(norm(drop1(glu(fc1(x)))))``, then drop2, where
    ``glu`` takes the activation of the second half of fc1's output with ``gate_last`` (GluMlp's default), else of
    the first (SwiGLUPacked)."""

    def act_half(self, module: nn.Module) -> int:
        return 1 if module.gate_last else 0


NO_DROPOUT = "no dropout of its own: convert(model, p=...) gives it a row-pattern dropout on its hidden units"


class OutputSideAdapter(Adapter):
    """A module whose forward applies ``dropout`` right after ``linear`` (output side; HF GPT2MLP's c_proj,
    BertOutput's dense): with ``convert(..., output_side=True)`` the Linear becomes an OutputRowDropout
    around it, holding the nn.Dropout, and the dropout a MovedDropout (the input as it is; its ``p`` the
    block's); the forward source (``forward_lines``) is checked for the two lines in a row, and for the
    dropout applied nowhere else."""

    def __init__(self, name: str, linear: str, dropout: str) -> None:
        self.name, self.linear, self.dropout = name, linear, dropout

    def plan(self, module: nn.Module, build: Build) -> Plan:
        lines = forward_lines(module)
        calls = [i for i, line in enumerate(lines) if f"self.{self.linear}(" in line]
        if not any(i + 1 < len(lines) and f"self.{self.dropout}(" in lines[i + 1] for i in calls):
            order = f"self.{self.dropout} right after self.{self.linear}"
            why = f"its forward does not apply {order}: not the layout expected"
            return Plan(skipped=[(self.dropout, why)], used=[self.dropout])
        uses = len(re.findall(rf"\bself\.{self.dropout}\s*[(,)]", "\n".join(lines)))
        if uses > 1:
            why = (
                f"its forward applies self.{self.dropout} in {uses} places: a block would take it from all of them "
                "(a MovedDropout passes its input through), so the others would stop dropping"
            )
            return Plan(skipped=[(self.dropout, why)], used=[self.dropout])
        linear, dropout = getattr(module, self.linear), getattr(module, self.dropout)
        if isinstance(linear, OutputRowDropout):
            why = f"already converted: {self.linear} is the block, {KEPT_AS_IS}"
            return Plan(skipped=[(self.dropout, why)], used=[self.dropout])
        block = build.output(linear, dropout, (self.linear, self.dropout))
        if isinstance(block, str):
            return Plan(skipped=[(self.dropout, block)], used=[self.dropout])

        def apply() -> None:
            setattr(module, self.linear, block)
            setattr(module, self.dropout, MovedDropout(dropout))

        moved = [(f"{self.linear}.linear.", f"{self.linear}.", False)]
        return Plan(converted=[self.linear], used=[self.dropout], moved=moved, apply=apply)


def found_output_side(module: nn.Module) -> OutputSideAdapter | None:
    """The output-side adapter for a module of a class with none registered (HF RobertaOutput, DistilBERT's
    FFN): its forward (``forward_lines``) calls a child Linear on one line and a child nn.Dropout on the
    next (each as converted before: OutputRowDropout, MovedDropout); None where it does not."""
    lines, children = forward_lines(module), module._modules
    for line, after in zip(lines, lines[1:]):
        made, applied = _self_call(line), _self_call(after)
        if made is None or applied is None or made[0] is None:
            continue
        (out, linear, _), (_, dropout, args) = made, applied
        is_output = is_linear(children.get(linear)) or isinstance(children.get(linear), OutputRowDropout)
        if is_output and isinstance(children.get(dropout), (nn.Dropout, MovedDropout)) and args == [out]:
            return OutputSideAdapter("output-side", linear, dropout)
    return None


def _self_call(line: str) -> tuple[str | None, str, list[str | None]] | None:
    """``(target, attribute, args)`` of a line that is all one call of a child, ``target = self.attribute(args)``
    or ``return self.attribute(args)`` (target None), args as names (None for any other expression); None for
    any other line. ModernBERT's ``input, gate = self.Wi(x).chunk(2)`` then ``self.drop(self.act(input) *
    gate)`` drops hidden units after a gate product: not the Linear's output features."""
    try:
        statement = ast.parse(line).body[0]
    except (SyntaxError, IndexError):  # a line of a statement that spans several
        return None
    found = _child_call(statement)
    if found is None:
        return None
    target, call = found
    return target, call.func.attr, [arg.id if isinstance(arg, ast.Name) else None for arg in call.args]


def _child_call(statement: ast.stmt) -> tuple[str | None, ast.Call] | None:
    """``(target, call)`` of ``target = self.<child>(...)``, or of ``return self.<child>(...)`` (target None);
    None for any other statement."""
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
        target, call = statement.targets[0].id, statement.value
    elif isinstance(statement, ast.Return):
        target, call = None, statement.value
    else:
        return None
    calls_child = (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "self"
    )
    return (target, call) if calls_child else None


class MovedDropout(nn.Module):
    """What a module's dropout attribute holds once a block applies that dropout: the input as it is.
    ``p`` reads and sets the p of the nn.Dropout the block now holds, so setting it the usual way,
    ``module.dropout.p = 0``, still sets the rate."""

    def __init__(self, dropout: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "moved", dropout)  # not a child: the block holds it

    @property
    def p(self) -> float:
        """The rate of the nn.Dropout the block holds."""
        return self.moved.p

    @p.setter
    def p(self, value: float) -> None:
        self.moved.p = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x, as it is (the block before it has applied the dropout)."""
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}, applied by the block before it"


def _source(function: Callable) -> str:
    """The source of ``function`` ("" where there is none to read)."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def forward_lines(module: nn.Module) -> tuple[str, ...]:
    """The lines (stripped, blank ones left out) of ``module``'s forward and, one level deep, of the methods
    it calls or hands on as ``self.<name>`` (DistilBERT FFN's ``ff_chunk``, given to
    ``apply_chunking_to_forward``)."""
    return _class_lines(type(module))


@functools.cache
def _class_lines(cls: type) -> tuple[str, ...]:
    """``forward_lines`` of a class, read once per class (a model repeats its layers' classes, and a module
    found by ``found_output_side`` is read again by its adapter's plan)."""
    forward = _source(cls.forward)
    names = dict.fromkeys(re.findall(r"\bself\.(\w+)", forward))
    methods = [
        getattr(cls, n) for n in names if inspect.isfunction(getattr(cls, n, None)) and not hasattr(nn.Module, n)
    ]
    sources = [forward] + [_source(method) for method in methods]
    return tuple(line.strip() for source in sources for line in source.splitlines() if line.strip())


class FunctionalDropoutAdapter(Adapter):
    """A layer whose forward has ``fc2(F.dropout(activation_fn(fc1(x)), p=self.activation_dropout))``
    inline (HF BART, mBART, Marian, ...): the forward code stays; ``fc1`` becomes the whole block,
    ``activation_fn`` and ``fc2`` become nn.Identity and ``activation_dropout`` 0, so the same lines
    now run block -> identity -> dropout(p=0) -> identity. The layer's source is checked for those lines."""

    name = "functional-activation-dropout"
    LINES = ("self.activation_fn(self.fc1(", "p=self.activation_dropout", "self.fc2(")
    # the same chain one call per line, on one variable (HF BioGPT, ProphetNet)
    SEPARATE = re.compile(
        r"(\w+) = self\.fc1\(\1\)\s*\n\s*\1 = self\.activation_fn\(\1\)\s*\n\s*"
        r"\1 = (?:nn\.functional|F)\.dropout\(\1, p=self\.activation_dropout, training=self\.training\)\s*\n\s*"
        r"\1 = self\.fc2\(\1\)"
    )

    def fits(self, module: nn.Module) -> bool:
        """Whether ``module`` (of a class with no adapter registered) has this layout: an ``fc1`` and ``fc2``,
        an ``activation_dropout`` rate and ``LINES`` in its forward, or the ``SEPARATE`` lines (read only once the
        attributes are there)."""
        attributes = module._modules.keys() >= {"fc1", "fc2"} and "activation_dropout" in module.__dict__
        return attributes and self._missing(_source(type(module).forward)) is None

    def _missing(self, source: str) -> str | None:
        """The first of ``LINES`` that ``source`` lacks, or None where it has them all or the ``SEPARATE`` lines."""
        missing = [line for line in self.LINES if line not in source]
        return missing[0] if missing and not self.SEPARATE.search(source) else None

    def plan(self, module: nn.Module, build: Build) -> Plan:
        missing = self._missing(_source(type(module).forward))
        if missing is not None:
            return Plan(skipped=[("activation_dropout", f"its forward lacks {missing!r}: not the expected layout")])
        p = module.activation_dropout
        if isinstance(module.fc1, ApproxDropoutFFN):
            return Plan(skipped=[("activation_dropout", f"already converted: fc1 is the block, {KEPT_AS_IS}")])
        if not isinstance(p, (int, float)) or p == 0:
            return Plan(skipped=[("activation_dropout", f"activation_dropout is {p!r}: no dropout to convert")])
        members = ("fc1", "activation_fn", "activation_dropout", "fc2")
        block = build(Chain(module.fc1, module.activation_fn, module.fc2, float(p), None, members))
        if isinstance(block, str):
            return Plan(skipped=[("activation_dropout", block)])
        moved = [("fc1.0.", "fc1.", False), ("fc1.1.", "activation_fn.", False), ("fc1.3.", "fc2.", False)]
        if not _keeps_parameter_order(module, {"fc1": block, "activation_fn": nn.Identity(), "fc2": nn.Identity()}):
            why = (
                f"its activation {type(module.activation_fn).__name__} has parameters and is registered apart from "
                "fc1 and fc2: in the block at fc1, model.parameters() would change order, and an optimizer's saved "
                "state would load onto other parameters"
            )
            return Plan(skipped=[("activation_dropout", why)])

        def apply() -> None:
            module.fc1, module.activation_fn, module.fc2 = block, nn.Identity(), nn.Identity()
            module.activation_dropout = 0.0

        return Plan(converted=["fc1"], moved=moved, apply=apply)


def _keeps_parameter_order(module: nn.Module, children: dict[str, nn.Module]) -> bool:
    """Whether ``module.parameters()`` keeps its order once the given children replace its children of those
    names in place (``module.parameters()``: its own, then each child's in registration order, each once)."""
    after: dict[int, None] = dict.fromkeys(id(q) for q in module._parameters.values() if q is not None)
    for key, child in module._modules.items():
        after.update(dict.fromkeys(id(q) for q in children.get(key, child).parameters()) if child is not None else {})
    return list(after) == [id(q) for q in module.parameters()]


DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

# Adapters by class, or by "module.QualName" for classes of optional packages (nothing is imported).
ADAPTERS: dict[type | str, Adapter] = {
    nn.TransformerEncoderLayer: TorchLayerAdapter(ConvertedEncoderLayer),
    nn.TransformerDecoderLayer: TorchLayerAdapter(ConvertedDecoderLayer),
    ConvertedEncoderLayer: ConvertedLayerAdapter(),
    ConvertedDecoderLayer: ConvertedLayerAdapter(),
    "transformers.models.t5.modeling_t5.T5DenseActDense": AttributeAdapter("hf-t5", ("wi", "act", "dropout", "wo")),
    "transformers.models.t5.modeling_t5.T5DenseGatedActDense": GatedAdapter(
        "hf-t5-gated", ("wi_0", "act", "dropout", "wo"), "wi_1"
    ),
}
# T5's gated feed-forward copied under other names (T5's plain one, copied, is found by ``found_feed_forward``)
for _name in (
    "mt5.modeling_mt5.MT5",
    "umt5.modeling_umt5.UMT5",
    "longt5.modeling_longt5.LongT5",
    "udop.modeling_udop.Udop",
    "pop2piano.modeling_pop2piano.Pop2Piano",
    "pix2struct.modeling_pix2struct.Pix2StructText",
):
    ADAPTERS[f"transformers.models.{_name}DenseGatedActDense"] = ADAPTERS[
        "transformers.models.t5.modeling_t5.T5DenseGatedActDense"
    ]
for _name, _linear in (("gpt2.modeling_gpt2.GPT2MLP", "c_proj"), ("bert.modeling_bert.BertOutput", "dense")):
    ADAPTERS[f"transformers.models.{_name}"] = OutputSideAdapter("output-side", _linear, "dropout")
ADAPTERS["transformers.models.bert.modeling_bert.BertSelfOutput"] = OutputSideAdapter("output-side", "dense", "dropout")
_TIMM_MLP = AttributeAdapter("timm-mlp", ("fc1", "act", "drop1", "fc2"), rest=("drop2",), identity=("norm",))
ADAPTERS["timm.layers.mlp.Mlp"] = ADAPTERS["timm.models.layers.mlp.Mlp"] = _TIMM_MLP
# fc2(norm(drop1(act(fc1_g(x)) * fc1_x(x)))), then drop2: T5's gated layout (its gate is fc1_x)
_TIMM_SWIGLU = GatedAdapter(
    "timm-swiglu", ("fc1_g", "act", "drop1", "fc2"), "fc1_x", rest=("drop2",), identity=("norm",)
)
ADAPTERS["timm.layers.mlp.SwiGLU"] = ADAPTERS["timm.models.layers.mlp.SwiGLU"] = _TIMM_SWIGLU
# fc1 packed: x1, x2 = fc1(x).chunk(2), then x1 * act(x2) (gate_last) or act(x1) * x2, drop1, norm, fc2, drop2
_TIMM_GLU = TimmGluAdapter(
    "timm-glu-mlp",
    ("fc1", "act", "drop1", "fc2"),
    lines=(
        "x1, x2 = x.chunk(2, dim=self.chunk_dim)",
        "x = x1 * self.act(x2) if self.gate_last else self.act(x1) * x2",
    ),
    rest=("drop2",),
    identity=("norm",),
)
ADAPTERS["timm.layers.mlp.GluMlp"] = ADAPTERS["timm.models.layers.mlp.GluMlp"] = _TIMM_GLU
# Hugging Face decoders' gated MLPs (Llama's, repeated in Mistral, Qwen, Gemma ... under many class names), with no
# dropout: found by their layout (``fits``); given a rate, convert adds a row-pattern one on the hidden units
_NO_DROPOUT_GATED = GatedAdapter(
    "hf-gated-mlp",
    ("gate_proj", "act_fn", "", "down_proj"),
    "up_proj",
    line="self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))",
)
# Phi-3's gated MLP with its two input Linears packed in one (repeated in GLM, GLM-4, Dia and others), no dropout:
# found by its layout (``fits``); given a rate, convert adds a row-pattern one on the hidden units
_NO_DROPOUT_PACKED = PackedGatedAdapter(
    "hf-packed-gated-mlp",
    ("gate_up_proj", "activation_fn", "", "down_proj"),
    lines=(
        "up_states = self.gate_up_proj(hidden_states)",
        "gate, up_states = up_states.chunk(2, dim=-1)",
        "up_states = up_states * self.activation_fn(gate)",
        "return self.down_proj(up_states)",
    ),
)
ADAPTERS["transformers.models.modernbert.modeling_modernbert.ModernBertMLP"] = PackedGatedAdapter(
    "hf-modernbert-mlp",
    ("Wi", "act", "drop", "Wo"),
    lines=(
        "input, gate = self.Wi(hidden_states).chunk(2, dim=-1)",
        "return self.Wo(self.drop(self.act(input) * gate))",
    ),
)
_FUNCTIONAL = FunctionalDropoutAdapter()
for _model in ("bart", "mbart", "marian", "plbart", "pegasus", "blenderbot", "blenderbot_small", "m2m_100"):
    _prefix = "".join(part.capitalize() for part in _model.split("_"))
    _prefix = {"Mbart": "MBart", "M2m100": "M2M100", "Plbart": "PLBart"}.get(_prefix, _prefix)
    for _kind in ("EncoderLayer", "DecoderLayer"):
        ADAPTERS[f"transformers.models.{_model}.modeling_{_model}.{_prefix}{_kind}"] = _FUNCTIONAL
SEQUENTIAL = SequentialAdapter()


def register_adapter(cls: type | str, adapter: Adapter) -> None:
    """Use ``adapter`` for modules of class ``cls`` (exactly; or its "module.QualName")."""
    if not isinstance(adapter, Adapter):
        raise ValueError(f"adapter must be an approxdrop.models.adapters.Adapter, got {adapter!r}")
    if not isinstance(cls, (type, str)):
        raise ValueError(f"cls must be a class or a 'module.QualName' string, got {cls!r}")
    ADAPTERS[cls] = adapter


def class_name(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def found_feed_forward(module: nn.Module) -> AttributeAdapter | None:
    """The adapter for a module whose whole forward is the chain ``x = self.fc1(x)``, ``x = self.act(x)``, ``x =
    self.drop(x)``, ``x = self.fc2(x)``, then at most one more dropout and ``return x`` (the T5 copies mT5, UMT5,
    LongT5, SwitchTransformers' experts; NLLB-MoE's experts; Wav2Vec2's feed-forward and its copies; the Mlp that
    ViT code writes by hand), with any names, read from its source (``_chain_of``). Its children must be exactly
    those modules (a norm or a residual would be lost with the module), fc1 and fc2 nn.Linear and the dropouts
    nn.Dropout; the activation is checked when the block is built. None for any other module."""
    if type(module).__module__.startswith("approxdrop.") or isinstance(module, nn.Sequential):
        return None
    names = _chain_of(type(module))
    if names is None or set(module._modules) != set(names):
        return None
    fc1, act, drop, fc2, *rest = (module._modules[n] for n in names)
    linears = isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
    dropouts = all(type(d) is nn.Dropout for d in (drop, *rest)) and not isinstance(act, DROPOUT_TYPES)
    return AttributeAdapter("feed-forward-layout", names[:4], rest=names[4:]) if linears and dropouts else None


@functools.cache
def _chain_of(cls: type) -> tuple[str, ...] | None:
    """The attribute names ``(fc1, act, drop, fc2[, drop2])`` that ``cls.forward`` calls in a chain, each on the
    last one's output starting from its input, with nothing else but ``return`` of the last output and dtype
    casts of it (T5's ``if ...: x = x.to(self.wo.weight.dtype)``); None for any other forward."""
    try:
        function = ast.parse(inspect.cleandoc("\n" + _source(cls.forward))).body[0]
    except (SyntaxError, IndexError):
        return None
    if not isinstance(function, ast.FunctionDef) or len(function.args.args) != 2:
        return None
    value, names = function.args.args[1].arg, []
    body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    for statement in body[:-1]:
        found = _child_call(statement)
        if found is not None and found[0] is not None and _on(found[1], value):
            value = found[0]
            names.append(found[1].func.attr)
        elif not _casts(statement, value):
            return None
    returned = isinstance(body[-1], ast.Return) and isinstance(body[-1].value, ast.Name) and body[-1].value.id == value
    return tuple(names) if returned and len(names) in (4, 5) else None


def _on(call: ast.Call, value: str) -> bool:
    """Whether ``call`` takes ``value`` alone: one positional argument, that name, no keywords."""
    return len(call.args) == 1 and not call.keywords and isinstance(call.args[0], ast.Name) and call.args[0].id == value


def _casts(statement: ast.stmt, value: str) -> bool:
    """Whether ``statement`` is ``if ...: value = value.to(...)`` (no else): it changes only the dtype."""
    if not (isinstance(statement, ast.If) and not statement.orelse and len(statement.body) == 1):
        return False
    (inner,) = statement.body
    return (
        isinstance(inner, ast.Assign)
        and len(inner.targets) == 1
        and isinstance(inner.targets[0], ast.Name)
        and inner.targets[0].id == value
        and isinstance(inner.value, ast.Call)
        and isinstance(inner.value.func, ast.Attribute)
        and inner.value.func.attr == "to"
        and isinstance(inner.value.func.value, ast.Name)
        and inner.value.func.value.id == value
    )


def adapter_for(module: nn.Module, output_side: bool = False) -> Adapter | None:
    """The adapter of ``module``'s class (exact match), Sequential's for a subclass that keeps
    Sequential's forward, the functional one for a layer of BART's layout (``FunctionalDropoutAdapter.fits``:
    HF Whisper, LED, ...), the gated one for an MLP of Llama's layout (``GatedAdapter.fits``), one for a module
    whose forward is a feed-forward chain (``found_feed_forward``), else (with ``output_side``) the one
    ``found_output_side`` reads in its forward, else None."""
    cls = type(module)
    found = ADAPTERS.get(cls) or ADAPTERS.get(class_name(cls))
    if found is None and isinstance(module, nn.Sequential) and cls.forward is nn.Sequential.forward:
        return SEQUENTIAL
    if found is None and _FUNCTIONAL.fits(module):
        return _FUNCTIONAL
    if found is None and _NO_DROPOUT_GATED.fits(module):
        return _NO_DROPOUT_GATED
    if found is None and _NO_DROPOUT_PACKED.fits(module):
        return _NO_DROPOUT_PACKED
    if found is None:
        found = found_feed_forward(module)
    if found is None and output_side:
        return found_output_side(module)
    return found
