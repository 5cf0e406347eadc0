"""The course's helpers: CI mode, the device, the environment report and the exercise checker; the
exercises (``exercises/``), figures (``viz/``) and widgets (``widgets/``) of the labs. Only the
labs and the tests import this package."""

from .checks import CheckResult, check
from .mode import CI_ENV, ci_mode, device, environment, pick

__all__ = ["CI_ENV", "CheckResult", "check", "ci_mode", "device", "environment", "pick"]
