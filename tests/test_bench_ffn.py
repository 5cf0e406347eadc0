"""approxdrop bench-ffn at a tiny size: the blocks it races, their shared weights, the table, bad options."""

import json
import re

import pytest
import torch

from approxdrop.experiments import bench_ffn
from approxdrop.experiments.cli import main
from approxdrop.models import ApproxDropoutFFN


def test_every_block_starts_from_the_dropout_blocks_weights_and_trains():
    torch.manual_seed(0)
    base = bench_ffn.block_for("bernoulli", 6, 10, 0.5)
    torch.manual_seed(0)
    row = bench_ffn.block_for("row-g4", 6, 10, 0.5)
    assert isinstance(base, torch.nn.Sequential) and isinstance(base[2], torch.nn.Dropout)
    assert isinstance(row, ApproxDropoutFFN) and row.groups == 4
    assert torch.equal(base.state_dict()["0.weight"], row.state_dict()["0.weight"])
    x, target = torch.randn(8, 3, 6), torch.randn(8, 3, 6)
    step = bench_ffn.ffn_step(row, x, target)
    before = row.state_dict()["3.weight"].clone()
    losses = [float(step()) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))) and not torch.equal(before, row.state_dict()["3.weight"])


def test_measure_gives_a_row_per_method_with_the_ratio_to_the_dropout_block():
    rows = bench_ffn.measure(8, 16, 4, 3, ps=(0.3, 0.5), methods=("bernoulli", "row"), warmup=0, rounds=2,
                             progress=False)  # fmt: skip
    assert [(r.method, r.p) for r in rows] == [("bernoulli", 0.3), ("row", 0.3), ("bernoulli", 0.5), ("row", 0.5)]
    assert all(r.ms_per_step > 0 for r in rows) and rows[0].ratio_to_dropout_block == 1.0
    assert rows[1].ratio_to_dropout_block == pytest.approx(rows[1].ms_per_step / rows[0].ms_per_step)
    table = bench_ffn.format_table(rows)
    assert "| 0.3 | nn.Dropout block |" in table and "| 0.5 | ApproxDropoutFFN row |" in table


def test_cli_prints_the_table_and_records_it(tmp_path, capsys):
    record = tmp_path / "ffn.json"
    argv = ["bench-ffn", "--d-model", "8", "--d-hidden", "16", "--batch", "4", "--sequence", "2", "--rounds", "1",
            "--warmup", "0", "--no-progress", "--json", str(record)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "MLP block d_model 8, d_hidden 16, 4 x 2 tokens" in out and "| 0.3 | ApproxDropoutFFN row-g4 |" in out
    assert [r["method"] for r in json.loads(record.read_text())["rows"]] == ["bernoulli", "row", "row-g4"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "row"], "methods must include 'bernoulli'"),
        (["--methods", "bernoulli", "tile"], "invalid choice: 'tile'"),
        (["--d-hidden", "0"], "argument --d-hidden: must be an int >= 1, got 0"),
        (["--ps", "1.5"], "argument --ps"),
    ],
)
def test_cli_rejects_bad_options(capsys, extra, message):
    assert main(["bench-ffn", "--d-model", "8", "--d-hidden", "16", "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
