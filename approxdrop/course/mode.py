"""What every lab shares: CI mode, the device, and an environment report.

CI mode (environment variable ``APPROXDROP_CI=1``, set by the test suite) shrinks sizes and
steps so that every lab runs top to bottom on a CPU in well under a minute.
"""

from __future__ import annotations

import os
import platform
from types import SimpleNamespace
from typing import Any, TypeVar

import torch

from .._env import cpu_threads

CI_ENV = "APPROXDROP_CI"
_T = TypeVar("_T")  # what ``pick`` chooses between


CI_ON, CI_OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")  # the values CI_ENV may take


def ci_mode() -> bool:
    """True when the labs run in CI mode (small sizes, few steps): ``CI_ENV`` set to one of ``CI_ON``; one of
    ``CI_OFF`` (or unset) is full size; any other value is a ValueError saying which are understood."""
    value = os.environ.get(CI_ENV, "").strip().lower()
    if value not in CI_ON + CI_OFF:
        raise ValueError(f"{CI_ENV}={value!r}: use one of {CI_ON} for CI mode, or one of {CI_OFF[1:]} (or unset)")
    return value in CI_ON


def pick(full: _T, ci: _T) -> _T:
    """``ci`` in CI mode, else ``full``: ``steps = pick(2000, 20)``."""
    return ci if ci_mode() else full


def lab_sizes(**choices: tuple[Any, Any]) -> SimpleNamespace:
    """A lab's sizes, chosen in one call: every keyword is ``(full, ci)``, and CI mode takes ``ci``.
    Prints the chosen values in one line, so the learner sees at once what the lab will run:

        size = lab_sizes(n=(2048, 256), batch=(512, 64))  # then size.n, size.batch
    """
    chosen = {}
    for name, pair in choices.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"sizes: {name}={pair!r} is not a (full, ci) pair")
        chosen[name] = pick(*pair)
    listed = ", ".join(f"{name} {value}" for name, value in chosen.items())
    print(f"sizes ({'CI mode' if ci_mode() else 'full size'}): {listed}")
    return SimpleNamespace(**chosen)


def device() -> torch.device:
    """The GPU when there is one, else the CPU. In CI mode torch also gets one CPU thread: at CI
    sizes every op is tiny, and a second thread only adds synchronisation (measured: lab 07's race
    in a Jupyter kernel took 139 s with two threads and 1 s with one, on a machine with one busy core)."""
    if ci_mode():
        torch.set_num_threads(1)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(on: torch.device) -> str:
    """The device in words, for a lab's first lines: the GPU's name, or "CPU with 1 thread" ("... 2 threads")."""
    if on.type == "cuda":
        return torch.cuda.get_device_name(on)
    return f"CPU with {cpu_threads()}"


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
