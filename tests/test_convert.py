"""convert: which chains become ApproxDropoutFFN blocks and which are left alone (and why), the same
Parameter objects (an optimizer built before keeps working), unchanged eval outputs, no half conversions."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from approxdrop import ApproxDropoutFFN, ApproxDropoutMLP, convert
from approxdrop.models.convert import ConvertReport


class Block(nn.Module):
    """A transformer-like residual block: its MLP is an nn.Sequential, its residual dropout runs in forward."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(0.1), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return x + self.drop(self.mlp(self.norm(x)))


def make_model() -> nn.Module:
    """Several chains (nested at several depths) next to look-alikes that must stay as they are."""
    torch.manual_seed(0)
    return nn.Sequential(
        Block(8),
        Block(8),
        nn.Sequential(nn.Linear(8, 16), nn.Softmax(-1), nn.Dropout(0.2), nn.Linear(16, 8)),  # not elementwise
        nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 8)),  # dropout before activation
        nn.Sequential(  # a stack: the two chains share the Linear 16 -> 16
            nn.Linear(8, 16),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(16, 16),
            nn.SiLU(),
            nn.Dropout(0.3),
            nn.Linear(16, 8),
        ),
        nn.Sequential(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.25), nn.Linear(32, 4))),  # a head
    )


EXPECTED_CONVERTED = ["0.mlp.0", "1.mlp.0", "4.0", "5.0.0"]
EXPECTED_SKIPPED = {
    "2.2": "activation not elementwise",
    "3.1": "output-side dropout (drops whole output features of the Linear before it): converted only on request",
    "4.2": "its first Linear is the last one of the chain converted just before it",
    "0.drop": "no adapter for its parent Block: its forward code applies it",
    "1.drop": "no adapter for its parent Block: its forward code applies it",
}


def test_converts_the_chains_and_reports_the_rest_with_reasons():
    model = make_model()
    report = convert(model)
    assert isinstance(report, ConvertReport) and report.converted == EXPECTED_CONVERTED
    assert {name for name, _ in report.skipped} == set(EXPECTED_SKIPPED)
    for name, why in report.skipped:
        assert why.startswith(EXPECTED_SKIPPED[name]), (name, why)
        assert isinstance(model.get_submodule(name), nn.Dropout)
    for name in report.converted:
        assert isinstance(model.get_submodule(name), ApproxDropoutFFN)
    assert [model.get_submodule(name).p for name in report.converted] == [0.1, 0.1, 0.3, 0.25]  # each Dropout's p
    assert model.get_submodule("5.0.0").d_out == 4
    assert [type(m).__name__ for m in model[4]] == ["ApproxDropoutFFN", "SiLU", "Dropout", "Linear"]
    assert list(model[4]._modules) == ["0", "1", "2", "3"]  # renumbered, as del seq[i] does
    text = str(report)
    assert "converted 4" in text and "left 5 dropout(s) alone" in text
    assert "  5.0.0: ApproxDropoutFFN (adapter sequential, p = 0.25)" in text
    assert "  2.2: activation not elementwise" in text


@pytest.mark.parametrize("method, groups", [("row", None), ("row-g4", None), ("row", 4), ("bernoulli", None)])
def test_eval_outputs_do_not_change(method, groups):
    model = make_model().eval()
    x = torch.randn(5, 8)
    before = model(x)
    report = convert(model, method=method, groups=groups)
    assert len(report.converted) == 4
    assert all(not m.training for m in model.modules())  # each block took its Dropout's mode
    assert torch.equal(model(x), before)


def test_the_same_parameter_objects_and_an_optimizer_built_before_keeps_working():
    model = make_model()
    params = list(model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(16, 8)
    model(x).square().mean().backward()
    optimizer.step()  # the optimizer has state for every parameter now
    convert(model, p=0.5, generator=torch.Generator().manual_seed(0))
    after = list(model.parameters())
    assert len(after) == len(params) and all(a is b for a, b in zip(after, params))
    block = model.get_submodule("0.mlp.0")
    weight = block.fc1.weight
    assert weight in optimizer.state
    before = weight.detach().clone()
    optimizer.zero_grad()
    model(x).square().mean().backward()
    dropped = ~block.last_pattern.keep_mask(block.d_hidden)  # the converted block drew a row pattern
    assert dropped.any() and (weight.grad[dropped] == 0).all()
    optimizer.step()
    assert not torch.equal(weight, before)  # the old optimizer updates the converted block's weight


def test_p_method_and_groups_reach_every_block():
    model = make_model()
    report = convert(model, p=0.5, method="row-g4")
    blocks = [model.get_submodule(name) for name in report.converted]
    assert all(b.p == 0.5 and b.method == "row-g4" and b.groups == 4 for b in blocks)
    model = make_model()
    blocks = [model.get_submodule(name) for name in convert(model, method="row", groups=2).converted]
    assert all(b.groups == 2 for b in blocks)


def test_named_entries_keep_their_names_and_the_state_dict_its_keys():
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(4, 8), act=nn.ReLU(), drop=nn.Dropout(0.5), fc2=nn.Linear(8, 4), out=nn.Linear(4, 2))
    )
    keys = list(model.state_dict())
    report = convert(model)
    assert report.converted == ["fc1"] and list(model._modules) == ["fc1", "out"]
    assert (
        list(model.state_dict())
        == keys
        == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
        + [
            "out.weight",
            "out.bias",
        ]
    )


def test_look_alikes_are_left_untouched_never_half_converted():
    seqs = [
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 4)),  # sizes do not chain
        nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Dropout(0.5), nn.Linear(8, 4)),  # mixes units
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout1d(0.5), nn.Linear(8, 4)),  # not nn.Dropout
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(1.0), nn.Linear(8, 4)),  # no row law at p = 1
        nn.Sequential(nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 4)),  # at the start
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5)),  # at the end
        ApproxDropoutMLP([4, 8, 4], 0.5),  # the library's own: left as it is, and said so
    ]
    model = nn.ModuleList(seqs)
    entries = [list(s.children()) for s in seqs]
    report = convert(model)
    assert report.converted == [] and [list(s.children()) for s in seqs] == entries
    reasons = dict(report.skipped)
    assert list(reasons) == ["0.2", "1.2", "2.2", "3.2", "4.1", "5.2", "6"]
    assert reasons["0.2"] == "Linear sizes do not chain: 4 -> 8, then 6 -> 4"
    assert reasons["1.2"].startswith("activation not elementwise: nn.LayerNorm")
    assert reasons["2.2"].startswith("nn.Dropout1d is not nn.Dropout")
    assert reasons["3.2"].startswith("cannot build the block: dropout rate p must be a number in [0, 1), got 1.0")
    needs = "Dropout not between two Linears: needs Linear -> activation -> Dropout -> Linear"
    assert reasons["4.1"] == f"{needs}, found ReLU -> Dropout -> Linear"
    assert reasons["5.2"].endswith("found Linear -> ReLU -> Dropout")
    assert reasons["6"].startswith("already approxdrop's ApproxDropoutMLP (p 0.5, method 'row-g4'): left as it is")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "tile"}, "method must be one of"),
        ({"p": 1.5}, "got 1.5"),
        ({"method": "none", "groups": 4}, "groups"),
    ],
)
def test_bad_arguments_raise_before_anything_changes(kwargs, message):
    model = make_model()
    before = [(name, id(m)) for name, m in model.named_modules()]
    with pytest.raises(ValueError, match=message):
        convert(model, **kwargs)
    assert [(name, id(m)) for name, m in model.named_modules()] == before


def test_converting_twice_changes_nothing_more():
    model = make_model()
    convert(model)
    modules = [(name, id(m)) for name, m in model.named_modules()]
    rates = {name: model.get_submodule(name).p for name in EXPECTED_CONVERTED}
    report = convert(model, p=0.6, method="row-g4")
    reasons = dict(report.skipped)
    assert report.converted == [] and set(reasons) == set(EXPECTED_SKIPPED) | set(EXPECTED_CONVERTED)
    for name, p in rates.items():  # the blocks of the first convert: said to be left as they are
        said = f"already approxdrop's ApproxDropoutFFN (p {p}, method 'row'): left as it is"
        assert reasons[name].startswith(said) and model.get_submodule(name).p == p != 0.6
    assert [(name, id(m)) for name, m in model.named_modules()] == modules


def test_a_converted_model_trains_with_row_patterns_and_evaluates_densely():
    model = make_model()
    convert(model, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 8)
    model.train()
    model(x)
    assert all(model.get_submodule(name).last_pattern is not None for name in EXPECTED_CONVERTED)
    model.eval()
    model(x)
    assert all(model.get_submodule(name).last_pattern is None for name in EXPECTED_CONVERTED)


def test_a_dropout_left_in_a_renumbered_sequential_is_reported_with_its_entry_before_convert():
    # the chain at 0-3 becomes one block, so the Softmax chain's dropout moves from entry 7 to entry 4
    seq = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 16), nn.LayerNorm(16))
    seq.extend([nn.Linear(16, 64), nn.Softmax(-1), nn.Dropout(0.1), nn.Linear(64, 16)])
    dropout = seq[7]
    [(name, why)] = convert(seq).skipped
    assert name == "4" and seq.get_submodule(name) is dropout
    assert why.endswith("(entry 7 before convert renumbered the Sequential)"), why
    named = nn.Sequential(OrderedDict(a=nn.Linear(4, 8), b=nn.ReLU(), c=nn.Dropout(0.1), d=nn.Linear(8, 4)))
    named.add_module("e", nn.Dropout(0.1))  # after a Linear that is in a block: left, its key kept
    assert [why.endswith("renumbered the Sequential)") for _, why in convert(named).skipped] == [False]
