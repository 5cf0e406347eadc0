"""approxdrop bench-overhead: every model and method measured, aten ops counted, the crossover found, and
bad options refused before any run."""

import json
import re

import pytest
import torch

from approxdrop.experiments.bench_overhead import (
    OP_COUNT_STEPS,
    CrossoverRow,
    ExecutorRow,
    _OpCounter,
    format_tables,
    lasting_win,
)
from approxdrop.experiments.cli import main as cli_main

QUICK = ["--threads", "1", "--warmup", "0", "--rounds", "2", "--steps", "1", "--no-progress"]
CROSS = ["--crossover-widths", "16", "32", "--crossover-batches", "4", "--crossover-rounds", "1"]


def test_bench_overhead_measures_every_model_and_writes_json(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert cli_main(["bench-overhead", *QUICK, *CROSS, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for model, methods in (("mlp", ("bernoulli", "row", "row-g4")), ("ffn", ("nn.Dropout", "row", "row-g4"))):
        for method in methods:
            assert f"| {model} | {method} |" in table
    assert "| lstm | row-g4 |" in table
    rows = json.loads(out.read_text())["rows"]
    ops = {(r["method"], r["executor"]): r for r in rows if "ops" in r}  # row methods: both executors
    assert set(ops) == {("bernoulli", "auto"), *((m, e) for m in ("row", "row-g4") for e in ("compact", "masked"))}
    for r in ops.values():
        low, high = r["ops_range"]
        assert 20 < r["compute_ops"] < r["ops"] and low <= r["ops"] <= high and r["steps"] == OP_COUNT_STEPS
    # the masked executor runs the dense GEMMs: about bernoulli's ops; compact row-g4 has ops per group and pair
    assert ops["row-g4", "masked"]["ops"] < ops["row-g4", "compact"]["ops"]
    cross = [r for r in rows if "ratios" in r]
    assert {(r["method"], r["batch"]) for r in cross} == {("row", 4), ("row-g4", 4)}
    for r in cross:  # the width from which every wider one wins too, or none
        ratios = {int(w): ratio for w, ratio in r["ratios"].items()}
        assert r["width"] == lasting_win(ratios)
    executors = [r for r in rows if "rule" in r]  # the CPU rule against the executor measured here
    assert {(r["method"], r["batch"], r["width"]) for r in executors} == {
        (m, 4, w) for m in ("row", "row-g4") for w in (16, 32)
    }
    for r in executors:
        assert r["rule"] == "masked"  # 4 rows: far below the rule's thresholds
        assert r["measured"] in ("masked", "compact") and r["masked_ms"] > 0 and r["compact_ms"] > 0
        faster = r["compact_ms"] < 0.95 * r["masked_ms"]
        assert r["measured"] == ("compact" if faster else "masked")
    assert "| row-g4 | 4 | 32 | masked |" in table


def test_the_op_counter_tells_views_from_ops_that_compute():
    a, b = torch.randn(4, 3), torch.randn(5, 3)
    with _OpCounter() as counter:
        y = torch.mm(a, b.t())  # t: a view; mm computes
        y[1:3].detach().relu_()  # slice, detach: views; relu_ computes
        torch.cat([y, y])  # computes
    assert sum(counter.ops.values()) == 6 and counter.compute == 3
    assert counter.ops["aten.t"] == counter.ops["aten.slice"] == counter.ops["aten.detach"] == 1


def test_the_crossover_is_the_width_from_which_every_wider_one_wins():
    assert lasting_win({16: 0.9, 32: 1.05, 64: 0.95, 128: 0.8}) == 64  # a dip below 1 that does not last
    assert lasting_win({16: 0.9, 32: 0.8}) == 16
    assert lasting_win({16: 0.9, 32: 1.0}) is None  # the widest one does not win
    assert lasting_win({64: 0.9, 16: 1.2, 32: 0.95}) == 32  # widths in any order


def test_crossover_table_says_none_where_no_width_wins():
    rows = [CrossoverRow("row", 8, None, {64: 1.5, 512: 1.1}), CrossoverRow("row-g4", 8, 512, {64: 2.0, 512: 0.9})]
    table = format_tables([], [], rows)
    assert "| row | 8 | none | 1.50 | 1.10 |" in table and "| row-g4 | 8 | 512 | 2.00 | 0.90 |" in table


@pytest.mark.parametrize("widths", [{}, {64: 1.5}, {64: 1.5, 512: 0.9}])
def test_crossover_table_has_as_many_columns_in_every_row(widths):
    table = format_tables([], [], [CrossoverRow("row", 8, lasting_win(widths), widths)])
    header, separator, row = table.splitlines()[-3:]
    assert header.startswith("| method | batch | wins from width |") and separator.startswith("|---|")
    assert header.count("|") == separator.count("|") == row.count("|") == 4 + len(widths)


def test_executor_table_shows_both_choices_and_dashes_for_untimed():
    rows = [ExecutorRow("row", 128, 2048, "compact", "masked", 75.0, None)]
    assert "| row | 128 | 2048 | compact | masked | 75.000 | - |" in format_tables([], [], [], rows)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "row", "row-g4"], "--methods must include bernoulli"),
        (["--methods", "bernoulli", "row", "row"], "argument --methods: row is given twice"),
        (["--lstm-methods", "row"], "--lstm-methods must include bernoulli"),
        (["--p", "1.0"], "argument --p: must be a dropout rate"),
        (["--crossover-widths"], "argument --crossover-widths: expected at least one argument"),
        (["--crossover-batches"], "argument --crossover-batches: expected at least one argument"),
    ],
)
def test_bad_options_are_usage_errors(extra, message, capsys):
    assert cli_main(["bench-overhead", *QUICK, *extra]) == 2
    assert message in capsys.readouterr().err


class CountingBar:
    """A progress bar that counts its steps (``bench_overhead.progress_bar`` stand-in)."""

    def __init__(self, total, desc, enabled=True, **options):
        self.total, self.n = total, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n


@pytest.mark.parametrize(
    "methods, lstm_methods",
    [(["bernoulli"], ["bernoulli", "row", "row-g4", "shared"]),
     (["bernoulli", "row", "row-g4", "shared"], ["bernoulli"])],
)  # fmt: skip
def test_the_bar_counts_every_phase_and_only_row_methods_have_executors(methods, lstm_methods, monkeypatch, capsys):
    from approxdrop.experiments import bench_overhead

    bars = []
    monkeypatch.setattr(bench_overhead, "progress_bar", lambda *a, **k: bars.append(CountingBar(*a, **k)) or bars[-1])
    argv = ["bench-overhead", *QUICK, "--methods", *methods, "--lstm-methods", *lstm_methods, "--no-op-counts",
            "--crossover-widths", "8", "--crossover-batches", "2", "--crossover-rounds", "1"]  # fmt: skip
    assert cli_main(argv) == 0
    (bar,) = bars
    assert bar.n == bar.total
    table = capsys.readouterr().out  # the executor table: the row methods only (shared runs no executor)
    executor_rows = re.findall(r"^\| ([\w-]+) \| 2 \| 8 \| (?:masked|compact) \|", table, re.MULTILINE)
    assert executor_rows == [m for m in methods if m in ("row", "row-g4")]
