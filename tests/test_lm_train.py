"""Language-model training (train_lm, perplexity, lm_training_step) and the LSTM benchmark."""

import json
import math
import statistics

import pytest
import torch
from torch import nn

from approxdrop.data.corpus import Corpus, CorpusInfo, Vocabulary
from approxdrop.experiments import bench_lstm
from approxdrop.experiments.cli import build_parser
from approxdrop.experiments.cli import main as cli_main
from approxdrop.models import lstm_gemm_work
from approxdrop.models.lstm import ApproxDropoutLSTM
from approxdrop.training import lm_training_step, perplexity, train_lm

TINY = dict(hidden=16, layers=2, bptt=6, batch=4, eval_tokens=None, progress=False)


def periodic_corpus(repeats: int = 40) -> Corpus:
    """A corpus an LSTM can learn fast: the same sentence over and over."""
    words = ("the cat sat on the mat <eos> a dog ran in the park <eos> " * repeats).split()
    vocab = Vocabulary(words)
    ids = vocab.encode(words)
    cut = int(0.8 * len(ids))
    info = CorpusInfo("periodic", "test", len(vocab), cut, len(ids) - cut, len(ids) - cut)
    return Corpus(ids[:cut], ids[cut:], ids[cut:], vocab, info)


def test_every_method_learns_and_the_histories_are_complete():
    methods = ("bernoulli", "row", "shared", "torch")
    adam = dict(optimizer="adam", lr=1e-2, clip=None)
    result = train_lm(periodic_corpus(), methods, p=0.3, steps=120, eval_every=40, **TINY, **adam)
    for method, hist in result.histories.items():
        assert hist.step == list(range(1, 121)) and len(hist.seconds) == 120 and min(hist.seconds) > 0
        assert hist.eval_step == [40, 80, 120]
        assert hist.metric[-1] < 0.6 * hist.metric[0], method  # well below unigram ~10.4
    rows = {r.method: r for r in result.summary()}
    assert rows["bernoulli"].speedup == 1.0 and rows["torch"].speedups["torch"] == 1.0
    # the median over the steps after warm-up of bernoulli's time / row's in the same step
    assert rows["row"].speedup == pytest.approx(statistics.median(result.step_speedups("bernoulli", "row")))
    table = result.format_table().split("\n\n")[0]  # a note may follow, when the load moved the medians
    assert table.count("\n") == 1 + 4 and "| row |" in table


def test_at_p_zero_every_lstm_method_is_the_same_model_on_the_same_batches():
    """Same initial weights, same stream of batches: with nothing dropped the losses coincide."""
    result = train_lm(periodic_corpus(), ("none", "bernoulli", "row", "shared"), p=0.0, steps=15, eval_every=15, **TINY)
    losses = [h.loss for h in result.histories.values()]
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("method", ["bernoulli", "torch", "row", "shared"])
def test_a_methods_numbers_do_not_depend_on_the_other_methods_or_their_order(method):
    other = "torch" if method != "torch" else "bernoulli"  # both draw from torch's global random state

    def run(methods):
        hist = train_lm(periodic_corpus(), methods, p=0.5, steps=5, eval_every=5, **TINY).histories[method]
        return hist.loss, hist.metric

    alone = run([method])
    assert run([method, other]) == alone and run([other, "row-g4", method]) == alone


def test_the_stream_wraps_around_when_the_corpus_ends():
    corpus = periodic_corpus(repeats=3)  # 39 tokens: 7 columns of 4... a handful of batches
    result = train_lm(corpus, ("row",), p=0.5, steps=25, eval_every=25, **(TINY | {"eval_tokens": 10}))
    assert len(result.histories["row"].loss) == 25 and math.isfinite(result.histories["row"].metric[-1])


def test_perplexity_is_exp_of_the_mean_token_cross_entropy():
    torch.manual_seed(0)
    model = ApproxDropoutLSTM(9, 8, 2, 0.5, "row").train()
    data = torch.randint(9, (23, 3))  # [T, B]
    with torch.no_grad():
        logits, _ = model.eval()(data[:-1])  # one pass over the whole stream = carried state
    expected = math.exp(float(nn.functional.cross_entropy(logits.reshape(-1, 9), data[1:].reshape(-1))))
    model.train()
    assert perplexity(model, data, bptt=5) == pytest.approx(expected, rel=1e-5)
    assert model.training  # restored


def test_the_perplexity_of_a_broken_model_is_nan_not_inf():
    """A model whose outputs are NaN is told apart from a finite but hopeless one (inf past exp's range)."""
    model = ApproxDropoutLSTM(9, 8, 2, 0.5, "row")
    data = torch.randint(9, (23, 3))  # [T, B]
    with torch.no_grad():
        model.decoder.weight.fill_(float("nan"))
    assert math.isnan(perplexity(model, data, bptt=5))
    with torch.no_grad():
        model.decoder.weight.fill_(0.0)
        model.decoder.bias.copy_(torch.arange(9.0) * 1e4)  # finite logits, a mean cross-entropy far past 700
    assert perplexity(model, data, bptt=5) == math.inf


def test_a_training_step_clips_the_gradient_and_detaches_the_state():
    torch.manual_seed(0)
    model = ApproxDropoutLSTM(9, 8, 2, 0.5, "bernoulli")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = torch.randint(9, (5, 2)), torch.randint(9, (5, 2))
    loss, state = lm_training_step(model, opt, x, y, None, clip=1e-3)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert float(moved) <= 1e-3 * (1 + 1e-4) and loss.requires_grad is False
    assert all(not s.requires_grad for s in state) and state[0].shape == (2, 2, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ("row", "row")}, "distinct names"),
        ({"methods": ("tile",)}, "distinct names"),
        ({"methods": ()}, "distinct names"),
        ({"steps": 0}, "steps must be in \\[1, inf\\), got 0"),
        ({"bptt": 0}, "bptt must be in \\[1, inf\\), got 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ],
)
def test_train_lm_rejects_bad_arguments(kwargs, message):
    args = {"methods": ("row",)} | kwargs
    with pytest.raises(ValueError, match=message):
        train_lm(periodic_corpus(), **args, progress=False)


def test_lstm_gemm_work_by_hand():
    # H = 10, 1 layer, V = 30: input 10*40, recurrent 10*40, decoder 10*30 -> dense 1100
    assert lstm_gemm_work(10, 1, 30, 0.5, "bernoulli") == 1.0
    assert lstm_gemm_work(10, 1, 30, 0.5, "row") == pytest.approx((200 + 400 + 150) / 1100)
    paper = lstm_gemm_work(650, 2, 10_000, 0.5, "row")
    assert 0.5 < paper < 0.7  # the recurrent GEMMs do not shrink


@pytest.fixture
def tiny_sizes(monkeypatch):
    monkeypatch.setitem(bench_lstm.SIZES, "tiny", bench_lstm.LSTMSize(8, 2, 50, 5, 3))
    monkeypatch.setitem(bench_lstm.SIZES, "small", bench_lstm.LSTMSize(8, 2, 50, 5, 3))


def test_measure_lstm_times_every_method_side_by_side(tiny_sizes):
    rows = bench_lstm.measure_lstm("tiny", ps=(0.3, 0.7), warmup=1, rounds=2, progress=False)
    assert [(r.p, r.method) for r in rows] == [(p, m) for p in (0.3, 0.7) for m in bench_lstm.LM_METHODS]
    for r in rows:
        assert r.ms_per_step > 0 and r.ratio_to_torch is not None
        assert (r.ratio_to_bernoulli == 1.0) == (r.method == "bernoulli")
        assert r.gemm_work == lstm_gemm_work(8, 2, 50, r.p, r.method)
    assert bench_lstm.format_table(rows).count("| tiny |") == len(rows)
    with pytest.raises(ValueError, match="size must be one of"):
        bench_lstm.measure_lstm("huge")
    with pytest.raises(ValueError, match="must include 'bernoulli'"):
        bench_lstm.measure_lstm("tiny", methods=("row", "torch"))


def test_the_benchmark_command_writes_json_and_a_perplexity_table(tiny_sizes, tmp_path, capsys):
    out = tmp_path / "lstm.json"
    args = ["--sizes", "tiny", "--ps", "0.5", "--methods", "bernoulli", "row", "--rounds", "1", "--warmup", "0"]
    assert cli_main(["bench-lstm", *args, "--json", str(out), "--perplexity-steps", "3", "--eval-tokens", "200"]) == 0
    text = capsys.readouterr().out
    assert "| tiny | 0.5 | row |" in text and "valid perplexity" in text and "| 0.5 | row |" in text
    saved = json.loads(out.read_text())
    assert "torch" in saved["machine"]  # the timing rows, then the perplexity runs
    assert [(r["method"], r.get("size"), r.get("seed")) for r in saved["rows"]] == [
        ("bernoulli", "tiny", None), ("row", "tiny", None), ("bernoulli", None, 0), ("row", None, 0)
    ]  # fmt: skip
    assert saved["rows"][3]["eval_step"] == [3] and saved["rows"][3]["perplexity"] > 1
    only = ["--sizes", "--ps", "0.3", "--methods", "bernoulli", "row", "--perplexity-steps", "2", "--seeds", "0", "1"]
    assert cli_main(["bench-lstm", *only]) == 0
    text = capsys.readouterr().out
    assert "ms / step | ratio to bernoulli | ratio to nn.LSTM" not in text and "seeds [0, 1]" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.3 |")]
    assert len(rows) == 2 and all(" ± " in row for row in rows) and "| 1.000 |" in rows[0]


def test_the_approxdrop_command_runs_the_lstm_benchmark(tiny_sizes, capsys):
    assert cli_main(["bench-lstm", "--sizes", "tiny", "--ps", "0.3", "--rounds", "1", "--warmup", "0"]) == 0
    assert capsys.readouterr().out.count("| tiny | 0.3 |") == len(bench_lstm.LM_METHODS)
    assert cli_main([]) == 2 and "bench-lstm" in capsys.readouterr().out


@pytest.fixture
def no_measure_lstm(monkeypatch):
    """bench_lstm.measure_lstm that fails the test if a run starts."""
    monkeypatch.setattr(bench_lstm, "measure_lstm", lambda *a, **k: pytest.fail(f"measured with bad arguments {a}"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rounds", "0"], "argument --rounds: must be an int >= 1, got 0"),
        (["--steps", "0"], "argument --steps: must be an int >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: must be an int >= 0, got -1"),
        (["--device", "meta"], "--device meta: timings need a cpu or cuda device"),
        (["--methods", "row", "torch"], "--methods must include bernoulli"),
        (["--json", "."], "--json .: cannot write a file there"),
    ],
)
def test_the_benchmark_command_rejects_bad_options_before_any_run(tiny_sizes, no_measure_lstm, capsys, extra, message):
    assert cli_main(["bench-lstm", "--sizes", "tiny", "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


PERPLEXITY_ONLY = ["bench-lstm", "--sizes", "--ps", "0.5", "--methods", "bernoulli", "--perplexity-steps", "1"]


def test_too_few_evaluation_tokens_are_a_usage_error_before_the_corpus_loads(monkeypatch, capsys):
    monkeypatch.setattr(bench_lstm, "load_corpus", lambda *a, **k: pytest.fail("loaded the corpus"))
    assert cli_main([*PERPLEXITY_ONLY, "--no-progress", "--eval-tokens", "39"]) == 2
    message = (
        "argument --eval-tokens: must be an int >= 40 (2 time steps per column at the evaluation batch 20), got 39"
    )
    assert message in capsys.readouterr().err
    assert build_parser().parse_args([*PERPLEXITY_ONLY, "--eval-tokens", "40"]).eval_tokens == 40


def test_the_least_evaluation_tokens_follow_the_evaluation_batch(tiny_sizes, capsys):  # batch 3: 6 tokens
    assert cli_main([*PERPLEXITY_ONLY, "--no-progress", "--eval-tokens", "5"]) == 2
    assert "must be an int >= 6 (2 time steps per column at the evaluation batch 3), got 5" in capsys.readouterr().err
    assert cli_main([*PERPLEXITY_ONLY, "--no-progress", "--eval-tokens", "6"]) == 0
    assert "the first 6 validation tokens" in capsys.readouterr().out


def test_the_perplexity_runs_show_one_bar_for_all_races(tiny_sizes, capsys):
    assert cli_main([*PERPLEXITY_ONLY, "--ps", "0.3", "0.5", "--perplexity-steps", "2", "--seeds", "0", "1"]) == 0
    err = capsys.readouterr().err
    assert "perplexity: 100%" in err and " 8/8 " in err and "training" not in err  # 2 ps x 2 seeds x 2 steps


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"rounds": 0}, r"rounds must be in \[1, inf\), got 0"),
        ({"steps": 0}, r"steps must be in \[1, inf\), got 0"),
        ({"warmup": -2}, r"warmup must be in \[0, inf\), got -2"),
        ({"ps": ()}, "ps must hold at least one dropout rate"),
        ({"ps": (-0.1,)}, r"p must be a number in \[0, 1\), got -0.1"),
        ({"methods": ("bernoulli", "tile")}, "methods must be distinct names from"),
        ({"device": "meta"}, "device must be cpu or cuda .*got 'meta'"),
    ],
)
def test_measure_lstm_checks_its_arguments(tiny_sizes, bad, message):
    with pytest.raises(ValueError, match=message):
        bench_lstm.measure_lstm("tiny", **{"ps": (0.5,), "warmup": 0, "rounds": 1, "progress": False, **bad})


def test_perplexity_of_a_hopeless_model_is_inf_not_an_overflow_error():
    class Hopeless(nn.Module):
        def forward(self, x, state=None):
            logits = torch.zeros(*x.shape, 3)
            logits[..., 0] = 1e4  # every token predicted as 0 with certainty
            return logits, state

    data = torch.ones(12, 2, dtype=torch.long)  # every target is 1: cross-entropy 1e4 per token
    assert perplexity(Hopeless(), data, bptt=4) == math.inf


@pytest.mark.parametrize(
    "settings, message",
    [({"eval_tokens": -390}, r"eval_tokens must be in \[40, inf\), got -390"), ({"eval_tokens": 0}, "eval_tokens"),
     ({"eval_tokens": 7, "batch": 4}, r"eval_tokens must be in \[8, inf\)"), ({"seed": 1.5}, "seed must be an int")],
)  # fmt: skip
def test_an_lm_race_setting_out_of_range_is_refused_by_name(settings, message):
    from approxdrop.training import LMRaceConfig

    with pytest.raises(ValueError, match=message):
        LMRaceConfig(**settings)
    if "eval_tokens" in settings:
        LMRaceConfig(**{**settings, "eval_tokens": 2 * settings.get("batch", 20)})  # the least it can read


@pytest.mark.parametrize("split, name", [("train", "the training split"), ("valid", "the validation split")])
def test_a_split_too_short_for_the_batch_is_refused_naming_the_split(split, name):
    """A 5-token validation split at batch 4 failed with "5 tokens make 1 time steps per column at batch 4",
    which did not say which split was short."""
    corpus = periodic_corpus()
    short = corpus._replace(**{split: getattr(corpus, split)[:5]})
    with pytest.raises(ValueError, match=f"{name} \\(corpus.{split}\\) has 5 tokens, too few for batch=4.* at least 8"):
        train_lm(short, ("row",), steps=1, **TINY)
