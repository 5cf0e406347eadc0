"""CUDA kernels for the ``approxdrop::`` ops: just-in-time build, status, dispatch.

Importing this module compiles nothing and touches no GPU: it only registers CUDA implementations of
the four ops. The first call of an op on CUDA tensors runs :func:`load`, which builds ``kernels/``
with ``torch.utils.cpp_extension.load`` for the current GPU's architecture into a cache directory
(``kernels/`` under the approxdrop cache directory, ``_env.cache_root``; one subdirectory per torch,
CUDA and architecture), printing one line while it compiles. When the kernels cannot be built (no nvcc, a
CPU-only torch, a compile error), one warning gives the reason and the pure-PyTorch implementations
in ``approxdrop.ops`` run instead. ``APPROXDROP_KERNELS=0`` forces the PyTorch path, silently.
:func:`status` reports what happened, or what would.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .._env import cache_root
from ..patterns import RowPattern, TilePattern, periodic_count
from .common import check_linear_args, check_weight
from .row import row_linear, row_linear_backward, row_linear_backward_torch, row_linear_torch
from .tile import tile_linear, tile_linear_backward, tile_linear_backward_torch, tile_linear_torch

ENV_SWITCH = "APPROXDROP_KERNELS"  # "0" forces the PyTorch path
SOURCE_DIR = Path(__file__).resolve().parents[2] / "kernels"
SOURCES = ("binding.cpp", "pattern_gemm.cu", "column_sum.cu")
NAME = "approxdrop_kernels"


@dataclass(frozen=True)
class KernelStatus:
    """built: the extension is loaded in this process; arch: e.g. ``"sm_90"`` (None without a GPU);
    reason: why it is not built (None when built); path: the build directory or extension file."""

    built: bool
    arch: str | None
    reason: str | None
    path: str | None


_extension = None
_outcome: KernelStatus | None = None  # set by load(): success or the reason of failure


def enabled() -> bool:
    """False when ``APPROXDROP_KERNELS=0`` (or ``false`` / ``off`` / ``no``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def _arch() -> str | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
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


def _blocker() -> str | None:
    """Why the kernels cannot be built here, or None."""
    if not enabled():
        return f"disabled by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    if torch.version.cuda is None:
        return f"this torch build has no CUDA (torch {torch.__version__})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    missing = [s for s in SOURCES if not (SOURCE_DIR / s).exists()]
    if missing:
        return f"kernel sources {missing} not found in {SOURCE_DIR} (install from a checkout: pip install -e .)"
    return None


def _unbuilt_reason(arch: str) -> str:
    """Reason for status() before load(): not built yet, built for another torch/CUDA, or stale."""
    root, key = _cache_root(), _build_key(arch)
    stamp = root / key / "approxdrop_build.json"
    if stamp.exists():
        if json.loads(stamp.read_text()).get("sources") == _source_hash():
            return f"built in {root / key}, loads on first CUDA use (or call approxdrop.kernels.load())"
        return f"the build in {root / key} is for older sources: it is rebuilt on first CUDA use"
    others = sorted(p.parent.name for p in root.glob("*/approxdrop_build.json") if p.parent.name != key)
    if others:
        return f"built for another torch/CUDA/GPU ({', '.join(others)}), not for {key}: it is rebuilt on first CUDA use"
    return "not built yet: builds on first CUDA use of an approxdrop op (or call approxdrop.kernels.load())"


def status() -> KernelStatus:
    """Whether the kernels are built and loaded, for which architecture, and why not. Never builds."""
    if _outcome is not None:
        return _outcome
    arch = _arch()
    reason = _blocker() or _unbuilt_reason(arch)
    return KernelStatus(built=False, arch=arch, reason=reason, path=None)


def _fail(arch: str | None, reason: str, path: str | None = None) -> None:
    global _outcome
    _outcome = KernelStatus(built=False, arch=arch, reason=reason, path=path)
    if enabled():
        warnings.warn(
            f"approxdrop: CUDA kernels unavailable ({reason}); using the PyTorch implementation",
            RuntimeWarning,
            stacklevel=3,
        )


def load(verbose: bool = False):
    """The extension module, built if needed (once per process); None when it cannot be built."""
    global _extension, _outcome
    if _outcome is not None:
        return _extension
    arch, reason = _arch(), _blocker()
    if reason is not None:
        _fail(arch, reason)
        return None
    build_dir = _cache_root() / _build_key(arch)
    stamp = build_dir / "approxdrop_build.json"
    sources = _source_hash()
    fresh = stamp.exists() and json.loads(stamp.read_text()).get("sources") == sources
    if not fresh:
        print(f"approxdrop: compiling CUDA kernels for {arch} into {build_dir} (once, about a minute)", file=sys.stderr)
    build_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils import cpp_extension

    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch[3:-1] + "." + arch[-1]  # "sm_90" -> "9.0"
    try:
        module = cpp_extension.load(
            name=NAME,
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_include_paths=[str(SOURCE_DIR)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=str(build_dir),
            verbose=verbose,
        )
    except ImportError as exc:  # a stale binary the loader rejects, e.g. from another torch
        _fail(arch, f"built for another torch/CUDA, cannot load ({exc}); delete {build_dir}", str(build_dir))
        return None
    except Exception as exc:  # noqa: BLE001 - any build failure means: fall back, with the reason
        _fail(arch, f"build failed: {_first_error(exc)}", str(build_dir))
        return None
    finally:
        if saved is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    stamp.write_text(json.dumps({"sources": sources, "torch": torch.__version__, "cuda": torch.version.cuda}))
    _extension = module
    _outcome = KernelStatus(built=True, arch=arch, reason=None, path=module.__file__)
    return module


def _first_error(exc: Exception) -> str:
    """The first compiler line reporting an error (else the last line), for the one-line warning."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return next((line for line in lines if "error:" in line.lower()), lines[-1])[:300]


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _cuda_device(*tensors) -> torch.device:
    return next(t.device for t in tensors if t is not None and t.device.type == "cuda")


# --------------------------------------------------------------------------- CUDA implementations
# Each validates the pattern and shapes like the PyTorch path (same ValueErrors), then calls the
# extension on the tensors' device and current stream, or the PyTorch implementation without it.


def _row_linear_cuda(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    ext = load()
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    if ext is None:
        return row_linear_torch(x, weight, bias, *ints)
    _check_row_ints(ints)
    check_weight("row_linear", weight)
    check_linear_args("row_linear", x, weight, bias, periodic_count(weight.shape[1], in_dp, in_offset, in_keep))
    device = _cuda_device(x, weight, bias)
    with torch.cuda.device(device):
        return ext.row_linear(x, weight, bias, *ints, _stream(device))


def _row_linear_backward_cuda(
    grad_y, x, weight, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True
):
    ext = load()
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    if ext is None:
        return row_linear_backward_torch(grad_y, x, weight, *ints, need_grad_x)
    _check_row_ints(ints)
    device = _cuda_device(grad_y, x, weight)
    with torch.cuda.device(device):
        grads = ext.row_linear_backward(grad_y, x, weight, *ints, _stream(device))
    return _drop_grad_x(grads, x, need_grad_x)


def _drop_grad_x(grads, x, need_grad_x: bool):
    """The op's contract: grad_x empty when not needed (the kernel still computes it; to skip later)."""
    grad_x, grad_w, grad_b = grads
    return (grad_x if need_grad_x else x.new_empty(0)), grad_w, grad_b


def _tile_linear_cuda(x, weight, bias, dp, offset, keep, tile):
    ext = load()
    if ext is None:
        return tile_linear_torch(x, weight, bias, dp, offset, keep, tile)
    TilePattern(dp, offset, tile, keep)  # raises ValueError on bad integers
    check_weight("tile_linear", weight)
    check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    device = _cuda_device(x, weight, bias)
    with torch.cuda.device(device):
        return ext.tile_linear(x, weight, bias, dp, offset, keep, tile, _stream(device))


def _tile_linear_backward_cuda(grad_y, x, weight, dp, offset, keep, tile, need_grad_x=True):
    ext = load()
    if ext is None:
        return tile_linear_backward_torch(grad_y, x, weight, dp, offset, keep, tile, need_grad_x)
    TilePattern(dp, offset, tile, keep)  # raises ValueError on bad integers
    device = _cuda_device(grad_y, x, weight)
    with torch.cuda.device(device):
        grads = ext.tile_linear_backward(grad_y, x, weight, dp, offset, keep, tile, _stream(device))
    return _drop_grad_x(grads, x, need_grad_x)


def _check_row_ints(ints) -> None:
    """ValueError on bad (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep), as on CPU."""
    RowPattern(*ints[:3])
    RowPattern(*ints[3:])


row_linear.register_kernel("cuda")(_row_linear_cuda)
row_linear_backward.register_kernel("cuda")(_row_linear_backward_cuda)
tile_linear.register_kernel("cuda")(_tile_linear_cuda)
tile_linear_backward.register_kernel("cuda")(_tile_linear_backward_cuda)
