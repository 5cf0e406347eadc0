"""A compiled training step for ARD models: the patterns drawn outside the graph (``draw_patterns``), the
model's forward and backward compiled, on CUDA as CUDA graphs (``torch.compile(mode="reduce-overhead")``).
With ``static_shapes=True`` models (MLP, FFN, converted blocks) it needs one graph per ``(dp, keep)``
combination of the sites, whatever the offsets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._env import check_positive
from ..models.sites import draw_patterns, law_classes, static_graph_bound, static_modules


def compiled_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    mode: str | None = None,
    backend: str = "inductor",
    clip: float | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(x, target) -> loss`` (detached): draw this step's patterns, zero_grad, compiled forward,
    ``loss_fn(output, target)``, backward, gradient-norm clipping to ``clip`` (None: none; as ``train_lm``'s),
    ``optimizer.step()``. ``mode`` defaults to "reduce-overhead"
    (CUDA graphs) when the model's parameters are on CUDA, else torch.compile's default; ``backend``
    as torch.compile's. Its calls allow as many recompiles as the model's static-shape modules may need
    (``static_graph_bound``, summed over the laws of every rate a schedule sets, twice for a batch of another
    size), where that passes Dynamo's recompile limit."""
    if clip is not None:
        check_positive("clip", clip)
    cuda = any(p.is_cuda for p in model.parameters())
    static = static_modules(model)
    # batch groups split the batch: with a dynamic batch their row counts are symbolic, and Inductor miscompiles
    # a group of one row (its small-GEMM decomposition, silently wrong numbers); static graphs, one per batch size
    grouped = any(getattr(module, "groups", 1) > 1 for module in static)
    mode = mode or ("reduce-overhead" if cuda else None)
    run = torch.compile(model, mode=mode, backend=backend, dynamic=False if grouped else None)
    # a graph per (dp, keep) combination may pass Dynamo's default recompile limit (8): raise it to the bound,
    # and by the bound of each new set of laws a new rate brings (its graphs come on top of the old ones); twice
    # that, since a batch of another size (an epoch's last) compiles each combination again (with a dynamic
    # batch, or at its size with groups)
    bounds: dict[tuple, int] = {}  # the graph bound of each set of the sites' (dp, keep) classes seen

    def recompile_limit() -> int:
        classes = tuple(law_classes(law) for module in static for law in module.site_laws())
        if classes not in bounds:
            bounds[classes] = static_graph_bound(model)
        return max(torch._dynamo.config.recompile_limit, 2 * sum(bounds.values()))

    def step(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        draw_patterns(model)  # outside the graph: a static model's offsets land in its buffer
        if cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten
        optimizer.zero_grad(set_to_none=True)
        with torch._dynamo.config.patch(recompile_limit=recompile_limit()):
            loss = loss_fn(run(x), target)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return loss.detach()

    return step
