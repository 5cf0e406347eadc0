"""ApproxDropoutMLP: patterns per site per step, eval = dense, exact agreement with a dense masked
reference, reproducibility, optimizers, and argument errors."""

import pytest
import torch
from test_ffn import Recorder
from torch import nn

from approxdrop import METHODS, ApproxDropoutMLP, PatternDistribution, RowPattern, TilePattern, mlp_gemm_work

SIZES = [20, 17, 13, 5]


def dense_reference(model: ApproxDropoutMLP, x: torch.Tensor, draws) -> torch.Tensor:
    """The same network on full-size tensors with each site's mask applied explicitly."""
    last = len(model.linears) - 1
    for i, linear in enumerate(model.linears):
        weight, draw = linear.weight, draws[i]
        if isinstance(draw, RowPattern):
            x = x * draw.keep_mask(x.shape[-1]) * draw.scale
        elif isinstance(draw, TilePattern):
            weight = weight * draw.keep_mask(*weight.shape) * draw.scale
        elif isinstance(draw, torch.Tensor):  # shared: kept unit indices
            mask = torch.zeros(x.shape[-1], dtype=torch.bool)
            mask[draw] = True
            x = x * mask / (1 - model.p)
        x = nn.functional.linear(x, weight, linear.bias)
        if i < last:
            x = model.activation(x)
    return x


@pytest.mark.parametrize("method", ["row", "tile", "shared"])
@pytest.mark.parametrize("input_dropout", [False, True])
def test_training_forward_and_backward_equal_the_dense_masked_network(method, input_dropout):
    torch.manual_seed(0)
    model = ApproxDropoutMLP(SIZES, 0.5, method=method, tile=4, input_dropout=input_dropout).double()
    x = torch.randn(6, SIZES[0], dtype=torch.float64)
    for _ in range(5):  # several steps: several draws
        y = model(x)
        draws = model.last_patterns
        assert (draws[0] is not None) == input_dropout and all(d is not None for d in draws[1:])
        grads = torch.autograd.grad(y.square().sum(), list(model.parameters()))
        ref = dense_reference(model, x, draws)
        ref_grads = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
        torch.testing.assert_close(y, ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("method", METHODS)
def test_eval_mode_is_the_dense_network_without_dropout(method):
    torch.manual_seed(1)
    model = ApproxDropoutMLP(SIZES, 0.7, method=method, tile=4, input_dropout=True).eval()
    x = torch.randn(8, SIZES[0])
    torch.testing.assert_close(model(x), dense_reference(model, x, [None] * 3))
    assert model.last_patterns == [None, None, None]


def test_parameters_are_the_linear_weights_and_biases_in_layer_order():
    model = ApproxDropoutMLP([4, 3, 2], 0.5)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(3, 4), (3,), (2, 3), (2,)]
    assert isinstance(model.activation, nn.ReLU)


def test_one_pattern_per_site_per_step_drawn_from_the_site_distribution():
    dist = PatternDistribution(((2, 1), (4, 3)), (0.5, 0.5))
    model = ApproxDropoutMLP([6, 8, 8, 2], 0.375, method="row", distributions=[dist, dist])
    seen = set()
    for _ in range(200):
        model(torch.randn(3, 6))
        seen.update((d.dp, d.keep, d.offset) for d in model.last_patterns[1:])
    assert seen == {(2, 1, 0), (2, 1, 1)} | {(4, 3, o) for o in range(4)}


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_identical_runs(method):
    def run():
        torch.manual_seed(123)
        model = ApproxDropoutMLP(SIZES, 0.5, method=method, tile=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, t = torch.randn(16, SIZES[0]), torch.randint(5, (16,))
        losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), t)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in model.parameters()]

    (l1, p1), (l2, p2) = run(), run()
    assert l1 == l2 and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_private_generator_makes_patterns_independent_of_global_seed():
    draws = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        model = ApproxDropoutMLP(SIZES, 0.6, generator=torch.Generator().manual_seed(9))
        model(torch.randn(2, SIZES[0]))
        draws.append(model.last_patterns)
    assert draws[0] == draws[1]


@pytest.mark.parametrize("optimizer, lr", [(torch.optim.SGD, 0.2), (torch.optim.Adam, 1e-2), (torch.optim.AdamW, 1e-2)])
@pytest.mark.parametrize("method", ["row", "tile"])
def test_trains_with_any_optimizer_and_dropped_weights_get_zero_gradient(optimizer, lr, method):
    torch.manual_seed(2)
    model = ApproxDropoutMLP([10, 32, 32, 3], 0.5, method=method, tile=8)
    opt = optimizer(model.parameters(), lr=lr)
    x = torch.randn(128, 10)
    t = (x @ torch.randn(10, 3)).argmax(1)  # a learnable labelling

    def eval_loss():
        with torch.no_grad():
            return nn.functional.cross_entropy(model.eval()(x), t).item()

    before = eval_loss()
    for _ in range(120):
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        opt.step()
    grad = model.linears[1].weight.grad
    draw_in, draw_out = model.last_patterns[1], model.last_patterns[2]  # the last step's draws
    assert eval_loss() < 0.3 * before  # it learns (searched default distributions)
    if method == "row":
        kept = draw_out.keep_mask(32)[:, None] & draw_in.keep_mask(32)[None, :]
    else:
        kept = draw_in.keep_mask(32, 32)
    assert (grad[~kept] == 0).all() and grad[kept].abs().sum() > 0


def test_row_method_runs_the_hidden_gemm_on_the_kept_units_only():
    model = ApproxDropoutMLP(
        [8, 12, 12, 2], 0.5, method="row", executor="compact", generator=torch.Generator().manual_seed(0)
    )
    model.activation = recorder = Recorder(model.activation)
    model(torch.randn(4, 8))
    shapes = [tuple(h.shape) for h in recorder.outputs]
    kept = [d.kept_count(12) for d in model.last_patterns[1:]]
    assert shapes == [(4, kept[0]), (4, kept[1])] and max(kept) < 12  # both sites dropped units


def test_row_auto_executor_masks_dense_gemms_where_they_are_too_small_to_shrink():
    """At a tiny size "auto" runs the masked executor (full-width activations); the outputs and gradients
    are the compact path's, from the same draws. At the paper size it runs compact."""
    x = torch.randn(4, 8)
    models = {}
    for executor in ("auto", "compact"):
        torch.manual_seed(0)
        models[executor] = ApproxDropoutMLP(
            [8, 12, 12, 2], 0.5, method="row", executor=executor, generator=torch.Generator().manual_seed(0)
        )
    assert models["auto"].executor_for(x) == "masked"
    shapes = []
    hook = models["auto"].activation.register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    outs = {e: m(x) for e, m in models.items()}
    hook.remove()
    assert shapes == [(4, 12), (4, 12)]
    assert models["auto"].last_patterns == models["compact"].last_patterns
    torch.testing.assert_close(outs["auto"], outs["compact"])
    for out in outs.values():
        out.square().sum().backward()
    for a, b in zip(models["auto"].parameters(), models["compact"].parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    paper = ApproxDropoutMLP([784, 2048, 2048, 10], 0.5, method="row")
    assert paper.executor_for(torch.empty(128, 784)) == "compact"


def test_p_zero_is_the_dense_network_in_training_too():
    model = ApproxDropoutMLP(SIZES, 0.0, method="row")
    x = torch.randn(3, SIZES[0])
    torch.testing.assert_close(model(x), dense_reference(model, x, [None] * 3))


@pytest.mark.parametrize("method", ["row", "tile", "shared"])
def test_bfloat16_autocast_trains_on_cpu(method):
    """Under CPU autocast the pattern GEMMs run in bfloat16, forward and backward; the parameters
    stay float32 and get finite float32 gradients close to the float32 network's."""
    torch.manual_seed(0)
    model = ApproxDropoutMLP([20, 48, 32, 5], 0.5, method=method, tile=8, generator=torch.Generator())
    x = torch.randn(16, 20)
    grads = {}
    for autocast in (False, True):
        model.generator.manual_seed(3)  # the same draws in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = model(x)
        assert y.dtype == (torch.bfloat16 if autocast else torch.float32)
        model.zero_grad()
        y.float().square().mean().backward()
        grads[autocast] = [param.grad.clone() for param in model.parameters()]
    assert all(param.dtype == torch.float32 for param in model.parameters())
    for ours, full in zip(grads[True], grads[False]):
        assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
        assert (ours - full).norm() <= 0.05 * full.norm() + 1e-6


class _Square(nn.Module):
    elementwise = True  # declared: acts on each unit alone

    def forward(self, x):
        return x * x


@pytest.mark.parametrize(
    "activation", [nn.GELU(), nn.SiLU(), nn.Tanh(), nn.LeakyReLU(0.1), nn.PReLU(), nn.Sequential(nn.ELU()), _Square()]
)
def test_elementwise_activations_are_accepted_and_run_on_the_kept_units(activation):
    torch.manual_seed(3)
    model = ApproxDropoutMLP(SIZES, 0.5, method="row", activation=activation).double()
    x = torch.randn(4, SIZES[0], dtype=torch.float64)
    torch.testing.assert_close(model(x), dense_reference(model, x, model.last_patterns))


@pytest.mark.parametrize("method", ["row", "bernoulli"])
@pytest.mark.parametrize(
    "activation, message",
    [
        (nn.Softmax(dim=-1), "activation nn.Softmax is not a known elementwise module.*see only the kept units"),
        (nn.LayerNorm(17), "nn.LayerNorm is not a known elementwise module"),
        (nn.PReLU(17), "nn.PReLU has 17 slopes, one per unit"),  # the kept units would get the wrong slopes
        (nn.Sequential(nn.ReLU(), nn.Softmin(dim=-1)), "nn.Sequential is not"),
        (torch.relu, "activation must be an nn.Module"),
    ],
)
def test_an_activation_that_may_mix_units_is_refused_for_every_method(method, activation, message):
    with pytest.raises(ValueError, match=message):
        ApproxDropoutMLP([20, 17, 17, 5], 0.5, method=method, activation=activation)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: ApproxDropoutMLP([10, 5, 3], 0.5, distributions=[PatternDistribution(((16, 1),), (1.0,))]),
            r"distributions\[0\] has expected rate 0.9375, not the model's p=0.5 \(tolerance 1e-06\)",
        ),
        (
            lambda: ApproxDropoutMLP([10, 5, 3], 0.5, distributions=[PatternDistribution(((2, 1),), (1.0,), n=48)]),
            r"distributions\[0\] was built for n=48, but its site has 5 units",
        ),
        (
            lambda: ApproxDropoutMLP(
                [10, 40, 3],
                0.5,
                method="tile",
                tile=8,
                distributions=[PatternDistribution(((2, 1),), (1.0,), "tile", 8, n=4)],
            ),
            r"built for n=4, but its site has 5 tiles \(8 x 8\)",
        ),
    ],
)
def test_a_given_law_must_fit_its_site(make, message):
    with pytest.raises(ValueError, match=message):
        make()
    ApproxDropoutMLP([10, 5, 3], 0.5, distributions=[PatternDistribution(((2, 1),), (1.0,), n=5)])  # fits


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ApproxDropoutMLP([10], 0.5), "at least an input and an output"),
        (lambda: ApproxDropoutMLP([10, 0, 3], 0.5), "sizes\\[1\\] must be in"),
        (lambda: ApproxDropoutMLP([10, 5.5, 3], 0.5), "sizes\\[1\\] must be an int, got 5.5"),
        (lambda: ApproxDropoutMLP([10, 5, 3], 1.0), "p must be a number in \\[0, 1\\), got 1.0"),
        (lambda: ApproxDropoutMLP([10, 5, 3], -0.2), "got -0.2"),
        (lambda: ApproxDropoutMLP([10, 5, 3], 0.5, method="gaussian"), "method must be one of"),
        (lambda: ApproxDropoutMLP([10, 5, 3], 0.5, method="tile", tile=0), "tile must be in"),
        (lambda: ApproxDropoutMLP([10, 5, 3], 0.5, distributions=[]), "one distribution per dropout site \\(1\\)"),
        (
            lambda: ApproxDropoutMLP([10, 5, 3], 0.5, method="bernoulli", distributions=[]),
            "distributions are for pattern methods",
        ),
        (
            lambda: ApproxDropoutMLP(
                [10, 5, 3], 0.5, method="tile", distributions=[PatternDistribution(((2, 1),), (1.0,))]
            ),
            "needs tile PatternDistributions",
        ),
        (lambda: ApproxDropoutMLP([10, 5, 3], 0.5)(torch.randn(2, 9)), "last dimension 10, got shape \\(2, 9\\)"),
    ],
)
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "sizes, p, name, message",
    [
        ([784, 2048, 10], 1.5, "row", r"dropout rate p must be in \[0.0, 1.0\], got 1.5"),  # was a negative work
        ([784, 2048, 10], -1, "row", r"dropout rate p must be in \[0.0, 1.0\], got -1"),  # was more than dense
        ([784, 2048, 10], 0.5, "torch", "method must be one of .* for the mlp models, got 'torch'"),
        ([784], 0.5, "row", "sizes must be a sequence of at least two widths"),  # was a ZeroDivisionError
        ([784, 0, 10], 0.5, "row", r"sizes\[1\] must be in \[1, inf\), got 0"),  # was a ZeroDivisionError at [0, 0]
        ([784, 20.5, 10], 0.5, "row", r"sizes\[1\] must be an int, got 20.5"),
        ("784", 0.5, "row", "sizes must be a sequence of at least two widths"),
    ],
)
def test_mlp_gemm_work_refuses_bad_arguments_by_name(sizes, p, name, message):
    with pytest.raises(ValueError, match=message):
        mlp_gemm_work(sizes, p, name)


def test_mlp_gemm_work_takes_p_up_to_one_its_limit():
    assert mlp_gemm_work([4, 4, 4], 1.0, "row") == 0.0 and mlp_gemm_work([4, 4, 4], 0.0, "row") == 1.0


@pytest.mark.parametrize("kind", ["mlp", "ffn", "lstm"])
def test_a_model_built_on_the_meta_device_searches_its_law_on_the_cpu(kind, tmp_path, monkeypatch):
    """Deferred initialisation (build under torch.device("meta"), then to_empty) with no law cached yet: the
    search runs on the CPU whatever the default device, and the model then trains."""
    from approxdrop import ApproxDropoutFFN, ApproxDropoutLSTM
    from approxdrop.search import cache

    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path))
    cache.clear_memory()
    make = {
        "mlp": lambda: ApproxDropoutMLP([4, 23, 2], 0.37, "row"),
        "ffn": lambda: ApproxDropoutFFN(4, 23, 0.37),
        "lstm": lambda: ApproxDropoutLSTM(10, 23, 2, 0.37, "row"),
    }[kind]
    with torch.device("meta"):
        model = make()
    model.to_empty(device="cpu")
    for param in model.parameters():
        nn.init.normal_(param, std=0.1)
    y = model(torch.randint(10, (3, 4)) if kind == "lstm" else torch.randn(8, 4))
    y = y[0] if isinstance(y, tuple) else y
    drawn = [model.last_pattern] if kind == "ffn" else model.last_patterns
    assert torch.isfinite(y).all() and any(q is not None for q in drawn)
    cache.clear_memory()


@pytest.mark.parametrize("method", METHODS)
def test_a_training_step_runs_under_fake_tensor_mode_on_real_draws(method):
    """Shape inference of a whole step (FakeTensorMode): the draws are made on real values, the step on fake
    tensors, and a real step afterwards is untouched by it."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    sizes = [12, 24, 24, 3]
    with FakeTensorMode():
        model = ApproxDropoutMLP(sizes, p=0.6, method=method, groups=3 if method == "row" else None)
        y = model(torch.randn(9, 12))
        y.sum().backward()
    assert isinstance(y, FakeTensor) and y.shape == (9, 3)
    assert all(isinstance(param.grad, FakeTensor) for param in model.parameters())
    real = ApproxDropoutMLP(sizes, p=0.6, method=method, groups=3 if method == "row" else None)
    out = real(torch.randn(9, 12))
    assert type(out) is torch.Tensor and torch.isfinite(out).all()
