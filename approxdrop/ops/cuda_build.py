"""The CUDA kernels' just-in-time build and status, and the per-GPU dispatchers.

Nothing here compiles at import. :func:`load` builds the kernel sources with
``torch.utils.cpp_extension.load`` for the architecture of a GPU into a cache directory (``kernels/``
under the approxdrop cache directory, ``_env.cache_root``; one subdirectory per torch, CUDA and
architecture), printing one line while it compiles. Each architecture is built and loaded once per
process (thread-safe), so two GPUs of different architectures each get their own build. When the kernels
cannot be built (no nvcc, a CPU-only torch, a compile error), one warning gives the reason and the
pure-PyTorch implementations run instead. :func:`status` reports what happened, or what would, and the
dispatch choices made by :func:`dispatcher` (one per GPU, its choices on disk under
``cache_root() / "gpu-dispatch"``).

The sources are the checkout's top-level ``kernels/`` (editable install); a wheel ships them as
package data in ``approxdrop/_kernels/`` (see ``pyproject.toml``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import torch

from .._env import cache_root, write_json_atomic
from .dispatch import ENV_SWITCH, Choice, Dispatcher, cuda_event_timer, kernel_mode, outputs_agree

SOURCES = ("binding.cpp", "pattern_gemm.cu", "column_sum.cu", "scatter.cu")
NAME = "approxdrop_kernels"
STAMP = "approxdrop_build.json"  # in each build directory: the source hash it was built from
KERNEL_MODES = ("auto", "cublas", "pattern")  # the modes that build and may run the extension


def _source_dir() -> Path:
    """``approxdrop/_kernels`` when installed from a wheel, else the checkout's top-level ``kernels/``."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "_kernels"
    return packaged if packaged.is_dir() else package.parent / "kernels"


SOURCE_DIR = _source_dir()


@dataclass(frozen=True)
class KernelStatus:
    """built: the extension is loaded in this process; arch: e.g. ``"sm_90"`` (None without a GPU);
    reason: why it is not built (None when built); path: the build directory or extension file;
    mode: the ``APPROXDROP_KERNELS`` mode; choices: the dispatch choices made or used on this GPU in
    this process (``dispatch.Choice``: key, path, how, reason, times)."""

    built: bool
    arch: str | None
    reason: str | None
    path: str | None
    mode: str = "auto"
    choices: tuple[Choice, ...] = ()


# Per architecture (None: no GPU), set by load(): the outcome (success or the reason of failure), and
# the extension module when built. load() holds _lock while it fills them.
_outcomes: dict[str | None, KernelStatus] = {}
_extensions: dict[str, ModuleType] = {}
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the kernels may be built and run: the ``APPROXDROP_KERNELS`` mode is ``auto``, ``cublas`` or
    ``pattern`` (ValueError on an unknown mode)."""
    return kernel_mode() in KERNEL_MODES


def _arch(device: torch.device | int | None = None) -> str | None:
    """``"sm_XY"`` of ``device`` (default: the current GPU), None without a GPU."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _cache_root() -> Path:
    return cache_root() / "kernels"


def _build_key(arch: str) -> str:
    """Build directory name: one per torch version, CUDA version and GPU architecture."""
    return f"torch{torch.__version__}-cuda{torch.version.cuda}-{arch}".replace("+", "_")


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.[ch]*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _stamped_sources(stamp: Path) -> str | None:
    """The source hash recorded in a build stamp; None when it is missing, unreadable or corrupt."""
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):  # missing, unreadable, truncated or not UTF-8 / JSON
        return None
    return recorded.get("sources") if isinstance(recorded, dict) else None


def _missing_sources() -> list[str]:
    """The files of ``SOURCES`` that are not in ``SOURCE_DIR``."""
    return [s for s in SOURCES if not (SOURCE_DIR / s).is_file()]


def _blocker() -> str | None:
    """Why the kernels cannot be built here, or None."""
    mode = kernel_mode()
    if mode == "0":
        return f"disabled by {ENV_SWITCH}=0"
    if mode not in KERNEL_MODES:
        return f"not used: {ENV_SWITCH}={mode} selects the PyTorch implementation"
    if torch.version.cuda is None:
        return f"this torch build has no CUDA (torch {torch.__version__})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    missing = _missing_sources()
    if missing:
        return f"kernel sources {missing} not found in {SOURCE_DIR} (reinstall approxdrop, or pip install -e .)"
    return None


def _unbuilt_reason(arch: str) -> str:
    """Reason for status() before load(): not built yet, built for another torch/CUDA, stale, or a bad stamp."""
    root, key = _cache_root(), _build_key(arch)
    stamp = root / key / STAMP
    if stamp.exists():
        recorded = _stamped_sources(stamp)
        if recorded is None:
            return f"the build stamp {stamp} is unreadable: it is rebuilt on first CUDA use"
        if recorded == _source_hash():
            return f"built in {root / key}, loads on first CUDA use (or call approxdrop.kernels.load())"
        return f"the build in {root / key} is for older sources: it is rebuilt on first CUDA use"
    others = sorted(p.parent.name for p in root.glob(f"*/{STAMP}") if p.parent.name != key)
    if others:
        return f"built for another torch/CUDA/GPU ({', '.join(others)}), not for {key}: it is rebuilt on first CUDA use"
    return "not built yet: builds on first CUDA use of an approxdrop op (or call approxdrop.kernels.load())"


def status(device: torch.device | int | None = None) -> KernelStatus:
    """Whether the kernels are built and loaded for ``device``'s architecture (default: the current GPU),
    and why not; the mode, and the dispatch choices made on that GPU. Never builds."""
    arch = _arch(device)
    outcome = _outcomes.get(arch)
    if outcome is None:
        outcome = KernelStatus(built=False, arch=arch, reason=_blocker() or _unbuilt_reason(arch), path=None)
    made = ()
    if torch.cuda.is_available():
        chooser = _dispatchers.get(torch.cuda.get_device_name(device))
        made = chooser.choices() if chooser is not None else ()
    return replace(outcome, mode=kernel_mode(), choices=made)


def _fail(arch: str | None, reason: str, path: str | None = None) -> None:
    _outcomes[arch] = KernelStatus(built=False, arch=arch, reason=reason, path=path)
    if enabled():
        warnings.warn(
            f"approxdrop: CUDA kernels unavailable ({reason}); using the PyTorch implementation",
            RuntimeWarning,
            stacklevel=4,
        )


def load(verbose: bool = False, device: torch.device | int | None = None) -> ModuleType | None:
    """The extension module for ``device``'s architecture (default: the current GPU), built if needed
    (once per process and architecture, whichever threads ask); None when it cannot be built."""
    arch = _arch(device)
    if arch not in _outcomes:
        with _lock:
            if arch not in _outcomes:  # another thread may have finished while this one waited
                _load(arch, verbose)
    return _extensions.get(arch)


def _load(arch: str | None, verbose: bool) -> None:
    """Build and import the extension for ``arch``; record the outcome in ``_outcomes`` (under ``_lock``)."""
    reason = _blocker()
    if reason is not None:
        _fail(arch, reason)
        return
    build_dir = _cache_root() / _build_key(arch)
    stamp = build_dir / STAMP
    sources = _source_hash()
    if _stamped_sources(stamp) != sources:  # not built, stale, or a corrupt stamp: cpp_extension (re)builds
        print(f"approxdrop: compiling CUDA kernels for {arch} into {build_dir} (once, about a minute)", file=sys.stderr)
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = _compile(arch, build_dir, verbose)
    except ImportError as exc:  # a stale binary the loader rejects, e.g. from another torch
        _fail(arch, f"built for another torch/CUDA, cannot load ({exc}); delete {build_dir}", str(build_dir))
        return
    except Exception as exc:  # noqa: BLE001 - any build failure means: fall back, with the reason
        _fail(arch, f"build failed: {_first_error(exc)}", str(build_dir))
        return
    write_json_atomic(stamp, {"sources": sources, "torch": torch.__version__, "cuda": torch.version.cuda})
    _extensions[arch] = module  # before the outcome: load()'s unlocked check reads the outcome first
    _outcomes[arch] = KernelStatus(built=True, arch=arch, reason=None, path=module.__file__)


def _compile(arch: str, build_dir: Path, verbose: bool) -> ModuleType:
    """``cpp_extension.load`` of the sources for ``arch`` only, as a module named after it (one per arch)."""
    from torch.utils import cpp_extension

    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch[3:-1] + "." + arch[-1]  # "sm_90" -> "9.0"
    try:
        return cpp_extension.load(
            name=f"{NAME}_{arch}",
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_include_paths=[str(SOURCE_DIR)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=str(build_dir),
            verbose=verbose,
        )
    finally:
        if saved is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved


def _first_error(exc: Exception) -> str:
    """The first compiler line reporting an error (else the last line), for the one-line warning."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return next((line for line in lines if "error:" in line.lower()), lines[-1])[:300]


_dispatchers: dict[str, Dispatcher] = {}  # per GPU name
_dispatch_lock = threading.Lock()


def _dispatch_file(gpu: str) -> Path:
    """The dispatch cache of a GPU name and this torch version."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{gpu}_torch{torch.__version__}")
    return cache_root() / "gpu-dispatch" / f"{name}.json"


def dispatcher(device: torch.device | int | str | None = None) -> Dispatcher:
    """The dispatcher of ``device``'s GPU (default: the current one): CUDA-event timing, outputs checked
    against the PyTorch implementation, no timing while a CUDA graph is captured, choices cached in
    ``_dispatch_file``. One per GPU name, shared by GPUs of that name."""
    gpu = torch.cuda.get_device_name(device)
    with _dispatch_lock:
        if gpu not in _dispatchers:
            tag = {"gpu": gpu, "torch": torch.__version__, "cuda": str(torch.version.cuda), "kernels": _source_hash()}
            _dispatchers[gpu] = Dispatcher(
                _dispatch_file(gpu),
                timer=cuda_event_timer,
                check=outputs_agree,
                can_measure=lambda: not torch.cuda.is_current_stream_capturing(),
                tag=tag,
            )
        return _dispatchers[gpu]
