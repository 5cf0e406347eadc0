"""ApproxDropoutLSTM: the fused recurrence against its autograd reference, dropout masks that follow
the patterns (one per site, the same over batch and time), exact unbiasedness of every site, eval =
no dropout, agreement with nn.LSTM, the state carried across calls, and argument errors."""

import pytest
import torch
from torch import nn

from approxdrop import PatternDistribution, RowPattern
from approxdrop.models.lstm import (
    LM_METHODS,
    LSTM_METHODS,
    ApproxDropoutLSTM,
    TorchLSTM,
    fused_lstm,
    language_model,
    lstm_recurrence_reference,
)
from approxdrop.models.methods import ROW, lstm_gemm_work

VOCAB, HIDDEN, EMB, T, B = 37, 13, 11, 5, 3


def tokens(seed: int = 0, steps: int = T) -> torch.Tensor:
    return torch.randint(VOCAB, (steps, B), generator=torch.Generator().manual_seed(seed))  # [T, B]


def site_mask(draw, n: int, p: float) -> torch.Tensor:
    """Float64[n]: the scaled keep mask a site applies, from what it drew."""
    if isinstance(draw, RowPattern):
        return draw.keep_mask(n).double() * draw.scale
    mask = torch.zeros(n, dtype=torch.float64)
    mask[draw] = 1.0 / (1.0 - p)  # shared: kept unit indices
    return mask


def dense_reference(model: ApproxDropoutLSTM, x, draws):
    """The same model on full-size tensors: one mask per site, broadcast over time and batch, and
    the autograd reference recurrence."""
    u = model.embedding(x)  # [T, B, E]
    for i, layer in enumerate(model.lstm):
        if draws[i] is not None:
            u = u * site_mask(draws[i], u.shape[-1], model.p)
        zeros = torch.zeros(x.shape[1], model.hidden, dtype=u.dtype)
        xproj = nn.functional.linear(u, layer.weight_ih, layer.bias)  # [T, B, 4H]
        u, _, _ = lstm_recurrence_reference(xproj, zeros, zeros, layer.weight_hh)
    if draws[-1] is not None:
        u = u * site_mask(draws[-1], u.shape[-1], model.p)
    return model.decoder(u)


def test_the_fused_lstm_passes_gradcheck_and_equals_the_reference():
    """PyTorch's fused LSTM on a compact input equals the step-by-step autograd reference on that
    input's projection, outputs and every gradient, in float64."""
    gen = torch.Generator().manual_seed(0)
    args = [
        torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
        for shape in [(4, 3, 5), (3, 2), (3, 2), (8, 5), (8, 2), (8,)]  # inp [T, B, k], h, c, W_ih, W_hh, bias
    ]
    assert torch.autograd.gradcheck(fused_lstm, args)
    inp, h, c, w_ih, w_hh, bias = args
    ours = fused_lstm(*args)
    ref = lstm_recurrence_reference(nn.functional.linear(inp, w_ih, bias), h, c, w_hh)
    weights = [torch.randn(o.shape, dtype=torch.float64, generator=gen) for o in ref]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ours, weights)), args)
    ref_grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref, weights)), args)
    for a, b in zip((*ours, *grads), (*ref, *ref_grads)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pairs", [((2, 1), (3, 1)), ((3, 2), (5, 3)), ((1, 1), (4, 3))])
def test_row_training_equals_the_dense_masked_model_with_one_pattern_per_site(pairs):
    dist = PatternDistribution(pairs, (0.5, 0.5))
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    p = dist.expected_rate  # a given law must have the model's rate
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, p, "row", embedding=EMB, distributions=[dist] * 3, generator=gen)
    model.double()
    for step in range(4):  # several steps: several draws, slice and index selectors
        x = tokens(step)
        logits, _ = model(x)
        draws = model.last_patterns
        assert len(draws) == 3 and all(isinstance(d, RowPattern) for d in draws)
        grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()))
        ref = dense_reference(model, x, draws)
        ref_grads = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
        torch.testing.assert_close(logits, ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r)


def test_shared_training_equals_the_dense_masked_model():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.4, "shared", embedding=EMB, generator=gen).double()
    x = tokens(3)
    logits, _ = model(x)
    draws = model.last_patterns
    assert all(isinstance(d, torch.Tensor) for d in draws)
    grads = torch.autograd.grad(logits.sum(), list(model.parameters()))
    ref = dense_reference(model, x, draws)
    torch.testing.assert_close(logits, ref)
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), list(model.parameters()))):
        torch.testing.assert_close(g, r)


def test_dropped_units_are_dropped_for_every_time_step_and_batch_row():
    """The input-projection weight's columns of a site's dropped units get no gradient at all:
    the unit was dropped in every time step and every sequence of the batch."""
    torch.manual_seed(0)
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, "row", embedding=EMB, generator=torch.Generator().manual_seed(0))
    logits, _ = model(tokens(0, steps=7))
    logits.sum().backward()
    consumers = [layer.weight_ih for layer in model.lstm] + [model.decoder.weight]
    for draw, weight in zip(model.last_patterns, consumers):
        keep = draw.keep_mask(weight.shape[1])
        assert torch.all(weight.grad[:, ~keep] == 0)
        assert torch.all(weight.grad[:, keep].abs().sum(0) > 0)


@pytest.mark.parametrize("family", ["paper", "extended"])
@pytest.mark.parametrize("p", [0.3, 0.5, 0.7])
def test_every_site_is_exactly_unbiased_by_enumeration(p, family):
    """Sum over every (pattern, offset) of probability x the site's projection = the dense projection."""
    torch.manual_seed(0)
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, p, "row", embedding=EMB, family=family).double()
    gen = torch.Generator().manual_seed(0)
    consumers = [(layer.weight_ih, layer.bias) for layer in model.lstm] + [(model.decoder.weight, model.decoder.bias)]
    for dist, (weight, bias) in zip(model.distributions, consumers):
        u = torch.randn(T, B, weight.shape[1], dtype=torch.float64, generator=gen)
        expected = torch.zeros(T, B, weight.shape[0], dtype=torch.float64)
        with torch.no_grad():
            for pattern, prob in dist.enumerate():
                inp, kept_weight = model._site_input(ROW, pattern, u, weight)  # what the site's GEMM reads
                expected += prob * nn.functional.linear(inp, kept_weight, bias)
            torch.testing.assert_close(expected, nn.functional.linear(u, weight, bias), rtol=1e-9, atol=1e-9)
        assert abs(dist.expected_rate - p) < 1e-9


@pytest.mark.parametrize("method", LSTM_METHODS)
def test_eval_mode_is_the_network_without_dropout(method):
    torch.manual_seed(0)
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.6, method, embedding=EMB).double().eval()
    x = tokens(1)
    logits, _ = model(x)
    torch.testing.assert_close(logits, dense_reference(model, x, [None] * 3))
    assert model.last_patterns == [None] * 3


def test_the_none_method_matches_nn_lstm_with_the_same_weights():
    torch.manual_seed(0)
    ours = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, "none", embedding=EMB).double()
    theirs = TorchLSTM(VOCAB, HIDDEN, 2, 0.5, embedding=EMB).double().eval()
    with torch.no_grad():
        theirs.embedding.weight.copy_(ours.embedding.weight)
        theirs.decoder.weight.copy_(ours.decoder.weight)
        theirs.decoder.bias.copy_(ours.decoder.bias)
        for i, layer in enumerate(ours.lstm):
            getattr(theirs.lstm, f"weight_ih_l{i}").copy_(layer.weight_ih)
            getattr(theirs.lstm, f"weight_hh_l{i}").copy_(layer.weight_hh)
            getattr(theirs.lstm, f"bias_ih_l{i}").copy_(layer.bias)
            getattr(theirs.lstm, f"bias_hh_l{i}").zero_()
    x = tokens(2)
    state = tuple(torch.randn(2, B, HIDDEN, dtype=torch.float64) for _ in range(2))
    (a, (ha, ca)), (b, (hb, cb)) = ours(x, state), theirs(x, state)
    for u, v in [(a, b), (ha, hb), (ca, cb)]:
        torch.testing.assert_close(u, v)


def test_the_state_carries_across_calls():
    torch.manual_seed(0)
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, "row").double().eval()
    x = tokens(4, steps=9)
    whole, (h, c) = model(x)
    first, state = model(x[:4])
    second, (h2, c2) = model(x[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)
    assert h.shape == c.shape == (2, B, HIDDEN)


def test_draws_are_reproducible_with_a_generator_and_bernoulli_draws_nothing():
    def draws(seed):
        model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, "row", generator=torch.Generator().manual_seed(seed))
        out = []
        for _ in range(5):
            model(tokens())
            out.append(model.last_patterns)
        return out

    assert draws(3) == draws(3) and draws(3) != draws(4)
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, "bernoulli")
    model(tokens())
    assert model.last_patterns == [None] * 3


def test_row_extended_is_row_with_the_searched_extended_family():
    model = language_model(VOCAB, "row-extended", HIDDEN, 2, 0.5)
    assert isinstance(model, ApproxDropoutLSTM) and model.spec.drops == ROW and model.family == "extended"
    assert ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, "row", family="extended").family == "extended"
    assert any(keep > 1 for d in model.distributions for _, keep in d.pairs)
    assert all(keep == 1 for d in language_model(VOCAB, "row", HIDDEN, 2, 0.5).distributions for _, keep in d.pairs)


def test_language_model_builds_each_method_with_the_same_initial_law():
    for method in LM_METHODS:
        model = language_model(VOCAB, method, HIDDEN, 2, 0.5)
        assert model.vocab == VOCAB and model.hidden == HIDDEN
        assert all(param.abs().max() <= 0.05 for param in model.parameters())
        logits, (h, c) = model.train()(tokens())
        assert logits.shape == (T, B, VOCAB) and h.shape == (2, B, HIDDEN)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "tile"}, "method must be one of"),
        ({"p": 1.0}, "p"),
        ({"hidden": 0}, "hidden"),
        ({"layers": 0}, "layers"),
        ({"family": "dense"}, "family must be one of"),
        ({"distributions": [PatternDistribution(((2, 1),), (1.0,))]}, "one distribution per dropout site"),
        ({"method": "bernoulli", "distributions": []}, "distributions are for pattern methods"),
        ({"distributions": [PatternDistribution(((2, 1),), (1.0,), kind="tile")] * 3}, "row PatternDistributions"),
        (
            {"distributions": [PatternDistribution(((16, 1),), (1.0,))] * 3},
            r"distributions\[0\] has expected rate 0.9375, not the model's p=0.5",
        ),
        (
            {"distributions": [PatternDistribution(((2, 1),), (1.0,), n=HIDDEN)] * 3, "embedding": EMB},
            r"distributions\[0\] was built for n=13, but its site has 11 units",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = {"vocab": VOCAB, "hidden": HIDDEN, "layers": 2, "p": 0.5, "method": "row"} | kwargs
    with pytest.raises(ValueError, match=message):
        ApproxDropoutLSTM(**args)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(5, dtype=torch.long), r"Long tensor \[T, B\]"),
        (torch.zeros(5, 3), r"Long tensor \[T, B\]"),
        (torch.full((5, 3), VOCAB), r"token ids must lie in \[0, 37\)"),
        (torch.full((5, 3), -1), r"token ids must lie in \[0, 37\)"),
        (torch.zeros(0, 3, dtype=torch.long), r"T must be >= 1, got shape \(0, 3\)"),  # was torch.lstm's RuntimeError
    ],
)
def test_bad_tokens_raise_clear_errors(x, message):
    for model in (ApproxDropoutLSTM(VOCAB, HIDDEN), TorchLSTM(VOCAB, HIDDEN)):
        with pytest.raises(ValueError, match=message):
            model(x)


def test_the_torch_baseline_follows_its_rate_as_the_ard_models_do():
    """``model.p = 0`` and a schedule that sets every nn.Dropout's p both reach nn.LSTM's float between its
    layers: at rate 0 the training outputs no longer depend on the seed."""
    x = tokens(6)

    def seeded_outputs_differ(model):
        outs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            outs.append(model.train()(x)[0])
        return not torch.equal(*outs)

    by_property, by_schedule = TorchLSTM(VOCAB, HIDDEN, 2, 0.5), TorchLSTM(VOCAB, HIDDEN, 2, 0.5)
    assert seeded_outputs_differ(by_property)
    by_property.p = 0.0
    for module in by_schedule.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for model in (by_property, by_schedule):
        assert model.p == 0.0 and not seeded_outputs_differ(model) and model.lstm.dropout == 0.0
    with pytest.raises(ValueError, match="p"):
        by_property.p = 1.0


@pytest.mark.parametrize("method", ["row", "shared"])
def test_bfloat16_autocast_trains_on_cpu(method):
    """Under CPU autocast the projections and the recurrence run in bfloat16, forward and backward;
    the parameters stay float32 and get finite float32 gradients close to the float32 model's."""
    torch.manual_seed(0)
    model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, method, embedding=EMB, generator=torch.Generator().manual_seed(5))
    x = tokens(6)
    grads = {}
    for autocast in (False, True):
        model.generator.manual_seed(5)  # the same draws in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits, (h, c) = model(x)
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        model.zero_grad()
        logits.float().square().mean().backward()
        grads[autocast] = [param.grad.clone() for param in model.parameters()]
    assert all(param.dtype == torch.float32 for param in model.parameters())
    for ours, full in zip(grads[True], grads[False]):
        assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
        assert (ours - full).norm() <= 0.05 * full.norm() + 1e-6


def test_language_model_rejects_unknown_methods():
    with pytest.raises(ValueError, match="torch"):
        language_model(VOCAB, "dropconnect")


def test_language_model_takes_a_generator_for_every_method_but_says_torch_draws_from_the_global_rng():
    """``generator=None`` builds every method, so callers need not special-case ``torch``; a generator given
    to ``torch`` (nn.Dropout, nn.LSTM: torch's global RNG) is refused, not silently ignored (was a TypeError)."""
    for method in LM_METHODS:
        assert language_model(VOCAB, method, HIDDEN, 2, 0.5, generator=None).method == method
    with pytest.raises(ValueError, match="generator must be None for method 'torch'.*global RNG"):
        language_model(VOCAB, "torch", HIDDEN, 2, 0.5, generator=torch.Generator())
    model = language_model(VOCAB, "row", HIDDEN, 2, 0.5, generator=torch.Generator().manual_seed(1))
    assert isinstance(model.generator, torch.Generator)


def test_lstm_gemm_work_at_the_ends_of_p():
    dense = 2 * (2 * 10 * 40) + 10 * 30  # H = 10, 2 layers, V = 30: input + recurrent projections, decoder
    assert lstm_gemm_work(10, 2, 30, 0.0, "row") == 1.0
    assert lstm_gemm_work(10, 2, 30, 1.0, "row") == pytest.approx(2 * 10 * 40 / dense)  # the floor: recurrent only
    assert lstm_gemm_work(10, 2, 30, 0.5, "torch") == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        ((650, 2, 10_000, 1.5, "row"), r"dropout rate p must be in \[0.0, 1.0\], got 1.5"),  # was -0.118
        ((650, 2, 10_000, -1, "row"), r"dropout rate p must be in \[0.0, 1.0\], got -1"),  # was 1.745
        ((650, 2, 10_000, True, "row"), "dropout rate p must be a finite number, got True"),
        ((650, 2, 10_000, 0.5, "tile"), "method must be one of .* for the lstm models, got 'tile'"),  # was 0.627
        ((650, 0, 10_000, 0.5, "row"), r"layers must be in \[1, inf\), got 0"),  # was 0.5
        ((0, 2, 10_000, 0.5, "row"), r"hidden must be in \[1, inf\), got 0"),  # was ZeroDivisionError
        ((650, 2, 0, 0.5, "row"), r"vocab must be in \[1, inf\), got 0"),
        ((650.0, 2, 10_000, 0.5, "row"), "hidden must be an int, got 650.0"),
    ],
)
def test_lstm_gemm_work_refuses_bad_arguments_by_name(args, message):
    with pytest.raises(ValueError, match=message):
        lstm_gemm_work(*args)


def grouped_reference(model: ApproxDropoutLSTM, x, draws, state):
    """The dense model with one mask per batch group at every site (the groups split B as
    torch.tensor_split does; each group's mask is the same at every time step), the autograd
    reference recurrence from ``state``: -> (logits Float[T, B, V], (h, c) Float[layers, B, H])."""

    def masked(u, patterns):  # u [T, B, n]
        mask = torch.cat([p.keep_mask(u.shape[-1]).double()[None] * p.scale for p in patterns])  # [G, n]
        sizes = [len(part) for part in torch.arange(u.shape[1]).tensor_split(len(patterns))]
        return u * mask.repeat_interleave(torch.tensor(sizes), dim=0)  # [B, n], broadcast over T

    u, hs, cs = model.embedding(x), [], []  # u [T, B, E]
    for i, layer in enumerate(model.lstm):
        xproj = nn.functional.linear(masked(u, draws[i]), layer.weight_ih, layer.bias)  # [T, B, 4H]
        u, h, c = lstm_recurrence_reference(xproj, state[0][i], state[1][i], layer.weight_hh)
        hs.append(h)
        cs.append(c)
    return model.decoder(masked(u, draws[-1])), (torch.stack(hs), torch.stack(cs))


@pytest.mark.parametrize("executor", ["compact", "masked"])
@pytest.mark.parametrize("family", ["paper", "extended"])
@pytest.mark.parametrize("groups, batch", [(4, 10), (4, 3), (2, 7)])
def test_grouped_training_carries_each_sequences_state_through_its_groups_masks(family, groups, batch, executor):
    """Batch groups over several truncated-BPTT steps with the state carried (the LM race): logits,
    the new state and every gradient equal the dense model with one mask per group, split along B; by each
    executor (at these sizes "auto" takes masked, so compact is asked for by name)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ApproxDropoutLSTM(
        VOCAB, HIDDEN, 2, 0.5, "row", embedding=EMB, family=family, groups=groups, generator=gen, executor=executor
    )
    model.double()
    assert model.executor_for(torch.zeros(T, batch, dtype=torch.long)) == executor
    state = tuple(torch.randn(2, batch, HIDDEN, dtype=torch.float64) for _ in range(2))  # [layers, B, H]
    params = list(model.parameters())
    for step in range(3):
        x = torch.randint(VOCAB, (T, batch), generator=torch.Generator().manual_seed(step))  # [T, B]
        logits, new_state = model(x, state)
        draws = model.last_patterns
        assert all(len(d) == groups for d in draws)
        ref, ref_state = grouped_reference(model, x, draws, state)
        torch.testing.assert_close(logits, ref)
        torch.testing.assert_close(new_state, ref_state)
        weights = torch.randn(batch, HIDDEN, dtype=torch.float64, generator=gen)  # the state's gradient too
        grads = torch.autograd.grad(logits.square().sum() + (new_state[0][-1] * weights).sum(), params)
        ref_grads = torch.autograd.grad(ref.square().sum() + (ref_state[0][-1] * weights).sum(), params)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want)
        state = tuple(s.detach() for s in new_state)


@pytest.mark.parametrize(
    "state, message",
    [((torch.zeros(2, 2, 8),) * 2, r"state h must be torch.float32 of shape \[2, 3, 8\].*shape \[2, 2, 8\]"),
     ((torch.zeros(2, 3, 8), torch.zeros(5, 3, 8)), r"state c must be .* got torch.float32 of shape \[5, 3, 8\]"),
     ((torch.zeros(2, 3, 8, dtype=torch.float64),) * 2, r"got torch.float64"),
     (torch.zeros(2, 3, 8), r"state must be a pair \(h, c\) of tensors \[layers, B, H\], got Tensor"),
     ((torch.zeros(2, 3, 8),) * 3, r"state must be a pair")],
)  # fmt: skip
@pytest.mark.parametrize("method", ["row", "row-g4", "bernoulli"])
def test_a_state_of_another_shape_or_dtype_is_refused_by_name(state, message, method):
    """The fused LSTM checks nothing: a state for batch 2 with tokens of batch 3 corrupted memory."""
    model = ApproxDropoutLSTM(20, 8, 2, 0.5, method)
    with pytest.raises(ValueError, match=message):
        model(torch.randint(20, (5, 3)), state)


def test_a_bfloat16_state_is_carried_under_autocast():
    model = ApproxDropoutLSTM(20, 8, 2, 0.5, "row")
    x = torch.randint(20, (5, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = model(x)
        logits, _ = model(x, state)  # the state is bfloat16 now: autocast casts it
    assert state[0].dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("method", ["row", "row-g4", "bernoulli"])
def test_a_training_step_runs_under_fake_tensor_mode(method):
    """Shape inference (FakeTensorMode): fake tokens hold no ids to check, the draws are made on real values."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        model = ApproxDropoutLSTM(VOCAB, HIDDEN, 2, 0.5, method, embedding=EMB)
        logits, _ = model(torch.randint(VOCAB, (5, 4)))
        logits.sum().backward()
    assert isinstance(logits, FakeTensor) and logits.shape == (5, 4, VOCAB)
