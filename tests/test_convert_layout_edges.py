"""convert's layout readers at their edges: what they must refuse (a residual, a statement between the chain's
calls, a dropout not on the Linear's output or not on the next line, a rate that is not the layer's) and what they
must keep (named numeric keys, checkpoint keys and parameter order)."""

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from approxdrop import convert
from approxdrop.models.adapters import OutputSideAdapter, found_feed_forward, register_adapter


def test_named_numeric_keys_with_a_gap_are_kept():
    """Keys "1".."5" are not Sequential's default numbering ("0".."4"): convert keeps them (as any named key)."""
    seq = nn.Sequential(OrderedDict([
        ("1", nn.Linear(4, 8)), ("2", nn.ReLU()), ("3", nn.Dropout(0.2)), ("4", nn.Linear(8, 4)),
        ("5", nn.LayerNorm(4)),
    ]))  # fmt: skip
    keys = list(seq.state_dict())
    report = convert(seq)
    assert report.converted == ["1"]
    assert list(seq._modules) == ["1", "5"] and isinstance(seq.get_submodule("5"), nn.LayerNorm)
    assert list(seq.state_dict()) == keys


class DenseActDrop(nn.Module):
    """dense, then an activation, then dropout: the dropout is not right after the Linear."""

    def __init__(self):
        super().__init__()
        self.dense, self.act, self.dropout = nn.Linear(4, 4), nn.Tanh(), nn.Dropout(0.5)

    def forward(self, x):
        h = self.dense(x)
        h = self.act(h)
        h = self.dropout(h)
        return h


def test_registered_output_side_adapter_needs_the_dropout_on_the_next_line():
    register_adapter(DenseActDrop, OutputSideAdapter("output-side", "dense", "dropout"))
    model = nn.Sequential(DenseActDrop())
    report = convert(model, output_side=True)
    assert report.converted == []
    assert "its forward does not apply self.dropout right after self.dense" in dict(report.skipped)["0.dropout"]
    assert isinstance(model[0].dense, nn.Linear)


class DropsTheInputNotTheOutput(nn.Module):
    """dense on one line, dropout on the next, but on another variable: no output-side pair."""

    def __init__(self):
        super().__init__()
        self.dense, self.dropout = nn.Linear(4, 4), nn.Dropout(0.5)

    def forward(self, x):
        h = self.dense(x)
        x = self.dropout(x)
        return h + x


def test_found_output_side_needs_the_dropout_on_the_linears_output():
    model = nn.Sequential(DropsTheInputNotTheOutput())
    report = convert(model, output_side=True)
    assert report.converted == [] and isinstance(model[0].dense, nn.Linear)


class Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.drop, self.fc2 = nn.Linear(6, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 6)


class ResidualIntoFc2(Square):
    def forward(self, x):
        h = self.fc1(x)
        h = self.act(h)
        h = self.drop(h)
        h = self.fc2(h + x)
        return h


class ScaledMidway(Square):
    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = x * 2
        x = self.drop(x)
        x = self.fc2(x)
        return x


class ClampedMidway(Square):
    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        if x.dim() > 0:
            x = x.clamp(max=0.5)
        x = self.drop(x)
        x = self.fc2(x)
        return x


def _left_alone(cls):
    torch.manual_seed(0)
    model = nn.Sequential(cls())
    x = torch.randn(3, 6)
    with torch.no_grad():
        before = model.eval()(x)
    assert found_feed_forward(model[0]) is None
    assert convert(model).converted == []
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_a_residual_into_fc2_is_not_the_chain():
    _left_alone(ResidualIntoFc2)


def test_a_statement_between_the_calls_is_not_the_chain():
    _left_alone(ScaledMidway)


def test_only_a_dtype_cast_may_sit_between_the_calls():
    _left_alone(ClampedMidway)


class ChainWithAnUnusedBufferChild(nn.Module):
    """The chain, plus a child with buffers only that the forward never calls: not only the chain's modules."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.drop, self.fc2 = nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 6)
        self.stats = nn.BatchNorm1d(6, affine=False)

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        return x


def test_a_module_with_children_beyond_the_chain_is_left_alone():
    model = nn.Sequential(ChainWithAnUnusedBufferChild())
    keys = list(model.state_dict())
    assert found_feed_forward(model[0]) is None
    assert convert(model).converted == []
    assert list(model.state_dict()) == keys  # the buffers of ``stats`` would be lost with the module


class LlamaLike(nn.Module):
    def __init__(self, act=None):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(6, 16, bias=False), nn.Linear(6, 16, bias=False)
        self.down_proj = nn.Linear(16, 6, bias=False)
        self.act_fn = nn.SiLU() if act is None else act

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_a_gated_mlp_without_dropout_given_p_0_is_listed_not_converted():
    model = nn.Sequential(LlamaLike())
    report = convert(model, p=0.0)
    assert report.converted == [] and [name for name, _ in report.no_dropout] == ["0"]
    assert type(model[0]) is LlamaLike


def test_a_gated_blocks_activation_keeps_its_checkpoint_keys():
    model = nn.Sequential(LlamaLike(act=nn.PReLU()))
    keys = list(model.state_dict())
    assert convert(model, p=0.2).converted == ["0"]
    assert list(model.state_dict()) == keys
    fresh = nn.Sequential(LlamaLike(act=nn.PReLU()))
    model.load_state_dict(fresh.state_dict(), strict=True)


class BartLike(nn.Module):
    def __init__(self, rate=0.1, act_first=False):
        super().__init__()
        if act_first:
            self.activation_fn = nn.PReLU()
        self.fc1, self.fc2 = nn.Linear(6, 24), nn.Linear(24, 6)
        if not act_first:
            self.activation_fn = nn.GELU()
        self.activation_dropout = rate

    def forward(self, x):
        h = self.activation_fn(self.fc1(x))
        h = F.dropout(h, p=self.activation_dropout, training=self.training)
        return self.fc2(h)


def test_a_functional_layer_at_activation_dropout_0_is_left_alone():
    layer = nn.Sequential(BartLike(rate=0.0))
    report = convert(layer, p=0.3)
    assert report.converted == [] and isinstance(layer[0].fc1, nn.Linear)
    assert "no dropout to convert" in dict(report.skipped)["0.activation_dropout"]


def test_a_functional_layer_whose_activation_params_come_first_keeps_parameter_order():
    layer = nn.Sequential(BartLike(act_first=True))
    before = [id(q) for q in layer.parameters()]
    convert(layer)
    assert [id(q) for q in layer.parameters()] == before


class IndexedSeq(nn.Sequential):
    """A Sequential subclass with its own forward that reads entries by position."""

    def forward(self, x):
        return self[3](self[2](self[1](self[0](x)))) + x


def test_a_sequential_subclass_with_its_own_forward_is_left_alone():
    model = nn.Sequential(IndexedSeq(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 4)))
    assert convert(model).converted == []
    model.eval()(torch.randn(2, 4))


class RatePropertyLayer(nn.Module):
    """BART's forward, but activation_dropout is a read-only property (from a config), not an attribute."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.activation_fn = nn.Linear(6, 24), nn.Linear(24, 6), nn.GELU()

    forward = BartLike.forward

    @property
    def activation_dropout(self):
        return 0.1


def test_a_layer_without_an_activation_dropout_attribute_is_not_bart():
    model = nn.Sequential(RatePropertyLayer())
    convert(model)  # a plan that set the property would half-convert, then fail
    assert isinstance(model[0].fc1, nn.Linear)


class SeparateLinesOtherRate(nn.Module):
    """BioGPT's one-call-per-line layout, but the hidden-unit dropout runs at another rate attribute."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.activation_fn = nn.Linear(6, 24), nn.Linear(24, 6), nn.GELU()
        self.activation_dropout, self.hidden_dropout = 0.1, 0.4

    def forward(self, hidden_states):
        hidden_states = self.fc1(hidden_states)
        hidden_states = self.activation_fn(hidden_states)
        hidden_states = F.dropout(hidden_states, p=self.hidden_dropout, training=self.training)
        hidden_states = self.fc2(hidden_states)
        return hidden_states


def test_the_separate_layout_needs_the_activation_dropout_rate():
    model = nn.Sequential(SeparateLinesOtherRate())
    assert convert(model).converted == []
    assert isinstance(model[0].fc1, nn.Linear)


def test_seq_first_torch_layer_groups_split_samples_not_positions():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=32, dropout=0.5, batch_first=False)
    layer.dropout2.p = 0.0
    convert(nn.Sequential(layer), groups=2, generator=torch.Generator().manual_seed(3))
    layer.train()
    T, B = 5, 4
    x = torch.randn(T, B, 8)
    with torch.no_grad():
        for _ in range(200):  # a draw whose two groups keep different units
            y = layer._ff_block(x)
            patterns = layer.ard_ffn.last_pattern
            masks = [q.keep_mask(32, x.device) for q in patterns]
            if not torch.equal(masks[0], masks[1]):
                break
        assert isinstance(patterns, tuple) and len(patterns) == 2 and not torch.equal(masks[0], masks[1])
        for b in range(B):
            q = patterns[b * 2 // B]  # the batch split into 2 groups, as torch.tensor_split
            mask = q.keep_mask(32, x.device).to(x.dtype) * q.scale
            h = layer.activation(layer.linear1(x[:, b])) * mask
            torch.testing.assert_close(y[:, b], layer.linear2(h))
