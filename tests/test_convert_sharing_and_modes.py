"""convert on models beyond one pass over distinct modules: a second convert of gated and output-side blocks
(each dropout reported once, none raising), a feed-forward module shared by several places (the same block at
every place), the nn.Dropout's own train / eval mode deciding whether a converted block drops (Monte Carlo
dropout, dropouts switched off one by one), a dropout replaced by nn.Identity, output-side blocks under
torch.autocast, and the reason given for an uninitialised lazy Linear."""

import copy

import pytest
import torch
from test_convert_models import hf, t5  # tiny Hugging Face models built from configs
from torch import nn

from approxdrop import ApproxDropoutFFN, convert, draw_patterns
from approxdrop.models.gated import GatedApproxDropoutFFN
from approxdrop.models.output_side import OutputRowDropout


def gpt2():
    T = hf()
    torch.manual_seed(0)
    return T.GPT2Model(T.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16, resid_pdrop=0.3))


def chain(p: float = 0.5) -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(p), nn.Linear(64, 16))


def dropouts(model: nn.Module) -> list[nn.Dropout]:
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


# --- a second convert --------------------------------------------------------------------------------------


def test_a_second_convert_leaves_a_gated_block_alone_and_says_so():
    ffn = ApproxDropoutFFN.from_modules(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), 0.3)
    model = nn.Sequential(GatedApproxDropoutFFN(ffn, nn.Linear(8, 16)), nn.LayerNorm(8))
    report = convert(model, p=0.1, method="row-extended")
    assert report.converted == []
    ((name, why),) = report.skipped
    assert name == "0" and "already approxdrop's GatedApproxDropoutFFN (p 0.3, method 'row')" in why
    assert model[0].ffn is ffn and ffn.p == 0.3 and ffn.method == "row"


def test_a_second_convert_of_a_gated_t5_reports_each_block_once():
    model = t5(gated=True)
    first = convert(model)
    assert len(first.converted) == 4  # encoder and decoder, two layers each
    blocks = [m for m in model.modules() if isinstance(m, GatedApproxDropoutFFN)]
    again = convert(model)
    assert again.converted == []
    already = sorted(name for name, why in again.skipped if "already" in why)
    assert already == sorted(first.converted)  # the gated blocks, named as the first convert's report named them
    assert [m for m in model.modules() if isinstance(m, GatedApproxDropoutFFN)] == blocks


def test_a_second_convert_of_output_side_blocks_reports_each_dropout_once():
    model = gpt2()
    sites = len(dropouts(model))  # drop, attn_dropout, resid_dropout, mlp.dropout
    first = convert(model, output_side=True)
    assert first.converted == ["h.0.attn.c_proj", "h.0.mlp.c_proj"]
    again = convert(model, output_side=True)
    names = [name for name, _ in again.skipped]
    assert len(names) == len(set(names)) == sites, again
    assert [name for name, why in again.skipped if "already" in why] == ["h.0.attn.resid_dropout", "h.0.mlp.dropout"]


# --- a module shared by several places -----------------------------------------------------------------------


def test_a_feed_forward_shared_by_two_places_becomes_one_block_at_both():
    T = hf()
    from transformers.models.t5.modeling_t5 import T5DenseActDense

    torch.manual_seed(0)
    shared = T5DenseActDense(T.T5Config(d_model=16, d_ff=32, dropout_rate=0.3))
    model = nn.ModuleList([shared, shared])
    keys, params = list(model.state_dict()), list(model.parameters())
    x = torch.randn(3, 16)
    model.eval()
    before = model[1](model[0](x))
    report = convert(model)
    assert isinstance(model[0], ApproxDropoutFFN) and model[1] is model[0]  # still one module: tied weights
    assert report.converted == ["0", "1"] and report.skipped == []
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    assert torch.equal(model[1](model[0](x)), before)
    twin = nn.ModuleList([shared, shared])  # the unconverted module: checkpoints load both ways
    twin.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(twin.state_dict(), strict=True)


def test_a_feed_forward_shared_by_two_t5_layers_is_converted_in_both():
    model = t5(gated=False)
    stack = model.encoder.block
    stack[1].layer[1].DenseReluDense = stack[0].layer[1].DenseReluDense  # tied feed-forwards
    convert(model)
    first, second = (block.layer[1].DenseReluDense for block in stack)
    assert isinstance(first, ApproxDropoutFFN) and second is first


# --- the nn.Dropout's mode decides ---------------------------------------------------------------------------


def mc_spread(model: nn.Module, x: torch.Tensor) -> float:
    """Monte Carlo dropout: the model in eval mode, its nn.Dropout modules in training mode."""
    model.eval()
    for m in dropouts(model):
        m.train()
    # with grad enabled: torch's encoder layer takes its eval fast path (no dropout at all) under no_grad
    return torch.stack([model(x) for _ in range(8)]).std(0).max().item()


def mode_cases():
    torch.manual_seed(0)
    seq = chain()
    ffn = ApproxDropoutFFN(16, 64, p=0.5)
    out = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.Dropout(0.5))
    layer = nn.TransformerEncoderLayer(16, 2, 64, 0.5, batch_first=True)
    layer.dropout1, layer.dropout2 = nn.Dropout(0.0), nn.Dropout(0.0)  # only the feed-forward drops
    layer.self_attn.dropout = 0.0
    return {
        "sequential": (seq, {}, torch.randn(4, 16)),
        "ffn built directly": (ffn, None, torch.randn(4, 16)),
        "output side": (out, {"output_side": True}, torch.randn(4, 16)),
        "torch encoder layer": (layer, {}, torch.randn(2, 3, 16)),
    }


@pytest.mark.parametrize("case", list(mode_cases()))
def test_monte_carlo_dropout_drops_in_a_converted_model(case):
    model, how, x = mode_cases()[case]
    if how is not None:
        convert(model, **how)
    assert mc_spread(model, x) > 0.01


@pytest.mark.parametrize("case", list(mode_cases()))
def test_dropouts_switched_to_eval_in_a_training_model_do_not_drop(case):
    model, how, x = mode_cases()[case]
    plain = copy.deepcopy(model).eval()
    if how is not None:
        convert(model, **how)
    model.train()
    for m in dropouts(model):
        m.eval()
    assert draw_patterns(model) == 0
    assert torch.equal(model(x), plain(x))  # bit-identical to the eval output: nothing drops


def test_a_gated_t5_follows_its_dropout_modes():
    model = t5(gated=True)
    ids = torch.randint(40, (2, 5))
    plain = copy.deepcopy(model).eval()
    convert(model)
    blocks = [m for m in model.modules() if isinstance(m, GatedApproxDropoutFFN)]
    for twin in (model, plain):
        twin.train()  # T5's attention applies F.dropout by the module's mode: the same seed for both
        for m in dropouts(twin):
            m.eval()
    torch.manual_seed(1)
    y = model(ids, decoder_input_ids=ids).last_hidden_state
    torch.manual_seed(1)
    assert torch.equal(y, plain(ids, decoder_input_ids=ids).last_hidden_state)
    assert all(block.ffn.last_pattern is None for block in blocks)
    model.eval()
    for block in blocks:
        block.dropout.train()  # the feed-forwards' dropouts only
    with torch.no_grad():
        model(ids, decoder_input_ids=ids)
    assert all(block.ffn.last_pattern is not None for block in blocks)


def test_the_drawn_masks_of_monte_carlo_dropout_follow_the_law_of_the_block():
    """A block in eval mode whose nn.Dropout is in training mode drops exactly as a training block does."""
    torch.manual_seed(0)
    a = ApproxDropoutFFN(16, 64, p=0.5).train()
    b = copy.deepcopy(a).eval()
    b.dropout.train()
    x = torch.randn(4, 16)
    torch.manual_seed(3)
    ya = a(x)
    torch.manual_seed(3)
    yb = b(x)
    assert torch.equal(ya, yb) and a.last_pattern == b.last_pattern


# --- a dropout replaced by nn.Identity ------------------------------------------------------------------------


def test_a_dropout_replaced_by_identity_means_no_dropout():
    torch.manual_seed(0)
    seq = chain(0.3)
    plain = copy.deepcopy(seq).eval()
    convert(seq)
    seq[0].add_module("2", nn.Identity())  # the usual way to switch a dropout off
    seq.train()
    x = torch.randn(4, 16)
    assert seq[0].p == 0.0 and draw_patterns(seq) == 0
    assert torch.equal(seq(x), plain(x))
    with pytest.raises(TypeError, match="ApproxDropoutFFN.dropout is Identity, which has no p.*nn.Dropout back"):
        seq[0].p = 0.2


def test_a_dropout_replaced_by_another_module_is_a_clear_error():
    block = ApproxDropoutFFN(16, 64, p=0.3)
    block.add_module("2", nn.ReLU())
    with pytest.raises(TypeError, match="ApproxDropoutFFN.dropout is ReLU, which has no p: .*put an nn.Dropout there"):
        block(torch.randn(2, 16))


# --- output side under autocast -------------------------------------------------------------------------------


def test_output_side_blocks_train_under_cpu_autocast_as_the_masked_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.Dropout(0.3))
    reference = copy.deepcopy(model)
    assert convert(model, output_side=True).converted == ["2"]
    model.train()
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        block = model[2]
        assert isinstance(block, OutputRowDropout)
        mask = block.last_pattern.keep_mask(16).to(torch.bfloat16) * block.last_pattern.scale
        expected = reference[2](reference[1](reference[0](x))) * mask
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)
    y.float().square().sum().backward()
    assert model[0].weight.grad is not None


def test_output_side_blocks_say_which_width_a_wrong_input_lacks():
    model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.3))
    convert(model, output_side=True)
    model.train()
    with pytest.raises(ValueError, match="last dimension 16, got shape \\(4, 8\\)"):
        model(torch.randn(4, 8))


# --- lazy modules ---------------------------------------------------------------------------------------------


def test_an_uninitialised_lazy_linear_is_left_alone_with_what_to_do():
    model = nn.Sequential(nn.LazyLinear(64), nn.GELU(), nn.Dropout(0.3), nn.Linear(64, 16))
    report = convert(model)
    ((name, why),) = report.skipped
    assert name == "2" and "uninitialised nn.LazyLinear" in why and "Run one forward pass" in why
    assert "hook" not in why
    model(torch.randn(2, 32))
    assert convert(model).converted == ["0"]


def test_a_gated_blocks_p_is_its_ffns():
    ffn = ApproxDropoutFFN.from_modules(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), 0.3)
    block = GatedApproxDropoutFFN(ffn, nn.Linear(8, 16))
    assert block.p == 0.3 and block.method == "row"
    block.p = 0.1  # the rate of the block, as the report of a second convert says to set it
    assert ffn.p == block.dropout.p == 0.1


# --- torch's Transformer layers -------------------------------------------------------------------------------


def encoder_layer(batch_first: bool, groups: int = 4) -> nn.TransformerEncoderLayer:
    """A converted encoder layer whose only dropout is the feed-forward's (p 0.5): the others set to 0."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 64, dropout=0.5, batch_first=batch_first)
    layer.dropout1.p = layer.dropout2.p = layer.self_attn.dropout = 0.0
    convert(layer, groups=groups)
    return layer


def test_monte_carlo_dropout_in_a_sequence_first_layer_splits_groups_along_the_batch():
    x = torch.randn(5, 8, 16)  # [T, B, d]
    outs = {}
    for batch_first in (False, True):
        layer = encoder_layer(batch_first).eval()
        layer.dropout.train()  # Monte Carlo dropout: only the nn.Dropout in training mode
        torch.manual_seed(1)
        outs[batch_first] = layer(x if batch_first is False else x.transpose(0, 1))
    # each sample keeps one pattern at every position, whichever axis the layer takes first
    assert torch.equal(outs[False], outs[True].transpose(0, 1))


@pytest.mark.parametrize("layer_kind", ["encoder", "decoder"])
def test_a_torch_layer_whose_dropout_is_replaced_runs_torchs_own_feed_forward(layer_kind):
    torch.manual_seed(0)
    if layer_kind == "encoder":
        layer = nn.TransformerEncoderLayer(16, 2, 64, dropout=0.5, batch_first=True)
        run = lambda m, x: m(x)  # noqa: E731
    else:
        layer = nn.TransformerDecoderLayer(16, 2, 64, dropout=0.5, batch_first=True)
        memory = torch.randn(3, 4, 16)
        run = lambda m, x: m(x, memory)  # noqa: E731
    plain = copy.deepcopy(layer)
    convert(layer)
    layer.dropout = nn.Identity()  # switched off the usual way, after convert
    plain.dropout = nn.Identity()
    x = torch.randn(3, 5, 16)
    torch.manual_seed(2)
    got = run(layer.train(), x)
    torch.manual_seed(2)
    assert torch.equal(got, run(plain.train(), x))  # no row dropout left: the same random ops as torch's layer
