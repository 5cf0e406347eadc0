"""``convert``: swap the ``Linear -> elementwise activation -> Dropout -> Linear`` chains of an existing
model for ApproxDropoutFFN blocks, in place, and report what was converted and what was left alone.

Only chains of four consecutive entries of an ``nn.Sequential`` (exactly that class) are converted: there
the data flow is the order of the entries. A dropout anywhere else runs in some module's ``forward`` code,
which the converter cannot see; it is reported and left alone.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .._env import check_rate
from .ffn import ApproxDropoutFFN, ffn_method
from .lstm import ApproxDropoutLSTM
from .mlp import ApproxDropoutMLP
from .sites import is_elementwise

# Every dropout module of torch.nn; only nn.Dropout itself (per-element, any shape) is a dropout site
# of an FFN.
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
ARD_MODELS = (ApproxDropoutFFN, ApproxDropoutMLP, ApproxDropoutLSTM)  # their dropouts are already theirs


@dataclass
class ConvertReport:
    """What ``convert`` did: ``converted`` holds the qualified names of the new ApproxDropoutFFN blocks
    (``model.get_submodule(name)`` returns one), ``skipped`` a ``(name, reason)`` pair for every dropout
    module left alone, named as in the converted model."""

    converted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} Linear -> activation -> Dropout -> Linear chain(s)"]
        lines += [f"  {name}: ApproxDropoutFFN" for name in self.converted]
        lines.append(f"left {len(self.skipped)} dropout(s) alone")
        lines += [f"  {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class _Plan:
    """The new entries of one nn.Sequential, and where its converted blocks and skipped dropouts land."""

    seq: nn.Sequential
    entries: OrderedDict[str, nn.Module]
    converted: list[str]  # keys in ``entries``
    skipped: list[tuple[str, str]]  # (key in ``entries``, reason)


def convert(
    module: nn.Module,
    p: float | None = None,
    method: str = "row",
    groups: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> ConvertReport:
    """Replace every ``Linear -> elementwise activation -> Dropout -> Linear`` run of four consecutive
    entries of an ``nn.Sequential`` inside ``module`` (``module`` itself included, at any depth) by one
    ``ApproxDropoutFFN.from_modules`` block holding the same Linear and activation modules, so the very
    same Parameter objects: an optimizer built before keeps working, and eval outputs do not change.

    ``p`` defaults to each Dropout's own p; ``method`` and ``groups`` are ApproxDropoutFFN's; ``generator``
    is given to every new block. A block takes its Dropout's train / eval mode. Where two chains share a
    Linear (a stack Linear, act, Dropout, Linear, act, Dropout, Linear), the first one is converted. A
    container with the default keys "0", "1", ... is renumbered (as ``del seq[i]`` does); named entries
    keep their names, the block taking its first Linear's. Everything is planned before anything is
    replaced: a chain is converted whole or left untouched.
    """
    if p is not None:
        p = check_rate(p)
    ffn_method(method, groups)  # a bad method or group count fails before anything changes
    plans: list[_Plan] = []
    outside: list[tuple[nn.Module, str, str]] = []  # (parent, child key, reason) of dropouts elsewhere
    for parent in _parents(module):
        if type(parent) is nn.Sequential:
            plan = _plan(parent, p, method, groups, generator)
            if plan is not None:
                plans.append(plan)
            continue
        for key, child in parent.named_children():
            if isinstance(child, DROPOUT_TYPES):
                why = f"its parent {type(parent).__name__} is not an nn.Sequential: the data flow is in forward code"
                outside.append((parent, key, why))
    for plan in plans:
        plan.seq._modules = plan.entries
    names = {id(m): name for name, m in module.named_modules()}
    report = ConvertReport()
    for plan in plans:
        report.converted += [_join(names[id(plan.seq)], key) for key in plan.converted]
        report.skipped += [(_join(names[id(plan.seq)], key), why) for key, why in plan.skipped]
    report.skipped += [(_join(names[id(parent)], key), why) for parent, key, why in outside]
    return report


def _parents(module: nn.Module, seen: set[int] | None = None):
    """``module`` and its descendants, each once, parents first, not entering the library's own models."""
    seen = set() if seen is None else seen
    if id(module) in seen or isinstance(module, ARD_MODELS):
        return
    seen.add(id(module))
    yield module
    for child in module.children():
        yield from _parents(child, seen)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _plan(seq: nn.Sequential, p, method: str, groups, generator) -> _Plan | None:
    """The plan for one nn.Sequential (None when it holds no dropout module)."""
    keys, mods = list(seq._modules), list(seq._modules.values())
    blocks: dict[int, ApproxDropoutFFN] = {}  # first Linear's position -> its block
    skipped: list[tuple[int, str]] = []  # (position, reason)
    end = -1  # position of the last entry of the last converted chain
    for j, dropout in enumerate(mods):
        if not isinstance(dropout, DROPOUT_TYPES):
            continue
        why = _problem(mods, j)
        if why is None and j - 2 <= end:
            why = (
                "its first Linear is the last one of the chain converted just before it: consecutive chains "
                "share a Linear, and one block holds one chain (ApproxDropoutMLP covers such stacks)"
            )
        if why is None:
            try:
                rate = dropout.p if p is None else p
                block = ApproxDropoutFFN.from_modules(
                    mods[j - 2], mods[j - 1], mods[j + 1], rate, method, groups, generator=generator
                )
            except ValueError as error:
                why = f"cannot build the block: {error}"
            else:
                block.training = dropout.training
                block.dropout.train(dropout.training)
                blocks[j - 2] = block
                end = j + 1
        if why is not None:
            skipped.append((j, why))
    if not blocks and not skipped:
        return None
    kept = [i for i in range(len(mods)) if not any(start < i <= start + 3 for start in blocks)]
    numbered = keys == [str(i) for i in range(len(keys))]  # the default keys: renumber, as del seq[i] does
    new_key = {i: str(n) if numbered else keys[i] for n, i in enumerate(kept)}
    entries = OrderedDict((new_key[i], blocks.get(i, mods[i])) for i in kept)
    return _Plan(seq, entries, [new_key[i] for i in blocks], [(new_key[j], why) for j, why in skipped])


def _problem(mods: list[nn.Module], j: int) -> str | None:
    """Why the dropout at ``mods[j]`` is not in a convertible chain, or None if it is."""
    if type(mods[j]) is not nn.Dropout:
        return f"nn.{type(mods[j]).__name__} is not nn.Dropout: only per-element dropout becomes a row pattern"
    if j < 2 or j + 1 >= len(mods) or type(mods[j - 2]) is not nn.Linear or type(mods[j + 1]) is not nn.Linear:
        found = " -> ".join(type(m).__name__ for m in mods[max(j - 2, 0) : j + 2])
        return f"Dropout not between two Linears: needs Linear -> activation -> Dropout -> Linear, found {found}"
    fc1, act, fc2 = mods[j - 2], mods[j - 1], mods[j + 1]
    if not is_elementwise(act):
        return f"activation not elementwise: nn.{type(act).__name__} may mix units, and would see only the kept ones"
    if fc1.out_features != fc2.in_features:
        return (
            f"Linear sizes do not chain: {fc1.in_features} -> {fc1.out_features}, "
            f"then {fc2.in_features} -> {fc2.out_features}"
        )
    return None
