"""The measured executor (approxdrop.models.executor_choice): on CUDA ``auto`` times the compact and masked
executors on the model's own shapes, and ``measured`` does so on any device. Here, on the CPU: the probe's
two executors agree, the decision follows the times (a fake timer), it is measured once per key, and it
leaves every random state alone. The GPU timings themselves are scripts/gpu_check.sh's."""

from __future__ import annotations

import pytest
import torch

import approxdrop as ad
from approxdrop.models import executor_choice
from approxdrop.models.executor_choice import (
    Probe,
    _compact_step,
    _masked_step,
    _ProbeArgs,
    choose_executor,
    probe_patterns,
    row_bucket,
    uses_measurement,
)
from approxdrop.models.ffn import ApproxDropoutFFN
from approxdrop.models.lstm import ApproxDropoutLSTM, LSTMProbe
from approxdrop.models.mlp import ApproxDropoutMLP
from approxdrop.ops import Dispatcher, outputs_agree
from approxdrop.search import distribution_for


class FakeTimes:
    """A timer returning set milliseconds per executor, recording what it timed, and the lines said."""

    def __init__(self, masked: float, compact: float) -> None:
        self.times = {"masked": masked, "compact": compact}
        self.timed: list[str] = []
        self.said: list[str] = []

    def __call__(self, fn) -> float:
        fn()  # runs the probe, as a real timer does
        self.timed.append(fn.name)
        return self.times[fn.name]


@pytest.fixture
def fake_host(monkeypatch):
    """Install a CPU dispatcher with a fake timer: fake_host(masked_ms, compact_ms) -> its FakeTimes."""

    def install(masked: float, compact: float) -> FakeTimes:
        fake = FakeTimes(masked, compact)
        monkeypatch.setattr(executor_choice, "_HOST", Dispatcher(None, fake, outputs_agree, say=fake.said.append))
        return fake

    return install


@pytest.mark.parametrize(
    "executor, device, measures",
    [("measured", "cpu", True), ("measured", "cuda", True), ("auto", "cuda", True), ("auto", "cpu", False),
     ("compact", "cuda", False), ("masked", "cuda", False)],
)  # fmt: skip
def test_auto_measures_on_cuda_and_measured_everywhere(executor, device, measures):
    assert uses_measurement(executor, torch.device(device)) is measures


def test_auto_on_the_cpu_takes_the_rule_and_times_nothing(fake_host):
    fake = fake_host(masked=1.0, compact=0.1)
    paper = ApproxDropoutMLP([784, 2048, 2048, 10], 0.5, "row-g4")
    tiny = ApproxDropoutMLP([8, 16, 16, 2], 0.5, "row-g4")
    assert paper.executor_for(torch.randn(128, 784)) == "compact"  # the rule's answers
    assert tiny.executor_for(torch.randn(4, 8)) == "masked"
    assert fake.timed == []


@pytest.mark.parametrize(
    "masked_ms, compact_ms, chosen", [(1.0, 0.5, "compact"), (1.0, 0.96, "masked"), (1.0, 2.0, "masked")]
)
def test_measured_takes_compact_only_when_it_is_faster_by_the_margin(fake_host, masked_ms, compact_ms, chosen):
    fake = fake_host(masked_ms, compact_ms)
    model = ApproxDropoutMLP([8, 16, 16, 2], 0.5, "row-g4", executor="measured")
    assert model.executor_for(torch.randn(30, 8)) == chosen  # measured at 32 rows (a power of two)
    assert fake.timed == ["masked", "compact"]
    assert len(fake.said) == 1 and fake.said[0].startswith(
        f"approxdrop: executor 8x16x16 dp=2 keep=1 rows=32 groups=4 p=0.5 float32: {chosen} runs (measured: masked"
    )


@pytest.mark.parametrize("rows, bucket", [(0, 1), (1, 1), (2, 2), (3, 4), (32, 32), (33, 64), (1000, 1024)])
def test_rows_are_measured_in_powers_of_two(rows, bucket):
    assert row_bucket(rows) == bucket


def test_measured_once_per_key(fake_host):
    fake = fake_host(masked=1.0, compact=0.5)
    model = ApproxDropoutMLP([8, 16, 16, 2], 0.5, "row-g4", executor="measured")
    x = torch.randn(32, 8)
    for _ in range(3):
        model(x).sum().backward()
    assert fake.timed == ["masked", "compact"]
    model(torch.randn(20, 8))  # a smaller batch in the same power of two (17-32 rows): no new key
    model(torch.randn(40, 8))  # 33-64 rows: a new key
    model(torch.randn(60, 8))
    model.p = 0.3  # a new rate: a new key
    model(x)
    model.double()(x.double())  # a new dtype: a new key
    half_of_four = ad.PatternDistribution(((4, 2),), (1.0,))  # p = 0.5 too, another pattern class: a new key
    ApproxDropoutMLP([8, 16, 16, 2], 0.5, "row-g4", executor="measured", distributions=[half_of_four] * 2)(x)
    assert fake.timed == ["masked", "compact"] * 5
    assert len(fake.said) == 5 and "dp=4 keep=2" in fake.said[-1]


def test_a_compact_probe_that_disagrees_is_never_chosen(fake_host, monkeypatch):
    fake = fake_host(masked=1.0, compact=0.1)

    def wrong(args):
        y, *grads = _compact_step(args)
        return (y * 1.5, *grads)

    monkeypatch.setattr(executor_choice, "_compact_step", wrong)
    model = ApproxDropoutFFN(16, 32, 0.5, method="row-g4", executor="measured")
    assert model.executor_for(torch.randn(8, 16)) == "masked"
    assert "compact excluded: output 0 differs from the reference" in fake.said[0]


def _probe_args(n_in, n_site, n_out, groups, rows, family="paper", p=0.5, dtype=torch.float64):
    law = distribution_for(p, n_site, family=family)
    return _ProbeArgs(Probe(n_in, n_site, n_out, law, p), rows, groups, dtype, torch.device("cpu"))


@pytest.mark.parametrize(
    "n_in, n_site, n_out, groups, rows, family, p",
    [(13, 37, 5, 4, 29, "paper", 0.5), (None, 37, 5, 4, 29, "paper", 0.5), (13, 37, 5, 1, 7, "paper", 0.3),
     (9, 50, 11, 3, 10, "extended", 0.7), (None, 21, 3, 1, 5, "extended", 0.4), (6, 24, 6, 4, 3, "paper", 0.5)],
)  # fmt: skip
def test_the_probes_two_executors_give_the_same_numbers(n_in, n_site, n_out, groups, rows, family, p):
    args = _probe_args(n_in, n_site, n_out, groups, rows, family, p)
    masked, compact = _masked_step(args), _compact_step(args)
    assert len(masked) == len(compact) == (3 if n_in is None else 5)  # y and every parameter's gradient
    for m, c in zip(masked, compact):
        torch.testing.assert_close(c, m, rtol=1e-12, atol=1e-12)
    assert outputs_agree(compact, masked) is None
    assert torch.isfinite(masked[0]).all() and all(g.abs().sum() > 0 for g in masked[1:])


def test_probe_patterns_are_the_likeliest_class_with_complementary_offsets():
    law = distribution_for(0.5, 64)
    dp, keep = law.pairs[law.probs.index(max(law.probs))]
    patterns = probe_patterns(law, 4)
    assert [(q.dp, q.keep) for q in patterns] == [(dp, keep)] * 4
    assert [q.offset for q in patterns] == [g % dp for g in range(4)]


def test_the_mlp_probes_its_widest_site():
    model = ApproxDropoutMLP([10, 30, 200, 20, 4], 0.5, "row")
    probe = model.executor_probe()
    assert (probe.n_in, probe.n_site, probe.n_out, probe.p) == (30, 200, 20, 0.5)
    assert probe.law is model.site_laws()[1]
    inputs_only = ApproxDropoutMLP([10, 4], 0.5, "row", input_dropout=True)
    assert (inputs_only.executor_probe().n_in, inputs_only.executor_probe().n_site) == (None, 10)
    ffn = ApproxDropoutFFN(12, 48, 0.3, d_out=5)
    probe = ffn.executor_probe()
    assert (probe.n_in, probe.n_site, probe.n_out, probe.p) == (12, 48, 5, 0.3)


@pytest.mark.parametrize("method", ["row", "row-g4"])
def test_measuring_leaves_the_draws_and_the_numbers_alone(method):
    x = torch.randn(64, 12)
    outs = {}
    for executor in ("measured", "compact", "masked"):
        torch.manual_seed(0)
        model = ApproxDropoutMLP([12, 40, 40, 3], 0.5, method, executor=executor, generator=None)
        model.double()
        y = model(x.double())
        y.square().sum().backward()
        outs[executor] = (y, model.linears[1].weight.grad, torch.random.get_rng_state())
    for executor in ("compact", "masked"):
        torch.testing.assert_close(outs["measured"][0], outs[executor][0])
        torch.testing.assert_close(outs["measured"][1], outs[executor][1])
        assert torch.equal(outs["measured"][2], outs[executor][2])  # the probe drew nothing


def test_choose_executor_falls_back_to_the_rule_without_a_probe(fake_host):
    fake = fake_host(masked=1.0, compact=0.1)
    cpu, f32 = torch.device("cpu"), torch.float32
    assert choose_executor("measured", cpu, f32, 128, 4, 2048 * 2048, lambda: None) == "compact"
    assert choose_executor("measured", cpu, f32, 8, 4, 64, lambda: None) == "masked"
    assert choose_executor("compact", cpu, f32, 8, 4, 64, lambda: None) == "compact"
    assert fake.timed == []


def test_nothing_is_timed_while_torch_compile_traces(fake_host, monkeypatch):
    fake = fake_host(masked=1.0, compact=0.1)
    model = ApproxDropoutMLP([8, 16, 16, 2], 0.5, "row-g4", executor="measured")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert model.executor_for(torch.randn(128, 8)) == "masked"  # the rule's answer for this tiny model
    assert fake.timed == []


@pytest.mark.parametrize(
    "build",
    [lambda e: ApproxDropoutMLP([8, 16, 2], 0.5, executor=e), lambda e: ApproxDropoutFFN(8, 16, 0.5, executor=e),
     lambda e: ApproxDropoutLSTM(20, 8, 1, 0.5, "row-g4", executor=e)],
)  # fmt: skip
def test_bad_executors_are_refused_by_name(build):
    with pytest.raises(ValueError, match=r"executor must be one of \('auto', 'compact', 'masked', 'measured'\)"):
        build("fastest")
    assert build("measured").executor == "measured"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_auto_on_cuda_measures_with_the_gpu_dispatch(model):
    from approxdrop.ops import cuda

    if model == "mlp":
        built, x, key = ApproxDropoutMLP([64, 256, 256, 10], 0.5, "row-g4"), torch.randn(64, 64), "executor 64x256x256"
    else:  # T = 8 steps of 8 sequences: 64 rows
        built, x, key = (
            ApproxDropoutLSTM(100, 64, 2, 0.5, "row-g4"),
            torch.randint(100, (8, 8)),
            "executor lstm 64x64x100",
        )
    chosen = built.cuda().executor_for(x.cuda())
    (choice,) = [c for c in cuda.dispatcher().choices() if c.key.startswith(key) and "rows=64 groups=4" in c.key]
    assert choice.path == chosen and choice.how in ("measured", "cached")


@pytest.mark.parametrize("region", ["no_grad", "inference_mode", "autocast"])
def test_a_training_forward_probes_under_no_grad_inference_mode_and_autocast(region, fake_host):
    fake = fake_host(masked=1.0, compact=0.5)
    model = ApproxDropoutMLP([8, 16, 16, 2], 0.5, "row-g4", executor="measured")
    contexts = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
        "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }
    with contexts[region]():
        y = model(torch.randn(16, 8))
    assert y.shape == (16, 2) and torch.isfinite(y).all()
    assert fake.timed == ["masked", "compact"] and "compact runs" in fake.said[0]


def test_the_host_timer_takes_the_median_call_so_two_stalls_do_not_decide(monkeypatch):
    durations = iter([0.050, 0.002, 0.120, 0.003, 0.002])  # seconds per timed call: two stalls
    clock = {"now": 0.0}

    def call():
        clock["now"] += next(durations, 0.0)

    monkeypatch.setattr(executor_choice.time, "perf_counter", lambda: clock["now"])
    assert executor_choice.host_timer(call, warmup=0, iters=5) == pytest.approx(3.0)


# ---------------------------------------------------------------- the LSTM's probe: its last layer and the decoder


def _lstm_probe_args(n_site, hidden, n_out, steps, groups, rows, family="paper", p=0.5):
    law = distribution_for(p, hidden, family=family)
    probe = LSTMProbe(n_site, hidden, n_out, steps, law, p)
    return _ProbeArgs(probe, rows, groups, torch.float64, torch.device("cpu"))


@pytest.mark.parametrize(
    "n_site, hidden, n_out, steps, groups, rows, family, p",
    [(12, 16, 30, 4, 4, 32, "paper", 0.5), (9, 13, 7, 3, 3, 21, "extended", 0.7), (16, 16, 5, 2, 4, 4, "paper", 0.5),
     (10, 11, 6, 5, 1, 15, "extended", 0.3)],
)  # fmt: skip
def test_the_lstm_probes_two_executors_give_the_same_numbers(n_site, hidden, n_out, steps, groups, rows, family, p):
    args = _lstm_probe_args(n_site, hidden, n_out, steps, groups, rows, family, p)
    u = args.tensors()[0]
    assert u.shape == (steps, max(1, rows // steps), n_site)  # rows / steps sequences (2 of 4 groups empty above)
    masked, compact = _masked_step(args), _compact_step(args)
    assert len(masked) == len(compact) == 6  # logits and the gradients of W_ih, W_hh, the bias, the decoder's two
    assert masked[0].shape == (steps, u.shape[1], n_out)
    for m, c in zip(masked, compact):
        torch.testing.assert_close(c, m, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(masked[0]).all() and all(g.abs().sum() > 0 for g in masked[1:])


def test_the_lstm_probes_its_last_layer_and_the_decoder():
    model = ApproxDropoutLSTM(30, 16, 1, 0.5, "row-g4", embedding=12)
    probe = model.executor_probe(35)
    assert (probe.n_site, probe.hidden, probe.n_out, probe.steps, probe.p) == (12, 16, 30, 64, 0.5)
    assert probe.law is model.site_laws()[-1]
    two = ApproxDropoutLSTM(30, 16, 2, 0.5, "row-g4", embedding=12).executor_probe(5)
    assert (two.n_site, two.steps) == (16, 8)
    assert ApproxDropoutLSTM(30, 16, 2, 0.5, "bernoulli", executor="measured").executor_probe(5) is None


@pytest.mark.parametrize("masked_ms, compact_ms, chosen", [(1.0, 0.5, "compact"), (1.0, 0.99, "masked")])
def test_the_lstm_takes_the_executor_measured_faster(fake_host, masked_ms, compact_ms, chosen):
    fake = fake_host(masked_ms, compact_ms)
    model = ApproxDropoutLSTM(30, 16, 2, 0.5, "row-g4", executor="measured")
    tokens = torch.randint(30, (5, 8))  # T = 5 (probed at 8 steps), B = 8: 40 rows (probed at 64)
    for _ in range(2):
        model(tokens)[0].sum().backward()
    assert model.executor_for(tokens) == chosen
    assert fake.timed == ["masked", "compact"]  # measured once
    assert fake.said[0].startswith(
        f"approxdrop: executor lstm 16x16x30 T=8 dp=2 keep=1 rows=64 groups=4 p=0.5 float32: {chosen} runs"
    )


def test_the_lstm_without_groups_or_patterns_times_nothing(fake_host):
    fake = fake_host(masked=1.0, compact=0.5)
    tokens = torch.randint(30, (5, 8))
    for method in ("row", "bernoulli"):
        ApproxDropoutLSTM(30, 16, 2, 0.5, method, executor="measured")(tokens)
    assert fake.timed == []


def test_measuring_leaves_the_lstms_draws_and_numbers_alone():
    tokens = torch.randint(30, (6, 12))
    outs = {}
    for executor in ("measured", "compact", "masked"):
        torch.manual_seed(0)
        model = ApproxDropoutLSTM(30, 16, 2, 0.5, "row-g4", executor=executor).double()
        logits, _ = model(tokens)
        logits.square().sum().backward()
        outs[executor] = (logits, model.lstm[1].weight_ih.grad, model.decoder.weight.grad, torch.random.get_rng_state())
    for executor in ("compact", "masked"):
        for ours, theirs in zip(outs["measured"][:3], outs[executor][:3]):
            torch.testing.assert_close(ours, theirs)
        assert torch.equal(outs["measured"][3], outs[executor][3])  # the probe drew nothing


def test_the_lstm_executor_benchmark_runs_at_a_tiny_size(capsys):
    """benchmarks/lstm_executor.py (full steps both ways against the probe's pick) as a smoke test."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lstm_executor.py"
    spec = importlib.util.spec_from_file_location("lstm_executor", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--sizes", "tiny", "--rounds", "1", "--methods", "row-g4"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "row-g4" and float(cells[4]) > 0 and cells[5] in ("compact", "masked")
    assert cells[6].split()[0] in ("compact", "masked")
