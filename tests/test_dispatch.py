"""Dispatch by measurement (approxdrop.ops.dispatch, and its use in approxdrop.ops.cuda), on the CPU.

The Dispatcher takes its timer, output check and capture test as arguments, so these tests drive it
with fakes: candidates that count their calls, a timer that returns set times. The CUDA
implementations of the ops are driven with a fake extension (a stand-in for the built kernels) and
CPU tensors. What only a GPU shows (CUDA-event timings, the real kernels) is in test_kernels.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from approxdrop.ops import cuda as kernels
from approxdrop.ops import cuda_build as build
from approxdrop.ops import dispatch
from approxdrop.ops.candidates import Candidate
from approxdrop.ops.cuda_cublas import TORCH_BLOCK_KERNELS
from approxdrop.ops.dispatch import ENV_SWITCH, Dispatcher, kernel_mode, outputs_agree
from approxdrop.patterns import RowPattern

TAG = {"gpu": "Fake GPU", "torch": "0.0", "kernels": "abc"}


OPS = torch.ops.approxdrop


def _op_ints(in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    """The row op's integers for one group, from one pair's (the kernel's) integers."""
    return in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset]


def _y_ref(x, w, b, *ints):
    """What the pattern kernel returns for one pair: the registered row op's y."""
    return OPS.row_linear([x], w, b, *_op_ints(*ints))[0][0]


def _block(x, w, ints):
    """The kept blocks the row op returns on one group, which backward reads."""
    return OPS.row_linear([x], w, None, *_op_ints(*ints))[1]


def _grads_ref(gy, x, w, *ints_need):
    """The registered backward op's gradients on one group (grad_x empty without need_grad_x)."""
    *ints, need_grad_x = ints_need if len(ints_need) == 7 else (*ints_need, True)
    grad_xs, grad_w, grad_b = OPS.row_linear_backward([gy], [x], w, _block(x, w, ints), *_op_ints(*ints), need_grad_x)
    return (grad_xs[0] if need_grad_x else x.new_empty(0)), grad_w, grad_b


def _row_cuda(x, w, b, *ints):
    """The row op's CUDA implementation on one group: (y, blocks)."""
    ys, blocks = kernels._row_linear_cuda([x], w, b, *_op_ints(*ints))
    return ys[0], blocks


def _row_backward_cuda(gy, x, w, blocks, *ints, need_grad_x=True):
    """The row backward op's CUDA implementation on one group: (grad_x, grad_w, grad_b)."""
    grad_xs, grad_w, grad_b = kernels._row_linear_backward_cuda([gy], [x], w, blocks, *_op_ints(*ints), need_grad_x)
    return (grad_xs[0] if need_grad_x else x.new_empty(0)), grad_w, grad_b


class Fakes:
    """Candidates ``torch`` (the reference) and ``pattern`` returning set outputs, a timer returning set
    times (ms) per candidate, and the lines the dispatcher said."""

    def __init__(self, times=None, outputs=None):
        self.times = times or {"torch": 2.0, "pattern": 1.0}
        self.outputs = outputs or {"torch": torch.ones(3), "pattern": torch.ones(3)}
        self.calls = {name: 0 for name in self.outputs}
        self.timed: list[str] = []
        self.said: list[str] = []

    def candidate(self, name):
        def run(args):
            self.calls[name] += 1
            out = self.outputs[name]
            if isinstance(out, Exception):
                raise out
            return out

        return Candidate(name, run)

    def candidates(self):
        return [self.candidate(name) for name in self.outputs]

    def timer(self, fn):
        self.timed.append(fn.name)
        return self.times[fn.name]

    def dispatcher(self, cache_file=None, **kwargs):
        kwargs.setdefault("check", outputs_agree)
        kwargs.setdefault("tag", TAG)
        return Dispatcher(cache_file, timer=self.timer, say=self.said.append, **kwargs)


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)


# --------------------------------------------------------------------------- the switch


@pytest.mark.parametrize(
    "value, mode", [(None, "auto"), ("", "auto"), ("auto", "auto"), (" Pattern ", "pattern"), ("CUBLAS", "cublas"),
                    ("torch", "torch"), ("0", "0")]
)  # fmt: skip
def test_kernel_mode_reads_the_switch(monkeypatch, value, mode):
    if value is not None:
        monkeypatch.setenv(ENV_SWITCH, value)
    assert kernel_mode() == mode


@pytest.mark.parametrize("value", ["1", "off", "cudnn", "yes"])
def test_any_other_switch_value_is_a_value_error_naming_the_allowed_ones(monkeypatch, value):
    monkeypatch.setenv(ENV_SWITCH, value)
    with pytest.raises(
        ValueError, match=rf"APPROXDROP_KERNELS must be one of auto, cublas, pattern, torch, 0.*'{value}'"
    ):
        kernel_mode()
    with pytest.raises(ValueError, match="must be one of"):
        kernels.status()
    x, w = torch.randn(3, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match="must be one of"):
        _row_cuda(x, w, None, 1, 0, 1, 1, 0, 1)


def test_a_bad_switch_never_breaks_the_import():
    code = "import approxdrop; print('ok')"
    env = {**os.environ, ENV_SWITCH: "bogus"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "ok"


# --------------------------------------------------------------------------- measuring and choosing


def test_measures_once_per_key_and_picks_the_faster():
    fakes = Fakes()
    d = fakes.dispatcher()
    for _ in range(3):
        assert torch.equal(d.run("k1", fakes.candidates(), None, "auto"), torch.ones(3))
    assert fakes.timed == ["torch", "pattern"]  # timed once for the key
    assert fakes.calls == {"torch": 1, "pattern": 3}  # checked once, then the winner runs
    d.run("k2", fakes.candidates(), None, "auto")
    assert fakes.timed == ["torch", "pattern"] * 2  # a new key is measured
    (c1, c2) = d.choices()
    assert (c1.key, c1.path, c1.how) == ("k1", "pattern", "measured")
    assert c1.times_ms == (("torch", 2.0), ("pattern", 1.0))


@pytest.mark.parametrize("switch", [None, "torch", "0", "pattern"])
def test_choose_names_the_faster_path_once_whatever_the_kernel_switch(monkeypatch, switch):
    if switch is not None:  # the switch picks kernels; choose() is for other choices (models' executors)
        monkeypatch.setenv(ENV_SWITCH, switch)
    fakes = Fakes()
    d = fakes.dispatcher()
    assert [d.choose("k", fakes.candidates(), None) for _ in range(3)] == ["pattern"] * 3
    assert fakes.timed == ["torch", "pattern"] and fakes.calls == {"torch": 1, "pattern": 1}
    assert d.run("k", fakes.candidates(), None, "auto") is fakes.outputs["pattern"]  # the same decision
    assert fakes.timed == ["torch", "pattern"]
    slow = Fakes(times={"torch": 2.0, "pattern": 1.95})
    assert slow.dispatcher().choose("k", slow.candidates(), None) == "torch"


@pytest.mark.parametrize("pattern_ms, winner", [(1.89, "pattern"), (1.91, "torch"), (2.0, "torch"), (5.0, "torch")])
def test_another_path_must_beat_the_reference_by_the_margin(pattern_ms, winner):
    fakes = Fakes(times={"torch": 2.0, "pattern": pattern_ms})
    d = fakes.dispatcher(margin=0.05)
    d.run("k", fakes.candidates(), None, "auto")
    assert d.choices()[0].path == winner


def test_says_once_which_path_runs_and_why():
    fakes = Fakes()
    d = fakes.dispatcher()
    for _ in range(3):
        d.run("row_linear float16 N=8", fakes.candidates(), None, "auto")
    assert len(fakes.said) == 1
    line = fakes.said[0]
    assert line.startswith("approxdrop: row_linear float16 N=8: the pattern-GEMM kernel runs (measured:")
    assert "torch 2.000 ms" in line and "pattern 1.000 ms" in line and "5%" in line


@pytest.mark.parametrize(
    "bad, why",
    [
        (RuntimeError("CUDA error: an illegal memory access"), "raised RuntimeError: CUDA error"),
        (torch.zeros(3), "differs from the reference"),
        (torch.ones(4), "the reference's torch.float32 (3,)"),
        (torch.tensor([1.0, float("nan"), 1.0]), "non-finite"),
    ],
    ids=["raises", "wrong values", "wrong shape", "nan"],
)
def test_never_picks_a_candidate_that_raised_or_disagrees(bad, why):
    fakes = Fakes(times={"torch": 2.0, "pattern": 0.1}, outputs={"torch": torch.ones(3), "pattern": bad})
    d = fakes.dispatcher()
    assert torch.equal(d.run("k", fakes.candidates(), None, "auto"), torch.ones(3))
    choice = d.choices()[0]
    assert choice.path == "torch" and "pattern excluded" in choice.reason and why in choice.reason
    assert fakes.timed == ["torch"] and dict(choice.times_ms)["pattern"] is None
    d.run("k", fakes.candidates(), None, "auto")
    assert fakes.calls["pattern"] == 1  # never run again


def test_never_picks_a_candidate_without_a_valid_time():
    fakes = Fakes(times={"torch": 2.0, "pattern": float("nan")})
    d = fakes.dispatcher()
    d.run("k", fakes.candidates(), None, "auto")
    assert d.choices()[0].path == "torch" and "timer gave nan" in d.choices()[0].reason
    fakes = Fakes(times={"torch": float("inf"), "pattern": 1.0})  # no reference time: nothing known faster
    d = fakes.dispatcher()
    d.run("k", fakes.candidates(), None, "auto")
    assert d.choices()[0].path == "torch"


def test_the_references_errors_are_the_ops():
    fakes = Fakes(outputs={"torch": ValueError("row_linear: bad x"), "pattern": torch.ones(3)})
    with pytest.raises(ValueError, match="bad x"):
        fakes.dispatcher().run("k", fakes.candidates(), None, "auto")


def test_one_candidate_runs_without_measuring():
    fakes = Fakes(outputs={"torch": torch.ones(3)})
    d = fakes.dispatcher()
    d.run("k", fakes.candidates(), None, "auto")
    assert fakes.timed == [] and d.choices() == () and fakes.said == []


def test_no_measuring_while_a_graph_is_captured():
    fakes = Fakes()
    capturing = [True]
    d = fakes.dispatcher(can_measure=lambda: not capturing[0])
    for _ in range(2):
        d.run("k", fakes.candidates(), None, "auto")
    assert fakes.timed == [] and fakes.calls == {"torch": 2, "pattern": 0} and d.choices() == ()
    assert len(fakes.said) == 1 and "CUDA graph" in fakes.said[0]
    capturing[0] = False
    d.run("k", fakes.candidates(), None, "auto")
    assert d.choices()[0].path == "pattern"


THREE = {"torch": torch.ones(3), "cublas": torch.ones(3), "pattern": torch.ones(3)}


@pytest.mark.parametrize(
    "times, winner",
    [
        ({"torch": 3.0, "cublas": 1.0, "pattern": 2.0}, "cublas"),
        ({"torch": 3.0, "cublas": 2.0, "pattern": 1.0}, "pattern"),
        ({"torch": 1.0, "cublas": 0.96, "pattern": 2.0}, "torch"),  # within the margin of the reference
        ({"torch": 1.0, "cublas": 0.94, "pattern": 0.95}, "cublas"),
    ],
)
def test_three_candidates_the_fastest_that_beats_the_reference_wins(times, winner):
    fakes = Fakes(times=times, outputs=THREE)
    d = fakes.dispatcher()
    for _ in range(2):
        d.run("k", fakes.candidates(), None, "auto")
    assert fakes.timed == ["torch", "cublas", "pattern"]
    choice = d.choices()[0]
    assert choice.path == winner and [n for n, _ in choice.times_ms] == ["torch", "cublas", "pattern"]
    assert fakes.calls[winner] == 2  # measured once, then run as the choice


def test_three_candidates_one_that_disagrees_is_excluded_the_other_still_competes():
    outputs = {**THREE, "cublas": torch.zeros(3)}
    fakes = Fakes(times={"torch": 3.0, "cublas": 0.5, "pattern": 2.0}, outputs=outputs)
    d = fakes.dispatcher()
    d.run("k", fakes.candidates(), None, "auto")
    choice = d.choices()[0]
    assert choice.path == "pattern" and "cublas excluded" in choice.reason


def test_outputs_agree_on_nested_lists():
    """Grouped ops return lists of tensors (ys, blocks): compared leaf by leaf."""
    ys = [torch.ones(2), torch.ones(3)]
    assert outputs_agree((ys, []), (ys, [])) is None
    assert "differs" in outputs_agree(([torch.ones(2), torch.zeros(3)], []), (ys, []))
    assert "returned 1 outputs" in outputs_agree(([torch.ones(2)], []), (ys, []))


def test_concurrent_first_calls_measure_once():
    fakes = Fakes()
    d = fakes.dispatcher()
    start = threading.Barrier(6)

    def worker():
        start.wait()
        d.run("k", fakes.candidates(), None, "auto")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fakes.timed == ["torch", "pattern"] and len(fakes.said) == 1


# --------------------------------------------------------------------------- the switch, through the dispatcher


@pytest.mark.parametrize("mode", ["torch", "cublas", "pattern"])
def test_forced_modes_run_their_path_without_measuring(monkeypatch, mode):
    monkeypatch.setenv(ENV_SWITCH, mode)
    path = mode
    fakes = Fakes(times={"torch": 1.0, "cublas": 3.0, "pattern": 2.0}, outputs=THREE)
    d = fakes.dispatcher()
    for _ in range(2):
        d.run("k", fakes.candidates(), None)
    assert fakes.timed == [] and fakes.calls[path] == 2 and sum(fakes.calls.values()) == 2
    assert d.choices()[0].how == "forced" and d.choices()[0].path == path
    assert len(fakes.said) == 1 and f"APPROXDROP_KERNELS={mode}" in fakes.said[0]


def test_forced_cublas_without_a_cublas_path_runs_the_reference_and_says_why():
    fakes = Fakes()  # a tile op: the reference and the kernel only
    fakes.dispatcher().run("k", fakes.candidates(), None, "cublas")
    assert fakes.calls == {"torch": 1, "pattern": 0} and "the cuBLAS path" in fakes.said[0]
    assert "unavailable" in fakes.said[0]


def test_auto_after_a_forced_mode_still_measures():
    fakes = Fakes(times={"torch": 1.0, "pattern": 2.0})
    d = fakes.dispatcher()
    d.run("k", fakes.candidates(), None, "pattern")
    d.run("k", fakes.candidates(), None, "auto")
    assert fakes.timed == ["torch", "pattern"] and d.choices()[0].how == "measured" and d.choices()[0].path == "torch"


def test_forced_pattern_without_kernels_runs_the_reference_and_says_why():
    fakes = Fakes(outputs={"torch": torch.ones(3)})
    d = fakes.dispatcher()
    d.run("k", fakes.candidates(), None, "pattern")
    assert fakes.calls == {"torch": 1} and "pattern-GEMM kernel is unavailable" in fakes.said[0]


def test_a_candidate_that_cannot_run_the_call_is_skipped_with_its_reasons():
    """supports(args) gives reasons: the candidate is neither run nor timed, and its reasons are said."""
    fakes = Fakes(times={"torch": 3.0, "cublas": 2.0, "pattern": 1.0}, outputs=THREE)
    torch_c, cublas_c, pattern_c = fakes.candidates()
    picky = Candidate("pattern", pattern_c.run, lambda args: [] if args == "small" else [f"not for {args}"])
    d = fakes.dispatcher()
    d.run("k", [torch_c, cublas_c, picky], "big", "auto")
    assert fakes.calls["pattern"] == 0 and fakes.timed == ["torch", "cublas"]
    assert "pattern skipped: not for big" in d.choices()[0].reason
    d.run("k2", [torch_c, cublas_c, picky], "small", "auto")
    assert fakes.timed[-1] == "pattern"
    d.run("k3", [torch_c, picky], "big", "pattern")
    assert any("pattern-GEMM kernel is unavailable (pattern skipped: not for big)" in line for line in fakes.said)


def _kernel_reasons(candidates: list, inputs: tuple) -> list[str]:
    """The pattern kernel's reasons for a call (the extension as if built: only the launcher's limits)."""
    (kernel,) = [c for c in candidates if c.name == dispatch.PATTERN]
    return kernel.supports(kernels.Call(None, types.ModuleType("built"), inputs))


def test_the_kernel_is_not_handed_a_call_its_launcher_refuses():
    """A weight side past the kernel's grid, a period past int32 once offset + keep is added, a tile dp past one
    grid axis: the pattern candidate says why (the reference runs), not a RuntimeError from the binding."""
    meta = {"device": "meta"}
    w, wide = torch.empty(8, 8, **meta), torch.empty(8, kernels.KERNEL_MAX_WIDTH + 1, **meta)
    x = torch.empty(4, 8, **meta)
    row = lambda weight, in_dp, out_dp: ([x], weight, None, in_dp, 1, [0], out_dp, 1, [0])  # noqa: E731
    assert _kernel_reasons(kernels.ROW_LINEAR, row(w, 2, 3)) == []
    assert "a weight side above" in _kernel_reasons(kernels.ROW_LINEAR, row(wide, 2, 3))[0]
    assert "a period above 2**30" in _kernel_reasons(kernels.ROW_LINEAR, row(w, 2, 2**30 + 1))[0]
    back = ([x], [x], w, [], 2**30 + 1, 1, [0], 2, 1, [0], True)  # (grads, xs, weight, blocks, in_dp, ...)
    assert "a period above 2**30" in _kernel_reasons(kernels.ROW_LINEAR_BACKWARD, back)[0]
    tile = lambda dp, tile_: (x, w, None, dp, 1, tile_, [0])  # noqa: E731
    assert _kernel_reasons(kernels.TILE_LINEAR, tile(3, 4)) == []
    assert "a period above 2**30 (dp * tile" in _kernel_reasons(kernels.TILE_LINEAR, tile(3, 2**29))[0]
    assert "a tile dp above 65535" in _kernel_reasons(kernels.TILE_LINEAR, tile(70000, 1))[0]
    grad_tile = (x, x, w, 70000, 1, 1, [0], True)
    assert "a tile dp above 65535" in _kernel_reasons(kernels.TILE_LINEAR_BACKWARD, grad_tile)[0]


def test_switch_zero_is_silent():
    fakes = Fakes()
    d = fakes.dispatcher()
    d.run("k", fakes.candidates(), None, "0")
    assert fakes.calls == {"torch": 1, "pattern": 0} and fakes.said == [] and d.choices() == ()


# --------------------------------------------------------------------------- the cache file


def test_choices_are_cached_on_disk_and_reloaded_by_a_fresh_dispatcher(tmp_path):
    cache = tmp_path / "gpu-dispatch" / "Fake-GPU_torch0.0.json"
    fakes = Fakes()
    fakes.dispatcher(cache).run("k", fakes.candidates(), None, "auto")
    payload = json.loads(cache.read_text())
    assert payload["format"] == dispatch.FORMAT and payload["tag"] == TAG
    assert payload["choices"]["k"]["path"] == "pattern" and payload["choices"]["k"]["times_ms"]["torch"] == 2.0
    again = Fakes()
    d = again.dispatcher(cache)
    for _ in range(2):
        d.run("k", again.candidates(), None, "auto")
    assert again.timed == [] and again.calls == {"torch": 0, "pattern": 2}
    assert d.choices()[0].how == "cached" and d.choices()[0].times_ms == (("torch", 2.0), ("pattern", 1.0))
    assert len(again.said) == 1 and "(cached:" in again.said[0]


def test_a_cache_for_other_kernels_is_measured_again(tmp_path):
    cache = tmp_path / "c.json"
    fakes = Fakes()
    fakes.dispatcher(cache).run("k", fakes.candidates(), None, "auto")
    again = Fakes()
    again.dispatcher(cache, tag={**TAG, "kernels": "new"}).run("k", again.candidates(), None, "auto")
    assert again.timed == ["torch", "pattern"]
    assert json.loads(cache.read_text())["tag"]["kernels"] == "new"


def test_two_dispatchers_on_one_file_keep_each_others_choices(tmp_path):
    cache = tmp_path / "c.json"
    a, b = Fakes(), Fakes(times={"torch": 1.0, "pattern": 2.0})
    da, db = a.dispatcher(cache), b.dispatcher(cache)
    da.run("ka", a.candidates(), None, "auto")
    db.run("kb", b.candidates(), None, "auto")
    choices = json.loads(cache.read_text())["choices"]
    assert {k: c["path"] for k, c in choices.items()} == {"ka": "pattern", "kb": "torch"}


@pytest.mark.parametrize(
    "content",
    [
        "",
        '{"format": 1, "tag": ',
        "[]",
        '{"format": 99, "tag": {}, "choices": {}}',
        json.dumps({"format": 1, "tag": TAG, "choices": {"k": {"path": 3, "reason": "", "times_ms": {}}}}),
        json.dumps({"format": 1, "tag": TAG, "choices": {"k": {"path": "pattern"}}}),
        json.dumps({"format": 1, "tag": TAG, "choices": ["k"]}),
        b"\xff\xfe\x00",
    ],
    ids=repr,
)
def test_a_corrupt_cache_is_rebuilt_never_fatal(tmp_path, content):
    cache = tmp_path / "c.json"
    (cache.write_bytes if isinstance(content, bytes) else cache.write_text)(content)
    fakes = Fakes()
    d = fakes.dispatcher(cache)
    assert torch.equal(d.run("k", fakes.candidates(), None, "auto"), torch.ones(3))
    assert fakes.timed == ["torch", "pattern"]
    assert "unreadable" in fakes.said[0] and "measuring again" in fakes.said[0]
    assert json.loads(cache.read_text())["choices"]["k"]["path"] == "pattern"  # rewritten whole
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # atomic: no temporary file left


def test_an_unwritable_cache_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    fakes = Fakes()
    d = fakes.dispatcher(blocker / "c.json")  # its directory cannot be made
    d.run("k", fakes.candidates(), None, "auto")
    d.run("k2", fakes.candidates(), None, "auto")
    assert d.choices()[0].path == "pattern"
    assert sum("cannot write the GPU dispatch cache" in line for line in fakes.said) == 1


# --------------------------------------------------------------------------- the output check


def test_outputs_agree():
    a = torch.randn(4, 5, dtype=torch.float64)
    assert outputs_agree(a.clone(), a) is None
    assert outputs_agree(a + 1e-12, a) is None
    assert "differs" in outputs_agree(a + 1e-6, a)
    bf = a.to(torch.bfloat16)
    assert outputs_agree((bf.double() * (1 + 2**-8)).to(torch.bfloat16), bf) is None  # a rounding step
    assert "differs" in outputs_agree(bf * 2, bf)
    grads = (torch.empty(0), a.float(), a[0].float())
    assert outputs_agree(grads, grads) is None
    assert "returned 2 outputs" in outputs_agree(grads[:2], grads)
    assert "torch.float64" in outputs_agree((torch.empty(0), a, a[0].float()), grads)
    inf = torch.tensor([1.0, float("inf")])
    assert outputs_agree(inf.clone(), inf) is None and "non-finite" in outputs_agree(torch.ones(2), inf)


# ------------------------------------------------------------------ the CUDA implementations, with a fake build


class FakeExtension:
    """Stands in for the built kernels: computes with the PyTorch implementation (optionally wrong) and
    records each call's arguments."""

    def __init__(self, wrong: bool = False):
        self.calls: list[tuple] = []
        self.wrong = wrong

    def row_linear(self, x, weight, bias, *ints_and_stream):
        self.calls.append(("row_linear", ints_and_stream))
        y = _y_ref(x, weight, bias, *ints_and_stream[:-1])
        return y * 0 if self.wrong else y

    def row_linear_backward(self, grad_y, x, weight, *rest):
        *ints, need_grad_x, _stream = rest
        self.calls.append(("row_linear_backward", tuple(rest)))
        return list(_grads_ref(grad_y, x, weight, *ints, need_grad_x))

    def tile_linear_backward(self, grad_y, x, weight, dp, offset, keep, tile, need_grad_x, stream):
        self.calls.append(("tile_linear_backward", (dp, offset, keep, tile, need_grad_x, stream)))
        return list(OPS.tile_linear_backward(grad_y, x, weight, dp, keep, tile, [offset], need_grad_x))

    # the cuBLAS path's small kernels (kernels/scatter.cu, column_sum.cu), as their PyTorch definitions
    def scatter_block(self, block, n_out, n_in, *ints_and_stream):
        self.calls.append(("scatter_block", ints_and_stream))
        out, inp = RowPattern(*ints_and_stream[:3]), RowPattern(*ints_and_stream[3:6])
        return TORCH_BLOCK_KERNELS.scatter(block, (n_out, n_in), out, inp)

    def scatter_block_add_(self, full, block, *ints_and_stream):
        self.calls.append(("scatter_block_add_", ints_and_stream))
        TORCH_BLOCK_KERNELS.scatter_add(
            full, block, RowPattern(*ints_and_stream[:3]), RowPattern(*ints_and_stream[3:6])
        )

    def column_sum(self, g, n, dp, offset, keep, stream):
        self.calls.append(("column_sum", (dp, offset, keep, stream)))
        return TORCH_BLOCK_KERNELS.column_sum(g, n, RowPattern(dp, offset, keep))


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """approxdrop.ops.cuda on CPU tensors as on a GPU named "Fake GPU" whose kernels are built (a
    FakeExtension), with a dispatcher whose timer gives each candidate its time in ``times`` (by default
    the kernel fastest, then the cuBLAS path, then the PyTorch implementation)."""
    monkeypatch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path))
    ext = FakeExtension()
    monkeypatch.setattr(kernels, "load", lambda verbose=False, device=None: ext)
    monkeypatch.setattr(kernels, "_launch", lambda device, call: call(0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(build, "_arch", lambda device=None: "sm_90")
    monkeypatch.setattr(build, "_outcomes", {"sm_90": kernels.KernelStatus(True, "sm_90", None, "fake.so")})
    said: list[str] = []
    times = {"torch": 3.0, "cublas": 2.0, "pattern": 1.0}

    def timer(fn):  # fn is named after its candidate
        return times[fn.name]

    chooser = Dispatcher(build._dispatch_file("Fake GPU"), timer=timer, check=outputs_agree, tag=TAG, say=said.append)
    monkeypatch.setattr(build, "_dispatchers", {"Fake GPU": chooser})
    return types.SimpleNamespace(ext=ext, said=said, dispatcher=chooser, times=times)


def _row_args(gen, rows=5, n_out=10, n_in=9, ints=(3, 1, 2, 2, 0, 1)):
    """x [rows, k_in], W [n_out, n_in], b [n_out], grad_y [rows, k_out], the pattern ints."""
    k_in, k_out = RowPattern(*ints[:3]).kept_count(n_in), RowPattern(*ints[3:]).kept_count(n_out)
    shapes = ((rows, k_in), (n_out, n_in), (n_out,), (rows, k_out))
    return (*(torch.randn(*s, generator=gen) for s in shapes), ints)


def test_cuda_backward_skips_grad_x_in_the_kernel(fake_gpu, monkeypatch):
    """need_grad_x=False reaches the kernel (which then skips the grad-input GEMM) and grad_x comes back empty."""
    monkeypatch.setenv(ENV_SWITCH, "pattern")
    x, w, _, gy, ints = _row_args(torch.Generator().manual_seed(0))
    grad_x, grad_w, grad_b = _row_backward_cuda(gy, x, w, _block(x, w, ints), *ints, need_grad_x=False)
    assert fake_gpu.ext.calls == [("row_linear_backward", (*ints, False, 0))]
    assert grad_x.numel() == 0
    want = _grads_ref(gy, x, w, *ints, True)
    torch.testing.assert_close(grad_w, want[1])
    torch.testing.assert_close(grad_b, want[2])
    xt, gyt = torch.randn(5, 9), torch.randn(5, 10)
    grad_x, _, _ = kernels._tile_linear_backward_cuda(gyt, xt, w, 3, 2, 2, [1], need_grad_x=False)
    assert fake_gpu.ext.calls[-1] == ("tile_linear_backward", (3, 1, 2, 2, False, 0)) and grad_x.numel() == 0


def test_cuda_ops_dispatch_and_status_lists_the_choices(fake_gpu):
    x, w, b, gy, ints = _row_args(torch.Generator().manual_seed(1))
    y, _ = _row_cuda(x, w, b, *ints)
    torch.testing.assert_close(y, _y_ref(x, w, b, *ints))
    _row_backward_cuda(gy, x, w, _block(x, w, ints), *ints, need_grad_x=True)
    st = kernels.status()
    assert st.built and st.mode == "auto"
    keys = [c.key for c in st.choices]
    assert keys == sorted(keys) and len(keys) == 2
    assert all(c.path == "pattern" and c.how == "measured" for c in st.choices)
    assert keys[0].startswith("row_linear float32 N=5 W=10x9 in 2/3 out 1/2 G=1 bias")
    assert keys[1].startswith("row_linear_backward float32 N=5 W=10x9 in 2/3 out 1/2 G=1 grad_x yes")
    assert len(fake_gpu.said) == 2
    assert build._dispatch_file("Fake GPU").exists()
    assert build._dispatch_file("Fake GPU").parent == Path(fake_gpu.dispatcher.cache_file).parent


def test_cuda_ops_never_run_a_kernel_that_computes_wrong_values(fake_gpu):
    fake_gpu.ext.wrong = True
    x, w, b, _, ints = _row_args(torch.Generator().manual_seed(2))
    y, _ = _row_cuda(x, w, b, *ints)
    torch.testing.assert_close(y, _y_ref(x, w, b, *ints))
    (choice,) = kernels.status().choices
    assert choice.path == "cublas" and "pattern excluded: output 0 differs" in choice.reason


@pytest.mark.parametrize("mode", ["torch", "0"])
def test_cuda_ops_on_the_pytorch_path_never_build(fake_gpu, monkeypatch, mode):
    monkeypatch.setenv(ENV_SWITCH, mode)
    monkeypatch.setattr(kernels, "load", lambda verbose=False, device=None: pytest.fail("built the kernels"))
    x, w, b, _, ints = _row_args(torch.Generator().manual_seed(3))
    _row_cuda(x, w, b, *ints)
    assert fake_gpu.ext.calls == []
    assert (fake_gpu.said == []) == (mode == "0")
    assert not kernels.enabled()


def test_the_key_is_the_pattern_class_not_the_offset(fake_gpu):
    x, w, b, _, _ = _row_args(torch.Generator().manual_seed(4), n_in=10, ints=(2, 0, 1, 1, 0, 1))
    for offset in (0, 1):  # two offsets of one pattern: one key, measured once
        _row_cuda(x, w, b, 2, offset, 1, 1, 0, 1)
    assert [c.key for c in kernels.status().choices] == ["row_linear float32 N=5 W=10x10 in 1/2 out all G=1 bias"]
    assert len(fake_gpu.said) == 1
    x2 = torch.randn(5, 10)
    for offset in (0, 2):
        _row_cuda(x2, w, None, 3, offset, 3, 1, 0, 1)  # keep = dp: everything kept, "all"
    assert "row_linear float32 N=5 W=10x10 in all out all G=1 no bias" in [c.key for c in kernels.status().choices]


def test_the_key_tells_tf32_apart(fake_gpu):
    x, w, b, _, ints = _row_args(torch.Generator().manual_seed(5))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        _row_cuda(x, w, b, *ints)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    _row_cuda(x, w, b, *ints)
    assert [c.key.split(" ")[1] for c in kernels.status().choices] == ["float32", "float32+tf32"]


def test_three_candidates_on_the_cuda_ops(fake_gpu):
    """The row ops offer the PyTorch implementation, the cuBLAS path and the kernel; the fastest wins."""
    fake_gpu.times.update(torch=3.0, cublas=1.0, pattern=2.0)
    x, w, b, gy, ints = _row_args(torch.Generator().manual_seed(6))
    torch.testing.assert_close(_row_cuda(x, w, b, *ints)[0], _y_ref(x, w, b, *ints))
    got = _row_backward_cuda(gy, x, w, _block(x, w, ints), *ints, need_grad_x=True)
    torch.testing.assert_close(got, _grads_ref(gy, x, w, *ints))
    for choice in kernels.status().choices:
        assert choice.path == "cublas" and [n for n, _ in choice.times_ms] == ["torch", "cublas", "pattern"], (
            choice.reason
        )
    names = [name for name, _ in fake_gpu.ext.calls]
    assert "scatter_block" in names and "column_sum" in names  # the cuBLAS path's kernels, from the extension
    assert any("the cuBLAS path" in line for line in fake_gpu.said)


def test_forced_cublas_builds_and_runs_the_cublas_path(fake_gpu, monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "cublas")
    assert kernels.enabled()
    x, w, _, gy, ints = _row_args(torch.Generator().manual_seed(7))
    grad_x, grad_w, grad_b = _row_backward_cuda(gy, x, w, _block(x, w, ints), *ints, need_grad_x=False)
    assert [name for name, _ in fake_gpu.ext.calls] == ["column_sum", "scatter_block"]  # never the pattern GEMM
    assert grad_x.numel() == 0
    want = _grads_ref(gy, x, w, *ints, False)
    torch.testing.assert_close((grad_w, grad_b), want[1:])
    (choice,) = kernels.status().choices
    assert choice.how == "forced" and choice.path == "cublas"
    xt, wt = torch.randn(5, 9), torch.randn(10, 9)
    kernels._tile_linear_cuda(xt, wt, None, 3, 2, 2, [1])  # no cuBLAS path for tiles: the reference, said once
    assert any("the cuBLAS path (strided views" in line and "unavailable" in line for line in fake_gpu.said)


@pytest.mark.parametrize("mode", ["auto", "cublas", "pattern"])
def test_row_ops_on_every_path(fake_gpu, monkeypatch, mode):
    monkeypatch.setenv(ENV_SWITCH, mode)
    x, w, b, gy, ints = _row_args(torch.Generator().manual_seed(8))
    y, blocks = _row_cuda(x, w, b, *ints)
    torch.testing.assert_close((y, blocks), (_y_ref(x, w, b, *ints), _block(x, w, ints)))
    got = _row_backward_cuda(gy, x, w, blocks, *ints, need_grad_x=True)
    torch.testing.assert_close(got, _grads_ref(gy, x, w, *ints))
    with pytest.raises(ValueError, match=r"block must have shape \(5, 6\)"):
        _row_backward_cuda(gy, x, w, [blocks[0][:, :2]], *ints)
    assert {c.key.split(" ")[0] for c in kernels.status().choices} == {"row_linear", "row_linear_backward"}


def _grouped_args(gen, groups=4):
    in_offsets, out_offsets = [0, 2, 1, 0][:groups], [1, 0, 1, 1][:groups]
    args = (3, 1, in_offsets, 2, 1, out_offsets)
    w, b = torch.randn(10, 9, generator=gen), torch.randn(10, generator=gen)
    xs = [torch.randn(3, RowPattern(3, o, 1).kept_count(9), generator=gen) for o in in_offsets]
    return args, w, b, xs


@pytest.mark.parametrize("mode", ["auto", "torch", "cublas", "pattern"])
def test_grouped_ops_dispatch_on_cuda(fake_gpu, monkeypatch, mode):
    """The row op with groups runs through the dispatch; every path gives the PyTorch outputs."""
    monkeypatch.setenv(ENV_SWITCH, mode)
    args, w, b, xs = _grouped_args(torch.Generator().manual_seed(9))
    ys, blocks = kernels._row_linear_cuda(xs, w, b, *args)
    torch.testing.assert_close((ys, blocks), OPS.row_linear(xs, w, b, *args))
    grads = [torch.randn_like(y) for y in ys]
    for need_grad_x in (True, False):
        got = kernels._row_linear_backward_cuda(grads, xs, w, blocks, *args, need_grad_x)
        torch.testing.assert_close(got, OPS.row_linear_backward(grads, xs, w, blocks, *args, need_grad_x))
    names = {name for name, _ in fake_gpu.ext.calls}
    if mode == "cublas":
        assert names == {"scatter_block", "scatter_block_add_", "column_sum"}
    elif mode == "pattern":
        assert names == {"row_linear", "row_linear_backward"}
    elif mode == "torch":
        assert names == set()
    if mode == "auto":
        assert all(c.how == "measured" and c.path == "pattern" for c in kernels.status().choices)


def test_grouped_keys_name_the_groups_never_the_offsets(fake_gpu):
    args, w, b, xs = _grouped_args(torch.Generator().manual_seed(10))
    kernels._row_linear_cuda(xs, w, b, *args)
    other = (args[0], args[1], [1, 1, 2, 0], args[3], args[4], [0, 0, 0, 1])  # other offsets, same classes
    xs = [torch.randn(3, RowPattern(3, o, 1).kept_count(9)) for o in other[2]]
    kernels._row_linear_cuda(xs, w, b, *other)
    (choice,) = kernels.status().choices
    assert choice.key == "row_linear float32 N=12 W=10x9 in 1/3 out 1/2 G=4 bias"
    with pytest.raises(ValueError, match="one in and one out offset per group"):
        kernels._row_linear_cuda(xs, w, b, 3, 1, [0, 1, 2, 0], 2, 1, [0])
