"""Converted blocks at their edges: the mode they drop in, groups of samples, hooks put on after convert, activations
that only look elementwise, Linear subclasses with their own forward, and lora_targets' name rule and order."""

import torch
from torch import nn

from approxdrop import ApproxDropoutFFN, convert, lora_targets


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.v, self.q, self.wi, self.up_wi = (nn.Linear(4, 4) for _ in range(4))


def test_lora_targets_match_the_whole_last_name_only():
    model = nn.Sequential(Attn())
    assert lora_targets(model, ["wi"]) == ["0.wi"]


def test_lora_targets_are_in_module_order():
    model = nn.Sequential(Attn())
    assert lora_targets(model, ["q", "v"]) == ["0.v", "0.q"]


class DenseDrop(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense, self.dropout = nn.Linear(8, 64), nn.Dropout(0.5)

    def forward(self, x):
        h = self.dense(x)
        h = self.dropout(h)
        return h


def _drops(module, x, dense):
    with torch.no_grad():
        return any(not torch.equal(module(x), dense) for _ in range(20))


def test_output_side_block_drops_when_only_its_dropout_is_in_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(DenseDrop())
    assert convert(model, output_side=True).converted == ["0.dense"]
    model.eval()
    block = model[0].dense
    block.dropout.train()  # Monte Carlo dropout
    x = torch.randn(4, 8)
    with torch.no_grad():
        dense = block.linear(x)
    assert _drops(model, x, dense)


def test_ffn_block_drops_when_only_its_dropout_is_in_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 8))
    convert(model)
    model.eval()
    block = model[0]
    block.dropout.train()
    x = torch.randn(4, 8)
    with torch.no_grad():
        dense = block.fc2(block.activation(block.fc1(x)))
    assert _drops(block, x, dense)


def test_compact_grouped_ffn_gives_each_sample_one_pattern_at_every_position():
    torch.manual_seed(0)
    ffn = ApproxDropoutFFN(8, 64, 0.5, "relu", groups=2, executor="compact").train()
    x = torch.randn(3, 5, 8)  # 3 samples: groups of 2 and 1 samples, not of 8 and 7 rows
    with torch.no_grad():
        for _ in range(200):
            y = ffn(x)
            patterns = ffn.last_pattern
            masks = [q.keep_mask(64, x.device) for q in patterns]
            if not torch.equal(masks[0], masks[1]):
                break
        assert not torch.equal(masks[0], masks[1])
        for b in range(3):
            q = patterns[0 if b < 2 else 1]  # torch.tensor_split of 3 samples into 2 groups
            h = ffn.activation(ffn.fc1(x[b])) * (q.keep_mask(64, x.device).to(x.dtype) * q.scale)
            torch.testing.assert_close(y[b], ffn.fc2(h))


def test_a_backward_hook_put_on_after_convert_still_fires():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 8))
    convert(model, generator=torch.Generator().manual_seed(0))
    model[0].executor = "compact"  # the path that reads the weights (masked calls the parts anyway)
    calls = []
    model[0].fc1.register_full_backward_hook(lambda *args: calls.append(1))
    model.train()
    for _ in range(3):
        model(torch.randn(64, 8, requires_grad=True)).sum().backward()
    assert calls, "the Linear's backward hook never fired: the block read its weight without calling it"


def test_a_sequential_activation_must_be_all_elementwise():
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Softmax(-1)), nn.Dropout(0.2), nn.Linear(8, 4))
    report = convert(model)
    assert report.converted == []
    assert "not elementwise" in dict(report.skipped)["2"]


def test_a_prelu_with_a_slope_per_unit_is_refused_as_not_elementwise():
    model = nn.Sequential(nn.Linear(4, 8), nn.PReLU(8), nn.Dropout(0.2), nn.Linear(8, 4))
    report = convert(model)
    assert report.converted == []
    assert dict(report.skipped)["2"].startswith("activation not elementwise: nn.PReLU has 8 slopes")


class SoftReLU(nn.ReLU):
    """A subclass of an elementwise type whose own forward mixes units."""

    def forward(self, x):
        return torch.softmax(x, -1)


def test_a_subclass_of_an_elementwise_type_is_not_elementwise():
    model = nn.Sequential(nn.Linear(4, 8), SoftReLU(), nn.Dropout(0.2), nn.Linear(8, 4))
    assert convert(model).converted == []


class DoubledLinear(nn.Linear):
    """A Linear subclass with its own forward (a quantised or adapted Linear does this)."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_a_linear_subclass_with_its_own_forward_is_refused_output_side():
    """OutputRowDropout reads the weight of a part of the class it was built with: a subclass's forward would
    silently stop running in training, so convert refuses it."""
    model = nn.Sequential(DenseDrop())
    model[0].dense = DoubledLinear(8, 64)
    report = convert(model, output_side=True)
    assert report.converted == [] and type(model[0].dense) is DoubledLinear
    assert "not an nn.Linear" in dict(report.skipped)["0.dropout"]
