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
from approxdrop.models.gated import GatedApproxDropoutFFN

SIZES = dict(vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2)


def decoder(kind: str) -> nn.Module:
    T = hf()
    torch.manual_seed(0)
    config = getattr(T, f"{kind}Config")(num_key_value_heads=2, max_position_embeddings=32, **SIZES)
    return getattr(T, f"{kind}ForCausalLM")(config).double()


def loss_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("kind", ["Llama", "Mistral", "Qwen2"])
def test_a_gated_mlp_without_dropout_gets_one_only_with_a_rate_and_trains_as_the_masked_reference(kind):
    model = decoder(kind)
    report = convert(model)  # no rate: nothing to drop, so nothing changes, and the report says where it could
    assert report.converted == [] and report.no_dropout == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert "2 gated feed-forward(s) have no dropout: convert(model, p=...)" in str(report)
    assert convert(model, p=0.0).converted == []  # p = 0 drops nothing either
    names, keys = [n for n, _ in model.named_modules()], list(model.state_dict())
    params = list(model.parameters())
    twin, ids = copy.deepcopy(model), torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        before = model.eval()(input_ids=ids).logits
    report = convert(model, p=0.3, generator=torch.Generator().manual_seed(1))
    assert report.converted == ["model.layers.0.mlp.ffn", "model.layers.1.mlp.ffn"] and not report.no_dropout
    assert set(report.adapters.values()) == {"hf-gated-mlp"} and set(report.rates.values()) == {0.3}
    for name in report.converted:
        assert isinstance(model.get_submodule(name.removesuffix(".ffn")), GatedApproxDropoutFFN)
    linears = {n for n in names if n.endswith(("gate_proj", "up_proj", "down_proj"))}
    assert len(linears) == 6 and linears <= {n for n, _ in model.named_modules()}  # what LoRA targets by name
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)

    loss = loss_of(model.train(), ids)
    loss.backward()
    blocks = [m for m in model.modules() if isinstance(m, ApproxDropoutFFN)]
    for block, mlp in zip(blocks, (layer.mlp for layer in twin.model.layers)):  # the same draw, as a dense mask
        mask = block.last_pattern.keep_mask(SIZES["intermediate_size"]).double() * block.last_pattern.scale
        mlp.down_proj.register_forward_pre_hook(lambda module, args, mask=mask: (args[0] * mask,))
    reference = loss_of(twin.train(), ids)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for (name, got), want in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-12, msg=name)
    assert_checkpoints_load_both_ways(lambda: decoder(kind), model)


def test_another_forward_under_a_registered_name_is_left_alone_and_not_listed():
    T = hf()

    class LlamaMLP(nn.Module):  # the registered name, another forward (a version that changed it): not read
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)
            self.act_fn = nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))

    LlamaMLP.__module__ = T.models.llama.modeling_llama.__name__
    model = nn.Sequential(LlamaMLP())
    report = convert(model, p=0.5)
    assert report.converted == [] and report.no_dropout == [] and type(model[0]) is LlamaMLP
