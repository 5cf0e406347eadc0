"""The exercise checker of the labs: a learner's function against the reference, one printed line.

Every case is deep-copied for each side (tensors cloned, modules, optimizers and generators copied), so
neither side sees what the other did to its inputs; a learner function that changes an input tensor in
place fails, naming the argument. Each call of the learner's function runs under a deadline
(``DEFAULT_TIMEOUT_S`` seconds unless ``check`` is told otherwise), so code that never returns fails
instead of hanging the notebook. An answer with NaN or inf where the reference has none fails, naming
the element; an answer of the wrong type or shape fails, saying what was expected.
"""

from __future__ import annotations

import copy
import inspect
import numbers
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._env import check_positive

DEFAULT_TIMEOUT_S = 30.0  # per call of the learner's function; generous for the CPU labs


class WrongAnswer(Exception):
    """Raised by an exercise's wrapper when the learner's function returned something of the wrong
    kind; ``check`` reports it as a FAIL with this message (what was expected, what came back)."""


class _Timeout(BaseException):  # BaseException: a learner's ``except Exception`` cannot swallow it
    """The learner's function ran past its deadline; ``str()`` is a note (maybe empty) for the FAIL line."""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one exercise check: ``status`` is "pass", "fail" or "not attempted"."""

    name: str
    status: str
    max_diff: float | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __str__(self) -> str:
        mark = {"pass": "PASS", "fail": "FAIL", "not attempted": "TODO"}[self.status]
        diff = "" if self.max_diff is None else f" (max difference {self.max_diff:.3g})"
        return f"[{mark}] {self.name}{diff}" + (f": {self.detail}" if self.detail else "")


def describe(value: Any) -> str:
    """What a value is, for a FAIL message: its type, and its shape, length or a short repr."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, bool):
        return f"a bool ({value})"
    if isinstance(value, numbers.Number):
        return f"the number {value!r}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    text = repr(value)
    return f"a {type(value).__name__} ({text if len(text) <= 40 else text[:37] + '...'})"


def _expected(want: Any) -> str:
    """The kind of answer the reference's value asks for."""
    if isinstance(want, torch.Tensor):
        return f"a {'bool ' if want.dtype == torch.bool else ''}tensor of shape {tuple(want.shape)}"
    return "a number" if isinstance(want, numbers.Number) else describe(want)


def _show(value: Any) -> str:
    """A short one-line form of an input: small tensors by value, large ones by shape."""
    if isinstance(value, torch.Tensor):
        return f"tensor({value.tolist()})" if value.numel() <= 8 else f"<{describe(value)}>"
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        inner = ", ".join(_show(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, (torch.nn.Module, torch.optim.Optimizer, torch.Generator)):
        return f"<{type(value).__name__}>"
    return repr(value)


def _arg_names(fn: Callable, count: int) -> list[str]:
    """The names of ``fn``'s first ``count`` positional parameters, or [] when it has fewer (``*args``)."""
    try:
        params = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    return params[:count] if len(params) >= count else []


def _same(before: torch.Tensor, after: Any) -> bool:
    """``after`` is a tensor equal to ``before`` in shape, dtype and value (NaN equal to NaN)."""
    if not isinstance(after, torch.Tensor) or after.shape != before.shape or after.dtype != before.dtype:
        return False
    before, after = before.detach(), after.detach()
    return bool(((after == before) | ((after != after) & (before != before))).all())


def _changed(before: Any, after: Any, path: str) -> str | None:
    """The path of the first tensor in ``after`` that is not the same as in ``before``, looking into
    lists, tuples and dicts; None when every tensor is unchanged."""
    if isinstance(before, torch.Tensor):
        return None if _same(before, after) else path
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        if len(before) != len(after):
            return path
        return next((p for i, (b, a) in enumerate(zip(before, after)) if (p := _changed(b, a, f"{path}[{i}]"))), None)
    if isinstance(before, dict) and isinstance(after, dict):
        if before.keys() != after.keys():
            return path
        return next((p for k in before if (p := _changed(before[k], after[k], f"{path}[{k!r}]"))), None)
    return None


def _call_with_deadline(fn: Callable, args: Sequence, timeout_s: float) -> Any:
    """``fn(*args)``, raising _Timeout once it has run ``timeout_s`` seconds. On the main thread of a
    POSIX process (a notebook's cells) a SIGALRM timer interrupts it; elsewhere (another thread, Windows,
    a timer already armed by someone else) it runs in a daemon thread that is abandoned at the deadline."""
    can_alarm = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
        and signal.getsignal(signal.SIGALRM) is not None  # None: a handler set outside Python, not ours to replace
    )
    if can_alarm:

        def on_alarm(signum, frame):
            raise _Timeout("")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}
    grad_enabled = torch.is_grad_enabled()  # thread-local in torch: carry the caller's mode over

    def work():
        try:
            with torch.set_grad_enabled(grad_enabled):
                outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller, who re-raises it
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="approxdrop-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _Timeout(" (it is still running in the background: restart the kernel to stop it)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _as_tensor(value: Any) -> torch.Tensor | None:
    """An answer as a CPU tensor, or None when it is not a tensor, a number or a list of numbers."""
    if value is None or isinstance(value, (str, bytes, dict, set)):
        return None
    try:
        return torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value).cpu()
    except (TypeError, ValueError, RuntimeError):
        return None


def _mismatch(tensor: torch.Tensor, flat: int, got: float | bool, want: float | bool) -> str:
    """The mismatch at flat index ``flat`` of ``tensor``: "element [i, j] is 0.5, expected 1" ("it
    returned 0.5, expected 1" when the tensor is 0-d)."""
    got, want = (f"{v:.6g}" if isinstance(v, float) else str(v) for v in (got, want))
    if not tensor.dim():
        return f"it returned {got}, expected {want}"
    index = [int(i) for i in torch.unravel_index(torch.tensor(flat), tensor.shape)]
    return f"element {index} is {got}, expected {want}"


def _compare(got: Any, want: Any) -> tuple[float | None, str]:
    """(max difference, where it is) when ``got`` has the type and shape of ``want`` and every NaN or
    inf of one is at the same place with the same value in the other; else (None, what is wrong).
    Bool answers count their mismatched entries."""
    want_t, got_t = _as_tensor(want), _as_tensor(got)
    if want_t is None:
        raise TypeError(f"the reference returned {describe(want)}, which the checker cannot compare")
    if got_t is None:
        return None, f"it returned {describe(got)}, expected {_expected(want)}"
    if got_t.shape != want_t.shape:
        if isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor):
            return None, f"it returned shape {tuple(got_t.shape)}, expected {tuple(want_t.shape)}"
        return None, f"it returned {describe(got)}, expected {_expected(want)}"
    if not got_t.numel():
        return 0.0, ""
    g, w = got_t.reshape(-1), want_t.reshape(-1)  # [N], [N]
    if got_t.dtype == torch.bool or want_t.dtype == torch.bool:
        wrong = g != w  # [N]
        count = int(wrong.sum())
        if not count:
            return 0.0, ""
        first = int(wrong.nonzero()[0])
        where = _mismatch(got_t, first, g[first].item(), w[first].item())
        return float(count), f"{count} of {g.numel()} entries differ; {where}"
    g, w = g.double(), w.double()
    finite = g.isfinite() & w.isfinite()  # [N]
    bad = ~finite & ~((g == w) | (g.isnan() & w.isnan()))  # NaN or inf on one side only, or unequal infs
    if bool(bad.any()):
        first, more = int(bad.nonzero()[0]), int(bad.sum()) - 1
        extra = f" ({more} more such elements)" if more else ""
        return None, _mismatch(got_t, first, g[first].item(), w[first].item()) + extra
    diff = torch.where(finite, (g - w).abs(), torch.zeros_like(g))  # [N]: 0 where both have the same NaN/inf
    worst = int(diff.argmax())
    return float(diff[worst]), _mismatch(got_t, worst, g[worst].item(), w[worst].item())


def _run_cases(
    name: str, candidate: Callable, reference: Callable, cases: Iterable[tuple], atol: float, timeout_s: float
) -> CheckResult:
    cases = list(cases)
    worst = 0.0
    for number, case in enumerate(cases, 1):
        names = _arg_names(candidate, len(case))
        shown = ", ".join(f"{n}={_show(v)}" for n, v in zip(names, case)) if names else ", ".join(map(_show, case))
        where = f"input ({shown}) (case {number} of {len(cases)})"
        mine = copy.deepcopy(case)  # the learner's own copy; ``case`` stays as it was
        try:
            got = _call_with_deadline(candidate, mine, timeout_s)
        except NotImplementedError:
            return CheckResult(name, "not attempted", None, "replace the NotImplementedError with your code")
        except _Timeout as exc:
            return CheckResult(name, "fail", None, f"on {where} it took longer than {timeout_s:g} s{exc}")
        except WrongAnswer as exc:
            return CheckResult(name, "fail", None, f"on {where} {exc}")
        except Exception as exc:  # the learner's code failed: report it, do not crash the lab
            return CheckResult(name, "fail", None, f"on {where} it raised {type(exc).__name__}: {exc}")
        labels = names or [f"argument {i}" for i in range(1, len(case) + 1)]
        for label, before, after in zip(labels, case, mine):
            if path := _changed(before, after, label):
                detail = f"on {where} it changed {path} in place: leave the inputs as they are"
                return CheckResult(name, "fail", None, detail)
        diff, text = _compare(got, reference(*copy.deepcopy(case)))
        if diff is None:
            return CheckResult(name, "fail", None, f"on {where} {text}")
        worst = max(worst, diff)
        if diff > atol:
            return CheckResult(name, "fail", worst, f"differs on {where}: {text}")
    return CheckResult(name, "pass", worst)


def check(
    name: str,
    candidate: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    atol: float = 1e-6,
    timeout_s: float | None = None,
) -> CheckResult:
    """Run ``candidate(*case)`` against ``reference(*case)`` on every case; print and return one line.

    A candidate that raises NotImplementedError (the TODO cell as given) is "not attempted",
    never an error, so a lab still runs top to bottom; any other exception, a wrong type, shape or
    value, a NaN or inf the reference does not have, an input changed in place, or a call running
    past ``timeout_s`` seconds (None: ``DEFAULT_TIMEOUT_S``) is a "fail".
    """
    timeout_s = check_positive("timeout_s", DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    result = _run_cases(name, candidate, reference, cases, atol, timeout_s)
    print(result)
    return result
