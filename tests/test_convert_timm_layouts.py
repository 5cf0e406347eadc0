"""convert on timm's feed-forward layouts, without timm (its torchvision does not load with the CPU torch): stand-ins
with timm's code and class names (adapters and activations are keyed by "module.QualName"): SwiGLU (a gated block),
MetaFormer's StarReLU and timm's PReLU (elementwise), and what the report says of their dropouts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_convert_models import Masked, assert_checkpoints_load_both_ways, assert_same_training_step
from torch import nn

from approxdrop import ApproxDropoutFFN, convert
from approxdrop.models.adapters import AFTER_BLOCK
from approxdrop.models.gated import GatedApproxDropoutFFN
from approxdrop.models.sites import is_elementwise


class SwiGLU(nn.Module):
    """timm.layers.mlp.SwiGLU (timm 1.0.31), its defaults: split fc1, SiLU, norm Identity."""

    def __init__(self, in_features: int, hidden_features: int, norm_layer: type | None = None, drop: float = 0.0):
        super().__init__()
        self.fc1_g = nn.Linear(in_features, hidden_features)
        self.fc1_x = nn.Linear(in_features, hidden_features)
        self.act = nn.SiLU()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        x_gate = self.fc1_g(x)
        x = self.fc1_x(x)
        x = self.act(x_gate) * x
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class Mlp(nn.Module):
    """timm.layers.mlp.Mlp (timm 1.0.31) with Linear layers."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type = nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class StarReLU(nn.Module):
    """timm.models.metaformer.StarReLU: s * relu(x) ** 2 + b, one learnable scalar each."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.scale * self.relu(x) ** 2 + self.bias


class PReLU(nn.PReLU):
    """timm.layers.activations.PReLU: nn.PReLU with an unused ``inplace``."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, inplace: bool = False) -> None:
        super().__init__(num_parameters=num_parameters, init=init)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.prelu(input, self.weight)


for _cls, _module in ((SwiGLU, "timm.layers.mlp"), (Mlp, "timm.layers.mlp"), (StarReLU, "timm.models.metaformer")):
    _cls.__module__ = _module
PReLU.__module__ = "timm.layers.activations"


class Block(nn.Module):
    """A residual block around an MLP, as timm's ViT block holds ``mlp``."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return x + self.mlp(x)


def swiglu_model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(SwiGLU(8, 24, drop=0.3, **kwargs)), Block(SwiGLU(8, 24, drop=0.3, **kwargs))).double()


def test_timm_swiglu_becomes_a_gated_block_that_trains_as_the_masked_reference():
    # it was left alone ("no adapter for its parent SwiGLU"), though it is T5's gated layout
    model, x = swiglu_model(), torch.randn(3, 5, 8, dtype=torch.float64)
    twin, keys = copy.deepcopy(model), list(model.state_dict())
    before = model.eval()(x)
    report = convert(model, generator=torch.Generator().manual_seed(3))
    assert report.converted == ["0.mlp.ffn", "1.mlp.ffn"] and set(report.adapters.values()) == {"timm-swiglu"}
    for name in report.converted:
        assert isinstance(model.get_submodule(name), GatedApproxDropoutFFN)
    assert dict(report.skipped) == {"0.mlp.drop2": AFTER_BLOCK, "1.mlp.drop2": AFTER_BLOCK}
    assert torch.equal(model(x), before) and list(model.state_dict()) == keys

    for seq in (model, twin):  # drop2 draws per element in both models: off, so only the patterns differ
        for block in seq:
            block.mlp.drop2.p = 0.0

    def masks_into(reference, blocks):
        for block, ffn in zip(blocks, (m for m in reference.modules() if isinstance(m, SwiGLU))):
            ffn.drop1 = Masked(block)

    assert_same_training_step(model.train(), twin.train(), lambda m: m(x), masks_into)
    assert_checkpoints_load_both_ways(swiglu_model, model)


def test_a_timm_swiglu_with_a_norm_inside_is_refused_and_its_drop2_says_why():
    model = swiglu_model(norm_layer=nn.LayerNorm)
    report = convert(model)
    assert report.converted == []
    why = dict(report.skipped)
    assert why["0.mlp.drop1"] == "its norm is LayerNorm, not Identity: it would sit between the GEMMs"
    assert why["0.mlp.drop2"] == "output-side dropout after the feed-forward (not converted): left as it is"


def test_metaformer_star_relu_and_timm_prelu_are_elementwise():
    # both were refused as "may mix units", so caformer / convformer MLPs were never converted
    assert is_elementwise(StarReLU()) and is_elementwise(PReLU()) and not is_elementwise(PReLU(16))
    torch.manual_seed(0)
    model = nn.Sequential(Block(Mlp(8, 16, act_layer=StarReLU, drop=0.2))).double()
    twin, x = copy.deepcopy(model), torch.randn(4, 8, dtype=torch.float64)
    report = convert(model, generator=torch.Generator().manual_seed(5))
    assert report.converted == ["0.mlp.ffn"] and report.adapters["0.mlp.ffn"] == "timm-mlp"
    model[0].mlp.drop2.p = twin[0].mlp.drop2.p = 0.0

    def masks_into(reference, blocks):
        reference[0].mlp.drop1 = Masked(blocks[0])

    assert_same_training_step(model.train(), twin.train(), lambda m: m(x), masks_into)


def test_a_second_convert_gives_drop2_the_reason_the_first_gave():
    # the second said "Dropout not between two Linears ... found ApproxDropoutFFN -> Dropout"
    model = nn.Sequential(Block(Mlp(8, 16, drop=0.2)), Block(SwiGLU(8, 16, drop=0.2)))
    first = dict(convert(model).skipped)
    second = dict(convert(model).skipped)
    assert first["0.mlp.drop2"] == first["1.mlp.drop2"] == AFTER_BLOCK
    assert second["0.mlp.drop2"] == second["1.mlp.drop2"] == AFTER_BLOCK


class GluLike(nn.Module):
    """A gated MLP with one packed fc1 (timm's GluMlp layout): no adapter converts its hidden units."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(8, 32), nn.Sigmoid(), nn.Dropout(0.1)
        self.fc2, self.drop2 = nn.Linear(16, 8), nn.Dropout(0.1)

    def forward(self, x):
        x = self.fc1(x)
        x, gates = x.chunk(2, dim=-1)
        x = x * self.act(gates)
        x = self.drop1(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


def test_output_side_does_not_call_a_hidden_unit_dropout_something_else():
    # drop1 was "outside the feed-forward its adapter converts (after attention, ...): not a hidden-unit site"
    model = nn.Sequential(GluLike())
    report = convert(model, output_side=True)
    assert report.converted == ["0.fc2"]
    why = dict(report.skipped)["0.drop1"]
    assert "converts only the output-side pair fc2 -> drop2" in why and "not a hidden-unit site" not in why


@pytest.mark.parametrize("rate", [0.0, 0.2])
def test_the_report_gives_each_blocks_rate_and_says_what_p_0_means(rate):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(rate), nn.Linear(8, 4))
    text = str(convert(model))
    assert f"  0: ApproxDropoutFFN (adapter sequential, p = {rate:g})" in text
    assert ("1 of them at p = 0: they drop nothing" in text) == (rate == 0.0) and isinstance(model[0], ApproxDropoutFFN)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(rate), nn.Linear(8, 4))
    assert "(adapter sequential, p = 0.5)" in str(convert(fresh, p=0.5))  # the rate convert set
