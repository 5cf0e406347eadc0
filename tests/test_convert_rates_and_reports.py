"""convert's rates and report lines: the mode a block takes, a given p reaching every kind of block, a functional
layer's rate, and which dropouts the report calls output-side."""

import torch
from torch import nn
from torch.nn import functional as F

from approxdrop import convert
from approxdrop.models.convert import OUTPUT_OFF


def test_block_takes_the_mode_of_its_dropout_not_of_fc1():
    """Monte Carlo dropout: model.eval(), then the nn.Dropout back in train mode. The converted block must
    keep dropping (its mode is its dropout's), not take fc1's eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 8))
    model.eval()
    model[2].train()
    convert(model)
    block = model[0]
    assert block.dropout.training, "the block's dropout lost its train mode (MC dropout switched off)"
    assert block.training, "convert: the block takes its dropout's train / eval mode (not fc1's)"
    x = torch.randn(4, 8)
    with torch.no_grad():
        dense = block.fc2(block.activation(block.fc1(x)))
        assert not torch.equal(block(x), dense)


class BartLike(nn.Module):
    """BART's layout: fc2(F.dropout(activation_fn(fc1(x)), p=self.activation_dropout)), found by fits()."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 24), nn.Linear(24, 6)
        self.activation_fn = nn.GELU()
        self.activation_dropout = 0.1
        self.dropout = 0.25  # the residual rate: another attribute

    def forward(self, x):
        h = self.activation_fn(self.fc1(x))
        h = F.dropout(h, p=self.activation_dropout, training=self.training)
        h = self.fc2(h)
        return F.dropout(h, p=self.dropout, training=self.training)


def test_given_p_reaches_a_functional_dropout_layers_block():
    layer = nn.Sequential(BartLike())
    report = convert(layer, p=0.3)
    assert report.converted == ["0.fc1"]
    assert layer[0].fc1.p == 0.3 and report.rates["0.fc1"] == 0.3


def test_functional_layer_rate_is_activation_dropout():
    layer = nn.Sequential(BartLike())
    report = convert(layer)
    assert layer[0].fc1.p == 0.1 and report.rates["0.fc1"] == 0.1


class DenseThenTwoDropouts(nn.Module):
    """An output-side pair (dense -> dropout) and a second dropout applied elsewhere in the forward."""

    def __init__(self):
        super().__init__()
        self.dense, self.dropout, self.attn_drop = nn.Linear(4, 4), nn.Dropout(0.1), nn.Dropout(0.2)

    def forward(self, x):
        x = self.attn_drop(x) * 2
        h = self.dense(x)
        h = self.dropout(h)
        return h


def test_only_the_output_side_dropout_is_called_output_side():
    report = convert(nn.Sequential(DenseThenTwoDropouts()))
    reasons = dict(report.skipped)
    assert reasons["0.dropout"] == OUTPUT_OFF
    assert reasons["0.attn_drop"] != OUTPUT_OFF


class NamesOnlyALongerAttribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.drop, self.drop_path = nn.Linear(4, 4), nn.Dropout(0.1), nn.Dropout(0.2)

    def forward(self, x):
        return x + self.drop_path(self.lin(x)) * 2


def test_self_drop_path_does_not_name_self_drop():
    reasons = dict(convert(nn.Sequential(NamesOnlyALongerAttribute())).skipped)
    assert "never names self.drop:" in reasons["0.drop"]
    assert "never names" not in reasons["0.drop_path"]
