"""Dispatch by measurement: which implementation of an ``approxdrop::`` op runs on a GPU.

An op on CUDA tensors has a list of candidates (``approxdrop.ops.candidates.Candidate``), each running
the op on one call's arguments: ``"torch"``, the PyTorch implementation (the op's ``*_torch`` function),
always first and the reference; ``"cublas"``, the cuBLAS path (``cuda_cublas``: cuBLAS GEMMs on strided
views or one gathered block, the weight gradient scattered by one kernel; the row op only) and
``"pattern"``, the pattern-GEMM kernel of ``kernels/``. A candidate whose ``supports`` gives reasons (the
kernels are not built) is skipped, and its reasons are said. ``APPROXDROP_KERNELS`` selects the
mode (:func:`kernel_mode`):

- ``auto`` (or unset): on the first call of a key (op, shape, dtype, pattern class) the
  :class:`Dispatcher` runs every candidate once, checks its output against the reference, times it
  (a few CUDA-event iterations), and keeps the fastest. A candidate other than the reference must
  beat it by ``margin`` (5%), so noise never trades the safe path for an equal one, and one that
  raises, disagrees with the reference or gets no valid time is never picked. The choice is kept in
  memory and on disk (one JSON file per GPU name and torch version under
  ``cache_root() / "gpu-dispatch"``, written atomically; an unreadable file is measured again and
  rewritten, never fatal), and one line says which path runs and why.
- ``torch``: the PyTorch implementation, the kernels never built; ``cublas`` / ``pattern``: that path,
  without measuring (an op without it runs the PyTorch implementation, said once).
- ``0``: the PyTorch implementation, silently, and the kernels are never built.

Any other value is a ValueError naming the allowed ones. The timer, the output check and the
capture test are injected, so the decision logic runs (and is tested) without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._env import write_json_atomic
from .candidates import Candidate, usable

ENV_SWITCH = "APPROXDROP_KERNELS"
MODES = ("auto", "cublas", "pattern", "torch", "0")
REFERENCE = "torch"  # the PyTorch implementation (the op's *_torch function): first candidate, the oracle
CUBLAS = "cublas"  # the cuBLAS path (approxdrop.ops.cuda_cublas with kernels/scatter.cu and column_sum.cu)
PATTERN = "pattern"  # the pattern-GEMM kernel of kernels/
FORCED = {"torch": REFERENCE, "cublas": CUBLAS, "pattern": PATTERN}
LABELS = {
    REFERENCE: "the PyTorch implementation",
    CUBLAS: "the cuBLAS path (strided views or one gathered block, fused scatter)",
    PATTERN: "the pattern-GEMM kernel",
}
FORMAT = 1  # version of the cache file's layout
_UNRUN = object()  # Dispatcher._decide: no candidate ran while deciding


def kernel_mode() -> str:
    """The mode ``APPROXDROP_KERNELS`` selects (unset or empty: ``auto``); ValueError on any other value."""
    raw = os.environ.get(ENV_SWITCH, "")
    mode = raw.strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_SWITCH} must be one of {', '.join(MODES)} (unset means auto), got {raw!r}")
    return mode


@dataclass(frozen=True)
class Choice:
    """Which candidate runs for one key, and why. how: "measured" (in this process), "cached" (measured
    earlier on this GPU, read from disk) or "forced" (by the mode). times_ms: (candidate, milliseconds per
    call, None when it was excluded), in candidate order."""

    key: str
    path: str
    how: str
    reason: str
    times_ms: tuple[tuple[str, float | None], ...] = ()

    def line(self) -> str:
        """The one line said when the choice is first used."""
        return f"approxdrop: {self.key}: {LABELS.get(self.path, self.path)} runs ({self.how}: {self.reason})"


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def cuda_event_timer(fn: Callable[[], object], warmup: int = 1, iters: int = 5) -> float:
    """Milliseconds per call of ``fn`` on the current CUDA stream: ``warmup`` calls, then the mean of
    ``iters`` calls between two CUDA events."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


# Largest error allowed against the reference, relative to the reference's largest magnitude (at least 1):
# rounding and summation order (and TF32 on the cuBLAS side) stay far below; a wrong index or garbage does not.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _leaves(out: Any) -> list[Any]:
    """The tensors of an op's output: a tensor, or tuples and lists of them, nested (the row op's lists), in order."""
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _leaves(item)]
    return [out]


def outputs_agree(out: Any, ref: Any) -> str | None:
    """None when ``out`` (a tensor, or tuples and lists of them) matches the reference ``ref`` in structure,
    shape, dtype and value (``TOLERANCE``); else what differs, in a few words."""
    outs, refs = _leaves(out), _leaves(ref)
    if len(outs) != len(refs):
        return f"returned {len(outs)} outputs, the reference {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape or o.dtype != r.dtype:
            return f"output {i} is {o.dtype} {tuple(o.shape)}, the reference's {r.dtype} {tuple(r.shape)}"
        if r.numel() == 0:
            continue
        r64, o64 = r.double(), o.double()
        if not torch.equal(torch.isfinite(o64), torch.isfinite(r64)):
            return f"output {i} is non-finite where the reference is finite (or the other way round)"
        finite = torch.isfinite(r64)
        err = (o64 - r64).abs()[finite].max().item() if finite.any() else 0.0
        scale = max(1.0, r64.abs()[finite].max().item() if finite.any() else 0.0)
        tol = TOLERANCE.get(r.dtype, 1e-2)
        if err > tol * scale:
            return f"output {i} differs from the reference by {err:.3g} (allowed {tol * scale:.3g})"
    return None


class Dispatcher:
    """Chooses, per key, the candidate that runs (see the module docstring); one per GPU.

    cache_file: the JSON file of this GPU and torch version (None: memory only). timer(fn) returns
    milliseconds per call of fn. check(out, ref) returns None when a candidate's output agrees with the
    reference's, else the reason (None: no check). can_measure() is False while timing is impossible
    (a CUDA graph being captured): an undecided key then runs the reference, undecided. tag: identifies
    what the times are valid for (e.g. the kernel sources' hash); a cache file with another tag is
    measured again. margin: how much faster than the reference another candidate must be.
    """

    def __init__(
        self,
        cache_file: Path | None,
        timer: Callable[[Callable[[], object]], float],
        check: Callable[[Any, Any], str | None] | None = None,
        can_measure: Callable[[], bool] = lambda: True,
        tag: Mapping[str, str] | None = None,
        margin: float = 0.05,
        say: Callable[[str], None] = _say,
    ) -> None:
        self.cache_file = None if cache_file is None else Path(cache_file)
        self.timer, self.check, self.can_measure, self.margin, self.say = timer, check, can_measure, margin, say
        self.tag = dict(tag or {})
        self._choices: dict[str, Choice] = {}  # the choices used in this process
        self._disk: dict[str, Choice] | None = None  # the cache file's choices, read on first need
        self._said: set[str] = set()
        self._lock = threading.RLock()

    def choices(self) -> tuple[Choice, ...]:
        """The choices made or used in this process, by key."""
        with self._lock:
            return tuple(self._choices[k] for k in sorted(self._choices))

    def run(self, key: str, candidates: Sequence[Candidate], args: Any, mode: str | None = None) -> Any:
        """The output of the candidate chosen for ``key`` run on ``args`` (the first candidate is the
        reference; those whose ``supports(args)`` gives reasons are skipped). ``mode``: ``kernel_mode()``
        when None."""
        mode = kernel_mode() if mode is None else mode
        reference = candidates[0]
        if mode == "0":
            return reference.run(args)
        ok, skipped = usable(candidates[1:], args)
        ok = {reference.name: reference, **ok}
        if mode in FORCED:
            return ok[self._forced(key, ok, skipped, mode)].run(args)
        path, output = self._decide(key, ok, skipped, args)
        return ok[path].run(args) if output is _UNRUN else output

    def choose(self, key: str, candidates: Sequence[Candidate], args: Any) -> str:
        """The name of the candidate chosen for ``key``, measured on ``args`` the first time (the ``auto``
        mode whatever ``APPROXDROP_KERNELS`` says: for choices that are not between kernels)."""
        ok, skipped = usable(candidates[1:], args)
        return self._decide(key, {candidates[0].name: candidates[0], **ok}, skipped, args)[0]

    def _decide(self, key: str, ok: Mapping[str, Candidate], skipped: list[str], args: Any) -> tuple[str, Any]:
        """(the path for ``key`` among the usable candidates ``ok``, the reference first; the output of that
        path on ``args`` when deciding ran it, else ``_UNRUN``): chosen before, cached on disk, or measured."""
        reference = next(iter(ok.values()))
        with self._lock:  # decide under the lock (a first call measures once, whichever threads ask); run outside
            choice = self._choices.get(key)
            if choice is None or choice.how == "forced":  # a forced run measured nothing
                choice = self._cached(key)
            if choice is not None and choice.path in ok:
                self._use(choice)
                path = choice.path
            elif len(ok) == 1:
                path = reference.name
            elif not self.can_measure():
                self._say_once(
                    f"capture:{key}",
                    f"approxdrop: {key}: {LABELS.get(reference.name, reference.name)} runs undecided: no timing while "
                    "a CUDA graph is captured (run the step once before capturing)",
                )
                path = reference.name
            else:
                choice, output = self._measure(key, ok, skipped, args)
                self._choices[key] = choice
                self._say_once(key, choice.line())
                self._save(choice)
                return choice.path, output
        return path, _UNRUN

    def _forced(self, key: str, ok: Mapping[str, Candidate], skipped: list[str], mode: str) -> str:
        path = FORCED[mode] if FORCED[mode] in ok else next(iter(ok))
        why = f"{ENV_SWITCH}={mode}"
        if path != FORCED[mode]:
            why += f", but {LABELS[FORCED[mode]]} is unavailable"
            why += "".join(f" ({s})" for s in skipped if s.startswith(f"{FORCED[mode]} "))
        with self._lock:
            if key not in self._choices:
                self._choices[key] = Choice(key, path, "forced", why)
            self._say_once(f"forced:{mode}:{path}", f"approxdrop: {LABELS.get(path, path)} runs on CUDA ({why})")
        return path

    def _measure(self, key: str, ok: Mapping[str, Candidate], skipped: list[str], args: Any) -> tuple[Choice, Any]:
        """Run, check and time every usable candidate; the reference's errors propagate (they are the op's)."""
        reference = next(iter(ok))
        outputs: dict[str, Any] = {}
        times: dict[str, float | None] = {}
        excluded: list[str] = []
        for name, candidate in ok.items():
            times[name] = None
            fn = _bound(candidate, args)
            try:
                out = fn()
                if name == reference:
                    outputs[name] = out
                problem = None if name == reference or self.check is None else self.check(out, outputs[reference])
                if problem is None:
                    t = self.timer(fn)
                    problem = None if math.isfinite(t) and t >= 0 else f"timer gave {t}"
            except Exception as exc:  # noqa: BLE001 - a failing candidate is excluded, with the reason
                if name == reference:
                    raise
                problem = f"raised {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            if problem is not None:
                excluded.append(f"{name} excluded: {problem}")
                continue
            outputs[name], times[name] = out, t
        best, ref_time = reference, times[reference]
        if ref_time is not None:  # without the reference's time nothing is known to be faster than it
            faster = {
                n: t for n, t in times.items() if n != reference and t is not None and t < (1 - self.margin) * ref_time
            }
            best = min(faster, key=faster.get) if faster else reference
        measured = ", ".join(f"{n} {t:.3f} ms" for n, t in times.items() if t is not None) or "no valid time"
        reason = f"{measured}; another path must beat {reference} by {self.margin:.0%}"
        if excluded or skipped:
            reason += "; " + "; ".join(excluded + skipped)
        return Choice(key, best, "measured", reason, tuple(times.items())), outputs[best]

    def _use(self, choice: Choice) -> None:
        self._choices.setdefault(choice.key, choice)
        self._say_once(choice.key, choice.line())

    def _say_once(self, what: str, line: str) -> None:
        if what not in self._said:
            self._said.add(what)
            self.say(line)

    # ------------------------------------------------------------------ the cache file

    def _cached(self, key: str) -> Choice | None:
        if self._disk is None:
            self._disk = self._read(report=True)
        return self._disk.get(key)

    def _read(self, report: bool) -> dict[str, Choice]:
        """The cache file's choices; {} when it is missing, for another tag, or unreadable (said once)."""
        if self.cache_file is None or not self.cache_file.exists():
            return {}
        try:
            payload = json.loads(self.cache_file.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                raise ValueError("not a dispatch cache of this version")
            if payload.get("tag") != self.tag:
                return {}  # measured for other kernels: measured again
            return {key: _choice_from_json(key, entry) for key, entry in payload["choices"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if report:
                self._say_once(
                    "corrupt-cache",
                    f"approxdrop: the GPU dispatch cache {self.cache_file} is unreadable ({type(exc).__name__}); "
                    "measuring again, it is rewritten",
                )
            return {}

    def _save(self, choice: Choice) -> None:
        """Add ``choice`` to the cache file (merged with what another process may have written), atomically."""
        if self.cache_file is None:
            return
        entries = self._read(report=False)
        entries[choice.key] = choice
        if self._disk is not None:
            self._disk[choice.key] = choice
        payload = {
            "format": FORMAT,
            "tag": self.tag,
            "choices": {
                k: {"path": c.path, "reason": c.reason, "times_ms": dict(c.times_ms)} for k, c in entries.items()
            },
        }
        try:
            write_json_atomic(self.cache_file, payload, indent=1)
        except OSError as exc:
            self._say_once(
                "unwritable-cache", f"approxdrop: cannot write the GPU dispatch cache {self.cache_file}: {exc}"
            )


def _bound(candidate: Candidate, args: Any) -> Callable[[], Any]:
    """``candidate.run(args)`` as a zero-argument callable (what the timer times), named like the candidate."""

    def call():
        return candidate.run(args)

    call.name = candidate.name
    return call


def _choice_from_json(key: str, entry: dict) -> Choice:
    """One cache-file entry as a Choice; TypeError / ValueError when it is malformed."""
    path, reason, times = entry["path"], entry["reason"], entry["times_ms"]
    if not isinstance(path, str) or not isinstance(reason, str) or not isinstance(times, dict):
        raise TypeError(f"malformed entry for {key!r}")
    for name, t in times.items():
        if not isinstance(name, str) or not (t is None or isinstance(t, (int, float))):
            raise TypeError(f"malformed time in the entry for {key!r}")
    return Choice(key, path, "cached", reason, tuple((n, None if t is None else float(t)) for n, t in times.items()))
