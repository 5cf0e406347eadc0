"""The exercise checker of the labs: a learner's function against the reference, one printed line."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


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


def _max_diff(got, want) -> float:
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if got.shape != want.shape:
        raise ValueError(f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if got.dtype == torch.bool or want.dtype == torch.bool:
        return float((got != want).sum())
    return float((got.double() - want.double()).abs().max()) if got.numel() else 0.0


def _run_cases(name: str, candidate: Callable, reference: Callable, cases: Iterable[tuple], atol: float):
    worst = 0.0
    for case in cases:
        try:
            got = candidate(*case)
        except NotImplementedError:
            return CheckResult(name, "not attempted", None, "replace the NotImplementedError with your code")
        except Exception as exc:  # the learner's code failed: report it, do not crash the lab
            return CheckResult(name, "fail", None, f"on input {case!r} it raised {type(exc).__name__}: {exc}")
        try:
            diff = _max_diff(got, reference(*case))
        except ValueError as exc:
            return CheckResult(name, "fail", None, f"on input {case!r} it returned {exc}")
        worst = max(worst, diff)
        if diff > atol:
            return CheckResult(name, "fail", worst, f"differs on input {case!r}")
    return CheckResult(name, "pass", worst)


def check(
    name: str, candidate: Callable, reference: Callable, cases: Iterable[tuple], atol: float = 1e-6
) -> CheckResult:
    """Run ``candidate(*case)`` against ``reference(*case)`` on every case; print and return one line.

    A candidate that raises NotImplementedError (the TODO cell as given) is "not attempted",
    never an error, so a lab still runs top to bottom; any other exception is a "fail".
    """
    result = _run_cases(name, candidate, reference, cases, atol)
    print(result)
    return result
