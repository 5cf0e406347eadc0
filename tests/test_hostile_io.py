"""Hostile input to the commands, the data loaders and the file writes (issue #28 items 7, 8, 9, 12, 16):
diverged seeds in bench-transformer, mirror URLs that are not URLs, --json on something that is not a
regular file, usage errors for bad sizes, repeated methods and unusable output paths before any work,
and bounds on --threads and on the warm-up."""

import errno
import json
import math
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from approxdrop import load_corpus, load_dataset
from approxdrop._env import write_atomic, write_json_atomic
from approxdrop.experiments import bench, bench_lstm, bench_transformer, options, study
from approxdrop.experiments.bench_transformer import TransformerRaceConfig, format_table, summarise
from approxdrop.experiments.cli import main as cli_main
from approxdrop.training.race import History, Metric, RaceResult

# --------------------------------------------------------------------------- item 7: diverged seeds


def fake_race(seed: int, diverged: set[str]) -> RaceResult:
    """A finished race of two methods; the methods in ``diverged`` stopped at step 2 with a NaN loss."""
    histories = {}
    for method in ("nn.Dropout", "row G=1"):
        gone = method in diverged
        histories[method] = History(
            step=[1, 2], loss=[2.0, math.nan if gone else 1.5], seconds=[0.01, 0.02], eval_step=[] if gone else [2],
            metric=[] if gone else [1.5 + seed / 10], diverged_at=2 if gone else None,
        )  # fmt: skip
    config = TransformerRaceConfig("tiny", 0.1, steps=2, warmup=1, seed=seed)
    metric = Metric("valid loss", higher_is_better=False)
    return RaceResult(histories, metric, config, {"nn.Dropout": 1.0, "row G=1": 0.8}, "cpu", ("nn.Dropout",))


def test_a_method_diverged_in_every_seed_is_reported_and_the_rest_written(tmp_path):
    rows = summarise("tiny", 0.1, [fake_race(seed, {"row G=1"}) for seed in range(3)])
    base, gone = rows
    assert base.diverged == 0 and base.valid_loss_mean == pytest.approx(1.6) and base.valid_loss_std > 0
    assert gone.diverged == 3 and math.isnan(gone.valid_loss_mean) and math.isnan(gone.gap_percent)
    table = format_table(rows)
    assert "| diverged (3 diverged) | - |" in table and "| 1.6000 ± 0.1000 | +0.00% |" in table
    args = Namespace(json=tmp_path / "out.json", device="cpu", size="tiny")
    options.write_record(args, rows)
    data = json.loads(args.json.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    assert data["rows"][1]["valid_loss_mean"] is None and data["rows"][1]["diverged"] == 3
    assert data["rows"][0]["valid_loss_mean"] == pytest.approx(1.6)


def test_diverged_seeds_are_left_out_of_the_mean_and_counted():
    rows = summarise("tiny", 0.1, [fake_race(0, {"row G=1"}), fake_race(1, set()), fake_race(2, set())])
    assert rows[1].diverged == 1 and rows[1].valid_loss_mean == pytest.approx(1.65)
    assert rows[1].valid_losses[0] != rows[1].valid_losses[0]  # nan where it diverged


# --------------------------------------------------------------------------- item 8: bad mirror URLs


@pytest.mark.parametrize("url", ["not a url", "http://[::1", "ftp//host"])
def test_a_mirror_url_that_is_not_a_url_falls_back_naming_it(url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("APPROXDROP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("APPROXDROP_MNIST_URL", url)
    monkeypatch.setenv("APPROXDROP_PTB_URL", url)
    load_dataset("auto")
    load_corpus("auto")
    out = capsys.readouterr().out
    assert f"mnist unavailable (bad download URL {url + '/train-images-idx3-ubyte.gz'!r}" in out, out
    assert f"ptb unavailable (bad download URL {url + '/ptb.train.txt'!r}" in out, out


# --------------------------------------------------------------------------- item 9: only regular files


def test_write_atomic_writes_through_a_symlink_and_keeps_it(tmp_path):
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    write_json_atomic(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}


@pytest.mark.parametrize("via_link", [False, True], ids=["fifo", "link-to-fifo"])
def test_write_atomic_refuses_what_is_not_a_regular_file(tmp_path, via_link):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = fifo
    if via_link:
        path = tmp_path / "link"
        path.symlink_to(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        write_atomic(path, lambda f: f.write("x"))
    assert fifo.is_fifo() and path.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_a_link_to_a_device_is_refused_and_left_alone(tmp_path):
    link = tmp_path / "link"
    link.symlink_to("/dev/null")
    with pytest.raises(ValueError, match=r"link is not a regular file \(it leads to /dev/null\)"):
        write_json_atomic(link, {"a": 1})
    assert link.is_symlink() and Path("/dev/null").is_char_device()


def test_json_on_a_fifo_is_a_usage_error_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("ran"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert cli_main(["bench", "--no-progress", "--json", str(fifo)]) == 2
    assert f"--json {fifo}: cannot write a file there ({fifo} is not a regular file" in capsys.readouterr().err
    assert fifo.is_fifo()


# --------------------------------------------------------------------------- item 12: usage errors, before work


@pytest.fixture
def no_work(monkeypatch):
    for module, name in [
        (bench, "measure"), (study, "run_study"), (bench_lstm, "measure_lstm"), (bench_lstm, "perplexity_runs"),
        (bench_lstm, "load_corpus"), (bench_transformer, "measure_transformer"), (bench_transformer, "load_corpus"),
    ]:  # fmt: skip
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("work started"))


def usage_error(argv, capsys) -> str:
    """The usage error's text of ``approxdrop argv``, which must exit 2 with no traceback."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err, err
    return err


def test_bench_needs_two_sizes(no_work, capsys):
    assert "--sizes 16: give at least an input and an output width" in usage_error(["bench", "--sizes", "16"], capsys)


@pytest.mark.parametrize("command", ["bench", "bench-lstm"])
def test_a_repeated_method_is_a_usage_error(command, no_work, capsys):
    err = usage_error([command, "--methods", "bernoulli", "row", "row"], capsys)
    assert "--methods: row is given twice, got bernoulli row row" in err


def test_bench_lstm_with_nothing_to_run_is_a_usage_error(no_work, capsys):
    err = usage_error(["bench-lstm", "--sizes"], capsys)
    assert "nothing to run: --sizes names no size to time and --perplexity-steps is 0" in err


def test_study_out_on_a_file_is_a_usage_error(no_work, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = usage_error(["study", "mlp", "--out", str(tmp_path / "file")], capsys)
    assert f"--out {tmp_path / 'file'}: cannot write there ({tmp_path / 'file'} is not a directory)" in err


def test_study_out_on_a_full_disk_is_a_usage_error(no_work, tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(options.os, "fsync", full)  # the disk is full: the probe's data cannot land
    err = usage_error(["study", "mlp", "--out", str(tmp_path / "study")], capsys)
    assert f"--out {tmp_path / 'study'}: cannot write there ({tmp_path} takes no file: No space left" in err
    assert list(tmp_path.iterdir()) == []  # the probe is gone, nothing was created


def test_a_disk_that_fills_up_mid_study_ends_with_an_error_line(tmp_path, monkeypatch, capsys):
    def fills_up(config, out, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "row-p0.5-seed0.json"))

    monkeypatch.setattr(study, "run_study", fills_up)
    assert cli_main(["study", "mlp", "--no-progress", "--out", str(tmp_path / "study")]) == 1
    err = capsys.readouterr().err
    assert "approxdrop study: error: [Errno 28] No space left on device" in err and "to resume" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("inside", ["", "results.json"], ids=["the-directory", "its-summary"])
def test_study_json_that_is_the_study_directory_or_in_it_is_a_usage_error(inside, no_work, tmp_path, capsys):
    out = tmp_path / "study"
    if inside:
        out.mkdir()  # a study to resume: its folder is there (a --json on the folder itself fails as a directory)
    json_path = out / inside if inside else out
    err = usage_error(["study", "mlp", "--out", str(out), "--json", str(json_path)], capsys)
    assert f"--json {json_path}: is --out {out} or one of its files (results.json, results.md, accuracy.html)" in err


@pytest.mark.parametrize("where", ["proc", "read-only"])
def test_bench_lstm_perplexity_out_that_takes_no_file_fails_before_training(where, no_work, tmp_path, capsys):
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        tmp_path.chmod(0o555)
        folder = tmp_path / "runs"
    else:
        folder = Path("/proc/self/runs")  # /proc takes no file, even for root
    argv = ["bench-lstm", "--sizes", "--perplexity-steps", "1", "--perplexity-out", str(folder)]
    assert f"--perplexity-out {folder}: cannot write there (" in usage_error(argv, capsys)


def test_bench_lstm_json_that_is_the_perplexity_directory_is_a_usage_error(no_work, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["bench-lstm", "--sizes", "--perplexity-steps", "1", "--perplexity-out", str(out), "--json", str(out)]
    assert f"--json {out}: is --perplexity-out {out} or one of its files" in usage_error(argv, capsys)


# --------------------------------------------------------------------------- item 16: bounds


def test_threads_beyond_the_cpu_count_is_a_usage_error():
    """In a child process: before the bound, torch crashed on 100000 threads."""
    run = subprocess.run(
        [sys.executable, "-m", "approxdrop", "bench-search", "--threads", "100000", "--repeat", "1", "--no-lp"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert f"argument --threads: must be at most {os.cpu_count()} (this machine's CPUs), got 100000" in run.stderr


def test_a_warmup_as_long_as_the_run_is_a_usage_error(no_work, capsys):
    err = usage_error(["bench-transformer", "--warmup", "5", "--steps", "2"], capsys)
    assert "warmup (5) must be below steps (2): the step time is the median of the steps after it" in err
