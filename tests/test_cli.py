"""What every ``approxdrop`` subcommand shares: list options that refuse repeats, help that gives the
defaults, the common options a subcommand honours, progress bars that keep logs readable, the study's
default folder."""

import argparse
import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from approxdrop.experiments import bench_search, cli, options, study
from approxdrop.experiments.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
REPEATS_ALLOWED = {("bench", "--sizes"), ("study", "--hidden")}  # layer widths: 2048 2048 is two layers


def subcommand_parsers():
    """(command, parser with the module's own options) of every subcommand."""
    for module in cli.SUBCOMMANDS:
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        yield module.COMMAND, parser


def test_every_list_option_refuses_repeats():
    lists = [(command, a) for command, parser in subcommand_parsers() for a in parser._actions if a.nargs in ("+", "*")]
    assert len(lists) > 15
    for command, action in lists:
        if (command, action.option_strings[0]) not in REPEATS_ALLOWED:
            assert isinstance(action, options.Distinct), (command, action.option_strings)


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--groups", "4", "4"],
        ["bench", "--ps", "0.5", "0.5"],
        ["bench", "--methods", "bernoulli", "row", "row"],
        ["bench-ffn", "--ps", "0.5", "0.5"],
        ["bench-convert", "--models", "encoder", "encoder"],
        ["bench-lstm", "--seeds", "0", "0"],
        ["bench-lstm", "--sizes", "small", "small"],
        ["bench-overhead", "--crossover-widths", "16", "16"],
        ["bench-overhead", "--lstm-methods", "bernoulli", "bernoulli"],
        ["bench-transformer", "--groups", "4", "4"],
        ["study", "mlp", "--lrs", "0.1", "0.1"],
    ],
)
def test_a_repeated_value_is_a_usage_error_naming_the_option(argv, capsys):
    assert cli_main([*argv, "--no-progress"]) == 2
    option, value = next(word for word in reversed(argv) if word.startswith("--")), argv[-1]
    assert f"error: argument {option}: {value} is given twice, got " in capsys.readouterr().err


def help_text(command: str, capsys) -> str:
    assert cli_main([command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # one line, whatever the terminal's width


@pytest.mark.parametrize(
    "command, shown",
    [
        ("bench", ["--sizes SIZES [SIZES ...] MLP widths (default: 784 2048 2048 10)", "--rounds ROUNDS (default: 7)"]),
        ("bench-ffn", ["--d-model D_MODEL (default: 1024)", "--d-hidden D_HIDDEN (default: 4096)"]),
        ("bench-convert", ["--rounds ROUNDS (default: 30)", "or wall time (default: cpu)"]),
        ("bench-graphs", ["one of torch._dynamo.list_backends (default: inductor)"]),
        ("study", ["--epochs EPOCHS (default: 4)", "(default: approxdrop-study in the current directory;"]),
    ],
)
def test_help_gives_the_defaults(command, shown, capsys):
    text = help_text(command, capsys)
    for item in shown:
        assert item in text


@pytest.mark.parametrize("command", [module.COMMAND for module in cli.SUBCOMMANDS])
def test_help_gives_every_default_once(command, capsys):
    text = help_text(command, capsys)
    for nothing in ("(default: None)", "(default: False)", "(default: )", "else cpu) (default:", "torch's) (default:"):
        assert nothing not in text  # no default where there is none, none after a help that gives it
    assert "(default: cuda when available, else cpu)" in text or command == "bench-search"
    for action in dict(subcommand_parsers())[command]._actions:
        default = action.default
        if action.option_strings and default not in (None, False, [], argparse.SUPPRESS):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            assert f"(default: {shown}" in text, action.option_strings


@pytest.mark.parametrize("argv", [["bench-search", "--device", "cpu"], ["bench-search", "--no-progress"],
                                  ["gemm-timing", "--no-progress"]])  # fmt: skip
def test_common_options_a_subcommand_would_ignore_are_not_offered(argv, capsys):
    assert cli_main(argv) == 2
    assert f"unrecognized arguments: {argv[1]}" in capsys.readouterr().err


def test_bench_search_names_the_machine_without_a_stray_space(monkeypatch, capsys):
    monkeypatch.setattr(bench_search, "timed", lambda fn, repeat, *case: (0.001, SimpleNamespace(distance=0.5)))
    assert cli_main(["bench-search", "--repeat", "1", "--no-lp"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(r"# CPU \S.*; torch .*; Python \d+\.\d+\.\d+", header), header
    assert " ," not in header


def test_bench_search_without_scipy_leaves_the_lp_out_and_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    times = []
    monkeypatch.setattr(
        bench_search, "timed", lambda fn, repeat, *case: times.append(fn) or (0.001, SimpleNamespace(distance=0.5))
    )
    assert cli_main(["bench-search", "--repeat", "1"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == "bench-search: scipy is not installed, so the LP columns are left out (pip install scipy)"
    assert bench_search.exact_optimum not in times and len(times) == 36
    assert all(line.endswith("| - | 0.50000 | - |") for line in out.splitlines()[3:])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def updates_in_20_seconds(stderr: io.StringIO, monkeypatch) -> int:
    """How many times a bar of ``progress_bar`` on ``stderr`` is drawn in 20 steps of a second each."""
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = options.progress_bar(20, "x")
    now = [bar.start_t]
    bar._time = lambda: now[0]  # tqdm's clock: a second per step
    for _ in range(20):
        now[0] += 1.0
        bar.update()
    bar.close()
    return stderr.getvalue().count("\r")


def test_progress_bars_are_live_on_a_terminal_and_rare_in_a_log(monkeypatch):
    assert updates_in_20_seconds(Terminal(), monkeypatch) >= 20
    assert updates_in_20_seconds(io.StringIO(), monkeypatch) <= 2  # a file or a pipe: the start and the end
    assert options.LOG_INTERVAL_S >= 10
    assert options.progress_bar(10, "x", enabled=False).disable  # --no-progress


def test_the_bars_of_every_subcommand_come_from_progress_bar():
    for path in (ROOT / "approxdrop" / "experiments").glob("*.py"):
        if path.name != "options.py":
            assert "tqdm(" not in path.read_text(), path.name


def test_the_study_does_not_write_into_the_recorded_study_by_default(capsys):
    out = cli.build_parser().parse_args(["study", "mlp"]).out
    assert out == study.DEFAULT_OUT and not out.is_absolute()
    assert not (ROOT / out).exists() and "benchmarks" not in out.parts
    assert "the recorded study is benchmarks/study" in help_text("study", capsys)


def test_the_documented_study_commands_name_their_folder():
    commands = [
        command
        for doc in (ROOT / "benchmarks").rglob("*.md")
        for command in re.findall(r"approxdrop study mlp[^`\n]*", doc.read_text())
    ]
    assert len(commands) >= 3
    for command in commands:
        assert "--out " in command, command


@pytest.mark.parametrize(
    "argv, status, said",
    [
        (["bench", "--ps", "0.99", "--methods", "bernoulli", "row-extended", "--no-progress"], 2,
         "approxdrop bench: error: p=0.99 is above 0.984375 = 1 - 1/64, the highest rate family 'extended' reaches"),
        (["gemm-timing", "--n", "1000000", "--batch", "8", "--repeats", "1"], 1,
         "approxdrop gemm-timing: error: out of memory ("),
        (["bench-lstm", "--sizes", "--perplexity-steps", "2", "--seeds", "-5", "--no-progress"], 2,
         "approxdrop bench-lstm: error: argument --seeds: must be a seed in [0, 2**63 - 1], got -5"),
    ],
    ids=["unreachable rate", "no memory", "negative seed"],
)  # fmt: skip
def test_a_setting_the_library_refuses_is_one_error_line(argv, status, said, capsys):
    assert cli_main(argv) == status
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_data_that_cannot_be_had_is_one_error_line(monkeypatch, capsys):
    from approxdrop.data.download import DataUnavailable
    from approxdrop.experiments import gemm_timing

    def offline(args):
        raise DataUnavailable("mnist: could not download (offline)")

    monkeypatch.setattr(gemm_timing, "run", offline)
    assert cli_main(["gemm-timing"]) == 1
    assert capsys.readouterr().err == "approxdrop gemm-timing: error: mnist: could not download (offline)\n"


@pytest.mark.parametrize(
    "argv, said",
    [
        (["bench", "--sizes", "1e3", "10"], "argument --sizes: invalid int value: '1e3'"),
        (["bench", "--warmup", "x"], "argument --warmup: invalid int value: 'x'"),
        (["bench", "--threads", "abc"], "argument --threads: invalid int value: 'abc'"),
        (["bench", "--ps", "half"], "argument --ps: invalid float value: 'half'"),
        (["bench-lstm", "--seeds", "s0"], "argument --seeds: invalid int value: 's0'"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_by_its_type_not_by_a_function(argv, said, capsys):
    assert cli_main(argv) == 2
    assert said in capsys.readouterr().err


def no_study(monkeypatch):
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("the study started"))


@pytest.mark.parametrize("inside", ["runs/row-p0.5-seed0.json", "pilot/row-p0.5-lr0.1.json", "runs/new/x.json"])
def test_a_study_json_among_its_run_files_is_a_usage_error(inside, tmp_path, monkeypatch, capsys):
    no_study(monkeypatch)
    out = tmp_path / "study"
    (out / Path(inside).parent).mkdir(parents=True)  # a study to resume: its run files are there
    json_path = out / inside
    assert cli_main(["study", "mlp", "--out", str(out), "--json", str(json_path), "--no-progress"]) == 2
    folder = Path(inside).parts[0]
    assert f"--json {json_path}: is in --out {out}'s {folder}/ folder, which holds the command's own files" in (
        capsys.readouterr().err
    )
    assert not json_path.exists()


def test_a_study_json_elsewhere_in_its_folder_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "run_study", lambda *a, **k: [])
    monkeypatch.setattr(study, "describe_trained_on", lambda results: "here")
    out = tmp_path / "study"
    out.mkdir()
    (out / "results.md").write_text("table\n")
    assert cli_main(["study", "mlp", "--out", str(out), "--json", str(out / "record.json"), "--no-progress"]) == 0
    assert json.loads((out / "record.json").read_text())["machine"] == "here"


def test_study_workers_beyond_the_cpu_count_is_a_usage_error(monkeypatch, capsys):
    no_study(monkeypatch)
    monkeypatch.setattr(options, "max_threads", lambda: 2)
    assert cli_main(["study", "mlp", "--workers", "3", "--no-progress"]) == 2
    assert "argument --workers: must be at most 2 (this machine's CPUs), got 3" in capsys.readouterr().err


def test_a_study_resumes_when_its_rates_are_only_reordered(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    argv = ["study", "mlp", "--dataset", "digits", "--train-size", "200", "--test-size", "50", "--val-size", "50",
            "--hidden", "4", "--epochs", "1", "--ps", "0.5", "--seeds", "0", "--variants", "bernoulli",
            "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    assert cli_main([*argv, "--lrs", "0.1", "0.03"]) == 0
    settings = json.loads((out / "runs" / study.run_name("bernoulli", 0.5, 0)).read_text())["config"]
    assert settings["lrs"] == [0.03, 0.1]  # recorded sorted: the order of the grid changes nothing
    for path in out.glob("*/*.json"):  # as files were written before: the rates in the order given
        path.write_text(json.dumps({**json.loads(path.read_text()), "config": {**settings, "lrs": [0.1, 0.03]}}))
    trained = []
    monkeypatch.setattr(study, "train_run", lambda *a, **k: trained.append(a) or pytest.fail("trained again"))
    capsys.readouterr()
    assert cli_main([*argv, "--lrs", "0.03", "0.1"]) == 0
    assert cli_main([*argv, "--lrs", "0.1", "0.03"]) == 0
    assert trained == [] and "other settings" not in capsys.readouterr().err


def test_a_gemm_timing_tile_as_wide_as_the_layer_is_a_usage_error(monkeypatch, capsys):
    from approxdrop.experiments import gemm_timing

    monkeypatch.setattr(gemm_timing, "tile_timings", lambda *a, **k: pytest.fail("timed"))
    for tile in ("8", "3000"):
        assert cli_main(["gemm-timing", "--n", "8", "--batch", "2", "--repeats", "1", "--tile", tile]) == 2
        err = capsys.readouterr().err
        assert f"--tile {tile}: must be smaller than --n 8 (a layer of one tile keeps it: the tile pattern" in err
    monkeypatch.undo()
    assert cli_main(["gemm-timing", "--n", "8", "--batch", "2", "--repeats", "1", "--tile", "4"]) == 0
    assert "| tile pattern dp=2 | tile pattern |" in capsys.readouterr().out
