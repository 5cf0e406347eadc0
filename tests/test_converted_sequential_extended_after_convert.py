"""A Sequential that convert renumbered (a chain collapsed into one block) and that is then changed as
nn.Sequential allows: a head appended still saves and loads (the key map claims no names for the chain's parts
that hold nothing, the activation and the dropout, which it did, so the head's ``1.weight`` was both missing and
unexpected); a change the map cannot follow is an error naming it, where it lost tensors silently (three Linears
appended: the third's ``3.weight`` overwrote the chain's second Linear in state_dict) or broke loading."""

import pytest
import torch
from torch import nn

import approxdrop as ad


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8))


def converted() -> nn.Sequential:
    seq = chain()
    ad.convert(seq)
    return seq


def test_a_head_appended_after_convert_saves_and_loads_with_the_chains_checkpoint_keys():
    seq = converted()
    seq.append(nn.Linear(8, 2))
    state = seq.state_dict()
    assert list(state) == ["0.weight", "0.bias", "3.weight", "3.bias", "1.weight", "1.bias"]
    seq.load_state_dict(state, strict=True)
    twin = chain().append(nn.Linear(8, 2))  # unconverted, its head at 4: only the chain's keys are shared
    result = seq.load_state_dict(twin.state_dict(), strict=False)
    assert result.missing_keys == ["1.weight", "1.bias"] and result.unexpected_keys == ["4.weight", "4.bias"]
    assert torch.equal(seq[0].fc2.weight, twin[3].weight)


def test_a_module_appended_at_a_key_the_chain_keeps_is_an_error_not_a_lost_tensor():
    seq = converted()
    for _ in range(3):
        seq.append(nn.Linear(8, 8))  # the third at 3, where the chain's second Linear is saved
    with pytest.raises(RuntimeError, match=r"two of its tensors would be saved as 3\.(weight|bias): a module added"):
        seq.state_dict()


def test_a_module_inserted_before_the_block_is_an_error_on_save_and_load():
    seq = converted()
    state = seq.state_dict()
    seq.insert(0, nn.LayerNorm(8))  # the block moves to 1: the map's 0.0 names nothing now
    with pytest.raises(RuntimeError, match=r"its children changed after convert \('0\.0' no longer names a module\)"):
        seq.state_dict()
    with pytest.raises(RuntimeError, match="children changed after convert"):
        seq.load_state_dict(state)
