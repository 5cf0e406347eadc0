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


def tiny(**settings) -> StudyConfig:
    """A study that trains in a second on the digits fixture (300 train images: 100 held out)."""
    base = {"hidden": (8,), "ps": (0.5,), "seeds": (0,), "epochs": 1, "lrs": (0.03,), "val_size": 100,
            "variants": ("bernoulli",), "dataset": "digits"}  # fmt: skip
    return StudyConfig(**{**base, **settings})


TINY = tiny(hidden=(16,), seeds=(0, 1), epochs=2, batch=64, lrs=(0.01, 0.1), variants=("bernoulli", "row", "row-g4"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=300, test_size=100, verbose=False)


# the CLI on the digits set (1438 training images): 300 held out, one rate, a tiny MLP, one epoch
CLI = ["study", "mlp", "--dataset", "digits", "--val-size", "300", "--lrs", "0.03", "--hidden", "8", "--epochs", "1"]


def keys(results):
    return [(r.variant, r.p, r.seed) for r in results]


def test_study_pilots_every_rate_then_trains_every_run_at_the_chosen_one(tmp_path, digits):
    results = run_study(TINY, tmp_path, data=digits, progress=False)
    assert keys(results) == [(v, 0.5, s) for s in (0, 1) for v in TINY.variants]
    pilots = {}
    for v in TINY.variants:
        for lr in TINY.lrs:
            payload = json.loads((tmp_path / "pilot" / study.pilot_name(v, 0.5, lr)).read_text())["result"]
            assert payload["seed"] == 0 and len(payload["val_accuracy"]) == 1 and payload["test_accuracy"] is None
            pilots.setdefault(v, []).append(RunResult(**payload))
    for r in results:
        assert r.lr == study.choose_lr(pilots[r.variant])  # every seed of a cell at the pilot's rate
        assert len(r.val_accuracy) == 2 and len(r.epoch_seconds) == 2 and 0 <= r.test_accuracy <= 1
        assert (tmp_path / "runs" / study.run_name(r.variant, r.p, r.seed)).exists()
    table = (tmp_path / "results.md").read_text()
    assert "| bernoulli | 0.5 |" in table and "| row-g4 | 0.5 |" in table and "best p (validation)" in table
    assert "| variant | p | lr 0.01 | lr 0.1 |" in table and table.count("*") >= 3  # one chosen rate per cell
    summary = json.loads((tmp_path / "results.json").read_text())
    assert len(summary["summary"]) == len(TINY.variants) and len(summary["pilots"]) == 6
    assert "plotly" in (tmp_path / "accuracy.html").read_text()
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave nothing behind


def test_the_test_set_is_touched_once_per_full_run_and_never_by_a_pilot(tmp_path, digits, monkeypatch):
    seen = []
    real = study.evaluate
    monkeypatch.setattr(study, "evaluate", lambda model, x, y: seen.append(x is digits.test_x) or real(model, x, y))
    run_study(tiny(seeds=(0, 1), epochs=2, lrs=(0.01, 0.1)), tmp_path, data=digits, progress=False)
    # validation after each pilot epoch (2 pilots x 1) and each full epoch (2 runs x 2); the test set once per run
    assert seen.count(False) == 2 + 4 and seen.count(True) == 2
    split = study.split_validation(digits, 100)
    assert len(split.val_y) == 100 and len(split.train_y) == 200 and len(split.test_y) == len(digits.test_y)


def test_the_validation_split_is_a_seeded_part_of_the_training_set():
    n = 50
    data = Dataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n), torch.zeros(3, 1),
                   torch.zeros(3, dtype=torch.long), DatasetInfo("digits", "x", (1, 1), 10))  # fmt: skip
    split = study.split_validation(data, 10)
    train, val = set(split.train_y.tolist()), set(split.val_y.tolist())
    assert len(val) == 10 and not train & val and train | val == set(range(n))
    assert torch.equal(split.train_x[:, 0].long(), split.train_y)  # images stay with their labels
    assert torch.equal(study.split_validation(data, 10).val_y, split.val_y)  # the same split every time
    with pytest.raises(ValueError, match=r"val_size \(50\) must be smaller than the training set \(50 images\)"):
        study.split_validation(data, 50)


def test_choose_lr_takes_the_best_validation_accuracy_diverged_pilots_lose_ties_go_low():
    def pilot(lr, acc, diverged=False):
        return RunResult("row", 0.5, 0, lr, "x", [acc], [1.0], None, diverged)

    assert study.choose_lr([pilot(0.01, 0.5), pilot(0.03, 0.7), pilot(0.1, 0.6)]) == 0.03
    assert study.choose_lr([pilot(0.01, 0.5), pilot(0.1, 0.9, diverged=True)]) == 0.01
    assert study.choose_lr([pilot(0.1, 0.7), pilot(0.03, 0.7)]) == 0.03


def test_a_run_whose_loss_is_not_finite_is_marked_diverged(digits):
    split = study.split_validation(digits, 100)
    config = tiny(clip=None)
    assert study.train_run(config, split, "bernoulli", 0.5, 0, 0.03, 1, True).diverged is False
    assert study.train_run(config, split, "bernoulli", 0.5, 0, 1e30, 1, True).diverged is True


def test_parallel_workers_train_the_same_runs(tmp_path, digits):
    config = tiny(seeds=(0, 1), lrs=(0.01, 0.1), variants=("bernoulli", "row"))
    serial = run_study(config, tmp_path / "serial", data=digits, progress=False)
    parallel = run_study(config, tmp_path / "parallel", data=digits, progress=False, workers=2)
    strip = [(r.variant, r.seed, r.lr, r.val_accuracy, r.test_accuracy) for r in serial]
    assert [(r.variant, r.seed, r.lr, r.val_accuracy, r.test_accuracy) for r in parallel] == strip
    assert json.loads((tmp_path / "parallel" / "results.json").read_text())["workers"] == 2
    for path in (tmp_path / "parallel").glob("*/*.json"):  # each file: the worker's machine line (one thread)
        result = json.loads(path.read_text())["result"]
        assert result["workers"] == 2 and ", 1 thread; torch " in result["machine"], path
    with pytest.raises(ValueError, match=r"workers must be in \[1, inf\), got 0"):
        run_study(config, tmp_path / "serial", data=digits, progress=False, workers=0)


def test_a_failed_parallel_run_lets_the_running_ones_finish_and_be_written_then_raises(tmp_path, digits):
    split = study.split_validation(digits, 100)
    slow, broken = tmp_path / "pilot" / "slow.json", tmp_path / "pilot" / "broken.json"
    jobs = {slow: ("bernoulli", 0.5, 0, 0.03, 100, False), broken: ("no-such-method", 0.5, 0, 0.03, 1, False)}
    with pytest.raises(ValueError, match="no-such-method"):  # the broken one fails at once, the slow one takes seconds
        study._train_all(tiny(hidden=(1024, 1024)), split, jobs, 2, study.progress_bar(101, "study", False))
    saved = json.loads(slow.read_text())  # trained while the broken one failed: written, not lost
    assert len(saved["result"]["val_accuracy"]) == 100 and not broken.exists()


def test_study_resumes_where_it_stopped(tmp_path, digits, monkeypatch, capsys):
    run_study(TINY, tmp_path, data=digits, progress=False)
    trained = []
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda *a, **k: trained.append(a[2:5]) or real(*a, **k))
    run_study(TINY, tmp_path, data=digits, progress=False)
    assert trained == []  # everything was there
    (tmp_path / "runs" / study.run_name("row", 0.5, 1)).unlink()  # interrupted before this run ended
    (tmp_path / "runs" / study.run_name("row-g4", 0.5, 0)).write_text("{not json")  # a broken file
    (tmp_path / "pilot" / study.pilot_name("bernoulli", 0.5, 0.1)).unlink()
    run_study(TINY, tmp_path, data=digits, progress=False)
    assert sorted(trained) == [("bernoulli", 0.5, 0), ("row", 0.5, 1), ("row-g4", 0.5, 0)]
    assert "ignoring unreadable row-g4-p0.5-seed0.json" in capsys.readouterr().err


def test_study_directory_belongs_to_one_setting(tmp_path, digits):
    run_study(tiny(), tmp_path, data=digits, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        run_study(tiny(epochs=2), tmp_path, data=digits, progress=False)


def count_trainings(monkeypatch) -> list[tuple]:
    """Every (variant, p, seed, lr, epochs) trained from now on."""
    trained = []
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda *a, **k: trained.append(a[2:7]) or real(*a, **k))
    return trained


def test_a_study_with_more_or_fewer_variants_ps_or_seeds_reuses_the_runs_it_has(tmp_path, digits, monkeypatch):
    config = tiny(seeds=(0, 1), lrs=(0.01, 0.1), variants=("bernoulli", "row"))
    run_study(config, tmp_path, data=digits, progress=False)
    files = sorted(tmp_path.glob("*/*.json"))
    before = {f: (f.stat().st_mtime_ns, f.read_text()) for f in files}
    assert len(files) == 2 * 2 + 2 * 2  # pilots (variant, lr) and runs (variant, seed)
    assert {json.dumps(json.loads(f.read_text())["config"]) for f in files} == {json.dumps(study.run_settings(config))}
    assert "variants" not in study.run_settings(config) and study.run_settings(config)["pilot_seed"] == 0
    trained = count_trainings(monkeypatch)
    more = tiny(seeds=(0, 1), lrs=(0.01, 0.1), variants=("bernoulli", "row", "row-g4"))
    results = run_study(more, tmp_path, data=digits, progress=False)
    pilots = [("row-g4", 0.5, 0, lr, 1) for lr in (0.01, 0.1)]
    chosen = results[2].lr
    assert sorted(trained) == sorted([*pilots, *(("row-g4", 0.5, s, chosen, 1) for s in (0, 1))])
    assert {f: (f.stat().st_mtime_ns, f.read_text()) for f in files} == before  # every old file reused untouched
    assert keys(results) == [(v, 0.5, s) for s in (0, 1) for v in more.variants]
    assert len(json.loads((tmp_path / "results.json").read_text())["summary"]) == 3
    trained.clear()
    fewer = run_study(tiny(seeds=(0, 1, 2), ps=(0.5, 0.3), lrs=(0.01, 0.1), variants=("row",)), tmp_path, data=digits,
                      progress=False)  # fmt: skip
    new_p = [*(("row", 0.3, 0, lr, 1) for lr in (0.01, 0.1)), *(("row", 0.3, s, fewer[1].lr, 1) for s in (0, 1, 2))]
    assert sorted(trained) == sorted([*new_p, ("row", 0.5, 2, results[1].lr, 1)])  # only the new p's and seed's
    assert [r for r in fewer if r.p == 0.5 and r.seed < 2] == [r for r in results if r.variant == "row"]


@pytest.mark.parametrize(
    "change, difference",
    [
        ({"epochs": 2}, "epochs 1, not 2"),
        ({"lrs": (0.03, 0.1)}, r"lrs \[0.03\], not \[0.03, 0.1\]"),
        ({"clip": None}, "clip 2.0, not None"),
        ({"val_size": 50}, "val_size 100, not 50"),
        ({"hidden": (4,)}, r"hidden \[8\], not \[4\]"),
        ({"seeds": (1, 0)}, "pilot_seed 0, not 1"),  # the pilots, which chose every rate, trained another seed
    ],
)
def test_a_changed_setting_that_matters_is_refused_naming_it(tmp_path, digits, change, difference):
    run_study(tiny(seeds=(0, 1)), tmp_path, data=digits, progress=False)
    trained = sorted(tmp_path.glob("*/*.json"))
    with pytest.raises(ValueError, match=f"was made with other settings \\({difference}\\); use another --out"):
        run_study(tiny(**{"seeds": (0, 1), **change}), tmp_path, data=digits, progress=False)
    assert sorted(tmp_path.glob("*/*.json")) == trained


def test_old_files_that_record_the_whole_config_are_reused(tmp_path, digits, monkeypatch):
    config = tiny(seeds=(0, 1), lrs=(0.01, 0.1), variants=("bernoulli", "row"))
    first = run_study(config, tmp_path, data=digits, progress=False)
    old = {**asdict(config), "variants": ["bernoulli", "row", "tile-g4"], "ps": [0.5, 0.7]}  # as files were written
    for path in tmp_path.glob("*/*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "config": old}))
    trained = count_trainings(monkeypatch)
    assert run_study(config, tmp_path, data=digits, progress=False) == first and trained == []
    assert json.loads((tmp_path / "runs" / study.run_name("row", 0.5, 1)).read_text())["config"] == json.loads(
        json.dumps(old)
    )  # read as it is, not rewritten
    with pytest.raises(ValueError, match=r"other settings \(epochs 1, not 2\)"):
        run_study(tiny(seeds=(0, 1), lrs=(0.01, 0.1), epochs=2), tmp_path, data=digits, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(pilot_seed 0, not 1\)"):
        run_study(tiny(seeds=(1,), lrs=(0.01, 0.1)), tmp_path, data=digits, progress=False)


def test_summary_statistics_and_table():
    runs = [
        RunResult("bernoulli", 0.5, 0, 0.1, "x", [0.5, 0.6], [1.0, 3.0], 0.80),
        RunResult("bernoulli", 0.5, 1, 0.1, "x", [0.5, 0.8], [2.0, 2.0], 0.90),
        RunResult("row", 0.5, 0, 0.03, "x", [0.5, 0.9], [1.0, 1.0], 0.84),
        RunResult("row", 0.5, 1, 0.03, "x", [0.5, 0.9], [1.0, 1.0], 0.82, True),
        RunResult("row", 0.3, 0, 0.03, "x", [0.5, 0.7], [1.0, 1.0], 0.95),
    ]
    rows = {(r.variant, r.p): r for r in summarise(runs)}
    assert rows[("bernoulli", 0.5)].accuracy_mean == pytest.approx(0.85)
    assert rows[("bernoulli", 0.5)].accuracy_std == pytest.approx(0.0707107, rel=1e-5)
    assert rows[("bernoulli", 0.5)].val_accuracy_mean == pytest.approx(0.7)
    assert rows[("bernoulli", 0.5)].seconds_per_epoch == 2.0 and rows[("row", 0.3)].seeds == 1
    assert rows[("row", 0.5)].diverged == 1 and rows[("row", 0.5)].lr == 0.03
    assert best_p(list(rows.values()))["row"].p == 0.5  # by validation (0.9 > 0.7), not by test (0.95)
    pilots = [RunResult("row", 0.5, 0, lr, "x", [acc], [1.0]) for lr, acc in ((0.03, 0.6), (0.1, 0.4))]
    table = format_table(list(rows.values()), pilots)
    assert "| row | 0.5 | 0.03 | 90.00 | 83.00 ± 1.41 (1 diverged) | -2.00 | 1.0 |" in table
    assert "| row | 0.3 | 0.03 | 70.00 | 95.00 ± 0.00 | - | 1.0 |" in table  # no bernoulli at p = 0.3
    assert "| row | 0.5 | 83.00 |" in table
    assert "| row | 0.5 | 60.00* | 40.00 |" in table


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
        ({"lrs": (float("nan"),)}, "lr must be a finite number > 0, got nan"),
        ({"lrs": (0.1, 0)}, "lr must be a finite number > 0, got 0"),
        ({"lrs": (0.1, 0.1)}, r"lrs must not repeat a value, got \(0.1, 0.1\)"),
        ({"lrs": ()}, "lrs must be a non-empty tuple"),
        ({"pilot_epochs": 0}, r"pilot_epochs must be in \[1, inf\), got 0"),
        ({"val_size": 0}, r"val_size must be in \[1, inf\), got 0"),
        ({"train_size": 100, "val_size": 100}, r"val_size \(100\) must be smaller than train_size \(100\)"),
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
        ({"ps": (0.5, 0.99), "variants": ("row", "row-extended")}, "variant row-extended: p=0.99 is above 0.984375"),
        ({"ps": (0.9995,), "variants": ("bernoulli", "tile")}, r"variant tile: p=0.9995 is above 0.9990234"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**kwargs)


def test_cli_runs_the_study(tmp_path, capsys):
    from approxdrop.experiments.cli import main

    argv = [*CLI, "--out", str(tmp_path), "--seeds", "0", "--ps", "0.5", "--variants", "bernoulli", "row"]
    assert main([*argv, "--no-progress", "--lrs", "0.01", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "| row | 0.5 |" in out and "| variant | p | lr 0.01 | lr 0.1 |" in out


def test_cli_clips_gradients_and_sets_threads(tmp_path, capsys, monkeypatch):
    from approxdrop.experiments.cli import main

    clips = []
    real_step = study.training_step
    monkeypatch.setattr(study, "training_step", lambda *a, clip: clips.append(clip) or real_step(*a, clip=clip))
    threads = torch.get_num_threads()
    try:
        argv = [*CLI, "--out", str(tmp_path), "--seeds", "0", "--ps", "0.5", "--variants", "row"]
        assert main([*argv, "--clip", "1.5", "--threads", "1", "--no-progress"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert clips and set(clips) == {1.5}
    assert json.loads((tmp_path / "results.json").read_text())["config"]["clip"] == 1.5
    assert "gradient-norm clip 1.5" in capsys.readouterr().out


def test_study_figure_plots_means_against_p_and_time():
    from approxdrop.experiments.study_figure import study_figure

    runs = [
        RunResult("bernoulli", 0.5, 0, 0.1, "x", [0.6, 0.8], [1.0, 3.0], 0.8),
        RunResult("bernoulli", 0.5, 1, 0.1, "x", [0.4, 0.9], [2.0, 2.0], 0.9),
        RunResult("row", 0.5, 0, 0.1, "x", [0.5, 0.7], [1.0, 1.0], 0.7),
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
    config = StudyConfig(hidden=[16], ps=[0, np.float32(0.5)], seeds=[np.int64(3)], variants=["row"], lrs=[1],
                         epochs=np.int32(2), clip=np.float64(1.5), train_size=np.int16(10),
                         val_size=np.int8(5))  # fmt: skip
    assert config.hidden == (16,) and config.ps == (0.0, 0.5) and config.seeds == (3,) and config.variants == ("row",)
    assert config.lrs == (1.0,) and config.val_size == 5 and type(config.val_size) is int
    assert [type(v) for v in (*config.ps, *config.lrs, config.clip)] == [float] * 4
    assert [type(v) for v in (*config.seeds, config.epochs, config.train_size)] == [int] * 3
    json.dumps(asdict(config))  # what every run file records


def test_close_rates_get_their_own_run_files(tmp_path, digits, monkeypatch):
    ps = (0.3, 0.30000000000000004)  # both print as 0.3 with {:g}
    assert len({study.run_name("row", p, 0) for p in ps}) == 2
    config = tiny(ps=ps)
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
        (lambda r: {**r, "seed": 0}, "it holds bernoulli p=0.5 seed 0 lr 0.03, not bernoulli p=0.5 seed 1 lr 0.03"),
        (lambda r: {**r, "p": 0.7}, "it holds bernoulli p=0.7 seed 1 lr 0.03, not bernoulli p=0.5 seed 1"),
        (lambda r: {**r, "lr": 0.1}, r"it holds bernoulli p=0.5 seed 1 lr 0.1, not bernoulli p=0.5 seed 1 lr 0.03"),
        (
            lambda r: {**r, "val_accuracy": [], "epoch_seconds": []},
            r"its val_accuracy has length 0, not one value per epoch",
        ),
        (
            lambda r: {**r, "val_accuracy": r["val_accuracy"][:1]},
            "its val_accuracy has length 1, not one value per epoch",
        ),
        (
            lambda r: {**r, "epoch_seconds": [1.0, 2.0, 3.0]},
            r"its epoch_seconds has length 3, not one value per epoch \(2\)",
        ),
        (lambda r: {**r, "val_accuracy": [0.5, 1.5]}, r"its val_accuracy holds \[1.5\], outside \[0, 1\]"),
        (lambda r: {**r, "epoch_seconds": [1.0, "fast"]}, r"its epoch_seconds holds \['fast'\], outside"),
        (lambda r: {**r, "val_accuracy": None}, "its val_accuracy is None, not one value per epoch"),
        (lambda r: {**r, "test_accuracy": None}, r"its test_accuracy is None, not an accuracy in \[0, 1\]"),
        (lambda r: {**r, "test_accuracy": 1.5}, r"its test_accuracy is 1.5, not an accuracy in \[0, 1\]"),
    ],
)
def test_a_run_file_that_is_not_its_run_is_trained_again(tmp_path, digits, monkeypatch, capsys, spoil, reason):
    config = tiny(seeds=(0, 1), epochs=2)
    first = run_study(config, tmp_path, data=digits, progress=False)
    path = tmp_path / "runs" / study.run_name("bernoulli", 0.5, 1)
    payload = json.loads(path.read_text())
    payload["result"] = spoil(payload["result"])
    path.write_text(json.dumps(payload))
    trained = []
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda *a, **k: trained.append(a[2:5]) or real(*a, **k))
    again = run_study(config, tmp_path, data=digits, progress=False)
    assert trained == [("bernoulli", 0.5, 1)]
    assert [(r.variant, r.p, r.seed) for r in again] == [("bernoulli", 0.5, 0), ("bernoulli", 0.5, 1)]
    assert [len(r.val_accuracy) for r in again] == [2, 2] and again[0] == first[0]
    err = capsys.readouterr().err
    assert f"ignoring {path.name}: " in err and "training it again" in err
    assert re.search(reason, err), err
    assert json.loads(path.read_text())["result"]["seed"] == 1  # the file is rewritten with the right run


def test_a_run_on_another_data_set_is_an_error_not_a_retrain(tmp_path, digits):
    config = tiny(dataset="auto")
    run_study(config, tmp_path, data=digits, progress=False)
    other = Dataset(*digits[:4], DatasetInfo("mnist", "elsewhere", (8, 8), 10))
    with pytest.raises(ValueError, match="was trained on digits, this study loads mnist; use another --out"):
        run_study(config, tmp_path, data=other, progress=False)


def test_study_files_get_the_umask_mode(tmp_path, digits):
    config = tiny()
    old = os.umask(0o027)
    try:
        run_study(config, tmp_path, data=digits, progress=False)
    finally:
        os.umask(old)
    files = [
        tmp_path / "runs" / study.run_name("bernoulli", 0.5, 0),
        tmp_path / "pilot" / study.pilot_name("bernoulli", 0.5, 0.03),
        *(tmp_path / n for n in ("results.json", "results.md", "accuracy.html")),
    ]
    assert {f.stat().st_mode & 0o777 for f in files} == {0o640}  # 0o666 & ~0o027, not mkstemp's 0o600


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lrs", "0.1", "nan"], "lr must be a finite number > 0, got nan"),
        (["--workers", "0"], "argument --workers: must be an int >= 1, got 0"),
        (["--val-size", "1438"], r"val_size \(1438\) must be smaller than the training set \(1438 images\)"),
        (["--seeds", "0", "0"], "argument --seeds: 0 is given twice, got 0 0"),
        (["--ps", "0.5", "0.5"], "argument --ps: 0.5 is given twice, got 0.5 0.5"),
        (["--variants", "row", "row"], "argument --variants: row is given twice, got row row"),
        (["--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
        (["--ps", "0.99", "--variants", "bernoulli", "row-extended"], "variant row-extended: p=0.99 is above"),
    ],
)
def test_cli_rejects_bad_settings_before_any_run(tmp_path, capsys, extra, message):
    from approxdrop.experiments.cli import main

    argv = ["study", "mlp", "--out", str(tmp_path / "out"), "--dataset", "digits", "--hidden", "8", "--epochs", "1"]
    assert main([*argv, "--variants", "bernoulli", "--lrs", "0.1", "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_cli_trains_on_the_device_it_is_given(tmp_path, capsys, monkeypatch):
    from approxdrop.experiments.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine: the default would be cuda
    devices = []
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda c, data, *a, **k: devices.append(data.train_x.device.type)
                        or real(c, data, *a, **k))  # fmt: skip
    argv = [*CLI, "--out", str(tmp_path), "--seeds", "0", "--ps", "0.5", "--variants", "bernoulli", "--device", "cpu"]
    assert main([*argv, "--no-progress"]) == 0
    assert devices == ["cpu", "cpu"]  # the pilot and the run
    assert "- Machine: CPU " in (tmp_path / "results.md").read_text()


def test_a_progress_bar_written_to_a_log_is_not_redrawn_for_every_run(tmp_path, digits, capsys):
    run_study(tiny(seeds=(0, 1, 2), lrs=(0.01, 0.1), variants=("bernoulli", "row")), tmp_path, data=digits)
    err = capsys.readouterr().err  # not a terminal: at most one update per LOG_INTERVAL_S (30 s) and the last
    assert err.count("study:") <= 2 and "10/10" in err, err


def test_cli_writes_the_summary_to_json(tmp_path, capsys):
    from approxdrop.experiments.cli import main

    argv = [*CLI, "--out", str(tmp_path), "--seeds", "0", "--ps", "0.5", "--variants", "bernoulli", "row"]
    record = tmp_path / "record.json"
    assert main([*argv, "--no-progress", "--json", str(record)]) == 0
    rows = json.loads(record.read_text())["rows"]
    assert [(r["variant"], r["p"], r["seeds"]) for r in rows] == [("bernoulli", 0.5, 1), ("row", 0.5, 1)]


def machine_lines(out) -> list[str]:
    return [line for line in (out / "results.md").read_text().splitlines() if line.startswith("- Machine: ")]


def test_each_run_file_records_where_and_when_it_was_trained_and_a_resumed_summary_says_that(
    tmp_path, digits, monkeypatch
):
    import datetime

    from approxdrop._env import describe_machine

    run_study(TINY, tmp_path, data=digits, progress=False)
    here = describe_machine("cpu")
    for path in tmp_path.glob("*/*.json"):
        result = json.loads(path.read_text())["result"]
        assert result["machine"] == here and result["workers"] == 1, path
        datetime.datetime.fromisoformat(result["trained"])
    monkeypatch.setattr(study, "describe_machine", lambda device: "ANOTHER MACHINE")  # resumed elsewhere, later
    trained = count_trainings(monkeypatch)
    run_study(TINY, tmp_path, data=digits, progress=False, workers=2)
    assert trained == []  # every run reused: the summary's machine and parallel runs are still the first ones
    text = (tmp_path / "results.md").read_text()
    assert "ANOTHER MACHINE" not in text and "2 run(s) in parallel" not in text
    (line,) = machine_lines(tmp_path)
    assert line.startswith(f"- Machine: {here}; 1 run(s) in parallel (every run, trained ")
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["machine"] == here and summary["workers"] == 1 and summary["trained_on"][0]["runs"] == 12
    assert {r["machine"] for r in summary["runs"]} == {here}


def test_runs_whose_files_record_no_machine_are_said_to_be_not_recorded(tmp_path, digits, monkeypatch):
    from approxdrop._env import describe_machine

    run_study(TINY, tmp_path, data=digits, progress=False)
    for path in sorted((tmp_path / "runs").glob("*.json"))[:2]:  # as run files were written before
        payload = json.loads(path.read_text())
        payload["result"] = {k: v for k, v in payload["result"].items() if k not in ("machine", "trained", "workers")}
        path.write_text(json.dumps(payload))
    monkeypatch.setattr(study, "describe_machine", lambda device: "ANOTHER MACHINE")
    trained = count_trainings(monkeypatch)
    run_study(TINY, tmp_path, data=digits, progress=False)
    assert trained == []  # old files are reused, not trained again
    first, second = machine_lines(tmp_path)
    assert first.startswith(f"- Machine: {describe_machine('cpu')}; 1 run(s) in parallel (10 of the 12 runs, trained ")
    assert second == "- Machine: not recorded (2 of the 12 runs: files written before run files recorded their machine)"
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["machine"] is None and summary["workers"] is None and len(summary["trained_on"]) == 2


def test_the_summary_names_every_machine_its_runs_were_trained_on():
    def run(seed, machine, workers, trained):
        return RunResult("row", 0.5, seed, 0.1, "x", [0.5], [1.0], 0.8, False, machine, trained, workers)

    runs = [run(0, "B", 1, "2026-11-30T13:00:00"), run(1, "A", 2, "2026-11-30T10:55:00"),
            run(2, None, None, None), run(3, "A", 2, "2026-11-30T10:00:00")]  # fmt: skip
    assert study.describe_trained_on(runs) == (
        "A; 2 run(s) in parallel (2 of the 4 runs, trained 2026-11-30T10:00:00 to 2026-11-30T10:55:00) | "
        "B; 1 run(s) in parallel (1 of the 4 runs, trained 2026-11-30T13:00:00) | "
        "not recorded (1 of the 4 runs: files written before run files recorded their machine)"
    )


def test_the_json_record_of_a_resumed_study_names_the_machine_its_runs_were_trained_on(tmp_path, capsys, monkeypatch):
    from approxdrop._env import describe_machine
    from approxdrop.experiments import options
    from approxdrop.experiments.cli import main

    argv = [*CLI, "--out", str(tmp_path / "study"), "--seeds", "0", "--ps", "0.5", "--variants", "bernoulli"]
    assert main([*argv, "--no-progress"]) == 0
    for module in (study, options):
        monkeypatch.setattr(module, "describe_machine", lambda device: "ANOTHER MACHINE")
    record = tmp_path / "record.json"
    assert main([*argv, "--no-progress", "--json", str(record)]) == 0
    machine = json.loads(record.read_text())["machine"]
    assert machine.startswith(f"{describe_machine('cpu')}; 1 run(s) in parallel (every run, trained ")
