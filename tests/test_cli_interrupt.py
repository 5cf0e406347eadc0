"""Ctrl-C stops any ``approxdrop`` subcommand with one line and exit status 130, no traceback, after its progress
bar has ended; a command that keeps what finished says what: the study, and how to resume; bench-lstm's perplexity
races, in files marked partial (tests/test_bench_lstm_study.py)."""

import gc

import pytest

from approxdrop.experiments import bench_lstm, cli, gemm_timing, study
from approxdrop.experiments.cli import main as cli_main


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def run_interrupted(argv) -> int:
    try:
        return cli_main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command as a KeyboardInterrupt (a traceback)")


def test_ctrl_c_in_the_study_says_the_finished_runs_are_kept_and_how_to_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "run_study", interrupted)
    out = tmp_path / "study"
    assert run_interrupted(["study", "mlp", "--out", str(out), "--dataset", "digits", "--no-progress"]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"approxdrop study: interrupted. The finished runs in {out} are kept: run the same command again to resume "
        "(unfinished runs train again)."
    )
    assert "Traceback" not in captured.err and not captured.out


def test_ctrl_c_in_a_command_that_does_not_resume_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(gemm_timing, "run", interrupted)
    assert run_interrupted(["gemm-timing"]) == cli.INTERRUPTED == 130
    assert capsys.readouterr().err.strip() == "approxdrop gemm-timing: interrupted"


def test_only_commands_that_keep_what_finished_say_what():
    assert [m.COMMAND for m in cli.SUBCOMMANDS if hasattr(m, "interrupted")] == ["bench-lstm", "study"]


def test_ctrl_c_before_the_subcommand_runs_is_one_line_too(monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_parser", interrupted)  # Ctrl-C while the command is still starting
    assert run_interrupted(["study", "mlp"]) == 130
    assert capsys.readouterr().err.strip() == "approxdrop: interrupted"


def test_study_workers_start_with_ctrl_c_ignored_and_the_handler_comes_back():
    import signal

    before = signal.getsignal(signal.SIGINT)
    with study._sigint_ignored():  # the workers start meanwhile: Ctrl-C prints nothing in them, the study ends them
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before


def stopped_after_one_step(steps_by_method, device, warmup, rounds, steps, bar, *args, **kwargs):
    bar.update()
    raise KeyboardInterrupt


TIMED = {
    "bench": ["--sizes", "4", "4", "--batch", "2", "--ps", "0.5", "--methods", "bernoulli", "--warmup", "0"],
    "bench-ffn": ["--d-model", "4", "--d-hidden", "8", "--batch", "1", "--sequence", "2", "--methods", "bernoulli"],
    "bench-convert": ["--models", "encoder", "--d-model", "8", "--d-hidden", "8", "--heads", "2", "--layers", "1",
                      "--sequence", "2", "--batch", "1", "--warmup", "0", "--rounds", "1"],
    "bench-lstm": ["--sizes", "small", "--methods", "bernoulli", "--ps", "0.5", "--warmup", "0", "--rounds", "1"],
}  # fmt: skip


def last_line(err: str) -> str:
    """The last line of ``err`` as a terminal shows it: a bar redrawn after the message ends it."""
    return err.rstrip().splitlines()[-1].split("\r")[-1]


@pytest.mark.parametrize("command", list(TIMED))
def test_ctrl_c_ends_the_progress_bar_before_the_message(command, monkeypatch, capsys):
    module = next(m for m in cli.SUBCOMMANDS if m.COMMAND == command)
    monkeypatch.setattr(module, "time_side_by_side", stopped_after_one_step)
    monkeypatch.setitem(bench_lstm.SIZES, "small", bench_lstm.LSTMSize(8, 1, 20, 3, 2))
    assert run_interrupted([command, *TIMED[command], "--threads", "1"]) == 130
    gc.collect()  # a bar left open is closed, and drawn again, when it is collected
    err = capsys.readouterr().err
    assert "1/" in err  # the bar was drawn
    assert last_line(err) == f"approxdrop {command}: interrupted", err


def test_ctrl_c_ends_the_study_bar_before_the_message(tmp_path, monkeypatch, capsys):
    def stopped(*args, on_epoch=None, **kwargs):
        on_epoch()
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "train_run", stopped)
    out = tmp_path / "study"
    argv = ["study", "mlp", "--dataset", "digits", "--train-size", "200", "--test-size", "50", "--val-size", "50",
            "--hidden", "4", "--epochs", "1", "--ps", "0.5", "--seeds", "0", "--variants", "bernoulli", "--lrs", "0.1",
            "--out", str(out), "--threads", "1"]  # fmt: skip
    assert run_interrupted(argv) == 130
    gc.collect()
    err = capsys.readouterr().err
    assert "1/" in err and last_line(err).startswith("approxdrop study: interrupted. The finished runs"), err
