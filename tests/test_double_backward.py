"""Second derivatives through the pattern linears (a backward with create_graph=True: double backward, a
gradient penalty): every op and path passes gradgradcheck in float64, and a model's gradient penalty has
the same gradients on the compact executor as on the masked one (plain PyTorch, the same numbers)."""

import copy

import pytest
import torch

from approxdrop import ApproxDropoutMLP, RowPattern, TilePattern
from approxdrop.ops import (
    grouped_row_pattern_linear_compact,
    grouped_tile_pattern_linear,
    row_pattern_linear,
    tile_pattern_linear,
)

F64 = torch.float64
OPS_NS = torch.ops.approxdrop


def _tensors(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=F64, requires_grad=True) for shape in shapes]


ROW_CASES = [
    (RowPattern(3, 1), RowPattern(2, 0), 9, 7),  # widths dp does not divide
    (RowPattern(4, 3, 2), RowPattern(5, 4, 3), 11, 10),  # runs that wrap the period
    (RowPattern(1, 0), RowPattern(2, 1), 6, 5),  # inputs all kept: W's kept rows, no block
]


@pytest.mark.parametrize("in_p, out_p, n_in, n_out", ROW_CASES)
def test_row_op_gradgradcheck_eager_and_registered(in_p, out_p, n_in, n_out):
    x, weight, bias = _tensors((3, in_p.kept_count(n_in)), (n_out, n_in), (n_out,))
    ints = (in_p.dp, in_p.keep, [in_p.offset], out_p.dp, out_p.keep, [out_p.offset])
    assert torch.autograd.gradgradcheck(lambda *t: row_pattern_linear(*t, in_p, out_p), (x, weight, bias))
    assert torch.autograd.gradgradcheck(lambda x, w, b: OPS_NS.row_linear([x], w, b, *ints)[0][0], (x, weight, bias))


@pytest.mark.parametrize(
    "in_ps, out_ps",
    [
        ([RowPattern(3, o) for o in (0, 1, 2, 1)], [RowPattern(2, o) for o in (1, 0, 1, 1)]),  # disjoint blocks
        ([RowPattern(3, o, 2) for o in (0, 2, 1)], [RowPattern(4, o, 3) for o in (3, 1, 1)]),  # overlapping blocks
    ],
)
def test_grouped_row_op_gradgradcheck_eager_and_registered(in_ps, out_ps):
    weight, bias = _tensors((7, 10), (7,))
    xs = _tensors(*[(2, q.kept_count(10)) for q in in_ps], seed=1)
    ints = (in_ps[0].dp, in_ps[0].keep, [q.offset for q in in_ps], out_ps[0].dp, out_ps[0].keep)
    ints += ([q.offset for q in out_ps],)

    def eager(w, b, *xs):
        return torch.cat([y.flatten() for y in grouped_row_pattern_linear_compact(xs, w, b, in_ps, out_ps)])

    def registered(w, b, *xs):
        return torch.cat([y.flatten() for y in OPS_NS.row_linear(list(xs), w, b, *ints)[0]])

    for op in (eager, registered):
        assert torch.autograd.gradgradcheck(op, (weight, bias, *xs))


@pytest.mark.parametrize("groups", [1, 3])
def test_tile_op_gradgradcheck_eager_and_registered(groups):
    x, weight, bias = _tensors((5, 9), (7, 9), (7,))
    patterns = [TilePattern(3, o, tile=2, keep=2) for o in (2, 0, 1)[:groups]]
    ints = (3, 2, 2, [q.offset for q in patterns])

    def eager(x, w, b):
        if groups == 1:
            return tile_pattern_linear(x, w, b, patterns[0])
        return grouped_tile_pattern_linear(x, w, b, patterns)

    assert torch.autograd.gradgradcheck(eager, (x, weight, bias))
    assert torch.autograd.gradgradcheck(lambda x, w, b: OPS_NS.tile_linear(x, w, b, *ints), (x, weight, bias))


@pytest.mark.parametrize("method", ["row", "row-g4"])
def test_a_gradient_penalty_trains_the_same_on_both_executors(method):
    base = ApproxDropoutMLP([6, 12, 12, 3], p=0.5, method=method).double()
    x = torch.randn(8, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    grads = {}
    for executor in ("compact", "masked"):
        model = copy.deepcopy(base)
        model.executor = executor
        torch.manual_seed(1)  # the same draws on both
        inputs = x.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad(model(inputs).pow(2).sum(), inputs, create_graph=True)
        grads[executor] = torch.autograd.grad(grad_x.pow(2).sum(), list(model.parameters()), allow_unused=True)
    for got, want in zip(grads["compact"], grads["masked"]):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want)
