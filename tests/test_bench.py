"""The training-step benchmark: its GEMM-work bound (METHOD.md §6), a tiny real run, the CLI."""

import json
import subprocess
import sys

import pytest

from approxdrop import METHODS
from approxdrop.experiments.bench import PAPER_SIZES, format_table, measure
from approxdrop.experiments.cli import main as cli_main
from approxdrop.models import mlp_gemm_work


@pytest.mark.parametrize("p, left", [(0.3, 0.549), (0.5, 0.320), (0.7, 0.149)])
def test_row_gemm_work_matches_method_md(p, left):
    assert mlp_gemm_work(PAPER_SIZES, p, "row") == pytest.approx(left, abs=5e-4)
    assert mlp_gemm_work(PAPER_SIZES, p, "shared") == mlp_gemm_work(PAPER_SIZES, p, "row")


def test_gemm_work_of_the_other_methods():
    assert mlp_gemm_work(PAPER_SIZES, 0.5, "bernoulli") == 1.0
    assert mlp_gemm_work(PAPER_SIZES, 0.5, "none") == 1.0
    # tile: the two weights that read a site keep half their tiles, the first layer is dense
    dense = 784 * 2048 + 2048 * 2048 + 2048 * 10
    assert mlp_gemm_work(PAPER_SIZES, 0.5, "tile") == pytest.approx((784 * 2048 + 0.5 * (dense - 784 * 2048)) / dense)
    # input dropout adds a site on the first layer's input
    assert mlp_gemm_work([4, 4], 0.5, "row", input_dropout=True) == 0.5


def test_measure_runs_every_method_side_by_side():
    rows = measure(sizes=(12, 16, 16, 3), batch=8, ps=(0.5,), tile=4, warmup=1, rounds=2, steps=1, progress=False)
    assert [r.method for r in rows] == list(METHODS)
    base = next(r for r in rows if r.method == "bernoulli")
    assert base.ratio_to_bernoulli == 1.0
    for r in rows:
        assert r.ms_per_step > 0 and r.rounds == 2
        assert r.ratio_to_bernoulli == pytest.approx(r.ms_per_step / base.ms_per_step)
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| 0.5 | row |" in table


def test_measure_needs_the_baseline():
    with pytest.raises(ValueError, match="must include 'bernoulli'"):
        measure(methods=("row",), progress=False)


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--sizes", "10", "8", "3", "--batch", "4", "--ps", "0.3", "0.7", "--rounds", "1", "--warmup", "0"]
    assert cli_main(["bench", *argv, "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ApproxDropoutMLP [10, 8, 3], batch 4" in printed and "| 0.7 | tile |" in printed
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * len(METHODS) and "torch" in data["machine"]


def test_cuda_device_without_cuda_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli_main(["bench", "--device", "cuda", "--no-progress"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_dispatches_and_explains_itself(capsys):
    assert cli_main([]) == 2
    assert "bench" in capsys.readouterr().out
    assert cli_main(["--help"]) == 0
    listing = capsys.readouterr().out
    for command in ("bench", "bench-lstm", "bench-search", "gemm-timing", "study"):
        assert f"    {command}" in listing, command
    done = subprocess.run(
        [sys.executable, "-m", "approxdrop", "bench", "--sizes", "6", "3", "--batch", "2", "--ps", "0.5",
         "--rounds", "1", "--warmup", "0", "--no-progress", "--methods", "bernoulli", "row"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| 0.5 | row |" in done.stdout
