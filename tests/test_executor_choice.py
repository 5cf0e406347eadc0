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
from approxdrop.models.lstm import ApproxDropoutLSTM
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
    x = torch.randn(128, 8)
    assert choose_executor("measured", x, 128, 4, 2048 * 2048, lambda: None) == "compact"
    assert choose_executor("measured", x, 8, 4, 64, lambda: None) == "masked"
    assert choose_executor("compact", x, 8, 4, 64, lambda: None) == "compact"
    assert fake.timed == []


def test_bad_executors_are_refused_by_name():
    with pytest.raises(ValueError, match=r"executor must be one of \('auto', 'compact', 'masked', 'measured'\)"):
        ApproxDropoutMLP([8, 16, 2], 0.5, executor="fastest")
    with pytest.raises(ValueError, match=r"executor must be one of \('auto', 'compact', 'masked'\), got 'measured'"):
        ApproxDropoutLSTM(20, 8, 1, 0.5, "row-g4", executor="measured")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_on_cuda_measures_with_the_gpu_dispatch():
    from approxdrop.ops import cuda

    model = ApproxDropoutMLP([64, 256, 256, 10], 0.5, "row-g4").cuda()
    chosen = model.executor_for(torch.randn(64, 64, device="cuda"))
    (choice,) = [c for c in cuda.dispatcher().choices() if c.key.startswith("executor 64x256x256 rows=64 groups=4")]
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
