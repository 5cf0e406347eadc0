"""Ctrl-C stops any ``approxdrop`` subcommand with one line and exit status 130, no traceback; a command that
resumes (the study) says what it keeps and how to go on."""

import pytest

from approxdrop.experiments import cli, gemm_timing, study
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


def test_only_commands_that_resume_say_how():
    assert [m.COMMAND for m in cli.SUBCOMMANDS if hasattr(m, "interrupted")] == ["study"]


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
