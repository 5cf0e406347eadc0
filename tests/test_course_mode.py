"""``course.mode``: a lab's full and CI sizes chosen in one call, and the device in words."""

import pytest
import torch

from approxdrop.course.mode import CI_ENV, device_name, lab_sizes


def test_sizes_pick_every_pair_and_say_which(monkeypatch, capsys):
    monkeypatch.setenv(CI_ENV, "1")
    size = lab_sizes(n=(2048, 256), batch=(512, 64), hidden=((2048, 2048), (128, 128)))
    assert (size.n, size.batch, size.hidden) == (256, 64, (128, 128))
    assert capsys.readouterr().out == "sizes (CI mode): n 256, batch 64, hidden (128, 128)\n"
    monkeypatch.delenv(CI_ENV)
    size = lab_sizes(n=(2048, 256), eval_size=(None, 500))
    assert (size.n, size.eval_size) == (2048, None)
    assert capsys.readouterr().out == "sizes (full size): n 2048, eval_size None\n"


@pytest.mark.parametrize("bad", [256, (1, 2, 3), [2048, 256]])
def test_sizes_refuse_what_is_not_a_pair(bad):
    with pytest.raises(ValueError, match="not a \\(full, ci\\) pair"):
        lab_sizes(n=bad)


@pytest.mark.parametrize("value, on", [("1", True), ("yes", True), ("on", True), ("0", False), ("off", False),
                                       ("", False), (" False ", False)])  # fmt: skip
def test_ci_mode_reads_the_usual_words(monkeypatch, value, on):
    from approxdrop.course.mode import ci_mode

    monkeypatch.setenv(CI_ENV, value)
    assert ci_mode() is on


def test_an_unknown_ci_mode_value_is_refused_with_the_ones_understood(monkeypatch):
    """APPROXDROP_CI=disabled used to turn CI mode on."""
    from approxdrop.course.mode import ci_mode

    monkeypatch.setenv(CI_ENV, "disabled")
    with pytest.raises(ValueError, match=r"APPROXDROP_CI='disabled': use one of \('1', 'true', 'yes', 'on'\)"):
        ci_mode()


@pytest.mark.parametrize("threads, words", [(1, "CPU with 1 thread"), (2, "CPU with 2 threads")])
def test_device_name_counts_the_cpu_threads_in_words(monkeypatch, threads, words):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert device_name(torch.device("cpu")) == words
