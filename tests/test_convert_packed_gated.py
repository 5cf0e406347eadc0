"""convert on gated MLPs whose two input Linears are packed in one, ``a, b = wi(x).chunk(2, -1)`` then
``wo(dropout(act(a) * b))``: Hugging Face Phi-3's (repeated in GLM, GLM-4, Dia, ...; no dropout, found by its layout),
ModernBERT's (with a dropout) and timm's GluMlp / SwiGLUPacked (a stand-in with timm's code). Before, convert
neither converted nor listed them. A row pattern on the hidden units keeps the same rows of both halves of the
packed weight; trained as a dense masked reference, with the module's parameters, names and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from test_convert_decoder_mlps import SIZES, Linear, assert_trains_as_the_masked_reference, decoder
from test_convert_models import assert_checkpoints_load_both_ways, hf
from test_convert_timm_layouts import Block
from torch import nn

from approxdrop import ApproxDropoutFFN, convert
from approxdrop.models import PackedGatedApproxDropoutFFN
from approxdrop.models.adapters import AFTER_BLOCK, NO_DROPOUT
from approxdrop.ops import group_bounds

HF_IDS = dict(head_dim=8, pad_token_id=0, eos_token_id=1)  # Phi-3's and GLM's defaults lie outside the vocabulary


def keep_mask(block: ApproxDropoutFFN, batch: int) -> torch.Tensor:
    """The step's draw as a dense scaled mask, Tensor[batch, d_hidden] (each sample its group's pattern)."""
    drawn = block.last_pattern if isinstance(block.last_pattern, tuple) else (block.last_pattern,)
    rows = [(q, stop - start) for (start, stop), q in zip(group_bounds(batch, len(drawn)), drawn)]
    return torch.cat([(q.keep_mask(block.d_hidden).double() * q.scale).expand(n, -1) for q, n in rows])


@pytest.mark.parametrize("kind", ["Phi3", "Glm"])
def test_a_packed_gated_mlp_without_dropout_gets_one_only_with_a_rate_and_trains_as_the_masked_reference(kind):
    model = decoder(kind, **HF_IDS)
    report = convert(model)  # no rate: listed, nothing changed
    assert report.converted == [] and report.no_dropout == [
        ("model.layers.0.mlp", NO_DROPOUT),
        ("model.layers.1.mlp", NO_DROPOUT),
    ]
    names, keys, params = [n for n, _ in model.named_modules()], list(model.state_dict()), list(model.parameters())
    twin, ids = copy.deepcopy(model), torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        before = model.eval()(input_ids=ids).logits
    report = convert(model, p=0.3, generator=torch.Generator().manual_seed(1))
    assert report.converted == ["model.layers.0.mlp", "model.layers.1.mlp"] and not report.no_dropout
    assert set(report.adapters.values()) == {"hf-packed-gated-mlp"} and set(report.rates.values()) == {0.3}
    assert set(report.kinds.values()) == {"PackedGatedApproxDropoutFFN"}
    linears = {n for n in names if n.endswith(("gate_up_proj", "down_proj"))}
    assert len(linears) == 4 and linears <= {n for n, _ in model.named_modules()}  # what LoRA targets by name
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)  # eval: the module's own packed GEMM and split

    blocks = assert_trains_as_the_masked_reference(model, twin, ids)
    assert all(b.d_hidden == SIZES["intermediate_size"] for b in blocks)
    assert_checkpoints_load_both_ways(lambda: decoder(kind, **HF_IDS), model)


class Scale(nn.Module):
    """A fixed dense mask over the hidden units: the reference for the dropout the block drew."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, h):
        return h * self.mask


def modernbert() -> nn.Module:
    T = hf()
    torch.manual_seed(0)
    config = T.ModernBertConfig(
        vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        mlp_dropout=0.2, embedding_dropout=0.0, attention_dropout=0.0, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, cls_token_id=1, sep_token_id=2, mlp_bias=True,
    )  # fmt: skip
    return T.ModernBertModel(config).double()


def test_modernberts_mlp_with_its_dropout_converts_at_its_rate_and_trains_as_the_masked_reference():
    model = modernbert()
    twin, ids = copy.deepcopy(model), torch.randint(3, 50, (3, 7))
    keys, params, drop = list(model.state_dict()), list(model.parameters()), model.layers[0].mlp.drop
    with torch.no_grad():
        before = model.eval()(input_ids=ids).last_hidden_state
    report = convert(model, generator=torch.Generator().manual_seed(2))  # the module's own rate
    assert report.converted == ["layers.0.mlp", "layers.1.mlp"]
    assert set(report.adapters.values()) == {"hf-modernbert-mlp"} and set(report.rates.values()) == {0.2}
    assert "layers.0.mlp.drop" not in dict(report.skipped)
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    block = model.get_submodule("layers.0.mlp")
    assert isinstance(block, PackedGatedApproxDropoutFFN) and block.dropout is drop  # the module's, which holds p
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, before)

    out = model.train()(input_ids=ids).last_hidden_state
    out.square().sum().backward()
    blocks = [m for m in model.modules() if isinstance(m, ApproxDropoutFFN)]
    for b, layer in zip(blocks, twin.layers):
        layer.mlp.drop = Scale(keep_mask(b, ids.shape[0]).view(ids.shape[0], 1, -1))
    reference = twin.train()(input_ids=ids).last_hidden_state
    reference.square().sum().backward()
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
    for (name, got), want in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-10, msg=name)
    model.layers[1].mlp.drop.p = 0.4  # the module's own attribute still sets the rate
    assert model.layers[1].mlp.p == 0.4
    assert_checkpoints_load_both_ways(modernbert, model)


class PackedMLP(nn.Module):
    """Phi-3's MLP (transformers' code) under another class name, with biases."""

    def __init__(self, d_model: int = 6, d_hidden: int = 10) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(d_model, 2 * d_hidden)
        self.down_proj = nn.Linear(d_hidden, d_model)
        self.activation_fn = nn.SiLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        up_states = self.gate_up_proj(hidden_states)

        gate, up_states = up_states.chunk(2, dim=-1)
        up_states = up_states * self.activation_fn(gate)

        return self.down_proj(up_states)


class PackedMLPWithNorm(PackedMLP):
    """The same lines plus a norm: a module whose forward does more than the feed-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.norm(hidden_states)
        up_states = self.gate_up_proj(hidden_states)

        gate, up_states = up_states.chunk(2, dim=-1)
        up_states = up_states * self.activation_fn(gate)

        return self.down_proj(up_states)


def test_the_layout_is_found_by_its_lines_and_children_whatever_the_class_is_called():
    model = nn.Sequential(PackedMLP(), PackedMLPWithNorm())
    assert convert(model).no_dropout == [("0", NO_DROPOUT)]  # the one with a norm is not the layout
    report = convert(model, p=0.5)
    assert report.converted == ["0"] and isinstance(model[0], PackedGatedApproxDropoutFFN)
    assert type(model[1]) is PackedMLPWithNorm


def test_a_packed_linear_wrapped_by_lora_or_of_odd_width_is_listed_as_not_convertible():
    model = nn.Sequential(PackedMLP())
    model[0].gate_up_proj = Linear(model[0].gate_up_proj)  # peft's LoRA put on before convert
    for p in (None, 0.3):
        report = convert(model, p)
        assert report.converted == [] and report.skipped == []
        ((name, what),) = report.no_dropout
        assert name == "0" and what.startswith("not convertible: gate_up_proj is peft.tuners.lora.layer.Linear")
        assert what.endswith("convert before wrapping it (peft: before get_peft_model)")
    odd = nn.Sequential(PackedMLP())
    odd[0].gate_up_proj = nn.Linear(6, 21)
    ((name, what),) = convert(odd, p=0.3).no_dropout
    assert what == "not convertible: gate_up_proj gives 21 units, an odd number: not two halves"
    assert type(odd[0]) is PackedMLP


class LlamaMLPWithNorm(nn.Module):
    """Llama's MLP line after a norm: the gated block would leave the norm's parameters out."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 6)
        self.act_fn, self.norm = nn.SiLU(), nn.LayerNorm(6)

    def forward(self, x):
        x = self.norm(x)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_a_gated_mlp_refused_for_its_parameters_is_listed_not_left_out_of_the_report():
    # it was refused (its block would not hold the norm's parameters) with no word: it has no dropout to list
    model = nn.Sequential(LlamaMLPWithNorm())
    report = convert(model, p=0.3)
    assert report.converted == [] and type(model[0]) is LlamaMLPWithNorm
    ((name, what),) = report.no_dropout
    assert name == "0" and what.startswith("not convertible: the GatedApproxDropoutFFN would not hold LlamaMLPWithNorm")


def packed_block(act_half: int, method: str, executor: str, static_shapes: bool, seed: int):
    """A PackedGatedApproxDropoutFFN around fresh float64 Linears with biases, and its parts for the reference."""
    torch.manual_seed(seed)
    wi, wo, act = nn.Linear(6, 20).double(), nn.Linear(10, 5).double(), nn.GELU()
    half = nn.Linear(6, 10)  # a stand-in for one half: only its sizes are read
    ffn = ApproxDropoutFFN.from_modules(
        half, act, wo, 0.5, method, generator=torch.Generator().manual_seed(seed), executor=executor,
        static_shapes=static_shapes,
    )  # fmt: skip
    return PackedGatedApproxDropoutFFN(ffn, wi, act_half, ("wi", "wo")), (wi, act, wo)


@pytest.mark.parametrize("act_half", [0, 1])
@pytest.mark.parametrize(
    "method, executor, static_shapes",
    [("row", "compact", False), ("row-g4", "compact", False), ("row-g4", "masked", False), ("row", "auto", True)],
)
def test_every_path_equals_the_packed_modules_math_with_the_drawn_mask(act_half, method, executor, static_shapes):
    block, (wi, act, wo) = packed_block(act_half, method, executor, static_shapes, seed=3)
    reference_parts = copy.deepcopy((wi, wo))
    x = torch.randn(8, 3, 6, dtype=torch.float64)
    y = block.train()(x)
    y.square().sum().backward()
    mask = keep_mask(block.ffn, x.shape[0]).view(8, 1, 10)
    ref_wi, ref_wo = reference_parts
    halves = ref_wi(x).chunk(2, dim=-1)
    activated, gate = halves if act_half == 0 else halves[::-1]
    y_ref = ref_wo(act(activated) * gate * mask)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for got, want in zip((wi.weight, wi.bias, wo.weight, wo.bias), (*ref_wi.parameters(), *ref_wo.parameters())):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-12)
    assert [n for n, _ in block.named_parameters()] == ["wi.weight", "wi.bias", "wo.weight", "wo.bias"]


def test_bad_parts_are_refused_when_the_block_is_built():
    ffn = ApproxDropoutFFN.from_modules(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 6), 0.5)
    with pytest.raises(ValueError, match=r"wi must be an nn.Linear\(6, 20\)"):
        PackedGatedApproxDropoutFFN(ffn, nn.Linear(6, 10))
    with pytest.raises(ValueError, match="act_half must be 0 or 1"):
        PackedGatedApproxDropoutFFN(ffn, nn.Linear(6, 20), act_half=2)
    with pytest.raises(ValueError, match="would hide the block's own attribute"):
        PackedGatedApproxDropoutFFN(ffn, nn.Linear(6, 20), names=("wi", "forward"))


class GluMlp(nn.Module):
    """timm.layers.mlp.GluMlp with Linear layers (timm's code; SwiGLUPacked is this class with SiLU and
    ``gate_last=False``)."""

    def __init__(self, in_features, hidden_features, act_layer=nn.Sigmoid, norm_layer=None, drop=0.0, gate_last=True):
        super().__init__()
        self.chunk_dim = -1
        self.gate_last = gate_last  # use second half of width for gate
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features // 2) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features // 2, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        x = self.fc1(x)
        x1, x2 = x.chunk(2, dim=self.chunk_dim)
        x = x1 * self.act(x2) if self.gate_last else self.act(x1) * x2
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


GluMlp.__module__ = "timm.layers.mlp"


def glu_model(gate_last: bool = True, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    act = nn.Sigmoid if gate_last else nn.SiLU
    mlps = [GluMlp(8, 24, act, drop=0.3, gate_last=gate_last, **kwargs) for _ in range(2)]
    return nn.Sequential(*(Block(mlp) for mlp in mlps)).double()


@pytest.mark.parametrize("gate_last", [True, False], ids=["GluMlp", "SwiGLUPacked"])
def test_timms_packed_glu_mlp_becomes_a_packed_block_that_trains_as_the_masked_reference(gate_last):
    # it was left alone ("no adapter for its parent GluMlp"): EVA-02's and other timm ViTs' MLP
    model, x = glu_model(gate_last), torch.randn(3, 5, 8, dtype=torch.float64)
    twin, keys, params = copy.deepcopy(model), list(model.state_dict()), list(model.parameters())
    before = model.eval()(x)
    report = convert(model, generator=torch.Generator().manual_seed(3))
    assert report.converted == ["0.mlp.ffn", "1.mlp.ffn"] and set(report.adapters.values()) == {"timm-glu-mlp"}
    assert set(report.rates.values()) == {0.3} and dict(report.skipped) == {
        "0.mlp.drop2": AFTER_BLOCK,
        "1.mlp.drop2": AFTER_BLOCK,
    }
    block = model.get_submodule("0.mlp.ffn")
    assert isinstance(block, PackedGatedApproxDropoutFFN) and block.act_half == (1 if gate_last else 0)
    assert torch.equal(model(x), before) and list(model.state_dict()) == keys and list(model.parameters()) == params

    for seq in (model, twin):  # drop2 draws per element in both models: off, so only the patterns differ
        for b in seq:
            b.mlp.drop2.p = 0.0
    y = model.train()(x)
    y.square().sum().backward()
    for b, ref in zip(model, twin):
        ref.mlp.drop1 = Scale(keep_mask(b.mlp.ffn.ffn, 1)[0])
    y_ref = twin.train()(x)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for key, got in model.state_dict(keep_vars=True).items():
        torch.testing.assert_close(got.grad, twin.state_dict(keep_vars=True)[key].grad, rtol=1e-9, atol=1e-12)
    assert_checkpoints_load_both_ways(lambda: glu_model(gate_last), model)


def test_a_timm_glu_mlp_with_a_norm_inside_is_refused_and_its_drop2_says_why():
    model = glu_model(norm_layer=nn.LayerNorm)
    report = convert(model)
    assert report.converted == []
    why = dict(report.skipped)
    assert why["0.mlp.drop1"] == "its norm is LayerNorm, not Identity: it would sit between the GEMMs"
    assert why["0.mlp.drop2"] == "output-side dropout after the feed-forward (not converted): left as it is"
