"""The training-step benchmark: its GEMM-work bound (docs/method.md §6), a tiny real run, the CLI, and
the checks of bad arguments (in the CLI before any run, and in ``measure`` itself)."""

import json
import platform
import re
import subprocess
import sys

import pytest

from approxdrop import METHODS
from approxdrop._env import cpu_name, describe_machine
from approxdrop.experiments import bench
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


def test_table_tells_close_rates_apart():
    rows = [bench.BenchRow("row", p, 1.0, 0.5, 0.5, 3) for p in (0.2, 0.25, 0.99)]
    assert [line.split(" | ")[0] for line in format_table(rows).splitlines()[2:]] == ["| 0.2", "| 0.25", "| 0.99"]


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
    for command in ("bench", "bench-ffn", "bench-lstm", "bench-search", "bench-transformer", "gemm-timing", "study"):
        assert f"    {command}" in listing, command
    done = subprocess.run(
        [sys.executable, "-m", "approxdrop", "bench", "--sizes", "6", "3", "--batch", "2", "--ps", "0.5",
         "--rounds", "1", "--warmup", "0", "--no-progress", "--methods", "bernoulli", "row"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| 0.5 | row |" in done.stdout


@pytest.fixture
def no_measure(monkeypatch):
    """bench.measure that fails the test if a run starts."""
    monkeypatch.setattr(bench, "measure", lambda **kwargs: pytest.fail(f"measured with bad arguments {kwargs}"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rounds", "0"], "argument --rounds: must be an int >= 1, got 0"),
        (["--steps", "0"], "argument --steps: must be an int >= 1, got 0"),
        (["--batch", "0"], "argument --batch: must be an int >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: must be an int >= 0, got -1"),
        (["--sizes", "6", "0", "3"], "argument --sizes: must be an int >= 1, got 0"),
        (["--tile", "0"], "argument --tile: must be an int >= 1, got 0"),
        (["--ps", "1.0"], r"argument --ps: must be a dropout rate in \[0, 1\), got 1.0"),
        (["--device", "meta"], "--device meta: timings need a cpu or cuda device"),
        (["--device", "nonsense"], "--device nonsense: "),
        (["--methods", "row"], "--methods must include bernoulli"),
    ],
)
def test_bench_rejects_bad_options_before_any_run(no_measure, capsys, extra, message):
    assert cli_main(["bench", "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("where", ["a directory", "under a file", "in a missing folder"])
def test_bench_rejects_an_unwritable_json_path_before_any_run(no_measure, tmp_path, capsys, where):
    (tmp_path / "file").write_text("")
    path = {"a directory": tmp_path, "under a file": tmp_path / "file" / "x.json"}.get(
        where, tmp_path / "no" / "x.json"
    )
    assert cli_main(["bench", "--no-progress", "--json", str(path)]) == 2
    assert f"--json {path}: cannot write a file there" in capsys.readouterr().err


TINY = {"sizes": (6, 4, 3), "batch": 2, "ps": (0.5,), "methods": ("bernoulli", "row"), "tile": 2, "warmup": 0,
        "rounds": 1, "steps": 1, "progress": False}  # fmt: skip


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"rounds": 0}, r"rounds must be in \[1, inf\), got 0"),
        ({"steps": 0}, r"steps must be in \[1, inf\), got 0"),
        ({"steps": 1.5}, "steps must be an int, got 1.5"),
        ({"warmup": -1}, r"warmup must be in \[0, inf\), got -1"),
        ({"batch": 0}, r"batch must be in \[1, inf\), got 0"),
        ({"tile": 0}, r"tile must be in \[1, inf\), got 0"),
        ({"sizes": (6, 0, 3)}, r"size must be in \[1, inf\), got 0"),
        ({"sizes": (6,)}, "sizes must hold at least an input and an output width"),
        ({"ps": ()}, "ps must hold at least one dropout rate"),
        ({"ps": (0.5, 1.0)}, r"p must be a number in \[0, 1\), got 1.0"),
        ({"methods": ("bernoulli", "gaussian")}, "methods must be distinct names from"),
        ({"methods": ("bernoulli", "row", "row")}, "methods must be distinct names from"),
        ({"device": "meta"}, "device must be cpu or cuda .*got 'meta'"),
        ({"device": "nonsense"}, "device must be cpu or cuda, got 'nonsense'"),
    ],
)
def test_measure_checks_its_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        measure(**{**TINY, **bad})


def test_measure_on_cuda_without_cuda_is_a_value_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
        measure(**{**TINY, "device": "cuda"})


def test_records_name_the_cpu_model_from_cpuinfo_else_the_architecture(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n")
    assert cpu_name(cpuinfo) == "AMD EPYC 7B13"
    cpuinfo.write_text("processor\t: 0\nmodel name\t:\n")  # blank, as some VMs report
    assert cpu_name(cpuinfo) == (platform.processor() or platform.machine())
    assert cpu_name(tmp_path / "missing") == (platform.processor() or platform.machine())
    assert describe_machine("cpu").startswith(f"CPU {cpu_name()}, ")


@pytest.mark.parametrize(
    "methods, groups, same",
    [(["bernoulli", "row"], ["1"], "row"), (["bernoulli", "row", "row-g4"], ["1", "4"], "row"),
     (["bernoulli", "row-g4"], ["4"], "row-g4"), (["bernoulli", "row-g16"], ["2", "16"], "row-g16")],
)  # fmt: skip
def test_a_group_count_that_makes_a_timed_method_is_a_usage_error_naming_it(no_measure, capsys, methods, groups, same):
    assert cli_main(["bench", "--no-progress", "--methods", *methods, "--groups", *groups]) == 2
    err = capsys.readouterr().err
    assert f"is the method {same} (the same family and groups), which is timed already" in err
    assert "Traceback" not in err and err.count("error:") == 1


def test_a_duplicate_group_count_is_found_in_the_methods_table_not_in_the_names(monkeypatch):
    from dataclasses import replace

    from approxdrop.models import methods as table

    # tile-g4 (tile patterns) and row-extended-g4 (another family) are not row with 4 groups: kept
    methods = ["bernoulli", "tile-g4", "row-extended-g4", "row-g16"]
    assert bench.with_groups(methods, [4]) == {**{m: (m, None) for m in methods}, "row G=4": ("row", 4)}
    monkeypatch.setitem(table.DROPOUT_METHODS, "row-g4", replace(table.DROPOUT_METHODS["row-g4"], groups=8))
    assert "row G=4" in bench.with_groups(["bernoulli", "row-g4"], [4])  # "row-g4" is now 8 groups, not 4
    with pytest.raises(ValueError, match="groups 8: row with 8 batch group.s. is the method row-g4"):
        bench.with_groups(["bernoulli", "row-g4"], [8])


def test_bench_lstm_refuses_a_group_count_that_makes_a_timed_method_before_any_run(monkeypatch, capsys):
    from approxdrop.experiments import bench_lstm

    monkeypatch.setattr(bench_lstm, "measure_lstm", lambda *a, **k: pytest.fail("timed a duplicate"))
    argv = ["bench-lstm", "--sizes", "small", "--ps", "0.5", "--methods", "bernoulli", "row-g4", "--groups", "4"]
    assert cli_main([*argv, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "groups 4: row with 4 batch group(s) is the method row-g4" in captured.err and not captured.out
