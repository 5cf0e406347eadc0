"""A block's Linear wrapped (as peft's LoRA does), patched or hooked after the block was built: the block
reads a Linear's weight without calling it, so in training it must notice and call its parts instead
(dense GEMMs times the same pattern's mask), with one RuntimeWarning, not silently skip the wrapper. The
masked executor calls the parts anyway: no warning there, the same output."""

import contextlib
import warnings

import pytest
import torch
from torch import nn

from approxdrop import ApproxDropoutFFN, ApproxDropoutMLP, convert
from approxdrop.models.gated import GatedApproxDropoutFFN
from approxdrop.models.output_side import OutputRowDropout


class LoraLike(nn.Module):
    """``base(x) + B(A(x))``: what a LoRA wrapper puts in the place of a Linear."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base = base
        self.a = nn.Linear(base.in_features, rank, bias=False)
        self.b = nn.Linear(rank, base.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.b(self.a(x))


def warns_where_weights_are_read(executor: str, static_shapes: bool, match: str):
    """pytest.warns on the paths that read the weights (compact, static), else nothing to check."""
    if executor == "masked" and not static_shapes:
        return contextlib.nullcontext()
    return pytest.warns(RuntimeWarning, match=match)


def hidden_mask(block: ApproxDropoutFFN, batch: int) -> torch.Tensor:
    """[batch, d_hidden]: each sample's scaled keep mask from the block's last draw."""
    patterns = block.last_pattern if isinstance(block.last_pattern, tuple) else (block.last_pattern,)
    bounds = torch.tensor_split(torch.arange(batch), len(patterns))
    rows = [q.keep_mask(block.d_hidden).double() * q.scale for q, part in zip(patterns, bounds) for _ in part]
    return torch.stack(rows)


def ffn_block(method: str, executor: str, static_shapes: bool) -> ApproxDropoutFFN:
    torch.manual_seed(0)
    block = ApproxDropoutFFN(12, 40, 0.5, "relu", method, executor=executor, static_shapes=static_shapes)
    return block.double().train()


@pytest.mark.parametrize("method", ["row", "row-g4"])
@pytest.mark.parametrize("executor", ["compact", "masked"])
@pytest.mark.parametrize("static_shapes", [False, True])
@pytest.mark.parametrize("entry", ["0", "3"])
def test_a_linear_wrapped_after_the_block_is_built_runs_in_training(method, executor, static_shapes, entry):
    block = ffn_block(method, executor, static_shapes)
    wrapped = LoraLike(block._modules[entry]).double()
    nn.init.normal_(wrapped.b.weight)  # a LoRA delta that changes the output
    block._modules[entry] = wrapped
    x = torch.randn(8, 12, dtype=torch.float64)
    with warns_where_weights_are_read(
        executor, static_shapes, r"its fc[12] is now a test_parts_changed_after_build\.LoraLike .* calls its parts"
    ):
        y = block(x)
    expected = block.fc2(block.activation(block.fc1(x)) * hidden_mask(block, 8))  # [8, 12]
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert wrapped.a.weight.grad is not None and wrapped.a.weight.grad.abs().sum() > 0


def test_a_hook_registered_after_the_block_is_built_fires_in_training():
    block = ffn_block("row", "compact", False)
    seen = []
    block.fc2.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    x = torch.randn(6, 12, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="its fc2 carries hooks"):
        y = block(x)
    assert seen == [torch.Size([6, 12])]
    torch.testing.assert_close(y, block.fc2(block.activation(block.fc1(x)) * hidden_mask(block, 6)))


def test_a_patched_forward_on_the_gate_of_a_gated_block_runs_in_training():
    torch.manual_seed(0)
    ffn = ApproxDropoutFFN.from_modules(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), 0.5, executor="compact")
    gate = nn.Linear(8, 16)
    block = GatedApproxDropoutFFN(ffn, gate).double().train()
    calls = []
    plain = gate.forward
    gate.forward = lambda x: calls.append(1) or plain(x)
    x = torch.randn(5, 8, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="its gate has its forward replaced"):
        y = block(x)
    assert calls == [1]
    hidden = ffn.activation(ffn.fc1(x)) * plain(x) * hidden_mask(ffn, 5)  # [5, 16]
    torch.testing.assert_close(y, ffn.fc2(hidden))


@pytest.mark.parametrize("static_shapes", [False, True])
def test_an_output_side_linear_wrapped_after_convert_runs_in_training(static_shapes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 24), nn.Dropout(0.5), nn.ReLU()).double()
    convert(model, output_side=True, static_shapes=static_shapes)
    block = model[0]
    assert isinstance(block, OutputRowDropout)
    block.executor = "compact"  # at this size "auto" masks, which calls the Linear anyway (nothing to warn about)
    wrapped = LoraLike(block.linear).double()
    nn.init.normal_(wrapped.b.weight)
    block.linear = wrapped
    x = torch.randn(7, 10, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"its linear is now a test_parts_changed_after_build\.LoraLike"):
        y = block(x)
    q = block.last_pattern
    torch.testing.assert_close(y, wrapped(x) * (q.keep_mask(24).double() * q.scale))


def test_blocks_with_plain_parts_warn_nothing_and_keep_the_compact_path():
    block = ffn_block("row", "compact", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = block(torch.randn(8, 12, dtype=torch.float64))
    assert y.shape == (8, 12)


@pytest.mark.parametrize("method", ["row", "row-g4"])
@pytest.mark.parametrize("executor", ["compact", "masked"])
@pytest.mark.parametrize("static_shapes", [False, True])
def test_an_mlp_linear_hooked_after_the_model_is_built_fires_in_training(method, executor, static_shapes):
    torch.manual_seed(0)
    model = ApproxDropoutMLP([12, 32, 32, 4], 0.5, method=method, executor=executor, static_shapes=static_shapes)
    model = model.double().train()
    seen = []
    model.linears[1].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    x = torch.randn(8, 12, dtype=torch.float64)
    with warns_where_weights_are_read(executor, static_shapes, r"its linears\[1\] carries hooks"):
        y = model(x)
    assert seen == [torch.Size([8, 32])]
    h = x
    for i, (linear, draw) in enumerate(zip(model.linears, model.last_patterns)):
        if draw is not None:
            patterns = draw if isinstance(draw, tuple) else (draw,)
            bounds = torch.tensor_split(torch.arange(8), len(patterns))
            mask = [q.keep_mask(h.shape[-1]).double() * q.scale for q, part in zip(patterns, bounds) for _ in part]
            h = h * torch.stack(mask)  # [8, n]
        h = linear(h)
        h = torch.relu(h) if i < 2 else h
    torch.testing.assert_close(y, h)


def test_an_mlp_with_tile_patterns_refuses_a_linear_it_would_skip():
    model = ApproxDropoutMLP([12, 32, 4], 0.5, method="tile").train()
    model.linears[0].register_forward_pre_hook(lambda module, inputs: None)
    with pytest.raises(RuntimeError, match=r"linears\[0\] was wrapped, patched or hooked .* 'tile' step"):
        model(torch.randn(8, 12))


def test_a_torch_layers_linear_replaced_after_convert_runs_in_training():
    """peft puts its LoRA Linear in the layer's attribute (``linear1``): the block reads the layer's Linears, so
    it sees the wrapper and calls it."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(12, 2, dim_feedforward=32, dropout=0.5, batch_first=True).double()
    convert(layer, p=0.5)
    layer.ard_ffn.executor = "compact"  # the path that reads the weights (the masked one calls the Linears)
    wrapped = LoraLike(layer.linear1).double()
    nn.init.normal_(wrapped.b.weight)
    layer.linear1 = wrapped
    block = layer.ard_ffn
    x = torch.randn(3, 4, 12, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"its fc1 is now a test_parts_changed_after_build\.LoraLike"):
        y = block(x)
    mask = block.last_pattern.keep_mask(32).double() * block.last_pattern.scale  # [32]
    torch.testing.assert_close(y, layer.linear2(block.activation(wrapped(x)) * mask))


@pytest.mark.parametrize("name", ["wi_0", "wo"])
@pytest.mark.parametrize("executor", ["compact", "masked"])
def test_a_gated_blocks_linear_replaced_after_convert_runs_in_eval_and_training(name, executor):
    """peft puts its LoRA Linear in the gated block's attribute (``wi_0``, the name named_modules gives): the
    block's ApproxDropoutFFN reads wi_0 and wo from the block, so it runs the wrapper. It held the Linears itself
    and ran the bare ones: the LoRA changed nothing and got no gradient."""
    torch.manual_seed(0)
    ffn = ApproxDropoutFFN.from_modules(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), 0.5, executor=executor)
    model = nn.Sequential(GatedApproxDropoutFFN(ffn, nn.Linear(8, 16))).double()  # where convert puts one
    block = model[0]
    assert [n for n, m in model.named_modules() if m is getattr(block, name)] == [f"0.{name}"]  # one name only
    wrapped = LoraLike(getattr(block, name)).double()
    nn.init.normal_(wrapped.b.weight)
    setattr(block, name, wrapped)
    x = torch.randn(6, 8, dtype=torch.float64)
    hidden = block.ffn.activation(block.wi_0(x)) * block.wi_1(x)  # [6, 16]: through the wrapper where it is
    torch.testing.assert_close(block.eval()(x), block.wo(hidden))
    block.train()
    with warns_where_weights_are_read(executor, False, r"its fc[12] is now a test_parts_changed_after_build\.LoraLike"):
        y = block(x)
    torch.testing.assert_close(y, block.wo(hidden * hidden_mask(block.ffn, 6)))
    y.sum().backward()
    assert wrapped.a.weight.grad is not None and wrapped.a.weight.grad.abs().sum() > 0


def test_functional_call_on_a_gated_block_gives_gradients_for_every_linear():
    """Each Linear has one name in the block: torch.func.functional_call swapped wi_0 and wo twice (also as
    ffn.0 and ffn.3) and left plain tensors in them."""
    torch.manual_seed(0)
    ffn = ApproxDropoutFFN.from_modules(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), 0.5, executor="compact")
    block = GatedApproxDropoutFFN(ffn, nn.Linear(8, 16)).double().train()
    params = {k: v.detach().clone().requires_grad_() for k, v in block.named_parameters()}
    assert sorted(params) == sorted(f"{n}.{w}" for n in ("wi_0", "wi_1", "wo") for w in ("weight", "bias"))
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.func.functional_call(block, params, (x,)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    assert all(isinstance(p, nn.Parameter) for p in block.parameters())  # the block's own are back in place


@pytest.mark.parametrize("method", ["row", "row-g4"])
@pytest.mark.parametrize("static_shapes", [False, True])
def test_a_hook_on_the_activation_after_the_block_is_built_sees_every_unit(method, static_shapes):
    """An activation hook (patching, ablation, steering) put on after build saw only the kept units on the
    compact and static paths, so "unit 10" was another unit and the outputs were wrong, silently."""
    block = ffn_block(method, "compact", static_shapes)
    seen = []

    def ablate_unit_10(module, inputs, output):
        seen.append(output.shape)
        output = output.clone()
        output[..., 10] = 0.0
        return output

    block.activation.register_forward_hook(ablate_unit_10)
    x = torch.randn(8, 12, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="its activation carries hooks"):
        y = block(x)
    assert seen == [torch.Size([8, 40])]
    hidden = torch.relu(block.fc1(x))
    hidden[:, 10] = 0.0
    torch.testing.assert_close(y, block.fc2(hidden * hidden_mask(block, 8)))


def test_an_mlps_activation_hooked_after_the_model_is_built_sees_every_unit():
    torch.manual_seed(0)
    model = ApproxDropoutMLP([12, 32, 32, 4], 0.5, method="row", executor="compact").double().train()
    seen = []
    model.activation.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with pytest.warns(RuntimeWarning, match="its activation carries hooks"):
        model(torch.randn(8, 12, dtype=torch.float64))
    assert seen == [torch.Size([8, 32])] * 2
    tiled = ApproxDropoutMLP([12, 32, 4], 0.5, method="tile").train()  # full-width activations: no reason to refuse
    tiled.activation.register_forward_hook(lambda module, inputs, output: None)
    tiled(torch.randn(8, 12))
