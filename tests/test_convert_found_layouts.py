"""Feed-forwards found by the layout of their forward (``adapters.found_feed_forward``), whatever their class is
called: the Mlp that ViT code writes by hand, the T5 copies (mT5, UMT5, LongT5), Wav2Vec2's feed-forward. Each
converted model is bit-identical in eval, trains as its unconverted twin with the drawn patterns as dense
masks, and loads checkpoints both ways; modules whose forward does more than the chain are left alone."""

import copy

import pytest
import torch
from test_convert_models import Masked, assert_checkpoints_load_both_ways, assert_same_training_step, hf
from torch import nn

from approxdrop import convert
from approxdrop.models.adapters import found_feed_forward


class Mlp(nn.Module):
    """The feed-forward of hand-written ViT code: two dropouts, the second on the output."""

    def __init__(self, p_out=0.0):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(6, 20), nn.GELU(), nn.Dropout(0.4)
        self.fc2, self.drop2 = nn.Linear(20, 6), nn.Dropout(p_out)

    def forward(self, x):
        """x -> fc2(drop1(act(fc1(x)))), then drop2."""
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class SharedDropMlp(Mlp):
    """timm's older Mlp: one nn.Dropout applied on the hidden units and again on the output."""

    def __init__(self):
        super().__init__()
        del self.drop1, self.drop2
        self.drop = nn.Dropout(0.4)

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        x = self.drop(x)
        return x


class Residual(Mlp):
    """Funnel's feed-forward shape: the chain, then a residual: replacing the module would lose it."""

    def forward(self, x):
        h = self.fc1(x)
        h = self.act(h)
        h = self.drop1(h)
        h = self.fc2(h)
        return x + h


class WithNorm(Mlp):
    """A child the chain does not call: the module is more than the chain."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(6)


class SwappedOrder(Mlp):
    """Dropout before the activation: still a chain of four calls, but the third is not the dropout."""

    def forward(self, x):
        x = self.fc1(x)
        x = self.drop1(x)
        x = self.act(x)
        x = self.fc2(x)
        return x


def vit_blocks(mlp=Mlp):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), mlp(), nn.LayerNorm(6), mlp()).double()


def test_a_hand_written_mlp_converts_and_trains_as_its_masked_twin():
    model = vit_blocks()
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        before = model.eval()(x)
    twin, keys = copy.deepcopy(model), list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(1))
    assert report.converted == ["1.ffn", "3.ffn"] and set(report.adapters.values()) == {"feed-forward-layout"}
    assert dict(report.skipped) == {f"{i}.drop2": "output-side dropout after the converted block: left as it is"
                                    for i in (1, 3)}  # fmt: skip
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        for mlp, block in zip([reference[1], reference[3]], blocks):
            mlp.drop1 = Masked(block)

    assert_same_training_step(model.train(), twin.train(), lambda m: m(x), masks_into)
    assert_checkpoints_load_both_ways(lambda: vit_blocks().float(), model.float())


def test_one_dropout_applied_on_the_hidden_units_and_on_the_output_keeps_both():
    model = vit_blocks(SharedDropMlp)
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        before = model.eval()(x)
    report = convert(model)
    assert report.converted == ["1.ffn", "3.ffn"]
    with torch.no_grad():
        assert torch.equal(model(x), before)
    block, after = model[1].ffn, model[1].drop
    assert block.dropout is after and after.p == 0.4  # one rate, as before; the output keeps its nn.Dropout
    model[1].drop.p = 0.2
    assert block.p == 0.2
    assert_checkpoints_load_both_ways(lambda: vit_blocks(SharedDropMlp).float(), model.float())


@pytest.mark.parametrize("mlp", [Residual, WithNorm, SwappedOrder])
def test_a_module_that_does_more_than_the_chain_is_left_alone(mlp):
    model = vit_blocks(mlp)
    keys = list(model.state_dict())
    assert found_feed_forward(model[1]) is None
    report = convert(model)
    assert report.converted == [] and list(model.state_dict()) == keys
    assert all(type(model[i]) is mlp for i in (1, 3))


@pytest.mark.parametrize("kind", ["MT5", "UMT5", "LongT5"])
@pytest.mark.parametrize("gated", [False, True])
def test_t5_copies_under_other_names_convert_as_t5(kind, gated):
    T = hf()
    if getattr(T, f"{kind}Model", None) is None:
        pytest.skip(f"transformers {T.__version__} has no {kind}Model")

    def make():
        torch.manual_seed(0)
        config = getattr(T, f"{kind}Config")(
            vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
            dropout_rate=0.3, feed_forward_proj="gated-gelu" if gated else "relu", decoder_start_token_id=0,
        )  # fmt: skip
        return getattr(T, f"{kind}Model")(config)

    model = make().double()
    ids = torch.randint(1, 40, (2, 6))
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.3 if m in {d.dropout for d in model.modules() if hasattr(d, "wo")} else 0.0
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0

    def run(m):
        return m(input_ids=ids, decoder_input_ids=ids).last_hidden_state

    with torch.no_grad():
        before = run(model.eval())
    twin, keys = copy.deepcopy(model), list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(2))
    assert report.converted == ["encoder.block.0.layer.1.DenseReluDense", "decoder.block.0.layer.2.DenseReluDense"]
    with torch.no_grad():
        assert torch.equal(run(model), before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        ffns = [m for name, m in reference.named_modules() if name.endswith("DenseReluDense")]
        for ffn, block in zip(ffns, blocks):
            ffn.dropout = Masked(block)

    assert_same_training_step(model.train(), twin.train(), run, masks_into)
    assert_checkpoints_load_both_ways(make, model.float())


def test_wav2vec2_feed_forwards_convert_and_train_as_the_masked_twin():
    T = hf()

    def make():
        torch.manual_seed(0)
        config = T.Wav2Vec2Config(
            vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            conv_dim=(8, 8), conv_stride=(4, 2), conv_kernel=(8, 4), num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2, activation_dropout=0.3, hidden_dropout=0.0, attention_dropout=0.0,
            feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
        )  # fmt: skip
        return T.Wav2Vec2Model(config)

    model = make().double()
    audio = torch.randn(2, 400, dtype=torch.float64)
    with torch.no_grad():
        before = model.eval()(audio).last_hidden_state
    twin, keys = copy.deepcopy(model), list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(3))
    assert report.converted == [f"encoder.layers.{i}.feed_forward.ffn" for i in (0, 1)]
    with torch.no_grad():
        assert torch.equal(model(audio).last_hidden_state, before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        for layer, block in zip(reference.encoder.layers, blocks):
            layer.feed_forward.intermediate_dropout = Masked(block)

    assert_same_training_step(model.train(), twin.train(), lambda m: m(audio).last_hidden_state, masks_into)
    assert_checkpoints_load_both_ways(make, model.float())


def test_bart_layout_written_one_call_per_line_converts_biogpt():
    """BioGPT's layer runs fc1, activation_fn, F.dropout(p=self.activation_dropout) and fc2 on separate lines: the
    functional adapter read only BART's inline form, and the report called it not convertible."""
    T = hf()

    def make():
        torch.manual_seed(0)
        config = T.BioGptConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            activation_dropout=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            max_position_embeddings=32,
        )  # fmt: skip
        return T.BioGptModel(config)

    model = make().double()
    ids = torch.randint(1, 40, (2, 6))

    def run(m):
        return m(input_ids=ids).last_hidden_state

    with torch.no_grad():
        before = run(model.eval())
    twin, keys = copy.deepcopy(model), list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(4))
    assert report.converted == ["layers.0.fc1", "layers.1.fc1"]
    assert set(report.adapters.values()) == {"functional-activation-dropout"}
    with torch.no_grad():
        assert torch.equal(run(model), before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        for layer, block in zip(reference.layers, blocks):
            layer.activation_fn, layer.activation_dropout = nn.Sequential(layer.activation_fn, Masked(block)), 0.0

    assert_same_training_step(model.train(), twin.train(), run, masks_into)
    assert_checkpoints_load_both_ways(make, model.float())
