"""An in-place op on a pattern linear's output works as on F.linear's, whatever the input's rank and path (the
eager Function, the registered op, the models): the values and gradients are those of the same in-place ops on
the reference computation. The ops' outputs were views of a buffer made inside the op (a reshape of the GEMM's
2-D result, a split of a shared pair's rows), which autograd refuses to modify in place."""

from __future__ import annotations

import copy

import pytest
import torch

import approxdrop as ad
from approxdrop import ops
from approxdrop.ops import linear
from approxdrop.patterns import RowPattern, TilePattern

N_OUT, N_IN = 7, 10
PIN, POUT = RowPattern(2, 0), RowPattern(3, 1, 2)  # 5 kept inputs, 5 kept outputs
LEAD = {1: (), 2: (6,), 3: (2, 3)}  # x's leading dimensions by rank


def _inplace(y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """What a block does to a linear's output in place: timm's LayerScale(inplace=True), then an activation
    that saves its own output for backward."""
    return y.mul_(gamma).sigmoid_()


def _probe(y: torch.Tensor) -> torch.Tensor:
    """Fixed loss weights of y's shape: every output element gets its own gradient."""
    return torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view(y.shape)


def _after_inplace(fn, leaves: list[torch.Tensor], grad_fn: str | None = None):
    """(outputs, gradients of the leaves and of the scale) of ``fn(*leaves)`` (a tensor or a list of them), each
    output modified in place by ``_inplace``, then one backward; ``grad_fn``: a part of the op's backward's name
    (which path ran)."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    gamma = torch.tensor(0.7, requires_grad=True)
    out = fn(*leaves)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if grad_fn is not None:
        assert all(grad_fn in y.grad_fn.name() for y in outs), [y.grad_fn.name() for y in outs]
    ys = [_inplace(y, gamma) for y in outs]
    sum((y * _probe(y)).sum() for y in ys).backward()
    return [y.detach() for y in ys], [t.grad for t in (*leaves, gamma)]


def _assert_same(got, want) -> None:
    (ys, grads), (ys_ref, grads_ref) = got, want
    assert len(ys) == len(ys_ref)
    for y, y_ref in zip(ys, ys_ref):
        torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.fixture(params=["eager", "registered"])
def path(request, monkeypatch):
    """The part of the backward's name of the path the ops take: the eager Function or the registered op (forced
    as torch.compile, autocast or a CUDA kernel would)."""
    if request.param == "registered":
        monkeypatch.setattr(linear, "use_eager", lambda x: False)
        return "approxdrop"
    return "Linear"  # RowLinear, TileLinear


def _operands(rank: int, k_in: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*LEAD[rank], k_in, generator=g)
    return [x, torch.randn(N_OUT, N_IN, generator=g), torch.randn(N_OUT, generator=g)]


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_row_pattern_linear(rank, path):
    leaves = _operands(rank, PIN.kept_count(N_IN))
    got = _after_inplace(lambda x, w, b: ops.row_pattern_linear(x, w, b, PIN, POUT), leaves, path)
    want = _after_inplace(lambda x, w, b: ops.row_linear_reference(x, w, b, PIN, POUT), leaves)
    _assert_same(got, want)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("tile", [4, 100], ids=["tiles", "one-tile"])
def test_tile_pattern_linear(rank, tile, path):
    q = TilePattern(2, 1, tile)
    leaves = _operands(rank, N_IN)
    got = _after_inplace(lambda x, w, b: ops.tile_pattern_linear(x, w, b, q), leaves, path)
    want = _after_inplace(lambda x, w, b: ops.tile_linear_reference(x, w, b, q), leaves)
    _assert_same(got, want)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("offsets", [(0, 0), (0, 1)], ids=["shared-pair", "two-pairs"])
def test_grouped_row_pattern_linear_compact(rank, offsets, path):
    """Groups of one (out, in) offset pair share one GEMM, whose rows are split back into the groups' outputs."""
    ins = [RowPattern(2, o) for o in offsets]
    outs = [RowPattern(3, o, 2) for o in offsets]
    xs = [_operands(rank, q.kept_count(N_IN), seed)[0] for seed, q in enumerate(ins)]
    w, b = _operands(rank, 1)[1:]
    got = _after_inplace(
        lambda w, b, *xs: ops.grouped_row_pattern_linear_compact(list(xs), w, b, ins, outs), [w, b, *xs], path
    )
    want = _after_inplace(lambda w, b, *xs: ops.row_linear_reference(list(xs), w, b, ins, outs), [w, b, *xs])
    _assert_same(got, want)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("offsets", [(0,), (1, 1), (0, 1)], ids=["one-group", "shared-pair", "two-pairs"])
def test_grouped_row_pattern_linear(rank, offsets, path):
    ins = [RowPattern(2, o) for o in offsets]
    outs = [RowPattern(3, o, 2) for o in offsets]
    leaves = _operands(rank, N_IN)

    def reference(x, w, b):
        parts = x.tensor_split(len(offsets), -2)
        ys = []
        for part, q_in, q_out in zip(parts, ins, outs):
            y = ops.row_linear_reference(part[..., q_in.keep_mask(N_IN)], w, b, q_in, q_out)  # [*, B_g, k_out]
            full = y.new_zeros(*y.shape[:-1], N_OUT)
            full[..., q_out.keep_mask(N_OUT)] = y
            ys.append(full)
        return torch.cat(ys, -2)

    got = _after_inplace(lambda x, w, b: ops.grouped_row_pattern_linear(x, w, b, ins, outs), leaves)
    _assert_same(got, _after_inplace(reference, leaves))


@pytest.mark.parametrize(
    ("rank", "offsets"),
    [(1, (1,)), *((rank, offsets) for rank in (2, 3) for offsets in [(1,), (1, 1), (0, 1)])],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else f"rank{v}",
)  # several groups split a batch axis: x of rank 2 or more
def test_grouped_tile_pattern_linear(rank, offsets, path):
    patterns = [TilePattern(2, o, 4) for o in offsets]
    leaves = _operands(rank, N_IN)
    got = _after_inplace(lambda x, w, b: ops.grouped_tile_pattern_linear(x, w, b, patterns), leaves, path)
    want = _after_inplace(lambda x, w, b: ops.tile_linear_reference(x, w, b, patterns), leaves)
    _assert_same(got, want)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_registered_ops_called_directly(rank):
    leaves = _operands(rank, PIN.kept_count(N_IN))
    ints = (PIN.dp, PIN.keep, [PIN.offset], POUT.dp, POUT.keep, [POUT.offset])
    got = _after_inplace(lambda x, w, b: ops.row_linear([x], w, b, *ints)[0], leaves, "approxdrop")
    want = _after_inplace(lambda x, w, b: ops.row_linear_reference(x, w, b, PIN, POUT), leaves)
    _assert_same(got, want)
    leaves = _operands(rank, N_IN)
    got = _after_inplace(lambda x, w, b: ops.tile_linear(x, w, b, 2, 1, 4, [1]), leaves, "approxdrop")
    want = _after_inplace(lambda x, w, b: ops.tile_linear_reference(x, w, b, TilePattern(2, 1, 4)), leaves)
    _assert_same(got, want)


@pytest.mark.parametrize("op", ["row", "tile"])
def test_under_autocast(op):
    """Autocast takes the registered op (its autocast rule casts to bfloat16), as F.linear's rule does the
    reference: the same in-place results to bfloat16's precision."""
    if op == "row":
        leaves = _operands(3, PIN.kept_count(N_IN))
        run, ref = ops.row_pattern_linear, ops.row_linear_reference
        args = (PIN, POUT)
    else:
        leaves = _operands(3, N_IN)
        run, ref = ops.tile_pattern_linear, ops.tile_linear_reference
        args = (TilePattern(2, 1, 4),)

    def autocast(fn):
        def call(x, w, b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x, w, b, *args)

        return call

    got = _after_inplace(autocast(run), leaves, "approxdrop")
    want = _after_inplace(autocast(ref), leaves)
    for a, b in zip([*got[0], *got[1]], [*want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_static_row_linear(rank):
    """dp divides both widths and no residue wraps: the slots are the kept units in increasing order, the
    reference's."""
    q_in, q_out = RowPattern(2, 1), RowPattern(4, 1, 2)
    n_out = 8
    ins = ops.static_side(N_IN, q_in.dp, q_in.keep, torch.tensor(q_in.offset))
    outs = ops.static_side(n_out, q_out.dp, q_out.keep, torch.tensor(q_out.offset))
    x, _, _ = _operands(rank, q_in.kept_count(N_IN))
    w, b = torch.randn(n_out, N_IN), torch.randn(n_out)
    got = _after_inplace(lambda x, w, b: ops.static_row_linear(x, w, b, ins, outs), [x, w, b])
    want = _after_inplace(lambda x, w, b: ops.row_linear_reference(x, w, b, q_in, q_out), [x, w, b])
    _assert_same(got, want)
    got = _after_inplace(lambda x, w, b: ops.static_grouped_linear([x, x], w, b, [ins] * 2, [outs] * 2), [x, w, b])
    want = _after_inplace(lambda x, w, b: ops.row_linear_reference([x, x], w, b, [q_in] * 2, [q_out] * 2), [x, w, b])
    _assert_same(got, want)


def test_compiled_function_output():
    """A compiled function's output (the registered op's, traced), modified in place."""
    leaves = _operands(3, PIN.kept_count(N_IN))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w, b: ops.row_pattern_linear(x, w, b, PIN, POUT), backend="aot_eager")
    got = _after_inplace(compiled, leaves)
    want = _after_inplace(lambda x, w, b: ops.row_linear_reference(x, w, b, PIN, POUT), leaves)
    _assert_same(got, want)


LAW = ad.PatternDistribution(((2, 1),), (1.0,))
EXTENDED = ad.PatternDistribution(((2, 1), (4, 3)), (0.5, 0.5))


def _models():
    """(name, builder, input) of models whose last layer is a pattern linear on a compact path."""
    return [
        (
            "mlp-compact-3d",
            lambda: ad.ApproxDropoutMLP([16, 32, 4], 0.5, "row", distributions=[LAW], executor="compact"),
            lambda: torch.randn(2, 4, 16),
        ),
        (
            "mlp-extended-input-dropout",
            lambda: ad.ApproxDropoutMLP(
                [16, 32, 4],
                EXTENDED.expected_rate,
                "row-extended",
                distributions=[EXTENDED] * 2,
                input_dropout=True,
                executor="compact",
            ),
            lambda: torch.randn(2, 4, 16),
        ),
        (
            "ffn-compact-3d",
            lambda: ad.ApproxDropoutFFN(16, 32, 0.5, distributions=[LAW], executor="compact"),
            lambda: torch.randn(2, 4, 16),
        ),
        (
            "lstm-row",
            lambda: ad.ApproxDropoutLSTM(20, 8, 1, 0.5, "row", distributions=[LAW, LAW]),
            lambda: torch.randint(0, 20, (5, 3)),
        ),
    ]


@pytest.mark.parametrize(("builder", "make_x"), [m[1:] for m in _models()], ids=[m[0] for m in _models()])
def test_models(builder, make_x, monkeypatch):
    """A training model's output modified in place (LayerScale, an LSTM's logits.div_(T)), against its twin whose
    pattern linears run their reference (dense masked) twins, from the same draws."""
    torch.manual_seed(0)
    model = builder().train()
    twin = copy.deepcopy(model)
    x = make_x()
    gamma = torch.tensor(0.7, requires_grad=True)
    results = []
    for m, reference in ((model, False), (twin, True)):
        with monkeypatch.context() as patch:
            if reference:
                patch.setattr(linear, "transformed", lambda: True)
            torch.manual_seed(1)
            y = m(x)
            y = y[0] if isinstance(y, tuple) else y  # the LSTM's (logits, state)
            y = _inplace(y, gamma)
            (y * _probe(y)).sum().backward()
        results.append((y.detach(), [p.grad for p in m.parameters()], gamma.grad.clone()))
        gamma.grad = None
    draws = [getattr(m, "last_patterns", None) or m.last_pattern for m in (model, twin)]  # the FFN: one site
    assert draws[0] == draws[1] and draws[0] is not None
    (y, grads, g_gamma), (y_ref, grads_ref, g_gamma_ref) = results
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g_gamma, g_gamma_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
