"""torch.func transforms through the models (functional_call + grad, as meta-learning does; vmap over grad,
as per-sample gradients do): the same gradients as ordinary autograd under the same draws."""

import copy
import io

import pytest
import torch
from torch import nn

from approxdrop import ApproxDropoutFFN, ApproxDropoutLSTM, ApproxDropoutMLP, convert, draw_patterns


def _functional_grads(model, x, loss):
    params = {name: p.detach() for name, p in model.named_parameters()}
    torch.manual_seed(3)
    return torch.func.grad(lambda ps: loss(torch.func.functional_call(model, ps, (x,))))(params)


def _autograd_grads(model, x, loss):
    model.zero_grad()
    torch.manual_seed(3)  # the draws of _functional_grads
    loss(model(x)).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _squares(out):
    return out.pow(2).mean()


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: ApproxDropoutMLP([16, 64, 64, 4], p=0.5, method="row", executor="compact"), torch.randn(8, 16)),
        (lambda: ApproxDropoutMLP([16, 64, 64, 4], p=0.5, method="row-g4", executor="compact"), torch.randn(8, 16)),
        (lambda: ApproxDropoutMLP([16, 64, 64, 4], p=0.5, method="tile-g4", tile=8), torch.randn(8, 16)),
        (lambda: ApproxDropoutFFN(16, 64, p=0.5, method="row-g4", executor="compact"), torch.randn(8, 16)),
        (
            lambda: ApproxDropoutLSTM(30, hidden=16, p=0.5, method="row-g4", executor="compact"),
            torch.randint(30, (5, 4)),
        ),
    ],
)
def test_torch_func_grad_equals_autograd(make, x):
    torch.manual_seed(0)
    model = make()
    loss = _squares if not isinstance(model, ApproxDropoutLSTM) else (lambda out: _squares(out[0]))
    got, want = _functional_grads(model, x, loss), _autograd_grads(model, x, loss)
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_functional_call_on_a_converted_torch_layer_equals_autograd_and_leaves_it_trainable():
    """The converted layer's block reads the layer's Linears, not a second name for them: functional_call (tied
    weights, its default) swaps each once and puts the Parameters back, so eager training goes on after it."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=40, dropout=0.3, batch_first=True)
    convert(layer, p=0.5, method="row-g4")
    layer.dropout1.p = layer.dropout2.p = 0.0  # torch's own residual dropouts draw otherwise under torch.func
    x = torch.randn(4, 5, 16)
    got, want = _functional_grads(layer, x, _squares), _autograd_grads(layer, x, _squares)
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], msg=name)
    assert all(type(p) is nn.Parameter for p in layer.parameters())
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.linear1.weight.detach().clone()
    _autograd_grads(layer, x, _squares)
    optimizer.step()
    assert not torch.equal(before, layer.linear1.weight)


def test_per_sample_gradients_with_vmap_equal_a_loop_over_samples_and_average_to_the_batch_step():
    torch.manual_seed(0)
    model = ApproxDropoutMLP([16, 64, 64, 4], p=0.5, method="row", executor="compact").double()
    params = {name: p.detach() for name, p in model.named_parameters()}
    x = torch.randn(6, 16, dtype=torch.float64)

    def loss(ps, sample):
        return _squares(torch.func.functional_call(model, ps, (sample[None],)))

    torch.manual_seed(3)
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="same")(params, x)
    for i in range(len(x)):
        torch.manual_seed(3)  # randomness="same": every sample saw this draw
        one = torch.func.grad(loss)(params, x[i])
        for name in one:
            torch.testing.assert_close(per_sample[name][i], one[name], msg=name)
    torch.manual_seed(3)  # the same draw as a batch step: the per-sample gradients average to its gradient
    _squares(model(x)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(per_sample[name].mean(0), p.grad, msg=name)


@pytest.mark.parametrize("method", ["row-g4", "row-extended-g4"])
def test_vmap_over_a_model_with_batch_groups_is_refused(method):
    """Under vmap each call sees one sample, which cannot know its batch group: every sample got group 0's
    pattern, so the per-sample gradients of the MLP's default row-g4 did not add up to the batch step's."""
    model = ApproxDropoutMLP([6, 10, 3], 0.5, method)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(ps, sample):
        return _squares(torch.func.functional_call(model, ps, (sample[None],)))

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="same")
    with pytest.raises(RuntimeError, match=r"cannot know its batch group.*groups=1"):
        per_sample(params, torch.randn(4, 6))
    model.eval()  # no dropout, no groups: vmap runs
    assert per_sample(params, torch.randn(4, 6))["linears.0.weight"].shape == (4, 10, 6)


@pytest.mark.parametrize("method", ["row", "shared", "tile"])
def test_vmap_with_a_pattern_per_sample_is_refused_with_the_mode_that_works(method):
    """randomness="different" asks each sample for its own draw; ARD's pattern is the batch's (it failed with
    "Cannot access data pointer of Tensor that doesn't have storage")."""
    model = ApproxDropoutMLP([6, 10, 3], 0.5, method, tile=2)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(ps, sample):
        return _squares(torch.func.functional_call(model, ps, (sample[None],)))

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")
    with pytest.raises(RuntimeError, match=r"randomness='different'.*use randomness='same'"):
        per_sample(params, torch.randn(4, 6))


def test_a_static_model_draws_before_the_transform_and_says_so_inside_it():
    model = ApproxDropoutMLP([5, 8, 3], 0.5, "row", static_shapes=True)
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"call ad.draw_patterns\(model\) before the transform"):
        _functional_grads(model, x, _squares)
    draw_patterns(model)  # the draw lands in the buffer here; the forward inside the transform runs it
    model.zero_grad()
    pattern = model.static_offsets.clone()
    grads = _functional_grads(model, x, _squares)
    assert torch.equal(model.static_offsets, pattern) and all(torch.isfinite(g).all() for g in grads.values())


def test_a_unit_index_drawn_inside_a_transform_is_kept_as_a_plain_tensor():
    """``shared`` draws an index tensor, which torch.func wraps: the module keeps it unwrapped, so it still
    deep-copies and saves."""
    model = ApproxDropoutMLP([5, 8, 3], 0.5, "shared")
    _functional_grads(model, torch.randn(4, 5), _squares)
    kept = model.last_patterns[1]
    assert not torch._C._functorch.is_functorch_wrapped_tensor(kept) and kept.dtype == torch.long
    copy.deepcopy(model)
    torch.save(model, io.BytesIO())
