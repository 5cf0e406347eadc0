"""Compiled and graphed training stays random (issue 16, item 6): under torch.compile (default and
fullgraph=True) each step draws a new pattern and matches eager from the same generator state, with a
bounded number of compiles; torch.jit.trace and CUDA graph capture refuse to freeze a pattern."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import approxdrop as ad
from approxdrop.models.sites import PENDING

STEPS = 6


def _twins(make):
    """Two identical models with generators in the same state: one runs eagerly, one compiled."""
    torch.manual_seed(0)
    eager = make(torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    return eager, make(torch.Generator().manual_seed(1))


def _draws(model):
    return model.last_patterns if hasattr(model, "last_patterns") else [model.last_pattern]


def _train_side_by_side(eager, twin, compiled, x, draw_ahead: bool) -> set:
    """STEPS forward/backward steps of both; the compiled twin's patterns, outputs and gradients must be
    the eager model's. Returns the distinct draws seen."""
    seen = set()
    for _ in range(STEPS):
        for model in (eager, twin):
            model.zero_grad()
        y_eager = eager(x)
        y_eager.square().sum().backward()
        if draw_ahead:
            assert ad.draw_patterns(twin) == 1
        y = compiled(x)
        y.square().sum().backward()
        assert _draws(twin) == _draws(eager)
        torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)  # inductor's GELU may round differently
        for a, b in zip(twin.parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        seen.add(tuple(_draws(twin)))
    return seen


@pytest.mark.parametrize(
    ("kind", "fullgraph"),
    [("mlp", True), ("ffn", False)],
    ids=["mlp-fullgraph", "ffn-default"],
)
def test_compiled_training_draws_fresh_patterns_matching_eager(kind, fullgraph):
    """Every compiled step takes a pattern drawn by draw_patterns (a new one each step), the same as the
    eager twin's, and the forward compiles at most 1 + 2 per site times (dp and offset turn symbolic;
    keep is always 1 in the paper family), however many patterns occur."""
    if kind == "mlp":
        eager, twin = _twins(lambda g: ad.ApproxDropoutMLP([8, 16, 16, 4], 0.5, method="row", generator=g))
        sites = 2
    else:
        eager, twin = _twins(lambda g: ad.ApproxDropoutFFN(8, 16, 0.5, generator=g))
        sites = 1
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(twin, fullgraph=fullgraph)
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False):  # count from a cold start
        seen = _train_side_by_side(eager, twin, compiled, torch.randn(6, 8), draw_ahead=True)
    assert counters["stats"]["unique_graphs"] <= 1 + 2 * sites
    assert len(seen) >= 2, f"the patterns must change from step to step, saw {seen}"


def test_default_compile_draws_in_forward_without_draw_patterns():
    """Without draw_patterns, torch.compile's default mode breaks the graph at the draw (one clean break,
    not an opaque one) and still draws a fresh pattern each step, the eager one."""
    eager, twin = _twins(lambda g: ad.ApproxDropoutMLP([8, 16, 16, 4], 0.5, generator=g))
    torch._dynamo.reset()
    compiled = torch.compile(twin, backend="eager")  # Dynamo alone: the break and the draws are its doing
    seen = _train_side_by_side(eager, twin, compiled, torch.randn(6, 8), draw_ahead=False)
    assert len(seen) >= 3


def test_the_default_grouped_mlp_runs_its_groups_eagerly_under_compile():
    """The default MLP (row-g4: grouped patterns, whose GEMMs depend on the drawn offsets) compiles with a
    graph break around its grouped layers and matches eager step by step; fullgraph=True says to use
    method="row"."""
    eager, twin = _twins(lambda g: ad.ApproxDropoutMLP([8, 16, 16, 4], 0.5, generator=g))
    assert twin.groups == 4
    torch._dynamo.reset()
    seen = _train_side_by_side(eager, twin, torch.compile(twin, backend="eager"), torch.randn(6, 8), draw_ahead=True)
    assert len(seen) >= 2 and all(len(site) == 4 for draws in seen for site in draws if site is not None)
    torch._dynamo.reset()
    ad.draw_patterns(twin)
    with pytest.raises(Exception, match='method="row"'):
        torch.compile(twin, fullgraph=True, backend="eager")(torch.randn(6, 8))


def frames_compiled(model, shape, steps: int, draw_ahead: bool) -> list[int]:
    """The frames Dynamo has compiled after each of ``steps`` training steps of ``torch.compile(model)`` (eager
    backend) on random inputs of ``shape``, patterns drawn ahead (``draw_patterns``) or in the forward."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    frames = []
    for _ in range(steps):
        if draw_ahead:
            ad.draw_patterns(model)
        compiled(torch.randn(*shape)).square().sum().backward()
        frames.append(counters["frames"]["total"])
    return frames


@pytest.mark.parametrize("method", ["row-g4", "tile-g4"])
@pytest.mark.parametrize("draw_ahead", [True, False])
def test_the_default_grouped_mlp_stops_recompiling_under_compile(draw_ahead, method):
    """Groups of one offset share a pattern object (the law's table), and Dynamo guarded on which groups of the
    draw it read shared one: each new sharing recompiled the forward, until the recompile limit, after which
    the forward ran eagerly for good. The draws are now taken inside the eager grouped call: two frames compiled
    in 20 steps (the forward and the code after its graph break), and no more."""
    model = ad.ApproxDropoutMLP([8, 16, 16, 4], 0.5, method, tile=2, generator=torch.Generator().manual_seed(0))
    frames = frames_compiled(model, (6, 8), 20, draw_ahead)
    assert frames[-1] <= 2, frames


@pytest.mark.parametrize("draw_ahead", [True, False])
def test_a_grouped_ffn_and_a_converted_encoder_stop_recompiling_under_compile(draw_ahead):
    """The FFN took its grouped draw where Dynamo read it, as the MLP did: 6 and 13 frames in 20 steps for an FFN,
    14 and 21 for a converted 2-layer encoder, growing with steps. Now the same count at 40 steps as at 20."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    ad.convert(encoder, p=0.5, method="row-g4")
    ffn = ad.ApproxDropoutFFN(8, 16, 0.5, method="row-g4")
    for model, shape, most in ((ffn, (6, 8), 2), (encoder, (6, 5, 16), 6)):
        frames = frames_compiled(model, shape, 40, draw_ahead)
        assert frames[19] <= most and frames[-1] == frames[19], (type(model).__name__, frames)


@pytest.mark.parametrize("executor", ["compact", "masked"])
def test_the_grouped_lstm_runs_its_groups_eagerly_under_compile(executor):
    """The grouped LSTM (row-g4) compiles with a graph break around its grouped layers and decoder, as the
    MLP does, and matches eager step by step (its offsets used to turn symbolic after a few steps and crash
    the trace); fullgraph=True says to use static_shapes=True or method="row"."""
    x = torch.randint(11, (4, 5))  # [T, B]
    eager, twin = _twins(lambda g: ad.ApproxDropoutLSTM(11, 8, 2, 0.5, "row-g4", executor=executor, generator=g))
    torch._dynamo.reset()
    compiled = torch.compile(twin, backend="eager")
    seen = set()
    for _ in range(STEPS):
        for model in (eager, twin):
            model.zero_grad()
        y_eager = eager(x)[0]  # [T, B, V]
        y_eager.square().sum().backward()
        assert ad.draw_patterns(twin) == 1
        y = compiled(x)[0]
        y.square().sum().backward()
        assert twin.last_patterns == eager.last_patterns
        torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
        for a, b in zip(twin.parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        seen.add(tuple(tuple(site) for site in twin.last_patterns))
    assert len(seen) >= 2
    torch._dynamo.reset()
    ad.draw_patterns(twin)
    with pytest.raises(Exception, match="static_shapes=True"):
        torch.compile(twin, fullgraph=True, backend="eager")(x)


def test_fullgraph_without_draw_patterns_says_what_to_do():
    """Under fullgraph=True the draw cannot be traced: the error names draw_patterns (it used to be a
    data-dependent-guard error from inside PatternDistribution.sample)."""
    model = ad.ApproxDropoutFFN(8, 16, 0.5)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="draw_patterns"):
        compiled(torch.randn(4, 8))


def test_draw_patterns_is_used_once_and_only_by_drawing_modules():
    """A pending draw serves one forward; eval-mode and non-drawing modules get none."""
    net = torch.nn.Sequential(ad.ApproxDropoutFFN(8, 16, 0.5), ad.ApproxDropoutFFN(8, 16, 0.5, method="bernoulli"))
    assert ad.draw_patterns(net) == 1
    pending = getattr(net[0], PENDING)
    x = torch.randn(3, 8)
    net(x)
    assert [net[0].last_pattern] == pending and getattr(net[0], PENDING) is None
    assert getattr(net[1], PENDING, None) is None
    net.eval()
    assert ad.draw_patterns(net) == 0


def test_jit_trace_refuses_to_freeze_a_training_pattern():
    """torch.jit.trace would replay one pattern forever: in training mode it raises and says why; in
    eval mode (no dropout) the trace works and matches the model."""
    for model in (ad.ApproxDropoutMLP([8, 16, 4], 0.5), ad.ApproxDropoutFFN(8, 16, 0.5)):
        x = torch.randn(4, 8)
        with pytest.raises(RuntimeError, match="torch.jit.trace would freeze"):
            torch.jit.trace(model, x)
        model.eval()
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x))
    torch.jit.trace(ad.ApproxDropoutFFN(8, 16, 0.5, method="bernoulli"), x, check_trace=False)  # nothing drawn


@pytest.fixture
def capturing(monkeypatch):
    """Pretend a CUDA stream is capturing a graph (the check a GPU-less machine can run)."""
    state = {"on": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["on"])
    return state


def test_cuda_graph_capture_refuses_to_draw(capturing):
    """A draw during capture would be replayed at every replay: it raises; patterns drawn ahead by
    draw_patterns (outside the capture) are used instead, one graph per pattern_key."""
    model = ad.ApproxDropoutMLP([8, 16, 16, 4], 0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 8)
    capturing["on"] = True
    with pytest.raises(RuntimeError, match="CUDA graph capture"):
        model(x)
    capturing["on"] = False
    ad.draw_patterns(model)
    key = ad.pattern_key(model)
    capturing["on"] = True
    model(x)  # the "capture" runs with the pattern drawn ahead
    assert key == (tuple(model.last_patterns),)


def test_pattern_key_keys_one_graph_per_pattern():
    """Equal keys for equal draws, distinct keys for distinct ones; no key without a pending draw or
    for batch-shared units (an index tensor: no finite set of graphs)."""
    model = ad.ApproxDropoutMLP([8, 16, 16, 4], 0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no pending draw"):
        ad.pattern_key(model)
    keys = []
    for _ in range(12):
        ad.draw_patterns(model)
        keys.append(ad.pattern_key(model))
        hash(keys[-1])
    patterns = [k[0] for k in keys]
    assert len(set(keys)) == len(set(patterns)) > 1
    shared = ad.ApproxDropoutMLP([8, 16, 4], 0.5, method="shared")
    ad.draw_patterns(shared)
    with pytest.raises(ValueError, match="batch-shared"):
        ad.pattern_key(shared)


def test_once_the_offset_is_symbolic_a_new_offset_compiles_nothing():
    """With one period (dp = 4 dividing the widths), offsets are the only change between steps: after the
    first two offsets (the second turns the offset symbolic) no new offset costs a graph."""
    law = ad.PatternDistribution(((4, 1),), (1.0,))
    model = ad.ApproxDropoutMLP([8, 16, 16, 4], 0.75, method="row", distributions=[law, law])
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(6, 8)
    graphs = []
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False, allow_unspec_int_on_nn_module=True):
        for a, b in [(0, 0), (1, 2), (2, 3), (3, 1), (1, 0), (2, 2)]:
            setattr(model, PENDING, [None, ad.RowPattern(4, a), ad.RowPattern(4, b)])
            compiled(x).sum().backward()
            assert [q.offset for q in model.last_patterns[1:]] == [a, b]
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[1] <= 3, graphs


EXTENDED = ad.PatternDistribution(((2, 1), (4, 3)), (0.5, 0.5))  # keep 3 of 4: an index of kept units, not a slice


@pytest.mark.parametrize("kind", ["lstm", "mlp-input-dropout"])
def test_fullgraph_selects_keep_above_one_sites_with_a_static_length(kind):
    """Models that take a site's kept units themselves (the LSTM's row sites, the MLP's input site) select a
    keep > 1 pattern by an index of static length under torch.compile(fullgraph=True), not nonzero's
    data-dependent one (a guard on it failed); every step matches the eager twin."""
    p = EXTENDED.expected_rate
    if kind == "lstm":
        eager, twin = _twins(
            lambda g: ad.ApproxDropoutLSTM(11, 8, 2, p, "row-extended", distributions=[EXTENDED] * 3, generator=g)
        )
        x = torch.randint(0, 11, (3, 4))
    else:
        eager, twin = _twins(
            lambda g: ad.ApproxDropoutMLP(
                [12, 10, 3], p, "row-extended", input_dropout=True, distributions=[EXTENDED] * 2, generator=g
            )
        )
        x = torch.randn(5, 12)
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    kept = set()
    for _ in range(STEPS):
        for model in (eager, twin):
            model.zero_grad()
        ad.draw_patterns(twin)
        outputs = [eager(x), compiled(x)]
        ys = [y[0] if isinstance(y, tuple) else y for y in outputs]  # the LSTM's (logits, state)
        for y in ys:
            y.square().sum().backward()
        assert twin.last_patterns == eager.last_patterns
        torch.testing.assert_close(ys[1], ys[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(twin.parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        kept |= {q.keep for q in twin.last_patterns if q is not None}
    assert 3 in kept, f"no keep > 1 pattern drawn in {STEPS} steps: {kept}"


def test_draw_patterns_on_the_compiled_wrapper_draws_once_as_on_the_model():
    """torch.compile(model) passes attribute lookups through to the model: draw_patterns, pattern_key and
    static_graph_bound on the wrapper count the model once, and the compiled run matches an eager twin."""
    from approxdrop.models.sites import static_graph_bound

    eager, twin = _twins(
        lambda g: ad.ApproxDropoutMLP([7, 12, 10, 3], 0.5, method="row", static_shapes=True, generator=g)
    )
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True, backend="eager")
    assert static_graph_bound(compiled) == static_graph_bound(twin)
    x = torch.randn(8, 7)
    for _ in range(3):
        assert ad.draw_patterns(compiled) == 1 and len(ad.pattern_key(compiled)) == 1
        torch.testing.assert_close(compiled(x), eager(x))
        assert twin.last_patterns == eager.last_patterns
