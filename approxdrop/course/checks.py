"""The exercise checker of the labs: a learner's function against the reference, one printed line.

Every case is deep-copied for each side (tensors cloned, modules, optimizers and generators copied), so
neither side sees what the other did to its inputs; a learner function that changes an input tensor or
module in place fails, naming the argument (a module that an optimizer of the case trains may change).
Each call of the learner's function runs in a worker thread under a deadline (``DEFAULT_TIMEOUT_S``
seconds unless ``check`` is told otherwise): the caller only waits, so code that never returns fails
whatever it catches, instead of hanging the notebook, and a kernel interrupt still stops the check. An
answer with NaN or inf where the reference has none fails, naming the element; an answer of the wrong
type, dtype, layout or shape fails, saying what was expected; an answer that calls ``sys.exit`` fails; an
exception from the answer is reported with the line of the learner's code that raised it. The global
random streams (torch, ``random``, numpy) are put back as they were after each check, whatever the
answer or the reference seeded.
"""

from __future__ import annotations

import copy
import ctypes
import dis
import inspect
import math
import numbers
import random
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
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


SPELLED_OUT = ("ndarray",)  # type names read letter by letter: "an en-d-array"


def _a(word: str) -> str:
    """``word`` with its indefinite article, chosen by its first letter (as read): "an int", "an ndarray",
    "a list"."""
    vowel_sound = word[:1].lower() in "aeiou" or word.startswith(SPELLED_OUT)
    return f"{'an' if vowel_sound else 'a'} {word}"


def describe(value: Any) -> str:
    """What a value is, for a FAIL message: its type, and its shape, length or a short repr."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        if value.is_nested:
            return f"a nested tensor ({value.dtype})"
        layout = "" if value.layout == torch.strided else f", layout {value.layout}"
        where = "" if value.device.type == "cpu" else f", on {value.device}"
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype}{layout}{where})"
    if isinstance(value, bool):
        return f"a bool ({value})"
    if isinstance(value, (int, float, complex, np.number)):
        return f"the number {value!r}"
    if isinstance(value, numbers.Number):  # a Fraction, a Decimal: say which kind of number
        return f"{_a(type(value).__name__)} ({value!r})"
    if type(value).__module__ == "torch.return_types":  # torch.sort, torch.max(dim=...), ...: a named tuple
        fields = " or ".join(f".{field}" for field in getattr(type(value), "__match_args__", ()))
        return f"a torch.return_types.{type(value).__name__} (a named tuple: take its {fields or 'fields'})"
    if isinstance(value, (list, tuple)):
        return f"{_a(type(value).__name__)} of length {len(value)}"
    try:
        text = repr(value)
    except Exception:  # an answer's own class with a broken __repr__
        return _a(type(value).__name__)
    return f"{_a(type(value).__name__)} ({text if len(text) <= 40 else text[:37] + '...'})"


def _expected(want: Any, any_float: bool = False) -> str:
    """The kind of answer the reference's value asks for: "a tensor of shape (3,) (torch.int64)" (with
    ``any_float``, "a floating tensor of shape (3,)" for a floating reference)."""
    if isinstance(want, torch.Tensor):
        if any_float and want.is_floating_point():
            return f"a floating tensor of shape {tuple(want.shape)}"
        return f"a {'bool ' if want.dtype == torch.bool else ''}tensor of shape {tuple(want.shape)} ({want.dtype})"
    if isinstance(want, bool):
        return "a bool"
    if isinstance(want, numbers.Integral):
        return "a whole number (an int)"
    if isinstance(want, numbers.Real):
        return "a float"
    return "a number" if isinstance(want, numbers.Number) else describe(want)


def _is_number(value: Any, integral: bool) -> bool:
    """``value`` is a real number (a whole one when ``integral``): a Python or numpy scalar or a 0-d
    tensor, never a bool or a complex."""
    if isinstance(value, torch.Tensor):
        kind_ok = not value.is_floating_point() if integral else not value.is_complex()
        return value.dim() == 0 and value.dtype != torch.bool and kind_ok
    kind = numbers.Integral if integral else numbers.Real
    return isinstance(value, kind) and not isinstance(value, (bool, np.bool_))


def _is_bool(value: Any) -> bool:
    """``value`` is a bool: a Python or numpy bool, or a tensor of dtype torch.bool."""
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)


def _kind_problem(got: Any, want: Any, any_float: bool) -> str | None:
    """Why ``got`` is not the kind of answer ``want`` is (another dtype, a list or an array where a
    tensor is asked, a float where an int is), or None; lists are judged by their values alone. With
    ``any_float``, a floating tensor of any float dtype stands for a floating reference."""
    if isinstance(want, torch.Tensor):
        ok = isinstance(got, torch.Tensor) and (
            got.dtype == want.dtype or (any_float and want.is_floating_point() and got.is_floating_point())
        )
    elif isinstance(want, bool):
        ok = isinstance(got, (bool, np.bool_))
    elif isinstance(want, numbers.Real):
        ok = _is_number(got, integral=isinstance(want, numbers.Integral))
    else:
        ok = True
    return None if ok else f"it returned {describe(got)}, expected {_expected(want, any_float)}"


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


def _own_parts(module: torch.nn.Module) -> dict[str, Any]:
    """A module's own parameters and buffers, and its children, by name."""
    parts = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    return parts | dict(module.named_children())


def _plain(value: Any) -> bool:
    """Whether ``value`` is a plain setting: None, a bool, a number, a string, or a tuple or list of them."""
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, numbers.Number, str))


def _settings(module: torch.nn.Module) -> dict[str, Any]:
    """A module's own plain attributes by name: its settings (a Dropout's ``p``, a Linear's ``in_features``,
    ``training``), not its parameters, buffers, children or hooks."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and _plain(v)}


def _same_setting(before: Any, after: Any) -> bool:
    """``after`` equals ``before`` (a plain setting), NaN equal to NaN, of the same type."""
    if type(before) is not type(after):
        return False
    if isinstance(before, (tuple, list)):
        return len(before) == len(after) and all(_same_setting(b, a) for b, a in zip(before, after))
    return before == after or (before != before and after != after)


def _changed(before: Any, after: Any, path: str, trained: frozenset[int] = frozenset()) -> str | None:
    """The path of the first tensor in ``after`` that is not the same as in ``before``, looking into
    lists, tuples, dicts and modules (their parameters, buffers and children, which must keep their names
    and types, and their plain settings, such as a Dropout's ``p``); None when every tensor and setting is
    unchanged. A module holding a parameter whose id is in ``trained`` (one an optimizer of the case steps:
    a training step changes it) is not looked into."""
    if isinstance(before, torch.Tensor):
        return None if _same(before, after) else path
    if isinstance(before, torch.nn.Module):
        if any(id(param) in trained for param in before.parameters()):
            return None
        if type(after) is not type(before):
            return path
        parts = _own_parts(before), _own_parts(after)
        if parts[0].keys() != parts[1].keys():
            return path
        settings = _settings(before), _settings(after)
        moved = (k for k, v in settings[0].items() if k not in settings[1] or not _same_setting(v, settings[1][k]))
        if moved := next(moved, None):
            return f"{path}.{moved}"  # a setting such as a Dropout's p
        return next((p for k in parts[0] if (p := _changed(parts[0][k], parts[1][k], f"{path}.{k}", trained))), None)
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        if len(before) != len(after):
            return path
        pairs = enumerate(zip(before, after))
        return next((p for i, (b, a) in pairs if (p := _changed(b, a, f"{path}[{i}]", trained))), None)
    if isinstance(before, dict) and isinstance(after, dict):
        if before.keys() != after.keys():
            return path
        return next((p for k in before if (p := _changed(before[k], after[k], f"{path}[{k!r}]", trained))), None)
    return None


class _Worker(threading.Thread):
    """One call ``fn(*args)`` in a daemon thread, with the caller's grad mode; ``outcome`` holds its
    "value" or "error" once it returns. ``stop`` makes every later line of Python it runs raise
    _Timeout, so a retry loop that catches everything ends at the first line of its handler; a loop that
    never reaches a new line (``while True: pass``) gets one _Timeout at its next jump back. A tight inner
    loop under ``except BaseException`` can outlast both: the check then says it is still running and to
    restart the kernel."""

    def __init__(self, fn: Callable, args: Sequence):
        super().__init__(name="approxdrop-check", daemon=True)
        self.fn, self.args, self.outcome = fn, args, {}
        self.grad_enabled = torch.is_grad_enabled()  # thread-local in torch: carry the caller's mode over
        self.running, self.stopping, self.traced = True, False, False

    def run(self) -> None:
        # costs a call per Python call; gives stop() a hook into every frame. A tracer already set here (a
        # debugger, coverage) is left alone: then stop() cannot end code that catches everything.
        self.traced = sys.gettrace() is None
        if self.traced:
            sys.settrace(self._on_call)
        try:
            try:
                with torch.set_grad_enabled(self.grad_enabled):
                    self.outcome["value"] = self.fn(*self.args)
            except BaseException as exc:  # handed to the caller, who reports it
                self.outcome["error"] = exc
            self.running = False  # no stop is sent after this
            _pending_stop_lands_here()
        except _Timeout:  # a stop sent at the answer's last line lands after it returned
            pass
        finally:
            if self.traced:
                sys.settrace(None)

    def _on_call(self, frame: FrameType, event: str, arg: Any) -> Callable | None:
        return self._on_line if self.stopping else None

    def _on_line(self, frame: FrameType, event: str, arg: Any) -> Callable:
        # raising here would switch tracing off, so the stop is sent as an asynchronous exception
        if self.running and event == "line":
            _async_raise(self.ident, _Timeout)
        return self._on_line

    def stop(self, grace_s: float) -> None:
        """Trace the answer's running frames (not ``run``'s), then wait up to ``grace_s`` seconds for it to
        end. Code blocked in C (a sleep) stops only at its next Python line."""
        self.stopping = True
        frame = sys._current_frames().get(self.ident) if self.traced else None
        while frame is not None and frame.f_code is not _Worker.run.__code__:
            frame.f_trace = self._on_line
            frame = frame.f_back
        self.join(min(grace_s, LINE_STOP_S))
        if self.is_alive() and self.running and _busy(self.native_id):
            _async_raise(self.ident, _Timeout)  # a loop with no new line (``while True: pass``) only sees this
        self.join(max(0.0, grace_s - LINE_STOP_S))


def _async_raise(ident: int | None, exc: type[BaseException]) -> None:
    """Raise ``exc`` in thread ``ident`` at its next check for pending events (a call, a loop's jump back)."""
    if ident is not None and hasattr(ctypes, "pythonapi"):  # CPython
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


def _busy(native_id: int | None, window_s: float = 0.1, ran_s: float = 2e-4) -> bool:
    """Whether the thread with kernel id ``native_id`` ran on a CPU for ``ran_s`` seconds over ``window_s``
    (a sleeping one runs for none; a spinning one gets its share even on a machine loaded 100-fold). An
    asynchronous exception sent to a thread blocked in C (a sleep) stays pending until it wakes, and
    meanwhile stalls every traced thread (CPython 3.11), so only a busy thread is sent one. False where the
    kernel does not say (no Linux ``/proc``) or the thread has ended."""

    def run_ns() -> int:  # first field of schedstat: nanoseconds on a CPU
        with open(f"/proc/self/task/{native_id}/schedstat") as stat:
            return int(stat.read().split()[0])

    try:
        start = run_ns()
        time.sleep(window_s)
        return run_ns() - start > ran_s * 1e9
    except (OSError, ValueError, IndexError):
        return False


def _pending_stop_lands_here() -> None:
    """Nothing: entering a Python function raises a pending asynchronous exception, so a stop sent at the
    answer's last line is raised inside ``_Worker.run``'s ``try`` rather than after it."""


STOP_GRACE_S = 1.0  # how long a late answer is given to end once it is told to stop
LINE_STOP_S = 0.1  # of which this long for the stop at its next line, before one at its next jump back


def _call_with_deadline(fn: Callable, args: Sequence, timeout_s: float) -> Any:
    """``fn(*args)`` in a worker thread; _Timeout once it has run ``timeout_s`` seconds. The caller only
    waits, so nothing the answer catches (a bare ``except:`` retry loop) can hold the deadline off, and
    a kernel interrupt (KeyboardInterrupt here) stops the worker and propagates."""
    worker = _Worker(fn, args)
    worker.start()
    try:
        worker.join(timeout_s)
    except KeyboardInterrupt:
        worker.stop(STOP_GRACE_S)
        raise
    if worker.is_alive():
        worker.stop(STOP_GRACE_S)
        still = " (it is still running in the background: restart the kernel to stop it)" if worker.is_alive() else ""
        raise _Timeout(still)
    if "error" in worker.outcome:
        raise worker.outcome["error"]
    return worker.outcome["value"]


def _as_tensor(value: Any) -> torch.Tensor | None:
    """An answer as a dense CPU tensor (numbers that are not tensors in float64, so a Python float is
    compared at full precision), or None when it is not a dense tensor, a number or a list of numbers."""
    if value is None or isinstance(value, (str, bytes, dict, set)):
        return None
    try:
        tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if tensor.is_nested or tensor.layout != torch.strided:
            return None
        if not isinstance(value, torch.Tensor) and tensor.is_floating_point():
            tensor = torch.as_tensor(value, dtype=torch.float64)
        return tensor.cpu()
    except Exception:  # not convertible: a ragged list, a meta tensor, an object whose __len__ raises
        return None


def _number_texts(got: float | bool, want: float | bool) -> list[str]:
    """``got`` and ``want`` as text: 6 digits, or all that a float needs when 6 do not show the difference."""
    texts = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in (got, want)]
    return [repr(v) for v in (got, want)] if texts[0] == texts[1] and got != want else texts


def _mismatch(
    tensor: torch.Tensor, flat: int, got: float | bool, want: float | bool, element_name: Callable | None = None
) -> str:
    """The mismatch at flat index ``flat`` of ``tensor``: "element [i, j] is 0.5, expected 1" ("it
    returned 0.5, expected 1" when the tensor is 0-d; ``element_name(flat)`` instead of "element [i, j]"
    when given)."""
    got, want = _number_texts(got, want)
    if element_name is not None:
        return f"{element_name(flat)} is {got}, expected {want}"
    if not tensor.dim():
        return f"it returned {got}, expected {want}"
    index = [int(i) for i in torch.unravel_index(torch.tensor(flat), tensor.shape)]
    return f"element {index} is {got}, expected {want}"


def _compare(
    got: Any, want: Any, any_float: bool = False, element_name: Callable | None = None
) -> tuple[float | None, str]:
    """(max difference, where it is) when ``got`` has the type and shape of ``want`` and every NaN or
    inf of one is at the same place with the same value in the other; else (None, what is wrong).
    Bool answers count their mismatched entries; ``element_name(flat)`` names an element (see _mismatch)."""
    want_t, got_t = _as_tensor(want), _as_tensor(got)
    if want_t is None:
        raise TypeError(f"the reference returned {describe(want)}, which the checker cannot compare")
    wrong_kind = f"it returned {describe(got)}, expected {_expected(want, any_float)}"
    if isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor) and got.device != want.device:
        return None, (
            f"it returned {describe(got)}, expected a tensor on {want.device}, the device of the inputs: "
            "compute the answer where its inputs are, without moving it"
        )
    if _is_bool(got) and want_t.dtype != torch.bool:
        return None, wrong_kind
    if got_t is None and isinstance(got, numbers.Number) and isinstance(want, numbers.Real):
        return None, f"{wrong_kind}: convert it with {'int' if isinstance(want, numbers.Integral) else 'float'}()"
    if got_t is not None and got_t.is_complex() and not want_t.is_complex():
        return None, f"{wrong_kind}: it holds complex numbers, expected real ones"
    if got_t is None:
        return None, wrong_kind
    if got_t.shape != want_t.shape:
        if isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor):
            return None, f"it returned shape {tuple(got_t.shape)}, expected {tuple(want_t.shape)}"
        return None, wrong_kind
    if not got_t.numel():
        return 0.0, ""
    try:
        return _compare_values(got_t, want_t, element_name)
    except (RuntimeError, TypeError):  # a dtype torch cannot compare or promote (uint32 with bool, quantized)
        return None, wrong_kind


def _compare_values(
    got_t: torch.Tensor, want_t: torch.Tensor, element_name: Callable | None
) -> tuple[float | None, str]:
    """_compare for two dense CPU tensors of one shape, with at least one element."""
    g, w = got_t.reshape(-1), want_t.reshape(-1)  # [N], [N]
    if got_t.dtype == torch.bool or want_t.dtype == torch.bool:
        wrong = g != w  # [N]
        count = int(wrong.sum())
        if not count:
            return 0.0, ""
        first = int(wrong.nonzero()[0])
        where = _mismatch(got_t, first, g[first].item(), w[first].item(), element_name)
        return float(count), f"{count} of {g.numel()} entries differ; {where}"
    g, w = g.double(), w.double()
    finite = g.isfinite() & w.isfinite()  # [N]
    bad = ~finite & ~((g == w) | (g.isnan() & w.isnan()))  # NaN or inf on one side only, or unequal infs
    if bool(bad.any()):
        first, more = int(bad.nonzero()[0]), int(bad.sum()) - 1
        extra = f" ({more} more such elements)" if more else ""
        return None, _mismatch(got_t, first, g[first].item(), w[first].item(), element_name) + extra
    diff = torch.where(finite, (g - w).abs(), torch.zeros_like(g))  # [N]: 0 where both have the same NaN/inf
    worst = int(diff.argmax())
    return float(diff[worst]), _mismatch(got_t, worst, g[worst].item(), w[worst].item(), element_name)


FLOAT32_NEAR = 1e-6  # relative: float32 rounds at about 6e-8 per operation, a few operations stay below this


def _float32_note(got: Any, want: Any, diff: float) -> str:
    """For a near miss that float32 rounding explains (the answer holds float32 values, a float32 tensor or
    numbers float32 represents exactly, and is off by at most FLOAT32_NEAR of the expected magnitude): a note
    saying to compute in float64; else ""."""
    try:
        values = torch.as_tensor(got, dtype=torch.float64 if isinstance(got, float) else None)
        expected = torch.as_tensor(want, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return ""
    if not values.is_floating_point() or not values.numel() or values.shape != expected.shape:
        return ""
    if diff > FLOAT32_NEAR * max(1.0, float(expected.abs().max())):
        return ""
    if values.dtype == torch.float64 and not torch.equal(values, values.float().double()):
        return ""  # float64 values float32 cannot hold: not float32 rounding
    return " (float32 rounding: compute in float64, with Python floats or dtype=torch.float64)"


LOW_PRECISION_EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # the spacing of the numbers near 1
LOW_PRECISION_NEAR = 8.0  # epsilons of the expected magnitude: the rounding of a few operations stays below this


def _low_precision_note(got: Any, want: Any, diff: float) -> str:
    """For a near miss that the rounding of a float16 or bfloat16 answer explains (the reference is of another
    dtype, and the answer is off by at most LOW_PRECISION_NEAR epsilons of its dtype, of the expected
    magnitude): a note naming the dtype as the cause; else ""."""
    if not isinstance(got, torch.Tensor) or got.dtype not in LOW_PRECISION_EPS:
        return ""
    if isinstance(want, torch.Tensor) and want.dtype == got.dtype:
        return ""
    try:
        expected = torch.as_tensor(want, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return ""
    eps = LOW_PRECISION_EPS[got.dtype]
    if not expected.numel() or diff > LOW_PRECISION_NEAR * eps * max(1.0, float(expected.abs().max())):
        return ""
    name = str(got.dtype).removeprefix("torch.")
    return (
        f" ({name} rounding: {name} keeps about {round(-math.log10(eps))} significant digits, too few for this "
        "tolerance; compute and return float32 or float64)"
    )


@contextmanager
def random_streams_kept() -> Iterator[None]:
    """Put torch's CPU (and initialised CUDA) generators, ``random`` and numpy's global stream back as they
    were on exit, so a check leaves the notebook's random stream alone whatever its code seeded."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def fresh_generator() -> torch.Generator:
    """A CPU generator seeded from the operating system, for the cases a check draws anew at every call
    (a lookup table of the fixed cases cannot pass them); the global stream is not touched."""
    generator = torch.Generator()
    generator.seed()
    return generator


def draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """An int drawn uniformly from [low, high] (both included) with ``generator``."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def draw_float(generator: torch.Generator, low: float, high: float) -> float:
    """A float drawn uniformly from [low, high) with ``generator``, rounded to 3 digits (readable cases)."""
    return round(low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64)), 3)


_PACKAGE = Path(__file__).resolve().parents[1]  # approxdrop: the checkers and the library they call
_LIBRARIES = tuple(Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib"))


def _learners(filename: str) -> bool:
    """Whether code of file ``filename`` is the learner's: outside the approxdrop package and the installed
    libraries (torch, the standard library)."""
    path = Path(filename).resolve()
    return not path.is_relative_to(_PACKAGE) and not any(path.is_relative_to(lib) for lib in _LIBRARIES)


def _raised_at(exc: BaseException) -> str:
    """Where the learner's code raised ``exc``: ", at line 7 of cell.py: assert x > 0", from the last frame
    of its traceback outside the approxdrop package and the installed libraries (torch, the standard
    library); "" when there is none."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if _learners(frame.filename):
            source = f": {frame.line.strip()}" if frame.line and frame.line.strip() else ""
            return f", at line {frame.lineno} of {frame.filename}{source}"
    return ""


def _raised_by_a_stub(exc: BaseException) -> bool:
    """Whether a ``raise`` statement of the learner's own code raised ``exc``, as the TODO cell's ``raise
    NotImplementedError`` does: the innermost frame of its traceback is the learner's and stopped at a raise.
    False for an error a library raised inside a real attempt (torch's "... not implemented for 'Bool'",
    raised in C while the learner's frame was at a call or an operator such as ``@``)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if not _learners(code.co_filename):
        return False
    return any(op.offset == tb.tb_lasti and op.opname == "RAISE_VARARGS" for op in dis.get_instructions(code))


def _raised(exc: BaseException) -> str:
    """The FAIL text of an exception from the learner's code: its type, its message (or "(no message)")
    and where it was raised."""
    text = str(exc)
    return f"it raised {type(exc).__name__}{f': {text}' if text else ' (no message)'}{_raised_at(exc)}"


def _run_cases(
    name: str,
    candidate: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    atol: float,
    timeout_s: float,
    any_float: bool,
    atol_float32: float | None = None,
    element_name: Callable | None = None,
    pass_note: str = "",
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
        except NotImplementedError as exc:
            # not attempted: the TODO stub's own raise on the first case. On a later case the earlier ones
            # passed (the answer is begun, and this case is not done); one that torch raised inside the
            # learner's code (an op not implemented for bool) is a real attempt's error: both FAIL
            if number > 1 or not _raised_by_a_stub(exc):
                return CheckResult(name, "fail", None, f"on {where} {_raised(exc)}")
            return CheckResult(name, "not attempted", None, "replace the NotImplementedError with your code")
        except _Timeout as exc:
            return CheckResult(name, "fail", None, f"on {where} it took longer than {timeout_s:g} s{exc}")
        except WrongAnswer as exc:
            return CheckResult(name, "fail", None, f"on {where} {exc}")
        except KeyboardInterrupt:  # the learner stopped the check
            raise
        except SystemExit as exc:
            return CheckResult(name, "fail", None, f"on {where} it called sys.exit({exc.code!r}): return the answer")
        except BaseException as exc:  # the learner's code failed: report it, do not crash the lab
            return CheckResult(name, "fail", None, f"on {where} {_raised(exc)}")
        labels = names or [f"argument {i}" for i in range(1, len(case) + 1)]
        trained = frozenset(
            id(param)
            for arg in case
            if isinstance(arg, torch.optim.Optimizer)
            for group in arg.param_groups
            for param in group["params"]
        )
        for label, before, after in zip(labels, case, mine):
            if path := _changed(before, after, label, trained):
                detail = f"on {where} it changed {path} in place: leave the inputs as they are"
                return CheckResult(name, "fail", None, detail)
        want = reference(*copy.deepcopy(case))
        named = None if element_name is None else lambda flat, case=case: element_name(flat, *case)
        diff, text = _compare(got, want, any_float, named)
        if diff is None:
            return CheckResult(name, "fail", None, f"on {where} {text}")
        worst = max(worst, diff)
        in_float32 = isinstance(want, torch.Tensor) and want.dtype == torch.float32
        if diff > (atol_float32 if in_float32 and atol_float32 is not None else atol):
            note = _low_precision_note(got, want, diff) or ("" if in_float32 else _float32_note(got, want, diff))
            return CheckResult(name, "fail", worst, f"differs on {where}: {text}{note}")
        if problem := _kind_problem(got, want, any_float):
            return CheckResult(name, "fail", None, f"on {where} {problem}")
    counted = f"{len(cases)} case{'' if len(cases) == 1 else 's'}"
    return CheckResult(name, "pass", worst, counted + (f"; {pass_note}" if pass_note else ""))


def check(
    name: str,
    candidate: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    atol: float = 1e-6,
    timeout_s: float | None = None,
    any_float: bool = False,
    atol_float32: float | None = None,
    element_name: Callable[..., str] | None = None,
    pass_note: str = "",
) -> CheckResult:
    """Run ``candidate(*case)`` against ``reference(*case)`` on every case; print and return one line.

    A candidate whose own code raises NotImplementedError on the first case (a ``raise`` statement of the
    learner's code, as in the TODO cell as given) is "not attempted", never an error, so a lab still runs
    top to bottom; a NotImplementedError on a later case or from a library the answer called (torch's
    "... not implemented for 'Bool'"), any other exception, a wrong type, shape or value, a NaN or inf the
    reference does not have, an input changed in place, or a call running past ``timeout_s`` seconds
    (None: ``DEFAULT_TIMEOUT_S``) is a "fail". The values are compared first (within ``atol``, in float64;
    within ``atol_float32``, when given, where the reference is a float32 tensor), then the kind: the
    reference's tensor dtype (any float dtype for a floating reference with ``any_float``, where the spec
    asks for "a float tensor"), or an int or a float. An answer whose dtype torch cannot compare with the
    reference's (uint32 with bool, a quantized tensor) fails, saying what was expected.
    ``element_name(flat, *case)`` names element ``flat`` of the answer in a FAIL line (default "element
    [i, j]"); the PASS line gives the number of cases, then ``pass_note``.
    """
    timeout_s = check_positive("timeout_s", DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    with random_streams_kept():
        result = _run_cases(
            name, candidate, reference, cases, atol, timeout_s, any_float, atol_float32, element_name, pass_note
        )
    print(result)
    return result
