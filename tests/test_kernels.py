"""CUDA kernels (approxdrop.ops.cuda): build status and dispatch everywhere; the kernels themselves on a GPU.

The GPU tests compare every kernel with the PyTorch implementation of its op (``op._init_fn``, the
path that runs without kernels); they force the kernels (``APPROXDROP_KERNELS=pattern``), and one
test runs the measuring dispatch (``auto``). Accuracy rule (flash-attention's): against a float64 reference, a
kernel's max error is at most twice that of the plain PyTorch computation in the same dtype (with a
floor of a few units in the last place, for outputs PyTorch gets exactly). On a machine with a GPU
the kernels must build: a failed build fails these tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import types
import warnings

import pytest
import torch

import approxdrop
from approxdrop import ops
from approxdrop.ops import cuda as kernels
from approxdrop.ops import cuda_build as build
from approxdrop.ops import dispatch
from approxdrop.ops.cuda_cublas import TORCH_BLOCK_KERNELS
from approxdrop.ops.row import row_linear_backward_torch, row_linear_torch
from approxdrop.ops.tile import tile_linear_backward_torch, tile_linear_torch
from approxdrop.patterns import RowPattern, TilePattern

OPS = torch.ops.approxdrop


def _one_group(name: str, op, torch_impl, wrap):
    """A row or tile op called on one group with one pair's integers (the kernels' own form), as ``wrap(op)``;
    ``_init_fn``: the same on its PyTorch implementation."""
    call = wrap(op)
    call._init_fn, call._qualname = wrap(torch_impl), f"approxdrop::{name}"
    return call


def _row_forward(op):
    def call(x, w, b, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
        """(y, the kept block it gathered, or an empty tensor)."""
        ys, blocks = op([x], w, b, in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
        return ys[0], blocks[0] if blocks else w.new_empty(0)

    return call


def _row_backward(op):
    def call(gy, x, w, block, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True):
        """(grad_x, empty without need_grad_x; grad_w; grad_b)."""
        ints = (in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
        grad_xs, grad_w, grad_b = op([gy], [x], w, [block] if block.dim() == 2 else [], *ints, need_grad_x)
        return grad_xs[0] if grad_xs else x.new_empty(0), grad_w, grad_b

    return call


def _tile_forward(op):
    def call(x, w, b, dp, offset, keep, tile):
        return op(x, w, b, dp, keep, tile, [offset])

    return call


def _tile_backward(op):
    def call(gy, x, w, dp, offset, keep, tile, need_grad_x=True):
        return tuple(op(gy, x, w, dp, keep, tile, [offset], need_grad_x))

    return call


row_linear = _one_group("row_linear", OPS.row_linear, row_linear_torch, _row_forward)
row_linear_backward = _one_group(
    "row_linear_backward", OPS.row_linear_backward, row_linear_backward_torch, _row_backward
)
tile_linear = _one_group("tile_linear", OPS.tile_linear, tile_linear_torch, _tile_forward)
tile_linear_backward = _one_group(
    "tile_linear_backward", OPS.tile_linear_backward, tile_linear_backward_torch, _tile_backward
)

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (index math and GEMM descriptions of the kernels: test_kernel_index.py, on CPU)",
)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Every op with a CUDA implementation (set_kernel_enabled("cuda", False) sends them all to PyTorch).
KERNEL_OPS = (ops.row_linear, ops.row_linear_backward, ops.tile_linear, ops.tile_linear_backward)


# --------------------------------------------------------------------------- status and dispatch (any machine)


def test_import_never_compiles():
    code = "import sys, approxdrop; print(any('approxdrop_kernels' in m or 'cpp_extension' in m for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_importing_approxdrop_registers_cuda_implementations():
    code = (
        "import torch, approxdrop; has = torch._C._dispatch_has_kernel_for_dispatch_key; "
        "print(all(has(f'approxdrop::{op}', 'CUDA') for op in "
        "('row_linear', 'row_linear_backward', 'tile_linear', 'tile_linear_backward')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stdout + out.stderr


def test_status_reasons(tmp_path, monkeypatch):
    """Distinct messages: not built yet, built for another torch/CUDA/GPU, stale sources, built."""
    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path))
    key = build._build_key("sm_90")
    assert build._unbuilt_reason("sm_90").startswith("not built yet")
    other = tmp_path / "kernels" / "torch0.0-cuda0.0-sm_80"
    other.mkdir(parents=True)
    (other / "approxdrop_build.json").write_text('{"sources": "x"}')
    reason = build._unbuilt_reason("sm_90")
    assert reason.startswith("built for another torch/CUDA/GPU") and other.name in reason and key in reason
    (tmp_path / "kernels" / key).mkdir()
    (tmp_path / "kernels" / key / "approxdrop_build.json").write_text('{"sources": "old"}')
    assert "older sources" in build._unbuilt_reason("sm_90")
    (tmp_path / "kernels" / key / "approxdrop_build.json").write_text(f'{{"sources": "{build._source_hash()}"}}')
    assert build._unbuilt_reason("sm_90").startswith("built in")


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    monkeypatch.setattr(build, "_outcomes", {})
    assert not kernels.enabled()
    assert kernels.status().reason == f"disabled by {kernels.ENV_SWITCH}=0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forced off: no warning
        assert kernels.load() is None
    assert not kernels.status().built


def test_fallback_warns_once_and_matches_pytorch(monkeypatch):
    """Without an extension the CUDA implementations run the PyTorch one, after a single warning."""
    monkeypatch.setattr(build, "_outcomes", {})
    monkeypatch.setattr(build, "_blocker", lambda: "nvcc not found (test)")
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 4, generator=gen), torch.randn(6, 8, generator=gen), torch.randn(6, generator=gen)
    with pytest.warns(RuntimeWarning, match="nvcc not found"):
        ys, blocks = kernels._row_linear_cuda([x], w, b, 2, 1, [1], 3, 1, [0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y_tile = kernels._tile_linear_cuda(torch.randn(5, 8, generator=gen), w, b, 2, 1, 4, [0])
    want_ys, want_blocks = OPS.row_linear([x], w, b, 2, 1, [1], 3, 1, [0])
    assert all(torch.equal(got, want) for got, want in zip([*ys, *blocks], [*want_ys, *want_blocks]))
    assert y_tile.shape == (5, 6)
    assert kernels.status() == kernels.KernelStatus(False, build._arch(), "nvcc not found (test)", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_status_without_gpu_says_why():
    st = kernels.status()
    assert not st.built and st.arch is None and st.reason


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """A GPU-free build: every architecture is buildable, ``_compile`` returns a stand-in module and records
    the architectures it was asked for (``fake_build.calls``); fresh bookkeeping, cache in tmp_path."""
    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_outcomes", {})
    monkeypatch.setattr(build, "_extensions", {})
    monkeypatch.setattr(build, "_blocker", lambda: None)
    monkeypatch.setattr(build, "_arch", lambda device=None: "sm_90")
    calls = []

    def compile_(arch, build_dir, verbose):
        calls.append(arch)
        return types.SimpleNamespace(arch=arch, __file__=str(build_dir / f"{kernels.NAME}_{arch}.so"))

    monkeypatch.setattr(build, "_compile", compile_)
    return types.SimpleNamespace(calls=calls, stamp=tmp_path / "kernels" / build._build_key("sm_90") / kernels.STAMP)


@pytest.mark.parametrize("content", ["", '{"sources": "ab', "[]", '"text"', b"\xff\xfe"], ids=repr)
def test_corrupt_stamp_means_rebuild(fake_build, capsys, content):
    """A truncated or foreign stamp: status() says it will rebuild, load() rebuilds; nothing raises."""
    fake_build.stamp.parent.mkdir(parents=True)
    (fake_build.stamp.write_bytes if isinstance(content, bytes) else fake_build.stamp.write_text)(content)
    reason = kernels.status().reason
    assert reason.startswith("the build stamp") and "rebuilt on first CUDA use" in reason, reason
    module = kernels.load()
    assert module.arch == "sm_90" and fake_build.calls == ["sm_90"]
    assert "compiling CUDA kernels for sm_90" in capsys.readouterr().err
    assert json.loads(fake_build.stamp.read_text())["sources"] == build._source_hash()
    assert kernels.status().built


def test_fresh_stamp_prints_no_compile_line(fake_build, capsys):
    fake_build.stamp.parent.mkdir(parents=True)
    fake_build.stamp.write_text(json.dumps({"sources": build._source_hash()}))
    assert kernels.status().reason.startswith("built in")
    assert kernels.load() is not None and capsys.readouterr().err == ""


def test_stamp_is_written_atomically(fake_build, monkeypatch):
    """A write that dies half-way leaves the previous stamp whole, and no temporary file behind."""
    fake_build.stamp.parent.mkdir(parents=True)
    old = json.dumps({"sources": "old"})
    fake_build.stamp.write_text(old)

    def dies_half_way(payload, f, **kwargs):
        f.write('{"sources": ')
        raise OSError("disk full (test)")

    monkeypatch.setattr(json, "dump", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        kernels.load()
    assert fake_build.stamp.read_text() == old
    assert [p.name for p in fake_build.stamp.parent.iterdir()] == [kernels.STAMP]


def test_concurrent_loads_build_once(fake_build, monkeypatch):
    built = fake_build.calls
    slow = build._compile

    def slow_compile(arch, build_dir, verbose):
        time.sleep(0.2)  # long enough for every thread to reach load() while the first one builds
        return slow(arch, build_dir, verbose)

    monkeypatch.setattr(build, "_compile", slow_compile)
    start, results = threading.Barrier(8), []

    def worker():
        start.wait()
        results.append(kernels.load())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == ["sm_90"]
    assert len(results) == 8 and all(r is results[0] for r in results) and results[0] is not None


def test_each_architecture_gets_its_own_build(fake_build, monkeypatch):
    """Two GPUs of different architectures: two builds; a third that fails falls back alone, with a warning."""
    archs = {0: "sm_80", 1: "sm_90", 2: "sm_120", 3: "sm_80"}
    monkeypatch.setattr(build, "_arch", lambda device=None: archs[0 if device is None else device])
    working = build._compile

    def compile_(arch, build_dir, verbose):
        if arch == "sm_120":
            raise RuntimeError("nvcc fatal   : Unsupported gpu architecture 'compute_120'")
        return working(arch, build_dir, verbose)

    monkeypatch.setattr(build, "_compile", compile_)
    assert kernels.load(device=0).arch == "sm_80"
    assert kernels.load(device=1).arch == "sm_90"
    assert kernels.load(device=3).arch == "sm_80"  # same architecture as device 0: no new build
    assert fake_build.calls == ["sm_80", "sm_90"]
    with pytest.warns(RuntimeWarning, match="Unsupported gpu architecture"):
        assert kernels.load(device=2) is None
    assert kernels.status(0).built and kernels.status(1).built and kernels.status(1).arch == "sm_90"
    assert not kernels.status(2).built and "Unsupported gpu architecture" in kernels.status(2).reason
    for arch in ("sm_80", "sm_90"):
        assert (build._cache_root() / build._build_key(arch) / kernels.STAMP).exists()


def test_ops_load_for_the_device_of_their_tensors(monkeypatch):
    """Each CUDA implementation asks load() for its tensors' device (so its architecture's build)."""
    asked = []
    monkeypatch.setattr(kernels, "_cuda_device", lambda *tensors: "cuda:7")
    monkeypatch.setattr(kernels, "load", lambda verbose=False, device=None: asked.append(device))
    x, w, gy = torch.randn(3, 8), torch.randn(6, 8), torch.randn(3, 6)
    kernels._row_linear_cuda([x], w, None, 1, 1, [0], 1, 1, [0])
    kernels._row_linear_backward_cuda([gy], [x], w, [], 1, 1, [0], 1, 1, [0])
    kernels._row_linear_cuda([x[:, ::2], x[:, 1::2]], w, None, 2, 1, [0, 1], 1, 1, [0, 0])
    kernels._tile_linear_cuda(x, w, None, 2, 1, 4, [0])
    kernels._tile_linear_backward_cuda(gy, x, w, 2, 1, 4, [0])
    assert asked == ["cuda:7"] * 5


def _strides(out):
    return [t.stride() for t in (out if isinstance(out, tuple) else (out,))]


def _non_contiguous_cases(device):
    """(op, args) of each op with a permuted x (dense, non-contiguous) and a transposed weight."""
    gen = torch.Generator().manual_seed(8)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)

    w = rand(9, 10).t()  # [10, 9]
    ints = (3, 1, 2, 2, 0, 1)  # k_in = 6 of 9, k_out = 5 of 10
    x, xt = rand(6, 5).t(), rand(9, 5).t()  # [5, 6], [5, 9]
    block = row_linear._init_fn(x, w, None, *ints)[1]  # [5, 6]
    return [
        (row_linear, (x, w, None, *ints)),
        (row_linear_backward, (rand(5, 5), x, w, block, *ints)),
        (tile_linear, (xt, w, None, 3, 1, 2, 2)),
        (tile_linear_backward, (rand(5, 10), xt, w, 3, 1, 2, 2)),
    ]


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_fake_outputs_have_the_real_outputs_strides(device, monkeypatch):
    """Every real output is contiguous (the kernels allocate them so); the fake (meta) implementations must
    say so too, also for a non-contiguous x or weight, or torch.compile plans for the wrong layout."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setenv(kernels.ENV_SWITCH, "pattern")  # on a GPU: the kernels' outputs
    for op, args in _non_contiguous_cases(device):
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        name = op._qualname
        assert all(t.is_contiguous() for t in (real if isinstance(real, tuple) else (real,))), name
        assert _strides(fake) == _strides(real), f"{name}: fake strides {_strides(fake)}, real {_strides(real)}"


def test_tile_period_must_fit_int32(monkeypatch):
    """dp * tile past 2**31 - 1 would overflow the kernels' 32-bit indices: a ValueError naming tile."""
    kernels._check_tile_period(1, 2**31 - 1)  # the largest period that fits
    with pytest.raises(ValueError, match=r"tile=1073741824 with dp=2 \(dp \* tile = 2147483648\)"):
        kernels._check_tile_period(2, 2**30)
    monkeypatch.setattr(kernels, "load", lambda verbose=False, device=None: object())  # an extension never called
    x, w, gy = torch.randn(3, 8), torch.randn(6, 8), torch.randn(3, 6)
    with pytest.raises(ValueError, match="dp \\* tile"):
        kernels._tile_linear_cuda(x, w, None, 3, 1, 2**30, [0])
    with pytest.raises(ValueError, match="dp \\* tile"):
        kernels._tile_linear_backward_cuda(gy, x, w, 3, 1, 2**30, [0])


# --------------------------------------------------------------------------- the kernels (GPU)


@pytest.fixture(scope="module")
def ext():
    """The built extension, with the kernels forced (APPROXDROP_KERNELS=pattern) so the ops run them."""
    if os.environ.get(kernels.ENV_SWITCH, "").strip() in ("0", "torch"):
        pytest.skip(f"kernels switched off by {kernels.ENV_SWITCH}={os.environ[kernels.ENV_SWITCH]}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(kernels.ENV_SWITCH, "pattern")
        module = kernels.load()
        if module is None:
            pytest.fail(f"a GPU is present but the kernels did not build: {kernels.status().reason}")
        yield module


def _random_row_case(rng: random.Random):
    def pattern():
        dp = rng.choice([1, 2, 3, 4, 5, 7, 10])
        return RowPattern(dp, rng.randrange(dp), rng.randint(1, dp))

    rows, n_out, n_in = rng.choice([1, 37, 129, 255]), rng.choice([33, 67, 131, 257]), rng.choice([31, 97, 201])
    return pattern(), pattern(), rows, n_out, n_in


def _random_tile_case(rng: random.Random):
    dp = rng.choice([1, 2, 3, 4, 7])
    p = TilePattern(dp, rng.randrange(dp), rng.choice([1, 8, 16, 32, 48]), rng.randint(1, dp))
    return p, rng.choice([1, 37, 129, 255]), rng.choice([33, 67, 131, 257]), rng.choice([31, 97, 201])


def _row_args(gen, in_p, out_p, rows, n_out, n_in, dtype, device="cuda"):
    """x [rows, k_in], W [n_out, n_in], b [n_out], grad_y [rows, k_out], pattern ints."""
    k_in, k_out = in_p.kept_count(n_in), out_p.kept_count(n_out)
    t = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((rows, k_in), (n_out, n_in), (n_out,))]
    gy = torch.randn(rows, k_out, generator=gen, dtype=torch.float64)
    x, w, b, gy = (v.to(device, dtype) for v in (*t, gy))
    return x, w, b, gy, (in_p.dp, in_p.offset, in_p.keep, out_p.dp, out_p.offset, out_p.keep)


def _tile_args(gen, p, rows, n_out, n_in, dtype, device="cuda"):
    shapes = ((rows, n_in), (n_out, n_in), (n_out,), (rows, n_out))
    x, w, b, gy = (torch.randn(*s, generator=gen, dtype=torch.float64).to(device, dtype) for s in shapes)
    return x, w, b, gy, (p.dp, p.offset, p.keep, p.tile)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _assert_within_twice_pytorch(op, args, what):
    """op on CUDA (the kernel) vs op._init_fn (PyTorch) in the same dtype, both against float64."""
    got = _as_tuple(op(*args))
    plain = _as_tuple(op._init_fn(*args))
    ref = _as_tuple(op._init_fn(*(a.double() if isinstance(a, torch.Tensor) else a for a in args)))
    for i, (g, p, r) in enumerate(zip(got, plain, ref)):
        assert g.dtype == p.dtype and g.shape == p.shape, (what, i, g.dtype, g.shape, p.shape)
        err, plain_err = (g.double() - r).abs().max().item(), (p.double() - r).abs().max().item()
        floor = 4 * torch.finfo(g.dtype).eps * max(r.abs().max().item(), 1.0)
        assert err <= max(2 * plain_err, floor), f"{what} output {i}: error {err:.3g} vs PyTorch {plain_err:.3g}"


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_kernels_match_pytorch(ext, dtype):
    rng, gen = random.Random(10), torch.Generator().manual_seed(10)
    for _ in range(12):
        in_p, out_p, rows, n_out, n_in = _random_row_case(rng)
        x, w, b, gy, ints = _row_args(gen, in_p, out_p, rows, n_out, n_in, dtype)
        what = f"{dtype} {in_p} {out_p} rows={rows} W={n_out}x{n_in}"
        _assert_within_twice_pytorch(row_linear, (x, w, b, *ints), f"row_linear {what}")
        _assert_within_twice_pytorch(row_linear, (x, w, None, *ints), f"row_linear no bias {what}")
        block = row_linear._init_fn(x, w, None, *ints)[1]
        _assert_within_twice_pytorch(row_linear_backward, (gy, x, w, block, *ints), f"row_linear_backward {what}")


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tile_kernels_match_pytorch(ext, dtype):
    rng, gen = random.Random(11), torch.Generator().manual_seed(11)
    for _ in range(12):
        p, rows, n_out, n_in = _random_tile_case(rng)
        x, w, b, gy, ints = _tile_args(gen, p, rows, n_out, n_in, dtype)
        what = f"{dtype} {p} rows={rows} W={n_out}x{n_in}"
        _assert_within_twice_pytorch(tile_linear, (x, w, b, *ints), f"tile_linear {what}")
        _assert_within_twice_pytorch(tile_linear, (x, w, None, *ints), f"tile_linear no bias {what}")
        _assert_within_twice_pytorch(tile_linear_backward, (gy, x, w, *ints), f"tile_linear_backward {what}")


EDGE_ROW = [
    (RowPattern(1, 0, 1), RowPattern(1, 0, 1), 7, 9),  # dp = 1 on both sides
    (RowPattern(5, 0, 5), RowPattern(4, 3, 1), 13, 11),  # keep = dp; offset at the end
    (RowPattern(6, 5, 2), RowPattern(7, 6, 3), 20, 19),  # offsets at the end, runs that wrap
    (RowPattern(9, 8, 1), RowPattern(10, 2, 1), 5, 8),  # n < dp: no kept input at all
]
EDGE_TILE = [
    (TilePattern(1, 0, 32, 1), 20, 30),  # one tile
    (TilePattern(3, 2, 8, 3), 17, 25),  # keep = dp
    (TilePattern(4, 3, 5, 1), 21, 9),  # offset at the end
    (TilePattern(7, 6, 16, 2), 20, 33),  # fewer tile rows than dp
    (TilePattern(2, 1, 300, 1), 70, 80),  # tile larger than the weight
]


@requires_cuda
@pytest.mark.parametrize("case", range(len(EDGE_ROW)))
def test_row_edge_patterns(ext, case):
    in_p, out_p, n_out, n_in = EDGE_ROW[case]
    gen = torch.Generator().manual_seed(case)
    x, w, b, gy, ints = _row_args(gen, in_p, out_p, 6, n_out, n_in, torch.float64)
    torch.testing.assert_close(row_linear(x, w, b, *ints), row_linear._init_fn(x, w, b, *ints))
    block = row_linear._init_fn(x, w, b, *ints)[1]
    want_grads = row_linear_backward._init_fn(gy, x, w, block, *ints)
    for got, want in zip(row_linear_backward(gy, x, w, block, *ints), want_grads):
        torch.testing.assert_close(got, want)


@requires_cuda
@pytest.mark.parametrize("case", range(len(EDGE_TILE)))
def test_tile_edge_patterns(ext, case):
    p, n_out, n_in = EDGE_TILE[case]
    gen = torch.Generator().manual_seed(case)
    x, w, b, gy, ints = _tile_args(gen, p, 6, n_out, n_in, torch.float64)
    torch.testing.assert_close(tile_linear(x, w, b, *ints), tile_linear._init_fn(x, w, b, *ints))
    for got, want in zip(tile_linear_backward(gy, x, w, *ints), tile_linear_backward._init_fn(gy, x, w, *ints)):
        torch.testing.assert_close(got, want)


@requires_cuda
def test_gradcheck_float64(ext):
    gen = torch.Generator().manual_seed(3)
    x, w, b, _, ints = _row_args(gen, RowPattern(3, 2, 2), RowPattern(2, 1, 1), 5, 11, 13, torch.float64)
    args = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: row_linear(x, w, b, *ints)[0], args)
    x, w, b, _, ints = _tile_args(gen, TilePattern(3, 1, 4, 2), 5, 11, 13, torch.float64)
    args = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: tile_linear(x, w, b, *ints), args)


@requires_cuda
def test_opcheck(ext):
    gen = torch.Generator().manual_seed(4)
    x, w, b, gy, ints = _row_args(gen, RowPattern(3, 1, 2), RowPattern(4, 3, 1), 9, 21, 17, torch.float32)
    in_dp, in_offset, in_keep, out_dp, out_offset, out_keep = ints
    op_ints = (in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
    torch.library.opcheck(OPS.row_linear, ([x.requires_grad_()], w.requires_grad_(), b.requires_grad_(), *op_ints))
    blocks = OPS.row_linear([x.detach()], w.detach(), None, *op_ints)[1]
    torch.library.opcheck(OPS.row_linear_backward, ([gy], [x.detach()], w.detach(), blocks, *op_ints))
    x, w, b, gy, (dp, offset, keep, tile) = _tile_args(gen, TilePattern(3, 2, 4, 1), 9, 21, 17, torch.float32)
    args = (dp, keep, tile, [offset])
    torch.library.opcheck(OPS.tile_linear, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), *args))
    torch.library.opcheck(OPS.tile_linear_backward, (gy, x.detach(), w.detach(), *args))


@requires_cuda
def test_same_inputs_same_results(ext):
    """No atomics: two runs agree bit for bit, for every dtype."""
    for dtype in DTYPES:
        gen = torch.Generator().manual_seed(5)
        x, w, b, gy, ints = _row_args(gen, RowPattern(3, 1, 2), RowPattern(2, 0, 1), 77, 131, 97, dtype)
        (y, block), (y2, block2) = row_linear(x, w, b, *ints), row_linear(x, w, b, *ints)
        assert torch.equal(y, y2) and torch.equal(block, block2)
        for a, c in zip(row_linear_backward(gy, x, w, block, *ints), row_linear_backward(gy, x, w, block, *ints)):
            assert torch.equal(a, c)
        x, w, b, gy, ints = _tile_args(gen, TilePattern(3, 1, 16, 2), 77, 131, 97, dtype)
        assert torch.equal(tile_linear(x, w, b, *ints), tile_linear(x, w, b, *ints))
        for a, c in zip(tile_linear_backward(gy, x, w, *ints), tile_linear_backward(gy, x, w, *ints)):
            assert torch.equal(a, c)


@requires_cuda
def test_same_seed_same_training_step_as_pytorch_path(ext):
    """ApproxDropoutMLP on CUDA: same seed, same patterns; kernels and PyTorch path give the same step."""
    for method in ("row", "tile"):
        grads = []
        for use_kernels in (True, False):
            torch.manual_seed(0)
            model = approxdrop.ApproxDropoutMLP([37, 65, 33, 10], 0.5, method=method, tile=8).cuda().double()
            model.generator = torch.Generator().manual_seed(1)
            x = torch.randn(19, 37, device="cuda", dtype=torch.float64)
            with contextlib.ExitStack() as stack:
                for op in KERNEL_OPS:
                    stack.enter_context(op.set_kernel_enabled("cuda", use_kernels))
                model(x).square().sum().backward()
            grads.append([p.grad for p in model.parameters()])
        for a, c in zip(*grads):
            torch.testing.assert_close(a, c)


@requires_cuda
def test_non_contiguous_and_batched_inputs(ext):
    gen = torch.Generator().manual_seed(6)
    in_p, out_p = RowPattern(3, 2, 1), RowPattern(2, 1, 1)
    big = torch.randn(40, 2 * 31, generator=gen, dtype=torch.float64).cuda()
    w = big[:, ::2]  # [40, 31], non-contiguous
    x = torch.randn(in_p.kept_count(31), 2, 3, 4, generator=gen, dtype=torch.float64).cuda().permute(1, 2, 3, 0)
    ints = (in_p.dp, in_p.offset, in_p.keep, out_p.dp, out_p.offset, out_p.keep)
    torch.testing.assert_close(row_linear(x, w, None, *ints), row_linear._init_fn(x, w, None, *ints))
    xt = torch.randn(31, 2, 5, generator=gen, dtype=torch.float64).cuda().permute(1, 2, 0)  # [2, 5, 31]
    torch.testing.assert_close(tile_linear(xt, w, None, 2, 1, 1, 8), tile_linear._init_fn(xt, w, None, 2, 1, 1, 8))
    gy = torch.randn(2, 5, 40, generator=gen, dtype=torch.float64).cuda()
    ints = (2, 1, 1, 8)
    for got, want in zip(tile_linear_backward(gy, xt, w, *ints), tile_linear_backward._init_fn(gy, xt, w, *ints)):
        torch.testing.assert_close(got, want)


@requires_cuda
def test_errors(ext):
    """The CUDA path raises the PyTorch path's ValueErrors, before any kernel runs."""
    w = torch.randn(6, 8, device="cuda")
    with pytest.raises(ValueError, match="every tensor must be on one device, got x on cpu, weight on cuda"):
        tile_linear(torch.randn(3, 8), w, None, 2, 0, 1, 4)
    with pytest.raises(ValueError, match="same floating dtype, got x torch.float16, weight torch.float32"):
        tile_linear(torch.randn(3, 8, device="cuda").half(), w, None, 2, 0, 1, 4)
    with pytest.raises(ValueError, match="same floating dtype"):
        tile_linear(torch.ones(3, 8, device="cuda", dtype=torch.int32), w.int(), None, 2, 0, 1, 4)
    with pytest.raises(ValueError, match="last dimension 8"):
        tile_linear(torch.randn(3, 7, device="cuda"), w, None, 2, 0, 1, 4)
    with pytest.raises(ValueError, match="last dimension 4"):
        row_linear(torch.randn(3, 5, device="cuda"), w, None, 2, 0, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="bias must have shape"):
        row_linear(torch.randn(3, 8, device="cuda"), w, torch.randn(5, device="cuda"), 1, 0, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="offset"):
        row_linear(torch.randn(3, 8, device="cuda"), w, None, 2, 2, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="grad_y must have shape"):
        gy, x = torch.randn(3, 5, device="cuda"), torch.randn(3, 8, device="cuda")
        row_linear_backward(gy, x, w, torch.empty(0, device="cuda"), 1, 0, 1, 1, 0, 1)


@requires_cuda
def test_backward_kernels_skip_grad_x_when_not_needed(ext):
    """need_grad_x=False: grad_x empty, the other gradients those of the full backward (bit for bit: the
    kernels that remain are the same)."""
    gen = torch.Generator().manual_seed(9)
    x, w, _, gy, ints = _row_args(gen, RowPattern(3, 1, 2), RowPattern(2, 1, 1), 33, 67, 97, torch.float32)
    block = row_linear(x, w, None, *ints)[1]
    full, skipped = row_linear_backward(gy, x, w, block, *ints), row_linear_backward(gy, x, w, block, *ints, False)
    assert skipped[0].numel() == 0 and torch.equal(skipped[1], full[1]) and torch.equal(skipped[2], full[2])
    x, w, _, gy, ints = _tile_args(gen, TilePattern(3, 1, 16, 2), 33, 67, 97, torch.float32)
    full, skipped = tile_linear_backward(gy, x, w, *ints), tile_linear_backward(gy, x, w, *ints, False)
    assert skipped[0].numel() == 0 and torch.equal(skipped[1], full[1]) and torch.equal(skipped[2], full[2])


@requires_cuda
def test_auto_dispatch_measures_caches_and_matches_pytorch(ext, tmp_path, monkeypatch, capsys):
    """APPROXDROP_KERNELS=auto on the GPU: first use measures every path (CUDA events), the results match
    the PyTorch implementation, the choices are listed by status() and cached on disk, and a fresh
    dispatcher reads them back instead of measuring."""
    monkeypatch.setenv(kernels.ENV_SWITCH, "auto")
    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_dispatchers", {})
    gen = torch.Generator().manual_seed(10)
    for dtype in (torch.float32, torch.bfloat16):
        x, w, b, gy, ints = _row_args(gen, RowPattern(2, 1, 1), RowPattern(10, 3, 7), 128, 512, 256, dtype)
        _assert_within_twice_pytorch(row_linear, (x, w, b, *ints), f"auto row_linear {dtype}")
        block = row_linear._init_fn(x, w, None, *ints)[1]
        args = (gy, x, w, block, *ints)
        _assert_within_twice_pytorch(row_linear_backward, args, f"auto row_linear_backward {dtype}")
        x, w, b, gy, ints = _tile_args(gen, TilePattern(2, 0, 32, 1), 128, 512, 256, dtype)
        _assert_within_twice_pytorch(tile_linear, (x, w, b, *ints), f"auto tile_linear {dtype}")
        _assert_within_twice_pytorch(tile_linear_backward, (gy, x, w, *ints), f"auto tile_linear_backward {dtype}")
    choices = kernels.status().choices
    assert len(choices) == 8 and all(c.how == "measured" for c in choices)
    for c in choices:  # every path timed (the row ops' cuBLAS path too); none slower than the margin allows is picked
        times = dict(c.times_ms)
        assert times["torch"] is not None and times["pattern"] is not None, c
        assert ("cublas" in times) == c.key.startswith("row_linear"), c
        if c.path != "torch":
            assert times[c.path] < (1 - 0.05) * times["torch"], c
    assert capsys.readouterr().err.count("approxdrop: ") >= 8
    cache = build._dispatch_file(torch.cuda.get_device_name())
    assert set(json.loads(cache.read_text())["choices"]) == {c.key for c in choices}
    monkeypatch.setattr(build, "_dispatchers", {})
    x, w, b, _, ints = _row_args(gen, RowPattern(2, 1, 1), RowPattern(10, 3, 7), 128, 512, 256, torch.float32)
    row_linear(x, w, b, *ints)
    assert [c.how for c in kernels.status().choices] == ["cached"]
    assert dispatch.kernel_mode() == "auto"


@requires_cuda
def test_status_after_build(ext):
    st = kernels.status()
    major, minor = torch.cuda.get_device_capability()
    assert st.built and st.reason is None and st.arch == f"sm_{major}{minor}" and os.path.exists(st.path)


# --------------------------------------------------------------------------- the cuBLAS path (GPU)


@pytest.fixture
def cublas_mode(ext, monkeypatch):
    """The built extension, with the cuBLAS path forced (APPROXDROP_KERNELS=cublas)."""
    monkeypatch.setenv(kernels.ENV_SWITCH, "cublas")
    return ext


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cublas_path_row_ops_match_pytorch(cublas_mode, dtype):
    rng, gen = random.Random(12), torch.Generator().manual_seed(12)
    for _ in range(12):
        in_p, out_p, rows, n_out, n_in = _random_row_case(rng)
        x, w, b, gy, ints = _row_args(gen, in_p, out_p, rows, n_out, n_in, dtype)
        what = f"cublas {dtype} {in_p} {out_p} rows={rows} W={n_out}x{n_in}"
        _assert_within_twice_pytorch(row_linear, (x, w, b, *ints), f"row_linear {what}")
        _, block = row_linear._init_fn(x, w, b, *ints)
        _assert_within_twice_pytorch(row_linear_backward, (gy, x, w, block, *ints), f"row_linear_backward {what}")
    assert all(c.path == "cublas" for c in kernels.status().choices)


@requires_cuda
@pytest.mark.parametrize("mode", ["cublas", "pattern"])
def test_grouped_row_op_on_cuda_matches_pytorch(ext, monkeypatch, mode):
    monkeypatch.setenv(kernels.ENV_SWITCH, mode)
    gen = torch.Generator().manual_seed(13)
    for in_dp, in_keep, out_dp, out_keep in [(2, 1, 3, 1), (3, 2, 4, 3), (4, 4, 2, 1)]:
        offsets = [torch.randint(0, d, (4,), generator=gen).tolist() for d in (in_dp, out_dp)]
        args = (in_dp, in_keep, offsets[0], out_dp, out_keep, offsets[1])
        x = torch.randn(9, 41, generator=gen, dtype=torch.float64).cuda()
        w, b = (
            torch.randn(37, 41, generator=gen, dtype=torch.float64).cuda(),
            torch.randn(37, dtype=torch.float64).cuda(),
        )
        xs = [x[:, RowPattern(in_dp, o, in_keep).keep_mask(41, "cuda")].contiguous() for o in offsets[0]]
        ys, blocks = OPS.row_linear(xs, w, b, *args)
        torch.testing.assert_close((ys, blocks), row_linear_torch(xs, w, b, *args))
        grads = [torch.randn_like(y) for y in ys]
        torch.testing.assert_close(
            OPS.row_linear_backward(grads, xs, w, blocks, *args),
            row_linear_backward_torch(grads, xs, w, blocks, *args),
        )


@requires_cuda
@pytest.mark.parametrize("dtype", (*DTYPES, torch.float64), ids=str)
def test_small_kernels_match_their_pytorch_definitions(ext, dtype):
    """The scatter is a copy and the scatter-add one rounded addition: bit for bit. The column sum (with
    row splits and a workspace for many rows) within fp32 summation error."""
    from approxdrop.ops.cuda import block_kernels

    small = block_kernels(ext, torch.cuda.current_stream().cuda_stream)
    gen = torch.Generator().manual_seed(14)
    for out, inp, n_out, n_in in [
        (RowPattern(3, 2, 2), RowPattern(4, 1, 1), 131, 257),
        (RowPattern(1, 0, 1), RowPattern(2, 1, 1), 70000, 3),
    ]:
        block = torch.randn(out.kept_count(n_out), inp.kept_count(n_in), generator=gen).to("cuda", dtype)
        full = small.scatter(block, (n_out, n_in), out, inp)
        assert torch.equal(full, TORCH_BLOCK_KERNELS.scatter(block, (n_out, n_in), out, inp))
        want = full.clone()
        TORCH_BLOCK_KERNELS.scatter_add(want, block, out, inp)
        small.scatter_add(full, block, out, inp)
        assert torch.equal(full, want)
    for rows, cols in [(1, 5), (4096, 1024), (33, 70001)]:
        g = torch.randn(rows, cols, generator=gen).to("cuda", dtype)
        p = RowPattern(3, 1, 1)
        got = small.column_sum(g, 3 * cols, p)
        want = TORCH_BLOCK_KERNELS.column_sum(g.double(), 3 * cols, p)
        tol = 1e-9 if dtype == torch.float64 else 4 * torch.finfo(dtype).eps * rows**0.5
        torch.testing.assert_close(got.double(), want, atol=tol * g.abs().max().item(), rtol=tol)
