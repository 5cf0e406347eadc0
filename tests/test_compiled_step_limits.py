"""compiled_step's recompile limit when a rate schedule *lowers* p (the old rate's graphs stay in Dynamo's
cache and count against the limit), and its static batch shapes for a model of two batch groups."""

import torch
from torch import nn
from torch._dynamo.utils import counters

import approxdrop as ad


def test_a_schedule_that_lowers_p_keeps_every_step_compiled():
    """p = 0.5 first (36 combinations, some 8 graphs met in 25 steps), then p = 0.1 (4 combinations): the
    limit must count the graphs of both rates, not only twice the new rate's bound of 4."""
    model = ad.ApproxDropoutMLP(
        [5, 24, 24, 2], 0.5, method="row", static_shapes=True, generator=torch.Generator().manual_seed(2)
    )
    torch._dynamo.reset()
    counters.clear()
    step = ad.compiled_step(
        model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.cross_entropy, backend="eager"
    )
    x, y = torch.randn(3, 5), torch.randint(2, (3,))
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False):
        for p, steps in ((0.5, 25), (0.1, 15)):
            model.p = p
            for _ in range(steps):
                step(x, y)
    assert counters["stats"]["unique_graphs"] >= torch._dynamo.config.recompile_limit, counters["stats"]
    assert counters["frames"]["total"] == counters["frames"]["ok"], counters["frames"]  # every frame compiled
    assert torch._dynamo.config.recompile_limit == 8


def test_two_batch_groups_compile_one_static_graph_per_batch_size():
    """A grouped static model (two groups here) is compiled with static shapes, one graph per batch size:
    batches of 8, 5, 6, 7, 9 and 8 rows of one pattern class make five graphs (a dynamic batch made three,
    its later sizes sharing symbolic graphs)."""
    one_class = ad.PatternDistribution(((2, 1),), (1.0,))
    model = ad.ApproxDropoutMLP(
        [5, 12, 2], 0.5, method="row", groups=2, distributions=[one_class], static_shapes=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch._dynamo.reset()
    counters.clear()
    step = ad.compiled_step(
        model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.cross_entropy, backend="eager"
    )
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False):
        for batch in (8, 5, 6, 7, 9, 8):
            step(torch.randn(batch, 5), torch.randint(2, (batch,)))
    assert counters["stats"]["unique_graphs"] == 5, counters["stats"]
