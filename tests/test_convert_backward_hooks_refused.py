"""A backward hook on a Linear of a chain refuses the conversion, as a forward hook does: the block computes the
kept units without calling the Linear, so in training the hook would silently stop firing."""

import pytest
import torch
from torch import nn

from approxdrop import convert


def chain():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 8))


@pytest.mark.parametrize("entry", [0, 3])
@pytest.mark.parametrize("kind", ["full_backward", "full_backward_pre"])
def test_a_backward_hook_on_a_chains_linear_refuses_it_with_the_reason(kind, entry):
    model = chain()
    calls = []
    if kind == "full_backward":
        model[entry].register_full_backward_hook(lambda mod, grad_in, grad_out: calls.append(1))
    else:
        model[entry].register_full_backward_pre_hook(lambda mod, grad_out: calls.append(1))
    before = list(model.children())
    report = convert(model)
    assert report.converted == [] and list(model.children()) == before
    assert f"entry {entry} carries 1 forward/backward hook(s)" in dict(report.skipped)["2"]
    model.train()(torch.randn(4, 8, requires_grad=True)).sum().backward()
    assert calls == [1]  # the chain left as it was: the hook still fires
