"""ApproxDropoutMLP and ApproxDropoutFFN under DistributedDataParallel: torchrun starts 2 processes on
127.0.0.1 (gloo, CPU). Each rank seeds its pattern generator by its rank, so the ranks draw their own
patterns (as batch groups do); DDP averages the gradients, so the weights stay identical on every rank
and equal a one-process replay that averages the two ranks' gradients. The static-shape MLP draws ahead
(``draw_patterns``) under DDP's default buffer sync, which copies rank 0's offsets over each rank's.
Every wait is bounded, and a run that overstays is killed.

Run as a script (``python tests/test_distributed.py OUT_DIR`` under torchrun), this file is the worker. In
CI a rank once hung after its work, in C++ teardown with no Python frame left (the watchdog's stacks): the
worker drops its DDP wrapper while the process group lives and exits without the interpreter's teardown.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from approxdrop import ApproxDropoutFFN, ApproxDropoutMLP, RowPattern, draw_patterns

pytestmark = pytest.mark.distributed

WORLD, STEPS, LR = 2, 5, 0.05
KINDS = ("mlp", "ffn", "static-mlp")
LAUNCH_TIMEOUT = 90  # seconds for the whole torchrun run (it takes ~10 s); then it is stopped
WATCHDOG = 60  # seconds after which a worker prints every thread's stack and exits (faulthandler)
HUNG = "Timeout ("  # what faulthandler's watchdog prints first
PATTERN_SEED, DATA_SEED = 1, 100  # + rank


def build(kind: str, generator: torch.Generator | None) -> torch.nn.Module:
    """The model, with the same initial weights in every process (DDP also broadcasts rank 0's)."""
    torch.manual_seed(0)
    if kind == "mlp":
        return ApproxDropoutMLP([12, 32, 32, 3], 0.5, method="row", generator=generator)
    if kind == "static-mlp":
        return ApproxDropoutMLP([12, 32, 32, 3], 0.5, method="row-g4", static_shapes=True, generator=generator)
    return ApproxDropoutFFN(12, 32, 0.5, method="row-g4", generator=generator)


def batch(kind: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One rank's step of data: x [B, 12] (MLP) or [B, T, 12] (FFN), and a target like the output."""
    if kind != "ffn":
        return torch.randn(8, 12, generator=generator), torch.randn(8, 3, generator=generator)
    return torch.randn(8, 5, 12, generator=generator), torch.randn(8, 5, 12, generator=generator)


def loss_of(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (model(x) - target).square().mean()


def drawn(model: torch.nn.Module):
    """The step's patterns as integers (dp, offset, keep), nested as the model holds them."""

    def ints(draw):
        if isinstance(draw, RowPattern):
            return (draw.dp, draw.offset, draw.keep)
        return None if draw is None else [ints(d) for d in draw]

    return ints(model.last_patterns if isinstance(model, ApproxDropoutMLP) else model.last_pattern)


def worker(out_dir: Path) -> None:
    """One rank: train each model for STEPS steps under DDP, save its draws and final weights."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    faulthandler.dump_traceback_later(WATCHDOG, exit=True)  # a hung worker says where it hangs
    rank = int(os.environ["RANK"])
    (out_dir / f"pid{rank}").write_text(str(os.getpid()))
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))  # bounded collective waits
    try:
        result = {}
        for kind in KINDS:
            model = build(kind, torch.Generator().manual_seed(PATTERN_SEED + rank))  # seeded by rank
            ddp = DistributedDataParallel(model)
            optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
            data = torch.Generator().manual_seed(DATA_SEED + rank)
            draws = []
            for _ in range(STEPS):
                optimizer.zero_grad()
                if kind == "static-mlp":
                    draw_patterns(model)  # ahead of DDP's buffer sync: the forward must still run this draw
                loss_of(ddp, *batch(kind, data)).backward()  # DDP all-reduces (averages) the gradients
                optimizer.step()
                draws.append(drawn(model))
            result[kind] = {"draws": draws, "state": model.state_dict()}
            del ddp  # torn down while the process group lives (CI once hung in a DDP teardown after it)
        torch.save(result, out_dir / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def replay(kind: str) -> tuple[list, dict]:
    """One process doing what the ranks do together: each rank's draw and data, gradients averaged."""
    model = build(kind, None)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    patterns = [torch.Generator().manual_seed(PATTERN_SEED + r) for r in range(WORLD)]
    data = [torch.Generator().manual_seed(DATA_SEED + r) for r in range(WORLD)]
    draws: list[list] = [[] for _ in range(WORLD)]
    for _ in range(STEPS):
        grads = []
        for r in range(WORLD):
            model.generator = patterns[r]
            grads.append(torch.autograd.grad(loss_of(model, *batch(kind, data[r])), params))
            draws[r].append(drawn(model))
        for param, *per_rank in zip(params, *grads):
            param.grad = sum(per_rank) / WORLD
        optimizer.step()
    return draws, model.state_dict()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_workers(out_dir: Path) -> list[int]:
    """Kill the workers still running (torchrun starts each in its own session); their pids."""
    left = [pid for pid in (int(f.read_text()) for f in out_dir.glob("pid*")) if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def launch_once_more_if_hung(tmp_path: Path) -> Path:
    """``launch`` in a fresh folder; a run that hangs (a worker's watchdog fired, or torchrun overstayed) is
    run once more, with a warning that carries the first run's stacks. Returns the folder of the run that
    finished; a second hang, or any other failure, fails the test."""
    first = tmp_path / "run1"
    first.mkdir()
    out = launch(first, fail=False)
    if HUNG not in out:
        return first
    warnings.warn(f"the DDP run hung once (run again):\n{out[-4000:]}", stacklevel=1)
    second = tmp_path / "run2"
    second.mkdir()
    launch(second)
    return second


def launch(out_dir: Path, fail: bool = True) -> str:
    """Run this file under torchrun with 2 processes; its output. Fails (after stopping everything) when
    it does not finish in LAUNCH_TIMEOUT s, exits non-zero, or leaves a worker behind; with ``fail=False``
    a run that hung returns its output (marked with ``HUNG``) instead."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "--max_restarts=0",
        __file__,
        str(out_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo talks over the loopback interface, 127.0.0.1
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # torchrun stops its workers on SIGTERM
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        kill_workers(out_dir)
        if not fail:
            return f"{HUNG}torchrun did not finish in {LAUNCH_TIMEOUT} s)\n{out}"
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT} s:\n{out}")
    left = kill_workers(out_dir)
    if not fail and proc.returncode != 0 and HUNG in out:
        return out
    assert proc.returncode == 0, out
    assert len(list(out_dir.glob("pid*"))) == WORLD, out
    assert left == [], f"workers {left} outlived torchrun"
    return out


def test_ranks_draw_their_own_patterns_and_keep_identical_weights(tmp_path):
    run = launch_once_more_if_hung(tmp_path)
    ranks = [torch.load(run / f"rank{r}.pt") for r in range(WORLD)]
    for kind in KINDS:
        first, second = ranks[0][kind], ranks[1][kind]
        assert any(a != b for a, b in zip(first["draws"], second["draws"])), kind  # patterns differ at a step
        assert first["state"].keys() == second["state"].keys()
        for name, value in first["state"].items():
            assert torch.equal(value, second["state"][name]), (kind, name)  # identical weights on both ranks
        draws, state = replay(kind)
        assert draws == [first["draws"], second["draws"]], kind  # each rank drew from its own generator
        start = build(kind, None).state_dict()
        for name, value in state.items():
            torch.testing.assert_close(first["state"][name], value)  # = SGD on the averaged gradients
            assert not torch.equal(value, start[name]), (kind, name)  # and the steps did move every weight


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the results are saved: skip the interpreter's teardown of C++ objects, where a rank once hung
