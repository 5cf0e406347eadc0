"""The accuracy-parity study at a tiny budget: results per run, resuming, summary, errors."""

import json

import pytest
import torch

from approxdrop.data import load_dataset
from approxdrop.experiments import study
from approxdrop.experiments.study import RunResult, StudyConfig, best_p, format_table, run_study, summarise

TINY = StudyConfig(hidden=(16,), ps=(0.5,), seeds=(0, 1), epochs=2, batch=64, dataset="digits")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=300, test_size=100, verbose=False)


def test_study_trains_every_run_and_writes_the_summary(tmp_path, digits):
    results = run_study(TINY, tmp_path, data=digits, progress=False)
    assert [(r.variant, r.seed) for r in results] == [(v, s) for s in (0, 1) for v in TINY.variants]
    for r in results:
        assert len(r.test_accuracy) == 2 and len(r.epoch_seconds) == 2 and 0 <= r.test_accuracy[-1] <= 1
        assert (tmp_path / "runs" / study.run_name(r.variant, r.p, r.seed)).exists()
    table = (tmp_path / "results.md").read_text()
    assert "| bernoulli | 0.5 |" in table and "| row-extended | 0.5 |" in table and "best p" in table
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert len(summary) == len(TINY.variants)
    assert "plotly" in (tmp_path / "accuracy.html").read_text()
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave nothing behind


def test_study_resumes_where_it_stopped(tmp_path, digits, monkeypatch, capsys):
    run_study(TINY, tmp_path, data=digits, progress=False)
    trained = []
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda *a, **k: trained.append(a[2:]) or real(*a, **k))
    run_study(TINY, tmp_path, data=digits, progress=False)
    assert trained == []  # everything was there
    (tmp_path / "runs" / study.run_name("row", 0.5, 1)).unlink()  # interrupted before this run ended
    (tmp_path / "runs" / study.run_name("tile", 0.5, 0)).write_text("{not json")  # a broken file
    run_study(TINY, tmp_path, data=digits, progress=False)
    assert sorted(trained) == [("row", 0.5, 1), ("tile", 0.5, 0)]
    assert "ignoring unreadable tile-p0.5-seed0.json" in capsys.readouterr().err


def test_study_directory_belongs_to_one_setting(tmp_path, digits):
    run_study(StudyConfig(hidden=(8,), ps=(0.5,), seeds=(0,), epochs=1, variants=("bernoulli",), dataset="digits"),
              tmp_path, data=digits, progress=False)  # fmt: skip
    other = StudyConfig(hidden=(8,), ps=(0.5,), seeds=(0,), epochs=2, variants=("bernoulli",), dataset="digits")
    with pytest.raises(ValueError, match="other settings"):
        run_study(other, tmp_path, data=digits, progress=False)


def test_summary_statistics_and_table():
    runs = [
        RunResult("bernoulli", 0.5, 0, "x", [0.5, 0.80], [1.0, 3.0]),
        RunResult("bernoulli", 0.5, 1, "x", [0.5, 0.90], [2.0, 2.0]),
        RunResult("row", 0.5, 0, "x", [0.5, 0.84], [1.0, 1.0]),
        RunResult("row", 0.5, 1, "x", [0.5, 0.82], [1.0, 1.0]),
        RunResult("row", 0.3, 0, "x", [0.5, 0.95], [1.0, 1.0]),
    ]
    rows = {(r.variant, r.p): r for r in summarise(runs)}
    assert rows[("bernoulli", 0.5)].accuracy_mean == pytest.approx(0.85)
    assert rows[("bernoulli", 0.5)].accuracy_std == pytest.approx(0.0707107, rel=1e-5)
    assert rows[("bernoulli", 0.5)].seconds_per_epoch == 2.0 and rows[("row", 0.3)].seeds == 1
    assert best_p(list(rows.values()))["row"].p == 0.3
    table = format_table(list(rows.values()))
    assert "| row | 0.5 | 83.00 ± 1.41 | -2.00 | 1.0 |" in table
    assert "| row | 0.3 | 95.00 ± 0.00 | - | 1.0 |" in table  # no bernoulli at p = 0.3
    assert "| row | 0.3 | 95.00 |" in table


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ps": (1.0,)}, "p must be a number in"),
        ({"variants": ("gaussian",)}, "variants must be taken from"),
        ({"dataset": "cifar"}, "dataset must be one of"),
        ({"epochs": 0}, "must be positive"),
        ({"seeds": ()}, "must be positive"),
        ({"clip": 0.0}, "clip must be a positive gradient norm"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**kwargs)


def test_cli_runs_the_study(tmp_path, capsys):
    from approxdrop.experiments.cli import main

    argv = ["study", "mlp", "--out", str(tmp_path), "--dataset", "digits", "--hidden", "8", "--epochs", "1"]
    assert main([*argv, "--seeds", "0", "--ps", "0.5", "--variants", "bernoulli", "row", "--no-progress"]) == 0
    assert "| row | 0.5 |" in capsys.readouterr().out


def test_cli_clips_gradients_and_sets_threads(tmp_path, capsys, monkeypatch):
    from approxdrop.experiments.cli import main

    clips = []
    real_step = study.training_step
    monkeypatch.setattr(study, "training_step", lambda *a, clip: clips.append(clip) or real_step(*a, clip=clip))
    threads = torch.get_num_threads()
    try:
        argv = ["study", "mlp", "--out", str(tmp_path), "--dataset", "digits", "--hidden", "8", "--epochs", "1"]
        assert main([*argv, "--seeds", "0", "--ps", "0.5", "--variants", "row", "--clip", "1.5", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert clips and set(clips) == {1.5}
    assert json.loads((tmp_path / "results.json").read_text())["config"]["clip"] == 1.5
    assert "gradient-norm clip 1.5" in capsys.readouterr().out


def test_study_figure_plots_means_against_p_and_time():
    from approxdrop.experiments.study_figure import study_figure

    runs = [
        RunResult("bernoulli", 0.5, 0, "x", [0.6, 0.8], [1.0, 3.0]),
        RunResult("bernoulli", 0.5, 1, "x", [0.4, 0.9], [2.0, 2.0]),
        RunResult("row", 0.5, 0, "x", [0.5, 0.7], [1.0, 1.0]),
    ]
    fig = study_figure(runs)
    by_p = {t.name: t for t in fig.data if t.xaxis == "x"}
    by_time = {t.name: t for t in fig.data if t.xaxis == "x2"}
    assert list(by_p["bernoulli"].y) == pytest.approx([0.85]) and list(by_p["row"].y) == [0.7]
    assert by_time["p = 0.5"].line.dash == by_time["row p=0.5"].line.dash  # the legend of the line styles
    assert list(by_time["bernoulli p=0.5"].x) == [1.5, 4.0] and list(by_time["bernoulli p=0.5"].y) == pytest.approx(
        [0.5, 0.85]
    )
