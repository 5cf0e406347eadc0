"""The eager training path (ops.eager) and the lean draws: the same numbers as the registered ops, the
same law as the enumeration, and the hostile inputs the models now take (issue 28 items 4, 10, 14, 15)."""

import math
from collections import Counter

import pytest
import torch
from torch import nn

import approxdrop as ad
from approxdrop.distribution import MAX_GROUPS, sample_sites
from approxdrop.ops import (
    grouped_row_pattern_linear,
    grouped_row_pattern_linear_compact,
    grouped_tile_pattern_linear,
    row_pattern_linear,
    tile_pattern_linear,
)
from approxdrop.ops.eager import use_eager
from approxdrop.patterns import RowPattern, TilePattern

OPS = torch.ops.approxdrop

F64 = torch.float64
FULL_ROW = RowPattern(1, 0)


def _leaves(*shapes, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=dtype, requires_grad=True) for s in shapes]


def _grads(out, inputs):
    outs = out if isinstance(out, (list, tuple)) else [out]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in outs)
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize(
    "in_p, out_p",
    [
        (RowPattern(2, 1), RowPattern(3, 2)),
        (RowPattern(1, 0), RowPattern(4, 1)),
        (RowPattern(5, 3, keep=2), RowPattern(3, 0, keep=2)),
        (RowPattern(3, 0), RowPattern(1, 0)),
    ],
)
def test_eager_row_equals_the_registered_op_bit_for_bit(in_p, out_p):
    x, w, b = _leaves((3, 2, in_p.kept_count(13)), (11, 13), (11,))
    ints = (in_p.dp, in_p.keep, [in_p.offset], out_p.dp, out_p.keep, [out_p.offset])
    assert use_eager(x)
    got = row_pattern_linear(x, w, b, in_p, out_p)  # the eager autograd.Function
    want = OPS.row_linear([x], w, b, *ints)[0][0]
    assert torch.equal(got, want)
    for g, h in zip(_grads(got, (x, w, b)), _grads(want, (x, w, b))):
        assert torch.equal(g, h)
    assert torch.autograd.gradcheck(lambda *t: row_pattern_linear(*t, in_p, out_p), (x, w, b))


@pytest.mark.parametrize("pattern", [TilePattern(3, 1, tile=4, keep=2), TilePattern(2, 0, tile=3)])
def test_eager_tile_equals_the_registered_op_bit_for_bit(pattern):
    x, w, b = _leaves((5, 10), (9, 10), (9,), seed=1)
    got = tile_pattern_linear(x, w, b, pattern)
    want = OPS.tile_linear(x, w, b, pattern.dp, pattern.keep, pattern.tile, [pattern.offset])
    assert torch.equal(got, want)
    for g, h in zip(_grads(got, (x, w, b)), _grads(want, (x, w, b))):
        assert torch.equal(g, h)
    assert torch.autograd.gradcheck(lambda *t: tile_pattern_linear(*t, pattern), (x, w, b))


@pytest.mark.parametrize("keep", [1, 2])
def test_eager_grouped_ops_equal_the_registered_ops(keep):
    ins = [RowPattern(3, o, keep) for o in (0, 2, 1, 0)]
    outs = [RowPattern(4, o, keep) for o in (1, 3, 0, 2)]
    ints = (3, keep, [q.offset for q in ins], 4, keep, [q.offset for q in outs])
    w, b = _leaves((10, 12), (10,), seed=2)
    xs = _leaves(*[(3, q.kept_count(12)) for q in ins], seed=3)
    got_ys = grouped_row_pattern_linear_compact(xs, w, b, ins, outs)
    want_ys, _ = OPS.row_linear(xs, w, b, *ints)
    assert all(torch.equal(g, h) for g, h in zip(got_ys, want_ys))
    for g, h in zip(_grads(got_ys, (w, b, *xs)), _grads(want_ys, (w, b, *xs))):
        assert torch.equal(g, h)
    assert torch.autograd.gradcheck(
        lambda w, b, *xs: grouped_row_pattern_linear_compact(xs, w, b, ins, outs), (w, b, *xs)
    )
    # full width and grouped tile: eager, and traced (the registered ops) by torch.compile
    (x,) = _leaves((2, 7, 12), seed=4)
    tiles = [TilePattern(3, o, tile=4, keep=keep) for o in (2, 0, 2, 1)]
    for f, args in (
        (grouped_row_pattern_linear, (x, w, b, ins, outs)),
        (grouped_tile_pattern_linear, (x, w, b, tiles)),
    ):
        got = f(*args)
        want = torch.compile(f, backend="eager", fullgraph=True)(*args)
        assert torch.equal(got, want)
        for g, h in zip(_grads(got, (x, w, b)), _grads(want, (x, w, b))):
            assert torch.equal(g, h)


def test_the_registered_op_runs_where_the_eager_path_may_not():
    x = torch.randn(2, 3)
    assert use_eager(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_eager(x)
    seen = []
    torch.compile(lambda t: seen.append(use_eager(t)) or t * 2, backend="eager")(x)
    assert seen == [False]


# --------------------------------------------------------------------------- the draws


@pytest.mark.parametrize(
    "law",
    [
        ad.PatternDistribution(((2, 1), (3, 1), (4, 1)), (0.5, 0.3, 0.2)),
        ad.PatternDistribution(((3, 2), (5, 2), (4, 3)), (0.4, 0.4, 0.2)),
        ad.PatternDistribution(((2, 1), (3, 1)), (1.0, 0.0), kind="tile", tile=4),
    ],
)
def test_a_uniform_number_selects_each_pattern_with_its_exact_probability(law):
    """pattern_at splits [0, 1) into one interval per (pattern, offset), as wide as its probability in
    the enumeration: the table draw is the law, exactly (up to float64 rounding of the cut points)."""
    patterns, cumulative = law._table
    starts = (0.0, *cumulative[:-1])
    for (pattern, prob), start, stop in zip(law.enumerate(), starts, cumulative):
        assert math.isclose(stop - start, prob, rel_tol=0, abs_tol=1e-12)
        middle = (start + stop) / 2 / cumulative[-1]
        assert law.pattern_at(middle) == pattern
    assert law.pattern_at(0.0) == patterns[0] and law.pattern_at(math.nextafter(1.0, 0.0)) == patterns[-1]


def test_one_call_draws_every_site_and_groups_one_is_the_row_draw():
    laws = [ad.distribution_for(0.5, 32), ad.distribution_for(0.7, 48, family="extended")]
    first = sample_sites(laws, 1, torch.Generator().manual_seed(5))
    grouped = sample_sites(laws, 4, torch.Generator().manual_seed(5))
    assert [g[0] for g in grouped] == first
    uniforms = torch.rand(2, dtype=F64, generator=torch.Generator().manual_seed(5)).tolist()
    assert first == [law.pattern_at(u) for law, u in zip(laws, uniforms)]


@pytest.mark.parametrize("groups", [2, 7, 40])
@pytest.mark.parametrize("site", [None, 0, 1])  # sample_groups, or a site of sample_sites' one-call draw
def test_groups_past_dp_run_through_whole_permutations_with_uniform_offsets(groups, site):
    laws = [ad.PatternDistribution(((3, 1), (5, 2)), (0.5, 0.5)), ad.PatternDistribution(((2, 1), (4, 1)), (0.5, 0.5))]
    counts, per_dp = Counter(), Counter()  # (group, dp, offset), dp
    for seed in range(1500):
        gen = torch.Generator().manual_seed(seed)
        draws = laws[0].sample_groups(groups, gen) if site is None else sample_sites(laws, groups, gen)[site]
        dp = draws[0].dp
        offsets = [q.offset for q in draws]
        for start in range(0, groups - dp + 1, dp):  # every full block of dp groups is a permutation
            assert sorted(offsets[start : start + dp]) == list(range(dp))
        assert all((q.dp, q.keep) == (dp, draws[0].keep) for q in draws)
        per_dp[dp] += 1
        counts.update((g, dp, o) for g, o in enumerate(offsets))
    for (g, dp, offset), k in counts.items():  # each group's offset ~ Uniform{0..dp-1} given dp
        assert ad.binomial_test(k, per_dp[dp], 1.0 / dp) > 1e-4, (g, dp, offset, k, per_dp[dp])


# --------------------------------------------------------------------------- hostile inputs (issue 28)


@pytest.mark.parametrize("method", ["row", "row-g4", "row-extended", "tile", "tile-g4", "shared"])
@pytest.mark.parametrize("shape", [(6, 8), (2, 3, 8)])
@pytest.mark.parametrize("autocast", [False, True])
def test_inplace_activation_trains_like_the_out_of_place_one(method, shape, autocast):
    """nn.ReLU(inplace=True) between pattern ops: the same output and gradients as nn.ReLU()."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    results = []
    for act in (nn.ReLU(), nn.ReLU(inplace=True)):
        torch.manual_seed(0)
        model = ad.ApproxDropoutMLP([8, 16, 12, 3], 0.5, method=method, activation=act)
        model.generator = torch.Generator().manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = model(x)
        y.float().square().sum().backward()
        results.append((y, [p.grad for p in model.parameters()]))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


@pytest.mark.parametrize("method", ["row", "row-g4"])
def test_ffn_with_an_inplace_activation_trains(method):
    block = ad.ApproxDropoutFFN(8, 16, 0.5, activation=nn.ReLU(inplace=True), method=method)
    block(torch.randn(2, 3, 8)).square().sum().backward()
    assert torch.isfinite(block.fc1.weight.grad).all() and block.fc1.weight.grad.abs().sum() > 0


def test_grouped_lstm_takes_an_empty_batch():
    lm = ad.ApproxDropoutLSTM(20, hidden=8, layers=2, p=0.5, method="row-g4")
    logits, (h, c) = lm(torch.zeros(3, 0, dtype=torch.long))
    assert logits.shape == (3, 0, 20) and h.shape == c.shape == (2, 0, 8)
    logits.sum().backward()


@pytest.mark.parametrize(
    "build",
    [
        lambda g: ad.ApproxDropoutMLP([4, 8, 2], 0.5, method="row", groups=g),
        lambda g: ad.ApproxDropoutFFN(4, 8, 0.5, groups=g),
        lambda g: ad.ApproxDropoutLSTM(10, hidden=4, layers=1, p=0.5, groups=g),
        lambda g: ad.distribution_for(0.5, 8).sample_groups(g),
    ],
)
def test_groups_have_a_documented_cap(build):
    build(MAX_GROUPS)
    with pytest.raises(ValueError, match=rf"groups must be in \[1, {MAX_GROUPS}\], got {10**6}"):
        build(10**6)


def test_draw_patterns_on_a_model_without_dropout_modules_leaves_dynamo_alone():
    with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=False):
        assert ad.draw_patterns(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))) == 0
        assert torch._dynamo.config.allow_unspec_int_on_nn_module is False
        assert ad.draw_patterns(ad.ApproxDropoutMLP([4, 8, 2], 0.5, method="row")) == 1
        assert torch._dynamo.config.allow_unspec_int_on_nn_module is True


# --------------------------------------------------------------------------- grouped executors


def _run_twice(build, x, forward=lambda model, x: model(x)):
    """Output and parameter gradients of the same model (same weights, same draws) under each executor."""
    results = []
    for executor in ("compact", "masked"):
        torch.manual_seed(0)
        model = build(executor)
        model.generator = torch.Generator().manual_seed(3)
        y = forward(model, x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        results.append((y, [p.grad for p in model.parameters()], model.last_patterns))
    return results


@pytest.mark.parametrize("groups", [4, 16])
@pytest.mark.parametrize("shape", [(10, 12), (2, 5, 12), (12,)])
def test_masked_mlp_equals_compact(groups, shape):
    x = torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    (y0, g0, d0), (y1, g1, d1) = _run_twice(
        lambda e: ad.ApproxDropoutMLP([12, 20, 18, 3], 0.5, method="row", groups=groups, executor=e).double(), x
    )
    assert d0 == d1
    torch.testing.assert_close(y0, y1, rtol=1e-12, atol=1e-12)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 10), (3, 4, 10), (10,)])
def test_masked_ffn_equals_compact(shape):
    x = torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    results = []
    for executor in ("compact", "masked"):
        torch.manual_seed(0)
        block = ad.ApproxDropoutFFN(10, 24, 0.5, method="row-g4", executor=executor).double()
        block.generator = torch.Generator().manual_seed(3)
        y = block(x)
        y.square().sum().backward()
        results.append((y, [p.grad for p in block.parameters()], block.last_pattern))
    (y0, g0, d0), (y1, g1, d1) = results
    assert d0 == d1
    torch.testing.assert_close(y0, y1, rtol=1e-12, atol=1e-12)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_masked_lstm_equals_compact():
    tokens = torch.randint(30, (6, 5), generator=torch.Generator().manual_seed(4))
    (y0, g0, d0), (y1, g1, d1) = _run_twice(
        lambda e: ad.ApproxDropoutLSTM(30, hidden=12, layers=2, p=0.5, method="row-g4", executor=e).double(),
        tokens,
        forward=lambda model, x: model(x)[0],
    )
    assert d0 == d1
    torch.testing.assert_close(y0, y1, rtol=1e-10, atol=1e-10)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_auto_masks_below_the_crossover_and_skips_above_it():
    from approxdrop.models.sites import MASKED_BELOW_MACS, MIN_GROUP_ROWS, MIN_ROWS_ONE_GROUP

    model = ad.ApproxDropoutMLP([64, 256, 256, 10], 0.5, method="row-g4")  # largest layer 256 x 256
    below = MASKED_BELOW_MACS // (256 * 256) - 1
    assert model.executor_for(torch.zeros(below, 64)) == "masked"
    assert model.executor_for(torch.zeros(below + 2, 64)) == "compact"
    wide = ad.ApproxDropoutMLP([64, 4096, 4096, 10], 0.5, method="row-g4")  # many MACs, few rows per group
    assert wide.executor_for(torch.zeros(4 * MIN_GROUP_ROWS - 1, 64)) == "masked"
    assert wide.executor_for(torch.zeros(4 * MIN_GROUP_ROWS, 64)) == "compact"
    one = ad.ApproxDropoutMLP([64, 4096, 4096, 10], 0.5, method="row")  # one group: its own row minimum
    assert one.executor_for(torch.zeros(MIN_ROWS_ONE_GROUP - 1, 64)) == "masked"
    assert one.executor_for(torch.zeros(MIN_ROWS_ONE_GROUP, 64)) == "compact"
    assert ad.ApproxDropoutMLP([4, 8, 2], 0.5, executor="compact").executor_for(torch.zeros(2, 4)) == "compact"
    allowed = r"\('auto', 'compact', 'masked', 'measured'\)"
    with pytest.raises(ValueError, match=rf"executor must be one of {allowed}, got 'fast'"):
        ad.ApproxDropoutFFN(4, 8, 0.5, executor="fast")


def test_grouped_tile_op_equals_each_group_on_its_own_samples():
    from approxdrop.ops import group_bounds, grouped_tile_pattern_linear, tile_linear_reference

    x, w, b = _leaves((2, 9, 12), (10, 12), (10,), seed=5)
    patterns = [TilePattern(3, o, tile=4) for o in (2, 0, 1, 2)]
    y = grouped_tile_pattern_linear(x, w, b, patterns)
    for (start, stop), q in zip(group_bounds(9, 4), patterns):
        torch.testing.assert_close(y[:, start:stop], tile_linear_reference(x[:, start:stop], w, b, q))
    assert torch.autograd.gradcheck(lambda *t: grouped_tile_pattern_linear(*t, patterns), (x, w, b))
    with pytest.raises(ValueError, match=r"x must be \[\*, B, n_in\] and offsets one per group"):
        grouped_tile_pattern_linear(x[0, 0], w, b, patterns)
    with pytest.raises(ValueError, match="x must have last dimension 12"):
        grouped_tile_pattern_linear(x[..., :5], w, b, patterns)


# --------------------------------------------------------------------------- caches and inference mode


def _cache_users():
    """Models whose training forward fills the process-wide tensor caches: the masked executor's group masks
    (sites.group_mask), keep > 1 kept indices (patterns), tile layouts (ops.tile_layout)."""
    return {
        "mlp row-g4 masked": (ad.ApproxDropoutMLP([16, 64, 4], 0.5, "row-g4", executor="masked"), torch.randn(32, 16)),
        "mlp row-extended compact": (
            ad.ApproxDropoutMLP([16, 64, 4], 0.5, "row-extended", executor="compact"),
            torch.randn(64, 16),
        ),
        "mlp tile": (ad.ApproxDropoutMLP([16, 64, 4], 0.5, "tile", tile=4), torch.randn(8, 16)),
        "ffn row-extended": (ad.ApproxDropoutFFN(16, 64, 0.5, method="row-extended"), torch.randn(4, 8, 16)),
        "lstm row-g4 masked": (
            ad.ApproxDropoutLSTM(11, 8, 2, 0.5, "row-g4", executor="masked"),
            torch.randint(11, (3, 8)),
        ),
    }


@pytest.mark.parametrize("name", list(_cache_users()))
def test_sampling_under_inference_mode_leaves_no_inference_tensor_for_training(name):
    model, x = _cache_users()[name]
    model.train()
    with torch.inference_mode():  # dropout kept on while sampling (MC dropout): the caches fill here
        for _ in range(20):
            model(x)
    for _ in range(20):  # the same draws again, now saved for backward
        y = model(x)
        (y[0] if isinstance(y, tuple) else y).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "build, message",
    [(lambda: ad.ApproxDropoutFFN(8, 16, 0.5, generator="seed"), "CPU torch.Generator or None, got str"),
     (lambda: ad.ApproxDropoutMLP([4, 8, 2], 0.5, generator=123), "CPU torch.Generator or None, got int"),
     (lambda: ad.ApproxDropoutLSTM(10, 4, 1, 0.5, generator=0.5), "got float")],
)  # fmt: skip
def test_a_generator_of_another_type_is_refused_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "call, message",
    [(lambda x, w: row_pattern_linear(x, w, None, (2, 0, 1), RowPattern(1, 0)), "expected a RowPattern, got tuple"),
     (lambda x, w: tile_pattern_linear(x, w, None, RowPattern(2, 0)), "expected a TilePattern, got Row"),
     (lambda x, w: grouped_tile_pattern_linear(x, w, None, []), "tile_linear: patterns must be a non-empty sequence"),
     (lambda x, w: grouped_row_pattern_linear(x, w, None, [], []), "row_linear in: patterns must be a"),
     (lambda x, w: grouped_row_pattern_linear_compact([x], w, None, [FULL_ROW], FULL_ROW), "linear out: patterns")],
)  # fmt: skip
def test_a_pattern_of_another_type_is_refused_at_the_call(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(3, 8), torch.randn(6, 8))


def test_a_zero_dimensional_input_is_refused_by_shape():
    with pytest.raises(ValueError, match=r"input must have last dimension 4, got shape \(\)"):
        ad.ApproxDropoutMLP([4, 8, 2], 0.5)(torch.tensor(1.0))


def test_convert_refuses_a_generator_or_a_module_of_another_type():
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator or None, got int"):
        ad.convert(seq, generator=123)  # before: every chain left alone, "cannot build the block"
    with pytest.raises(ValueError, match="convert takes an nn.Module, got NoneType"):
        ad.convert(None)
