"""The LSTM perplexity study of ``bench-lstm`` (issue 20): every run's validation perplexity over the
run and its cumulative training time, the table (diverged seeds kept out of the means), the JSON, the
figure and the command line, at a tiny size (seconds)."""

import json
import math

import pytest

from approxdrop.data.corpus import Corpus, CorpusInfo, Vocabulary
from approxdrop.experiments import bench_lstm
from approxdrop.experiments.bench_lstm import LMRun, perplexity_runs, perplexity_table
from approxdrop.experiments.cli import main as cli_main
from approxdrop.experiments.lstm_study_figure import lstm_study_figure
from approxdrop.models.methods import color

METHODS = ["bernoulli", "row", "row-g4"]


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(bench_lstm.SIZES, "small", bench_lstm.LSTMSize(8, 2, 50, 5, 4))


def sentence_corpus() -> Corpus:
    words = ("the cat sat on the mat <eos> a dog ran in the park <eos> " * 12).split()
    vocab = Vocabulary(words)
    ids = vocab.encode(words)
    info = CorpusInfo("sentences", "test", len(vocab), 120, len(ids) - 120, len(ids) - 120)
    return Corpus(ids[:120], ids[120:], ids[120:], vocab, info)


def test_each_run_records_its_perplexity_over_the_run_and_its_cumulative_training_time(tiny):
    runs = perplexity_runs(sentence_corpus(), "small", [0.5, 0.7], METHODS, 5, seeds=[0, 1], eval_every=2)
    assert [(r.p, r.seed, r.method) for r in runs] == [(p, s, m) for p in (0.5, 0.7) for s in (0, 1) for m in METHODS]
    for r in runs:
        assert r.eval_step == [2, 4, 5] and len(r.eval_perplexity) == len(r.eval_seconds) == 3
        assert r.perplexity == r.eval_perplexity[-1] and all(math.isfinite(v) for v in r.eval_perplexity)
        assert 0 < r.eval_seconds[0] < r.eval_seconds[1] < r.eval_seconds[2]  # cumulative
        assert r.eval_seconds[2] > 5 * r.ms_per_step / 1e3 / 3  # the sum of 5 steps, not one step
        assert r.diverged_at is None
    # same seed, same initial weights and batches, different dropout: the runs are not copies of each other
    first = [r.eval_perplexity for r in runs if r.p == 0.5 and r.seed == 0]
    assert first[0] != first[1] != first[2]
    # without eval_every, one evaluation after the last step
    (only,) = perplexity_runs(sentence_corpus(), "small", [0.5], ["bernoulli"], 3)
    assert only.eval_step == [3]
    with pytest.raises(ValueError, match="size must be one of"):
        perplexity_runs(sentence_corpus(), "huge", [0.5], ["bernoulli"], 3)


def run(method, p, seed, perplexity, diverged_at=None, evals=None) -> LMRun:
    """A made-up run: evaluations at steps 1, 2 after 1 s, 2 s (default: 100, then ``perplexity``)."""
    evals = (100.0, perplexity) if evals is None else evals
    return LMRun(method, p, seed, perplexity, 10.0, [1, 2][: len(evals)], list(evals), [1.0, 2.0][: len(evals)],
                 diverged_at)  # fmt: skip


def test_the_table_averages_the_seeds_that_did_not_diverge_and_names_the_others():
    runs = [
        run("bernoulli", 0.5, 0, 100.0),
        run("bernoulli", 0.5, 1, 110.0),
        run("row-g4", 0.5, 0, 120.0),
        run("row-g4", 0.5, 1, 50.0, diverged_at=7, evals=(100.0,)),  # its last value is before it diverged
        run("row", 0.5, 0, None, diverged_at=1, evals=()),
        run("row", 0.7, 0, 90.0),  # no bernoulli at this p: no ratio
    ]
    lines = perplexity_table(runs).splitlines()
    assert lines[2] == "| 0.5 | bernoulli | 105.0 ± 7.1 | 1.000 | 10.0 | - |"
    assert lines[3] == "| 0.5 | row-g4 | 120.0 ± 0.0 | 1.143 | 10.0 | seed 1 at step 7 |"
    assert lines[4] == "| 0.5 | row | - | - | 10.0 | seed 0 at step 1 |"
    assert lines[5] == "| 0.7 | row | 90.0 ± 0.0 | - | 10.0 | - |"


def test_the_figure_draws_perplexity_against_p_and_against_time_in_the_methods_colours():
    runs = [run(m, p, s, 100.0 + 10 * s + (p == 0.7) * 50) for m in ("bernoulli", "row-g4") for p in (0.5, 0.7)
            for s in (0, 1)]  # fmt: skip
    runs.append(run("row-g4", 0.7, 2, 80.0, diverged_at=2, evals=(300.0,)))  # reached the first evaluation only
    fig = lstm_study_figure(runs)
    left = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in left] == ["bernoulli", "row-g4"]
    assert list(left[1].x) == [0.5, 0.7] and list(left[1].y) == [105.0, 155.0]  # the diverged seed left out
    assert [t.line.color for t in left] == [color("bernoulli"), color("row-g4")]
    right = {t.name: t for t in fig.data if t.xaxis == "x2" and t.x[0] is not None}
    assert set(right) == {"bernoulli p=0.5", "bernoulli p=0.7", "row-g4 p=0.5", "row-g4 p=0.7"}
    assert list(right["bernoulli p=0.5"].x) == [1.0, 2.0] and list(right["bernoulli p=0.5"].y) == [100.0, 105.0]
    assert list(right["row-g4 p=0.7"].y) == [pytest.approx(500 / 3)]  # only what every seed reached
    slowed = [run("row", 0.5, s, 100.0) for s in range(3)]
    slowed[0].eval_seconds = [50.0, 90.0]  # a run the machine slowed down: the median time ignores it
    (line,) = [t for t in lstm_study_figure(slowed).data if t.name == "row p=0.5"]
    assert list(line.x) == [1.0, 2.0]
    assert right["row-g4 p=0.7"].line.color == color("row-g4") and fig.layout.yaxis2.type == "log"


def test_the_command_writes_the_runs_table_and_figure_with_machine_date_and_command(tiny, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["bench-lstm", "--sizes", "--methods", "bernoulli", "row-g4", "--ps", "0.5", "--perplexity-steps", "3",
            "--eval-every", "2", "--eval-tokens", "200", "--seeds", "0", "1", "--no-progress", "--perplexity-out",
            str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| 0.5 | row-g4 |" in printed and "seeds [0, 1]" in printed
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 4 and saved["runs"][0]["eval_step"] == [2, 3] and "torch" in saved["machine"]
    assert saved["command"].startswith("approxdrop bench-lstm --sizes --methods bernoulli row-g4 --ps 0.5")
    assert "--perplexity-steps 3 --seeds 0 1 --eval-tokens 200 --eval-every 2" in saved["command"]
    assert saved["date"][:4].isdigit()
    text = (out / "results.md").read_text()
    assert saved["command"] in text and saved["machine"] in text and "| 0.5 | row-g4 |" in text
    assert "plotly" in (out / "perplexity.html").read_text()


def test_the_json_record_holds_the_perplexity_runs(tiny, tmp_path, capsys):
    record, out = tmp_path / "record.json", tmp_path / "study"
    argv = ["bench-lstm", "--sizes", "--methods", "bernoulli", "row", "--ps", "0.5", "0.7", "--perplexity-steps", "2",
            "--eval-tokens", "200", "--no-progress", "--json", str(record), "--perplexity-out", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    rows = json.loads(record.read_text())["rows"]
    assert [(r["method"], r["p"]) for r in rows] == [(m, p) for p in (0.5, 0.7) for m in ("bernoulli", "row")]
    assert rows == json.loads((out / "results.json").read_text())["runs"]


def test_bad_perplexity_outputs_are_usage_errors_before_any_run(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_lstm, "perplexity_runs", lambda *a, **k: pytest.fail("ran with bad arguments"))
    file = tmp_path / "file"
    file.write_text("")
    base = ["bench-lstm", "--sizes", "--ps", "0.5", "--methods", "bernoulli"]
    assert cli_main([*base, "--perplexity-out", str(tmp_path / "d")]) == 2
    assert "needs --perplexity-steps" in capsys.readouterr().err
    assert cli_main([*base, "--perplexity-steps", "2", "--perplexity-out", str(file)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli_main([*base, "--perplexity-steps", "2", "--eval-every", "0"]) == 2


@pytest.mark.parametrize(
    "eval_tokens, said",
    [(None, "the first 45 validation tokens (of 48: all, in whole columns of 5)"),
     (10**8, "the first 45 validation tokens (of 48: all, in whole columns of 5)"),
     (48, "the first 45 validation tokens (of 48: all, in whole columns of 5)"),
     (30, "the first 30 validation tokens (of 48)"), (33, "the first 30 validation tokens (of 48)")],
)  # fmt: skip
def test_the_header_gives_the_validation_tokens_read_not_those_asked_for(monkeypatch, eval_tokens, said):
    from approxdrop.data.corpus import batchify

    monkeypatch.setitem(bench_lstm.SIZES, "small", bench_lstm.LSTMSize(8, 2, 50, 5, 5))  # read in 5 columns
    corpus = sentence_corpus()
    assert len(corpus.valid) == 48
    header = bench_lstm.perplexity_header(corpus, "small", 3, eval_tokens, [0])
    assert f", {said}, seeds [0]." in header and "100000000" not in header
    valid = corpus.valid if eval_tokens is None else corpus.valid[:eval_tokens]
    assert (
        bench_lstm.evaluated_tokens(corpus, "small", eval_tokens) == batchify(valid, 5).numel()
    )  # what train_lm reads


def test_a_split_the_columns_divide_is_read_whole(tiny):  # 48 validation tokens, 4 columns
    header = bench_lstm.perplexity_header(sentence_corpus(), "small", 3, 10**8, [0])
    assert ", all 48 validation tokens, seeds [0]." in header


def test_races_stopped_by_ctrl_c_leave_files_that_say_they_are_partial(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_lstm, "load_corpus", lambda name: sentence_corpus())
    real, races = bench_lstm.train_lm, []

    def second_race_stopped(*args, **kwargs):
        races.append(args)
        if len(races) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_lstm, "train_lm", second_race_stopped)
    record, out = tmp_path / "record.json", tmp_path / "study"
    argv = ["bench-lstm", "--sizes", "--methods", "bernoulli", "row", "--ps", "0.5", "0.7", "--perplexity-steps", "2",
            "--eval-tokens", "200", "--no-progress", "--json", str(record), "--perplexity-out", str(out)]  # fmt: skip
    assert cli_main(argv) == 130
    said = "partial: 1 of 2 perplexity races finished (p=0.5 seed 0); not run: p=0.7 seed 0"
    assert json.loads(record.read_text())["partial"] == said
    assert json.loads((out / "results.json").read_text())["partial"] == said
    assert f"- {said[0].upper()}{said[1:]}\n" in (out / "results.md").read_text()
    err = capsys.readouterr().err.strip()
    assert err == (
        f"approxdrop bench-lstm: interrupted. {record} and {out} keep what finished, marked {said}; "
        "run the command again to start over (it does not resume)."
    )
    monkeypatch.setattr(bench_lstm, "train_lm", real)  # run to the end: the same files, complete
    assert cli_main(argv) == 0
    assert "partial" not in json.loads(record.read_text())
    assert json.loads((out / "results.json").read_text())["partial"] is None
    assert "Partial" not in (out / "results.md").read_text()


def test_ctrl_c_before_any_output_is_written_says_only_interrupted(tiny, monkeypatch, capsys):
    monkeypatch.setattr(bench_lstm, "load_corpus", lambda name: sentence_corpus())
    monkeypatch.setattr(bench_lstm, "train_lm", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["bench-lstm", "--sizes", "--methods", "bernoulli", "--ps", "0.5", "--perplexity-steps", "2"]
    assert cli_main([*argv, "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == "approxdrop bench-lstm: interrupted"


@pytest.mark.parametrize(
    "extra, said",
    [(["--seeds", "0", "1"], "--seeds 0 1: needs --perplexity-steps"),
     (["--eval-every", "3"], "--eval-every 3: needs --perplexity-steps"),
     (["--eval-tokens", "100"], "--eval-tokens 100: needs --perplexity-steps")],
)  # fmt: skip
def test_perplexity_options_without_perplexity_runs_are_usage_errors(extra, said, monkeypatch, capsys):
    monkeypatch.setattr(bench_lstm, "measure_lstm", lambda *a, **k: pytest.fail("ran with bad arguments"))
    assert cli_main(["bench-lstm", "--sizes", "small", "--methods", "bernoulli", "--no-progress", *extra]) == 2
    assert said in capsys.readouterr().err


def test_the_perplexity_runs_default_to_seed_0(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_lstm, "load_corpus", lambda name: sentence_corpus())
    record = tmp_path / "record.json"
    argv = ["bench-lstm", "--sizes", "--methods", "bernoulli", "--ps", "0.5", "--perplexity-steps", "1",
            "--no-progress", "--json", str(record)]  # fmt: skip
    assert cli_main(argv) == 0
    assert "seeds [0]" in capsys.readouterr().out
    saved = json.loads(record.read_text())
    assert saved["args"]["seeds"] == [0] and [r["seed"] for r in saved["rows"]] == [0]
