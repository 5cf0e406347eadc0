"""What every lab shares: CI mode, the device, an environment report, and the exercise checker.

CI mode (environment variable ``APPROXDROP_CI=1``, set by the test suite) shrinks sizes and
steps so that every lab runs top to bottom on a CPU in well under a minute.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

CI_ENV = "APPROXDROP_CI"


def ci_mode() -> bool:
    """True when the labs run in CI mode (small sizes, few steps)."""
    return os.environ.get(CI_ENV, "").strip().lower() not in ("", "0", "false", "no")


def pick(full, ci):
    """``ci`` in CI mode, else ``full``: ``steps = pick(2000, 20)``."""
    return ci if ci_mode() else full


def device() -> torch.device:
    """The GPU when there is one, else the CPU. In CI mode torch also gets one CPU thread: at CI
    sizes every op is tiny, and a second thread only adds synchronisation (measured: lab 07's race
    in a Jupyter kernel took 139 s with two threads and 1 s with one, on a machine with one busy core)."""
    if ci_mode():
        torch.set_num_threads(1)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment() -> dict[str, str]:
    """Versions and hardware, for the start-here lab and for recorded results."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device()),
        "cpu threads": str(torch.get_num_threads()),
        "ci mode": str(ci_mode()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = str(torch.version.cuda)
    return info


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
