"""What a race measures: accuracy of the eval-mode model on the test split, and speedups as baseline time over the
method's."""

import math

import pytest
import torch

from approxdrop.data import Dataset, DatasetInfo, batchify
from approxdrop.data.corpus import Corpus, CorpusInfo, Vocabulary
from approxdrop.models import ApproxDropoutMLP
from approxdrop.training import ACCURACY, History, MLPRaceConfig, RaceResult, evaluate, run_race, train, train_lm
from approxdrop.training import lm as lm_module

# Guards against this change: (training/mlp.py evaluate: model.eval() dropped, so test accuracy is measured with
# dropout still on). The race's accuracies then carry dropout noise (and, for the pattern methods, the
# pattern draws), and two calls on one model differ. The accuracy of a model left in train mode must be
# the one its eval-mode forward gives, and the training mode must come back.


def test_evaluate_measures_the_eval_mode_model_and_restores_train_mode():
    torch.manual_seed(0)
    model = ApproxDropoutMLP([12, 64, 64, 5], 0.7, method="bernoulli").train()
    x, y = torch.randn(400, 12), torch.randint(5, (400,))
    with torch.no_grad():
        expected = float((model.eval()(x).argmax(-1) == y).double().mean())
    model.train()
    got = [evaluate(model, x, y, batch=64) for _ in range(3)]
    assert model.training
    assert got == [expected] * 3, (got, expected)


# Guards against this change: (training/mlp.py train: the contestants evaluated on the training split instead of the
# test split). A test split whose labels are the training labels shifted by one class (on the same inputs)
# makes the two readings opposite: a model that learned the training split scores near 0 on it, near 1 on
# the training split. The race must report the former.


def blobs(n=400, dim=16, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(classes, dim, generator=gen)
    y = torch.randint(classes, (n,), generator=gen)
    return (centers[y] + 0.05 * torch.randn(n, dim, generator=gen)).clamp(0, 1), y


def test_the_race_reports_accuracy_on_the_test_split_not_the_training_split():
    x, y = blobs()
    data = Dataset(x, y, x[:200], (y[:200] + 1) % 4, DatasetInfo("blobs", "test", (4, 4), 4))
    result = train(
        data,
        ["bernoulli", "row"],
        p=0.3,
        steps=100,
        eval_every=100,
        hidden=(32, 32),
        batch=32,
        lr=0.1,
        tile=8,
        progress=False,
        device="cpu",
    )
    for row in result.summary():
        assert row.metric < 0.2, (row.method, row.metric)  # the shifted labels: a trained model is wrong on them


# Guards against this change: (training/race.py step_speedups: the per-step ratio inverted to method / baseline).
# The suite only compares the speedup with step_speedups itself and bernoulli with itself (1x), so the
# inversion keeps every test green while the table calls a 2x faster method 0.5x. A method that takes
# half the baseline's time at every step is 2x faster.


def test_a_method_twice_as_fast_as_bernoulli_has_speedup_2():
    steps = list(range(1, 11))
    histories = {
        "bernoulli": History(step=steps, loss=[1.0] * 10, seconds=[0.002] * 10),
        "row": History(step=steps, loss=[1.0] * 10, seconds=[0.001] * 10),
    }
    result = RaceResult(histories, ACCURACY, MLPRaceConfig(steps=10, warmup=2), {"bernoulli": 1.0, "row": 0.5}, "cpu")
    assert result.speedup("bernoulli", "row") == pytest.approx(2.0)
    rows = {r.method: r for r in result.summary()}
    assert rows["row"].speedup == pytest.approx(2.0) and rows["row"].ms_per_step == pytest.approx(1.0)
    assert "2.00x" in result.format_table() and result.timing_note() == ""


# Guards against this change: (training/race.py run_race: only a NaN loss stops a method, an inf one goes into the
# history). The module promises "a method whose loss becomes NaN or inf is stopped there"; the suite's
# divergence test drives the loss to NaN only. A contestant whose loss is inf at step 3 must be marked
# diverged at step 3, with no inf in its history.


class Contestant:
    def __init__(self, losses):
        self.losses = iter(losses)

    def step(self, batch):
        return next(self.losses)

    def evaluate(self):
        return 0.5


def test_an_inf_loss_stops_the_method_like_a_nan():
    contestants = {"bernoulli": Contestant([1.0] * 5), "row": Contestant([1.0, 1.0, math.inf, 1.0, 1.0])}
    result = RaceResult(
        {m: History() for m in contestants}, ACCURACY, MLPRaceConfig(steps=5), dict.fromkeys(contestants, 1.0), "cpu"
    )
    run_race(contestants, lambda step: None, result, steps=5, eval_every=5, progress=False)
    row = result.histories["row"]
    assert row.diverged_at == 3 and row.step == [1, 2] and all(math.isfinite(v) for v in row.loss)


# Guards against this change: (training/lm.py train_lm: the contestants' perplexity read on the training stream
# instead of the validation split). Nothing in the suite looks at which data the race evaluates; this pins
# it: every evaluation reads batchify(corpus.valid, batch). The validation split here is not a slice of the
# training split, so the two cannot coincide.


def test_the_lm_race_evaluates_on_the_validation_split(monkeypatch):
    words = ("the cat sat on the mat <eos> a dog ran in the park <eos> " * 20).split()
    vocab = Vocabulary(words)
    ids = vocab.encode(words)
    train, valid = ids[:200], ids.flip(0)[:60]  # valid: the text backwards, not part of the training stream
    corpus = Corpus(train, valid, valid, vocab, CorpusInfo("periodic", "test", len(vocab), 200, 60, 60))
    seen = []

    def recording_perplexity(model, data, bptt=35):
        seen.append(data.clone())
        return 1.0

    monkeypatch.setattr(lm_module, "perplexity", recording_perplexity)
    train_lm(
        corpus,
        ("bernoulli", "row"),
        hidden=8,
        layers=1,
        bptt=5,
        batch=4,
        steps=2,
        eval_every=2,
        optimizer="adam",
        progress=False,
        device="cpu",
    )
    expected = batchify(valid, 4)
    assert len(seen) == 2 and all(torch.equal(d, expected) for d in seen)
