"""The training helper: fair side-by-side runs (same weights, same batches), records, evaluation,
callbacks, the summary table, and argument errors."""

import os
import statistics
import subprocess
import sys

import pytest
import torch

from approxdrop import ApproxDropoutMLP, mlp_gemm_work
from approxdrop.data import Dataset, DatasetInfo
from approxdrop.training import (
    ACCURACY,
    History,
    MLPRaceConfig,
    RaceResult,
    evaluate,
    run_race,
    sgd,
    train,
    training_step,
)
from approxdrop.training.race import race_seed


def blobs(n_train=400, n_test=100, dim=16, classes=4, seed=0) -> Dataset:
    """Linearly separable clusters in [0, 1]^dim."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(classes, dim, generator=gen)

    def draw(n):
        y = torch.randint(classes, (n,), generator=gen)
        return (centers[y] + 0.05 * torch.randn(n, dim, generator=gen)).clamp(0, 1), y

    return Dataset(*draw(n_train), *draw(n_test), DatasetInfo("blobs", "test", (4, 4), classes))


DATA = blobs()
SMALL = dict(hidden=(32, 32), batch=16, tile=8, progress=False)


def test_every_method_starts_from_the_same_weights_and_sees_the_same_batches():
    # at p = 0 no method drops anything, so every loss curve must be the same
    result = train(DATA, ["bernoulli", "row", "tile", "shared", "none"], p=0.0, steps=6, eval_every=3, **SMALL)
    losses = [h.loss for h in result.histories.values()]
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("method", ["bernoulli", "row", "row-g4", "shared", "tile"])
def test_a_methods_numbers_do_not_depend_on_the_other_methods_or_their_order(method):
    other = "shared" if method != "shared" else "row"  # draws patterns too

    def run(methods, seed=0):
        hist = train(DATA, methods, p=0.5, steps=6, eval_every=3, seed=seed, **SMALL).histories[method]
        return hist.loss, hist.metric

    alone = run([method])
    assert run([method, other]) == alone and run([other, "none", method]) == alone
    assert run([method], seed=1) != alone  # the seed still matters


@pytest.mark.slow  # long: left out of the fast tier (CI runs it)
def test_race_seeds_are_a_fixed_hash_of_seed_method_and_stream():
    # recorded races are reproducible in any process: not Python's per-process (salted) hash()
    code = "from approxdrop.training.race import race_seed; print(race_seed(0, 'row', 'patterns'))"
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        assert int(out) == race_seed(0, "row", "patterns")
    assert len({race_seed(s, m, k) for s in (0, 1) for m in ("row", "tile") for k in ("patterns", "global")}) == 8


class Coin:
    """A contestant whose loss is a draw from torch's global random state, as nn.Dropout's masks are."""

    def step(self, batch) -> float:
        return float(torch.rand(()))

    def evaluate(self) -> float:
        return 0.0


def coin_race(names, seed):
    result = RaceResult({n: History() for n in names}, ACCURACY, MLPRaceConfig(), dict.fromkeys(names, 1.0), "cpu")
    run_race({n: Coin() for n in names}, lambda step: None, result, steps=4, eval_every=4, progress=False, seed=seed)
    return {n: h.loss for n, h in result.histories.items()}


def test_each_contestant_draws_from_its_own_global_stream_and_the_race_gives_the_state_back():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    alone = coin_race(["a"], seed=0)["a"]
    assert torch.equal(torch.get_rng_state(), state)
    both = coin_race(["b", "a"], seed=0)
    assert both["a"] == alone and both["b"] != alone
    assert coin_race(["a"], seed=1)["a"] != alone
    shared = coin_race(["b", "a"], seed=None)  # without a seed they share (and advance) the global state
    assert shared["a"] != alone and not torch.equal(torch.get_rng_state(), state)


def test_records_evaluations_and_callbacks():
    calls = []
    result = train(
        DATA, ["bernoulli", "row"], p=0.5, steps=10, eval_every=4, callback=lambda r, s: calls.append(s),
        callback_every=3, **SMALL,
    )  # fmt: skip
    assert calls == [3, 6, 9, 10]
    for h in result.histories.values():
        assert h.step == list(range(1, 11)) and len(h.loss) == len(h.seconds) == 10
        assert h.eval_step == [4, 8, 10] and all(0.0 <= a <= 1.0 for a in h.metric)
        assert all(s > 0 for s in h.seconds)
    assert result.methods == ["bernoulli", "row"]
    assert result.gemm_work["row"] == mlp_gemm_work([16, 32, 32, 4], 0.5, "row")  # sizes: data, hidden, classes


def test_training_learns_and_the_summary_compares_with_bernoulli():
    result = train(DATA, ["bernoulli", "row", "none"], p=0.3, steps=100, eval_every=100, **SMALL)
    rows = {r.method: r for r in result.summary()}
    assert rows["bernoulli"].speedup == pytest.approx(1.0)
    # the median over the steps after warm-up of bernoulli's time / row's in the same step
    assert rows["row"].speedup == pytest.approx(statistics.median(result.step_speedups("bernoulli", "row")))
    assert rows["row"].gemm_work == pytest.approx(
        (16 * 32 * 0.7 + 32 * 32 * 0.49 + 32 * 4 * 0.7) / (16 * 32 + 32 * 32 + 32 * 4)
    )
    for row in rows.values():
        assert row.metric > 0.9  # four separable clusters: chance is 0.25
    table = result.format_table()
    rows_of_the_table = table.split("\n\n")[0]  # a note may follow, when the load moved the medians
    assert rows_of_the_table.count("\n") == 4 and "| row |" in table and "1.00x" in table


def test_without_bernoulli_there_is_no_speedup():
    result = train(DATA, ["row"], p=0.5, steps=3, **SMALL)
    assert result.summary()[0].speedup is None and "| row |" in result.format_table()


def test_training_step_and_evaluate():
    torch.manual_seed(0)
    model = ApproxDropoutMLP([16, 8, 4], 0.5, method="row")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss, logits = training_step(model, opt, DATA.train_x[:8], DATA.train_y[:8])
    assert loss.shape == () and not loss.requires_grad and logits.shape == (8, 4)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert model.training and 0.0 <= evaluate(model, DATA.test_x, DATA.test_y, batch=7) <= 1.0 and model.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(methods=["dropout"]), "methods must be"),
        (dict(methods=[]), "methods must be"),
        (dict(methods=["row", "row"]), "methods must be"),
        (dict(methods="row"), r"got the string 'row': write \('row',\)"),
        (dict(steps=0), "steps must be in \\[1, inf\\), got 0"),
        (dict(lr=float("nan")), "lr must be a finite number > 0"),
        (dict(clip=0.0), "clip must be a finite number > 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(DATA, **{"methods": ["row"], "steps": 2, **kwargs, **SMALL})


@pytest.mark.parametrize(
    "field, value, message",
    [("eval_size", -50, r"eval_size must be in \[1, inf\), got -50"), ("eval_size", 0, "eval_size must be"),
     ("eval_size", 2.5, "eval_size must be an int"), ("seed", 1.5, "seed must be an int"),
     ("seed", -1, "seed must be")],
)  # fmt: skip
def test_a_race_setting_out_of_range_is_refused_by_name(field, value, message):
    """eval_size=-50 silently evaluated test_x[:-50]; seed=1.5 failed deep inside torch."""
    from approxdrop.training.mlp import MLPRaceConfig

    with pytest.raises(ValueError, match=message):
        MLPRaceConfig(**{field: value})


def test_a_race_whose_methods_diverge_before_a_timed_step_prints_no_nan():
    """No step was timed: its step time and every speedup against it are "-", not nan."""
    poisoned = DATA._replace(train_x=torch.full_like(DATA.train_x, float("nan")))  # a NaN loss at step 1
    result = train(poisoned, ["bernoulli", "row"], hidden=(16,), batch=8, steps=3, progress=False)
    table = result.format_table()
    assert "nan" not in table.lower() and table.count("diverged at step 1") == 2, table


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_fused_sgd_takes_the_steps_of_torchs_per_parameter_loop(momentum):
    # training.sgd is fused for its host cost alone: every step must land on the loop's numbers, bit for bit
    def trained(make):
        torch.manual_seed(0)
        model = ApproxDropoutMLP([16, 24, 4], p=0.0, method="none")
        opt = make(model.parameters())
        for i in range(5):
            training_step(model, opt, DATA.train_x[16 * i : 16 * (i + 1)], DATA.train_y[16 * i : 16 * (i + 1)])
        return [p.detach().clone() for p in model.parameters()]

    fused = trained(lambda params: sgd(params, 0.1, momentum=momentum))
    loop = trained(lambda params: torch.optim.SGD(params, lr=0.1, momentum=momentum, foreach=False))
    assert all(torch.equal(a, b) for a, b in zip(fused, loop))
    assert sgd(torch.nn.Linear(2, 2).parameters(), 0.1).defaults["fused"]


@pytest.mark.parametrize(
    "split, data",
    [("training split", DATA._replace(train_x=DATA.train_x[:0], train_y=DATA.train_y[:0])),
     ("test split", DATA._replace(test_x=DATA.test_x[:0], test_y=DATA.test_y[:0]))],
)  # fmt: skip
def test_an_empty_split_is_refused_by_name_before_training(split, data):
    """An empty test split was raced and reported as test accuracy 0.000; an empty training split failed in
    torch.randint ("random_ expects 'from' to be less than 'to'")."""
    with pytest.raises(ValueError, match=f"the {split} .* must hold at least one example"):
        train(data, ["row"], steps=2, **SMALL)


@pytest.mark.parametrize(
    "n, batch, match",
    [(0, 1024, "x and y must hold at least one example"), (4, 0, r"batch must be in \[1, inf\), got 0")],
)
def test_evaluate_refuses_no_examples_and_a_batch_below_one(n, batch, match):
    """No examples gave accuracy 0.0, as if measured; batch=0 failed with "range() arg 3 must not be zero"."""
    with pytest.raises(ValueError, match=match):
        evaluate(torch.nn.Linear(16, 4), DATA.test_x[:n], DATA.test_y[:n], batch=batch)


@pytest.mark.parametrize("hidden", [32, "32"])
def test_hidden_widths_given_as_one_number_are_refused_with_the_form_to_use(hidden):
    """hidden=32 failed with "TypeError: 'int' object is not iterable"."""
    with pytest.raises(ValueError, match=r"hidden must be a sequence of hidden-layer widths.*\(32,\)"):
        train(DATA, ["row"], steps=2, **{**SMALL, "hidden": hidden})
