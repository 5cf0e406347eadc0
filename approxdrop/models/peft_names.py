"""Module names for peft after ``convert``: a block nests the Linears it takes (T5's ``wi`` becomes
``DenseReluDense.0``), and an output-side block takes its Linear's name (BERT's ``output.dense`` holds
``output.dense.linear``), so LoRA ``target_modules`` written for the unconverted model silently miss the first
and hit the second, which peft refuses. ``lora_targets`` translates them through the checkpoint names the
converted model keeps (``state_keys``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .state_keys import saved_key


def names_before_convert(model: nn.Module) -> dict[str, str]:
    """{module name now: its name before ``convert``} for every module of ``model`` that holds a parameter of
    its own (Linear, Conv1D, Embedding ...), read from the checkpoint key of its first one. A module reached
    twice (tied) is named at its live place only."""
    out = {}
    for name, module in model.named_modules():
        own = next(iter(module.named_parameters(recurse=False)), None)
        if own is None:
            continue
        key = saved_key(model, f"{name}.{own[0]}" if name else own[0])
        if key is not None:
            out[name] = key.removesuffix(f".{own[0]}") if "." in key else ""
    return out


def _peft_match(name: str, target: str) -> bool:
    """peft's rule for a list of target names: ``name`` is ``target`` or ends with ``"." + target``."""
    return name == target or name.endswith(f".{target}")


def lora_targets(model: nn.Module, names: Sequence[str]) -> list[str]:
    """peft's ``target_modules`` for a converted ``model``, from module names as they were before ``convert``:
    the full current names of the modules whose old name is one of ``names`` or ends with ``"." + name`` (peft's
    rule), in module order. ``LoraConfig(target_modules=ad.lora_targets(model, ["q", "v", "wi", "wo"]))`` then
    wraps T5's feed-forward Linears, which the names alone miss after ``convert``. ValueError for a string (peft
    reads one as a regular expression), an empty list, a name that matches no module, or targets that peft's
    rule would also find at the end of other modules' names (top-level numbered modules: "1" ends "0.1")."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(
            f"names must be a non-empty list of module names (peft reads a single string as a regular expression), "
            f"got {names!r}"
        )
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"names must be non-empty strings, got {bad!r} in {names!r}")
    before = names_before_convert(model)
    hits = {n: [now for now, old in before.items() if _peft_match(old, n)] for n in names}
    if missing := [n for n, found in hits.items() if not found]:
        raise ValueError(f"no module of the model was called {missing} before convert (nor ends with '.' + it)")
    found = {now for targets in hits.values() for now in targets}
    targets = [name for name in before if name in found]
    also = [n for n, _ in model.named_modules() if n not in found and any(_peft_match(n, t) for t in targets)]
    if also:  # top-level numbered modules: target "1" is also the end of "0.1"
        raise ValueError(
            f"peft would also wrap {also}, whose names end with a target's: pass target_modules as the regular "
            f"expression '|'.join(map(re.escape, targets)) with these targets, {targets}, which peft matches whole"
        )
    return targets
