"""The accuracy-parity study at a tiny budget: results per run, resuming, summary, errors."""

import json
import os
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

from approxdrop.data import Dataset, DatasetInfo, load_dataset
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
        ({"epochs": 0}, r"epochs must be in \[1, inf\), got 0"),
        ({"seeds": ()}, r"seeds must be a non-empty tuple, got \(\)"),
        ({"clip": 0.0}, r"clip \(a gradient norm\) must be a finite number > 0, got 0.0"),
        ({"seeds": (0, 0)}, r"seeds must not repeat a value, got \(0, 0\)"),
        ({"ps": (0.5, 0.3, 0.5)}, r"ps must not repeat a value, got \(0.5, 0.3, 0.5\)"),
        ({"variants": ("row", "row")}, "variants must not repeat a value"),
        ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
        ({"lr": 0}, "lr must be a finite number > 0, got 0"),
        ({"clip": float("inf")}, "got inf"),
        ({"batch": 0}, r"batch must be in \[1, inf\), got 0"),
        ({"batch": 2.5}, "batch must be an int, got 2.5"),
        ({"hidden": (16, 0)}, r"hidden width must be in \[1, inf\), got 0"),
        ({"hidden": ()}, "hidden must be a non-empty tuple"),
        ({"tile": 0}, r"tile must be in \[1, inf\), got 0"),
        ({"seeds": (-1,)}, r"seed must be in \[0, inf\), got -1"),
        ({"seeds": (0.5,)}, "seed must be an int, got 0.5"),
        ({"train_size": 0}, r"train_size must be in \[1, inf\), got 0"),
        ({"test_size": -3}, r"test_size must be in \[1, inf\), got -3"),
        ({"ps": 0.5}, "ps must be a non-empty tuple, got 0.5"),
        ({"variants": "row"}, "variants must be a non-empty tuple, got 'row'"),
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


def test_settings_are_kept_as_plain_python_values():
    config = StudyConfig(hidden=[16], ps=[0, np.float32(0.5)], seeds=[np.int64(3)], variants=["row"], lr=1,
                         epochs=np.int32(2), clip=np.float64(1.5), train_size=np.int16(10))  # fmt: skip
    assert config.hidden == (16,) and config.ps == (0.0, 0.5) and config.seeds == (3,) and config.variants == ("row",)
    assert [type(v) for v in (*config.ps, config.lr, config.clip)] == [float] * 4
    assert [type(v) for v in (*config.seeds, config.epochs, config.train_size)] == [int] * 3
    json.dumps(asdict(config))  # what every run file records


def test_close_rates_get_their_own_run_files(tmp_path, digits, monkeypatch):
    ps = (0.3, 0.30000000000000004)  # both print as 0.3 with {:g}
    assert len({study.run_name("row", p, 0) for p in ps}) == 2
    config = StudyConfig(hidden=(8,), ps=ps, seeds=(0,), epochs=1, variants=("bernoulli",), dataset="digits")
    first = run_study(config, tmp_path, data=digits, progress=False)
    assert len(list((tmp_path / "runs").iterdir())) == 2
    trained = []
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda *a, **k: trained.append(a[2:]) or real(*a, **k))
    again = run_study(config, tmp_path, data=digits, progress=False)
    assert trained == [] and [r.p for r in again] == list(ps) and again == first


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda r: {**r, "seed": 0}, "it holds bernoulli p=0.5 seed 0, not bernoulli p=0.5 seed 1"),
        (lambda r: {**r, "p": 0.7}, "it holds bernoulli p=0.7 seed 1, not bernoulli p=0.5 seed 1"),
        (
            lambda r: {**r, "test_accuracy": [], "epoch_seconds": []},
            r"its test_accuracy has length 0, not one value per epoch",
        ),
        (
            lambda r: {**r, "test_accuracy": r["test_accuracy"][:1]},
            "its test_accuracy has length 1, not one value per epoch",
        ),
        (
            lambda r: {**r, "epoch_seconds": [1.0, 2.0, 3.0]},
            r"its epoch_seconds has length 3, not one value per epoch \(2\)",
        ),
        (lambda r: {**r, "test_accuracy": [0.5, 1.5]}, r"its test_accuracy holds \[1.5\], outside \[0, 1\]"),
        (lambda r: {**r, "epoch_seconds": [1.0, "fast"]}, r"its epoch_seconds holds \['fast'\], outside"),
        (lambda r: {**r, "test_accuracy": None}, "its test_accuracy is None, not one value per epoch"),
    ],
)
def test_a_run_file_that_is_not_its_run_is_trained_again(tmp_path, digits, monkeypatch, capsys, spoil, reason):
    config = StudyConfig(hidden=(8,), ps=(0.5,), seeds=(0, 1), epochs=2, variants=("bernoulli",), dataset="digits")
    first = run_study(config, tmp_path, data=digits, progress=False)
    path = tmp_path / "runs" / study.run_name("bernoulli", 0.5, 1)
    payload = json.loads(path.read_text())
    payload["result"] = spoil(payload["result"])
    path.write_text(json.dumps(payload))
    trained = []
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda *a, **k: trained.append(a[2:]) or real(*a, **k))
    again = run_study(config, tmp_path, data=digits, progress=False)
    assert trained == [("bernoulli", 0.5, 1)]
    assert [(r.variant, r.p, r.seed) for r in again] == [("bernoulli", 0.5, 0), ("bernoulli", 0.5, 1)]
    assert [len(r.test_accuracy) for r in again] == [2, 2] and again[0] == first[0]
    err = capsys.readouterr().err
    assert f"ignoring {path.name}: " in err and "training it again" in err
    assert re.search(reason, err), err
    assert json.loads(path.read_text())["result"]["seed"] == 1  # the file is rewritten with the right run


def test_a_run_on_another_data_set_is_an_error_not_a_retrain(tmp_path, digits):
    config = StudyConfig(hidden=(8,), ps=(0.5,), seeds=(0,), epochs=1, variants=("bernoulli",), dataset="auto")
    run_study(config, tmp_path, data=digits, progress=False)
    other = Dataset(*digits[:4], DatasetInfo("mnist", "elsewhere", (8, 8), 10))
    with pytest.raises(ValueError, match="was trained on digits, this study loads mnist; use another --out"):
        run_study(config, tmp_path, data=other, progress=False)


def test_study_files_get_the_umask_mode(tmp_path, digits):
    config = StudyConfig(hidden=(8,), ps=(0.5,), seeds=(0,), epochs=1, variants=("bernoulli",), dataset="digits")
    old = os.umask(0o027)
    try:
        run_study(config, tmp_path, data=digits, progress=False)
    finally:
        os.umask(old)
    files = [
        tmp_path / "runs" / study.run_name("bernoulli", 0.5, 0),
        *(tmp_path / n for n in ("results.json", "results.md", "accuracy.html")),
    ]
    assert {f.stat().st_mode & 0o777 for f in files} == {0o640}  # 0o666 & ~0o027, not mkstemp's 0o600


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--seeds", "0", "0"], r"seeds must not repeat a value, got \(0, 0\)"),
        (["--ps", "0.5", "0.5"], "ps must not repeat a value"),
        (["--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
    ],
)
def test_cli_rejects_bad_settings_before_any_run(tmp_path, capsys, extra, message):
    from approxdrop.experiments.cli import main

    argv = ["study", "mlp", "--out", str(tmp_path / "out"), "--dataset", "digits", "--hidden", "8", "--epochs", "1"]
    assert main([*argv, "--variants", "bernoulli", "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_summary_to_json(tmp_path, capsys):
    from approxdrop.experiments.cli import main

    argv = ["study", "mlp", "--out", str(tmp_path), "--dataset", "digits", "--hidden", "8", "--epochs", "1"]
    record = tmp_path / "record.json"
    assert main([*argv, "--seeds", "0", "--ps", "0.5", "--variants", "bernoulli", "row", "--no-progress",
                 "--json", str(record)]) == 0  # fmt: skip
    rows = json.loads(record.read_text())["rows"]
    assert [(r["variant"], r["p"], r["seeds"]) for r in rows] == [("bernoulli", 0.5, 1), ("row", 0.5, 1)]
