"""Checkpoint keys after two converts: a Sequential renumbered twice (a feed-forward chain collapsed first, then an
output-side pair) still saves and loads under the keys it had before either convert, nested Sequentials included."""

import pytest
import torch
from torch import nn

from approxdrop import convert


def stack() -> nn.Sequential:
    """An output-side pair, a feed-forward chain, and a nested Sequential whose Linear is ``6.0``."""
    return nn.Sequential(
        nn.Linear(8, 8),
        nn.Dropout(0.1),  # output side: converted only by the second convert
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(16, 8),  # feed-forward: the first convert
        nn.Sequential(nn.Linear(8, 4)),
    )


def test_a_sequential_converted_twice_keeps_its_keys_after_the_second_renumbering():
    """The first convert moves ``6`` to ``3``; the second moves it on to ``2``. Before the second convert, the block
    that now sits at ``2`` had the entry ``2.0`` → ``2``. After the second convert, ``2.0.weight`` is the nested
    Linear (checkpoint key ``6.0.weight``), and the block's earlier entry must not rename it to ``2.weight``."""
    torch.manual_seed(0)
    model = stack()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert convert(model).converted == ["2"]
    assert convert(model, output_side=True).converted == ["0"]
    assert list(model[2]._modules) == ["0"] and isinstance(model[2][0], nn.Linear)  # the nested Sequential, now at 2
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_a_checkpoint_of_the_unconverted_stack_loads_strictly_after_two_converts():
    """The nested Linear gets the checkpoint's ``6.0`` tensors, not the first Linear of the feed-forward's."""
    torch.manual_seed(0)
    model = stack()
    convert(model)
    convert(model, output_side=True)
    fresh = stack()
    result = model.load_state_dict(fresh.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model[2][0].weight, fresh[6][0].weight)
    assert torch.equal(model[1].fc1.weight, fresh[2].weight)  # the block's first Linear keeps its own


def chains_around_a_pair() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 8),  # the first convert's block 0
        nn.Linear(8, 8), nn.Dropout(0.1),  # moved to 1, 2 by the first convert; block 1 of the second
        nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 8),  # block 3 of the first, moved to 2
    )  # fmt: skip


def nested_chains_around_a_pair() -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(8, 8), chains_around_a_pair())


@pytest.mark.parametrize("make", [chains_around_a_pair, nested_chains_around_a_pair])
def test_a_checkpoint_loads_where_a_renumbered_block_had_a_checkpoint_prefix_of_another_part(make):
    """The second convert moves the first one's block at ``3`` to ``2``; its own prefix keeps the checkpoint's name
    ``3.`` only for keys nothing else maps, so the checkpoint's ``3.weight`` (the first block's second Linear) loads
    there, not into a raw ``2.weight`` that does not exist (it was both missing and unexpected)."""
    torch.manual_seed(0)
    model = make()
    keys = list(model.state_dict())
    convert(model)
    convert(model, output_side=True)
    assert list(model.state_dict()) == keys
    fresh = make()
    result = model.load_state_dict(fresh.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
