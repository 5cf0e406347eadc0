"""convert on Hugging Face decoders whose gated MLPs have no dropout (Llama, Mistral, Qwen2, ...:
``down_proj(act_fn(gate_proj(x)) * up_proj(x))``): listed without a rate, given a row-pattern dropout on their hidden
units with one, under their own names, with the same parameters and checkpoints, trained as a dense masked reference."""

from __future__ import annotations

import copy

import pytest
import torch
from test_convert_models import assert_checkpoints_load_both_ways, hf
from torch import nn

from approxdrop import ApproxDropoutFFN, convert
from approxdrop.models.adapters import NO_DROPOUT
from approxdrop.models.gated import GatedApproxDropoutFFN

SIZES = dict(vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2)


def decoder(kind: str, **config) -> nn.Module:
    """A ``{kind}ForCausalLM`` of ``SIZES`` from its config (``config``: more settings), float64, seeded."""
    T = hf()
    torch.manual_seed(0)
    config = getattr(T, f"{kind}Config")(num_key_value_heads=2, max_position_embeddings=32, **SIZES, **config)
    return getattr(T, f"{kind}ForCausalLM")(config).double()


def loss_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def assert_trains_as_the_masked_reference(model: nn.Module, twin: nn.Module, ids: torch.Tensor) -> list:
    """One training step of the converted decoder ``model`` equals its unconverted ``twin`` with each block's draw as
    a dense mask on the input of the layer's down_proj: the loss and every gradient. Returns the blocks."""
    loss = loss_of(model.train(), ids)
    loss.backward()
    blocks = [m for m in model.modules() if isinstance(m, ApproxDropoutFFN)]
    assert len(blocks) == len(twin.model.layers)
    for block, mlp in zip(blocks, (layer.mlp for layer in twin.model.layers)):  # the same draw, as a dense mask
        mask = block.last_pattern.keep_mask(block.d_hidden).double() * block.last_pattern.scale
        mlp.down_proj.register_forward_pre_hook(lambda module, args, mask=mask: (args[0] * mask,))
    reference = loss_of(twin.train(), ids)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for (name, got), want in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-12, msg=name)
    return blocks


@pytest.mark.parametrize("kind", ["Llama", "Mistral", "Qwen2"])
def test_a_gated_mlp_without_dropout_gets_one_only_with_a_rate_and_trains_as_the_masked_reference(kind):
    model = decoder(kind)
    report = convert(model)  # no rate: nothing to drop, so nothing changes, and the report says where it could
    assert report.converted == [] and [name for name, _ in report.no_dropout] == [
        "model.layers.0.mlp",
        "model.layers.1.mlp",
    ]
    assert f"  model.layers.0.mlp: {NO_DROPOUT}" in str(report) and "convert(model, p=...)" in NO_DROPOUT
    assert convert(model, p=0.0).converted == []  # p = 0 drops nothing either
    names, keys = [n for n, _ in model.named_modules()], list(model.state_dict())
    params = list(model.parameters())
    twin, ids = copy.deepcopy(model), torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        before = model.eval()(input_ids=ids).logits
    report = convert(model, p=0.3, generator=torch.Generator().manual_seed(1))
    assert report.converted == ["model.layers.0.mlp", "model.layers.1.mlp"] and not report.no_dropout
    assert set(report.adapters.values()) == {"hf-gated-mlp"} and set(report.rates.values()) == {0.3}
    assert set(report.kinds.values()) == {"GatedApproxDropoutFFN"}  # the block at each name, not its GatedParts
    for name in report.converted:
        assert isinstance(model.get_submodule(name), GatedApproxDropoutFFN)
    linears = {n for n in names if n.endswith(("gate_proj", "up_proj", "down_proj"))}
    assert len(linears) == 6 and linears <= {n for n, _ in model.named_modules()}  # what LoRA targets by name
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)

    blocks = assert_trains_as_the_masked_reference(model, twin, ids)
    assert all(b.d_hidden == SIZES["intermediate_size"] for b in blocks)
    assert_checkpoints_load_both_ways(lambda: decoder(kind), model)


class SeedOssMLP(nn.Module):
    """Llama's MLP under another class name, as transformers repeats it in many models."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)
        self.act_fn = act or nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SwappedMLP(SeedOssMLP):
    """The same parts with another forward: not Llama's layout."""

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))


class Linear(nn.Module):
    """What peft's LoRA puts in a Linear's place (its class is called Linear too)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base_layer, self.lora_a = base, nn.Linear(base.in_features, 2, bias=False)
        self.lora_b = nn.Linear(2, base.out_features, bias=False)

    def forward(self, x):
        return self.base_layer(x) + self.lora_b(self.lora_a(x))


Linear.__module__ = "peft.tuners.lora.layer"


def test_llamas_layout_is_found_whatever_the_class_is_called():
    # SeedOss, Exaone4, Ministral3, VaultGemma, Qwen2-MoE's shared expert ... were neither converted nor listed
    model = nn.Sequential(SeedOssMLP(), SwappedMLP())
    assert convert(model).no_dropout == [("0", NO_DROPOUT)]  # the swapped forward is not the layout: not listed
    report = convert(model, p=0.5)
    assert report.converted == ["0"] and report.adapters == {"0": "hf-gated-mlp"}
    assert isinstance(model[0], GatedApproxDropoutFFN) and type(model[1]) is SwappedMLP


def test_a_lora_put_on_before_convert_is_named_and_nothing_is_promised():
    # it was listed as "convert(model, p=...) gives it a dropout", then refused as "gate_proj is Linear, not an
    # nn.Linear" under the dropouts left alone
    model = nn.Sequential(SeedOssMLP())
    model[0].gate_proj = Linear(model[0].gate_proj)
    for p in (None, 0.3):
        report = convert(model, p)
        assert report.converted == [] and report.skipped == []
        ((name, what),) = report.no_dropout
        assert name == "0" and what.startswith("not convertible: gate_proj is peft.tuners.lora.layer.Linear, not an")
        assert what.endswith("convert before wrapping it (peft: before get_peft_model)")
    model = nn.Sequential(SeedOssMLP(nn.Softmax(-1)))
    softmax = "not convertible: activation not elementwise: nn.Softmax may mix units, and would see only the kept ones"
    assert convert(model).no_dropout == convert(model, p=0.3).no_dropout == [("0", softmax)]
