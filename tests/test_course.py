"""The labs' shared helpers: CI mode, and the exercise checker's three outcomes and what makes an answer fail."""

import signal
import threading
import time

import pytest
import torch

from approxdrop.course import check, checks, ci_mode, device, environment, pick


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


def double_nan_last(x):
    out = 2 * x
    out.view(-1)[-1] = float("nan")
    return out


@pytest.mark.parametrize(
    "candidate, text",
    [
        (double_nan_last, "on input (x=tensor([0.0, 1.0, 2.0])) (case 1 of 2) element [2] is nan, expected 4"),
        (lambda x: 2 * x / (x.prod() != 1), "(case 2 of 2) element [0] is inf, expected 2 (2 more such elements)"),
        (lambda x: torch.full_like(x, float("nan")), "element [0] is nan, expected 0 (2 more such elements)"),
    ],
)
def test_check_fails_on_nan_or_inf_naming_case_and_element(candidate, text, capsys):
    result = check("double", candidate, reference, [(torch.arange(3.0),), (torch.ones(3),)])
    assert result.status == "fail"
    assert text in capsys.readouterr().out


def test_check_fails_on_a_nan_number_and_matches_nan_where_the_reference_has_it(capsys):
    assert check("half", lambda x: float("nan"), lambda x: x / 2, [(1.0,)]).status == "fail"
    assert "it returned nan, expected 0.5" in capsys.readouterr().out
    cases = [(torch.tensor([0.0, 1.0, -1.0]),)]
    assert check("ratio", lambda x: x / x.abs(), lambda x: x / x.abs(), cases).passed  # NaN at [0] on both sides
    assert check("ratio", lambda x: x.sign(), lambda x: x / x.abs(), cases).status == "fail"
    assert "element [0] is 0, expected nan" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, text",
    [
        (None, "it returned None, expected a tensor of shape (3,)"),
        ("abc", "it returned a str ('abc'), expected a tensor of shape (3,)"),
        ({"x": 1}, "it returned a dict ({'x': 1}), expected a tensor of shape (3,)"),
        (torch.zeros(3, 1), "it returned shape (3, 1), expected (3,)"),
        ([0.0, 2.0], "it returned a list of length 2, expected a tensor of shape (3,)"),
        ([torch.zeros(2), torch.zeros(2)], "it returned a list of length 2, expected a tensor of shape (3,)"),
    ],
    ids=["none", "str", "dict", "shape", "short-list", "list-of-tensors"],
)
def test_check_fails_on_a_wrong_type_saying_what_was_expected(answer, text, capsys):
    result = check("double", lambda x: answer, reference, [(torch.arange(3.0),)])
    assert result.status == "fail" and result.max_diff is None
    assert text in capsys.readouterr().out


def test_check_fails_on_a_tensor_where_a_number_is_expected(capsys):
    assert check("half", lambda x: torch.ones(2), lambda x: x / 2, [(1.0,)]).status == "fail"
    assert "it returned a tensor of shape (2,) (torch.float32), expected a float" in capsys.readouterr().out


@pytest.mark.parametrize(
    "candidate, changed",
    [
        (lambda x: x.mul_(2), "x"),  # the right values, computed in place
        (lambda x: x.mul_(0).add_(5), "x"),  # before: the reference saw the changed x too
        (lambda xs: xs[1].add_(1) * 0 + 2 * xs[0], "xs[1]"),
    ],
)
def test_check_fails_an_answer_that_changes_its_inputs_naming_the_argument(candidate, changed, capsys):
    def ref(x):
        return 2 * x if torch.is_tensor(x) else 2 * x[0]

    case = (torch.arange(3.0),) if changed == "x" else ([torch.arange(3.0), torch.ones(3)],)
    assert check("double", candidate, ref, [case]).status == "fail"
    assert f"it changed {changed} in place" in capsys.readouterr().out


def test_each_side_gets_its_own_copy_of_modules_optimizers_and_generators():
    """A training step or a random draw on one side does not change what the other side sees, the
    copied optimizer still steps the copied model, and the caller's case is left as it was."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.weight.detach().clone()

    def step_then_forward(model, optimizer, x):
        assert optimizer.param_groups[0]["params"][0] is model.weight  # the copies stay linked
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        return model(x).detach()

    assert check("step", step_then_forward, step_then_forward, [(model, optimizer, torch.ones(4, 3))]).passed
    assert torch.equal(model.weight, before)

    def draw(gen):
        return torch.rand(3, generator=gen)

    assert check("draw", draw, draw, [(torch.Generator().manual_seed(5),)]).passed


def test_check_bounds_the_time_of_each_call(capsys):
    """The candidate runs in a worker thread and the caller only waits: a late one fails at the deadline
    whatever it catches; one running Python code is stopped, one blocked in C (a sleep) is left to end
    by itself and the line says so; the SIGALRM handler is left alone."""
    handler = signal.getsignal(signal.SIGALRM)
    end = time.perf_counter() + 20  # "never" returns, but a stray run stops in the end

    def spin(x):
        while time.perf_counter() < end:
            pass

    def stubborn(x):  # swallows everything, retrying: the deadline must still hold
        while time.perf_counter() < end:
            try:
                sum(range(1000))
            except:  # noqa: E722
                pass

    for candidate, left in ((spin, False), (stubborn, False), (lambda x: time.sleep(10), True)):
        start = time.perf_counter()
        result = check("double", candidate, reference, [(torch.arange(3.0),)], timeout_s=0.2)
        assert result.status == "fail" and time.perf_counter() - start < 5
        out = capsys.readouterr().out
        assert "(case 1 of 1) it took longer than 0.2 s" in out and ("background" in out) == left
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0.0 and signal.getsignal(signal.SIGALRM) is handler
    assert check("double", lambda x: x + x, reference, [(torch.arange(3.0),)], timeout_s=0.2).passed


def test_check_bounds_the_time_off_the_main_thread_too(capsys):
    """Off the main thread the candidate runs in a worker thread: a late one fails, and an answer or an
    exception comes back as from a plain call."""
    release = threading.Event()

    def in_thread(candidate):
        results = []
        worker = threading.Thread(
            target=lambda: results.append(check("double", candidate, reference, [(torch.ones(3),)], timeout_s=0.2))
        )
        worker.start()
        worker.join(5)
        return results[0].status

    assert in_thread(lambda x: release.wait(10)) == "fail"
    release.set()
    assert "it took longer than 0.2 s (it is still running in the background" in capsys.readouterr().out
    assert in_thread(lambda x: x + x) == "pass" and in_thread(todo) == "not attempted"


def test_the_default_deadline_is_generous_and_configurable(monkeypatch, capsys):
    assert checks.DEFAULT_TIMEOUT_S >= 30
    monkeypatch.setattr(checks, "DEFAULT_TIMEOUT_S", 0.2)
    assert check("double", lambda x: time.sleep(10), reference, [(torch.ones(3),)]).status == "fail"
    assert "took longer than 0.2 s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="timeout_s"):
        check("double", reference, reference, [(torch.ones(3),)], timeout_s=0)
