"""A dropout rate that changes during training (a schedule): set through the model's ``p`` or through the
``p`` of its nn.Dropout, as a training script sets every nn.Dropout of a model, the next training step
draws from laws for the new rate; laws given for one rate refuse another."""

import pytest
import torch
from torch import nn

import approxdrop as ad
from approxdrop import ApproxDropoutFFN, ApproxDropoutLSTM, ApproxDropoutMLP, convert, distribution_for
from approxdrop.models.output_side import OutputRowDropout

MODELS = {
    "mlp row-g4": (lambda p: ApproxDropoutMLP([8, 32, 32, 2], p=p, method="row-g4"), lambda: torch.randn(8, 8)),
    "mlp tile": (lambda p: ApproxDropoutMLP([8, 32, 32, 2], p=p, method="tile", tile=8), lambda: torch.randn(8, 8)),
    "ffn row": (lambda p: ApproxDropoutFFN(8, 32, p=p, method="row"), lambda: torch.randn(8, 8)),
    "lstm row-g4": (
        lambda p: ApproxDropoutLSTM(20, hidden=16, p=p, method="row-g4"),
        lambda: torch.randint(20, (3, 8)),
    ),
    "output side": (lambda p: OutputRowDropout(nn.Linear(8, 32), p=p), lambda: torch.randn(8, 8)),
}


def _step_rates(model) -> list[float]:
    """The expected rate of each site's law that this step drew from."""
    return [law.expected_rate for law in model.distributions]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("through", ["model", "nn.Dropout"])
def test_a_new_rate_reaches_the_next_steps_laws(name, through):
    make, batch = MODELS[name]
    model = make(0.5).train()
    model(batch())
    assert _step_rates(model) == pytest.approx([0.5] * len(model.distributions))
    if through == "model":
        model.p = 0.2
    else:  # what a schedule written for nn.Dropout does
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.2
    assert model.p == 0.2 and model.dropout.p == 0.2
    model(batch())
    assert _step_rates(model) == pytest.approx([0.2] * len(model.distributions), abs=1e-6)


def test_the_bernoulli_method_follows_the_new_rate_too():
    model = ApproxDropoutMLP([8, 4096, 2], p=0.5, method="bernoulli").train()
    model.p = 0.1
    hidden = model.dropout(torch.ones(4096))
    assert 0.05 < (hidden == 0).float().mean().item() < 0.15


def test_a_converted_models_schedule_sets_its_blocks_rate():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 8))
    convert(model)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.3
    block = model[0]
    assert isinstance(block, ApproxDropoutFFN) and block.p == 0.3
    block.train()(torch.randn(8, 8))
    assert _step_rates(block) == pytest.approx([0.3], abs=1e-6)


def test_laws_given_for_one_rate_refuse_another_and_a_bad_rate_is_refused():
    laws = [distribution_for(0.5, 32), distribution_for(0.5, 32)]
    model = ApproxDropoutMLP([8, 32, 32, 2], p=0.5, method="row", distributions=laws).train()
    model.p = 0.3
    with pytest.raises(ValueError, match="laws were given for p = 0.5"):
        model(torch.randn(4, 8))
    with pytest.raises(ValueError, match="dropout rate p"):
        model.p = 1.0
    model.p = 0.5
    model.dropout.p = 1.5  # nn.Dropout does not check what is assigned to it: the next draw does
    with pytest.raises(ValueError, match="dropout rate p"):
        model(torch.randn(4, 8))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), 1.0])
@pytest.mark.parametrize("name", [*MODELS, "lstm bernoulli"])
def test_a_schedule_that_sets_a_bad_rate_is_refused_at_the_next_training_forward(name, bad):
    """nn.Dropout takes any p assigned to it; every model refuses it at its next training step (the LSTM
    trained without dropout at a negative or NaN rate)."""
    if name == "lstm bernoulli":
        make, batch = (lambda p: ApproxDropoutLSTM(20, hidden=16, p=p, method="bernoulli")), MODELS["lstm row-g4"][1]
    else:
        make, batch = MODELS[name]
    model = make(0.5).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = bad
    with pytest.raises(ValueError, match=r"dropout rate p must be a number in \[0, 1\)"):
        model(batch())


@pytest.mark.parametrize("method", ["row", "row-g4", "shared"])
def test_a_draw_left_by_draw_patterns_is_redrawn_when_the_rate_changes_before_the_forward(method):
    """A schedule may set p between draw_patterns and the forward: the draw of the old rate (its patterns and
    its 1 / (1 - p) scale) is not used at the new one."""
    from approxdrop.models.sites import PENDING

    model = ad.ApproxDropoutMLP([6, 40, 3], 0.5, method, generator=torch.Generator().manual_seed(0))
    ad.draw_patterns(model)
    old = getattr(model, PENDING)
    model.p = 0.9
    model(torch.randn(8, 6))
    used = model.last_patterns[1]
    if method == "shared":
        assert used.numel() < 20  # kept units of a p = 0.9 draw (about 4 of 40), not of the p = 0.5 one
    else:
        support = {(q.dp, q.keep) for q, _ in model.site_laws()[0].enumerate()}
        for q in used if isinstance(used, tuple) else (used,):
            assert (q.dp, q.keep) in support
        assert used != old[1]
    model.p = 0.9  # the same rate: a pending draw is used as it is
    ad.draw_patterns(model)
    pending = getattr(model, PENDING)[1]
    model(torch.randn(8, 6))
    assert model.last_patterns[1] is pending


@pytest.mark.parametrize("static", [False, True], ids=["row", "row static"])
def test_a_schedule_under_plain_torch_compile_searches_the_new_laws_outside_the_graph(static):
    """Default torch.compile, no draw_patterns: the step after a new rate searches its laws eagerly (a graph
    break), and draws from them; the search used to be traced and fail on a symbolic float."""
    torch.manual_seed(0)
    model = ApproxDropoutMLP([7, 12, 10, 3], 0.5, method="row", static_shapes=static)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(8, 7)
    for p in (0.5, 0.3):
        model.p = p
        for _ in range(2):
            compiled(x).sum().backward()
            assert _step_rates(model) == pytest.approx([p, p], abs=1e-6)


def test_a_new_rate_inside_a_fullgraph_forward_says_to_draw_after_setting_it():
    model = ApproxDropoutMLP([7, 12, 10, 3], 0.5, method="row", static_shapes=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(8, 7)
    ad.draw_patterns(model)
    compiled(x)
    ad.draw_patterns(model)
    model.p = 0.3  # after the draw: the pending draw is for the old rate
    with pytest.raises(Exception, match=r"set p, then call approxdrop.draw_patterns\(model\)"):
        compiled(x)
    ad.draw_patterns(model)  # the advice: drawn after the new rate, outside the graph
    compiled(x)
    assert _step_rates(model) == pytest.approx([0.3, 0.3], abs=1e-6)
