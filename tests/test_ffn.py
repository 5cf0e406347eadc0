"""ApproxDropoutFFN: exact agreement with a dense masked reference (one pattern and batch groups), GEMM
work, eval = its nn.Sequential twin, state_dict in both directions, and argument errors."""

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from approxdrop import ApproxDropoutFFN, PatternDistribution, RowPattern
from approxdrop.models.ffn import FFN_METHODS

D_MODEL, D_HIDDEN = 6, 20
KEEP_TWO = [PatternDistribution(((3, 2), (5, 3)), (0.5, 0.5))]  # keep > 1 only: rate (1/3 + 2/5) / 2


class Recorder(nn.Module):
    """An activation that keeps what it computes: the shapes and values the block applied it to (a hook on the
    activation would make the block run every unit, as a hooked activation must see them)."""

    elementwise = True

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.outputs = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.outputs.append(out)
        return out


def twin(block: ApproxDropoutFFN) -> nn.Sequential:
    """The nn.Sequential the block stands for, with the block's weights."""
    seq = nn.Sequential(
        nn.Linear(block.d_model, block.d_hidden, bias=block.fc1.bias is not None),
        block.activation,
        nn.Dropout(block.p),
        nn.Linear(block.d_hidden, block.d_out, bias=block.fc2.bias is not None),
    ).to(block.fc1.weight.dtype)
    seq.load_state_dict(block.state_dict())
    return seq


def dense_reference(block: ApproxDropoutFFN, x: torch.Tensor, draw) -> torch.Tensor:
    """The block on full-size tensors, the hidden units multiplied by the step's mask * scale: one pattern,
    or one per group along the leading axis of x (tensor_split groups)."""
    h = block.activation(nn.functional.linear(x, block.fc1.weight, block.fc1.bias))  # [*, d_hidden]
    if isinstance(draw, RowPattern):
        mask = draw.keep_mask(block.d_hidden).to(x.dtype) * draw.scale  # [d_hidden]
    else:
        lead = x.shape[0] if x.dim() > 1 else 1
        mask = x.new_zeros(lead, block.d_hidden)  # [lead, d_hidden]
        for rows, q in zip(torch.tensor_split(torch.arange(lead), len(draw)), draw):
            mask[rows] = q.keep_mask(block.d_hidden).to(x.dtype) * q.scale
        mask = mask.reshape(lead, *[1] * (x.dim() - 2), block.d_hidden) if x.dim() > 1 else mask[0]
    return nn.functional.linear(h * mask, block.fc2.weight, block.fc2.bias)


@pytest.mark.parametrize("shape", [(7, D_MODEL), (5, 3, D_MODEL), (2, 2, 3, D_MODEL), (D_MODEL,)])
@pytest.mark.parametrize(
    "method, groups, laws",
    [
        ("row", None, None),
        ("row-g4", None, None),
        ("row-extended", None, None),
        ("row-extended", 1, KEEP_TWO),
        ("row-extended", 4, KEEP_TWO),
    ],
)
def test_training_forward_and_gradients_equal_the_dense_masked_block(shape, method, groups, laws):
    torch.manual_seed(0)
    p = 0.5 if laws is None else laws[0].expected_rate
    block = ApproxDropoutFFN(D_MODEL, D_HIDDEN, p, "gelu", method, groups, distributions=laws).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    expected_groups = groups or (4 if method == "row-g4" else 1)
    for _ in range(6):  # several steps: several draws
        y = block(x)
        draw = block.last_pattern
        assert isinstance(draw, RowPattern) if expected_groups == 1 else len(draw) == expected_groups
        if laws is not None:
            assert all(q.keep > 1 for q in ((draw,) if expected_groups == 1 else draw))
        inputs = [x, *block.parameters()]
        grads = torch.autograd.grad(y.sin().sum(), inputs)
        ref = dense_reference(block, x, draw)
        ref_grads = torch.autograd.grad(ref.sin().sum(), inputs)
        assert y.shape == (*shape[:-1], D_MODEL)
        torch.testing.assert_close(y, ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r)


def test_groups_split_the_leading_axis_so_every_token_of_a_sample_shares_its_pattern():
    law = PatternDistribution(((4, 1),), (1.0,))
    block = ApproxDropoutFFN(D_MODEL, 16, 0.75, method="row-g4", distributions=[law], executor="compact")
    x = torch.randn(4, 5, D_MODEL)  # [B, T, d]: 4 samples, one per group
    y = block(x)
    offsets = [q.offset for q in block.last_pattern]
    assert sorted(offsets) == [0, 1, 2, 3]  # complementary offsets
    for b, q in enumerate(block.last_pattern):  # every token of sample b: b's group's units
        h = block.activation(block.fc1(x[b])) * (q.keep_mask(16) * q.scale)  # [T, 16]
        torch.testing.assert_close(y[b], block.fc2(h))


def gemm_flops(block: ApproxDropoutFFN, x: torch.Tensor) -> float:
    """Floating-point operations of the GEMMs of one training step (forward and backward)."""
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        block(x).sum().backward()
    return sum(e.flops for e in prof.events() if e.name in ("aten::mm", "aten::addmm", "aten::bmm"))


@pytest.mark.parametrize("groups", [1, 4])
def test_both_gemms_shrink_to_the_kept_share(groups):
    law = [PatternDistribution(((4, 1),), (1.0,))]  # keep a quarter of the hidden units
    block = ApproxDropoutFFN(16, 64, 0.75, method="row", groups=groups, distributions=law, executor="compact")
    dense = ApproxDropoutFFN(16, 64, 0.75, method="bernoulli")
    x = torch.randn(8, 3, 16, requires_grad=True)
    assert gemm_flops(block, x) == gemm_flops(dense, x) / 4
    block._modules["1"] = recorder = Recorder(block.activation)
    block(x)
    # the first GEMM wrote the kept units only; with groups, each group's samples (the leading axis) their own
    shapes = [(8, 3, 16)] if groups == 1 else [(2, 3, 16)] * 4
    assert [tuple(h.shape) for h in recorder.outputs] == shapes


@pytest.mark.parametrize("method", FFN_METHODS)
def test_eval_is_the_sequential_twin_without_dropout(method):
    torch.manual_seed(1)
    block = ApproxDropoutFFN(D_MODEL, D_HIDDEN, 0.4, method=method).eval()
    x = torch.randn(3, 4, D_MODEL)
    assert torch.equal(block(x), twin(block).eval()(x))
    assert block.last_pattern is None


@pytest.mark.parametrize("method, p", [("none", 0.4), ("row", 0.0), ("row-g4", 0.0)])
def test_no_dropout_trains_as_the_dense_block(method, p):
    block = ApproxDropoutFFN(D_MODEL, D_HIDDEN, p, method=method)
    x = torch.randn(5, D_MODEL)
    assert torch.equal(block(x), twin(block).eval()(x)) and block.last_pattern is None


def test_bernoulli_is_nn_dropout():
    block = ApproxDropoutFFN(D_MODEL, D_HIDDEN, 0.3, activation="relu", method="bernoulli")
    seq, x = twin(block).train(), torch.randn(5, D_MODEL)
    torch.manual_seed(3)
    y = block(x)
    torch.manual_seed(3)
    assert torch.equal(y, seq(x)) and not torch.equal(y, seq.eval()(x))  # the same mask, and one was applied


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_loads_in_both_directions(bias):
    block = ApproxDropoutFFN(D_MODEL, D_HIDDEN, 0.3, activation=nn.PReLU(), bias=bias)
    names = ["0.weight", "0.bias", "1.weight", "3.weight", "3.bias"] if bias else ["0.weight", "1.weight", "3.weight"]
    assert list(block.state_dict()) == names
    seq = nn.Sequential(
        nn.Linear(D_MODEL, D_HIDDEN, bias), nn.PReLU(), nn.Dropout(0.3), nn.Linear(D_HIDDEN, D_MODEL, bias)
    )
    with torch.no_grad():
        seq[1].weight.fill_(0.1)
    block.load_state_dict(seq.state_dict())  # Sequential -> block
    for name, value in seq.state_dict().items():
        assert torch.equal(block.state_dict()[name], value)
    fresh = nn.Sequential(
        nn.Linear(D_MODEL, D_HIDDEN, bias), nn.PReLU(), nn.Dropout(0.3), nn.Linear(D_HIDDEN, D_MODEL, bias)
    )
    fresh.load_state_dict(block.state_dict())  # block -> Sequential
    x = torch.randn(4, D_MODEL)
    assert torch.equal(fresh.eval()(x), block.eval()(x)) and torch.equal(seq.eval()(x), block(x))


def test_entries_are_the_sequential_ones_and_from_modules_shares_the_parameters():
    fc1, act, fc2 = nn.Linear(4, 10), nn.SiLU(), nn.Linear(10, 3)
    block = ApproxDropoutFFN.from_modules(fc1, act, fc2, 0.25)
    assert block.fc1 is fc1 and block.activation is act and block.fc2 is fc2 and block.dropout.p == 0.25
    assert [id(q) for q in block.parameters()] == [id(fc1.weight), id(fc1.bias), id(fc2.weight), id(fc2.bias)]
    assert (block.d_model, block.d_hidden, block.d_out) == (4, 10, 3)
    assert block(torch.randn(2, 4)).shape == (2, 3)


def test_private_generator_gives_reproducible_patterns():
    def run(seed):
        block = ApproxDropoutFFN(D_MODEL, 64, 0.5, method="row-g4", generator=torch.Generator().manual_seed(seed))
        draws = []
        for _ in range(5):
            block(torch.randn(8, D_MODEL))
            draws.append(block.last_pattern)
        return draws

    assert run(0) == run(0) and run(0) != run(1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ApproxDropoutFFN(6, 8, 0.3, method="tile"), r"method must be one of .*'row-g4'.*got 'tile'"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, method="shared"), "got 'shared'"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, activation="softmax"), r"activation must be one of \('gelu'"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, activation=nn.Softmax(-1)), "Softmax is not a known elementwise"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, activation=nn.LayerNorm(8)), "may mix units"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, activation=torch.relu), "must be an nn.Module"),
        (lambda: ApproxDropoutFFN(6, 8, 1.0), r"p must be a number in \[0, 1\), got 1.0"),
        (lambda: ApproxDropoutFFN(0, 8, 0.3), r"d_model must be in \[1, inf\), got 0"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, d_out=0), "d_out must be in"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, method="bernoulli", groups=4), "groups=4: batch groups are for row"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, groups=0), r"groups must be in \[1, 1024\], got 0"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, distributions=KEEP_TWO), "not the model's p=0.3"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3, method="none", distributions=KEEP_TWO), "for pattern methods"),
        (lambda: ApproxDropoutFFN(6, 8, 0.3)(torch.randn(2, 5)), r"last dimension 6, got shape \(2, 5\)"),
        (lambda: ApproxDropoutFFN.from_modules(nn.Linear(4, 8), nn.ReLU(), nn.Linear(6, 4), 0.3), "do not chain"),
        (lambda: ApproxDropoutFFN.from_modules(nn.Conv1d(4, 8, 1), nn.ReLU(), nn.Linear(8, 4), 0.3), "fc1 must be"),
    ],
)
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------- the gated block (T5 v1.1, GEGLU)


def _gated(groups: int, executor: str, static: bool, seed: int = 0):
    from approxdrop.models.gated import GatedApproxDropoutFFN

    torch.manual_seed(seed)
    wi_0, wi_1, wo = nn.Linear(12, 20), nn.Linear(12, 20), nn.Linear(20, 12)
    method = "row-extended" if groups == 1 else "row-g4"
    ffn = ApproxDropoutFFN.from_modules(
        wi_0, nn.GELU(), wo, 0.5, method, groups, executor=executor, static_shapes=static,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return GatedApproxDropoutFFN(ffn, wi_1).double().train()


@pytest.mark.parametrize("groups", [1, 3, 4])
@pytest.mark.parametrize("executor, static", [("compact", False), ("masked", False), ("auto", True)])
@pytest.mark.parametrize("shape", [(7, 12), (5, 3, 12)])
def test_the_gated_block_equals_its_dense_masked_reference_with_any_groups(groups, executor, static, shape):
    """wo((gelu(wi_0 x) * wi_1 x) * mask), each sample (leading axis) masked by its group's pattern: outputs and
    every gradient, on the compact, masked and static paths."""
    from approxdrop.models.sites import group_mask

    block = _gated(groups, executor, static)
    x = torch.randn(*shape, dtype=torch.float64)
    y = block(x)
    y.square().sum().backward()
    drawn = block.ffn.last_pattern
    patterns = drawn if isinstance(drawn, tuple) else (drawn,)
    assert len(patterns) == groups
    twin = _gated(groups, executor, static)  # the same weights
    mask = group_mask(patterns, shape[0], 20, torch.float64, x.device)  # [B, d_hidden]
    mask = mask.view(shape[0], *(1,) * (len(shape) - 2), 20)
    h = torch.nn.functional.gelu(twin.wi_0(x)) * twin.wi_1(x)
    y_ref = twin.wo(h * mask)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for name in ("wi_0", "wi_1", "wo"):
        for got, want in zip(getattr(block, name).parameters(), getattr(twin, name).parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12, msg=name)
