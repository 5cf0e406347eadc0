"""Activation checkpointing (torch.utils.checkpoint) re-runs a forward inside backward. With the global random
state, which checkpointing saves and restores, the recomputed forward draws the same patterns, so the
gradients are those of the plain step; a module's own generator cannot be restored, so that draw is refused. A
forward that took a draw of draw_patterns gets that draw again when it is recomputed."""

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from approxdrop import ApproxDropoutFFN, ApproxDropoutMLP, convert, draw_patterns
from approxdrop.models.sites import Replay

MODELS = {
    "mlp row": lambda gen: ApproxDropoutMLP([16, 48, 48, 4], p=0.5, method="row", executor="compact", generator=gen),
    "mlp row-g4": lambda gen: ApproxDropoutMLP([16, 48, 48, 4], p=0.5, method="row-g4", generator=gen),
    "mlp tile": lambda gen: ApproxDropoutMLP([16, 48, 48, 4], p=0.5, method="tile", tile=8, generator=gen),
    "ffn row-g4": lambda gen: ApproxDropoutFFN(16, 48, p=0.5, method="row-g4", executor="compact", generator=gen),
    "mlp shared": lambda gen: ApproxDropoutMLP([16, 48, 48, 4], p=0.5, method="shared", generator=gen),
}


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_checkpointed_step_has_the_plain_steps_gradients(name, reentrant):
    torch.manual_seed(0)
    plain = MODELS[name](None)
    checkpointed = copy.deepcopy(plain)
    x = torch.randn(32, 16, requires_grad=True)
    torch.manual_seed(1)
    plain(x).pow(2).sum().backward()
    torch.manual_seed(1)
    checkpoint(checkpointed, x, use_reentrant=reentrant).pow(2).sum().backward()
    for (param, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=param)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("generator", [None, 7], ids=["global random state", "own generator"])
@pytest.mark.parametrize("name", list(MODELS))
def test_a_draw_of_draw_patterns_is_the_one_the_recomputed_forward_uses(name, generator, reentrant):
    """draw_patterns before the step (compiled training does so): the recomputation must not draw anew."""
    torch.manual_seed(0)
    make = (lambda: None) if generator is None else (lambda: torch.Generator().manual_seed(generator))
    plain = MODELS[name](make())
    checkpointed = copy.deepcopy(plain)
    x = torch.randn(32, 16, requires_grad=True)
    for model, run in ((plain, lambda m: m(x)), (checkpointed, lambda m: checkpoint(m, x, use_reentrant=reentrant))):
        torch.manual_seed(1)
        assert draw_patterns(model) == 1
        run(model).pow(2).sum().backward()
    for (param, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=param)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_one_draw_of_draw_patterns_then_plain_checkpointed_steps_keep_plain_gradients(static, reentrant, monkeypatch):
    """One draw_patterns, then training without it: the record of that draw holds at most Replay.LIMIT calls,
    then is dropped, so no recomputation long after is handed the old draw (it was from step LIMIT on)."""
    monkeypatch.setattr(Replay, "LIMIT", 4)
    torch.manual_seed(0)
    plain = ApproxDropoutMLP([16, 48, 48, 4], p=0.5, method="row-g4", executor="compact", static_shapes=static)
    checkpointed = copy.deepcopy(plain)
    x = torch.randn(32, 16, requires_grad=True)
    draw_patterns(checkpointed)
    checkpointed(x).sum().backward()
    for step in range(1, 12):
        for model in (plain, checkpointed):
            model.zero_grad()
        torch.manual_seed(step)
        plain(x).pow(2).sum().backward()
        torch.manual_seed(step)
        checkpoint(checkpointed, x, use_reentrant=reentrant).pow(2).sum().backward()
        for (param, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
            assert torch.equal(a.grad, b.grad), f"step {step}: {param}"


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("generator", [None, 7], ids=["global random state", "own generator"])
@pytest.mark.parametrize("method", ["row", "row-g4"])
def test_two_drawn_checkpointed_forwards_before_one_backward_get_their_own_draws(method, generator, reentrant, static):
    """R-Drop: two forwards of one batch, each after its own draw_patterns, then one backward of a loss on
    both. Each recomputation must get its own forward's draw (it got the later one: wrong gradients, or a
    CheckpointError for a static model)."""
    torch.manual_seed(0)
    make = (lambda: None) if generator is None else (lambda: torch.Generator().manual_seed(generator))
    plain = ApproxDropoutMLP([16, 48, 48, 4], p=0.5, method=method, static_shapes=static, generator=make())
    checkpointed = copy.deepcopy(plain)
    x = torch.randn(32, 16, requires_grad=True)  # the reentrant checkpoint needs an input that does
    for step in range(3):
        for model, run in (
            (plain, lambda m: m(x)),
            (checkpointed, lambda m: checkpoint(m, x, use_reentrant=reentrant)),
        ):
            torch.manual_seed(step)
            model.zero_grad()
            draw_patterns(model)
            first = run(model)
            draw_patterns(model)
            second = run(model)
            ((first - second).square().sum() + first.sum()).backward()
        for (param, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
            torch.testing.assert_close(a.grad, b.grad, msg=f"step {step}: {param}")


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_modules_own_generator_is_refused_when_checkpointing_recomputes(reentrant):
    model = MODELS["mlp row-g4"](torch.Generator().manual_seed(7))
    y = checkpoint(model, torch.randn(32, 16, requires_grad=True), use_reentrant=reentrant)
    with pytest.raises(RuntimeError, match="activation checkpointing recomputes it.*generator=None"):
        y.pow(2).sum().backward()


def test_hugging_face_gradient_checkpointing_of_a_converted_t5_keeps_the_gradients():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.3, use_cache=False
    )
    plain = transformers.T5Model(config)
    assert convert(plain, method="row-g4").converted  # the feed-forward blocks
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    plain.train(), checkpointed.train()
    ids = torch.randint(1, 40, (4, 6))
    for model in (plain, checkpointed):
        torch.manual_seed(5)
        model(input_ids=ids, decoder_input_ids=ids).last_hidden_state.pow(2).sum().backward()
    for (param, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=param)


def _shared_block_steps(forward_of, reentrant, static):
    """The gradients of a plain step and of a checkpointed one (``forward_of(model, x, wrap)``, ``wrap`` the
    checkpoint of a function, or a plain call) of a converted block (``static``: with static shapes, whose
    forward reads the draw from its buffer) called several times in one forward, each after draw_patterns
    from the same state."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Dropout(0.4), torch.nn.Linear(64, 16)
    )
    convert(model, static_shapes=static)  # generator=None: the global random state
    model.train()
    checkpointed = copy.deepcopy(model)
    x = torch.randn(8, 5, 16, requires_grad=True)
    steps = []
    for m, wrap in (
        (model, lambda f, *a: f(*a)),
        (checkpointed, lambda f, *a: checkpoint(f, *a, use_reentrant=reentrant)),
    ):
        torch.manual_seed(3)
        assert draw_patterns(m) == 1
        y = forward_of(m, x, wrap)
        y.square().sum().backward()
        steps.append((y, [q.grad for q in m.parameters()]))
    (y1, g1), (y2, g2) = steps
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_a_block_called_twice_in_one_checkpointed_forward_replays_each_calls_draw(reentrant, static):
    """The first call takes draw_patterns' draw, the second draws for itself: recomputed, each gets its own."""
    _shared_block_steps(lambda m, x, wrap: wrap(lambda z: m(torch.tanh(m(z))), x), reentrant, static)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_a_block_shared_by_checkpointed_layers_replays_each_layers_draw(reentrant, static):
    """One checkpointed segment per layer (Hugging Face's gradient checkpointing of tied layers), recomputed in
    reverse order, with another random op between the layers (as a transformer's other dropouts are)."""
    drop = torch.nn.Dropout(0.2)

    def layers(m, x, wrap):
        for _ in range(3):
            x = wrap(lambda z: drop(torch.tanh(m(z))), x)
        return x

    _shared_block_steps(layers, reentrant, static)
