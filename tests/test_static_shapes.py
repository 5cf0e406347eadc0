"""Static-shape row linears (``ops.static``) and the MLP's ``static_shapes`` path: shapes set by (dp, keep)
alone, outputs and gradients equal to the compact path's, one compiled graph per (dp, keep) class."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import approxdrop as ad
from approxdrop.models.sites import PENDING
from approxdrop.ops import (
    StaticSide,
    row_linear_reference,
    static_grouped_linear,
    static_row_linear,
    static_side,
    static_site,
)


def _units(side: StaticSide, n: int) -> list[int]:
    index = side.index.tolist()
    return sorted(index if side.valid is None else [i for i, v in zip(index, side.valid.tolist()) if v])


@pytest.mark.parametrize("n,dp,keep", [(12, 4, 1), (13, 4, 3), (7, 3, 2), (5, 5, 4), (9, 2, 1), (1, 3, 1)])
def test_slots_hold_exactly_the_kept_units_at_a_shape_free_of_the_offset(n, dp, keep):
    shapes = set()
    for offset in range(dp):
        side = static_side(n, dp, keep, torch.tensor(offset))
        shapes.add(side.index.shape)
        assert _units(side, n) == ad.RowPattern(dp, offset, keep).kept_indices(n).tolist()
        assert int(side.index.max()) < n and side.scale == dp / keep
        assert (side.valid is None) == (n % dp == 0)
    assert shapes == {torch.Size([keep * -(-n // dp)])}


@pytest.mark.parametrize("seed", range(4))
def test_static_row_linear_equals_the_dense_masked_reference_on_odd_sizes(seed):
    g = torch.Generator().manual_seed(seed)
    n_out, n_in, batch = (int(v) for v in torch.randint(3, 23, (3,), generator=g))
    dp_in, dp_out = (int(v) for v in torch.randint(1, 6, (2,), generator=g))
    p_in = ad.RowPattern(dp_in, seed % dp_in, 1 + seed % dp_in)
    p_out = ad.RowPattern(dp_out, (seed + 1) % dp_out, max(1, dp_out - 1))
    w, b = torch.randn(n_out, n_in, generator=g), torch.randn(n_out, generator=g)
    x = torch.randn(batch, n_in, generator=g)
    ins = static_side(n_in, p_in.dp, p_in.keep, torch.tensor(p_in.offset))
    outs = static_side(n_out, p_out.dp, p_out.keep, torch.tensor(p_out.offset))
    y = static_row_linear(static_site(x, ins), w, b, ins, outs)  # [B, K_out]
    want = row_linear_reference(x[:, p_in.kept_indices(n_in)], w, b, p_in, p_out)  # [B, k_out], sorted units
    valid = slice(None) if outs.valid is None else outs.valid
    order = outs.index[valid].argsort()
    torch.testing.assert_close(y[:, valid][:, order], want)


def test_static_row_linear_gradcheck_float64_padding_included():
    """Padding slots hold nonzero inputs: they must reach no kept output and no gradient (the loss reads the
    kept output slots only, as the next layer does by zeroing the padding)."""
    g = torch.Generator().manual_seed(3)
    ins = static_side(7, 3, 2, torch.tensor(2))  # 7 % 3 != 0: padding
    outs = static_side(5, 2, 1, torch.tensor(1))
    x = torch.randn(4, ins.index.numel(), dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: static_row_linear(*a, ins, outs), (x, w, b))
    static_row_linear(x, w, b, ins, outs)[:, outs.valid].sum().backward()
    assert (x.grad[:, ~ins.valid] == 0).all()
    dropped_rows = ~ad.RowPattern(2, 1).keep_mask(5)
    assert (w.grad[dropped_rows] == 0).all() and (b.grad[dropped_rows] == 0).all()


def _twins(model_class, *args, seed: int, **kw) -> list:
    """A row-pattern model built twice from the same weights and pattern generator seed: compact (executor
    "compact"), then with static_shapes (which ignores the executor)."""
    models = []
    for static in (False, True):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(seed)
        models.append(
            model_class(*args, method="row", executor="compact", static_shapes=static, generator=generator, **kw)
        )
    return models


def _pair(sizes, groups=1, **kw):
    """An MLP: compact and static_shapes."""
    return _twins(ad.ApproxDropoutMLP, sizes, 0.5, groups=groups, seed=11, **kw)


@pytest.mark.parametrize("input_dropout", [False, True])
def test_static_mlp_matches_the_compact_path_step_by_step(input_dropout):
    compact, static = _pair([11, 13, 9, 3], input_dropout=input_dropout)  # widths dp rarely divides
    x = torch.randn(5, 11)
    for _ in range(6):
        for model in (compact, static):
            model.zero_grad()
            model(x).square().sum().backward()
        assert static.last_patterns == compact.last_patterns
        for a, b in zip(compact.parameters(), static.parameters()):
            torch.testing.assert_close(b.grad, a.grad)
    assert "static_shapes=True" in repr(static)


def test_static_shapes_refuses_what_it_cannot_run():
    for method in ("tile", "tile-g4", "bernoulli", "shared"):
        with pytest.raises(ValueError, match="static_shapes is for row patterns"):
            ad.ApproxDropoutMLP([4, 8, 2], 0.5, method=method, static_shapes=True)
    with pytest.raises(ValueError, match="static_shapes is for row patterns"):
        ad.ApproxDropoutFFN(6, 11, 0.5, method="bernoulli", static_shapes=True)


@pytest.mark.parametrize("executor", ["auto", "masked", "compact"])
def test_executor_for_a_static_model_names_the_static_path_it_runs(executor):
    # it said "masked" for these tiny models, whose forward runs ops.static whatever the executor
    models = {
        "mlp": (ad.ApproxDropoutMLP([4, 8, 2], 0.5, method="row-g4", executor=executor, static_shapes=True), (8, 4)),
        "ffn": (ad.ApproxDropoutFFN(6, 11, 0.5, method="row-g4", executor=executor, static_shapes=True), (8, 3, 6)),
        "lstm": (ad.ApproxDropoutLSTM(20, 8, 1, 0.5, method="row-g4", executor=executor, static_shapes=True), (3, 8)),
    }
    for name, (model, shape) in models.items():
        x = torch.zeros(shape, dtype=torch.long) if name == "lstm" else torch.zeros(shape)
        assert model.executor_for(x) == "static", name
        model.static_shapes = False  # its twin without static shapes takes the executor's answer
        assert model.executor_for(x) in ("compact", "masked"), name


@pytest.mark.parametrize(
    "groups,shape,input_dropout",
    [(4, (5, 11), False), (4, (3, 11), True), (3, (2, 7, 11), True), (2, (11,), False), (1, (11,), True)],
)
def test_static_grouped_mlp_matches_the_compact_grouped_path_step_by_step(groups, shape, input_dropout):
    """Groups split the batch unevenly (5 rows in 4 groups), or leave some empty (3 rows in 4), or x has
    no batch axis: each group's rows must still read their own group's slots."""
    compact, static = _pair([11, 13, 9, 3], groups, input_dropout=input_dropout)
    x = torch.randn(*shape)
    mixed = 0  # steps on which the groups of a site drew different offsets
    for _ in range(6):
        for model in (compact, static):
            model.zero_grad()
            model(x).square().sum().backward()
        assert static.last_patterns == compact.last_patterns
        mixed += any(isinstance(q, tuple) and len(set(q)) > 1 for q in static.last_patterns)
        for a, b in zip(compact.parameters(), static.parameters()):
            torch.testing.assert_close(b.grad, a.grad)
    assert (mixed >= 3 or groups == 1) and static.static_offsets.shape == (2 + input_dropout, groups)


@pytest.mark.parametrize("groups", [1, 4])
def test_pattern_key_of_a_static_model_is_its_dp_keep_classes(groups):
    law = ad.PatternDistribution(((3, 1), (3, 2)), (0.5, 0.5))
    model = ad.ApproxDropoutMLP(
        [6, 10, 10, 2], 0.5, method="row", groups=groups, distributions=[law, law], static_shapes=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    keys = set()
    for _ in range(30):
        ad.draw_patterns(model)
        key = ad.pattern_key(model)
        pending = getattr(model, PENDING)
        assert pending[0] is None  # no site on the input
        sites = [q if groups > 1 else (q,) for q in pending[1:]]  # one pattern per group
        assert key == ((None, *((site[0].dp, site[0].keep) for site in sites)),)
        assert model.static_offsets.tolist() == [[q.offset for q in site] for site in sites]
        keys.add(key)
    assert len(keys) == 4  # (3, 1) or (3, 2) at each of two sites, whatever the offsets


@pytest.mark.parametrize("groups,batch", [(1, 4), (4, 6)])
def test_compiled_static_mlp_makes_one_graph_per_dp_keep_class_not_per_offset(groups, batch):
    """Widths that dp = 3 does not divide, so the compact path's shapes change with the offset: the static
    path compiles once per (dp, keep) combination of the sites (here 2 x 2), then never again. With four
    groups (row-g4, the MLP's default) the model compiles whole too, every group's offset changing."""
    law = ad.PatternDistribution(((3, 1), (3, 2)), (0.5, 0.5))
    compact, static = _pair([7, 10, 11, 3], groups, distributions=[law, law])
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(static, fullgraph=True, backend="eager")
    x = torch.randn(batch, 7)
    classes, offsets = set(), set()
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False):
        for step in range(24):
            for model in (compact, static):
                model.zero_grad()
            ad.draw_patterns(static)
            classes.add(ad.pattern_key(static))
            offsets.add(tuple(static.static_offsets.flatten().tolist()))
            compiled(x).square().sum().backward()
            compact(x).square().sum().backward()  # draws the same patterns from its own generator
            assert static.last_patterns == compact.last_patterns, step
            for a, b in zip(compact.parameters(), static.parameters()):
                torch.testing.assert_close(b.grad, a.grad)
    assert len(classes) == 4 and len(offsets) > 2 * len(classes)  # many offsets per class
    assert counters["stats"]["unique_graphs"] <= len(classes), counters["stats"]


def _group_sides(n: int, dp: int, keep: int, offsets: list[int]) -> list[StaticSide]:
    return [static_side(n, dp, keep, torch.tensor(o)) for o in offsets]


@pytest.mark.parametrize("n_in,n_out", [(7, 10), (9, 12)])  # dp = 3 pads both (one gather by index), or none
@pytest.mark.parametrize(
    "in_offsets,out_offsets", [([0, 2, 0, 1], [1, 1, 0, 2]), (None, [2, 0, 2, 1]), ([1, 0, 1, 1], None)]
)
def test_grouped_static_linear_compiled_equals_each_group_on_its_own(in_offsets, out_offsets, n_in, n_out):
    """Under torch.compile the groups' blocks come from one gather whose backward adds every group's gradient
    into one buffer (by residue where dp divides the widths, else by index); groups with equal offsets read
    the same block (their gradients add), keep 2 of 3 on the inputs, one group is empty. Outputs and every
    gradient equal the per-group form's in float64."""
    torch.manual_seed(0)
    w, b = torch.randn(n_out, n_in, dtype=torch.float64), torch.randn(n_out, dtype=torch.float64)
    ins = _group_sides(n_in, 3, 2, in_offsets) if in_offsets else [None] * 4
    outs = _group_sides(n_out, 3, 1, out_offsets) if out_offsets else [None] * 4
    k_in = n_in if ins[0] is None else ins[0].index.numel()
    xs = [torch.randn(rows, k_in, dtype=torch.float64) for rows in (3, 2, 0, 4)]

    def grads(fn):
        params = [t.clone().requires_grad_() for t in (w, b, *xs)]
        ys = fn(params[2:], params[0], params[1], ins, outs)
        loss = sum((y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum() for y in ys)
        return [y.detach() for y in ys], torch.autograd.grad(loss, params)

    eager = grads(static_grouped_linear)
    compiled = grads(torch.compile(static_grouped_linear, fullgraph=True, backend="eager"))
    per_group = grads(lambda xs, w, b, ins, outs: [static_row_linear(*a) for a in zip(xs, [w] * 4, [b] * 4, ins, outs)])
    for got in (eager, compiled):
        for a, c in zip(per_group[0] + list(per_group[1]), got[0] + list(got[1])):
            torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)


def test_the_one_gather_of_every_groups_block_passes_gradcheck():
    from approxdrop.ops.static import _IndexBlocks, _ResidueBlocks

    w = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([[0, 2, 4], [1, 3, 5], [0, 2, 4]])  # groups 0 and 2 share their rows
    cols = torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5], [0, 1, 3, 4]])  # dp 3, keep 2: residues (0, 1), (1, 2)
    assert torch.autograd.gradcheck(lambda w: _IndexBlocks.apply(w, rows, cols), (w,))
    torch.testing.assert_close(_IndexBlocks.apply(w, rows, cols)[1], w[[1, 3, 5]][:, [1, 2, 4, 5]])
    ro, ri = torch.tensor([[0], [1], [0]]), torch.tensor([[0, 1], [1, 2], [0, 1]])  # the same slots by residue
    assert torch.autograd.gradcheck(lambda w: _ResidueBlocks.apply(w, ro, ri, 2, 3), (w,))
    torch.testing.assert_close(_ResidueBlocks.apply(w, ro, ri, 2, 3), _IndexBlocks.apply(w, rows, cols))


def test_full_side_is_the_layer_without_dropout():
    """An MLP's first layer reads the full input and its last writes every output: no side there."""
    w, b, x = torch.randn(4, 6), torch.randn(4), torch.randn(2, 6)
    torch.testing.assert_close(static_row_linear(x, w, b, None, None), torch.nn.functional.linear(x, w, b))


def _ffn_pair(**kw):
    """ApproxDropoutFFN: compact and static_shapes."""
    return _twins(ad.ApproxDropoutFFN, 6, 11, 0.5, seed=5, **kw)


def test_static_ffn_matches_the_compact_block_and_compiles_once_per_class():
    law = ad.PatternDistribution(((4, 1), (4, 3)), (0.5, 0.5))  # rate 0.5; dp 4 does not divide d_hidden 11
    compact, static = _ffn_pair(distributions=[law])
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(static, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 6)
    offsets = set()
    for _ in range(16):
        for block in (compact, static):
            block.zero_grad()
        ad.draw_patterns(static)
        offsets.add(static.static_offsets.item())
        compiled(x).square().sum().backward()
        compact(x).square().sum().backward()
        assert static.last_pattern == compact.last_pattern
        for a, b in zip(compact.parameters(), static.parameters()):
            torch.testing.assert_close(b.grad, a.grad)
    assert len(offsets) > 2 and counters["stats"]["unique_graphs"] <= 2, counters["stats"]
    assert "static_shapes=True" in repr(static)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("shape", [(5, 3, 6), (7, 6), (6,)])
def test_static_grouped_ffn_matches_the_compact_grouped_block(shape, compiled):
    """Groups split the samples (the leading axis: a transformer's B of [B, T, d], the rows of [N, d]); a
    1-D x is one sample, group 0's. Compiled, the groups' blocks come from one gather (ops.static)."""
    compact, static = _ffn_pair(groups=4)
    run = torch.compile(static, fullgraph=True, backend="eager") if compiled else static
    x = torch.randn(*shape)
    for _ in range(5):
        for block in (compact, static):
            block.zero_grad()
        ad.draw_patterns(static)
        run(x).square().sum().backward()
        compact(x).square().sum().backward()
        assert static.last_pattern == compact.last_pattern and len(static.last_pattern) == 4
        for a, b in zip(compact.parameters(), static.parameters()):
            torch.testing.assert_close(b.grad, a.grad)


@pytest.mark.parametrize("method", ["row", "row-g4"])
@pytest.mark.parametrize("shape", [(6, 3, 6), (3, 6), (6,)])
def test_static_output_side_block_matches_the_eager_block_and_compiles_once_per_class(shape, method):
    """OutputRowDropout (what convert(output_side=True) builds): dp 4 does not divide d_out 11, so some
    offsets pad; with groups, each group's samples (the leading axis; fewer than the groups in (3, 6)) read their
    own slots; every output and gradient equals the eager block's, one graph per (dp, keep) class."""
    from approxdrop.models.output_side import OutputRowDropout

    law = ad.PatternDistribution(((4, 1), (4, 3)), (0.5, 0.5))
    torch.manual_seed(0)
    linear = nn.Linear(6, 11)
    eager, static = (
        OutputRowDropout(
            copy.deepcopy(linear), 0.5, method, distributions=[law], generator=torch.Generator().manual_seed(3),
            static_shapes=static_shapes,
        )
        for static_shapes in (False, True)
    )  # fmt: skip
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(static, fullgraph=True, backend="eager")
    x = torch.randn(*shape)
    offsets = set()
    for _ in range(16):
        for block in (eager, static):
            block.zero_grad()
        ad.draw_patterns(static)
        offsets.add(tuple(static.static_offsets.flatten().tolist()))
        y = compiled(x)
        y.square().sum().backward()
        want = eager(x)
        want.square().sum().backward()
        assert static.last_pattern == eager.last_pattern
        torch.testing.assert_close(y, want)
        for a, b in zip(eager.parameters(), static.parameters()):
            torch.testing.assert_close(b.grad, a.grad)
    assert len(offsets) > 2 and counters["stats"]["unique_graphs"] <= 2, counters["stats"]
    assert "static_shapes=True" in repr(static)


def test_convert_with_static_shapes_gives_gated_and_plain_blocks_the_static_path():
    """A gated block (wo(act(wi_0 x) * wi_1 x)) and a plain FFN, converted both ways from the same weights,
    give the same outputs and gradients under the same draws."""
    from approxdrop.models.gated import GatedApproxDropoutFFN

    twins = []
    for static in (False, True):
        torch.manual_seed(0)
        wi_0, wi_1, wo = nn.Linear(5, 9), nn.Linear(5, 9), nn.Linear(9, 5)
        ffn = ad.ApproxDropoutFFN.from_modules(
            wi_0, "gelu", wo, 0.5, generator=torch.Generator().manual_seed(2), static_shapes=static
        )
        twins.append(GatedApproxDropoutFFN(ffn, wi_1))
    x = torch.randn(4, 5)
    for _ in range(5):
        for block in twins:
            block.zero_grad()
            block(x).square().sum().backward()
        assert twins[0].ffn.last_pattern == twins[1].ffn.last_pattern
        for a, b in zip(twins[0].parameters(), twins[1].parameters()):
            torch.testing.assert_close(b.grad, a.grad)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=14, dropout=0.25, batch_first=True)
    report = ad.convert(layer, static_shapes=True)
    blocks = [m for m in layer.modules() if isinstance(m, ad.ApproxDropoutFFN)]
    assert report.converted and blocks and all(b.static_shapes for b in blocks)
    layer(torch.randn(2, 3, 8)).sum().backward()
    grouped = nn.TransformerEncoderLayer(8, 2, dim_feedforward=14, dropout=0.25, batch_first=True)
    report = ad.convert(grouped, method="row-g4", static_shapes=True)
    (block,) = [m for m in grouped.modules() if isinstance(m, ad.ApproxDropoutFFN)]
    assert report.converted and block.static_shapes and block.groups == 4
    grouped(torch.randn(5, 3, 8)).sum().backward()
    assert len(block.last_pattern) == 4 and block.fc1.weight.grad is not None
    with pytest.raises(ValueError, match="static_shapes is for row patterns"):
        ad.convert(nn.TransformerEncoderLayer(8, 2, dim_feedforward=14), method="bernoulli", static_shapes=True)


def test_compiled_step_trains_a_static_model_as_the_eager_step_trains_its_twin():
    compact, static = _pair([7, 10, 3])
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (compact, static)]
    step = ad.compiled_step(static, opts[1], torch.nn.functional.cross_entropy, backend="eager")
    x, y = torch.randn(6, 7), torch.randint(3, (6,))
    for _ in range(4):
        loss = step(x, y)
        eager_loss, _ = ad.training.training_step(compact, opts[0], x, y)
        torch.testing.assert_close(loss, eager_loss)
        assert static.last_patterns == compact.last_patterns
    for a, b in zip(compact.parameters(), static.parameters()):
        torch.testing.assert_close(b, a)


def test_compiled_step_clips_the_gradient_norm_before_the_optimizer_steps():
    compact, static = _pair([7, 10, 3])
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (compact, static)]
    step = ad.compiled_step(static, opts[1], torch.nn.functional.cross_entropy, backend="eager", clip=0.01)
    x, y = torch.randn(6, 7), torch.randint(3, (6,))
    for _ in range(3):
        loss = step(x, y)
        assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in static.parameters()])) <= 0.01 + 1e-6
        opts[0].zero_grad(set_to_none=True)
        eager_loss = torch.nn.functional.cross_entropy(compact(x), y)
        eager_loss.backward()
        torch.nn.utils.clip_grad_norm_(compact.parameters(), 0.01)
        opts[0].step()
        torch.testing.assert_close(loss, eager_loss.detach())
    for a, b in zip(compact.parameters(), static.parameters()):
        torch.testing.assert_close(b, a)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip"):
            ad.compiled_step(static, opts[1], torch.nn.functional.cross_entropy, backend="eager", clip=bad)


@pytest.mark.parametrize(
    "build",
    [
        lambda g: ad.ApproxDropoutMLP([5, 12, 3], 0.5, "row-g4", input_dropout=True, static_shapes=True, generator=g),
        lambda g: ad.ApproxDropoutFFN(5, 12, 0.5, method="row-g4", d_out=3, static_shapes=True, generator=g),
    ],
    ids=["mlp", "ffn"],
)
@pytest.mark.slow  # long (Inductor compiles the step at two batch sizes): left out of the fast tier (CI runs it)
def test_compiled_step_runs_a_last_batch_smaller_than_the_groups_as_eager(build):
    """A batch of 3 after batches of 8 leaves row-g4's last group without samples. Inductor compiling it with a
    dynamic batch failed on the empty group's loops (ValueRangeError: Invalid ranges [0:-1]); compiled_step now
    compiles a grouped static model at each batch size, and groups without samples get nothing, as eagerly."""
    torch.manual_seed(0)
    static = build(torch.Generator().manual_seed(1))
    twin = copy.deepcopy(static)  # the same weights and pattern generator state, run eagerly
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (static, twin)]
    torch._dynamo.reset()
    step = ad.compiled_step(static, opts[0], nn.functional.cross_entropy)  # Inductor: the error was its
    for batch in (8, 8, 3):
        x, y = torch.randn(batch, 5), torch.randint(3, (batch,))
        loss = step(x, y)
        eager_loss, _ = ad.training.training_step(twin, opts[1], x, y)
        torch.testing.assert_close(loss, eager_loss)
    for a, b in zip(twin.parameters(), static.parameters()):
        torch.testing.assert_close(b, a)


def _lstm_pair(groups, **kw):
    """ApproxDropoutLSTM: compact and static_shapes."""
    return _twins(ad.ApproxDropoutLSTM, 17, hidden=11, embedding=7, layers=2, p=0.5, groups=groups, seed=3, **kw)


@pytest.mark.parametrize("groups,batch", [(1, 4), (4, 6), (4, 3)])
def test_static_lstm_matches_the_compact_lstm_step_by_step(groups, batch):
    """Widths 7 and 11 that most periods do not divide; with 3 samples in 4 groups one group is empty."""
    compact, static = _lstm_pair(groups)
    x = torch.randint(17, (5, batch))
    for _ in range(5):
        outs = []
        for model in (compact, static):
            model.zero_grad()
            logits, (h, c) = model(x)
            (logits.square().sum() + h.sum() + c.sum()).backward()
            outs.append((logits, h, c))
        assert static.last_patterns == compact.last_patterns
        for a, b in zip(*outs):
            torch.testing.assert_close(b, a)
        for a, b in zip(compact.parameters(), static.parameters()):
            torch.testing.assert_close(b.grad, a.grad)
    assert "static_shapes=True" in repr(static) and static.static_offsets.shape == (3, groups)


@pytest.mark.slow  # long: left out of the fast tier (CI runs it)
def test_compiled_static_lstm_makes_one_graph_per_dp_keep_class():
    law = ad.PatternDistribution(((3, 1), (3, 2)), (0.5, 0.5))
    compact, static = _lstm_pair(4, distributions=[law] * 3)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(static, fullgraph=True, backend="eager")
    x = torch.randint(17, (4, 6))
    keys = set()
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False, recompile_limit=16):
        for step in range(20):
            for model in (compact, static):
                model.zero_grad()
            ad.draw_patterns(static)
            keys.add(ad.pattern_key(static))
            compiled(x)[0].square().sum().backward()
            compact(x)[0].square().sum().backward()
            assert static.last_patterns == compact.last_patterns, step
            for a, b in zip(compact.parameters(), static.parameters()):
                torch.testing.assert_close(b.grad, a.grad)
    assert counters["stats"]["unique_graphs"] <= len(keys) < 20, counters["stats"]


@pytest.mark.slow  # long: left out of the fast tier (CI runs it)
def test_compiled_step_allows_a_graph_per_class_past_dynamos_recompile_limit():
    """Two sites with three (dp, keep) classes each: 9 combinations, one more than Dynamo's default limit
    of 8. compiled_step raises the limit for its calls to the bound, so every combination gets its graph
    (a step past the limit would run eagerly, uncounted) and the global setting is left as it was."""
    from approxdrop.models.sites import static_graph_bound

    law = ad.PatternDistribution(((2, 1), (4, 2), (6, 3)), (0.4, 0.3, 0.3))  # every class keeps half
    model = ad.ApproxDropoutMLP(
        [5, 12, 12, 2], 0.5, method="row", distributions=[law, law], static_shapes=True,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert static_graph_bound(model) == 9 > torch._dynamo.config.recompile_limit
    torch._dynamo.reset()
    counters.clear()
    step = ad.compiled_step(
        model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.cross_entropy, backend="eager"
    )
    x, y = torch.randn(3, 5), torch.randint(2, (3,))
    keys = set()
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False):
        for _ in range(80):
            step(x, y)
            keys.add(tuple(model.static_classes))
    assert len(keys) == 9 and counters["stats"]["unique_graphs"] == 9, counters["stats"]
    assert torch._dynamo.config.recompile_limit == 8


@pytest.mark.slow  # long: left out of the fast tier (CI runs it)
def test_compiled_step_compiles_an_epochs_last_smaller_batch_too():
    """A batch of another size (an epoch's last, drop_last=False) makes Dynamo compile the combinations it
    meets again with a dynamic batch: more graphs than the bound, which compiled_step's limit leaves room
    for, so every step runs compiled (a step past the limit would run eagerly: an uncounted frame)."""
    law = ad.PatternDistribution(((2, 1), (4, 2), (6, 3)), (0.4, 0.3, 0.3))  # 9 combinations of 2 sites
    model = ad.ApproxDropoutMLP(
        [5, 12, 12, 2], 0.5, method="row", distributions=[law, law], static_shapes=True,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    torch._dynamo.reset()
    counters.clear()
    step = ad.compiled_step(
        model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.cross_entropy, backend="eager"
    )
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False):
        for _ in range(3):  # epochs of 41 batches: 40 of 8 samples, then 5
            for batch in [8] * 40 + [5]:
                step(torch.randn(batch, 5), torch.randint(2, (batch,)))
    assert counters["stats"]["unique_graphs"] > 9, counters["stats"]  # the dynamic-batch graphs came on top
    assert counters["frames"]["total"] == counters["frames"]["ok"], counters["frames"]  # every frame compiled


@pytest.mark.slow  # long: left out of the fast tier (CI runs it)
def test_compiled_step_keeps_compiling_through_a_rate_schedule():
    """A schedule that raises p brings new laws with more (dp, keep) classes, so more graphs than the first
    rate's bound (4 at p = 0.1, under Dynamo's default limit of 8). compiled_step raises the limit by each new
    law set's bound, so no step of the schedule falls back to eager (uncounted frames), and the global
    setting is left as it was."""
    model = ad.ApproxDropoutMLP(
        [5, 24, 24, 2], 0.1, method="row", static_shapes=True, generator=torch.Generator().manual_seed(2)
    )
    torch._dynamo.reset()
    counters.clear()
    step = ad.compiled_step(
        model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.cross_entropy, backend="eager"
    )
    x, y = torch.randn(3, 5), torch.randint(2, (3,))
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False):
        for p in (0.1, 0.3, 0.5):
            model.p = p
            for _ in range(60):
                step(x, y)
    assert counters["stats"]["unique_graphs"] > torch._dynamo.config.recompile_limit, counters["stats"]
    assert counters["frames"]["total"] == counters["frames"]["ok"], counters["frames"]  # every frame compiled
    assert torch._dynamo.config.recompile_limit == 8


@pytest.mark.parametrize(
    "build, x",
    [(lambda s: ad.ApproxDropoutMLP([12, 24, 24, 3], 0.5, "row-g4", static_shapes=s), lambda: torch.randn(8, 12)),
     (lambda s: ad.ApproxDropoutFFN(12, 24, 0.5, method="row", static_shapes=s), lambda: torch.randn(2, 5, 12)),
     (lambda s: ad.ApproxDropoutLSTM(20, 8, 2, 0.5, "row-g4", static_shapes=s), lambda: torch.randint(20, (4, 8)))],
)  # fmt: skip
def test_a_static_model_under_autocast_gives_the_compact_paths_dtype(build, x):
    """The slots' bias is cast to the product's dtype, as nn.Linear's is: bfloat16 out under bfloat16 autocast."""
    inputs = x()
    dtypes = []
    for static in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = build(static).train()(inputs)
        dtypes.append((y[0] if isinstance(y, tuple) else y).dtype)
    assert dtypes == [torch.bfloat16, torch.bfloat16]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((6, 3, 5, torch.tensor(0)), r"static_side: keep must be in \[1, 3\], got 5"),  # duplicated units
        ((6, 3, 0, torch.tensor(0)), r"static_side: keep must be in \[1, 3\], got 0"),
        ((6, 3, 1, torch.tensor(4)), r"static_side: offset must be in \[0, 2\], got 4"),  # wrapped to 1
        ((6, 3, 1, torch.tensor(-1)), r"static_side: offset must be in \[0, 2\], got -1"),
        ((6, 0, 1, torch.tensor(0)), r"static_side: dp must be in \[1, "),  # ZeroDivisionError
        ((-1, 3, 1, torch.tensor(0)), r"static_side: n must be in \[0, inf\), got -1"),
        ((6, 3.0, 1, torch.tensor(0)), "static_side: dp must be an int, got 3.0"),
        ((6, 3, 1, 1), "static_side: offset must be an integer tensor of one value, got 1"),
        ((6, 3, 1, torch.tensor(1.0)), "static_side: offset must be an integer tensor of one value"),
        ((6, 3, 1, torch.tensor([0, 1])), "static_side: offset must be an integer tensor of one value"),
    ],
)
def test_static_side_refuses_integers_no_row_pattern_has(args, message):
    """RowPattern's rules (dp >= 1, 1 <= keep <= dp, 0 <= offset < dp), each error naming the argument; before,
    keep > dp duplicated units, an offset past dp wrapped and dp = 0 divided by zero, silently or deep inside."""
    with pytest.raises(ValueError, match=message):
        static_side(*args)


def test_static_side_check_false_skips_the_checks_of_a_caller_with_checked_patterns():
    """A model's stored draws are valid by construction: check=False builds the same side without reading the
    offset's value (a sync on a GPU)."""
    side = static_side(7, 3, 2, torch.tensor(2), check=False)
    want = static_side(7, 3, 2, torch.tensor(2))
    assert torch.equal(side.index, want.index) and torch.equal(side.valid, want.valid)
    assert side.scale == want.scale and side.dp == want.dp and torch.equal(side.residues, want.residues)
