"""Checkpoint keys after convert: aliases load strictly, keys keep their order, a key with no place is reported, and
nested renumbered Sequentials map back to the names before convert."""

import torch
from torch import nn

from approxdrop import convert


def test_a_torch_layers_parametric_activation_alias_loads_strictly():
    """The converted torch layer holds its PReLU twice (``activation`` and ``ard_ffn.1``): the alias is not saved,
    and on load it is filled from the live key, so a checkpoint of the unconverted layer loads strictly."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, activation=nn.PReLU(), batch_first=True)
    keys = list(layer.state_dict())
    model = nn.Sequential(layer)
    assert convert(model).converted == ["0.ard_ffn"]
    assert [k.removeprefix("0.") for k in model.state_dict()] == keys
    fresh = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, activation=nn.PReLU(), batch_first=True))
    result = model.load_state_dict(fresh.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


class ScaledSiLU(nn.Module):
    elementwise = True

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x):
        return nn.functional.silu(x) * self.scale


class ActFirstLlamaLike(nn.Module):
    """Llama's MLP layout whose activation (with a buffer) is registered before the Linears."""

    def __init__(self):
        super().__init__()
        self.act_fn = ScaledSiLU()
        self.gate_proj, self.up_proj = nn.Linear(6, 16, bias=False), nn.Linear(6, 16, bias=False)
        self.down_proj = nn.Linear(16, 6, bias=False)

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_checkpoint_keys_keep_their_order():
    model = nn.Sequential(ActFirstLlamaLike())
    keys = list(model.state_dict())
    assert convert(model, p=0.2).converted == ["0"]
    assert list(model.state_dict()) == keys


def test_a_checkpoint_key_with_no_place_is_reported_unexpected():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(  # noqa: E731
        nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, activation=nn.PReLU(), batch_first=True)
    )
    model = make()
    convert(model)
    state = dict(make().state_dict())
    state["0.ard_ffn.1.weight"] = torch.zeros(1)  # the alias's raw name: not a key of the checkpoint naming
    result = model.load_state_dict(state, strict=False)
    assert "0.ard_ffn.1.weight" in result.unexpected_keys


def test_lora_targets_through_two_renumbered_sequentials():
    """Both Sequentials renumber (each a chain collapsed before a kept Linear): the inner Linear "4.4" before
    convert is "1.1" now; its old name is found through both key maps, the deepest first."""

    def seq(last):
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 4), last)

    from approxdrop import lora_targets

    model = seq(seq(nn.Linear(4, 4)))
    convert(model)
    assert isinstance(model.get_submodule("1.1"), nn.Linear)
    assert lora_targets(model, ["4.4"]) == ["1.1"]
