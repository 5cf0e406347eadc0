"""Candidates: the implementations of one op that the GPU dispatch (``approxdrop.ops.dispatch``) may run.

Each op on CUDA tensors has one list of candidates, the reference (its PyTorch implementation) first.
A candidate says why it cannot run a call (``supports``: the reasons, none when it can) and runs it
(``run``); the Dispatcher skips the candidates that give reasons, and says them. A new GPU path is one
more candidate in an op's list (xformers' fmha dispatch, ``not_supported_reasons``, is the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _always(args: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Candidate:
    """name: the path's name (``dispatch.REFERENCE``, ``CUBLAS``, ``PATTERN``); run(args): the op's output
    for one call's ``args``; supports(args): why it cannot run them (empty: it can)."""

    name: str
    run: Callable[[Any], Any]
    supports: Callable[[Any], list[str]] = _always


def usable(candidates: list[Candidate], args: Any) -> tuple[dict[str, Candidate], list[str]]:
    """(name -> candidate for those that can run ``args``, in order; "name skipped: reasons" for the others)."""
    ok: dict[str, Candidate] = {}
    skipped = []
    for candidate in candidates:
        reasons = candidate.supports(args)
        if reasons:
            skipped.append(f"{candidate.name} skipped: {', '.join(reasons)}")
        else:
            ok[candidate.name] = candidate
    return ok, skipped
