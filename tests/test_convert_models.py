"""convert on real model classes (torch's Transformer layers; Hugging Face T5 / BART / mBART / Marian /
GPT-2 / BERT built from tiny configs when transformers is installed; timm and torchvision only where
already importable): a block per feed-forward, bit-identical eval output (the encoder's fast path
included), gradients equal to the unconverted model with the drawn pattern as a dense mask, state_dict
keys that survive (a checkpoint loads both ways, strict), and refusals with the reason for hooks,
prune / legacy weight_norm, sizes that do not chain."""

import copy
import io
import pickle
from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from approxdrop import ApproxDropoutFFN, convert, draw_patterns
from approxdrop.models import adapters
from approxdrop.models.adapters import AttributeAdapter, register_adapter
from approxdrop.models.convert import FUNCTIONAL
from approxdrop.models.gated import GatedApproxDropoutFFN
from approxdrop.models.output_side import OutputRowDropout


class Masked(nn.Module):
    """The reference dropout: a fixed 0/1 mask over the last axis, times the pattern's scale."""

    def __init__(self, block: ApproxDropoutFFN) -> None:
        super().__init__()
        pattern = block.last_pattern
        self.register_buffer("mask", pattern.keep_mask(block.d_hidden).double() * pattern.scale)

    def forward(self, x):
        return x * self.mask.to(x.dtype)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter's gradient by its state_dict key (the keys convert keeps)."""
    return {k: v.grad for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter)}


def assert_same_training_step(converted, twin, x_of, masks_into):
    """One training step of ``converted`` equals ``twin`` (unconverted) with the drawn patterns as dense
    masks (``masks_into(twin, blocks)``): outputs and every parameter's gradient."""
    y = x_of(converted)
    y.square().sum().backward()
    blocks = [m for m in converted.modules() if isinstance(m, ApproxDropoutFFN)]
    assert blocks and all(b.last_pattern is not None for b in blocks)
    masks_into(twin, blocks)
    y_ref = x_of(twin)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    got, want = grads(converted), grads(twin)
    assert got.keys() == want.keys()
    for key in want:
        if want[key] is None:
            assert got[key] is None, key
        else:
            torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-10, msg=key)


def assert_checkpoints_load_both_ways(make, converted):
    """A state_dict of a fresh unconverted model loads into ``converted`` and the reverse, strict."""
    fresh = make()
    assert list(converted.state_dict()) == list(fresh.state_dict())
    converted.load_state_dict(fresh.state_dict(), strict=True)
    for k, v in converted.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    with torch.no_grad():
        for v in converted.parameters():
            v.add_(1.0)
    other = make()
    other.load_state_dict(converted.state_dict(), strict=True)
    for k, v in other.state_dict().items():
        assert torch.equal(v, converted.state_dict()[k]), k
    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    buffer.seek(0)
    make().load_state_dict(torch.load(buffer), strict=True)


# --- nn.Sequential: keys, hooks, re-parametrised weights, in-place activations -------------------------


def assert_partial_loads_report_as(plain, converted):
    """A checkpoint of ``plain`` with a key left out and a stray one added: ``converted`` reports the
    missing and unexpected keys that ``plain`` reports (non-strict load)."""
    for drop in list(plain.state_dict())[::3]:
        state = plain.state_dict()
        del state[drop]
        state[drop.rsplit(".", 1)[0] + ".stray"] = torch.zeros(1)
        want = plain.load_state_dict(state, strict=False)
        got = converted.load_state_dict(state, strict=False)
        assert (got.missing_keys, got.unexpected_keys) == (want.missing_keys, want.unexpected_keys), drop


def _tail():
    """A second chain, 4 -> 4 -> 4, to follow ``chain()``'s output."""
    return [nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.2), nn.Linear(4, 4)]


def chain(inplace=False, d=8, h=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(inplace=inplace), nn.Dropout(0.3), nn.Linear(h, d), nn.Linear(d, 4))


def test_state_dict_keys_survive_and_checkpoints_load_both_ways():
    model = chain()
    keys = list(model.state_dict())
    assert convert(model).converted == ["0"]
    assert list(model.state_dict()) == keys == ["0.weight", "0.bias", "3.weight", "3.bias", "4.weight", "4.bias"]
    assert_checkpoints_load_both_ways(chain, model)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert list(copied.state_dict()) == keys
        assert_checkpoints_load_both_ways(chain, copied)


def test_a_stray_or_missing_key_is_still_reported_by_a_strict_load():
    model = chain()
    convert(model)
    state = chain().state_dict()
    state["1.weight"] = torch.zeros(1)  # the ReLU has no weight, and its place is now the renumbered Linear's
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"1\.weight\"\."):
        model.load_state_dict(state, strict=True)
    del state["1.weight"], state["3.bias"]
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(state, strict=True)


def test_hooks_on_the_chain_refuse_it_with_the_reason():
    model = chain()
    model[3].register_forward_hook(lambda mod, i, o: o * 0)
    before = list(model.children())
    report = convert(model)
    assert report.converted == [] and list(model.children()) == before
    assert "entry 3 carries 1 forward/backward hook(s)" in dict(report.skipped)["2"]
    assert model.train()(torch.randn(4, 8)).abs().sum() == model.eval()(torch.randn(4, 8)).abs().sum()
    pre = chain()
    pre[2].register_forward_pre_hook(lambda mod, i: None)
    assert convert(pre).converted == []


def test_a_linear_whose_forward_is_replaced_on_the_instance_is_refused_with_the_reason():
    """A patched forward (a LoRA delta, accelerate's hooks) would be skipped by the block, which reads the
    weight: refused, as hooks are, for a chain's Linear and for an output-side GPT-2 Conv1D."""

    def shifted(self, x):
        return nn.functional.linear(x, self.weight, self.bias) + 100.0

    model = chain()
    model[3].forward = shifted.__get__(model[3])
    report = convert(model)
    assert report.converted == [] and type(model[3]) is nn.Linear
    assert "entry 3 has its forward replaced on the instance" in dict(report.skipped)["2"]
    gpt = gpt2()
    mlp = gpt.h[0].mlp
    mlp.c_proj.forward = lambda x: x
    report = convert(gpt, output_side=True)
    assert "h.0.mlp.c_proj" not in report.converted and "h.1.mlp.c_proj" in report.converted
    assert "c_proj has its forward replaced on the instance" in dict(report.skipped)["h.0.mlp.dropout"]


def test_a_chain_converted_after_its_hook_is_removed_keeps_the_keys():
    model = nn.Sequential(chain(), *_tail())
    handle = model[0][3].register_forward_hook(lambda mod, i, o: None)
    keys = list(model.state_dict())
    assert convert(model).converted == ["1"]
    handle.remove()
    assert convert(model).converted == ["0.0"]
    assert list(model.state_dict()) == keys
    assert_checkpoints_load_both_ways(lambda: nn.Sequential(chain(), *_tail()), model)


def test_prune_and_legacy_weight_norm_are_refused_and_parametrizations_train():
    for reparametrise in (
        lambda m: prune.l1_unstructured(m[0], "weight", 0.3),
        lambda m: torch.nn.utils.weight_norm(m[3]),
    ):
        model = chain()
        reparametrise(model)
        report = convert(model)
        assert report.converted == [] and "torch.nn.utils.prune or the legacy weight_norm" in report.skipped[0][1]
    model = chain()
    torch.nn.utils.parametrizations.weight_norm(model[0])
    assert convert(model, generator=torch.Generator().manual_seed(0)).converted == ["0"]
    for _ in range(2):  # the second backward was the failure with prune / legacy weight_norm
        model(torch.randn(4, 8)).sum().backward()
    assert torch.isfinite(model[0].fc1.parametrizations.weight.original0.grad).all()


@pytest.mark.parametrize("frozen", [False, True])
def test_an_inplace_activation_trains_and_equals_the_masked_reference(frozen):
    model = chain(inplace=True).double()
    model[0].requires_grad_(not frozen)  # frozen: the kept units were a view the in-place ReLU wrote into
    twin = copy.deepcopy(model)
    x = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        before = model.eval()(x)
    convert(model.train(), generator=torch.Generator().manual_seed(1))
    assert model[0].activation.inplace is False and twin[1].inplace is True  # a copy, applied out of place
    assert torch.equal(model.eval()(x), before)
    model.train()

    def masks_into(reference, blocks):
        reference[2] = Masked(blocks[0])

    assert_same_training_step(model, twin, lambda m: m(x), masks_into)


def test_a_frozen_first_linear_stays_frozen_and_the_rest_trains():
    model = chain().double()
    model[0].requires_grad_(False)
    twin = copy.deepcopy(model)
    convert(model, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 8, dtype=torch.float64)

    def masks_into(reference, blocks):
        reference[2] = Masked(blocks[0])

    assert_same_training_step(model, twin, lambda m: m(x), masks_into)
    assert model[0].fc1.weight.grad is None and model[0].fc2.weight.grad is not None


def test_sequential_subclasses_with_sequentials_forward_convert_others_are_reported():
    class MLP(nn.Sequential):  # torchvision.ops.MLP's shape: only __init__ of its own
        def __init__(self):
            super().__init__(nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 4), nn.Dropout(0.1))

    class Custom(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.ModuleList([MLP(), Custom(nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 4))])
    report = convert(model)
    assert report.converted == ["0.0"] and report.adapters["0.0"] == "sequential"
    assert dict(report.skipped)["0.1"].startswith("its first Linear is the last one of the chain converted")
    assert dict(report.skipped)["1.2"].startswith("no adapter for its parent Custom")


def test_functional_dropout_in_forward_code_is_reported():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + nn.functional.dropout(self.fc(x), 0.1, self.training)

    report = convert(nn.Sequential(Residual()))
    assert report.functional == [("0", "Residual calls dropout")]
    assert f"0: {FUNCTIONAL} (Residual calls dropout)" in str(report)


def test_a_user_adapter_for_a_class_of_ones_own(monkeypatch):
    class MyFFN(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.act, self.drop, self.down = nn.Linear(4, 8), nn.SiLU(), nn.Dropout(0.2), nn.Linear(8, 4)

        def forward(self, x):
            return self.down(self.drop(self.act(self.up(x))))

    monkeypatch.setattr(adapters, "ADAPTERS", dict(adapters.ADAPTERS))  # the registry as it was, after the test
    register_adapter(MyFFN, AttributeAdapter("my-ffn", ("up", "act", "drop", "down")))
    model = nn.Sequential(MyFFN())
    keys, x = list(model.state_dict()), torch.randn(3, 4)
    before = model.eval()(x)
    report = convert(model)
    assert report.converted == ["0"] and report.adapters == {"0": "my-ffn"}
    assert torch.equal(model(x), before) and list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="must be an approxdrop.models.adapters.Adapter"):
        register_adapter(MyFFN, object())


def test_output_side_dropout_on_request_trains_as_the_masked_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4)).double()
    twin, keys, x = copy.deepcopy(model), list(model.state_dict()), torch.randn(5, 8, dtype=torch.float64)
    before = model.eval()(x)
    report = convert(model, output_side=True, generator=torch.Generator().manual_seed(9))
    assert report.converted == ["0"] and report.kinds == {"0": "OutputRowDropout"}
    assert str(report).startswith(
        "converted 0 feed-forward(s): Linear -> activation -> dropout on its units -> Linear\n"
    )
    pairs = "converted 1 Linear -> Dropout pair(s) (output side)\n  0: OutputRowDropout (adapter sequential, p = 0.3)"
    assert pairs in str(report)
    assert torch.equal(model(x), before) and list(model.state_dict()) == keys
    model.train()

    def masks_into(reference, blocks):
        block = model[0]
        mask = block.last_pattern.keep_mask(block.d_out).double() * block.last_pattern.scale
        reference[1] = Masked.__new__(Masked)
        nn.Module.__init__(reference[1])
        reference[1].register_buffer("mask", mask)

    y = model(x)
    y.square().sum().backward()
    masks_into(twin, None)
    twin(x).square().sum().backward()
    torch.testing.assert_close(y, twin.train()(x), rtol=1e-10, atol=1e-10)
    for key, value in grads(twin).items():
        torch.testing.assert_close(grads(model)[key], value, rtol=1e-9, atol=1e-10)
    assert isinstance(model[0], OutputRowDropout)
    assert_checkpoints_load_both_ways(
        lambda: nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4)), model.float()
    )
    grouped = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3))
    assert convert(grouped, method="row-g4", output_side=True).converted == ["0"] and grouped[0].groups == 4


# --- torch's Transformer layers -------------------------------------------------------------------------


def encoder(activation="relu"):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, 0.3, activation=activation, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def decoder(activation="gelu"):
    torch.manual_seed(0)
    return nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, 32, 0.3, activation=activation), 2)


def only_hidden_dropout(model: nn.Module) -> nn.Module:
    """Every dropout but the feed-forward's at p = 0 (so the reference needs one mask per layer)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Dropout) and not name.endswith(".dropout"):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    return model.double()


@pytest.mark.parametrize("activation", ["relu", "gelu", nn.functional.gelu, nn.SiLU()])
def test_encoder_eval_is_bit_identical_fast_path_included(activation):
    model = encoder(activation).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)  # grad enabled: the slow path
    keys = list(model.state_dict())
    report = convert(model)
    assert report.converted == ["layers.0.ard_ffn", "layers.1.ard_ffn"]
    assert set(report.adapters.values()) == {"torch-transformer-layer"}
    with mock.patch.object(torch, "_transformer_encoder_layer_fwd", wraps=torch._transformer_encoder_layer_fwd) as fwd:
        with torch.no_grad():
            assert torch.equal(model(x), fast)
    # the fast path ran, reading the layer's own Linears (torch takes it for relu / gelu only)
    assert fwd.call_count == (0 if isinstance(activation, nn.SiLU) else 2)
    assert torch.equal(model(x), slow)
    assert list(model.state_dict()) == keys
    assert isinstance(model.layers[0], nn.TransformerEncoderLayer)


def test_encoder_and_decoder_train_as_the_masked_reference_and_load_checkpoints():
    model = only_hidden_dropout(encoder())
    twin = copy.deepcopy(model)
    convert(model, generator=torch.Generator().manual_seed(3))
    x = torch.randn(3, 5, 16, dtype=torch.float64)

    def masks_into(reference, blocks):
        for layer, block in zip(reference.layers, blocks):
            layer.dropout = Masked(block)

    assert_same_training_step(model.train(), twin.train(), lambda m: m(x), masks_into)
    assert_checkpoints_load_both_ways(encoder, model.float())
    dec = only_hidden_dropout(decoder())
    twin = copy.deepcopy(dec)
    assert len(convert(dec, generator=torch.Generator().manual_seed(4)).converted) == 2
    tgt, memory = torch.randn(4, 2, 16, dtype=torch.float64), torch.randn(6, 2, 16, dtype=torch.float64)
    assert_same_training_step(dec, twin, lambda m: m(tgt, memory), masks_into)
    assert_checkpoints_load_both_ways(decoder, dec.float())


def test_a_converted_encoder_pickles_copies_and_draws_ahead():
    model = encoder()
    convert(model)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(copied.layers[0]).__name__ == "ConvertedEncoderLayer"
        assert copied.layers[0].ard_ffn.fc1 is copied.layers[0].linear1
    assert draw_patterns(model.train()) == 2  # the blocks are in modules(): compiled training finds them


def test_a_layer_whose_sizes_do_not_chain_is_left_unchanged():
    model = encoder()
    model.layers[1].linear2 = nn.Linear(24, 16)
    before = [(name, id(m), type(m)) for name, m in model.named_modules()]
    report = convert(model)
    assert report.converted == ["layers.0.ard_ffn"]
    assert dict(report.skipped)["layers.1.dropout"] == "Linear sizes do not chain: 16 -> 32, then 24 -> 16"
    assert [(n, i, t) for n, i, t in before if n.startswith("layers.1")] == [
        (name, id(m), type(m)) for name, m in model.named_modules() if name.startswith("layers.1")
    ]


# --- Hugging Face transformers (tiny configs, random weights, no downloads) ------------------------------


def test_a_rate_attribute_handed_on_as_a_keyword_is_reported_a_dropout_modules_p_is_not():
    """Hugging Face attention classes pass ``dropout=0.0 if not self.training else self.attention_dropout`` (a
    float) to an attention function outside the class; ``dropout=self.dropout.p`` reads a module the report
    lists already."""

    def attend(x, dropout):
        return nn.functional.dropout(x, dropout)

    class FloatRate(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_dropout = 0.1

        def forward(self, x):
            return attend(x, dropout=0.0 if not self.training else self.attention_dropout)

    class ModuleRate(nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = nn.Dropout(0.1)

        def forward(self, x):
            return attend(x, dropout=self.dropout.p if self.training else 0.0)

    report = convert(nn.Sequential(FloatRate(), ModuleRate()))
    assert report.functional == [("0", "FloatRate calls dropout=self.attention_dropout")]
    assert [name for name, _ in report.skipped] == ["1.dropout"]


def dropout_add(x, residual, p, training):
    """BLOOM's and Falcon's module-level helper: dropout on a residual branch."""
    return residual + nn.functional.dropout(x, p, training)


def test_report_names_helpers_unused_dropouts_and_a_rate_that_went_nowhere():
    """BLOOM and Falcon apply their residual dropout through a module-level ``dropout_add`` (not listed);
    ALBERT's layer holds a ``dropout`` its forward never applies (reported as applied); and ``convert(model,
    p=0.25)`` on a model with nothing to convert said nothing about the rate."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense, self.rate = nn.Linear(4, 4), 0.1

        def forward(self, x):
            return dropout_add(self.dense(x), x, self.rate, self.training)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense, self.dropout = nn.Linear(4, 4), nn.Dropout(0.1)

        def forward(self, x):
            return self.dense(x)

    report = convert(nn.Sequential(Residual(), Unused()), p=0.25)
    assert report.functional == [("0", "Residual calls dropout_add")]
    assert report.skipped == [
        ("1.dropout", "Unused's forward code never names self.dropout: most likely unused, it drops nothing")
    ]
    assert report.given_p == 0.25 and "p = 0.25 was given, but nothing was converted" in str(report)
    assert "was given" not in str(convert(nn.Sequential(Residual())))


def test_report_lists_an_rnns_dropout_a_shared_sequential_at_each_place_and_names_classes_as_they_are():
    """nn.LSTM(dropout=...) applies dropout between its layers in a fused kernel (the report said "left 0
    dropout(s) alone"); a shared Sequential feed-forward was named at its first place only; a user's nn.Dropout
    subclass was called "nn.MyDropout"; a per-channel PReLU was said to "mix units" (its slopes would not line
    up with the kept units)."""

    class MyDropout(nn.Dropout):
        pass

    report = convert(nn.Sequential(nn.LSTM(4, 8, num_layers=2, dropout=0.4), nn.GRU(4, 4, num_layers=2)))
    assert report.functional == [
        ("0", "nn.LSTM applies dropout=0.4 between its 2 layers inside its fused kernel; approxdrop.ApproxDropoutLSTM "
         "is an LSTM that drops with row patterns")
    ]  # fmt: skip
    ffn = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 4))
    report = convert(nn.Sequential(ffn, nn.Tanh(), ffn))
    assert report.converted == ["0.0", "2.0"] and report.rates == {"0.0": 0.3, "2.0": 0.3}
    report = convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), MyDropout(0.3), nn.Linear(8, 4)))
    assert report.skipped == [("2", "MyDropout is not nn.Dropout: only per-element dropout becomes a row pattern")]
    report = convert(nn.Sequential(nn.Linear(4, 8), nn.PReLU(8), nn.Dropout(0.3), nn.Linear(8, 4)))
    assert dict(report.skipped)["2"].startswith("activation not elementwise: nn.PReLU has 8 slopes, one per unit")


def test_a_dropout_module_taken_from_a_module_dict_is_listed_once_as_a_module():
    """peft's LoRA Linear runs ``dropout = self.lora_dropout[name]`` (a ModuleDict of nn.Dropout): it was listed as
    a dropout module and again as functional dropout, and its reason named the ModuleDict as the one applying it."""

    class LoraLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.base, self.lora_dropout = nn.Linear(4, 4), nn.ModuleDict({"default": nn.Dropout(0.1)})

        def forward(self, x, name="default"):
            dropout = self.lora_dropout[name]
            return self.base(x) + dropout(x)

    report = convert(nn.Sequential(LoraLike()))
    assert report.functional == []
    assert [name for name, _ in report.skipped] == ["0.lora_dropout.default"]
    assert report.skipped[0][1].startswith("no adapter for what holds its ModuleDict: its forward code applies it")


def hf():
    return pytest.importorskip("transformers", reason="transformers is not installed (pip install approxdrop[test])")


def t5(gated=False):
    T = hf()
    torch.manual_seed(0)
    config = T.T5Config(
        vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.3,
        feed_forward_proj="gated-gelu" if gated else "relu",
    )  # fmt: skip
    return T.T5Model(config)


def bart(kind="Bart"):
    T = hf()
    torch.manual_seed(0)
    config = getattr(T, f"{kind}Config")(
        vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, activation_dropout=0.3, dropout=0.0,
        attention_dropout=0.0, max_position_embeddings=16, pad_token_id=0, decoder_start_token_id=0,
    )  # fmt: skip
    return getattr(T, f"{kind}Model")(config)


def test_pinned_torch_stays_with_transformers_installed():
    hf()
    assert torch.__version__.startswith("2.13.0")


def seq2seq(model, ids):
    return model(input_ids=ids, decoder_input_ids=ids).last_hidden_state


def test_t5_converts_every_feed_forward_bit_identical_and_trains_as_the_reference():
    model = t5()
    ids = torch.randint(1, 40, (2, 6))
    for name, m in model.named_modules():
        if isinstance(m, nn.Dropout) and "DenseReluDense" not in name:
            m.p = 0.0
        if isinstance(getattr(m, "dropout", None), float):  # T5Attention's functional attention dropout
            m.dropout = 0.0
    model.double().eval()
    with torch.no_grad():
        before = seq2seq(model, ids)
    twin = copy.deepcopy(model)
    keys = list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(5))
    assert len(report.converted) == 4 and set(report.adapters.values()) == {"hf-t5"}  # 2 encoder + 2 decoder blocks
    with torch.no_grad():
        assert torch.equal(seq2seq(model, ids), before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        ffns = [m for name, m in reference.named_modules() if name.endswith("DenseReluDense")]
        for ffn, block in zip(ffns, blocks):
            ffn.dropout = Masked(block)

    assert_same_training_step(model.train(), twin.train(), lambda m: seq2seq(m, ids), masks_into)
    assert_checkpoints_load_both_ways(t5, model.float())


@pytest.mark.parametrize("kind", ["Bart", "MBart", "Marian"])
def test_bart_style_functional_activation_dropout_converts(kind):
    model = bart(kind).double()
    ids = torch.randint(1, 40, (2, 6))
    with torch.no_grad():
        before = seq2seq(model.eval(), ids)
    twin = copy.deepcopy(model)
    keys = list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(6))
    layers = [n for n, m in model.named_modules() if type(m).__name__.endswith("Layer")]
    assert report.converted == [f"{n}.fc1" for n in layers] and len(layers) == 3
    assert all(f"{FUNCTIONAL} ({kind}" in line for line in str(report).splitlines() if FUNCTIONAL in line)
    where = [line for line in str(report).splitlines() if "activation dropout was converted" in line]
    assert len(where) == 3 and all("its rate is fc1.p now, and activation_dropout reads 0" in line for line in where)
    assert all(
        model.get_submodule(n).activation_dropout == 0 and model.get_submodule(f"{n}.fc1").p == 0.3 for n in layers
    )
    with torch.no_grad():
        assert torch.equal(seq2seq(model, ids), before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        mods = [m for m in reference.modules() if type(m).__name__.endswith("Layer")]
        for layer, block in zip(mods, blocks):
            layer.activation_fn, layer.activation_dropout = nn.Sequential(layer.activation_fn, Masked(block)), 0.0

    assert_same_training_step(model.train(), twin.train(), lambda m: seq2seq(m, ids), masks_into)
    assert_checkpoints_load_both_ways(lambda: bart(kind), model.float())


def test_bart_style_layer_whose_activation_has_parameters_is_left_with_the_reason():
    """With ``activation_function="prelu"`` the activation holds a Parameter registered before fc1: moving it into
    the block at fc1 changed model.parameters()' order, so an optimizer state saved before convert loaded onto
    other parameters (Adam then failed on a shape, or would have applied them to the wrong tensors)."""
    T = hf()
    config = T.MarianConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, activation_dropout=0.3, dropout=0.0,
        max_position_embeddings=16, pad_token_id=0, decoder_start_token_id=0, activation_function="prelu",
    )  # fmt: skip
    model = T.MarianModel(config)
    order = [id(q) for q in model.parameters()]
    report = convert(model)
    assert report.converted == [] and [id(q) for q in model.parameters()] == order
    reasons = [why for name, why in report.skipped if name.endswith("activation_dropout")]
    assert len(reasons) == 2 and all("PReLU has parameters" in why for why in reasons)


def whisper():
    T = hf()
    torch.manual_seed(0)
    config = T.WhisperConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, activation_dropout=0.3, dropout=0.0,
        attention_dropout=0.0, num_mel_bins=8, max_source_positions=8, max_target_positions=16, pad_token_id=0,
        decoder_start_token_id=0,
    )  # fmt: skip
    return T.WhisperModel(config)


def test_a_layer_of_bart_layout_with_no_adapter_registered_converts_whisper():
    """Whisper's layers have BART's layout but no registered adapter: the functional adapter finds them."""
    model = whisper().double()
    features, ids = torch.randn(2, 8, 16, dtype=torch.float64), torch.randint(1, 40, (2, 5))

    def run(m):
        return m(input_features=features, decoder_input_ids=ids).last_hidden_state

    with torch.no_grad():
        before = run(model.eval())
    twin = copy.deepcopy(model)
    keys = list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(6))
    assert report.converted == ["encoder.layers.0.fc1", "decoder.layers.0.fc1"]
    assert set(report.adapters.values()) == {"functional-activation-dropout"}
    with torch.no_grad():
        assert torch.equal(run(model), before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        mods = [m for m in reference.modules() if type(m).__name__.endswith("Layer")]
        for layer, block in zip(mods, blocks):
            layer.activation_fn, layer.activation_dropout = nn.Sequential(layer.activation_fn, Masked(block)), 0.0

    assert_same_training_step(model.train(), twin.train(), run, masks_into)
    assert_checkpoints_load_both_ways(whisper, model.float())


def gpt2():
    T = hf()
    torch.manual_seed(0)
    return T.GPT2Model(T.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, resid_pdrop=0.3))


def bert():
    T = hf()
    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, hidden_dropout_prob=0.3,
    )  # fmt: skip
    return T.BertModel(config)


@pytest.mark.parametrize("make, sites", [("gpt2", ["h.0.mlp.c_proj", "h.1.mlp.c_proj"]), ("bert", ["output.dense"])])
def test_gpt2_and_bert_output_side_dropout_converts_on_request_only(make, sites):
    make = {"gpt2": gpt2, "bert": bert}[make]
    model = make()
    keys, ids = list(model.state_dict()), torch.randint(1, 40, (2, 6))
    report = convert(model)
    assert report.converted == [] and list(model.state_dict()) == keys
    off = [why for name, why in report.skipped if any(name.endswith(s.rsplit(".", 1)[0] + ".dropout") for s in sites)]
    assert off and all(why.startswith("output-side dropout") and "output_side=True" in why for why in off)
    with torch.no_grad():
        before = model.eval()(input_ids=ids).last_hidden_state
    report = convert(model, output_side=True, generator=torch.Generator().manual_seed(8))
    assert all(any(name.endswith(site) for name in report.converted) for site in sites)
    assert set(report.adapters.values()) == {"output-side"} and set(report.kinds.values()) == {"OutputRowDropout"}
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, before)
    assert list(model.state_dict()) == keys
    model.train()(input_ids=ids).last_hidden_state.sum().backward()
    assert_checkpoints_load_both_ways(make, model)


def test_gpt2_output_side_blocks_with_static_shapes_train_as_the_eager_blocks():
    """HF Conv1D weights ([d_in, d_out]) in the static form: the same outputs and gradients as the eager
    output-side blocks under the same draws (attention and embedding dropout off; the attention output's
    c_proj and the MLP's become blocks)."""
    T = hf()
    twins = []
    for static in (False, True):
        torch.manual_seed(0)
        config = T.GPT2Config(
            vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, resid_pdrop=0.3, attn_pdrop=0.0,
            embd_pdrop=0.0,
        )  # fmt: skip
        model = T.GPT2Model(config).double()  # float64: the two paths' GEMMs may round differently
        convert(model, output_side=True, static_shapes=static, generator=torch.Generator().manual_seed(4))
        twins.append(model.train())
    blocks = [m for m in twins[1].modules() if isinstance(m, OutputRowDropout)]
    assert len(blocks) == 4 and all(b.static_shapes and b.transposed for b in blocks)  # h.{0,1}.{attn,mlp}.c_proj
    ids = torch.randint(1, 40, (3, 7))
    for step in range(3):
        outs = []
        for model in twins:
            model.zero_grad()
            torch.manual_seed(step)
            outs.append(model(input_ids=ids).last_hidden_state)
            outs[-1].square().sum().backward()
        torch.testing.assert_close(outs[1], outs[0])
        for (name, a), b in zip(twins[0].named_parameters(), twins[1].parameters()):
            torch.testing.assert_close(b.grad, a.grad, msg=lambda m, name=name: f"{name}: {m}")


def test_hf_and_timm_activations_are_elementwise_softmax_never():
    T = hf()
    from approxdrop.models.sites import ELEMENTWISE_NAMES, is_elementwise

    for name in ("gelu", "gelu_new", "gelu_fast", "quick_gelu", "silu", "mish", "relu2", "linear"):
        assert is_elementwise(T.activations.ACT2FN[name]), name
    assert not is_elementwise(nn.Softmax(-1)) and not any("softmax" in n.lower() for n in ELEMENTWISE_NAMES)


# --- timm and torchvision: only where already installed (they pull a newer torch) ------------------------


def test_timm_mlp_converts_when_timm_is_installed():
    layers = pytest.importorskip("timm.layers", reason="timm is not installed here (it would replace the pinned torch)")
    model = nn.Sequential(layers.Mlp(16, 32, drop=0.2))
    keys, x = list(model.state_dict()), torch.randn(3, 16)
    before = model.eval()(x)
    report = convert(model)
    assert report.converted == ["0.ffn"] and report.adapters["0.ffn"] == "timm-mlp"
    assert dict(report.skipped)["0.drop2"].startswith("output-side dropout after the converted block")
    assert torch.equal(model(x), before) and list(model.state_dict()) == keys


def test_torchvision_mlp_converts_when_torchvision_is_installed():
    ops = pytest.importorskip("torchvision.ops", reason="torchvision is not installed here (it would replace torch)")
    model = ops.MLP(16, [32, 32, 8], dropout=0.2)
    keys, x = list(model.state_dict()), torch.randn(3, 16)
    before = model.eval()(x)
    report = convert(model)
    assert report.converted and set(report.adapters.values()) == {"sequential"}
    assert torch.equal(model(x), before) and list(model.state_dict()) == keys


def test_t5_gated_feed_forward_converts_and_trains_as_the_reference():
    model = t5(gated=True)
    ids = torch.randint(1, 40, (2, 6))
    for name, m in model.named_modules():
        if isinstance(m, nn.Dropout) and "DenseReluDense" not in name:
            m.p = 0.0
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    model.double().eval()
    with torch.no_grad():
        before = seq2seq(model, ids)
    twin, keys = copy.deepcopy(model), list(model.state_dict())
    report = convert(model, generator=torch.Generator().manual_seed(7))
    assert len(report.converted) == 4 and set(report.adapters.values()) == {"hf-t5-gated"}
    for name in report.converted:  # the gated block that replaced DenseReluDense
        assert name.endswith("DenseReluDense") and isinstance(model.get_submodule(name), GatedApproxDropoutFFN)
        assert report.kinds[name] == "GatedApproxDropoutFFN" and report.rates[name] == model.get_submodule(name).p
    with torch.no_grad():
        assert torch.equal(seq2seq(model, ids), before)
    assert list(model.state_dict()) == keys

    def masks_into(reference, blocks):
        ffns = [m for name, m in reference.named_modules() if name.endswith("DenseReluDense")]
        for ffn, block in zip(ffns, blocks):
            ffn.dropout = Masked(block)

    assert_same_training_step(model.train(), twin.train(), lambda m: seq2seq(m, ids), masks_into)
    assert_checkpoints_load_both_ways(lambda: t5(gated=True), model.float())
    assert draw_patterns(model) == 4  # the pattern sites are found for compiled training
    model = t5(gated=True)  # with batch groups too (the block's equality with groups: tests/test_ffn.py)
    report = convert(model, method="row-g4")
    assert len(report.converted) == 4 and not [why for name, why in report.skipped if "DenseReluDense" in name]
    loss = seq2seq(model.train(), ids).square().mean()
    loss.backward()
    assert torch.isfinite(loss) and all(q.grad is not None for q in model.parameters() if q.requires_grad)
    assert all(len(m.last_pattern) == 4 for m in model.modules() if isinstance(m, ApproxDropoutFFN))


def test_hf_conv1d_output_side_trains_as_the_masked_reference():
    hf()
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(16, 8), nn.Dropout(0.3)).double()  # GPT-2's c_proj: weight [8, 16]
    twin, x = copy.deepcopy(model), torch.randn(2, 3, 8, dtype=torch.float64)
    before = model.eval()(x)
    assert convert(model, output_side=True, generator=torch.Generator().manual_seed(10)).converted == ["0"]
    assert torch.equal(model(x), before)
    y = model.train()(x)
    y.square().sum().backward()
    block = model[0]
    mask = block.last_pattern.keep_mask(16).double() * block.last_pattern.scale
    y_ref = twin[0](x) * mask
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for key, value in grads(twin).items():
        torch.testing.assert_close(grads(model)[key], value, rtol=1e-9, atol=1e-10)


def test_a_hook_on_a_layers_linear_refuses_that_layer():
    model = encoder()
    model.layers[0].linear1.register_forward_pre_hook(lambda mod, args: None)
    report = convert(model)
    assert report.converted == ["layers.1.ard_ffn"] and type(model.layers[0]) is nn.TransformerEncoderLayer
    assert dict(report.skipped)["layers.0.dropout"].startswith("linear1 carries 1 forward/backward hook(s)")


@pytest.mark.parametrize("make", ["encoder", "bart"])
def test_converting_a_converted_layer_again_changes_nothing_and_says_so(make):
    model = encoder() if make == "encoder" else bart()
    first = convert(model)
    modules, keys = [(name, id(m)) for name, m in model.named_modules()], list(model.state_dict())
    again = convert(model)
    assert again.converted == [] and [(name, id(m)) for name, m in model.named_modules()] == modules
    assert list(model.state_dict()) == keys
    reasons = [why for _, why in again.skipped if why.startswith("already converted")]
    assert len(reasons) == len(first.converted)


def test_a_converted_encoder_learns_after_a_strict_assign_load():
    model, reference = encoder(), encoder()
    convert(model, generator=torch.Generator().manual_seed(11))
    state = {k: v + 0.01 for k, v in reference.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)  # new Parameter objects: the blocks see them
    assert model.layers[0].ard_ffn.fc1.weight is model.layers[0].linear1.weight
    x, target = torch.randn(4, 5, 16), torch.randn(4, 5, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model.train()(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_t5_with_wo_kept_in_float32_under_bfloat16_is_left_with_the_reason():
    model = t5().to(torch.bfloat16)
    for name, m in model.named_modules():
        if name.endswith("DenseReluDense"):
            m.wo.float()  # what from_pretrained(dtype=bfloat16) does (T5's _keep_in_fp32_modules)
    report = convert(model)
    assert report.converted == []
    why = dict(report.skipped)["encoder.block.0.layer.1.DenseReluDense.dropout"]
    assert why.startswith("wi is torch.bfloat16 but wo is torch.float32")


def test_a_second_convert_of_the_same_sequential_composes_the_key_moves():
    def flat():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4), *_tail(), nn.Linear(4, 4))

    model = flat()
    keys = list(model.state_dict())
    handle = model[3].register_forward_hook(lambda mod, i, o: None)
    assert convert(model).converted == ["4"]  # the second chain; the first waits for its hook to go
    handle.remove()
    assert convert(model).converted == ["0"]  # now the first: the second block moves from "4" to "1"
    assert [type(m).__name__ for m in model] == ["ApproxDropoutFFN", "ApproxDropoutFFN", "Linear"]
    assert list(model.state_dict()) == keys
    assert_checkpoints_load_both_ways(flat, model)
    assert_partial_loads_report_as(flat(), model)


# --- what users hold on to: parameter order, the batch axis, the dropout attribute ----------------------


def _ids():
    return torch.randint(1, 40, (2, 6))


def _hidden(model, **kwargs):
    return model(**kwargs).last_hidden_state


# name -> (model maker, convert's keywords, a forward giving a tensor); the layers keep their parts' names
ADAPTED = {
    "sequential": (chain, {}, lambda m: m(torch.randn(3, 8))),
    "encoder": (encoder, {}, lambda m: m(torch.randn(2, 5, 16))),
    "decoder": (decoder, {}, lambda m: m(torch.randn(4, 2, 16), torch.randn(6, 2, 16))),
    "t5": (t5, {}, lambda m: seq2seq(m, _ids())),
    "t5-gated": (lambda: t5(gated=True), {}, lambda m: seq2seq(m, _ids())),
    "bart": (bart, {}, lambda m: seq2seq(m, _ids())),
    "gpt2": (gpt2, {"output_side": True}, lambda m: _hidden(m, input_ids=_ids())),
    "bert": (bert, {"output_side": True}, lambda m: _hidden(m, input_ids=_ids())),
}
KEEP_NAMES = {"encoder", "decoder", "t5-gated"}


@pytest.mark.parametrize("name", list(ADAPTED))
def test_convert_keeps_the_parameter_order_so_a_saved_optimizer_resumes(name):
    make, kwargs, run = ADAPTED[name]
    model = make().train()
    ids, names = [id(q) for q in model.parameters()], [n for n, _ in model.named_parameters()]
    by_key = {k: id(v) for k, v in model.state_dict(keep_vars=True).items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run(model).square().mean().backward()
    opt.step()
    saved = copy.deepcopy(opt.state_dict())  # indexed by position in model.parameters()
    moments = {
        id(q): opt.state[q]["exp_avg"].clone() for q in model.parameters() if q in opt.state
    }  # BERT's pooler: none
    assert convert(model, **kwargs).converted
    assert [id(q) for q in model.parameters()] == ids
    assert {k: id(v) for k, v in model.state_dict(keep_vars=True).items()} == by_key
    if name in KEEP_NAMES:
        assert [n for n, _ in model.named_parameters()] == names
    resumed = torch.optim.Adam(model.parameters(), lr=1e-3)
    resumed.load_state_dict(saved)
    assert {id(q) for q in resumed.state} == set(moments)
    for q in resumed.state:
        assert torch.equal(resumed.state[q]["exp_avg"], moments[id(q)])
    model.zero_grad()
    run(model).square().mean().backward()
    resumed.step()


def test_a_replacement_that_would_reorder_the_parameters_is_refused(monkeypatch):
    class GainFFN(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.act, self.drop, self.down = nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 4)
            self.gain = nn.Parameter(torch.ones(4))  # not one of the adapter's members: the block would drop it

        def forward(self, x):
            return self.gain * self.down(self.drop(self.act(self.up(x))))

    monkeypatch.setattr(adapters, "ADAPTERS", dict(adapters.ADAPTERS))
    register_adapter(GainFFN, AttributeAdapter("gain-ffn", ("up", "act", "drop", "down")))
    model = nn.Sequential(GainFFN())
    ids = [id(q) for q in model.parameters()]
    report = convert(model)
    assert report.converted == [] and [id(q) for q in model.parameters()] == ids and type(model[0]) is GainFFN
    assert "would not hold GainFFN's parameters in their order" in dict(report.skipped)["0.drop"]


def identity_ffn_layer(kind, batch_first, **kwargs):
    """A converted torch layer, row patterns in 4 groups, whose feed-forward is relu(h) times the keep mask
    (identity Linears) and whose other dropouts are off."""
    torch.manual_seed(0)
    cls = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
    layer = cls(8, 2, 8, 0.5, batch_first=batch_first).double()
    with torch.no_grad():
        for linear in (layer.linear1, layer.linear2):
            linear.weight.copy_(torch.eye(8))
            linear.bias.zero_()
    for m in layer.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
        elif isinstance(m, nn.Dropout) and m is not layer.dropout:
            m.p = 0.0
    convert(layer, method="row", groups=4, generator=torch.Generator().manual_seed(1), **kwargs)
    return layer.train()


def _masked(h, pattern):
    return h * pattern.keep_mask(h.shape[-1]).double() * pattern.scale


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("executor, static", [("compact", False), ("masked", False), ("auto", True)])
def test_groups_split_the_batch_of_a_seq_first_layer_not_its_sequence(kind, executor, static):
    seq, first = (identity_ffn_layer(kind, b, static_shapes=static) for b in (False, True))
    for layer in (seq, first):
        layer.ard_ffn.executor = executor
    h = torch.rand(5, 8, 8, dtype=torch.float64) + 0.1  # [T, B, d] > 0: relu keeps every unit
    for _ in range(4):
        y = seq._ff_block(h)  # [T, B, d]
        patterns = seq.ard_ffn.last_pattern
        for b in range(8):  # B = 8 in 4 groups: samples 2g, 2g + 1 get pattern g at every position
            torch.testing.assert_close(y[:, b], _masked(h[:, b], patterns[b // 2]), rtol=0, atol=1e-15)
        torch.testing.assert_close(first._ff_block(h.transpose(0, 1)).transpose(0, 1), y)
        assert first.ard_ffn.last_pattern == patterns
    x, memory = torch.randn(5, 8, 8, dtype=torch.float64), torch.randn(3, 8, 8, dtype=torch.float64)
    args = (x,) if kind == "encoder" else (x, memory)
    want = first(*(a.transpose(0, 1) for a in args)).transpose(0, 1)  # the batch-first layer, same seed
    torch.testing.assert_close(seq(*args), want)
    assert first.ard_ffn.last_pattern == seq.ard_ffn.last_pattern


@pytest.mark.parametrize("batch_first", [False, True])
def test_an_unbatched_sequence_is_one_sample_for_the_groups(batch_first):
    layer = identity_ffn_layer("encoder", batch_first)
    h = torch.rand(6, 8, dtype=torch.float64) + 0.1  # [T, d]
    for _ in range(4):  # the draws differ between groups from the second on
        y = layer._ff_block(h)
        torch.testing.assert_close(y, _masked(h, layer.ard_ffn.last_pattern[0]), rtol=0, atol=1e-15)
    assert layer(torch.randn(6, 8, dtype=torch.float64)).shape == (6, 8)


def test_a_torch_layers_dropout_still_sets_the_rate():
    model = only_hidden_dropout(encoder())
    mine = [layer.dropout for layer in model.layers]
    convert(model, generator=torch.Generator().manual_seed(12))
    assert [layer.ard_ffn.dropout for layer in model.layers] == mine  # the very modules, `is`
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    model.train()(x)
    assert all(layer.ard_ffn.last_pattern is not None for layer in model.layers)
    for layer in model.layers:
        layer.dropout.p = 0.0  # the attribute torch users know
    y = model(x)
    assert all(layer.ard_ffn.last_pattern is None for layer in model.layers)
    assert torch.equal(y, model.eval()(x))


@pytest.mark.parametrize("gated", [False, True])
def test_t5s_dropout_is_the_blocks_and_convert_p_is_set_on_it(gated):
    model = t5(gated)
    mine = [m.dropout for name, m in model.named_modules() if name.endswith("DenseReluDense")]
    convert(model, p=0.2, generator=torch.Generator().manual_seed(13))
    blocks = [m for name, m in model.named_modules() if name.endswith("DenseReluDense")]
    assert [m.dropout for m in blocks] == mine and all(d.p == 0.2 for d in mine)
    ffns = [m for m in model.modules() if isinstance(m, ApproxDropoutFFN)]
    assert len(ffns) == 4 and all(f.p == 0.2 for f in ffns)
    for block in blocks:
        block.dropout.p = 0.0
    seq2seq(model.train(), _ids())
    assert all(f.last_pattern is None for f in ffns)


def test_a_refused_chain_keeps_its_dropouts_p():
    """The wi_0 chain's block is built (holding T5's dropout) before the hooked gate wi_1 refuses the whole
    gated block: the dropout keeps its p."""
    model = t5(gated=True)
    for name, m in model.named_modules():
        if name.endswith("DenseReluDense"):
            m.wi_1.register_forward_hook(lambda module, args, out: out)
    report = convert(model, p=0.1)
    assert report.converted == []
    assert all(m.dropout.p == 0.3 for name, m in model.named_modules() if name.endswith("DenseReluDense"))


def test_a_sequentials_dropout_is_the_blocks():
    model = chain()
    mine = model[2]
    convert(model)
    assert model[0].dropout is mine
    mine.p = 0.0
    model.train()(torch.randn(3, 8))
    assert model[0].last_pattern is None


@pytest.mark.parametrize("make", ["gpt2", "bert"])
def test_an_output_side_modules_dropout_attribute_still_sets_the_rate(make):
    model = {"gpt2": gpt2, "bert": bert}[make]()
    pairs = [(m, m.dropout) for m in model.modules() if type(m).__name__ in ("GPT2MLP", "BertOutput")]
    convert(model, output_side=True, generator=torch.Generator().manual_seed(14))
    blocks = [m for m in model.modules() if isinstance(m, OutputRowDropout)]
    assert {id(b.dropout) for b in blocks} >= {id(d) for _, d in pairs}  # the very nn.Dropout modules
    for module, _ in pairs:
        assert module.dropout.p == 0.3
        module.dropout.p = 0.0  # the attribute users know: its block's rate
    _hidden(model.train(), input_ids=_ids())
    mine = [b for b in blocks if any(b.dropout is d for _, d in pairs)]
    assert mine and all(b.p == 0.0 and b.last_pattern is None for b in mine)
    assert (
        "already converted"
        in dict(convert(model, output_side=True).skipped)[
            "h.0.mlp.dropout" if make == "gpt2" else "encoder.layer.0.output.dropout"
        ]
    )


@pytest.mark.parametrize(
    "make, convert_args",
    [
        (chain, {}),
        (lambda: encoder("gelu"), {}),
        (lambda: t5(gated=True), {}),
        (gpt2, {"output_side": True}),
    ],
    ids=["sequential", "encoder layer", "t5 gated", "gpt2 output side"],
)
def test_a_partial_load_reports_the_keys_the_unconverted_model_reports(make, convert_args):
    """missing_keys / unexpected_keys name the checkpoint's keys (those state_dict() shows), never the
    converted model's inner names or the aliases it leaves out of its state_dict."""
    converted = make()
    assert convert(converted, **convert_args).converted
    assert_partial_loads_report_as(make(), converted)
