"""The labs' shared helpers: CI mode and the exercise checker's three outcomes."""

import pytest
import torch

from approxdrop.course import check, ci_mode, device, environment, pick


def test_ci_mode_follows_the_environment_variable(monkeypatch):
    monkeypatch.setenv("APPROXDROP_CI", "1")
    assert ci_mode() and pick(1000, 10) == 10
    monkeypatch.setenv("APPROXDROP_CI", "0")
    assert not ci_mode() and pick(1000, 10) == 1000
    assert {"python", "torch", "device"} <= set(environment())


def test_device_takes_one_thread_in_ci_mode_only(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("APPROXDROP_CI", "0")
        assert device().type in ("cpu", "cuda") and torch.get_num_threads() == 2
        monkeypatch.setenv("APPROXDROP_CI", "1")
        device()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def reference(x):
    return x * 2


def todo(x):
    raise NotImplementedError


@pytest.mark.parametrize(
    "candidate, status, text",
    [
        (lambda x: x + x, "pass", "[PASS] double (max difference 0)"),
        (lambda x: x * 2 + 1e-3, "fail", "[FAIL] double (max difference 0.001): differs on input"),
        (todo, "not attempted", "[TODO] double: replace the NotImplementedError"),
        (lambda x: x[:1], "fail", "returned shape (1,), expected (3,)"),
        (lambda x: x.foo(), "fail", "raised AttributeError"),
    ],
)
def test_check_reports_pass_fail_and_not_attempted(candidate, status, text, capsys):
    result = check("double", candidate, reference, [(torch.arange(3.0),), (torch.ones(3),)])
    assert result.status == status and result.passed == (status == "pass")
    assert text in capsys.readouterr().out
