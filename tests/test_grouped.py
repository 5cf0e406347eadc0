"""Grouped complementary patterns (docs/method.md §9): the sampler, and the row op with several groups (on
compact and on full-width activations) against a dense masked oracle."""

import math

import pytest
import torch

import approxdrop as ad
from approxdrop.ops import group_bounds, grouped, grouped_row_pattern_linear, grouped_row_pattern_linear_compact
from approxdrop.patterns import RowPattern

OPS = torch.ops.approxdrop

LAWS = [
    ad.PatternDistribution(((2, 1), (3, 1), (4, 1)), (0.5, 0.3, 0.2)),
    ad.PatternDistribution(((3, 2), (5, 2), (4, 3)), (0.4, 0.4, 0.2)),
    ad.distribution_for(0.7, 100, family="extended"),
]


# --------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("law", LAWS)
def test_one_group_is_the_paper_draw_bit_for_bit(law):
    for seed in range(50):
        single = law.sample(torch.Generator().manual_seed(seed))
        (grouped,) = law.sample_groups(1, torch.Generator().manual_seed(seed))
        assert grouped == single
    # and group 0 of any G is that same draw
    assert law.sample_groups(7, torch.Generator().manual_seed(3))[0] == law.sample(torch.Generator().manual_seed(3))


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("groups", [2, 4, 9])
def test_every_group_offset_is_uniform(law, groups):
    gen = torch.Generator().manual_seed(0)
    draws = 6000
    counts = {}  # (group, dp, offset) -> count
    per_dp = {}
    for _ in range(draws):
        patterns = law.sample_groups(groups, gen)
        assert len({(q.dp, q.keep) for q in patterns}) == 1  # (dp, keep) drawn once
        dp = patterns[0].dp
        per_dp[dp] = per_dp.get(dp, 0) + 1
        for g, q in enumerate(patterns):
            counts[(g, dp, q.offset)] = counts.get((g, dp, q.offset), 0) + 1
    for (g, dp, offset), k in counts.items():
        # offset | dp ~ Uniform{0..dp-1}: a two-sided binomial test at a strict level (many cells)
        assert ad.binomial_test(k, per_dp[dp], 1.0 / dp) > 1e-4, (g, dp, offset, k, per_dp[dp])


@pytest.mark.parametrize("law", LAWS)
def test_each_group_drops_every_unit_with_probability_p_and_is_unbiased_by_enumeration(law):
    """Each group's pattern has the law's (dp, keep) and a uniform offset, so its per-unit drop
    probability and its scaled expectation are those of ``law.enumerate()``: check them exactly."""
    n = 23
    drop = torch.zeros(n, dtype=torch.float64)
    mean_scale = torch.zeros(n, dtype=torch.float64)
    for pattern, weight in law.enumerate():
        mask = pattern.keep_mask(n).double()
        drop += weight * (1 - mask)
        mean_scale += weight * mask * pattern.scale
    assert torch.allclose(drop, torch.full((n,), law.expected_rate, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(mean_scale, torch.ones(n, dtype=torch.float64), atol=1e-12)


def test_groups_are_disjoint_with_keep_one_and_complementary_from_dp_groups_on():
    law = ad.PatternDistribution(((2, 1), (3, 1), (4, 1)), (0.3, 0.3, 0.4))
    gen = torch.Generator().manual_seed(1)
    n = 29
    for _ in range(300):
        for groups in (2, 3, 4, 6, 11):
            patterns = law.sample_groups(groups, gen)
            dp = patterns[0].dp
            kept = torch.stack([q.keep_mask(n) for q in patterns])  # [G, n]
            if groups <= dp:
                assert int(kept.sum(0).max()) <= 1  # disjoint
            if groups >= dp:
                assert bool(kept.any(0).all())  # every unit trained by some group


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True])
def test_bad_group_counts_are_value_errors(bad):
    with pytest.raises(ValueError, match="groups"):
        LAWS[0].sample_groups(bad)


# --------------------------------------------------------------------------- the op


def random_case(batch, groups, n_in, n_out, in_dp, in_keep, out_dp, out_keep, seed=0, lead=()):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, batch, n_in, generator=gen, dtype=torch.float64)
    w = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
    b = torch.randn(n_out, generator=gen, dtype=torch.float64)
    ins = [RowPattern(in_dp, int(torch.randint(in_dp, (1,), generator=gen)), in_keep) for _ in range(groups)]
    outs = [RowPattern(out_dp, int(torch.randint(out_dp, (1,), generator=gen)), out_keep) for _ in range(groups)]
    return x, w, b, ins, outs


def dense_reference(x, weight, bias, in_patterns, out_patterns):
    """The oracle on full-width x (Tensor[*, B, n_in]): a dense GEMM with one scaled input mask per group,
    broadcast within the group, and the output zeroed at each group's dropped units."""
    n_out, n_in = weight.shape
    in_mask = x.new_zeros(x.shape[-2], n_in)  # [B, n_in]
    out_mask = x.new_zeros(x.shape[-2], n_out)  # [B, n_out]
    for (start, stop), pin, pout in zip(group_bounds(x.shape[-2], len(in_patterns)), in_patterns, out_patterns):
        in_mask[start:stop] = pin.keep_mask(n_in).to(x.dtype) * pin.scale
        out_mask[start:stop] = pout.keep_mask(n_out).to(x.dtype)
    return torch.nn.functional.linear(x * in_mask, weight, bias) * out_mask


CASES = [
    dict(batch=7, groups=4, n_in=10, n_out=9, in_dp=3, in_keep=2, out_dp=2, out_keep=1),
    dict(batch=3, groups=5, n_in=11, n_out=13, in_dp=4, in_keep=1, out_dp=3, out_keep=1),  # fewer samples than groups
    dict(batch=16, groups=16, n_in=17, n_out=5, in_dp=2, in_keep=1, out_dp=1, out_keep=1),  # last layer: out side whole
    dict(batch=9, groups=2, n_in=6, n_out=12, in_dp=1, in_keep=1, out_dp=5, out_keep=3),  # first layer: in side whole
    dict(batch=5, groups=3, n_in=8, n_out=7, in_dp=3, in_keep=1, out_dp=3, out_keep=1, lead=(4,)),  # [T, B, n]
]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_the_dense_masked_reference(case):
    x, w, b, ins, outs = random_case(**case)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    y = grouped_row_pattern_linear(x, w, b, ins, outs)
    ref = dense_reference(x, w, b, ins, outs)
    torch.testing.assert_close(y, ref)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def test_weights_outside_every_groups_block_get_exactly_zero_gradient():
    x, w, b, ins, outs = random_case(batch=6, groups=2, n_in=12, n_out=10, in_dp=4, in_keep=1, out_dp=4, out_keep=1)
    w.requires_grad_()
    grouped_row_pattern_linear(x, w, b, ins, outs).sum().backward()
    used = torch.zeros_like(w, dtype=torch.bool)
    for pin, pout in zip(ins, outs):
        used |= pout.keep_mask(10)[:, None] & pin.keep_mask(12)[None, :]
    assert bool((w.grad[~used] == 0).all()) and bool((w.grad[used] != 0).all())


def test_gradcheck_float64():
    x, w, b, ins, outs = random_case(batch=5, groups=3, n_in=7, n_out=6, in_dp=3, in_keep=2, out_dp=2, out_keep=1)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *t: grouped_row_pattern_linear(*t, ins, outs), inputs)


def test_torch_compile_matches_eager():
    x, w, b, ins, outs = random_case(batch=8, groups=4, n_in=10, n_out=6, in_dp=2, in_keep=1, out_dp=3, out_keep=1)
    compiled = torch.compile(lambda x, w, b: grouped_row_pattern_linear(x, w, b, ins, outs), fullgraph=True)
    torch.testing.assert_close(compiled(x, w, b), grouped_row_pattern_linear(x, w, b, ins, outs))


def test_group_bounds_split_like_tensor_split():
    for batch in range(0, 12):
        for groups in range(1, 7):
            want = [len(t) for t in torch.tensor_split(torch.arange(batch), groups)]
            assert [stop - start for start, stop in group_bounds(batch, groups)] == want


def test_bad_arguments():
    x, w, b, ins, outs = random_case(batch=4, groups=2, n_in=6, n_out=5, in_dp=2, in_keep=1, out_dp=2, out_keep=1)
    with pytest.raises(ValueError, match="one in and one out offset per group"):
        grouped_row_pattern_linear(x, w, b, ins, outs[:1])
    with pytest.raises(ValueError, match="full width"):
        grouped_row_pattern_linear(x[:, :3], w, b, ins, outs)
    with pytest.raises(ValueError, match=r"x must be \[\*, B, n_in\]"):
        grouped_row_pattern_linear(x[0], w, b, ins, outs)
    with pytest.raises(ValueError, match="share dp and keep"):
        grouped_row_pattern_linear(x, w, b, [RowPattern(2, 0), RowPattern(3, 0)], outs)
    assert math.isfinite(float(grouped_row_pattern_linear(x, w, b, ins, outs).sum()))


# --------------------------------------------------------------------------- the op on compact activations


def compact_case(**case):
    """random_case with x split into the groups' compact inputs xs[g] (Tensor[*, B_g, k_in(g)])."""
    x, w, b, ins, outs = random_case(**case)
    xs = [
        x[..., start:stop, :][..., q.keep_mask(x.shape[-1])].clone()
        for (start, stop), q in zip(group_bounds(x.shape[-2], len(ins)), ins)
    ]
    return xs, w, b, ins, outs


def compact_reference(xs, w, b, ins, outs):
    """Each group's kept outputs of the dense masked reference, on its inputs placed at full width."""
    ys = []
    for x, pin, pout in zip(xs, ins, outs):
        full = x.new_zeros(*x.shape[:-1], w.shape[1])
        full[..., pin.keep_mask(w.shape[1])] = x
        y = dense_reference(full, w, b, [pin], [pout])
        ys.append(y[..., pout.keep_mask(w.shape[0])])
    return ys


@pytest.mark.parametrize("case", CASES)
def test_compact_forward_and_gradients_match_the_dense_masked_reference(case):
    xs, w, b, ins, outs = compact_case(**case)
    leaves = [t.requires_grad_() for t in (*xs, w, b)]
    ys = grouped_row_pattern_linear_compact(xs, w, b, ins, outs)
    refs = compact_reference(xs, w, b, ins, outs)
    assert [y.shape for y in ys] == [r.shape for r in refs]
    for y, r in zip(ys, refs):
        torch.testing.assert_close(y, r)
    grads = [torch.randn_like(y) for y in ys]
    got = torch.autograd.grad(ys, leaves, grads)
    want = torch.autograd.grad(refs, leaves, grads)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def test_compact_groups_sharing_a_pair_run_together_and_get_separate_outputs():
    # G = 6 over dp = 2 on both sides: pairs repeat, so groups share GEMMs (stacked) and blocks
    xs, w, b, ins, outs = compact_case(batch=12, groups=6, n_in=9, n_out=7, in_dp=2, in_keep=1, out_dp=2, out_keep=1)
    ins, outs = [RowPattern(2, o) for o in (0, 1, 0, 1, 0, 0)], [RowPattern(2, o) for o in (1, 1, 1, 0, 1, 1)]
    xs = [torch.randn(2, q.kept_count(9), dtype=torch.float64) for q in ins]
    ys, blocks = OPS.row_linear(xs, w, b, 2, 1, [q.offset for q in ins], 2, 1, [q.offset for q in outs])
    assert len(blocks) == 3  # (1, 0), (1, 1), (0, 1): one gathered weight block per distinct pair
    assert len({y.untyped_storage().data_ptr() for y in ys}) == len(ys)
    refs = compact_reference(xs, w, b, ins, outs)
    for y, r in zip(ys, refs):
        torch.testing.assert_close(y, r)
    # a y left out of the loss gets no gradient, the others theirs
    w.requires_grad_()
    got = torch.autograd.grad(grouped_row_pattern_linear_compact(xs, w, b, ins, outs)[2].sum(), w)
    torch.testing.assert_close(got[0], torch.autograd.grad(compact_reference(xs, w, b, ins, outs)[2].sum(), w)[0])


def test_compact_weights_outside_every_groups_block_get_exactly_zero_gradient():
    xs, w, b, ins, outs = compact_case(batch=6, groups=2, n_in=12, n_out=10, in_dp=4, in_keep=1, out_dp=4, out_keep=1)
    w.requires_grad_()
    sum(y.sum() for y in grouped_row_pattern_linear_compact(xs, w, b, ins, outs)).backward()
    used = torch.zeros_like(w, dtype=torch.bool)
    for pin, pout in zip(ins, outs):
        used |= pout.keep_mask(10)[:, None] & pin.keep_mask(12)[None, :]
    assert bool((w.grad[~used] == 0).all()) and bool((w.grad[used] != 0).all())


@pytest.mark.parametrize(
    "in_dp, in_offsets, out_dp, out_offsets, tiled",
    [
        (2, (0, 1, 0, 1), 2, (0, 0, 1, 1), True),  # all four (out, in) offset pairs: the blocks tile W
        (1, (0, 0, 0), 3, (2, 0, 1), True),  # every input kept: the out offsets' row sets tile W
        (1, (0, 0, 0), 3, (2, 0, 2), False),  # every input kept, rows of offset 1 in no group: zeros there
        (2, (0, 1, 0, 1), 2, (0, 1, 0, 1), False),  # (0, 1) and (1, 0) missing
        (3, (0, 1, 2, 0), 2, (0, 1, 0, 1), False),  # 4 of the 6 pairs
    ],
)
def test_where_the_pairs_blocks_tile_the_weight_its_gradient_skips_the_zero_fill(
    monkeypatch, in_dp, in_offsets, out_dp, out_offsets, tiled
):
    """Each new tensor starts as NaN here: where the grouped backward writes its weight gradient into an
    uninitialised tensor (the blocks tile W), every element must be written, and elsewhere it zero-fills."""
    ins, outs = [RowPattern(in_dp, o) for o in in_offsets], [RowPattern(out_dp, o) for o in out_offsets]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(7, 11, dtype=torch.float64, generator=gen, requires_grad=True)  # widths the periods do not divide
    b = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    xs = [torch.randn(2, q.kept_count(11), dtype=torch.float64, generator=gen) for q in ins]
    assert (
        grouped._blocks_cover_weight([((in_dp, i, 1), (out_dp, o, 1)) for i, o in zip(in_offsets, out_offsets)])
        is tiled
    )
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda t, *a, **k: new_empty(t, *a, **k).fill_(math.nan))
    ys = grouped_row_pattern_linear_compact(xs, w, b, ins, outs)
    grads = [torch.randn(y.shape, dtype=y.dtype, generator=gen) for y in ys]
    got = torch.autograd.grad(ys, (w, b), grads)
    monkeypatch.undo()
    want = torch.autograd.grad(compact_reference(xs, w, b, ins, outs), (w, b), grads)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def test_blocks_tile_the_weight_only_with_one_unit_kept_per_period_and_every_offset_pair():
    assert grouped._blocks_cover_weight([((2, 0, 1), (2, 0, 1)), ((2, 1, 1), (2, 1, 1))]) is False
    assert (
        grouped._blocks_cover_weight([((4, o, 2), (1, 0, 1)) for o in range(4)]) is False
    )  # keep 2 of 4: blocks overlap
    assert (
        grouped._blocks_cover_weight([((3, o, 3), (2, p, 1)) for o in range(3) for p in range(2)]) is True
    )  # inputs kept whole


def test_compact_backward_without_the_forward_blocks_gathers_them_again():
    xs, w, b, ins, outs = compact_case(batch=8, groups=4, n_in=10, n_out=9, in_dp=3, in_keep=1, out_dp=2, out_keep=1)
    args = (3, 1, [q.offset for q in ins], 2, 1, [q.offset for q in outs])
    ys, blocks = OPS.row_linear(xs, w, b, *args)
    grads = [torch.randn_like(y) for y in ys]
    cached = OPS.row_linear_backward(grads, xs, w, blocks, *args)
    again = OPS.row_linear_backward(grads, xs, w, [], *args)
    for got, want in zip([*cached[0], *cached[1:]], [*again[0], *again[1:]]):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="one per"):
        OPS.row_linear_backward(grads, xs, w, blocks[:1], *args)


def test_compact_gradcheck_float64():
    xs, w, b, ins, outs = compact_case(batch=5, groups=3, n_in=7, n_out=6, in_dp=3, in_keep=2, out_dp=2, out_keep=1)
    inputs = tuple(t.requires_grad_() for t in (*xs, w, b))
    assert torch.autograd.gradcheck(lambda *t: grouped_row_pattern_linear_compact(t[:3], *t[3:], ins, outs), inputs)


def test_registered_op_gradcheck_float64():
    """The registered op's own autograd (its backward op), as torch.compile and export run it."""
    xs, w, b, ins, outs = compact_case(batch=7, groups=4, n_in=9, n_out=8, in_dp=3, in_keep=2, out_dp=2, out_keep=1)
    ints = (3, 2, [q.offset for q in ins], 2, 1, [q.offset for q in outs])
    inputs = tuple(t.requires_grad_() for t in (*xs, w, b))
    assert torch.autograd.gradcheck(lambda *t: tuple(OPS.row_linear(list(t[:4]), t[4], t[5], *ints)[0]), inputs)


@pytest.mark.parametrize("in_keep", [1, 2])
def test_compact_opcheck(in_keep):
    xs, w, b, ins, outs = compact_case(
        batch=6, groups=3, n_in=9, n_out=8, in_dp=3, in_keep=in_keep, out_dp=2, out_keep=1
    )
    args = ([x.requires_grad_() for x in xs], w.requires_grad_(), b, 3, in_keep, [q.offset for q in ins], 2, 1)
    torch.library.opcheck(OPS.row_linear, (*args, [q.offset for q in outs]))


def test_compact_torch_compile_matches_eager():
    xs, w, b, ins, outs = compact_case(batch=8, groups=4, n_in=10, n_out=6, in_dp=2, in_keep=1, out_dp=3, out_keep=1)

    def f(xs, w, b):
        return grouped_row_pattern_linear_compact(xs, w, b, ins, outs)

    for got, want in zip(torch.compile(f, fullgraph=True)(xs, w, b), f(xs, w, b)):
        torch.testing.assert_close(got, want)


def test_compact_bad_arguments():
    xs, w, b, ins, outs = compact_case(batch=4, groups=2, n_in=6, n_out=5, in_dp=2, in_keep=1, out_dp=2, out_keep=1)
    offsets = [q.offset for q in ins]
    with pytest.raises(ValueError, match="one in and one out offset per group"):
        OPS.row_linear(xs, w, b, 2, 1, offsets, 2, 1, [0])
    with pytest.raises(ValueError, match="one x per group"):
        OPS.row_linear(xs[:1], w, b, 2, 1, offsets, 2, 1, [0, 1])
    with pytest.raises(ValueError, match="last dimension 3"):
        OPS.row_linear([xs[0], xs[1][..., :2]], w, b, 2, 1, offsets, 2, 1, [0, 1])
    with pytest.raises(ValueError, match="offset must be in"):
        OPS.row_linear(xs, w, b, 2, 1, [0, 2], 2, 1, [0, 1])
    with pytest.raises(ValueError, match="same floating dtype"):
        grouped_row_pattern_linear_compact([xs[0], xs[1].float()], w, b, ins, outs)
    with pytest.raises(ValueError, match="share dp and keep"):
        grouped_row_pattern_linear_compact(xs, w, b, [RowPattern(2, 0), RowPattern(3, 0)], outs)


def test_compact_runs_under_autocast():
    xs, w, b, ins, outs = compact_case(batch=6, groups=2, n_in=8, n_out=6, in_dp=2, in_keep=1, out_dp=2, out_keep=1)
    xs, w, b = [x.float().requires_grad_() for x in xs], w.float().requires_grad_(), b.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys = grouped_row_pattern_linear_compact(xs, w, b, ins, outs)
    assert all(y.dtype == torch.bfloat16 for y in ys)
    sum(y.float().sum() for y in ys).backward()
    assert w.grad.dtype == torch.float32 and all(x.grad.dtype == torch.float32 for x in xs)


# --------------------------------------------------------------------------- the models


def masked_mlp_reference(model, x, draws):
    """The dense network with dropout as masks: each site's mask per group (broadcast within the
    group, scaled by dp/keep), applied to the site's activations; the same weights."""
    h = x
    last = len(model.linears) - 1
    for i, linear in enumerate(model.linears):
        if draws[i] is not None:
            mask = h.new_zeros(h.shape[-2], h.shape[-1])  # [B, n]
            for (start, stop), pattern in zip(group_bounds(h.shape[-2], len(draws[i])), draws[i]):
                mask[start:stop] = pattern.keep_mask(h.shape[-1]).to(h.dtype) * pattern.scale
            h = h * mask
        h = linear(h)
        if i < last:
            h = model.activation(h)
    return h


@pytest.mark.parametrize("groups, batch, input_dropout", [(2, 9, False), (4, 16, True), (5, 3, False), (16, 32, False)])
@pytest.mark.parametrize("family", ["paper", "extended"])
def test_grouped_mlp_matches_the_dense_masked_network_with_one_mask_per_group(groups, batch, input_dropout, family):
    torch.manual_seed(0)
    sizes = [13, 21, 17, 5]
    dists = [ad.distribution_for(0.6, n, family=family) for n in sizes[0 if input_dropout else 1 : -1]]
    model = ad.ApproxDropoutMLP(
        sizes, 0.6, groups=groups, input_dropout=input_dropout, distributions=dists, activation=torch.nn.GELU(),
        generator=torch.Generator().manual_seed(4),
    ).double()  # fmt: skip
    x = torch.randn(batch, 13, dtype=torch.float64)
    y = model(x)
    draws = model.last_patterns
    assert all(d is None or len(d) == groups for d in draws)
    grads = torch.autograd.grad(y.square().sum(), list(model.parameters()))
    ref = masked_mlp_reference(model, x, draws)
    torch.testing.assert_close(y, ref)
    for got, want in zip(grads, torch.autograd.grad(ref.square().sum(), list(model.parameters()))):
        torch.testing.assert_close(got, want)


def test_one_group_is_the_paper_model_bit_for_bit():
    x = torch.randn(6, 10)
    outs = []
    for method, groups in (("row", None), ("row-g4", 1)):  # the paper's method; the default one with G = 1
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(2)
        model = ad.ApproxDropoutMLP([10, 16, 4], 0.5, method, groups=groups, generator=gen)
        outs.append((model(x), model.last_patterns))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


def test_grouped_eval_is_the_whole_network_and_leading_dims_work():
    torch.manual_seed(0)
    model = ad.ApproxDropoutMLP([8, 12, 3], 0.5, groups=4)
    x = torch.randn(2, 5, 8)  # [*, B, n]: groups split the 5 samples of each leading slice
    assert model(x).shape == (2, 5, 3) and model(x[0, 0]).shape == (3,)
    model.eval()
    dense = model.linears[1](model.activation(model.linears[0](x)))
    torch.testing.assert_close(model(x), dense)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(groups=0), "groups must be in"),
        (dict(groups=2.5), "groups must be an int"),
        (dict(groups=4, method="bernoulli"), "batch groups are for row- and tile-pattern methods"),
        (dict(groups=2, method="shared"), "batch groups are for row- and tile-pattern methods"),
    ],
)
def test_bad_groups_are_value_errors_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ad.ApproxDropoutMLP([8, 12, 3], 0.5, **kwargs)


def test_bench_times_grouped_row_side_by_side(capsys):
    from approxdrop.experiments.cli import main

    argv = ["bench", "--sizes", "12", "16", "3", "--batch", "8", "--ps", "0.5", "--rounds", "1", "--warmup", "0"]
    assert main([*argv, "--methods", "bernoulli", "row", "--groups", "2", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| 0.5 | row G=2 |" in out and "| 0.5 | row G=4 |" in out and "| 0.5 | row |" in out
    assert main([*argv, "--groups", "0"]) == 2


def masked_lstm_reference(model, x, draws):
    """The dense LSTM language model with each site's per-group mask (broadcast over time steps and
    within the group, scaled by dp/keep), step-by-step autograd recurrence."""
    from approxdrop.models.lstm import lstm_recurrence_reference

    def mask(u, patterns):
        m = u.new_zeros(u.shape[1], u.shape[-1])  # [B, n]
        for (start, stop), pattern in zip(group_bounds(u.shape[1], len(patterns)), patterns):
            m[start:stop] = pattern.keep_mask(u.shape[-1]).to(u.dtype) * pattern.scale
        return u * m  # [T, B, n]

    u = model.embedding(x)
    zeros = u.new_zeros(x.shape[1], model.hidden)
    for layer, patterns in zip(model.lstm, draws):
        xproj = torch.nn.functional.linear(mask(u, patterns), layer.weight_ih, layer.bias)
        u, _, _ = lstm_recurrence_reference(xproj, zeros, zeros, layer.weight_hh)
    return model.decoder(mask(u, draws[-1]))


@pytest.mark.parametrize("groups, batch", [(2, 5), (4, 4), (4, 3)])
def test_grouped_lstm_matches_the_dense_masked_model_with_one_mask_per_group(groups, batch):
    torch.manual_seed(0)
    model = ad.ApproxDropoutLSTM(
        23, hidden=9, layers=2, p=0.5, groups=groups, embedding=7, family="extended",
        generator=torch.Generator().manual_seed(1),
    ).double()  # fmt: skip
    x = torch.randint(23, (6, batch), generator=torch.Generator().manual_seed(2))  # [T, B]
    logits, _ = model(x)
    draws = model.last_patterns
    assert all(len(d) == groups for d in draws)
    params = list(model.parameters())
    grads = torch.autograd.grad(logits.square().sum(), params)
    ref = masked_lstm_reference(model, x, draws)
    torch.testing.assert_close(logits, ref)
    for got, want in zip(grads, torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(got, want)


def test_grouped_lstm_methods_are_rows_of_the_table():
    model = ad.language_model(23, "row-g4", hidden=9, layers=1, p=0.5)
    assert model.groups == 4 and ad.DROPOUT_METHODS["row-g4"].groups == 4 and "row-g4" in ad.LM_METHODS
    with pytest.raises(ValueError, match="batch groups are for row-pattern methods"):
        ad.ApproxDropoutLSTM(23, 9, 1, 0.5, "shared", groups=2)


def test_bench_lstm_times_grouped_row_side_by_side(monkeypatch, capsys):
    from approxdrop.experiments import bench_lstm
    from approxdrop.experiments.cli import main

    monkeypatch.setitem(bench_lstm.SIZES, "tiny", bench_lstm.LSTMSize(8, 2, 50, 5, 4))
    argv = ["bench-lstm", "--sizes", "tiny", "--ps", "0.5", "--rounds", "1", "--warmup", "0", "--no-progress"]
    assert main([*argv, "--methods", "bernoulli", "row", "torch", "--groups", "2", "4"]) == 0
    out = capsys.readouterr().out
    assert "| tiny | 0.5 | row G=2 |" in out and "| tiny | 0.5 | row G=4 |" in out


def test_grouped_op_checks_devices_and_dtypes_and_runs_under_autocast():
    x, w, b, ins, outs = random_case(batch=6, groups=2, n_in=8, n_out=6, in_dp=2, in_keep=1, out_dp=2, out_keep=1)
    with pytest.raises(ValueError, match="same floating dtype"):
        grouped_row_pattern_linear(x.float(), w, b, ins, outs)
    with pytest.raises(ValueError, match="one device"):
        grouped_row_pattern_linear(x, w.to("meta"), b, ins, outs)
    model = ad.ApproxDropoutMLP([8, 12, 12, 3], 0.5, groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x.float())
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 and bool(p.grad.isfinite().all())
        for p in model.parameters()
    )


def test_compact_op_never_returns_a_block_aliasing_the_weight():
    """A kept block of one row and one column is a view of the weight that .contiguous() keeps as it is;
    the op must return a copy (custom ops may not alias their inputs; found by `approxdrop bench`)."""
    weight = torch.randn(3, 2)
    xs = [torch.randn(2, 1), torch.randn(2, 1)]  # in: dp 2, keep 1; out: dp 3, keep 1 -> [1, 1] blocks
    ys, blocks = OPS.row_linear(xs, weight, None, 2, 1, [0, 1], 3, 1, [0, 1])
    assert blocks and all(b.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr() for b in blocks)
    torch.testing.assert_close(ys[0], xs[0] @ weight[0:1, 0:1].t() * 2)
    torch.testing.assert_close(ys[1], xs[1] @ weight[1:2, 1:2].t() * 2)


@pytest.mark.parametrize("path", ["registered op", "eager Function"])
def test_a_group_whose_input_needs_no_gradient_leaves_the_others_theirs(path):
    """Group 0's input needs a gradient, group 1's (a frozen input) does not: group 0 still gets its own, the
    dense masked one (in: dp 2, group offsets 0 and 1; out: every unit)."""
    from approxdrop.ops import eager

    ints = (2, 1, [0, 1], 1, 1, [0, 0])
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    x0 = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)  # group 0's kept inputs
    x1 = torch.randn(3, 4, dtype=torch.float64, generator=gen)  # group 1's, frozen
    if path == "registered op":
        ys, _ = OPS.row_linear([x0, x1], w, None, *ints)
    else:
        ys = eager.RowLinear.apply(w, None, ints, x0, x1)
    (ys[0].sum() + ys[1].sum()).backward()
    assert x0.grad is not None and x1.grad is None
    torch.testing.assert_close(x0.grad, 2.0 * w.detach()[:, 0::2].sum(0).expand(3, 4))  # input scale dp / keep = 2
