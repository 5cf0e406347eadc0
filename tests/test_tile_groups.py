"""Tile patterns with batch groups (``tile-g4``): each group of the batch reads the weight through its
own tile offset of the step's (dp, keep), complementary as for rows (docs/method.md §9)."""

import pytest
import torch

import approxdrop as ad
from approxdrop.models.methods import DROPOUT_METHODS, ELEMENT, TILE, Method, methods_for, mlp_gemm_work
from approxdrop.ops import group_bounds
from approxdrop.patterns import TilePattern


def masked_tile_reference(model, x, draws):
    """The dense network with DropConnect as element masks: every layer reading a site multiplies its
    weight by the group's tile mask (scaled by dp/keep) for that group's samples; the same weights."""
    h = x
    last = len(model.linears) - 1
    for i, linear in enumerate(model.linears):
        if draws[i] is None:
            h = linear(h)
        else:
            parts = []
            for (start, stop), q in zip(group_bounds(h.shape[-2], len(draws[i])), draws[i]):
                w = linear.weight * q.keep_mask(*linear.weight.shape).to(h.dtype) * q.scale  # [n_out, n_in]
                parts.append(torch.nn.functional.linear(h[..., start:stop, :], w, linear.bias))
            h = torch.cat(parts, -2)  # [*, B, n_out]
        if i < last:
            h = model.activation(h)
    return h


def tile_model(p=0.6, groups=4, input_dropout=False, sizes=(19, 40, 24, 5), tile=8, seed=4, **kwargs):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(seed)
    return ad.ApproxDropoutMLP(
        list(sizes), p, "tile-g4", groups=groups, tile=tile, input_dropout=input_dropout, generator=gen, **kwargs
    )


def test_tile_g4_is_a_row_of_the_table():
    m = DROPOUT_METHODS["tile-g4"]
    assert (m.drops, m.groups, m.family, m.models, m.pattern_kind) == (TILE, 4, "paper", ("mlp",), "tile")
    assert "tile-g4" in methods_for("mlp") and "tile-g4" not in methods_for("lstm")
    # groups change who reads which tiles, not how much is read
    assert mlp_gemm_work([784, 2048, 2048, 10], 0.5, "tile-g4") == mlp_gemm_work([784, 2048, 2048, 10], 0.5, "tile")
    Method("t", TILE, "tiles in 3 groups", "#000000", family="paper", groups=3)  # allowed now
    with pytest.raises(ValueError, match="batch groups are for row and tile patterns only"):
        Method("e", ELEMENT, "dropout in groups", "#000000", groups=2)


def test_sample_groups_of_a_tile_law_are_complementary_tile_patterns_and_group_zero_is_the_sample():
    law = ad.PatternDistribution(((2, 1), (4, 1), (4, 3)), (0.5, 0.3, 0.2), kind="tile", tile=8)
    for seed in range(30):
        single = law.sample(torch.Generator().manual_seed(seed))
        groups = law.sample_groups(4, torch.Generator().manual_seed(seed))
        assert groups[0] == single and all(isinstance(q, TilePattern) and q.tile == 8 for q in groups)
        assert len({(q.dp, q.keep) for q in groups}) == 1
        first = groups[: single.dp]  # the first permutation of 0..dp-1 (all of it when dp <= G)
        assert len({q.offset for q in first}) == len(first)
        if single.dp <= 4:
            assert {q.offset for q in first} == set(range(single.dp))
        if single.keep == 1 and single.dp >= 4:  # disjoint tiles: every weight is read by at most one group
            masks = torch.stack([q.keep_mask(24, 40) for q in groups]).sum(0)
            assert int(masks.max()) == 1


@pytest.mark.parametrize(
    "groups, batch, input_dropout, p",
    [(4, 16, False, 0.5), (4, 13, True, 0.7), (3, 2, False, 0.3), (5, 3, True, 0.5), (4, 1, False, 0.7)],
)
def test_grouped_tile_mlp_matches_the_dense_masked_network_with_one_mask_per_group(groups, batch, input_dropout, p):
    model = tile_model(p, groups, input_dropout, activation=torch.nn.GELU()).double()
    x = torch.randn(batch, 19, dtype=torch.float64, requires_grad=True)
    y = model(x)
    draws = model.last_patterns
    assert (draws[0] is None) != input_dropout
    assert all(d is None or (len(d) == groups and all(isinstance(q, TilePattern) for q in d)) for d in draws)
    inputs = [x, *model.parameters()]
    grads = torch.autograd.grad(y.square().sum(), inputs)
    ref = masked_tile_reference(model, x, draws)
    torch.testing.assert_close(y, ref)
    for got, want in zip(grads, torch.autograd.grad(ref.square().sum(), inputs)):
        torch.testing.assert_close(got, want)


def test_groups_really_get_different_tiles():
    """With G >= dp and keep = 1 the groups' tiles are complementary: every weight of a layer reading a
    site gets a gradient from some group, where one pattern per batch leaves (dp-1)/dp of them at zero."""
    law = ad.PatternDistribution(((2, 1),), (1.0,), kind="tile", tile=8)
    grads, draws = {}, {}
    for groups in (1, 4):  # one site, read by the last layer; tanh: no zero inputs
        model = tile_model(0.5, groups, sizes=(19, 40, 24), distributions=[law], activation=torch.nn.Tanh())
        model(torch.randn(8, 19)).square().sum().backward()
        grads[groups], draws[groups] = model.linears[1].weight.grad, model.last_patterns[1]
    assert (grads[4] != 0).all()
    assert torch.equal(grads[1] != 0, draws[1].keep_mask(24, 40))


def test_one_group_is_the_tile_method_bit_for_bit():
    x = torch.randn(6, 19)
    outs = []
    for method, groups in (("tile", None), ("tile-g4", 1)):
        torch.manual_seed(0)
        model = ad.ApproxDropoutMLP([19, 40, 24, 5], 0.5, method, groups=groups, tile=8, generator=torch.Generator())
        model.generator.manual_seed(2)
        y = model(x)
        y.square().sum().backward()
        outs.append((y, model.last_patterns, [w.grad for w in model.parameters()]))
    (y1, d1, g1), (y2, d2, g2) = outs
    assert d1 == d2 and torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_group_zero_draws_what_tile_draws():
    x = torch.randn(6, 19)
    draws = []
    for method in ("tile", "tile-g4"):  # one site: a later site's draw follows the groups' extra offsets
        model = ad.ApproxDropoutMLP([19, 40, 5], 0.5, method, tile=8, generator=torch.Generator().manual_seed(2))
        model(x)
        draws.append(model.last_patterns)
    assert draws[1][0] is None and draws[1][1][0] == draws[0][1] and len(draws[1][1]) == 4


def test_eval_leading_dims_and_a_single_sample():
    model = tile_model(0.5)
    x = torch.randn(2, 5, 19)  # [*, B, n]: groups split the 5 samples of each leading slice
    y = model(x)
    assert y.shape == (2, 5, 5) and model(x[0, 0]).shape == (5,)
    x64 = x.double()
    model.double()
    torch.testing.assert_close(model(x64), masked_tile_reference(model, x64, model.last_patterns))
    model.eval()
    dense = model.linears[2](model.activation(model.linears[1](model.activation(model.linears[0](x64)))))
    torch.testing.assert_close(model(x64), dense)


def test_draw_patterns_draws_for_the_next_forward():
    model = tile_model(0.5)
    assert ad.draw_patterns(model) == 1
    pending = model._pending_draws
    model(torch.randn(7, 19))
    assert model.last_patterns == pending and len(pending[1]) == 4
    assert model._pending_draws is None  # used once: the next forward draws anew


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(groups=0), "groups must be in"),
        (dict(groups=2.5), "groups must be an int"),
        (dict(groups="4"), "groups must be an int"),
        (dict(groups=4, method="bernoulli"), r"batch groups are for row- and tile-pattern methods, not 'bernoulli'"),
        (dict(groups=2, method="shared"), r"batch groups are for row- and tile-pattern methods, not 'shared'"),
    ],
)
def test_bad_groups_are_value_errors_naming_the_value(kwargs, match):
    kwargs = {"method": "tile-g4", **kwargs}
    with pytest.raises(ValueError, match=match):
        ad.ApproxDropoutMLP([8, 12, 3], 0.5, tile=4, **kwargs)


def test_groups_that_drew_the_same_tiles_share_one_tile_op(monkeypatch):
    """G = 4 groups with dp = 2 draw two distinct patterns: the tile op runs one batched GEMM per distinct
    pattern in the layer reading the site, on the rows of the groups that drew it."""
    calls = []
    real = torch.bmm

    def counting(blocks, weights, *args, **kwargs):  # forward: x's blocks [classes, N, K*T] @ W's
        calls.append(blocks.shape[1])
        return real(blocks, weights, *args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counting)
    law = ad.PatternDistribution(((2, 1),), (1.0,), kind="tile", tile=8)
    model = tile_model(0.5, 4, sizes=(19, 40, 24), distributions=[law])
    with torch.no_grad():
        model(torch.randn(10, 19))  # groups of 3, 3, 2, 2 samples
    draws = model.last_patterns[1]
    assert len(calls) == 2 and len(set(draws)) == 2
    assert sorted(calls) == sorted(
        sum(size for size, q in zip((3, 3, 2, 2), draws) if q == pattern) for pattern in set(draws)
    )
