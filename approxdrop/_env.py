"""One home for what every layer needs from its environment: argument checks, the default device
and its synchronisation, a one-line machine description, the cache and data directories (one
rule for every cache), and atomic file writes (of regular files only: a symlink is written through to
its target, and a target that is not a regular file, such as a directory or /dev/full, is refused).

Directories: ``cache_root()`` is ``$APPROXDROP_CACHE_DIR``, else ``$XDG_CACHE_HOME/approxdrop``,
else ``~/.cache/approxdrop``; each user of it takes its own subdirectory (``search/``,
``kernels/``, ``gpu-dispatch/``). Downloads go to ``data_root()``: ``$APPROXDROP_DATA_DIR``, else
``<$XDG_CACHE_HOME or ~/.cache>/approxdrop/data``. A ``~`` in these variables is the home directory.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import numbers
import os
import platform
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch._subclasses.fake_tensor import is_fake, unset_fake_temporarily


def _scalar(value: object) -> object:
    """A 0-d real tensor with values (a rate kept as ``torch.tensor(0.5)``) as the NumPy scalar of its dtype;
    any other value as it is. A bool tensor stays a tensor, so it is refused like a bool."""
    if (
        isinstance(value, torch.Tensor)
        and value.dim() == 0
        and value.dtype != torch.bool
        and not value.is_complex()
        and holds_values(value)
    ):
        t = value.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()[()]  # NumPy has no bfloat16
    return value


def _as_float(value: numbers.Real) -> float:
    """A checked real number as a float; a NumPy float32 or float16 as the shortest decimal that is that
    value in its own precision (``np.float32(0.3)`` is 0.3, not 0.30000001192092896, so a rate given in
    float32 finds the law searched for 0.3)."""
    if isinstance(value, np.floating) and value.itemsize < 8:
        return float(np.format_float_positional(value, unique=True))
    return float(value)


def is_int(value: object) -> bool:
    """An int or an integral numpy scalar (``numbers.Integral``), never a bool or a float like 2.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    """An int, float or numpy number (``numbers.Real``), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (a Python int or an integral numpy scalar; not a bool,
    not a float such as 2.0; a 0-d integer tensor is read as its value) in ``[low, high]``, else raise
    ValueError naming it."""
    given, value = value, _scalar(value)
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {given!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def check_rate(p: object, name: str = "dropout rate p") -> float:
    """``p`` as a float if it is a real number (int, float, numpy scalar or 0-d tensor; not a bool) in
    [0, 1), else raise ValueError naming it."""
    value = _scalar(p)
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {p!r}")
    return _as_float(value)


def check_number(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float if it is a finite real number (int, float, numpy scalar or 0-d tensor; not a
    bool) in ``[low, high]`` (an open end where a bound is None), else raise ValueError naming it."""
    given, value = value, _scalar(value)
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {given!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be in {bound}, got {given!r}")
    return _as_float(value)


def check_positive(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number > 0 (int, float, numpy scalar or 0-d tensor;
    not a bool), else ValueError naming it."""
    given, value = value, _scalar(value)
    if not _is_real(value) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {given!r}")
    return _as_float(value)


def check_generator(generator: object) -> torch.Generator | None:
    """``generator`` if it is None or a CPU ``torch.Generator`` (the draws run on the CPU), else a ValueError."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a CPU torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (the draws run on the CPU), got {generator.device}")
    return generator


def tensor_cache(maxsize: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``functools.lru_cache(maxsize)`` for a function that makes constant tensors (index tensors, masks): its
    body runs outside inference mode, so a first call under ``torch.inference_mode()`` (sampling with dropout
    on) caches ordinary tensors, which a later training step may save for backward; and outside a
    FakeTensorMode (shape inference), which gets a fake copy of the real tensor: the cache never holds a
    fake one, and building it may read values (``nonzero``), which a fake tensor has not."""

    def decorate(make: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(make)
        def outside_inference_mode(*args: Any) -> Any:
            with torch.inference_mode(False):
                return make(*args)

        cached = functools.lru_cache(maxsize=maxsize)(outside_inference_mode)
        return functools.wraps(make)(functools.partial(outside_fake_mode, cached))

    return decorate


def check_token_ids(ids: torch.Tensor, vocab: int) -> None:
    """ValueError unless the token ids lie in [0, vocab). Under torch.compile, and on meta or fake ids, they
    are not read (reading would end the graph; the embedding rejects an id out of range)."""
    if torch.compiler.is_compiling() or not holds_values(ids) or not ids.numel():
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}), got [{low}, {high}]")


def holds_values(t: torch.Tensor) -> bool:
    """Whether ``t`` has values to read: not a meta or fake tensor (shape inference). A plain torch.Tensor
    skips ``is_fake``, which costs microseconds (the eager hot path asks at every layer)."""
    return not t.is_meta and (type(t) is torch.Tensor or not is_fake(t))


def outside_fake_mode(make: Callable[..., Any], *args: Any) -> Any:
    """``make(*args)`` on real tensors even under a FakeTensorMode (shape inference), for what needs values: a
    random draw, an index built with ``nonzero``. Under the mode, a tensor it returns comes back as a fake
    copy; anything else (patterns, a layout) as it is."""
    fake_mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    if fake_mode is None:
        return make(*args)
    with unset_fake_temporarily():
        made = make(*args)
    return fake_mode.from_tensor(made) if isinstance(made, torch.Tensor) else made


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None means the GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (no-op on CPU), so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_threads() -> str:
    """torch's CPU threads in words: "1 thread", "2 threads"."""
    threads = torch.get_num_threads()
    return f"{threads} thread{'' if threads == 1 else 's'}"


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from ``cpuinfo`` (Linux), else the architecture: records from two machines of one
    architecture (an AMD and an Intel VM) time differently."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name") and ":" in line]
    return names[0] if names and names[0] else platform.processor() or platform.machine()


def describe_machine(device: str | torch.device) -> str:
    """One line naming the device, torch version and date, for recorded tables."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        where = f"{name}, CUDA {torch.version.cuda}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}"
    else:
        where = f"CPU {cpu_name()}, {cpu_threads()}"
    return f"{where}; torch {torch.__version__}; {datetime.date.today().isoformat()}"


def _user_cache() -> Path:
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser()
    return Path.home() / ".cache"


def cache_root() -> Path:
    """The cache directory of every approxdrop cache (not created here)."""
    if os.environ.get("APPROXDROP_CACHE_DIR"):
        return Path(os.environ["APPROXDROP_CACHE_DIR"]).expanduser()
    return _user_cache() / "approxdrop"


def data_root() -> Path:
    """The download directory of data sets and corpora (not created here)."""
    if os.environ.get("APPROXDROP_DATA_DIR"):
        return Path(os.environ["APPROXDROP_DATA_DIR"]).expanduser()
    return _user_cache() / "approxdrop" / "data"


def _umask() -> int:
    """The process umask, read from /proc where it can be (setting it to read it races other threads'
    file creation), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def regular_file_target(path: Path) -> Path:
    """Where a write to ``path`` lands: ``path`` with its symlinks resolved (a link is written through, as
    ``open`` would, and stays a link); ValueError when something other than a regular file is there (a
    directory, a device such as /dev/full, a FIFO, a socket), which a write must not replace."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        via = f" (it leads to {target})" if target != Path(path).absolute() else ""
        raise ValueError(f"{path} is not a regular file{via}: refusing to replace it")
    return target


def _host_tag() -> str:
    """This machine's name as it goes into temporary file names: letters, digits and dots only (no "-", the
    separator), so that a process id is only ever judged on the machine that wrote it (a shared cache)."""
    return re.sub(r"[^A-Za-z0-9.]", "", socket.gethostname())[:32] or "localhost"


def _temp_prefix() -> str:
    """The start of ``write_atomic``'s temporary file names: ``.tmp-<pid>@<host>-``; ``mkstemp`` adds
    random letters, then ``-<target name>``."""
    return f".tmp-{os.getpid()}@{_host_tag()}-"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine); one of another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: someone else's; OverflowError: no pid (judged alive)
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files that ``write_atomic`` left beside ``path`` in a process that died without
    cleaning up (SIGKILL, a power cut), and return them: those of this target written on this machine whose
    process no longer exists. A live process's file, another machine's or another target's is left alone,
    and so is one that cannot be removed. A link ``path`` is followed, as ``write_atomic`` follows it."""
    path = Path(os.path.realpath(path))
    pattern = re.compile(rf"\.tmp-(\d+)@{re.escape(_host_tag())}-[a-z0-9_]+-{re.escape(path.name)}")
    try:
        names = os.listdir(path.parent)
    except OSError:  # no directory yet, or not one that can be listed
        return []
    removed = []
    for name in names:
        match = pattern.fullmatch(name)
        pid = int(match.group(1)) if match else 0
        if pid > 0 and not _pid_alive(pid):
            stale = path.parent / name
            try:
                stale.unlink()
            except OSError:  # gone already (another sweep), or not ours to remove
                continue
            removed.append(stale)
    return removed


def write_atomic(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file in the same directory, which
    then replaces ``path``; nothing is left behind on failure (the exception propagates), no file
    descriptor either. The file gets the umask's mode, as ``open`` would give it (not mkstemp's
    0600); a text file is UTF-8 whatever the locale. Only regular files are written
    (``regular_file_target``: symlinks written through, anything else refused with ValueError).
    The temporary file's name holds the writing process's id and machine (``.tmp-<pid>@<host>-XXXX-<name>``),
    so that one left by a killed process can be told apart and removed (``remove_stale_temps``)."""
    path = regular_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(), suffix="-" + path.name)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, payload: Any, indent: int | None = None) -> None:
    """Write JSON to ``path`` atomically (``write_atomic``)."""
    write_atomic(path, lambda f: json.dump(payload, f, indent=indent))
