"""``convert``: turn the feed-forward blocks (``Linear -> elementwise activation -> dropout -> Linear``) of
an existing model into ApproxDropoutFFN blocks, in place, through the adapter of each module's class
(``adapters``), and report module by module what was converted (by which adapter), what was left alone
and why, and where forward code applies dropout that no adapter covers.
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .._env import check_generator, check_rate
from .adapters import (
    CONV1D,
    DROPOUT_TYPES,
    KEPT_AS_IS,
    Adapter,
    Build,
    Chain,
    FunctionalDropoutAdapter,
    MovedDropout,
    OutputSideAdapter,
    Plan,
    adapter_for,
    class_name,
    forward_lines,
    found_output_side,
)
from .ffn import ApproxDropoutFFN, ffn_method
from .gated import HoldsFFN
from .lstm import ApproxDropoutLSTM
from .methods import ROW
from .mlp import ApproxDropoutMLP
from .output_side import OutputRowDropout
from .parts import activation_problem, gemm_problem, hook_problem, type_name
from .state_keys import add_entries

ARD_MODELS = (
    ApproxDropoutFFN,
    HoldsFFN,  # the gated blocks, split or packed
    OutputRowDropout,
    ApproxDropoutMLP,
    ApproxDropoutLSTM,
)  # their dropouts are already theirs
FUNCTIONAL = "functional dropout in forward code: not convertible"
ALONE = "the model itself is a dropout module, with no Linears around it for a block to shrink: convert the model"
MOVED = f"the model itself is the dropout of an output-side pair, which the block in its Linear applies: {KEPT_AS_IS}"


@dataclass
class ConvertReport:
    """What ``convert`` did: ``converted`` holds the qualified names of the new blocks, each an
    ApproxDropoutFFN (a GatedApproxDropoutFFN for a gated feed-forward, a PackedGatedApproxDropoutFFN for one whose
    input Linears are one, an OutputRowDropout for output-side dropout; ``kinds`` says which), so
    ``model.get_submodule(name)`` returns it, and ``adapters`` the adapter that made each; ``skipped`` a
    ``(name, reason)`` pair for every dropout left alone (for an approxdrop block already in the model, the
    block's name); ``functional`` a ``(name, detail)`` pair for
    every module whose forward code applies dropout that no adapter turned into a block; ``no_dropout`` a
    ``(name, what)`` pair for each gated feed-forward with no dropout left as it is (what a rate given to
    ``convert`` does with it); ``rates`` each block's p; ``given_p`` the rate given to ``convert``, if any.
    Names are as in the converted model."""

    converted: list[str] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # name -> class of the block
    skipped: list[tuple[str, str]] = field(default_factory=list)
    functional: list[tuple[str, str]] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # name -> the block's p when convert returned
    no_dropout: list[tuple[str, str]] = field(default_factory=list)  # gated feed-forwards without dropout, and why
    given_p: float | None = None  # the rate given to convert, if one was

    def __str__(self) -> str:
        outputs = [name for name in self.converted if self.kinds[name] == OutputRowDropout.__name__]
        chains = [name for name in self.converted if name not in outputs]

        def line(name: str) -> str:
            rate = f", p = {self.rates[name]:g}" if name in self.rates else ""
            return f"  {name}: {self.kinds[name]} (adapter {self.adapters[name]}{rate})"

        lines = [f"converted {len(chains)} feed-forward(s): Linear -> activation -> dropout on its units -> Linear"]
        lines += [line(name) for name in chains]
        if self.given_p is not None and not self.converted:
            lines.append(f"p = {self.given_p:g} was given, but nothing was converted: no rate was set anywhere")
        if outputs:
            lines.append(f"converted {len(outputs)} Linear -> Dropout pair(s) (output side)")
            lines += [line(name) for name in outputs]
        if idle := [name for name in self.converted if self.rates.get(name) == 0.0]:
            lines.append(
                f"{len(idle)} of them at p = 0: they drop nothing and run dense GEMMs until their rate is set "
                "(convert(model, p=...), or the p of each block's nn.Dropout)"
            )
        lines.append(f"left {len(self.skipped)} dropout(s) alone")
        lines += [f"  {name or '(the model)'}: {reason}" for name, reason in self.skipped]
        if self.no_dropout:
            lines.append(f"{len(self.no_dropout)} gated feed-forward(s) with no dropout left as they are")
            lines += [f"  {name}: {what}" for name, what in self.no_dropout]
        if self.functional:
            lines.append(f"{len(self.functional)} module(s) apply dropout in forward code")
            lines += [f"  {name}: {FUNCTIONAL} ({detail})" for name, detail in self.functional]
        return "\n".join(lines)


def convert(
    module: nn.Module,
    p: float | None = None,
    method: str = "row",
    groups: int | None = None,
    *,
    generator: torch.Generator | None = None,
    output_side: bool = False,
    static_shapes: bool = False,
) -> ConvertReport:
    """Replace every feed-forward an adapter finds inside ``module`` (itself included, at any depth) by
    one ``ApproxDropoutFFN.from_modules`` block holding the same Linear and activation modules, so the
    very same Parameter objects: an optimizer built before keeps working, eval outputs do not change,
    and state_dict keys stay as they were (a checkpoint loads both ways, ``strict=True``).

    ``p`` defaults to each dropout's own p; a gated feed-forward with no dropout (Hugging Face Llama's MLP and its
    kind) gets a new one at ``p`` when ``p`` is given (and above 0), else the report lists it (``no_dropout``);
    ``method`` and ``groups`` are ApproxDropoutFFN's; ``generator``
    is given to every new block. A block holds the very nn.Dropout of its chain (its p is the block's rate,
    and ``p``, when given, is set on it) and takes its train / eval mode. ``output_side``: also
    turn ``Linear -> Dropout`` pairs (whole output features dropped) into OutputRowDropout blocks that
    compute only the kept output rows (one pattern per batch, or per batch group); off by default (README, convert).
    ``static_shapes``: the feed-forward and output-side blocks run at shapes set by their draw's ``(dp, keep)``
    (ApproxDropoutFFN, OutputRowDropout), for one compiled or CUDA graph per pattern class.
    Everything is planned before anything changes: a chain is converted whole or left untouched, with
    the reason in the report. Blocks already in the model (a second ``convert``) are left as they are, and
    the report says so.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"convert takes an nn.Module, got {type(module).__name__}")
    if p is not None:
        p = check_rate(p)
    check_generator(generator)
    spec, _ = ffn_method(method, groups)  # a bad method or group count fails before anything changes
    if static_shapes and spec.drops != ROW:
        raise ValueError(f"static_shapes is for row patterns, not method={method!r}")
    build = _Builder(p, method, groups, generator, output_side, static_shapes)
    walk = _Walk(build, output_side)
    walk.visit(module)
    if isinstance(module, (*DROPOUT_TYPES, MovedDropout)):  # handed over alone: no Linears around it
        walk.left.append((module, "", MOVED if isinstance(module, MovedDropout) else ALONE))
    owners = [owner for owner, *_ in walk.replacements] + [owner for owner, _ in walk.plans]
    order = {id(owner): list(owner.state_dict(keep_vars=True)) for owner in owners}  # checkpoint key order
    for owner, key, replacement, plan in walk.replacements:
        owner.add_module(key, replacement)
        moved = [(f"{key}.{raw}", f"{key}.{saved}", alias) for raw, saved, alias in plan.moved]
        add_entries(owner, moved, order[id(owner)])
    for owner, plan in walk.plans:
        plan.apply()
        add_entries(owner, plan.moved, order[id(owner)])
    if p is not None:  # the rate given, on the dropouts of the blocks now in the model (a plan refused keeps its p)
        live = {id(m) for m in module.modules()}
        for block in build.shared:
            if id(block) in live:
                block.p = p
    return walk.report(module)


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


class _Walk:
    """One pass over a model: the plans of every adapter, and what is left alone and why."""

    def __init__(self, build: Build, output_side: bool) -> None:
        self.build, self.output_side = build, output_side
        self.seen: set[int] = set()
        self.plans: list[tuple[nn.Module, Plan]] = []
        self.replacements: list[tuple[nn.Module, str, nn.Module, Plan]] = []
        # (module, key relative to it once every plan is applied, adapter name) of each block made at its first place
        self.made: list[tuple[nn.Module, str, str]] = []
        self.left: list[tuple[nn.Module, str, str]] = []  # (module, key relative to it, reason)
        self.functional: list[tuple[nn.Module, str]] = []
        self.no_dropout: list[tuple[nn.Module, str]] = []  # feed-forwards with no dropout, and what p does to them
        self.refused: dict[int, set[str]] = {}  # id of a module whose replacement was refused -> its dropouts
        self.swapped: dict[int, tuple[nn.Module, Plan, str]] = {}  # id of a module replaced -> (block, plan, adapter)

    def visit(self, module: nn.Module) -> None:
        if id(module) in self.seen:
            return
        self.seen.add(id(module))
        if isinstance(module, ARD_MODELS):
            self._already(module)
            return
        adapter = adapter_for(module, self.output_side)
        covered: set[str] = set()
        if adapter is not None and not adapter.replaces:
            covered = self._own(module, adapter)
        elif adapter is not None:  # its plan was refused in _replace, or it is the model itself
            covered = self.refused.pop(id(module), None) or self._root(module)
        children: set[int] = set()
        for key, child in module._modules.items():  # every key: named_children() gives a shared child once
            if child is None:
                continue
            if id(child) in self.swapped:  # a module shared by several places: the same block at every place
                self._again(module, key, child)
                continue
            if id(child) in children:
                continue
            children.add(id(child))
            child_adapter = adapter_for(child)
            if child_adapter is not None and child_adapter.replaces and id(child) not in self.seen:
                if self._replace(module, key, child, child_adapter):
                    continue
            elif isinstance(child, DROPOUT_TYPES) and key not in covered:
                self.left.append((module, key, _outside(module, key, adapter, self.output_side)))
            self.visit(child)
        detail = _functional_dropout(module)
        if detail is not None:
            if isinstance(adapter, FunctionalDropoutAdapter) and any(m is module for m, _ in self.plans):
                detail += (
                    "; its activation dropout was converted: its rate is fc1.p now, and activation_dropout reads 0"
                )
            self.functional.append((module, detail))

    def _already(self, block: nn.Module) -> None:
        """Leave an approxdrop block that is in the model already (converted before, or built so) as it is, and
        say so, unless its layer's plan said it (the block holds that layer's dropout)."""
        dropout = getattr(block, "dropout", None)
        if dropout is not None and any(_holds(m._modules.get(key), dropout) for m, key, _ in self.left):
            return
        why = f"already approxdrop's {type(block).__name__} (p {block.p}, method {block.method!r}): {KEPT_AS_IS}"
        self.left.append((block, "", why))

    def _own(self, module: nn.Module, adapter: Adapter) -> set[str]:
        """Plan ``module`` with its adapter; the keys of the dropouts the plan speaks for."""
        plan = adapter.plan(module, self.build)
        self.left += [(module, key, why) for key, why in plan.skipped]
        if plan.apply is not None:
            self.plans.append((module, plan))
            self.made += [(module, key, adapter.name) for key in plan.converted]
        return set(plan.used)

    def _root(self, module: nn.Module) -> set[str]:
        """Leave the dropouts of a model that an adapter would replace in its parent (it has none)."""
        why = f"the model itself is a {type(module).__name__}, which a block replaces in its parent: convert the parent"
        keys = {key for key, child in module.named_children() if isinstance(child, DROPOUT_TYPES)}
        self.left += [(module, key, why) for key in keys]
        return keys

    def _replace(self, parent: nn.Module, key: str, child: nn.Module, adapter: Adapter) -> bool:
        """Plan swapping ``parent.key`` for what ``adapter`` makes of it; True when it will be swapped."""
        plan = adapter.plan(child, self.build)
        new = plan.apply() if plan.apply is not None else None  # nothing in the model changes yet
        if new is not None and [id(q) for q in new.parameters()] != [id(q) for q in child.parameters()]:
            why = (
                f"the {type(new).__name__} would not hold {type(child).__name__}'s parameters in their order: "
                "model.parameters() would change, and an optimizer's saved state would load onto other parameters"
            )
            keys = [k for k, m in child.named_children() if isinstance(m, DROPOUT_TYPES)]
            plan = Plan(skipped=[(k, why) for k in keys]) if keys else Plan(no_dropout=f"not convertible: {why}")
        if plan.apply is None:
            if plan.no_dropout is not None:
                self.no_dropout.append((child, plan.no_dropout))
            self.left += [(child, k, why) for k, why in plan.skipped]
            self.refused[id(child)] = {k for k, _ in plan.skipped}
            return False
        self.seen.add(id(child))
        self.swapped[id(child)] = (new, plan, adapter.name)
        self.replacements.append((parent, key, new, plan))
        self.made += [(new, k, adapter.name) for k in plan.converted]
        self.left += [(new, k, why) for k, why in plan.skipped]
        return True

    def _again(self, parent: nn.Module, key: str, child: nn.Module) -> None:
        """``parent.key`` holds a module already swapped at another place (a module shared by layers): it
        gets the same block, so the places still share one module (the same parameters); the report finds the
        block at this place too (``report``)."""
        new, plan, _ = self.swapped[id(child)]
        self.replacements.append((parent, key, new, plan))

    def report(self, root: nn.Module) -> ConvertReport:
        """The report, read from the model once every plan is applied: each block made is named at every place
        it is reached (a shared module, or one under a shared parent), in the model's order."""
        places: dict[int, list[str]] = {}
        for name, m in root.named_modules(remove_duplicate=False):
            places.setdefault(id(m), []).append(name)  # a shared module: its first name first

        def name_of(module: nn.Module, key: str = "") -> str:
            return _join(places[id(module)][0] if id(module) in places else type(module).__name__, key)

        made = {id(owner.get_submodule(key)): adapter for owner, key, adapter in self.made}  # block -> adapter
        out = ConvertReport()
        for name, block in root.named_modules(remove_duplicate=False):
            if id(block) in made:
                out.converted.append(name)
                out.adapters[name] = made[id(block)]
                out.kinds[name] = type(block).__name__
                out.rates[name] = float(block.p)
        out.skipped = [(name_of(module, key), why) for module, key, why in self.left]
        out.functional = [(name_of(module) or type(module).__name__, detail) for module, detail in self.functional]
        out.no_dropout = [(name_of(module), what) for module, what in self.no_dropout]
        out.given_p = self.build.p
        return out


def _holds(entry: nn.Module | None, dropout: nn.Module) -> bool:
    """Whether a module's entry is ``dropout``, or the MovedDropout left where the block took it from (an
    output-side block: the module's ``dropout`` attribute passes its input through, the block applies it)."""
    return entry is dropout or (isinstance(entry, MovedDropout) and entry.moved is dropout)


def _outside(parent: nn.Module, key: str, adapter: Adapter | None, output_side: bool) -> str:
    """Why the dropout module ``parent.<key>`` that no plan speaks for is left alone."""
    kind = type(parent).__name__
    if adapter is None and not output_side:
        found = found_output_side(parent)
        if found is not None and found.dropout == key:
            return OUTPUT_OFF
    if adapter is None and _never_named(parent, key):
        return f"{kind}'s forward code never names self.{key}: most likely unused, it drops nothing"
    if adapter is None:  # a ModuleDict has no forward: what holds it calls the dropout (peft's lora_dropout)
        owner = f"what holds its {kind}" if isinstance(parent, (nn.ModuleDict, nn.ModuleList)) else f"its parent {kind}"
        return (
            f"no adapter for {owner}: its forward code applies it "
            "(approxdrop.models.adapters.register_adapter adds one)"
        )
    if isinstance(adapter, OutputSideAdapter):  # it may well be a hidden-unit site: say only what was done
        return (
            f"{kind} applies it in its forward code, and its adapter converts only the output-side pair "
            f"{adapter.linear} -> {adapter.dropout}: no adapter for the rest of that forward "
            "(approxdrop.models.adapters.register_adapter adds one)"
        )
    return (
        f"{kind} applies it in its forward code outside the feed-forward its adapter converts (after attention, "
        "on a residual branch or an output): not a hidden-unit site"
    )


def _never_named(parent: nn.Module, key: str) -> bool:
    """Whether ``parent``'s forward and the methods it calls (``forward_lines``, read) never name ``self.<key>``
    (ALBERT's AlbertLayer holds a ``dropout`` it never applies); False where there is no source to read, for a
    container and for a forward that may reach its children otherwise (``super().forward``, iteration,
    ``getattr``)."""
    lines = forward_lines(parent)
    if not lines or not key.isidentifier() or isinstance(parent, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    if any(re.search(_CHILDREN_REACHED, line) for line in lines):
        return False
    return not any(re.search(rf"\bself\.{re.escape(key)}\b", line) for line in lines)


_CHILDREN_REACHED = r"super\(|\bin self\b|self\[|getattr\(self|self\.(?:_modules|children|named_children|modules)\b"


# ``F.dropout(``, ``nn.functional.dropout(``, ``torch.dropout(``, ``F.alpha_dropout(``, ``dropout_p=...``, and a
# rate attribute handed on as a keyword: ``dropout=0.0 if not self.training else self.attention_dropout``
# (Hugging Face attention classes pass it to an attention function defined outside the class; the p of an
# nn.Dropout module, ``self.dropout.p``, is left out: the report already lists that module)
_FUNCTIONAL_CALL = re.compile(
    r"\b(?:F|functional|torch)\.(\w*dropout\w*|multi_head_attention_forward)\(|\b(dropout_p)\s*=(?!\s*0\.?0?\b)"
    r"|(?<![.\w])(dropout\s*=)(?!=)[^,\n()]*?\bself\.(\w*dropout\w*)\b(?!\.)"  # not ``self.dropout.p``: a module
)
_SOURCE_CACHE: dict[type, set[str]] = {}


def _functional_dropout(module: nn.Module) -> str | None:
    """What dropout ``module``'s class applies in its own code (a call such as ``F.dropout``), or None."""
    cls = type(module)
    if isinstance(module, DROPOUT_TYPES + ARD_MODELS) or cls.__module__.startswith("approxdrop."):
        return None
    if isinstance(module, nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
        return (
            f"{type_name(module)} applies dropout={module.dropout:g} between its {module.num_layers} layers inside "
            "its fused kernel; approxdrop.ApproxDropoutLSTM is an LSTM that drops with row patterns"
        )
    found = set().union(*(_calls(base) for base in cls.__mro__ if base not in (nn.Module, object)))
    found = {call for call in found if not _module_attribute(module, call)}
    return f"{cls.__name__} calls {', '.join(sorted(found))}" if found else None


def _module_attribute(module: nn.Module, call: str) -> bool:
    """Whether ``call`` is ``dropout=self.<attribute>`` with a module there, not a rate: peft's LoRA Linear
    takes ``dropout = self.lora_dropout[name]`` from a ModuleDict of nn.Dropout, which the report lists as
    modules already."""
    attribute = call.removeprefix("dropout=self.")
    return attribute != call and isinstance(getattr(module, attribute, None), nn.Module)


def _calls(cls: type) -> set[str]:
    """The functional dropout calls in the source of ``cls`` itself (cached per class)."""
    if cls not in _SOURCE_CACHE:
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""
        found = {
            call or keyword or f"dropout=self.{attribute}"
            for call, keyword, _, attribute in _FUNCTIONAL_CALL.findall(source)
        }
        _SOURCE_CACHE[cls] = found | _helper_calls(cls, source)
    return _SOURCE_CACHE[cls]


_BARE_CALL = re.compile(r"(?<![.\w])(\w*dropout\w*)\(")


def _helper_calls(cls: type, source: str) -> set[str]:
    """The functions of ``cls``'s own module with dropout in their name that its source calls by bare name
    (BLOOM's and Falcon's ``dropout_add``, which runs F.dropout on a residual branch); a local variable
    holding a module (``dropout = self.lora_dropout[name]``) is not one."""
    scope = vars(inspect.getmodule(cls) or object)
    return {name for name in _BARE_CALL.findall(source) if inspect.isfunction(scope.get(name))}


# Activation functions a layer may hold instead of a module, as the module that computes the same.
_FUNCTIONS = {
    nn.functional.relu: nn.ReLU,
    torch.relu: nn.ReLU,
    nn.functional.gelu: nn.GELU,
    nn.functional.silu: nn.SiLU,
    nn.functional.tanh: nn.Tanh,
    torch.tanh: nn.Tanh,
    nn.functional.sigmoid: nn.Sigmoid,
    torch.sigmoid: nn.Sigmoid,
    nn.functional.mish: nn.Mish,
}


OUTPUT_OFF = (
    "output-side dropout (drops whole output features of the Linear before it): converted only on request, "
    "convert(model, output_side=True)"
)


class _Builder:
    """``build(chain)`` and ``build.output(linear, dropout, members)`` for the adapters (``adapters.Build``):
    the block, or the reason there is none; nothing is changed."""

    def __init__(
        self, p: float | None, method: str, groups: int | None, generator, output_side: bool, static_shapes: bool
    ) -> None:
        self.p, self.method, self.groups, self.generator, self.output_side = p, method, groups, generator, output_side
        self.static_shapes = static_shapes
        self.shared: list[nn.Module] = []  # the blocks made that hold their chain's own nn.Dropout

    def __call__(self, chain: Chain) -> ApproxDropoutFFN | str:
        why = _chain_problem(chain)
        if why is not None:
            return why
        act = _activation_module(chain.activation)
        if isinstance(act, str):
            return act
        try:
            rate = chain.p if self.p is None else self.p
            block = ApproxDropoutFFN.from_modules(
                chain.fc1,
                act,
                chain.fc2,
                rate,
                self.method,
                self.groups,
                generator=self.generator,
                static_shapes=self.static_shapes,
            )
        except ValueError as error:
            return f"cannot build the block: {error}"
        block = _take_mode(block, (chain.dropout or chain.fc1).training)
        return block if chain.dropout is None else self._share(block, "2", chain.dropout)

    def output(self, linear: nn.Module, dropout: nn.Module, members: tuple[str, str]) -> OutputRowDropout | str:
        if not self.output_side:
            return OUTPUT_OFF
        if type(dropout) is not nn.Dropout:
            return f"{type_name(dropout)} is not nn.Dropout: only per-element dropout becomes a row pattern"
        conv1d = class_name(type(linear)) == CONV1D
        why = gemm_problem(members[0], linear, conv1d)
        if why is not None:
            return why
        for name, part in zip(members, (linear, dropout)):
            why = hook_problem(part)
            if why is not None:
                return f"{name} {why}"
        try:
            rate = dropout.p if self.p is None else self.p
            block = OutputRowDropout(
                linear,
                rate,
                self.method,
                generator=self.generator,
                transposed=conv1d,
                static_shapes=self.static_shapes,
                groups=self.groups,
            )
        except ValueError as error:
            return f"cannot build the block: {error}"
        return self._share(_take_mode(block, dropout.training), "dropout", dropout)

    def _share(self, block: nn.Module, key: str, dropout: nn.Module) -> nn.Module:
        """``block`` holding ``dropout`` at ``key`` instead of its own nn.Dropout: the rate is read from it at
        each step, so ``dropout.p`` set through the model's own attribute still sets it. Its p becomes the
        ``p`` given to ``convert`` only once the block is in the model."""
        block.add_module(key, dropout)
        self.shared.append(block)
        return block


def _take_mode(block: nn.Module, training: bool) -> nn.Module:
    """``block`` in its dropout's train / eval mode, its parts' flags left as they are."""
    block.training = training
    block.dropout.train(training)
    return block


def _chain_problem(chain: Chain) -> str | None:
    """Why a found chain cannot become a block, or None."""
    fc1, fc2 = chain.fc1, chain.fc2
    for name, linear in zip(chain.members[::3], (fc1, fc2)):
        why = gemm_problem(name, linear)
        if why is not None:
            return why
    if fc1.out_features != fc2.in_features:
        return (
            f"Linear sizes do not chain: {fc1.in_features} -> {fc1.out_features}, "
            f"then {fc2.in_features} -> {fc2.out_features}"
        )
    if fc1.weight.dtype != fc2.weight.dtype:  # e.g. HF T5 keeps wo in float32 when the rest is half precision
        return (
            f"{chain.members[0]} is {fc1.weight.dtype} but {chain.members[3]} is {fc2.weight.dtype}: the module casts "
            "between them in its forward code, which the block does not"
        )
    parts = [fc1, chain.activation, chain.dropout, fc2]
    for name, part in zip(chain.members, parts):
        why = hook_problem(part) if isinstance(part, nn.Module) else None
        if why is not None:
            return f"{name} {why}"
    return None


def _activation_module(activation) -> nn.Module | str:
    """The module the block applies: ``activation`` itself, an out-of-place copy of an in-place one, or
    the module of a known function; else the reason it cannot be used."""
    if not isinstance(activation, nn.Module):
        module_type = _FUNCTIONS.get(activation)
        if module_type is None:
            return f"activation function {getattr(activation, '__name__', activation)!r} is not a known elementwise one"
        return module_type()
    if (why := activation_problem(activation)) is not None:
        return why
    if getattr(activation, "inplace", False) is True:
        activation = copy.copy(activation)  # the kept units are a view of the GEMM output: no in-place
        activation.inplace = False
    return activation
