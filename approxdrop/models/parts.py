"""Whether a block may compute a part's GEMM itself: the blocks (ApproxDropoutFFN, its gated twin,
OutputRowDropout) read a Linear's weight and never call the module, so a part that must be called (a
subclass with its own forward, a patched forward, hooks) would silently stop running in training.

``convert`` refuses such parts with the reason (``gemm_problem``, ``hook_problem``). A part that becomes
one after the block is built (LoRA wrapped around it, a hook registered later) is caught by ``must_call``
(a few attribute reads) on each training forward that would read the weights, and the block then calls its
parts: dense GEMMs, the same dropout, no GEMM saved (``warn_calls_parts`` says so once). The masked executor
calls the parts anyway, so it asks nothing.
"""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .sites import is_elementwise, slope_problem, type_name


def gemm_problem(name: str, linear: nn.Module, conv1d: bool = False) -> str | None:
    """Why a block cannot compute the GEMM of ``linear`` itself (it reads the weight and never calls the
    module), or None. ``conv1d``: a Hugging Face Conv1D, whose GEMM the block computes transposed."""
    if not conv1d and (not isinstance(linear, nn.Linear) or type(linear).forward is not nn.Linear.forward):
        return f"{name} is {type_name(linear, qualified=True)}, not an nn.Linear (the block computes the GEMM itself)"
    if "forward" in vars(linear):
        return (
            f"{name} has its forward replaced on the instance (a patch, or a wrapper's hook such as accelerate's): "
            "the block computes the GEMM itself, so in training the replacement would silently stop running"
        )
    return None


def activation_problem(activation: nn.Module) -> str | None:
    """Why a block cannot apply ``activation`` to the kept units only (it may mix units), or None."""
    if is_elementwise(activation):
        return None
    if (why := slope_problem(activation)) is not None:
        return f"activation not elementwise: {why}"
    return f"activation not elementwise: {type_name(activation)} may mix units, and would see only the kept ones"


def hook_problem(module: nn.Module) -> str | None:
    """Why ``module``'s hooks would stop working inside a block, or None when it has none; for a lazy module
    not yet initialised (its hook is its own initialisation), that it must be initialised first."""
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        return (
            f"is an uninitialised {type_name(module)}: its parameters are made at its first forward, which the "
            "block would never call. Run one forward pass of the model first (initialising it), then convert"
        )
    pre = list(module._forward_pre_hooks.values())
    kinds = {type(h).__module__ + "." + type(h).__name__ for h in pre}
    if any("prune" in k for k in kinds) or any(k.endswith("WeightNorm") for k in kinds):
        return (
            "is re-parametrised by torch.nn.utils.prune or the legacy weight_norm: a forward pre-hook recomputes its "
            "weight each forward, and the block reads the weight without calling the module. Use "
            "torch.nn.utils.parametrize (torch.nn.utils.parametrizations.weight_norm, or prune.remove first), "
            "whose weight is recomputed at each read"
        )
    hooks = pre + list(module._forward_hooks.values())
    hooks += list(module._backward_hooks.values()) + list(module._backward_pre_hooks.values())
    if hooks:
        return (
            f"carries {len(hooks)} forward/backward hook(s): the block computes only the kept units without "
            "calling its parts, so in training they would silently stop firing. Remove them to convert"
        )
    return None


def must_call(part: nn.Module | None, gemm_class: type[nn.Module] = nn.Linear) -> str | None:
    """Why a block must call ``part`` (None: no part) instead of reading its weight, or None: its class's
    forward is not ``gemm_class``'s (a wrapper such as peft's LoRA Linear put in its place), its instance has
    its own forward, or it carries hooks. Checked on training forwards, so it reads attributes only."""
    if part is None:
        return None
    if type(part).forward is not gemm_class.forward:
        kind = f"{type(part).__module__}.{type(part).__qualname__}"  # peft's LoRA wrapper is also called Linear
        return f"is now a {kind} (a module with its own forward, such as a LoRA wrapper)"
    if "forward" in part.__dict__:
        return "has its forward replaced on the instance"
    if part._forward_hooks or part._forward_pre_hooks or part._backward_hooks or part._backward_pre_hooks:
        return "carries hooks"
    return None


def warn_calls_parts(block: nn.Module, name: str, why: str) -> None:
    """A RuntimeWarning (shown once per call site, as warnings are) that ``block`` calls its parts, and ``why``
    (``must_call``'s reason for its part ``name``)."""
    warnings.warn(
        f"{type(block).__name__}: its {name} {why} since the block was built, so in training the block calls its "
        "parts instead of computing only the kept units: dense GEMMs times the row pattern's mask (the same dropout, "
        "no GEMM work saved)",
        RuntimeWarning,
        stacklevel=3,
    )
