"""approxdrop bench-overhead: every model and method measured, aten ops counted, the crossover found, and
bad options refused before any run."""

import json

import pytest

from approxdrop.experiments.bench_overhead import CrossoverRow, format_tables
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
    ops = {r["method"]: r["ops"] for r in rows if "ops" in r}
    assert set(ops) == {"bernoulli", "row", "row-g4"} and all(n > 20 for n in ops.values())
    cross = [r for r in rows if "ratios" in r]
    assert {(r["method"], r["batch"]) for r in cross} == {("row", 4), ("row-g4", 4)}
    for r in cross:  # the width is the first one that wins, or none
        wins = [int(w) for w, ratio in r["ratios"].items() if ratio < 1.0]
        assert r["width"] == (min(wins) if wins else None)


def test_crossover_table_says_none_where_no_width_wins():
    rows = [CrossoverRow("row", 8, None, {64: 1.5, 512: 1.1}), CrossoverRow("row-g4", 8, 512, {64: 2.0, 512: 0.9})]
    table = format_tables([], [], rows)
    assert "| row | 8 | none | 1.50 | 1.10 |" in table and "| row-g4 | 8 | 512 | 2.00 | 0.90 |" in table


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "row", "row-g4"], "--methods must be distinct and include bernoulli"),
        (["--methods", "bernoulli", "row", "row"], "--methods must be distinct and include bernoulli"),
        (["--lstm-methods", "row"], "--lstm-methods must be distinct and include bernoulli"),
        (["--p", "1.0"], "argument --p: must be a dropout rate"),
    ],
)
def test_bad_options_are_usage_errors(extra, message, capsys):
    assert cli_main(["bench-overhead", *QUICK, *extra]) == 2
    assert message in capsys.readouterr().err
