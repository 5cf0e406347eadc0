"""``course.mode.lab_sizes``: a lab's full and CI sizes chosen in one call."""

import pytest

from approxdrop.course.mode import CI_ENV, lab_sizes


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
